//! # reconcile — bring nftables, Docker networks, the proxy and exec
//! containers to the plan
//!
//! One pass, in this order:
//! 1. load the policy and plan one network per org. Each org keeps the /24
//!    it was given (read from its network's label, or, with Docker
//!    unreachable, from the state); a new org gets the lowest free one.
//! 2. **the kernel rules, first and on their own**: compare the live nftables
//!    tables with the fingerprint taken after the last apply, re-apply on any
//!    difference (counted as drift), save the rendered ruleset for the boot
//!    unit. No Docker step runs before this one, and none can stop it: a
//!    missing proxy container, a flushed `DOCKER-USER` chain, a daemon
//!    with `iptables: false` or a daemon that is down leave the rules applied.
//! 3. the Docker steps, each on its own, their failures reported separately
//!    in [`Report::docker_errors`]: create or verify each network; attach the
//!    proxy with its fixed address; the `DOCKER-USER` accepts; the proxy's
//!    policy (each org's `clients` = its subnet); drain and delete the
//!    networks of removed orgs; and check every container on an org network
//!    with `containers::verify_exec`, disconnecting and stopping each one
//!    that fails (counted and logged).
//!
//! State (fingerprint, subnets, counters, last pass) lives in
//! `state-dir/state.json` so `egress-controller --once`, the daemon and
//! `egressctl status` agree. Metrics are written in Prometheus text format to
//! `state-dir/controller.prom` (for node_exporter's textfile collector).
//!
//! Must never: report success when a step failed (the report names every
//! failed step), let a Docker failure keep the rules from being applied,
//! drop the rules while re-applying, or move an org to another subnet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::NetworkDisconnectRequest;
use bollard::query_parameters::StopContainerOptions;
use containers::{ExecExpect, Isolation};
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
    /// Where the rendered ruleset is saved for the boot unit (persistent
    /// storage; `None`: not saved).
    pub ruleset_file: Option<PathBuf>,
    /// The folder holding one folder per org: an exec container must mount
    /// exactly its org's (`None`: a folder named after the org).
    pub data_root: Option<PathBuf>,
    /// The isolation every exec container must run under.
    pub isolation: Isolation,
    /// Check every container on an org network and stop those that fail.
    pub enforce_containers: bool,
}

impl Config {
    /// A configuration with the defaults of `egress-controller`.
    pub fn new(policy: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            policy,
            subnet_base: "10.231.0.0/16".parse().unwrap_or_default(),
            proxy_container: None,
            proxy_policy_out: None,
            proxy_port: 3128,
            state_dir,
            firewall: Firewall::default(),
            ruleset_file: None,
            data_root: None,
            isolation: Isolation::Runc,
            enforce_containers: true,
        }
    }
}

/// Persistent state between passes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The nft tables as read back right after the last apply.
    pub fingerprint: Vec<String>,
    /// How many times the live tables differed from the fingerprint.
    pub controller_drift_total: u64,
    /// Unix time of the last pass that applied or confirmed the rules.
    pub last_reconcile_unix: u64,
    /// The networks of the last pass.
    pub networks: Vec<String>,
    /// Each org's subnet, as last seen (used while Docker is unreachable).
    #[serde(default)]
    pub subnets: BTreeMap<String, Ipv4Net>,
    /// Containers on an org network that failed `verify_exec` and were
    /// disconnected and stopped.
    #[serde(default)]
    pub controller_containers_stopped_total: u64,
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
        let prom = self.prometheus_text();
        let tmp = dir.join("controller.prom.tmp");
        std::fs::write(&tmp, prom)?;
        std::fs::rename(tmp, dir.join("controller.prom"))?;
        Ok(())
    }

    /// The controller's metrics in the Prometheus text format (the
    /// textfile `controller.prom` and `--metrics-listen`'s `/metrics`).
    pub fn prometheus_text(&self) -> String {
        format!(
            "# HELP controller_drift_total Times the live nftables tables differed from what the controller applied.\n\
             # TYPE controller_drift_total counter\ncontroller_drift_total {}\n\
             # HELP controller_last_reconcile_timestamp_seconds Unix time of the last successful reconcile.\n\
             # TYPE controller_last_reconcile_timestamp_seconds gauge\ncontroller_last_reconcile_timestamp_seconds {}\n\
             # HELP controller_containers_stopped_total Containers on an org network that failed verify_exec and were stopped.\n\
             # TYPE controller_containers_stopped_total counter\ncontroller_containers_stopped_total {}\n",
            self.controller_drift_total,
            self.last_reconcile_unix,
            self.controller_containers_stopped_total
        )
    }
}

