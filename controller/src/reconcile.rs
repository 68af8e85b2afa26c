//! # reconcile — bring Docker networks, the proxy and nftables to the plan
//!
//! One pass: load the policy; plan one network per org; create or verify
//! each network; attach the proxy container with its fixed address; write the
//! proxy's policy (each org's `clients` = its subnet) when it changed; then
//! compare the live nftables tables with the fingerprint taken after the
//! last apply and re-apply on any difference (counted as drift).
//!
//! State (fingerprint, drift count, last pass) lives in `state-dir/state.json`
//! so `egress-controller --once`, the daemon and `egressctl status` agree.
//! Metrics are written in Prometheus text format to `state-dir/controller.prom`
//! (for node_exporter's textfile collector).
//!
//! Must never: report success when a step failed (the pass stops at the first
//! error and says which), or drop the rules while re-applying.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::firewall::{self, Firewall, Plan};
use crate::network::{self, OrgNetwork};

/// What a pass needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The operator's policy file.
    pub policy: PathBuf,
    /// Base range the org subnets are cut from.
    pub subnet_base: Ipv4Net,
    /// The proxy container (name or id), if it should be attached.
    pub proxy_container: Option<String>,
    /// Where to write the proxy's policy (clients = org subnets).
    pub proxy_policy_out: Option<PathBuf>,
    /// The proxy port exec containers may reach.
    pub proxy_port: u16,
    /// Where state and metrics live.
    pub state_dir: PathBuf,
    /// Where nft runs (a netns for tests, or the host).
    pub firewall: Firewall,
}

/// Persistent state between passes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The nft tables as read back right after the last apply.
    pub fingerprint: Vec<String>,
    /// How many times the live tables differed from the fingerprint.
    pub controller_drift_total: u64,
    /// Unix time of the last successful pass.
    pub last_reconcile_unix: u64,
    /// The networks of the last pass.
    pub networks: Vec<String>,
}

impl State {
    /// Read `state.json` (a missing file is a fresh state).
    pub fn load(dir: &Path) -> State {
        std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, dir.join("state.json"))?;
        let prom = format!(
            "# HELP controller_drift_total Times the live nftables tables differed from what the controller applied.\n\
             # TYPE controller_drift_total counter\ncontroller_drift_total {}\n\
             # HELP controller_last_reconcile_timestamp_seconds Unix time of the last successful reconcile.\n\
             # TYPE controller_last_reconcile_timestamp_seconds gauge\ncontroller_last_reconcile_timestamp_seconds {}\n",
            self.controller_drift_total, self.last_reconcile_unix
        );
        let tmp = dir.join("controller.prom.tmp");
        std::fs::write(&tmp, prom)?;
        std::fs::rename(tmp, dir.join("controller.prom"))?;
        Ok(())
    }
}

/// What one pass changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Networks created now.
    pub networks_created: Vec<String>,
    /// Networks the proxy was attached to now.
    pub proxy_attached: Vec<String>,
    /// `DOCKER-USER` accepts inserted now (exec -> proxy port only).
    pub docker_user_rules_inserted: usize,
    /// Whether the proxy's policy file was rewritten.
    pub proxy_policy_written: bool,
    /// Whether nft rules were (re)applied.
    pub nft_applied: bool,
    /// Whether that apply repaired drift.
    pub drift_repaired: bool,
}

impl Report {
    /// Whether the pass changed nothing.
    pub fn is_noop(&self) -> bool {
        self.networks_created.is_empty()
            && self.proxy_attached.is_empty()
            && self.docker_user_rules_inserted == 0
            && !self.proxy_policy_written
            && !self.nft_applied
    }
}

/// The org networks the policy asks for.
pub fn planned_networks(cfg: &Config) -> anyhow::Result<Vec<OrgNetwork>> {
    let policy = netpolicy::Policy::load(&cfg.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let orgs: Vec<String> = policy
        .orgs()
        .iter()
        .map(|o| o.id().as_str().to_owned())
        .collect();
    Ok(network::plan(&orgs, cfg.subnet_base)?)
}

/// The nft plan for these networks.
pub fn firewall_plan(cfg: &Config, nets: &[OrgNetwork]) -> Plan {
    Plan {
        nets: nets.iter().map(OrgNetwork::exec_net).collect(),
        proxy_port: cfg.proxy_port,
    }
}

/// One reconcile pass.
pub async fn reconcile(docker: &Docker, cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut state = State::load(&cfg.state_dir);
    let nets = planned_networks(cfg)?;
    for n in &nets {
        if network::ensure_network(docker, n).await? {
            report.networks_created.push(n.name.clone());
        }
    }
    if let Some(proxy) = &cfg.proxy_container {
        for n in &nets {
            if network::attach_proxy(docker, n, proxy).await? {
                report.proxy_attached.push(n.name.clone());
            }
        }
    }
    report.docker_user_rules_inserted =
        network::ensure_docker_user_rules(&nets, cfg.proxy_port).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(out) = &cfg.proxy_policy_out {
        let text = std::fs::read_to_string(&cfg.policy)?;
        let rendered = network::proxy_policy(&text, &nets).map_err(|e| anyhow::anyhow!(e))?;
        if std::fs::read_to_string(out).ok().as_deref() != Some(rendered.as_str()) {
            // Renamed into place: a proxy reloading never reads half a file.
            crate::atomic_file::write_atomic(out, rendered.as_bytes())?;
            report.proxy_policy_written = true;
        }
    }
    let ruleset = firewall::render(&firewall_plan(cfg, &nets))?;
    let live = cfg.firewall.live()?;
    let planned_names: Vec<String> = nets.iter().map(|n| n.name.clone()).collect();
    if state.fingerprint.is_empty() || live != state.fingerprint || state.networks != planned_names
    {
        if !state.fingerprint.is_empty() && live != state.fingerprint {
            state.controller_drift_total += 1;
            report.drift_repaired = true;
        }
        state.fingerprint = cfg.firewall.apply_and_fingerprint(&ruleset)?;
        report.nft_applied = true;
    }
    state.networks = planned_names;
    state.last_reconcile_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    state.save(&cfg.state_dir)?;
    Ok(report)
}
