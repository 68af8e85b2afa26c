//! Exact live values: secrets known at run time (the tokens the broker
//! injected), found in every encoding chokepoint can cheaply predict.
//!
//! For each value we add to one Aho-Corasick automaton (leftmost-longest):
//! the raw bytes; its JSON-escaped form; percent-encoded (upper and lower hex,
//! and form-encoding with `+` for space); base64 standard and URL-safe, padded
//! and unpadded; and the stable core of its base64 encoding at each of the 3
//! alignment offsets (the characters that depend only on the value's bytes,
//! so the value is found inside a longer base64 blob such as a Basic header
//! `user:TOKEN`).
//!
//! Must never: match values shorter than [`MIN_LIVE_LEN`] (too many false
//! positives), or keep a copy of the values anywhere but the automaton.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use crate::Span;

/// Values shorter than this (in bytes) are ignored.
pub const MIN_LIVE_LEN: usize = 8;
/// Encoded variants shorter than this are not added (base64 cores).
const MIN_VARIANT_LEN: usize = 8;
/// The label of a live-value redaction.
pub const LIVE_LABEL: &str = "live-secret";

/// A compiled set of live secret values.
#[derive(Debug, Clone)]
pub struct LiveSecrets {
    ac: Option<AhoCorasick>,
    max_len: usize,
}

impl LiveSecrets {
    /// Build from values; values shorter than [`MIN_LIVE_LEN`] are skipped.
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for v in values {
            let v = v.as_ref();
            if v.len() < MIN_LIVE_LEN {
                continue;
            }
            add_variants(v, &mut variants);
        }
        variants.retain(|v| v.len() >= MIN_VARIANT_LEN);
        variants.sort();
        variants.dedup();
        let max_len = variants.iter().map(Vec::len).max().unwrap_or(0);
        let ac = if variants.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&variants)
                .ok()
        };
        Self { ac, max_len }
    }

    /// No values to look for.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// Longest encoded variant, in bytes.
    #[must_use]
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub(crate) fn find(&self, text: &str, out: &mut Vec<Span>) {
        if let Some(ac) = &self.ac {
            for m in ac.find_iter(text.as_bytes()) {
                out.push(Span {
                    start: m.start(),
                    end: m.end(),
                    label: LIVE_LABEL,
                });
            }
        }
    }
}

fn add_variants(v: &str, out: &mut Vec<Vec<u8>>) {
    let raw = v.as_bytes();
    out.push(raw.to_vec());
    // JSON-escaped (without the quotes).
    if let Ok(j) = serde_json::to_string(v) {
        if let Some(inner) = j.get(1..j.len().saturating_sub(1)) {
            out.push(inner.as_bytes().to_vec());
            // Also with `/` escaped, as some encoders do.
            out.push(inner.replace('/', "\\/").into_bytes());
        }
    }
    // Percent-encodings.
    for upper in [true, false] {
        for form in [false, true] {
            out.push(percent_encode(raw, upper, form).into_bytes());
        }
    }
    // Direct base64 encodings.
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(raw).into_bytes());
    }
    // Stable cores at each alignment offset.
    for offset in 0..3usize {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(raw);
        let total_bits = buf.len() * 8;
        let first = (offset * 8).div_ceil(6);
        let last = total_bits / 6; // exclusive: chars fully inside the value
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(&buf);
            if let Some(core) = enc.get(first..last) {
                out.push(core.as_bytes().to_vec());
            }
        }
    }
}

fn percent_encode(raw: &[u8], upper: bool, form: bool) -> String {
    const UP: &[u8; 16] = b"0123456789ABCDEF";
    const LO: &[u8; 16] = b"0123456789abcdef";
    let hex = if upper { UP } else { LO };
    let mut s = String::with_capacity(raw.len() * 3);
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(char::from(b));
        } else if form && b == b' ' {
            s.push('+');
        } else {
            s.push('%');
            for nib in [b >> 4, b & 0xF] {
                s.push(hex.get(usize::from(nib)).map_or('0', |&c| char::from(c)));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(live: &LiveSecrets, text: &str) -> usize {
        let mut v = Vec::new();
        live.find(text, &mut v);
        v.len()
    }

    #[test]
    fn finds_all_encodings() {
        let secret = "tok/en+with spaces\"and:quote";
        let live = LiveSecrets::new([secret]);
        assert_eq!(hits(&live, secret), 1);
        assert_eq!(hits(&live, &serde_json::to_string(secret).unwrap()), 1);
        assert!(hits(&live, &percent_encode(secret.as_bytes(), true, false)) >= 1);
        assert!(hits(&live, &percent_encode(secret.as_bytes(), false, true)) >= 1);
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            assert!(hits(&live, &engine.encode(secret)) >= 1);
            for prefix in ["u", "us", "user:"] {
                let blob = engine.encode(format!("{prefix}{secret}!!"));
                assert!(hits(&live, &blob) >= 1, "{prefix} {blob}");
            }
        }
    }

    #[test]
    fn short_values_ignored() {
        let live = LiveSecrets::new(["abc"]);
        assert!(live.is_empty());
        assert_eq!(hits(&live, "abc"), 0);
    }
}
