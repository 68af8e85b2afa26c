//! The Pingora side of plain-HTTP forwarding (`ProxyHttp`).
//!
//! Every request reaching this code was already read, checked and decided
//! by [`crate::server`], which hands over a [`Plan`] (destination, validated
//! addresses) through the connection user context. This module only:
//! builds the peer from a validated `SocketAddr` (never a hostname), tries
//! the next validated address when one fails to connect (never resolving
//! again), isolates pooled upstream connections per host (`group_key`),
//! rewrites the request to origin-form with the right Host and without
//! hop-by-hop / `Proxy-*` headers, renders upstream failures through
//! [`crate::deny`], and audits. Must never: forward a request without a plan.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use netpolicy::{Method, Reason, Verdict};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::audit::Record;
use crate::state::{Plan, SharedRef};

/// Request headers never forwarded (hop-by-hop, RFC 9110 §7.6.1, plus
/// proxy credentials). Every `Proxy-*` header is dropped too.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The forwarder.
pub(crate) struct Forward {
    shared: SharedRef,
}

impl Forward {
    /// A forwarder over the shared state.
    pub(crate) fn new(shared: SharedRef) -> Forward {
        Forward { shared }
    }
}

/// Per-request state.
#[derive(Default)]
pub(crate) struct Ctx {
    plan: Option<Plan>,
    next_addr: usize,
    connect_started: Option<Instant>,
    dialed: Option<SocketAddr>,
    failure: Option<Reason>,
    status: u16,
}

