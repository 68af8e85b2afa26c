//! Test harness: the real `chokepoint-api` binary over TLS on loopback, keys
//! and certificates made with the real `openssl`, a raw HTTP/1.1 client and
//! a tokio-tungstenite WebSocket client over tokio-rustls.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub const ISS: &str = "https://idp.test.invalid";
pub const AUD: &str = "chokepoint-api";
pub const ORIGIN: &str = "https://app.example.com";
pub const SERVICE_TOKEN: &str = "svc-0123456789abcdef0123456789abcdef-runtime";

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Keys, certificates and tokens for one test.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Ed25519 private key (PEM) and public key (PEM).
    pub ed_private: PathBuf,
    pub ed_public: PathBuf,
    /// HS256 secret (base64) — another key, for algorithm-switch tests.
    pub hs_secret: Vec<u8>,
    pub hs_file: PathBuf,
    pub service_file: PathBuf,
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=chokepoint test CA",
            ])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(p("key.pem"))
            .arg("-out")
            .arg(p("csr.pem")));
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("csr.pem"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("cert.pem")));
        run(Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(p("ed.pem")));
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(p("ed.pem"))
            .arg("-out")
            .arg(p("ed.pub.pem")));
        let hs_secret: Vec<u8> = (0u8..48)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        std::fs::write(
            p("hs.b64"),
            base64::engine::general_purpose::STANDARD.encode(&hs_secret),
        )
        .unwrap();
        std::fs::write(p("service.token"), format!("{SERVICE_TOKEN}\n")).unwrap();
        Keys {
            ca: p("ca.pem"),
            cert: p("cert.pem"),
            key: p("key.pem"),
            ed_private: p("ed.pem"),
            ed_public: p("ed.pub.pem"),
            hs_secret,
            hs_file: p("hs.b64"),
            service_file: p("service.token"),
            dir,
        }
    }

    pub fn ed_encoding(&self) -> EncodingKey {
        EncodingKey::from_ed_pem(&std::fs::read(&self.ed_private).unwrap()).unwrap()
    }

    /// A good EdDSA token for (org, user), valid for `ttl` seconds.
    pub fn token(&self, org: &str, user: &str, ttl: u64) -> String {
        let now = now_secs();
        self.token_with(&claims(org, user, now - 5, now + ttl), Algorithm::EdDSA)
    }

    pub fn token_with(&self, claims: &serde_json::Value, alg: Algorithm) -> String {
        let key = match alg {
            Algorithm::EdDSA => self.ed_encoding(),
            Algorithm::HS256 => EncodingKey::from_secret(&self.hs_secret),
            other => panic!("unused algorithm {other:?}"),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn claims(org: &str, user: &str, iat: u64, exp: u64) -> serde_json::Value {
    serde_json::json!({"sub": user, "org": org, "iat": iat, "exp": exp, "aud": AUD, "iss": ISS})
}

/// The running binary; killed on drop.
pub struct Api {
    pub child: Child,
    pub addr: SocketAddr,
    pub store: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    pub tls: bool,
    ca: PathBuf,
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chokepoint-api"))
}

/// Start the binary with TLS, the Ed25519 key, one allowed origin, and a
/// store in the keys' directory.
pub fn start(keys: &Keys) -> Api {
    let store = keys.dir.path().join("api.db");
    start_with(keys, &store, &[], None)
}

pub fn start_with(keys: &Keys, store: &Path, extra: &[&str], listen: Option<SocketAddr>) -> Api {
    let listen = listen.map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
    let mut cmd = Command::new(bin());
    cmd.args(["--listen", &listen, "--metrics-listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&keys.cert)
        .arg("--tls-key")
        .arg(&keys.key)
        .arg("--store")
        .arg(format!("sqlite:{}", store.display()))
        .args([
            "--allowed-origin",
            ORIGIN,
            "--issuer",
            ISS,
            "--audience",
            AUD,
        ])
        .args(extra)
        .env("CHOKEPOINT_API_KEY_FILE", &keys.ed_public)
        .env("CHOKEPOINT_API_SERVICE_TOKEN_FILE", &keys.service_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn(cmd, store, &keys.ca, true)
}

pub fn spawn(mut cmd: Command, store: &Path, ca: &Path, tls: bool) -> Api {
    let mut child = cmd.spawn().expect("start chokepoint-api");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listen=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(addr);
            }
            log2.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("chokepoint-api did not start: {:?}", log.lock().unwrap()));
    Api {
        child,
        addr: addr.parse().unwrap(),
        store: store.to_owned(),
        log,
        tls,
        ca: ca.to_owned(),
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", "default-src 'none'"),
    ("referrer-policy", "no-referrer"),
];

pub fn assert_security_headers(r: &Resp, what: &str) {
    for (k, v) in SECURITY_HEADERS {
        assert_eq!(r.header(k), Some(v), "{what}: header {k} in {r:?}");
    }
}

impl Api {
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    pub async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        self.connector().connect(name, tcp).await.unwrap()
    }

    /// One request over a fresh TLS connection (`Connection: close`).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut s = self.tls().await;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
        parse_response(&raw)
    }

    pub async fn user(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {token}");
        self.request(method, path, &[("Authorization", &auth)], body)
            .await
    }

    pub async fn service(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {SERVICE_TOKEN}");
        self.request(method, path, &[("Authorization", &auth)], body)
            .await
    }

    pub async fn conversation(&self, token: &str) -> String {
        let r = self
            .user("POST", "/v1/conversations", token, Some("{}"))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.json()["id"].as_str().unwrap().to_owned()
    }

    pub async fn ticket(&self, token: &str, conversation: &str, origin: Option<&str>) -> Resp {
        let auth = format!("Bearer {token}");
        let mut h = vec![("Authorization", auth.as_str())];
        if let Some(o) = origin {
            h.push(("Origin", o));
        }
        let body = serde_json::json!({ "conversation": conversation }).to_string();
        self.request("POST", "/v1/ws-ticket", &h, Some(&body)).await
    }

    /// Open a WebSocket with these extra headers; the HTTP response on
    /// refusal.
    pub async fn ws(&self, path: &str, headers: &[(&str, &str)]) -> Result<(Ws, Resp), Resp> {
        let s = self.tls().await;
        let url = format!("wss://127.0.0.1:{}{path}", self.addr.port());
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        config.max_message_size = Some(8 << 20);
        config.max_frame_size = Some(8 << 20);
        match tokio_tungstenite::client_async_with_config(req, s, Some(config)).await {
            Ok((ws, resp)) => {
                let r = Resp {
                    status: resp.status().as_u16(),
                    headers: resp
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body: String::new(),
                };
                Ok((ws, r))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Resp {
                status: resp.status().as_u16(),
                headers: resp
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
                body: resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => panic!("WebSocket handshake error: {e}"),
        }
    }

    /// A socket opened with a bearer token (non-browser client).
    pub async fn ws_bearer(&self, conversation: &str, token: &str, after: Option<i64>) -> Ws {
        let path = match after {
            Some(a) => format!("/v1/conversations/{conversation}/ws?after={a}"),
            None => format!("/v1/conversations/{conversation}/ws"),
        };
        let auth = format!("Bearer {token}");
        self.ws(&path, &[("Authorization", &auth)])
            .await
            .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
            .0
    }

    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

pub fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Wait until `f` is true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
