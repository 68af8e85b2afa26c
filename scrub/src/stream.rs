//! Streaming scrubbing for chunked output (SSE, process stdout).
//!
//! A [`StreamScrubber`] keeps the last `hold_back` bytes it has been given
//! unemitted, so a secret split across chunks is seen whole before any byte
//! of it leaves: only text at least `hold_back` bytes behind the end of input
//! is emitted, and if a finding straddles that cut the cut moves back to the
//! finding's start. It also keeps a little already-emitted text as left
//! context for rules that need a key name before the secret.
//!
//! Bounds: memory is at most `hold_back` (+ context, + one chunk, + a
//! finding that straddles the cut, itself capped at [`MAX_PENDING`]). Work
//! per byte is amortised: the buffer is rescanned only once it holds four
//! hold-back windows.
//!
//! Must never: emit a byte of a secret no longer than `hold_back` (a secret
//! longer than `hold_back` that straddles a forced cut may be emitted in part
//! past [`MAX_PENDING`]; documented in docs/scrubbing.md).

use crate::{Scrubber, glued, render};

/// Default hold-back window in bytes: longer than every token format in the
/// rule set (PEM keys excepted: see the module docs).
pub const DEFAULT_HOLD_BACK: usize = 4096;
/// Already-emitted bytes kept as left context for the next scan.
const CONTEXT: usize = 1024;
/// Rescan once the unemitted text reaches this many hold-back windows: each
/// byte is scanned about `SCAN_EVERY / (SCAN_EVERY - 1)` times, plus the
/// [`CONTEXT`] bytes kept before the cut (about 1.09 scans per byte at 16;
/// 4 gave 1.45).
const SCAN_EVERY: usize = 16;
/// Longest run of token characters the cut backs off over.
const MAX_TOKEN_BACKOFF: usize = 1024;
/// Unemitted bytes after which a straddling finding no longer delays output.
pub const MAX_PENDING: usize = 256 * 1024;

/// A scrubber for a stream of chunks. Call [`StreamScrubber::push`] (or
/// [`StreamScrubber::push_bytes`]) per chunk and write what it returns, then
/// [`StreamScrubber::flush`] at the end.
#[derive(Debug, Clone)]
pub struct StreamScrubber {
    scrubber: Scrubber,
    hold_back: usize,
    buf: String,
    /// Bytes at the start of `buf` already emitted (context only).
    emitted: usize,
    /// An incomplete UTF-8 sequence at the end of the last byte chunk.
    utf8_tail: Vec<u8>,
}

impl StreamScrubber {
    /// A stream scrubber using `scrubber`'s rules and live values, holding
    /// back [`Scrubber::max_secret_len`] bytes.
    #[must_use]
    pub fn new(scrubber: Scrubber) -> Self {
        let hold_back = scrubber.max_secret_len();
        Self::with_hold_back(scrubber, hold_back)
    }

    /// As [`StreamScrubber::new`] with an explicit hold-back window (at least
    /// 1 byte; it should exceed the longest secret you expect).
    #[must_use]
    pub fn with_hold_back(scrubber: Scrubber, hold_back: usize) -> Self {
        Self {
            scrubber,
            hold_back: hold_back.max(1),
            buf: String::new(),
            emitted: 0,
            utf8_tail: Vec::new(),
        }
    }

