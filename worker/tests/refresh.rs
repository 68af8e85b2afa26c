//! The fenced lease and the refresh protocol, on SQLite and on PostgreSQL,
//! against the strict fake token endpoint (in-process).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)] // test code: a panic is a failed test; figures go to stderr

mod common;
use common::both;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use e2e::token_endpoint::{CallResult, StrictEndpoint};
use secrecy::{ExposeSecret, SecretString};
use worker::credential::{self, HeaderTemplate};
use worker::crypto::Keyring;
use worker::refresh::{
    Outcome, Provider, ProviderError, RefreshConfig, RefreshMaterial, Refresher, TokenAnswer,
};
use worker::store::{self, Store};

struct Fake {
    ep: Arc<StrictEndpoint>,
    /// Fail this many calls with a transient error first.
    transient: AtomicU32,
    /// Delay before answering.
    delay: Duration,
}

#[async_trait]
impl Provider for Fake {
    async fn refresh(&self, _url: &str, m: &RefreshMaterial) -> Result<TokenAnswer, ProviderError> {
        tokio::time::sleep(self.delay).await;
        if self
            .transient
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ProviderError::Transient("503".into()));
        }
        match self.ep.refresh(&m.refresh_token) {
            CallResult::Rotated(a, r) | CallResult::Replayed(a, r) => Ok(TokenAnswer {
                access_token: SecretString::from(a),
                refresh_token: Some(SecretString::from(r)),
                expires_in: Some(60),
            }),
            CallResult::InvalidGrant => Err(ProviderError::OAuth("invalid_grant".into())),
        }
    }
}

fn fake(ep: &Arc<StrictEndpoint>, transient: u32, delay_ms: u64) -> Arc<Fake> {
    Arc::new(Fake {
        ep: ep.clone(),
        transient: AtomicU32::new(transient),
        delay: Duration::from_millis(delay_ms),
    })
}

fn keys() -> Arc<Keyring> {
    Arc::new(Keyring::from_keys(&[[7u8; 32]]).unwrap())
}

fn cfg() -> RefreshConfig {
    RefreshConfig {
        lease_secs: 3,
        call_deadline: Duration::from_secs(2),
        backoff: Duration::from_millis(10),
        attempts: 4,
    }
}

async fn refreshing_cred(
    s: &dyn Store,
    k: &Keyring,
    ep: &StrictEndpoint,
) -> store::CredentialRecord {
    let c = credential::seal_new(
        k,
        "acme",
        "calendar",
        &HeaderTemplate::parse(credential::DEFAULT_HEADER).unwrap(),
        &SecretString::from("at-initial".to_owned()),
        worker::unix_now(),
    )
    .unwrap();
    let m = RefreshMaterial {
        refresh_token: ep.grant(),
        client_id: "client".into(),
        client_secret: "secret".into(),
        client_auth: worker::refresh::ClientAuth::ClientSecretBasic,
    };
    let c = worker::refresh::with_refresh(
        k,
        &c,
        &m,
        "http://127.0.0.1:1/token",
        Some(worker::unix_now() + 60),
    )
    .unwrap();
    s.insert_credential(&c).await.unwrap();
    c
}

fn access(k: &Keyring, c: &store::CredentialRecord) -> String {
    credential::open_token(k, c)
        .unwrap()
        .expose_secret()
        .to_owned()
}

async fn lease_is_fenced(s: Arc<dyn Store>) {
    let k = keys();
    let ep = StrictEndpoint::default();
    let c = refreshing_cred(s.as_ref(), &k, &ep).await;
    let now = worker::unix_now();
    let g1 = s
        .acquire_lease(&c.id, "a", now, now + 10)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.acquire_lease(&c.id, "b", now, now + 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.renew_lease(&c.id, g1, now + 20).await.unwrap());
    // Expired (a dead replica's lease): taken over with a new generation.
    let g2 = s
        .acquire_lease(&c.id, "b", now + 21, now + 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g2, g1 + 1);
    assert!(!s.renew_lease(&c.id, g1, now + 40).await.unwrap());
    let mut next = credential::rewrap(&k, &c, now).unwrap();
    next.access_expires_at = Some(now + 99);
    assert!(
        !s.commit_refresh(&next, c.version, g1).await.unwrap(),
        "stale fence committed"
    );
    assert!(s.commit_refresh(&next, c.version, g2).await.unwrap());
    let row = s.credential(&c.id).await.unwrap().unwrap();
    assert_eq!(row.version, c.version + 1);
    assert_eq!(row.access_expires_at, Some(now + 99));
    // The commit freed the lease.
    assert!(
        s.acquire_lease(&c.id, "c", now, now + 10)
            .await
            .unwrap()
            .is_some()
    );
    // Refresh material survives a rewrap.
    assert!(credential::open_refresh(&k, &row).is_ok());
}

