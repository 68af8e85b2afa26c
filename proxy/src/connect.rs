//! CONNECT tunnels (Pingora 0.9 has none): dial a validated address, answer
//! 200, flush, then splice bytes both ways under the idle timeout, the
//! maximum lifetime and the shutdown watch.
//!
//! Owns: the per-org tunnel slot, the dial loop over validated addresses
//! (never a new lookup), the ClientHello check (SNI = CONNECT host, no ECH,
//! TLS only; read, never decrypted), the splice, `egress_tunnels_active`,
//! `egress_tunnel_bytes_total`, and the tunnel's audit lines: one at open,
//! on disk before a byte goes upstream, and one at close. Must never: look
//! past the ClientHello, or dial anything but the addresses it was handed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use netpolicy::{Destination, Method, Reason, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::audit::{Event, Record};
use crate::server::Ctx;
use crate::state::SharedRef;
use crate::stream::Client;

/// Initial splice buffer per direction (small: idle tunnels stay cheap).
const BUF_MIN: usize = 4 * 1024;
/// Largest splice buffer per direction (reached by doubling on full reads).
const BUF_MAX: usize = 64 * 1024;

/// Dial `addrs` in order with the connect timeout; the first that connects.
/// `Err` is `upstream_timeout` when every failure was a timeout, else
/// `upstream_connect_failed`.
pub(crate) async fn dial(
    shared: &SharedRef,
    addrs: &[SocketAddr],
) -> Result<(TcpStream, SocketAddr), Reason> {
    let mut reason = Reason::UpstreamConnectFailed;
    let mut all_timeouts = true;
    for &addr in addrs {
        let started = Instant::now();
        match tokio::time::timeout(shared.limits.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                shared
                    .metrics
                    .upstream_connect
                    .observe(started.elapsed().as_secs_f64());
                let _ = s.set_nodelay(true);
                return Ok((s, addr));
            }
            Ok(Err(e)) => {
                all_timeouts = false;
                tracing::debug!(%addr, error = %e, "upstream connect failed");
            }
            Err(_) => tracing::debug!(%addr, "upstream connect timed out"),
        }
    }
    if all_timeouts && !addrs.is_empty() {
        reason = Reason::UpstreamTimeout;
    }
    Err(reason)
}

/// Run one allowed tunnel to completion and audit it: take a tunnel slot of
/// the org, dial, answer 200, check the ClientHello's SNI against the
/// CONNECT host, write the open line to disk, splice, write the close line.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn tunnel(
    shared: &SharedRef,
    mut client: Client,
    early: BytesMut,
    org: String,
    client_addr: SocketAddr,
    dest: Destination,
    addrs: Vec<SocketAddr>,
    started: Instant,
    shutdown: watch::Receiver<bool>,
) {
    let ctx = Ctx {
        client: client_addr,
        org: Some(org),
        method: Method::Connect,
        started,
    };
    let _slot = match shared
        .admission
        .tunnel(ctx.org.as_deref().unwrap_or_default())
    {
        Ok(slot) => slot,
        Err(r) => return crate::server::deny(shared, &mut client, &ctx, r, Some(&dest)).await,
    };
    let (upstream, dialed) = match dial(shared, &addrs).await {
        Ok(x) => x,
        Err(r) => return crate::server::deny(shared, &mut client, &ctx, r, Some(&dest)).await,
    };
    let mut record = Record {
        event: Event::TunnelOpen,
        org: ctx.org.as_deref(),
        client: client_addr,
        method: Method::Connect,
        scheme: Some("https"),
        host: Some(&dest.host),
        port: Some(dest.port),
        dialed: Some(dialed),
        verdict: Verdict::Allow,
        reason: Reason::PackageRepo,
        status: 200,
        bytes_up: 0,
        bytes_down: 0,
        duration: Duration::ZERO,
    };
    let established = client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .and(client.flush().await);
    // The first flight must be a ClientHello naming the CONNECT host: a
    // tunnel to a package repository on a shared CDN must not reach
    // another tenant of that CDN.
    let mut early = early;
    let checked = match established {
        Ok(()) => first_flight(shared, &mut client, &mut early, &dest).await,
        Err(_) => Err(Reason::HeadIncomplete),
    };
    if let Err(reason) = checked {
        let alert = match reason {
            Reason::SniMismatch => Some(crate::tls::alert(112)), // unrecognized_name
            Reason::EchNotAllowed => Some(crate::tls::alert(40)), // handshake_failure
            _ => None,
        };
        if let Some(a) = alert {
            let _ = client.write_all(&a).await;
            let _ = client.flush().await;
        }
        let _ = client.shutdown().await;
        drop(upstream);
        record.event = Event::Request;
        record.verdict = Verdict::Deny;
        record.reason = reason;
        record.duration = started.elapsed();
        shared
            .metrics
            .request(Verdict::Deny, reason, Method::Connect);
        shared.audit.write(&record);
        return;
    }
    // Written and flushed before a byte goes upstream: a SIGKILL of the
    // proxy cannot erase a tunnel, and a failing audit log opens none.
    if !shared.audit.write_durable(&record).await {
        let _ = client.shutdown().await;
        shared
            .metrics
            .request(Verdict::Deny, Reason::AuditUnavailable, Method::Connect);
        return;
    }
    shared
        .metrics
        .request(Verdict::Allow, Reason::PackageRepo, Method::Connect);
    shared.metrics.tunnels_active.inc();
    let (up, down) = match client {
        Client::Raw(tcp) => {
            let (cr, cw) = tcp.into_split();
            splice(shared, cr, cw, upstream, early, shutdown).await
        }
        Client::Pingora(s) => {
            let (cr, cw) = tokio::io::split(s);
            splice(shared, cr, cw, upstream, early, shutdown).await
        }
    };
    shared.metrics.tunnels_active.dec();
    shared.metrics.tunnel_bytes_up.inc_by(up);
    shared.metrics.tunnel_bytes_down.inc_by(down);
    record.event = Event::TunnelClose;
    record.bytes_up = up;
    record.bytes_down = down;
    record.duration = started.elapsed();
    shared.audit.write(&record);
}

