//! The HTTP surface: routes, authentication extractors, the one place that
//! turns errors into responses, and the security headers on every response.
//!
//! User routes take a bearer JWT ([`User`]); the runtime's routes take the
//! service token ([`Service`]). Both reject before the handler runs.
//! `GET /v1/conversations/{id}/ws` authenticates before any 101: a ticket in
//! `Sec-WebSocket-Protocol` (browsers) or a bearer token with no Origin
//! (other clients), then the conversation's org in the store, then the rate
//! limit. Socket handlers write the queue and read events; they hold no
//! handle to the worker or to any process.
//!
//! Must never: log or echo a token or a ticket; tell one org whether
//! another org's conversation exists; answer without the security headers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};

use crate::auth::{Claims, ServiceToken, TokenError, Verifier, bearer, sha256};
use crate::hub::{Event, Hub, Sessions};
use crate::ratelimit::RateLimiter;
use crate::store::{AckOutcome, Conversation, Store, Ticket};
use crate::ws::{self, SocketSession};

/// A ticket's lifetime.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// The subprotocol the server speaks.
pub const PROTOCOL: &str = "chokepoint.v1";
/// Prefix of the ticket entry in `Sec-WebSocket-Protocol`.
pub const TICKET_PREFIX: &str = "ticket.";
/// Largest request body (an event's data is at most 1 MiB as a frame).
pub const MAX_BODY: usize = 1024 * 1024;
/// Bytes an event frame adds around its data (`{"type":"event","seq":N,"data":}`).
const EVENT_FRAME_OVERHEAD: usize = 64;
/// Default queue lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Largest lease a claim may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// Everything the handlers share.
pub struct AppState {
    /// The API's store.
    pub store: Arc<dyn Store>,
    /// JWT verification.
    pub verifier: Verifier,
    /// The runtime's token.
    pub service: Option<ServiceToken>,
    /// Allowed browser origins.
    pub origins: HashSet<String>,
    /// Event fan-out.
    pub hub: Hub,
    /// Open sockets (for revocation).
    pub sessions: Sessions,
    /// Per-user limits on tickets and upgrades.
    pub limiter: RateLimiter,
    /// Open-socket slots (`--max-connections`).
    pub socket_slots: Arc<Semaphore>,
    /// Turns true on shutdown.
    pub stop: watch::Receiver<bool>,
    /// Development or production (`/readyz` reports it).
    pub mode: mode::Mode,
    /// The worker's address (`--worker`): `/readyz` is red while it does
    /// not answer ready.
    pub worker: Option<String>,
    /// Whether every dependency answered at the last check (every
    /// [`DEPENDENCY_CHECK_EVERY`]); while false every `/v1/` call is
    /// refused with `dependency_unavailable`.
    pub dependencies_ok: std::sync::atomic::AtomicBool,
    /// Calls refused with `dependency_unavailable` since start (also
    /// counted in `chokepoint_api_requests_total{status="503",reason="dependency_unavailable"}`).
    pub dependency_refusals: std::sync::atomic::AtomicU64,
    /// The API's Prometheus metrics (served on `--metrics-listen`).
    pub metrics: crate::metrics::Metrics,
}

/// How often the API re-checks its store and the worker.
pub const DEPENDENCY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Refuse every `/v1/` call while a dependency is down (fail closed,
/// counted); health endpoints stay open.
async fn require_dependencies(
    State(state): State<SharedState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    if req.uri().path().starts_with("/v1/")
        && !state
            .dependencies_ok
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        state
            .dependency_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ApiError::DependencyUnavailable);
    }
    Ok(next.run(req).await)
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Shared state.
pub type SharedState = Arc<AppState>;

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Every error the API answers, in one place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No valid credential (401).
    #[error("authentication required")]
    Unauthorized(&'static str),
    /// Authenticated but not allowed (403).
    #[error("forbidden")]
    Forbidden(&'static str),
    /// Not found, or another org's (404).
    #[error("not found")]
    NotFound,
    /// A malformed request (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A lease that does not hold (409).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Too many requests (429).
    #[error("too many requests")]
    RateLimited,
    /// Out of connection slots (503).
    #[error("server busy")]
    Busy,
    /// The store failed (503): fail closed.
    #[error("store unavailable")]
    Store,
    /// A dependency (the store, the worker) stopped answering after start
    /// (503, `dependency_unavailable`, as `netpolicy::Reason`): fail closed.
    #[error("dependency unavailable")]
    DependencyUnavailable,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", (*m).into()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", (*m).into()),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "not found".into()),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", (*m).into()),
            ApiError::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many tickets or connections; retry later".into(),
            ),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "connection limit reached; retry later".into(),
            ),
            ApiError::Store => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store is unavailable".into(),
            ),
            ApiError::DependencyUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                netpolicy::Reason::DependencyUnavailable.as_str(),
                netpolicy::Reason::DependencyUnavailable.explain().into(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        let mut resp = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // For `chokepoint_api_requests_total{reason}`: the same string as
        // the body's `error`.
        resp.extensions_mut().insert(ErrorCode(code));
        resp
    }
}

