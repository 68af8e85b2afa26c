//! The production switch on the real `egress-proxy` (docs/production.md):
//! production with exactly one thing missing exits 78 naming it; with
//! everything present it starts and `/readyz` says `"mode":"production"`;
//! development with the same gaps starts with the warning.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::startup::{Started, get, start_or_exit};

const BIN: &str = env!("CARGO_BIN_EXE_egress-proxy");
const GOOD_POLICY: &str = "version: v1\norgs:\n  acme:\n    clients: [10.10.0.0/24]\n";
/// 64 hex digits, as `openssl rand -hex 32` writes.
const GOOD_TOKEN: &str = "3f9c1e7a5b2d8046c1e9f7a3b5d2084e6c1a9f3e7b5d2c8046a1e9f3c7b5d208";
/// Long enough for the proxy's own 16-character floor, shipped in the tree.
const SHIPPED_TOKEN: &str = "svc-token-0123456789abcdef";

/// One start's inputs: every part present unless a case removes it.
#[derive(Clone, Copy)]
enum Gap {
    None,
    NoPolicyFile,
    EmptyPolicy,
    NoOrg,
    UnsafeRanges,
    NoAdminToken,
    WeakAdminToken,
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command(dir: &Path, gap: Gap, env: Option<&str>) -> Command {
    let policy = dir.join("policy.yaml");
    let text = match gap {
        Gap::NoPolicyFile => None,
        Gap::EmptyPolicy => Some("# nothing yet\n\n".to_owned()),
        Gap::NoOrg => Some("version: v1\norgs: {}\n".to_owned()),
        Gap::UnsafeRanges => Some(format!(
            "{GOOD_POLICY}unsafe_allow_ranges: [127.0.0.2/32]\n"
        )),
        _ => Some(GOOD_POLICY.to_owned()),
    };
    if let Some(t) = text {
        std::fs::write(&policy, t).unwrap();
    }
    let token = dir.join("admin-token");
    let secret = match gap {
        Gap::WeakAdminToken => SHIPPED_TOKEN,
        _ => GOOD_TOKEN,
    };
    std::fs::write(&token, format!("{secret}\n")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--policy")
        .arg(&policy)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--dns-server", "127.0.0.1:9", "--threads", "1"])
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .env("RUST_LOG", "info,pingora=warn")
        .env_remove("CHOKEPOINT_ENV")
        .env_remove("EGRESS_ADMIN_TOKEN_FILE");
    if !matches!(gap, Gap::NoAdminToken) {
        cmd.env("EGRESS_ADMIN_TOKEN_FILE", &token);
    }
    if let Some(v) = env {
        cmd.env("CHOKEPOINT_ENV", v);
    }
    cmd
}

fn tempdir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "chokepoint-prod-proxy-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn start(name: &str, gap: Gap, env: Option<&str>) -> (Started, Dir) {
    let dir = tempdir(name);
    let s = start_or_exit(
        &mut command(&dir.0, gap, env),
        "egress-proxy ready",
        Duration::from_secs(30),
    );
    (s, dir)
}

/// Production with exactly one part missing: exit 78 and one line naming
/// the condition; the secret never appears.
#[test]
fn production_refuses_each_missing_part() {
    let cases = [
        ("no_policy_file", Gap::NoPolicyFile, "missing_egress_policy"),
        ("empty_policy", Gap::EmptyPolicy, "missing_egress_policy"),
        ("no_org", Gap::NoOrg, "missing_egress_policy"),
        ("unsafe_ranges", Gap::UnsafeRanges, "unsafe_allow_ranges"),
        ("no_admin_token", Gap::NoAdminToken, "missing_auth_token"),
        (
            "weak_admin_token",
            Gap::WeakAdminToken,
            "default_secret_key",
        ),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, gap, want)| {
            std::thread::spawn(move || {
                let (s, _dir) = start(name, gap, Some("production"));
                let Started::Exited(code, stderr) = s else {
                    panic!("{name}: production started with a gap");
                };
                assert_eq!(code, Some(78), "{name}: {stderr}");
                let lines: Vec<&str> = stderr.lines().collect();
                assert_eq!(lines.len(), 1, "{name}: one line: {stderr}");
                assert!(
                    lines[0].starts_with(&format!("egress-proxy: production refused: {want}: ")),
                    "{name}: {stderr}"
                );
                assert!(!stderr.contains(SHIPPED_TOKEN), "{name}: secret printed");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Anything but `production` or `development` is refused.
#[test]
fn unknown_mode_is_refused() {
    for v in ["prod", "Production", "staging"] {
        let (s, _dir) = start(&format!("mode-{v}"), Gap::None, Some(v));
        let Started::Exited(code, stderr) = s else {
            panic!("{v}: started");
        };
        assert_eq!(code, Some(78), "{v}: {stderr}");
        assert!(stderr.contains("unknown_mode: CHOKEPOINT_ENV"), "{stderr}");
    }
}

/// Everything present: production starts, says nothing about development,
/// and `/readyz` reports the mode.
#[test]
fn production_with_everything_starts() {
    let (s, _dir) = start("complete", Gap::None, Some("production"));
    let Started::Running(r) = s else {
        panic!("production did not start: {s:?}");
    };
    assert!(!r.stderr.contains("development"), "{}", r.stderr);
    let resp = get(r.addr("admin="), "/readyz").expect("readyz answers");
    assert_eq!(resp.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["mode"], "production");
    assert_eq!(v["status"], "ready");
}

/// Development (unset or explicit) with the same gaps starts, warns once
/// per start and once per gap, and `/readyz` says development.
#[test]
fn development_starts_with_the_warning() {
    let cases = [
        ("dev_unset", Gap::None, None, None),
        ("dev_explicit", Gap::None, Some("development"), None),
        (
            "dev_no_policy_file",
            Gap::NoPolicyFile,
            None,
            Some("missing_egress_policy"),
        ),
        (
            "dev_empty_policy",
            Gap::EmptyPolicy,
            None,
            Some("missing_egress_policy"),
        ),
        (
            "dev_no_org",
            Gap::NoOrg,
            None,
            Some("missing_egress_policy"),
        ),
        (
            "dev_unsafe",
            Gap::UnsafeRanges,
            None,
            Some("unsafe_allow_ranges"),
        ),
        (
            "dev_no_token",
            Gap::NoAdminToken,
            None,
            Some("missing_auth_token"),
        ),
        (
            "dev_weak_token",
            Gap::WeakAdminToken,
            None,
            Some("default_secret_key"),
        ),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, gap, env, warned)| {
            std::thread::spawn(move || {
                let (s, dir) = start(name, gap, env);
                let Started::Running(r) = s else {
                    panic!("{name}: development did not start: {s:?}");
                };
                let warnings = r
                    .stderr
                    .lines()
                    .filter(|l| l.starts_with("egress-proxy: warning: development mode"))
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
                let resp = get(r.addr("admin="), "/readyz").expect("readyz answers");
                let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
                assert_eq!(v["mode"], "development", "{name}");
                if matches!(gap, Gap::NoPolicyFile | Gap::EmptyPolicy) {
                    assert!(
                        r.stderr.contains("starting with an empty policy"),
                        "{name}: {}",
                        r.stderr
                    );
                    // No org in force: every request is denied.
                    let resp = e2e::proxy_request(
                        r.addr("listen="),
                        "GET",
                        "http://example.com/",
                        "",
                    );
                    assert_eq!(resp.status, 403, "{name}: {}", resp.text());
                    assert_eq!(
                        resp.header("x-egress-error"),
                        Some("unknown_client"),
                        "{name}"
                    );
                    // Written and reloaded, the policy is in force.
                    std::fs::write(dir.0.join("policy.yaml"), GOOD_POLICY).unwrap();
                    let req = format!(
                        "POST /reload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {GOOD_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let resp =
                        e2e::send_raw(r.addr("admin="), req.as_bytes(), Duration::from_secs(5))
                            .unwrap();
                    assert_eq!(resp.status, 200, "{name}: {}", resp.text());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Production refuses a reload to a policy it would refuse at start; the
/// policy in force stays.
#[test]
fn production_refuses_an_unsafe_reload() {
    let (s, dir) = start("reload", Gap::None, Some("production"));
    let Started::Running(r) = s else {
        panic!("production did not start: {s:?}");
    };
    std::fs::write(
        dir.0.join("policy.yaml"),
        format!("{GOOD_POLICY}unsafe_allow_ranges: [127.0.0.2/32]\n"),
    )
    .unwrap();
    let req = format!(
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {GOOD_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let resp = e2e::send_raw(r.addr("admin="), req.as_bytes(), Duration::from_secs(5)).unwrap();
    assert_eq!(resp.status, 422, "{}", resp.text());
    assert!(
        resp.text().contains("unsafe_allow_ranges"),
        "{}",
        resp.text()
    );
}
