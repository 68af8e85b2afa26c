//! `worker-bench`: the worker's cost per tool request, against a direct hyper
//! client to the same local TLS origin, with injection and scrubbing on; and
//! the scrubber's throughput on a 1 MiB response.
//!
//! Set-up (all on loopback): a throwaway CA and leaf from the `openssl` CLI,
//! the e2e harness's TLS origin on 127.0.0.2, its DNS server mapping
//! `api.calendar-bench.com` there, a store with one credential sealed by the
//! worker library, and the real `egress-controller worker` (`--controller`).
//!
//! Both paths do the same upstream work per request: DNS (worker only), a
//! new TCP connection and a full TLS handshake, one HTTP/1.1 POST. The
//! worker path adds the API hop (keep-alive), the policy decision, the
//! handle lookup and decryption, injection, response scrubbing and the
//! audit line. Prints the figures; asserts nothing about speed.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use secrecy::SecretString;
use tokio::net::TcpStream;

const HOST: &str = "api.calendar-bench.com";
const TOKEN: &str = "ya29.bench-token-0123456789abcdefghijklmnop";
const SERVICE_TOKEN: &str = "bench-service-token-0123456789";

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "the worker's added latency and throughput, and scrub MiB/s")]
struct Args {
    /// The `egress-controller` binary (release build).
    #[arg(long)]
    controller: PathBuf,
    /// Sequential requests per path for the latency figures.
    #[arg(long, default_value_t = 500)]
    sequential: usize,
    /// Requests per path for the throughput figures.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight for the throughput figures.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// TTL of the test DNS server's answer (0: the worker resolves for
    /// every request).
    #[arg(long, default_value_t = 60)]
    dns_ttl: u32,
    /// Stop each measurement after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(&args))
}

