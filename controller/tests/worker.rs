//! The worker end to end, against the real binaries: `egressctl credential`
//! writes the store, `egress-controller worker` serves the API, a TLS origin
//! on 127.0.0.2 plays the calendar API and echoes what it received, and a
//! test DNS server maps the calendar's name there. 127.0.0.2 is reachable
//! only because the test policy lists it in `unsafe_allow_ranges`; 127.0.0.1
//! stays blocked and stands for "a private address".
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)] // test code: a panic is a failed test

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::tls_origin::{AuthCheck, TestCa, TlsOrigin, percent};
use e2e::token_endpoint::{CallResult, StrictEndpoint};
use e2e::{DnsServer, Response};

const CTL: &str = env!("CARGO_BIN_EXE_egressctl");
const CONTROLLER: &str = env!("CARGO_BIN_EXE_egress-controller");
const CAL: &str = "api.calendar-e2e.com";
const MAIL: &str = "api.mail-e2e.com";
const READS: &str = "www.reads-e2e.com";
const REBIND: &str = "rebind.reads-e2e.com";
const MIXED: &str = "mixed.reads-e2e.com";
const SERVICE_TOKEN: &str = "svc-token-0123456789abcdef";
/// The org's real OAuth token: it has characters that every encoding changes.
const TOKEN: &str = "ya29.a0AfH6SM-live/Tok+en=\"q\"_0123456789xyz";
const GLOBEX_TOKEN: &str = "globex-token-9876543210-abcdefgh";

/// The test policy; the origin's random port is its one extra read port.
const POLICY: &str = "version: v1
unsafe_allow_ranges: [127.0.0.2/32]
read_ports: [443, ORIGIN_PORT]
orgs:
  acme:
    integrations:
      calendar:
        hosts: [api.calendar-e2e.com]
      mail:
        hosts: [api.mail-e2e.com]
  globex:
    integrations:
      calendar:
        hosts: [api.calendar-e2e.com]
";

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Everything one test needs: files, a CA, the DNS server, the TLS origin.
struct Env {
    dir: PathBuf,
    policy: PathBuf,
    key_file: PathBuf,
    token_file: PathBuf,
    db: PathBuf,
    ca: TestCa,
    dns: DnsServer,
    origin: TlsOrigin,
    /// A listener on 127.0.0.1 at the origin's port: must never see a connection.
    blocked_hits: Arc<AtomicUsize>,
    /// A PostgreSQL schema to use as the store instead of SQLite.
    pg: Option<e2e::pg::PgSchema>,
}

impl Env {
    fn new() -> Env {
        Self::build(None)
    }

    /// An environment whose origin accepts a bearer only if `check` says so.
    fn with_origin_auth(check: AuthCheck) -> Env {
        Self::build(Some(check))
    }

