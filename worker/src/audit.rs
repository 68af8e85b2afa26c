//! The audit log: one scrubbed JSON line per tool request.
//!
//! Fields: time, org, run, integration, method, host, reason, status, bytes
//! up and down, whether a token echo was scrubbed, whether the response was
//! truncated, the duration. Never the path, the query, a header or a body.
//! Every text field passes through the scrubber (with the run's live tokens
//! when there are some) before it is queued.
//!
//! Lines go through a channel to one writer thread that writes whatever is
//! queued as one batch, so a burst of requests costs one `write(2)`. The
//! thread writes with blocking calls itself (no hop through the runtime's
//! blocking pool and back per line).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::SystemTime;

use scrub::Scrubber;
use serde::Serialize;

/// One audit record (text fields unscrubbed: [`AuditLog::write`] scrubs).
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The run's org.
    pub org: String,
    /// The run id.
    pub run: String,
    /// The credential's integration, when one was injected.
    pub integration: Option<String>,
    /// The method (folded).
    pub method: &'static str,
    /// The normalized host, if the URL parsed.
    pub host: Option<String>,
    /// The reason.
    pub reason: &'static str,
    /// The upstream status (0 when no response).
    pub status: u16,
    /// Request body bytes sent.
    pub bytes_up: u64,
    /// Response body bytes received.
    pub bytes_down: u64,
    /// An injected token came back and was scrubbed.
    pub token_echo: bool,
    /// The response was cut (size or deadline).
    pub truncated: bool,
    /// Milliseconds, end to end.
    pub duration_ms: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'static str,
    org: &'a str,
    run: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    integration: Option<&'a str>,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    reason: &'a str,
    status: u16,
    bytes_up: u64,
    bytes_down: u64,
    token_echo: bool,
    truncated: bool,
    duration_ms: u64,
}

/// The audit log handle (cheap to clone).
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Vec<u8>>,
}

impl AuditLog {
    /// Append to `path`, or write to stdout when `None`. Starts the writer
    /// thread, which ends when the last handle is dropped.
    pub async fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer(out, &rx))?;
        Ok(AuditLog { tx })
    }

    /// Scrub and queue one record.
    pub fn write(&self, scrubber: &Scrubber, r: &Record) {
        let s = |t: &str| scrubber.scrub(t).into_owned();
        let (org, run) = (s(&r.org), s(&r.run));
        let integration = r.integration.as_deref().map(s);
        let host = r.host.as_deref().map(s);
        let line = Line {
            time: crate::rfc3339(SystemTime::now()),
            event: "worker_request",
            org: &org,
            run: &run,
            integration: integration.as_deref(),
            method: r.method,
            host: host.as_deref(),
            reason: r.reason,
            status: r.status,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            token_echo: r.token_echo,
            truncated: r.truncated,
            duration_ms: r.duration_ms,
        };
        if let Ok(mut bytes) = serde_json::to_vec(&line) {
            bytes.push(b'\n');
            // The writer lives as long as a handle does; a send error means
            // it is gone (shutdown), and the line has nowhere to go.
            let _ = self.tx.send(bytes);
        }
    }
}

fn writer(mut out: Box<dyn Write + Send>, rx: &mpsc::Receiver<Vec<u8>>) {
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut batch = first;
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&more);
        }
        match out.write_all(&batch).and_then(|()| out.flush()) {
            Ok(()) => failed = false,
            Err(e) => {
                if !failed {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
                failed = true;
            }
        }
    }
}
