//! # scrub — remove secrets from everything chokepoint emits
//!
//! Every output boundary of chokepoint (the proxy's audit log; the worker's
//! LLM context, event stream, tool history and error messages) passes text
//! through this crate. It replaces each secret with `[REDACTED:<rule-id>]`
//! (`[REDACTED:live-secret]` for a value known at run time) so the reader can
//! still tell what was there.
//!
//! What it catches: gitleaks' default rules (embedded at build time, MIT,
//! see `rules/gitleaks.toml`), chokepoint's own rules (provider token
//! formats, dotted OAuth tokens, webhook URLs, `Authorization` values, URL
//! passwords and secret query parameters), the context rule (a secret-naming
//! key, an assignment and a token-shaped value, in any common syntax: see
//! `context.rs` and docs/scrubbing.md),
//! chokepoint's credential handles ([`handle`], checksum-verified) and exact
//! live values in their common encodings ([`LiveSecrets`]).
//!
//! How: one Aho-Corasick automaton over every rule's keywords (the context
//! rule's too); a rule's regex runs only on a window around a hit of one of
//! its keywords, and is compiled on first use. The rule set is built once per process and shared.
//!
//! This crate owns: the rule set, the handle format, text/JSON/stream
//! scrubbing. It must never: do I/O, panic on any input, do unbounded work
//! per byte, or pass through a JSON subtree it did not scan (past the depth or
//! node cap the remainder is redacted).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)
)]

use std::borrow::Cow;

mod context;
pub mod handle;
mod json;
mod live;
mod rules;
mod stream;

pub use json::{JsonLimits, MAX_JSON_DEPTH, MAX_JSON_NODES};
pub use live::{LIVE_LABEL, LiveSecrets, MIN_LIVE_LEN};
pub use rules::RuleSet;
pub use stream::{DEFAULT_HOLD_BACK, MAX_PENDING, StreamScrubber};

/// Extra passes over already-redacted text (see [`Scrubber::scrub`]).
const MAX_PASSES: usize = 3;

/// Label used when a JSON subtree is cut off by the depth or node cap.
pub const LIMIT_LABEL: &str = "limit-exceeded";

/// One finding: a byte range of the input and the label it is redacted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) label: &'static str,
}

/// A scrubber: the shared default rule set plus optional live values.
///
/// Cheap to clone; build one per run with the run's injected tokens.
#[derive(Debug, Clone)]
pub struct Scrubber {
    rules: &'static RuleSet,
    live: Option<LiveSecrets>,
}

impl Default for Scrubber {
    fn default() -> Self {
        Self::new()
    }
}

impl Scrubber {
    /// The default rules, no live values.
    #[must_use]
    pub fn new() -> Self {
        Self {
            rules: RuleSet::default_shared(),
            live: None,
        }
    }

    /// The default rules plus these exact live values (and their encodings).
    pub fn with_live_secrets<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let live = LiveSecrets::new(values);
        Self {
            rules: RuleSet::default_shared(),
            live: (!live.is_empty()).then_some(live),
        }
    }

    /// The longest secret this scrubber is guaranteed to see whole when
    /// streaming; used to size [`StreamScrubber`]'s hold-back window.
    #[must_use]
    pub fn max_secret_len(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, LiveSecrets::max_len)
            .max(DEFAULT_HOLD_BACK)
    }

    /// Findings in `text`, sorted by start and merged (no overlaps).
    pub(crate) fn spans(&self, text: &str) -> Vec<Span> {
        let mut spans = Vec::new();
        self.rules.find(text, &mut spans);
        if let Some(live) = &self.live {
            live.find(text, &mut spans);
        }
        merge(text, spans)
    }

    /// Scrub one text. Borrowed when nothing was found.
    #[must_use]
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let rendered = render(text, &spans, 0, text.len());
        if spans.iter().any(|s| glued(text, s)) {
            Cow::Owned(self.settle(rendered))
        } else {
            Cow::Owned(rendered)
        }
    }

    /// Re-scan redacted text until nothing more is found (at most
    /// [`MAX_PASSES`] passes). A redaction can expose a neighbour: `\b` after
    /// a token that was glued to another one only holds once the first is
    /// replaced by a marker. This keeps scrubbing idempotent.
    pub(crate) fn settle(&self, mut text: String) -> String {
        for _ in 0..MAX_PASSES {
            let spans = self.spans(&text);
            if spans.is_empty() {
                break;
            }
            text = render(&text, &spans, 0, text.len());
        }
        text
    }

    /// Scrub a JSON value with the default limits (see [`JsonLimits`]).
    #[must_use]
    pub fn scrub_json(&self, value: &serde_json::Value) -> serde_json::Value {
        json::scrub_value(self, value, JsonLimits::default())
    }

    /// Scrub a JSON value with explicit limits.
    #[must_use]
    pub fn scrub_json_with(
        &self,
        value: &serde_json::Value,
        limits: JsonLimits,
    ) -> serde_json::Value {
        json::scrub_value(self, value, limits)
    }

    /// A streaming scrubber for chunked output using this scrubber's rules.
    #[must_use]
    pub fn stream(&self) -> StreamScrubber {
        StreamScrubber::new(self.clone())
    }
}

/// Scrub one text with the default, lazily built, shared rule set.
#[must_use]
pub fn scrub_str(input: &str) -> Cow<'_, str> {
    static DEFAULT: std::sync::OnceLock<Scrubber> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(Scrubber::new).scrub(input)
}