struct WorkerProc(Child);

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("chokepoint-worker-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ca = e2e::tls_origin::TestCa::generate(&dir.join("pki"), &[HOST], &[]);
    let origin = e2e::tls_origin::TlsOrigin::start(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0),
        &ca,
    );
    let dns = e2e::DnsServer::start();
    dns.set_static(HOST, &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
    dns.set_ttl(HOST, args.dns_ttl);
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: v1\nunsafe_allow_ranges: [127.0.0.2/32]\norgs:\n  acme:\n    integrations:\n      calendar:\n        hosts: [{HOST}]\n"
        ),
    )?;
    let key = [0x42u8; 32];
    let key_file = dir.join("master.key");
    {
        use base64::Engine as _;
        std::fs::write(
            &key_file,
            base64::engine::general_purpose::STANDARD.encode(key),
        )?;
    }
    let token_file = dir.join("service.token");
    std::fs::write(&token_file, SERVICE_TOKEN)?;
    let db = dir.join("worker.db");
    {
        let keys = worker::crypto::Keyring::from_keys(&[key])?;
        let store = worker::store::open(&format!("sqlite:{}", db.display())).await?;
        let template =
            worker::credential::HeaderTemplate::parse(worker::credential::DEFAULT_HEADER)?;
        let row = worker::credential::seal_new(
            &keys,
            "acme",
            "calendar",
            &template,
            &SecretString::from(TOKEN.to_owned()),
            worker::unix_now(),
        )?;
        store.insert_credential(&row).await?;
    }
    let (proc_, api) = start_worker(
        args,
        &dir,
        &policy,
        &db,
        &ca.ca_pem,
        &key_file,
        &token_file,
        dns.addr,
    )?;
    let worker_pid = proc_.id();
    let _guard = WorkerProc(proc_);

    let origin_port = origin.addr.port();
    let url = format!("https://{HOST}:{origin_port}/");
    let (run_id, handle) = start_run(api).await?;
    let tls = tls_connector(&ca.ca_pem)?;

    // Warm up both paths.
    for _ in 0..20 {
        via_worker(api, &run_id, &url, &handle).await?;
        direct(&tls, origin.addr).await?;
    }

    let deadline = Duration::from_secs_f64(args.seconds);
    let mut lat_direct = Vec::with_capacity(args.sequential);
    let mut lat_worker = Vec::with_capacity(args.sequential);
    let started = Instant::now();
    for _ in 0..args.sequential {
        if started.elapsed() > deadline * 2 {
            break;
        }
        let t = Instant::now();
        direct(&tls, origin.addr).await?;
        lat_direct.push(t.elapsed());
        let t = Instant::now();
        via_worker(api, &run_id, &url, &handle).await?;
        lat_worker.push(t.elapsed());
    }
    lat_direct.sort_unstable();
    lat_worker.sort_unstable();
    let pct = |v: &[Duration], p: f64| {
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
    };

    // CPU per request, from the kernel's accounting of each process (exited
    // threads included): the bench process holds the client, the origin
    // and the DNS server; the worker process only the worker.
    let before = (cpu_secs("self")?, cpu_secs(&worker_pid.to_string())?);
    let (tput_direct, n_direct) = {
        let tls = tls.clone();
        let addr = origin.addr;
        throughput(args, deadline, move || {
            let tls = tls.clone();
            async move { direct(&tls, addr).await }
        })
        .await?
    };
    let mid = (cpu_secs("self")?, cpu_secs(&worker_pid.to_string())?);
    let (tput_worker, n_worker) = {
        let (run_id, url, handle) = (run_id.clone(), url.clone(), handle.clone());
        throughput(args, deadline, move || {
            let (run_id, url, handle) = (run_id.clone(), url.clone(), handle.clone());
            async move { via_worker(api, &run_id, &url, &handle).await }
        })
        .await?
    };
    let after = (cpu_secs("self")?, cpu_secs(&worker_pid.to_string())?);
    let per_req = |cpu: f64, n: usize| cpu * 1e6 / n.max(1) as f64;
    let cpu_direct = per_req(mid.0 - before.0 + mid.1 - before.1, n_direct);
    let cpu_rest = per_req(after.0 - mid.0, n_worker);
    let cpu_worker = per_req(after.1 - mid.1, n_worker);
    let scrub_mib_s = scrub_throughput();

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "worker-bench: {} sequential, {} x{} concurrent per path, DNS TTL {} s",
        lat_direct.len(),
        args.requests,
        args.concurrency,
        args.dns_ttl
    )?;
    writeln!(
        out,
        "latency ms      p50     p99\n  direct      {:7.3} {:7.3}\n  worker      {:7.3} {:7.3}\n  added       {:7.3} {:7.3}",
        pct(&lat_direct, 0.5),
        pct(&lat_direct, 0.99),
        pct(&lat_worker, 0.5),
        pct(&lat_worker, 0.99),
        pct(&lat_worker, 0.5) - pct(&lat_direct, 0.5),
        pct(&lat_worker, 0.99) - pct(&lat_direct, 0.99),
    )?;
    writeln!(
        out,
        "throughput req/s\n  direct      {tput_direct:9.1}\n  worker      {tput_worker:9.1}\n  ratio       {:9.2}",
        tput_worker / tput_direct
    )?;
    writeln!(
        out,
        "CPU us/request (throughput phase; 10 ms clock ticks)\n  direct path, all processes       {cpu_direct:7.1}\n  worker path, client+origin+DNS   {cpu_rest:7.1}\n  worker path, worker process      {cpu_worker:7.1}\n  worker path / direct path        {:7.2}x",
        (cpu_rest + cpu_worker) / cpu_direct
    )?;
    for (what, mib_s) in scrub_mib_s {
        writeln!(out, "scrub 1 MiB response, {what}: {mib_s:.1} MiB/s")?;
    }
    drop(origin);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_worker(
    args: &Args,
    dir: &Path,
    policy: &Path,
    db: &Path,
    ca: &Path,
    key_file: &Path,
    token_file: &Path,
    dns: SocketAddr,
) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(&args.controller)
        .arg("worker")
        .arg("--policy")
        .arg(policy)
        .arg("--store")
        .arg(format!("sqlite:{}", db.display()))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--dns-server")
        .arg(dns.to_string())
        .arg("--extra-ca")
        .arg(ca)
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .env("CHOKEPOINT_MASTER_KEY_FILE", key_file)
        .env("CHOKEPOINT_WORKER_TOKEN_FILE", token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the worker")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            bail!("the worker exited before listening");
        };
        let line = line?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.parse::<SocketAddr>()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

fn tls_connector(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One POST straight to the origin: new TCP + TLS, injected header by hand.
async fn direct(tls: &tokio_rustls::TlsConnector, addr: SocketAddr) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tls
        .connect(ServerName::try_from(HOST.to_owned())?, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post("/")
        .header("host", HOST)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("accept-encoding", "identity")
        .body(Full::new(Bytes::from_static(b"{\"summary\":\"bench\"}")))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("direct: {status}");
    }
    Ok(())
}

