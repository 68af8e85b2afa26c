//! Shared by the store-backed tests: every case runs once on SQLite and once
//! on PostgreSQL (a fresh schema; skipped without `CHOKEPOINT_TEST_POSTGRES`
//! unless `CHOKEPOINT_REQUIRE_PRIVILEGED=1`, which makes that a failure).

use std::sync::Arc;

use worker::store::{self, Store};

/// A fresh SQLite store in a temporary directory (gone with the guard).
pub(crate) async fn sqlite_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = store::open(&format!("sqlite:{}", dir.path().join("w.db").display()))
        .await
        .unwrap();
    (s, dir)
}

/// `both!(case, sqlite_test, postgres_test)`: two tests running the async
/// `case(Arc<dyn Store>)`, one on each store.
macro_rules! both {
    ($name:ident, $sqlite:ident, $pg:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let (s, _d) = common::sqlite_store().await;
            $name(s).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            let Some(schema) = e2e::pg::PgSchema::new(stringify!($pg)) else {
                return;
            };
            let s = worker::store::open(&schema.url).await.unwrap();
            $name(s).await;
        }
    };
}
pub(crate) use both;
