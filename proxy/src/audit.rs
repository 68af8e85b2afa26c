//! The audit log: one JSON line per request or tunnel, and the one place
//! where text leaving the proxy is scrubbed.
//!
//! Owns: the record shape and its serialization, the queue and writer
//! thread that append lines to the `--audit-log` file (or stdout), whether
//! the sink is failing (the proxy then refuses new requests), and
//! [`scrub`], which every free-text audit field and every denial body
//! passes through. Must never: write a URL path or query, a header value,
//! or an unscrubbed free-text field; drop a line on a write error while
//! there is room to keep it.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use netpolicy::{Host, Method, Reason, Verdict};

/// Scrub tokens out of text that leaves the proxy (audit lines, error bodies).
pub(crate) fn scrub(text: &str) -> Cow<'_, str> {
    scrub::scrub_str(text)
}

/// What an audit line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A forwarded request, or any denial: one line at its end.
    Request,
    /// A tunnel that passed every check, written (and on disk) before a
    /// byte of it goes upstream, so even a SIGKILL leaves a trace.
    TunnelOpen,
    /// The end of a tunnel, with its byte counts.
    TunnelClose,
}

impl Event {
    /// `request`, `tunnel_open` or `tunnel_close`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Event::Request => "request",
            Event::TunnelOpen => "tunnel_open",
            Event::TunnelClose => "tunnel_close",
        }
    }
}

/// One audit record. It borrows its text (the org from the policy or the
/// plan, the host from the parsed destination): recording a request
/// allocates nothing before the line is rendered.
#[derive(Debug, Clone)]
pub(crate) struct Record<'a> {
    /// What the line records.
    pub(crate) event: Event,
    /// The client's org (`None` for an unknown client).
    pub(crate) org: Option<&'a str>,
    /// The client's address.
    pub(crate) client: SocketAddr,
    /// The folded method.
    pub(crate) method: Method,
    /// `http`, `https` (CONNECT) or `None` when the target did not parse.
    pub(crate) scheme: Option<&'static str>,
    /// The normalized host, if the target parsed.
    pub(crate) host: Option<&'a Host>,
    /// The port, if the target parsed.
    pub(crate) port: Option<u16>,
    /// The upstream address dialled, if any.
    pub(crate) dialed: Option<SocketAddr>,
    /// allow / deny.
    pub(crate) verdict: Verdict,
    /// Why.
    pub(crate) reason: Reason,
    /// The status sent to the client (200 for an established tunnel; 0 if none).
    pub(crate) status: u16,
    /// Bytes from the client to upstream (body or tunnel).
    pub(crate) bytes_up: u64,
    /// Bytes from upstream to the client (body or tunnel).
    pub(crate) bytes_down: u64,
    /// Time from the head being read to the end.
    pub(crate) duration: Duration,
}

/// How long a line may wait in memory before the writer thread writes it.
const WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// Longest wait for a line that must be on disk before the caller goes on.
const DURABLE_WAIT: Duration = Duration::from_secs(5);
/// How often a failing sink is tried again.
const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Queued bytes at which the writer is woken early.
const WAKE_AT: usize = 64 * 1024;
/// Queued bytes at which request tasks wait for the writer: a stuck disk
/// stops traffic instead of losing audit lines.
const QUEUE_CAP: usize = 8 * 1024 * 1024;

/// The queue between request tasks and the writer thread.
#[derive(Default)]
struct Queue {
    /// Rendered, scrubbed lines not yet handed to the writer.
    pending: Vec<u8>,
    /// Incremented by every `flush` request.
    flush_wanted: u64,
    /// The last `flush_wanted` value the writer has completed.
    flush_done: u64,
    /// Tasks waiting for their line to be written (true) or to fail (false).
    waiters: Vec<tokio::sync::oneshot::Sender<bool>>,
}

/// State shared by [`AuditLog`] and its writer thread.
struct Inner {
    queue: Mutex<Queue>,
    /// Signalled when the writer should run now (queue large, flush wanted).
    wake: Condvar,
    /// Signalled when the writer has taken the queue or finished a flush.
    drained: Condvar,
    /// Set by the writer when a write fails, cleared when one succeeds.
    failing: AtomicBool,
    /// `egress_audit_write_errors_total`.
    errors: prometheus::IntCounter,
}

