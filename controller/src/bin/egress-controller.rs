//! `egress-controller`: keeps Docker networks, the proxy's attachments and
//! the nftables rules in line with the policy (see `controller::reconcile`).
//!
//! `--once` runs one pass and exits (0, or 1 with the failing steps);
//! without it, a pass runs at start, on every Docker network/container
//! event, and on a timer. The kernel rules are applied first in every pass,
//! also while Docker is unreachable. Bad configuration exits 64; a Docker
//! daemon affected by CVE-2024-29018 with the container checks turned off
//! exits 78.
//!
//! `egress-controller worker …` runs the worker instead (see `worker::cli`).
//! With `--worker`, the daemon starts that worker as a supervised child with
//! its own uid and no capabilities (see `controller::supervise`); SIGTERM
//! or SIGINT stops the daemon and its worker with it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use controller::firewall::Firewall;
use controller::reconcile::{Config, reconcile};
use futures_util::StreamExt;

/// chokepoint's controller: kernel isolation for exec containers.
#[derive(Debug, Parser)]
#[command(name = "egress-controller", version, about, after_help = probe::HELP)]
struct Args {
    /// The egress policy (its orgs get one network each).
    #[arg(long)]
    policy: PathBuf,
    /// Run one reconcile pass and exit.
    #[arg(long)]
    once: bool,
    /// Base range the per-org /24 subnets are cut from.
    #[arg(long, default_value = "10.231.0.0/16")]
    subnet_base: ipnet::Ipv4Net,
    /// The proxy container to attach to every org network.
    #[arg(long)]
    proxy_container: Option<String>,
    /// Write the proxy's policy here (each org's clients = its subnet).
    #[arg(long)]
    proxy_policy_out: Option<PathBuf>,
    /// The proxy port exec containers may reach.
    #[arg(long, default_value_t = 3128)]
    proxy_port: u16,
    /// State and metrics (`state.json`, `controller.prom`).
    #[arg(long, default_value = "/run/chokepoint")]
    state_dir: PathBuf,
    /// Seconds between timer-driven passes.
    #[arg(long, default_value_t = 30)]
    interval_secs: u64,
    /// Serve `/metrics` (Prometheus text format), `/healthz` and `/readyz`
    /// here (not in `--once`). Keep it off every network an exec container
    /// joins.
    #[arg(long, default_value = "127.0.0.1:9091")]
    metrics_listen: std::net::SocketAddr,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Start `egress-controller worker --policy <this policy>` as a
    /// supervised child (own uid, no capabilities), restarted when it dies.
    #[arg(long)]
    worker: bool,
    /// The worker's `UID:GID` (never 0).
    #[arg(long, default_value = "65534:65534")]
    worker_user: String,
    /// One more argument for the worker (repeatable), e.g.
    /// `--worker-arg=--store=sqlite:/var/lib/chokepoint/worker.db`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_arg: Vec<OsString>,
    /// Save the rendered ruleset here after every apply; the boot unit
    /// (`egressctl install-boot`) loads it before Docker starts.
    #[arg(long, default_value = controller::firewall::SAVED_RULESET)]
    ruleset_file: PathBuf,
    /// The folder holding one folder per org: an exec container must mount
    /// exactly its org's.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// The isolation every exec container must run under: runc,
    /// userns-remap or gvisor.
    #[arg(long, default_value = "runc")]
    isolation: containers::Isolation,
    /// The egress proxy's admin address (`IP:PORT`): its `/readyz` must
    /// answer 200 before the first pass (required in production). Passed
    /// on to the supervised worker too.
    #[arg(long = "proxy-admin", value_name = "IP:PORT")]
    proxy_admin: Option<String>,
    /// Do not check (and stop) containers on org networks. Refused on a
    /// Docker daemon affected by CVE-2024-29018.
    #[arg(long)]
    unsafe_skip_container_checks: bool,
}

/// `UID:GID`, both non-zero for the uid.
fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse::<u32>(), g.parse::<u32>()) {
        (Ok(u), Ok(g)) if u != 0 => Ok((u, g)),
        _ => Err(format!(
            "invalid --worker-user `{s}`: write a non-root `UID:GID`, like `65534:65534`"
        )),
    }
}

fn config(a: &Args) -> Config {
    Config {
        policy: a.policy.clone(),
        subnet_base: a.subnet_base,
        proxy_container: a.proxy_container.clone(),
        proxy_policy_out: a.proxy_policy_out.clone(),
        proxy_port: a.proxy_port,
        state_dir: a.state_dir.clone(),
        firewall: Firewall::default(),
        ruleset_file: Some(a.ruleset_file.clone()),
        data_root: a.data_root.clone(),
        isolation: a.isolation,
        enforce_containers: !a.unsafe_skip_container_checks,
    }
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "worker") {
        return worker::cli::main(std::env::args_os().skip(1));
    }
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = probe::main_if_asked("egress-controller", &argv) {
        return code;
    }
    let args = Args::parse();
    // The production switch, before anything is applied or started (exit 78).
    let mode = match mode::Mode::from_env("egress-controller") {
        Ok(m) => m,
        Err(code) => return code,
    };
    if let Err(code) = controller::production::gate(mode, &args.policy, args.proxy_admin.as_deref())
    {
        return code;
    }
    let cfg = config(&args);
    if let Err(e) = controller::reconcile::planned_networks(&cfg) {
        let _ = writeln_err(&format!("egress-controller: {e}"));
        return ExitCode::from(64);
    }
    if let Err(e) = parse_user(&args.worker_user) {
        let _ = writeln_err(&format!("egress-controller: {e}"));
        return ExitCode::from(64);
    }
    if args.check {
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln_err(&format!("egress-controller: {e}"));
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args, cfg, mode))
}

