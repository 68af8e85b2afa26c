//! The API's store: conversations, tickets, the write queue, events and
//! revocations, behind one [`Store`] trait.
//!
//! SQLite ([`SqliteStore`], `--store sqlite:PATH`) is the embedded default;
//! PostgreSQL comes next behind the same trait, so every query is portable
//! SQL: `$n` parameters, `ON CONFLICT … DO NOTHING/UPDATE` (both have it),
//! conditional updates checked by their row count, no advisory locks, no
//! `RETURNING`-only logic. The queue claim is one conditional `UPDATE` that
//! sets a lease; idempotency is the unique key (conversation, client id).
//! Migrations live in `api/migrations/<backend>/` and run at open.
//!
//! These are the API's own tables: it never opens the worker's credential
//! rows. Tickets are stored as SHA-256 digests only.
//!
//! Must never: interpolate a value into SQL text.

use std::borrow::Cow;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The `--store` value is not understood.
    #[error("invalid --store `{0}`: write `sqlite:/var/lib/chokepoint/api.db`")]
    BadSpec(String),
    /// The database failed.
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A conditional write kept losing to concurrent writers.
    #[error("store: too much contention on {0}")]
    Contention(&'static str),
}

/// The default `--store`.
pub const DEFAULT_STORE: &str = "sqlite:/var/lib/chokepoint/api.db";

/// A conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Its id.
    pub id: String,
    /// The owning org.
    pub org: String,
    /// The user who created it.
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A stored ticket (the ticket itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The user.
    pub sub: String,
    /// The org.
    pub org: String,
    /// The conversation it opens.
    pub conversation: String,
    /// The Origin it was minted from (`None`: no Origin header).
    pub origin: Option<String>,
    /// The minting token's `exp`, Unix seconds.
    pub token_exp: i64,
    /// The minting token's `iat`, Unix seconds.
    pub token_iat: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// A client message to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Server-side id.
    pub id: String,
    /// The conversation.
    pub conversation: String,
    /// The client's id (idempotency key with the conversation).
    pub client_id: String,
    /// The org.
    pub org: String,
    /// The user.
    pub sub: String,
    /// The text.
    pub text: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A message handed to the runtime by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Server-side id (what the runtime acks).
    pub id: String,
    /// The conversation.
    pub conversation: String,
    /// The text.
    pub text: String,
}

/// The outcome of an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Acked now (or already acked: acks are idempotent).
    Acked,
    /// The message exists but holds no live lease (never claimed, or the
    /// lease expired and it went back to the queue).
    NotLeased,
    /// No such message.
    Unknown,
}

/// The store. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync {
    /// A trivial query (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Create a conversation.
    async fn create_conversation(&self, c: &Conversation) -> Result<(), StoreError>;
    /// A conversation by id.
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError>;

    /// Store a ticket under its digest.
    async fn insert_ticket(&self, hash: &[u8], t: &Ticket) -> Result<(), StoreError>;
    /// Consume the ticket with this digest if unused and unexpired at `now`
    /// (ms): one conditional UPDATE, so exactly one caller gets it.
    async fn consume_ticket(&self, hash: &[u8], now: i64) -> Result<Option<Ticket>, StoreError>;
    /// Delete tickets that expired before `before` (ms); how many.
    async fn sweep_tickets(&self, before: i64) -> Result<u64, StoreError>;

    /// Enqueue a message; `true` if new, `false` if (conversation,
    /// client id) was already there (the first one stands).
    async fn enqueue(&self, m: &NewMessage) -> Result<bool, StoreError>;
    /// Lease the oldest claimable message until `now + lease_ms`: not acked,
    /// not under a live lease, and with no older unacked message in its
    /// conversation (per-conversation order).
    async fn claim(&self, now: i64, lease_ms: i64) -> Result<Option<Claimed>, StoreError>;
    /// Ack a leased message.
    async fn ack(&self, id: &str, now: i64) -> Result<AckOutcome, StoreError>;
    /// Messages in the queue not yet acked (leased or not).
    async fn queue_depth(&self) -> Result<u64, StoreError>;

    /// Append an event (already scrubbed JSON text); its sequence number.
    async fn append_event(
        &self,
        conversation: &str,
        data: &str,
        now: i64,
    ) -> Result<i64, StoreError>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        conversation: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError>;

    /// Revoke the tokens of (org, sub) issued at or before `not_after`
    /// (Unix seconds); `sub = "*"` revokes the org's membership.
    async fn revoke(&self, org: &str, sub: &str, not_after: i64) -> Result<(), StoreError>;
    /// Whether a token of (org, sub) issued at `iat` is revoked.
    async fn is_revoked(&self, org: &str, sub: &str, iat: i64) -> Result<bool, StoreError>;
}

/// Open the store named by `--store` (`sqlite:PATH`) and migrate it.
pub async fn open(spec: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
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

fn sqlite_migrator() -> Migrator {
    let migrations = vec![Migration::new(
        1,
        Cow::Borrowed("init"),
        MigrationType::Simple,
        Cow::Borrowed(include_str!("../migrations/sqlite/0001_init.sql")),
        false,
    )];
    let mut m = Migrator::DEFAULT;
    m.migrations = Cow::Owned(migrations);
    m
}

/// SQLite in WAL mode with `synchronous = FULL`: a committed write survives
/// a crash of the process or the machine.
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
}

