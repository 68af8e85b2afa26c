//! OAuth refresh on the request path (`Broker::resolve`, docs/refresh.md
//! "On the request path"), on SQLite and on PostgreSQL: the broker with a
//! shared `Refresher` over the real `HttpProvider`, against the strict fake
//! token endpoint served over HTTP on 127.0.0.2.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)] // test code: a panic is a failed test

mod common;
use common::both;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::DnsServer;
use e2e::token_endpoint::{EndpointServer, StrictEndpoint};
use netpolicy::{Policy, Reason};
use secrecy::{ExposeSecret, SecretString};
use worker::broker::Broker;
use worker::client::PinnedClient;
use worker::credential::{self, HeaderTemplate};
use worker::crypto::Keyring;
use worker::provider::HttpProvider;
use worker::refresh::{RefreshConfig, RefreshMaterial, Refresher, Trigger};
use worker::store::{CredentialRecord, RunRecord, Store};

const POLICY: &str = "version: v1\nunsafe_allow_ranges: [127.0.0.2/32]\norgs:\n  acme:\n    integrations:\n      calendar:\n        hosts: [api.calendar-e2e.com]\n";

struct Setup {
    store: Arc<dyn Store>,
    keys: Arc<Keyring>,
    ep: Arc<StrictEndpoint>,
    broker: Arc<Broker>,
    run: RunRecord,
    handle: String,
    cred: CredentialRecord,
    _server: EndpointServer,
    _dns: DnsServer,
}

fn cfg() -> RefreshConfig {
    RefreshConfig {
        lease_secs: 2,
        call_deadline: Duration::from_millis(1500),
        backoff: Duration::from_millis(50),
        attempts: 3,
    }
}

/// A refreshing credential whose access token is `access` (empty: none
/// yet) and lives `life` seconds from `updated` seconds ago.
async fn setup(s: Arc<dyn Store>, access: &str, updated_ago: i64, life: i64) -> Setup {
    let keys = Arc::new(Keyring::from_keys(&[[9u8; 32]]).unwrap());
    let ep = Arc::new(
        StrictEndpoint::new(Duration::ZERO)
            .with_access_lifetime(Duration::from_secs(600))
            .with_client("cid", "csecret"),
    );
    let (url, server) = ep.serve(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0),
        None,
    );
    let now = worker::unix_now();
    let c = credential::seal_new(
        &keys,
        "acme",
        "calendar",
        &HeaderTemplate::parse(credential::DEFAULT_HEADER).unwrap(),
        &SecretString::from(access.to_owned()),
        now - updated_ago,
    )
    .unwrap();
    let m = RefreshMaterial {
        refresh_token: ep.grant(),
        client_id: "cid".into(),
        client_secret: "csecret".into(),
        client_auth: worker::refresh::ClientAuth::ClientSecretBasic,
    };
    let c =
        worker::refresh::with_refresh(&keys, &c, &m, &url, Some(now - updated_ago + life)).unwrap();
    s.insert_credential(&c).await.unwrap();
    let dns = DnsServer::start();
    let policy = Arc::new(Policy::from_yaml("t.yaml", POLICY).unwrap());
    let client = Arc::new(PinnedClient::new(&[dns.addr], &[]).unwrap());
    let refresher = Arc::new(Refresher::new(
        s.clone(),
        keys.clone(),
        Arc::new(HttpProvider::new(client, policy.clone())),
        cfg(),
    ));
    let broker = Arc::new(
        Broker::new(s.clone(), keys.clone()).with_refresher(refresher, Duration::from_secs(4)),
    );
    let started = broker
        .start_run(&policy, "acme", &["calendar".to_owned()], Some(600), now)
        .await
        .unwrap();
    let handle = started.handles["calendar"].clone();
    Setup {
        store: s,
        keys,
        ep,
        broker,
        run: started.run,
        handle,
        cred: c,
        _server: server,
        _dns: dns,
    }
}

/// No access token yet: twenty concurrent requests wait for one refresh
/// and all inject its token.
async fn expired_waits_once_for_everyone(s: Arc<dyn Store>) {
    let t = setup(s, "", 0, 0).await;
    let all = (0..20).map(|_| {
        let (b, run, h) = (t.broker.clone(), t.run.clone(), t.handle.clone());
        async move { b.resolve(&run, &h, worker::unix_now()).await.unwrap() }
    });
    let injected = futures_util::future::join_all(all).await;
    assert_eq!(t.ep.calls().len(), 1, "{:?}", t.ep.calls());
    let first = t.ep.latest_access().unwrap();
    assert!(
        injected
            .iter()
            .all(|i| i.token.expose_secret() == first && i.version == t.cred.version + 1)
    );
    assert!(t.ep.access_valid(&first));
}