/// The `error` string of an answer made from an [`ApiError`] (a response
/// extension, read by the request counter).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Count every answer in `chokepoint_api_requests_total{status,reason}`.
async fn count_requests(
    State(state): State<SharedState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let reason = match resp.extensions().get::<ErrorCode>() {
        Some(&ErrorCode(code)) => code,
        None if status.is_client_error() || status.is_server_error() => "rejected",
        None => "ok",
    };
    state.metrics.answered(status, reason);
    resp
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::Store
    }
}

fn token_message(e: TokenError) -> &'static str {
    match e {
        TokenError::Missing => "send Authorization: Bearer <token>",
        TokenError::Revoked => "token revoked",
        _ => "invalid token",
    }
}

/// A verified user (JWT) whose tokens are not revoked.
#[derive(Debug, Clone)]
pub struct User(pub Claims);

async fn verify_user(state: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let Some(token) = token else {
        return Err(refuse_token(state, TokenError::Missing));
    };
    let claims = state
        .verifier
        .verify(token, now_secs())
        .map_err(|e| refuse_token(state, e))?;
    let iat = i64::try_from(claims.iat).unwrap_or(i64::MAX);
    if state
        .store
        .is_revoked(&claims.org, &claims.sub, iat)
        .await?
    {
        return Err(refuse_token(state, TokenError::Revoked));
    }
    Ok(claims)
}

/// Log and count a refused credential (one reason string for both).
pub fn refused(state: &AppState, why: crate::metrics::AuthRefusal) {
    tracing::info!(reason = why.as_str(), "credential refused");
    state.metrics.auth_refused(why);
}

fn refuse_token(state: &AppState, e: TokenError) -> ApiError {
    refused(state, crate::metrics::AuthRefusal::Token(e));
    ApiError::Unauthorized(token_message(e))
}

impl FromRequestParts<SharedState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        verify_user(state, &parts.headers).await.map(User)
    }
}

/// The agent runtime, authenticated by the service token.
#[derive(Debug, Clone, Copy)]
pub struct Service;

impl FromRequestParts<SharedState> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match (&state.service, presented) {
            (Some(token), Some(p)) if token.matches(p) => Ok(Service),
            _ => {
                refused(state, crate::metrics::AuthRefusal::ServiceToken);
                Err(ApiError::Unauthorized("service token required"))
            }
        }
    }
}

/// The user or the runtime (for reads both may do).
enum Caller {
    User(Claims),
    Service,
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    if let (Some(token), Some(p)) = (&state.service, presented) {
        if token.matches(p) {
            return Ok(Caller::Service);
        }
    }
    verify_user(state, headers).await.map(Caller::User)
}

/// The five security headers, on every response (one list for every binary).
pub use netpolicy::headers::SECURITY_HEADERS;

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Refuse any query string except `after=<n>` (event replay): a token or a
/// ticket never travels in a URL, where logs and referrers keep it.
async fn refuse_query(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    if let Some(q) = req.uri().query() {
        if parse_after(q).is_none() {
            return Err(ApiError::Unauthorized(
                "query parameters are refused: credentials go in the Authorization header or a ticket",
            ));
        }
    }
    Ok(next.run(req).await)
}

