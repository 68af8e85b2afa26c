//! The credential broker: runs and their handles.
//!
//! A run is started for one org with a subset of its integrations (its write
//! set). For each of those integrations that has a stored credential, the
//! broker draws 256 bits from the OS CSPRNG, formats them as a `cph_` handle
//! ([`scrub::handle`], so every scrubber recognizes it) and stores only the
//! handle's keyed hash, bound to the run, the org and the credential. The
//! handle goes to the caller once and is never stored or logged.
//!
//! A handle resolves only while its run is alive (not deleted, not past its
//! deadline), only for that run, and only for that org. Every failure is the
//! same [`Reason::InvalidHandle`]: no oracle.
//!
//! Must never: store, log or return a handle after creating it; tell apart
//! the reasons a handle was refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netpolicy::{Policy, Reason};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::credential::{HeaderTemplate, new_id, open_token};
use crate::crypto::Keyring;
use crate::refresh::{Outcome, ProviderError, Refresher, Trigger};
use crate::store::{CredentialRecord, HandleRecord, RequestRows, RunRecord, Store};

/// Longest run TTL a caller may ask for (and renewals extend by the TTL).
pub const MAX_TTL_SECS: i64 = 24 * 3600;
/// TTL when the caller gives none.
pub const DEFAULT_TTL_SECS: i64 = 600;
/// Tool requests one run may have in flight.
pub const RUN_CONCURRENCY: usize = 8;
/// Scrubbers kept for (credential, version): building one compiles an
/// automaton of the token's encodings, which costs more than the rest of the
/// request's own work. Cleared when full.
const SCRUBBER_CACHE: usize = 1024;
/// While another replica holds the lease and the token is expired (or was
/// refused), the row is read again this often.
const BUSY_PAUSE: Duration = Duration::from_millis(200);

/// What the request path's waits for a refresh gave, for the log line of a
/// refusal: `outcome@ms` (since the request started waiting), the first
/// and the last few.
#[derive(Default)]
struct Trail {
    steps: Vec<(&'static str, Duration)>,
    dropped: usize,
}

impl Trail {
    const KEEP: usize = 12;

    fn push(&mut self, outcome: &'static str, at: Duration) {
        if self.steps.len() == Self::KEEP {
            // Keep the first; drop the oldest of the rest.
            self.steps.remove(1);
            self.dropped += 1;
        }
        self.steps.push((outcome, at));
    }
}

impl std::fmt::Display for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (o, at)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if i == 1 && self.dropped > 0 {
                write!(f, "(+{} more) ", self.dropped)?;
            }
            write!(f, "{o}@{}ms", at.as_millis())?;
        }
        Ok(())
    }
}
/// A 401 from an integration makes at most one provider refresh per
/// credential per this interval (in this process): an endpoint that always
/// answers 401 must not rotate the token on every request.
pub const UNAUTHORIZED_REFRESH_EVERY: Duration = Duration::from_secs(5);

/// A credential ready to inject: the header and the token, in memory only.
pub struct Injection {
    /// The integration it belongs to.
    pub integration: String,
    /// The header template.
    pub template: HeaderTemplate,
    /// The token.
    pub token: SecretString,
    /// The default rules plus this token's live forms.
    pub scrubber: scrub::Scrubber,
    /// The credential.
    pub credential_id: String,
    /// The row version the token was read from.
    pub version: i64,
    /// Whether the credential refreshes (OAuth): a 401 may be retried once
    /// with a new token.
    pub refreshing: bool,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("integration", &self.integration)
            .field("header", &self.template.name)
            .finish_non_exhaustive()
    }
}

/// A tool request's run, read together with the rows of the handle it
/// presents ([`Broker::begin_request`]).
#[derive(Debug)]
pub struct RequestRun {
    /// The run, alive (renewed if it was due).
    pub run: RunRecord,
    /// The presented handle's rows, resolved ([`Broker::resolve_read`]) only
    /// once the request has been decided.
    pub handle: PresentedHandle,
}

/// The rows of a presented handle (if a well-formed handle of the run
/// matched): opaque outside the broker.
pub struct PresentedHandle(Option<(HandleRecord, CredentialRecord)>);

impl PresentedHandle {
    /// No handle rows (no handle presented, or none read).
    pub fn none() -> PresentedHandle {
        PresentedHandle(None)
    }
}

impl std::fmt::Debug for PresentedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedHandle")
            .field("found", &self.0.is_some())
            .finish_non_exhaustive()
    }
}

