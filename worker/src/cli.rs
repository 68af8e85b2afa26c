//! `egress-controller worker …`: flags, start-up checks, the listener, the
//! sweeper.
//!
//! Start-up fails closed with exit 64 and one line naming the problem: a bad
//! policy, a missing or invalid `CHOKEPOINT_MASTER_KEY_FILE`, a missing or
//! empty `CHOKEPOINT_WORKER_TOKEN_FILE`, a credential row the master key
//! cannot open (wrong key), a bad `--listen`, `--store` or `--extra-ca`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use netpolicy::Policy;
use tokio::net::{TcpListener, UnixListener};

use crate::api::App;
use crate::audit::AuditLog;
use crate::broker::Broker;
use crate::client::PinnedClient;
use crate::crypto::Keyring;
use crate::metrics::Metrics;
use crate::provider::HttpProvider;
use crate::refresh::{RefreshConfig, Refresher};
use crate::store::{self, Store};

/// The master key file (base64 of 32 random bytes; more lines = older keys).
pub const MASTER_KEY_ENV: &str = "CHOKEPOINT_MASTER_KEY_FILE";
/// The service token callers present.
pub const WORKER_TOKEN_ENV: &str = "CHOKEPOINT_WORKER_TOKEN_FILE";
/// How often expired runs are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// chokepoint's worker: the credential broker and the pinned HTTP tool.
#[derive(Debug, Parser)]
#[command(name = "egress-controller worker", version, about, after_help = probe::HELP)]
pub struct WorkerArgs {
    /// The egress policy (orgs and their integrations).
    #[arg(long)]
    pub policy: PathBuf,
    /// The credential store: `sqlite:PATH` or `postgres://USER@HOST/DB` (many replicas).
    #[arg(long, default_value = store::DEFAULT_STORE)]
    pub store: String,
    /// Where the API listens: `unix:PATH` (mode 0600) or `IP:PORT`.
    #[arg(long, default_value = "unix:/run/chokepoint/worker.sock")]
    pub listen: String,
    /// DNS server(s) to resolve with instead of the system's (repeatable).
    #[arg(long = "dns-server")]
    pub dns_server: Vec<SocketAddr>,
    /// An extra trust root (PEM), for tests (repeatable).
    #[arg(long = "extra-ca")]
    pub extra_ca: Vec<PathBuf>,
    /// Audit log file (default: stdout).
    #[arg(long = "audit-log")]
    pub audit_log: Option<PathBuf>,
    /// The egress proxy's admin address (`IP:PORT`): its `/readyz` must
    /// answer 200 at start (required in production) and while serving.
    #[arg(long = "proxy-admin", value_name = "IP:PORT")]
    pub proxy_admin: Option<String>,
    /// OAuth refresh: the lease on a credential row, seconds
    /// (docs/refresh.md). Keep it shorter than the provider's reuse window.
    #[arg(long = "refresh-lease-secs", default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(i64).range(2..=3600))]
    pub refresh_lease_secs: i64,
    /// OAuth refresh: the provider call's whole deadline (retries
    /// included), milliseconds; must be shorter than the lease.
    #[arg(long = "refresh-deadline-ms", default_value_t = 20_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub refresh_deadline_ms: u64,
    /// Validate the configuration and the keys, then exit.
    #[arg(long)]
    pub check: bool,
}

impl WorkerArgs {
    /// The refresh timing from the flags; the deadline must be shorter
    /// than the lease (else the lease could expire mid-call).
    pub fn refresh_config(&self) -> Result<RefreshConfig, String> {
        let lease_ms = u64::try_from(self.refresh_lease_secs).unwrap_or(0) * 1000;
        if self.refresh_deadline_ms >= lease_ms {
            return Err(format!(
                "--refresh-deadline-ms {} must be shorter than --refresh-lease-secs {} ({lease_ms} ms)",
                self.refresh_deadline_ms, self.refresh_lease_secs
            ));
        }
        Ok(RefreshConfig {
            lease_secs: self.refresh_lease_secs,
            call_deadline: Duration::from_millis(self.refresh_deadline_ms),
            ..RefreshConfig::default()
        })
    }
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl Listen {
    /// Parse `unix:PATH` or `IP:PORT`.
    pub fn parse(s: &str) -> Result<Listen, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(format!(
                    "invalid --listen `{s}`: write `unix:/run/chokepoint/worker.sock`"
                ));
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            format!("invalid --listen `{s}`: write `unix:PATH` or `IP:PORT`, like `127.0.0.1:8088`")
        })
    }
}

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "egress-controller worker: {msg}");
}

