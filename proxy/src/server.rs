//! The client side: accept loop, per-connection head loop, and dispatch.
//!
//! Owns: the connection limit, reading every request head (through
//! [`crate::head`]), the checks that need the head (origin-form, upgrade,
//! Host), the policy decision and DNS pinning for both CONNECT and forwarded
//! requests, and handing a decided [`Plan`] to Pingora with the bytes already
//! read. Must never: let a request reach Pingora or a tunnel without a
//! decision, or write a denial anywhere but through [`crate::deny`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use netpolicy::{Destination, Method, Reason, Verdict};
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::audit::Record;
use crate::forward::Forward;
use crate::head::{self, HeadError};
use crate::state::{Plan, SharedRef};
use crate::stream::{Client, EofGate};

/// Keep-alive idle time between requests.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The Pingora forwarder.
pub(crate) type Proxy = HttpProxy<Forward>;

/// Accept connections until shutdown; each runs in its own task. Returns
/// once the listener is closed; the caller waits for the connections.
pub(crate) async fn accept_loop(
    shared: SharedRef,
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    conns: Arc<Semaphore>,
    tracker: tokio::task::JoinSet<()>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tracker;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let (tcp, client) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        match conns.clone().try_acquire_owned() {
            Ok(permit) => {
                let org = shared
                    .policy
                    .load()
                    .org_for_client(client.ip())
                    .map(|o| o.as_str().to_owned());
                let slot = match shared.admission.connection(client.ip(), org.as_deref()) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        drop(permit);
                        tasks.spawn(async move {
                            let mut stream = Client::Raw(tcp);
                            let ctx = Ctx::new(client, org, Method::Other, Instant::now());
                            deny(&shared, &mut stream, &ctx, reason, None).await;
                        });
                        continue;
                    }
                };
                let proxy = proxy.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    shared.metrics.connections_open.inc();
                    handle_conn(shared.clone(), proxy, tcp, client, shutdown).await;
                    shared.metrics.connections_open.dec();
                    drop(slot);
                    drop(permit);
                });
            }
            Err(_) => {
                tasks.spawn(async move {
                    let mut stream = Client::Raw(tcp);
                    let ctx = Ctx::new(client, None, Method::Other, Instant::now());
                    deny(&shared, &mut stream, &ctx, Reason::Overloaded, None).await;
                });
            }
        }
    }
    tasks
}

/// What is known about the current request, for its denial and audit line.
pub(crate) struct Ctx {
    pub(crate) client: SocketAddr,
    pub(crate) org: Option<String>,
    pub(crate) method: Method,
    pub(crate) started: Instant,
}

impl Ctx {
    fn new(client: SocketAddr, org: Option<String>, method: Method, started: Instant) -> Ctx {
        Ctx {
            client,
            org,
            method,
            started,
        }
    }
}

