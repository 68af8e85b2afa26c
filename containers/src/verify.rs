//! CIS Docker Benchmark checks on a live container's inspect output.
//!
//! Follows the CIS Docker Benchmark v1.6.0 numbering as implemented by
//! docker-bench-security's `tests/5_container_runtime.sh` (plus 4.1 from
//! section 4). Fails closed: an absent field that a check needs is a finding.
//! Must never call Docker itself: it is a pure function over the inspect data.

use std::path::PathBuf;

use bollard::models::{ContainerInspectResponse, RestartPolicyNameEnum};

use crate::spec::{Isolation, SCRATCH, WORKSPACE, dns_is_sink};

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// CIS recommendation id, e.g. `"5.5"`; chokepoint's own exec checks
    /// ([`verify_exec`]) use `cp-net`, `cp-mount`, `cp-ipv6`, `cp-dns`,
    /// `cp-user`, `cp-isolation` and `cp-log`.
    pub cis_id: &'static str,
    /// What is wrong, in one line.
    pub message: String,
}

/// Host directories that must not be bind-mounted (CIS 5.6).
const SENSITIVE: &[&str] = &[
    "/",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/proc",
    "/sys",
    "/usr",
    "/var/run",
    "/run",
    "/var/lib/docker",
    "/root",
    "/bin",
    "/sbin",
];

