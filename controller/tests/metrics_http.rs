//! The controller's metrics text passes `promtool check metrics`, and
//! `egress-controller --healthcheck` / `egress-controller worker
//! --healthcheck` probe without starting anything. (The daemon itself, with
//! `--metrics-listen`, touches host nftables and Docker, so its HTTP
//! listener is not started here.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::io::{Read, Write};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_egress-controller");

/// A small HTTP server answering `status` to up to 4 requests.
fn answer(status: &'static str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..4 {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    addr
}

#[test]
fn controller_and_worker_healthchecks() {
    let ok = answer("200 OK");
    let bad = answer("503 Service Unavailable");
    for pre in [&[][..], &["worker"][..]] {
        let run = |url: String| {
            let out = Command::new(BIN)
                .args(pre)
                .args(["--healthcheck", &url])
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        // No --policy needed: a probe reads nothing.
        assert_eq!(
            run(format!("http://{ok}/readyz")),
            (Some(0), String::new()),
            "{pre:?}"
        );
        let (code, err) = run(format!("http://{bad}/readyz"));
        assert_eq!(code, Some(1), "{pre:?} {err}");
        assert!(
            err.contains("answered 503") && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn controller_metrics_pass_promtool() {
    let state = controller::reconcile::State {
        controller_drift_total: 2,
        last_reconcile_unix: 1_700_000_000,
        controller_containers_stopped_total: 1,
        ..Default::default()
    };
    let text = state.prometheus_text();
    assert!(text.contains("controller_drift_total 2"), "{text}");
    let have = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("CHOKEPOINT_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "CHOKEPOINT_REQUIRE_PRIVILEGED=1 but promtool (apt-get install prometheus) is not available"
        );
        eprintln!("SKIP: promtool is not available");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
