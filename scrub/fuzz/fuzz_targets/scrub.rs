//! Fuzz the scrubber: text, streaming at a fuzzer-chosen split, and JSON.
//! Properties: never panics; idempotent; streaming in two chunks gives the
//! same output as one shot; a live value given to the scrubber never
//! survives; JSON output stays valid JSON.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run scrub -- -max_total_time=300`
//! in scrub/fuzz (no nightly toolchain needed).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split_byte, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);

    let once = scrub::scrub_str(&text).into_owned();
    let twice = scrub::scrub_str(&once).into_owned();
    assert_eq!(once, twice, "not idempotent");

    let split = usize::from(split_byte) * rest.len() / 256;
    let (a, b) = rest.split_at(split);
    let mut stream = scrub::Scrubber::new().stream();
    let mut streamed = stream.push_bytes(a);
    streamed.push_str(&stream.push_bytes(b));
    streamed.push_str(&stream.flush());
    assert_eq!(streamed, once, "stream differs from one shot");

    // The first 8..=32 chars as a live value, when they are long enough.
    let live: String = text
        .chars()
        .take(8 + usize::from(split_byte % 25))
        .collect();
    if live.len() >= scrub::MIN_LIVE_LEN {
        let s = scrub::Scrubber::with_live_secrets([&live]);
        let out = without_markers(&s.scrub(&text));
        assert!(!out.contains(&live), "live value survived");
    }

    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) {
        let out = scrub::scrub_json(&value);
        let rendered = serde_json::to_string(&out).unwrap_or_default();
        assert!(serde_json::from_str::<serde_json::Value>(&rendered).is_ok());
    }
});

/// Replace every `[REDACTED:label]` with NUL so a live value that happens
/// to spell part of a marker is not reported as a leak.
fn without_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[REDACTED:") {
        let Some(len) = rest[start..].find(']') else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push('\0');
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}
