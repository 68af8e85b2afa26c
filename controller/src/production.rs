//! The production switch for the `egress-controller` daemon (see
//! docs/production.md): its start-up conditions, checked before the first
//! reconcile pass and before anything is bound or started.
//!
//! Applies: `missing_egress_policy`, `unsafe_allow_ranges` (the policy
//! the controller renders networks from) and `egress_proxy_down` (no ready
//! answer from `--proxy-admin`). The nftables tables are the controller's
//! own output: it writes them on its first pass, so their absence is not a
//! start-up condition of the controller (it is of `egressctl status`). The
//! worker it supervises checks its own conditions (`egress-controller
//! worker`). Must never print a secret (it reads none).

use std::path::Path;
use std::time::Duration;

use mode::{Condition, Gate, Mode};
use netpolicy::Policy;

/// How long one `/readyz` probe of the proxy may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Run the daemon's checks. `Err(exit code)` when production refuses.
pub fn gate(
    mode: Mode,
    policy: &Path,
    proxy_admin: Option<&str>,
) -> Result<(), std::process::ExitCode> {
    let mut gate = Gate::new(mode, "egress-controller");
    match mode::check_policy_file("--policy", policy) {
        Err(r) => gate.check(Err(r)),
        Ok(()) => {
            if let Ok(p) = Policy::load(policy) {
                gate.extend(mode::check_policy(
                    "--policy",
                    p.orgs().len(),
                    p.unsafe_allow_ranges().len(),
                ));
            }
        }
    }
    match proxy_admin {
        None if mode.is_production() => gate.fail(
            Condition::EgressProxyDown,
            "--proxy-admin is not set: give the egress proxy's admin address (IP:PORT) so the controller can check it is ready",
        ),
        None => {}
        Some(target) => {
            if let Err(e) = mode::probe_readyz(target, PROBE_TIMEOUT) {
                gate.fail(
                    Condition::EgressProxyDown,
                    format!("--proxy-admin: the egress proxy is not ready ({e}); start egress-proxy first"),
                );
            }
        }
    }
    gate.finish()
}
