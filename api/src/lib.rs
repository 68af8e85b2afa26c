//! chokepoint-api: the socket layer a platform's browser and CLI clients
//! connect to.
//!
//! - Every request carries a bearer JWT verified with one pinned algorithm
//!   ([`auth`]); the conversation's org comes from the store, never from the
//!   client ([`app`]).
//! - WebSockets are authenticated before the 101: a one-time ticket bound to
//!   user, org, conversation and Origin, or a bearer token from a non-browser
//!   client ([`app`]).
//! - Writes go through a durable queue in the store, acked after the commit;
//!   the agent runtime claims them with a lease over the service API
//!   ([`store`], [`ws`]). Events from the runtime are scrubbed, stored, and
//!   fanned out in order ([`hub`]).
//! - TLS 1.2 and 1.3 only, and the security headers on every response
//!   ([`server`], [`app`]).
//!
//! See docs/api.md.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod frames;
pub mod hub;
pub mod metrics;
pub mod production;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod ws;

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

/// Exit status for a bad configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status when the store cannot be opened (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Run the server with `config` until SIGTERM or SIGINT.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let store = store::open(&config.store).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {}: {e}", config.metrics_listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(app::AppState {
        store,
        verifier: config.verifier,
        service: config.service,
        origins: config.origins,
        hub: hub::Hub::default(),
        sessions: hub::Sessions::default(),
        limiter: ratelimit::RateLimiter::new(config.rate.0, config.rate.1),
        socket_slots: Arc::new(Semaphore::new(config.max_connections)),
        stop: stop_rx.clone(),
        mode: config.mode,
        worker: config.worker,
        dependencies_ok: std::sync::atomic::AtomicBool::new(true),
        dependency_refusals: std::sync::atomic::AtomicU64::new(0),
        metrics: metrics::Metrics::new()?,
    });
    let watcher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(app::DEPENDENCY_CHECK_EVERY);
            loop {
                tick.tick().await;
                let ok = app::missing_dependency(&state).await.is_none();
                state
                    .dependencies_ok
                    .store(ok, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = config.tls.is_some(),
        alg = ?state.verifier.algorithm(),
        "chokepoint-api listening"
    );
    // Its own line: the tests read `listen=` from the one above.
    tracing::info!(
        metrics_addr = %metrics_listener.local_addr()?,
        "chokepoint-api metrics (plain HTTP, GET /metrics)"
    );
    let router = app::router(state.clone());
    let metrics_server = tokio::spawn(server::serve(
        metrics_listener,
        None,
        app::metrics_router(state.clone()),
        64,
        stop_rx.clone(),
    ));
    let server = tokio::spawn(server::serve(
        listener,
        config.tls,
        router,
        config.max_connections,
        stop_rx,
    ));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = metrics_server.await;
    watcher.abort();
    // Give open sockets a moment to send their 1001.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while !state.sessions.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
