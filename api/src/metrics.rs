//! Prometheus metrics of `chokepoint-api`, served on their own plain-HTTP
//! listener (`--metrics-listen`, default 127.0.0.1:9092), never on the
//! public TLS port.
//!
//! - `chokepoint_api_requests_total{status,reason}`: every HTTP answer,
//!   by status code and by the `error` string the client got in the body
//!   (`ok` for a success; `rejected` for a request the framework refused
//!   before a handler ran, e.g. a bad upgrade header);
//! - `chokepoint_api_auth_refusals_total{reason}`: every credential
//!   refused, by the same reason the log line carries ([`AuthRefusal`]);
//! - `chokepoint_api_websocket_sessions`: open sockets;
//! - `chokepoint_api_queue_depth`: messages in the durable queue not yet
//!   acked (read from the store at each scrape; -1 when the store did not
//!   answer);
//! - `chokepoint_api_queue_write_errors_total`: client messages the store
//!   refused (the socket is closed with 1011, the client resends).
//!
//! Label values come only from fixed `&'static str` sets, so the number of
//! series is bounded. Must never: use a user, org, conversation, token,
//! path or any client text as a label value.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Why a credential was refused: the `reason` label of
/// `chokepoint_api_auth_refusals_total` and the `reason` field of the
/// `credential refused` log line (the client always gets the same
/// `unauthorized`/`forbidden`, never which check failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRefusal {
    /// A bearer token refused by [`crate::auth::Verifier`] or revoked.
    Token(crate::auth::TokenError),
    /// The runtime's service token missing or wrong.
    ServiceToken,
    /// An `Origin` not in `--allowed-origin`.
    OriginNotAllowed,
    /// A browser (an `Origin`) upgrading without a ticket.
    TicketRequired,
    /// A ticket offered without the `chokepoint.v1` subprotocol.
    TicketWithoutProtocol,
    /// A ticket unknown, already used or expired.
    InvalidTicket,
    /// A ticket minted for another conversation.
    TicketOtherConversation,
    /// A ticket minted for another Origin.
    TicketOtherOrigin,
    /// The conversation is missing or another org's (upgrade).
    ConversationNotAllowed,
}

impl AuthRefusal {
    /// The label value (snake_case, fixed).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthRefusal::Token(e) => e.as_str(),
            AuthRefusal::ServiceToken => "bad_service_token",
            AuthRefusal::OriginNotAllowed => "origin_not_allowed",
            AuthRefusal::TicketRequired => "ticket_required",
            AuthRefusal::TicketWithoutProtocol => "ticket_without_protocol",
            AuthRefusal::InvalidTicket => "invalid_ticket",
            AuthRefusal::TicketOtherConversation => "ticket_other_conversation",
            AuthRefusal::TicketOtherOrigin => "ticket_other_origin",
            AuthRefusal::ConversationNotAllowed => "conversation_not_allowed",
        }
    }
}

/// Every metric of the API.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `chokepoint_api_requests_total{status,reason}`.
    pub requests: IntCounterVec,
    /// `chokepoint_api_auth_refusals_total{reason}`.
    pub auth_refusals: IntCounterVec,
    /// `chokepoint_api_websocket_sessions`.
    pub sessions: IntGauge,
    /// `chokepoint_api_queue_depth`.
    pub queue_depth: IntGauge,
    /// `chokepoint_api_queue_write_errors_total`.
    pub queue_write_errors: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "chokepoint_api_requests_total",
                "HTTP answers of the API, by status code and the error the client got (ok for a success).",
            ),
            &["status", "reason"],
        )?;
        let auth_refusals = IntCounterVec::new(
            Opts::new(
                "chokepoint_api_auth_refusals_total",
                "Credentials refused (bearer token, service token, ticket, origin), by reason.",
            ),
            &["reason"],
        )?;
        let sessions = IntGauge::new(
            "chokepoint_api_websocket_sessions",
            "Open WebSocket sessions.",
        )?;
        let queue_depth = IntGauge::new(
            "chokepoint_api_queue_depth",
            "Messages in the durable queue not yet acked (-1: the store did not answer).",
        )?;
        let queue_write_errors = IntCounter::new(
            "chokepoint_api_queue_write_errors_total",
            "Client messages the store failed to commit to the queue.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(auth_refusals.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(queue_write_errors.clone()))?;
        // The series alerts and dashboards look for exist from the start.
        requests.with_label_values(&["503", "dependency_unavailable"]);
        requests.with_label_values(&["401", "unauthorized"]);
        Ok(Metrics {
            registry,
            requests,
            auth_refusals,
            sessions,
            queue_depth,
            queue_write_errors,
        })
    }

    /// Count one refused credential.
    pub fn auth_refused(&self, why: AuthRefusal) {
        self.auth_refusals.with_label_values(&[why.as_str()]).inc();
    }

    /// Count one answer.
    pub fn answered(&self, status: http::StatusCode, reason: &'static str) {
        self.requests
            .with_label_values(&[status.as_str(), reason])
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
