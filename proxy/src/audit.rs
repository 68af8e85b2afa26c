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

use netpolicy::{Method, Reason, Verdict};
use serde::Serialize;

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

/// One audit record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// What the line records.
    pub(crate) event: Event,
    /// The client's org (`None` for an unknown client).
    pub(crate) org: Option<String>,
    /// The client's address.
    pub(crate) client: SocketAddr,
    /// The folded method.
    pub(crate) method: Method,
    /// `http`, `https` (CONNECT) or `None` when the target did not parse.
    pub(crate) scheme: Option<&'static str>,
    /// The normalized host, if the target parsed.
    pub(crate) host: Option<String>,
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
    pub(crate) fn write(&self, r: &Record) {
        let line = render(r, SystemTime::now());
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
        q.pending.extend_from_slice(line.as_bytes());
        q.pending.push(b'\n');
        if q.pending.len() >= WAKE_AT {
            self.inner.wake.notify_one();
        }
    }

    /// Queue one record and wait until it is written and flushed: `false`
    /// when the write failed (the caller must not go on).
    pub(crate) async fn write_durable(&self, r: &Record) -> bool {
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

/// The audit line's shape; field order is the order written. The free-text
/// fields (org, host) pass through the scrubber value by value; everything
/// else is an enum, a number or an address, so no token can hide in it.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'static str,
    org: Option<Cow<'a, str>>,
    client: SocketAddr,
    source: &'static str,
    method: &'static str,
    scheme: Option<&'static str>,
    host: Option<Cow<'a, str>>,
    port: Option<u16>,
    dialed: Option<SocketAddr>,
    verdict: &'static str,
    reason: &'static str,
    status: u16,
    bytes_up: u64,
    bytes_down: u64,
    duration_ms: u64,
}

/// The JSON line (without newline) for a record at time `now`.
pub(crate) fn render(r: &Record, now: SystemTime) -> String {
    let line = Line {
        time: rfc3339(now),
        event: r.event.as_str(),
        org: r.org.as_deref().map(scrub),
        client: r.client,
        source: netpolicy::Source::Container.as_str(),
        method: r.method.as_str(),
        scheme: r.scheme,
        host: r.host.as_deref().map(scrub),
        port: r.port,
        dialed: r.dialed,
        verdict: r.verdict.as_str(),
        reason: r.reason.as_str(),
        status: r.status,
        bytes_up: r.bytes_up,
        bytes_down: r.bytes_down,
        duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
    };
    // Serializing this struct cannot fail (no maps with non-string keys, no
    // failing Serialize impls); the fallback still yields a valid line.
    serde_json::to_string(&line).unwrap_or_else(|_| String::from("{\"error\":\"unrenderable\"}"))
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T04:00:12.345Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
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
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
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
        let r = Record {
            event: Event::Request,
            org: Some(format!("org-{token}")),
            client: "10.0.0.5:4000".parse().unwrap(),
            method: Method::Get,
            scheme: Some("http"),
            host: Some(format!("{token}.example.com")),
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
        let r = Record {
            event: Event::Request,
            org: Some("acme".into()),
            client: "10.0.0.5:4000".parse().unwrap(),
            method: Method::Get,
            scheme: Some("http"),
            host: Some("example.com".into()),
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
}
