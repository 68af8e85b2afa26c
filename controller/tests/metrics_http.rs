//! The controller's metrics: `egress-controller --metrics-listen` serves
//! `/metrics` (passing `promtool check metrics`), `/healthz` and `/readyz`
//! on the address given, a bad or taken address is refused with a clear
//! line; `egress-controller --healthcheck` / `egress-controller worker
//! --healthcheck` probe without starting anything.
//!
//! The daemon runs in a network namespace this test creates (its nft
//! tables land there, not on the host), with Docker unreachable
//! (`DOCKER_HOST` names a socket that does not exist): it still applies
//! the rules and serves its listener, as in production while Docker is down.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::io::{Read, Write};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_egress-controller");

/// A small HTTP server answering `status` to up to 4 requests.
fn answer(status: &'static str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..4 {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    addr
}

#[test]
fn controller_and_worker_healthchecks() {
    let ok = answer("200 OK");
    let bad = answer("503 Service Unavailable");
    for pre in [&[][..], &["worker"][..]] {
        let run = |url: String| {
            let out = Command::new(BIN)
                .args(pre)
                .args(["--healthcheck", &url])
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        // No --policy needed: a probe reads nothing.
        assert_eq!(
            run(format!("http://{ok}/readyz")),
            (Some(0), String::new()),
            "{pre:?}"
        );
        let (code, err) = run(format!("http://{bad}/readyz"));
        assert_eq!(code, Some(1), "{pre:?} {err}");
        assert!(
            err.contains("answered 503") && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn controller_metrics_pass_promtool() {
    let state = controller::reconcile::State {
        controller_drift_total: 2,
        last_reconcile_unix: 1_700_000_000,
        controller_containers_stopped_total: 1,
        ..Default::default()
    };
    let text = state.prometheus_text();
    assert!(text.contains("controller_drift_total 2"), "{text}");
    e2e::promtool::check_metrics(&text);
}

/// A network namespace, deleted on drop (with whatever runs in it killed
/// first by the caller).
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child killed and reaped on drop.
struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on `addr` inside the namespace (curl there): status and body.
fn get_in(ns: &str, addr: &str, path: &str, method: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "5", "-X", method])
        .args(["-w", "\\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn daemon_serves_metrics_healthz_and_readyz_on_metrics_listen() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let tools = ["nft", "ip", "curl"].iter().all(|t| {
        Command::new(t)
            .arg(if *t == "ip" { "-V" } else { "--version" })
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !e2e::require("root, nft, ip and curl", root && tools) {
        return;
    }
    let ns = Netns(format!("cp-metrics-{}", std::process::id()));
    let _ = Command::new("ip")
        .args(["netns", "del", &ns.0])
        .stderr(Stdio::null())
        .status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: v1\norgs:\n  acme:\n    clients: []\n    integrations: {}\n",
    )
    .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, BIN, "--policy"])
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--ruleset-file")
        .arg(dir.path().join("ruleset.json"))
        .args(["--subnet-base", "10.241.0.0/16", "--interval-secs", "1"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", dir.path().display()),
        )
        .env_remove("CHOKEPOINT_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _daemon = Kill(child);
    let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let errors = errors.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut r = std::io::BufReader::new(stderr);
            while std::io::BufRead::read_line(&mut r, &mut s).is_ok_and(|n| n > 0) {
                errors.lock().unwrap().push_str(&s);
                s.clear();
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no metrics_listening line: {}", errors.lock().unwrap()));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "metrics_listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    // Ready once a pass has applied the rules (Docker being down does not
    // keep them from being applied).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, body) = get_in(&ns.0, &addr, "/readyz", "GET");
        if code == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz {code} {body}: {}",
            errors.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        get_in(&ns.0, &addr, "/healthz", "GET"),
        (200, "ok\n".to_owned())
    );
    let (code, metrics) = get_in(&ns.0, &addr, "/metrics", "GET");
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("controller_last_reconcile_timestamp_seconds ")
            && metrics.contains("controller_drift_total 0"),
        "{metrics}"
    );
    e2e::promtool::check_metrics(&metrics);
    assert_eq!(get_in(&ns.0, &addr, "/nope", "GET").0, 404);
    assert_eq!(get_in(&ns.0, &addr, "/metrics", "POST").0, 405);
    // The tables the pass applied, in the namespace: verified after the
    // first pass (no warning), and nothing on the host was touched by us.
    let tables = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(
        tables.contains("inet chokepoint") && tables.contains("bridge chokepoint"),
        "{tables}"
    );
    let errs = errors.lock().unwrap().clone();
    assert!(!errs.contains("egress_proxy_down"), "{errs}");
}

/// `--metrics-listen` that is not an address, or one already taken: a
/// clear line and a non-zero exit, before any rule is applied.
#[test]
fn bad_metrics_listen_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: v1\norgs:\n  acme:\n    clients: []\n    integrations: {}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--policy")
        .arg(&policy)
        .args(["--metrics-listen", "localhost:9091"])
        .env_remove("CHOKEPOINT_ENV")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'localhost:9091' for '--metrics-listen"),
        "{err}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .arg("--policy")
        .arg(&policy)
        .args(["--metrics-listen", &addr])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--ruleset-file")
        .arg(dir.path().join("ruleset.json"))
        .env_remove("CHOKEPOINT_ENV")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--metrics-listen {addr}: cannot bind")),
        "{err}"
    );
    // Refused before the first pass: nothing was applied or saved.
    assert!(!dir.path().join("ruleset.json").exists());
    assert!(!dir.path().join("state").join("state.json").exists());
    drop(taken);
}
