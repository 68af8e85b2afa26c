//! `egressctl appliance up|down`: the whole appliance with one command on a
//! fresh machine with Docker (no registry, no internet), and all of it gone
//! again with another (docs/appliance.md).
//!
//! `up`, as root: builds the `FROM scratch` proxy and exec images from the
//! binaries beside this `egressctl`; generates the proxy's admin token into
//! the appliance directory (`/etc/chokepoint`, or `--dir` /
//! `CHOKEPOINT_DIR`; files 0600, never printed); writes the safe default
//! policy with a first org; renders the proxy's policy; runs
//! `docker-compose -p chokepoint up -d` on a copy of the tree's
//! `compose.yaml`; installs the controller's boot units; starts the
//! controller (on the host: it owns nftables and DOCKER-USER) and waits for
//! its first pass and a ready proxy. It records what it made in
//! `appliance.json`; `down` removes exactly that: containers, networks, nft
//! tables, DOCKER-USER rules, images, units and the directory.
//!
//! Must never: print a secret, pull an image, or remove a directory that
//! holds no `appliance.json` of ours.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, Subcommand};
use serde::{Deserialize, Serialize};

use super::{emit_line, fail_usage};
use crate::reconcile::{Config, State, planned_networks};

/// The compose file shipped in the tree (copied into the appliance directory).
pub const COMPOSE: &str = include_str!("../../../compose.yaml");
/// The docker-compose project name.
pub const PROJECT: &str = "chokepoint";
/// The proxy's container name (compose.yaml).
pub const PROXY_CONTAINER: &str = "chokepoint-proxy";
/// The proxy's uid/gid in its image.
pub const PROXY_UID: u32 = 65532;
/// The proxy's port for exec containers.
pub const PROXY_PORT: u16 = 3128;
/// The worker's uid/gid (a child of the controller, no capabilities).
pub const WORKER_UID: u32 = 65534;
/// The compose network of the proxy's way out.
pub const EGRESS_NETWORK: &str = "chokepoint-egress";

/// The default appliance directory, or `CHOKEPOINT_DIR`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("CHOKEPOINT_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/etc/chokepoint"), PathBuf::from)
}

fn default_unit_dir() -> PathBuf {
    std::env::var_os("CHOKEPOINT_UNIT_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/etc/systemd/system"), PathBuf::from)
}

/// Arguments of `egressctl appliance`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The action.
    #[command(subcommand)]
    pub action: Action,
}

/// `egressctl appliance` actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Build the images, write keys and a production configuration, start everything.
    Up(UpArgs),
    /// Remove everything `up` made (containers, networks, nft tables, images, units, files).
    Down(DownArgs),
}