/// Run every applicable check; an empty vector means the container passes.
pub fn verify(c: &ContainerInspectResponse) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut add = |id: &'static str, msg: String| {
        f.push(Finding {
            cis_id: id,
            message: msg,
        })
    };

    // 4.1 a non-root user. The runtime reads a numeric user as a number
    // ("+0" and "00" are uid 0), so it is compared as one.
    match c.config.as_ref().and_then(|cfg| cfg.user.as_deref()) {
        None | Some("") => add("4.1", "no user set: the container runs as root".into()),
        Some(u) => {
            let name = u.split(':').next().unwrap_or_default().trim();
            if name.is_empty() || name == "root" || numeric_uid(name).is_some_and(|id| id <= 0) {
                add("4.1", format!("container runs as root ({u})"));
            }
        }
    }
    let Some(h) = c.host_config.as_ref() else {
        add("5.5", "host config missing from inspect".into());
        return f;
    };
    // 5.4 capabilities: everything dropped, nothing added.
    if h.cap_add.as_ref().is_some_and(|v| !v.is_empty()) {
        add(
            "5.4",
            format!(
                "capabilities added: {:?}",
                h.cap_add.clone().unwrap_or_default()
            ),
        );
    }
    let drops_all = h
        .cap_drop
        .as_ref()
        .is_some_and(|v| v.iter().any(|c| c.eq_ignore_ascii_case("ALL")));
    if !drops_all {
        add("5.4", "capabilities not dropped with cap_drop ALL".into());
    }
    // 5.5 privileged.
    if h.privileged != Some(false) {
        add("5.5", "container is privileged (or unknown)".into());
    }
    // 5.6 sensitive host dirs, 5.20 propagation, 5.32 docker socket.
    match c.mounts.as_ref() {
        None => add("5.6", "mounts missing from inspect".into()),
        Some(mounts) => {
            for m in mounts {
                let src = m.source.as_deref().unwrap_or_default();
                if src.contains("docker.sock")
                    || m.destination
                        .as_deref()
                        .is_some_and(|d| d.contains("docker.sock"))
                {
                    add("5.32", format!("docker socket mounted from {src}"));
                    continue;
                }
                let is_bind = m.typ.as_deref() == Some("bind");
                if is_bind {
                    let trimmed = src.trim_end_matches('/');
                    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
                    if SENSITIVE.iter().any(|s| {
                        *s == trimmed || (*s != "/" && trimmed.starts_with(&format!("{s}/")))
                    }) {
                        add("5.6", format!("sensitive host path mounted: {src}"));
                    }
                }
                let prop = m.propagation.as_deref().unwrap_or_default();
                if prop.contains("shared") {
                    add("5.20", format!("mount propagation {prop} on {src}"));
                }
            }
        }
    }
    // 5.8/5.9/5.14 ports.
    let published = h.port_bindings.as_ref().is_some_and(|p| {
        p.values()
            .any(|b| b.as_ref().is_some_and(|v| !v.is_empty()))
    });
    if published || h.publish_all_ports == Some(true) {
        add("5.9", "ports are published to the host".into());
    }
    // 5.8 privileged host ports, 5.14 bound to every interface.
    for b in h
        .port_bindings
        .iter()
        .flat_map(|p| p.values())
        .flatten()
        .flatten()
    {
        let port: u32 = b.host_port.as_deref().unwrap_or("0").parse().unwrap_or(0);
        if (1..1024).contains(&port) {
            add("5.8", format!("privileged host port {port} mapped"));
        }
        if matches!(b.host_ip.as_deref(), None | Some("" | "0.0.0.0" | "::")) {
            add("5.14", "port bound to every host interface".into());
        }
    }
    // 5.10 network namespace, 5.30 default bridge.
    match h.network_mode.as_deref() {
        None | Some("") => add("5.30", "network mode unknown".into()),
        Some("host") => add("5.10", "host network namespace shared".into()),
        Some("bridge" | "default") => add("5.30", "attached to the default bridge".into()),
        Some(m) if m.starts_with("container:") => {
            add("5.10", format!("network namespace shared: {m}"))
        }
        Some(_) => {}
    }
    // 5.11 memory, swap equal.
    match (h.memory, h.memory_swap) {
        (Some(m), Some(s)) if m > 0 && s == m => {}
        (Some(m), _) if m > 0 => add(
            "5.11",
            "memory+swap not equal to memory (swap allowed)".into(),
        ),
        _ => add("5.11", "no memory limit".into()),
    }
    // 5.12 CPU.
    let cpu = h.nano_cpus.unwrap_or(0) > 0 || h.cpu_quota.unwrap_or(0) > 0;
    if !cpu {
        add("5.12", "no CPU limit (nano_cpus/cpu_quota)".into());
    }
    // 5.13 read-only root.
    if h.readonly_rootfs != Some(true) {
        add("5.13", "root filesystem is writable".into());
    }
    // 5.15 restart policy.
    if let Some(rp) = h.restart_policy.as_ref() {
        match rp.name {
            None | Some(RestartPolicyNameEnum::NO) | Some(RestartPolicyNameEnum::EMPTY) => {}
            Some(RestartPolicyNameEnum::ON_FAILURE) if rp.maximum_retry_count.unwrap_or(0) <= 5 => {
            }
            Some(other) => add("5.15", format!("restart policy {other:?}")),
        }
    }
    // 5.16 pid, 5.17 ipc, 5.21 uts, 5.31 userns (absent = unknown = finding).
    let shared = |m: &str| m == "host" || m.starts_with("container:");
    match h.pid_mode.as_deref() {
        None => add("5.16", "pid mode unknown".into()),
        Some(m) if shared(m) => add("5.16", format!("process namespace shared ({m})")),
        Some(_) => {}
    }
    match h.ipc_mode.as_deref() {
        None => add("5.17", "IPC mode unknown".into()),
        Some(m) if shared(m) || m == "shareable" => {
            add("5.17", format!("IPC namespace shared ({m})"))
        }
        Some(_) => {}
    }
    match h.uts_mode.as_deref() {
        None => add("5.21", "UTS mode unknown".into()),
        Some("host") => add("5.21", "host UTS namespace shared".into()),
        Some(_) => {}
    }
    match h.userns_mode.as_deref() {
        None => add("5.31", "user namespace mode unknown".into()),
        Some("host") => add("5.31", "host user namespace shared".into()),
        Some(_) => {}
    }
    // 5.18 devices.
    if h.devices.as_ref().is_some_and(|d| !d.is_empty()) {
        add("5.18", "host devices exposed".into());
    }
    // 5.22 seccomp, 5.26 no-new-privileges.
    let sec = h.security_opt.clone().unwrap_or_default();
    if sec
        .iter()
        .any(|s| s.replace('=', ":") == "seccomp:unconfined")
    {
        add("5.22", "seccomp profile disabled (unconfined)".into());
    }
    if !sec.iter().any(|s| {
        matches!(
            s.as_str(),
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
        )
    }) {
        add("5.26", "no-new-privileges not set".into());
    }
    // 5.25 cgroup parent.
    if h.cgroup_parent.as_deref().is_some_and(|p| !p.is_empty()) {
        add("5.25", "custom cgroup parent".into());
    }
    // 5.27 healthcheck.
    let hc = c
        .config
        .as_ref()
        .and_then(|cfg| cfg.healthcheck.as_ref())
        .and_then(|hc| hc.test.as_ref());
    match hc.and_then(|t| t.first()).map(String::as_str) {
        Some("CMD" | "CMD-SHELL") => {}
        _ => add("5.27", "no healthcheck".into()),
    }
    // 5.29 pids limit.
    if h.pids_limit.unwrap_or(0) <= 0 {
        add("5.29", "no pids limit".into());
    }
    f
}

/// A user field's uid, read as the runtime reads a number (an optional
/// sign, any number of leading zeros); `None` for a name.
fn numeric_uid(name: &str) -> Option<i64> {
    name.parse::<i64>().ok()
}