    fn build(auth: Option<AuthCheck>) -> Env {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("chokepoint-worker-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.yaml");
        let key_file = dir.join("master.key");
        std::fs::write(&key_file, format!("{}\n", b64(&[0x42; 32]))).unwrap();
        let token_file = dir.join("service.token");
        std::fs::write(&token_file, format!("{SERVICE_TOKEN}\n")).unwrap();
        let ca = TestCa::generate(
            &dir.join("pki"),
            &[CAL, MAIL, READS, REBIND, MIXED],
            &["127.0.0.2"],
        );
        let origin_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0);
        let origin = match auth {
            Some(check) => TlsOrigin::start_with_auth(origin_addr, &ca, check),
            None => TlsOrigin::start(origin_addr, &ca),
        };
        let port = origin.addr.port().to_string();
        std::fs::write(&policy, POLICY.replace("ORIGIN_PORT", &port)).unwrap();
        let dns = DnsServer::start();
        let good = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for name in [CAL, MAIL, READS] {
            dns.set_static(name, &[good]);
        }
        // Rebinding: the first answer is allowed, every later one private.
        dns.set(REBIND, vec![vec![good], vec![lo]]);
        // One allowed and one private address.
        dns.set_static(MIXED, &[good, lo]);
        let blocked_hits = Arc::new(AtomicUsize::new(0));
        if let Ok(l) = TcpListener::bind(SocketAddr::new(lo, origin.addr.port())) {
            let hits = Arc::clone(&blocked_hits);
            std::thread::spawn(move || {
                for s in l.incoming() {
                    if s.is_ok() {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        Env {
            db: dir.join("worker.db"),
            dir,
            policy,
            key_file,
            token_file,
            ca,
            dns,
            origin,
            blocked_hits,
            pg: None,
        }
    }

    fn store(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite:{}", self.db.display()),
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.origin.addr.port())
    }

    /// `egressctl <args>` with the master key, `stdin` piped in.
    fn ctl(&self, args: &[&str], stdin: &str) -> Output {
        self.ctl_with_key(args, stdin, &self.key_file)
    }

    fn ctl_with_key(&self, args: &[&str], stdin: &str, key: &Path) -> Output {
        let mut child = Command::new(CTL)
            .args(args)
            .env("CHOKEPOINT_MASTER_KEY_FILE", key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command refused before it reads stdin (bad flags) may exit
        // before this write: a broken pipe is its answer, not a failure.
        if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        child.wait_with_output().unwrap()
    }

    fn add(&self, org: &str, integration: &str, token: &str) {
        let out = self.ctl(
            &[
                "credential",
                "add",
                "--store",
                &self.store(),
                "--policy",
                self.policy.to_str().unwrap(),
                "--org",
                org,
                "--integration",
                integration,
            ],
            &format!("{token}\n"),
        );
        assert!(
            out.status.success(),
            "credential add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains(token));
    }

    fn worker(&self) -> Worker {
        Worker::start(self, &self.key_file, &[])
    }
}

/// A running `egress-controller worker`; killed on drop.
struct Worker {
    addr: SocketAddr,
    audit: PathBuf,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn command(env: &Env, key: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(CONTROLLER);
        c.arg("worker")
            .arg("--policy")
            .arg(&env.policy)
            .arg("--store")
            .arg(env.store())
            .args(["--listen", "127.0.0.1:0"])
            .arg("--dns-server")
            .arg(env.dns.addr.to_string())
            .arg("--extra-ca")
            .arg(&env.ca.ca_pem)
            .arg("--audit-log")
            .arg(env.dir.join("audit.jsonl"))
            .args(extra)
            .env("CHOKEPOINT_MASTER_KEY_FILE", key)
            .env("CHOKEPOINT_WORKER_TOKEN_FILE", &env.token_file);
        c
    }

    fn start(env: &Env, key: &Path, extra: &[&str]) -> Worker {
        let mut child = Self::command(env, key, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                break l.parse::<SocketAddr>().unwrap();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("worker exited {status}: {:?}", stderr.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "worker did not start");
        };
        Worker {
            addr,
            audit: env.dir.join("audit.jsonl"),
            child,
            stderr,
        }
    }

    fn call_with(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Response {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: worker\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        e2e::send_raw(self.addr, &req, Duration::from_secs(40))
            .unwrap_or_else(|| panic!("no answer from the worker for {method} {path}"))
    }

    /// A request whose body the worker may refuse before reading it all:
    /// written from another thread while the answer is read.
    fn call_big(&self, path: &str, body: String) -> Response {
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: worker\r\nAuthorization: Bearer {SERVICE_TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(head.as_bytes());
            let _ = w.write_all(body.as_bytes());
        });
        let r = e2e::read_response(&mut s, Duration::from_secs(40)).expect("no answer");
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        r
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Response {
        self.call_with(
            method,
            path,
            Some(&format!("Bearer {SERVICE_TOKEN}")),
            body.as_bytes(),
        )
    }

    fn json(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
    }

    /// Start a run; (run id, integration → handle).
    fn run(&self, org: &str, integrations: &[&str], ttl: u64) -> (String, serde_json::Value) {
        let body = serde_json::json!({"org": org, "integrations": integrations, "ttl_secs": ttl});
        let r = self.call("POST", "/v1/runs", &body.to_string());
        assert_eq!(r.status, 201, "{}", r.text());
        let v = Self::json(&r);
        assert!(v["expires_at"].as_str().unwrap().ends_with('Z'), "{v}");
        (
            v["run_id"].as_str().unwrap().to_owned(),
            v["handles"].clone(),
        )
    }

    /// A tool request; (HTTP status, JSON answer).
    fn request(&self, run: &str, req: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.call(
            "POST",
            &format!("/v1/runs/{run}/requests"),
            &req.to_string(),
        );
        (r.status, Self::json(&r))
    }

    fn audit_text(&self) -> String {
        // The writer task flushes each batch; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        self.call("GET", "/metrics", "").text()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("worker stderr: {:?}", self.stderr.lock().unwrap());
        }
    }
}

/// Every form of `token` the origin echoes.
fn forms(token: &str) -> Vec<String> {
    vec![
        token.to_owned(),
        b64(token.as_bytes()),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token),
        percent(token),
        serde_json::to_string(token)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
    ]
}

fn assert_clean(what: &str, text: &str, token: &str) {
    for f in forms(token) {
        assert!(
            !text.contains(&f),
            "{what} contains the token ({f}): {text}"
        );
    }
}

#[test]
fn seed_scenario_token_injected_never_returned() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let env = Env::new();
    env.add("acme", "calendar", TOKEN);
    let w = env.worker();
    let (run, handles) = w.run("acme", &["calendar"], 600);
    let handle = handles["calendar"].as_str().unwrap().to_owned();
    assert!(handle.starts_with("cph_"), "{handle}");

    let req = serde_json::json!({
        "method": "POST",
        "url": env.url(CAL, "/echo"),
        "headers": {"Content-Type": "application/json", "Authorization": "Bearer caller-supplied", "Cookie": "a=b"},
        "body": "{\"summary\":\"standup\"}",
        "credential": handle,
    });
    let (status, v) = w.request(&run, &req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], 201, "{v}");
    assert_eq!(v["reason"], "integration_write");

    // The origin saw exactly the real token, injected by the worker.
    let seen = env.origin.seen();
    assert_eq!(seen.len(), 1);
    let auth: Vec<_> = seen[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .collect();
    assert_eq!(auth.len(), 1, "{:?}", seen[0].headers);
    assert_eq!(auth[0].1, format!("Bearer {TOKEN}"));
    assert!(seen[0].header("cookie").is_none());
    assert_eq!(seen[0].header("accept-encoding"), Some("identity"));
    assert_eq!(seen[0].body_len, "{\"summary\":\"standup\"}".len());
    assert!(!seen[0].target.contains("ya29"));

    // The worker's answer never contains the token, in any form.
    let answer = v.to_string();
    assert_clean("the answer", &answer, TOKEN);
    assert!(!answer.contains(&handle));
    let body = v["body"].as_str().unwrap();
    assert!(body.contains("raw=[REDACTED:"), "{body}");
    assert!(body.contains("split=[REDACTED:"), "{body}");
    assert!(body.contains("[REDACTED:live-secret]"), "{body}");
    assert!(body.contains("end"), "{body}");
    assert!(
        v["headers"]["x-echo"]
            .as_str()
            .unwrap()
            .contains("[REDACTED"),
        "{v}"
    );

    // Counted and audited, without the token.
    assert!(
        w.metrics().contains("worker_token_echo_total 1"),
        "{}",
        w.metrics()
    );
    let audit = w.audit_text();
    assert!(
        audit.contains("\"reason\":\"integration_write\""),
        "{audit}"
    );
    assert!(audit.contains("\"token_echo\":true"), "{audit}");
    assert!(audit.contains(CAL));
    assert!(
        !audit.contains("/echo"),
        "the path is never audited: {audit}"
    );
    assert_clean("the audit log", &audit, TOKEN);
    assert!(!audit.contains(&handle));

    // Renew, then DELETE: the handle is refused afterwards.
    let r = w.call("POST", &format!("/v1/runs/{run}/renew"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(Worker::json(&r)["expires_at"].is_string());
    let r = w.call("DELETE", &format!("/v1/runs/{run}"), "");
    assert_eq!(r.status, 204);
    let before = env.origin.connections();
    let (status, v) = w.request(&run, &req);
    assert_eq!((status, v["reason"].as_str()), (404, Some("unknown_run")));
    let (run2, _) = w.run("acme", &["calendar"], 600);
    let (status, v) = w.request(&run2, &req);
    assert_eq!(
        (status, v["reason"].as_str()),
        (403, Some("invalid_handle"))
    );
    assert_eq!(env.origin.connections(), before);
    assert!(w.audit_text().contains("\"reason\":\"invalid_handle\""));
}

/// One denial: the status, the reason, and no new connection anywhere.
fn deny(env: &Env, w: &Worker, run: &str, req: &serde_json::Value, reason: &str) {
    let before = env.origin.connections();
    let (status, v) = w.request(run, req);
    assert_eq!(v["reason"], reason, "{req}: {v}");
    assert!((400..500).contains(&status), "{req}: {status}");
    assert!(v["message"].is_string());
    assert_eq!(
        env.origin.connections(),
        before,
        "the origin got a connection: {req}"
    );
    assert_eq!(
        env.blocked_hits.load(Ordering::SeqCst),
        0,
        "127.0.0.1 got a connection"
    );
}

#[test]
fn deny_table() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let env = Env::new();
    env.add("acme", "calendar", TOKEN);
    env.add("acme", "mail", "mail-token-abcdefghijklmnop");
    env.add("globex", "calendar", GLOBEX_TOKEN);
    let w = env.worker();
    let (run, handles) = w.run("acme", &["calendar"], 600);
    let cal = handles["calendar"].as_str().unwrap().to_owned();
    let (run_both, both) = w.run("acme", &["calendar", "mail"], 600);
    let cal_b = both["calendar"].as_str().unwrap().to_owned();
    let (_other_run, other) = w.run("acme", &["calendar"], 600);
    let other_cal = other["calendar"].as_str().unwrap().to_owned();
    let (_g, g) = w.run("globex", &["calendar"], 600);
    let globex_cal = g["calendar"].as_str().unwrap().to_owned();
    let (short_run, short) = w.run("acme", &["calendar"], 1);
    let expired = short["calendar"].as_str().unwrap().to_owned();
    let (gone_run, gone) = w.run("acme", &["calendar"], 600);
    let revoked = gone["calendar"].as_str().unwrap().to_owned();
    assert_eq!(
        w.call("DELETE", &format!("/v1/runs/{gone_run}"), "").status,
        204
    );
    let post = |url: String, cred: Option<&str>| {
        let mut v = serde_json::json!({"method": "POST", "url": url, "body": "x"});
        if let Some(c) = cred {
            v["credential"] = c.into();
        }
        v
    };

    // A write to a host outside the run's integrations (the org has it).
    deny(
        &env,
        &w,
        &run,
        &post(env.url(MAIL, "/"), None),
        "write_not_integration",
    );
    // ... and outside the org's.
    deny(
        &env,
        &w,
        &run,
        &post(env.url(READS, "/"), None),
        "write_not_integration",
    );
    // A plain-http write.
    deny(
        &env,
        &w,
        &run,
        &post(format!("http://{CAL}:{}/", env.origin.addr.port()), None),
        "write_requires_https",
    );
    // A handle on a host its integration does not own.
    deny(
        &env,
        &w,
        &run_both,
        &post(env.url(MAIL, "/"), Some(&cal_b)),
        "credential_host_mismatch",
    );
    let r = w.request(
        &run_both,
        &serde_json::json!({"method": "GET", "url": env.url(READS, "/"), "credential": cal_b}),
    );
    assert_eq!(r.1["reason"], "credential_host_mismatch");
    // A credential never travels over plain http (a read to its own host).
    let r = w.request(
        &run,
        &serde_json::json!({"method": "GET", "url": format!("http://{CAL}:{}/", env.origin.addr.port()), "credential": cal}),
    );
    assert_eq!(r.1["reason"], "credential_host_mismatch");
    // Handles of another run, another org, expired, revoked, forged: one answer.
    std::thread::sleep(Duration::from_millis(2100));
    for h in [
        other_cal.as_str(),
        globex_cal.as_str(),
        expired.as_str(),
        revoked.as_str(),
        "cph_notahandle",
        &scrub_like_handle(),
    ] {
        deny(
            &env,
            &w,
            &run,
            &post(env.url(CAL, "/"), Some(h)),
            "invalid_handle",
        );
    }
    let (status, v) = w.request(&short_run, &post(env.url(CAL, "/"), Some(&expired)));
    assert_eq!((status, v["reason"].as_str()), (404, Some("unknown_run")));
    assert!(
        env.origin
            .seen()
            .iter()
            .all(|s| s.header("authorization").is_none())
    );

    // A write answered with 307: not followed, Location scrubbed.
    let before = env.origin.seen().len();
    let target = env.url(CAL, "/landing");
    let (status, v) = w.request(
        &run,
        &post(env.url(CAL, &format!("/redirect?to={target}")), Some(&cal)),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], 307);
    assert_eq!(v["reason"], "redirect_not_followed");
    let loc = v["headers"]["location"].as_str().unwrap();
    assert!(loc.starts_with(&target), "{loc}");
    assert_clean("Location", loc, TOKEN);
    let seen = env.origin.seen();
    assert_eq!(seen.len(), before + 1, "the redirect was followed");
    assert!(seen.iter().all(|s| !s.target.starts_with("/landing")));

    // A read redirected to another host: followed (re-decided, re-resolved),
    // and the credential is not sent there.
    let before = env.origin.seen().len();
    let (status, v) = w.request(
        &run,
        &serde_json::json!({"method": "GET", "url": env.url(CAL, &format!("/redirect?to={}", env.url(READS, "/next"))), "credential": cal}),
    );
    assert_eq!((status, v["status"].as_u64()), (200, Some(200)), "{v}");
    assert_eq!(v["reason"], "read_public");
    let seen = env.origin.seen();
    assert_eq!(seen.len(), before + 2);
    assert_eq!(
        seen[before].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(seen[before + 1].target.starts_with("/next"));
    assert_eq!(
        seen[before + 1]
            .header("host")
            .map(|h| h.starts_with(READS)),
        Some(true)
    );
    assert!(seen[before + 1].header("authorization").is_none());

    // A read redirected to 127.0.0.1: denied at the hop.
    let local = format!("http://127.0.0.1:{}/", env.origin.addr.port());
    let before = env.origin.connections();
    let (status, v) = w.request(
        &run,
        &serde_json::json!({"method": "GET", "url": env.url(READS, &format!("/redirect?to={local}"))}),
    );
    assert_eq!(
        (status, v["reason"].as_str()),
        (403, Some("blocked_address")),
        "{v}"
    );
    assert_eq!(env.origin.connections(), before + 1);
    assert_eq!(env.blocked_hits.load(Ordering::SeqCst), 0);

    // DNS rebinding: the first lookup is allowed, the next is private.
    let get = |host: &str| serde_json::json!({"method": "GET", "url": env.url(host, "/")});
    let (status, v) = w.request(&run, &get(REBIND));
    assert_eq!((status, v["status"].as_u64()), (200, Some(200)), "{v}");
    deny(&env, &w, &run, &get(REBIND), "blocked_address");
    assert!(env.dns.queries(REBIND) >= 2);
    // One allowed and one private address: denied, nothing dialled.
    deny(&env, &w, &run, &get(MIXED), "blocked_address");

    // Every refusal is in the audit log and the metrics, by reason.
    let audit = w.audit_text();
    for r in [
        "write_not_integration",
        "write_requires_https",
        "credential_host_mismatch",
        "invalid_handle",
        "redirect_not_followed",
        "blocked_address",
    ] {
        assert!(
            audit.contains(&format!("\"reason\":\"{r}\"")),
            "{r}: {audit}"
        );
    }
    assert_clean("the audit log", &audit, TOKEN);
    assert_clean("the audit log", &audit, GLOBEX_TOKEN);
    let m = w.metrics();
    assert!(
        m.contains("worker_requests_total{method=\"POST\",reason=\"invalid_handle\"} 6"),
        "{m}"
    );
    // The exposition after real traffic (allowed and denied, by reason).
    e2e::promtool::check_metrics(&m);
    // The sweeper revokes the expired run (it runs every 5 s).
    let deadline = Instant::now() + Duration::from_secs(12);
    while !w
        .metrics()
        .contains("worker_runs_ended_total{cause=\"expired\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "the sweeper did not run: {}",
            w.metrics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A well-formed handle (valid checksum) that was never issued.
fn scrub_like_handle() -> String {
    scrub::handle::generate(&[0x5a; 32])
}

fn scan(path: &Path, needles: &[&str]) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    needles
        .iter()
        .filter(|n| bytes.windows(n.len()).any(|w| w == n.as_bytes()))
        .map(|n| format!("{} holds {n}", path.display()))
        .collect()
}

#[test]
fn at_rest_no_token_no_handle_and_key_handling() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let env = Env::new();
    env.add("acme", "calendar", TOKEN);
    env.add("acme", "mail", "mail-token-abcdefghijklmnop");
    let handle;
    {
        let w = env.worker();
        let (run, h) = w.run("acme", &["calendar", "mail"], 600);
        handle = h["calendar"].as_str().unwrap().to_owned();
        let (status, _) = w.request(
            &run,
            &serde_json::json!({"method": "POST", "url": env.url(CAL, "/echo"), "body": "x", "credential": handle}),
        );
        assert_eq!(status, 200);
        // Scan while the worker holds the database open (WAL present).
        let mut found = Vec::new();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let p = PathBuf::from(format!("{}{suffix}", env.db.display()));
            found.extend(scan(&p, &[TOKEN, "mail-token-abcdefghijklmnop", &handle]));
        }
        assert!(found.is_empty(), "{found:?}");
        assert!(PathBuf::from(format!("{}-wal", env.db.display())).exists() || env.db.exists());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&env.dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("worker.db")
        {
            found.extend(scan(&p, &[TOKEN, "mail-token-abcdefghijklmnop", &handle]));
        }
    }
    assert!(found.is_empty(), "{found:?}");

    // `credential list` never prints a secret.
    let out = env.ctl(&["credential", "list", "--store", &env.store()], "");
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(!listed.contains("ya29") && !listed.contains("mail-token"));

    // Wrong master key: the worker refuses to start, with a message.
    let wrong = env.dir.join("wrong.key");
    std::fs::write(&wrong, b64(&[0x24; 32])).unwrap();
    let out = Worker::command(&env, &wrong, &["--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("not loaded") || msg.contains("decryption failed"),
        "{msg}"
    );
    // A missing key file too.
    let out = Worker::command(&env, &env.dir.join("nope.key"), &["--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHOKEPOINT_MASTER_KEY_FILE"));

    // rotate-key, then use with only the new key.
    let new_key = env.dir.join("new.key");
    std::fs::write(&new_key, b64(&[0x99; 32])).unwrap();
    let out = env.ctl(
        &[
            "credential",
            "rotate-key",
            "--store",
            &env.store(),
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"rewrapped\":2"));
    let out = Worker::command(&env, &env.key_file, &["--check"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "the old key no longer opens the rows"
    );
    {
        let w = Worker::start(&env, &new_key, &[]);
        let (run, h) = w.run("acme", &["calendar"], 600);
        let before = env.origin.seen().len();
        let (status, v) = w.request(
            &run,
            &serde_json::json!({"method": "POST", "url": env.url(CAL, "/"), "body": "x", "credential": h["calendar"]}),
        );
        assert_eq!(status, 200, "{v}");
        let seen = env.origin.seen();
        assert_eq!(
            seen[before].header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }

    // Two rows' ciphertexts swapped: decryption fails (the worker says so).
    let swap = |col: &str| {
        let sql = format!(
            "UPDATE credentials SET {col} = (SELECT {col} FROM credentials WHERE integration = 'mail') WHERE integration = 'calendar';"
        );
        let out = Command::new("sqlite3")
            .arg(&env.db)
            .arg(sql)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if e2e::require("sqlite3", e2e::have_tool("sqlite3")) {
        swap("token_ct");
        let out = Worker::command(&env, &new_key, &["--check"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains("decryption failed"));
    }
}

/// method, path, Authorization, body, expected status, expected reason.
type BadCase<'a> = (&'a str, String, Option<String>, Vec<u8>, u16, &'a str);

#[test]
fn bad_input_is_a_4xx_never_a_5xx() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let env = Env::new();
    env.add("acme", "calendar", TOKEN);
    let w = env.worker();
    let (run, _) = w.run("acme", &["calendar"], 600);
    let auth = format!("Bearer {SERVICE_TOKEN}");
    let cases: Vec<BadCase<'_>> = vec![
        (
            "POST",
            "/v1/runs".into(),
            None,
            b"{}".to_vec(),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some("Bearer wrong".into()),
            b"{}".to_vec(),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some(SERVICE_TOKEN.into()),
            b"{}".to_vec(),
            401,
            "unauthorized",
        ),
        ("GET", "/metrics".into(), None, vec![], 401, "unauthorized"),
        (
            "POST",
            "/v1/runs".into(),
            Some(auth.clone()),
            b"{not json".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some(auth.clone()),
            br#"{"org":"acme","integrations":["calendar"],"extra":1}"#.to_vec(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some(auth.clone()),
            br#"{"org":"nope","integrations":["calendar"]}"#.to_vec(),
            403,
            "unknown_org",
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some(auth.clone()),
            br#"{"org":"acme","integrations":["crm"]}"#.to_vec(),
            403,
            "unknown_integration",
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some(auth.clone()),
            br#"{"org":"acme","integrations":["calendar"],"ttl_secs":-5}"#.to_vec(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            format!("/v1/runs/{run}/requests"),
            Some(auth.clone()),
            br#"{"method":"POST","url":"https://x.example.com/","body_base64":"%%%"}"#.to_vec(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            format!("/v1/runs/{run}/requests"),
            Some(auth.clone()),
            br#"{"method":"POST","url":"https://x.example.com/","bogus":true}"#.to_vec(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            format!("/v1/runs/{run}/requests"),
            Some(auth.clone()),
            br#"{"method":"GET","url":"https://x.example.com/","headers":{"X-A":"a\r\nb"}}"#
                .to_vec(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            format!("/v1/runs/{run}/requests"),
            Some(auth.clone()),
            br#"{"method":"GET","url":"not a url"}"#.to_vec(),
            400,
            "invalid_target",
        ),
        (
            "POST",
            format!("/v1/runs/{run}/requests"),
            Some(auth.clone()),
            br#"{"method":"TRACE","url":"https://x.example.com/"}"#.to_vec(),
            403,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/runs/0123456789abcdef0123456789abcdef/requests".into(),
            Some(auth.clone()),
            br#"{"method":"GET","url":"https://x.example.com/"}"#.to_vec(),
            404,
            "unknown_run",
        ),
        (
            "POST",
            "/v1/runs/../requests".into(),
            Some(auth.clone()),
            br#"{"method":"GET","url":"https://x.example.com/"}"#.to_vec(),
            404,
            "unknown_run",
        ),
        (
            "POST",
            "/v1/runs/x/renew".into(),
            Some(auth.clone()),
            vec![],
            404,
            "unknown_run",
        ),
        (
            "DELETE",
            "/v1/runs/0123456789abcdef0123456789abcdef".into(),
            Some(auth.clone()),
            vec![],
            404,
            "unknown_run",
        ),
        (
            "GET",
            "/v1/nothing".into(),
            Some(auth.clone()),
            vec![],
            404,
            "malformed_request",
        ),
    ];
    for (method, path, a, body, status, reason) in cases {
        let r = w.call_with(method, &path, a.as_deref(), &body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(Worker::json(&r)["reason"], reason, "{method} {path}");
        assert_security_headers(&r, &format!("{method} {path}"));
    }
    // A huge body: 413, and the worker is still fine.
    let huge = format!(
        "{{\"method\":\"POST\",\"url\":\"https://{CAL}/\",\"body\":\"{}\"}}",
        "a".repeat(15 * 1024 * 1024)
    );
    let r = w.call_big(&format!("/v1/runs/{run}/requests"), huge);
    assert_eq!(r.status, 413, "{}", r.text());
    let r = w.call_big(
        &format!("/v1/runs/{run}/requests"),
        format!(
            "{{\"method\":\"POST\",\"url\":\"https://{CAL}/\",\"body_base64\":\"{}\"}}",
            b64(&vec![0u8; 10 * 1024 * 1024 + 3])
        ),
    );
    assert_eq!(
        (r.status, Worker::json(&r)["reason"].as_str()),
        (413, Some("request_too_large"))
    );
    // A response over 10 MiB is cut and flagged.
    let (status, v) = w.request(
        &run,
        &serde_json::json!({"method": "GET", "url": env.url(CAL, &format!("/big?n={}", 11 * 1024 * 1024))}),
    );
    assert_eq!(status, 200);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["body"].as_str().unwrap().len(), 10 * 1024 * 1024);
    for path in ["/healthz", "/readyz"] {
        let r = w.call_with("GET", path, None, b"");
        assert_eq!(r.status, 200);
        assert_security_headers(&r, path);
    }
}

/// The five headers every chokepoint endpoint sends (written out here: the
/// test states the contract itself).
fn assert_security_headers(r: &Response, what: &str) {
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", "default-src 'none'"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(r.header(name), Some(value), "{what}: {name}");
    }
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn arbitrary_api_bodies_never_5xx() {
        if !e2e::require("openssl", have_openssl()) {
            return;
        }
        let env = Env::new();
        env.add("acme", "calendar", TOKEN);
        let w = env.worker();
        let (run, handles) = w.run("acme", &["calendar"], 600);
        let handle = handles["calendar"].as_str().unwrap().to_owned();
        let origin_url = env.url(CAL, "/");
        let json_value = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::from(handle.clone())),
            Just(serde_json::Value::from(origin_url.clone())),
        ];
        let field = prop_oneof![
            Just("method".to_owned()),
            Just("url".to_owned()),
            Just("headers".to_owned()),
            Just("body".to_owned()),
            Just("body_base64".to_owned()),
            Just("credential".to_owned()),
            Just("org".to_owned()),
            Just("integrations".to_owned()),
            Just("ttl_secs".to_owned()),
            "[a-z]{1,8}",
        ];
        let object = proptest::collection::btree_map(field, json_value, 0..6)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()).to_string());
        let body = prop_oneof![
            object,
            ".{0,200}",
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
        ];
        let path = prop_oneof![
            Just("/v1/runs".to_owned()),
            Just(format!("/v1/runs/{run}/requests")),
            Just(format!("/v1/runs/{run}/renew")),
        ];
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 96,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&(path, body), |(path, body)| {
                let r = w.call("POST", &path, &body);
                prop_assert!(r.status < 500, "{path} {body}: {} {}", r.status, r.text());
                Ok(())
            })
            .unwrap();
        assert_eq!(w.call_with("GET", "/healthz", None, b"").status, 200);
        assert!(env.blocked_hits.load(Ordering::SeqCst) == 0);
    }
}

#[test]
fn credential_cli_add_list_remove() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let env = Env::new();
    let store = env.store();
    let policy = env.policy.to_str().unwrap().to_owned();
    let add = |org: &str, integration: &str, extra: &[&str], stdin: &str| {
        let mut args = vec![
            "credential",
            "add",
            "--store",
            &store,
            "--policy",
            &policy,
            "--org",
            org,
            "--integration",
            integration,
        ];
        args.extend_from_slice(extra);
        env.ctl(&args, stdin)
    };
    let fails = |out: &Output, needle: &str| {
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("secret-value"), "{err}");
    };
    fails(
        &add("acme", "crm", &[], "secret-value-123\n"),
        "no integration `crm`",
    );
    fails(
        &add("nobody", "calendar", &[], "secret-value-123\n"),
        "org `nobody`",
    );
    fails(&add("acme", "calendar", &[], ""), "empty");
    fails(
        &add("acme", "calendar", &[], "secret-value\r\nX-Evil: 1\n"),
        "control character",
    );
    fails(
        &add(
            "acme",
            "calendar",
            &["--header", "Authorization: Bearer"],
            "secret-value-123\n",
        ),
        "{token}",
    );
    assert!(
        add("acme", "calendar", &[], "secret-value-123\n")
            .status
            .success()
    );
    fails(
        &add("acme", "calendar", &[], "secret-value-456\n"),
        "already exists",
    );
    let out = add(
        "acme",
        "mail",
        &["--header", "X-Api-Key: {token}"],
        "secret-value-789\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = add("globex", "calendar", &[], "secret-value-000\n");
    assert!(out.status.success());

    let list = |org: Option<&str>| {
        let mut args = vec!["credential", "list", "--store", &store];
        if let Some(o) = org {
            args.extend_from_slice(&["--org", o]);
        }
        let out = env.ctl(&args, "");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let all = list(None);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(!all.contains("secret-value"), "{all}");
    let acme = list(Some("acme"));
    assert_eq!(acme.lines().count(), 2);
    assert!(acme.contains("\"header\":\"x-api-key\""), "{acme}");

    let remove = |integration: &str| {
        env.ctl(
            &[
                "credential",
                "remove",
                "--store",
                &store,
                "--org",
                "acme",
                "--integration",
                integration,
            ],
            "",
        )
    };
    assert!(remove("mail").status.success());
    assert_eq!(list(Some("acme")).lines().count(), 1);
    fails(&remove("mail"), "no credential");

    // A run gets a handle only for integrations with a credential.
    let w = env.worker();
    let (_, handles) = w.run("acme", &["calendar", "mail"], 60);
    assert!(handles["calendar"].is_string());
    assert!(handles.get("mail").is_none(), "{handles}");
}

#[test]
fn credential_cli_add_with_refresh_token() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let env = Env::new();
    let store = env.store();
    let policy = env.policy.to_str().unwrap().to_owned();
    let secret_file = env.dir.join("client.secret");
    std::fs::write(&secret_file, "client-secret-value-123\n").unwrap();
    let secret_path = secret_file.to_str().unwrap().to_owned();
    let add = |integration: &str, extra: &[&str]| {
        let mut args = vec![
            "credential",
            "add",
            "--store",
            &store,
            "--policy",
            &policy,
            "--org",
            "acme",
            "--integration",
            integration,
        ];
        args.extend_from_slice(extra);
        env.ctl(&args, "refresh-token-value-456\n")
    };
    let fails = |out: &Output, needle: &str| {
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
        assert!(
            !err.contains("secret-value") && !err.contains("token-value"),
            "{err}"
        );
    };
    // Missing companions: a usage error naming them.
    fails(&add("calendar", &["--refresh-token-stdin"]), "--token-url");
    fails(
        &add("calendar", &["--client-auth", "client_secret_post"]),
        "--refresh-token-stdin",
    );
    // `--refresh-token-stdin` with its companions, then `extra`.
    let refresh = |url: &str, secret: &str, extra: &[&str]| {
        let mut args = vec![
            "--refresh-token-stdin",
            "--token-url",
            url,
            "--client-id",
            "cid",
            "--client-secret-file",
            secret,
        ];
        args.extend_from_slice(extra);
        add("calendar", &args)
    };
    const URL: &str = "https://provider.example/token";
    fails(
        &refresh(URL, &secret_path, &["--client-auth", "private_key_jwt"]),
        "client_secret_post",
    );
    fails(
        &refresh("http://provider.example/token", &secret_path, &[]),
        "invalid --token-url",
    );
    fails(
        &refresh(URL, "/nonexistent/secret", &[]),
        "--client-secret-file",
    );
    let out = refresh(URL, &secret_path, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every secret sealed: neither the refresh token nor the client secret
    // is in the database files in clear.
    let needles = ["refresh-token-value-456", "client-secret-value-123"];
    let wal = PathBuf::from(format!("{}-wal", env.db.display()));
    assert!(std::fs::metadata(&env.db).is_ok(), "no database written");
    let mut hits = scan(&env.db, &needles);
    hits.extend(scan(&wal, &needles));
    assert!(hits.is_empty(), "{hits:?}");
}

/// The value of one sample line `name{labels} value` in a metrics text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// OAuth refresh on the request path (docs/refresh.md), against the real
/// worker binary on SQLite, the strict fake token endpoint served over HTTP
/// on 127.0.0.2 and an integration origin that accepts a bearer only if the
/// endpoint says it is valid (401 otherwise). Access tokens live 8 s.
#[test]
fn oauth_refresh_on_the_request_path() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    oauth_refresh_scenario(None);
}

