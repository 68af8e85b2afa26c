//! `api-load`: load for `bench/api-bench.sh` against a running
//! `chokepoint-api` over TLS on loopback.
//!
//! - `idle`: open `--sockets` authenticated WebSockets (bearer tokens minted
//!   here with the HS256 secret the API holds, one user per socket), hold
//!   them, and report the server's RSS before and after (from
//!   `/proc/<pid>/status`), then check every socket still gets an event.
//! - `fanout`: open `--sockets` sockets on one conversation, post
//!   `--events` events through the service API, and report events/s posted
//!   and frames/s delivered until every socket has every event.
//!
//! Every loop is bounded by a count and `--seconds`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use futures_util::StreamExt as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "idle-socket and fan-out load for chokepoint-api")]
struct Args {
    /// The API's address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// PEM file with the CA to trust.
    #[arg(long)]
    ca: PathBuf,
    /// The HS256 secret (base64) the API verifies with.
    #[arg(long)]
    key_file: PathBuf,
    /// The API's `--issuer`.
    #[arg(long, default_value = "bench")]
    issuer: String,
    /// The API's `--audience`.
    #[arg(long, default_value = "bench")]
    audience: String,
    /// The service token file.
    #[arg(long)]
    service_token_file: PathBuf,
    /// The API's pid (for its RSS).
    #[arg(long)]
    pid: u32,
    /// Sockets to open.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Upgrades in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    seconds: f64,
    /// What to measure.
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Hold idle authenticated sockets and report the server's RSS.
    Idle {
        /// Seconds to hold them.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
    /// Fan events out to every socket of one conversation.
    Fanout {
        /// Events to post.
        #[arg(long, default_value_t = 500)]
        events: usize,
        /// Event payload bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
    },
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

struct Ctx {
    addr: SocketAddr,
    tls: TlsConnector,
    secret: Vec<u8>,
    issuer: String,
    audience: String,
    service: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// User + system CPU seconds of a process (`self` or a pid).
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall (11th and 12th after it), in clock ticks
    // (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ctx {
    fn token(&self, org: &str, user: &str) -> anyhow::Result<String> {
        let claims = serde_json::json!({
            "sub": user, "org": org, "iat": now(), "exp": now() + 3600,
            "aud": self.audience, "iss": self.issuer,
        });
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )?)
    }

    async fn tls(&self) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(self
            .tls
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?)
    }

    async fn ws(&self, conversation: &str, token: &str) -> anyhow::Result<Ws> {
        let s = self.tls().await?;
        let mut req = format!(
            "wss://127.0.0.1:{}/v1/conversations/{conversation}/ws",
            self.addr.port()
        )
        .into_client_request()?;
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = tokio_tungstenite::client_async(req, s).await?;
        Ok(ws)
    }
}

