//! `egressctl scrub` through the real binary: text mode (streamed, a large
//! input with secrets spread across read boundaries), `--json` (structure
//! kept, strings and keys scrubbed), and invalid JSON (exit 2, stderr only).
#![allow(
    clippy::unwrap_used,
    reason = "test harness helper outside #[test] fns"
)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_egressctl"))
        .arg("scrub")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        pipe.write_all(&input).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

const GH: &str = "ghp_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5";

#[test]
fn text_mode_scrubs_a_stream() {
    let handle = scrub::handle::generate(&[3u8; 32]);
    let mut input = String::new();
    // ~3 MiB so secrets straddle the 64 KiB read boundaries somewhere.
    for i in 0..40_000 {
        input.push_str(&format!("line {i} ok nothing to see here at all {i}\n"));
        if i % 997 == 0 {
            input.push_str(&format!(
                "GET /cb?access_token={GH} Authorization: Bearer {handle}\n"
            ));
        }
    }
    let out = run(&[], input.as_bytes());
    assert!(out.status.success(), "{:?}", out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(GH));
    assert!(!text.contains(&handle));
    assert_eq!(text, scrub::scrub_str(&input));
    assert!(text.contains("line 39999 ok nothing to see here at all 39999\n"));
    assert!(out.stderr.is_empty());
}

#[test]
fn text_mode_passes_plain_text_and_empty_input() {
    let out = run(&[], b"hello world\n");
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello world\n");
    let out = run(&[], b"");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn json_mode_keeps_structure() {
    let doc = serde_json::json!({
        "user": "alice",
        "count": 3,
        "nested": {"deep": [true, null, format!("token {GH}")]},
        GH: "key that is a secret",
        "api_key": "Zx81kQ0pLm29sJd7Fh3W"
    });
    let out = run(&["--json"], doc.to_string().as_bytes());
    assert!(out.status.success(), "{:?}", out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(GH), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["count"], 3);
    assert_eq!(v["nested"]["deep"][0], true);
    assert!(v["nested"]["deep"][1].is_null());
    assert_eq!(v["nested"]["deep"][2], "token [REDACTED:github-pat]");
    assert_eq!(v["api_key"], "[REDACTED:generic-api-key]");
    assert_eq!(v.as_object().unwrap().len(), 5);
}

#[test]
fn invalid_json_exits_2_with_nothing_on_stdout() {
    let out = run(&["--json"], format!("{{\"a\": \"{GH}\"").as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid JSON"), "{err}");
    assert!(!err.contains(GH), "{err}");
}
