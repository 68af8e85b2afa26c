//! The Proof (issue #17), on the real Docker daemon, from nothing:
//! `egressctl appliance up` in production; `egressctl status` all green;
//! `egressctl exec` in org acme fetches a page from a local origin through
//! the proxy and cannot reach it directly; stopping the proxy container
//! turns status red and leaves a running exec container with zero egress;
//! Ctrl-C on `egressctl exec` removes its container; `appliance down`
//! leaves no container, network, nft table, image, unit or file of ours.
//!
//! Everything lives in a temporary directory (`--dir`, `--unit-dir`) and on
//! Docker networks this test creates; the org subnets come from
//! 10.240.0.0/16. The origin's network uses 11.240.0.0/24, a public range,
//! because the production policy (rightly) refuses every private
//! destination; that network is a local Docker bridge, so no packet leaves
//! the machine. Cleaned up on failure too (`Cleanup`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const EGRESSCTL: &str = env!("CARGO_BIN_EXE_egressctl");
const ORIGIN_NET: &str = "cp-proof-origin";
const ORIGIN_IP: &str = "11.240.0.10";
const SUBNET_BASE: &str = "10.240.0.0/16";

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Cleanup {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "cp-proof-origin"]);
        let _ = docker(&[
            "network",
            "disconnect",
            "-f",
            ORIGIN_NET,
            "chokepoint-proxy",
        ]);
        let _ = docker(&["network", "rm", ORIGIN_NET]);
        if self.dir.join("appliance.json").exists() {
            let _ = Command::new(EGRESSCTL)
                .args(["appliance", "down", "--dir"])
                .arg(&self.dir)
                .output();
        }
    }
}

/// SIGCONT to a paused process on drop (even when the test fails).
struct Resume(String);
impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

fn egressctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(EGRESSCTL)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("CHOKEPOINT_ENV", "production")
        .output()
        .unwrap()
}

fn exec(dir: &Path, script: &str) -> Output {
    Command::new(EGRESSCTL)
        .args(["exec", "--org", "acme", "--dir"])
        .arg(dir)
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .unwrap()
}

fn status(dir: &Path) -> (i32, serde_json::Value) {
    let o = egressctl(dir, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&o)));
    (o.status.code().unwrap_or(-1), v)
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} line: {v}"))
}

/// A GET through the org's proxy: busybox wget follows HTTP_PROXY (its
/// `-T` makes the static busybox crash, hence `timeout`).
const FETCH: &str = "timeout 10 wget -qO- http://11.240.0.10:8080/";