/// Past 3/4 of the lifetime but valid: the current token is used at once
/// and the refresh happens in the background.
async fn due_uses_current_and_refreshes_behind(s: Arc<dyn Store>) {
    let t = setup(s, "at-current-valid", 80, 100).await;
    // A slow provider: the request does not wait for it.
    t.ep.set_delay(Duration::from_millis(1000));
    let inj = t
        .broker
        .resolve(&t.run, &t.handle, worker::unix_now())
        .await
        .unwrap();
    assert_eq!(inj.token.expose_secret(), "at-current-valid");
    assert!(
        t.ep.calls().is_empty(),
        "the request waited for the refresh"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = t.store.credential(&t.cred.id).await.unwrap().unwrap();
        if row.version == t.cred.version + 1 {
            let tok = credential::open_token(&t.keys, &row).unwrap();
            assert_eq!(tok.expose_secret(), t.ep.latest_access().unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.ep.calls().len(), 1);
    // Now fresh: no further refresh.
    let inj = t
        .broker
        .resolve(&t.run, &t.handle, worker::unix_now())
        .await
        .unwrap();
    assert_eq!(inj.token.expose_secret(), t.ep.latest_access().unwrap());
    assert_eq!(t.ep.calls().len(), 1);
}

/// Due, with the provider down: requests keep the current token, and
/// after the failed background refresh no other starts for a while (no
/// request storm against the provider).
async fn due_provider_down_backs_off(s: Arc<dyn Store>) {
    let t = setup(s, "at-still-valid", 80, 100).await;
    t.ep.fail_next(1000, 503);
    let refresher = t.broker.refresher().unwrap().clone();
    let unavailable = || {
        refresher
            .stats
            .outcomes()
            .iter()
            .any(|(tr, o, n)| *tr == Trigger::Due && *o == "unavailable" && *n == 1)
    };
    let inj = t
        .broker
        .resolve(&t.run, &t.handle, worker::unix_now())
        .await
        .unwrap();
    assert_eq!(inj.token.expose_secret(), "at-still-valid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !unavailable() {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            refresher.stats.outcomes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tried = t.ep.http_counts().injected_failures;
    assert_eq!(tried, 3, "one attempt per configured retry");
    for _ in 0..5 {
        let inj = t
            .broker
            .resolve(&t.run, &t.handle, worker::unix_now())
            .await
            .unwrap();
        assert_eq!(inj.token.expose_secret(), "at-still-valid");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(t.ep.http_counts().injected_failures, tried);
    assert!(t.ep.calls().is_empty());
}

/// Expired while another (dead) replica holds the lease: the request waits,
/// re-reading the row, and refreshes once the lease expires.
async fn expired_and_busy_waits_for_the_lease(s: Arc<dyn Store>) {
    let t = setup(s, "at-old", 100, 50).await;
    let now = worker::unix_now();
    assert!(
        t.store
            .acquire_lease(&t.cred.id, "dead-replica", now, now + 2)
            .await
            .unwrap()
            .is_some()
    );
    let started = Instant::now();
    let inj = t
        .broker
        .resolve(&t.run, &t.handle, worker::unix_now())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(inj.token.expose_secret(), t.ep.latest_access().unwrap());
    assert_eq!(t.ep.calls().len(), 1);
}

/// Expired and the provider down: refused with `dependency_unavailable`
/// within the wait, the row untouched; then `invalid_grant` makes it
/// `needs_reauth` for every later request.
async fn expired_provider_down_then_revoked(s: Arc<dyn Store>) {
    let t = setup(s, "at-old", 100, 50).await;
    t.ep.fail_next(100, 503);
    let started = Instant::now();
    let e = t
        .broker
        .resolve(&t.run, &t.handle, worker::unix_now())
        .await
        .err()
        .unwrap();
    assert_eq!(e, Reason::DependencyUnavailable);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(t.ep.calls().is_empty());
    let row = t.store.credential(&t.cred.id).await.unwrap().unwrap();
    assert_eq!(row.version, t.cred.version);
    t.ep.fail_next(0, 503);
    let rt = {
        let json = credential::open_refresh(&t.keys, &row).unwrap();
        let m: RefreshMaterial = serde_json::from_str(&json).unwrap();
        m.refresh_token.clone()
    };
    assert!(t.ep.revoke_family_of(&rt));
    let e = t
        .broker
        .resolve(&t.run, &t.handle, worker::unix_now())
        .await
        .err()
        .unwrap();
    assert_eq!(e, Reason::NeedsReauth);
    assert_eq!(t.store.count_needs_reauth().await.unwrap(), 1);
    let calls = t.ep.calls().len();
    let e = t
        .broker
        .resolve(&t.run, &t.handle, worker::unix_now())
        .await
        .err()
        .unwrap();
    assert_eq!(e, Reason::NeedsReauth);
    assert_eq!(t.ep.calls().len(), calls, "a dead credential was refreshed");
}

both!(
    expired_waits_once_for_everyone,
    sqlite_expired_waits_once_for_everyone,
    pg_expired_waits_once_for_everyone
);
both!(
    due_uses_current_and_refreshes_behind,
    sqlite_due_uses_current_and_refreshes_behind,
    pg_due_uses_current_and_refreshes_behind
);
both!(
    due_provider_down_backs_off,
    sqlite_due_provider_down_backs_off,
    pg_due_provider_down_backs_off
);
both!(
    expired_and_busy_waits_for_the_lease,
    sqlite_expired_and_busy_waits_for_the_lease,
    pg_expired_and_busy_waits_for_the_lease
);
both!(
    expired_provider_down_then_revoked,
    sqlite_expired_provider_down_then_revoked,
    pg_expired_provider_down_then_revoked
);