async fn refresh_rotates_commits_and_shares(s: Arc<dyn Store>) {
    let k = keys();
    let ep = Arc::new(StrictEndpoint::default());
    let c = refreshing_cred(s.as_ref(), &k, &ep).await;
    let r = Arc::new(Refresher::new(
        s.clone(),
        k.clone(),
        fake(&ep, 0, 50),
        cfg(),
    ));
    // Ten callers in one process: one provider call.
    let all = (0..10).map(|_| {
        let r = r.clone();
        let id = c.id.clone();
        async move { r.refresh(&id, c.version).await.unwrap() }
    });
    let outs = futures_util::future::join_all(all).await;
    assert_eq!(
        outs.iter().filter(|o| **o == Outcome::Refreshed).count(),
        1,
        "{outs:?}"
    );
    assert!(
        outs.iter()
            .all(|o| matches!(o, Outcome::Refreshed | Outcome::AlreadyFresh))
    );
    assert_eq!(ep.calls().len(), 1);
    let row = s.credential(&c.id).await.unwrap().unwrap();
    assert!(ep.access_valid(&access(&k, &row)));
    // Three replicas (three refreshers) at once on the new version: one call.
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            Arc::new(Refresher::new(
                s.clone(),
                k.clone(),
                fake(&ep, 0, 50),
                cfg(),
            ))
        })
        .collect();
    let all = replicas.iter().map(|r| r.refresh(&row.id, row.version));
    let outs = futures_util::future::join_all(all).await;
    assert_eq!(
        outs.iter()
            .filter(|o| **o == Ok(Outcome::Refreshed))
            .count(),
        1,
        "{outs:?}"
    );
    assert_eq!(ep.calls().len(), 2);
    assert_eq!(ep.revoked_families(), 0);
    assert!(
        ep.calls()
            .iter()
            .all(|c| matches!(c.result, CallResult::Rotated(..)))
    );
}

async fn lost_lease_orphans_and_next_replica_adopts(s: Arc<dyn Store>) {
    let k = keys();
    let ep = Arc::new(StrictEndpoint::default());
    let c = refreshing_cred(s.as_ref(), &k, &ep).await;
    // A slow replica (a pause past its lease): its lease is taken over
    // before its answer comes back.
    let slow = Refresher::new(
        s.clone(),
        k.clone(),
        fake(&ep, 0, 1_500),
        RefreshConfig {
            lease_secs: 1,
            call_deadline: Duration::from_secs(3),
            ..cfg()
        },
    );
    let thief = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Steal the lease as if it had expired (a later clock).
        let now = worker::unix_now() + 100;
        s.acquire_lease(&c.id, "thief", now, now + 1)
            .await
            .unwrap()
            .unwrap()
    };
    // Stop the slow replica's renewals from winning: it renews every 333 ms
    // with generation g; the thief's takeover bumps the generation first.
    let (out, _) = tokio::join!(slow.refresh(&c.id, c.version), thief);
    assert_eq!(out.unwrap(), Outcome::Orphaned);
    assert_eq!(slow.stats.orphans.load(Ordering::Relaxed), 1);
    assert_eq!(s.orphans(&c.id).await.unwrap().len(), 1);
    // The row still has the consumed refresh token; the next replica adopts
    // the orphan instead of presenting it.
    let row = s.credential(&c.id).await.unwrap().unwrap();
    s.release_lease(&c.id, row.generation).await.unwrap();
    let next = Refresher::new(s.clone(), k.clone(), fake(&ep, 0, 0), cfg());
    assert_eq!(
        next.refresh(&c.id, c.version).await.unwrap(),
        Outcome::Recovered
    );
    assert_eq!(
        ep.calls().len(),
        1,
        "the consumed token was presented again"
    );
    let row = s.credential(&c.id).await.unwrap().unwrap();
    assert!(ep.access_valid(&access(&k, &row)));
    assert!(s.orphans(&c.id).await.unwrap().is_empty());
    // And it refreshes normally afterwards.
    assert_eq!(
        next.refresh(&c.id, row.version).await.unwrap(),
        Outcome::Refreshed
    );
    assert_eq!(ep.revoked_families(), 0);
}

