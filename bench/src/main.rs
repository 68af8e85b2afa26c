//! `tunnel-load`: open new TLS connections as fast as a proxy lets through,
//! for `bench/proxy-bench.sh`. Each connection is a full handshake (no
//! resumption), through `CONNECT` when `--proxy` is given, then closed
//! without further traffic: the cost measured is the proxy's per-tunnel
//! work, with a client cheap enough not to be the bottleneck on 2 cores.
//!
//! Prints one line: `count rate_per_s median_setup_ms`. Bounded by
//! `--max` connections and `--seconds`; loopback targets only in the bench.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "open TLS connections (optionally through CONNECT) and report the rate")]
struct Args {
    /// Connect to this address (the proxy with `--connect-to`, else the origin).
    #[arg(long)]
    addr: SocketAddr,
    /// Send `CONNECT <this>` first (host:port), as a proxy client does.
    #[arg(long)]
    connect_to: Option<String>,
    /// The TLS server name.
    #[arg(long)]
    sni: String,
    /// PEM file with the CA to trust.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Stop after this many connections in all.
    #[arg(long, default_value_t = 20_000)]
    max: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (count, elapsed, mut setups) = rt.block_on(run(&args))?;
    setups.sort_unstable();
    let median = setups.get(setups.len() / 2).copied().unwrap_or_default();
    let rate = count as f64 / elapsed.as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{count} {rate:.1} {:.3}",
        median.as_secs_f64() * 1000.0
    )?;
    Ok(())
}

/// Run the loops; (connections, elapsed, setup times).
async fn run(args: &Args) -> anyhow::Result<(usize, Duration, Vec<Duration>)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca)
        .with_context(|| format!("cannot read {}", args.ca.display()))?
    {
        roots.add(cert.context("bad certificate in --ca")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake, as a new client's would be.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));
    let sni = ServerName::try_from(args.sni.clone()).context("bad --sni")?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let loops = args.concurrency.max(1);
    let per_loop = args.max.div_ceil(loops);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..loops {
        let (connector, sni) = (connector.clone(), sni.clone());
        let (addr, connect_to) = (args.addr, args.connect_to.clone());
        set.spawn(async move {
            let mut setups = Vec::with_capacity(per_loop);
            while setups.len() < per_loop && Instant::now() < deadline {
                let t0 = Instant::now();
                one(addr, connect_to.as_deref(), &connector, sni.clone()).await?;
                setups.push(t0.elapsed());
            }
            anyhow::Ok(setups)
        });
    }
    let mut setups = Vec::new();
    while let Some(done) = set.join_next().await {
        setups.extend(done??);
    }
    Ok((setups.len(), started.elapsed(), setups))
}

/// One connection: TCP, CONNECT if asked, a full TLS handshake, close.
async fn one(
    addr: SocketAddr,
    connect_to: Option<&str>,
    connector: &TlsConnector,
    sni: ServerName<'static>,
) -> anyhow::Result<()> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if let Some(target) = connect_to {
        tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::with_capacity(128);
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                bail!("the proxy closed the connection");
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
            if head.len() > 16 * 1024 {
                bail!("response head too large");
            }
        }
        if !(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")) {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            bail!("CONNECT refused: {}", String::from_utf8_lossy(line));
        }
    }
    let tls = connector.connect(sni, tcp).await?;
    drop(tls);
    Ok(())
}