/// Read a secret file named by an environment variable.
fn env_file(var: &str) -> Result<PathBuf, String> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(format!("{var} is not set; point it at the file")),
    }
}

/// Load the keyring named by `CHOKEPOINT_MASTER_KEY_FILE`.
pub fn load_keyring() -> Result<Keyring, String> {
    let path = env_file(MASTER_KEY_ENV)?;
    Keyring::load(&path).map_err(|e| format!("{MASTER_KEY_ENV}: {e}"))
}

fn load_service_token() -> Result<[u8; 32], String> {
    let path = env_file(WORKER_TOKEN_ENV)?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| format!("{WORKER_TOKEN_ENV}: cannot read {}: {e}", path.display()))?,
    );
    let token = text.trim();
    if token.len() < 16 {
        return Err(format!(
            "{WORKER_TOKEN_ENV}: {} holds no token of at least 16 characters",
            path.display()
        ));
    }
    Ok(crate::api::digest(token.as_bytes()))
}

/// Every credential row must open with the loaded keys (a wrong master key
/// is found at start, not at the first request).
pub async fn check_keys(store: &dyn Store, keys: &Keyring) -> Result<usize, String> {
    let rows = store
        .list_credentials(None)
        .await
        .map_err(|e| e.to_string())?;
    for c in &rows {
        crate::credential::open_token(keys, c).map_err(|e| {
            format!(
                "credential {} (org {}, integration {}): {e}",
                c.id, c.org, c.integration
            )
        })?;
    }
    Ok(rows.len())
}

/// Entry point: `args` are the worker's own arguments (after `worker`).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if let Some(code) = probe::main_if_asked(
        "egress-controller worker",
        args.get(1..).unwrap_or_default(),
    ) {
        return code;
    }
    let args = match WorkerArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mode = match mode::Mode::from_env(crate::production::NAME) {
        Ok(m) => m,
        Err(code) => return code,
    };
    // Warnings and errors (refresh failures, orphans, store errors) to
    // stderr; `RUST_LOG` overrides. Never a token, secret or body.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args, mode))
}

