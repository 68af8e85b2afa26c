//! The pinned HTTP tool: one LLM-chosen request, decided, injected, made,
//! scrubbed.
//!
//! Order (the first step that refuses decides, with its [`Reason`]):
//! 1. the input: method, headers, body (`body` or `body_base64`, ≤ 10 MiB);
//! 2. the URL into a `Destination`; `netpolicy::decide` with
//!    `Source::Worker`; a write must also target a host of one of the run's
//!    integrations (the run's write set), not just the org's;
//! 3. the handle, if any: resolved by the broker (bound to this run and
//!    org), and used only when the host is one of its integration's hosts;
//! 4. resolution and `check_addrs` on every address, dial a validated
//!    address (TLS 1.2/1.3, SNI = host), HTTP/1.1;
//! 5. injection: caller credential headers stripped, the template header
//!    set; `Accept-Encoding: identity`;
//! 6. redirects: a write never follows one; a read follows at most
//!    [`MAX_REDIRECTS`], each hop decided and resolved again, the
//!    credential dropped on a hop to another host;
//! 7. the response: headers and body scrubbed (default rules, handles, and
//!    the injected token's live forms), cut at [`MAX_BODY`] or the deadline.
//!
//! Must never: put the token anywhere but the template header; return or
//! log an unscrubbed byte of a response; follow a redirect for a write.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use netpolicy::{Destination, Method, Policy, Reason, Request, Source};
use scrub::Scrubber;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::broker::{Broker, Injection, PresentedHandle};
use crate::client::PinnedClient;
use crate::store::RunRecord;

/// Largest request or response body.
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// Deadline for one tool request, redirects included.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Redirects a read may follow.
pub const MAX_REDIRECTS: usize = 5;

/// Headers that carry credentials: never taken from the caller.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "private-token",
    "x-goog-api-key",
    "x-amz-security-token",
];

/// Headers the client sets itself (framing, hop-by-hop, encoding).
const CLIENT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "accept-encoding",
    "expect",
];

/// `POST /v1/runs/{run_id}/requests` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRequest {
    /// The method.
    pub method: String,
    /// Absolute https (or http for reads) URL.
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body.
    #[serde(default)]
    pub body: Option<String>,
    /// A binary body, base64.
    #[serde(default)]
    pub body_base64: Option<String>,
    /// A credential handle (`cph_…`).
    #[serde(default)]
    pub credential: Option<String>,
}

/// The answer when the request was made.
#[derive(Debug, Serialize)]
pub struct ToolResponse {
    /// The upstream status.
    pub status: u16,
    /// Response headers (scrubbed; repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// The body as text (scrubbed; invalid UTF-8 replaced).
    pub body: String,
    /// Why it was allowed (or `redirect_not_followed`).
    pub reason: &'static str,
    /// Cut at the size limit or the deadline.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// What the request did, for the audit line and metrics.
#[derive(Debug, Default)]
pub struct Trace {
    /// The host of the first hop, if the URL parsed.
    pub host: Option<String>,
    /// The injected credential's integration.
    pub integration: Option<String>,
    /// The last upstream status.
    pub status: u16,
    /// Body bytes sent.
    pub bytes_up: u64,
    /// Body bytes received (before scrubbing).
    pub bytes_down: u64,
    /// The token came back and was scrubbed.
    pub token_echo: bool,
    /// The response was cut.
    pub truncated: bool,
    /// A redirect came back unfollowed.
    pub reason_redirect: bool,
}

/// The parts a tool request needs.
pub struct Tool<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// The broker.
    pub broker: &'a Broker,
    /// The pinned client.
    pub client: &'a PinnedClient,
}

fn parse_method(m: &str) -> Method {
    Method::parse(m)
}

/// Decode and bound the body.
fn body_of(req: &ToolRequest) -> Result<Bytes, Reason> {
    let body = match (&req.body, &req.body_base64) {
        (Some(_), Some(_)) => return Err(Reason::MalformedRequest),
        (Some(t), None) => Bytes::from(t.clone().into_bytes()),
        (None, Some(b)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| Reason::MalformedRequest)?,
        ),
        (None, None) => Bytes::new(),
    };
    if body.len() > MAX_BODY {
        return Err(Reason::RequestTooLarge);
    }
    Ok(body)
}

/// The caller's headers, validated, minus credential and client-owned ones.
fn caller_headers(req: &ToolRequest) -> Result<Vec<(HeaderName, HeaderValue)>, Reason> {
    let mut out = Vec::with_capacity(req.headers.len());
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Reason::MalformedRequest)?;
        let value = HeaderValue::from_str(value).map_err(|_| Reason::MalformedRequest)?;
        let n = name.as_str();
        if CREDENTIAL_HEADERS.contains(&n) || CLIENT_HEADERS.contains(&n) {
            continue;
        }
        out.push((name, value));
    }
    Ok(out)
}

