//! `egressctl credential add|list|remove|rotate-key`: the operator side of
//! the credential broker, written straight to the worker's store with the
//! master key (`CHOKEPOINT_MASTER_KEY_FILE`).
//!
//! - `add` reads the token from stdin (one trailing newline is dropped),
//!   checks that the integration exists for the org in the policy, and
//!   stores it sealed (see `worker::crypto`).
//! - `list` prints one JSON line per credential: ids, names, key id,
//!   version, times. Never a secret (it does not even need the key).
//! - `remove` deletes a credential and every handle pointing at it.
//! - `rotate-key` rewraps every row under `--new-key-file`, one conditional
//!   update per row (`WHERE version = <read>`), so a running worker keeps
//!   working: its key file should list the new key first and the old one
//!   after it until the rotation has finished.
//!
//! Exit codes: 0 done, 1 store or crypto failure, 2 usage (bad flags, unknown
//! org or integration, bad token, bad key file).
//!
//! Must never: print or log a token, a key or a handle.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use secrecy::SecretString;
use worker::credential::{self, HeaderTemplate};
use worker::crypto::Keyring;
use worker::store::{self, StoreError};
use zeroize::Zeroizing;

use super::{emit_line, fail_usage};

/// Largest token accepted on stdin.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Arguments of `egressctl credential`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The action.
    #[command(subcommand)]
    pub action: Action,
}

/// `credential` subcommands.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Store a credential for an org's integration; the token is read from stdin.
    Add(AddArgs),
    /// List credentials (never prints a secret).
    List(ListArgs),
    /// Delete a credential and every handle pointing at it.
    Remove(RemoveArgs),
    /// Rewrap every credential under a new master key.
    RotateKey(RotateArgs),
}

/// `credential add`.
#[derive(Debug, ClapArgs)]
pub struct AddArgs {
    /// The worker's store.
    #[arg(long, default_value = store::DEFAULT_STORE)]
    pub store: String,
    /// The egress policy (the integration must exist for the org).
    #[arg(long)]
    pub policy: PathBuf,
    /// The org id.
    #[arg(long)]
    pub org: String,
    /// The integration name (under the org in the policy).
    #[arg(long)]
    pub integration: String,
    /// The header to inject, with `{token}` where the token goes.
    #[arg(long, default_value = credential::DEFAULT_HEADER)]
    pub header: String,
    /// Stdin holds an OAuth 2.0 refresh token (not an access token): the
    /// worker gets access tokens from `--token-url` (docs/refresh.md).
    #[arg(long, requires_all = ["token_url", "client_id", "client_secret_file"])]
    pub refresh_token_stdin: bool,
    /// The provider's token endpoint (https://, or http:// on loopback).
    #[arg(long, requires = "refresh_token_stdin")]
    pub token_url: Option<String>,
    /// The OAuth client id.
    #[arg(long, requires = "refresh_token_stdin")]
    pub client_id: Option<String>,
    /// A file holding the OAuth client secret (one line).
    #[arg(long, requires = "refresh_token_stdin")]
    pub client_secret_file: Option<PathBuf>,
    /// How the client id and secret go to the token endpoint:
    /// `client_secret_basic` (an `Authorization: Basic` header, the
    /// default) or `client_secret_post` (in the form body, for providers
    /// that accept nothing else).
    #[arg(
        long,
        requires = "refresh_token_stdin",
        value_parser = ["client_secret_basic", "client_secret_post"]
    )]
    pub client_auth: Option<String>,
}

/// Check a `--token-url`: https, or http to a loopback address.
fn check_token_url(u: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "invalid --token-url `{u}`: write https://HOST/PATH (http:// only to 127.0.0.1 or [::1])"
        )
    };
    let url = url::Url::parse(u).map_err(|_| bad())?;
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => Ok(()),
        ("http", Some(url::Host::Ipv4(a))) if a.is_loopback() => Ok(()),
        ("http", Some(url::Host::Ipv6(a))) if a.is_loopback() => Ok(()),
        _ => Err(bad()),
    }
}

/// Read the client secret file: one non-empty line, no control bytes.
fn read_client_secret(path: &std::path::Path) -> Result<Zeroizing<String>, String> {
    let raw = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --client-secret-file {}: {e}", path.display()))?,
    );
    let secret = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(&raw);
    credential::check_token(secret).map_err(|_| {
        format!(
            "--client-secret-file {}: the secret must be one non-empty line of printable ASCII",
            path.display()
        )
    })?;
    Ok(Zeroizing::new(secret.to_owned()))
}

