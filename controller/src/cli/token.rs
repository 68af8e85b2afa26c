//! `egressctl token mint`: mint a bearer token for chokepoint-api, for
//! tests and operators.
//!
//! The key file picks the algorithm, as on the API side: an Ed25519 private
//! key in PEM (`openssl genpkey -algorithm ed25519`) signs `EdDSA` (the API
//! holds the matching public key); anything else must be base64 of an HS256
//! secret of at least 32 bytes (the API holds the same secret). Claims:
//! `sub`, `org`, `iat`, `exp`, `aud`, `iss`. The token goes to stdout, one
//! line.
//!
//! Must never: print the key, or a token on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use clap::{Args as ClapArgs, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Shortest HS256 secret, in bytes.
const MIN_SECRET_LEN: usize = 32;
/// Longest `--ttl`: 30 days.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// Arguments of `egressctl token`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The action.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// `egressctl token` actions.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token for chokepoint-api and print it.
    Mint(MintArgs),
}

/// Arguments of `egressctl token mint`.
#[derive(Debug, ClapArgs)]
pub struct MintArgs {
    /// Signing key: an Ed25519 private key (PEM) for EdDSA, or an HS256
    /// secret as base64 of at least 32 bytes.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// The org id (`org` claim).
    #[arg(long)]
    pub org: String,
    /// The user (`sub` claim).
    #[arg(long)]
    pub user: String,
    /// Lifetime: seconds, or a number with s, m, h or d (at most 30d).
    #[arg(long, value_name = "DURATION")]
    pub ttl: String,
    /// The `iss` claim (the API's `--issuer`).
    #[arg(long, default_value = "chokepoint")]
    pub issuer: String,
    /// The `aud` claim (the API's `--audience`).
    #[arg(long, default_value = "chokepoint-api")]
    pub audience: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    org: &'a str,
    iat: u64,
    exp: u64,
    aud: &'a str,
    iss: &'a str,
}

/// Parse `--ttl`: `90`, `90s`, `15m`, `12h`, `7d`.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (s.get(..i), 1),
        Some((i, 'm')) => (s.get(..i), 60),
        Some((i, 'h')) => (s.get(..i), 3600),
        Some((i, 'd')) => (s.get(..i), 86_400),
        _ => (Some(s), 1),
    };
    let n: u64 = num
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            format!("--ttl `{s}`: write seconds or a number with s, m, h or d, e.g. 15m")
        })?;
    let secs = n.saturating_mul(mult);
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(format!("--ttl `{s}`: must be between 1s and 30d"));
    }
    Ok(secs)
}

fn signing_key(path: &PathBuf) -> Result<(Algorithm, EncodingKey), String> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("{name}: not a PEM key or a base64 secret"))?
        .trim();
    if text.starts_with("-----BEGIN") {
        if !text.starts_with("-----BEGIN PRIVATE KEY-----") {
            return Err(format!(
                "{name}: a PEM key file must hold an Ed25519 private key (`openssl genpkey -algorithm ed25519`)"
            ));
        }
        let key = EncodingKey::from_ed_pem(text.as_bytes())
            .map_err(|_| format!("{name}: not an Ed25519 private key"))?;
        return Ok((Algorithm::EdDSA, key));
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| {
            format!("{name}: write an Ed25519 private key in PEM, or an HS256 secret as base64")
        })?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "{name}: an HS256 secret must be at least {MIN_SECRET_LEN} bytes (`openssl rand -base64 32`)"
        ));
    }
    Ok((Algorithm::HS256, EncodingKey::from_secret(&secret)))
}

/// Mint the token for `args` at Unix time `now`.
pub fn mint(args: &MintArgs, now: u64) -> Result<String, String> {
    if args.org.is_empty() || args.user.is_empty() {
        return Err("--org and --user must not be empty".into());
    }
    let ttl = parse_ttl(&args.ttl)?;
    let (alg, key) = signing_key(&args.key_file)?;
    let claims = Claims {
        sub: &args.user,
        org: &args.org,
        iat: now,
        exp: now.saturating_add(ttl),
        aud: &args.audience,
        iss: &args.issuer,
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(|e| format!("signing: {e}"))
}

/// Run `egressctl token …`.
pub fn run(args: &Args) -> ExitCode {
    match &args.command {
        TokenCommand::Mint(m) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match mint(m, now) {
                Ok(token) => match super::emit_line(&token) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(_) => ExitCode::from(1),
                },
                Err(msg) => super::fail_usage(&msg),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("12h"), Ok(43_200));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        for bad in [
            "",
            "0",
            "m",
            "-5",
            "1.5h",
            "31d",
            "10x",
            "99999999999999999999",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
