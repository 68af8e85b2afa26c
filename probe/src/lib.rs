//! The self-probe of every long-running chokepoint binary:
//! `egress-proxy --healthcheck URL`, `egress-controller --healthcheck URL`,
//! `egress-controller worker --healthcheck URL`,
//! `chokepoint-api --healthcheck URL` (a FROM-scratch image has no curl).
//!
//! One GET, exit 0 on a 2xx answer, 1 otherwise with one line naming why
//! (64 for bad probe flags), all within [`TIMEOUT`]. URLs: `http://HOST:PORT/PATH`,
//! `https://…` (trusting only `--healthcheck-ca FILE`, PEM), or
//! `unix:SOCKET[:/PATH]` (plain HTTP over a unix socket, `/readyz` by
//! default; the worker listens on one).
//!
//! Must never: bind a port, read a policy, key or store, follow a redirect,
//! print the response body, or take longer than [`TIMEOUT`]. Synchronous
//! std I/O on purpose: no runtime to start.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The whole probe (resolve, connect, TLS, request, status line) must fit
/// in this.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The longest status line read.
const MAX_STATUS_LINE: usize = 4096;

/// Why a probe failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProbeError {
    /// The URL or the CA file is unusable (exit 64).
    Usage(String),
    /// The target did not answer 2xx in time (exit 1).
    Unhealthy(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Usage(s) | ProbeError::Unhealthy(s) => f.write_str(s),
        }
    }
}

/// Where to probe, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `http`/`https` to `host:port`, GET `path`.
    Tcp {
        tls: bool,
        host: String,
        port: u16,
        path: String,
    },
    /// A unix socket, GET `path`.
    Unix { socket: PathBuf, path: String },
}

fn parse(url: &str) -> Result<Target, ProbeError> {
    if let Some(rest) = url.strip_prefix("unix:") {
        let (socket, path) = match rest.split_once(":/") {
            Some((s, p)) => (s, format!("/{p}")),
            None => (rest, "/readyz".to_owned()),
        };
        if socket.is_empty() {
            return Err(ProbeError::Usage(format!(
                "--healthcheck `{url}`: write `unix:/run/chokepoint/worker.sock[:/readyz]`"
            )));
        }
        return Ok(Target::Unix {
            socket: PathBuf::from(socket),
            path,
        });
    }
    let bad = |why: &str| {
        ProbeError::Usage(format!(
            "--healthcheck `{url}`: {why}; write `http://127.0.0.1:9090/readyz`, `https://HOST:PORT/PATH` or `unix:SOCKET[:/PATH]`"
        ))
    };
    let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let tls = match u.scheme() {
        "http" => false,
        "https" => true,
        _ => return Err(bad("only http, https and unix are probed")),
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("no credentials in the URL"));
    }
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(bad("no host")),
    };
    let port = u.port_or_known_default().ok_or_else(|| bad("no port"))?;
    let mut path = u.path().to_owned();
    if let Some(q) = u.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target::Tcp {
        tls,
        host,
        port,
        path,
    })
}

/// Time left before `deadline`, or an error naming `what` timed out.
fn left(deadline: Instant, what: &str) -> Result<Duration, ProbeError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ProbeError::Unhealthy(format!("timed out ({}s) {what}", TIMEOUT.as_secs())))
}

fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let Some(ca) = ca else {
        return Err(ProbeError::Usage(
            "an https probe needs --healthcheck-ca FILE (the PEM CA that issued the server's certificate)".into(),
        ));
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ProbeError::Usage(format!("--healthcheck-ca {}: {e}", ca.display())))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| ProbeError::Usage(format!("--healthcheck-ca {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(ProbeError::Usage(format!(
            "--healthcheck-ca {}: no certificate in the file",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Usage(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Send the request on `io` and read the status code.
fn exchange<S: Read + Write>(
    io: &mut S,
    host: &str,
    path: &str,
    deadline: Instant,
) -> Result<u16, ProbeError> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chokepoint-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let io_err = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ProbeError::Unhealthy(format!(
                "timed out ({}s) waiting for an answer",
                TIMEOUT.as_secs()
            ))
        } else {
            ProbeError::Unhealthy(format!("request failed: {e}"))
        }
    };
    io.write_all(req.as_bytes()).map_err(io_err)?;
    io.flush().map_err(io_err)?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 512];
    loop {
        left(deadline, "waiting for an answer")?;
        let n = io.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(buf.get(..n).unwrap_or_default());
        if line.contains(&b'\n') || line.len() >= MAX_STATUS_LINE {
            break;
        }
    }
    status_code(&line)
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Result<u16, ProbeError> {
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(first);
    let mut parts = text.trim_end().splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => code
            .parse::<u16>()
            .map_err(|_| ProbeError::Unhealthy("the answer is not HTTP".into())),
        _ if head.is_empty() => Err(ProbeError::Unhealthy(
            "the connection closed without an answer".into(),
        )),
        _ => Err(ProbeError::Unhealthy("the answer is not HTTP".into())),
    }
}

