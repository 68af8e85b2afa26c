//! `promtool check metrics` (Debian's prometheus package) over a scrape.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Pipe `text` (a `/metrics` body) through `promtool check metrics`;
/// panics with its findings. Skips when promtool is missing, unless
/// `CHOKEPOINT_REQUIRE_PRIVILEGED=1` (then a missing promtool fails).
pub fn check_metrics(text: &str) {
    if !crate::require(
        "promtool (apt-get install prometheus)",
        crate::have_tool("promtool"),
    ) {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("promtool stdin: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
