//! Policy reload (SIGHUP and `POST /reload`): load the file again, validate,
//! swap atomically. A bad file keeps the policy in force.
//!
//! Owns: the swap, the generation counter and the reload metrics. Must
//! never: install a policy that failed to load.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use netpolicy::Policy;

use crate::state::SharedRef;

/// Reload the policy file. `Ok(generation)` on success; `Err(line)` (the
/// one-line policy error) on failure, with the old policy kept.
pub(crate) async fn reload(shared: &SharedRef) -> Result<u64, String> {
    let _guard = shared.reload_lock.lock().await;
    let path = shared.policy_path.clone();
    let loaded = tokio::task::spawn_blocking(move || Policy::load(&path))
        .await
        .map_err(|e| format!("reload task failed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|p| {
            // Production keeps refusing what it refused at start.
            match crate::production::policy_refusals(&p).first() {
                Some(r) if shared.mode.is_production() => Err(format!("production refused: {r}")),
                _ => Ok(p),
            }
        });
    // The host's addresses may have changed too (an interface added); an
    // unreadable list keeps the one in force.
    match crate::sys::interface_addrs() {
        Ok(own) => shared.own_addrs.store(Arc::new(own)),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the interface addresses; keeping the old list")
        }
    }
    match loaded {
        Ok(policy) => {
            shared.policy.store(Arc::new(policy));
            let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
            shared.metrics.reloads_ok.inc();
            shared
                .metrics
                .policy_generation
                .set(i64::try_from(generation).unwrap_or(i64::MAX));
            tracing::info!(generation, "policy reloaded");
            Ok(generation)
        }
        Err(line) => {
            let line = crate::audit::scrub(&line).into_owned();
            shared.metrics.reloads_error.inc();
            tracing::error!(error = %line, "policy reload failed; keeping the policy in force");
            Err(line)
        }
    }
}

/// Reload on every SIGHUP until the process ends.
pub(crate) async fn sighup_loop(shared: SharedRef) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let _ = reload(&shared).await;
    }
}
