//! An open socket against the real binary over TLS: events scrubbed, in
//! order, replayable; close codes for token expiry (4001, unless renewed in
//! band), revocation (4003), a slow reader (1013) and bad frames.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const GITHUB: &str = "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";
const OPENAI: &str = "sk-proj-AbCdEf0123456789GhIjKlMnOpQrStUv";

/// The next text frame as JSON, or the close code.
async fn next(ws: &mut Ws, wait: Duration) -> Result<serde_json::Value, Option<u16>> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => panic!("no frame within {wait:?}"),
            Ok(None) => return Err(None),
            Ok(Some(Err(_))) => return Err(None),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(c)))) => return Err(c.map(|c| u16::from(c.code))),
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn close_code(ws: &mut Ws, wait: Duration) -> Option<u16> {
    loop {
        match next(ws, wait).await {
            Ok(_) => continue,
            Err(code) => return code,
        }
    }
}

async fn post_event(api: &Api, conv: &str, data: serde_json::Value) -> u16 {
    let body = serde_json::json!({ "data": data }).to_string();
    api.service(
        "POST",
        &format!("/v1/conversations/{conv}/events"),
        Some(&body),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_scrubbed_ordered_and_replayable() {
    let keys = Keys::new();
    let api = start(&keys);
    let token = keys.token("acme", "alice", 600);
    let conv = api.conversation(&token).await;
    let other = api.conversation(&token).await;
    let mut a = api.ws_bearer(&conv, &token, None).await;
    let mut b = api.ws_bearer(&conv, &token, None).await;
    let mut elsewhere = api.ws_bearer(&other, &token, None).await;
    let events = vec![
        serde_json::json!(format!("tool output: token {GITHUB} done")),
        serde_json::json!({"headers": {"authorization": format!("Bearer {OPENAI}")}, "n": 1}),
        serde_json::json!({"nested": [{"k": GITHUB}], "escaped": format!("\"{OPENAI}\"")}),
        serde_json::json!({"plain": "nothing secret"}),
    ];
    for e in &events {
        assert_eq!(post_event(&api, &conv, e.clone()).await, 202);
    }
    for ws in [&mut a, &mut b] {
        for (i, _) in events.iter().enumerate() {
            let f = next(ws, Duration::from_secs(10)).await.unwrap();
            assert_eq!(f["type"], "event");
            assert_eq!(f["seq"], i as i64 + 1, "in order");
            let text = f.to_string();
            assert!(
                !text.contains(GITHUB) && !text.contains(OPENAI),
                "unscrubbed: {text}"
            );
            if i < 3 {
                assert!(text.contains("[REDACTED:"), "{text}");
            }
        }
    }
    // Another conversation's socket saw nothing.
    assert_eq!(
        post_event(&api, &other, serde_json::json!("only here")).await,
        202
    );
    let f = next(&mut elsewhere, Duration::from_secs(10)).await.unwrap();
    assert_eq!(f["data"], "only here");
    assert_eq!(f["seq"], 1);

    // Reconnect after seq 2: 3 and 4 are replayed, then live events follow.
    drop(a);
    let mut c = api.ws_bearer(&conv, &token, Some(2)).await;
    assert_eq!(
        next(&mut c, Duration::from_secs(10)).await.unwrap()["seq"],
        3
    );
    assert_eq!(
        next(&mut c, Duration::from_secs(10)).await.unwrap()["seq"],
        4
    );
    assert_eq!(
        post_event(&api, &conv, serde_json::json!("live")).await,
        202
    );
    let live = next(&mut c, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (live["seq"].as_i64(), live["data"].as_str()),
        (Some(5), Some("live"))
    );
    assert_eq!(
        next(&mut b, Duration::from_secs(10)).await.unwrap()["seq"],
        5
    );

    // The stored events are scrubbed too.
    drop((b, c, elsewhere));
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-journal"] {
        let p = format!("{}{suffix}", api.store.display());
        bytes.extend(std::fs::read(p).unwrap_or_default());
    }
    let hay = String::from_utf8_lossy(&bytes);
    assert!(
        !hay.contains(GITHUB) && !hay.contains(OPENAI),
        "a secret in the store"
    );

    // Bad event bodies: 400, unknown conversation 404, user token 401.
    let path = format!("/v1/conversations/{conv}/events");
    assert_eq!(api.service("POST", &path, Some("{")).await.status, 400);
    assert_eq!(
        api.service("POST", &path, Some(r#"{"data":1,"x":2}"#))
            .await
            .status,
        400
    );
    assert_eq!(
        api.service(
            "POST",
            "/v1/conversations/c_nope/events",
            Some(r#"{"data":1}"#)
        )
        .await
        .status,
        404
    );
    assert_eq!(
        api.user("POST", &path, &token, Some(r#"{"data":1}"#))
            .await
            .status,
        401
    );
    // An event whose frame would exceed 1 MiB is refused, not stored.
    let near = serde_json::json!({"data": "q".repeat(1024 * 1024 - 20)}).to_string();
    assert_eq!(api.service("POST", &path, Some(&near)).await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_4001_unless_renewed_in_band() {
    let keys = Keys::new();
    let api = start(&keys);
    let long = keys.token("acme", "alice", 600);
    let conv = api.conversation(&long).await;
    let short = keys.token("acme", "alice", 3);
    let start = Instant::now();
    let mut plain = api.ws_bearer(&conv, &short, None).await;
    let mut renewed = api.ws_bearer(&conv, &short, None).await;
    let mut wrong = api.ws_bearer(&conv, &short, None).await;
    // Renew in band with a fresh token of the same user.
    let auth = serde_json::json!({"type": "auth", "token": long}).to_string();
    renewed.send(Message::Text(auth.into())).await.unwrap();
    let ok = next(&mut renewed, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ok["type"], "auth_ok");
    // Another user's token is refused in band: 1008.
    let bob = keys.token("acme", "bob", 600);
    let auth = serde_json::json!({"type": "auth", "token": bob}).to_string();
    wrong.send(Message::Text(auth.into())).await.unwrap();
    assert_eq!(
        close_code(&mut wrong, Duration::from_secs(5)).await,
        Some(1008)
    );
    // The unrenewed socket closes with 4001 when the token expires.
    assert_eq!(
        close_code(&mut plain, Duration::from_secs(10)).await,
        Some(4001)
    );
    assert!(start.elapsed() >= Duration::from_secs(1));
    // The renewed one is still open and still writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = serde_json::json!({"type":"message","id":"after-expiry","text":"x"}).to_string();
    renewed.send(Message::Text(m.into())).await.unwrap();
    let ack = next(&mut renewed, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack, serde_json::json!({"type":"ack","id":"after-expiry"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_sockets_and_refuses_old_tokens() {
    let keys = Keys::new();
    let api = start(&keys);
    let alice = keys.token("acme", "alice", 600);
    let bob = keys.token("acme", "bob", 600);
    let conv = api.conversation(&alice).await;
    let mut a = api.ws_bearer(&conv, &alice, None).await;
    let mut b = api.ws_bearer(&conv, &bob, None).await;
    let r = api
        .service(
            "POST",
            "/v1/revocations",
            Some(r#"{"org":"acme","user":"alice"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(close_code(&mut a, Duration::from_secs(5)).await, Some(4003));
    // Alice's old token is refused; bob is untouched.
    let refused = api
        .ws(
            &format!("/v1/conversations/{conv}/ws"),
            &[("Authorization", &format!("Bearer {alice}"))],
        )
        .await;
    assert_eq!(refused.err().map(|r| r.status), Some(401));
    assert_eq!(
        api.user("GET", &format!("/v1/conversations/{conv}"), &alice, None)
            .await
            .status,
        401
    );
    let m = serde_json::json!({"type":"message","id":"b1","text":"x"}).to_string();
    b.send(Message::Text(m.into())).await.unwrap();
    assert_eq!(
        next(&mut b, Duration::from_secs(5)).await.unwrap()["type"],
        "ack"
    );
    // Org membership revoked: bob's socket closes too.
    let r = api
        .service("POST", "/v1/revocations", Some(r#"{"org":"acme"}"#))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(close_code(&mut b, Duration::from_secs(5)).await, Some(4003));
    // A token issued after the revocation works.
    let now = now_secs();
    let fresh = keys.token_with(
        &claims("acme", "alice", now + 2, now + 600),
        jsonwebtoken::Algorithm::EdDSA,
    );
    assert_eq!(
        api.user("GET", &format!("/v1/conversations/{conv}"), &fresh, None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_1013() {
    let keys = Keys::new();
    let api = start(&keys);
    let token = keys.token("acme", "alice", 600);
    let conv = api.conversation(&token).await;
    // This socket never reads while events pile up.
    let mut slow = api.ws_bearer(&conv, &token, None).await;
    let big = "x".repeat(64 * 1024);
    let mut posted = 0;
    while !api.log_text().contains("code=1013") {
        assert!(posted < 2000, "no 1013 after {posted} events of 64 KiB");
        assert_eq!(post_event(&api, &conv, serde_json::json!(big)).await, 202);
        posted += 1;
    }
    eprintln!("slow reader closed after {posted} events of 64 KiB");
    // Reading now drains what was in flight, then the close with 1013.
    assert_eq!(
        close_code(&mut slow, Duration::from_secs(20)).await,
        Some(1013)
    );
    // The API is fine.
    assert_eq!(api.request("GET", "/healthz", &[], None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_with_a_code() {
    let keys = Keys::new();
    let mut api = start(&keys);
    let token = keys.token("acme", "alice", 600);
    let conv = api.conversation(&token).await;
    let oversized = format!(
        r#"{{"type":"message","id":"big","text":"{}"}}"#,
        "y".repeat(1024 * 1024 + 10)
    );
    let cases: Vec<(&str, Message, u16)> = vec![
        ("malformed JSON", Message::Text("{not json".into()), 1007),
        ("not an object", Message::Text("[1,2]".into()), 1007),
        (
            "unknown type",
            Message::Text(r#"{"type":"exec","cmd":"id"}"#.into()),
            1008,
        ),
        (
            "extra field",
            Message::Text(r#"{"type":"message","id":"a","text":"x","org":"other"}"#.into()),
            1007,
        ),
        (
            "bad client id",
            Message::Text(r#"{"type":"message","id":"a b","text":"x"}"#.into()),
            1007,
        ),
        ("binary", Message::Binary(vec![1, 2, 3].into()), 1003),
        ("oversized", Message::Text(oversized.into()), 1009),
    ];
    for (name, frame, want) in cases {
        let mut ws = api.ws_bearer(&conv, &token, None).await;
        ws.send(frame).await.unwrap();
        let got = close_code(&mut ws, Duration::from_secs(10)).await;
        assert_eq!(got, Some(want), "case {name}");
    }
    // Far beyond the transport limit: cut at the frame header. The client
    // sees 1009 or, if it was still writing, a reset; never a hang.
    let mut ws = api.ws_bearer(&conv, &token, None).await;
    let huge = format!(
        r#"{{"type":"message","id":"huge","text":"{}"}}"#,
        "z".repeat(4 << 20)
    );
    if ws.send(Message::Text(huge.into())).await.is_ok() {
        let got = close_code(&mut ws, Duration::from_secs(10)).await;
        assert!(matches!(got, Some(1009) | None), "huge frame: {got:?}");
    }
    // No panic: the process is alive and serving; nothing was enqueued.
    assert!(api.child.try_wait().unwrap().is_none());
    assert_eq!(api.request("GET", "/healthz", &[], None).await.status, 200);
    assert_eq!(
        api.service("POST", "/v1/queue/claim", None).await.status,
        204
    );
    assert!(!api.log_text().contains("panicked"));
    let _ = CloseCode::Normal;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1001() {
    let keys = Keys::new();
    let mut api = start(&keys);
    let token = keys.token("acme", "alice", 600);
    let conv = api.conversation(&token).await;
    let mut ws = api.ws_bearer(&conv, &token, None).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &api.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(10)).await,
        Some(1001)
    );
    let exit = api.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}