/// A keep-alive HTTP/1.1 connection for the API's JSON calls.
struct Http {
    s: BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl Http {
    async fn new(ctx: &Ctx) -> anyhow::Result<Http> {
        Ok(Http {
            s: BufReader::new(ctx.tls().await?),
        })
    }

    async fn call(&mut self, path: &str, auth: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.s.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.s.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

async fn conversation(ctx: &Ctx, token: &str) -> anyhow::Result<String> {
    let mut h = Http::new(ctx).await?;
    let (status, body) = h.call("/v1/conversations", token, "{}").await?;
    if status != 201 {
        bail!("create conversation: {status} {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v.get("id")
        .and_then(|i| i.as_str())
        .context("id")?
        .to_owned())
}

/// Open `n` sockets, socket i on `convs[i % len]` as user `u<i>`.
async fn open_sockets(
    ctx: &Arc<Ctx>,
    convs: &[String],
    n: usize,
    concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<Ws>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        if Instant::now() > deadline {
            bail!("deadline while opening sockets ({i} of {n})");
        }
        let ctx = ctx.clone();
        let conv = convs
            .get(i % convs.len())
            .context("no conversation")?
            .clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let token = ctx.token("bench", &format!("u{i}"))?;
            let mut last = None;
            for _ in 0..5 {
                match ctx.ws(&conv, &token).await {
                    Ok(ws) => return Ok(ws),
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("connect")))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

async fn post_events(
    ctx: &Ctx,
    conv: &str,
    n: usize,
    size: usize,
    posters: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let payload = "e".repeat(size);
    let mut tasks = Vec::new();
    for _ in 0..posters {
        let mut h = Http::new(ctx).await?;
        let next = next.clone();
        let path = format!("/v1/conversations/{conv}/events");
        let service = ctx.service.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let body = serde_json::json!({"data": {"i": i, "p": payload}}).to_string();
                let (status, b) = h.call(&path, &service, &body).await?;
                if status != 202 {
                    bail!("event: {status} {b}");
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&args.ca)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let secret = base64::engine::general_purpose::STANDARD
        .decode(std::fs::read_to_string(&args.key_file)?.trim())?;
    let ctx = Arc::new(Ctx {
        addr: args.addr,
        tls: TlsConnector::from(Arc::new(config)),
        secret,
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
        service: std::fs::read_to_string(&args.service_token_file)?
            .trim()
            .to_owned(),
    });
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let owner = ctx.token("bench", "owner")?;
    let mut out = std::io::stdout().lock();
    match args.mode {
        Mode::Idle { hold } => {
            let mut convs = Vec::new();
            for _ in 0..100 {
                convs.push(conversation(&ctx, &owner).await?);
            }
            let (before, _) = rss_kib(args.pid)?;
            let t0 = Instant::now();
            let mut sockets =
                open_sockets(&ctx, &convs, args.sockets, args.concurrency, deadline).await?;
            let open_s = t0.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(hold)).await;
            let (after, peak) = rss_kib(args.pid)?;
            // Every socket is alive: one event per conversation reaches each.
            post_events_to_all(&ctx, &convs).await?;
            let mut alive = 0usize;
            for ws in &mut sockets {
                if let Ok(Some(Ok(Message::Text(_)))) =
                    tokio::time::timeout(Duration::from_secs(10), ws.next()).await
                {
                    alive += 1;
                }
            }
            writeln!(
                out,
                "idle sockets={} opened_in_s={open_s:.1} upgrades_per_s={:.0} alive={alive} rss_before_kib={before} rss_after_kib={after} peak_kib={peak} per_socket_kib={:.1}",
                args.sockets,
                args.sockets as f64 / open_s,
                (after.saturating_sub(before)) as f64 / args.sockets as f64
            )?;
        }
        Mode::Fanout { events, size } => {
            let conv = conversation(&ctx, &owner).await?;
            let sockets = open_sockets(
                &ctx,
                std::slice::from_ref(&conv),
                args.sockets,
                args.concurrency,
                deadline,
            )
            .await?;
            let done = Arc::new(AtomicUsize::new(0));
            let frames = Arc::new(AtomicUsize::new(0));
            let mut readers = Vec::new();
            for mut ws in sockets {
                let done = done.clone();
                let frames = frames.clone();
                readers.push(tokio::spawn(async move {
                    let mut got = 0usize;
                    while got < events {
                        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
                            Ok(Some(Ok(Message::Text(_)))) => {
                                got += 1;
                                frames.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Some(Ok(_))) => {}
                            _ => break,
                        }
                    }
                    if got == events {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    ws
                }));
            }
            let t0 = Instant::now();
            let pid = args.pid.to_string();
            let (server0, client0) = (cpu_secs(&pid), cpu_secs("self"));
            post_events(&ctx, &conv, events, size, 4).await?;
            let posted_s = t0.elapsed().as_secs_f64();
            let mut kept = Vec::new();
            for r in readers {
                kept.push(r.await?);
            }
            let all_s = t0.elapsed().as_secs_f64();
            let server_cpu = cpu_secs(&pid) - server0;
            let client_cpu = cpu_secs("self") - client0;
            let (rss, peak) = rss_kib(args.pid)?;
            let delivered = frames.load(Ordering::Relaxed);
            let per_frame = |cpu: f64| cpu * 1e6 / (delivered.max(1) as f64);
            writeln!(
                out,
                "fanout sockets={} events={events} size={size} sockets_with_all={} posted_events_per_s={:.0} delivered_frames={delivered} delivered_frames_per_s={:.0} seconds={all_s:.2} server_cpu_s={server_cpu:.2} server_cpu_us_per_frame={:.1} client_cpu_s={client_cpu:.2} client_cpu_us_per_frame={:.1} rss_kib={rss} peak_kib={peak}",
                args.sockets,
                done.load(Ordering::Relaxed),
                events as f64 / posted_s,
                delivered as f64 / all_s,
                per_frame(server_cpu),
                per_frame(client_cpu)
            )?;
            drop(kept);
        }
    }
    Ok(())
}

async fn post_events_to_all(ctx: &Ctx, convs: &[String]) -> anyhow::Result<()> {
    let mut h = Http::new(ctx).await?;
    for c in convs {
        let (status, b) = h
            .call(
                &format!("/v1/conversations/{c}/events"),
                &ctx.service,
                r#"{"data":"ping"}"#,
            )
            .await?;
        if status != 202 {
            bail!("event: {status} {b}");
        }
    }
    Ok(())
}
