//! `chokepoint-api --metrics-listen`: Prometheus metrics on their own
//! plain-HTTP listener (never the TLS port), counting real traffic, and
//! passing `promtool check metrics`; the container self-probe over https
//! with `--healthcheck-ca`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// The metrics address from the API's log line.
fn metrics_addr(api: &Api) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = api.log_text();
        if let Some(rest) = log.split("metrics_addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return addr
                .parse()
                .unwrap_or_else(|e| panic!("metrics_addr {addr:?}: {e}"));
        }
        assert!(Instant::now() < deadline, "no metrics_addr line: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrape(addr: SocketAddr) -> String {
    let r = e2e::startup::get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The value of the series `name{labels}` (labels as printed), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_on_their_own_port_and_pass_promtool() {
    let keys = Keys::new();
    let api = start(&keys);
    let at = metrics_addr(&api);
    assert_ne!(at.port(), api.addr.port(), "metrics share the TLS port");
    assert!(at.ip().is_loopback());

    // Traffic: a success, refusals of each kind, a socket, a queued message.
    let token = keys.token("acme", "alice", 600);
    let conv = api.conversation(&token).await;
    let r = api
        .user("POST", "/v1/conversations", "not-a-jwt", Some("{}"))
        .await;
    assert_eq!(r.status, 401);
    let r = api
        .request("POST", "/v1/conversations", &[], Some("{}"))
        .await;
    assert_eq!(r.status, 401);
    let r = api
        .request(
            "POST",
            "/v1/queue/claim",
            &[("Authorization", "Bearer wrong")],
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    let r = api
        .ticket(&token, &conv, Some("https://evil.example"))
        .await;
    assert_eq!(r.status, 403);
    let r = api.user("GET", "/nowhere", &token, None).await;
    assert_eq!(r.status, 404);
    let mut ws = api.ws_bearer(&conv, &token, None).await;
    let frame = serde_json::json!({"type": "message", "id": "m1", "text": "hello"});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ack.to_text().unwrap().contains("\"ack\""), "{ack:?}");

    let text = scrape(at);
    for (series, want) in [
        (
            "chokepoint_api_requests_total{reason=\"ok\",status=\"201\"}",
            1.0,
        ),
        (
            "chokepoint_api_requests_total{reason=\"unauthorized\",status=\"401\"}",
            3.0,
        ),
        (
            "chokepoint_api_requests_total{reason=\"forbidden\",status=\"403\"}",
            1.0,
        ),
        (
            "chokepoint_api_requests_total{reason=\"not_found\",status=\"404\"}",
            1.0,
        ),
        (
            "chokepoint_api_requests_total{reason=\"ok\",status=\"101\"}",
            1.0,
        ),
        (
            "chokepoint_api_auth_refusals_total{reason=\"malformed_token\"}",
            1.0,
        ),
        (
            "chokepoint_api_auth_refusals_total{reason=\"missing_token\"}",
            1.0,
        ),
        (
            "chokepoint_api_auth_refusals_total{reason=\"bad_service_token\"}",
            1.0,
        ),
        (
            "chokepoint_api_auth_refusals_total{reason=\"origin_not_allowed\"}",
            1.0,
        ),
        ("chokepoint_api_websocket_sessions", 1.0),
        ("chokepoint_api_queue_depth", 1.0),
        ("chokepoint_api_queue_write_errors_total", 0.0),
    ] {
        assert_eq!(value(&text, series), want, "{series}\n{text}");
    }
    assert!(
        text.contains("chokepoint_api_queue_write_errors_total 0"),
        "{text}"
    );
    // The log line carries the same reason as the label.
    assert!(
        api.log_text().contains("reason=\"malformed_token\"")
            || api.log_text().contains("reason=malformed_token"),
        "{}",
        api.log_text()
    );
    e2e::promtool::check_metrics(&text);

    // The runtime claims and acks: the queue drains; the socket closes.
    let claimed = api.service("POST", "/v1/queue/claim", None).await;
    assert_eq!(claimed.status, 200, "{claimed:?}");
    let id = claimed.json()["id"].as_str().unwrap().to_owned();
    let acked = api
        .service("POST", &format!("/v1/queue/{id}/ack"), None)
        .await;
    assert_eq!(acked.status, 204, "{acked:?}");
    ws.close(None).await.unwrap();
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(at);
        if value(&text, "chokepoint_api_websocket_sessions") == 0.0
            && value(&text, "chokepoint_api_queue_depth") == 0.0
        {
            e2e::promtool::check_metrics(&text);
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The metrics listener serves /metrics only, and the TLS port no metrics.
    let r = e2e::startup::get(at, "/readyz").expect("answers");
    assert_eq!(r.status, 404);
    let r = api.request("GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 404);
}

/// A bad or taken `--metrics-listen` is refused with a clear line, before
/// anything serves.
#[test]
fn bad_metrics_listen_is_refused() {
    let keys = Keys::new();
    let store = format!("sqlite:{}", keys.dir.path().join("m.db").display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for (listen, metrics, code, text) in [
        (
            "127.0.0.1:0",
            "nonsense",
            2,
            "invalid value 'nonsense' for '--metrics-listen",
        ),
        ("127.0.0.1:0", taken_addr.as_str(), 69, "--metrics-listen"),
        (
            "127.0.0.1:18443",
            "127.0.0.1:18443",
            64,
            "same address as --listen",
        ),
    ] {
        let out = Command::new(bin())
            .args(["--listen", listen, "--metrics-listen", metrics])
            .args(["--issuer", ISS, "--audience", AUD, "--store", &store])
            .arg("--tls-cert")
            .arg(&keys.cert)
            .arg("--tls-key")
            .arg(&keys.key)
            .env("CHOKEPOINT_API_KEY_FILE", &keys.ed_public)
            .env_remove("CHOKEPOINT_ENV")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{metrics}: {err}");
        assert!(err.contains(text), "{metrics}: {err}");
    }
    drop(taken);
}

/// The container healthcheck: `chokepoint-api --healthcheck https://…
/// --healthcheck-ca CA` exits 0 against a ready API, 1 against a port
/// that does not answer, and names the CA problem otherwise.
#[test]
fn https_self_probe_with_a_ca() {
    let keys = Keys::new();
    let api = start(&keys);
    let probe = |url: &str, ca: &std::path::Path| {
        let out = Command::new(bin())
            .args(["--healthcheck", url, "--healthcheck-ca"])
            .arg(ca)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = format!("https://127.0.0.1:{}/readyz", api.addr.port());
    assert_eq!(probe(&url, &keys.ca), (Some(0), String::new()));
    // A CA that did not issue the certificate: refused, not trusted.
    let (code, err) = probe(&url, &keys.cert);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("TLS") || err.contains("certificate"), "{err}");
}