async fn errors_are_classified(s: Arc<dyn Store>) {
    let k = keys();
    let ep = Arc::new(StrictEndpoint::default());
    let c = refreshing_cred(s.as_ref(), &k, &ep).await;
    // Transient twice, then success: retried with backoff.
    let r = Refresher::new(s.clone(), k.clone(), fake(&ep, 2, 0), cfg());
    assert_eq!(
        r.refresh(&c.id, c.version).await.unwrap(),
        Outcome::Refreshed
    );
    // Always transient: unavailable, lease freed, row unchanged.
    let row = s.credential(&c.id).await.unwrap().unwrap();
    let r = Refresher::new(s.clone(), k.clone(), fake(&ep, 100, 0), cfg());
    assert_eq!(
        r.refresh(&row.id, row.version).await.unwrap(),
        Outcome::Unavailable
    );
    let now = worker::unix_now();
    assert!(
        s.acquire_lease(&row.id, "x", now, now + 1)
            .await
            .unwrap()
            .is_some()
    );
    let g = s.credential(&row.id).await.unwrap().unwrap().generation;
    s.release_lease(&row.id, g).await.unwrap();
    // invalid_grant (the family revoked at the provider): needs_reauth.
    let bad = worker::refresh::with_refresh(
        &k,
        &row,
        &RefreshMaterial {
            refresh_token: "rt-unknown".into(),
            client_id: "client".into(),
            client_secret: "secret".into(),
            client_auth: worker::refresh::ClientAuth::ClientSecretBasic,
        },
        "http://127.0.0.1:1/token",
        row.access_expires_at,
    )
    .unwrap();
    assert!(s.update_credential_secret(&bad, row.version).await.unwrap());
    let row = s.credential(&row.id).await.unwrap().unwrap();
    let r = Refresher::new(s.clone(), k.clone(), fake(&ep, 0, 0), cfg());
    assert_eq!(s.count_needs_reauth().await.unwrap(), 0);
    assert_eq!(
        r.refresh(&row.id, row.version).await.unwrap(),
        Outcome::NeedsReauth
    );
    assert_eq!(s.count_needs_reauth().await.unwrap(), 1);
    let dead = s.credential(&row.id).await.unwrap().unwrap();
    assert_eq!(dead.status, store::NEEDS_REAUTH);
    // A dead credential takes no lease.
    assert!(
        s.acquire_lease(&row.id, "y", now, now + 1)
            .await
            .unwrap()
            .is_none()
    );
}

