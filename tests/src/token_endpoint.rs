//! A strict fake OAuth token endpoint (RFC 6749 §6), behaving like the
//! strictest real providers: every refresh rotates the refresh token;
//! presenting a consumed one revokes the whole family (every token issued
//! from the same grant) — unless it comes within the configured reuse
//! window after its rotation (Auth0's "reuse interval", Okta's "grace
//! period"), in which case the same new pair is answered again. Every call
//! is recorded for a history checker.
//!
//! Tests call it in-process ([`StrictEndpoint::refresh`]) or serve it over
//! HTTP(S) on loopback ([`StrictEndpoint::serve`]), where it answers like a
//! real provider: `POST` with a form body `grant_type=refresh_token&
//! refresh_token=…`, client authentication `client_secret_basic` (checked
//! when [`StrictEndpoint::with_client`] set one), JSON answers
//! (`access_token`, `token_type`, `expires_in`, `refresh_token`), `400
//! {"error":"invalid_grant"}` on a consumed (outside the window), revoked
//! or unknown token, `401 {"error":"invalid_client"}` on bad client
//! credentials. Access tokens it issued are checked with
//! [`StrictEndpoint::access_valid`] (an integration origin answers 401
//! unless it says yes: see `TlsOrigin::start_with_auth`).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls_origin::TestCa;

/// Tolerance of [`StrictEndpoint::access_valid`] past an access token's
/// lifetime (clock granularity: the worker stores expiries in seconds).
pub const ACCESS_LEEWAY: Duration = Duration::from_secs(1);

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The refresh token presented.
    pub presented: String,
    /// What happened.
    pub result: CallResult,
    /// When (the endpoint's clock).
    pub at: Instant,
}

/// The endpoint's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// Rotated: (access token, new refresh token).
    Rotated(String, String),
    /// A reuse within the window: the same pair answered again.
    Replayed(String, String),
    /// `invalid_grant`: unknown token, revoked family, or a reuse (which
    /// revoked the family).
    InvalidGrant,
}

struct Token {
    family: u64,
    consumed: Option<(Instant, String, String)>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, Token>,
    revoked: Vec<u64>,
    families: u64,
    counter: u64,
    calls: Vec<Call>,
    /// Access token -> (family, issued at).
    access: HashMap<String, (u64, Instant)>,
    revoked_access: HashSet<String>,
    http: HttpCounts,
    /// Answer the next N HTTP calls with this status (no token consumed).
    fail_next: Option<(usize, u16)>,
    delay: Duration,
}

/// What the HTTP server saw, beyond [`StrictEndpoint::calls`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HttpCounts {
    /// HTTP requests received.
    pub requests: usize,
    /// Refused for missing or wrong client credentials.
    pub bad_client: usize,
    /// Refused as malformed (method, content type, grant type, form).
    pub bad_request: usize,
    /// Answered with an injected failure status ([`StrictEndpoint::fail_next`]).
    pub injected_failures: usize,
}

/// The endpoint.
pub struct StrictEndpoint {
    state: Mutex<State>,
    reuse_window: Duration,
    access_lifetime: Option<Duration>,
    client: Option<(String, String)>,
    /// The client authenticates in the form body (`client_secret_post`),
    /// not with `Authorization: Basic`.
    client_post: bool,
}

impl Default for StrictEndpoint {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl StrictEndpoint {
    /// An endpoint with this reuse window (zero: strict, any reuse revokes).
    pub fn new(reuse_window: Duration) -> StrictEndpoint {
        StrictEndpoint {
            state: Mutex::new(State::default()),
            reuse_window,
            access_lifetime: None,
            client: None,
            client_post: false,
        }
    }

    /// Access tokens live this long (`expires_in` in the answers, checked
    /// by [`StrictEndpoint::access_valid`] with [`ACCESS_LEEWAY`]).
    pub fn with_access_lifetime(mut self, lifetime: Duration) -> StrictEndpoint {
        self.access_lifetime = Some(lifetime);
        self
    }

    /// Over HTTP, require `client_secret_basic` with these credentials.
    pub fn with_client(mut self, client_id: &str, client_secret: &str) -> StrictEndpoint {
        self.client = Some((client_id.to_owned(), client_secret.to_owned()));
        self.client_post = false;
        self
    }