/// Conditional writes retried this many times before giving up.
const RETRIES: usize = 8;

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn ticket_from(row: &sqlx::sqlite::SqliteRow) -> Result<Ticket, sqlx::Error> {
    Ok(Ticket {
        sub: row.try_get("sub")?,
        org: row.try_get("org")?,
        conversation: row.try_get("conversation")?,
        origin: row.try_get("origin")?,
        token_exp: row.try_get("token_exp")?,
        token_iat: row.try_get("token_iat")?,
        expires_at: row.try_get("expires_at")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_conversation(&self, c: &Conversation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO conversations (id, org, created_by, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&c.id)
        .bind(&c.org)
        .bind(&c.created_by)
        .bind(c.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let row =
            sqlx::query("SELECT id, org, created_by, created_at FROM conversations WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Conversation {
            id: row.try_get("id")?,
            org: row.try_get("org")?,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
        }))
    }

    async fn insert_ticket(&self, hash: &[u8], t: &Ticket) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tickets (hash, sub, org, conversation, origin, token_exp, token_iat, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
        )
        .bind(hash)
        .bind(&t.sub)
        .bind(&t.org)
        .bind(&t.conversation)
        .bind(&t.origin)
        .bind(t.token_exp)
        .bind(t.token_iat)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn consume_ticket(&self, hash: &[u8], now: i64) -> Result<Option<Ticket>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE tickets SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT sub, org, conversation, origin, token_exp, token_iat, expires_at FROM tickets WHERE hash = $1",
        )
        .bind(hash)
        .fetch_one(&mut *tx)
        .await?;
        let t = ticket_from(&row)?;
        tx.commit().await?;
        Ok(Some(t))
    }

    async fn sweep_tickets(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tickets WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn enqueue(&self, m: &NewMessage) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO queue (id, conversation, client_id, org, sub, body, created_at, claims) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0) \
             ON CONFLICT (conversation, client_id) DO NOTHING",
        )
        .bind(&m.id)
        .bind(&m.conversation)
        .bind(&m.client_id)
        .bind(&m.org)
        .bind(&m.sub)
        .bind(&m.text)
        .bind(m.created_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim(&self, now: i64, lease_ms: i64) -> Result<Option<Claimed>, StoreError> {
        let until = now.saturating_add(lease_ms);
        for _ in 0..RETRIES {
            // The candidate: the oldest unacked, unleased message that heads
            // its conversation.
            let row = sqlx::query(
                "SELECT q.id FROM queue q \
                 WHERE q.acked_at IS NULL \
                   AND (q.lease_until IS NULL OR q.lease_until <= $1) \
                   AND NOT EXISTS (SELECT 1 FROM queue p \
                                   WHERE p.conversation = q.conversation \
                                     AND p.pos < q.pos AND p.acked_at IS NULL) \
                 ORDER BY q.pos LIMIT 1",
            )
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let id: String = row.try_get("id")?;
            // Take it only if it is still claimable: a concurrent claimer
            // that won makes this update touch no row, and we look again.
            let done = sqlx::query(
                "UPDATE queue SET lease_until = $1, claims = claims + 1 \
                 WHERE id = $2 AND acked_at IS NULL \
                   AND (lease_until IS NULL OR lease_until <= $3)",
            )
            .bind(until)
            .bind(&id)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                let row = sqlx::query("SELECT id, conversation, body FROM queue WHERE id = $1")
                    .bind(&id)
                    .fetch_one(&self.pool)
                    .await?;
                return Ok(Some(Claimed {
                    id: row.try_get("id")?,
                    conversation: row.try_get("conversation")?,
                    text: row.try_get("body")?,
                }));
            }
        }
        Err(StoreError::Contention("queue claim"))
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM queue WHERE acked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn ack(&self, id: &str, now: i64) -> Result<AckOutcome, StoreError> {
        let done = sqlx::query(
            "UPDATE queue SET acked_at = $1 \
             WHERE id = $2 AND acked_at IS NULL AND lease_until IS NOT NULL AND lease_until > $1",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(AckOutcome::Acked);
        }
        let row = sqlx::query("SELECT acked_at FROM queue WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            None => AckOutcome::Unknown,
            Some(r) => {
                let acked: Option<i64> = r.try_get("acked_at")?;
                if acked.is_some() {
                    AckOutcome::Acked
                } else {
                    AckOutcome::NotLeased
                }
            }
        })
    }

    async fn append_event(
        &self,
        conversation: &str,
        data: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        for _ in 0..RETRIES {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(
                "SELECT COALESCE(MAX(seq), 0) AS last FROM events WHERE conversation = $1",
            )
            .bind(conversation)
            .fetch_one(&mut *tx)
            .await?;
            let last: i64 = row.try_get("last")?;
            let seq = last.saturating_add(1);
            let res = sqlx::query(
                "INSERT INTO events (conversation, seq, data, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(conversation)
            .bind(seq)
            .bind(data)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match res {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(seq);
                }
                // Another writer took this number: read the maximum again.
                Err(e) if is_unique_violation(&e) => {
                    tx.rollback().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention("event sequence"))
    }

    async fn events_after(
        &self,
        conversation: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, data FROM events WHERE conversation = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(conversation)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("data")?)))
            .collect()
    }

    async fn revoke(&self, org: &str, sub: &str, not_after: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revocations (org, sub, not_after) VALUES ($1, $2, $3) \
             ON CONFLICT (org, sub) DO UPDATE SET not_after = excluded.not_after",
        )
        .bind(org)
        .bind(sub)
        .bind(not_after)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn is_revoked(&self, org: &str, sub: &str, iat: i64) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS hit FROM revocations \
             WHERE org = $1 AND (sub = $2 OR sub = '*') AND not_after >= $3 LIMIT 1",
        )
        .bind(org)
        .bind(sub)
        .bind(iat)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("api.db")).await.unwrap();
        (dir, s)
    }

    fn msg(conv: &str, client: &str, pos: i64) -> NewMessage {
        NewMessage {
            id: format!("m_{conv}_{client}"),
            conversation: conv.into(),
            client_id: client.into(),
            org: "acme".into(),
            sub: "alice".into(),
            text: format!("text {client}"),
            created_at: pos,
        }
    }

    #[tokio::test]
    async fn enqueue_is_idempotent_and_claims_follow_order_and_leases() {
        let (_d, s) = store().await;
        assert!(s.enqueue(&msg("c1", "a", 1)).await.unwrap());
        assert!(!s.enqueue(&msg("c1", "a", 2)).await.unwrap());
        assert!(s.enqueue(&msg("c1", "b", 3)).await.unwrap());
        assert!(s.enqueue(&msg("c2", "a", 4)).await.unwrap());

        let now = 1_000;
        let first = s.claim(now, 100).await.unwrap().unwrap();
        assert_eq!(first.id, "m_c1_a");
        // c1's second message waits for the first; c2 is free.
        let second = s.claim(now, 100).await.unwrap().unwrap();
        assert_eq!(second.id, "m_c2_a");
        assert_eq!(s.claim(now, 100).await.unwrap(), None);
        // The lease of the first expires: it comes back, not c1/b.
        let again = s.claim(now + 100, 100).await.unwrap().unwrap();
        assert_eq!(again.id, "m_c1_a");
        assert_eq!(s.ack("m_c1_a", now + 150).await.unwrap(), AckOutcome::Acked);
        assert_eq!(s.ack("m_c1_a", now + 160).await.unwrap(), AckOutcome::Acked);
        // An expired lease cannot be acked.
        assert_eq!(
            s.ack("m_c2_a", now + 500).await.unwrap(),
            AckOutcome::NotLeased
        );
        assert_eq!(s.ack("nope", now).await.unwrap(), AckOutcome::Unknown);
        let next = s.claim(now + 500, 100).await.unwrap().unwrap();
        assert_eq!(next.id, "m_c1_b");
    }

    #[tokio::test]
    async fn tickets_are_consumed_once() {
        let (_d, s) = store().await;
        let t = Ticket {
            sub: "alice".into(),
            org: "acme".into(),
            conversation: "c1".into(),
            origin: Some("https://app.example".into()),
            token_exp: 10,
            token_iat: 1,
            expires_at: 5_000,
        };
        s.insert_ticket(b"h1", &t).await.unwrap();
        assert_eq!(
            s.consume_ticket(b"h1", 1_000).await.unwrap(),
            Some(t.clone())
        );
        assert_eq!(s.consume_ticket(b"h1", 1_000).await.unwrap(), None);
        s.insert_ticket(b"h2", &t).await.unwrap();
        assert_eq!(s.consume_ticket(b"h2", 5_000).await.unwrap(), None);
        assert_eq!(s.sweep_tickets(6_000).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn events_are_numbered_per_conversation() {
        let (_d, s) = store().await;
        assert_eq!(s.append_event("c1", "1", 0).await.unwrap(), 1);
        assert_eq!(s.append_event("c1", "2", 0).await.unwrap(), 2);
        assert_eq!(s.append_event("c2", "3", 0).await.unwrap(), 1);
        let after = s.events_after("c1", 1, 10).await.unwrap();
        assert_eq!(after, vec![(2, "2".to_owned())]);
    }

    #[tokio::test]
    async fn revocations() {
        let (_d, s) = store().await;
        assert!(!s.is_revoked("acme", "alice", 10).await.unwrap());
        s.revoke("acme", "alice", 20).await.unwrap();
        assert!(s.is_revoked("acme", "alice", 10).await.unwrap());
        assert!(!s.is_revoked("acme", "alice", 21).await.unwrap());
        assert!(!s.is_revoked("acme", "bob", 10).await.unwrap());
        s.revoke("acme", "*", 30).await.unwrap();
        assert!(s.is_revoked("acme", "bob", 10).await.unwrap());
        assert!(!s.is_revoked("other", "bob", 10).await.unwrap());
    }
}