/// Where audit lines go. Request tasks render, scrub and append to an
/// in-memory queue (no system call, no wake-up per line); a dedicated
/// thread writes the queue out every [`WRITE_INTERVAL`], or sooner when it
/// grows, so a busy proxy makes one `write` per batch, not per request.
pub(crate) struct AuditLog {
    inner: Arc<Inner>,
}

impl AuditLog {
    /// Append to `path`, or write to stdout when `None`; count failed
    /// writes in `errors`.
    pub(crate) fn open(
        path: Option<&Path>,
        errors: prometheus::IntCounter,
    ) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
            None => Box::new(std::io::stdout()),
        };
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            drained: Condvar::new(),
            failing: AtomicBool::new(false),
            errors,
        });
        let writer_inner = inner.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(out, &writer_inner))?;
        Ok(AuditLog { inner })
    }

    /// Whether the sink is writable: false from a failed write until the
    /// next one succeeds. While false the proxy serves nothing.
    pub(crate) fn available(&self) -> bool {
        !self.inner.failing.load(Ordering::Relaxed)
    }

    /// Queue one record as one line. A write error is counted and logged by
    /// the writer, and turns [`AuditLog::available`] false.
    pub(crate) fn write(&self, r: &Record<'_>) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            render_into(line, r, SystemTime::now());
            line.push(b'\n');
            self.enqueue(line);
        });
    }

    /// Append one rendered line (newline included) to the queue.
    fn enqueue(&self, line: &[u8]) {
        let Ok(mut q) = self.inner.queue.lock() else {
            tracing::error!("the audit queue is poisoned; audit line lost");
            return;
        };
        if q.pending.len() >= QUEUE_CAP && !self.available() {
            // The sink is failing and every request is refused: the lines
            // of those refusals are not worth stopping a thread for.
            return;
        }
        while q.pending.len() >= QUEUE_CAP {
            self.inner.wake.notify_one();
            q = match self.inner.drained.wait(q) {
                Ok(q) => q,
                Err(_) => return,
            };
        }
        q.pending.extend_from_slice(line);
        if q.pending.len() >= WAKE_AT {
            self.inner.wake.notify_one();
        }
    }

    /// Queue one record and wait until it is written and flushed: `false`
    /// when the write failed (the caller must not go on).
    pub(crate) async fn write_durable(&self, r: &Record<'_>) -> bool {
        let line = render(r, SystemTime::now());
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let Ok(mut q) = self.inner.queue.lock() else {
                return false;
            };
            if q.pending.len() >= QUEUE_CAP {
                return false;
            }
            q.pending.extend_from_slice(line.as_bytes());
            q.pending.push(b'\n');
            q.waiters.push(tx);
        }
        self.inner.wake.notify_one();
        // A sink that hangs (a stuck disk) is a failing sink too.
        matches!(tokio::time::timeout(DURABLE_WAIT, rx).await, Ok(Ok(true)))
    }

    /// Wait until every line queued so far is written and flushed.
    pub(crate) fn flush(&self) {
        let Ok(mut q) = self.inner.queue.lock() else {
            return;
        };
        q.flush_wanted += 1;
        let wanted = q.flush_wanted;
        self.inner.wake.notify_one();
        while q.flush_done < wanted {
            q = match self.inner.drained.wait(q) {
                Ok(q) => q,
                Err(_) => return,
            };
        }
    }
}

/// The writer thread: every interval (or when woken) take the queue, write
/// it through one buffer and flush. A batch that fails to write is kept and
/// tried again (up to [`QUEUE_CAP`]). Runs for the life of the process.
fn writer(mut out: Box<dyn Write + Send>, inner: &Inner) {
    let mut failed = false;
    let mut batch = Vec::new();
    loop {
        let interval = if failed {
            RETRY_INTERVAL
        } else {
            WRITE_INTERVAL
        };
        let (flush_to, waiters) = {
            let Ok(q) = inner.queue.lock() else { return };
            let Ok((mut q, _)) = inner.wake.wait_timeout_while(q, interval, |q| {
                q.pending.len() < WAKE_AT && q.flush_wanted == q.flush_done && q.waiters.is_empty()
            }) else {
                return;
            };
            if batch.is_empty() {
                std::mem::swap(&mut batch, &mut q.pending);
            } else {
                batch.append(&mut q.pending);
            }
            (q.flush_wanted, std::mem::take(&mut q.waiters))
        };
        inner.drained.notify_all();
        let mut ok = true;
        if !batch.is_empty() {
            let res = out.write_all(&batch).and_then(|()| out.flush());
            ok = res.is_ok();
            if ok {
                batch.clear();
            } else {
                inner.errors.inc();
                if batch.len() > QUEUE_CAP {
                    // Kept for a retry only while it fits; past that the
                    // oldest lines are lost (and counted as errors).
                    batch.clear();
                }
            }
            inner.failing.store(!ok, Ordering::Relaxed);
            report(res, &mut failed);
        }
        for w in waiters {
            let _ = w.send(ok);
        }
        if let Ok(mut q) = inner.queue.lock() {
            if q.flush_done < flush_to {
                q.flush_done = flush_to;
                inner.drained.notify_all();
            }
        }
    }
}