    /// Over HTTP, require `client_secret_post` with these credentials (and
    /// no `Authorization` header: one method per request, RFC 6749 §2.3).
    pub fn with_client_post(mut self, client_id: &str, client_secret: &str) -> StrictEndpoint {
        self.client = Some((client_id.to_owned(), client_secret.to_owned()));
        self.client_post = true;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a family (an authorization grant); its first refresh token.
    pub fn grant(&self) -> String {
        let mut s = self.lock();
        s.families += 1;
        s.counter += 1;
        let fam = s.families;
        let t = format!("rt-{fam}-{}", s.counter);
        s.tokens.insert(
            t.clone(),
            Token {
                family: fam,
                consumed: None,
            },
        );
        t
    }

    /// `grant_type=refresh_token` with `presented`.
    pub fn refresh(&self, presented: &str) -> CallResult {
        let mut s = self.lock();
        let window = self.reuse_window;
        let result = match s
            .tokens
            .get(presented)
            .map(|t| (t.family, t.consumed.clone()))
        {
            None => CallResult::InvalidGrant,
            Some((fam, _)) if s.revoked.contains(&fam) => CallResult::InvalidGrant,
            Some((fam, Some((at, access, next)))) => {
                if at.elapsed() <= window {
                    CallResult::Replayed(access, next)
                } else {
                    s.revoked.push(fam);
                    CallResult::InvalidGrant
                }
            }
            Some((fam, None)) => {
                s.counter += 1;
                let n = s.counter;
                let access = format!("at-{fam}-{n}");
                let next = format!("rt-{fam}-{n}");
                s.tokens.insert(
                    next.clone(),
                    Token {
                        family: fam,
                        consumed: None,
                    },
                );
                s.access.insert(access.clone(), (fam, Instant::now()));
                if let Some(t) = s.tokens.get_mut(presented) {
                    t.consumed = Some((Instant::now(), access.clone(), next.clone()));
                }
                CallResult::Rotated(access, next)
            }
        };
        s.calls.push(Call {
            presented: presented.to_owned(),
            result: result.clone(),
            at: Instant::now(),
        });
        result
    }

    /// Whether `access` is a token issued by a live family, not revoked
    /// ([`StrictEndpoint::revoke_access`]) and, with a lifetime set, not
    /// expired.
    pub fn access_valid(&self, access: &str) -> bool {
        let s = self.lock();
        let lifetime = self.access_lifetime;
        s.access.get(access).is_some_and(|(f, at)| {
            !s.revoked.contains(f)
                && !s.revoked_access.contains(access)
                && lifetime.is_none_or(|l| at.elapsed() <= l + ACCESS_LEEWAY)
        })
    }

    /// Revoke one access token (the integration answers 401 to it from now).
    pub fn revoke_access(&self, access: &str) {
        self.lock().revoked_access.insert(access.to_owned());
    }

    /// Revoke the family of `token` (a refresh or an access token it
    /// issued): every token of it is refused from now (`invalid_grant`).
    pub fn revoke_family_of(&self, token: &str) -> bool {
        let mut s = self.lock();
        let fam = s
            .tokens
            .get(token)
            .map(|t| t.family)
            .or_else(|| s.access.get(token).map(|(f, _)| *f));
        match fam {
            Some(f) => {
                if !s.revoked.contains(&f) {
                    s.revoked.push(f);
                }
                true
            }
            None => false,
        }
    }

    /// The access token of the newest rotation, if any.
    pub fn latest_access(&self) -> Option<String> {
        self.lock()
            .calls
            .iter()
            .rev()
            .find_map(|c| match &c.result {
                CallResult::Rotated(a, _) => Some(a.clone()),
                _ => None,
            })
    }

    /// Answer the next `n` HTTP calls with `status` and an error body
    /// (`temporarily_unavailable`), without looking at the token.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.lock().fail_next = (n > 0).then_some((n, status));
    }

