//! The credential store: one [`Store`] trait, backends behind it.
//!
//! SQLite ([`SqliteStore`], `--store sqlite:PATH`) is the embedded default;
//! PostgreSQL ([`PgStore`], `--store postgres://…`) runs many replicas on one
//! store. Both implement the trait from ONE body of SQL (the
//! `portable_store!` macro), so every query here is portable SQL: numbered `$n` parameters, no `INSERT OR REPLACE`, no
//! `RETURNING`-only logic, no advisory locks, conditional updates checked by
//! their row count. Migrations live in `worker/migrations/<backend>/` and run
//! at open.
//!
//! The store holds ciphertext and keyed hashes only (see [`crate::crypto`]);
//! it never sees a plaintext token or a handle.
//!
//! Must never: interpolate a value into SQL text, or report a row's secret
//! columns in an error.

use std::borrow::Cow;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Postgres, Sqlite};

use crate::crypto::WrappedKey;

/// A store failure. Never carries secret column values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The `--store` value is not understood.
    #[error(
        "invalid --store `{0}`: write `sqlite:/var/lib/chokepoint/worker.db` or `postgres://user@host/db`"
    )]
    BadSpec(String),
    /// A row with this key exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// The database failed.
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One credential row (secret fields sealed).
#[derive(Clone)]
pub struct CredentialRecord {
    /// Random id (hex).
    pub id: String,
    /// Org id.
    pub org: String,
    /// Integration name (in the policy, under the org).
    pub integration: String,
    /// The header the token is injected into, e.g. `Authorization`.
    pub header_name: String,
    /// Its value with `{token}`, e.g. `Bearer {token}`.
    pub header_template: String,
    /// The data key, wrapped by the master key it names.
    pub wrapped_key: WrappedKey,
    /// The sealed access token.
    pub token_ct: Vec<u8>,
    /// Row version (bound into the associated data).
    pub version: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// The sealed refresh material (refresh token, client id, client
    /// secret), if the credential refreshes (OAuth 2.0, RFC 6749 §6).
    pub refresh_ct: Option<Vec<u8>>,
    /// The provider's token endpoint.
    pub token_url: Option<String>,
    /// When the access token expires (Unix seconds), if known.
    pub access_expires_at: Option<i64>,
    /// The lease fence: incremented by every lease taken.
    pub generation: i64,
    /// `active` or `needs_reauth`.
    pub status: String,
}

/// A credential's status once the provider refused its refresh for good.
pub const NEEDS_REAUTH: &str = "needs_reauth";
/// A usable credential's status.
pub const ACTIVE: &str = "active";