/// Serve one client connection: a loop of request heads.
async fn handle_conn(
    shared: SharedRef,
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    client: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Client::Raw(tcp);
    let eof = Arc::new(EofGate::default());
    let handled = Arc::new(AtomicBool::new(false));
    let mut buf = BytesMut::with_capacity(4096);
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let limit = if first {
            shared.limits.client_read
        } else {
            KEEPALIVE_TIMEOUT
        };
        let read = tokio::select! {
            r = tokio::time::timeout(limit, head::read_head(&mut stream, &mut buf)) => r,
            _ = shutdown.changed() => return,
        };
        let started = Instant::now();
        let head = match read {
            // An idle keep-alive connection ends quietly; a first head that
            // never came, or a head left half-sent, is counted and audited
            // (slow-loris clients show up).
            Err(_) if first || !buf.is_empty() => {
                let ctx = Ctx::new(client, None, Method::Other, started);
                deny(&shared, &mut stream, &ctx, Reason::HeadTimeout, None).await;
                return;
            }
            Err(_) | Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::Io(_))) => {
                if !buf.is_empty() {
                    let ctx = Ctx::new(client, None, Method::Other, started);
                    count_denial(&shared, &ctx, Reason::HeadIncomplete, 0, None);
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "refused request head");
                let ctx = Ctx::new(client, None, Method::Other, started);
                deny(&shared, &mut stream, &ctx, Reason::MalformedRequest, None).await;
                return;
            }
            Ok(Ok(h)) => h,
        };
        // Fail closed: nothing is served while the audit log cannot be
        // written.
        if !shared.audit.available() {
            let ctx = Ctx::new(client, None, head.method, started);
            return deny(&shared, &mut stream, &ctx, Reason::AuditUnavailable, None).await;
        }
        let policy = shared.policy.load_full();
        let org = policy
            .org_for_client(client.ip())
            .map(|o| o.as_str().to_owned());
        let mut ctx = Ctx::new(client, org, head.method, started);

        if head.method == Method::Connect {
            let dest = match Destination::parse_authority(&head.target) {
                Ok(d) => d,
                Err(e) => return deny(&shared, &mut stream, &ctx, e.reason(), None).await,
            };
            let addrs = match check(&shared, &policy, &ctx, &dest).await {
                Ok(a) => a,
                Err(r) => return deny(&shared, &mut stream, &ctx, r, Some(&dest)).await,
            };
            // Keep only the early bytes, not the whole head buffer, for the
            // life of the tunnel.
            let early = BytesMut::from(buf.get(head.len..).unwrap_or_default());
            drop(std::mem::take(&mut buf));
            let org = ctx.org.take().unwrap_or_default();
            crate::connect::tunnel(
                &shared, stream, early, org, client, dest, addrs, started, shutdown,
            )
            .await;
            return;
        }

        if head.target.starts_with('/') || head.target == "*" {
            return deny(&shared, &mut stream, &ctx, Reason::NotAProxyRequest, None).await;
        }
        let parsed = match Destination::parse_url(&head.target) {
            Ok(p) => p,
            Err(e) => return deny(&shared, &mut stream, &ctx, e.reason(), None).await,
        };
        let dest = parsed.dest;
        // `GET https://...` would go out in the clear to port 443: https
        // is a CONNECT tunnel (package repositories only).
        if dest.scheme == netpolicy::Scheme::Https {
            return deny(
                &shared,
                &mut stream,
                &ctx,
                Reason::HttpsRequiresConnect,
                Some(&dest),
            )
            .await;
        }
        // A read with a body is an upload (and, with a streaming response,
        // a two-way channel): refused before any connection is made.
        if head.body && matches!(head.method, Method::Get | Method::Head) {
            return deny(&shared, &mut stream, &ctx, Reason::BodyOnRead, Some(&dest)).await;
        }
        if head.upgrade {
            return deny(
                &shared,
                &mut stream,
                &ctx,
                Reason::UpgradeDenied,
                Some(&dest),
            )
            .await;
        }
        if let Some(h) = &head.host {
            // Both the same host and port, and the same bytes as the target's
            // authority: Pingora refuses any byte difference with a bare 400
            // (e.g. `Host: EXAMPLE.com` for `http://example.com/`), so the
            // denial, its reason and its audit line are ours.
            if !host_matches(h, &dest) || raw_authority(&head.target) != Some(h.as_str()) {
                return deny(
                    &shared,
                    &mut stream,
                    &ctx,
                    Reason::HostMismatch,
                    Some(&dest),
                )
                .await;
            }
        }
        let addrs = match check(&shared, &policy, &ctx, &dest).await {
            Ok(a) => a,
            Err(r) => return deny(&shared, &mut stream, &ctx, r, Some(&dest)).await,
        };
        handled.store(false, Ordering::Relaxed);
        let plan = Plan {
            org: ctx.org.take().unwrap_or_default(),
            client,
            method: head.method,
            host_header: host_header(&dest),
            dest,
            origin_form: parsed.origin_form,
            addrs,
            reason: Reason::ReadPublic,
            started,
            handled: handled.clone(),
        };
        let mut session = ServerSession::new_http1(stream.into_pingora(&eof));
        session.set_pipelining_enabled(false);
        session.set_pipelined_prefix(std::mem::take(&mut buf));
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE_TIMEOUT.as_secs())
        });
        session.set_connection_user_context(Some(Box::new(plan)));
        // A client that stops reading holds a slot only this long per write.
        session.set_write_timeout(Some(shared.limits.client_write));
        session.set_read_timeout(Some(shared.limits.client_read));
        // Boxed: Pingora's future is large, and unboxed it would size every
        // connection task, idle tunnels included.
        eof.arm(true);
        let served = tokio::time::timeout(
            shared.limits.request_deadline,
            Box::pin(proxy.process_new_http(session, &shutdown)),
        )
        .await;
        eof.arm(false);
        let Ok(reused) = served else {
            // Past the whole-request deadline: the connection is dropped
            // with the request, which Pingora never got to log.
            ctx.org = policy
                .org_for_client(client.ip())
                .map(|o| o.as_str().to_owned());
            let dest = Destination::parse_url(&head.target).ok().map(|p| p.dest);
            count_denial(&shared, &ctx, Reason::RequestDeadline, 0, dest.as_ref());
            return;
        };
        if !handled.load(Ordering::Relaxed) {
            // Pingora refused a head we had accepted, before any of our
            // phases ran (its own parser or authority checks; it answers a
            // plain 400 itself, since the whole head was handed over and no
            // read can fail). It is still counted and audited, rebuilt from
            // the same policy snapshot and head rather than copied on every
            // request for this rare case.
            tracing::debug!(%client, "Pingora refused a request head we accepted");
            ctx.org = policy
                .org_for_client(client.ip())
                .map(|o| o.as_str().to_owned());
            let dest = Destination::parse_url(&head.target).ok().map(|p| p.dest);
            count_denial(&shared, &ctx, Reason::MalformedRequest, 400, dest.as_ref());
        }
        match reused {
            // The client closed its side: the response is out, we are done.
            Some(_) if eof.seen() => return,
            Some(reused) => {
                let (s, _settings) = reused.consume();
                stream = Client::Pingora(s);
                first = false;
            }
            None => return,
        }
    }
}

