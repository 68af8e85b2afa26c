//! Start a real binary and see whether it refuses (exits) or starts (prints
//! its ready line), for the production-switch tests. The child is killed
//! and reaped on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a start came to.
#[derive(Debug)]
pub enum Started {
    /// It exited (status code, `None` when killed by a signal) before its
    /// ready line, with its whole stderr.
    Exited(Option<i32>, String),
    /// It printed its ready line and runs.
    Running(Running),
}

/// A running child: killed and reaped on drop.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// The ready line.
    pub line: String,
    /// Its stderr up to the ready line.
    pub stderr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The `IP:PORT` after `key` in the ready line (`admin=`, `listen=`,
    /// `listening on `).
    pub fn addr(&self, key: &str) -> SocketAddr {
        let at = self
            .line
            .find(key)
            .map(|i| i + key.len())
            .unwrap_or_else(|| panic!("no `{key}` in {:?}", self.line));
        let rest = self.line.get(at..).unwrap_or_default();
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
            .unwrap_or(rest.len());
        rest.get(..end)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address after `{key}` in {:?}", self.line))
    }
}

/// Spawn `cmd` (stdout discarded, stderr read) and wait up to `timeout` for
/// a stderr line containing `ready`, or for the process to exit.
pub fn start_or_exit(cmd: &mut Command, ready: &str, timeout: Duration) -> Started {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pipe = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut stderr = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                stderr.push_str(&line);
                stderr.push('\n');
                if line.contains(ready) {
                    return Started::Running(Running {
                        child,
                        line,
                        stderr,
                    });
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed: the process is gone (or closing).
                let status = child.wait().ok().and_then(|s| s.code());
                return Started::Exited(status, stderr);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("neither ready nor exited within {timeout:?}: {stderr}");
        }
    }
}

/// `GET path` on `addr` over plain HTTP/1.1: the response, or `None`.
pub fn get(addr: SocketAddr, path: &str) -> Option<crate::Response> {
    crate::send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
}
