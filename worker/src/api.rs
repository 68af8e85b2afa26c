//! The worker's HTTP API (JSON over HTTP/1.1), and the one place that turns
//! a [`Reason`] into a response.
//!
//! - `POST /v1/runs` `{"org","integrations","ttl_secs"}` → `201 {"run_id","expires_at","handles"}`
//! - `POST /v1/runs/{run_id}/requests` (a [`ToolRequest`]) → `200` (a [`ToolResponse`]) or a refusal
//! - `POST /v1/runs/{run_id}/renew` → `200 {"run_id","expires_at"}`
//! - `DELETE /v1/runs/{run_id}` → `204`
//! - `GET /healthz`, `GET /readyz` (no token), `GET /metrics`
//!
//! Every `/v1/` call and `/metrics` needs `Authorization: Bearer <service
//! token>` (compared in constant time); anything else is `401`. A refusal is
//! `{"reason":"<snake_case>","message":"…"}` with the status of
//! [`status_of`]. Bad input is a 4xx, never a 500 or a panic.
//!
//! Must never: echo a request body, header or token in a response or log;
//! return an unscrubbed message.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method as HttpMethod, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use netpolicy::{Method, Policy, Reason};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::audit::{AuditLog, Record};
use crate::broker::Broker;
use crate::client::PinnedClient;
use crate::metrics::Metrics;
use crate::tool::{MAX_BODY, Tool, ToolRequest, Trace};

/// Largest API request body: a 10 MiB body in base64, plus the envelope.
pub const MAX_API_BODY: usize = MAX_BODY / 3 * 4 + 64 * 1024;

/// Everything a request handler needs.
pub struct App {
    /// The policy.
    pub policy: Arc<Policy>,
    /// The broker.
    pub broker: Broker,
    /// The pinned client (shared with the token endpoint client).
    pub client: Arc<PinnedClient>,
    /// Metrics.
    pub metrics: Metrics,
    /// The audit log.
    pub audit: AuditLog,
    /// SHA-256 of the service token.
    pub token_digest: [u8; 32],
    /// Development or production (`/readyz` reports it).
    pub mode: mode::Mode,
    /// The egress proxy's admin address, probed by `/readyz`.
    pub proxy_admin: Option<String>,
    /// Whether every dependency answered at the last check (every
    /// [`DEPENDENCY_CHECK_EVERY`]): while false, every call but the health
    /// endpoints is refused with `dependency_unavailable` (fail closed).
    pub dependencies_ok: std::sync::atomic::AtomicBool,
}

/// How often the worker re-checks its store and the proxy.
pub const DEPENDENCY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The HTTP status of a refusal.
pub fn status_of(reason: Reason) -> StatusCode {
    match reason {
        Reason::Unauthorized => StatusCode::UNAUTHORIZED,
        Reason::UnknownRun => StatusCode::NOT_FOUND,
        Reason::MalformedRequest | Reason::InvalidTarget => StatusCode::BAD_REQUEST,
        Reason::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Reason::DependencyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Reason::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        Reason::UpstreamConnectFailed => StatusCode::BAD_GATEWAY,
        Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        Reason::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::FORBIDDEN,
    }
}

/// SHA-256 digest (for the constant-time token comparison).
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

#[derive(Serialize)]
struct Refusal<'a> {
    reason: &'a str,
    message: &'a str,
}

/// A refusal with this reason and the reason's sentence (plus `detail`,
/// scrubbed, when there is one).
pub fn refuse(reason: Reason, detail: Option<&str>) -> Response<Full<Bytes>> {
    let message = match detail {
        Some(d) => format!("{}: {}", reason.explain(), scrub::scrub_str(d)),
        None => reason.explain().to_owned(),
    };
    json(
        status_of(reason),
        &Refusal {
            reason: reason.as_str(),
            message: &message,
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    org: String,
    integrations: Vec<String>,
    #[serde(default)]
    ttl_secs: Option<i64>,
}

#[derive(Serialize)]
struct RunCreated<'a> {
    run_id: &'a str,
    expires_at: String,
    handles: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Renewed<'a> {
    run_id: &'a str,
    expires_at: String,
}

/// Parse a JSON body strictly; the error is the (unscrubbed) parser message.
fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON body: {e}"))
}