/// Arguments of `egressctl appliance up`.
#[derive(Debug, ClapArgs)]
pub struct UpArgs {
    /// The appliance directory (keys, configuration, state). Default
    /// `CHOKEPOINT_DIR` or /etc/chokepoint.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where the systemd units go. Default `CHOKEPOINT_UNIT_DIR` or /etc/systemd/system.
    #[arg(long)]
    pub unit_dir: Option<PathBuf>,
    /// The folder holding egress-proxy and egress-controller (default: this
    /// egressctl's folder, as `cargo build` leaves them).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Base range of the per-org /24 subnets.
    #[arg(long, default_value = "10.231.0.0/16")]
    pub subnet_base: ipnet::Ipv4Net,
    /// The first org of the default policy.
    #[arg(long, default_value = "acme")]
    pub org: String,
    /// An existing policy to use instead of the safe default.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The proxy's egress network (a /24 or larger): the proxy's admin
    /// listener is its .2, containers get the upper half.
    #[arg(long, default_value = "10.230.0.0/24")]
    pub egress_subnet: ipnet::Ipv4Net,
    /// Seconds to wait for the controller's first pass and a ready proxy.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

/// Arguments of `egressctl appliance down`.
#[derive(Debug, ClapArgs)]
pub struct DownArgs {
    /// The appliance directory (as given to `up`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What `up` made, so that `down` removes exactly that.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// Images we built.
    pub images: Vec<String>,
    /// Unit files we installed.
    pub units: Vec<PathBuf>,
    /// The controller's pid (a host process: no systemd as PID 1 here).
    pub controller_pid: Option<u32>,
    /// Base range of the org subnets.
    pub subnet_base: String,
    /// The exec image tag (for `egressctl exec`).
    pub exec_image: String,
    /// The egress-controller binary the appliance runs.
    #[serde(default)]
    pub controller_bin: PathBuf,
    /// The proxy's egress network.
    #[serde(default)]
    pub egress_subnet: String,
}

impl Record {
    /// The proxy's egress network (default 10.230.0.0/24).
    pub fn egress(&self) -> ipnet::Ipv4Net {
        self.egress_subnet
            .parse()
            .unwrap_or_else(|_| "10.230.0.0/24".parse().unwrap_or_default())
    }
    /// The proxy's admin address (`IP:9090`, .2 of the egress network).
    pub fn proxy_admin(&self) -> String {
        format!("{}:9090", nth(self.egress(), 2))
    }
    /// The host's address on the egress network (its gateway, .1).
    pub fn host_address(&self) -> std::net::Ipv4Addr {
        nth(self.egress(), 1)
    }
    /// The API's address (`IP:8443`, .3 of the egress network).
    pub fn api_addr(&self) -> String {
        format!("{}:8443", nth(self.egress(), 3))
    }
    /// The variables compose.yaml reads.
    fn compose_env(&self) -> Vec<(&'static str, String)> {
        let net = self.egress();
        let half = ipnet::Ipv4Net::new(
            nth(
                net,
                u32::from(1u8) << (31 - u32::from(net.prefix_len())).min(31),
            ),
            net.prefix_len().saturating_add(1).min(32),
        )
        .map_or_else(|_| net.to_string(), |n| n.to_string());
        vec![
            ("CHOKEPOINT_EGRESS_SUBNET", net.to_string()),
            ("CHOKEPOINT_EGRESS_RANGE", half),
            ("CHOKEPOINT_PROXY_ADMIN_IP", nth(net, 2).to_string()),
            ("CHOKEPOINT_EGRESS_GATEWAY", self.host_address().to_string()),
            ("CHOKEPOINT_API_IP", nth(net, 3).to_string()),
        ]
    }
}

/// The `i`-th address of `net`.
fn nth(net: ipnet::Ipv4Net, i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(net.network()).saturating_add(i))
}

/// The appliance directory's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The root.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
    /// The egress policy.
    pub fn policy(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }
    /// The proxy's folder (mounted read-only into its container).
    pub fn proxy_dir(&self) -> PathBuf {
        self.dir.join("proxy")
    }
    /// The proxy's policy, rendered by the controller.
    pub fn proxy_policy(&self) -> PathBuf {
        self.proxy_dir().join("proxy-policy.yaml")
    }
    /// The worker's folder (its keys, store and socket; owned by its uid).
    pub fn worker_dir(&self) -> PathBuf {
        self.dir.join("worker")
    }
    /// The worker's store.
    pub fn worker_store(&self) -> String {
        format!("sqlite:{}", self.worker_dir().join("worker.db").display())
    }
    /// The worker's unix socket, in a folder of its own (mounted into the
    /// API's container; the worker's keys are not).
    pub fn worker_socket(&self) -> PathBuf {
        self.dir.join("worker-run").join("worker.sock")
    }
    /// The API's keys and certificate (mounted read-only into its container).
    pub fn api_dir(&self) -> PathBuf {
        self.dir.join("api")
    }
    /// The API's TLS certificate (self-signed by `up` for its address;
    /// `egressctl status` and the healthcheck trust only it).
    pub fn api_cert(&self) -> PathBuf {
        self.api_dir().join("tls-cert.pem")
    }
    /// The worker's environment (key and token files).
    pub fn worker_env(&self) -> [(&'static str, PathBuf); 2] {
        [
            (
                "CHOKEPOINT_MASTER_KEY_FILE",
                self.worker_dir().join("master-key"),
            ),
            (
                "CHOKEPOINT_WORKER_TOKEN_FILE",
                self.worker_dir().join("service-token"),
            ),
        ]
    }
    /// The controller's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The org folders (one per org, mounted at /workspace).
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("orgs")
    }
    /// The saved ruleset the boot unit loads.
    pub fn ruleset(&self) -> PathBuf {
        self.dir.join("nft-ruleset.json")
    }
    /// What `up` made.
    pub fn record(&self) -> PathBuf {
        self.dir.join("appliance.json")
    }
    /// Load the record (`None`: not an appliance directory).
    pub fn load_record(&self) -> Option<Record> {
        let text = std::fs::read_to_string(self.record()).ok()?;
        serde_json::from_str(&text).ok()
    }
    /// The controller configuration the appliance runs with.
    pub fn controller_config(&self, subnet_base: ipnet::Ipv4Net) -> Config {
        let mut cfg = Config::new(self.policy(), self.state_dir());
        cfg.subnet_base = subnet_base;
        cfg.proxy_container = Some(PROXY_CONTAINER.to_owned());
        cfg.proxy_policy_out = Some(self.proxy_policy());
        cfg.proxy_port = PROXY_PORT;
        cfg.ruleset_file = Some(self.ruleset());
        cfg.data_root = Some(self.data_root());
        cfg
    }
    /// The controller's arguments (also written to the unit's env file).
    fn controller_args(&self, subnet_base: ipnet::Ipv4Net, proxy_admin: &str) -> Vec<String> {
        vec![
            format!("--proxy-admin={proxy_admin}"),
            format!("--policy={}", self.policy().display()),
            format!("--proxy-container={PROXY_CONTAINER}"),
            format!("--proxy-policy-out={}", self.proxy_policy().display()),
            format!("--state-dir={}", self.state_dir().display()),
            format!("--ruleset-file={}", self.ruleset().display()),
            format!("--data-root={}", self.data_root().display()),
            format!("--subnet-base={subnet_base}"),
            "--interval-secs=10".to_owned(),
            "--worker".to_owned(),
            format!("--worker-user={WORKER_UID}:{WORKER_UID}"),
            format!("--worker-arg=--store={}", self.worker_store()),
            format!(
                "--worker-arg=--listen=unix:{}",
                self.worker_socket().display()
            ),
        ]
    }
}