/// A started run as returned to the caller.
#[derive(Debug)]
pub struct StartedRun {
    /// The run.
    pub run: RunRecord,
    /// Integration → handle (given out once).
    pub handles: BTreeMap<String, String>,
}

/// The broker.
pub struct Broker {
    store: Arc<dyn Store>,
    keys: Arc<Keyring>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    scrubbers: Mutex<HashMap<(String, i64), scrub::Scrubber>>,
    refresher: Option<Arc<Refresher>>,
    /// How long a request waits for a refresh it needs.
    refresh_wait: Duration,
    /// Credential → when a 401 last made a provider refresh.
    unauthorized_at: Mutex<HashMap<String, Instant>>,
}

/// A store or crypto failure, already mapped to a reason.
pub type BrokerResult<T> = Result<T, Reason>;

fn internal<E: std::fmt::Display>(e: E) -> Reason {
    tracing::error!(error = %scrub::scrub_str(&e.to_string()), "broker: internal error");
    Reason::InternalError
}

impl Broker {
    /// A broker over this store and keyring.
    pub fn new(store: Arc<dyn Store>, keys: Arc<Keyring>) -> Broker {
        Broker {
            store,
            keys,
            limits: Mutex::new(HashMap::new()),
            scrubbers: Mutex::new(HashMap::new()),
            refresher: None,
            refresh_wait: Duration::ZERO,
            unauthorized_at: Mutex::new(HashMap::new()),
        }
    }

    /// The same broker refreshing OAuth credentials with `refresher`; a
    /// request that needs a new token waits for it at most `wait`.
    pub fn with_refresher(mut self, refresher: Arc<Refresher>, wait: Duration) -> Broker {
        self.refresher = Some(refresher);
        self.refresh_wait = wait;
        self
    }

    /// The refresher, if OAuth refresh is on.
    pub fn refresher(&self) -> Option<&Arc<Refresher>> {
        self.refresher.as_ref()
    }

    /// The store (readiness checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Start a run: check the org and integrations against the policy, mint
    /// a handle per integration with a credential.
    pub async fn start_run(
        &self,
        policy: &Policy,
        org: &str,
        integrations: &[String],
        ttl_secs: Option<i64>,
        now: i64,
    ) -> BrokerResult<StartedRun> {
        let entry = policy.org_entry(org).ok_or(Reason::UnknownOrg)?;
        if integrations.is_empty() {
            return Err(Reason::MalformedRequest);
        }
        let mut names: Vec<String> = Vec::with_capacity(integrations.len());
        for name in integrations {
            if !entry.integrations().contains_key(name) {
                return Err(Reason::UnknownIntegration);
            }
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let ttl = ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(Reason::MalformedRequest);
        }
        let id = new_id(&self.keys).map_err(internal)?;
        let run = RunRecord {
            id: id.clone(),
            org: org.to_owned(),
            integrations: names.clone(),
            ttl_secs: ttl,
            expires_at: now + ttl,
            revoked_at: None,
            created_at: now,
        };
        let mut handles = BTreeMap::new();
        let mut rows = Vec::new();
        for name in &names {
            let Some(cred) = self
                .store
                .credential_for(org, name)
                .await
                .map_err(internal)?
            else {
                continue;
            };
            let mut random = zeroize::Zeroizing::new([0u8; 32]);
            self.keys.random(random.as_mut_slice()).map_err(internal)?;
            let handle = scrub::handle::generate(&random);
            rows.push((
                self.keys.handle_hash(&handle),
                HandleRecord {
                    run_id: id.clone(),
                    org: org.to_owned(),
                    integration: name.clone(),
                    credential_id: cred.id.clone(),
                },
            ));
            handles.insert(name.clone(), handle);
        }
        self.store.insert_run(&run, &rows).await.map_err(internal)?;
        Ok(StartedRun { run, handles })
    }

    /// The run if it is alive, renewed by its TTL once half of it is used
    /// (every tool request).
    pub async fn touch_run(&self, run_id: &str, now: i64) -> BrokerResult<RunRecord> {
        self.extend(run_id, now, false).await
    }

    /// The run if it is alive, renewed by its TTL now (`POST …/renew`).
    pub async fn renew_run(&self, run_id: &str, now: i64) -> BrokerResult<RunRecord> {
        self.extend(run_id, now, true).await
    }

