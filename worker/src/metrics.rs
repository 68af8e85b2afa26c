//! Prometheus metrics (served on the API's `GET /metrics`).
//!
//! Label values come only from enums (`Reason::as_str`, `Method::as_str`), so
//! the number of series stays bounded. Must never: use a host, a path, an
//! org, a run id or any caller-supplied text as a label value.

use crate::refresh::{ERROR_OUTCOME, Outcome, RefreshStats, Trigger};
use netpolicy::{Method, Reason};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric of the worker.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `worker_requests_total{reason,method}`: tool requests by outcome.
    pub requests: IntCounterVec,
    /// `worker_token_echo_total`: responses in which the injected token (in
    /// any encoding) came back and was scrubbed.
    pub token_echo: IntCounter,
    /// `worker_responses_truncated_total`: responses cut at the size limit
    /// or the deadline.
    pub truncated: IntCounter,
    /// `worker_runs_started_total`.
    pub runs_started: IntCounter,
    /// `worker_runs_ended_total{cause="deleted"|"expired"}`.
    pub runs_ended: IntCounterVec,
    /// `worker_api_unauthorized_total`: API calls refused for a bad service token.
    pub unauthorized: IntCounter,
    /// `worker_request_seconds`: one tool request, end to end.
    pub request_seconds: Histogram,
    /// `worker_inflight_requests`.
    pub inflight: IntGauge,
    /// `worker_credentials_needs_reauth`: credentials in the store whose
    /// refresh the provider refused for good (read at each scrape).
    pub needs_reauth: IntGauge,
    /// `worker_refresh_orphans_total`: provider answers this process could
    /// not commit (lease lost) and parked in the orphans table (alert).
    pub refresh_orphans: IntCounter,
    /// `worker_token_refreshes_total{trigger,outcome}`: refreshes the
    /// request path asked for, by trigger and outcome.
    pub refreshes: IntCounterVec,
    /// Serializes [`Metrics::sync_refresh`].
    sync: std::sync::Arc<std::sync::Mutex<()>>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "worker_requests_total",
                "Tool requests handled by the worker, by reason and method.",
            ),
            &["reason", "method"],
        )?;
        let token_echo = IntCounter::new(
            "worker_token_echo_total",
            "Responses that echoed an injected token (scrubbed before returning).",
        )?;
        let truncated = IntCounter::new(
            "worker_responses_truncated_total",
            "Responses cut at the size limit or the deadline.",
        )?;
        let runs_started = IntCounter::new("worker_runs_started_total", "Runs started.")?;
        let runs_ended = IntCounterVec::new(
            Opts::new("worker_runs_ended_total", "Runs ended, by cause."),
            &["cause"],
        )?;
        let unauthorized = IntCounter::new(
            "worker_api_unauthorized_total",
            "API calls refused for a missing or wrong service token.",
        )?;
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new("worker_request_seconds", "One tool request, end to end.")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let inflight = IntGauge::new("worker_inflight_requests", "Tool requests in flight.")?;
        let needs_reauth = IntGauge::new(
            "worker_credentials_needs_reauth",
            "Credentials whose OAuth refresh the provider refused for good (re-authorize them).",
        )?;
        let refresh_orphans = IntCounter::new(
            "worker_refresh_orphans_total",
            "Token endpoint answers whose fenced commit failed, parked in the orphans table.",
        )?;
        let refreshes = IntCounterVec::new(
            Opts::new(
                "worker_token_refreshes_total",
                "OAuth token refreshes asked for by the request path, by trigger and outcome.",
            ),
            &["trigger", "outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(token_echo.clone()))?;
        registry.register(Box::new(truncated.clone()))?;
        registry.register(Box::new(runs_started.clone()))?;
        registry.register(Box::new(runs_ended.clone()))?;
        registry.register(Box::new(unauthorized.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(needs_reauth.clone()))?;
        registry.register(Box::new(refresh_orphans.clone()))?;
        registry.register(Box::new(refreshes.clone()))?;
        for trigger in Trigger::ALL {
            for outcome in Outcome::ALL {
                refreshes.with_label_values(&[trigger.as_str(), outcome.as_str()]);
            }
            refreshes.with_label_values(&[trigger.as_str(), ERROR_OUTCOME]);
        }
        for cause in ["deleted", "expired"] {
            runs_ended.with_label_values(&[cause]);
        }
        Ok(Metrics {
            registry,
            requests,
            token_echo,
            truncated,
            runs_started,
            runs_ended,
            unauthorized,
            request_seconds,
            inflight,
            needs_reauth,
            refresh_orphans,
            refreshes,
            sync: std::sync::Arc::new(std::sync::Mutex::new(())),
        })
    }

    /// Bring the refresh counters up to the refresher's own counts (called
    /// before each scrape).
    pub fn sync_refresh(&self, stats: &RefreshStats) {
        let Ok(_one) = self.sync.lock() else {
            return;
        };
        let orphans = stats.orphans.load(std::sync::atomic::Ordering::Relaxed);
        self.refresh_orphans
            .inc_by(orphans.saturating_sub(self.refresh_orphans.get()));
        for (trigger, outcome, n) in stats.outcomes() {
            let c = self
                .refreshes
                .with_label_values(&[trigger.as_str(), outcome]);
            c.inc_by(n.saturating_sub(c.get()));
        }
    }

    /// Count one tool request.
    pub fn request(&self, reason: Reason, method: Method) {
        self.requests
            .with_label_values(&[reason.as_str(), method.as_str()])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
