//! One open socket: already authenticated (see `app::upgrade`). It writes
//! client messages to the queue (ack after commit), forwards the
//! conversation's events (replay from `after`, then live), and closes with a
//! code: 4001 when the token expires without in-band renewal, 4003 on
//! revocation, 1013 when the client reads too slowly, 1003/1007/1008/1009 on
//! bad frames, 1011 when the store fails, 1001 on shutdown.
//!
//! The socket holds the store and the hub, nothing else: no handle to the
//! worker or to any process.
//!
//! A writer task owns the sending half behind a bounded queue
//! ([`OUT_BUFFER`] frames): a client that does not read fills it and is closed
//! with 1013; the close frame is queued after what is already in flight, and
//! the connection is dropped if it cannot be delivered within
//! [`CLOSE_GRACE`].

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::app::{SharedState, now_ms, now_secs};
use crate::frames::{self, ClientFrame, ServerFrame, close};
use crate::store::NewMessage;

/// Frames queued to one client before it counts as a slow reader.
pub const OUT_BUFFER: usize = 64;
/// How long a replayed frame may wait for room in the queue.
const REPLAY_STALL: Duration = Duration::from_secs(10);
/// How long the close frame may take to reach the client.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Events read from the store per replay page.
const REPLAY_PAGE: i64 = 256;

/// Who is on this socket and what it opened.
#[derive(Debug, Clone)]
pub struct SocketSession {
    /// The conversation.
    pub conversation: String,
    /// The org (checked against the store before the upgrade).
    pub org: String,
    /// The user.
    pub sub: String,
    /// The token's `exp`, Unix seconds.
    pub token_exp: i64,
    /// The token's `iat`, Unix seconds.
    pub token_iat: i64,
    /// Replay events after this sequence number first (`?after=N`).
    pub after: Option<i64>,
}

/// Why the loop ended.
struct Close {
    code: u16,
    reason: &'static str,
}

impl Close {
    fn new(code: u16, reason: &'static str) -> Close {
        Close { code, reason }
    }
}

fn deadline(exp: i64) -> Instant {
    let now = i64::try_from(now_secs()).unwrap_or(i64::MAX);
    let left = u64::try_from(exp.saturating_sub(now)).unwrap_or(0);
    Instant::now() + Duration::from_secs(left)
}

/// Run the socket until it closes.
pub async fn run(state: SharedState, socket: WebSocket, mut session: SocketSession) {
    let guard = state.sessions.register(&session.org, &session.sub);
    let mut events = state.hub.subscribe(&session.conversation);
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(OUT_BUFFER);
    let (close_tx, close_rx) = oneshot::channel::<CloseFrame>();
    let mut writer = tokio::spawn(write_loop(sink, out_rx, close_rx));

    let result = async {
        // The last event sent; live events at or before it were replayed.
        let mut last_sent: Option<i64> = None;
        if let Some(after) = session.after {
            last_sent = Some(replay(&state, &session.conversation, after, &out_tx).await?);
        }
        let mut expiry = Box::pin(tokio::time::sleep_until(deadline(session.token_exp)));
        let mut stop = state.stop.clone();
        loop {
            tokio::select! {
                incoming = stream.next() => {
                    let Some(incoming) = incoming else { return Ok(()) };
                    let msg = incoming.map_err(|e| read_error(&e))?;
                    let frame = match msg {
                        Message::Text(t) => frames::decode_text(t.as_str()),
                        Message::Binary(b) => frames::decode_binary(&b),
                        Message::Ping(_) | Message::Pong(_) => continue,
                        Message::Close(_) => return Ok(()),
                    };
                    let frame = frame.map_err(|e| Close::new(e.close_code(), frame_reason(&e)))?;
                    match frame {
                        ClientFrame::Message { id, text } => {
                            enqueue(&state, &session, id, text, &out_tx).await?;
                        }
                        ClientFrame::Auth { token } => {
                            let exp = reauth(&state, &session, &token).await?;
                            session.token_exp = exp;
                            expiry.as_mut().reset(deadline(exp));
                            let ok = ServerFrame::AuthOk { exp: u64::try_from(exp).unwrap_or(0) };
                            push(&out_tx, ok.to_text().into())?;
                        }
                    }
                }
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        // Replayed already, or before the client's resume point.
                        if last_sent.is_some_and(|l| ev.seq <= l) {
                            continue;
                        }
                        last_sent = Some(ev.seq);
                        push(&out_tx, ev.frame)?;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Err(Close::new(close::TRY_AGAIN_LATER, "slow reader"));
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                () = &mut expiry => {
                    return Err(Close::new(close::TOKEN_EXPIRED, "token expired"));
                }
                () = guard.revoked.notified() => {
                    return Err(Close::new(close::REVOKED, "revoked"));
                }
                _ = stop.changed() => {
                    return Err(Close::new(close::GOING_AWAY, "server shutting down"));
                }
            }
        }
    }
    .await;

    let close = match result {
        Ok(()) => Close::new(close::NORMAL, ""),
        Err(c) => c,
    };
    if close.code != close::NORMAL {
        tracing::info!(
            conversation = %session.conversation,
            org = %session.org,
            code = close.code,
            reason = close.reason,
            "socket closed"
        );
    }
    let _ = close_tx.send(CloseFrame {
        code: close.code,
        reason: Utf8Bytes::from_static(close.reason),
    });
    drop(out_tx);
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    drop(events);
    state.hub.release(&session.conversation);
}

