//! Prometheus metrics (served on the admin listener's `/metrics`).
//!
//! Owns: the registry and every metric. Label values come only from enums
//! (`Source::as_str`, `Verdict::as_str`, `Reason::as_str`, `Method::as_str`)
//! so the number of series stays bounded. Must never: use a host, a path or
//! any client-supplied text as a label value.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of the proxy.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    /// `egress_requests_total{source,verdict,reason,method}`.
    pub(crate) requests: IntCounterVec,
    /// `egress_tunnels_active`.
    pub(crate) tunnels_active: IntGauge,
    /// `egress_tunnel_bytes_total{direction="up"}`.
    pub(crate) tunnel_bytes_up: IntCounter,
    /// `egress_tunnel_bytes_total{direction="down"}`.
    pub(crate) tunnel_bytes_down: IntCounter,
    /// `egress_upstream_connect_seconds`.
    pub(crate) upstream_connect: Histogram,
    /// `egress_dns_resolve_seconds`.
    pub(crate) dns_resolve: Histogram,
    /// `egress_policy_reloads_total{result="ok"}`.
    pub(crate) reloads_ok: IntCounter,
    /// `egress_policy_reloads_total{result="error"}`.
    pub(crate) reloads_error: IntCounter,
    /// `egress_policy_generation`.
    pub(crate) policy_generation: IntGauge,
    /// `egress_connections_open`.
    pub(crate) connections_open: IntGauge,
    /// `egress_connections_max`.
    pub(crate) connections_max: IntGauge,
    /// `egress_audit_write_errors_total`.
    pub(crate) audit_write_errors: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Create and register every metric.
    pub(crate) fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "egress_requests_total",
                "Requests and tunnels seen by the proxy, by source, verdict, reason and method.",
            ),
            &["source", "verdict", "reason", "method"],
        )?;
        let tunnels_active =
            IntGauge::new("egress_tunnels_active", "CONNECT tunnels currently open.")?;
        let tunnel_bytes = IntCounterVec::new(
            Opts::new(
                "egress_tunnel_bytes_total",
                "Bytes spliced through CONNECT tunnels (up = client to upstream).",
            ),
            &["direction"],
        )?;
        let upstream_connect = Histogram::with_opts(
            HistogramOpts::new(
                "egress_upstream_connect_seconds",
                "Time to open a TCP connection to a validated upstream address.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let dns_resolve = Histogram::with_opts(
            HistogramOpts::new(
                "egress_dns_resolve_seconds",
                "Time to resolve a destination name.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("egress_policy_reloads_total", "Policy reloads by result."),
            &["result"],
        )?;
        let policy_generation = IntGauge::new(
            "egress_policy_generation",
            "Generation of the policy in force (1 = the one loaded at start).",
        )?;
        let connections_open = IntGauge::new(
            "egress_connections_open",
            "Client connections currently open (tunnels included).",
        )?;
        let connections_max = IntGauge::new(
            "egress_connections_max",
            "The connection limit in force (--max-connections, clamped to the file-descriptor limit).",
        )?;
        let audit_write_errors = IntCounter::new(
            "egress_audit_write_errors_total",
            "Failed writes of the audit log (while failing, requests are refused with audit_unavailable).",
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_max.clone()))?;
        registry.register(Box::new(audit_write_errors.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(tunnels_active.clone()))?;
        registry.register(Box::new(tunnel_bytes.clone()))?;
        registry.register(Box::new(upstream_connect.clone()))?;
        registry.register(Box::new(dns_resolve.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(policy_generation.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            tunnels_active,
            tunnel_bytes_up: tunnel_bytes.with_label_values(&["up"]),
            tunnel_bytes_down: tunnel_bytes.with_label_values(&["down"]),
            upstream_connect,
            dns_resolve,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_error: reloads.with_label_values(&["error"]),
            policy_generation,
            connections_open,
            connections_max,
            audit_write_errors,
        })
    }

    /// Count one request or tunnel.
    pub(crate) fn request(
        &self,
        verdict: netpolicy::Verdict,
        reason: netpolicy::Reason,
        method: netpolicy::Method,
    ) {
        self.requests
            .with_label_values(&[
                netpolicy::Source::Container.as_str(),
                verdict.as_str(),
                reason.as_str(),
                method.as_str(),
            ])
            .inc();
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric names, which are
        // constants here; an empty page is the fail-safe.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}