/// Names of the headers to drop from `req`: the fixed list, every
/// `Proxy-*`, and every header named in `Connection`.
pub(crate) fn headers_to_strip(req: &RequestHeader) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in req.headers.get_all(http::header::CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',') {
            if let Ok(t) = std::str::from_utf8(t) {
                let t = t.trim().to_ascii_lowercase();
                if !t.is_empty() {
                    out.push(t);
                }
            }
        }
    }
    for name in req.headers.keys() {
        let n = name.as_str();
        if n.starts_with("proxy-") || HOP_BY_HOP.contains(&n) {
            out.push(n.to_owned());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A stable per-host key for the upstream connection pool (the host as
/// parsed, name or address, and the port; no text is built for it).
fn group_key(plan: &Plan) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    plan.dest.host.hash(&mut h);
    plan.dest.port.hash(&mut h);
    h.finish()
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// No downstream modules. Pingora's default adds its response
    /// compression module, disabled (level 0), which still builds a context
    /// and runs its filters on every request; the proxy never compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        prev_ctx: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(plan) = prev_ctx.downcast::<Plan>() {
            ctx.plan = Some(*plan);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx.plan.is_none() {
            // Fail closed: nothing reaches upstream without a decision.
            let d = crate::deny::deny(Reason::InternalError, Method::Other, None);
            ctx.failure = Some(Reason::InternalError);
            write_denial(session, &d).await;
            ctx.status = d.status;
            return Ok(true);
        }
        // Never keep a plan-less connection: the next request on it goes
        // back through the head reader (server.rs) anyway.
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(plan) = ctx.plan.as_ref() else {
            return Err(Error::explain(ErrorType::InternalError, "no plan"));
        };
        let Some(&addr) = plan.addrs.get(ctx.next_addr) else {
            return Err(Error::explain(
                ErrorType::ConnectError,
                "no validated address left",
            ));
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.group_key = group_key(plan);
        peer.options.connection_timeout = Some(self.shared.limits.connect_timeout);
        // Each upstream read or write, so a silent upstream cannot hold a
        // connection forever (504 upstream_timeout).
        peer.options.read_timeout = Some(self.shared.limits.upstream_idle);
        peer.options.write_timeout = Some(self.shared.limits.upstream_idle);
        ctx.connect_started = Some(Instant::now());
        ctx.dialed = Some(addr);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (false, Some(t)) = (reused, ctx.connect_started) {
            self.shared
                .metrics
                .upstream_connect
                .observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let timeout = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout
        );
        tracing::debug!(addr = ?peer.address(), error = %e, "upstream connect failed");
        ctx.failure = Some(match (timeout, ctx.failure) {
            // Any non-timeout failure makes the summary "connect failed".
            (true, None | Some(Reason::UpstreamTimeout)) => Reason::UpstreamTimeout,
            _ => Reason::UpstreamConnectFailed,
        });
        let more = ctx
            .plan
            .as_ref()
            .is_some_and(|p| ctx.next_addr + 1 < p.addrs.len());
        if more {
            ctx.next_addr += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(plan) = ctx.plan.as_ref() else {
            return Err(Error::explain(ErrorType::InternalError, "no plan"));
        };
        for name in headers_to_strip(req) {
            req.remove_header(name.as_str());
        }
        req.set_raw_path(plan.origin_form.as_bytes())?;
        req.insert_header(http::header::HOST, plan.host_header.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.failure = Some(Reason::UpgradeDenied);
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "upstream switched protocols",
            ));
        }
        // Only the proxy speaks `X-Egress-Error`: an origin must not be able
        // to make its answer look like a proxy denial.
        let _ = resp.remove_header("x-egress-error");
        ctx.failure = None;
        ctx.status = resp.status.as_u16();
        Ok(())
    }

    /// What Pingora's own error and retry log lines name the request by.
    /// Its default is the request line, query included, which may carry a
    /// token; this is the folded method and `host:port` only, scrubbed.
    fn request_summary(&self, _session: &Session, ctx: &Ctx) -> String {
        match ctx.plan.as_ref() {
            Some(p) => {
                let line = format!("{} {}", p.method.as_str(), p.dest.authority());
                crate::audit::scrub(&line).into_owned()
            }
            None => String::from("request without a plan"),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if session.response_written().is_some() {
            // The response already started: nothing to render; the audit
            // line keeps the status that was sent.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::ConnectionClosed
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
            )
        {
            // The client went away: nothing to answer, and not a denial.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let reason = match (ctx.failure, e.esource()) {
            (Some(r), _) => r,
            // The client's own bytes (e.g. a broken chunked body).
            (None, ErrorSource::Downstream) => Reason::MalformedRequest,
            (None, _) => match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    Reason::UpstreamTimeout
                }
                _ => Reason::UpstreamConnectFailed,
            },
        };
        ctx.failure = Some(reason);
        let (method, authority) = match ctx.plan.as_ref() {
            Some(p) => (p.method, Some(p.dest.authority())),
            None => (Method::Other, None),
        };
        let d = crate::deny::deny(reason, method, authority.as_deref());
        write_denial(session, &d).await;
        ctx.status = d.status;
        FailToProxy {
            error_code: d.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let Some(plan) = ctx.plan.as_ref() else {
            self.shared
                .metrics
                .request(Verdict::Deny, Reason::InternalError, Method::Other);
            return;
        };
        plan.handled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // A client that stopped reading (or sending) was cut off.
        if let Some(e) = e {
            if ctx.failure.is_none()
                && e.esource() == &ErrorSource::Downstream
                && matches!(
                    e.etype(),
                    ErrorType::WriteTimedout | ErrorType::ReadTimedout
                )
            {
                ctx.failure = Some(Reason::ClientTimeout);
            }
        }
        let (verdict, reason) = match ctx.failure {
            Some(r) => (Verdict::Deny, r),
            None => (Verdict::Allow, plan.reason),
        };
        let status = session
            .response_written()
            .map_or(ctx.status, |r| r.status.as_u16());
        self.shared.metrics.request(verdict, reason, plan.method);
        self.shared.audit.write(&Record {
            event: crate::audit::Event::Request,
            org: Some(&plan.org),
            client: plan.client,
            method: plan.method,
            scheme: Some(plan.dest.scheme.as_str()),
            host: Some(&plan.dest.host),
            port: Some(plan.dest.port),
            dialed: ctx.dialed,
            verdict,
            reason,
            status,
            bytes_up: session.as_downstream().body_bytes_read() as u64,
            bytes_down: session.as_downstream().body_bytes_sent() as u64,
            duration: plan.started.elapsed(),
        });
    }
}

/// Write a denial through a Pingora session.
async fn write_denial(session: &mut Session, d: &crate::deny::Denial) {
    session.set_keepalive(None);
    match d.response_header() {
        Ok(h) => {
            if session
                .write_response_header(Box::new(h), false)
                .await
                .is_ok()
            {
                let _ = session
                    .write_response_body(Some(Bytes::from(d.body.clone())), true)
                    .await;
            }
        }
        Err(_) => {
            let _ = session.respond_error(d.status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_proxy_headers() {
        let mut req = RequestHeader::build("GET", b"http://a/", None).unwrap();
        req.insert_header("Connection", "keep-alive, X-Secret-Hop")
            .unwrap();
        req.insert_header("X-Secret-Hop", "1").unwrap();
        req.insert_header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
            .unwrap();
        req.insert_header("Proxy-Foo", "x").unwrap();
        req.insert_header("Keep-Alive", "timeout=5").unwrap();
        req.insert_header("TE", "trailers").unwrap();
        req.insert_header("Accept", "*/*").unwrap();
        let strip = headers_to_strip(&req);
        for n in [
            "connection",
            "x-secret-hop",
            "proxy-authorization",
            "proxy-foo",
            "keep-alive",
            "te",
        ] {
            assert!(strip.iter().any(|s| s == n), "{n} not stripped: {strip:?}");
        }
        assert!(!strip.iter().any(|s| s == "accept"));
    }
}