/// Queue a frame for the client; a full queue means a slow reader.
fn push(out: &mpsc::Sender<Message>, text: Utf8Bytes) -> Result<(), Close> {
    out.try_send(Message::Text(text)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => Close::new(close::TRY_AGAIN_LATER, "slow reader"),
        mpsc::error::TrySendError::Closed(_) => Close::new(close::NORMAL, ""),
    })
}

fn read_error(e: &axum::Error) -> Close {
    // The size limits surface as a read error; anything else is a broken
    // connection.
    let too_big = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)));
    if too_big {
        Close::new(close::TOO_BIG, "frame larger than 1 MiB")
    } else {
        Close::new(close::NORMAL, "")
    }
}

fn frame_reason(e: &frames::FrameError) -> &'static str {
    match e {
        frames::FrameError::Binary => "binary frames are not accepted",
        frames::FrameError::TooBig => "frame larger than 1 MiB",
        frames::FrameError::Malformed => "malformed frame",
        frames::FrameError::UnknownType => "unknown frame type",
        _ => "invalid frame",
    }
}

async fn replay(
    state: &SharedState,
    conversation: &str,
    after: i64,
    out: &mpsc::Sender<Message>,
) -> Result<i64, Close> {
    let mut last = after;
    loop {
        let page = state
            .store
            .events_after(conversation, last, REPLAY_PAGE)
            .await
            .map_err(|_| Close::new(close::INTERNAL, "store unavailable"))?;
        let full = i64::try_from(page.len()).unwrap_or(0) == REPLAY_PAGE;
        for (seq, data) in page {
            let raw = serde_json::value::RawValue::from_string(data)
                .map_err(|_| Close::new(close::INTERNAL, "stored event unreadable"))?;
            let text = ServerFrame::Event { seq, data: &raw }.to_text();
            match tokio::time::timeout(REPLAY_STALL, out.send(Message::Text(text.into()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Close::new(close::NORMAL, "")),
                Err(_) => return Err(Close::new(close::TRY_AGAIN_LATER, "slow reader")),
            }
            last = seq;
        }
        if !full {
            return Ok(last);
        }
    }
}

async fn enqueue(
    state: &SharedState,
    session: &SocketSession,
    client_id: String,
    text: String,
    out: &mpsc::Sender<Message>,
) -> Result<(), Close> {
    let id = {
        use ring::rand::SecureRandom as _;
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| Close::new(close::INTERNAL, "random"))?;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("m_{hex}")
    };
    let m = NewMessage {
        id,
        conversation: session.conversation.clone(),
        client_id,
        org: session.org.clone(),
        sub: session.sub.clone(),
        text,
        created_at: now_ms(),
    };
    // New or a resend: either way the message is in the queue once, and the
    // ack follows the commit.
    state.store.enqueue(&m).await.map_err(|e| {
        tracing::error!(error = %e, "enqueue failed");
        state.metrics.queue_write_errors.inc();
        Close::new(close::INTERNAL, "store unavailable")
    })?;
    push(out, ServerFrame::Ack { id: &m.client_id }.to_text().into())
}

async fn reauth(state: &SharedState, session: &SocketSession, token: &str) -> Result<i64, Close> {
    let claims = state
        .verifier
        .verify(token, now_secs())
        .map_err(|_| Close::new(close::TOKEN_EXPIRED, "invalid token"))?;
    if claims.sub != session.sub || claims.org != session.org {
        return Err(Close::new(close::POLICY, "token is for another identity"));
    }
    let iat = i64::try_from(claims.iat).unwrap_or(i64::MAX);
    let revoked = state
        .store
        .is_revoked(&claims.org, &claims.sub, iat)
        .await
        .map_err(|_| Close::new(close::INTERNAL, "store unavailable"))?;
    if revoked {
        return Err(Close::new(close::REVOKED, "revoked"));
    }
    Ok(i64::try_from(claims.exp).unwrap_or(i64::MAX))
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Message>,
    mut close_rx: oneshot::Receiver<CloseFrame>,
) {
    loop {
        tokio::select! {
            biased;
            c = &mut close_rx => {
                // The in-flight frame (if any) finished; queued frames are
                // dropped in favour of the close.
                if let Ok(frame) = c {
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                let _ = sink.close().await;
                return;
            }
            m = out.recv() => match m {
                Some(m) => {
                    // Everything already queued goes out with one flush.
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                    while let Ok(m) = out.try_recv() {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                // The reader side ended; wait for its close frame.
                None => {
                    if let Ok(frame) = close_rx.await {
                        let _ = sink.send(Message::Close(Some(frame))).await;
                    }
                    let _ = sink.close().await;
                    return;
                }
            },
        }
    }
}