/// Tokens whose fenced commit failed, sealed (see `orphans` in the schema).
#[derive(Clone)]
pub struct OrphanRecord {
    /// Random id (hex).
    pub id: String,
    /// The credential.
    pub credential_id: String,
    /// The generation of the lease that lost.
    pub generation: i64,
    /// The version the blobs are sealed for.
    pub version: i64,
    /// The data key they are sealed with.
    pub wrapped_key: WrappedKey,
    /// The sealed access token.
    pub token_ct: Vec<u8>,
    /// The sealed refresh material.
    pub refresh_ct: Vec<u8>,
    /// When the access token expires.
    pub access_expires_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for OrphanRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrphanRecord")
            .field("id", &self.id)
            .field("credential_id", &self.credential_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("id", &self.id)
            .field("org", &self.org)
            .field("integration", &self.integration)
            .field("header_name", &self.header_name)
            .field("key_id", &self.wrapped_key.key_id)
            .field("version", &self.version)
            .field("generation", &self.generation)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Random id (hex).
    pub id: String,
    /// Org id.
    pub org: String,
    /// Its integrations (the write set).
    pub integrations: Vec<String>,
    /// Renewal period.
    pub ttl_secs: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

impl RunRecord {
    /// Alive at `now`: not revoked, not expired.
    pub fn alive(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// What a handle is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleRecord {
    /// The run.
    pub run_id: String,
    /// The org.
    pub org: String,
    /// The integration.
    pub integration: String,
    /// The credential.
    pub credential_id: String,
}

/// What one tool request reads, in one query ([`Store::request_rows`]).
#[derive(Debug, Clone)]
pub struct RequestRows {
    /// The run (alive or not: the caller checks).
    pub run: RunRecord,
    /// The presented handle of this run, with its credential row, if one of
    /// the hashes matched a handle of this run whose credential exists.
    pub handle: Option<(HandleRecord, CredentialRecord)>,
}

/// The store. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync {
    /// A trivial query (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Insert a new credential; `Conflict` if (org, integration) exists.
    async fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError>;
    /// A credential by id.
    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError>;
    /// The credential of (org, integration).
    async fn credential_for(
        &self,
        org: &str,
        integration: &str,
    ) -> Result<Option<CredentialRecord>, StoreError>;
    /// Every credential (of one org), ordered by org and integration.
    async fn list_credentials(
        &self,
        org: Option<&str>,
    ) -> Result<Vec<CredentialRecord>, StoreError>;
    /// Delete the credential of (org, integration) and its handles; whether
    /// it existed.
    async fn delete_credential(&self, org: &str, integration: &str) -> Result<bool, StoreError>;
    /// Replace the sealed fields of credential `c.id` if its version is
    /// still `expected_version` (`c.version` must be newer); whether it did.
    async fn update_credential_secret(
        &self,
        c: &CredentialRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError>;

    /// Take the refresh lease of credential `id` for `owner` until
    /// `lease_until` if it is free or expired at `now`: one conditional
    /// update that also increments the generation. The generation taken.
    async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// Extend the lease of `generation` to `lease_until`; whether it is
    /// still ours.
    async fn renew_lease(
        &self,
        id: &str,
        generation: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError>;
    /// Commit refreshed sealed fields (`c.version` = `expected_version` + 1)
    /// and free the lease, only `WHERE generation = generation`; whether it
    /// did.
    async fn commit_refresh(
        &self,
        c: &CredentialRecord,
        expected_version: i64,
        generation: i64,
    ) -> Result<bool, StoreError>;
    /// Free the lease of `generation` without a change; whether it was ours.
    async fn release_lease(&self, id: &str, generation: i64) -> Result<bool, StoreError>;
    /// Mark the credential `needs_reauth` and free the lease, only while
    /// `generation` holds it; whether it did.
    async fn mark_needs_reauth(
        &self,
        id: &str,
        generation: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Keep tokens whose commit failed.
    async fn insert_orphan(&self, o: &OrphanRecord) -> Result<(), StoreError>;
    /// The orphans of a credential, newest generation first.
    async fn orphans(&self, credential_id: &str) -> Result<Vec<OrphanRecord>, StoreError>;
    /// Delete one orphan (recovered or superseded).
    async fn delete_orphan(&self, id: &str) -> Result<(), StoreError>;
    /// How many credentials are `needs_reauth` (the dead-credential gauge).
    async fn count_needs_reauth(&self) -> Result<i64, StoreError>;

    /// Insert a run and its handles (keyed hashes) together.
    async fn insert_run(
        &self,
        run: &RunRecord,
        handles: &[(Vec<u8>, HandleRecord)],
    ) -> Result<(), StoreError>;
    /// A run by id.
    async fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// Extend an alive run to `expires_at`; the run after, if it was alive.
    async fn renew_run(
        &self,
        id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Option<RunRecord>, StoreError>;
    /// Revoke a run and delete its handles; whether it was alive.
    async fn revoke_run(&self, id: &str, now: i64) -> Result<bool, StoreError>;
    /// The run `run_id` and, when `hashes` is not empty, the handle of THAT
    /// run whose keyed hash is one of them joined to its credential: one
    /// query for everything a tool request reads (nothing is cached: a
    /// revoked run, a deleted handle or credential is seen at once).
    async fn request_rows(
        &self,
        run_id: &str,
        hashes: &[Vec<u8>],
    ) -> Result<Option<RequestRows>, StoreError>;
    /// The handle whose keyed hash is one of `hashes`, if its run is alive.
    async fn resolve_handle(
        &self,
        hashes: &[Vec<u8>],
        now: i64,
    ) -> Result<Option<HandleRecord>, StoreError>;
    /// Revoke every run past its deadline (and delete its handles); how many.
    async fn sweep(&self, now: i64) -> Result<u64, StoreError>;
}

/// Open the store named by `--store` (`sqlite:PATH` or
/// `postgres://USER@HOST/DB?…`) and migrate it.
pub async fn open(spec: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PgStore::open(spec).await?));
    }
    let Some(path) = spec.strip_prefix("sqlite:") else {
        return Err(StoreError::BadSpec(spec.to_owned()));
    };
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() {
        return Err(StoreError::BadSpec(spec.to_owned()));
    }
    Ok(std::sync::Arc::new(
        SqliteStore::open(PathBuf::from(path)).await?,
    ))
}

/// The default `--store`.
pub const DEFAULT_STORE: &str = "sqlite:/var/lib/chokepoint/worker.db";

/// The migrations of one backend, embedded from the tree.
fn migrator(files: &[(&'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .zip(1..)
        .map(|((name, sql), version)| {
            Migration::new(
                version,
                Cow::Borrowed(*name),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    let mut m = Migrator::DEFAULT;
    m.migrations = Cow::Owned(migrations);
    m
}

fn sqlite_migrator() -> Migrator {
    migrator(&[
        ("init", include_str!("../migrations/sqlite/0001_init.sql")),
        (
            "refresh",
            include_str!("../migrations/sqlite/0002_refresh.sql"),
        ),
    ])
}

fn postgres_migrator() -> Migrator {
    let mut m = migrator(&[
        ("init", include_str!("../migrations/postgres/0001_init.sql")),
        (
            "refresh",
            include_str!("../migrations/postgres/0002_refresh.sql"),
        ),
    ]);
    // No advisory locks (they break behind a transaction-mode pooler):
    // replicas starting together may race on a migration; the loser's
    // transaction fails and `PgStore::open` retries, then sees it applied.
    m.set_locking(false);
    m
}

/// PostgreSQL, for many worker replicas on one store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool<Postgres>,
}

impl PgStore {
    /// Connect to `url` (`postgres://…`; `options[search_path]=S` picks a
    /// schema) and run the migrations.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        let m = postgres_migrator();
        let mut last = None;
        for attempt in 0..3u64 {
            match m.run(&pool).await {
                Ok(()) => return Ok(PgStore { pool }),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        match last {
            Some(e) => Err(e.into()),
            None => Ok(PgStore { pool }),
        }
    }

    /// Close the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// SQLite, in WAL mode, one file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: Pool<Sqlite>,
}

impl SqliteStore {
    /// Open (create) the database at `path` and run the migrations.
    pub async fn open(path: PathBuf) -> Result<SqliteStore, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlite_migrator().run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// Close the pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

const CRED_COLS: &str = "id, org, integration, header_name, header_template, key_id, wrapped_key, token_ct, version, created_at, updated_at, refresh_ct, token_url, access_expires_at, generation, status";
const ORPHAN_COLS: &str = "id, credential_id, generation, version, key_id, wrapped_key, token_ct, refresh_ct, access_expires_at, created_at";
const RUN_COLS: &str = "id, org, integrations, ttl_secs, expires_at, revoked_at, created_at";
/// [`Store::request_rows`]: the run's and the handle's columns renamed, the
/// credential's under their own names (so one row decoder serves both).
const REQUEST_COLS: &str = "r.id AS run_id, r.org AS run_org, r.integrations AS run_integrations, \
     r.ttl_secs AS run_ttl_secs, r.expires_at AS run_expires_at, r.revoked_at AS run_revoked_at, \
     r.created_at AS run_created_at, h.org AS h_org, h.integration AS h_integration, \
     h.credential_id AS h_credential_id, c.id AS id, c.org AS org, c.integration AS integration, \
     c.header_name AS header_name, c.header_template AS header_template, c.key_id AS key_id, \
     c.wrapped_key AS wrapped_key, c.token_ct AS token_ct, c.version AS version, \
     c.created_at AS created_at, c.updated_at AS updated_at, c.refresh_ct AS refresh_ct, \
     c.token_url AS token_url, c.access_expires_at AS access_expires_at, \
     c.generation AS generation, c.status AS status";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The Store implementation, written once: the same SQL text runs on both
/// backends (`$ty` is the store type, `$row` its row type).
macro_rules! portable_store {
    ($ty:ident, $row:ty) => {
        impl $ty {
            fn cred_from(row: &$row) -> Result<CredentialRecord, sqlx::Error> {
                Ok(CredentialRecord {
                    id: row.try_get("id")?,
                    org: row.try_get("org")?,
                    integration: row.try_get("integration")?,
                    header_name: row.try_get("header_name")?,
                    header_template: row.try_get("header_template")?,
                    wrapped_key: WrappedKey {
                        key_id: row.try_get("key_id")?,
                        blob: row.try_get("wrapped_key")?,
                    },
                    token_ct: row.try_get("token_ct")?,
                    version: row.try_get("version")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    refresh_ct: row.try_get("refresh_ct")?,
                    token_url: row.try_get("token_url")?,
                    access_expires_at: row.try_get("access_expires_at")?,
                    generation: row.try_get("generation")?,
                    status: row.try_get("status")?,
                })
            }

            fn orphan_from(row: &$row) -> Result<OrphanRecord, sqlx::Error> {
                Ok(OrphanRecord {
                    id: row.try_get("id")?,
                    credential_id: row.try_get("credential_id")?,
                    generation: row.try_get("generation")?,
                    version: row.try_get("version")?,
                    wrapped_key: WrappedKey {
                        key_id: row.try_get("key_id")?,
                        blob: row.try_get("wrapped_key")?,
                    },
                    token_ct: row.try_get("token_ct")?,
                    refresh_ct: row.try_get("refresh_ct")?,
                    access_expires_at: row.try_get("access_expires_at")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn run_from(row: &$row) -> Result<RunRecord, sqlx::Error> {
                let list: String = row.try_get("integrations")?;
                let integrations: Vec<String> =
                    serde_json::from_str(&list).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                Ok(RunRecord {
                    id: row.try_get("id")?,
                    org: row.try_get("org")?,
                    integrations,
                    ttl_secs: row.try_get("ttl_secs")?,
                    expires_at: row.try_get("expires_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                    created_at: row.try_get("created_at")?,
                })
            }
        }

#[async_trait]
impl Store for $ty {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError> {
        let res = sqlx::query(&format!(
            "INSERT INTO credentials ({CRED_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(&c.id)
        .bind(&c.org)
        .bind(&c.integration)
        .bind(&c.header_name)
        .bind(&c.header_template)
        .bind(&c.wrapped_key.key_id)
        .bind(&c.wrapped_key.blob)
        .bind(&c.token_ct)
        .bind(c.version)
        .bind(c.created_at)
        .bind(c.updated_at)
        .bind(&c.refresh_ct)
        .bind(&c.token_url)
        .bind(c.access_expires_at)
        .bind(c.generation)
        .bind(&c.status)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "a credential for org `{}` integration `{}`",
                c.org, c.integration
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CRED_COLS} FROM credentials WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Self::cred_from).transpose()?)
    }

    async fn credential_for(
        &self,
        org: &str,
        integration: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CRED_COLS} FROM credentials WHERE org = $1 AND integration = $2"
        ))
        .bind(org)
        .bind(integration)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Self::cred_from).transpose()?)
    }

    async fn list_credentials(
        &self,
        org: Option<&str>,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let rows =
            match org {
                Some(org) => sqlx::query(&format!(
                    "SELECT {CRED_COLS} FROM credentials WHERE org = $1 ORDER BY org, integration"
                ))
                .bind(org)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query(&format!(
                        "SELECT {CRED_COLS} FROM credentials ORDER BY org, integration"
                    ))
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        Ok(rows.iter().map(Self::cred_from).collect::<Result<_, _>>()?)
    }

    async fn delete_credential(&self, org: &str, integration: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM handles WHERE credential_id IN \
             (SELECT id FROM credentials WHERE org = $1 AND integration = $2)",
        )
        .bind(org)
        .bind(integration)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM credentials WHERE org = $1 AND integration = $2")
            .bind(org)
            .bind(integration)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn update_credential_secret(
        &self,
        c: &CredentialRecord,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE credentials SET key_id = $1, wrapped_key = $2, token_ct = $3, version = $4, \
             updated_at = $5, refresh_ct = $8 WHERE id = $6 AND version = $7",
        )
        .bind(&c.wrapped_key.key_id)
        .bind(&c.wrapped_key.blob)
        .bind(&c.token_ct)
        .bind(c.version)
        .bind(c.updated_at)
        .bind(&c.id)
        .bind(expected_version)
        .bind(&c.refresh_ct)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<i64>, StoreError> {
        let n = sqlx::query(
            "UPDATE credentials SET generation = generation + 1, lease_owner = $1, lease_until = $2 \
             WHERE id = $3 AND status = 'active' AND (lease_until IS NULL OR lease_until <= $4)",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(None);
        }
        // The owner string is unique per attempt: if the row names us, the
        // generation is the one our update set.
        let row = sqlx::query(
            "SELECT generation FROM credentials WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("generation")).transpose()?)
    }

    async fn renew_lease(
        &self,
        id: &str,
        generation: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE credentials SET lease_until = $1 \
             WHERE id = $2 AND generation = $3 AND lease_owner IS NOT NULL",
        )
        .bind(lease_until)
        .bind(id)
        .bind(generation)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn commit_refresh(
        &self,
        c: &CredentialRecord,
        expected_version: i64,
        generation: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE credentials SET key_id = $1, wrapped_key = $2, token_ct = $3, version = $4, \
             updated_at = $5, refresh_ct = $6, access_expires_at = $7, \
             lease_owner = NULL, lease_until = NULL \
             WHERE id = $8 AND version = $9 AND generation = $10",
        )
        .bind(&c.wrapped_key.key_id)
        .bind(&c.wrapped_key.blob)
        .bind(&c.token_ct)
        .bind(c.version)
        .bind(c.updated_at)
        .bind(&c.refresh_ct)
        .bind(c.access_expires_at)
        .bind(&c.id)
        .bind(expected_version)
        .bind(generation)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn release_lease(&self, id: &str, generation: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE credentials SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND generation = $2",
        )
        .bind(id)
        .bind(generation)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn mark_needs_reauth(
        &self,
        id: &str,
        generation: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE credentials SET status = 'needs_reauth', lease_owner = NULL, \
             lease_until = NULL, updated_at = $1 WHERE id = $2 AND generation = $3",
        )
        .bind(now)
        .bind(id)
        .bind(generation)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn insert_orphan(&self, o: &OrphanRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO orphans ({ORPHAN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&o.id)
        .bind(&o.credential_id)
        .bind(o.generation)
        .bind(o.version)
        .bind(&o.wrapped_key.key_id)
        .bind(&o.wrapped_key.blob)
        .bind(&o.token_ct)
        .bind(&o.refresh_ct)
        .bind(o.access_expires_at)
        .bind(o.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn orphans(&self, credential_id: &str) -> Result<Vec<OrphanRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ORPHAN_COLS} FROM orphans WHERE credential_id = $1 \
             ORDER BY generation DESC, created_at DESC"
        ))
        .bind(credential_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(Self::orphan_from).collect::<Result<_, _>>()?)
    }

    async fn delete_orphan(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM orphans WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn count_needs_reauth(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM credentials WHERE status = 'needs_reauth'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    async fn insert_run(
        &self,
        run: &RunRecord,
        handles: &[(Vec<u8>, HandleRecord)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO runs ({RUN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&run.id)
        .bind(&run.org)
        .bind(
            serde_json::to_string(&run.integrations)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
        )
        .bind(run.ttl_secs)
        .bind(run.expires_at)
        .bind(run.revoked_at)
        .bind(run.created_at)
        .execute(&mut *tx)
        .await?;
        for (hash, h) in handles {
            sqlx::query(
                "INSERT INTO handles (hash, run_id, org, integration, credential_id) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash)
            .bind(&h.run_id)
            .bind(&h.org)
            .bind(&h.integration)
            .bind(&h.credential_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::run_from).transpose()?)
    }

    async fn renew_run(
        &self,
        id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Option<RunRecord>, StoreError> {
        let n = sqlx::query(
            "UPDATE runs SET expires_at = $1 \
             WHERE id = $2 AND revoked_at IS NULL AND expires_at > $3 AND expires_at < $1",
        )
        .bind(expires_at)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let run = self.run(id).await?;
        // Renewed, or already valid past `expires_at` (a concurrent renewal).
        Ok(run.filter(|r| (n == 1 || r.expires_at >= expires_at) && r.alive(now)))
    }

    async fn revoke_run(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE runs SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM handles WHERE run_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn request_rows(
        &self,
        run_id: &str,
        hashes: &[Vec<u8>],
    ) -> Result<Option<RequestRows>, StoreError> {
        if hashes.is_empty() {
            return Ok(self.run(run_id).await?.map(|run| RequestRows { run, handle: None }));
        }
        // `$2, $3, …`: one placeholder per hash (one per master key).
        let placeholders = (2..hashes.len() + 2)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {REQUEST_COLS} FROM runs r \
             LEFT JOIN handles h ON h.run_id = r.id AND h.hash IN ({placeholders}) \
             LEFT JOIN credentials c ON c.id = h.credential_id \
             WHERE r.id = $1"
        );
        let mut q = sqlx::query(&sql).bind(run_id);
        for hash in hashes {
            q = q.bind(hash);
        }
        let Some(row) = q.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let list: String = row.try_get("run_integrations")?;
        let integrations: Vec<String> =
            serde_json::from_str(&list).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let run = RunRecord {
            id: row.try_get("run_id")?,
            org: row.try_get("run_org")?,
            integrations,
            ttl_secs: row.try_get("run_ttl_secs")?,
            expires_at: row.try_get("run_expires_at")?,
            revoked_at: row.try_get("run_revoked_at")?,
            created_at: row.try_get("run_created_at")?,
        };
        // No handle matched, or its credential is gone: both columns NULL.
        let handle = match row.try_get::<Option<String>, _>("id")? {
            Some(_) => Some((
                HandleRecord {
                    run_id: run.id.clone(),
                    org: row.try_get("h_org")?,
                    integration: row.try_get("h_integration")?,
                    credential_id: row.try_get("h_credential_id")?,
                },
                Self::cred_from(&row)?,
            )),
            None => None,
        };
        Ok(Some(RequestRows { run, handle }))
    }

    async fn resolve_handle(
        &self,
        hashes: &[Vec<u8>],
        now: i64,
    ) -> Result<Option<HandleRecord>, StoreError> {
        for hash in hashes {
            let row = sqlx::query(
                "SELECT h.run_id, h.org, h.integration, h.credential_id FROM handles h \
                 JOIN runs r ON r.id = h.run_id \
                 WHERE h.hash = $1 AND r.revoked_at IS NULL AND r.expires_at > $2",
            )
            .bind(hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                return Ok(Some(HandleRecord {
                    run_id: row.try_get("run_id")?,
                    org: row.try_get("org")?,
                    integration: row.try_get("integration")?,
                    credential_id: row.try_get("credential_id")?,
                }));
            }
        }
        Ok(None)
    }

    async fn sweep(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM handles WHERE run_id IN \
             (SELECT id FROM runs WHERE revoked_at IS NULL AND expires_at <= $1)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE runs SET revoked_at = $1 WHERE revoked_at IS NULL AND expires_at <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
    };
}

portable_store!(SqliteStore, sqlx::sqlite::SqliteRow);
portable_store!(PgStore, sqlx::postgres::PgRow);