async fn run(args: WorkerArgs, mode: mode::Mode) -> ExitCode {
    if let Err(code) = crate::production::gate(mode, &args).await {
        return code;
    }
    let policy = match Policy::load(&args.policy) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            say(&e.to_string());
            return ExitCode::from(64);
        }
    };
    let listen = match Listen::parse(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            say(&e);
            return ExitCode::from(64);
        }
    };
    let keys = match load_keyring() {
        Ok(k) => Arc::new(k),
        Err(e) => {
            say(&e);
            return ExitCode::from(64);
        }
    };
    let token_digest = match load_service_token() {
        Ok(t) => t,
        Err(e) => {
            say(&e);
            return ExitCode::from(64);
        }
    };
    let refresh_cfg = match args.refresh_config() {
        Ok(c) => c,
        Err(e) => {
            say(&e);
            return ExitCode::from(64);
        }
    };
    let extra: Vec<&Path> = args.extra_ca.iter().map(PathBuf::as_path).collect();
    let client = match PinnedClient::new(&args.dns_server, &extra) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            say(&e.to_string());
            return ExitCode::from(64);
        }
    };
    let store = match store::open(&args.store).await {
        Ok(s) => s,
        Err(e @ store::StoreError::BadSpec(_)) => {
            say(&e.to_string());
            return ExitCode::from(64);
        }
        Err(e) => {
            say(&e.to_string());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = check_keys(store.as_ref(), &keys).await {
        say(&e);
        return ExitCode::from(64);
    }
    if args.check {
        return ExitCode::SUCCESS;
    }
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            say(&format!("metrics: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let audit = match AuditLog::open(args.audit_log.as_deref()).await {
        Ok(a) => a,
        Err(e) => {
            say(&format!("--audit-log: {e}"));
            return ExitCode::from(64);
        }
    };
    // One refresher per process, shared by every request: single flight
    // per credential, the provider call detached from the request.
    let provider = Arc::new(HttpProvider::new(client.clone(), policy.clone()));
    let refresher = Arc::new(Refresher::new(
        store.clone(),
        keys.clone(),
        provider,
        refresh_cfg,
    ));
    // A request needing a new token waits for the whole provider call at most.
    let refresh_wait = refresh_cfg.call_deadline + Duration::from_secs(2);
    let app = Arc::new(App {
        policy,
        broker: Broker::new(store, keys).with_refresher(refresher, refresh_wait),
        client,
        metrics,
        audit,
        token_digest,
        mode,
        proxy_admin: args.proxy_admin.clone(),
        dependencies_ok: std::sync::atomic::AtomicBool::new(true),
    });
    let watcher = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::api::DEPENDENCY_CHECK_EVERY);
            loop {
                tick.tick().await;
                let ok = app.missing_dependency().await.is_none();
                app.dependencies_ok
                    .store(ok, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                if let Ok(n) = app.broker.sweep(crate::unix_now()).await {
                    app.metrics
                        .runs_ended
                        .with_label_values(&["expired"])
                        .inc_by(n);
                }
            }
        })
    };
    let code = match listen {
        Listen::Tcp(addr) => match TcpListener::bind(addr).await {
            Ok(l) => {
                say(&format!(
                    "listening on {}",
                    l.local_addr().map_or(addr, |a| a)
                ));
                serve_tcp(l, app).await
            }
            Err(e) => {
                say(&format!("cannot listen on {addr}: {e}"));
                ExitCode::FAILURE
            }
        },
        Listen::Unix(path) => match bind_unix(&path) {
            Ok(l) => {
                say(&format!("listening on unix:{}", path.display()));
                serve_unix(l, app).await
            }
            Err(e) => {
                say(&format!("cannot listen on unix:{}: {e}", path.display()));
                ExitCode::FAILURE
            }
        },
    };
    sweeper.abort();
    watcher.abort();
    code
}

/// Bind a unix socket with mode 0600 (a stale socket file is replaced).
///
/// The socket is bound inside a fresh 0700 directory, set to 0600 there and
/// only then renamed into place, so it is never reachable with the umask's
/// mode.
fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(_) => {}
    }
    let private = dir.join(format!(".worker-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let tmp = private.join("sock");
    let bound = UnixListener::bind(&tmp).and_then(|l| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

fn serve_conn<S>(stream: S, app: Arc<App>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| app.clone().handle(req));
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
}

async fn serve_tcp(l: TcpListener, app: Arc<App>) -> ExitCode {
    loop {
        tokio::select! {
            acc = l.accept() => match acc {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    serve_conn(s, app.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown() => return ExitCode::SUCCESS,
        }
    }
}

async fn serve_unix(l: UnixListener, app: Arc<App>) -> ExitCode {
    loop {
        tokio::select! {
            acc = l.accept() => match acc {
                Ok((s, _)) => serve_conn(s, app.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown() => return ExitCode::SUCCESS,
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let mut args = vec!["worker", "--policy", "p.yaml"];
        args.extend_from_slice(extra);
        WorkerArgs::try_parse_from(args)
    }

    #[test]
    fn refresh_flags() {
        let d = parse(&[]).unwrap().refresh_config().unwrap();
        assert_eq!(d.lease_secs, 30);
        assert_eq!(d.call_deadline, Duration::from_secs(20));
        let short = parse(&["--refresh-lease-secs", "5", "--refresh-deadline-ms", "3000"])
            .unwrap()
            .refresh_config()
            .unwrap();
        assert_eq!(
            (short.lease_secs, short.call_deadline),
            (5, Duration::from_millis(3000))
        );
        // The deadline must be shorter than the lease.
        let e = parse(&["--refresh-lease-secs", "5", "--refresh-deadline-ms", "5000"])
            .unwrap()
            .refresh_config()
            .unwrap_err();
        assert!(e.contains("--refresh-deadline-ms"), "{e}");
        for bad in [
            &["--refresh-lease-secs", "1"][..],
            &["--refresh-lease-secs", "-3"],
            &["--refresh-deadline-ms", "10"],
            &["--refresh-lease-secs", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
