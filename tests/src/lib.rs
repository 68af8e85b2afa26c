//! Shared harness for chokepoint's end-to-end tests: real binaries, a
//! recording HTTP origin, a programmable DNS server, and the rules for tests
//! that need privileges.
//!
//! Everything here is blocking `std` code on loopback: each server runs on
//! its own thread and is stopped on `Drop`. Nothing here talks to any
//! address outside 127.0.0.0/8.
//!
//! Never: skip a privileged check silently when `CHOKEPOINT_REQUIRE_PRIVILEGED=1`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test harness: a panic is a failed test

pub mod dns;
pub mod origin;
pub mod pg;
pub mod procstatus;
pub mod promtool;
pub mod proxy;
pub mod refresh_history;
pub mod startup;
pub mod tls_origin;
pub mod token_endpoint;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

pub use dns::DnsServer;
pub use origin::Origin;
pub use proxy::ProxyProcess;

/// Whether a capability a test needs is there. When it is not: panic if
/// `CHOKEPOINT_REQUIRE_PRIVILEGED=1` (CI), else print why and return false
/// so the test can return early.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("CHOKEPOINT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("CHOKEPOINT_REQUIRE_PRIVILEGED=1 but {what} is not available");
    }
    eprintln!(
        "SKIP: {what} is not available (set CHOKEPOINT_REQUIRE_PRIVILEGED=1 to fail instead)"
    );
    false
}

/// Whether a command runs (`cmd --version` exits 0).
pub fn have_tool(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The workspace root (the ancestor of this crate with a `[workspace]`).
pub fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let manifest = dir.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("[workspace]")) {
            return dir;
        }
        assert!(
            dir.pop(),
            "no workspace root above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// `<workspace root>/../shared/corpora` (or `$CHOKEPOINT_CORPORA`); a missing
/// corpus is a failure, never a skip.
pub fn corpora() -> PathBuf {
    let dir = std::env::var("CHOKEPOINT_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("../shared/corpora"));
    assert!(
        dir.join("INDEX.md").is_file(),
        "corpora not found at {}",
        dir.display()
    );
    dir
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length, or to close).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `X-Egress-Error` reason, if any.
    pub fn reason(&self) -> Option<&str> {
        self.header("x-egress-error")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A parsed head's headers as (lower-case name, value) pairs.
pub fn header_pairs(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Read one response from a stream: the head, then a Content-Length body or
/// everything until close. `None` if nothing parseable arrived in time.
pub fn read_response(stream: &mut TcpStream, timeout: Duration) -> Option<Response> {
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let status = resp.code?;
            let headers: Vec<(String, String)> = header_pairs(resp.headers);
            let cl = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            let mut body = buf[len..].to_vec();
            match cl {
                Some(n) => {
                    while body.len() < n {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => body.extend_from_slice(&chunk[..k]),
                        }
                    }
                    body.truncate(n);
                }
                None => loop {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => body.extend_from_slice(&chunk[..k]),
                    }
                },
            }
            return Some(Response {
                status,
                headers,
                body,
            });
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// Send raw bytes on a new connection to `addr` and read one response.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Response> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.write_all(bytes).ok()?;
    read_response(&mut s, timeout)
}

/// A plain HTTP/1.1 request for `url` (absolute-form) through the proxy at
/// `proxy`, with `Connection: close`.
pub fn proxy_request(proxy: SocketAddr, method: &str, url: &str, extra_headers: &str) -> Response {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .unwrap_or("");
    let req = format!(
        "{method} {url} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    send_raw(proxy, req.as_bytes(), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no response from the proxy for {method} {url}"))
}
