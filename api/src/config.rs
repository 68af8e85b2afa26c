//! Flags and environment of `chokepoint-api`, turned into a checked
//! [`Config`]. A bad configuration is one clear line and exit 64.
//!
//! The contract: `--listen IP:PORT`, `--tls-cert PEM --tls-key PEM` (plain
//! HTTP only on a loopback address, for development), `--store sqlite:PATH`,
//! `--allowed-origin URL` (repeatable, exact match), `--issuer`,
//! `--audience`, `CHOKEPOINT_API_KEY_FILE`, `CHOKEPOINT_API_SERVICE_TOKEN_FILE`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use crate::auth::{KeyError, ServiceToken, Verifier};

/// Environment variable naming the JWT key file.
pub const KEY_FILE_ENV: &str = "CHOKEPOINT_API_KEY_FILE";
/// Environment variable naming the runtime's service token file.
pub const SERVICE_TOKEN_FILE_ENV: &str = "CHOKEPOINT_API_SERVICE_TOKEN_FILE";

/// chokepoint's API server: authenticated WebSockets for browser and CLI
/// clients, org isolation from the store, writes through a durable queue.
#[derive(Debug, Clone, Parser)]
#[command(name = "chokepoint-api", version, about, after_help = probe::HELP)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM). Without it the server speaks plain
    /// HTTP, which is allowed only on a loopback address.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The store: `sqlite:PATH`.
    #[arg(long, value_name = "STORE", default_value = crate::store::DEFAULT_STORE)]
    pub store: String,
    /// A browser Origin allowed to connect (repeatable; exact match, e.g.
    /// `https://app.example.com`).
    #[arg(long = "allowed-origin", value_name = "URL")]
    pub allowed_origins: Vec<String>,
    /// The `iss` every token must carry.
    #[arg(long)]
    pub issuer: String,
    /// The `aud` every token must carry.
    #[arg(long)]
    pub audience: String,
    /// Most simultaneous connections; more are refused at accept.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Ticket mints and upgrades per second allowed per user (sustained).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub rate_per_user: u32,
    /// Ticket mints and upgrades a user may burst.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub burst_per_user: u32,
    /// The worker (credential broker): `unix:PATH` or `IP:PORT`. Its
    /// `/readyz` must answer 200 at start (required in production) and
    /// while serving.
    #[arg(long, value_name = "ADDR")]
    pub worker: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) here: never
    /// the public TLS port; keep it on a network only Prometheus reaches
    /// (the appliance binds it to the API's address on the egress network).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9092")]
    pub metrics_listen: SocketAddr,
    /// Check the configuration (keys, certificate, store) and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key or token file is bad.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A required environment variable is unset.
    #[error("{0} is not set: point it at {1}")]
    MissingEnv(&'static str, &'static str),
    /// No TLS on a non-loopback address.
    #[error(
        "--listen {0} is not a loopback address: give --tls-cert and --tls-key (plain HTTP is for development on 127.0.0.1 or ::1 only)"
    )]
    PlainOffLoopback(SocketAddr),
    /// The certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// An origin that cannot match a browser's Origin header.
    #[error(
        "--allowed-origin `{0}`: write scheme://host[:port] with no path or trailing slash, e.g. https://app.example.com"
    )]
    BadOrigin(String),
    /// Empty issuer or audience.
    #[error("--issuer and --audience must not be empty")]
    EmptyClaim,
    /// A zero limit.
    #[error("--{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// The OS random number generator failed.
    #[error("the OS random number generator failed")]
    Random,
    /// The metrics listener on the API's own address and port.
    #[error(
        "--metrics-listen {0} is the same address as --listen: metrics are plain HTTP and must not share the API's port; pick another port (default 127.0.0.1:9092)"
    )]
    MetricsOnApiPort(SocketAddr),
}

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--store`.
    pub store: String,
    /// Allowed origins (exact strings).
    pub origins: HashSet<String>,
    /// The JWT verifier.
    pub verifier: Verifier,
    /// The runtime's service token (`None`: every service call gets 401).
    pub service: Option<ServiceToken>,
    /// Connection cap.
    pub max_connections: usize,
    /// Per-user rate (per second) and burst.
    pub rate: (u32, u32),
    /// Development or production (`/readyz` reports it); set by the
    /// binary from `CHOKEPOINT_ENV`.
    pub mode: mode::Mode,
    /// The worker's address (`--worker`), probed by `/readyz`.
    pub worker: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: SocketAddr,
}

/// A verifier for a random HS256 secret held only here (development
/// without a key file): no token verifies.
fn ephemeral_verifier(issuer: &str, audience: &str) -> Result<Verifier, ConfigError> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut raw = zeroize::Zeroizing::new([0u8; 48]);
    ring::rand::SystemRandom::new()
        .fill(&mut raw[..])
        .map_err(|_| ConfigError::Random)?;
    let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&raw[..]));
    Ok(Verifier::from_bytes(
        b64.as_bytes(),
        "ephemeral development key",
        issuer,
        audience,
    )?)
}

fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "https" | "http")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', '@'])
}

impl Config {
    /// Check `args` and the environment (`env` looks a variable up) for
    /// `mode`. In development only, no `CHOKEPOINT_API_KEY_FILE` is an
    /// ephemeral random HS256 key nobody holds (every token is refused:
    /// the server runs, nobody gets in); production refused it already.
    pub fn from_args(
        args: &Args,
        env: impl Fn(&str) -> Option<String>,
        mode: mode::Mode,
    ) -> Result<Config, ConfigError> {
        if args.issuer.is_empty() || args.audience.is_empty() {
            return Err(ConfigError::EmptyClaim);
        }
        if args.max_connections == 0 {
            return Err(ConfigError::ZeroLimit("max-connections"));
        }
        if args.rate_per_user == 0 {
            return Err(ConfigError::ZeroLimit("rate-per-user"));
        }
        if args.burst_per_user == 0 {
            return Err(ConfigError::ZeroLimit("burst-per-user"));
        }
        for o in &args.allowed_origins {
            if !valid_origin(o) {
                return Err(ConfigError::BadOrigin(o.clone()));
            }
        }
        if args.metrics_listen.port() != 0 && args.metrics_listen == args.listen {
            return Err(ConfigError::MetricsOnApiPort(args.metrics_listen));
        }
        let verifier = match env(KEY_FILE_ENV).filter(|s| !s.is_empty()) {
            Some(key_file) => Verifier::from_file(
                std::path::Path::new(&key_file),
                &args.issuer,
                &args.audience,
            )?,
            None if !mode.is_production() => ephemeral_verifier(&args.issuer, &args.audience)?,
            None => {
                return Err(ConfigError::MissingEnv(
                    KEY_FILE_ENV,
                    "an Ed25519 public key (PEM) or an HS256 secret (base64, >= 32 bytes)",
                ));
            }
        };
        let service = match env(SERVICE_TOKEN_FILE_ENV).filter(|s| !s.is_empty()) {
            Some(p) => Some(ServiceToken::from_file(std::path::Path::new(&p))?),
            None => None,
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(crate::server::tls_config(cert, key)?),
            _ => {
                if !args.listen.ip().is_loopback() {
                    return Err(ConfigError::PlainOffLoopback(args.listen));
                }
                None
            }
        };
        Ok(Config {
            listen: args.listen,
            tls,
            store: args.store.clone(),
            origins: args.allowed_origins.iter().cloned().collect(),
            verifier,
            service,
            max_connections: args.max_connections,
            rate: (args.rate_per_user, args.burst_per_user),
            mode,
            worker: args.worker.clone(),
            metrics_listen: args.metrics_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(valid_origin("https://app.example.com"));
        assert!(valid_origin("http://localhost:3000"));
        assert!(!valid_origin("https://app.example.com/"));
        assert!(!valid_origin("app.example.com"));
        assert!(!valid_origin("*"));
        assert!(!valid_origin("ftp://x"));
    }
}
