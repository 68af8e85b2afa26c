//! The production switch for the worker (`egress-controller worker`, see
//! docs/production.md): its start-up conditions, checked before the
//! listener is bound.
//!
//! Applies: `missing_egress_policy`, `unsafe_allow_ranges`,
//! `missing_encryption_key` (no master key, or one that does not open the
//! store's rows), `default_secret_key` (a weak master key file or service
//! token), `missing_auth_token` (no service token), `missing_credential_broker`
//! (the store does not open), `egress_proxy_down` (no ready answer from
//! `--proxy-admin`). Must never print a key or token.

use std::path::Path;
use std::time::Duration;

use mode::{Condition, Gate, Mode};
use netpolicy::Policy;

use crate::cli::{MASTER_KEY_ENV, WORKER_TOKEN_ENV, WorkerArgs};

/// How long one `/readyz` probe of the proxy may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The program name on every line.
pub const NAME: &str = "egress-controller worker";

/// Read a secret file named by `var`: `Err` is the condition when unset or
/// unreadable (`missing`), otherwise the strength check.
fn secret_file(gate: &mut Gate, var: &str, missing: Condition, fix: &str) {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => match std::fs::read(&p) {
            Ok(text) => {
                let text = zeroize::Zeroizing::new(text);
                gate.check(mode::check_secret(var, &text));
            }
            Err(e) => gate.fail(
                missing,
                format!(
                    "{var}={}: cannot read it ({e}); {fix}",
                    Path::new(&p).display()
                ),
            ),
        },
        _ => gate.fail(missing, format!("{var} is not set; {fix}")),
    }
}

/// Run the worker's checks (opens the store and tries the master key on
/// every row). `Err(exit code)` when production refuses.
pub async fn gate(mode: Mode, args: &WorkerArgs) -> Result<(), std::process::ExitCode> {
    let mut gate = Gate::new(mode, NAME);
    match mode::check_policy_file("--policy", &args.policy) {
        Err(r) => gate.check(Err(r)),
        Ok(()) => {
            if let Ok(p) = Policy::load(&args.policy) {
                gate.extend(mode::check_policy(
                    "--policy",
                    p.orgs().len(),
                    p.unsafe_allow_ranges().len(),
                ));
            }
        }
    }
    secret_file(
        &mut gate,
        MASTER_KEY_ENV,
        Condition::MissingEncryptionKey,
        "point it at the master key file (base64 of 32 random bytes: `openssl rand -base64 32`)",
    );
    secret_file(
        &mut gate,
        WORKER_TOKEN_ENV,
        Condition::MissingAuthToken,
        "point it at the service token callers present (`openssl rand -hex 32`)",
    );
    let keys = crate::cli::load_keyring().ok();
    if keys.is_none() && std::env::var_os(MASTER_KEY_ENV).is_some_and(|v| !v.is_empty()) {
        gate.fail(
            Condition::MissingEncryptionKey,
            format!(
                "{MASTER_KEY_ENV}: the file holds no valid master key (base64 of 32 bytes per line)"
            ),
        );
    }
    match crate::store::open(&args.store).await {
        // A malformed --store stays a usage error (64), reported later.
        Err(crate::store::StoreError::BadSpec(_)) => {}
        Err(e) => gate.fail(
            Condition::MissingCredentialBroker,
            format!("--store: the credential store does not open ({e}); check the path or URL and its permissions"),
        ),
        Ok(store) => {
            if let Some(keys) = &keys
                && let Err(e) = crate::cli::check_keys(store.as_ref(), keys).await
            {
                gate.fail(
                    Condition::MissingEncryptionKey,
                    format!("{MASTER_KEY_ENV}: the master key does not open the store ({e}); give the key the store was written with"),
                );
            }
        }
    }
    match &args.proxy_admin {
        None => {
            if mode.is_production() {
                gate.fail(
                    Condition::EgressProxyDown,
                    "--proxy-admin is not set: give the egress proxy's admin address (IP:PORT) so the worker can check it is ready",
                );
            }
        }
        Some(target) => {
            let target = target.clone();
            let probed =
                tokio::task::spawn_blocking(move || mode::probe_readyz(&target, PROBE_TIMEOUT))
                    .await
                    .unwrap_or_else(|e| Err(format!("probe failed: {e}")));
            if let Err(e) = probed {
                gate.fail(
                    Condition::EgressProxyDown,
                    format!("--proxy-admin: the egress proxy is not ready ({e}); start egress-proxy first"),
                );
            }
        }
    }
    gate.finish()
}
