//! The supervised worker's metrics, appended to the controller's `/metrics`.
//!
//! In the appliance the worker listens on a 0600 unix socket owned by its
//! uid, so Prometheus cannot scrape it; the controller (root, which already
//! passes the worker its service token) fetches the worker's `GET /metrics`
//! over that socket with the token and serves it after its own series.
//!
//! - The token is read from the file named by `CHOKEPOINT_WORKER_TOKEN_FILE`
//!   at every scrape (a rotated token is picked up), held in a zeroizing
//!   buffer, and never logged or returned.
//! - One attempt, bounded by [`SCRAPE_TIMEOUT`] and [`MAX_BODY`]. Whatever
//!   goes wrong (no socket, no token, a non-200, a slow worker), the
//!   controller's own series are still served, with
//!   `controller_worker_scrape_up 0`; never a 500.
//! - Only `worker_*` series (and their `# HELP`/`# TYPE` lines) are kept, so
//!   the worker can never shadow a `controller_*` series.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

/// How long one scrape of the worker may take, connect to last byte.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest response accepted from the worker.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The environment variable naming the service token file.
pub const TOKEN_ENV: &str = "CHOKEPOINT_WORKER_TOKEN_FILE";

/// Where the worker listens (what `--worker-arg=--listen=…` said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `IP:PORT`.
    Tcp(std::net::SocketAddr),
}

/// The worker's listen address from the worker arguments the daemon passes
/// (`--listen=X` or `--listen X`; the last one wins, as with clap), or the
/// worker's default; `None` when it does not parse (the worker itself
/// refuses to start then).
pub fn target_from_args(args: &[std::ffi::OsString]) -> Option<Target> {
    let mut listen = "unix:/run/chokepoint/worker.sock".to_owned();
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--listen=") {
            v.clone_into(&mut listen);
        } else if a == "--listen"
            && let Some(v) = it.next()
        {
            listen = v.into_owned();
        }
    }
    match worker::cli::Listen::parse(&listen).ok()? {
        worker::cli::Listen::Unix(p) => Some(Target::Unix(p)),
        worker::cli::Listen::Tcp(a) => Some(Target::Tcp(a)),
    }
}

/// The gauge line saying whether the worker answered.
fn up_text(up: bool) -> String {
    format!(
        "# HELP controller_worker_scrape_up Whether the supervised worker answered GET /metrics at this scrape (1) or not (0).\n\
         # TYPE controller_worker_scrape_up gauge\ncontroller_worker_scrape_up {}\n",
        u8::from(up)
    )
}

/// `controller_worker_scrape_up` plus the worker's `worker_*` series, or
/// the gauge at 0 when the worker cannot be scraped.
pub async fn scrape(target: Option<&Target>) -> String {
    let worker = match target {
        Some(t) => tokio::time::timeout(SCRAPE_TIMEOUT, fetch(t))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    match worker {
        Some(text) => {
            let mut out = up_text(true);
            out.push_str(&only_worker_series(&text));
            out
        }
        None => up_text(false),
    }
}

async fn fetch(target: &Target) -> Option<String> {
    let path = std::env::var_os(TOKEN_ENV)?;
    let token = Zeroizing::new(std::fs::read_to_string(path).ok()?);
    let token = token.trim();
    if token.is_empty() || token.contains(['\r', '\n']) {
        return None;
    }
    let request = Zeroizing::new(format!(
        "GET /metrics HTTP/1.1\r\nHost: worker\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ));
    match target {
        Target::Unix(p) => exchange(tokio::net::UnixStream::connect(p).await.ok()?, &request).await,
        Target::Tcp(a) => exchange(tokio::net::TcpStream::connect(a).await.ok()?, &request).await,
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> Option<String> {
    s.write_all(request.as_bytes()).await.ok()?;
    let mut resp = Vec::with_capacity(16 * 1024);
    let mut limited = (&mut s).take(u64::try_from(MAX_BODY).unwrap_or(u64::MAX) + 1);
    limited.read_to_end(&mut resp).await.ok()?;
    if resp.len() > MAX_BODY {
        return None;
    }
    parse_response(&resp)
}

/// The body of a complete `200` HTTP/1.1 response with a `Content-Length`
/// (what the worker sends); `None` for anything else.
pub fn parse_response(resp: &[u8]) -> Option<String> {
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(resp.get(..split)?).ok()?;
    let body = resp.get(split + 4..)?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    let mut parts = status.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") || parts.next()? != "200" {
        return None;
    }
    let mut length = None;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse::<usize>().ok()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    if length? != body.len() {
        return None;
    }
    String::from_utf8(body.to_vec()).ok()
}

/// Keep only `worker_*` samples and their `# HELP`/`# TYPE` lines.
pub fn only_worker_series(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let name = match line.strip_prefix('#') {
            Some(c) => {
                let mut w = c.split_whitespace();
                match w.next() {
                    Some("HELP" | "TYPE") => w.next().unwrap_or_default(),
                    _ => continue,
                }
            }
            None => line.split(['{', ' ']).next().unwrap_or_default(),
        };
        if name.starts_with("worker_")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn listen_from_worker_args() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            target_from_args(&a(&["--policy", "p"])),
            Some(Target::Unix("/run/chokepoint/worker.sock".into()))
        );
        assert_eq!(
            target_from_args(&a(&["--listen=unix:/x/w.sock"])),
            Some(Target::Unix("/x/w.sock".into()))
        );
        assert_eq!(
            target_from_args(&a(&["--listen", "127.0.0.1:8088"])),
            Some(Target::Tcp(
                "127.0.0.1:8088".parse().unwrap_or_else(|_| unreachable!())
            ))
        );
        assert_eq!(target_from_args(&a(&["--listen=nonsense"])), None);
    }

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok).as_deref(), Some("hello"));
        for bad in [
            &b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n",
            b"",
            b"garbage\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn only_worker_series_pass() {
        let text = "# HELP worker_a_total A.\n# TYPE worker_a_total counter\nworker_a_total{reason=\"x y\"} 3\n\
                    # HELP controller_drift_total shadow\n# TYPE controller_drift_total counter\ncontroller_drift_total 9\n\
                    # a comment\nprocess_cpu_seconds_total 1\nworker_b 2\n";
        assert_eq!(
            only_worker_series(text),
            "# HELP worker_a_total A.\n# TYPE worker_a_total counter\nworker_a_total{reason=\"x y\"} 3\nworker_b 2\n"
        );
    }

    #[tokio::test]
    async fn no_target_is_down() {
        assert_eq!(scrape(None).await, up_text(false));
    }
}
