//! The request-head reader and hygiene checks, run on EVERY request before
//! anything else (CONNECT or forwarded) sees it.
//!
//! Owns: reading at most [`MAX_HEAD`] bytes up to the blank line, parsing
//! with `httparse`, and rejecting what request smuggling lives on (both
//! Content-Length and Transfer-Encoding, repeated or invalid Content-Length,
//! a Transfer-Encoding other than exactly `chunked`, obs-fold, bare LF,
//! control bytes, non-token names, duplicate Host). Must never: decide
//! policy, or panic on any byte sequence.

use bytes::BytesMut;
use netpolicy::Method;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest accepted request head (request line + headers + blank line).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Most header fields accepted in one head.
const MAX_HEADERS: usize = 128;

/// Why a head was refused or could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HeadError {
    /// The client closed the connection before sending any byte (normal
    /// end of a keep-alive connection).
    #[error("connection closed before a request")]
    Closed,
    /// An I/O error or a close in the middle of a head.
    #[error("read error: {0}")]
    Io(String),
    /// The head is larger than [`MAX_HEAD`].
    #[error("request head larger than 64 KiB")]
    TooLarge,
    /// The head breaks HTTP/1.1 framing or byte rules.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// A parsed, hygiene-checked request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// The method token as sent.
    pub(crate) method_raw: String,
    /// The method, folded (unknown → `Other`).
    pub(crate) method: Method,
    /// The request target as sent.
    pub(crate) target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor_version: u8,
    /// The Host header value, if any (at most one is accepted).
    pub(crate) host: Option<String>,
    /// Whether the request asks for a protocol upgrade (`Upgrade:` header or
    /// an `upgrade` token in `Connection`).
    pub(crate) upgrade: bool,
    /// Whether the request carries a body: `Content-Length` above 0, or
    /// `Transfer-Encoding: chunked` (even one that turns out empty).
    pub(crate) body: bool,
    /// Length of the head in bytes, including the final CRLF CRLF.
    pub(crate) len: usize,
}

/// Read one request head from `io` into `buf` (which may already hold bytes
/// read earlier). On success, `buf` still holds the whole head followed by any
/// bytes that arrived after it; `Head::len` says where the head ends.
///
/// The head is parsed only once its end (an empty line) has arrived: each
/// read scans just the new bytes for it, so a client trickling a 64 KiB head
/// one byte at a time costs linear work, not a full re-parse per byte.
pub(crate) async fn read_head<R>(io: &mut R, buf: &mut BytesMut) -> Result<Head, HeadError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    // Bytes before `scanned` hold no end of head.
    let mut scanned = 0usize;
    loop {
        if let Some(end) = find_head_end(buf, scanned) {
            match parse_head(buf)? {
                Some(head) => return Ok(head),
                // An empty line that does not end a head (e.g. leading
                // blank lines, which httparse skips): look further.
                None => scanned = end,
            }
        } else {
            scanned = buf.len();
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        let n = io
            .read_buf(buf)
            .await
            .map_err(|e| HeadError::Io(e.kind().to_string()))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Io("connection closed in the middle of a request head".to_owned())
            });
        }
    }
}

/// The index just past the first empty line (`\n\n` or `\n\r\n`) that
/// ends at or after `from`, if any. `from` is where the previous scan stopped;
/// the two bytes before it are looked at again, since the line ending may
/// straddle reads.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let tail = buf.get(start..)?;
    let mut at = 0usize;
    while let Some(i) = memchr::memchr(b'\n', tail.get(at..)?) {
        let lf = at + i;
        match (tail.get(lf + 1), tail.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(start + lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(start + lf + 3),
            _ => at = lf + 1,
        }
    }
    None
}

