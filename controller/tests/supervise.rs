//! The controller supervises the real worker: a child process with its own
//! uid and gid, no supplementary groups and no capabilities, restarted when
//! it is killed. Needs root (to change uid); skips otherwise, unless
//! `CHOKEPOINT_REQUIRE_PRIVILEGED=1`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use controller::supervise::{WorkerSpec, supervise};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_egress-controller");
const NOBODY: u32 = 65534;

use e2e::procstatus::{field, is_root, status};

/// Children of this test process running `egress-controller worker`.
fn worker_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(st) = status(pid) else { continue };
        if field(&st, "PPid") != me || field(&st, "State").starts_with('Z') {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == b"worker") {
            out.push(pid);
        }
    }
    out
}

fn wait_for_worker(not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(pid) = worker_children().into_iter().find(|p| Some(*p) != not) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no worker child appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_unprivileged(pid: u32) {
    let st = status(pid).expect("the worker is gone");
    let uids: Vec<String> = field(&st, "Uid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(uids, vec![NOBODY.to_string(); 4], "Uid: {uids:?}");
    let gids: Vec<String> = field(&st, "Gid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(gids, vec![NOBODY.to_string(); 4], "Gid: {gids:?}");
    assert_eq!(field(&st, "Groups"), "", "supplementary groups kept");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(&st, cap), "0000000000000000", "{cap}");
    }
}

#[test]
fn worker_child_runs_unprivileged_and_is_restarted() {
    if !e2e::require("root (to start the worker as another uid)", is_root()) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("chokepoint-supervise-{}", std::process::id()));
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
    std::fs::write(&token, "svc-token-0123456789abcdef\n").unwrap();
    // The worker's files belong to its uid; the directory holds its store.
    for p in [&dir, &policy, &key, &token] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let parent_ok = std::fs::metadata(std::env::temp_dir())
        .map(|m| m.permissions().mode() & 0o001 != 0)
        .unwrap_or(false);
    assert!(
        parent_ok,
        "the temp dir must be traversable by the worker uid"
    );

    let spec = WorkerSpec {
        program: PathBuf::from(CONTROLLER),
        args: [
            "worker",
            "--policy",
            policy.to_str().unwrap(),
            "--store",
            &format!("sqlite:{}", dir.join("worker.db").display()),
            "--listen",
            &format!("unix:{}", dir.join("worker.sock").display()),
            "--audit-log",
            dir.join("audit.jsonl").to_str().unwrap(),
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        uid: NOBODY,
        gid: NOBODY,
        env: vec![
            ("CHOKEPOINT_MASTER_KEY_FILE".into(), key.clone().into()),
            ("CHOKEPOINT_WORKER_TOKEN_FILE".into(), token.clone().into()),
        ],
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::select! {
                r = supervise(spec) => panic!("supervise returned: {r:?}"),
                _ = stop_rx => {}
            }
        });
    });

    let first = wait_for_worker(None);
    assert_unprivileged(first);
    // It serves: the socket appears, mode 0600, owned by the worker's uid.
    let sock = dir.join("worker.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the worker socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);
    // It answers on that socket.
    if e2e::have_tool("curl") {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "10",
                "--unix-socket",
                sock.to_str().unwrap(),
            ])
            .arg("http://worker/healthz")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ok"),
            "{out:?}"
        );
    }
    // The Docker socket, when there is one, is out of its reach.
    let docker = std::path::Path::new("/var/run/docker.sock");
    if docker.exists() {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sh", "-c", "exec 3<>/var/run/docker.sock"])
            .output();
        if let Ok(out) = out {
            assert!(
                !out.status.success(),
                "uid 65534 can open the Docker socket"
            );
        }
    }

    // Killed: restarted, again unprivileged.
    let killed = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let second = wait_for_worker(Some(first));
    assert_ne!(first, second);
    assert_unprivileged(second);

    stop_tx.send(()).unwrap();
    supervisor.join().unwrap();
    // The child is killed with its supervisor.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(second).is_some_and(|st| !field(&st, "State").starts_with('Z')) {
        assert!(
            Instant::now() < deadline,
            "the worker outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn root_worker_user_is_refused() {
    let out = Command::new(CONTROLLER)
        .args([
            "--policy",
            "/nonexistent.yaml",
            "--worker",
            "--worker-user",
            "0:0",
            "--check",
        ])
        .output()
        .unwrap();
    // A missing policy or the root uid: a usage error either way; with a
    // good policy, the uid alone must fail.
    assert_eq!(out.status.code(), Some(64));
    let dir = std::env::temp_dir().join(format!("chokepoint-root-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.yaml");
    std::fs::write(&policy, "version: v1\n").unwrap();
    let out = Command::new(CONTROLLER)
        .args([
            "--policy",
            policy.to_str().unwrap(),
            "--worker",
            "--worker-user",
            "0:0",
            "--check",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--worker-user"));
    let out = Command::new(CONTROLLER)
        .args([
            "--policy",
            policy.to_str().unwrap(),
            "--worker",
            "--worker-user",
            "65534:65534",
            "--check",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