/// Run `egressctl appliance`.
pub fn run(args: &Args) -> ExitCode {
    match &args.action {
        Action::Up(a) => match up(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(std::io::stderr().lock(), "egressctl: appliance up: {e}");
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "egressctl: run `egressctl appliance down` to remove what was made"
                );
                ExitCode::FAILURE
            }
        },
        Action::Down(a) => {
            let dir = a.dir.clone().unwrap_or_else(default_dir);
            match down(&Layout::new(dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail_usage(&format!("appliance down: {e}")),
            }
        }
    }
}

fn err(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

/// The safe default policy with one org (clients are filled in by the
/// controller with the org's subnet).
pub fn default_policy(org: &str) -> String {
    format!(
        "# chokepoint egress policy written by `egressctl appliance up`: the safe default.\n\
         # GET/HEAD to public hosts; CONNECT only to package repositories; no writes\n\
         # from exec containers; no private, loopback or reserved destination.\n\
         # Format: docs/policy.md. Check a change with `egressctl policy validate FILE`.\n\
         version: v1\n\
         unsafe_allow_ranges: []\n\
         package_repos:\n  - pypi.org\n  - files.pythonhosted.org\n  - registry.npmjs.org\n  - crates.io\n  - static.crates.io\n  - index.crates.io\n\
         orgs:\n  {org}:\n    clients: []\n    integrations: {{}}\n"
    )
}

/// Read `n` bytes from the kernel's CSPRNG as lowercase hex.
fn random_hex(n: usize) -> Result<zeroize::Zeroizing<String>, String> {
    use std::io::Read;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; n]);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let mut out = zeroize::Zeroizing::new(String::with_capacity(n * 2));
    for b in buf.iter() {
        for nibble in [b >> 4, b & 15] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    Ok(out)
}

/// Create `path` with `mode` (fails if it exists: never overwrite a key).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A self-signed P-256 server certificate for `ip` (the API's fixed
/// address), written to `cert` and `key` with `openssl`.
///
/// An end-entity certificate, not a CA: `basicConstraints CA:FALSE`,
/// `keyUsage digitalSignature`, `extendedKeyUsage serverAuth` and the
/// address as its only name. `openssl req -x509` otherwise marks it
/// `CA:TRUE`, which WebPKI clients refuse as a server certificate
/// (`CaUsedAsEndEntity`): rustls, hence the API container's own
/// healthcheck (`--healthcheck https://… --healthcheck-ca` this file).
pub fn self_signed_cert(ip: std::net::IpAddr, cert: &Path, key: &Path) -> Result<(), String> {
    run_cmd(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "825", "-subj", "/CN=chokepoint-api"])
            .arg("-addext")
            .arg(format!("subjectAltName=IP:{ip}"))
            .args([
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature",
                "-addext",
                "extendedKeyUsage=serverAuth",
            ])
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(cert),
    )?;
    Ok(())
}

fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{:?} {:?}: {}: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            scrub::scrub_str(String::from_utf8_lossy(&out.stderr).trim())
        ))
    }
}

/// `docker-compose -p chokepoint -f DIR/compose.yaml ARGS` with the
/// directory in `CHOKEPOINT_DIR`.
fn compose(layout: &Layout, rec: &Record, args: &[&str]) -> Result<String, String> {
    run_cmd(
        Command::new("docker-compose")
            .arg("-p")
            .arg(PROJECT)
            .arg("-f")
            .arg(layout.dir.join("compose.yaml"))
            .args(args)
            .env("CHOKEPOINT_DIR", &layout.dir)
            .envs(rec.compose_env()),
    )
}

fn save_record(layout: &Layout, rec: &Record) -> Result<(), String> {
    let text = serde_json::to_string_pretty(rec).map_err(err)?;
    crate::atomic_file::write_atomic(&layout.record(), text.as_bytes())
        .map_err(|e| format!("{}: {e}", layout.record().display()))
}

fn up(a: &UpArgs) -> Result<(), String> {
    let layout = Layout::new(a.dir.clone().unwrap_or_else(default_dir));
    let unit_dir = a.unit_dir.clone().unwrap_or_else(default_unit_dir);
    if layout.record().exists() {
        return Err(format!(
            "{} exists: the appliance is already up (run `egressctl appliance down` first)",
            layout.record().display()
        ));
    }
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(err)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or("no folder for this egressctl")?,
    };
    let proxy_bin = bin_dir.join("egress-proxy");
    let controller_bin = bin_dir.join("egress-controller");
    let api_bin = bin_dir.join("chokepoint-api");
    for b in [&proxy_bin, &controller_bin, &api_bin] {
        if !b.is_file() {
            return Err(format!(
                "{} missing: build it first (cargo build --release -p egress-proxy -p egress-controller -p chokepoint-api) or pass --bin-dir",
                b.display()
            ));
        }
    }
    netpolicy::OrgId::parse(&a.org).map_err(|e| format!("--org: {e}"))?;
    if a.egress_subnet.prefix_len() > 24 {
        return Err("--egress-subnet: give a /24 or larger".to_owned());
    }

    // 1. Files (the record first: `down` can clean up whatever follows).
    // 0711: the proxy's and the worker's own folders are reachable, nothing is listable.
    mkdir(&layout.dir, 0o711)?;
    let mut rec = Record {
        subnet_base: a.subnet_base.to_string(),
        exec_image: "chokepoint-exec:appliance".to_owned(),
        controller_bin: controller_bin.clone(),
        egress_subnet: a.egress_subnet.to_string(),
        ..Record::default()
    };
    save_record(&layout, &rec)?;
    mkdir(&layout.proxy_dir(), 0o755)?;
    mkdir(&layout.state_dir(), 0o700)?;
    mkdir(&layout.data_root(), 0o755)?;
    let policy = match &a.policy {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => default_policy(&a.org),
    };
    // Not a secret; the worker (its own uid) reads it too.
    write_new(&layout.policy(), policy.as_bytes(), 0o644)?;
    let cfg = layout.controller_config(a.subnet_base);
    let nets = planned_networks(&cfg).map_err(|e| format!("policy: {e}"))?;
    for n in &nets {
        let d = layout.data_root().join(&n.org);
        mkdir(&d, 0o755)?;
        std::os::unix::fs::chown(&d, Some(containers::EXEC_UID), Some(containers::EXEC_UID))
            .map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let proxy_policy = crate::network::proxy_policy(&policy, &nets)?;
    crate::atomic_file::write_atomic(&layout.proxy_policy(), proxy_policy.as_bytes())
        .map_err(|e| format!("{}: {e}", layout.proxy_policy().display()))?;
    let token_path = layout.proxy_dir().join("admin-token");
    write_new(&token_path, random_hex(32)?.as_bytes(), 0o600)?;
    std::os::unix::fs::chown(&token_path, Some(PROXY_UID), Some(PROXY_UID))
        .map_err(|e| format!("{}: {e}", token_path.display()))?;
    mkdir(&layout.worker_dir(), 0o700)?;
    let own = |p: &Path| {
        std::os::unix::fs::chown(p, Some(WORKER_UID), Some(WORKER_UID))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    own(&layout.worker_dir())?;
    let [(_, key_path), (_, token_path)] = layout.worker_env();
    let key = {
        use base64::Engine as _;
        let hex = random_hex(32)?;
        let mut raw = zeroize::Zeroizing::new(Vec::with_capacity(32));
        for pair in hex.as_bytes().chunks(2) {
            let s = std::str::from_utf8(pair).map_err(err)?;
            raw.push(u8::from_str_radix(s, 16).map_err(err)?);
        }
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*raw))
    };
    write_new(&key_path, format!("{}\n", key.as_str()).as_bytes(), 0o600)?;
    own(&key_path)?;
    write_new(&token_path, random_hex(32)?.as_bytes(), 0o600)?;
    own(&token_path)?;
    let run_dir = layout.dir.join("worker-run");
    mkdir(&run_dir, 0o700)?;
    own(&run_dir)?;
    // The API: its JWT key, a self-signed certificate for its fixed address
    // (replace tls-cert.pem/tls-key.pem with your own), its store.
    mkdir(&layout.api_dir(), 0o755)?;
    let jwt_path = layout.api_dir().join("jwt-key");
    let jwt = {
        use base64::Engine as _;
        let hex = random_hex(32)?;
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(hex.as_bytes()))
    };
    write_new(&jwt_path, jwt.as_bytes(), 0o600)?;
    own(&jwt_path)?;
    let (cert, tls_key) = (layout.api_cert(), layout.api_dir().join("tls-key.pem"));
    self_signed_cert(nth(a.egress_subnet, 3).into(), &cert, &tls_key)?;
    std::fs::set_permissions(&tls_key, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    own(&tls_key)?;
    let api_data = layout.dir.join("api-data");
    mkdir(&api_data, 0o700)?;
    own(&api_data)?;
    std::fs::write(layout.dir.join("compose.yaml"), COMPOSE).map_err(err)?;
    let controller_args = layout.controller_args(a.subnet_base, &rec.proxy_admin());
    write_new(
        &layout.dir.join("controller.env"),
        format!(
            "CHOKEPOINT_ENV=production\n{}CHOKEPOINT_CONTROLLER_ARGS=\"{}\"\n",
            layout
                .worker_env()
                .iter()
                .map(|(k, v)| format!("{k}={}\n", v.display()))
                .collect::<String>(),
            controller_args.join(" ")
        )
        .as_bytes(),
        0o600,
    )?;
    say(&format!(
        "wrote configuration and keys to {}",
        layout.dir.display()
    ))?;

    // 2. Images, FROM scratch, from this checkout's binaries.
    let proxy_image = "chokepoint-proxy:appliance";
    for (spec, what) in [
        (
            containers::ImageSpec::service(proxy_image, vec![proxy_bin.clone()]),
            "proxy",
        ),
        (
            containers::ImageSpec::service("chokepoint-api:appliance", vec![api_bin.clone()]),
            "api",
        ),
        (containers::ImageSpec::exec(&rec.exec_image), "exec"),
    ] {
        rec.images.push(spec.tag.clone());
        save_record(&layout, &rec)?;
        containers::build_scratch_image(&spec).map_err(|e| format!("{what} image: {e}"))?;
        say(&format!("built image {}", spec.tag))?;
    }

    // 3. The proxy (compose).
    compose(&layout, &rec, &["up", "-d", "proxy"])?;
    say("started the proxy (docker-compose -p chokepoint up -d proxy)")?;

    // 4. The controller, on the host, as the boot unit would run it.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(layout.dir.join("controller.log"))
        .map_err(err)?;
    let child = Command::new("setsid")
        .arg(&controller_bin)
        .args(&controller_args)
        .env("CHOKEPOINT_ENV", "production")
        .envs(layout.worker_env())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(err)?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting egress-controller: {e}"))?;
    rec.controller_pid = Some(child.id());
    save_record(&layout, &rec)?;
    drop(child); // runs on in its own session; `down` stops it by pid
    say("started egress-controller (host process; see docs/appliance.md)")?;

    // 5. Wait for its first pass (tables, networks, proxy attached), then reload the proxy.
    let deadline = Instant::now() + Duration::from_secs(a.wait_secs.max(5));
    loop {
        let state = State::load(&layout.state_dir());
        let attached = nets.iter().all(|n| state.networks.contains(&n.name));
        if !state.fingerprint.is_empty() && attached && layout.ruleset().is_file() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the controller made no complete pass in {} s (see {})",
                a.wait_secs,
                layout.dir.join("controller.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    run_cmd(Command::new("docker").args(["kill", "-s", "HUP", PROXY_CONTAINER]))?;

    // 6. Boot units.
    mkdir(&unit_dir, 0o755)?;
    for (name, text) in super::boot::UNITS {
        let path = unit_dir.join(name);
        // The controller's arguments are all in controller.env.
        let text = text
            .replace(
                "--policy /etc/chokepoint/policy.yaml --state-dir /run/chokepoint --ruleset-file /var/lib/chokepoint/nft-ruleset.json ",
                "",
            )
            .replace(
                crate::firewall::SAVED_RULESET,
                &layout.ruleset().to_string_lossy(),
            )
            .replace(
                "/etc/chokepoint/controller.env",
                &layout.dir.join("controller.env").to_string_lossy(),
            )
            .replace(
                "/usr/local/bin/egress-controller",
                &controller_bin.to_string_lossy(),
            );
        rec.units.push(path.clone());
        save_record(&layout, &rec)?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    say(&format!(
        "installed the boot units in {} (enable them with `systemctl enable chokepoint-nft chokepoint-controller` where systemd runs)",
        unit_dir.display()
    ))?;

    // 7. A ready proxy and worker.
    loop {
        match proxy_ready(&rec).and_then(|()| worker_ready(&layout)) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => return Err(format!("proxy not ready: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    // 8. The API, once the worker it checks at start answers.
    compose(&layout, &rec, &["up", "-d", "api"])?;
    loop {
        match api_ready(&layout, &rec) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => {
                // Say what Docker makes of the container (a crash loop
                // looks like a timeout from here); never its logs.
                let state = run_cmd(Command::new("docker").args([
                    "inspect",
                    "-f",
                    "{{.State.Status}}, exit code {{.State.ExitCode}}, {{.RestartCount}} restart(s)",
                    "chokepoint-api",
                ]))
                .unwrap_or_else(|e| e);
                return Err(format!(
                    "API not ready: {e} (container chokepoint-api: {}; see `docker logs chokepoint-api`)",
                    state.trim()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    say("proxy, worker and API ready; run `egressctl status` to prove every boundary")?;
    Ok(())
}

fn say(line: &str) -> Result<(), String> {
    emit_line(line).map_err(err)
}

/// The proxy's `/readyz` on its admin address (the egress network): `Ok`
/// on a 200.
pub fn proxy_ready(rec: &Record) -> Result<(), String> {
    let code = run_cmd(Command::new("curl").args([
        "-s",
        "-m",
        "2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/readyz", rec.proxy_admin()),
    ]))
    .unwrap_or_else(|e| e);
    if code == "200" {
        Ok(())
    } else {
        Err(format!("/readyz on {} answered {code}", rec.proxy_admin()))
    }
}

/// The mode the proxy reports on `/readyz` (`production`/`development`).
pub fn proxy_mode(rec: &Record) -> Result<String, String> {
    let body = run_cmd(Command::new("curl").args([
        "-s",
        "-m",
        "2",
        &format!("http://{}/readyz", rec.proxy_admin()),
    ]))?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/readyz is not JSON: {e}"))?;
    v.get("mode")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "/readyz reports no mode".to_owned())
}

/// The API's `/readyz` over TLS on its address (the egress network),
/// trusting only its own certificate: `Ok` on a 200.
pub fn api_ready(layout: &Layout, rec: &Record) -> Result<(), String> {
    // Verified TLS, like the container's healthcheck: the certificate must
    // chain to the appliance's own (`DIR/api/tls-cert.pem`, or what you put
    // there) and name the API's address; no `curl -k`.
    let url = format!("https://{}/readyz", rec.api_addr());
    match probe::check(&url, Some(&layout.api_cert())) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "API {url} (certificate checked against {}): {e}",
            layout.api_cert().display()
        )),
    }
}

/// Which TLS versions the API accepts: `(version, accepted)` for 1.0 to 1.3
/// (`openssl s_client`, one handshake each).
pub fn api_tls_versions(rec: &Record) -> Vec<(&'static str, bool)> {
    ["tls1", "tls1_1", "tls1_2", "tls1_3"]
        .into_iter()
        .map(|v| {
            let ok = Command::new("openssl")
                .args(["s_client", "-connect", &rec.api_addr(), &format!("-{v}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            (v, ok)
        })
        .collect()
}

/// The worker's `/readyz` (its store answers) over its unix socket: `Ok` on a 200.
pub fn worker_ready(layout: &Layout) -> Result<(), String> {
    let code = run_cmd(
        Command::new("curl")
            .args(["-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--unix-socket")
            .arg(layout.worker_socket())
            .arg("http://worker/readyz"),
    )
    .unwrap_or_else(|e| e);
    if code == "200" {
        Ok(())
    } else {
        Err(format!("worker /readyz answered {code}"))
    }
}

/// The worker's own start-up check, run now: the store opens and the
/// master key decrypts every credential in it.
pub fn worker_store_check(layout: &Layout, rec: &Record) -> Result<(), String> {
    run_cmd(
        Command::new(&rec.controller_bin)
            .arg("worker")
            .arg("--check")
            .arg("--policy")
            .arg(layout.policy())
            .arg(format!("--store={}", layout.worker_store()))
            .arg(format!("--proxy-admin={}", rec.proxy_admin()))
            .env("CHOKEPOINT_ENV", "production")
            .envs(layout.worker_env()),
    )
    .map(|_| ())
}

/// Remove everything `up` recorded. Idempotent; a directory without our
/// record is left alone.
pub fn down(layout: &Layout) -> Result<(), String> {
    let Some(rec) = layout.load_record() else {
        return Err(format!(
            "{} holds no appliance.json: nothing of ours to remove",
            layout.dir.display()
        ));
    };
    let mut problems = Vec::new();
    // The controller first: it would recreate what we remove.
    if let Some(pid) = rec.controller_pid {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("egress-controller") {
            // Its children (the supervised worker), by pid: a killed
            // controller does not stop them.
            let children: Vec<String> = Command::new("pgrep")
                .args(["-P", &pid.to_string()])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let _ = Command::new("kill").arg(pid.to_string()).status();
            for c in &children {
                let _ = Command::new("kill").arg(c).status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
    let base: ipnet::Ipv4Net = rec
        .subnet_base
        .parse()
        .unwrap_or_else(|_| "10.231.0.0/16".parse().unwrap_or_default());
    let cfg = layout.controller_config(base);
    let state = State::load(&layout.state_dir());
    let mut nets: Vec<crate::network::OrgNetwork> = state
        .subnets
        .iter()
        .filter_map(|(org, s)| crate::network::org_network(org, *s))
        .collect();
    if let Ok(planned) = planned_networks(&cfg) {
        for n in planned {
            if !nets.iter().any(|m| m.name == n.name) {
                nets.push(n);
            }
        }
    }
    // Exec containers (anything on an org network but the proxy), then compose.
    for n in &nets {
        if let Ok(ids) = run_cmd(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("network={}", n.name),
        ])) {
            for id in ids.split_whitespace() {
                let _ = run_cmd(Command::new("docker").args(["rm", "-f", id]));
            }
        }
    }
    if layout.dir.join("compose.yaml").is_file()
        && let Err(e) = compose(
            layout,
            &rec,
            &["down", "--remove-orphans", "--timeout", "5"],
        )
    {
        problems.push(e);
    }
    let _ = run_cmd(Command::new("docker").args(["rm", "-f", PROXY_CONTAINER, "chokepoint-api"]));
    for n in &nets {
        if let Err(e) = run_cmd(Command::new("docker").args(["network", "rm", &n.name]))
            && !e.contains("No such network")
            && !e.contains("not found")
        {
            problems.push(e);
        }
    }
    let _ = run_cmd(Command::new("docker").args(["network", "rm", EGRESS_NETWORK]));
    crate::network::remove_docker_user_rules(&nets, PROXY_PORT);
    for family in ["inet", "bridge"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, crate::firewall::TABLE])
            .stderr(Stdio::null())
            .status();
    }
    for image in &rec.images {
        let _ = containers::remove_image(image);
    }
    for unit in &rec.units {
        if let Err(e) = std::fs::remove_file(unit)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("{}: {e}", unit.display()));
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&layout.dir) {
        problems.push(format!("{}: {e}", layout.dir.display()));
    }
    if problems.is_empty() {
        say("appliance removed")
    } else {
        Err(problems.join("; "))
    }
}