/// `after=<n>` and nothing else.
fn parse_after(query: &str) -> Option<i64> {
    let v = query.strip_prefix("after=")?;
    if v.is_empty() || v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The router with every route and layer.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/conversations", post(create_conversation))
        .route("/v1/conversations/{id}", get(get_conversation))
        .route("/v1/ws-ticket", post(mint_ticket))
        .route("/v1/conversations/{id}/ws", get(upgrade))
        .route("/v1/conversations/{id}/events", post(post_event))
        .route("/v1/queue/claim", post(claim))
        .route("/v1/queue/{id}/ack", post(ack))
        .route("/v1/revocations", post(revoke))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_dependencies,
        ))
        .layer(axum::middleware::from_fn(refuse_query))
        .layer(DefaultBodyLimit::max(MAX_BODY + 4096))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// The metrics listener's router: `GET /metrics` only (plain HTTP, on
/// `--metrics-listen`, never the public TLS port).
pub fn metrics_router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn metrics(State(state): State<SharedState>) -> Response {
    let m = &state.metrics;
    m.sessions
        .set(i64::try_from(state.sessions.len()).unwrap_or(i64::MAX));
    m.queue_depth.set(match state.store.queue_depth().await {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => {
            tracing::warn!(error = %e, "queue depth: store error");
            -1
        }
    });
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<SharedState>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let missing = missing_dependency(&state).await;
    let code = if missing.is_none() {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body =
        serde_json::json!({"status": missing.unwrap_or("ready"), "mode": state.mode.as_str()});
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// `None` when the store answers and the worker (when `--worker` is set)
/// answers ready; otherwise what is missing.
pub async fn missing_dependency(state: &AppState) -> Option<&'static str> {
    if state.store.ping().await.is_err() {
        return Some("store unavailable");
    }
    if let Some(target) = state.worker.clone() {
        let probed = tokio::task::spawn_blocking(move || {
            mode::probe_readyz(&target, crate::production::PROBE_TIMEOUT)
        })
        .await;
        if !matches!(probed, Ok(Ok(()))) {
            return Some("worker unavailable");
        }
    }
    None
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    use ring::rand::SecureRandom as _;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| {
            tracing::error!("the OS random number generator failed");
            ApiError::Store
        })?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A new random id with a prefix (`c_` conversations, `m_` messages).
fn new_id(prefix: &str) -> Result<String, ApiError> {
    Ok(format!("{prefix}{}", hex(&random_bytes::<16>()?)))
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

fn created(body: serde_json::Value) -> Response {
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn create_conversation(
    State(state): State<SharedState>,
    User(claims): User,
    body: Bytes,
) -> Result<Response, ApiError> {
    // An empty body or `{}`: nothing is configurable yet.
    if !body.is_empty() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        let _: Empty = json_body(&body)?;
    }
    let c = Conversation {
        id: new_id("c_")?,
        org: claims.org,
        created_by: claims.sub,
        created_at: now_ms(),
    };
    state.store.create_conversation(&c).await?;
    Ok(created(serde_json::json!({ "id": c.id })))
}

/// The conversation if `org` owns it; `NotFound` otherwise (the same answer
/// whether it is missing or another org's).
async fn owned(state: &AppState, id: &str, org: &str) -> Result<Conversation, ApiError> {
    match state.store.conversation(id).await? {
        Some(c) if c.org == org => Ok(c),
        _ => Err(ApiError::NotFound),
    }
}

async fn get_conversation(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = match caller(&state, &headers).await? {
        Caller::User(claims) => owned(&state, &id, &claims.org).await?,
        Caller::Service => state
            .store
            .conversation(&id)
            .await?
            .ok_or(ApiError::NotFound)?,
    };
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({ "id": c.id, "org": c.org, "created_by": c.created_by, "created_at": c.created_at }),
    ))
}

fn origin(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(header::ORIGIN) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| ApiError::Forbidden("origin not allowed")),
    }
}

fn check_origin(state: &AppState, origin: Option<&str>) -> Result<(), ApiError> {
    match origin {
        Some(o) if !state.origins.contains(o) => {
            refused(state, crate::metrics::AuthRefusal::OriginNotAllowed);
            Err(ApiError::Forbidden("origin not allowed"))
        }
        _ => Ok(()),
    }
}

fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn mint_ticket(
    State(state): State<SharedState>,
    headers: HeaderMap,
    User(claims): User,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        conversation: String,
    }
    let req: Req = json_body(&body)?;
    let origin = origin(&headers)?;
    check_origin(&state, origin.as_deref())?;
    if !state.limiter.allow(&claims.org, &claims.sub) {
        return Err(ApiError::RateLimited);
    }
    owned(&state, &req.conversation, &claims.org).await?;
    let raw = random_bytes::<32>()?;
    let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let now = now_ms();
    let ttl = i64::try_from(TICKET_TTL.as_millis()).unwrap_or(30_000);
    let record = Ticket {
        sub: claims.sub,
        org: claims.org,
        conversation: req.conversation,
        origin,
        token_exp: i64::try_from(claims.exp).unwrap_or(i64::MAX),
        token_iat: i64::try_from(claims.iat).unwrap_or(i64::MAX),
        expires_at: now.saturating_add(ttl),
    };
    state
        .store
        .insert_ticket(&sha256(ticket.as_bytes()), &record)
        .await?;
    // Opportunistic cleanup of long-expired tickets.
    if raw.first().is_some_and(|b| *b == 0) {
        let _ = state.store.sweep_tickets(now.saturating_sub(60_000)).await;
    }
    Ok(created(serde_json::json!({
        "ticket": ticket,
        "expires_at": rfc3339_ms(record.expires_at),
    })))
}

/// The entries of every `Sec-WebSocket-Protocol` header.
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Every check before a 101, in order: Origin, credential (ticket consumed
/// atomically, or bearer without Origin), revocation, rate, the
/// conversation's org in the store, a free slot.
async fn upgrade(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let origin = origin(&headers)?;
    check_origin(&state, origin.as_deref())?;
    let protocols = offered_protocols(&headers);
    let ticket = protocols
        .iter()
        .find_map(|p| p.strip_prefix(TICKET_PREFIX))
        .map(str::to_owned);
    use crate::metrics::AuthRefusal;
    let (sub, org, token_exp, token_iat) = match ticket {
        Some(ticket) => {
            if !protocols.iter().any(|p| p == PROTOCOL) {
                refused(&state, AuthRefusal::TicketWithoutProtocol);
                return Err(ApiError::Unauthorized(
                    "offer chokepoint.v1 with the ticket",
                ));
            }
            let Some(t) = state
                .store
                .consume_ticket(&sha256(ticket.as_bytes()), now_ms())
                .await?
            else {
                refused(&state, AuthRefusal::InvalidTicket);
                return Err(ApiError::Unauthorized("invalid ticket"));
            };
            if t.conversation != id {
                refused(&state, AuthRefusal::TicketOtherConversation);
                return Err(ApiError::Forbidden("ticket is for another conversation"));
            }
            if t.origin != origin {
                refused(&state, AuthRefusal::TicketOtherOrigin);
                return Err(ApiError::Forbidden("ticket is for another origin"));
            }
            if t.token_exp <= i64::try_from(now_secs()).unwrap_or(i64::MAX) {
                refused(&state, AuthRefusal::Token(TokenError::Expired));
                return Err(ApiError::Unauthorized("invalid token"));
            }
            if state.store.is_revoked(&t.org, &t.sub, t.token_iat).await? {
                refused(&state, AuthRefusal::Token(TokenError::Revoked));
                return Err(ApiError::Unauthorized("token revoked"));
            }
            (t.sub, t.org, t.token_exp, t.token_iat)
        }
        None => {
            if origin.is_some() {
                refused(&state, AuthRefusal::TicketRequired);
                return Err(ApiError::Forbidden(
                    "browsers connect with a ticket (POST /v1/ws-ticket)",
                ));
            }
            let c = verify_user(&state, &headers).await?;
            let exp = i64::try_from(c.exp).unwrap_or(i64::MAX);
            let iat = i64::try_from(c.iat).unwrap_or(i64::MAX);
            (c.sub, c.org, exp, iat)
        }
    };
    if !state.limiter.allow(&org, &sub) {
        return Err(ApiError::RateLimited);
    }
    // The org from the store, not from the client: another org's
    // conversation and a missing one get the same 403.
    match state.store.conversation(&id).await? {
        Some(c) if c.org == org => {}
        _ => {
            refused(&state, AuthRefusal::ConversationNotAllowed);
            return Err(ApiError::Forbidden("not allowed"));
        }
    }
    let permit = state
        .socket_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy)?;
    let after = uri.query().and_then(parse_after);
    let session = SocketSession {
        conversation: id,
        org,
        sub,
        token_exp,
        token_iat,
        after,
    };
    let ws = ws
        .protocols([PROTOCOL])
        .max_message_size(crate::frames::TRANSPORT_LIMIT)
        .max_frame_size(crate::frames::TRANSPORT_LIMIT)
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024);
    Ok(ws.on_upgrade(move |socket| async move {
        let _permit = permit;
        ws::run(state, socket, session).await;
    }))
}