/// Log a write error once per run of failures, not once per line.
fn report(res: std::io::Result<()>, failed: &mut bool) {
    match res {
        Ok(()) => *failed = false,
        Err(e) => {
            if !*failed {
                tracing::error!(error = %e, "cannot write the audit log");
            }
            *failed = true;
        }
    }
}

thread_local! {
    /// Each thread's line buffer, reused from line to line.
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
    /// Each thread's last rendered second: its Unix time and its
    /// `YYYY-MM-DDTHH:MM:SS` text (the calendar arithmetic runs once a
    /// second, not once a line).
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// The JSON line (without newline) for a record at time `now`.
pub(crate) fn render(r: &Record<'_>, now: SystemTime) -> String {
    let mut out = Vec::with_capacity(320);
    render_into(&mut out, r, now);
    // Only ASCII and the UTF-8 of `&str` fields are ever written.
    String::from_utf8(out).unwrap_or_else(|_| String::from("{\"error\":\"unrenderable\"}"))
}

/// Append the JSON line (without newline) for a record at time `now`.
///
/// Field order is the order written: `time`, `event`, `org`, `client`,
/// `source`, `method`, `scheme`, `host`, `port`, `dialed`, `verdict`,
/// `reason`, `status`, `bytes_up`, `bytes_down`, `duration_ms`; an absent
/// value is `null`. The free-text fields (org, a host name) pass through
/// the scrubber and are JSON-escaped; everything else is an enum, a number
/// or an address, so no token can hide in it and nothing needs escaping.
pub(crate) fn render_into(out: &mut Vec<u8>, r: &Record<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"time\":\"");
    time_into(out, now);
    out.extend_from_slice(b"\",\"event\":\"");
    out.extend_from_slice(r.event.as_str().as_bytes());
    out.extend_from_slice(b"\",\"org\":");
    match r.org {
        Some(org) => json_str(out, &scrub(org)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"client\":\"");
    addr_into(out, r.client);
    out.extend_from_slice(b"\",\"source\":\"");
    out.extend_from_slice(netpolicy::Source::Container.as_str().as_bytes());
    out.extend_from_slice(b"\",\"method\":\"");
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.extend_from_slice(b"\",\"scheme\":");
    match r.scheme {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"host\":");
    match r.host {
        Some(Host::Name(name)) => json_str(out, &scrub(name)),
        Some(Host::Ip(ip)) => {
            out.push(b'"');
            ip_into(out, *ip);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"port\":");
    match r.port {
        Some(p) => uint_into(out, u64::from(p)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"dialed\":");
    match r.dialed {
        Some(a) => {
            out.push(b'"');
            addr_into(out, a);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"verdict\":\"");
    out.extend_from_slice(r.verdict.as_str().as_bytes());
    out.extend_from_slice(b"\",\"reason\":\"");
    out.extend_from_slice(r.reason.as_str().as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    uint_into(out, u64::from(r.status));
    out.extend_from_slice(b",\"bytes_up\":");
    uint_into(out, r.bytes_up);
    out.extend_from_slice(b",\"bytes_down\":");
    uint_into(out, r.bytes_down);
    out.extend_from_slice(b",\"duration_ms\":");
    uint_into(
        out,
        u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
    );
    out.push(b'}');
}

/// A JSON string literal, escaped as serde_json escapes it (`\"`, `\\`,
/// the short forms of `\b \f \n \r \t`, `\u00XX` for other control bytes;
/// everything else, UTF-8 included, as is).
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            for nibble in [b >> 4, b & 0xf] {
                out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

/// A number in decimal.
fn uint_into(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut n = n;
    for d in digits.iter_mut().rev() {
        // `n % 10` is below 10.
        *d = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(digits.len() - len..).unwrap_or_default());
}

/// An address as `Display` writes it (`a.b.c.d` or IPv6 without brackets).
fn ip_into(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                uint_into(out, u64::from(o));
            }
        }
        // Hex digits, colons and dots only: nothing to escape.
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A socket address as `Display` writes it (`a.b.c.d:port`, `[v6]:port`).
fn addr_into(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            ip_into(out, std::net::IpAddr::V4(*v4.ip()));
            out.push(b':');
            uint_into(out, u64::from(v4.port()));
        }
        // `[v6%scope]:port`: hex digits, colons, dots, brackets, digits.
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T04:00:12.345Z`.
fn time_into(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let s = rfc3339_secs(secs);
        text.copy_from_slice(s.as_bytes().get(..19).unwrap_or(&[b'0'; 19]));
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    let ms = d.subsec_millis();
    // Below 1000: three digits.
    out.push(b'0' + (ms / 100) as u8);
    out.push(b'0' + (ms / 10 % 10) as u8);
    out.push(b'0' + (ms % 10) as u8);
    out.push(b'Z');
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T04:00:12.345Z`.
#[cfg(test)]
fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    time_into(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix time in seconds.
fn rfc3339_secs(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_579_212_345);
        assert_eq!(rfc3339(t), "2026-11-25T04:00:12.345Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn free_text_fields_are_scrubbed() {
        // A GitHub token shape (checksum not checked by the rule) as a host label.
        let token = "ghp_Xk3mQ9vT2pL8sW4nR7yB1cF6hJ0dA5eG2iKo";
        let org = format!("org-{token}");
        let host = Host::Name(format!("{token}.example.com"));
        let r = Record {
            event: Event::Request,
            org: Some(&org),
            client: "10.0.0.5:4000".parse().unwrap(),
            method: Method::Get,
            scheme: Some("http"),
            host: Some(&host),
            port: Some(80),
            dialed: None,
            verdict: Verdict::Deny,
            reason: Reason::MethodNotAllowed,
            status: 403,
            bytes_up: 0,
            bytes_down: 0,
            duration: Duration::ZERO,
        };
        let line = render(&r, SystemTime::UNIX_EPOCH);
        assert!(!line.contains(token), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["host"].as_str().unwrap().contains("[REDACTED:"), "{line}");
        assert!(v["org"].as_str().unwrap().contains("[REDACTED:"), "{line}");
    }

    #[test]
    fn record_fields() {
        let host = Host::Name("example.com".into());
        let r = Record {
            event: Event::Request,
            org: Some("acme"),
            client: "10.0.0.5:4000".parse().unwrap(),
            method: Method::Get,
            scheme: Some("http"),
            host: Some(&host),
            port: Some(80),
            dialed: Some("93.184.216.34:80".parse().unwrap()),
            verdict: Verdict::Allow,
            reason: Reason::ReadPublic,
            status: 200,
            bytes_up: 0,
            bytes_down: 12,
            duration: Duration::from_millis(7),
        };
        let v: serde_json::Value =
            serde_json::from_str(&render(&r, SystemTime::UNIX_EPOCH)).unwrap();
        assert_eq!(v["org"], "acme");
        assert_eq!(v["client"], "10.0.0.5:4000");
        assert_eq!(v["source"], "container");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["dialed"], "93.184.216.34:80");
        assert_eq!(v["reason"], "read_public");
        assert_eq!(v["verdict"], Verdict::Allow.as_str());
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_down"], 12);
        assert_eq!(v["duration_ms"], 7);
        assert_eq!(v["event"], "request");
        assert_eq!(v.as_object().unwrap().len(), 16);
    }

    /// The line as serde_json rendered it before the hand-written renderer
    /// (the reference: same fields, order, escaping and address forms).
    fn reference(r: &Record<'_>, now: SystemTime) -> String {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            time: String,
            event: &'static str,
            org: Option<Cow<'a, str>>,
            client: SocketAddr,
            source: &'static str,
            method: &'static str,
            scheme: Option<&'static str>,
            host: Option<String>,
            port: Option<u16>,
            dialed: Option<SocketAddr>,
            verdict: &'static str,
            reason: &'static str,
            status: u16,
            bytes_up: u64,
            bytes_down: u64,
            duration_ms: u64,
        }
        serde_json::to_string(&Line {
            time: rfc3339(now),
            event: r.event.as_str(),
            org: r.org.map(scrub),
            client: r.client,
            source: netpolicy::Source::Container.as_str(),
            method: r.method.as_str(),
            scheme: r.scheme,
            host: r.host.map(|h| scrub(&h.to_text()).into_owned()),
            port: r.port,
            dialed: r.dialed,
            verdict: r.verdict.as_str(),
            reason: r.reason.as_str(),
            status: r.status,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap(),
        })
        .unwrap()
    }

    #[test]
    fn lines_match_the_serde_rendering_byte_for_byte() {
        let orgs = [
            None,
            Some("acme"),
            Some("quote\"back\\slash"),
            Some("ctl\u{0}\u{1f}\u{8}\u{c}\n\r\t\u{7f}end"),
            Some("ünïcode-org"),
            Some(""),
        ];
        let hosts = [
            None,
            Some(Host::Name("example.com".into())),
            Some(Host::Name("we\"ird\n.example".into())),
            Some(Host::Ip("203.0.113.7".parse().unwrap())),
            Some(Host::Ip("0.0.0.0".parse().unwrap())),
            Some(Host::Ip("2001:db8::1".parse().unwrap())),
            Some(Host::Ip("::ffff:192.0.2.1".parse().unwrap())),
        ];
        let addrs: [SocketAddr; 5] = [
            "10.0.0.5:4000".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
            "[fe80::1%7]:8080".parse().unwrap(),
        ];
        let times = [
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_579_212_005),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_579_212_999),
            SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_050),
        ];
        let mut n = 0;
        for (i, org) in orgs.iter().enumerate() {
            for (j, host) in hosts.iter().enumerate() {
                let client = addrs[(i + j) % addrs.len()];
                let dialed = (j % 2 == 0).then(|| addrs[(i * 3 + j) % addrs.len()]);
                let now = times[(i + 2 * j) % times.len()];
                let r = Record {
                    event: [Event::Request, Event::TunnelOpen, Event::TunnelClose][j % 3],
                    org: *org,
                    client,
                    method: [Method::Get, Method::Connect, Method::Other][i % 3],
                    scheme: [None, Some("http"), Some("https")][(i + j) % 3],
                    host: host.as_ref(),
                    port: host.as_ref().map(|_| [80, 0, 65535, 18080][i % 4]),
                    dialed,
                    verdict: [Verdict::Allow, Verdict::Deny][j % 2],
                    reason: [
                        Reason::ReadPublic,
                        Reason::HostMismatch,
                        Reason::PackageRepo,
                    ][i % 3],
                    status: [0, 200, 403, 502][(i + j) % 4],
                    bytes_up: [0, 1, 10, u64::MAX][j % 4],
                    bytes_down: [0, 9, 1_048_576, 12_345_678_901][i % 4],
                    duration: Duration::from_micros([0, 999, 7_000, 86_400_000_123][(i + j) % 4]),
                };
                let line = render(&r, now);
                assert_eq!(line, reference(&r, now), "record {r:?}");
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v.as_object().unwrap().len(), 16, "{line}");
                n += 1;
            }
        }
        assert_eq!(n, orgs.len() * hosts.len());
    }

    #[test]
    fn the_cached_second_follows_the_clock() {
        // One thread renders times in and out of order across seconds and
        // days: the cached second must never leak into another second.
        for ms in [
            0u64,
            999,
            1_000,
            86_399_999,
            86_400_000,
            1_795_579_212_345,
            1_795_579_211_999,
            1_795_579_212_000,
            5,
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            let secs = ms / 1000;
            assert_eq!(
                rfc3339(t),
                format!("{}.{:03}Z", rfc3339_secs(secs), ms % 1000),
                "{ms}"
            );
        }
        assert_eq!(rfc3339_secs(86_399), "1970-01-01T23:59:59");
        assert_eq!(rfc3339_secs(86_400), "1970-01-02T00:00:00");
    }
}