    async fn extend(&self, run_id: &str, now: i64, force: bool) -> BrokerResult<RunRecord> {
        if !valid_id(run_id) {
            return Err(Reason::UnknownRun);
        }
        let run = self
            .store
            .run(run_id)
            .await
            .map_err(internal)?
            .filter(|r| r.alive(now))
            .ok_or(Reason::UnknownRun)?;
        // Renew once half the TTL is used: one store write per half-TTL,
        // not one per request.
        if !force && run.expires_at - now > run.ttl_secs / 2 {
            return Ok(run);
        }
        self.store
            .renew_run(run_id, now, now + run.ttl_secs)
            .await
            .map_err(internal)?
            .ok_or(Reason::UnknownRun)
    }

    /// The start of a tool request: the run if it is alive (renewed like
    /// [`Broker::touch_run`]) and the rows of `handle`, read in one store
    /// query. Nothing is cached between requests, so a revocation is seen
    /// by the next request in every replica.
    pub async fn begin_request(
        &self,
        run_id: &str,
        handle: Option<&str>,
        now: i64,
    ) -> BrokerResult<RequestRun> {
        if !valid_id(run_id) {
            return Err(Reason::UnknownRun);
        }
        let hashes = match handle {
            Some(h) if scrub::handle::is_valid(h) => self.keys.handle_hashes(h),
            _ => Vec::new(),
        };
        let RequestRows { run, handle } = self
            .store
            .request_rows(run_id, &hashes)
            .await
            .map_err(internal)?
            .filter(|r| r.run.alive(now))
            .ok_or(Reason::UnknownRun)?;
        let run = if run.expires_at - now > run.ttl_secs / 2 {
            run
        } else {
            self.store
                .renew_run(run_id, now, now + run.ttl_secs)
                .await
                .map_err(internal)?
                .ok_or(Reason::UnknownRun)?
        };
        Ok(RequestRun {
            run,
            handle: PresentedHandle(handle),
        })
    }

    /// Delete a run: every handle of it is revoked at once.
    pub async fn end_run(&self, run_id: &str, now: i64) -> BrokerResult<()> {
        if !valid_id(run_id) {
            return Err(Reason::UnknownRun);
        }
        let alive = self.store.revoke_run(run_id, now).await.map_err(internal)?;
        if let Ok(mut l) = self.limits.lock() {
            l.remove(run_id);
        }
        if alive {
            Ok(())
        } else {
            Err(Reason::UnknownRun)
        }
    }

    /// Revoke every run past its deadline; how many.
    pub async fn sweep(&self, now: i64) -> BrokerResult<u64> {
        let n = self.store.sweep(now).await.map_err(internal)?;
        if n > 0 {
            if let Ok(mut l) = self.limits.lock() {
                // Drop limiters with nothing in flight; live runs get a new
                // one on their next request.
                l.retain(|_, s| s.available_permits() < RUN_CONCURRENCY);
            }
        }
        Ok(n)
    }