/// The credential header of an injection (marked sensitive).
fn auth_header(inj: &Injection) -> Result<(HeaderName, HeaderValue), Reason> {
    let name = HeaderName::from_bytes(inj.template.name.as_bytes())
        .map_err(|_| Reason::InvalidCredential)?;
    let rendered = inj
        .template
        .render(&inj.token)
        .map_err(|_| Reason::InvalidCredential)?;
    let mut v = HeaderValue::from_str(&rendered).map_err(|_| Reason::InvalidCredential)?;
    v.set_sensitive(true);
    Ok((name, v))
}

/// The Host header for a destination.
fn host_header(dest: &Destination) -> String {
    let default = match dest.scheme {
        netpolicy::Scheme::Https => 443,
        _ => 80,
    };
    if dest.port == default {
        dest.host.to_string()
    } else {
        dest.authority()
    }
}

impl Tool<'_> {
    /// Steps 1 to 3: everything decided before a socket is opened.
    fn decide(
        &self,
        run: &RunRecord,
        method: Method,
        url: &str,
    ) -> Result<netpolicy::ParsedUrl, Reason> {
        let parsed = Destination::parse_url(url).map_err(|e| e.reason())?;
        let decision = netpolicy::decide(
            self.policy,
            &Request {
                source: Source::Worker,
                org: &run.org,
                method,
                dest: &parsed.dest,
            },
        );
        if !decision.is_allow() {
            return Err(decision.reason);
        }
        if decision.reason == Reason::IntegrationWrite {
            let org = self.policy.org_entry(&run.org).ok_or(Reason::UnknownOrg)?;
            let in_write_set = run
                .integrations
                .iter()
                .any(|i| org.integration_has_host(i, &parsed.dest.host));
            if !in_write_set {
                return Err(Reason::WriteNotIntegration);
            }
        }
        Ok(parsed)
    }

    /// Run one tool request for an alive run, with the rows of the handle
    /// it presents read with the run ([`Broker::begin_request`]). `trace`
    /// is filled as it goes.
    pub async fn execute(
        &self,
        run: &RunRecord,
        presented: PresentedHandle,
        req: &ToolRequest,
        trace: &mut Trace,
    ) -> Result<ToolResponse, Reason> {
        let deadline = Instant::now() + DEADLINE;
        let method = parse_method(&req.method);
        let body = body_of(req)?;
        if matches!(method, Method::Get | Method::Head) && !body.is_empty() {
            return Err(Reason::MalformedRequest);
        }
        let headers = caller_headers(req)?;
        let mut parsed = match Destination::parse_url(&req.url) {
            Ok(p) => {
                trace.host = Some(p.dest.host.to_text());
                self.decide(run, method, &req.url)?
            }
            Err(e) => return Err(e.reason()),
        };
        let is_write = !matches!(method, Method::Get | Method::Head);

        let mut injection: Option<Injection> = None;
        if let Some(handle) = &req.credential {
            let inj = self.broker.resolve_read(run, presented, handle).await?;
            let org = self.policy.org_entry(&run.org).ok_or(Reason::UnknownOrg)?;
            // A token travels only over https, only to its integration's hosts.
            if parsed.dest.scheme != netpolicy::Scheme::Https
                || !org.integration_has_host(&inj.integration, &parsed.dest.host)
            {
                return Err(Reason::CredentialHostMismatch);
            }
            trace.integration = Some(inj.integration.clone());
            injection = Some(inj);
        }
        let mut auth = match &injection {
            Some(inj) => Some(auth_header(inj)?),
            None => None,
        };
        let mut scrubber = match &injection {
            Some(inj) => inj.scrubber.clone(),
            None => Scrubber::new(),
        };
        // A 401 to an OAuth token is retried once with a refreshed token.
        let mut retried_401 = false;
        let first_host = parsed.dest.host.clone();
        let mut url = req.url.clone();
        let mut method_now = method;
        let mut body_now = body;
        let mut hops = 0usize;
        loop {
            let addrs =
                tokio::time::timeout_at(deadline, self.client.resolve(self.policy, &parsed.dest))
                    .await
                    .map_err(|_| Reason::UpstreamTimeout)??;
            let mut builder = http::Request::builder()
                .method(method_now.as_str())
                .uri(parsed.origin_form.as_str())
                .header(http::header::HOST, host_header(&parsed.dest))
                .header(http::header::ACCEPT_ENCODING, "identity");
            for (n, v) in &headers {
                builder = builder.header(n, v);
            }
            if !req
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("user-agent"))
            {
                builder = builder.header(http::header::USER_AGENT, "chokepoint-worker");
            }
            // The credential goes only to the host it was checked for, over https.
            let mut sent_credential = false;
            if let Some((n, v)) = &auth {
                if parsed.dest.host == first_host && parsed.dest.scheme == netpolicy::Scheme::Https
                {
                    builder = builder.header(n, v.clone());
                    sent_credential = true;
                }
            }
            trace.bytes_up += body_now.len() as u64;
            let request = builder
                .body(Full::new(body_now.clone()))
                .map_err(|_| Reason::MalformedRequest)?;
            let resp =
                tokio::time::timeout_at(deadline, self.client.send(&parsed.dest, &addrs, request))
                    .await
                    .map_err(|_| Reason::UpstreamTimeout)??;
            let status = resp.status();
            trace.status = status.as_u16();
            if status == http::StatusCode::UNAUTHORIZED && sent_credential && !retried_401 {
                retried_401 = true;
                if let (Some(used), Some(handle)) = (&injection, &req.credential) {
                    if used.refreshing {
                        let fresh = tokio::time::timeout_at(
                            deadline,
                            self.broker.after_unauthorized(run, handle, used),
                        )
                        .await
                        .unwrap_or(Ok(None))?;
                        if let Some(fresh) = fresh {
                            // The body is in memory: the same request again,
                            // with the new token; the answer is scrubbed of
                            // both tokens.
                            drop(resp);
                            auth = Some(auth_header(&fresh)?);
                            scrubber = scrub::Scrubber::with_live_secrets([
                                secrecy::ExposeSecret::expose_secret(&used.token),
                                secrecy::ExposeSecret::expose_secret(&fresh.token),
                            ]);
                            injection = Some(fresh);
                            continue;
                        }
                    }
                }
            }
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if status.is_redirection()
                && location.is_some()
                && status != http::StatusCode::NOT_MODIFIED
            {
                if is_write {
                    return self
                        .finish(
                            resp,
                            &scrubber,
                            deadline,
                            Reason::RedirectNotFollowed,
                            trace,
                        )
                        .await;
                }
                if hops >= MAX_REDIRECTS {
                    return self
                        .finish(
                            resp,
                            &scrubber,
                            deadline,
                            Reason::RedirectNotFollowed,
                            trace,
                        )
                        .await;
                }
                hops += 1;
                let next = url::Url::parse(&url)
                    .and_then(|base| base.join(location.as_deref().unwrap_or("")))
                    .map_err(|_| Reason::InvalidTarget)?;
                url = next.to_string();
                if status == http::StatusCode::SEE_OTHER {
                    method_now = Method::Get;
                }
                body_now = Bytes::new();
                parsed = self.decide(run, method_now, &url)?;
                continue;
            }
            let reason = if is_write {
                Reason::IntegrationWrite
            } else {
                Reason::ReadPublic
            };
            return self.finish(resp, &scrubber, deadline, reason, trace).await;
        }
    }

    /// Read, bound and scrub the response.
    async fn finish(
        &self,
        resp: http::Response<hyper::body::Incoming>,
        scrubber: &Scrubber,
        deadline: Instant,
        reason: Reason,
        trace: &mut Trace,
    ) -> Result<ToolResponse, Reason> {
        let (head, mut body) = resp.into_parts();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &head.headers {
            let text = String::from_utf8_lossy(value.as_bytes());
            let clean = scrubber.scrub(&text).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&clean);
                })
                .or_insert(clean);
        }
        let mut stream = scrubber.stream();
        let mut out = String::new();
        let mut received = 0usize;
        // A body encoded despite `Accept-Encoding: identity` cannot be
        // scrubbed as text: it is withheld (fail closed), and flagged.
        let encoded = head
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            trace.truncated = true;
        }
        loop {
            if encoded {
                break;
            }
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    trace.truncated = true;
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    // The upstream broke off mid-body: what arrived is returned, flagged.
                    trace.truncated = true;
                    break;
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let room = MAX_BODY - received;
            let take = data.len().min(room);
            received += take;
            out.push_str(&stream.push_bytes(data.get(..take).unwrap_or_default()));
            if take < data.len() {
                trace.truncated = true;
                break;
            }
        }
        out.push_str(&stream.flush());
        trace.bytes_down = received as u64;
        let mark = format!("[REDACTED:{}]", scrub::LIVE_LABEL);
        let echo = out.contains(&mark) || headers.values().any(|v| v.contains(&mark));
        trace.token_echo = echo;
        trace.reason_redirect = reason == Reason::RedirectNotFollowed;
        Ok(ToolResponse {
            status: head.status.as_u16(),
            headers,
            body: out,
            reason: reason.as_str(),
            truncated: trace.truncated,
        })
    }
}
