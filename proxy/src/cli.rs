//! Command line, start-up and shutdown of `egress-proxy`.
//!
//! Owns: the flags (one clap `Args`), validating configuration before
//! anything listens (`--check`), binding the listeners itself (so a bind
//! failure exits non-zero at once), the runtime, signals (SIGHUP reload,
//! SIGTERM/SIGINT graceful drain). Must never: start serving with a policy
//! that failed to load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::Parser;
use netpolicy::Policy;
use pingora::server::configuration::ServerConf;
use tokio::sync::{Semaphore, watch};

use crate::audit::AuditLog;
use crate::forward::Forward;
use crate::metrics::Metrics;
use crate::resolve::Resolver;
use crate::state::{Limits, Shared};

/// How long SIGTERM waits for open connections and tunnels before exiting.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// chokepoint's egress proxy: plain-HTTP reads to public hosts and CONNECT
/// tunnels to package repositories, decided by the egress policy.
#[derive(Debug, Parser)]
#[command(name = "egress-proxy", version)]
pub(crate) struct Args {
    /// The egress policy (YAML, `version: v1`).
    #[arg(long, default_value = "examples/policy.yaml")]
    pub(crate) policy: PathBuf,
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:3128")]
    pub(crate) listen: SocketAddr,
    /// Admin listen address (/metrics, /healthz, /readyz, POST /reload).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub(crate) admin_listen: SocketAddr,
    /// DNS server IP:PORT (repeatable); only these are used, over UDP and
    /// TCP. Default: the system's (/etc/resolv.conf).
    #[arg(long = "dns-server")]
    pub(crate) dns_server: Vec<SocketAddr>,
    /// Append audit lines (JSON, one per request or tunnel) here; default stdout.
    #[arg(long)]
    pub(crate) audit_log: Option<PathBuf>,
    /// Most client connections at once; more get 503 `overloaded`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,
    /// Upstream TCP connect timeout per address, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) connect_timeout_ms: u64,
    /// A forwarded request fails with 504 `upstream_timeout` when the
    /// upstream sends nothing (or accepts nothing) for this many seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) upstream_idle_timeout_secs: u64,
    /// Close a tunnel with no traffic for this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) tunnel_idle_timeout_secs: u64,
    /// Close any tunnel after this many seconds.
    #[arg(long, default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) tunnel_max_lifetime_secs: u64,
    /// Worker threads (default: the number of CPUs).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) threads: Option<u16>,
    /// Validate the configuration and the policy, then exit (0, or 64).
    #[arg(long)]
    pub(crate) check: bool,
}

/// How start-up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StartError {
    /// Bad configuration (flags, policy, audit path): exit 64.
    #[error("{0}")]
    Config(String),
    /// Anything else (cannot bind, runtime): exit 1.
    #[error("{0}")]
    Runtime(String),
}

/// Validate, then serve until SIGTERM.
pub(crate) fn run(args: Args) -> Result<(), StartError> {
    let policy = Policy::load(&args.policy).map_err(|e| StartError::Config(e.to_string()))?;
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let limits = Limits {
        max_connections: args.max_connections as usize,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        upstream_idle: Duration::from_secs(args.upstream_idle_timeout_secs),
        tunnel_idle: Duration::from_secs(args.tunnel_idle_timeout_secs),
        tunnel_max_lifetime: Duration::from_secs(args.tunnel_max_lifetime_secs),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(format!("cannot start the runtime: {e}")))?;
    // The resolver must be built inside the runtime.
    let resolver = runtime.block_on(async { Resolver::new(&args.dns_server) });
    let resolver = resolver.map_err(|e| StartError::Config(e.to_string()))?;
    if args.check {
        if let Some(p) = &args.audit_log {
            AuditLog::open(Some(p))
                .map_err(|e| StartError::Config(format!("--audit-log {}: {e}", p.display())))?;
        }
        return Ok(());
    }
    let audit = AuditLog::open(args.audit_log.as_deref()).map_err(|e| {
        StartError::Config(format!(
            "--audit-log {}: {e}",
            args.audit_log
                .as_deref()
                .unwrap_or_else(|| std::path::Path::new("-"))
                .display()
        ))
    })?;
    let metrics = Metrics::new().map_err(|e| StartError::Runtime(format!("metrics: {e}")))?;
    metrics.policy_generation.set(1);

    // Bind both listeners here, before anything serves: a bind failure is
    // an immediate non-zero exit.
    let listener = bind(args.listen, "--listen")?;
    let admin = bind(args.admin_listen, "--admin-listen")?;

    let shared = Arc::new(Shared {
        policy: ArcSwap::from_pointee(policy),
        generation: AtomicU64::new(1),
        policy_path: args.policy.clone(),
        reload_lock: tokio::sync::Mutex::new(()),
        resolver,
        metrics,
        audit,
        limits,
        ready: AtomicBool::new(false),
    });
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let proxy = Arc::new(pingora::proxy::http_proxy(
        &Arc::new(conf),
        Forward::new(shared.clone()),
    ));

    let after = shared.clone();
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| StartError::Runtime(format!("--listen: {e}")))?;
        let admin = tokio::net::TcpListener::from_std(admin)
            .map_err(|e| StartError::Runtime(format!("--admin-listen: {e}")))?;
        let (tx, rx) = watch::channel(false);
        let local = listener
            .local_addr()
            .map_err(|e| StartError::Runtime(format!("--listen: {e}")))?;
        let admin_local = admin
            .local_addr()
            .map_err(|e| StartError::Runtime(format!("--admin-listen: {e}")))?;
        tokio::spawn(crate::admin::serve(shared.clone(), admin, rx.clone()));
        tokio::spawn(crate::reload::sighup_loop(shared.clone()));
        let conns = Arc::new(Semaphore::new(shared.limits.max_connections));
        let accept = tokio::spawn(crate::server::accept_loop(
            shared.clone(),
            proxy,
            listener,
            rx,
            conns,
            tokio::task::JoinSet::new(),
        ));
        shared.ready.store(true, Ordering::SeqCst);
        // Tests start the proxy on port 0 and read the ports from this line.
        tracing::info!(listen = %local, admin = %admin_local, "egress-proxy ready");

        wait_for_stop().await;
        tracing::info!("draining");
        shared.ready.store(false, Ordering::SeqCst);
        let _ = tx.send(true);
        if let Ok(mut tasks) = accept.await {
            let drained = tokio::time::timeout(DRAIN_GRACE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!("drain grace elapsed; closing remaining connections");
                tasks.abort_all();
            }
        }
        Ok(())
    });
    // Every audit line of the drained connections reaches the file.
    after.audit.flush();
    tracing::info!("stopped");
    served
}

/// Bind a listening socket now (non-blocking, for tokio).
fn bind(addr: SocketAddr, flag: &str) -> Result<std::net::TcpListener, StartError> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| StartError::Runtime(format!("{flag} {addr}: cannot bind: {e}")))?;
    l.set_nonblocking(true)
        .map_err(|e| StartError::Runtime(format!("{flag} {addr}: {e}")))?;
    Ok(l)
}

/// Wait for SIGTERM or SIGINT.
async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT; stopping");
        }
    }
}
