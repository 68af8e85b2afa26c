//! The real `egress-controller --worker` daemon supervises the real worker,
//! without Docker: the daemon runs in a network namespace of its own
//! (`unshare --net`, so its nftables rules never touch the host's tables)
//! with `DOCKER_HOST` pointing at a socket nothing serves (the daemon's
//! Docker steps fail and are retried; its rules and the worker do not
//! depend on them). Proves: the worker runs as the `--worker-user` uid with
//! no capabilities and no supplementary groups, answers its API on the
//! socket given by `--worker-arg`, is restarted after SIGKILL, and is gone
//! once the daemon is stopped with SIGTERM.
//!
//! Needs root (to change uid) and `unshare`; skips otherwise, unless
//! `CHOKEPOINT_REQUIRE_PRIVILEGED=1`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_egress-controller");
const NOBODY: u32 = 65534;
const SERVICE_TOKEN: &str = "svc-token-daemon-0123456789abcdef";

use e2e::procstatus::{field, is_root, status};

fn alive(pid: u32) -> bool {
    status(pid).is_some_and(|st| !field(&st, "State").starts_with('Z'))
}

/// Live children of `parent` running `egress-controller worker`.
fn workers_of(parent: u32) -> Vec<u32> {
    let parent = parent.to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(st) = status(pid) else { continue };
        if field(&st, "PPid") != parent || field(&st, "State").starts_with('Z') {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == b"worker") {
            out.push(pid);
        }
    }
    out
}

/// Processes whose command line names this test's directory (the worker's
/// arguments do), whoever their parent is now.
fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || !alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            out.push(pid);
        }
    }
    out
}

fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Kills the daemon and anything still using the test directory, then
/// removes it, even when the test fails.
struct Guard {
    daemon: Child,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for pid in processes_using(&self.dir) {
            kill("-KILL", pid);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.1 request over the worker's unix socket: (status, body).
fn http(sock: &Path, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the worker socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: worker\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Waits for a worker child of `daemon` other than `not`.
fn wait_for_worker(daemon: u32, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = workers_of(daemon).into_iter().find(|p| Some(*p) != not) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no worker child of the daemon appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the worker answers `GET /healthz` on its socket.
fn wait_healthy(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if UnixStream::connect(sock).is_ok() && http(sock, "GET", "/healthz", None, "").0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "the worker never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_unprivileged(pid: u32) {
    let st = status(pid).expect("the worker is gone");
    let ids = |name: &str| -> Vec<String> {
        field(&st, name)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(ids("Uid"), vec![NOBODY.to_string(); 4], "Uid");
    assert_eq!(ids("Gid"), vec![NOBODY.to_string(); 4], "Gid");
    assert_eq!(field(&st, "Groups"), "", "supplementary groups kept");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(&st, cap), "0000000000000000", "{cap}");
    }
    // Its environment holds nothing of the daemon's but what it needs.
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(!env.contains("DOCKER_HOST"), "daemon environment leaked");
}

/// The API works end to end: the service token is required, a run is
/// created and deleted.
fn assert_api(sock: &Path) {
    let (code, _) = http(sock, "POST", "/v1/runs", None, "{}");
    assert_eq!(code, 401, "no service token");
    let (code, _) = http(sock, "POST", "/v1/runs", Some("wrong-token"), "{}");
    assert_eq!(code, 401, "wrong service token");
    let (code, body) = http(
        sock,
        "POST",
        "/v1/runs",
        Some(SERVICE_TOKEN),
        r#"{"org":"acme","integrations":["calendar"],"ttl_secs":60}"#,
    );
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // No credential is stored for the integration, so no handle is issued;
    // the run itself is created and then revoked.
    assert!(v["handles"].is_object(), "{body}");
    assert!(v["expires_at"].is_string(), "{body}");
    let run = v["run_id"].as_str().unwrap();
    let (code, body) = http(
        sock,
        "DELETE",
        &format!("/v1/runs/{run}"),
        Some(SERVICE_TOKEN),
        "",
    );
    assert_eq!(code, 204, "{body}");
}

/// The daemon with `--worker` in a network namespace of its own, its files
/// in a fresh directory; `None` when the test must skip.
fn start_daemon(tag: &str) -> Option<(Guard, PathBuf, PathBuf)> {
    if !e2e::require(
        "root and unshare (to run the daemon in its own netns and the worker as another uid)",
        is_root() && e2e::have_tool("unshare"),
    ) {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("chokepoint-daemon-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "version: v1\norgs:\n  acme:\n    integrations:\n      calendar:\n        hosts: [api.calendar-e2e.com]\n",
    )
    .unwrap();
    let key = dir.join("master.key");
    std::fs::write(&key, "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\n").unwrap();
    let token = dir.join("service.token");
    std::fs::write(&token, format!("{SERVICE_TOKEN}\n")).unwrap();
    let wdir = dir.join("worker");
    std::fs::create_dir_all(&wdir).unwrap();
    // The worker's files and folder belong to its uid; the daemon's state
    // stays root's.
    for p in [&wdir, &policy, &key, &token] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&wdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = wdir.join("worker.sock");
    let stdout = std::fs::File::create(dir.join("daemon.out")).unwrap();
    let stderr = std::fs::File::create(dir.join("daemon.err")).unwrap();

    // `unshare --net` execs the daemon: the child's pid is the daemon's.
    let daemon = Command::new("unshare")
        .args(["--net", "--", CONTROLLER, "--policy"])
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--ruleset-file")
        .arg(dir.join("ruleset.json"))
        .args(["--interval-secs", "3600", "--worker"])
        .args(["--worker-user", &format!("{NOBODY}:{NOBODY}")])
        .arg(format!(
            "--worker-arg=--store=sqlite:{}",
            wdir.join("worker.db").display()
        ))
        .arg(format!("--worker-arg=--listen=unix:{}", sock.display()))
        .arg(format!(
            "--worker-arg=--audit-log={}",
            wdir.join("audit.jsonl").display()
        ))
        .env(
            "DOCKER_HOST",
            format!("unix://{}", dir.join("no-docker.sock").display()),
        )
        .env("CHOKEPOINT_MASTER_KEY_FILE", &key)
        .env("CHOKEPOINT_WORKER_TOKEN_FILE", &token)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    Some((
        Guard {
            daemon,
            dir: dir.clone(),
        },
        dir,
        sock,
    ))
}

/// What the daemon started by [`start_daemon`] in `dir` has printed.
fn daemon_logs(dir: &std::path::Path) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        std::fs::read_to_string(dir.join("daemon.out")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default()
    )
}

#[test]
fn daemon_supervises_worker_without_docker() {
    let Some((mut guard, dir, sock)) = start_daemon("worker") else {
        return;
    };
    let daemon_pid = guard.daemon.id();
    let logs = || daemon_logs(&dir);

    // The worker comes up as the daemon's child, unprivileged, and serves.
    let first = wait_for_worker(daemon_pid, None);
    assert_unprivileged(first);
    wait_healthy(&sock);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);
    assert_api(&sock);
    // The daemon itself kept running without Docker.
    assert!(
        guard.daemon.try_wait().unwrap().is_none(),
        "the daemon exited: {}",
        logs()
    );

    // Killed: restarted (after the first backoff), unprivileged, serving.
    kill("-KILL", first);
    let second = wait_for_worker(daemon_pid, Some(first));
    assert_ne!(first, second);
    assert_unprivileged(second);
    wait_healthy(&sock);
    assert_api(&sock);
    let out = std::fs::read_to_string(dir.join("daemon.out")).unwrap_or_default();
    let started: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "worker_started")
        .collect();
    assert_eq!(started.len(), 2, "{}", logs());
    assert_eq!(started[0]["pid"], first);
    assert_eq!(started[1]["pid"], second);
    assert!(
        out.lines().any(|l| l.contains("\"worker_exited\"")),
        "{}",
        logs()
    );

    // SIGTERM stops the daemon, and the worker with it.
    kill("-TERM", daemon_pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(st) = guard.daemon.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon ignored SIGTERM: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "daemon exit {code:?}: {}", logs());
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(second) {
        assert!(Instant::now() < deadline, "the worker outlived the daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        processes_using(&dir).is_empty(),
        "something still runs from the test directory"
    );
}

#[test]
fn a_killed_daemon_takes_its_worker_along() {
    // SIGKILL leaves the daemon no chance to stop its child: the worker
    // sees the pipe it holds on its stdin close and stops by itself.
    let Some((mut guard, dir, sock)) = start_daemon("killed") else {
        return;
    };
    let daemon_pid = guard.daemon.id();
    let worker = wait_for_worker(daemon_pid, None);
    wait_healthy(&sock);
    kill("-KILL", daemon_pid);
    let _ = guard.daemon.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(worker) {
        assert!(
            Instant::now() < deadline,
            "the worker outlived its SIGKILLed daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default();
    assert!(
        err.contains("the supervisor's pipe closed"),
        "the worker did not say why it stopped:\n{err}"
    );
    assert!(
        processes_using(&dir).is_empty(),
        "something still runs from the test directory"
    );
}

/// `GET /metrics` on the daemon's `--metrics-listen` (127.0.0.1:9091 in its
/// network namespace, reached with `nsenter`): (HTTP status, body).
fn scrape_daemon(daemon: u32) -> (u16, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{daemon}/ns/net"))
        .args([
            "sh",
            "-c",
            "ip link set lo up && curl -s -m 10 -w '\n%{http_code}' http://127.0.0.1:9091/metrics",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The value of an unlabelled sample, if present.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

#[test]
fn daemon_metrics_carry_the_workers() {
    // The worker's socket is 0600 and its own uid's: Prometheus cannot
    // scrape it, so the controller's /metrics carries the worker's series,
    // fetched with the service token; a worker that does not answer turns
    // controller_worker_scrape_up to 0 and the rest is still served.
    let Some((guard, dir, sock)) = start_daemon("metrics") else {
        return;
    };
    let daemon_pid = guard.daemon.id();
    let logs = || daemon_logs(&dir);
    let worker = wait_for_worker(daemon_pid, None);
    wait_healthy(&sock);
    // Activity the worker counts: two refused calls, one run started.
    assert_api(&sock);

    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = scrape_daemon(daemon_pid);
        if code == 200 && sample(&body, "controller_worker_scrape_up") == Some(1.0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape with the worker's series (last: {code}):\n{body}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sample(&body, "controller_drift_total").is_some(), "{body}");
    assert_eq!(
        sample(&body, "worker_runs_started_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "worker_api_unauthorized_total"),
        Some(2.0),
        "{body}"
    );
    assert!(
        body.contains("# TYPE worker_request_seconds histogram"),
        "{body}"
    );
    assert!(!body.contains(SERVICE_TOKEN), "the service token leaked");
    e2e::promtool::check_metrics(&body);

    // A worker that does not answer (stopped): the controller's own series
    // within the scrape timeout, the gauge at 0, no worker series.
    kill("-STOP", worker);
    let started = Instant::now();
    let (code, body) = scrape_daemon(daemon_pid);
    let took = started.elapsed();
    kill("-CONT", worker);
    assert_eq!(code, 200, "{body}\n{}", logs());
    assert_eq!(
        sample(&body, "controller_worker_scrape_up"),
        Some(0.0),
        "{body}"
    );
    assert!(sample(&body, "controller_drift_total").is_some(), "{body}");
    assert!(!body.contains("worker_runs_started_total"), "{body}");
    assert!(took < Duration::from_secs(8), "the scrape took {took:?}");
    e2e::promtool::check_metrics(&body);

    // Answering again: back to 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&scrape_daemon(daemon_pid).1, "controller_worker_scrape_up") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the worker's series never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default();
    let out = std::fs::read_to_string(dir.join("daemon.out")).unwrap_or_default();
    assert!(
        !err.contains(SERVICE_TOKEN) && !out.contains(SERVICE_TOKEN),
        "the service token reached the daemon's logs"
    );
}
