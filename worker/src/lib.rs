//! # worker — the credential broker, the encrypted credential store and the
//! pinned HTTP tool
//!
//! Agents make HTTP tool calls that an LLM chooses. The worker makes them on
//! the agent's behalf, and is where four of chokepoint's boundaries live:
//! the egress policy for writes (`netpolicy::decide` with
//! `Source::Worker`), the credential broker ([`broker`]: the LLM only ever
//! sees opaque, run-scoped `cph_` handles), the DNS rebinding defense
//! ([`client`]: resolve once, validate every address, dial exactly a
//! validated address) and token scrubbing (every response, header, error
//! and audit line passes through `chokepoint-scrub` with the injected
//! token's live forms).
//!
//! It runs as `egress-controller worker …` ([`cli`]), started by the
//! controller as a child with its own uid and no capabilities. It holds the
//! master key; it never holds the controller's powers (no Docker socket, no
//! nftables).
//!
//! Layout: [`crypto`] (AES-256-GCM envelope, keyed handle hashes),
//! [`store`] (the `Store` trait, SQLite), [`credential`] (sealing and the
//! header template), [`broker`] (runs and handles), [`tool`] (one request,
//! in the documented order), [`client`] (the pinned connector),
//! [`refresh`] (OAuth refresh under a fenced lease) and [`provider`] (the
//! token endpoint client), [`api`]
//! (the HTTP API), [`audit`], [`metrics`].
//!
//! Must never: return, log or store a token or a handle in clear; allow on
//! an error; resolve a name twice for one connection.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod client;
pub mod credential;
pub mod crypto;
pub mod metrics;
pub mod production;
pub mod provider;
pub mod refresh;
pub mod store;
pub mod tool;

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// RFC 3339 (UTC) of a time.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    rfc3339_secs(secs)
}

/// RFC 3339 (UTC) of Unix seconds.
pub fn rfc3339_secs(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
