//! A recording HTTP/1.1 origin on a loopback address.
//!
//! It parses requests the way a real server does (Transfer-Encoding: chunked
//! wins over Content-Length), so a request-smuggling desync between the proxy
//! and the origin shows up as an extra recorded request. Each request is
//! answered `200` with a fixed body, or with a route's content.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Request target as received (origin-form expected).
    pub target: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body length.
    pub body_len: usize,
}

impl Seen {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    routes: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// Paths answered with this many zero bytes, streamed (not held).
    zeros: Mutex<HashMap<String, u64>>,
    /// Paths answered with these extra raw header lines.
    extra_headers: Mutex<HashMap<String, String>>,
    stop: AtomicBool,
}

/// The origin server; stops on drop.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Origin {
    /// Listen on `ip` (a port is picked) and serve on a thread.
    pub fn start(ip: Ipv4Addr) -> Origin {
        Self::start_on(SocketAddr::new(std::net::IpAddr::V4(ip), 0))
    }

    /// Listen on exactly `addr` and serve on a thread.
    pub fn start_on(addr: SocketAddr) -> Origin {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s2 = Arc::clone(&s);
                std::thread::spawn(move || serve(conn, &s2));
            }
        });
        Origin { addr, shared }
    }

    /// Serve `body` with `content_type` at `path` (exact origin-form path).
    pub fn route(&self, path: &str, content_type: &str, body: Vec<u8>) {
        self.shared
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (content_type.to_owned(), body));
    }

    /// Serve `len` zero bytes at `path`, written as they go (a download
    /// far larger than any socket buffer, without holding it in memory).
    pub fn route_zeros(&self, path: &str, len: u64) {
        self.shared
            .zeros
            .lock()
            .unwrap()
            .insert(path.to_owned(), len);
    }

    /// Add raw header lines (each ending in `\r\n`) to the answer at `path`.
    pub fn route_headers(&self, path: &str, lines: &str) {
        self.shared
            .extra_headers
            .lock()
            .unwrap()
            .insert(path.to_owned(), lines.to_owned());
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(mut conn: TcpStream, s: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Read a head.
        let (seen, head_len, framing) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let hs: Vec<(String, String)> = crate::header_pairs(req.headers);
                    let chunked = hs.iter().any(|(n, v)| {
                        n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked")
                    });
                    let cl = hs
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let seen = Seen {
                        method: req.method.unwrap_or("").to_owned(),
                        target: req.path.unwrap_or("").to_owned(),
                        headers: hs,
                        body_len: 0,
                    };
                    break (seen, len, if chunked { None } else { Some(cl) });
                }
                Ok(httparse::Status::Partial) => match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                },
                Err(_) => {
                    let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                }
            }
        };
        buf.drain(..head_len);
        // Read the body.
        let body_len = match framing {
            Some(n) => {
                while buf.len() < n {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                buf.drain(..n);
                n
            }
            None => match read_chunked(&mut conn, &mut buf) {
                Some(n) => n,
                None => return,
            },
        };
        let mut seen = seen;
        seen.body_len = body_len;
        let path = seen.target.clone();
        let close = seen
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        s.seen.lock().unwrap().push(seen);
        let zeros = s.zeros.lock().unwrap().get(&path).copied();
        if let Some(len) = zeros {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
            );
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            let block = [0u8; 64 * 1024];
            let mut left = len;
            let _ = conn.set_write_timeout(Some(Duration::from_secs(60)));
            while left > 0 {
                let n = usize::try_from(left.min(block.len() as u64)).unwrap();
                if conn.write_all(&block[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
            continue;
        }
        let extra = s
            .extra_headers
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_default();
        let (ctype, body) = s
            .routes
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_else(|| ("text/plain".to_owned(), b"origin-ok\n".to_vec()));
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        );
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&body).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// Consume a chunked body from `buf` (reading more as needed); the decoded
/// length, or `None` on a framing error or close.
fn read_chunked(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        // Data plus its CRLF (for the last chunk: the final CRLF, no trailers).
        while buf.len() < size + 2 {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..size + 2);
        total += size;
        if size == 0 {
            return Some(total);
        }
    }
}