/// GET `url` once and return its status code (any code; see [`check`]).
pub fn get(url: &str, ca: Option<&Path>) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + TIMEOUT;
    match parse(url)? {
        Target::Unix { socket, path } => {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| {
                ProbeError::Unhealthy(format!("cannot connect to unix:{}: {e}", socket.display()))
            })?;
            let t = left(deadline, "connecting")?;
            let _ = s.set_read_timeout(Some(t));
            let _ = s.set_write_timeout(Some(t));
            exchange(&mut s, "localhost", &path, deadline)
        }
        Target::Tcp {
            tls,
            host,
            port,
            path,
        } => {
            // Check the CA before any connection.
            let config = if tls { Some(tls_config(ca)?) } else { None };
            let addrs: Vec<_> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| ProbeError::Unhealthy(format!("cannot resolve {host}: {e}")))?
                .take(8)
                .collect();
            let mut last = format!("{host} has no address");
            let mut stream = None;
            for a in addrs {
                let t = left(deadline, "connecting")?;
                match TcpStream::connect_timeout(&a, t) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = format!("cannot connect to {a}: {e}"),
                }
            }
            let mut s = stream.ok_or(ProbeError::Unhealthy(last))?;
            let t = left(deadline, "connecting")?;
            let _ = s.set_read_timeout(Some(t));
            let _ = s.set_write_timeout(Some(t));
            let host_header = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            match config {
                None => exchange(&mut s, &host_header, &path, deadline),
                Some(config) => {
                    let name = rustls_pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| ProbeError::Usage(format!("--healthcheck: {host}: {e}")))?;
                    let conn = rustls::ClientConnection::new(config, name)
                        .map_err(|e| ProbeError::Unhealthy(format!("TLS: {e}")))?;
                    let mut tls = rustls::StreamOwned::new(conn, s);
                    exchange(&mut tls, &host_header, &path, deadline)
                }
            }
        }
    }
}

/// Probe `url`: `Ok` on 2xx, otherwise the reason.
pub fn check(url: &str, ca: Option<&Path>) -> Result<u16, ProbeError> {
    let code = get(url, ca)?;
    if (200..300).contains(&code) {
        Ok(code)
    } else {
        Err(ProbeError::Unhealthy(format!("{url} answered {code}")))
    }
}

/// The probe's flags, when `args` (without the program name) ask for one:
/// `--healthcheck URL` (or `--healthcheck=URL`) and optionally
/// `--healthcheck-ca FILE`. `None` when `--healthcheck` is absent; an error
/// line when it is present with anything else.
pub fn parse_args(args: &[OsString]) -> Option<Result<(String, Option<PathBuf>), String>> {
    let asks = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|s| s == "--healthcheck" || s.starts_with("--healthcheck="))
    });
    if !asks {
        return None;
    }
    let mut url = None;
    let mut ca = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else {
            return Some(Err("--healthcheck: arguments must be UTF-8".into()));
        };
        let (flag, inline) = match s.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (s, None),
        };
        let value = match inline {
            Some(v) => Some(v),
            None => it.next().and_then(|v| v.to_str()).map(str::to_owned),
        };
        match (flag, value) {
            ("--healthcheck", Some(v)) if url.is_none() => url = Some(v),
            ("--healthcheck-ca", Some(v)) if ca.is_none() => ca = Some(PathBuf::from(v)),
            _ => {
                return Some(Err(format!(
                    "--healthcheck takes only `--healthcheck URL [--healthcheck-ca FILE]`, not `{s}`"
                )));
            }
        }
    }
    url.map(|u| Ok((u, ca)))
}

/// If `args` (without the program name) ask for a probe, run it and
/// return the exit code (0 healthy, 1 unhealthy, 64 bad flags), printing
/// one line to stderr when not healthy; `None` otherwise.
pub fn main_if_asked(program: &str, args: &[OsString]) -> Option<ExitCode> {
    let parsed = parse_args(args)?;
    let say = |line: &str| {
        let _ = writeln!(std::io::stderr().lock(), "{program}: healthcheck: {line}");
    };
    Some(match parsed {
        Err(e) => {
            say(&e);
            ExitCode::from(64)
        }
        Ok((url, ca)) => match check(&url, ca.as_deref()) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e @ ProbeError::Usage(_)) => {
                say(&e.to_string());
                ExitCode::from(64)
            }
            Err(e) => {
                say(&e.to_string());
                ExitCode::FAILURE
            }
        },
    })
}

/// The help text each binary appends (`after_help`).
pub const HELP: &str = "Self-probe (for container healthchecks; nothing else runs):\n  --healthcheck URL        GET URL (http://, https:// or unix:SOCKET[:/PATH]); exit 0 on 2xx, else 1\n  --healthcheck-ca FILE    PEM CA to trust for an https URL";

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse("http://127.0.0.1:9090/readyz").ok(),
            Some(Target::Tcp {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9090,
                path: "/readyz".into()
            })
        );
        assert_eq!(
            parse("unix:/run/x.sock").ok(),
            Some(Target::Unix {
                socket: "/run/x.sock".into(),
                path: "/readyz".into()
            })
        );
        assert_eq!(
            parse("unix:/run/x.sock:/healthz").ok(),
            Some(Target::Unix {
                socket: "/run/x.sock".into(),
                path: "/healthz".into()
            })
        );
        for bad in ["ftp://x/", "http://u:p@h/", "nonsense", "unix:"] {
            assert!(matches!(parse(bad), Err(ProbeError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn parses_flags() {
        assert!(parse_args(&os(&["--policy", "p"])).is_none());
        assert_eq!(
            parse_args(&os(&[
                "--healthcheck",
                "http://h/",
                "--healthcheck-ca",
                "c"
            ])),
            Some(Ok(("http://h/".into(), Some("c".into()))))
        );
        assert_eq!(
            parse_args(&os(&["--healthcheck=http://h/"])),
            Some(Ok(("http://h/".into(), None)))
        );
        assert!(matches!(
            parse_args(&os(&["--healthcheck", "http://h/", "--policy", "p"])),
            Some(Err(_))
        ));
        assert!(matches!(parse_args(&os(&["--healthcheck"])), Some(Err(_))));
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n").ok(), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n").ok(), Some(503));
        assert!(status_code(b"").is_err());
        assert!(status_code(b"SSH-2.0-x\r\n").is_err());
    }
}
