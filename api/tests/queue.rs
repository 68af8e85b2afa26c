//! Writes through the durable queue, against the real binary over TLS:
//! 1,000 client messages with random reconnects and resends land exactly
//! once each, in order per conversation; SIGKILL and a restart lose none;
//! with no runtime consuming they wait; claims are leases.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

async fn connect(
    addr: SocketAddr,
    tls: &TlsConnector,
    conversation: &str,
    token: &str,
) -> Option<Ws> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let s = tls
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .ok()?;
    let mut req = format!(
        "wss://127.0.0.1:{}/v1/conversations/{conversation}/ws",
        addr.port()
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::client_async(req, s)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// Send messages 0..n of `conversation` until every one is acked: pipelined
/// (up to 16 in flight), dropping the connection at random points, resending
/// from the first unacked message after each reconnect, and resending
/// already-acked ones now and then. Returns how many connections it used.
async fn send_all(
    addr: SocketAddr,
    tls: TlsConnector,
    conversation: String,
    token: String,
    n: usize,
    seed: u64,
    acked_total: Arc<AtomicUsize>,
) -> usize {
    let mut rng = Rng(seed);
    let mut acked = 0usize;
    let mut connections = 0;
    let start = Instant::now();
    while acked < n {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "hung: no progress bound"
        );
        let Some(ws) = connect(addr, &tls, &conversation, &token).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        connections += 1;
        let (mut tx, mut rx) = ws.split();
        let drop_after = 1 + rng.below(80) as usize;
        let mut next = acked;
        let mut sent_here = 0;
        'conn: loop {
            while next < n && next - acked < 16 && sent_here < drop_after {
                let frame = serde_json::json!({
                    "type": "message", "id": format!("m{next:04}"), "text": format!("{conversation} {next}")
                });
                if tx
                    .send(Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    break 'conn;
                }
                if acked > 0 && rng.below(10) == 0 {
                    // A resend of something already acked.
                    let old = rng.below(acked as u64) as usize;
                    let dup = serde_json::json!({
                        "type": "message", "id": format!("m{old:04}"), "text": format!("{conversation} {old}")
                    });
                    if tx
                        .send(Message::Text(dup.to_string().into()))
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
                next += 1;
                sent_here += 1;
            }
            if acked == n || (sent_here >= drop_after && rng.below(2) == 0) {
                // Drop the connection with frames possibly in flight.
                break;
            }
            let frame = match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                _ => break,
            };
            let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
            assert_eq!(v["type"], "ack", "{v}");
            let idx: usize = v["id"].as_str().unwrap()[1..].parse().unwrap();
            if idx == acked {
                acked += 1;
                acked_total.fetch_add(1, Ordering::Relaxed);
            } else {
                assert!(idx < acked, "ack {idx} out of order (expected {acked})");
            }
            if sent_here >= drop_after && next == acked {
                break;
            }
        }
        // Abrupt: no close frame.
        drop(tx);
        drop(rx);
    }
    connections
}

/// Claim and ack everything in the queue; (conversation, text) in claim order.
async fn drain(api: &Api) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let r = api
            .service("POST", "/v1/queue/claim", Some(r#"{"lease_secs":30}"#))
            .await;
        if r.status == 204 {
            return got;
        }
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        let id = v["id"].as_str().unwrap();
        got.push((
            v["conversation"].as_str().unwrap().to_owned(),
            v["text"].as_str().unwrap().to_owned(),
        ));
        let a = api
            .service("POST", &format!("/v1/queue/{id}/ack"), None)
            .await;
        assert_eq!(a.status, 204, "{a:?}");
        assert_security_headers(&a, "ack");
    }
}