    /// The concurrency limiter of a run.
    pub fn limiter(&self, run_id: &str) -> Arc<Semaphore> {
        match self.limits.lock() {
            Ok(mut l) => l
                .entry(run_id.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(RUN_CONCURRENCY)))
                .clone(),
            Err(_) => Arc::new(Semaphore::new(0)),
        }
    }

    /// Resolve a handle presented on `run` (already alive) into the
    /// credential to inject. Every refusal is `invalid_handle`, except a
    /// credential that exists but cannot be opened (`invalid_credential`),
    /// one whose refresh was refused for good (`needs_reauth`), and an
    /// OAuth credential whose access token expired and could not be
    /// refreshed in time (`dependency_unavailable`).
    pub async fn resolve(
        &self,
        run: &RunRecord,
        handle: &str,
        now: i64,
    ) -> BrokerResult<Injection> {
        if !scrub::handle::is_valid(handle) {
            return Err(Reason::InvalidHandle);
        }
        let hashes = self.keys.handle_hashes(handle);
        let rec = self
            .store
            .resolve_handle(&hashes, now)
            .await
            .map_err(internal)?
            .ok_or(Reason::InvalidHandle)?;
        Self::bound_to(run, &rec)?;
        let cred = self
            .read_credential(&rec.credential_id, &run.org, &rec.integration)
            .await?;
        self.inject(rec, cred).await
    }

    /// [`Broker::resolve`] for a handle whose rows [`Broker::begin_request`]
    /// read with its run: the same checks and refusals, no second query.
    pub async fn resolve_read(
        &self,
        run: &RunRecord,
        rows: PresentedHandle,
        handle: &str,
    ) -> BrokerResult<Injection> {
        if !scrub::handle::is_valid(handle) {
            return Err(Reason::InvalidHandle);
        }
        let (rec, cred) = rows.0.ok_or(Reason::InvalidHandle)?;
        Self::bound_to(run, &rec)?;
        if cred.org != run.org || cred.integration != rec.integration {
            return Err(Reason::InvalidHandle);
        }
        self.inject(rec, cred).await
    }

    /// A handle is used only on its own run, org and integrations.
    fn bound_to(run: &RunRecord, rec: &HandleRecord) -> BrokerResult<()> {
        if rec.run_id != run.id
            || rec.org != run.org
            || !run.integrations.contains(&rec.integration)
        {
            return Err(Reason::InvalidHandle);
        }
        Ok(())
    }

    /// The injection for a handle's credential row.
    async fn inject(&self, rec: HandleRecord, cred: CredentialRecord) -> BrokerResult<Injection> {
        let (cred, token) = self.usable(cred).await?;
        let template = HeaderTemplate {
            name: cred.header_name.clone(),
            value: cred.header_template.clone(),
        };
        let scrubber = self.scrubber_for(&cred.id, cred.version, &token);
        Ok(Injection {
            integration: rec.integration,
            template,
            token,
            scrubber,
            credential_id: cred.id.clone(),
            version: cred.version,
            refreshing: cred.refresh_ct.is_some(),
        })
    }

    /// The row of a resolved handle, still of this org and integration.
    async fn read_credential(
        &self,
        id: &str,
        org: &str,
        integration: &str,
    ) -> BrokerResult<CredentialRecord> {
        self.store
            .credential(id)
            .await
            .map_err(internal)?
            .filter(|c| c.org == org && c.integration == integration)
            .ok_or(Reason::InvalidHandle)
    }

    /// A usable token of `cred` (docs/refresh.md, "On the request path"):
    /// a plain credential as stored; an OAuth credential past three
    /// quarters of its token's lifetime is refreshed in the background
    /// while the current token is used; an expired one (or one without an
    /// access token yet) waits for the refresh, at most `refresh_wait`.
    async fn usable(
        &self,
        mut cred: CredentialRecord,
    ) -> BrokerResult<(CredentialRecord, SecretString)> {
        let started = Instant::now();
        let deadline = started + self.refresh_wait;
        let mut trail = Trail::default();
        loop {
            // The provider refused its refresh for good: say so.
            if cred.status == crate::store::NEEDS_REAUTH {
                return Err(Reason::NeedsReauth);
            }
            let token = open_token(&self.keys, &cred).map_err(|e| {
                tracing::error!(credential = %cred.id, error = %e, "cannot open a credential");
                Reason::InvalidCredential
            })?;
            if cred.refresh_ct.is_none() {
                return Ok((cred, token));
            }
            let now = crate::unix_now();
            let expired = token.expose_secret().is_empty()
                || cred.access_expires_at.is_some_and(|exp| now >= exp);
            let Some(refresher) = &self.refresher else {
                return if expired {
                    Err(Reason::DependencyUnavailable)
                } else {
                    Ok((cred, token))
                };
            };
            if !expired {
                if crate::refresh::due(&cred, now) {
                    refresher.spawn_refresh(Trigger::Due, &cred.id, cred.version);
                }
                return Ok((cred, token));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(credential = %cred.id, waited_ms = started.elapsed().as_millis(), %trail, "access token expired; no refresh in time: refused");
                return Err(Reason::DependencyUnavailable);
            }
            let outcome = tokio::time::timeout(
                left,
                refresher.refresh_for(Trigger::Expired, &cred.id, cred.version),
            )
            .await;
            trail.push(
                match &outcome {
                    Ok(Ok(o)) => o.as_str(),
                    Ok(Err(ProviderError::Transient(_))) => "error",
                    Ok(Err(ProviderError::OAuth(_))) => "refused",
                    Err(_) => "timed_out",
                },
                started.elapsed(),
            );
            match outcome {
                Ok(Ok(Outcome::NeedsReauth)) => return Err(Reason::NeedsReauth),
                Ok(Ok(Outcome::Refreshed | Outcome::Recovered | Outcome::AlreadyFresh)) => {}
                // Another replica holds the lease: read the row again soon.
                Ok(Ok(Outcome::Busy | Outcome::Orphaned)) => {
                    tokio::time::sleep(BUSY_PAUSE.min(left)).await;
                }
                Ok(Ok(Outcome::Unavailable) | Err(ProviderError::Transient(_))) | Err(_) => {
                    tracing::warn!(credential = %cred.id, waited_ms = started.elapsed().as_millis(), %trail, "access token expired; refresh did not finish: refused");
                    return Err(Reason::DependencyUnavailable);
                }
                Ok(Err(ProviderError::OAuth(_))) => return Err(Reason::InvalidCredential),
            }
            cred = self
                .read_credential(&cred.id, &cred.org, &cred.integration)
                .await?;
        }
    }

    /// The integration answered 401 to `used`'s token: refresh once (with
    /// the version used, so a refresh done meanwhile is not repeated) and
    /// resolve the handle again. `Some` with a newer token to retry with,
    /// `None` to return the 401 as it is, `needs_reauth` if the provider
    /// refused the refresh for good.
    pub async fn after_unauthorized(
        &self,
        run: &RunRecord,
        handle: &str,
        used: &Injection,
    ) -> BrokerResult<Option<Injection>> {
        let Some(refresher) = &self.refresher else {
            return Ok(None);
        };
        if !used.refreshing {
            return Ok(None);
        }
        let deadline = Instant::now() + self.refresh_wait;
        let row = self
            .store
            .credential(&used.credential_id)
            .await
            .map_err(internal)?
            .ok_or(Reason::InvalidHandle)?;
        if row.version == used.version {
            // Only one provider refresh per interval for 401s.
            let allowed = match self.unauthorized_at.lock() {
                Ok(mut m) => {
                    let recent = m
                        .get(&used.credential_id)
                        .is_some_and(|t| t.elapsed() < UNAUTHORIZED_REFRESH_EVERY);
                    if !recent {
                        if m.len() >= SCRUBBER_CACHE {
                            m.retain(|_, t| t.elapsed() < UNAUTHORIZED_REFRESH_EVERY);
                        }
                        m.insert(used.credential_id.clone(), Instant::now());
                    }
                    !recent
                }
                Err(_) => false,
            };
            if !allowed {
                return Ok(None);
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                let outcome = tokio::time::timeout(
                    left,
                    refresher.refresh_for(Trigger::Unauthorized, &used.credential_id, used.version),
                )
                .await;
                match outcome {
                    Ok(Ok(Outcome::NeedsReauth)) => return Err(Reason::NeedsReauth),
                    Ok(Ok(Outcome::Refreshed | Outcome::Recovered | Outcome::AlreadyFresh)) => {
                        break;
                    }
                    Ok(Ok(Outcome::Busy | Outcome::Orphaned)) => {
                        // Another replica is refreshing: wait for its commit.
                        tokio::time::sleep(BUSY_PAUSE.min(left)).await;
                        match self.store.credential(&used.credential_id).await {
                            Ok(Some(r)) if r.version != used.version => break,
                            Ok(Some(r)) if r.status == crate::store::NEEDS_REAUTH => {
                                return Err(Reason::NeedsReauth);
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => return Err(Reason::InvalidHandle),
                            Err(e) => return Err(internal(e)),
                        }
                    }
                    Ok(Ok(Outcome::Unavailable) | Err(_)) | Err(_) => return Ok(None),
                }
            }
        }
        let fresh = self.resolve(run, handle, crate::unix_now()).await?;
        Ok((fresh.version != used.version).then_some(fresh))
    }

    /// The scrubber for this credential version (cached).
    fn scrubber_for(&self, id: &str, version: i64, token: &SecretString) -> scrub::Scrubber {
        let key = (id.to_owned(), version);
        if let Ok(cache) = self.scrubbers.lock() {
            if let Some(s) = cache.get(&key) {
                return s.clone();
            }
        }
        let built =
            scrub::Scrubber::with_live_secrets([secrecy::ExposeSecret::expose_secret(token)]);
        if let Ok(mut cache) = self.scrubbers.lock() {
            if cache.len() >= SCRUBBER_CACHE {
                cache.clear();
            }
            cache.insert(key, built.clone());
        }
        built
    }
}

/// A run id as the broker makes them: 32 lowercase hex characters.
fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::Trail;
    use std::time::Duration;

    #[test]
    fn trail_keeps_the_first_and_the_last_steps() {
        let mut t = Trail::default();
        assert_eq!(t.to_string(), "");
        t.push("busy", Duration::from_millis(3));
        t.push("timed_out", Duration::from_millis(3000));
        assert_eq!(t.to_string(), "busy@3ms timed_out@3000ms");
        let mut t = Trail::default();
        for i in 0..20u64 {
            t.push("busy", Duration::from_millis(i * 200));
        }
        t.push("refreshed", Duration::from_millis(4100));
        let s = t.to_string();
        assert!(s.starts_with("busy@0ms (+9 more) busy@2000ms "), "{s}");
        assert!(s.ends_with("busy@3800ms refreshed@4100ms"), "{s}");
        assert_eq!(
            s.split(' ').filter(|w| w.contains('@')).count(),
            Trail::KEEP
        );
    }
}
