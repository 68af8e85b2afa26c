//! State shared by every connection: the policy in force (swapped
//! atomically on reload), the resolver, metrics, the audit log and limits.
//!
//! Owns: [`Shared`], [`Limits`] and [`Plan`] (the decided, resolved request
//! handed from the head reader to the Pingora forwarder). Must never: hold a
//! policy that failed validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use netpolicy::{Destination, Method, Policy, Reason};

use crate::audit::AuditLog;
use crate::metrics::Metrics;
use crate::resolve::Resolver;

/// Connection and tunnel limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most client connections open at once.
    pub(crate) max_connections: usize,
    /// A client's whole request head (or ClientHello) arrives within this.
    pub(crate) client_read: Duration,
    /// Each write to a client completes within this.
    pub(crate) client_write: Duration,
    /// A forwarded request ends within this.
    pub(crate) request_deadline: Duration,
    /// Upstream TCP connect timeout (per address).
    pub(crate) connect_timeout: Duration,
    /// A forwarded request's upstream read or write waits at most this long.
    pub(crate) upstream_idle: Duration,
    /// A tunnel with no byte either way for this long is closed.
    pub(crate) tunnel_idle: Duration,
    /// A tunnel is closed after this long regardless.
    pub(crate) tunnel_max_lifetime: Duration,
}

/// Everything the connection handlers share.
pub(crate) struct Shared {
    /// The policy in force.
    pub(crate) policy: ArcSwap<Policy>,
    /// Its generation (1 = loaded at start, +1 per successful reload).
    pub(crate) generation: AtomicU64,
    /// Where the policy is (re)loaded from.
    pub(crate) policy_path: PathBuf,
    /// Serializes reloads.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// The pinned-answer resolver.
    pub(crate) resolver: Resolver,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// The audit log.
    pub(crate) audit: AuditLog,
    /// Limits.
    pub(crate) limits: Limits,
    /// Set once the proxy listener is bound and a policy loaded; cleared
    /// when draining.
    pub(crate) ready: AtomicBool,
    /// The addresses of this host's interfaces: never a destination. Read
    /// at start and on every reload.
    pub(crate) own_addrs: ArcSwap<Vec<std::net::IpAddr>>,
    /// The token `POST /reload` requires (`None`: HTTP reload refused).
    pub(crate) admin_token: Option<Vec<u8>>,
    /// Development or production (`/readyz` reports it; production
    /// refuses a reload to a policy it would refuse at start).
    pub(crate) mode: mode::Mode,
    /// Per-client, per-org and per-org-tunnel caps.
    pub(crate) admission: Arc<crate::admit::Admission>,
}

/// A request that passed every check, with the exact addresses to dial.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The client's org.
    pub(crate) org: String,
    /// The client.
    pub(crate) client: SocketAddr,
    /// The folded method.
    pub(crate) method: Method,
    /// The destination (parsed once).
    pub(crate) dest: Destination,
    /// The origin-form target to forward.
    pub(crate) origin_form: String,
    /// The Host header to send upstream.
    pub(crate) host_header: String,
    /// Validated addresses, in dial order (never resolved again).
    pub(crate) addrs: Vec<SocketAddr>,
    /// The allow reason.
    pub(crate) reason: Reason,
    /// When the head was read.
    pub(crate) started: Instant,
    /// Set once Pingora ran our phases for this request (it audits it). Left
    /// unset when Pingora refused the request before any phase; the
    /// connection loop then audits and counts it.
    pub(crate) handled: Arc<AtomicBool>,
}

/// A pointer to the shared state.
pub(crate) type SharedRef = Arc<Shared>;
