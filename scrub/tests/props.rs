//! Property tests: idempotence, no leak of live values (in every encoding we
//! promise) or of generated tokens of several formats, and ordinary text
//! passing through unchanged.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test strategies and harness"
)]

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use scrub::{Scrubber, StreamScrubber, handle, scrub_str};

/// Words that cannot form (or key) a secret: no rule keyword inside.
const WORDS: &[&str] = &[
    "the", "cat", "runs", "over", "blue", "moon", "and", "a", "of", "to", "is", "in", "it", "dog",
    "red", "hello", "world", "42", "7", "ok", "done", "fine", "go", "up", "on", "by", "we", "you",
];

fn words(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop::sample::select(WORDS),
            prop::sample::select(&[" ", " ", "\n", ", ", ". "][..]),
        ),
        0..max,
    )
    .prop_map(|v| v.into_iter().map(|(w, sep)| format!("{w}{sep}")).collect())
}

fn distinct(s: &str) -> usize {
    let mut c: Vec<char> = s.chars().collect();
    c.sort_unstable();
    c.dedup();
    c.len()
}

/// Tokens of several formats, random but high-entropy (rules with an
/// entropy floor must fire).
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9]{36}".prop_map(|b| format!("ghp_{b}")),
        "[A-Z2-7]{16}".prop_map(|b| format!("AKIA{b}")),
        "[0-9]{12}-[0-9]{12}-[A-Za-z0-9]{24}".prop_map(|b| format!("xoxb-{b}")),
        "[A-Za-z0-9_-]{40}".prop_map(|b| format!("sk-proj-{b}")),
        any::<[u8; 32]>().prop_map(|r| handle::generate(&r)),
    ]
    .prop_filter("low-entropy body", |t| distinct(t) >= 14)
}

fn mixed() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => words(4),
            1 => token(),
            1 => prop::sample::select(
                &["api_key=", "token: ", "Authorization: Bearer ", "password=\"", "?access_token=", "=", "\""][..]
            )
            .prop_map(str::to_owned),
            1 => "[ -~]{0,12}",
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn scrubbing_is_idempotent(text in mixed()) {
        let once = scrub_str(&text).into_owned();
        let twice = scrub_str(&once).into_owned();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn generated_tokens_never_survive(pre in words(6), tok in token(), post in words(6)) {
        let text = format!("{pre} {tok} {post}");
        let out = scrub_str(&text);
        prop_assert!(!out.contains(&tok), "{} -> {}", text, out);
    }

    #[test]
    fn live_values_never_survive_in_any_encoding(
        secret in "[A-Za-z0-9+/_.~ :-]{8,40}",
        pre in words(4),
        post in words(4),
        enc in 0usize..8,
    ) {
        let encoded = match enc {
            0 => secret.clone(),
            1 => serde_json::to_string(&secret).unwrap(),
            2 => STANDARD.encode(&secret),
            3 => STANDARD_NO_PAD.encode(&secret),
            4 => URL_SAFE.encode(&secret),
            5 => URL_SAFE_NO_PAD.encode(&secret),
            6 => STANDARD.encode(format!("user:{secret}")),
            _ => secret.bytes().map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() }
                else { format!("%{b:02X}") }
            }).collect(),
        };
        let s = Scrubber::with_live_secrets([&secret]);
        let text = format!("{pre}{encoded}{post}");
        let out = s.scrub(&text);
        prop_assert!(!out.contains(&secret), "{} -> {}", text, out);
        if enc != 6 {
            prop_assert!(!out.contains(&encoded), "{} -> {}", text, out);
        }
        // Streaming, in small chunks, catches it too.
        let mut st = s.stream();
        let mut streamed = String::new();
        for chunk in text.as_bytes().chunks(5) {
            streamed.push_str(&st.push_bytes(chunk));
        }
        streamed.push_str(&st.flush());
        prop_assert_eq!(streamed, out.into_owned());
    }

    #[test]
    fn streaming_in_two_chunks_equals_one_shot(text in mixed(), split in any::<prop::sample::Index>()) {
        let bytes = text.as_bytes();
        let at = split.index(bytes.len() + 1);
        let (a, b) = bytes.split_at(at);
        // A small hold-back (still longer than every generated token) so
        // that short texts are really cut, at every chunk.
        let mut st = StreamScrubber::with_hold_back(Scrubber::new(), 96);
        let mut out = st.push_bytes(a);
        for chunk in b.chunks(3) {
            out.push_str(&st.push_bytes(chunk));
        }
        out.push_str(&st.flush());
        prop_assert_eq!(out, scrub_str(&text).into_owned());
    }

    #[test]
    fn ordinary_text_passes_unchanged(text in words(60)) {
        let out = scrub_str(&text);
        prop_assert!(matches!(out, Cow::Borrowed(_)));
        prop_assert_eq!(out, text.as_str());
    }

    #[test]
    fn arbitrary_input_never_panics(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = scrub_str(&text);
        let mut st = Scrubber::new().stream();
        let _ = st.push_bytes(&bytes);
        let _ = st.flush();
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(|n| serde_json::json!(n)),
        words(3).prop_map(serde_json::Value::String),
        (words(2), token()).prop_map(|(w, t)| serde_json::Value::String(format!("{w}{t}"))),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Same shape: same JSON types, array lengths and object sizes.
fn same_shape(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_shape(p, q))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len() && x.values().zip(y.values()).all(|(p, q)| same_shape(p, q))
        }
        (V::String(_), V::String(_)) => true,
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn json_keeps_structure_and_leaks_no_token(v in json_value()) {
        let out = scrub::scrub_json(&v);
        prop_assert!(same_shape(&v, &out), "{} -> {}", v, out);
        let text = out.to_string();
        prop_assert!(!text.contains("ghp_") || text.contains("[REDACTED:"));
        for s in collect_strings(&v) {
            for tok in s.split(' ').filter(|w| w.len() >= 20) {
                prop_assert!(!text.contains(tok), "{} leaked in {}", tok, text);
            }
        }
    }
}

fn collect_strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().flat_map(collect_strings).collect(),
        serde_json::Value::Object(m) => m.values().flat_map(collect_strings).collect(),
        _ => Vec::new(),
    }
}