/// What an exec container on an org network must look like, beyond the CIS
/// checks of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecExpect {
    /// The org's id.
    pub org: String,
    /// Its network: the only one the container may be attached to.
    pub network: String,
    /// The org's host folder, the only bind mount allowed (at `/workspace`);
    /// `None`: the source must at least be a folder named after the org.
    pub org_folder: Option<PathBuf>,
    /// The isolation every exec container must run under.
    pub isolation: Isolation,
}

/// [`verify`] plus what chokepoint requires of an exec container: attached
/// to its org's network and nothing else (all of `NetworkSettings.Networks`),
/// exactly the org's folder mounted (at `/workspace`; scratch only as tmpfs
/// at `/tmp`), no sysctl under `net.ipv6.` (one could turn IPv6 back on), a
/// DNS server that is set and not loopback (CVE-2024-29018), a numeric
/// non-zero uid, the expected isolation, and a size-capped log. Fails
/// closed: a field it needs that is absent is a finding.
pub fn verify_exec(c: &ContainerInspectResponse, expect: &ExecExpect) -> Vec<Finding> {
    let mut f = verify(c);
    let mut add = |id: &'static str, msg: String| {
        f.push(Finding {
            cis_id: id,
            message: msg,
        })
    };
    let h = c.host_config.clone().unwrap_or_default();

    let nets: Vec<String> = c
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .map(|n| n.keys().cloned().collect())
        .unwrap_or_default();
    if nets != [expect.network.clone()] {
        add(
            "cp-net",
            format!("attached to {nets:?}, expected only {}", expect.network),
        );
    }
    if h.network_mode.as_deref() != Some(expect.network.as_str()) {
        add(
            "cp-net",
            format!(
                "network mode {:?}, expected {}",
                h.network_mode, expect.network
            ),
        );
    }

    let mounts = c.mounts.clone().unwrap_or_default();
    let workspace_ok = |m: &bollard::models::MountPoint| {
        let src = m.source.as_deref().unwrap_or_default();
        m.typ.as_deref() == Some("bind")
            && m.destination.as_deref() == Some(WORKSPACE)
            && match &expect.org_folder {
                Some(folder) => std::path::Path::new(src) == folder.as_path(),
                None => std::path::Path::new(src)
                    .file_name()
                    .is_some_and(|n| n == expect.org.as_str()),
            }
    };
    if mounts.len() != 1 || !mounts.iter().all(workspace_ok) {
        let seen: Vec<String> = mounts
            .iter()
            .map(|m| {
                format!(
                    "{}:{}",
                    m.source.as_deref().unwrap_or("?"),
                    m.destination.as_deref().unwrap_or("?")
                )
            })
            .collect();
        add(
            "cp-mount",
            format!("mounts {seen:?}, expected only the org folder at {WORKSPACE}"),
        );
    }
    if h.tmpfs
        .as_ref()
        .is_some_and(|t| t.keys().any(|k| k != SCRATCH))
    {
        add("cp-mount", format!("tmpfs other than {SCRATCH}"));
    }

    let ipv6: Vec<&String> = h
        .sysctls
        .iter()
        .flat_map(|s| s.keys())
        .filter(|k| k.starts_with("net.ipv6."))
        .collect();
    if !ipv6.is_empty() {
        add("cp-ipv6", format!("IPv6 sysctls set: {ipv6:?}"));
    }

    match h.dns.as_deref() {
        None | Some([]) => add(
            "cp-dns",
            "no DNS server set: dockerd may forward queries from the host's namespace".into(),
        ),
        Some(servers) => {
            for s in servers {
                if !s.parse().is_ok_and(dns_is_sink) {
                    add("cp-dns", format!("DNS server {s} is loopback or invalid"));
                }
            }
        }
    }

    let user = c
        .config
        .as_ref()
        .and_then(|cfg| cfg.user.as_deref())
        .unwrap_or_default();
    let uid = user.split(':').next().and_then(|u| numeric_uid(u.trim()));
    if uid.is_none_or(|id| id <= 0) {
        add(
            "cp-user",
            format!("user {user:?} is not a numeric non-zero uid"),
        );
    }

    let runtime = h.runtime.as_deref().unwrap_or("runc");
    match expect.isolation {
        Isolation::Gvisor if runtime != "runsc" => add(
            "cp-isolation",
            format!("runtime {runtime}, expected runsc (gVisor)"),
        ),
        Isolation::UsernsRemap if h.userns_mode.as_deref() == Some("host") => add(
            "cp-isolation",
            "user namespace remapping disabled (userns_mode host)".into(),
        ),
        _ => {}
    }

    let log = h.log_config.unwrap_or_default();
    let capped = log
        .config
        .as_ref()
        .and_then(|c| c.get("max-size"))
        .is_some_and(|v| !v.is_empty());
    match log.typ.as_deref() {
        Some("none") => {}
        Some("json-file" | "local") if capped => {}
        other => add("cp-log", format!("log driver {other:?} without a max-size")),
    }
    f
}
