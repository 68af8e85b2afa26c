//! The client-side stream handed to Pingora: the plain TCP stream with a
//! small write buffer, so a response header and a small body leave in one
//! `send` (Pingora flushes at the end of each response; its own listeners
//! buffer the same way, but only they can set the buffer of their stream).
//!
//! Owns: buffering writes and delegating everything else to the inner
//! stream. Must never: hold bytes across a flush (every writer here flushes
//! before waiting on the peer).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// Write buffer size: a typical response header plus a small body.
const WRITE_BUF: usize = 4 * 1024;

/// A client's half-close, held back from Pingora.
///
/// Pingora reads the client while it proxies a request and takes end of
/// stream as an abort, so a client that sends its request and then shuts
/// down its sending side (`printf ... | nc -N`, some HTTP/1.0 clients) would
/// get no response. While the gate is armed (Pingora owns the stream), end
/// of stream is recorded instead of returned; the connection loop closes the
/// connection once the response is out. Disarmed, end of stream passes
/// through.
#[derive(Debug, Default)]
pub(crate) struct EofGate {
    armed: AtomicBool,
    seen: AtomicBool,
}

impl EofGate {
    /// Hold end of stream back (while Pingora owns the stream) or not.
    pub(crate) fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::Relaxed);
    }

    /// Whether the client has closed its sending side.
    pub(crate) fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }
}

/// A TCP client stream with buffered writes and an [`EofGate`].
#[derive(Debug)]
pub(crate) struct ClientStream {
    inner: BufWriter<L4Stream>,
    eof: Arc<EofGate>,
}

impl ClientStream {
    /// Wrap an accepted TCP stream.
    pub(crate) fn new(tcp: tokio::net::TcpStream, eof: Arc<EofGate>) -> ClientStream {
        ClientStream {
            inner: BufWriter::with_capacity(WRITE_BUF, L4Stream::from(tcp)),
            eof,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let at_eof = matches!(res, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0;
        if at_eof {
            self.eof.seen.store(true, Ordering::Relaxed);
            if self.eof.armed.load(Ordering::Relaxed) {
                // Nothing more will arrive; whoever waits on this read is
                // also waiting on the upstream, which ends the request.
                return Poll::Pending;
            }
        }
        res
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().id()
    }
}

impl Ssl for ClientStream {}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_ref().get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().get_socket_digest()
    }
}

#[async_trait]
impl Peek for ClientStream {}

/// A client connection before and after it is handed to Pingora. The first
/// request head is read from the raw socket, so a CONNECT tunnel splices
/// plain TCP halves with no buffering or dynamic dispatch in between; a
/// forwarded request wraps the socket once and keeps Pingora's stream for
/// the rest of the connection.
#[derive(Debug)]
pub(crate) enum Client {
    /// The accepted socket, untouched.
    Raw(tokio::net::TcpStream),
    /// The stream Pingora handed back after a forwarded request.
    Pingora(pingora::protocols::Stream),
}

impl Client {
    /// The stream to give Pingora (wrapping a raw socket once, with `eof`).
    pub(crate) fn into_pingora(self, eof: &Arc<EofGate>) -> pingora::protocols::Stream {
        match self {
            Client::Raw(tcp) => Box::new(ClientStream::new(tcp, eof.clone())),
            Client::Pingora(s) => s,
        }
    }
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Client::Raw(s) => Pin::new(s).poll_read(cx, buf),
            Client::Pingora(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Client::Raw(s) => Pin::new(s).poll_write(cx, buf),
            Client::Pingora(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Client::Raw(s) => Pin::new(s).poll_flush(cx),
            Client::Pingora(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Client::Raw(s) => Pin::new(s).poll_shutdown(cx),
            Client::Pingora(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