async fn api_call(api: SocketAddr, path: &str, body: String) -> anyhow::Result<(u16, Bytes)> {
    thread_local! {
        static POOL: std::cell::RefCell<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let pooled = POOL.with(|p| p.borrow_mut().pop());
    let mut send = match pooled {
        Some(s) if !s.is_closed() => s,
        _ => {
            let tcp = TcpStream::connect(api).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        }
    };
    send.ready().await?;
    let req = http::Request::post(path)
        .header("host", "worker")
        .header("authorization", format!("Bearer {SERVICE_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    POOL.with(|p| p.borrow_mut().push(send));
    Ok((status, bytes))
}

async fn start_run(api: SocketAddr) -> anyhow::Result<(String, String)> {
    let (status, body) = api_call(
        api,
        "/v1/runs",
        r#"{"org":"acme","integrations":["calendar"],"ttl_secs":3600}"#.to_owned(),
    )
    .await?;
    if status != 201 {
        bail!("POST /v1/runs: {status} {}", String::from_utf8_lossy(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let run_id = v.get("run_id").and_then(|r| r.as_str()).context("run_id")?;
    let handle = v
        .get("handles")
        .and_then(|h| h.get("calendar"))
        .and_then(|h| h.as_str())
        .context("handle")?;
    Ok((run_id.to_owned(), handle.to_owned()))
}

/// One tool request through the worker, with the handle.
async fn via_worker(api: SocketAddr, run: &str, url: &str, handle: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "method": "POST",
        "url": url,
        "headers": {"content-type": "application/json"},
        "body": "{\"summary\":\"bench\"}",
        "credential": handle,
    })
    .to_string();
    let (status, bytes) = api_call(api, &format!("/v1/runs/{run}/requests"), body).await?;
    if status != 200 {
        bail!("worker: {status} {}", String::from_utf8_lossy(&bytes));
    }
    Ok(())
}

/// User + system CPU seconds of a process (`self` or a pid), exited
/// threads included (`/proc/PID/stat` fields 14 and 15, in USER_HZ = 100).
fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields start after its ')'.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// Requests per second with `args.concurrency` in flight, and the count.
async fn throughput<F, Fut>(
    args: &Args,
    deadline: Duration,
    make: F,
) -> anyhow::Result<(f64, usize)>
where
    F: Fn() -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    let started = Instant::now();
    let per_task = args.requests.div_ceil(args.concurrency.max(1));
    let local = tokio::task::LocalSet::new();
    let mut handles = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let make = make.clone();
        handles.push(local.spawn_local(async move {
            let mut n = 0usize;
            while n < per_task && started.elapsed() < deadline {
                make().await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let total = local
        .run_until(async move {
            let mut total = 0;
            for h in handles {
                total += h.await??;
            }
            anyhow::Ok(total)
        })
        .await?;
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// A 1 MiB calendar-API-like JSON response with an echo of the token every
/// ~64 KiB; `newlines` puts each event on its own line (pretty-printed
/// APIs), otherwise it is one line (minified JSON, the common case).
fn response_body(newlines: bool) -> String {
    let mut body = String::with_capacity((1 << 20) + 256);
    body.push_str("{\"items\":[");
    let mut i = 0usize;
    while body.len() < (1 << 20) {
        if i % 600 == 0 {
            body.push_str(&format!("{{\"echo\":\"{TOKEN}\"}},"));
        }
        body.push_str(&format!(
            "{{\"id\":{i},\"summary\":\"Weekly sync with the platform team\",\"start\":\"2026-12-0{}T10:00:00Z\"}},",
            i % 9 + 1
        ));
        if newlines {
            body.push('\n');
        }
        i += 1;
    }
    body.truncate(1 << 20);
    body
}

/// MiB/s of the worker's response path on 1 MiB: a stream scrubber with the
/// injected token's live forms plus every rule, fed 16 KiB chunks.
fn scrub_stream(body: &str) -> f64 {
    let scrubber = scrub::Scrubber::with_live_secrets([TOKEN]);
    let rounds = 10;
    let started = Instant::now();
    let mut out_len = 0usize;
    for _ in 0..rounds {
        let mut st = scrubber.stream();
        for chunk in body.as_bytes().chunks(16 * 1024) {
            out_len += st.push_bytes(chunk).len();
        }
        out_len += st.flush().len();
    }
    let secs = started.elapsed().as_secs_f64();
    std::hint::black_box(out_len);
    f64::from(rounds) / secs
}

/// MiB/s of one-shot scrubbing of 1 MiB (`live`: with the token's forms).
fn scrub_once(body: &str, live: bool) -> f64 {
    let scrubber = if live {
        scrub::Scrubber::with_live_secrets([TOKEN])
    } else {
        scrub::Scrubber::new()
    };
    let rounds = 10;
    let started = Instant::now();
    let mut out_len = 0usize;
    for _ in 0..rounds {
        out_len += scrubber.scrub(body).len();
    }
    let secs = started.elapsed().as_secs_f64();
    std::hint::black_box(out_len);
    f64::from(rounds) / secs
}

/// Scrub figures for both body shapes.
fn scrub_throughput() -> Vec<(String, f64)> {
    // Compile every lazily built rule first.
    let _ = scrub::Scrubber::new().scrub(&response_body(true));
    let mut out = Vec::new();
    for (shape, newlines) in [
        ("one line (minified JSON)", false),
        ("one event per line", true),
    ] {
        let body = response_body(newlines);
        out.push((
            format!("stream, live token + rules, {shape}"),
            scrub_stream(&body),
        ));
        out.push((
            format!("one-shot, live token + rules, {shape}"),
            scrub_once(&body, true),
        ));
        out.push((
            format!("one-shot, rules only, {shape}"),
            scrub_once(&body, false),
        ));
    }
    out
}