    /// Wait this long before answering each HTTP call (a slow provider).
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Counts of the HTTP server.
    pub fn http_counts(&self) -> HttpCounts {
        self.lock().http
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Families revoked so far.
    pub fn revoked_families(&self) -> usize {
        self.lock().revoked.len()
    }
}

/// Largest request the served endpoint reads.
const MAX_REQUEST: usize = 64 * 1024;

/// TLS for [`StrictEndpoint::serve`]: the leaf of `ca`, and the host name
/// the URL uses (one of the leaf's names, resolved by the test's DNS).
pub struct ServeTls<'a> {
    /// The CA whose leaf the endpoint presents.
    pub ca: &'a TestCa,
    /// The host in the returned URL.
    pub host: &'a str,
}

/// A served endpoint; stops on drop.
pub struct EndpointServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for EndpointServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// One parsed HTTP request.
struct HttpRequest {
    method: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_request<S: Read>(s: &mut S) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
            let method = req.method?.to_owned();
            let headers: Vec<(String, String)> = crate::header_pairs(req.headers);
            let cl = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if cl > MAX_REQUEST {
                return None;
            }
            let mut body = buf[len..].to_vec();
            while body.len() < cl {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => body.extend_from_slice(&chunk[..k]),
                }
            }
            body.truncate(cl);
            return Some(HttpRequest {
                method,
                headers,
                body,
            });
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn respond<S: Write>(s: &mut S, status: u16, json: &serde_json::Value) {
    let body = json.to_string();
    let text = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}

impl StrictEndpoint {
    /// Serve the endpoint over HTTP/1.1 on `addr` (a loopback address;
    /// port 0 picks one), with TLS when `tls` is given. Returns the token
    /// URL (`http://IP:PORT/token` or `https://HOST:PORT/token`) and the
    /// server, which stops on drop. Every refresh is recorded in
    /// [`StrictEndpoint::calls`]; other HTTP outcomes in
    /// [`StrictEndpoint::http_counts`].
    pub fn serve(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<ServeTls<'_>>,
    ) -> (String, EndpointServer) {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let config = tls.as_ref().map(|t| {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.ca.cert_pem)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&t.ca.key_pem).unwrap();
            Arc::new(
                rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
            )
        });
        let url = match &tls {
            Some(t) => format!("https://{}:{}/token", t.host, addr.port()),
            None => format!("http://{addr}/token"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ep, stop2) = (Arc::clone(self), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (ep, config) = (Arc::clone(&ep), config.clone());
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    match config {
                        Some(c) => {
                            let Ok(tls) = rustls::ServerConnection::new(c) else {
                                return;
                            };
                            let mut s = rustls::StreamOwned::new(tls, conn);
                            ep.serve_one(&mut s);
                            s.conn.send_close_notify();
                            let _ = s.flush();
                        }
                        None => {
                            let mut s = conn;
                            ep.serve_one(&mut s);
                        }
                    }
                });
            }
        });
        (url, EndpointServer { addr, stop })
    }

    /// Whether the request carries the configured client credentials
    /// (`client_secret_basic` or `client_secret_post`, RFC 6749 §2.3.1),
    /// `form` being its body.
    fn client_ok(&self, req: &HttpRequest, form: &HashMap<String, String>) -> bool {
        let Some((id, secret)) = &self.client else {
            return true;
        };
        if self.client_post {
            return req.header("authorization").is_none()
                && form.get("client_id") == Some(id)
                && form.get("client_secret") == Some(secret);
        }
        if form.contains_key("client_secret") {
            return false;
        }
        let Some(b64) = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let Ok(pair) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((i, s)) = pair.split_once(':') else {
            return false;
        };
        let dec = |x: &str| {
            url::form_urlencoded::parse(format!("v={x}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        dec(i) == *id && dec(s) == *secret
    }

    fn serve_one<S: Read + Write>(&self, s: &mut S) {
        let Some(req) = read_request(s) else { return };
        let (delay, fail) = {
            let mut st = self.lock();
            st.http.requests += 1;
            let fail = match st.fail_next {
                Some((n, status)) => {
                    st.fail_next = (n > 1).then_some((n - 1, status));
                    st.http.injected_failures += 1;
                    Some(status)
                }
                None => None,
            };
            (st.delay, fail)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if let Some(status) = fail {
            return respond(
                s,
                status,
                &serde_json::json!({"error": "temporarily_unavailable"}),
            );
        }
        let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
            .into_owned()
            .collect();
        let form_type = req
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if req.method != "POST" || !form_type {
            self.lock().http.bad_request += 1;
            return respond(s, 400, &serde_json::json!({"error": "invalid_request"}));
        }
        if !self.client_ok(&req, &form) {
            self.lock().http.bad_client += 1;
            return respond(s, 401, &serde_json::json!({"error": "invalid_client"}));
        }
        if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
            self.lock().http.bad_request += 1;
            return respond(
                s,
                400,
                &serde_json::json!({"error": "unsupported_grant_type"}),
            );
        }
        let Some(presented) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
            self.lock().http.bad_request += 1;
            return respond(s, 400, &serde_json::json!({"error": "invalid_request"}));
        };
        match self.refresh(presented) {
            CallResult::Rotated(access, next) | CallResult::Replayed(access, next) => {
                let mut answer = serde_json::json!({
                    "access_token": access,
                    "token_type": "Bearer",
                    "refresh_token": next,
                });
                if let Some(l) = self.access_lifetime {
                    // From the time this answer is generated (RFC 6749
                    // §5.1): a replay repeats an access token issued
                    // earlier, so it has less left.
                    let age = self
                        .lock()
                        .access
                        .get(&access)
                        .map_or(Duration::ZERO, |(_, at)| at.elapsed());
                    let left = l.saturating_sub(age).as_millis().div_ceil(1000).max(1);
                    answer["expires_in"] = serde_json::json!(u64::try_from(left).unwrap_or(1));
                }
                respond(s, 200, &answer);
            }
            CallResult::InvalidGrant => respond(
                s,
                400,
                &serde_json::json!({"error": "invalid_grant", "error_description": "refresh token is invalid, consumed or revoked"}),
            ),
        }
    }
}
