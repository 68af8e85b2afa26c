//! The admin listener: `GET /metrics`, `GET /healthz`, `GET /readyz`,
//! `POST /reload`. One request per connection.
//!
//! Owns: routing those four endpoints, and the token check of `POST
//! /reload` (`Authorization: Bearer <token>`, the token read from the file
//! named by `EGRESS_ADMIN_TOKEN_FILE`, compared in constant time). Must
//! never: be exposed on the proxy port or a network exec containers share,
//! reload without the token, or answer anything but these endpoints
//! (everything else is 404).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::state::SharedRef;

/// Serve the admin endpoints until shutdown.
pub(crate) async fn serve(
    shared: SharedRef,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), handle(shared, tcp)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle(shared: SharedRef, mut tcp: TcpStream) {
    let mut buf = BytesMut::with_capacity(1024);
    let head = match crate::head::read_head(&mut tcp, &mut buf).await {
        Ok(h) => h,
        Err(_) => {
            let _ = respond(&mut tcp, 400, "text/plain", b"bad request\n").await;
            return;
        }
    };
    let path = head.target.split('?').next().unwrap_or_default();
    let (status, ctype, body): (u16, &str, Vec<u8>) = match (head.method_raw.as_str(), path) {
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        ("GET", "/healthz") => (200, "text/plain", b"ok\n".to_vec()),
        ("GET", "/readyz") => {
            let (code, status) = if shared.ready.load(Ordering::SeqCst) {
                (200, "ready")
            } else {
                (503, "not ready")
            };
            let body = serde_json::json!({"status": status, "mode": shared.mode.as_str()});
            (code, "application/json", format!("{body}\n").into_bytes())
        }
        ("POST", "/reload") if !authorized(&shared, buf.get(..head.len).unwrap_or_default()) => (
            401,
            "text/plain",
            b"POST /reload needs `Authorization: Bearer <token>` (the token in EGRESS_ADMIN_TOKEN_FILE); SIGHUP reloads too\n".to_vec(),
        ),
        ("POST", "/reload") => match crate::reload::reload(&shared).await {
            Ok(generation) => (
                200,
                "text/plain",
                format!("reloaded: generation {generation}\n").into_bytes(),
            ),
            Err(line) => (422, "text/plain", format!("{line}\n").into_bytes()),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/reload") => {
            (405, "text/plain", b"method not allowed\n".to_vec())
        }
        _ => (404, "text/plain", b"not found\n".to_vec()),
    };
    let _ = respond(&mut tcp, status, ctype, &body).await;
}

/// Whether the head carries `Authorization: Bearer <the admin token>`. No
/// token configured: never.
fn authorized(shared: &SharedRef, head: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = shared.admin_token.as_deref() else {
        return false;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let mut values = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"));
    let (Some(h), None) = (values.next(), values.next()) else {
        return false;
    };
    match h.value.strip_prefix(b"Bearer ") {
        Some(given) => bool::from(given.trim_ascii().ct_eq(token)),
        None => false,
    }
}

async fn respond(
    tcp: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let phrase = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        body.len()
    );
    for (name, value) in netpolicy::headers::SECURITY_HEADERS {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    tcp.shutdown().await
}
