//! `HardenedSpec`: the only way this project builds an exec container's create
//! options. Owns org-id validation, the host-folder derivation and the six
//! hardening layers. Must never produce a spec with uid 0, an added
//! capability, an unconfined seccomp profile, a writable root, a bind mount
//! other than the org's own folder, or a host/default-bridge network.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, HostConfigLogConfig, RestartPolicy,
    RestartPolicyNameEnum,
};

use crate::SpecError;

/// The fixed unprivileged uid and gid every exec container runs as.
pub const EXEC_UID: u32 = 65532;
/// Where the org's folder appears inside the container.
pub const WORKSPACE: &str = "/workspace";
/// The size-capped, noexec tmpfs scratch directory.
pub const SCRATCH: &str = "/tmp";
/// The default DNS server of an exec container: an address in TEST-NET-1
/// (RFC 5737), never routed, which nothing answers. Docker's embedded
/// resolver (127.0.0.11 in the container) forwards to it from *inside* the
/// container's namespace, where the kernel rules drop it; without a DNS
/// setting, a daemon whose host resolver is on loopback forwards from the
/// host's namespace instead (CVE-2024-29018), a way out with no rule and no
/// audit line. Set [`HardenedSpec::dns`] to the org network's gateway
/// address (no host address under `inhibit_ipv4`) to have the rules drop it
/// on the bridge.
pub const DNS_SINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// The log driver and its size cap: a container cannot fill the host's disk
/// through its output.
pub const LOG_DRIVER: &str = "json-file";
/// Largest log file of an exec container, and how many are kept.
pub const LOG_MAX_SIZE: &str = "1m";
/// How many rotated log files are kept.
pub const LOG_MAX_FILE: &str = "2";

/// What runs an exec container's processes, from least to most isolated
/// from the host kernel (docs/threat-model-kernel.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// runc, the daemon's default runtime, sharing the host's user ids.
    #[default]
    Runc,
    /// runc under the daemon's `userns-remap`: uid 0 in the container is an
    /// unprivileged uid on the host. Refused unless the daemon has it.
    UsernsRemap,
    /// gVisor (`runsc`): a user-space kernel between the container and the
    /// host's. Refused unless the daemon has a `runsc` runtime.
    Gvisor,
}

impl Isolation {
    /// The Docker runtime name this option asks for (`None`: the default).
    pub fn runtime(self) -> Option<&'static str> {
        match self {
            Isolation::Gvisor => Some("runsc"),
            Isolation::Runc | Isolation::UsernsRemap => None,
        }
    }

    /// The name used in status output and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Runc => "runc",
            Isolation::UsernsRemap => "userns-remap",
            Isolation::Gvisor => "gvisor",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "runc" => Ok(Isolation::Runc),
            "userns-remap" => Ok(Isolation::UsernsRemap),
            "gvisor" | "runsc" => Ok(Isolation::Gvisor),
            other => Err(format!(
                "unknown isolation {other:?}: use runc, userns-remap or gvisor"
            )),
        }
    }
}

/// Host paths that must never be (or contain) an org's data root.
const SYSTEM_PATHS: &[&str] = &[
    "/",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/var/run",
    "/run",
    "/var/lib/docker",
    "/usr",
    "/boot",
    "/root",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/var",
    "/home",
    "/var/lib",
];

/// The organization id, the policy's own type: `[a-z0-9][a-z0-9_-]{0,62}`,
/// so it is safe as one path component (no `/`, no `.`, no `..`).
pub use netpolicy::OrgId;

/// Resource limits of one exec container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes (swap is set equal: no swap).
    pub memory_bytes: i64,
    /// CPU limit in units of 1e-9 CPUs.
    pub nano_cpus: i64,
    /// Maximum number of processes/threads.
    pub pids: i64,
    /// Size of the `/tmp` scratch tmpfs in bytes.
    pub scratch_bytes: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            pids: 128,
            scratch_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Everything needed to create one hardened exec container.