fn check_exactly_once_in_order(got: &[(String, String)], convs: &[String], per: usize) {
    assert_eq!(got.len(), convs.len() * per, "exactly once each");
    let mut by_conv: HashMap<&str, Vec<usize>> = HashMap::new();
    for (c, text) in got {
        let (tc, i) = text.rsplit_once(' ').unwrap();
        assert_eq!(tc, c, "message in the wrong conversation");
        by_conv.entry(c).or_default().push(i.parse().unwrap());
    }
    for c in convs {
        let seq = &by_conv[c.as_str()];
        assert_eq!(*seq, (0..per).collect::<Vec<_>>(), "order in {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_with_reconnects_land_once_in_order() {
    let keys = Keys::new();
    let api = start(&keys);
    let convs_n = 4;
    let per = 250;
    let mut convs = Vec::new();
    let mut tasks = Vec::new();
    let acked = Arc::new(AtomicUsize::new(0));
    for i in 0..convs_n {
        let token = keys.token("acme", &format!("user{i}"), 600);
        let c = api.conversation(&token).await;
        convs.push(c.clone());
        tasks.push(tokio::spawn(send_all(
            api.addr,
            api.connector(),
            c,
            token,
            per,
            0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1),
            acked.clone(),
        )));
    }
    let mut connections = 0;
    for t in tasks {
        connections += t.await.unwrap();
    }
    eprintln!("1,000 messages over {connections} connections");
    assert!(connections > 20, "the test must actually reconnect");
    // No runtime has consumed anything: the messages wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = drain(&api).await;
    check_exactly_once_in_order(&got, &convs, per);
    // Drained: the next claim is empty.
    assert_eq!(
        api.service("POST", "/v1/queue/claim", None).await.status,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_lose_no_acked_message() {
    let keys = Keys::new();
    let store = keys.dir.path().join("api.db");
    let mut api = start(&keys);
    let addr = api.addr;
    let per = 150;
    let mut convs = Vec::new();
    let mut tasks = Vec::new();
    let acked = Arc::new(AtomicUsize::new(0));
    for i in 0..2 {
        let token = keys.token("acme", &format!("user{i}"), 600);
        let c = api.conversation(&token).await;
        convs.push(c.clone());
        tasks.push(tokio::spawn(send_all(
            addr,
            api.connector(),
            c,
            token,
            per,
            0xD1B5_4A32_D192_ED03 ^ (i as u64 + 7),
            acked.clone(),
        )));
    }
    // Kill -9 twice while clients are mid-stream, restart on the same store
    // and address each time.
    for kill_at in [60, 180] {
        assert!(
            eventually(Duration::from_secs(60), || acked.load(Ordering::Relaxed)
                >= kill_at)
            .await,
            "clients stalled before {kill_at}"
        );
        api.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        api = start_with(&keys, &store, &[], Some(addr));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = drain(&api).await;
    check_exactly_once_in_order(&got, &convs, per);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_leases() {
    let keys = Keys::new();
    let api = start(&keys);
    let token = keys.token("acme", "alice", 600);
    let c1 = api.conversation(&token).await;
    let mut ws = api.ws_bearer(&c1, &token, None).await;
    for (id, text) in [("a", "first"), ("b", "second")] {
        let f = serde_json::json!({"type":"message","id":id,"text":text}).to_string();
        ws.send(Message::Text(f.into())).await.unwrap();
        let ack = ws.next().await.unwrap().unwrap();
        assert_eq!(
            ack.to_text().unwrap(),
            format!(r#"{{"type":"ack","id":"{id}"}}"#)
        );
    }
    let claim = |lease: u64| {
        let body = format!(r#"{{"lease_secs":{lease}}}"#);
        let api = &api;
        async move { api.service("POST", "/v1/queue/claim", Some(&body)).await }
    };
    let first = claim(1).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["text"], "first");
    assert_eq!(first.json()["conversation"], c1.as_str());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    // "second" waits behind the leased "first" (order per conversation).
    assert_eq!(claim(1).await.status, 204);
    // The lease passes without an ack: "first" returns to the queue.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ack_late = api
        .service("POST", &format!("/v1/queue/{id}/ack"), None)
        .await;
    assert_eq!(ack_late.status, 409, "{ack_late:?}");
    let again = claim(5).await;
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(
        api.service("POST", &format!("/v1/queue/{id}/ack"), None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.service("POST", &format!("/v1/queue/{id}/ack"), None)
            .await
            .status,
        204
    );
    let second = claim(5).await;
    assert_eq!(second.json()["text"], "second");
    assert_eq!(
        api.service("POST", "/v1/queue/m_unknown/ack", None)
            .await
            .status,
        404
    );
    // Bad lease values and bodies are 400.
    assert_eq!(claim(0).await.status, 400);
    assert_eq!(claim(99_999).await.status, 400);
    assert_eq!(
        api.service("POST", "/v1/queue/claim", Some(r#"{"lease":1}"#))
            .await
            .status,
        400
    );
}
