//! # network — one Docker network per org, and the proxy on each
//!
//! For each org of the policy, a bridge network `chokepoint-<org>` that is
//! `internal` (no gateway out), with `enable_icc=false`, `inhibit_ipv4=true`
//! (the host bridge holds no address the containers could reach), labels that
//! mark it as chokepoint's, and an IPAM subnet whose `ip_range` (the upper
//! half) excludes the proxy's fixed address (`.2`), so no container that
//! Docker places can take that address while the proxy is down.
//!
//! Subnets are /24s cut from a base (default `10.231.0.0/16`). An org keeps
//! the subnet it was given, recorded on its network (label
//! `chokepoint.subnet`) and in the controller's state: a new org gets the
//! lowest free /24 ([`assign`]), so adding or removing an org never moves
//! another. A removed org's network is drained (containers stopped) and
//! deleted ([`remove_network`]). The proxy's policy gets each org's subnet
//! as its `clients` ([`proxy_policy`]).
//!
//! Must never: touch a network it did not create (no `chokepoint.managed`
//! label), or accept an existing network whose settings differ.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use bollard::Docker;
use bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::{ListNetworksOptions, StopContainerOptions};
use ipnet::Ipv4Net;

use crate::firewall::ExecNet;

/// Label on every network chokepoint owns.
pub const MANAGED_LABEL: &str = "chokepoint.managed";
/// Label naming the org of a network.
pub const ORG_LABEL: &str = "chokepoint.org";
/// Label recording the subnet an org was given (kept for good).
pub const SUBNET_LABEL: &str = "chokepoint.subnet";

/// Why reconciliation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The Docker API failed.
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// A network exists with that name but other settings.
    #[error("network {name} exists with other settings ({what}); remove it or fix it by hand")]
    Mismatch {
        /// The network.
        name: String,
        /// What differs.
        what: String,
    },
    /// The subnet base cannot hold this many orgs.
    #[error("subnet base {0} has no room for org #{1}")]
    NoRoom(Ipv4Net, usize),
}

/// One org's network, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgNetwork {
    /// The org id.
    pub org: String,
    /// The Docker network name.
    pub name: String,
    /// Its subnet (a /24).
    pub subnet: Ipv4Net,
    /// The proxy's fixed address (`.2`).
    pub proxy: Ipv4Addr,
    /// Where Docker places containers (`.128/25`).
    pub ip_range: Ipv4Net,
    /// The Linux bridge Docker creates for it (`cp-` and the subnet's first
    /// three octets in hex, e.g. `cp-0af001` for 10.240.1.0/24), set with
    /// `com.docker.network.bridge.name` so the firewall can name it.
    pub bridge: String,
}

impl OrgNetwork {
    /// The firewall's view of it.
    pub fn exec_net(&self) -> ExecNet {
        ExecNet {
            org: self.org.clone(),
            subnet: self.subnet,
            proxy: self.proxy,
            bridge: self.bridge.clone(),
        }
    }
}

/// Plan one network per org, in the order given, with no subnet given out
/// yet (org N of the list gets the base's /24 number N).
pub fn plan(orgs: &[String], base: Ipv4Net) -> Result<Vec<OrgNetwork>, NetworkError> {
    assign(orgs, base, &BTreeMap::new())
}

/// Plan one network per org: an org in `existing` keeps its subnet; a new
/// one gets the lowest /24 of `base` that no org of `existing` (present or
/// removed but not yet deleted) and no other new org holds.
pub fn assign(
    orgs: &[String],
    base: Ipv4Net,
    existing: &BTreeMap<String, Ipv4Net>,
) -> Result<Vec<OrgNetwork>, NetworkError> {
    let mut taken: Vec<Ipv4Net> = existing.values().copied().collect();
    let mut out = Vec::with_capacity(orgs.len());
    for (i, org) in orgs.iter().enumerate() {
        let subnet = match existing.get(org) {
            Some(s) => *s,
            None => {
                let free = base
                    .subnets(24)
                    .map_err(|_| NetworkError::NoRoom(base, i))?
                    .find(|s| !taken.contains(s))
                    .ok_or(NetworkError::NoRoom(base, i))?;
                taken.push(free);
                free
            }
        };
        out.push(org_network(org, subnet).ok_or(NetworkError::NoRoom(base, i))?);
    }
    Ok(out)
}

/// The network of `org` on `subnet` (a /24; `None` otherwise).
pub fn org_network(org: &str, subnet: Ipv4Net) -> Option<OrgNetwork> {
    if subnet.prefix_len() != 24 {
        return None;
    }
    let net = u32::from(subnet.network());
    let ip_range = Ipv4Net::new(Ipv4Addr::from(net + 128), 25).ok()?;
    Some(OrgNetwork {
        org: org.to_owned(),
        name: format!("chokepoint-{org}"),
        subnet,
        proxy: Ipv4Addr::from(net + 2),
        ip_range,
        bridge: format!("cp-{:06x}", net >> 8),
    })
}