#[derive(Debug, Clone)]
pub struct HardenedSpec {
    /// The organization whose folder is mounted.
    pub org: OrgId,
    /// Image reference (a locally built `FROM scratch` image).
    pub image: String,
    /// Host directory holding one sub-folder per org.
    pub data_root: PathBuf,
    /// Resource limits.
    pub limits: Limits,
    /// The org's own Docker network (never bridge/host/default/container:...).
    pub network: String,
    /// Command to run (argv).
    pub command: Vec<String>,
    /// Extra environment (`KEY=value`), e.g. `HTTP_PROXY`.
    pub env: Vec<String>,
    /// Healthcheck argv run with exec form (`CMD`).
    pub healthcheck: Vec<String>,
    /// The container's DNS server (default [`DNS_SINK`]): never loopback.
    pub dns: IpAddr,
    /// The runtime isolation (default [`Isolation::Runc`]).
    pub isolation: Isolation,
    /// When set, the org folder must be a filesystem of its own, mounted
    /// `nodev,nosuid`, of at most this many bytes (e.g. a loop-mounted image
    /// or a tmpfs per org, docs/containers.md): the `/workspace` bind mount
    /// inherits those flags and that size, since Docker's bind mounts take
    /// neither a size nor `nosuid`. `None` (the default) checks nothing.
    pub workspace_max_bytes: Option<u64>,
}

impl HardenedSpec {
    /// A spec with default limits, no env and a `true`-style healthcheck
    /// (`/bin/sh -c "exit 0"`).
    pub fn new(
        org: OrgId,
        image: impl Into<String>,
        data_root: impl Into<PathBuf>,
        network: impl Into<String>,
        command: Vec<String>,
    ) -> Self {
        Self {
            org,
            image: image.into(),
            data_root: data_root.into(),
            limits: Limits::default(),
            network: network.into(),
            command,
            env: Vec::new(),
            healthcheck: vec!["/bin/sh".into(), "-c".into(), "exit 0".into()],
            dns: IpAddr::V4(DNS_SINK),
            isolation: Isolation::Runc,
            workspace_max_bytes: None,
        }
    }

    /// The canonical host folder of this org: `canonical(data_root)/org`,
    /// which must already exist, be a directory, and canonicalize to a path
    /// directly under the canonical data root (no symlink escape).
    pub fn host_folder(&self) -> Result<PathBuf, SpecError> {
        let root = self
            .data_root
            .canonicalize()
            .map_err(|e| SpecError::DataRoot(e.to_string()))?;
        check_not_system(&root)?;
        let folder = root
            .join(self.org.as_str())
            .canonicalize()
            .map_err(|e| SpecError::OrgFolder(e.to_string()))?;
        // Exactly root/org: a symlink (even to another org's folder) is refused.
        if folder != root.join(self.org.as_str()) {
            return Err(SpecError::Escape);
        }
        if !folder.is_dir() {
            return Err(SpecError::OrgFolder("not a directory".into()));
        }
        check_not_system(&folder)?;
        Ok(folder)
    }

    /// Validate and render the bollard create body (all six layers).
    pub fn to_create_body(&self) -> Result<ContainerCreateBody, SpecError> {
        check_network(&self.network)?;
        let l = self.limits;
        if l.memory_bytes < 6 * 1024 * 1024
            || l.nano_cpus <= 0
            || l.pids <= 0
            || l.scratch_bytes <= 0
        {
            return Err(SpecError::BadLimits);
        }
        if self.image.trim().is_empty() || self.command.is_empty() {
            return Err(SpecError::Empty);
        }
        if !dns_is_sink(self.dns) {
            return Err(SpecError::BadDns(self.dns));
        }
        let folder = self.host_folder()?;
        if let Some(max) = self.workspace_max_bytes {
            check_workspace_mount(&folder, max)?;
        }
        let folder = folder.to_str().ok_or(SpecError::Escape)?;
        if folder.contains(':') || folder.contains(',') {
            return Err(SpecError::Escape);
        }
        let ids = format!("{EXEC_UID}:{EXEC_UID}");
        let mut tmpfs = HashMap::new();
        tmpfs.insert(
            SCRATCH.to_owned(),
            format!("rw,noexec,nosuid,nodev,size={},mode=1777", l.scratch_bytes),
        );
        let host_config = HostConfig {
            memory: Some(l.memory_bytes),
            memory_swap: Some(l.memory_bytes),
            nano_cpus: Some(l.nano_cpus),
            cpu_shares: Some(512),
            pids_limit: Some(l.pids),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(Vec::new()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            binds: Some(vec![format!("{folder}:{WORKSPACE}:rw,rprivate")]),
            network_mode: Some(self.network.clone()),
            privileged: Some(false),
            publish_all_ports: Some(false),
            init: Some(true),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: Some(0),
            }),
            devices: Some(Vec::new()),
            dns: Some(vec![self.dns.to_string()]),
            runtime: self.isolation.runtime().map(str::to_owned),
            log_config: Some(HostConfigLogConfig {
                typ: Some(LOG_DRIVER.to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                    ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
                ])),
            }),
            ..Default::default()
        };
        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            user: Some(ids),
            cmd: Some(self.command.clone()),
            env: Some(self.env.clone()),
            working_dir: Some(WORKSPACE.into()),
            network_disabled: Some(false),
            healthcheck: Some(HealthConfig {
                test: Some(
                    std::iter::once("CMD".to_owned())
                        .chain(self.healthcheck.iter().cloned())
                        .collect(),
                ),
                interval: Some(30_000_000_000),
                timeout: Some(5_000_000_000),
                retries: Some(3),
                ..Default::default()
            }),
            host_config: Some(host_config),
            ..Default::default()
        })
    }
}