    /// Feed a text chunk; returns the scrubbed text that is now safe to emit
    /// (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        self.buf.push_str(chunk);
        if self.buf.len() - self.emitted < self.hold_back.saturating_mul(SCAN_EVERY) {
            return String::new();
        }
        self.process(false)
    }

    /// Feed a byte chunk. Invalid UTF-8 becomes U+FFFD; a UTF-8 sequence
    /// split across chunks is reassembled.
    pub fn push_bytes(&mut self, chunk: &[u8]) -> String {
        self.utf8_tail.extend_from_slice(chunk);
        let bytes = std::mem::take(&mut self.utf8_tail);
        let mut rest: &[u8] = &bytes;
        let mut text = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        None => {
                            self.utf8_tail = bad.to_vec();
                            break;
                        }
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = bad.get(n..).unwrap_or_default();
                        }
                    }
                }
            }
        }
        self.push(&text)
    }

    /// End of stream: scrub and return everything still held back.
    pub fn flush(&mut self) -> String {
        if !self.utf8_tail.is_empty() {
            let tail = String::from_utf8_lossy(&std::mem::take(&mut self.utf8_tail)).into_owned();
            self.buf.push_str(&tail);
        }
        let out = self.process(true);
        self.buf.clear();
        self.emitted = 0;
        out
    }

    fn process(&mut self, last: bool) -> String {
        let spans = self.scrubber.spans(&self.buf);
        let len = self.buf.len();
        let mut cut = if last {
            len
        } else {
            floor_boundary(&self.buf, len.saturating_sub(self.hold_back))
        };
        if !last {
            if let Some(s) = spans.iter().find(|s| s.start < cut && cut < s.end) {
                cut = s.start;
            }
            // Never cut inside a run of token characters: a redaction right
            // after the cut can turn the text before it into a match (`\b`).
            cut = token_start(&self.buf, cut, self.emitted);
            if cut <= self.emitted {
                if len - self.emitted <= MAX_PENDING {
                    return String::new();
                }
                // Forced cut: the straddling finding is redacted up to here.
                cut = floor_boundary(&self.buf, len.saturating_sub(self.hold_back));
                if cut <= self.emitted {
                    return String::new();
                }
            }
        }
        let mut out = render(&self.buf, &spans, self.emitted, cut);
        if spans
            .iter()
            .any(|s| s.end > self.emitted && s.start < cut && glued(&self.buf, s))
        {
            out = self.scrubber.settle(out);
        }
        let keep_from = floor_boundary(&self.buf, cut.saturating_sub(CONTEXT));
        self.buf.drain(..keep_from);
        self.emitted = cut - keep_from;
        out
    }
}

/// Move `cut` back to the start of the run of token characters it is in
/// (at most [`MAX_TOKEN_BACKOFF`] bytes, never before `floor`). ASCII only,
/// so the result stays a char boundary.
fn token_start(s: &str, cut: usize, floor: usize) -> usize {
    let bytes = s.as_bytes();
    let mut i = cut;
    while i > floor
        && cut - i < MAX_TOKEN_BACKOFF
        && bytes
            .get(i - 1)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b"_-+/=.~:%".contains(&b))
    {
        i -= 1;
    }
    if cut - i >= MAX_TOKEN_BACKOFF { cut } else { i }
}

/// The largest char boundary `<= i` in `s`.
fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_secret_is_caught_and_text_kept() {
        let gh = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5");
        let text = format!("{}token {gh} end {}", "x ".repeat(50), "y ".repeat(50));
        for split in 0..=text.len() {
            let mut st = StreamScrubber::with_hold_back(Scrubber::new(), 64);
            let mut out = st.push(&text[..split]);
            out.push_str(&st.push(&text[split..]));
            out.push_str(&st.flush());
            assert!(
                !out.contains("aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5"),
                "{split}: {out}"
            );
            assert_eq!(out, Scrubber::new().scrub(&text), "{split}");
        }
    }

    #[test]
    fn many_small_chunks_equal_one_shot() {
        let gh = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5");
        let text = format!("{} {gh} ", "word ".repeat(3000)).repeat(3);
        let mut st = StreamScrubber::new(Scrubber::new());
        let mut out = String::new();
        for chunk in text.as_bytes().chunks(7) {
            out.push_str(&st.push_bytes(chunk));
        }
        out.push_str(&st.flush());
        assert_eq!(out, Scrubber::new().scrub(&text));
    }

    #[test]
    fn utf8_split_and_invalid_bytes() {
        let mut st = StreamScrubber::new(Scrubber::new());
        let bytes = "héllo".as_bytes();
        let mut out = st.push_bytes(&bytes[..2]);
        out.push_str(&st.push_bytes(&bytes[2..]));
        out.push_str(&st.push_bytes(&[0xff, b'!']));
        out.push_str(&st.flush());
        assert_eq!(out, "héllo\u{fffd}!");
    }
}