/// The same on PostgreSQL, with a provider that takes the client's
/// credentials only in the form body (`--client-auth client_secret_post`).
#[test]
fn oauth_refresh_on_the_request_path_postgres() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let Some(pg) = e2e::pg::PgSchema::new("worker_e2e_refresh") else {
        return;
    };
    oauth_refresh_scenario(Some(pg));
}

fn oauth_refresh_scenario(pg: Option<e2e::pg::PgSchema>) {
    const LIFETIME: u64 = 8;
    const CLIENT_SECRET: &str = "client-secret-e2e-3f9a7c21";
    // SQLite: client_secret_basic (the default); PostgreSQL:
    // client_secret_post, the endpoint refusing the other method.
    let post = pg.is_some();
    let ep =
        StrictEndpoint::new(Duration::ZERO).with_access_lifetime(Duration::from_secs(LIFETIME));
    let ep = Arc::new(if post {
        ep.with_client_post("cal-client", CLIENT_SECRET)
    } else {
        ep.with_client("cal-client", CLIENT_SECRET)
    });
    let check = Arc::clone(&ep);
    let mut env = Env::with_origin_auth(Arc::new(move |t: &str| check.access_valid(t)));
    env.pg = pg;
    let (token_url, _server) = ep.serve(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0),
        None,
    );
    let secret_file = env.dir.join("client.secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let first_rt = ep.grant();
    let store = env.store();
    let mut add = vec![
        "credential",
        "add",
        "--store",
        &store,
        "--policy",
        env.policy.to_str().unwrap(),
        "--org",
        "acme",
        "--integration",
        "calendar",
        "--refresh-token-stdin",
        "--token-url",
        &token_url,
        "--client-id",
        "cal-client",
        "--client-secret-file",
        secret_file.to_str().unwrap(),
    ];
    if post {
        add.extend(["--client-auth", "client_secret_post"]);
    }
    let out = env.ctl(&add, &format!("{first_rt}\n"));
    assert!(
        out.status.success(),
        "credential add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = Worker::start(
        &env,
        &env.key_file,
        &["--refresh-lease-secs", "5", "--refresh-deadline-ms", "3000"],
    );
    let (run, handles) = w.run("acme", &["calendar"], 600);
    let handle = handles["calendar"].as_str().unwrap().to_owned();
    const BODY: &str = "{\"summary\":\"standup\"}";
    let req = serde_json::json!({
        "method": "POST",
        "url": env.url(CAL, "/events"),
        "headers": {"Content-Type": "application/json"},
        "body": BODY,
        "credential": handle,
    });
    let mut answers = String::new();
    let mut call = |what: &str| -> (u16, serde_json::Value) {
        let (status, v) = w.request(&run, &req);
        answers.push_str(&v.to_string());
        answers.push('\n');
        eprintln!("{what}: {status} {v}");
        (status, v)
    };
    let rotations = |ep: &StrictEndpoint| {
        ep.calls()
            .iter()
            .filter(|c| matches!(c.result, CallResult::Rotated(..)))
            .count()
    };

    // 1. No access token yet: the first request waits for the refresh.
    let (status, v) = call("first");
    assert_eq!((status, v["status"].as_u64()), (200, Some(200)), "{v}");
    assert_eq!(rotations(&ep), 1);

    // 2. Steady load (a request every 200 ms) across 3 more refreshes:
    // every request succeeds, the origin sees only valid tokens, and each
    // refresh comes at about 3/4 of the lifetime, before the token expires.
    let started = Instant::now();
    while rotations(&ep) < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} rotations",
            rotations(&ep)
        );
        let (status, v) = call("steady");
        assert_eq!((status, v["status"].as_u64()), (200, Some(200)), "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let calls = ep.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    for pair in calls.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        eprintln!("refresh after {gap:?}");
        // At 3/4 of 8 s (the worker counts whole seconds: about 5 to 6 s),
        // before the previous token expired; the metrics below say which
        // trigger made each refresh.
        assert!(gap < Duration::from_secs(LIFETIME), "refresh after {gap:?}");
    }
    assert!(
        env.origin.auth_log().iter().all(|(_, ok)| *ok),
        "{:?}",
        env.origin.auth_log()
    );
    let m = w.metrics();
    assert_eq!(
        sample(
            &m,
            "worker_token_refreshes_total{outcome=\"refreshed\",trigger=\"expired\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "worker_token_refreshes_total{outcome=\"refreshed\",trigger=\"due\"}"
        ),
        3.0
    );

    // 3. The integration revokes the current access token: the next
    // request gets a 401, which makes exactly one refresh, and the same
    // request (body included) is retried once with the new token.
    // (Once the worker uses the newest token.)
    let current = ep.latest_access().unwrap();
    for _ in 0..10 {
        let (status, _) = call("settle");
        assert_eq!(status, 200);
        if env.origin.auth_log().last().unwrap().0 == current {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.origin.auth_log().last().unwrap().0, current);
    let before = ep.calls().len();
    let seen_before = env.origin.seen().len();
    ep.revoke_access(&current);
    let (status, v) = call("after revoke");
    assert_eq!((status, v["status"].as_u64()), (200, Some(200)), "{v}");
    assert_eq!(ep.calls().len(), before + 1, "{:?}", ep.calls());
    let fresh = ep.latest_access().unwrap();
    assert_ne!(fresh, current);
    let log = env.origin.auth_log();
    assert_eq!(
        &log[log.len() - 2..],
        &[(current.clone(), false), (fresh.clone(), true)]
    );
    let seen = env.origin.seen();
    assert_eq!(seen.len(), seen_before + 2);
    for s in &seen[seen_before..] {
        assert_eq!((s.method.as_str(), s.body_len), ("POST", BODY.len()));
    }
    let m = w.metrics();
    assert_eq!(
        sample(
            &m,
            "worker_token_refreshes_total{outcome=\"refreshed\",trigger=\"unauthorized\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "worker_credentials_needs_reauth"), 0.0);

    // 4. The provider revokes the grant: the next refresh gets
    // invalid_grant, the credential is dead, requests are refused with
    // `needs_reauth` and the gauge counts it.
    assert!(ep.revoke_family_of(&fresh));
    // A 401 again within 5 s of the last 401-triggered refresh: no provider
    // call (an endpoint answering 401 cannot make the worker rotate the
    // token on every request); the 401 comes back as it is.
    let calls_before = ep.calls().len();
    let (status, v) = call("401 again");
    assert_eq!((status, v["status"].as_u64()), (200, Some(401)), "{v}");
    assert_eq!(ep.calls().len(), calls_before);
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never needs_reauth"
        );
        let (status, v) = call("after invalid_grant");
        if status == 403 {
            assert_eq!(v["reason"], "needs_reauth", "{v}");
            break;
        }
        // Meanwhile the integration refuses the revoked token (the 401
        // comes back as the upstream status).
        assert_eq!((status, v["status"].as_u64()), (200, Some(401)), "{v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, v) = call("dead");
    assert_eq!((status, v["reason"].as_str()), (403, Some("needs_reauth")));
    let m = w.metrics();
    assert_eq!(sample(&m, "worker_credentials_needs_reauth"), 1.0);
    assert_eq!(sample(&m, "worker_refresh_orphans_total"), 0.0);
    e2e::promtool::check_metrics(&m);

    // The history: no refresh token was ever presented twice, and the only
    // family revoked is the one the provider revoked itself.
    let calls = ep.calls();
    let mut presented: Vec<&str> = calls.iter().map(|c| c.presented.as_str()).collect();
    presented.sort_unstable();
    presented.dedup();
    assert_eq!(presented.len(), calls.len(), "{calls:?}");
    assert_eq!(ep.revoked_families(), 1);
    assert_eq!(ep.http_counts().bad_client, 0);

    // No token, refresh token or client secret in any answer, the audit
    // log or the worker's output.
    let mut secrets = vec![first_rt.clone(), CLIENT_SECRET.to_owned()];
    for c in &calls {
        if let CallResult::Rotated(a, r) = &c.result {
            secrets.push(a.clone());
            secrets.push(r.clone());
        }
    }
    let audit = w.audit_text();
    assert!(audit.contains("needs_reauth"), "{audit}");
    let stderr = w.stderr.lock().unwrap().join("\n");
    // The worker logged the refusal (by its code only).
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    for s in &secrets {
        assert_clean("an answer", &answers, s);
        assert_clean("the audit log", &audit, s);
        assert_clean("the worker's output", &stderr, s);
    }
}

/// The pinned client keeps an answer that passed the address check for its
/// TTL (capped) and checks it again on every use; when the TTL runs out the
/// name is resolved again, and a rebinding to a private address is refused
/// then, with no connection to it. (TTL-0 answers, the attack's, are never
/// kept: `deny_table`'s rebinding case.)
#[test]
fn dns_answers_kept_for_their_ttl_only() {
    if !e2e::require("openssl", have_openssl()) {
        return;
    }
    let env = Env::new();
    env.dns.set_ttl(READS, 30);
    env.dns.set_ttl(REBIND, 1);
    let w = env.worker();
    let (run, _) = w.run("acme", &["calendar"], 600);
    let get = |host: &str| serde_json::json!({"method": "GET", "url": env.url(host, "/")});

    // Within its TTL, the answer is reused: one query for two requests.
    for _ in 0..2 {
        let (status, v) = w.request(&run, &get(READS));
        assert_eq!((status, v["status"].as_u64()), (200, Some(200)), "{v}");
    }
    assert_eq!(env.dns.queries(READS), 1);

    // Rebinding behind a 1 s TTL: the public answer is used while it is
    // valid; once it expires the private one is looked up and refused.
    let (status, v) = w.request(&run, &get(REBIND));
    assert_eq!((status, v["status"].as_u64()), (200, Some(200)), "{v}");
    std::thread::sleep(Duration::from_millis(1_500));
    deny(&env, &w, &run, &get(REBIND), "blocked_address");
    assert_eq!(env.dns.queries(REBIND), 2);
    // The refused answer is not kept either: asked again, refused again.
    deny(&env, &w, &run, &get(REBIND), "blocked_address");
    assert_eq!(env.dns.queries(REBIND), 3);
    assert_eq!(env.blocked_hits.load(Ordering::SeqCst), 0);
}
