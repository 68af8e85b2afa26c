//! The pinned HTTP client: resolve once, validate every address, dial
//! exactly a validated `SocketAddr`, TLS with rustls, HTTP/1.1 with hyper.
//!
//! Owns: the hickory resolver (system configuration, or only the
//! `--dns-server`s given), the rustls client configuration (TLS 1.2 and 1.3,
//! webpki roots plus `--extra-ca`, SNI = the host), one connection per
//! request. Must never: dial a hostname (nothing here can resolve a name a
//! second time), or hand out an address that `netpolicy::check_addrs` did
//! not return.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use netpolicy::{Destination, Host, Policy, Reason, Scheme};
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;

/// Bound on one whole lookup (all servers, all attempts).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one TCP connect + TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a DNS answer is kept, whatever its TTL.
pub const DNS_CACHE_MAX_TTL: Duration = Duration::from_secs(30);
/// Names kept at most (expired ones are dropped first, then all).
const DNS_CACHE_NAMES: usize = 1024;

/// An answer that passed `check_addrs`, until its TTL runs out.
struct Cached {
    ips: Vec<IpAddr>,
    until: Instant,
}

/// The resolver and TLS configuration.
pub struct PinnedClient {
    resolver: TokioResolver,
    tls: tokio_rustls::TlsConnector,
    /// Name (normalized, as in the destination) → its last checked answer.
    cache: Mutex<HashMap<String, Cached>>,
}

impl PinnedClient {
    /// Build with the system resolver when `dns_servers` is empty, and the
    /// webpki roots plus the certificates in `extra_ca` (PEM).
    pub fn new(dns_servers: &[SocketAddr], extra_ca: &[&Path]) -> anyhow::Result<PinnedClient> {
        let provider = TokioRuntimeProvider::default();
        let resolver = if dns_servers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| anyhow::anyhow!("cannot read the system DNS configuration: {e}"))?
                .build()
        } else {
            let mut config = ResolverConfig::default();
            for s in dns_servers {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                config.add_name_server(ns);
            }
            let mut opts = ResolverOpts::default();
            opts.use_hosts_file = ResolveHosts::Never;
            opts.timeout = Duration::from_secs(2);
            // hickory's own cache is off: answers are kept by `PinnedClient`
            // only after the address check, for their TTL (capped), and a
            // TTL-0 answer (the rebinding attack's) is never kept.
            opts.cache_size = 0;
            TokioResolver::builder_with_config(config, provider)
                .with_options(opts)
                .build()
        }
        .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?;

        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in extra_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("--extra-ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("--extra-ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("--extra-ca {}: no certificate in the file", path.display());
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("--extra-ca {}: {e}", path.display()))?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(PinnedClient {
            resolver,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Resolve `dest` (or take its cached answer, still within its TTL) and
    /// validate every address, on every call; the addresses to dial.
    pub async fn resolve(
        &self,
        policy: &Policy,
        dest: &Destination,
    ) -> Result<Vec<SocketAddr>, Reason> {
        let (ips, keep) = match &dest.host {
            Host::Ip(ip) => (vec![*ip], None),
            Host::Name(name) => match self.cached(name) {
                Some(ips) => (ips, None),
                None => {
                    // A trailing dot: the name is absolute, no search domains.
                    let fqdn = format!("{name}.");
                    match tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup_ip(fqdn)).await
                    {
                        Ok(Ok(lookup)) => {
                            let ips: Vec<IpAddr> = lookup.iter().collect();
                            let ttl = answer_ttl(lookup.as_lookup().answers());
                            (ips, Some((name, ttl)))
                        }
                        Ok(Err(_)) | Err(_) => return Err(Reason::Unresolvable),
                    }
                }
            },
        };
        let ok = netpolicy::check_addrs(policy, dest, &ips)?;
        if ok.is_empty() {
            return Err(Reason::Unresolvable);
        }
        if let Some((name, ttl)) = keep {
            self.keep(name, ips, ttl);
        }
        Ok(ok
            .into_iter()
            .map(|ip| SocketAddr::new(ip, dest.port))
            .collect())
    }

    /// The cached answer for `name`, if its TTL has not run out.
    fn cached(&self, name: &str) -> Option<Vec<IpAddr>> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(name)?;
        (Instant::now() < entry.until).then(|| entry.ips.clone())
    }

    /// Keep an answer that passed the check for `ttl` (not at all for 0).
    fn keep(&self, name: &str, ips: Vec<IpAddr>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= DNS_CACHE_NAMES && !cache.contains_key(name) {
            cache.retain(|_, c| now < c.until);
            if cache.len() >= DNS_CACHE_NAMES {
                cache.clear();
            }
        }
        cache.insert(
            name.to_owned(),
            Cached {
                ips,
                until: now + ttl,
            },
        );
    }

    /// Connect to the first of `addrs` that accepts (TLS for https), send
    /// `req` over HTTP/1.1 and return the response head (body streaming).
    pub async fn send(
        &self,
        dest: &Destination,
        addrs: &[SocketAddr],
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, Reason> {
        let mut sender = None;
        for addr in addrs {
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(dest, *addr)).await;
            if let Ok(Ok(s)) = attempt {
                sender = Some(s);
                break;
            }
        }
        let mut sender = sender.ok_or(Reason::UpstreamConnectFailed)?;
        sender
            .send_request(req)
            .await
            .map_err(|_| Reason::UpstreamConnectFailed)
    }

    async fn connect(
        &self,
        dest: &Destination,
        addr: SocketAddr,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Reason> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| Reason::UpstreamConnectFailed)?;
        let _ = tcp.set_nodelay(true);
        match dest.scheme {
            Scheme::Https => {
                let name = match &dest.host {
                    Host::Name(n) => ServerName::try_from(n.clone()),
                    Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
                }
                .map_err(|_| Reason::InvalidHost)?;
                let tls = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|_| Reason::UpstreamConnectFailed)?;
                handshake(tls).await
            }
            Scheme::Http => handshake(tcp).await,
            _ => Err(Reason::InvalidTarget),
        }
    }
}

/// How long an answer may be kept: the smallest TTL among its records
/// (CNAMEs included), capped at [`DNS_CACHE_MAX_TTL`]; zero without records.
fn answer_ttl(records: &[hickory_resolver::proto::rr::Record]) -> Duration {
    records
        .iter()
        .map(|r| Duration::from_secs(u64::from(r.ttl)))
        .min()
        .unwrap_or(Duration::ZERO)
        .min(DNS_CACHE_MAX_TTL)
}

async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Reason>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Reason::UpstreamConnectFailed)?;
    tokio::spawn(async move {
        // The connection ends with the response or the request's deadline.
        let _ = conn.await;
    });
    Ok(sender)
}