/// Scrub a JSON value with the default rule set and limits.
#[must_use]
pub fn scrub_json(value: &serde_json::Value) -> serde_json::Value {
    Scrubber::new().scrub_json(value)
}

/// Is the span glued to token characters on either side? Only then can its
/// redaction expose a new match (a `\b` that now holds), so only then is a
/// second pass ([`Scrubber::settle`]) needed.
pub(crate) fn glued(text: &str, s: &Span) -> bool {
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"_-+/=.~:%".contains(b);
    let bytes = text.as_bytes();
    s.start
        .checked_sub(1)
        .and_then(|i| bytes.get(i))
        .is_some_and(token)
        || bytes.get(s.end).is_some_and(token)
}

/// Widen to char boundaries, sort, and merge overlapping spans (the first
/// span's label wins, live values take precedence).
fn merge(text: &str, mut spans: Vec<Span>) -> Vec<Span> {
    if spans.is_empty() {
        return spans;
    }
    for s in &mut spans {
        s.end = s.end.min(text.len());
        s.start = s.start.min(s.end);
        while s.start > 0 && !text.is_char_boundary(s.start) {
            s.start -= 1;
        }
        while s.end < text.len() && !text.is_char_boundary(s.end) {
            s.end += 1;
        }
    }
    spans.retain(|s| s.end > s.start);
    spans.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then((b.label == LIVE_LABEL).cmp(&(a.label == LIVE_LABEL)))
            // A named rule's label is more telling than the context rule's.
            .then((a.label == context::LABEL).cmp(&(b.label == context::LABEL)))
    });
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.start < last.end => {
                last.end = last.end.max(s.end);
                if s.label == LIVE_LABEL {
                    last.label = LIVE_LABEL;
                }
            }
            _ => out.push(s),
        }
    }
    out
}

/// Render `text[from..to]` with every span (clipped to the range) replaced.
/// `from`/`to` must be char boundaries; spans must be sorted and disjoint.
pub(crate) fn render(text: &str, spans: &[Span], from: usize, to: usize) -> String {
    let mut out = String::with_capacity(to.saturating_sub(from) + 32);
    let mut pos = from;
    for s in spans {
        let start = s.start.max(from);
        let end = s.end.min(to);
        if end <= start || start < pos {
            continue;
        }
        out.push_str(text.get(pos..start).unwrap_or_default());
        out.push_str("[REDACTED:");
        out.push_str(s.label);
        out.push(']');
        pos = end;
    }
    if pos < to {
        out.push_str(text.get(pos..to).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_rules_all_compile() {
        let set = RuleSet::default_shared();
        assert!(set.errors().is_empty(), "{:?}", set.errors());
        assert_eq!(
            set.len(),
            293,
            "217 gitleaks rules with a regex and no path + 76 own (the context rule is not one)"
        );
        let failed = set.compile_all();
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[test]
    fn url_tokens_redacted() {
        let gh = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5");
        let url = format!("http://example.com/cb?access_token={gh}&x=1");
        let out = scrub_str(&url);
        assert!(!out.contains(&gh), "{out}");
        assert!(
            out.starts_with("http://example.com/cb?access_token=[REDACTED:"),
            "{out}"
        );
        assert!(out.ends_with("&x=1"), "{out}");

        let sk = "sk-proj-AbCdEf0123456789GhIjKlMnOpQrStUv";
        let url = format!("https://api.example.com/v1?api_key={sk}");
        let out = scrub_str(&url);
        assert!(!out.contains("AbCdEf0123456789"), "{out}");
        assert!(out.contains("?api_key=[REDACTED:"), "{out}");
    }

    #[test]
    fn handles_redacted_only_when_valid() {
        let h = handle::generate(&[9u8; 32]);
        let input = format!("use {h} now");
        let out = scrub_str(&input);
        assert_eq!(out, "use [REDACTED:chokepoint-handle] now");
        let mut bad = h.clone();
        bad.pop();
        bad.push(if h.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(
            scrub_str(&format!("use {bad} now")),
            format!("use {bad} now")
        );
    }

    #[test]
    fn header_and_userinfo() {
        let out = scrub_str("Authorization: Bearer abcdefGHIJKL0123456789xyz");
        assert_eq!(out, "Authorization: Bearer [REDACTED:authorization-header]");
        let out = scrub_str("Authorization: Basic dXNlcjpodW50ZXIy");
        assert_eq!(out, "Authorization: Basic [REDACTED:authorization-header]");
        let out = scrub_str("connect postgres://app:s3cr3t-Pa55@db.internal:5432/x");
        assert!(!out.contains("s3cr3t-Pa55"), "{out}");
        assert!(out.contains("postgres://app:[REDACTED:"), "{out}");
    }

    #[test]
    fn live_values_and_plain_text() {
        let s = Scrubber::with_live_secrets(["live-value-0123456789"]);
        let out = s.scrub("echo: live-value-0123456789!");
        assert_eq!(out, "echo: [REDACTED:live-secret]!");
        assert!(matches!(s.scrub("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn render_handles_odd_spans() {
        let text = "héllo wörld";
        let spans = merge(
            text,
            vec![
                Span {
                    start: 2,
                    end: 3,
                    label: "x",
                },
                Span {
                    start: 0,
                    end: 100,
                    label: "y",
                },
            ],
        );
        assert_eq!(render(text, &spans, 0, text.len()), "[REDACTED:y]");
    }
}
