//! OAuth 2.0 token refresh (RFC 6749 §6) under a fenced lease, crash-safe
//! across replicas sharing one store. The protocol is in docs/refresh.md.
//!
//! 1. Single flight in the process: one refresh per credential at a time;
//!    callers that waited see the new version and return.
//! 2. Lease: `acquire_lease` (a conditional update that also increments the
//!    generation). Held by someone else: return `Busy`; the caller keeps
//!    the current access token.
//! 3. An orphan sealed for the row's next version (a provider answer to the
//!    row's current refresh token whose commit failed) is adopted instead of
//!    calling the provider: that refresh token is consumed already.
//! 4. The provider call runs in its own task with a deadline shorter than
//!    the lease; the lease is renewed while it runs. The same task commits
//!    (`WHERE generation = mine`), so a cancelled caller never drops a
//!    rotated token. A failed commit puts the answer into `orphans`.
//! 5. Errors: an OAuth error (`invalid_grant`, …) is terminal: after the row
//!    and the orphans are read again, the credential is marked
//!    `needs_reauth`. Transport errors and 5xx are retried with backoff
//!    within the deadline, then the lease is freed.
//!
//! Must never: log a token, a client secret or a provider's response body;
//! commit without the fence; present a refresh token it knows is consumed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::credential::{REFRESH_FIELD, TOKEN_FIELD, new_id, open_refresh};
use crate::crypto::{Binding, Keyring};
use crate::store::{CredentialRecord, OrphanRecord, Store, StoreError};

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` (every authorization server must accept it).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body, for servers that
    /// accept nothing else.
    ClientSecretPost,
}

impl ClientAuth {
    /// The name (OAuth's `token_endpoint_auth_method`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientAuth::ClientSecretBasic => "client_secret_basic",
            ClientAuth::ClientSecretPost => "client_secret_post",
        }
    }
}

/// The sealed refresh material of a credential.
#[derive(Serialize, Deserialize)]
pub struct RefreshMaterial {
    /// The current refresh token.
    pub refresh_token: String,
    /// The OAuth client id.
    pub client_id: String,
    /// The OAuth client secret.
    pub client_secret: String,
    /// How the client id and secret are sent (absent in material sealed
    /// before it existed: basic).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

impl Drop for RefreshMaterial {
    fn drop(&mut self) {
        self.refresh_token.zeroize();
        self.client_id.zeroize();
        self.client_secret.zeroize();
    }
}

impl std::fmt::Debug for RefreshMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshMaterial").finish_non_exhaustive()
    }
}

/// A provider's successful answer.
pub struct TokenAnswer {
    /// The new access token.
    pub access_token: SecretString,
    /// The new refresh token (rotation); `None` keeps the old one.
    pub refresh_token: Option<SecretString>,
    /// Lifetime of the access token, seconds.
    pub expires_in: Option<i64>,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    /// An OAuth error response (`invalid_grant`, `invalid_client`, …): final.
    #[error("provider refused the refresh: {0}")]
    OAuth(String),
    /// Transport failure, timeout or 5xx: worth retrying.
    #[error("provider unavailable: {0}")]
    Transient(String),
}

/// A token endpoint.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `grant_type=refresh_token` against `token_url`.
    async fn refresh(
        &self,
        token_url: &str,
        m: &RefreshMaterial,
    ) -> Result<TokenAnswer, ProviderError>;
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New tokens committed by us.
    Refreshed,
    /// An orphaned answer was adopted.
    Recovered,
    /// Someone else refreshed it meanwhile: re-read the row.
    AlreadyFresh,
    /// Another replica holds the lease: keep using the current token.
    Busy,
    /// The answer could not be committed (lease lost): kept as an orphan.
    Orphaned,
    /// The provider stayed unavailable; lease freed, try later.
    Unavailable,
    /// The provider refused for good: the credential is `needs_reauth`.
    NeedsReauth,
}

/// Timing of the protocol.
#[derive(Debug, Clone, Copy)]
pub struct RefreshConfig {
    /// Lease length, seconds.
    pub lease_secs: i64,
    /// The provider call's whole deadline (all retries); shorter than the lease.
    pub call_deadline: Duration,
    /// First retry backoff (doubles).
    pub backoff: Duration,
    /// Attempts at most.
    pub attempts: u32,
}

impl Default for RefreshConfig {
    fn default() -> RefreshConfig {
        RefreshConfig {
            lease_secs: 30,
            call_deadline: Duration::from_secs(20),
            backoff: Duration::from_millis(200),
            attempts: 4,
        }
    }
}

/// Counters of the refresher (exported as metrics by the caller).
#[derive(Debug, Default)]
pub struct RefreshStats {
    /// Answers that went to the orphans table (alert on > 0).
    pub orphans: std::sync::atomic::AtomicU64,
    /// Commits done.
    pub refreshed: std::sync::atomic::AtomicU64,
    /// Refreshes asked for by the request path, by (trigger, outcome).
    by_outcome: std::sync::Mutex<HashMap<(Trigger, &'static str), u64>>,
}

impl RefreshStats {
    /// Refreshes asked for by the request path so far, by (trigger, outcome
    /// label: [`Outcome::as_str`] or `error`).
    pub fn outcomes(&self) -> Vec<(Trigger, &'static str, u64)> {
        match self.by_outcome.lock() {
            Ok(m) => m.iter().map(|((t, o), n)| (*t, *o, *n)).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn count(&self, trigger: Trigger, outcome: &'static str) {
        if let Ok(mut m) = self.by_outcome.lock() {
            *m.entry((trigger, outcome)).or_default() += 1;
        }
    }
}

/// Why the request path asked for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Three quarters of the access token's lifetime passed (`due`); the
    /// current token is still used meanwhile (background).
    Due,
    /// The access token expired (or there is none yet): the request waits.
    Expired,
    /// The integration answered 401 to the current token.
    Unauthorized,
}

impl Trigger {
    /// Every trigger.
    pub const ALL: [Trigger; 3] = [Trigger::Due, Trigger::Expired, Trigger::Unauthorized];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Due => "due",
            Trigger::Expired => "expired",
            Trigger::Unauthorized => "unauthorized",
        }
    }
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 7] = [
        Outcome::Refreshed,
        Outcome::Recovered,
        Outcome::AlreadyFresh,
        Outcome::Busy,
        Outcome::Orphaned,
        Outcome::Unavailable,
        Outcome::NeedsReauth,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Refreshed => "refreshed",
            Outcome::Recovered => "recovered",
            Outcome::AlreadyFresh => "already_fresh",
            Outcome::Busy => "busy",
            Outcome::Orphaned => "orphaned",
            Outcome::Unavailable => "unavailable",
            Outcome::NeedsReauth => "needs_reauth",
        }
    }
}

/// The outcome label of a refresh that returned an error.
pub const ERROR_OUTCOME: &str = "error";

/// Whether `c` is due for a refresh at `now`: three quarters of its
/// lifetime (from its last update to its expiry) have passed.
pub fn due(c: &CredentialRecord, now: i64) -> bool {
    match (c.refresh_ct.as_ref(), c.access_expires_at) {
        (Some(_), Some(exp)) => {
            let life = (exp - c.updated_at).max(0);
            now >= c.updated_at + life * 3 / 4
        }
        _ => false,
    }
}

/// The refresher of one process.
pub struct Refresher {
    store: Arc<dyn Store>,
    keys: Arc<Keyring>,
    provider: Arc<dyn Provider>,
    cfg: RefreshConfig,
    flights: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Background refreshes: `None` while one runs, `Some(t)`: none before
    /// `t` (after one that changed nothing).
    background: std::sync::Mutex<HashMap<String, Option<std::time::Instant>>>,
    /// Counters.
    pub stats: Arc<RefreshStats>,
}

/// After a background refresh that changed nothing (another replica holds
/// the lease, the provider is down), no other starts for this long: the
/// current token is still valid, and requests must not hammer the store or
/// the provider.
const BACKGROUND_COOLDOWN: Duration = Duration::from_secs(2);

/// Clears a credential's background entry if its task ends without
/// recording an outcome (a panic).
struct BackgroundSlot {
    refresher: Arc<Refresher>,
    id: String,
    done: bool,
}

impl BackgroundSlot {
    fn finish(mut self, cooldown: Option<Duration>) {
        if let Ok(mut b) = self.refresher.background.lock() {
            match cooldown {
                Some(d) => {
                    b.insert(self.id.clone(), Some(std::time::Instant::now() + d));
                }
                None => {
                    b.remove(&self.id);
                }
            }
        }
        self.done = true;
    }
}

impl Drop for BackgroundSlot {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(mut b) = self.refresher.background.lock() {
            b.remove(&self.id);
        }
    }
}

fn store_err(e: StoreError) -> ProviderError {
    ProviderError::Transient(format!("store: {e}"))
}

/// Seal `answer` (and the refresh material) as the row's next version, with
/// a fresh data key.
fn seal_next(
    keys: &Keyring,
    row: &CredentialRecord,
    access: &SecretString,
    material: &RefreshMaterial,
    expires_at: Option<i64>,
    now: i64,
) -> Result<CredentialRecord, ProviderError> {
    let crypt = |_| ProviderError::Transient("seal failed".to_owned());
    let version = row.version + 1;
    let at = Binding {
        org: &row.org,
        credential_id: &row.id,
        version,
    };
    let (dk, wrapped_key) = keys.new_data_key(&at).map_err(crypt)?;
    let token_ct = dk
        .seal(&at, TOKEN_FIELD, access.expose_secret().as_bytes())
        .map_err(crypt)?;
    let json = Zeroizing::new(
        serde_json::to_string(material)
            .map_err(|_| ProviderError::Transient("encode failed".to_owned()))?,
    );
    let refresh_ct = dk
        .seal(&at, REFRESH_FIELD, json.as_bytes())
        .map_err(crypt)?;
    Ok(CredentialRecord {
        wrapped_key,
        token_ct,
        refresh_ct: Some(refresh_ct),
        version,
        updated_at: now,
        access_expires_at: expires_at,
        ..row.clone()
    })
}

impl Refresher {
    /// A refresher over this store, keyring and provider.
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<Keyring>,
        provider: Arc<dyn Provider>,
        cfg: RefreshConfig,
    ) -> Refresher {
        Refresher {
            store,
            keys,
            provider,
            cfg,
            flights: std::sync::Mutex::new(HashMap::new()),
            background: std::sync::Mutex::new(HashMap::new()),
            stats: Arc::new(RefreshStats::default()),
        }
    }

    /// The timing this refresher runs with.
    pub fn config(&self) -> RefreshConfig {
        self.cfg
    }

    /// [`Refresher::refresh`], counted under `trigger` in the stats.
    pub async fn refresh_for(
        &self,
        trigger: Trigger,
        id: &str,
        seen_version: i64,
    ) -> Result<Outcome, ProviderError> {
        let r = self.refresh(id, seen_version).await;
        self.stats.count(
            trigger,
            match &r {
                Ok(o) => o.as_str(),
                Err(_) => ERROR_OUTCOME,
            },
        );
        r
    }

    /// Start a refresh of `id` in the background (the caller keeps using
    /// its current token), unless one started here is still running or one
    /// that changed nothing ended less than `BACKGROUND_COOLDOWN` ago.
    pub fn spawn_refresh(self: &Arc<Self>, trigger: Trigger, id: &str, seen_version: i64) {
        match self.background.lock() {
            Ok(mut b) => {
                let now = std::time::Instant::now();
                match b.get(id) {
                    Some(None) => return,
                    Some(Some(until)) if now < *until => return,
                    _ => {}
                }
                if b.len() >= 4096 {
                    b.retain(|_, v| v.is_none_or(|until| now < until));
                }
                b.insert(id.to_owned(), None);
            }
            Err(_) => return,
        }
        let slot = BackgroundSlot {
            refresher: self.clone(),
            id: id.to_owned(),
            done: false,
        };
        tokio::spawn(async move {
            let r = slot
                .refresher
                .refresh_for(trigger, &slot.id, seen_version)
                .await;
            let cooldown = match &r {
                Ok(
                    Outcome::Refreshed
                    | Outcome::Recovered
                    | Outcome::AlreadyFresh
                    | Outcome::NeedsReauth,
                ) => None,
                Ok(Outcome::Busy | Outcome::Orphaned | Outcome::Unavailable) => {
                    Some(BACKGROUND_COOLDOWN)
                }
                Err(e) => {
                    tracing::warn!(credential = %slot.id, error = %e, "background refresh failed");
                    Some(BACKGROUND_COOLDOWN)
                }
            };
            slot.finish(cooldown);
        });
    }

    /// Refresh credential `id`, which the caller saw at `seen_version`.
    ///
    /// Cancel-safe: once the lease is taken, the provider call and the
    /// commit run in their own task, which a dropped caller does not stop.
    pub async fn refresh(&self, id: &str, seen_version: i64) -> Result<Outcome, ProviderError> {
        let flight = match self.flights.lock() {
            Ok(mut f) => f.entry(id.to_owned()).or_default().clone(),
            Err(_) => return Err(ProviderError::Transient("lock poisoned".to_owned())),
        };
        let _one = flight.lock().await;
        let now = crate::unix_now();
        let Some(row) = self.store.credential(id).await.map_err(store_err)? else {
            return Err(ProviderError::OAuth("credential deleted".to_owned()));
        };
        if row.status != crate::store::ACTIVE {
            return Ok(Outcome::NeedsReauth);
        }
        if row.version != seen_version {
            return Ok(Outcome::AlreadyFresh);
        }
        let owner = new_id(&self.keys).map_err(|_| ProviderError::Transient("rng".to_owned()))?;
        let Some(generation) = self
            .store
            .acquire_lease(id, &owner, now, now + self.cfg.lease_secs)
            .await
            .map_err(store_err)?
        else {
            return Ok(Outcome::Busy);
        };
        // Run the rest in its own task: a cancelled caller cannot drop a
        // rotated token between the provider's answer and the commit.
        let task = LeaseTask {
            store: self.store.clone(),
            keys: self.keys.clone(),
            provider: self.provider.clone(),
            cfg: self.cfg,
            stats: self.stats.clone(),
            id: id.to_owned(),
            generation,
            seen_version,
        };
        match tokio::spawn(task.run()).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Transient("refresh task failed".to_owned())),
        }
    }
}

/// The lease was lost before the provider call (nothing was presented).
struct LeaseLost;

/// Why the provider call loop stopped without an answer of the provider.
enum Stop {
    /// The lease was lost before an attempt.
    LeaseLost,
    /// The deadline passed (maybe with an attempt in flight).
    Deadline,
}

struct LeaseTask {
    store: Arc<dyn Store>,
    keys: Arc<Keyring>,
    provider: Arc<dyn Provider>,
    cfg: RefreshConfig,
    stats: Arc<RefreshStats>,
    id: String,
    generation: i64,
    seen_version: i64,
}

/// The line a fault point prints on stderr before it pauses:
/// `CHOKEPOINT_TEST_FAULT point=<point> credential=<id>` (a test reads it
/// to SIGKILL or SIGSTOP the process exactly there).
pub const FAULT_MARKER: &str = "CHOKEPOINT_TEST_FAULT";

/// Test-only fault points (docs/refresh.md): act only when
/// `CHOKEPOINT_TEST_FAULTS` is set AND `CHOKEPOINT_ENV` is not `production`.
/// `point=millis,…`: at that point, print [`FAULT_MARKER`] and sleep (the
/// test kills or stops the process meanwhile). The sleep does not block the
/// runtime: other requests go on.
async fn fault_pause(point: &str, credential: &str) {
    if std::env::var("CHOKEPOINT_ENV").as_deref() == Ok("production") {
        return;
    }
    let Ok(spec) = std::env::var("CHOKEPOINT_TEST_FAULTS") else {
        return;
    };
    let ms = spec.split(',').find_map(|part| {
        let (p, ms) = part.split_once('=')?;
        if p == point {
            ms.parse::<u64>().ok()
        } else {
            None
        }
    });
    if let Some(ms) = ms {
        {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{FAULT_MARKER} point={point} credential={credential}");
            let _ = err.flush();
        }
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    }
}

impl LeaseTask {
    async fn run(self) -> Result<Outcome, ProviderError> {
        let r = self.run_leased().await;
        if !matches!(
            r,
            Ok(Outcome::Refreshed | Outcome::Recovered | Outcome::NeedsReauth)
        ) {
            // Free the lease if still ours (a no-op once it is lost).
            let _ = self.store.release_lease(&self.id, self.generation).await;
        }
        r
    }

    async fn run_leased(&self) -> Result<Outcome, ProviderError> {
        let Some(row) = self.store.credential(&self.id).await.map_err(store_err)? else {
            return Err(ProviderError::OAuth("credential deleted".to_owned()));
        };
        if row.generation != self.generation {
            return Ok(Outcome::Busy);
        }
        if row.version != self.seen_version {
            return Ok(Outcome::AlreadyFresh);
        }
        // An answer to this row's refresh token whose commit failed: its
        // token is consumed, adopt the answer.
        if let Some(out) = self.adopt_orphan(&row).await? {
            return Ok(out);
        }
        let material: RefreshMaterial = {
            let json = open_refresh(&self.keys, &row)
                .map_err(|_| ProviderError::OAuth("refresh material does not open".to_owned()))?;
            serde_json::from_str(&json)
                .map_err(|_| ProviderError::OAuth("refresh material is malformed".to_owned()))?
        };
        let token_url = row
            .token_url
            .clone()
            .ok_or_else(|| ProviderError::OAuth("no token url".to_owned()))?;
        let Ok(answer) = self.call_with_renewal(&token_url, &material).await else {
            tracing::warn!(credential = %self.id, "refresh: lease lost before the provider call; the refresh token was not presented");
            return Ok(Outcome::Busy);
        };
        match answer {
            Ok(a) => {
                fault_pause("after_answer", &self.id).await;
                let now = crate::unix_now();
                let next_material = RefreshMaterial {
                    refresh_token: a.refresh_token.as_ref().map_or_else(
                        || material.refresh_token.clone(),
                        |t| t.expose_secret().to_owned(),
                    ),
                    client_id: material.client_id.clone(),
                    client_secret: material.client_secret.clone(),
                    client_auth: material.client_auth,
                };
                let exp = a.expires_in.map(|s| now + s.max(1));
                let next = seal_next(&self.keys, &row, &a.access_token, &next_material, exp, now)?;
                fault_pause("before_commit", &self.id).await;
                let committed = self
                    .store
                    .commit_refresh(&next, row.version, self.generation)
                    .await;
                fault_pause("after_commit", &self.id).await;
                match committed {
                    Ok(true) => {
                        self.stats
                            .refreshed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(Outcome::Refreshed)
                    }
                    Ok(false) | Err(_) => {
                        self.orphan(&next, now).await;
                        Ok(Outcome::Orphaned)
                    }
                }
            }
            Err(ProviderError::OAuth(code)) => {
                // Read the row and the orphans before declaring it dead.
                if let Some(now_row) = self.store.credential(&self.id).await.map_err(store_err)? {
                    if now_row.version != row.version {
                        return Ok(Outcome::AlreadyFresh);
                    }
                    if let Some(out) = self.adopt_orphan(&now_row).await? {
                        return Ok(out);
                    }
                }
                tracing::warn!(credential = %self.id, error = %code, "refresh refused: needs_reauth");
                let marked = self
                    .store
                    .mark_needs_reauth(&self.id, self.generation, crate::unix_now())
                    .await
                    .map_err(store_err)?;
                Ok(if marked {
                    Outcome::NeedsReauth
                } else {
                    Outcome::Busy
                })
            }
            Err(ProviderError::Transient(e)) => {
                tracing::warn!(credential = %self.id, error = %e, "refresh: provider unavailable");
                Ok(Outcome::Unavailable)
            }
        }
    }

    /// The provider call, retried with backoff within the deadline, while
    /// the lease is renewed.
    ///
    /// `Err(LeaseLost)` when the lease was no longer ours before an attempt:
    /// the refresh token was not presented then.
    async fn call_with_renewal(
        &self,
        token_url: &str,
        m: &RefreshMaterial,
    ) -> Result<Result<TokenAnswer, ProviderError>, LeaseLost> {
        let call = async {
            let mut backoff = self.cfg.backoff;
            let mut last = ProviderError::Transient("no attempt".to_owned());
            for attempt in 0..self.cfg.attempts.max(1) {
                if attempt > 0 {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                // Present the refresh token only while the lease is
                // still ours: a replica paused (GC, SIGSTOP, VM freeze)
                // after it read the row may wake up after another one
                // rotated that token; presenting it then is a reuse.
                if !self.confirm_lease().await {
                    return Err(Stop::LeaseLost);
                }
                match self.provider.refresh(token_url, m).await {
                    Ok(a) => return Ok(Ok(a)),
                    Err(ProviderError::OAuth(c)) => return Ok(Err(ProviderError::OAuth(c))),
                    Err(e) => last = e,
                }
            }
            Ok(Err(last))
        };
        let renew_every = Duration::from_millis(
            u64::try_from(self.cfg.lease_secs.max(1)).unwrap_or(1) * 1000 / 3,
        );
        let renew = async {
            loop {
                tokio::time::sleep(renew_every).await;
                let until = crate::unix_now() + self.cfg.lease_secs;
                if !matches!(
                    self.store
                        .renew_lease(&self.id, self.generation, until)
                        .await,
                    Ok(true)
                ) {
                    // Lost: the commit will fail and orphan the answer.
                    return;
                }
            }
        };
        let first = tokio::select! {
            r = tokio::time::timeout(self.cfg.call_deadline, call) => {
                r.unwrap_or(Err(Stop::Deadline))
            }
            () = async { renew.await; std::future::pending::<()>().await } => {
                Ok(Err(ProviderError::Transient("unreachable".to_owned())))
            }
        };
        match first {
            Ok(r) => Ok(r),
            Err(Stop::LeaseLost) => Err(LeaseLost),
            // The deadline cut an attempt whose outcome is unknown: the
            // provider may have rotated the token and its answer been lost
            // (a pause of this process, a lost response). Present it once
            // more now, while still inside the provider's reuse window,
            // which answers the same pair again; leaving it to the next
            // request (maybe hours later) would present it outside the
            // window and revoke the family (docs/refresh.md).
            Err(Stop::Deadline) => {
                if !self.confirm_lease().await {
                    return Err(LeaseLost);
                }
                Ok(tokio::time::timeout(
                    self.cfg.call_deadline,
                    self.provider.refresh(token_url, m),
                )
                .await
                .unwrap_or_else(|_| Err(ProviderError::Transient("deadline".to_owned()))))
            }
        }
    }

    /// Whether the lease is still ours, renewed for a whole lease from now:
    /// a fenced renewal (`WHERE generation = mine`) that must also have
    /// been quick (a pause during it would leave the renewed lease nearly
    /// spent by the time the token is presented).
    async fn confirm_lease(&self) -> bool {
        let started = std::time::Instant::now();
        let until = crate::unix_now() + self.cfg.lease_secs;
        let renewed = matches!(
            self.store
                .renew_lease(&self.id, self.generation, until)
                .await,
            Ok(true)
        );
        let margin = Duration::from_millis(
            u64::try_from(self.cfg.lease_secs.max(1)).unwrap_or(1) * 1000 / 3,
        );
        renewed && started.elapsed() < margin
    }

    async fn orphan(&self, next: &CredentialRecord, now: i64) {
        self.stats
            .orphans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(id) = new_id(&self.keys) else {
            tracing::error!(credential = %self.id, "refresh: cannot keep an orphan (rng)");
            return;
        };
        let o = OrphanRecord {
            id,
            credential_id: self.id.clone(),
            generation: self.generation,
            version: next.version,
            wrapped_key: next.wrapped_key.clone(),
            token_ct: next.token_ct.clone(),
            refresh_ct: next.refresh_ct.clone().unwrap_or_default(),
            access_expires_at: next.access_expires_at,
            created_at: now,
        };
        if let Err(e) = self.store.insert_orphan(&o).await {
            tracing::error!(credential = %self.id, error = %e, "refresh: ORPHAN LOST");
        } else {
            tracing::error!(credential = %self.id, generation = self.generation, "refresh: commit lost its lease; answer kept in orphans");
        }
    }

    /// Adopt the newest orphan sealed for `row`'s next version; `Some` if done.
    async fn adopt_orphan(&self, row: &CredentialRecord) -> Result<Option<Outcome>, ProviderError> {
        let orphans = self.store.orphans(&self.id).await.map_err(store_err)?;
        let Some(o) = orphans.iter().find(|o| o.version == row.version + 1) else {
            return Ok(None);
        };
        let next = CredentialRecord {
            wrapped_key: o.wrapped_key.clone(),
            token_ct: o.token_ct.clone(),
            refresh_ct: Some(o.refresh_ct.clone()),
            version: o.version,
            updated_at: crate::unix_now(),
            access_expires_at: o.access_expires_at,
            ..row.clone()
        };
        // It must open (sealed for this row and version) before adoption.
        if crate::credential::open_token(&self.keys, &next).is_err() {
            let _ = self.store.delete_orphan(&o.id).await;
            return Ok(None);
        }
        if self
            .store
            .commit_refresh(&next, row.version, self.generation)
            .await
            .map_err(store_err)?
        {
            for o in &orphans {
                let _ = self.store.delete_orphan(&o.id).await;
            }
            return Ok(Some(Outcome::Recovered));
        }
        Ok(Some(Outcome::Busy))
    }
}

/// `c` (a new row from `credential::seal_new`) made refreshing: the refresh
/// material sealed with the row's data key, the token URL and the access
/// token's expiry set (used by `egressctl credential add --refresh-token-stdin`).
pub fn with_refresh(
    keys: &Keyring,
    c: &CredentialRecord,
    m: &RefreshMaterial,
    token_url: &str,
    access_expires_at: Option<i64>,
) -> Result<CredentialRecord, crate::crypto::CryptoError> {
    let at = Binding {
        org: &c.org,
        credential_id: &c.id,
        version: c.version,
    };
    let dk = keys.unwrap_data_key(&at, &c.wrapped_key)?;
    let json =
        Zeroizing::new(serde_json::to_string(m).map_err(|_| crate::crypto::CryptoError::Decrypt)?);
    let refresh_ct = dk.seal(&at, REFRESH_FIELD, json.as_bytes())?;
    Ok(CredentialRecord {
        refresh_ct: Some(refresh_ct),
        token_url: Some(token_url.to_owned()),
        access_expires_at,
        ..c.clone()
    })
}