/// Parse and check a head from the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(buf).map_err(|e| {
        HeadError::Malformed(match e {
            httparse::Error::HeaderName => "invalid header name (or obs-fold)",
            httparse::Error::HeaderValue => "invalid byte in a header value",
            httparse::Error::NewLine => "invalid line ending",
            httparse::Error::Status => "invalid status",
            httparse::Error::Token => "invalid method token",
            httparse::Error::TooManyHeaders => "too many header fields",
            httparse::Error::Version => "unsupported HTTP version",
        })
    })?;
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let raw = buf.get(..len).ok_or(HeadError::Malformed("head length"))?;
    check_line_endings(raw)?;

    let method_raw = req.method.ok_or(HeadError::Malformed("missing method"))?;
    let target = req
        .path
        .ok_or(HeadError::Malformed("missing request target"))?;
    let minor_version = req.version.ok_or(HeadError::Malformed("missing version"))?;
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::Malformed("invalid request target"));
    }

    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.value
            .iter()
            .any(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
        {
            return Err(HeadError::Malformed("control byte in a header value"));
        }
        // obs-text: some parsers treat 0x85 / 0xA0 as line breaks or spaces.
        if !h.value.is_ascii() {
            return Err(HeadError::Malformed("non-ASCII byte in a header value"));
        }
        let name = h.name;
        // `Transfer_Encoding` is `HTTP_TRANSFER_ENCODING` to CGI-style origins.
        if name.contains('_') {
            let dashed = name.replace('_', "-");
            if dashed.eq_ignore_ascii_case("transfer-encoding")
                || dashed.eq_ignore_ascii_case("content-length")
            {
                return Err(HeadError::Malformed("framing header name with `_`"));
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HeadError::Malformed("repeated Content-Length"));
            }
            content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(HeadError::Malformed("repeated Transfer-Encoding"));
            }
            if !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding other than exactly `chunked`",
                ));
            }
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HeadError::Malformed("repeated Host"));
            }
            let v = std::str::from_utf8(trim(h.value))
                .map_err(|_| HeadError::Malformed("non-ASCII Host"))?;
            if !v.is_ascii() {
                return Err(HeadError::Malformed("non-ASCII Host"));
            }
            host = Some(v.to_owned());
        } else if name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("connection")
                || name.eq_ignore_ascii_case("proxy-connection"))
                && h.value
                    .split(|&b| b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"))
        {
            upgrade = true;
        }
    }
    if content_length.is_some() && transfer_encoding {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if transfer_encoding && minor_version == 0 {
        return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    Ok(Some(Head {
        method_raw: method_raw.to_owned(),
        method: Method::parse(method_raw),
        target: target.to_owned(),
        minor_version,
        host,
        upgrade,
        body: transfer_encoding || content_length.is_some_and(|n| n > 0),
        len,
    }))
}

/// Every LF must be preceded by CR (httparse accepts bare LF; an origin
/// behind us might split lines differently).
fn check_line_endings(raw: &[u8]) -> Result<(), HeadError> {
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            return Err(HeadError::Malformed("bare LF line ending"));
        }
        if prev == b'\r' && b != b'\n' {
            return Err(HeadError::Malformed("bare CR"));
        }
        prev = b;
    }
    Ok(())
}

/// A Content-Length value: 1 to 18 ASCII digits, nothing else (no list, no sign).
fn parse_content_length(v: &[u8]) -> Result<u64, HeadError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length"));
    }
    let mut n: u64 = 0;
    for &d in v {
        n = n * 10 + u64::from(d - b'0');
    }
    Ok(n)
}