fn writeln_err(msg: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr().lock(), "{msg}")
}

fn writeln_out(msg: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{msg}")
}

async fn run(args: Args, cfg: Config, mode: mode::Mode) -> ExitCode {
    // Installed before anything starts: SIGTERM (docker stop, systemd) and
    // SIGINT stop the daemon; returning drops the supervised worker, which
    // is killed with it (kill_on_drop).
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln_err(&format!("egress-controller: signal handler: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if args.worker && !args.once {
        let (uid, gid) = parse_user(&args.worker_user).unwrap_or((65534, 65534));
        let mut wargs = vec![
            OsString::from("--policy"),
            args.policy.clone().into_os_string(),
        ];
        if let Some(p) = &args.proxy_admin
            && !args
                .worker_arg
                .iter()
                .any(|a| a.to_string_lossy().starts_with("--proxy-admin"))
        {
            wargs.push(OsString::from(format!("--proxy-admin={p}")));
        }
        wargs.extend(args.worker_arg.iter().cloned());
        match controller::supervise::WorkerSpec::from_current(uid, gid, wargs) {
            Ok(spec) => {
                tokio::spawn(async move {
                    if let Err(e) = controller::supervise::supervise(spec).await {
                        let _ = writeln_err(&format!("egress-controller: worker: {e}"));
                    }
                });
            }
            Err(e) => {
                let _ = writeln_err(&format!("egress-controller: worker: {e}"));
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.once {
        match tokio::net::TcpListener::bind(args.metrics_listen).await {
            Ok(l) => {
                let line = serde_json::json!({"event": "metrics_listening", "addr": l.local_addr().map_or(args.metrics_listen, |a| a).to_string()});
                let _ = writeln_out(&line.to_string());
                let stale = Duration::from_secs(args.interval_secs.max(1).saturating_mul(3));
                // With --worker, /metrics appends the worker's series,
                // fetched over its socket with the service token.
                let worker = (args.worker)
                    .then(|| controller::worker_scrape::target_from_args(&args.worker_arg));
                tokio::spawn(serve_metrics(l, cfg.state_dir.clone(), stale, worker));
            }
            Err(e) => {
                let _ = writeln_err(&format!(
                    "egress-controller: --metrics-listen {}: cannot bind: {e}",
                    args.metrics_listen
                ));
                return ExitCode::FAILURE;
            }
        }
    }
    // Docker may be down: the rules are applied regardless, and the
    // connection is retried on every pass.
    let mut docker = connect().await;
    if docker.is_none() && !cfg.enforce_containers {
        let _ = writeln_err(
            "egress-controller: --unsafe-skip-container-checks needs the Docker daemon's version (CVE-2024-29018)",
        );
        return ExitCode::from(78);
    }
    if let Some(d) = &docker
        && let Err(code) = check_daemon(d, &cfg).await
    {
        return code;
    }
    let pass = |why: &'static str, docker: Option<bollard::Docker>| {
        let cfg = &cfg;
        async move {
            match reconcile(docker.as_ref(), cfg).await {
                Ok(report) => {
                    let ok = report.is_ok();
                    let event = if ok { "reconcile" } else { "reconcile_failed" };
                    let line =
                        serde_json::json!({"event": event, "trigger": why, "report": report});
                    let _ = if ok {
                        writeln_out(&line.to_string())
                    } else {
                        writeln_err(&line.to_string())
                    };
                    ok
                }
                Err(e) => {
                    let line = serde_json::json!({"event": "reconcile_failed", "trigger": why, "error": e.to_string()});
                    let _ = writeln_err(&line.to_string());
                    false
                }
            }
        }
    };
    if args.once {
        let ok = pass("once", docker.clone()).await;
        if let Err(code) = tables_gate(mode, &cfg) {
            return code;
        }
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    pass("start", docker.clone()).await;
    if let Err(code) = tables_gate(mode, &cfg) {
        return code;
    }
    let mut events = docker.as_ref().map(|d| {
        d.events(None::<bollard::query_parameters::EventsOptions>)
            .boxed()
    });
    let mut timer = tokio::time::interval(Duration::from_secs(args.interval_secs.max(1)));
    loop {
        let next_event = async {
            match events.as_mut() {
                Some(ev) => ev.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = timer.tick() => {
                if docker.is_none() {
                    docker = connect().await;
                    events = docker
                        .as_ref()
                        .map(|d| d.events(None::<bollard::query_parameters::EventsOptions>).boxed());
                }
                pass("timer", docker.clone()).await;
            }
            ev = next_event => match ev {
                Some(Ok(ev)) => {
                    let kind = ev.typ.map(|t| format!("{t:?}")).unwrap_or_default().to_ascii_lowercase();
                    let action = ev.action.unwrap_or_default();
                    let relevant = (kind.contains("network") && ["create", "connect", "disconnect", "destroy"].contains(&action.as_str()))
                        || (kind.contains("container") && ["create", "start", "die", "destroy"].contains(&action.as_str()));
                    if relevant {
                        pass("docker_event", docker.clone()).await;
                    }
                }
                Some(Err(_)) | None => {
                    // The event stream broke (dockerd restarted): reconnect,
                    // and reconcile, since anything may have changed.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    docker = connect().await;
                    events = docker
                        .as_ref()
                        .map(|d| d.events(None::<bollard::query_parameters::EventsOptions>).boxed());
                    pass("docker_reconnect", docker.clone()).await;
                }
            },
            _ = int.recv() => return ExitCode::SUCCESS,
            _ = term.recv() => return ExitCode::SUCCESS,
        }
    }
}

/// After the first pass: the nft tables must exist and equal the rendered
/// ruleset. Production: exit 78 with one line (`egress_proxy_down`: with
/// the tables absent the proxy is not the only way out); development: the
/// warning, and the daemon goes on (it re-applies on every pass).
fn tables_gate(mode: mode::Mode, cfg: &Config) -> Result<(), ExitCode> {
    let mut gate = mode::Gate::new(mode, "egress-controller");
    if let Err(e) = controller::reconcile::verify_tables(cfg) {
        gate.fail(
            mode::Condition::EgressProxyDown,
            format!(
                "the nft tables are not as rendered after the first pass: {e}; check that `nft` works here (root, the nf_tables module) and that nothing else deletes the `chokepoint` tables"
            ),
        );
    }
    gate.finish()
}

/// Connect to Docker, or `None` (logged) when it does not answer.
async fn connect() -> Option<bollard::Docker> {
    match containers::connect().await {
        Ok(d) => Some(d),
        Err(e) => {
            let line = serde_json::json!({"event": "docker_unreachable", "error": e.to_string()});
            let _ = writeln_err(&line.to_string());
            None
        }
    }
}

/// Log the daemon's version; refuse one affected by CVE-2024-29018 when
/// the container checks (which stop any exec container without a safe DNS
/// server) are turned off.
async fn check_daemon(docker: &bollard::Docker, cfg: &Config) -> Result<(), ExitCode> {
    let version = match controller::daemon::detect(docker).await {
        Ok(v) => v,
        Err(e) => controller::daemon::DaemonVersion::new(&format!("unknown ({e})")),
    };
    let line = serde_json::json!({
        "event": "docker_daemon",
        "version": version.version,
        "cve_2024_29018_affected": version.cve_2024_29018_affected,
        "container_checks": cfg.enforce_containers,
    });
    let _ = writeln_out(&line.to_string());
    if version.cve_2024_29018_affected && !cfg.enforce_containers {
        let _ = writeln_err(&format!(
            "egress-controller: Docker {} forwards container DNS from the host's namespace (CVE-2024-29018); refusing to run with --unsafe-skip-container-checks",
            version.version
        ));
        return Err(ExitCode::from(78));
    }
    Ok(())
}

/// Serve `GET /metrics`, `/healthz` and `/readyz` (ready = a pass applied
/// or confirmed the rules within `stale`). One request per connection,
/// heads bounded to 8 KiB and 5 s. `worker`: `Some` with `--worker` (the
/// worker's listen address, `None` inside when it does not parse): then
/// `/metrics` also carries `controller_worker_scrape_up` and the worker's
/// `worker_*` series (`controller::worker_scrape`).
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state_dir: PathBuf,
    stale: Duration,
    worker: Option<Option<controller::worker_scrape::Target>>,
) {
    let worker = std::sync::Arc::new(worker);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state_dir = state_dir.clone();
        let worker = worker.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    }
                }
                true
            })
            .await;
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (status, ctype, body) = match (read, parts.next(), parts.next()) {
                (Ok(true), Some("GET"), Some(path)) => {
                    let (status, ctype, mut body) = metrics_response(path, &state_dir, stale);
                    if path == "/metrics"
                        && let Some(target) = worker.as_ref()
                    {
                        body.push_str(&controller::worker_scrape::scrape(target.as_ref()).await);
                    }
                    (status, ctype, body)
                }
                (Ok(true), Some(_), Some(_)) => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_owned(),
                ),
                _ => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n\r\n{body}",
                body.len()
            );
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.write_all(resp.as_bytes())).await;
            let _ = conn.shutdown().await;
        });
    }
}

fn metrics_response(
    path: &str,
    state_dir: &std::path::Path,
    stale: Duration,
) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            controller::reconcile::State::load(state_dir).prometheus_text(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let last = controller::reconcile::State::load(state_dir).last_reconcile_unix;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if last > 0 && now.saturating_sub(last) <= stale.as_secs() {
                ("200 OK", "text/plain", "ready\n".to_owned())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: no recent reconcile pass\n".to_owned(),
                )
            }
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    }
}