/// A Docker step that failed (the rules were applied regardless).
#[derive(Debug, Clone, Serialize)]
pub struct StepError {
    /// Which step (`network`, `proxy_attach`, `docker_user`, ...).
    pub step: &'static str,
    /// The network, container or file it was about, if any.
    pub target: String,
    /// What went wrong.
    pub error: String,
}

/// A container that failed `verify_exec` and was stopped.
#[derive(Debug, Clone, Serialize)]
pub struct StoppedContainer {
    /// Its name.
    pub container: String,
    /// The org network it was found on.
    pub network: String,
    /// What was wrong (`cis_id: message`).
    pub findings: Vec<String>,
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
    /// Networks of removed orgs, drained and deleted now.
    pub networks_removed: Vec<String>,
    /// Containers stopped now (failed `verify_exec`, or on a removed org's
    /// network).
    pub containers_stopped: Vec<StoppedContainer>,
    /// Docker steps that failed; the rules were applied regardless.
    pub docker_errors: Vec<StepError>,
}

impl Report {
    /// Whether the pass changed nothing.
    pub fn is_noop(&self) -> bool {
        self.networks_created.is_empty()
            && self.proxy_attached.is_empty()
            && self.docker_user_rules_inserted == 0
            && !self.proxy_policy_written
            && !self.nft_applied
            && self.networks_removed.is_empty()
            && self.containers_stopped.is_empty()
    }

    /// Whether every step succeeded.
    pub fn is_ok(&self) -> bool {
        self.docker_errors.is_empty()
    }

    fn fail(&mut self, step: &'static str, target: &str, error: impl std::fmt::Display) {
        self.docker_errors.push(StepError {
            step,
            target: target.to_owned(),
            error: error.to_string(),
        });
    }
}

