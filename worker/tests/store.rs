//! The `Store` contract: every test takes a `&dyn Store` and runs on SQLite
//! and on PostgreSQL (its own schema on `CHOKEPOINT_TEST_POSTGRES`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use worker::credential::{self, HeaderTemplate};
use worker::crypto::Keyring;
use worker::store::{self, HandleRecord, RunRecord, Store, StoreError};

async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let spec = format!("sqlite:{}", dir.path().join("w.db").display());
    store::open(&spec).await.unwrap()
}

/// A PostgreSQL store on a fresh schema (dropped with the guard), or `None`
/// (skip; a failure under `CHOKEPOINT_REQUIRE_PRIVILEGED=1`).
async fn postgres(tag: &str) -> Option<(Arc<dyn Store>, e2e::pg::PgSchema)> {
    let schema = e2e::pg::PgSchema::new(tag)?;
    let s = store::open(&schema.url).await.unwrap();
    Some((s, schema))
}

fn keys() -> Keyring {
    Keyring::from_keys(&[[7u8; 32]]).unwrap()
}

fn cred(keys: &Keyring, org: &str, integration: &str, token: &str) -> store::CredentialRecord {
    credential::seal_new(
        keys,
        org,
        integration,
        &HeaderTemplate::parse(credential::DEFAULT_HEADER).unwrap(),
        &SecretString::from(token.to_owned()),
        100,
    )
    .unwrap()
}

fn run(id: &str, org: &str, expires_at: i64) -> RunRecord {
    RunRecord {
        id: id.into(),
        org: org.into(),
        integrations: vec!["calendar".into(), "mail".into()],
        ttl_secs: 60,
        expires_at,
        revoked_at: None,
        created_at: 100,
    }
}

