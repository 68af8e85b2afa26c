//! The audit log: one JSON line per request or tunnel, and the one place
//! where text leaving the proxy is scrubbed.
//!
//! Owns: the record shape and its serialization, appending lines to the
//! `--audit-log` file (or stdout), and [`scrub`], which every audit line and
//! every denial body passes through. Must never: write a URL path or query,
//! a header value, or an unscrubbed line.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use netpolicy::{Method, Reason, Verdict};

/// Scrub tokens out of text that leaves the proxy (audit lines, error bodies).
pub(crate) fn scrub(text: &str) -> Cow<'_, str> {
    scrub::scrub_str(text)
}

/// One audit record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
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

/// Where audit lines go.
pub(crate) struct AuditLog {
    file: Option<Mutex<File>>,
}

impl AuditLog {
    /// Append to `path`, or write to stdout when `None`.
    pub(crate) fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => None,
        };
        Ok(AuditLog { file })
    }

    /// Write one record as one line. Failures are logged, never fatal.
    pub(crate) fn write(&self, r: &Record) {
        let mut line = scrub(&render(r, SystemTime::now())).into_owned();
        line.push('\n');
        let res = match &self.file {
            Some(f) => match f.lock() {
                Ok(mut f) => f.write_all(line.as_bytes()),
                Err(_) => Err(std::io::Error::other("audit log lock poisoned")),
            },
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|()| out.flush())
            }
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

/// The JSON line (without newline) for a record at time `now`.
pub(crate) fn render(r: &Record, now: SystemTime) -> String {
    let v = serde_json::json!({
        "time": rfc3339(now),
        "org": r.org,
        "client": r.client.to_string(),
        "source": netpolicy::Source::Container.as_str(),
        "method": r.method.as_str(),
        "scheme": r.scheme,
        "host": r.host,
        "port": r.port,
        "dialed": r.dialed.map(|d| d.to_string()),
        "verdict": r.verdict.as_str(),
        "reason": r.reason.as_str(),
        "status": r.status,
        "bytes_up": r.bytes_up,
        "bytes_down": r.bytes_down,
        "duration_ms": u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
    });
    v.to_string()
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
    fn record_fields() {
        let r = Record {
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
        assert_eq!(v.as_object().unwrap().len(), 15);
    }
}