/// The subnets of the networks chokepoint made inside `base`, by org (from
/// the `chokepoint.subnet` label, or the network's IPAM config).
pub async fn existing_assignments(
    docker: &Docker,
    base: Ipv4Net,
) -> Result<BTreeMap<String, Ipv4Net>, NetworkError> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{MANAGED_LABEL}=true")])]);
    let nets = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await?;
    let mut out = BTreeMap::new();
    for n in nets {
        let labels = n.labels.unwrap_or_default();
        let Some(org) = labels.get(ORG_LABEL) else {
            continue;
        };
        let ipam = n
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.subnet);
        let subnet = labels
            .get(SUBNET_LABEL)
            .cloned()
            .or(ipam)
            .and_then(|s| s.parse::<Ipv4Net>().ok());
        if let Some(subnet) = subnet.filter(|s| base.contains(s)) {
            out.insert(org.clone(), subnet);
        }
    }
    Ok(out)
}

/// The full id of the proxy container, if it exists (compared exactly: a
/// name or id prefix could match another container's id).
pub async fn proxy_id(docker: &Docker, proxy: Option<&str>) -> Option<String> {
    let proxy = proxy.filter(|p| !p.is_empty())?;
    docker
        .inspect_container(proxy, None)
        .await
        .ok()
        .and_then(|c| c.id)
}