#[test]
fn appliance_up_proves_every_boundary_and_down_leaves_nothing() {
    let have_docker = docker(&["info", "--format", "{{.ServerVersion}}"])
        .status
        .success();
    let have_tools = [
        ("nft", "--version"),
        ("docker-compose", "--version"),
        ("curl", "--version"),
        ("openssl", "version"),
    ]
    .iter()
    .all(|(t, arg)| {
        Command::new(t)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !e2e::require(
        "root, the Docker daemon, nft, docker-compose, curl and openssl",
        have_docker && have_tools && root,
    ) {
        return;
    }
    for bin in ["egress-proxy", "chokepoint-api"] {
        let path = Path::new(EGRESSCTL).parent().unwrap().join(bin);
        assert!(
            path.is_file(),
            "{} missing: run `cargo build -p egress-proxy -p chokepoint-api` (cargo test --workspace builds them)",
            path.display()
        );
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // The worker (uid 65534) and the proxy (65532) reach their own folders.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = tmp.path().join("etc");
    let units = tmp.path().join("units");
    let cleanup = Cleanup {
        dir: dir.clone(),
        _tmp: tmp,
    };

    // 1. From nothing, one command, production.
    let up = Command::new(EGRESSCTL)
        .args(["appliance", "up", "--subnet-base", SUBNET_BASE])
        .args(["--egress-subnet", "10.240.255.0/24", "--dir"])
        .arg(&dir)
        .arg("--unit-dir")
        .arg(&units)
        .env("CHOKEPOINT_ENV", "production")
        .output()
        .unwrap();
    assert!(up.status.success(), "appliance up: {}", text(&up));
    let token = std::fs::read_to_string(dir.join("proxy/admin-token")).unwrap();
    assert_eq!(token.len(), 64);
    let key = std::fs::read_to_string(dir.join("worker/master-key")).unwrap();
    for secret in [&token, &key] {
        assert!(!text(&up).contains(secret.trim()), "up printed a secret");
    }
    for f in [
        "proxy/admin-token",
        "worker/master-key",
        "worker/service-token",
        "api/jwt-key",
        "api/tls-key.pem",
        "controller.env",
    ] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    for u in ["chokepoint-nft.service", "chokepoint-controller.service"] {
        let unit = std::fs::read_to_string(units.join(u)).unwrap();
        assert!(unit.contains(&*dir.to_string_lossy()), "{u}: {unit}");
    }

    // Docker's own healthchecks (the binaries' --healthcheck self-probe):
    // every service of the compose project is `healthy`, not just running.
    let services = text(&docker(&[
        "ps",
        "--filter",
        "label=com.docker.compose.project=chokepoint",
        "--format",
        "{{.Names}}",
    ]));
    let mut services: Vec<&str> = services.lines().map(str::trim).collect();
    services.sort_unstable();
    assert_eq!(
        services,
        ["chokepoint-api", "chokepoint-proxy"],
        "compose services"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in services {
        loop {
            let h = text(&docker(&["inspect", "-f", "{{.State.Health.Status}}", c]));
            if h.trim() == "healthy" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{c}: {h}: {}",
                text(&docker(&["inspect", "-f", "{{json .State.Health}}", c]))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // 2. All green.
    let (code, v) = status(&dir);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["headline"], "All boundaries active", "{v:#}");
    assert_eq!(check(&v, "reaches_proxy")["ok"], true, "{v:#}");
    assert_eq!(check(&v, "worker_store")["ok"], true, "{v:#}");
    assert_eq!(check(&v, "production_mode")["ok"], true, "{v:#}");
    assert_eq!(
        check(&v, "api_tls")["detail"],
        "handshakes accepted: tls1_2, tls1_3",
        "{v:#}"
    );
    assert_eq!(check(&v, "api_ready")["ok"], true, "{v:#}");

    // `api_ready` verifies the API's certificate (no `curl -k`): against
    // another certificate for the very same address it is red.
    {
        use controller::cli::appliance::{Layout, api_ready, self_signed_cert};
        let layout = Layout::new(dir.clone());
        let rec = layout.load_record().expect("appliance.json");
        api_ready(&layout, &rec).unwrap();
        let other = tempfile::tempdir().unwrap();
        let other_layout = Layout::new(other.path().to_path_buf());
        std::fs::create_dir_all(other_layout.api_dir()).unwrap();
        let api_ip: std::net::IpAddr = rec.api_addr().rsplit_once(':').unwrap().0.parse().unwrap();
        self_signed_cert(
            api_ip,
            &other_layout.api_cert(),
            &other_layout.api_dir().join("tls-key.pem"),
        )
        .unwrap();
        let err = api_ready(&other_layout, &rec).unwrap_err();
        assert!(err.contains("certificate checked against"), "{err}");
    }

    // The API's metrics: on its own port of its egress-network address
    // (plain HTTP, not the TLS port), in the exposition format.
    let m = Command::new("curl")
        .args(["-s", "-m", "5", "http://10.240.255.3:9092/metrics"])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&m.stdout).into_owned();
    assert!(m.contains("chokepoint_api_requests_total{"), "{m}");
    assert!(m.contains("chokepoint_api_websocket_sessions 0"), "{m}");
    e2e::promtool::check_metrics(&m);

    // The controller's metrics (127.0.0.1:9091, what prometheus.yml
    // scrapes) carry its worker's series: the worker itself listens on a
    // 0600 unix socket Prometheus cannot reach.
    let m = Command::new("curl")
        .args(["-s", "-m", "5", "http://127.0.0.1:9091/metrics"])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&m.stdout).into_owned();
    assert!(m.contains("\ncontroller_worker_scrape_up 1\n"), "{m}");
    assert!(m.contains("controller_drift_total "), "{m}");
    assert!(m.contains("# TYPE worker_token_echo_total counter"), "{m}");
    let token = std::fs::read_to_string(dir.join("worker/service-token")).unwrap();
    assert!(
        !m.contains(token.trim()),
        "the service token is in /metrics"
    );
    e2e::promtool::check_metrics(&m);

    // 2b. A second org added to the policy: the controller picks it up on
    // its next pass (network, rules, the proxy's policy reloaded), and the
    // two orgs' canaries cannot reach each other.
    let policy = std::fs::read_to_string(dir.join("policy.yaml")).unwrap();
    let policy = policy.replace(
        "orgs:\n",
        "orgs:\n  globex:\n    clients: []\n    integrations: {}\n",
    );
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let proxy_policy = std::fs::read_to_string(dir.join("proxy/proxy-policy.yaml")).unwrap();
        let nets = text(&docker(&["network", "ls", "--format", "{{.Name}}"]));
        if proxy_policy.contains("globex") && nets.lines().any(|n| n == "chokepoint-globex") {
            break;
        }
        assert!(Instant::now() < deadline, "globex never came up");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, v) = status(&dir);
    assert_eq!(code, 0, "{v:#}");
    let cross: Vec<&serde_json::Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "no_other_org")
        .collect();
    assert_eq!(cross.len(), 2, "{v:#}");
    assert!(
        cross
            .iter()
            .all(|c| c["detail"].as_str().unwrap().starts_with("blocked")),
        "{v:#}"
    );

    // 2c. A broken kernel boundary turns status red: with the controller
    // paused (so it cannot repair the drift first), one of our chains is
    // flushed; `nft_tables` is red and status exits non-zero. Resumed, the
    // controller restores the rules (counted as drift) and status is green.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("appliance.json")).unwrap()).unwrap();
    let controller = rec["controller_pid"]
        .as_u64()
        .expect("controller pid")
        .to_string();
    let resume = Resume(controller.clone());
    assert!(
        Command::new("kill")
            .args(["-STOP", &controller])
            .status()
            .unwrap()
            .success()
    );
    let o = Command::new("nft")
        .args(["flush", "chain", "inet", "chokepoint", "forward"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (code, v) = status(&dir);
    assert_ne!(code, 0, "{v:#}");
    assert_ne!(v["headline"], "All boundaries active", "{v:#}");
    assert_eq!(check(&v, "nft_tables")["ok"], false, "{v:#}");
    assert_eq!(
        check(&v, "nft_tables")["detail"],
        "present, DIFFERENT from the rendered ruleset",
        "{v:#}"
    );
    let table = text(&egressctl(&dir, &["status"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains("nft_tables") && l.contains("FAIL")),
        "{table}"
    );
    drop(resume);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (code, v) = status(&dir);
        if code == 0 && check(&v, "nft_tables")["ok"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not repair: {v:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // 3. A page from a local origin through the proxy, never directly.
    let o = docker(&["network", "create", "--subnet", "11.240.0.0/24", ORIGIN_NET]);
    assert!(o.status.success(), "{}", text(&o));
    let o = docker(&[
        "run",
        "-d",
        "--name",
        "cp-proof-origin",
        "--network",
        ORIGIN_NET,
        "--ip",
        ORIGIN_IP,
        "--user",
        "65532",
        "--read-only",
        "chokepoint-exec:appliance",
        "/bin/sh",
        "-c",
        "for i in $(seq 1 200); do printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 12\\r\\n\\r\\nhello-proof\\n' | nc -l -p 8080; done",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = docker(&["network", "connect", ORIGIN_NET, "chokepoint-proxy"]);
    assert!(o.status.success(), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let o = exec(&dir, FETCH);
        let t = text(&o);
        if o.status.success() && t.contains("hello-proof") {
            break t;
        }
        assert!(Instant::now() < deadline, "no page through the proxy: {t}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(page.trim(), "hello-proof");
    let direct = exec(&dir, "nc -w 2 11.240.0.10 8080 </dev/null");
    assert!(!direct.status.success(), "reached the origin directly");
    assert_eq!(exec(&dir, "exit 7").status.code(), Some(7));

    // 4. Proxy down: red, and a running exec container has zero egress.
    let mut long = Command::new(EGRESSCTL)
        .args(["exec", "--org", "acme", "--dir"])
        .arg(&dir)
        .args(["--", "/bin/sh", "-c", "sleep 120"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let running = loop {
        let o = docker(&[
            "ps",
            "-q",
            "--filter",
            "network=chokepoint-acme",
            "--filter",
            "name=cp-exec-acme-",
        ]);
        let ids = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if !ids.is_empty() {
            break ids;
        }
        assert!(Instant::now() < deadline, "the exec container never ran");
        std::thread::sleep(Duration::from_millis(200));
    };
    let o = docker(&["stop", "-t", "1", "chokepoint-proxy"]);
    assert!(o.status.success(), "{}", text(&o));
    let (code, v) = status(&dir);
    assert_eq!(code, 1, "{v:#}");
    assert_ne!(v["headline"], "All boundaries active");
    assert_eq!(check(&v, "proxy_ready")["ok"], false, "{v:#}");
    assert_eq!(check(&v, "reaches_proxy")["ok"], false, "{v:#}");
    let proxy_ip = "10.240.0.2";
    for script in [
        format!("nc -w 2 {proxy_ip} 3128 </dev/null"),
        format!("nc -w 2 {ORIGIN_IP} 8080 </dev/null"),
        format!("ping -c 1 -W 2 {ORIGIN_IP}"),
        "timeout 3 nslookup example.com 127.0.0.11".to_owned(),
    ] {
        let o = docker(&["exec", &running, "/bin/sh", "-c", &script]);
        assert!(!o.status.success(), "proxy down, yet `{script}` got out");
    }

    // 5. Ctrl-C on `egressctl exec` removes its container.
    let _ = Command::new("kill")
        .args(["-INT", &long.id().to_string()])
        .status();
    let st = long.wait().unwrap();
    assert_eq!(st.code(), Some(130));
    let o = docker(&["ps", "-aq", "--filter", &format!("id={running}")]);
    assert!(
        String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "exec container left after Ctrl-C"
    );

    // 6. Down leaves nothing of ours.
    let _ = docker(&["rm", "-f", "cp-proof-origin"]);
    let _ = docker(&[
        "network",
        "disconnect",
        "-f",
        ORIGIN_NET,
        "chokepoint-proxy",
    ]);
    let _ = docker(&["network", "rm", ORIGIN_NET]);
    let down = egressctl(&dir, &["appliance", "down"]);
    assert!(down.status.success(), "appliance down: {}", text(&down));
    let names = text(&docker(&["ps", "-a", "--format", "{{.Names}}"]));
    assert!(
        !names
            .lines()
            .any(|n| n.starts_with("chokepoint") || n.starts_with("cp-")),
        "{names}"
    );
    let nets = text(&docker(&["network", "ls", "--format", "{{.Name}}"]));
    assert!(!nets.lines().any(|n| n.starts_with("chokepoint")), "{nets}");
    let images = text(&docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert!(!images.contains(":appliance"), "{images}");
    let tables = text(
        &Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap(),
    );
    assert!(!tables.contains("chokepoint"), "{tables}");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!units.join("chokepoint-nft.service").exists());
    assert!(!units.join("chokepoint-controller.service").exists());
    let ps = text(&Command::new("ps").args(["-eo", "args"]).output().unwrap());
    assert!(
        !ps.lines().any(|l| l.contains(&*dir.to_string_lossy())),
        "a process of the appliance is still running: {ps}"
    );
    drop(cleanup);
    eprintln!("proof took {:?}", started.elapsed());
}