async fn stuck_lease_is_recovered(s: Arc<dyn Store>) {
    let k = keys();
    let ep = Arc::new(StrictEndpoint::default());
    let c = refreshing_cred(s.as_ref(), &k, &ep).await;
    // A replica died holding the lease (never released): busy until it
    // expires. Three seconds, not one: the clock is in whole seconds, so a
    // one-second lease taken at x.999 has already expired at the next call.
    let now = worker::unix_now();
    s.acquire_lease(&c.id, "dead", now, now + 3)
        .await
        .unwrap()
        .unwrap();
    let r = Refresher::new(s.clone(), k.clone(), fake(&ep, 0, 0), cfg());
    assert_eq!(r.refresh(&c.id, c.version).await.unwrap(), Outcome::Busy);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = r.refresh(&c.id, c.version).await.unwrap();
        if out == Outcome::Refreshed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lease never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn due_at_three_quarters() {
    let k = keys();
    let mut c = credential::seal_new(
        &k,
        "acme",
        "calendar",
        &HeaderTemplate::parse(credential::DEFAULT_HEADER).unwrap(),
        &SecretString::from("at".to_owned()),
        1_000,
    )
    .unwrap();
    assert!(!worker::refresh::due(&c, 10_000), "no refresh material");
    c.refresh_ct = Some(vec![1]);
    c.access_expires_at = Some(1_400);
    assert!(!worker::refresh::due(&c, 1_299));
    assert!(worker::refresh::due(&c, 1_300));
}

both!(
    lease_is_fenced,
    sqlite_lease_is_fenced,
    postgres_lease_is_fenced
);
both!(
    refresh_rotates_commits_and_shares,
    sqlite_refresh_rotates_commits_and_shares,
    postgres_refresh_rotates_commits_and_shares
);
both!(
    lost_lease_orphans_and_next_replica_adopts,
    sqlite_lost_lease_orphans_and_next_replica_adopts,
    postgres_lost_lease_orphans_and_next_replica_adopts
);
both!(
    errors_are_classified,
    sqlite_errors_are_classified,
    postgres_errors_are_classified
);
both!(
    stuck_lease_is_recovered,
    sqlite_stuck_lease_is_recovered,
    postgres_stuck_lease_is_recovered
);

#[test]
fn refresh_is_due_at_three_quarters_of_the_lifetime() {
    due_at_three_quarters();
}

/// The kill points, simulated in-process (a "dead" replica is one that took
/// the lease, possibly called the provider, and never wrote anything; its
/// lease is already expired). Returns the families revoked over `n` rounds.
async fn kill_point_rounds(s: Arc<dyn Store>, window: Duration, answered: bool, n: usize) -> usize {
    let k = keys();
    let ep = Arc::new(StrictEndpoint::new(window));
    let r = Refresher::new(s.clone(), k.clone(), fake(&ep, 0, 0), cfg());
    let mut c = refreshing_cred(s.as_ref(), &k, &ep).await;
    for _ in 0..n {
        let row = s.credential(&c.id).await.unwrap().unwrap();
        let now = worker::unix_now();
        // The dead replica: lease taken (expired at once), maybe answered.
        s.acquire_lease(&row.id, "dead", now, now)
            .await
            .unwrap()
            .unwrap();
        if answered {
            let json = credential::open_refresh(&k, &row).unwrap();
            let m: RefreshMaterial = serde_json::from_str(&json).unwrap();
            let _lost = ep.refresh(&m.refresh_token);
        }
        // The next replica recovers the expired lease and refreshes.
        match r.refresh(&row.id, row.version).await.unwrap() {
            Outcome::Refreshed => {
                let row = s.credential(&c.id).await.unwrap().unwrap();
                assert!(ep.access_valid(&access(&k, &row)));
            }
            Outcome::NeedsReauth => {
                // Family lost: start a new grant (an operator re-adds it).
                s.delete_credential("acme", "calendar").await.unwrap();
                c = refreshing_cred(s.as_ref(), &k, &ep).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ep.revoked_families()
}

async fn kill_points_families_lost(s: Arc<dyn Store>) {
    const N: usize = 50;
    let strict = Duration::ZERO;
    let window = Duration::from_secs(60);
    let before_call_strict = kill_point_rounds(s.clone(), strict, false, N).await;
    s.delete_credential("acme", "calendar").await.unwrap();
    let after_answer_strict = kill_point_rounds(s.clone(), strict, true, N).await;
    s.delete_credential("acme", "calendar").await.unwrap();
    let after_answer_window = kill_point_rounds(s.clone(), window, true, N).await;
    eprintln!(
        "families lost over {N} kills: before the call (strict) {before_call_strict}, \
         after the answer (strict) {after_answer_strict}, after the answer (reuse window > lease) {after_answer_window}"
    );
    assert_eq!(before_call_strict, 0);
    // The analysis: with revoke-on-any-reuse, every kill after the answer
    // loses the family; no client-side protocol avoids it.
    assert_eq!(after_answer_strict, N);
    assert_eq!(after_answer_window, 0);
}

both!(
    kill_points_families_lost,
    sqlite_kill_points_families_lost,
    postgres_kill_points_families_lost
);

/// Rotates at the provider on every call, but the first answer comes back
/// only after `delay` (past the refresher's deadline: lost).
struct SlowFirst {
    ep: Arc<StrictEndpoint>,
    calls: AtomicU32,
    delay: Duration,
}

#[async_trait]
impl Provider for SlowFirst {
    async fn refresh(&self, _url: &str, m: &RefreshMaterial) -> Result<TokenAnswer, ProviderError> {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let r = self.ep.refresh(&m.refresh_token);
        if first {
            tokio::time::sleep(self.delay).await;
        }
        match r {
            CallResult::Rotated(a, r) | CallResult::Replayed(a, r) => Ok(TokenAnswer {
                access_token: SecretString::from(a),
                refresh_token: Some(SecretString::from(r)),
                expires_in: Some(60),
            }),
            CallResult::InvalidGrant => Err(ProviderError::OAuth("invalid_grant".into())),
        }
    }
}

/// The provider rotated but its answer came after the deadline: the
/// refresher presents the token again at once, inside the reuse window,
/// gets the same pair and commits it (before the fix: `Unavailable`, and
/// the next refresh, maybe outside the window, revoked the family).
async fn answer_lost_to_the_deadline_is_fetched_again(s: Arc<dyn Store>) {
    let k = keys();
    let ep = Arc::new(StrictEndpoint::new(Duration::from_secs(60)));
    let c = refreshing_cred(s.as_ref(), &k, &ep).await;
    let p = Arc::new(SlowFirst {
        ep: ep.clone(),
        calls: AtomicU32::new(0),
        delay: Duration::from_millis(2_500),
    });
    let r = Refresher::new(s.clone(), k.clone(), p, cfg());
    assert_eq!(
        r.refresh(&c.id, c.version).await.unwrap(),
        Outcome::Refreshed
    );
    let calls = ep.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(matches!(calls[0].result, CallResult::Rotated(..)));
    assert!(matches!(calls[1].result, CallResult::Replayed(..)));
    assert_eq!(ep.revoked_families(), 0);
    let row = s.credential(&c.id).await.unwrap().unwrap();
    assert_eq!(row.version, c.version + 1);
    assert!(ep.access_valid(&access(&k, &row)));
}

both!(
    answer_lost_to_the_deadline_is_fetched_again,
    sqlite_answer_lost_to_the_deadline_is_fetched_again,
    postgres_answer_lost_to_the_deadline_is_fetched_again
);