/// Read the tunnel's first flight into `early` (which may already hold its
/// start) until it is a whole ClientHello, within the client read deadline
/// and [`crate::tls::MAX_HELLO`] bytes, and check it: `Err` is the reason
/// to close the tunnel.
async fn first_flight(
    shared: &SharedRef,
    client: &mut Client,
    early: &mut BytesMut,
    dest: &Destination,
) -> Result<(), Reason> {
    let deadline = tokio::time::Instant::now() + shared.limits.client_read;
    let hello = loop {
        match crate::tls::parse_first_flight(early) {
            Ok(Some(h)) => break h,
            Err(e) => {
                tracing::debug!(error = %e, "tunnel refused");
                return Err(Reason::TunnelNotTls);
            }
            Ok(None) if early.len() > crate::tls::MAX_HELLO + 1024 => {
                return Err(Reason::TunnelNotTls);
            }
            Ok(None) => {}
        }
        if early.capacity() - early.len() < 2048 {
            early.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, client.read_buf(early)).await {
            Err(_) => return Err(Reason::HeadTimeout),
            Ok(Ok(0) | Err(_)) => return Err(Reason::HeadIncomplete),
            Ok(Ok(_)) => {}
        }
    };
    if hello.ech {
        return Err(Reason::EchNotAllowed);
    }
    match hello.sni.as_deref() {
        Some(sni) if crate::tls::sni_matches(sni, &dest.host.to_text()) => Ok(()),
        _ => Err(Reason::SniMismatch),
    }
}

/// Copy both ways until both sides finish, the tunnel idles out, reaches its
/// maximum lifetime, or the proxy shuts down. Returns (up, down) byte counts.
async fn splice<CR, CW>(
    shared: &SharedRef,
    cr: CR,
    mut cw: CW,
    upstream: TcpStream,
    early: BytesMut,
    mut shutdown: watch::Receiver<bool>,
) -> (u64, u64)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let (ur, mut uw) = upstream.into_split();

    let early_ok = if early.is_empty() {
        true
    } else {
        up.fetch_add(early.len() as u64, Ordering::Relaxed);
        uw.write_all(&early).await.is_ok()
    };
    // Both pumps half-close their side when they finish; the tunnel only
    // needs closing here when it ended any other way.
    let mut finished = false;
    if early_ok {
        let up_dir = pump(cr, &mut uw, &up, &last, epoch);
        let down_dir = pump(ur, &mut cw, &down, &last, epoch);
        let both = async { tokio::join!(up_dir, down_dir) };
        let idle = shared.limits.tunnel_idle;
        let watchdog = async {
            let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            loop {
                tokio::time::sleep(tick).await;
                let last_ms = last.load(Ordering::Relaxed);
                let now_ms = millis(epoch);
                if now_ms.saturating_sub(last_ms) >= idle.as_millis() as u64 {
                    return "idle timeout";
                }
            }
        };
        tokio::select! {
            _ = both => finished = true,
            why = watchdog => tracing::debug!(why, "tunnel closed"),
            _ = tokio::time::sleep(shared.limits.tunnel_max_lifetime) => {
                tracing::debug!("tunnel reached its maximum lifetime");
            }
            _ = shutdown.changed() => tracing::debug!("tunnel closed for shutdown"),
        }
    }
    if !finished {
        let _ = cw.shutdown().await;
        let _ = uw.shutdown().await;
    }
    (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed))
}

/// Copy `from` → `to` until EOF or error, counting bytes and activity; then
/// half-close `to`.
async fn pump<R, W>(mut from: R, to: &mut W, count: &AtomicU64, last: &AtomicU64, epoch: Instant)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_MIN];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let grow = n == buf.len() && buf.len() < BUF_MAX;
        let Some(chunk) = buf.get(..n) else { break };
        if to.write_all(chunk).await.is_err() || to.flush().await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(millis(epoch), Ordering::Relaxed);
        if grow {
            buf.resize(buf.len() * 2, 0);
        }
    }
    let _ = to.shutdown().await;
}

/// Milliseconds since `epoch`.
fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
