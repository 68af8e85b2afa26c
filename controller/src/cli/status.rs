//! `egressctl status`: "All boundaries active", measured from live probes
//! of the running appliance, not read from configuration.
//!
//! Lines: the proxy answers `/readyz`; the nft tables are present and equal
//! to what the controller rendered and read back; per org, a hardened
//! canary exec container reaches the proxy's port and fails to reach
//! anything else (TCP and UDP to a host listener this command opens, DNS
//! through Docker's 127.0.0.11, ICMP to the host, another org's canary);
//! `verify_exec` is clean for every container on an org network. A table
//! for people, `--json` for machines; exit 0 only when every line is green.
//! Fails closed: a probe that cannot run is a red line with its reason.
//!
//! With `--policy` it prints the configuration view of earlier versions
//! instead (one JSON line per org, the daemon, the tables).

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args as ClapArgs;
use serde::Serialize;

use super::appliance::{Layout, PROXY_CONTAINER, PROXY_PORT, default_dir};
use crate::reconcile::State;

/// The headline when every line is green.
pub const HEADLINE_OK: &str = "All boundaries active";

/// Arguments of `egressctl status`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// The appliance directory (default `CHOKEPOINT_DIR` or /etc/chokepoint).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The configuration view (no probes): the policy to read.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Configuration view: base range of the per-org subnets.
    #[arg(long, default_value = "10.231.0.0/16")]
    pub subnet_base: ipnet::Ipv4Net,
    /// Configuration view: the proxy container.
    #[arg(long)]
    pub proxy_container: Option<String>,
    /// Configuration view: the proxy port.
    #[arg(long, default_value_t = 3128)]
    pub proxy_port: u16,
    /// Configuration view: the controller's state directory.
    #[arg(long, default_value = "/run/chokepoint")]
    pub state_dir: PathBuf,
    /// Configuration view: the folder holding one folder per org.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Configuration view: the isolation exec containers must run under.
    #[arg(long, default_value = "runc")]
    pub isolation: containers::Isolation,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was probed.
    pub check: String,
    /// The org it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Green.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

fn check(name: &str, org: Option<&str>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        check: name.to_owned(),
        org: org.map(str::to_owned),
        ok,
        detail: detail.into(),
    }
}

/// Run `egressctl status`.
pub fn run(args: &Args) -> ExitCode {
    if let Some(policy) = &args.policy {
        return super::reconcile::run_status(&super::reconcile::Args {
            policy: policy.clone(),
            subnet_base: args.subnet_base,
            proxy_container: args.proxy_container.clone(),
            proxy_port: args.proxy_port,
            state_dir: args.state_dir.clone(),
            proxy_policy_out: None,
            ruleset_file: None,
            data_root: args.data_root.clone(),
            isolation: args.isolation,
        });
    }
    let layout = Layout::new(args.dir.clone().unwrap_or_else(default_dir));
    let checks = probe_all(&layout);
    let all_ok = !checks.is_empty() && checks.iter().all(|c| c.ok);
    let headline = if all_ok {
        HEADLINE_OK.to_owned()
    } else {
        format!(
            "NOT all boundaries active: {} of {} checks failing",
            checks.iter().filter(|c| !c.ok).count(),
            checks.len()
        )
    };
    let text = if args.json {
        serde_json::json!({"all_green": all_ok, "headline": headline, "checks": checks}).to_string()
    } else {
        let mut t = format!("{:<28} {:<10} {:<5} DETAIL\n", "CHECK", "ORG", "STATE");
        for c in &checks {
            t.push_str(&format!(
                "{:<28} {:<10} {:<5} {}\n",
                c.check,
                c.org.as_deref().unwrap_or("-"),
                if c.ok { "ok" } else { "FAIL" },
                c.detail
            ));
        }
        t.push_str(&headline);
        t
    };
    if super::emit_line(&text).is_err() {
        return ExitCode::FAILURE;
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_DENY)
    }
}

