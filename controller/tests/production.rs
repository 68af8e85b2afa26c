//! The production switch on the real `egress-controller` daemon and its
//! `worker` subcommand (docs/production.md): production with exactly one
//! thing missing exits 78 naming it; with everything present it starts;
//! development with the same gaps starts with the warning; after start,
//! a proxy that disappears turns the worker's `/readyz` red.
//!
//! The proxy is played by a loopback `/readyz` responder (the worker and
//! the controller only ever ask the proxy's admin listener `GET /readyz`).
//! The daemon is run with `--check`, which runs every production check and
//! stops before nftables or Docker (no root needed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::type_complexity
)] // test code: a panic is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::startup::{Started, get, start_or_exit};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_egress-controller");
const CTL: &str = env!("CARGO_BIN_EXE_egressctl");
const POLICY: &str = "version: v1
orgs:
  acme:
    clients: [10.10.0.0/24]
    integrations:
      calendar:
        hosts: [api.calendar-e2e.com]
";
/// 64 hex digits, as `openssl rand -hex 32` writes.
const GOOD_TOKEN: &str = "3f9c1e7a5b2d8046c1e9f7a3b5d2084e6c1a9f3e7b5d2c8046a1e9f3c7b5d208";
/// The worker tests' service token: shipped in this tree.
const SHIPPED_TOKEN: &str = "svc-token-0123456789abcdef";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A stand-in for the proxy's admin listener: `200` on every request until
/// stopped (then the port is closed). Stopped and joined on drop.
struct FakeProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeProxy {
    fn start() -> FakeProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Bounded: a test never runs 5 minutes.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let body = "{\"status\":\"ready\",\"mode\":\"production\"}\n";
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeProxy {
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

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("chokepoint-prod-ctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// What a worker case leaves out or spoils.
#[derive(Clone, Copy, Debug)]
enum Gap {
    None,
    NoPolicyFile,
    EmptyPolicy,
    UnsafeRanges,
    NoMasterKey,
    ShippedMasterKey,
    WrongMasterKey,
    NoServiceToken,
    WeakServiceToken,
    StoreDoesNotOpen,
    NoProxyAdmin,
    ProxyDown,
}

/// Write the files for `gap` into `dir`; the worker's command line.
fn worker_command(dir: &Path, gap: Gap, env: Option<&str>, proxy: SocketAddr) -> Command {
    let policy = dir.join("policy.yaml");
    match gap {
        Gap::NoPolicyFile => {}
        Gap::EmptyPolicy => std::fs::write(&policy, "\n# empty\n").unwrap(),
        Gap::UnsafeRanges => std::fs::write(
            &policy,
            format!("{POLICY}unsafe_allow_ranges: [127.0.0.2/32]\n"),
        )
        .unwrap(),
        _ => std::fs::write(&policy, POLICY).unwrap(),
    }
    let good_key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(73).wrapping_add(19))
        .collect();
    let key = dir.join("master.key");
    std::fs::write(&key, format!("{}\n", b64(&good_key))).unwrap();
    let store = if matches!(gap, Gap::StoreDoesNotOpen) {
        // A directory where the database file should be.
        std::fs::create_dir_all(dir.join("db-is-a-dir")).unwrap();
        format!("sqlite:{}", dir.join("db-is-a-dir").display())
    } else {
        format!("sqlite:{}", dir.join("worker.db").display())
    };
    if matches!(gap, Gap::WrongMasterKey) {
        // A credential written with another key: the worker's key cannot
        // open it.
        let other = dir.join("other.key");
        let other_key: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(31).wrapping_add(7))
            .collect();
        std::fs::write(&other, format!("{}\n", b64(&other_key))).unwrap();
        let mut c = Command::new(CTL)
            .args(["credential", "add", "--store", &store, "--policy"])
            .arg(&policy)
            .args(["--org", "acme", "--integration", "calendar"])
            .env("CHOKEPOINT_MASTER_KEY_FILE", &other)
            .env_remove("CHOKEPOINT_ENV")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(b"ya29.stored-with-the-other-key-0123456789\n")
            .unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "credential add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if matches!(gap, Gap::ShippedMasterKey) {
        std::fs::write(&key, format!("{}\n", b64(&[0x42; 32]))).unwrap();
    }
    let token = dir.join("service.token");
    let secret = if matches!(gap, Gap::WeakServiceToken) {
        SHIPPED_TOKEN
    } else {
        GOOD_TOKEN
    };
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    let mut cmd = Command::new(CONTROLLER);
    cmd.arg("worker")
        .arg("--policy")
        .arg(&policy)
        .args(["--store", &store, "--listen", "127.0.0.1:0"])
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .env_remove("CHOKEPOINT_ENV")
        .env_remove("CHOKEPOINT_MASTER_KEY_FILE")
        .env_remove("CHOKEPOINT_WORKER_TOKEN_FILE");
    match gap {
        Gap::NoProxyAdmin => {}
        Gap::ProxyDown => {
            // A port nothing listens on.
            let closed = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            cmd.arg(format!("--proxy-admin={closed}"));
        }
        _ => {
            cmd.arg(format!("--proxy-admin={proxy}"));
        }
    }
    if !matches!(gap, Gap::NoMasterKey) {
        cmd.env("CHOKEPOINT_MASTER_KEY_FILE", &key);
    }
    if !matches!(gap, Gap::NoServiceToken) {
        cmd.env("CHOKEPOINT_WORKER_TOKEN_FILE", &token);
    }
    if let Some(v) = env {
        cmd.env("CHOKEPOINT_ENV", v);
    }
    cmd
}

fn start_worker(name: &str, gap: Gap, env: Option<&str>, proxy: SocketAddr) -> (Started, Dir) {
    let dir = tempdir(name);
    let s = start_or_exit(
        &mut worker_command(&dir.0, gap, env, proxy),
        "listening on",
        Duration::from_secs(30),
    );
    (s, dir)
}

/// Production worker with exactly one part missing: exit 78, one line
/// naming the condition, never the secret.
#[test]
fn worker_production_refuses_each_missing_part() {
    let proxy = FakeProxy::start();
    let cases = [
        ("w_no_policy", Gap::NoPolicyFile, "missing_egress_policy"),
        ("w_empty_policy", Gap::EmptyPolicy, "missing_egress_policy"),
        ("w_unsafe", Gap::UnsafeRanges, "unsafe_allow_ranges"),
        ("w_no_key", Gap::NoMasterKey, "missing_encryption_key"),
        ("w_shipped_key", Gap::ShippedMasterKey, "default_secret_key"),
        ("w_wrong_key", Gap::WrongMasterKey, "missing_encryption_key"),
        ("w_no_token", Gap::NoServiceToken, "missing_auth_token"),
        ("w_weak_token", Gap::WeakServiceToken, "default_secret_key"),
        (
            "w_store",
            Gap::StoreDoesNotOpen,
            "missing_credential_broker",
        ),
        ("w_no_proxy_flag", Gap::NoProxyAdmin, "egress_proxy_down"),
        ("w_proxy_down", Gap::ProxyDown, "egress_proxy_down"),
    ];
    let addr = proxy.addr;
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, gap, want)| {
            std::thread::spawn(move || {
                let (s, _dir) = start_worker(name, gap, Some("production"), addr);
                let Started::Exited(code, stderr) = s else {
                    panic!("{name}: production started with {gap:?}");
                };
                assert_eq!(code, Some(78), "{name}: {stderr}");
                let lines: Vec<&str> = stderr.lines().collect();
                assert_eq!(lines.len(), 1, "{name}: one line: {stderr}");
                assert!(
                    lines[0].starts_with(&format!(
                        "egress-controller worker: production refused: {want}: "
                    )),
                    "{name}: {stderr}"
                );
                assert!(!stderr.contains(SHIPPED_TOKEN), "{name}: secret printed");
                assert!(!stderr.contains("QkJC"), "{name}: key printed");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Everything present: the production worker starts; `/readyz` says
/// production; when the proxy goes away `/readyz` turns red.
#[test]
fn worker_production_starts_and_turns_red_without_the_proxy() {
    let mut proxy = FakeProxy::start();
    let (s, _dir) = start_worker("w_complete", Gap::None, Some("production"), proxy.addr);
    let Started::Running(r) = s else {
        panic!("production worker did not start: {s:?}");
    };
    assert!(!r.stderr.contains("development"), "{}", r.stderr);
    let at = r.addr("listening on ");
    let resp = get(at, "/readyz").expect("readyz answers");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["mode"], "production");
    let create = format!(
        "POST /v1/runs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {GOOD_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{{\"org\": \"acme\"}}\r\n"
    );
    let resp = e2e::send_raw(at, create.as_bytes(), Duration::from_secs(5)).unwrap();
    assert_ne!(resp.status, 503, "{}", resp.text());
    proxy.stop();
    let resp = get(at, "/readyz").expect("readyz answers");
    assert_eq!(resp.status, 503, "{}", resp.text());
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["status"], "proxy unavailable");
    assert_eq!(v["mode"], "production");
    // Work is refused (fail closed), with the reason, and counted, within
    // a few dependency checks.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let resp = e2e::send_raw(at, create.as_bytes(), Duration::from_secs(5)).unwrap();
        if resp.status == 503 || Instant::now() > deadline {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    let v: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(v["reason"], "dependency_unavailable", "{v}");
    let metrics = format!(
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {GOOD_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let m = e2e::send_raw(at, metrics.as_bytes(), Duration::from_secs(5)).unwrap();
    assert_eq!(m.status, 200);
    assert!(
        m.text()
            .lines()
            .any(|l| l.contains("reason=\"dependency_unavailable\"") && !l.ends_with(" 0")),
        "{}",
        m.text()
    );
}

/// Development with the same gaps starts with the warning (docs/production.md,
/// the development column): no policy = an empty one (every request
/// denied); no master key = an ephemeral in-memory key; no service token =
/// an ephemeral one nobody holds (every call refused); a key that does not
/// open the store = those credentials fail. Only a store that does not
/// open stops a development start (see
/// `worker_development_without_a_store_does_not_start`).
#[test]
fn worker_development_starts_with_the_warning() {
    let proxy = FakeProxy::start();
    let cases = [
        (
            "wd_no_policy",
            Gap::NoPolicyFile,
            None,
            Some("missing_egress_policy"),
        ),
        (
            "wd_empty_policy",
            Gap::EmptyPolicy,
            None,
            Some("missing_egress_policy"),
        ),
        (
            "wd_no_key",
            Gap::NoMasterKey,
            None,
            Some("missing_encryption_key"),
        ),
        (
            "wd_wrong_key",
            Gap::WrongMasterKey,
            None,
            Some("missing_encryption_key"),
        ),
        (
            "wd_no_token",
            Gap::NoServiceToken,
            None,
            Some("missing_auth_token"),
        ),
        ("wd_no_proxy_flag", Gap::NoProxyAdmin, None, None),
        ("wd_unset", Gap::None, None, None),
        ("wd_explicit", Gap::None, Some("development"), None),
        (
            "wd_unsafe",
            Gap::UnsafeRanges,
            None,
            Some("unsafe_allow_ranges"),
        ),
        (
            "wd_shipped_key",
            Gap::ShippedMasterKey,
            None,
            Some("default_secret_key"),
        ),
        (
            "wd_weak_token",
            Gap::WeakServiceToken,
            None,
            Some("default_secret_key"),
        ),
        (
            "wd_no_proxy",
            Gap::ProxyDown,
            None,
            Some("egress_proxy_down"),
        ),
    ];
    let addr = proxy.addr;
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, gap, env, warned)| {
            std::thread::spawn(move || {
                let (s, _dir) = start_worker(name, gap, env, addr);
                let Started::Running(r) = s else {
                    panic!("{name}: development did not start: {s:?}");
                };
                let warnings = r
                    .stderr
                    .lines()
                    .filter(|l| {
                        l.starts_with("egress-controller worker: warning: development mode")
                    })
                    .count();
                assert_eq!(warnings, 1, "{name}: {}", r.stderr);
                if let Some(c) = warned {
                    assert!(
                        r.stderr
                            .contains(&format!("would refuse production: {c}: ")),
                        "{name}: {}",
                        r.stderr
                    );
                }
                assert!(!r.stderr.contains(SHIPPED_TOKEN), "{name}: secret printed");
                let at = r.addr("listening on ");
                let resp = get(at, "/readyz").expect("readyz answers");
                let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
                assert_eq!(v["mode"], "development", "{name}");
                // What each substitute does, checked on the running worker.
                let body = r#"{"org":"acme","integrations":["calendar"]}"#;
                let create = format!(
                    "POST /v1/runs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {GOOD_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let resp = e2e::send_raw(at, create.as_bytes(), Duration::from_secs(5)).unwrap();
                match gap {
                    Gap::NoServiceToken => {
                        assert!(r.stderr.contains("ephemeral service token"), "{}", r.stderr);
                        assert_eq!(resp.status, 401, "{name}: {}", resp.text());
                    }
                    Gap::NoPolicyFile | Gap::EmptyPolicy => {
                        assert!(r.stderr.contains("starting with an empty policy"), "{}", r.stderr);
                        // No org in force: the run is refused.
                        assert!(resp.status >= 400 && resp.status != 401, "{name}: {}", resp.text());
                    }
                    Gap::NoMasterKey => {
                        assert!(r.stderr.contains("ephemeral master key"), "{}", r.stderr);
                        assert!(resp.status < 300, "{name}: {}", resp.text());
                    }
                    Gap::WrongMasterKey => {
                        assert!(
                            r.stderr.contains("the master key does not open the store"),
                            "{}",
                            r.stderr
                        );
                    }
                    _ => {}
                }
                for secret in [SHIPPED_TOKEN, GOOD_TOKEN] {
                    assert!(!r.stderr.contains(secret), "{name}: secret printed");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// The one gap development cannot start with: a store that does not open
/// (runs, handles and credentials live there; a substitute would lose
/// them silently). One clear line, a non-zero exit.
#[test]
fn worker_development_without_a_store_does_not_start() {
    let proxy = FakeProxy::start();
    let (s, _dir) = start_worker("wd_store", Gap::StoreDoesNotOpen, None, proxy.addr);
    let Started::Exited(code, stderr) = s else {
        panic!("development started without a store: {s:?}");
    };
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("would refuse production: missing_credential_broker: "),
        "{stderr}"
    );
}

/// The daemon, run with `--check` (every production check, then exit before
/// nftables and Docker): one case per condition that applies to it.
#[test]
fn controller_production_checks() {
    let proxy = FakeProxy::start();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let good = format!("--proxy-admin={}", proxy.addr);
    let down = format!("--proxy-admin={closed}");
    // (name, policy text or None, proxy flag, mode, exit, expected text)
    let cases: Vec<(&str, Option<String>, Option<&str>, Option<&str>, i32, &str)> = vec![
        (
            "c_no_policy",
            None,
            Some(&good),
            Some("production"),
            78,
            "production refused: missing_egress_policy: ",
        ),
        (
            "c_empty",
            Some("\n".into()),
            Some(&good),
            Some("production"),
            78,
            "production refused: missing_egress_policy: ",
        ),
        (
            "c_no_org",
            Some("version: v1\norgs: {}\n".into()),
            Some(&good),
            Some("production"),
            78,
            "production refused: missing_egress_policy: ",
        ),
        (
            "c_unsafe",
            Some(format!("{POLICY}unsafe_allow_ranges: [127.0.0.2/32]\n")),
            Some(&good),
            Some("production"),
            78,
            "production refused: unsafe_allow_ranges: ",
        ),
        (
            "c_no_proxy_flag",
            Some(POLICY.into()),
            None,
            Some("production"),
            78,
            "production refused: egress_proxy_down: ",
        ),
        (
            "c_proxy_down",
            Some(POLICY.into()),
            Some(&down),
            Some("production"),
            78,
            "production refused: egress_proxy_down: ",
        ),
        (
            "c_unknown_mode",
            Some(POLICY.into()),
            Some(&good),
            Some("prod"),
            78,
            "unknown_mode: CHOKEPOINT_ENV",
        ),
        (
            "c_complete",
            Some(POLICY.into()),
            Some(&good),
            Some("production"),
            0,
            "",
        ),
        (
            "c_dev_unsafe",
            Some(format!("{POLICY}unsafe_allow_ranges: [127.0.0.2/32]\n")),
            Some(&down),
            None,
            0,
            "would refuse production: unsafe_allow_ranges: ",
        ),
        (
            "c_dev_no_policy",
            None,
            Some(&good),
            None,
            64,
            "would refuse production: missing_egress_policy: ",
        ),
        (
            "c_dev_proxy_down",
            Some(POLICY.into()),
            Some(&down),
            Some("development"),
            0,
            "would refuse production: egress_proxy_down: ",
        ),
    ];
    for (name, policy, flag, mode, code, text) in cases {
        let dir = tempdir(name);
        let path = dir.0.join("policy.yaml");
        if let Some(p) = policy {
            std::fs::write(&path, p).unwrap();
        }
        let mut cmd = Command::new(CONTROLLER);
        cmd.arg("--policy")
            .arg(&path)
            .arg("--check")
            .arg("--state-dir")
            .arg(dir.0.join("state"))
            .env_remove("CHOKEPOINT_ENV");
        if let Some(f) = flag {
            cmd.arg(f);
        }
        if let Some(m) = mode {
            cmd.env("CHOKEPOINT_ENV", m);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        assert!(stderr.contains(text), "{name}: {stderr}");
        if code == 78 {
            assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr}");
        }
        let dev_warning = stderr.contains("egress-controller: warning: development mode");
        assert_eq!(
            dev_warning,
            mode != Some("production") && code != 78,
            "{name}: {stderr}"
        );
    }
}

/// `egressctl` refuses an unknown mode too, and prints no warning.
#[test]
fn egressctl_reads_the_switch() {
    let out = Command::new(CTL)
        .arg("--help")
        .env("CHOKEPOINT_ENV", "prod")
        .output()
        .unwrap();
    // --help is answered by the parser before the switch is read.
    assert!(out.status.success());
    let dir = tempdir("ctl");
    let out = Command::new(CTL)
        .args(["credential", "list", "--store"])
        .arg(format!("sqlite:{}", dir.0.join("x.db").display()))
        .env("CHOKEPOINT_ENV", "prod")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_mode"));
}

/// The controller daemon in `dir` with only `dir/bin` on `PATH`, holding
/// `nft` (this shell script) if given, none otherwise; Docker unreachable,
/// `CHOKEPOINT_ENV` unset.
fn controller_over_nft(dir: &Dir, proxy_arg: &str, nft_script: Option<&str>) -> Command {
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    if let Some(script) = nft_script {
        use std::os::unix::fs::PermissionsExt as _;
        let nft = bin.join("nft");
        std::fs::write(&nft, script).unwrap();
        std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let policy = dir.0.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut cmd = Command::new(CONTROLLER);
    cmd.arg("--policy")
        .arg(&policy)
        .arg(proxy_arg)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .arg("--ruleset-file")
        .arg(dir.0.join("ruleset.json"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("PATH", &bin)
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", dir.0.display()),
        )
        .env_remove("CHOKEPOINT_ENV");
    cmd
}

/// Condition 5's second half ("… or the nft tables are absent"): the
/// daemon, after programming its first pass, reads its tables back; in
/// production tables that are absent or not as rendered are exit 78 with
/// one `egress_proxy_down` line; in development the same is a warning and
/// the daemon runs on.
///
/// The kernel is played by `nft` stand-ins on `PATH` (no host table is
/// touched): one that accepts every transaction but holds nothing (a
/// ruleset that silently does not stick), and none at all. Docker is
/// unreachable (`DOCKER_HOST` names no socket): the rules come first.
#[test]
fn controller_refuses_production_when_its_nft_tables_are_absent() {
    let proxy = FakeProxy::start();
    let good = format!("--proxy-admin={}", proxy.addr);
    // (name, nft stand-in, mode, --once)
    let cases = [
        ("c_nft_holds_nothing", true, Some("production"), true),
        ("c_no_nft", false, Some("production"), true),
        (
            "c_nft_holds_nothing_daemon",
            true,
            Some("production"),
            false,
        ),
    ];
    for (name, fake_nft, mode, once) in cases {
        let dir = tempdir(name);
        let script = "#!/bin/sh\ncase \"$*\" in *list*) echo 'Error: No such file or directory' >&2; exit 1;; esac\ncat >/dev/null\nexit 0\n";
        let mut cmd = controller_over_nft(&dir, &good, fake_nft.then_some(script));
        if once {
            cmd.arg("--once");
        }
        if let Some(m) = mode {
            cmd.env("CHOKEPOINT_ENV", m);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name}: {stderr}");
        let refused: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("production refused"))
            .collect();
        assert_eq!(refused.len(), 1, "{name}: {stderr}");
        assert!(
            refused[0].starts_with("egress-controller: production refused: egress_proxy_down: the nft tables are not as rendered"),
            "{name}: {stderr}"
        );
        assert_eq!(stderr.lines().last(), Some(refused[0]), "{name}: last line");
        let want = if fake_nft {
            "the table `inet chokepoint` is absent"
        } else {
            "cannot list them"
        };
        assert!(refused[0].contains(want), "{name}: {stderr}");
    }
    // Development: the same gap is a warning; the daemon keeps running.
    let dir = tempdir("c_dev_nft_holds_nothing");
    let mut cmd = controller_over_nft(
        &dir,
        &good,
        Some("#!/bin/sh\ncase \"$*\" in *list*) exit 1;; esac\ncat >/dev/null\nexit 0\n"),
    );
    let s = start_or_exit(
        &mut cmd,
        "would refuse production: egress_proxy_down: the nft tables are not as rendered",
        Duration::from_secs(30),
    );
    let Started::Running(r) = s else {
        panic!("development did not run on: {s:?}");
    };
    assert!(
        r.stderr
            .contains("egress-controller: warning: development mode"),
        "{}",
        r.stderr
    );
    drop(r);
}