/// Strip optional whitespace (SP / HTAB) at both ends.
fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    v.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Head>, HeadError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn absolute_form_get() {
        let h = p("GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\r\nxyz")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.target, "http://example.com/a?b");
        assert_eq!(h.host.as_deref(), Some("example.com"));
        assert!(!h.upgrade);
        assert_eq!(
            h.len,
            "GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\r\n".len()
        );
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let h = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\nrest";
        let end = h.len() - 4;
        for from in 0..end {
            assert_eq!(find_head_end(h, from), Some(end), "from {from}");
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(find_head_end(b"", 0), None);
    }

    #[tokio::test]
    async fn a_head_trickled_one_byte_at_a_time_is_read_whole() {
        let head = b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nafter";
        let mut io = tokio_test_bytes(head);
        let mut buf = BytesMut::new();
        let h = read_head(&mut io, &mut buf).await.unwrap();
        assert_eq!(h.len, head.len() - 5);
        assert_eq!(h.host.as_deref(), Some("a"));
    }

    /// A reader that yields one byte per read.
    fn tokio_test_bytes(data: &'static [u8]) -> impl AsyncRead + Unpin {
        struct OneByte(&'static [u8]);
        impl AsyncRead for OneByte {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if let Some((first, rest)) = self.0.split_first() {
                    buf.put_slice(&[*first]);
                    self.0 = rest;
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        OneByte(data)
    }

    #[test]
    fn bodies_are_flagged() {
        for (s, body) in [
            ("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", false),
            (
                "GET http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (
                "GET http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
                true,
            ),
            (
                "HEAD http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                true,
            ),
        ] {
            assert_eq!(p(s).unwrap().unwrap().body, body, "{s:?}");
        }
    }

    #[test]
    fn partial_is_none() {
        assert_eq!(p("GET http://a/ HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
    }

    #[test]
    fn smuggling_shapes_are_malformed() {
        for s in [
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET http://a/ HTTP/1.1\nHost: a\n\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST http://a/ HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHo\x01st: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(matches!(p(s), Err(HeadError::Malformed(_))), "{s:?}");
        }
    }

    /// The workspace's `../shared/corpora` (a missing corpus fails the test).
    fn corpora() -> std::path::PathBuf {
        let mut dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
        loop {
            let c = dir.join("../shared/corpora");
            if c.is_dir() {
                return c;
            }
            assert!(
                dir.pop(),
                "../shared/corpora not found above CARGO_MANIFEST_DIR"
            );
        }
    }

    /// A lenient reader's view of the framing headers: how many lines have a
    /// name that, lowercased with every non-letter dropped, is
    /// `transferencoding` or `contentlength`.
    fn lenient_framing(raw: &[u8]) -> usize {
        let mut n = 0;
        for line in raw.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name: String = line[..colon]
                .iter()
                .filter(|b| b.is_ascii_alphabetic())
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect();
            if name == "transferencoding" || name == "contentlength" {
                n += 1;
            }
        }
        n
    }

    /// Every mutation of the smuggler corpus is refused, or parses into a
    /// head whose framing a lenient reader sees the same way (one framing
    /// header at most, never both).
    #[test]
    fn smuggler_corpus_refused_or_unambiguous() {
        let path = corpora().join("http/smuggler_mutations.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
        let (mut refused, mut accepted) = (0, 0);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let name = v["name"].as_str().unwrap();
            let t = v["header_template"].as_str().unwrap();
            let req = t
                .replace("__METHOD__", "GET")
                .replace("__ENDPOINT__", "http://example.com/")
                .replace("__RANDOM__", "1")
                .replace("__HOST__", "example.com")
                .replace("__REPLACE_CL__", &body.len().to_string());
            // Templates carry raw bytes as \u00XX escapes: one char, one byte.
            let mut bytes: Vec<u8> = req.chars().map(|c| (u32::from(c) & 0xff) as u8).collect();
            bytes.extend_from_slice(b"\r\n");
            bytes.extend_from_slice(body.as_bytes());
            match parse_head(&bytes) {
                Err(_) => refused += 1,
                Ok(None) => panic!("{name}: incomplete"),
                Ok(Some(h)) => {
                    accepted += 1;
                    assert!(
                        lenient_framing(&bytes[..h.len]) <= 1,
                        "{name}: ambiguous framing accepted"
                    );
                }
            }
        }
        assert!(refused + accepted > 1_700, "corpus too small");
        assert!(refused > accepted, "{refused} refused, {accepted} accepted");
    }

    #[test]
    fn chunked_alone_ok() {
        let h = p("POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(h.unwrap().is_some());
    }

    #[test]
    fn upgrade_detected() {
        let h = p("GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade);
        let h = p("GET http://a/ HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade);
    }

    #[test]
    fn oversized_head() {
        let mut s = String::from("GET http://a/ HTTP/1.1\r\nHost: a\r\n");
        while s.len() < MAX_HEAD + 10 {
            s.push_str("X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        // Too many headers or too large: either way refused.
        assert!(p(&s).is_err());
        let big = format!("GET http://a/{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(p(&big), Err(HeadError::TooLarge));
    }

    #[tokio::test]
    async fn reader_keeps_trailing_bytes() {
        let data: &[u8] = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01";
        let mut io = data;
        let mut buf = BytesMut::new();
        let h = read_head(&mut io, &mut buf).await.unwrap();
        assert_eq!(buf.get(h.len..).unwrap(), b"\x16\x03\x01");
        let mut empty: &[u8] = b"";
        let mut buf = BytesMut::new();
        assert_eq!(
            read_head(&mut empty, &mut buf).await,
            Err(HeadError::Closed)
        );
    }
}