impl App {
    /// `None` when every dependency answers: the store, and the egress
    /// proxy's `/readyz` when `--proxy-admin` is set. Otherwise what is
    /// missing (`store unavailable` or `proxy unavailable`).
    pub async fn missing_dependency(&self) -> Option<&'static str> {
        if self.broker.store().ping().await.is_err() {
            return Some("store unavailable");
        }
        if let Some(target) = self.proxy_admin.clone() {
            let probed = tokio::task::spawn_blocking(move || {
                mode::probe_readyz(&target, crate::production::PROBE_TIMEOUT)
            })
            .await;
            if !matches!(probed, Ok(Ok(()))) {
                return Some("proxy unavailable");
            }
        }
        None
    }

    fn authorized(&self, req: &http::Request<Incoming>) -> bool {
        let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
            return false;
        };
        let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        digest(token).ct_eq(&self.token_digest).into()
    }

    /// Answer one request: route it, then set the security headers every
    /// chokepoint endpoint sends on every response.
    pub async fn handle(
        self: Arc<Self>,
        req: http::Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let mut resp = self.route(req).await?;
        let headers = resp.headers_mut();
        for (name, value) in netpolicy::headers::SECURITY_HEADERS {
            headers.insert(name, http::HeaderValue::from_static(value));
        }
        Ok(resp)
    }

    /// Route one request.
    async fn route(
        self: Arc<Self>,
        req: http::Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&HttpMethod::GET, "/healthz") => {
                return Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})));
            }
            (&HttpMethod::GET, "/readyz") => {
                let missing = self.missing_dependency().await;
                let status = if missing.is_none() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return Ok(json(
                    status,
                    &serde_json::json!({
                        "status": missing.unwrap_or("ready"),
                        "mode": self.mode.as_str(),
                    }),
                ));
            }
            _ => {}
        }
        if !self.authorized(&req) {
            self.metrics.unauthorized.inc();
            return Ok(refuse(Reason::Unauthorized, None));
        }
        if method == HttpMethod::GET && path == "/metrics" {
            if let Some(r) = self.broker.refresher() {
                self.metrics.sync_refresh(&r.stats);
            }
            // A store error keeps the last value.
            if let Ok(n) = self.broker.store().count_needs_reauth().await {
                self.metrics.needs_reauth.set(n);
            }
            let mut r = Response::new(Full::new(Bytes::from(self.metrics.render())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Ok(r);
        }
        if !self
            .dependencies_ok
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.metrics
                .request(Reason::DependencyUnavailable, Method::Other);
            return Ok(refuse(Reason::DependencyUnavailable, None));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let resp = match (&method, segments.as_slice()) {
            (&HttpMethod::POST, ["", "v1", "runs"]) => match read_body(req).await {
                Ok(b) => self.create_run(&b).await,
                Err(r) => r,
            },
            (&HttpMethod::POST, ["", "v1", "runs", run, "requests"]) => {
                let run = (*run).to_owned();
                match read_body(req).await {
                    Ok(b) => self.tool_request(&run, &b).await,
                    Err(r) => r,
                }
            }
            (&HttpMethod::POST, ["", "v1", "runs", run, "renew"]) => {
                match self.broker.renew_run(run, crate::unix_now()).await {
                    Ok(r) => json(
                        StatusCode::OK,
                        &Renewed {
                            run_id: &r.id,
                            expires_at: crate::rfc3339_secs(r.expires_at),
                        },
                    ),
                    Err(reason) => refuse(reason, None),
                }
            }
            (&HttpMethod::DELETE, ["", "v1", "runs", run]) => {
                match self.broker.end_run(run, crate::unix_now()).await {
                    Ok(()) => {
                        self.metrics
                            .runs_ended
                            .with_label_values(&["deleted"])
                            .inc();
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        r
                    }
                    Err(reason) => refuse(reason, None),
                }
            }
            _ => {
                let mut r = refuse(Reason::MalformedRequest, Some("no such endpoint"));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
        Ok(resp)
    }

    async fn create_run(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let req: CreateRun = match parse(body) {
            Ok(r) => r,
            Err(detail) => return refuse(Reason::MalformedRequest, Some(&detail)),
        };
        match self
            .broker
            .start_run(
                &self.policy,
                &req.org,
                &req.integrations,
                req.ttl_secs,
                crate::unix_now(),
            )
            .await
        {
            Ok(started) => {
                self.metrics.runs_started.inc();
                json(
                    StatusCode::CREATED,
                    &RunCreated {
                        run_id: &started.run.id,
                        expires_at: crate::rfc3339_secs(started.run.expires_at),
                        handles: &started.handles,
                    },
                )
            }
            Err(reason) => refuse(reason, None),
        }
    }

    async fn tool_request(&self, run_id: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let started = Instant::now();
        self.metrics.inflight.inc();
        let mut record = Record {
            run: run_id.to_owned(),
            method: Method::Other.as_str(),
            ..Record::default()
        };
        let mut trace = Trace::default();
        // Audit fields (org, run, integration, host) are scrubbed with the
        // default rules, which include every well-formed handle.
        let scrubber = scrub::Scrubber::new();
        let mut method = Method::Other;
        let outcome: Result<Response<Full<Bytes>>, Reason> = async {
            let req: ToolRequest =
                serde_json::from_slice(body).map_err(|_| Reason::MalformedRequest)?;
            method = Method::parse(&req.method);
            let now = crate::unix_now();
            let begun = self
                .broker
                .begin_request(run_id, req.credential.as_deref(), now)
                .await?;
            let run = begun.run;
            record.org.clone_from(&run.org);
            let limiter = self.broker.limiter(&run.id);
            let _permit = limiter
                .try_acquire_owned()
                .map_err(|_| Reason::Overloaded)?;
            let tool = Tool {
                policy: &self.policy,
                broker: &self.broker,
                client: &self.client,
            };
            let resp = tool.execute(&run, begun.handle, &req, &mut trace).await?;
            Ok(json(StatusCode::OK, &resp))
        }
        .await;
        let (resp, reason) = match outcome {
            Ok(r) => {
                let reason = if trace.status != 0 && trace.reason_redirect {
                    Reason::RedirectNotFollowed
                } else if method_is_write(method) {
                    Reason::IntegrationWrite
                } else {
                    Reason::ReadPublic
                };
                (r, reason)
            }
            Err(Reason::MalformedRequest) if method == Method::Other && trace.host.is_none() => {
                // The body did not parse: say why (scrubbed).
                let detail = parse::<ToolRequest>(body).err();
                (
                    refuse(Reason::MalformedRequest, detail.as_deref()),
                    Reason::MalformedRequest,
                )
            }
            Err(reason) => (refuse(reason, None), reason),
        };
        if trace.token_echo {
            self.metrics.token_echo.inc();
        }
        if trace.truncated {
            self.metrics.truncated.inc();
        }
        self.metrics.request(reason, method);
        record.method = method.as_str();
        record.reason = reason.as_str();
        record.host = trace.host;
        record.integration = trace.integration;
        record.status = trace.status;
        record.bytes_up = trace.bytes_up;
        record.bytes_down = trace.bytes_down;
        record.token_echo = trace.token_echo;
        record.truncated = trace.truncated;
        let elapsed = started.elapsed();
        record.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.metrics.request_seconds.observe(elapsed.as_secs_f64());
        self.metrics.inflight.dec();
        self.audit.write(&scrubber, &record);
        resp
    }
}

fn method_is_write(m: Method) -> bool {
    !matches!(m, Method::Get | Method::Head)
}

/// Read a body up to [`MAX_API_BODY`]; 413 past it.
async fn read_body(req: http::Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), MAX_API_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(refuse(Reason::RequestTooLarge, None))
        }
        Err(_) => Err(refuse(
            Reason::MalformedRequest,
            Some("the body could not be read"),
        )),
    }
}
