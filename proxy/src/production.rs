//! The production switch for `egress-proxy` (docs/production.md): the
//! start-up conditions that apply to the proxy, checked before any port is
//! bound.
//!
//! Applies: `missing_egress_policy` (no, empty or org-less policy),
//! `unsafe_allow_ranges`, `missing_auth_token` (no `EGRESS_ADMIN_TOKEN_FILE`:
//! `POST /reload` unprotected-by-absence is fine in development, but
//! production must be able to reload over HTTP with a token) and
//! `default_secret_key` (a weak admin token). Must never print the token.

use std::path::Path;

use mode::{Condition, Gate, Mode};
use netpolicy::Policy;

use crate::cli::ADMIN_TOKEN_ENV;

/// Run the proxy's checks; `Err(exit code)` when production refuses.
pub(crate) fn gate(mode: Mode, policy_path: &Path) -> Result<(), std::process::ExitCode> {
    let mut gate = Gate::new(mode, "egress-proxy");
    match mode::check_policy_file("--policy", policy_path) {
        Err(r) => gate.check(Err(r)),
        // A policy that does not parse stays a configuration error (exit
        // 64, reported by the normal load).
        Ok(()) => {
            if let Ok(p) = Policy::load(policy_path) {
                gate.extend(policy_refusals(&p));
            }
        }
    }
    match std::env::var_os(ADMIN_TOKEN_ENV) {
        None => gate.fail(
            Condition::MissingAuthToken,
            format!(
                "{ADMIN_TOKEN_ENV} is not set: point it at a file holding the token `POST /reload` requires (`openssl rand -hex 32`)"
            ),
        ),
        Some(path) => match std::fs::read(&path) {
            Ok(text) => gate.check(mode::check_secret(ADMIN_TOKEN_ENV, &text)),
            Err(e) => gate.fail(
                Condition::MissingAuthToken,
                format!(
                    "{ADMIN_TOKEN_ENV}={}: cannot read the token file ({e})",
                    Path::new(&path).display()
                ),
            ),
        },
    }
    gate.finish()
}

/// What production refuses in a parsed policy (also on reload).
pub(crate) fn policy_refusals(p: &Policy) -> Vec<mode::Refusal> {
    mode::check_policy("--policy", p.orgs().len(), p.unsafe_allow_ranges().len())
}
