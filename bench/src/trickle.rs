//! `head-trickle`: slow-head load for `bench/proxy-bench.sh`. `--slow`
//! connections each send a request head of up to 64 KiB one byte per
//! write (TCP_NODELAY, so each byte is its own segment when the proxy keeps
//! up), while one client sends ordinary forwarded requests, one at a time,
//! and records their latency. A proxy that re-parses the whole head on
//! every read does quadratic work here; one that scans only new bytes does
//! linear work.
//!
//! Prints one line: `normal_requests p50_ms p99_ms max_ms slow_bytes`.
//! Bounded by `--seconds`; loopback targets only in the bench.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "trickle slow request heads while timing normal requests")]
struct Args {
    /// The proxy.
    #[arg(long)]
    proxy: SocketAddr,
    /// The absolute URL the normal requests (and the slow heads) name.
    #[arg(long)]
    url: String,
    /// Slow connections.
    #[arg(long, default_value_t = 200)]
    slow: usize,
    /// Head size each slow connection works towards.
    #[arg(long, default_value_t = 64 * 1024)]
    head_bytes: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut lat, slow_bytes) = rt.block_on(run(&args))?;
    if lat.is_empty() {
        bail!("no normal request completed");
    }
    lat.sort_unstable();
    let pick = |q: f64| {
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        lat.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
    };
    let max = lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {:.2} {:.2} {:.2} {}",
        lat.len(),
        pick(0.5),
        pick(0.99),
        max,
        slow_bytes
    )?;
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<(Vec<Duration>, u64)> {
    let host = args
        .url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .context("--url must be absolute")?
        .to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut slow = Vec::with_capacity(args.slow);
    for _ in 0..args.slow {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (proxy, url, host, limit) =
            (args.proxy, args.url.clone(), host.clone(), args.head_bytes);
        slow.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(proxy).await else {
                return;
            };
            let _ = s.set_nodelay(true);
            let start = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nX-Pad: ");
            let mut n = 0usize;
            for &b in start.as_bytes() {
                if stop.load(Ordering::Relaxed) || s.write_all(&[b]).await.is_err() {
                    return;
                }
                n += 1;
            }
            while n < limit && !stop.load(Ordering::Relaxed) {
                if s.write_all(b"a").await.is_err() {
                    return;
                }
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                // One byte per write, and let the other tasks write too.
                tokio::task::yield_now().await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let req = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n\r\n", args.url);
    let mut lat = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    // Let the slow connections get going first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while Instant::now() < deadline {
        let t = Instant::now();
        let mut s = match conn.take() {
            Some(s) => s,
            None => TcpStream::connect(args.proxy).await?,
        };
        s.write_all(req.as_bytes()).await?;
        let mut got = Vec::new();
        let complete = loop {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .context("a normal request took over 10 s")??;
            if n == 0 {
                break false;
            }
            got.extend_from_slice(buf.get(..n).unwrap_or_default());
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(got.get(..end).unwrap_or_default())
                    .to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    bail!(
                        "normal request failed: {}",
                        head.lines().next().unwrap_or_default()
                    );
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    break true;
                }
            }
        };
        if !complete {
            continue;
        }
        lat.push(t.elapsed());
        conn = Some(s);
    }
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        t.abort();
    }
    Ok((lat, sent.load(Ordering::Relaxed)))
}