/// Whether `ip` may be an exec container's DNS server: an address, not
/// loopback (dockerd would forward from the host's namespace), not
/// unspecified, not multicast.
pub fn dns_is_sink(ip: IpAddr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
}

/// Refuse networks that are not an org's own user-defined network.
pub fn check_network(name: &str) -> Result<(), SpecError> {
    let bad = name.is_empty()
        || matches!(name, "bridge" | "host" | "default" | "none")
        || name.starts_with("container:")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if bad {
        Err(SpecError::BadNetwork(name.to_owned()))
    } else {
        Ok(())
    }
}

/// Check that `folder` is a mount point (in `/proc/self/mountinfo`) whose
/// options hold `nodev` and `nosuid`, of at most `max` bytes (statvfs).
pub fn check_workspace_mount(folder: &Path, max: u64) -> Result<(), SpecError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| SpecError::Workspace(format!("cannot read mountinfo: {e}")))?;
    // Fields: id parent major:minor root mount-point options ...; the last
    // mount on a point is the one in force. Spaces are escaped as \040.
    let opts = info
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let point = f.nth(4)?;
            let opts = f.next()?;
            (unescape_mountinfo(point) == folder.as_os_str().to_string_lossy()).then_some(opts)
        })
        .next_back()
        .ok_or_else(|| {
            SpecError::Workspace(format!(
                "{} is not a filesystem of its own (mount a size-capped one there)",
                folder.display()
            ))
        })?;
    for flag in ["nodev", "nosuid"] {
        if !opts.split(',').any(|o| o == flag) {
            return Err(SpecError::Workspace(format!(
                "{} is mounted without {flag} ({opts})",
                folder.display()
            )));
        }
    }
    let st = rustix::fs::statvfs(folder)
        .map_err(|e| SpecError::Workspace(format!("statvfs {}: {e}", folder.display())))?;
    let size = st.f_blocks.saturating_mul(st.f_frsize);
    if size == 0 || size > max {
        return Err(SpecError::Workspace(format!(
            "{} holds {size} bytes, more than the {max} allowed",
            folder.display()
        )));
    }
    Ok(())
}

/// Undo mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b.get(i), oct) {
            (Some(b'\\'), Some(d)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            (Some(c), _) => {
                out.push(*c);
                i += 1;
            }
            (None, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuse a path that is a system path or the Docker socket.
fn check_not_system(p: &Path) -> Result<(), SpecError> {
    let s = p.to_string_lossy();
    if SYSTEM_PATHS.iter().any(|sys| s == *sys) || s.contains("docker.sock") {
        return Err(SpecError::SystemPath(s.into_owned()));
    }
    for sys in [
        "/proc",
        "/sys",
        "/dev",
        "/etc",
        "/var/run",
        "/run",
        "/var/lib/docker",
        "/boot",
    ] {
        if p.starts_with(sys) {
            return Err(SpecError::SystemPath(s.into_owned()));
        }
    }
    Ok(())
}
