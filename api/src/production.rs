//! The production switch for `chokepoint-api` (see docs/production.md):
//! its start-up conditions, checked before the port is bound.
//!
//! Applies: `api_without_tls` (no `--tls-cert`/`--tls-key`),
//! `missing_auth_token` (no `CHOKEPOINT_API_KEY_FILE`: no token
//! verification), `default_secret_key` (a weak HS256 secret or runtime
//! service token), `missing_credential_broker` (no ready answer from the
//! worker at `--worker`). The API reads no egress policy, holds no
//! credential key and sends nothing through the proxy, so the other
//! conditions do not apply to it. Must never print a key or token.

use std::path::Path;
use std::time::Duration;

use mode::{Condition, Gate, Mode};

use crate::config::{Args, KEY_FILE_ENV, SERVICE_TOKEN_FILE_ENV};

/// How long one `/readyz` probe of the worker may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Run the API's checks (`env` looks a variable up). `Err(exit code)` when
/// production refuses.
pub fn gate(
    mode: Mode,
    args: &Args,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), std::process::ExitCode> {
    let mut gate = Gate::new(mode, "chokepoint-api");
    if args.tls_cert.is_none() || args.tls_key.is_none() {
        gate.fail(
            Condition::ApiWithoutTls,
            "no --tls-cert and --tls-key: give the server certificate chain and key (PEM)",
        );
    }
    match env(KEY_FILE_ENV).filter(|s| !s.is_empty()) {
        None => gate.fail(
            Condition::MissingAuthToken,
            format!(
                "{KEY_FILE_ENV} is not set: point it at the token verification key (an Ed25519 public key, PEM, or an HS256 secret, base64)"
            ),
        ),
        Some(p) => match std::fs::read(&p) {
            // A public key is not a secret: only an HS256 secret is weighed.
            Ok(text) if !text.trim_ascii_start().starts_with(b"-----BEGIN") => {
                let text = zeroize::Zeroizing::new(text);
                // The HS256 secret is base64: weigh the bytes it encodes.
                use base64::Engine as _;
                let decoded = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim_ascii())
                        .unwrap_or_default(),
                );
                gate.check(mode::check_secret(KEY_FILE_ENV, &text));
                if !decoded.is_empty() {
                    gate.check(mode::check_secret(KEY_FILE_ENV, &decoded));
                }
            }
            Ok(_) => {}
            Err(e) => gate.fail(
                Condition::MissingAuthToken,
                format!("{KEY_FILE_ENV}={}: cannot read it ({e})", Path::new(&p).display()),
            ),
        },
    }
    if let Some(p) = env(SERVICE_TOKEN_FILE_ENV).filter(|s| !s.is_empty())
        && let Ok(text) = std::fs::read(&p)
    {
        let text = zeroize::Zeroizing::new(text);
        gate.check(mode::check_secret(SERVICE_TOKEN_FILE_ENV, &text));
    }
    match &args.worker {
        None if mode.is_production() => gate.fail(
            Condition::MissingCredentialBroker,
            "--worker is not set: give the worker's address (unix:PATH or IP:PORT) so the API can check the credential broker is ready",
        ),
        None => {}
        Some(target) => {
            if let Err(e) = mode::probe_readyz(target, PROBE_TIMEOUT) {
                gate.fail(
                    Condition::MissingCredentialBroker,
                    format!("--worker: the worker is not ready ({e}); start `egress-controller worker` first"),
                );
            }
        }
    }
    gate.finish()
}