fn docker(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// Every probe, in order.
pub fn probe_all(layout: &Layout) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(rec) = layout.load_record() else {
        out.push(check(
            "appliance",
            None,
            false,
            format!(
                "no appliance.json in {}: run `egressctl appliance up`",
                layout.dir.display()
            ),
        ));
        return out;
    };
    // 1. The proxy.
    let proxy = super::appliance::proxy_ready(&rec);
    out.push(match &proxy {
        Ok(()) => check("proxy_ready", None, true, "/readyz answered 200"),
        Err(e) => check("proxy_ready", None, false, e.clone()),
    });
    out.push(match super::appliance::proxy_mode(&rec) {
        Ok(m) if m == "production" => check(
            "production_mode",
            None,
            true,
            "the proxy runs in production",
        ),
        Ok(m) => check(
            "production_mode",
            None,
            false,
            format!("the proxy runs in {m}"),
        ),
        Err(e) => check("production_mode", None, false, e),
    });
    // 2. The worker (a child of the controller): ready, store opens and
    // decrypts with the master key.
    out.push(
        match super::appliance::worker_ready(layout)
            .and_then(|()| super::appliance::worker_store_check(layout, &rec))
        {
            Ok(()) => check(
                "worker_store",
                None,
                true,
                "/readyz 200; store opens and the master key decrypts it",
            ),
            Err(e) => check("worker_store", None, false, e),
        },
    );
    // The API: ready, and TLS 1.2 and 1.3 only.
    out.push(match super::appliance::api_ready(layout, &rec) {
        Ok(()) => check(
            "api_ready",
            None,
            true,
            "/readyz answered 200 over TLS, certificate verified against the appliance's own",
        ),
        Err(e) => check("api_ready", None, false, e),
    });
    let tls = super::appliance::api_tls_versions(&rec);
    let accepted: Vec<&str> = tls.iter().filter(|(_, ok)| *ok).map(|(v, _)| *v).collect();
    out.push(check(
        "api_tls",
        None,
        accepted == ["tls1_2", "tls1_3"],
        format!(
            "handshakes accepted: {}",
            if accepted.is_empty() {
                "none".to_owned()
            } else {
                accepted.join(", ")
            }
        ),
    ));
    // 3. The kernel rules.
    let base = rec.subnet_base.parse().unwrap_or_default();
    let cfg = layout.controller_config(base);
    let state = State::load(&layout.state_dir());
    out.push(match cfg.firewall.live() {
        Ok(live) if live.is_empty() => check("nft_tables", None, false, "absent"),
        Ok(live) if state.fingerprint.is_empty() => check(
            "nft_tables",
            None,
            false,
            format!("{} tables present, nothing rendered yet", live.len()),
        ),
        Ok(live) if live == state.fingerprint => check(
            "nft_tables",
            None,
            true,
            "present, equal to the rendered ruleset",
        ),
        Ok(_) => check(
            "nft_tables",
            None,
            false,
            "present, DIFFERENT from the rendered ruleset",
        ),
        Err(e) => check("nft_tables", None, false, format!("nft: {e}")),
    });
    // 3. Canaries, per org.
    let nets: Vec<crate::network::OrgNetwork> = state
        .subnets
        .iter()
        .filter_map(|(org, s)| crate::network::org_network(org, *s))
        .collect();
    if nets.is_empty() {
        out.push(check(
            "org_networks",
            None,
            false,
            "no org network: the controller has made no pass",
        ));
    }
    // 4. verify_exec on every container on an org network (run while the
    // canaries are up, so there is at least one per org).
    out.extend(canaries(layout, &rec.exec_image, rec.host_address(), &nets));
    out
}

/// Host listeners the canaries must NOT reach: TCP accepts, UDP answers a
/// TFTP read request (so busybox `tftp` would complete).
struct HostListeners {
    tcp: u16,
    udp: u16,
    stop: Arc<AtomicBool>,
}

impl HostListeners {
    fn start() -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let t = TcpListener::bind("0.0.0.0:0")?;
        t.set_nonblocking(true)?;
        let u = UdpSocket::bind("0.0.0.0:0")?;
        u.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (tcp, udp) = (t.local_addr()?.port(), u.local_addr()?.port());
        let st = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Bounded: at most 10 minutes, or until stopped.
            for _ in 0..30_000 {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                match t.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"host\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let st = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            for _ in 0..6_000 {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok((n, peer)) = u.recv_from(&mut buf)
                    && buf.get(..2.min(n)) == Some(&[0, 1][..])
                {
                    let _ = u.send_to(b"\x00\x03\x00\x01ok\n", peer);
                }
            }
        });
        Ok(Self { tcp, udp, stop })
    }
}

impl Drop for HostListeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Removes the canaries when dropped.
struct Canaries(Vec<String>);

impl Drop for Canaries {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = docker(&["rm", "-f", c]);
        }
    }
}

/// A shell line run in `container`; whether it exited 0.
fn sh(container: &str, script: &str) -> bool {
    docker(&["exec", container, "/bin/sh", "-c", script]).is_ok_and(|o| o.status.success())
}