/// Drain and delete a removed org's network: every container on it but the
/// proxy is disconnected and stopped, the proxy disconnected, the network
/// removed. Returns the containers stopped.
pub async fn remove_network(
    docker: &Docker,
    n: &OrgNetwork,
    proxy_id: Option<&str>,
) -> Result<Vec<String>, NetworkError> {
    let net = match docker.inspect_network(&n.name, None).await {
        Ok(net) => net,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if net
        .labels
        .unwrap_or_default()
        .get(MANAGED_LABEL)
        .map(String::as_str)
        != Some("true")
    {
        return Err(NetworkError::Mismatch {
            name: n.name.clone(),
            what: "not labelled chokepoint.managed; left alone".into(),
        });
    }
    let mut stopped = Vec::new();
    for (id, c) in net.containers.unwrap_or_default() {
        let name = c.name.unwrap_or_default();
        docker
            .disconnect_network(
                &n.name,
                NetworkDisconnectRequest {
                    container: id.clone(),
                    force: Some(true),
                },
            )
            .await?;
        if proxy_id != Some(id.as_str()) {
            docker
                .stop_container(
                    &id,
                    Some(StopContainerOptions {
                        t: Some(0),
                        ..Default::default()
                    }),
                )
                .await?;
            stopped.push(name);
        }
    }
    docker.remove_network(&n.name).await?;
    Ok(stopped)
}

fn options(n: &OrgNetwork) -> HashMap<String, String> {
    HashMap::from([
        (
            "com.docker.network.bridge.name".to_owned(),
            n.bridge.clone(),
        ),
        (
            "com.docker.network.bridge.enable_icc".to_owned(),
            "false".to_owned(),
        ),
        (
            "com.docker.network.bridge.inhibit_ipv4".to_owned(),
            "true".to_owned(),
        ),
    ])
}

/// Create the network if missing; verify it if present. Returns whether it
/// was created.
pub async fn ensure_network(docker: &Docker, n: &OrgNetwork) -> Result<bool, NetworkError> {
    match docker.inspect_network(&n.name, None).await {
        Ok(existing) => {
            let mut diffs = Vec::new();
            let labels = existing.labels.unwrap_or_default();
            if labels.get(MANAGED_LABEL).map(String::as_str) != Some("true") {
                diffs.push("not labelled chokepoint.managed".to_owned());
            }
            if existing.internal != Some(true) {
                diffs.push("not internal".to_owned());
            }
            let opts = existing.options.unwrap_or_default();
            for (k, v) in options(n) {
                if opts.get(&k) != Some(&v) {
                    diffs.push(format!("{k} != {v}"));
                }
            }
            let cfg = existing
                .ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().next());
            let subnet = cfg.as_ref().and_then(|c| c.subnet.clone());
            let range = cfg.as_ref().and_then(|c| c.ip_range.clone());
            if subnet.as_deref() != Some(n.subnet.to_string().as_str()) {
                diffs.push(format!("subnet {subnet:?} != {}", n.subnet));
            }
            if range.as_deref() != Some(n.ip_range.to_string().as_str()) {
                diffs.push(format!("ip_range {range:?} != {}", n.ip_range));
            }
            if diffs.is_empty() {
                Ok(false)
            } else {
                Err(NetworkError::Mismatch {
                    name: n.name.clone(),
                    what: diffs.join(", "),
                })
            }
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            docker
                .create_network(NetworkCreateRequest {
                    name: n.name.clone(),
                    driver: Some("bridge".to_owned()),
                    internal: Some(true),
                    attachable: Some(false),
                    ipam: Some(Ipam {
                        driver: Some("default".to_owned()),
                        config: Some(vec![IpamConfig {
                            subnet: Some(n.subnet.to_string()),
                            ip_range: Some(n.ip_range.to_string()),
                            gateway: None,
                            auxiliary_addresses: None,
                        }]),
                        options: None,
                    }),
                    options: Some(options(n)),
                    labels: Some(HashMap::from([
                        (MANAGED_LABEL.to_owned(), "true".to_owned()),
                        (ORG_LABEL.to_owned(), n.org.clone()),
                        (SUBNET_LABEL.to_owned(), n.subnet.to_string()),
                    ])),
                    ..Default::default()
                })
                .await?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// Check (without creating anything) that `n` exists with the planned
/// settings; `Err` says what is wrong.
pub async fn ensure_network_check(docker: &Docker, n: &OrgNetwork) -> Result<(), String> {
    match docker.inspect_network(&n.name, None).await {
        Ok(_) => match ensure_network(docker, n).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Err("missing".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// The address `container` has on network `n`, if attached.
pub async fn attached_address(
    docker: &Docker,
    n: &OrgNetwork,
    container: &str,
) -> Result<Option<Ipv4Addr>, NetworkError> {
    let inspect = docker.inspect_container(container, None).await?;
    let addr = inspect
        .network_settings
        .and_then(|s| s.networks)
        .and_then(|nets| nets.get(&n.name).cloned())
        .and_then(|ep| {
            // A running container reports IPAddress; a created one only the
            // address it asked for (IPAMConfig).
            let running = ep.ip_address.filter(|ip| !ip.is_empty());
            running.or_else(|| ep.ipam_config.and_then(|c| c.ipv4_address))
        })
        .and_then(|ip| ip.parse().ok());
    Ok(addr)
}

/// Attach the proxy container to `n` with its fixed address (no-op if it
/// already is). Returns whether it attached now.
pub async fn attach_proxy(
    docker: &Docker,
    n: &OrgNetwork,
    proxy: &str,
) -> Result<bool, NetworkError> {
    match attached_address(docker, n, proxy).await? {
        Some(ip) if ip == n.proxy => Ok(false),
        Some(ip) => Err(NetworkError::Mismatch {
            name: n.name.clone(),
            what: format!("proxy attached as {ip}, expected {}", n.proxy),
        }),
        None => {
            docker
                .connect_network(
                    &n.name,
                    NetworkConnectRequest {
                        container: proxy.to_owned(),
                        endpoint_config: Some(EndpointSettings {
                            ipam_config: Some(EndpointIpamConfig {
                                ipv4_address: Some(n.proxy.to_string()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    },
                )
                .await?;
            Ok(true)
        }
    }
}

/// The `DOCKER-USER` rules that let exec containers reach the proxy port
/// through Docker's own filter: with `enable_icc=false` Docker drops every
/// frame between two containers of one bridge in iptables' `FORWARD` (once
/// br_netfilter is loaded), the proxy included. `DOCKER-USER` is the chain
/// Docker reserves for operators and evaluates first; these two narrow
/// accepts (tagged with a `chokepoint` comment) are the only thing the
/// controller puts there. Everything else stays dropped by Docker and by
/// chokepoint's own nftables tables.
pub fn docker_user_rules(nets: &[OrgNetwork], port: u16) -> Vec<Vec<String>> {
    let port = port.to_string();
    let mut rules = Vec::new();
    for n in nets {
        let (subnet, proxy) = (n.subnet.to_string(), n.proxy.to_string());
        rules.push(vec![
            "-s".into(),
            subnet.clone(),
            "-d".into(),
            proxy.clone(),
            "-p".into(),
            "tcp".into(),
            "--dport".into(),
            port.clone(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            format!("chokepoint {}", n.org),
            "-j".into(),
            "ACCEPT".into(),
        ]);
        rules.push(vec![
            "-s".into(),
            proxy,
            "-d".into(),
            subnet,
            "-p".into(),
            "tcp".into(),
            "--sport".into(),
            port.clone(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            format!("chokepoint {}", n.org),
            "-j".into(),
            "ACCEPT".into(),
        ]);
    }
    rules
}

/// Insert any missing [`docker_user_rules`] (checked with `iptables -C`).
/// Returns how many were inserted. Waits at most 5 s for the xtables lock,
/// so a held lock cannot stall the controller's loop.
pub fn ensure_docker_user_rules(nets: &[OrgNetwork], port: u16) -> Result<usize, String> {
    let mut inserted = 0;
    for rule in docker_user_rules(nets, port) {
        let present = std::process::Command::new("iptables")
            .args(["-w", "5", "-C", "DOCKER-USER"])
            .args(&rule)
            .output()
            .map_err(|e| format!("iptables: {e}"))?
            .status
            .success();
        if !present {
            let out = std::process::Command::new("iptables")
                .args(["-w", "5", "-I", "DOCKER-USER", "1"])
                .args(&rule)
                .output()
                .map_err(|e| format!("iptables: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "iptables -I DOCKER-USER failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            inserted += 1;
        }
    }
    Ok(inserted)
}

/// Remove these [`docker_user_rules`] (for tests and teardown).
pub fn remove_docker_user_rules(nets: &[OrgNetwork], port: u16) {
    for rule in docker_user_rules(nets, port) {
        let _ = std::process::Command::new("iptables")
            .args(["-w", "5", "-D", "DOCKER-USER"])
            .args(&rule)
            .output();
    }
}

/// Rewrite a policy so that each org's `clients` is exactly its network's
/// subnet; the result is validated like any policy.
pub fn proxy_policy(policy_yaml: &str, nets: &[OrgNetwork]) -> Result<String, String> {
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(policy_yaml).map_err(|e| e.to_string())?;
    let orgs = doc
        .get_mut("orgs")
        .and_then(serde_yaml_ng::Value::as_mapping_mut)
        .ok_or("the policy has no orgs")?;
    for n in nets {
        let org = orgs
            .get_mut(n.org.as_str())
            .and_then(serde_yaml_ng::Value::as_mapping_mut)
            .ok_or_else(|| format!("org {} missing", n.org))?;
        org.insert(
            "clients".into(),
            serde_yaml_ng::Value::Sequence(vec![n.subnet.to_string().into()]),
        );
    }
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    netpolicy::Policy::from_yaml("<proxy policy>", &text).map_err(|e| e.to_string())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_excludes_the_proxy_from_the_range() {
        let orgs = vec!["acme".to_owned(), "globex".to_owned()];
        let p = plan(&orgs, "10.231.0.0/16".parse().unwrap()).unwrap();
        assert_eq!(p[0].subnet.to_string(), "10.231.0.0/24");
        assert_eq!(p[1].subnet.to_string(), "10.231.1.0/24");
        assert_eq!(p[1].proxy.to_string(), "10.231.1.2");
        assert_eq!(p[1].ip_range.to_string(), "10.231.1.128/25");
        assert_eq!(p[1].bridge, "cp-0ae701");
        assert!(p.iter().all(|n| n.bridge.len() <= 15)); // IFNAMSIZ - 1
        for n in &p {
            assert!(!n.ip_range.contains(&n.proxy));
            assert!(n.subnet.contains(&n.proxy));
        }
        assert!(plan(&orgs, "10.231.0.0/24".parse().unwrap()).is_err());
    }

    #[test]
    fn subnets_stay_with_their_org() {
        let base: Ipv4Net = "10.231.0.0/16".parse().unwrap();
        let orgs = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let first = assign(&orgs(&["a", "c"]), base, &BTreeMap::new()).unwrap();
        let held: BTreeMap<String, Ipv4Net> =
            first.iter().map(|n| (n.org.clone(), n.subnet)).collect();
        // b sorts between a and c: it gets a free /24, c keeps its own.
        let second = assign(&orgs(&["a", "b", "c"]), base, &held).unwrap();
        assert_eq!(second[0].subnet, first[0].subnet);
        assert_eq!(second[2].subnet, first[1].subnet);
        assert_eq!(second[1].subnet.to_string(), "10.231.2.0/24");
        // A removed org's subnet is not given out while its network exists.
        let mut held2 = held.clone();
        held2.insert("b".into(), second[1].subnet);
        let third = assign(&orgs(&["a", "d"]), base, &held2).unwrap();
        assert_eq!(third[1].subnet.to_string(), "10.231.3.0/24");
        assert!(assign(&orgs(&["x"]), "10.231.0.0/24".parse().unwrap(), &held).is_err());
    }

    #[test]
    fn proxy_policy_sets_clients() {
        let yaml = "version: v1\norgs:\n  acme:\n    clients: [10.10.0.0/24]\n";
        let p = plan(&["acme".to_owned()], "10.231.0.0/16".parse().unwrap()).unwrap();
        let out = proxy_policy(yaml, &p).unwrap();
        let policy = netpolicy::Policy::from_yaml("t", &out).unwrap();
        assert_eq!(
            policy.org_entry("acme").unwrap().clients()[0].to_string(),
            "10.231.0.0/24"
        );
    }
}
