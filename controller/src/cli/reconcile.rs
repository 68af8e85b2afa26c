//! `egressctl reconcile` and `egressctl status`: run one controller pass, or
//! show per org the network, the proxy attachment, the nft tables and the
//! last pass.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args as ClapArgs;

use super::{emit_line, fail_usage};
use crate::firewall::Firewall;
use crate::reconcile::{Config, State, firewall_plan, held_subnets, networks_keeping, reconcile};

/// Where the controller's inputs and state are.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// The egress policy.
    #[arg(long)]
    pub policy: PathBuf,
    /// Base range of the per-org subnets (as given to egress-controller).
    #[arg(long, default_value = "10.231.0.0/16")]
    pub subnet_base: ipnet::Ipv4Net,
    /// The proxy container.
    #[arg(long)]
    pub proxy_container: Option<String>,
    /// The proxy port.
    #[arg(long, default_value_t = 3128)]
    pub proxy_port: u16,
    /// The controller's state directory.
    #[arg(long, default_value = "/run/chokepoint")]
    pub state_dir: PathBuf,
    /// Write the proxy's policy here (as egress-controller does).
    #[arg(long)]
    pub proxy_policy_out: Option<PathBuf>,
    /// Save the rendered ruleset here (as egress-controller does).
    #[arg(long)]
    pub ruleset_file: Option<PathBuf>,
    /// The folder holding one folder per org (as given to egress-controller).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// The isolation exec containers must run under: runc, userns-remap or gvisor.
    #[arg(long, default_value = "runc")]
    pub isolation: containers::Isolation,
}

impl Args {
    fn config(&self) -> Config {
        Config {
            policy: self.policy.clone(),
            subnet_base: self.subnet_base,
            proxy_container: self.proxy_container.clone(),
            proxy_policy_out: self.proxy_policy_out.clone(),
            proxy_port: self.proxy_port,
            state_dir: self.state_dir.clone(),
            firewall: Firewall::default(),
            ruleset_file: self.ruleset_file.clone(),
            data_root: self.data_root.clone(),
            isolation: self.isolation,
            enforce_containers: true,
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `egressctl reconcile`: one pass now; prints what changed.
pub fn run_reconcile(args: &Args) -> ExitCode {
    let cfg = args.config();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail_usage(&e.to_string()),
    };
    let result = rt.block_on(async {
        let docker = containers::connect().await.ok();
        reconcile(docker.as_ref(), &cfg).await
    });
    match result {
        Ok(report) => {
            let line = serde_json::to_string(&report).unwrap_or_default();
            match emit_line(&line) {
                Ok(()) if report.is_ok() => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            let _ = fail_usage(&format!("reconcile failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// `egressctl status`: one JSON line per org, one for the Docker daemon and
/// the exec isolation, then one for the tables.
pub fn run_status(args: &Args) -> ExitCode {
    let cfg = args.config();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail_usage(&e.to_string()),
    };
    let state = State::load(&cfg.state_dir);
    let docker = rt.block_on(containers::connect()).ok();
    let held = rt.block_on(held_subnets(docker.as_ref(), &cfg, &state));
    let nets = match held
        .map_err(anyhow::Error::msg)
        .and_then(|held| networks_keeping(&cfg, &held))
    {
        Ok((nets, _)) => nets,
        Err(e) => return fail_usage(&e.to_string()),
    };
    let live = cfg.firewall.live().unwrap_or_default();
    let tables_match = !live.is_empty() && live == state.fingerprint;
    let mut all_ok = tables_match;
    let lines: Vec<String> = rt.block_on(async {
        let mut out = Vec::new();
        for n in &nets {
            let (network, proxy) = match &docker {
                Some(d) => {
                    let network = match crate::network::ensure_network_check(d, n).await {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => e,
                    };
                    let proxy = match &cfg.proxy_container {
                        Some(p) => match crate::network::attached_address(d, n, p).await {
                            Ok(Some(ip)) if ip == n.proxy => format!("attached {ip}"),
                            Ok(Some(ip)) => format!("WRONG address {ip}"),
                            Ok(None) => "not attached".to_owned(),
                            Err(e) => format!("error: {e}"),
                        },
                        None => "not checked (no --proxy-container)".to_owned(),
                    };
                    (network, proxy)
                }
                None => ("docker unreachable".to_owned(), "unknown".to_owned()),
            };
            if network != "ok" || !(proxy.starts_with("attached") || cfg.proxy_container.is_none())
            {
                all_ok = false;
            }
            out.push(
                serde_json::json!({
                    "org": n.org, "network": n.name, "subnet": n.subnet.to_string(),
                    "proxy_ip": n.proxy.to_string(), "network_state": network, "proxy": proxy,
                })
                .to_string(),
            );
        }
        let daemon = match &docker {
            Some(d) => {
                let version = crate::daemon::detect(d).await.ok();
                let iso = containers::DaemonIsolation::detect(d).await.ok();
                let available = iso.as_ref().map(|i| i.supports(cfg.isolation));
                if !matches!(available, Some(Ok(()))) {
                    all_ok = false;
                }
                serde_json::json!({
                    "docker_version": version.as_ref().map(|v| v.version.clone()),
                    "cve_2024_29018_affected": version.as_ref().map(|v| v.cve_2024_29018_affected),
                    "exec_dns": "a non-loopback server nothing answers, enforced by verify_exec",
                    "isolation": {
                        "expected": cfg.isolation.as_str(),
                        "available": match &available {
                            Some(Ok(())) => "yes".to_owned(),
                            Some(Err(e)) => format!("no: {e}"),
                            None => "unknown".to_owned(),
                        },
                        "daemon_userns_remap": iso.as_ref().map(|i| i.userns_remap),
                        "daemon_runtimes": iso.as_ref().map(|i| i.runtimes.clone()),
                        "gvisor_runsc": iso.as_ref().map(|i| i.runtimes.iter().any(|r| r == "runsc")),
                    },
                    "controller_containers_stopped_total": state.controller_containers_stopped_total,
                })
            }
            None => {
                all_ok = false;
                serde_json::json!({"docker_version": null, "error": "docker unreachable"})
            }
        };
        out.push(daemon.to_string());
        out
    });
    let expected_rules: serde_json::Map<String, serde_json::Value> =
        crate::firewall::rules_per_table(&firewall_plan(&cfg, &nets))
            .into_iter()
            .map(|(table, n)| (table.to_owned(), n.into()))
            .collect();
    let mut lines = lines;
    lines.push(
        serde_json::json!({
            "nft_tables": if live.is_empty() { "missing" } else if tables_match { "present, matching" } else { "present, DRIFTED" },
            "rules_per_table": expected_rules,
            "controller_drift_total": state.controller_drift_total,
            "last_reconcile_unix": state.last_reconcile_unix,
        })
        .to_string(),
    );
    for l in lines {
        if emit_line(&l).is_err() {
            return ExitCode::FAILURE;
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_DENY)
    }
}