fn canaries(
    layout: &Layout,
    image: &str,
    host_ip: std::net::Ipv4Addr,
    nets: &[crate::network::OrgNetwork],
) -> Vec<Check> {
    let mut out = Vec::new();
    if nets.is_empty() {
        return out;
    }
    let host_ip = host_ip.to_string();
    let listeners = match HostListeners::start() {
        Ok(l) => l,
        Err(e) => {
            out.push(check("canary", None, false, format!("host listeners: {e}")));
            return out;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.push(check("canary", None, false, e.to_string()));
            return out;
        }
    };
    let mut guard = Canaries(Vec::new());
    // Start one canary per org: it listens on 8081 for the other orgs' probes.
    let mut started: Vec<(&crate::network::OrgNetwork, String, String)> = Vec::new();
    for n in nets {
        let spec = match super::exec::spec_for(
            layout,
            &n.org,
            image,
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "for i in $(seq 1 60); do echo canary | nc -l -p 8081 -w 5; done".into(),
            ],
        ) {
            Ok(s) => s,
            Err(e) => {
                out.push(check("canary", Some(&n.org), false, e));
                continue;
            }
        };
        let name = format!("cp-canary-{}-{}", n.org, std::process::id());
        let created = rt.block_on(async {
            let d = containers::connect().await?;
            containers::create_hardened(&d, &spec, &name).await
        });
        match created {
            Ok(_) => guard.0.push(name.clone()),
            Err(e) => {
                out.push(check("canary", Some(&n.org), false, e.to_string()));
                continue;
            }
        }
        match docker(&["start", &name]) {
            Ok(o) if o.status.success() => {}
            _ => {
                out.push(check("canary", Some(&n.org), false, "could not start"));
                continue;
            }
        }
        let ip = docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                n.name
            ),
            &name,
        ])
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
        started.push((n, name, ip));
    }
    // The probes, in parallel (each bounded by its own 2-3 s timeout).
    let mut jobs: Vec<(String, String, bool, String, std::thread::JoinHandle<bool>)> = Vec::new();
    for (n, name, _) in &started {
        let mut plan: Vec<(&str, bool, String, String)> = vec![
            (
                "reaches_proxy",
                true,
                format!("{}:{PROXY_PORT}", n.proxy),
                format!("nc -w 2 {} {PROXY_PORT} </dev/null", n.proxy),
            ),
            (
                "no_tcp_to_host",
                false,
                format!("{host_ip}:{}", listeners.tcp),
                format!("nc -w 2 {host_ip} {} </dev/null", listeners.tcp),
            ),
            (
                "no_udp_to_host",
                false,
                format!("{host_ip}:{}", listeners.udp),
                format!(
                    "timeout 3 tftp -g -r probe -l /tmp/probe {host_ip} {}",
                    listeners.udp
                ),
            ),
            (
                "no_dns_127.0.0.11",
                false,
                "example.com via 127.0.0.11".to_owned(),
                "timeout 3 nslookup example.com 127.0.0.11".to_owned(),
            ),
            (
                "no_icmp_to_host",
                false,
                host_ip.clone(),
                format!("ping -c 1 -W 2 {host_ip}"),
            ),
        ];
        for (other, _, ip) in &started {
            if other.org != n.org && !ip.is_empty() {
                plan.push((
                    "no_other_org",
                    false,
                    format!("{} canary {ip}:8081", other.org),
                    format!("nc -w 2 {ip} 8081 </dev/null"),
                ));
            }
        }
        if started.len() < 2 {
            out.push(check(
                "no_other_org",
                Some(&n.org),
                true,
                "only one org: nothing to reach",
            ));
        }
        for (what, expect, target, script) in plan {
            let c = name.clone();
            let h = std::thread::spawn(move || sh(&c, &script));
            jobs.push((what.to_owned(), n.org.clone(), expect, target, h));
        }
    }
    for (what, org, expect, target, h) in jobs {
        let reached = h.join().unwrap_or(!expect);
        let ok = reached == expect;
        let detail = match (reached, expect) {
            (true, true) => format!("reached {target}"),
            (false, true) => format!("could NOT reach {target}"),
            (false, false) => format!("blocked: {target}"),
            (true, false) => format!("LEAK: reached {target}"),
        };
        out.push(check(&what, Some(&org), ok, detail));
    }
    out.extend(verify_all(layout, nets));
    drop(listeners);
    drop(guard);
    out
}

/// `verify_exec` for every container on an org network but the proxy.
fn verify_all(layout: &Layout, nets: &[crate::network::OrgNetwork]) -> Vec<Check> {
    let mut out = Vec::new();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![check("verify", None, false, e.to_string())],
    };
    for n in nets {
        let ids = match docker(&["ps", "-q", "--filter", &format!("network={}", n.name)]) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            _ => {
                out.push(check("verify", Some(&n.org), false, "docker ps failed"));
                continue;
            }
        };
        let expect = containers::ExecExpect {
            org: n.org.clone(),
            network: n.name.clone(),
            org_folder: Some(layout.data_root().join(&n.org)),
            isolation: containers::Isolation::Runc,
        };
        let mut checked = 0usize;
        let mut bad = Vec::new();
        for id in ids.split_whitespace() {
            let inspected = rt.block_on(async {
                let d = containers::connect().await?;
                Ok::<_, containers::DockerError>(d.inspect_container(id, None).await?)
            });
            match inspected {
                Ok(c) if c.name.as_deref() == Some(&format!("/{PROXY_CONTAINER}")) => {}
                Ok(c) => {
                    checked += 1;
                    let f = containers::verify_exec(&c, &expect);
                    if !f.is_empty() {
                        bad.push(format!(
                            "{}: {}",
                            c.name.unwrap_or_default(),
                            f.iter().map(|x| x.cis_id).collect::<Vec<_>>().join(",")
                        ));
                    }
                }
                Err(e) => bad.push(format!("{id}: {e}")),
            }
        }
        out.push(if bad.is_empty() {
            check(
                "verify_exec",
                Some(&n.org),
                true,
                format!("{checked} running exec container(s) clean"),
            )
        } else {
            check("verify_exec", Some(&n.org), false, bad.join("; "))
        });
    }
    out
}