/// `credential list`.
#[derive(Debug, ClapArgs)]
pub struct ListArgs {
    /// The worker's store.
    #[arg(long, default_value = store::DEFAULT_STORE)]
    pub store: String,
    /// Only this org.
    #[arg(long)]
    pub org: Option<String>,
}

/// `credential remove`.
#[derive(Debug, ClapArgs)]
pub struct RemoveArgs {
    /// The worker's store.
    #[arg(long, default_value = store::DEFAULT_STORE)]
    pub store: String,
    /// The org id.
    #[arg(long)]
    pub org: String,
    /// The integration name.
    #[arg(long)]
    pub integration: String,
}

/// `credential rotate-key`.
#[derive(Debug, ClapArgs)]
pub struct RotateArgs {
    /// The worker's store.
    #[arg(long, default_value = store::DEFAULT_STORE)]
    pub store: String,
    /// The new master key (base64 of 32 random bytes).
    #[arg(long)]
    pub new_key_file: PathBuf,
}

/// Run `egressctl credential …`.
pub fn run(args: &Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        match &args.action {
            Action::Add(a) => add(a).await,
            Action::List(a) => list(a).await,
            Action::Remove(a) => remove(a).await,
            Action::RotateKey(a) => rotate(a).await,
        }
    })
}

fn fail(msg: &str) -> ExitCode {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "egressctl credential: {msg}");
    ExitCode::FAILURE
}

async fn open_store(spec: &str) -> Result<std::sync::Arc<dyn store::Store>, ExitCode> {
    match store::open(spec).await {
        Ok(s) => Ok(s),
        Err(e @ StoreError::BadSpec(_)) => Err(fail_usage(&e.to_string())),
        Err(e) => Err(fail(&e.to_string())),
    }
}

fn read_token() -> Result<SecretString, String> {
    let mut buf = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .take(MAX_TOKEN_BYTES + 1)
        .read_to_string(&mut buf)
        .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
    if buf.len() as u64 > MAX_TOKEN_BYTES {
        return Err("the token on stdin is over 64 KiB".into());
    }
    let token = buf
        .strip_suffix("\r\n")
        .or_else(|| buf.strip_suffix('\n'))
        .unwrap_or(&buf);
    credential::check_token(token).map_err(|e| e.to_string())?;
    Ok(SecretString::from(token.to_owned()))
}

