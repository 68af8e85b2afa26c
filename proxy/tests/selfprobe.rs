//! `egress-proxy --healthcheck URL` against the real proxy, and its
//! `/metrics` after allowed and denied traffic through
//! `promtool check metrics` (Debian's prometheus package).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{DnsServer, Origin, ProxyProcess, proxy_request};

const BIN: &str = env!("CARGO_BIN_EXE_egress-proxy");

fn start() -> (Origin, DnsServer, ProxyProcess) {
    let origin = Origin::start(Ipv4Addr::new(127, 0, 0, 2));
    let dns = DnsServer::start();
    dns.set_static(
        "origin.chokepoint.dev",
        &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
    );
    let policy = format!(
        "version: v1\nunsafe_allow_ranges: [127.0.0.2/32]\nread_ports: [80, {}]\norgs:\n  local:\n    clients: [127.0.0.1/32]\n",
        origin.addr.port()
    );
    let proxy = ProxyProcess::start(Path::new(BIN), &policy, dns.addr);
    (origin, dns, proxy)
}

/// Run the probe; (exit code, stderr).
fn probe(args: &[&str]) -> (i32, String) {
    let t = Instant::now();
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "the probe took {:?}",
        t.elapsed()
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn healthcheck_exits_0_on_2xx_and_1_otherwise() {
    let (_origin, _dns, proxy) = start();
    let ready = format!("http://{}/readyz", proxy.admin);
    assert_eq!(probe(&["--healthcheck", &ready]), (0, String::new()));
    assert_eq!(probe(&[&format!("--healthcheck={ready}")]).0, 0);

    // 404: unhealthy, one line naming the status.
    let (code, err) = probe(&["--healthcheck", &format!("http://{}/nope", proxy.admin)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("answered 404") && err.lines().count() == 1,
        "{err}"
    );

    // Nothing listening: unhealthy, fast.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (code, err) = probe(&["--healthcheck", &format!("http://{addr}/readyz")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("egress-proxy: healthcheck: cannot connect"),
        "{err}"
    );

    // A peer that never answers: unhealthy within the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) = probe(&[
        "--healthcheck",
        &format!("http://{}/readyz", silent.local_addr().unwrap()),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out"), "{err}");

    // Bad probe flags: 64, and the policy is never read (a missing
    // --policy file does not matter to a probe).
    assert_eq!(probe(&["--healthcheck", "ftp://x/"]).0, 64);
    assert_eq!(
        probe(&["--healthcheck", &ready, "--policy", "/nonexistent"]).0,
        64
    );
    let (code, err) = probe(&["--healthcheck", "https://127.0.0.1:1/"]);
    assert_eq!(code, 64);
    assert!(err.contains("--healthcheck-ca"), "{err}");
}

#[test]
fn metrics_pass_promtool_after_traffic() {
    let (origin, _dns, proxy) = start();
    origin.route("/", "text/plain", b"hi".to_vec());
    let url = format!("http://origin.chokepoint.dev:{}/", origin.addr.port());
    assert_eq!(proxy_request(proxy.listen, "GET", &url, "").status, 200);
    let denied = proxy_request(proxy.listen, "GET", "http://169.254.169.254/", "");
    assert_eq!(denied.status, 403);
    // The denial is counted as its connection ends: wait (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = proxy.metrics();
    while !text.contains("verdict=\"deny\"") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        text = proxy.metrics();
    }
    assert!(text.contains("egress_requests_total{"), "{text}");
    assert!(text.contains("verdict=\"deny\""), "{text}");
    e2e::promtool::check_metrics(&text);
}