/// The org ids of the policy, in policy order.
pub fn policy_orgs(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let policy = netpolicy::Policy::load(&cfg.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(policy
        .orgs()
        .iter()
        .map(|o| o.id().as_str().to_owned())
        .collect())
}

/// The org networks the policy asks for, with no Docker or state to keep
/// subnets from (a fresh host; `--check`).
pub fn planned_networks(cfg: &Config) -> anyhow::Result<Vec<OrgNetwork>> {
    Ok(network::plan(&policy_orgs(cfg)?, cfg.subnet_base)?)
}

/// The org networks the policy asks for, each org keeping the subnet it
/// holds (`held`), and the networks of orgs no longer in the policy.
pub fn networks_keeping(
    cfg: &Config,
    held: &BTreeMap<String, Ipv4Net>,
) -> anyhow::Result<(Vec<OrgNetwork>, Vec<OrgNetwork>)> {
    let orgs = policy_orgs(cfg)?;
    let nets = network::assign(&orgs, cfg.subnet_base, held)?;
    let removed = held
        .iter()
        .filter(|(org, _)| !orgs.contains(org))
        .filter_map(|(org, subnet)| network::org_network(org, *subnet))
        .collect();
    Ok((nets, removed))
}

/// Where each org's subnet is recorded: the networks' labels when Docker
/// answers, the state otherwise (`None`: Docker unreachable and no state,
/// so nothing is known and the rules are left as they are).
pub async fn held_subnets(
    docker: Option<&Docker>,
    cfg: &Config,
    state: &State,
) -> Result<BTreeMap<String, Ipv4Net>, String> {
    let from_docker = match docker {
        Some(d) => network::existing_assignments(d, cfg.subnet_base)
            .await
            .map_err(|e| e.to_string()),
        None => Err("docker unreachable".to_owned()),
    };
    match from_docker {
        Ok(mut held) => {
            // An org whose network is gone (deleted by hand) keeps its
            // subnet from the state, so it is recreated on the same range.
            for (org, subnet) in &state.subnets {
                if !held.values().any(|s| s == subnet) {
                    held.entry(org.clone()).or_insert(*subnet);
                }
            }
            Ok(held)
        }
        Err(e) if state.subnets.is_empty() && !state.fingerprint.is_empty() => Err(format!(
            "{e}, and no subnets recorded: the current rules are kept"
        )),
        Err(_) => Ok(state.subnets.clone()),
    }
}

/// The nft plan for these networks.
pub fn firewall_plan(cfg: &Config, nets: &[OrgNetwork]) -> Plan {
    Plan {
        nets: nets.iter().map(OrgNetwork::exec_net).collect(),
        proxy_port: cfg.proxy_port,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// After a pass: the live nft tables exist and equal what this pass
/// rendered and applied (the networks and subnets the state records, the
/// fingerprint read back after the apply). The production check of the
/// daemon (`egress_proxy_down`: "… or the nft tables are absent").
pub fn verify_tables(cfg: &Config) -> Result<(), String> {
    let state = State::load(&cfg.state_dir);
    let nets: Vec<OrgNetwork> = state
        .subnets
        .iter()
        .filter_map(|(org, subnet)| network::org_network(org, *subnet))
        .filter(|n| state.networks.contains(&n.name))
        .collect();
    cfg.firewall
        .verify(&firewall_plan(cfg, &nets), &state.fingerprint)
}

/// One reconcile pass. `docker` is `None` when the daemon cannot be
/// reached: the rules are still applied (from the recorded subnets) and the
/// Docker steps are reported as failed. `Err` only when the rules could not
/// be planned or applied.
pub async fn reconcile(docker: Option<&Docker>, cfg: &Config) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut state = State::load(&cfg.state_dir);
    let held = held_subnets(docker, cfg, &state)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let (nets, removed) = networks_keeping(cfg, &held)?;

    // 1. The rules, before and independently of every Docker step.
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
    if let Some(file) = &cfg.ruleset_file {
        let saved = std::fs::read(file).ok();
        let want = serde_json::to_vec(&ruleset)?;
        if saved.as_deref() != Some(want.as_slice()) {
            firewall::save_ruleset(&ruleset, file)?;
        }
    }
    state.networks = planned_names;
    state.subnets = nets
        .iter()
        .chain(&removed)
        .map(|n| (n.org.clone(), n.subnet))
        .collect();
    state.last_reconcile_unix = now_unix();
    state.save(&cfg.state_dir)?;

    // 2. Docker, step by step; a failure is reported and the next runs.
    let Some(docker) = docker else {
        report.fail("docker", "", "docker unreachable");
        return Ok(report);
    };
    docker_steps(docker, cfg, &nets, &removed, &mut report).await;
    state.subnets = nets.iter().map(|n| (n.org.clone(), n.subnet)).collect();
    for n in &removed {
        if !report.networks_removed.contains(&n.name) {
            state.subnets.insert(n.org.clone(), n.subnet);
        }
    }
    state.controller_containers_stopped_total += report.containers_stopped.len() as u64;
    state.save(&cfg.state_dir)?;
    Ok(report)
}

async fn docker_steps(
    docker: &Docker,
    cfg: &Config,
    nets: &[OrgNetwork],
    removed: &[OrgNetwork],
    report: &mut Report,
) {
    for n in nets {
        match network::ensure_network(docker, n).await {
            Ok(true) => report.networks_created.push(n.name.clone()),
            Ok(false) => {}
            Err(e) => report.fail("network", &n.name, e),
        }
    }
    if let Some(proxy) = &cfg.proxy_container {
        for n in nets {
            match network::attach_proxy(docker, n, proxy).await {
                Ok(true) => report.proxy_attached.push(n.name.clone()),
                Ok(false) => {}
                Err(e) => report.fail("proxy_attach", &n.name, e),
            }
        }
    }
    match network::ensure_docker_user_rules(nets, cfg.proxy_port) {
        Ok(n) => report.docker_user_rules_inserted = n,
        Err(e) => report.fail("docker_user", "DOCKER-USER", e),
    }
    if let Some(out) = &cfg.proxy_policy_out {
        let written = std::fs::read_to_string(&cfg.policy)
            .map_err(|e| e.to_string())
            .and_then(|text| network::proxy_policy(&text, nets))
            .and_then(|rendered| {
                if std::fs::read_to_string(out).ok().as_deref() == Some(rendered.as_str()) {
                    return Ok(false);
                }
                // Renamed into place: a proxy reloading never reads half a file.
                crate::atomic_file::write_atomic(out, rendered.as_bytes())
                    .map(|()| true)
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(w) => report.proxy_policy_written = w,
            Err(e) => report.fail("proxy_policy", &out.display().to_string(), e),
        }
        // A new policy for the proxy: tell a running proxy to re-read it
        // (SIGHUP; a bad file is refused by the proxy, which keeps the old one).
        if report.proxy_policy_written
            && let Some(name) = cfg.proxy_container.as_deref()
        {
            let opts = bollard::query_parameters::KillContainerOptions {
                signal: "HUP".to_owned(),
            };
            match docker.kill_container(name, Some(opts)).await {
                // 409: not running; it reads the new file when it starts.
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(e) => report.fail("proxy_reload", name, e.to_string()),
            }
        }
    }
    let proxy_id = network::proxy_id(docker, cfg.proxy_container.as_deref()).await;
    for n in removed {
        network::remove_docker_user_rules(std::slice::from_ref(n), cfg.proxy_port);
        match network::remove_network(docker, n, proxy_id.as_deref()).await {
            Ok(stopped) => {
                report.networks_removed.push(n.name.clone());
                report
                    .containers_stopped
                    .extend(stopped.into_iter().map(|c| StoppedContainer {
                        container: c,
                        network: n.name.clone(),
                        findings: vec!["org removed from the policy".into()],
                    }));
            }
            Err(e) => report.fail("network_remove", &n.name, e),
        }
    }
    if cfg.enforce_containers {
        for n in nets {
            if let Err(e) = enforce(docker, cfg, n, proxy_id.as_deref(), report).await {
                report.fail("container_check", &n.name, e);
            }
        }
    }
}

/// Check every container on `n` but the proxy (`proxy_id`, exact) with
/// `verify_exec`;
/// disconnect each failing one from every network, then stop it.
async fn enforce(
    docker: &Docker,
    cfg: &Config,
    n: &OrgNetwork,
    proxy_id: Option<&str>,
    report: &mut Report,
) -> Result<(), bollard::errors::Error> {
    let net = match docker.inspect_network(&n.name, None).await {
        Ok(net) => net,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(()), // reported by the network step
        Err(e) => return Err(e),
    };
    let expect = ExecExpect {
        org: n.org.clone(),
        network: n.name.clone(),
        org_folder: cfg.data_root.as_ref().map(|r| r.join(&n.org)),
        isolation: cfg.isolation,
    };
    for (id, ep) in net.containers.unwrap_or_default() {
        let name = ep.name.unwrap_or_default();
        if proxy_id == Some(id.as_str()) {
            continue;
        }
        let c = docker.inspect_container(&id, None).await?;
        let findings = containers::verify_exec(&c, &expect);
        if findings.is_empty() {
            continue;
        }
        let attached: Vec<String> = c
            .network_settings
            .and_then(|s| s.networks)
            .map(|m| m.into_keys().collect())
            .unwrap_or_default();
        for net_name in attached {
            if let Err(e) = docker
                .disconnect_network(
                    &net_name,
                    NetworkDisconnectRequest {
                        container: id.clone(),
                        force: Some(true),
                    },
                )
                .await
            {
                report.fail("container_disconnect", &name, e);
            }
        }
        if let Err(e) = docker
            .stop_container(
                &id,
                Some(StopContainerOptions {
                    t: Some(0),
                    ..Default::default()
                }),
            )
            .await
        {
            report.fail("container_stop", &name, e);
        }
        report.containers_stopped.push(StoppedContainer {
            container: name,
            network: n.name.clone(),
            findings: findings
                .iter()
                .map(|f| format!("{}: {}", f.cis_id, f.message))
                .collect(),
        });
    }
    Ok(())
}