async fn post_event(
    State(state): State<SharedState>,
    _svc: Service,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        data: serde_json::Value,
    }
    if body.len() > MAX_BODY {
        return Err(ApiError::BadRequest("event larger than 1 MiB".into()));
    }
    let req: Req = json_body(&body)?;
    if state.store.conversation(&id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    // Scrubbed before it is stored or sent.
    let scrubbed = scrub::scrub_json(&req.data);
    let data = serde_json::value::to_raw_value(&scrubbed)
        .map_err(|e| ApiError::BadRequest(format!("event data: {e}")))?;
    // The event frame around it must fit the 1 MiB frame limit.
    if data.get().len() + EVENT_FRAME_OVERHEAD > crate::frames::MAX_FRAME_BYTES {
        return Err(ApiError::BadRequest(
            "event data larger than 1 MiB as a frame".into(),
        ));
    }
    let topic = state.hub.topic(&id);
    let seq = {
        let _order = topic.write.lock().await;
        let seq = state.store.append_event(&id, data.get(), now_ms()).await?;
        let frame = crate::frames::ServerFrame::Event { seq, data: &data }.to_text();
        topic.send(Event {
            seq,
            frame: frame.into(),
        });
        seq
    };
    drop(topic);
    state.hub.release(&id);
    Ok(ok_json(
        StatusCode::ACCEPTED,
        serde_json::json!({ "seq": seq }),
    ))
}

async fn claim(
    State(state): State<SharedState>,
    _svc: Service,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Req {
        lease_secs: Option<u64>,
    }
    let req: Req = if body.is_empty() {
        Req::default()
    } else {
        json_body(&body)?
    };
    let lease = match req.lease_secs {
        None => DEFAULT_LEASE,
        Some(s) if s >= 1 && s <= MAX_LEASE.as_secs() => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "lease_secs must be between 1 and 3600".into(),
            ));
        }
    };
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(30_000);
    match state.store.claim(now_ms(), lease_ms).await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(m) => Ok(ok_json(
            StatusCode::OK,
            serde_json::json!({ "id": m.id, "conversation": m.conversation, "text": m.text }),
        )),
    }
}

async fn ack(
    State(state): State<SharedState>,
    _svc: Service,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.store.ack(&id, now_ms()).await? {
        AckOutcome::Acked => Ok(StatusCode::NO_CONTENT.into_response()),
        AckOutcome::NotLeased => Err(ApiError::Conflict(
            "the lease expired: the message went back to the queue",
        )),
        AckOutcome::Unknown => Err(ApiError::NotFound),
    }
}

async fn revoke(
    State(state): State<SharedState>,
    _svc: Service,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        org: String,
        user: Option<String>,
    }
    let req: Req = json_body(&body)?;
    if req.org.is_empty() || req.user.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::BadRequest(
            "org and user must not be empty".into(),
        ));
    }
    let sub = req.user.as_deref().unwrap_or("*");
    let now = i64::try_from(now_secs()).unwrap_or(i64::MAX);
    state.store.revoke(&req.org, sub, now).await?;
    let closed = state.sessions.revoke(&req.org, sub);
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({ "closed_sockets": closed }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_query() {
        assert_eq!(parse_after("after=12"), Some(12));
        assert_eq!(parse_after("after=0"), Some(0));
        assert_eq!(parse_after("after="), None);
        assert_eq!(parse_after("after=1&token=x"), None);
        assert_eq!(parse_after("token=x"), None);
        assert_eq!(parse_after("access_token=x"), None);
    }
}