async fn credentials_contract(s: &dyn Store) {
    let k = keys();
    let c = cred(&k, "acme", "calendar", "token-aaaaaaaa");
    s.insert_credential(&c).await.unwrap();
    let dup = cred(&k, "acme", "calendar", "token-bbbbbbbb");
    assert!(matches!(
        s.insert_credential(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    s.insert_credential(&cred(&k, "globex", "calendar", "token-cccccccc"))
        .await
        .unwrap();
    assert_eq!(s.list_credentials(None).await.unwrap().len(), 2);
    let acme = s.list_credentials(Some("acme")).await.unwrap();
    assert_eq!(acme.len(), 1);
    let got = s.credential(&c.id).await.unwrap().unwrap();
    assert_eq!(
        credential::open_token(&k, &got).unwrap().expose_secret(),
        "token-aaaaaaaa"
    );
    assert_eq!(
        s.credential_for("acme", "calendar")
            .await
            .unwrap()
            .unwrap()
            .id,
        c.id
    );
    assert!(s.credential_for("acme", "mail").await.unwrap().is_none());

    // Conditional update: only from the version read.
    let next = credential::rewrap(&k, &got, 200).unwrap();
    assert!(
        s.update_credential_secret(&next, got.version)
            .await
            .unwrap()
    );
    assert!(
        !s.update_credential_secret(&next, got.version)
            .await
            .unwrap()
    );
    let after = s.credential(&c.id).await.unwrap().unwrap();
    assert_eq!(after.version, got.version + 1);
    assert_eq!(
        credential::open_token(&k, &after).unwrap().expose_secret(),
        "token-aaaaaaaa"
    );

    assert!(s.delete_credential("acme", "calendar").await.unwrap());
    assert!(!s.delete_credential("acme", "calendar").await.unwrap());
    assert!(s.credential(&c.id).await.unwrap().is_none());
}

async fn runs_contract(s: &dyn Store) {
    let k = keys();
    let c = cred(&k, "acme", "calendar", "token-aaaaaaaa");
    s.insert_credential(&c).await.unwrap();
    let h = HandleRecord {
        run_id: "r1".into(),
        org: "acme".into(),
        integration: "calendar".into(),
        credential_id: c.id.clone(),
    };
    s.insert_run(&run("r1", "acme", 1_000), &[(vec![1; 32], h.clone())])
        .await
        .unwrap();
    s.insert_run(
        &run("r2", "acme", 150),
        &[(
            vec![2; 32],
            HandleRecord {
                run_id: "r2".into(),
                ..h.clone()
            },
        )],
    )
    .await
    .unwrap();
    assert_eq!(s.run("r1").await.unwrap().unwrap().integrations.len(), 2);
    assert!(s.run("nope").await.unwrap().is_none());

    // Resolve by any of the hashes; only while the run is alive.
    assert_eq!(
        s.resolve_handle(&[vec![9; 32], vec![1; 32]], 500)
            .await
            .unwrap(),
        Some(h.clone())
    );
    assert_eq!(s.resolve_handle(&[vec![9; 32]], 500).await.unwrap(), None);
    assert_eq!(s.resolve_handle(&[vec![1; 32]], 1_000).await.unwrap(), None);

    // A request's rows in one query: the run, and the handle of THAT run
    // whose hash is one of those given, joined to its credential.
    let rows = s
        .request_rows("r1", &[vec![9; 32], vec![1; 32]])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows.run, s.run("r1").await.unwrap().unwrap());
    let (hr, cr) = rows.handle.unwrap();
    assert_eq!(hr, h);
    assert_eq!((cr.id.as_str(), cr.version), (c.id.as_str(), c.version));
    assert_eq!(cr.token_ct, c.token_ct);
    assert_eq!(cr.wrapped_key.blob, c.wrapped_key.blob);
    // No hash, an unknown hash, or another run's handle: the run alone.
    for (run_id, hashes) in [
        ("r1", vec![]),
        ("r1", vec![vec![9; 32]]),
        ("r1", vec![vec![2; 32]]),
        ("r2", vec![vec![1; 32]]),
    ] {
        let rows = s.request_rows(run_id, &hashes).await.unwrap().unwrap();
        assert_eq!(rows.run.id, run_id);
        assert!(rows.handle.is_none(), "{run_id}");
    }
    assert!(
        s.request_rows("nope", &[vec![1; 32]])
            .await
            .unwrap()
            .is_none()
    );

    // Renew extends an alive run only.
    let r = s.renew_run("r1", 500, 2_000).await.unwrap().unwrap();
    assert_eq!(r.expires_at, 2_000);
    assert!(s.renew_run("r2", 200, 2_000).await.unwrap().is_none());

    // The sweeper revokes r2 (expired) and deletes its handle.
    assert_eq!(s.sweep(200).await.unwrap(), 1);
    assert!(s.run("r2").await.unwrap().unwrap().revoked_at.is_some());
    assert_eq!(s.resolve_handle(&[vec![2; 32]], 100).await.unwrap(), None);

    // Revoking r1 kills its handle at once.
    assert!(s.revoke_run("r1", 600).await.unwrap());
    assert!(!s.revoke_run("r1", 601).await.unwrap());
    assert_eq!(s.resolve_handle(&[vec![1; 32]], 601).await.unwrap(), None);
    assert!(s.renew_run("r1", 601, 5_000).await.unwrap().is_none());

    // Deleting a credential deletes handles that point at it.
    s.insert_run(
        &run("r3", "acme", 9_000),
        &[(
            vec![3; 32],
            HandleRecord {
                run_id: "r3".into(),
                ..h
            },
        )],
    )
    .await
    .unwrap();
    assert!(
        s.resolve_handle(&[vec![3; 32]], 700)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        s.request_rows("r3", &[vec![3; 32]])
            .await
            .unwrap()
            .unwrap()
            .handle
            .is_some()
    );
    assert!(s.delete_credential("acme", "calendar").await.unwrap());
    assert_eq!(s.resolve_handle(&[vec![3; 32]], 700).await.unwrap(), None);
    // Revocation is seen at once: the run is read, its handle is gone.
    let rows = s.request_rows("r3", &[vec![3; 32]]).await.unwrap().unwrap();
    assert!(rows.handle.is_none());
    let rows = s.request_rows("r1", &[vec![1; 32]]).await.unwrap().unwrap();
    assert!(rows.run.revoked_at.is_some() && rows.handle.is_none());
    s.ping().await.unwrap();
}

#[tokio::test]
async fn sqlite_credentials() {
    let dir = tempfile::tempdir().unwrap();
    credentials_contract(sqlite(&dir).await.as_ref()).await;
}

#[tokio::test]
async fn sqlite_runs_and_handles() {
    let dir = tempfile::tempdir().unwrap();
    runs_contract(sqlite(&dir).await.as_ref()).await;
}

#[tokio::test]
async fn sqlite_reopen_keeps_rows_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    {
        let s = sqlite(&dir).await;
        s.insert_credential(&cred(&k, "acme", "calendar", "token-aaaaaaaa"))
            .await
            .unwrap();
    }
    let s = sqlite(&dir).await;
    assert_eq!(s.list_credentials(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn postgres_credentials() {
    let Some((s, _g)) = postgres("credentials").await else {
        return;
    };
    credentials_contract(s.as_ref()).await;
}

#[tokio::test]
async fn postgres_runs_and_handles() {
    let Some((s, _g)) = postgres("runs").await else {
        return;
    };
    runs_contract(s.as_ref()).await;
}

#[tokio::test]
async fn postgres_reopen_keeps_rows_and_migrations_are_idempotent() {
    let Some(schema) = e2e::pg::PgSchema::new("reopen") else {
        return;
    };
    let k = keys();
    {
        let s = store::open(&schema.url).await.unwrap();
        s.insert_credential(&cred(&k, "acme", "calendar", "token-aaaaaaaa"))
            .await
            .unwrap();
    }
    // Three replicas opening (and migrating) at once: no advisory lock, all succeed.
    let opens = (0..3).map(|_| store::open(&schema.url));
    for s in futures_util::future::join_all(opens).await {
        assert_eq!(s.unwrap().list_credentials(None).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn postgres_fresh_schema_concurrent_migration() {
    let Some(schema) = e2e::pg::PgSchema::new("migrate") else {
        return;
    };
    let opens = (0..3).map(|_| store::open(&schema.url));
    for s in futures_util::future::join_all(opens).await {
        s.unwrap().ping().await.unwrap();
    }
}

#[tokio::test]
async fn bad_store_spec_is_a_clear_error() {
    for spec in ["", "sqlite:", "mysql://x/y", "/var/lib/x.db"] {
        let e = store::open(spec).await.err().unwrap();
        assert!(matches!(e, StoreError::BadSpec(_)), "{spec}");
        assert!(e.to_string().contains("sqlite:"), "{e}");
        assert!(e.to_string().contains("postgres://"), "{e}");
    }
    // An unreachable server is an error, not a hang or a panic.
    let e = store::open("postgres://nobody@localhost/nodb?host=/nonexistent-socket-dir")
        .await
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::Db(_)), "{e}");
}