async fn add(a: &AddArgs) -> ExitCode {
    let policy = match netpolicy::Policy::load(&a.policy) {
        Ok(p) => p,
        Err(e) => return fail_usage(&e.to_string()),
    };
    let Some(org) = policy.org_entry(&a.org) else {
        return fail_usage(&format!(
            "org `{}` is not in {}; add it to the policy first",
            a.org,
            a.policy.display()
        ));
    };
    if !org.integrations().contains_key(&a.integration) {
        return fail_usage(&format!(
            "org `{}` has no integration `{}` in {}; add it under orgs.{}.integrations first",
            a.org,
            a.integration,
            a.policy.display(),
            a.org
        ));
    }
    let template = match HeaderTemplate::parse(&a.header) {
        Ok(t) => t,
        Err(e) => return fail_usage(&e.to_string()),
    };
    let keys = match worker::cli::load_keyring() {
        Ok(k) => k,
        Err(e) => return fail_usage(&e),
    };
    let token = match read_token() {
        Ok(t) => t,
        Err(e) => return fail_usage(&e),
    };
    let store = match open_store(&a.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let refresh = if a.refresh_token_stdin {
        let (Some(url), Some(client_id), Some(secret_file)) =
            (&a.token_url, &a.client_id, &a.client_secret_file)
        else {
            return fail_usage(
                "--refresh-token-stdin needs --token-url, --client-id and --client-secret-file",
            );
        };
        if let Err(e) = check_token_url(url) {
            return fail_usage(&e);
        }
        if client_id.is_empty() || credential::check_token(client_id).is_err() {
            return fail_usage("--client-id must be non-empty printable ASCII");
        }
        let secret = match read_client_secret(secret_file) {
            Ok(s) => s,
            Err(e) => return fail_usage(&e),
        };
        Some((url.clone(), client_id.clone(), secret))
    } else {
        None
    };
    let now = worker::unix_now();
    // With a refresh token, there is no access token yet: an empty one
    // (refused at injection) that is due for refresh at once.
    let access = if refresh.is_some() {
        SecretString::from(String::new())
    } else {
        token.clone()
    };
    let row = match credential::seal_new(&keys, &a.org, &a.integration, &template, &access, now) {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let row = match refresh {
        Some((url, client_id, secret)) => {
            let m = worker::refresh::RefreshMaterial {
                refresh_token: secrecy::ExposeSecret::expose_secret(&token).to_owned(),
                client_id,
                client_secret: secret.as_str().to_owned(),
                client_auth: match a.client_auth.as_deref() {
                    Some("client_secret_post") => worker::refresh::ClientAuth::ClientSecretPost,
                    _ => worker::refresh::ClientAuth::ClientSecretBasic,
                },
            };
            match worker::refresh::with_refresh(&keys, &row, &m, &url, Some(now)) {
                Ok(r) => r,
                Err(e) => return fail(&e.to_string()),
            }
        }
        None => row,
    };
    match store.insert_credential(&row).await {
        Ok(()) => {
            let line = serde_json::json!({
                "event": "credential_added",
                "id": row.id,
                "org": row.org,
                "integration": row.integration,
                "header": row.header_name,
                "key_id": row.wrapped_key.key_id,
            });
            let _ = emit_line(&line.to_string());
            ExitCode::SUCCESS
        }
        Err(e @ StoreError::Conflict(_)) => {
            fail_usage(&format!("{e}; remove it first to replace it"))
        }
        Err(e) => fail(&e.to_string()),
    }
}

async fn list(a: &ListArgs) -> ExitCode {
    let store = match open_store(&a.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store.list_credentials(a.org.as_deref()).await {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    for c in rows {
        let line = serde_json::json!({
            "id": c.id,
            "org": c.org,
            "integration": c.integration,
            "header": c.header_name,
            "key_id": c.wrapped_key.key_id,
            "version": c.version,
            "created_at": worker::rfc3339_secs(c.created_at),
            "updated_at": worker::rfc3339_secs(c.updated_at),
        });
        if emit_line(&line.to_string()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

async fn remove(a: &RemoveArgs) -> ExitCode {
    let store = match open_store(&a.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.delete_credential(&a.org, &a.integration).await {
        Ok(true) => {
            let line = serde_json::json!({"event": "credential_removed", "org": a.org, "integration": a.integration});
            let _ = emit_line(&line.to_string());
            ExitCode::SUCCESS
        }
        Ok(false) => fail_usage(&format!(
            "no credential for org `{}` integration `{}`",
            a.org, a.integration
        )),
        Err(e) => fail(&e.to_string()),
    }
}

async fn rotate(a: &RotateArgs) -> ExitCode {
    let old = match worker::cli::load_keyring() {
        Ok(k) => k,
        Err(e) => return fail_usage(&e),
    };
    let new = match Keyring::load(&a.new_key_file) {
        Ok(k) => k,
        Err(e) => return fail_usage(&format!("--new-key-file: {e}")),
    };
    let new_id = new.active_id().to_owned();
    // The new key first (every seal), then every old one (to open rows).
    let both = new.then(old);
    let store = match open_store(&a.store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store.list_credentials(None).await {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let (mut rewrapped, mut already) = (0u64, 0u64);
    for row in rows {
        let mut row = row;
        // A concurrent writer bumps the version: read again and retry.
        let mut attempts = 0;
        loop {
            if row.wrapped_key.key_id == new_id {
                already += 1;
                break;
            }
            let next = match credential::rewrap(&both, &row, worker::unix_now()) {
                Ok(n) => n,
                Err(e) => {
                    return fail(&format!(
                        "credential {} (org {}, integration {}): {e}",
                        row.id, row.org, row.integration
                    ));
                }
            };
            match store.update_credential_secret(&next, row.version).await {
                Ok(true) => {
                    rewrapped += 1;
                    break;
                }
                Ok(false) if attempts < 3 => {
                    attempts += 1;
                    match store.credential(&row.id).await {
                        Ok(Some(r)) => row = r,
                        Ok(None) => break,
                        Err(e) => return fail(&e.to_string()),
                    }
                }
                Ok(false) => {
                    return fail(&format!(
                        "credential {} kept changing; run rotate-key again",
                        row.id
                    ));
                }
                Err(e) => return fail(&e.to_string()),
            }
        }
    }
    let line = serde_json::json!({
        "event": "key_rotated",
        "key_id": new_id,
        "rewrapped": rewrapped,
        "already_current": already,
    });
    let _ = emit_line(&line.to_string());
    ExitCode::SUCCESS
}
