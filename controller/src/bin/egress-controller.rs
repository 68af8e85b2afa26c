//! `egress-controller`: keeps Docker networks, the proxy's attachments and
//! the nftables rules in line with the policy (see `controller::reconcile`).
//!
//! `--once` runs one pass and exits (0, or 1 with the failing step); without
//! it, a pass runs at start, on every Docker network/container event, and on
//! a timer. Bad configuration exits 64.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use controller::firewall::Firewall;
use controller::reconcile::{Config, reconcile};
use futures_util::StreamExt;

/// chokepoint's controller: kernel isolation for exec containers.
#[derive(Debug, Parser)]
#[command(name = "egress-controller", version, about)]
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
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
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
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = config(&args);
    if let Err(e) = controller::reconcile::planned_networks(&cfg) {
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
    rt.block_on(run(args, cfg))
}

fn writeln_err(msg: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr().lock(), "{msg}")
}

fn writeln_out(msg: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{msg}")
}

async fn run(args: Args, cfg: Config) -> ExitCode {
    let docker = match containers::connect().await {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln_err(&format!("egress-controller: docker: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let pass = |why: &'static str| {
        let (docker, cfg) = (&docker, &cfg);
        async move {
            match reconcile(docker, cfg).await {
                Ok(report) => {
                    let line =
                        serde_json::json!({"event": "reconcile", "trigger": why, "report": report});
                    let _ = writeln_out(&line.to_string());
                    true
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
        return if pass("once").await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    pass("start").await;
    let mut events = docker.events(None::<bollard::query_parameters::EventsOptions>);
    let mut timer = tokio::time::interval(Duration::from_secs(args.interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = timer.tick() => { pass("timer").await; }
            ev = events.next() => match ev {
                Some(Ok(ev)) => {
                    let kind = ev.typ.map(|t| format!("{t:?}")).unwrap_or_default().to_ascii_lowercase();
                    let action = ev.action.unwrap_or_default();
                    let relevant = (kind.contains("network") && ["create", "connect", "disconnect", "destroy"].contains(&action.as_str()))
                        || (kind.contains("container") && ["create", "start", "die", "destroy"].contains(&action.as_str()));
                    if relevant {
                        pass("docker_event").await;
                    }
                }
                Some(Err(_)) | None => {
                    // The event stream broke (dockerd restarted): reconnect,
                    // and reconcile, since anything may have changed.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    events = docker.events(None::<bollard::query_parameters::EventsOptions>);
                    pass("docker_reconnect").await;
                }
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}
