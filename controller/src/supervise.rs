//! Supervising the worker: the controller starts `egress-controller worker …`
//! as a child process with fewer privileges and restarts it when it dies.
//!
//! The child is started with its own uid and gid (`CommandExt::uid`/`gid`;
//! run as root, std also drops every supplementary group). The kernel clears
//! the permitted, effective and ambient capability sets when a process
//! changes from uid 0 to a non-zero uid, so the worker holds no
//! capabilities: it cannot change nftables, and without the docker group it
//! cannot open the Docker socket. Its environment is cleared except for the
//! two files it needs (`CHOKEPOINT_MASTER_KEY_FILE`,
//! `CHOKEPOINT_WORKER_TOKEN_FILE`). Code that handles LLM-chosen requests
//! therefore never holds the controller's powers.
//!
//! Restart policy: immediately after a child that lived a minute, otherwise
//! with a backoff doubling from 1 s to 30 s. Every start and exit is one JSON
//! line on stdout (`worker_started` with the pid, `worker_exited`).
//!
//! Must never: start the worker as root (uid 0 is refused), or pass it the
//! controller's environment.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The program (normally this `egress-controller` binary).
    pub program: PathBuf,
    /// Arguments after the program (starting with `worker`).
    pub args: Vec<OsString>,
    /// The uid to run as (not 0).
    pub uid: u32,
    /// The gid to run as.
    pub gid: u32,
    /// Environment passed to the child (everything else is cleared).
    pub env: Vec<(OsString, OsString)>,
}

/// Environment variables the worker gets from the controller.
pub const PASSED_ENV: &[&str] = &[
    "CHOKEPOINT_MASTER_KEY_FILE",
    "CHOKEPOINT_WORKER_TOKEN_FILE",
    "CHOKEPOINT_ENV",
    "RUST_LOG",
];

/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that lived this long is restarted at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

impl WorkerSpec {
    /// `egress-controller worker <args>` as `uid:gid`, with [`PASSED_ENV`]
    /// taken from this process.
    pub fn from_current(uid: u32, gid: u32, args: Vec<OsString>) -> std::io::Result<WorkerSpec> {
        let program = std::env::current_exe()?;
        let mut all = vec![OsString::from("worker")];
        all.extend(args);
        // The worker exits when the pipe we hold on its stdin closes: a
        // SIGKILLed supervisor never leaves it serving alone.
        all.push(OsString::from("--exit-with-parent"));
        let env = PASSED_ENV
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
            .collect();
        Ok(WorkerSpec {
            program,
            args: all,
            uid,
            gid,
            env,
        })
    }
}

fn line(v: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Run the worker forever, restarting it when it exits. Returns only if the
/// spec is refused (uid 0) or the program cannot be started at all the first
/// time (then the error says why).
pub async fn supervise(spec: WorkerSpec) -> std::io::Result<()> {
    if spec.uid == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the worker must not run as root: give --worker-user a non-zero uid",
        ));
    }
    let mut backoff = Duration::from_secs(1);
    let mut first = true;
    loop {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .uid(spec.uid)
            .gid(spec.gid)
            .current_dir("/")
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if first => return Err(e),
            Err(e) => {
                line(&serde_json::json!({"event": "worker_spawn_failed", "error": e.to_string()}));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        first = false;
        // Held (never written) until the worker exits; our death closes it.
        let parent_pipe = child.stdin.take();
        line(&serde_json::json!({
            "event": "worker_started",
            "pid": child.id(),
            "uid": spec.uid,
            "gid": spec.gid,
        }));
        let status = child.wait().await;
        drop(parent_pipe);
        let lived = started.elapsed();
        line(&serde_json::json!({
            "event": "worker_exited",
            "status": status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            "lived_ms": u64::try_from(lived.as_millis()).unwrap_or(u64::MAX),
        }));
        if lived >= HEALTHY_AFTER {
            backoff = Duration::from_secs(1);
            continue;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