/// The policy decision, then DNS pinning. `Err` is the denial reason; `Ok`
/// the validated addresses. The allow reason is recorded by the caller.
async fn check(
    shared: &SharedRef,
    policy: &netpolicy::Policy,
    ctx: &Ctx,
    dest: &Destination,
) -> Result<Vec<SocketAddr>, Reason> {
    let Some(org) = ctx.org.as_deref() else {
        return Err(Reason::UnknownClient);
    };
    let decision = netpolicy::decide(
        policy,
        &netpolicy::Request {
            source: netpolicy::Source::Container,
            org,
            method: ctx.method,
            dest,
        },
    );
    if !decision.is_allow() {
        return Err(decision.reason);
    }
    let addrs = shared.resolver.addrs(&shared.metrics, policy, dest).await?;
    // The proxy's own machine is never a destination, whatever the class of
    // its addresses (a public address on an interface, or one a test
    // policy lets through `unsafe_allow_ranges`).
    let own = shared.own_addrs.load();
    if addrs.iter().any(|a| own.contains(&canonical(a.ip()))) {
        return Err(Reason::ProxyHostAddress);
    }
    Ok(addrs)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a Host header value names `dest` (same normalized host; same
/// port, the scheme's default when the header has none).
pub(crate) fn host_matches(value: &str, dest: &Destination) -> bool {
    let parsed = Destination::parse_authority(value).or_else(|_| {
        Destination::parse_authority(&format!("{value}:{}", dest.scheme_default_port()))
    });
    match parsed {
        Ok(h) => h.host == dest.host && h.port == dest.port,
        Err(_) => false,
    }
}

/// The authority of an absolute-form target, as sent: what follows `://`
/// up to the path, query or fragment.
pub(crate) fn raw_authority(target: &str) -> Option<&str> {
    let (_, rest) = target.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest.get(..end)
}

/// The Host header sent upstream: the host, with the port unless default.
pub(crate) fn host_header(dest: &Destination) -> String {
    if dest.port == dest.scheme_default_port() {
        dest.host.to_string()
    } else {
        dest.authority()
    }
}

/// Default ports.
trait DefaultPort {
    fn scheme_default_port(&self) -> u16;
}

impl DefaultPort for Destination {
    fn scheme_default_port(&self) -> u16 {
        match self.scheme {
            netpolicy::Scheme::Https => 443,
            _ => 80,
        }
    }
}

/// Deny: write the rendered response, count it, audit it, close.
pub(crate) async fn deny<S>(
    shared: &SharedRef,
    stream: &mut S,
    ctx: &Ctx,
    reason: Reason,
    dest: Option<&Destination>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let authority = dest.map(Destination::authority);
    let d = crate::deny::deny(reason, ctx.method, authority.as_deref());
    let _ = stream.write_all(&d.to_bytes()).await;
    let _ = stream.flush().await;
    count_denial(shared, ctx, reason, d.status, dest);
    linger_close(stream).await;
}

/// Count and audit one denial.
fn count_denial(
    shared: &SharedRef,
    ctx: &Ctx,
    reason: Reason,
    status: u16,
    dest: Option<&Destination>,
) {
    shared.metrics.request(Verdict::Deny, reason, ctx.method);
    shared.audit.write(&Record {
        event: crate::audit::Event::Request,
        org: ctx.org.as_deref(),
        client: ctx.client,
        method: ctx.method,
        scheme: dest.map(|d| {
            if ctx.method == Method::Connect {
                "https"
            } else {
                d.scheme.as_str()
            }
        }),
        host: dest.map(|d| &d.host),
        port: dest.map(|d| d.port),
        dialed: None,
        verdict: Verdict::Deny,
        reason,
        status,
        bytes_up: 0,
        bytes_down: 0,
        duration: ctx.started.elapsed(),
    });
}

/// Half-close, then read and drop what the client still sends (bounded in
/// bytes and time) so the kernel does not reset the connection before the
/// client has read the response.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 8192];
    let mut total = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while total < 1 << 20 {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_must_name_the_target() {
        let d = Destination::parse_url("http://Example.COM:8080/x")
            .unwrap()
            .dest;
        assert!(host_matches("example.com:8080", &d));
        assert!(host_matches("EXAMPLE.com:8080", &d));
        assert!(!host_matches("example.com", &d));
        assert!(!host_matches("example.com:80", &d));
        assert!(!host_matches("evil.com:8080", &d));
        assert!(!host_matches("example.com:8080@evil.com", &d));
        let d = Destination::parse_url("http://example.com/").unwrap().dest;
        assert!(host_matches("example.com", &d));
        assert!(host_matches("example.com:80", &d));
        let d = Destination::parse_url("http://[2001:db8::1]:81/")
            .unwrap()
            .dest;
        assert!(host_matches("[2001:db8::1]:81", &d));
        assert!(!host_matches("2001:db8::1", &d));
    }

    #[test]
    fn raw_authority_is_the_bytes_sent() {
        assert_eq!(
            raw_authority("http://Example.COM:80/x?y"),
            Some("Example.COM:80")
        );
        assert_eq!(raw_authority("http://a.example?q"), Some("a.example"));
        assert_eq!(raw_authority("http://[::1]:81#f"), Some("[::1]:81"));
        assert_eq!(raw_authority("http://a.example"), Some("a.example"));
        assert_eq!(raw_authority("/origin-form"), None);
    }

    #[test]
    fn default_ports() {
        let d = Destination {
            scheme: netpolicy::Scheme::Http,
            host: netpolicy::Host::Name("example.com".into()),
            port: 80,
        };
        assert_eq!(host_header(&d), "example.com");
        let d = Destination { port: 8080, ..d };
        assert_eq!(host_header(&d), "example.com:8080");
        let d = Destination {
            scheme: netpolicy::Scheme::Http,
            host: netpolicy::Host::Ip("::1".parse().unwrap()),
            port: 81,
        };
        assert_eq!(host_header(&d), "[::1]:81");
    }
}
