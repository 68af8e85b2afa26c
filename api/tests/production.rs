//! The production switch on the real `chokepoint-api` (docs/production.md):
//! production with exactly one thing missing exits 78 naming it; with
//! everything present it starts (`/readyz` says production) and turns red
//! when the worker goes; development with the same gaps starts with the
//! warning. The worker is played by a loopback `/readyz` responder (the API
//! only asks it `GET /readyz`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// 64 hex digits, as `openssl rand -hex 32` writes.
const GOOD_TOKEN: &str = "3f9c1e7a5b2d8046c1e9f7a3b5d2084e6c1a9f3e7b5d2c8046a1e9f3c7b5d208";

/// A stand-in for the worker's `/readyz`: `200` until stopped.
struct FakeWorker {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeWorker {
    fn start() -> FakeWorker {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeWorker {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Gap {
    NoTls,
    NoKeyFile,
    WeakHsSecret,
    ShippedServiceToken,
    NoWorkerFlag,
    WorkerDown,
}

fn command(keys: &Keys, gaps: &[Gap], env: Option<&str>, worker: SocketAddr) -> Command {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let has = |g: Gap| gaps.contains(&g);
    let dir = keys.dir.path();
    let good_service = dir.join("good-service.token");
    std::fs::write(&good_service, format!("{GOOD_TOKEN}\n")).unwrap();
    let weak_hs = dir.join("weak-hs.b64");
    // base64 of "changeme-changeme-changeme-12345" (32 bytes): a placeholder.
    std::fs::write(&weak_hs, "Y2hhbmdlbWUtY2hhbmdlbWUtY2hhbmdlbWUtMTIzNDU=\n").unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!(
            "sqlite:{}",
            dir.join(format!("api-{n}.db")).display()
        ))
        .args([
            "--allowed-origin",
            ORIGIN,
            "--issuer",
            ISS,
            "--audience",
            AUD,
        ])
        .env("RUST_LOG", "info")
        .env_remove("CHOKEPOINT_ENV")
        .env_remove("CHOKEPOINT_API_KEY_FILE")
        .env_remove("CHOKEPOINT_API_SERVICE_TOKEN_FILE")
        .stdin(Stdio::null());
    if !has(Gap::NoTls) {
        cmd.arg("--tls-cert")
            .arg(&keys.cert)
            .arg("--tls-key")
            .arg(&keys.key);
    }
    if has(Gap::WeakHsSecret) {
        cmd.env("CHOKEPOINT_API_KEY_FILE", &weak_hs);
    } else if !has(Gap::NoKeyFile) {
        cmd.env("CHOKEPOINT_API_KEY_FILE", &keys.ed_public);
    }
    if has(Gap::ShippedServiceToken) {
        cmd.env("CHOKEPOINT_API_SERVICE_TOKEN_FILE", &keys.service_file);
    } else {
        cmd.env("CHOKEPOINT_API_SERVICE_TOKEN_FILE", &good_service);
    }
    if has(Gap::WorkerDown) {
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        cmd.arg(format!("--worker={closed}"));
    } else if !has(Gap::NoWorkerFlag) {
        cmd.arg(format!("--worker={worker}"));
    }
    if let Some(v) = env {
        cmd.env("CHOKEPOINT_ENV", v);
    }
    cmd
}

/// Production with exactly one part missing: exit 78 and one line.
#[test]
fn production_refuses_each_missing_part() {
    let keys = Keys::new();
    let worker = FakeWorker::start();
    for (gap, want) in [
        (Gap::NoTls, "api_without_tls"),
        (Gap::NoKeyFile, "missing_auth_token"),
        (Gap::WeakHsSecret, "default_secret_key"),
        (Gap::ShippedServiceToken, "default_secret_key"),
        (Gap::NoWorkerFlag, "missing_credential_broker"),
        (Gap::WorkerDown, "missing_credential_broker"),
    ] {
        let out = command(&keys, &[gap], Some("production"), worker.addr)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{gap:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{gap:?}: one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("chokepoint-api: production refused: {want}: ")),
            "{gap:?}: {stderr}"
        );
        assert!(!stderr.contains(SERVICE_TOKEN), "{gap:?}: secret printed");
        assert!(!stderr.contains("Y2hhbmdl"), "{gap:?}: secret printed");
    }
    let out = command(&keys, &[], Some("Production"), worker.addr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_mode"));
}

/// Everything present: production starts over TLS, `/readyz` says
/// production, and turns red when the worker stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_starts_and_turns_red_without_the_worker() {
    let keys = Keys::new();
    let mut worker = FakeWorker::start();
    let mut cmd = command(&keys, &[], Some("production"), worker.addr);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let api = spawn(cmd, &keys.dir.path().join("unused.db"), &keys.ca, true);
    assert!(
        !api.log_text().contains("development"),
        "{}",
        api.log_text()
    );
    let r = api.request("GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["mode"], "production");
    let before = api
        .user(
            "POST",
            "/v1/conversations",
            &keys.token("org-a", "alice", 600),
            Some("{}"),
        )
        .await;
    assert_ne!(before.status, 503, "{}", before.body);
    worker.stop();
    let r = api.request("GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["status"], "worker unavailable");
    assert_eq!(r.json()["mode"], "production");
    // Work is refused with the reason within a few dependency checks.
    let user = keys.token("org-a", "alice", 600);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = api
            .user("POST", "/v1/conversations", &user, Some("{}"))
            .await;
        if r.status == 503 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "dependency_unavailable");
}

/// Development with the same gaps (that still let it run) starts with the
/// warning and says development on `/readyz`.
#[test]
fn development_starts_with_the_warning() {
    let keys = Keys::new();
    let worker = FakeWorker::start();
    // Every case lacks TLS too (plain HTTP for the /readyz check below).
    for (gap, env, warned) in [
        (Gap::NoTls, None, "api_without_tls"),
        (Gap::NoTls, Some("development"), "api_without_tls"),
        (Gap::WorkerDown, None, "missing_credential_broker"),
        (Gap::NoWorkerFlag, None, "api_without_tls"),
        (Gap::ShippedServiceToken, None, "default_secret_key"),
        (Gap::WeakHsSecret, None, "default_secret_key"),
        (Gap::NoKeyFile, None, "missing_auth_token"),
    ] {
        let mut cmd = command(&keys, &[Gap::NoTls, gap], env, worker.addr);
        let s = e2e::startup::start_or_exit(&mut cmd, "listen=", Duration::from_secs(20));
        let e2e::startup::Started::Running(r) = s else {
            panic!("{gap:?}: development did not start: {s:?}");
        };
        let warnings = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("chokepoint-api: warning: development mode"))
            .count();
        assert_eq!(warnings, 1, "{gap:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("would refuse production: {warned}: ")),
            "{gap:?}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains(SERVICE_TOKEN), "{gap:?}: secret printed");
        let resp = e2e::startup::get(r.addr("listen="), "/readyz").expect("readyz answers");
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["mode"], "development", "{gap:?}");
        if gap == Gap::NoKeyFile {
            // An ephemeral key nobody holds: loudly warned, and a token
            // signed with the real key is refused (fail closed).
            assert!(
                r.stderr.contains(
                    "chokepoint-api: warning: development: CHOKEPOINT_API_KEY_FILE is not set: using an ephemeral token key"
                ),
                "{}",
                r.stderr
            );
            let token = keys.token("acme", "alice", 600);
            let req = format!(
                "POST /v1/conversations HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            let resp = e2e::send_raw(r.addr("listen="), req.as_bytes(), Duration::from_secs(5))
                .expect("answers");
            assert_eq!(resp.status, 401, "{}", resp.text());
        }
    }
}
