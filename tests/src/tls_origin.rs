//! A TLS HTTP/1.1 origin on a loopback address that plays an integration's
//! API (the calendar of the worker tests) and echoes what it received.
//!
//! Certificates come from the real `openssl` CLI ([`TestCa::generate`]): a
//! throwaway CA and one leaf for the given names, written to a temporary
//! directory. The origin records every request (method, target, headers)
//! and counts TCP connections, so a test can assert that a denied request
//! never reached it.
//!
//! Routes (anything else answers `200 ok`):
//! - `/echo`: `201`, the bearer token of the request echoed raw, base64,
//!   base64url, percent-encoded, JSON-escaped, in `X-Echo` and `Set-Cookie`
//!   headers, and split across two chunks of a chunked body;
//! - `/redirect?to=URL` (percent-free URL): `307` to `URL`, with the token in
//!   the `Location` query;
//! - `/big?n=BYTES`: a body of `n` bytes of `a`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::origin::Seen;

/// A CA and a leaf certificate made with the `openssl` CLI.
pub struct TestCa {
    /// The CA certificate (PEM): give it to the client as a trust root.
    pub ca_pem: PathBuf,
    /// The leaf certificate (PEM).
    pub cert_pem: PathBuf,
    /// The leaf key (PEM).
    pub key_pem: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI is needed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Generate a CA and a leaf for `names` (DNS names) and `ips` in `dir`.
    pub fn generate(dir: &Path, names: &[&str], ips: &[&str]) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=chokepoint test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        let mut san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        san.extend(ips.iter().map(|i| format!("IP:{i}")));
        std::fs::write(
            dir.join("leaf.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                san.join(",")
            ),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=chokepoint test origin",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        );
        TestCa {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("leaf.pem"),
            key_pem: dir.join("leaf.key"),
        }
    }
}

/// Decides whether a bearer token is valid (see
/// [`TlsOrigin::start_with_auth`]).
pub type AuthCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    stop: AtomicBool,
    auth: Option<AuthCheck>,
    /// (bearer token presented, accepted).
    auth_log: Mutex<Vec<(String, bool)>>,
}

/// The TLS origin; stops on drop.
pub struct TlsOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TlsOrigin {
    /// Listen on `addr` (port 0 picks one) with the leaf of `ca`.
    pub fn start(addr: SocketAddr, ca: &TestCa) -> TlsOrigin {
        Self::start_inner(addr, ca, None)
    }

    /// The same origin, but an integration that checks its bearer token:
    /// a request whose `Authorization: Bearer` token `check` refuses (or
    /// that has none) is answered `401` with `WWW-Authenticate: Bearer
    /// error="invalid_token"`, before any route. Every check is recorded
    /// ([`TlsOrigin::auth_log`]).
    pub fn start_with_auth(addr: SocketAddr, ca: &TestCa, check: AuthCheck) -> TlsOrigin {
        Self::start_inner(addr, ca, Some(check))
    }

    fn start_inner(addr: SocketAddr, ca: &TestCa, auth: Option<AuthCheck>) -> TlsOrigin {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca.cert_pem)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&ca.key_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            auth,
            ..Shared::default()
        });
        let sh = Arc::clone(&shared);
        // Blocking accept (no polling delay); `Drop` wakes it with a connection.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                let (sh, config) = (Arc::clone(&sh), Arc::clone(&config));
                std::thread::spawn(move || serve(stream, &config, &sh));
            }
        });
        TlsOrigin { addr, shared }
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// With [`TlsOrigin::start_with_auth`]: every bearer token presented
    /// and whether it was accepted, in order.
    pub fn auth_log(&self) -> Vec<(String, bool)> {
        self.shared.auth_log.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Percent-encode every byte outside the RFC 3986 unreserved set.
pub fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn serve(tcp: TcpStream, config: &Arc<rustls::ServerConfig>, sh: &Shared) {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
    }
    let Some(first) = head.first() else { return };
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = head
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let seen = Seen {
        method,
        target: target.clone(),
        headers: headers.clone(),
        body_len: len,
    };
    sh.seen.lock().unwrap().push(seen.clone());
    let token = seen
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if let Some(check) = &sh.auth {
        let ok = !token.is_empty() && check(&token);
        sh.auth_log.lock().unwrap().push((token.clone(), ok));
        if !ok {
            let _ = write!(
                tls,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{{\"error\":\"invalid_token\"}}"
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            return;
        }
    }
    let _ = match path {
        "/echo" => echo(&mut tls, &token),
        "/redirect" => {
            let to = query.strip_prefix("to=").unwrap_or("/");
            let sep = if to.contains('?') { '&' } else { '?' };
            write!(
                tls,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}{sep}t={}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                percent(&token)
            )
        }
        "/big" => {
            let n: usize = query
                .strip_prefix("n=")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
            )
            .and_then(|()| {
                let chunk = vec![b'a'; 64 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    tls.write_all(&chunk[..k])?;
                    left -= k;
                }
                Ok(())
            })
        }
        _ => write!(
            tls,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        ),
    };
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn echo<W: Write>(out: &mut W, token: &str) -> std::io::Result<()> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(token);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let json = serde_json::to_string(&serde_json::json!({ "received": token })).unwrap();
    let body_a = format!(
        "raw={token}\nbase64={b64}\nbase64url={b64url}\npercent={}\njson={json}\nsplit=",
        percent(token)
    );
    let cut = token.len() / 2;
    let (t1, t2) = token.split_at(cut);
    write!(
        out,
        "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Echo: {token}\r\nSet-Cookie: t={token}; Secure\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    for part in [format!("{body_a}{t1}"), format!("{t2}\nend\n")] {
        write!(out, "{:x}\r\n{part}\r\n", part.len())?;
        out.flush()?;
        std::thread::sleep(Duration::from_millis(30));
    }
    write!(out, "0\r\n\r\n")
}
