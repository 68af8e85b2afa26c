//! Run the real `egress-proxy` binary on port 0 with a policy and a DNS server.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running egress-proxy; killed and reaped on drop.
pub struct ProxyProcess {
    /// The proxy port.
    pub listen: SocketAddr,
    /// The admin port (`/metrics`, `/readyz`, `POST /reload`).
    pub admin: SocketAddr,
    /// The policy file it was started with (rewrite it, then reload).
    pub policy_path: PathBuf,
    /// The audit log file.
    pub audit_path: PathBuf,
    /// The admin token `POST /reload` needs (`EGRESS_ADMIN_TOKEN_FILE`).
    pub admin_token: String,
    child: Child,
    dir: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Start `bin` with this policy, resolving through `dns`.
    pub fn start(bin: &Path, policy_yaml: &str, dns: SocketAddr) -> ProxyProcess {
        Self::start_with(bin, policy_yaml, dns, &[])
    }

    /// Start with extra flags.
    pub fn start_with(
        bin: &Path,
        policy_yaml: &str,
        dns: SocketAddr,
        extra: &[&str],
    ) -> ProxyProcess {
        Self::start_wrapped(&[], bin, policy_yaml, dns, extra)
    }

    /// Start under a wrapper command (e.g. `["prlimit", "--nofile=300:400",
    /// "--"]`), with extra flags.
    pub fn start_wrapped(
        wrapper: &[&str],
        bin: &Path,
        policy_yaml: &str,
        dns: SocketAddr,
        extra: &[&str],
    ) -> ProxyProcess {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("chokepoint-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy_path = dir.join("policy.yaml");
        let audit_path = dir.join("audit.jsonl");
        std::fs::write(&policy_path, policy_yaml).unwrap();
        let admin_token = format!("test-admin-token-{}-{n}", std::process::id());
        let token_path = dir.join("admin-token");
        std::fs::write(&token_path, format!("{admin_token}\n")).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // An `--audit-log` in `extra` replaces the test's own file.
        let audit_flag: Vec<&std::ffi::OsStr> = if extra.contains(&"--audit-log") {
            Vec::new()
        } else {
            vec!["--audit-log".as_ref(), audit_path.as_os_str()]
        };
        let mut child = cmd
            .arg("--policy")
            .arg(&policy_path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--dns-server")
            .arg(dns.to_string())
            .args(&audit_flag)
            .args(["--connect-timeout-ms", "2000"])
            .args(extra)
            .env("RUST_LOG", "info,pingora=warn")
            .env("EGRESS_ADMIN_TOKEN_FILE", &token_path)
            .env("NO_COLOR", "1")
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
                if let Some(i) = line.find("egress-proxy ready") {
                    let _ = tx.send(line[i..].to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = loop {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                break l;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("egress-proxy exited {status}: {:?}", stderr.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "egress-proxy not ready: {:?}",
                stderr.lock().unwrap()
            );
        };
        let field = |key: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {ready:?}"))
                .trim_matches(|c: char| c == '"' || c == ',')
                .parse()
                .unwrap()
        };
        ProxyProcess {
            listen: field("listen="),
            admin: field("admin="),
            policy_path,
            audit_path,
            admin_token,
            child,
            dir,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The audit log's lines so far.
    pub fn audit(&self) -> Vec<String> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The audit log's lines once `done` holds for them (lines are written by
    /// a background thread, a moment after the response), or after `wait`.
    pub fn audit_until(&self, wait: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let lines = self.audit();
            if done(&lines) || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET an admin path.
    pub fn admin_get(&self, path: &str) -> crate::Response {
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        crate::send_raw(self.admin, req.as_bytes(), Duration::from_secs(10)).unwrap()
    }

    /// POST /reload with the admin token.
    pub fn reload(&self) -> crate::Response {
        self.reload_with(Some(&self.admin_token))
    }

    /// POST /reload with this bearer token, or none.
    pub fn reload_with(&self, token: Option<&str>) -> crate::Response {
        let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!(
            "POST /reload HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
        );
        crate::send_raw(self.admin, req.as_bytes(), Duration::from_secs(10)).unwrap()
    }

    /// The value of one metric line (`name` with its labels, as printed),
    /// or `None` when absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
    }

    /// The /metrics text.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").text()
    }

    /// Operational log lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
