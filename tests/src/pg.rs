//! A throwaway PostgreSQL schema per test, on the cluster named by
//! `CHOKEPOINT_TEST_POSTGRES` (`.ci/run` starts one on a unix socket).
//!
//! Each test gets its own schema (so tests run in parallel) and drops it on
//! drop, even when the test fails. Schemas are created and dropped with
//! `psql`, which ships with the server. Without the variable or the server,
//! [`PgSchema::new`] returns `None` (a skip), or panics when
//! `CHOKEPOINT_REQUIRE_PRIVILEGED=1`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The variable naming the test cluster's URL.
pub const ENV: &str = "CHOKEPOINT_TEST_POSTGRES";

/// A schema that lives as long as this value.
#[derive(Debug)]
pub struct PgSchema {
    base: String,
    /// The schema's name.
    pub name: String,
    /// The URL to open the store on this schema (`options[search_path]`).
    pub url: String,
}

fn psql(base: &str, sql: &str) -> bool {
    Command::new("psql")
        .args([base, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PgSchema {
    /// A fresh schema named after `tag`, or `None` (skip) if there is no
    /// cluster and privileged tests are not required.
    pub fn new(tag: &str) -> Option<PgSchema> {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var(ENV).unwrap_or_default();
        let ok = !base.is_empty() && psql(&base, "SELECT 1");
        if !crate::require(&format!("PostgreSQL ({ENV})"), ok) {
            return None;
        }
        let name = format!(
            "t_{}_{}_{}",
            tag.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
                .to_ascii_lowercase(),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        assert!(
            psql(&base, &format!("CREATE SCHEMA {name}")),
            "cannot create schema {name}"
        );
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={name}");
        Some(PgSchema { base, name, url })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        psql(
            &self.base,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}
