//! Kernel isolation end to end on the real Docker daemon: the real
//! `egress-controller` sets up two orgs, the real `egress-proxy` runs in a
//! FROM-scratch image attached to both org networks and to an "outside"
//! network, hardened busybox exec containers probe every path with
//! `docker exec`.
//!
//! Every address here belongs to Docker networks this test creates
//! (10.240.0.0/16 for the orgs, 10.241.N.0/24 outside, 10.243.0.0/16 and
//! 10.244.0.0/16 for the DNS and subnet tests) or to loopback; everything
//! is removed at the end, also when the test fails, including the nft
//! tables, the DOCKER-USER chain as Docker made it, and /etc/resolv.conf.
//! The tests share the host's `chokepoint` tables, so they run one at a
//! time (`SERIAL`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_egress-controller");

/// One test at a time: they all own the host's `chokepoint` tables.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything the test created, removed on drop.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
    dirs: Vec<PathBuf>,
    daemon: Option<std::process::Child>,
    org_nets: Option<Vec<controller::network::OrgNetwork>>,
    /// Addresses added by hand to a bridge: (address/prefix, device).
    addrs: Vec<(String, String)>,
    /// Restore Docker's DOCKER-USER chain (a test deletes it).
    docker_user: bool,
    /// Restore /etc/resolv.conf to this text.
    resolv_conf: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Some(text) = self.resolv_conf.take() {
            let _ = std::fs::write("/etc/resolv.conf", text);
        }
        if self.docker_user {
            restore_docker_user();
        }
        for (a, dev) in &self.addrs {
            let _ = Command::new("ip")
                .args(["addr", "del", a, "dev", dev])
                .status();
        }
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
        for family in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, "chokepoint"])
                .status();
        }
        if let Some(nets) = &self.org_nets {
            controller::network::remove_docker_user_rules(nets, 3128);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Put back DOCKER-USER as Docker makes it (a chain that returns, jumped to
/// first from FORWARD), if a test deleted it.
fn restore_docker_user() {
    let ipt = |args: &[&str]| {
        Command::new("iptables")
            .arg("-w")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ipt(&["-S", "DOCKER-USER"]) {
        ipt(&["-N", "DOCKER-USER"]);
        ipt(&["-A", "DOCKER-USER", "-j", "RETURN"]);
    }
    if !ipt(&["-C", "FORWARD", "-j", "DOCKER-USER"]) {
        ipt(&["-I", "FORWARD", "1", "-j", "DOCKER-USER"]);
    }
}

/// Real listeners on the host side of an exec bridge: TCP (accepts), UDP
/// (answers a TFTP read request with one short data block, so busybox
/// `tftp` completes) and DNS (the harness server, recording every query).
struct HostListeners {
    dns: e2e::dns::DnsServer,
    _stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HostListeners {
    fn start(ip: &str, tcp: u16, udp: u16) -> HostListeners {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = TcpListener::bind((ip, tcp)).unwrap();
        t.set_nonblocking(true).unwrap();
        let st = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                match t.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"host\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let u = UdpSocket::bind((ip, udp)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let st = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok((_, peer)) = u.recv_from(&mut buf) {
                    // Opcode 3 (DATA), block 1, 3 bytes: the whole file.
                    if buf[..2] == [0, 1] {
                        let _ = u.send_to(b"\x00\x03\x00\x01ok\n", peer);
                    }
                }
            }
        });
        let dns = e2e::dns::DnsServer::start_on(SocketAddr::new(ip.parse().unwrap(), 53));
        dns.set_static("probe.chokepoint.test", &["192.0.2.99".parse().unwrap()]);
        HostListeners { dns, _stop: stop }
    }
}

impl Drop for HostListeners {
    fn drop(&mut self) {
        self._stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a probe from an exec container sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// busybox nc: a TCP connect.
    Tcp,
    /// busybox tftp: a UDP request that needs an answer.
    Udp,
    /// busybox ping: an ICMP echo request.
    Icmp,
    /// busybox nslookup against that server.
    Dns,
}

/// One probe from `from` (2 s budget): whether it got through.
fn probe(from: &str, kind: Kind, ip: &str, port: u16) -> bool {
    let script = match kind {
        Kind::Tcp => format!("nc -w 2 {ip} {port} </dev/null"),
        Kind::Udp => format!("timeout 3 tftp -g -r probe -l /tmp/probe {ip} {port}"),
        Kind::Icmp => format!("ping -c 1 -W 2 {ip}"),
        Kind::Dns => format!("timeout 3 nslookup probe.chokepoint.test {ip}"),
    };
    docker(&["exec", from, "/bin/sh", "-c", &script])
        .status
        .success()
}

fn egress_proxy_binary() -> PathBuf {
    // Built by `cargo test --workspace` beside egressctl / egress-controller.
    let dir = Path::new(CONTROLLER).parent().unwrap();
    let bin = dir.join("egress-proxy");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p egress-proxy` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// Whether `from` opens a TCP connection to ip:port (busybox nc, 2 s).
fn reaches(from: &str, ip: &str, port: u16) -> bool {
    docker(&[
        "exec",
        from,
        "/bin/sh",
        "-c",
        &format!("nc -w 2 {ip} {port} </dev/null"),
    ])
    .status
    .success()
}

/// GET through the proxy from `from` (a raw absolute-form request over
/// busybox nc: the static busybox's wget crashes resolving without NSS);
/// the response, or None if nothing came back or it was not a 200.
fn get_via_proxy(from: &str, proxy: &str, url: &str) -> Option<String> {
    let script =
        format!("(printf 'GET {url} HTTP/1.0\\r\\n\\r\\n'; sleep 2) | nc -w 5 {proxy} 3128");
    let out = docker(&["exec", from, "/bin/sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

fn container_ip(name: &str, network: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        name,
    ])
}

#[test]
fn exec_containers_reach_only_the_proxy() {
    let have_docker = docker(&["info", "--format", "{{.ServerVersion}}"])
        .status
        .success();
    let have_nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !e2e::require(
        "the Docker daemon and nft (as root)",
        have_docker && have_nft,
    ) {
        return;
    }
    let _serial = serial();
    let pid = std::process::id();
    let mut clean = Cleanup::default();
    let tmp = std::env::temp_dir().join(format!("chokepoint-docker-e2e-{pid}"));
    std::fs::create_dir_all(tmp.join("cfg")).unwrap();
    std::fs::create_dir_all(tmp.join("state")).unwrap();
    clean.dirs.push(tmp.clone());

    // Images, FROM scratch (no registry).
    let exec_image = format!("chokepoint-e2e-exec:{pid}");
    let proxy_image = format!("chokepoint-e2e-proxy:{pid}");
    containers::build_scratch_image(&containers::ImageSpec::exec(&exec_image)).unwrap();
    clean.images.push(exec_image.clone());
    containers::build_scratch_image(&containers::ImageSpec::service(
        &proxy_image,
        vec![egress_proxy_binary()],
    ))
    .unwrap();
    clean.images.push(proxy_image.clone());

    // The outside: a normal network with a web server on it.
    let third = 10 + (pid % 200);
    let outside_net = format!("cp-e2e-out-{pid}");
    let outside_ip = format!("10.241.{third}.10");
    docker_ok(&[
        "network",
        "create",
        "--subnet",
        &format!("10.241.{third}.0/24"),
        &outside_net,
    ]);
    clean.networks.push(outside_net.clone());
    let server = format!("cp-e2e-server-{pid}");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &server,
        "--network",
        &outside_net,
        "--ip",
        &outside_ip,
        &exec_image,
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/etc",
    ]);
    clean.containers.push(server.clone());

    // Two orgs; the outside server is private, so the proxy's policy allows it
    // explicitly (a test exception, named as such).
    let (org_a, org_b) = (format!("t{pid}a"), format!("t{pid}b"));
    let policy = format!(
        "version: v1\nunsafe_allow_ranges: [{outside_ip}/32]\norgs:\n  {org_a}:\n    clients: [192.0.2.0/30]\n  {org_b}:\n    clients: [192.0.2.4/30]\n"
    );
    let policy_path = tmp.join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();

    // The proxy container exists before the controller attaches it.
    let proxy = format!("cp-e2e-proxy-{pid}");
    docker_ok(&[
        "create",
        "--name",
        &proxy,
        "--network",
        &outside_net,
        "-v",
        &format!("{}:/cfg:ro", tmp.join("cfg").display()),
        &proxy_image,
        "/usr/local/bin/egress-proxy",
        "--policy",
        "/cfg/proxy.yaml",
        "--listen",
        "0.0.0.0:3128",
        "--admin-listen",
        "0.0.0.0:9090",
        "--dns-server",
        "127.0.0.1:53",
    ]);
    clean.containers.push(proxy.clone());

    let (net_a, net_b) = (format!("chokepoint-{org_a}"), format!("chokepoint-{org_b}"));
    clean.networks.push(net_a.clone());
    clean.networks.push(net_b.clone());
    let controller_args = |once: bool| {
        let mut a = vec![
            "--policy".to_owned(),
            policy_path.display().to_string(),
            "--subnet-base".to_owned(),
            "10.240.0.0/16".to_owned(),
            "--proxy-container".to_owned(),
            proxy.clone(),
            "--proxy-policy-out".to_owned(),
            tmp.join("cfg/proxy.yaml").display().to_string(),
            "--state-dir".to_owned(),
            tmp.join("state").display().to_string(),
            "--ruleset-file".to_owned(),
            tmp.join("state/nft-ruleset.json").display().to_string(),
            "--data-root".to_owned(),
            tmp.join("orgs").display().to_string(),
        ];
        if once {
            a.push("--once".to_owned());
        } else {
            a.extend(["--interval-secs".to_owned(), "1".to_owned()]);
        }
        a
    };
    let once = || {
        let out = Command::new(CONTROLLER)
            .args(controller_args(true))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "controller: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pass_report(&out.stdout)
    };
    clean.org_nets = Some(
        controller::network::plan(
            &[org_a.clone(), org_b.clone()],
            "10.240.0.0/16".parse().unwrap(),
        )
        .unwrap(),
    );
    let first = once();
    // DOCKER-USER accepts are removed on drop at the subnets really given
    // out (another run's networks may hold the first ones).
    clean.org_nets = Some(
        controller::reconcile::State::load(&tmp.join("state"))
            .subnets
            .iter()
            .filter_map(|(org, subnet)| controller::network::org_network(org, *subnet))
            .collect(),
    );
    assert_eq!(
        first["networks_created"].as_array().unwrap().len(),
        2,
        "{first}"
    );
    assert_eq!(
        first["proxy_attached"].as_array().unwrap().len(),
        2,
        "{first}"
    );
    assert_eq!(first["nft_applied"], true);
    // Idempotent: a second pass changes nothing.
    let second = once();
    assert!(
        second["networks_created"].as_array().unwrap().is_empty()
            && second["proxy_attached"].as_array().unwrap().is_empty()
            && second["nft_applied"] == false
            && second["proxy_policy_written"] == false
            && second["docker_user_rules_inserted"] == 0,
        "second pass changed something: {second}"
    );
    docker_ok(&["start", &proxy]);
    // Networks are what the issue asks for.
    let inspect = docker_ok(&["network", "inspect", &net_a]);
    for needle in [
        "\"Internal\": true",
        "\"com.docker.network.bridge.enable_icc\": \"false\"",
        "\"com.docker.network.bridge.inhibit_ipv4\": \"true\"",
        "10.240.0.128/25",
        "\"com.docker.network.bridge.name\": \"cp-0af000\"",
    ] {
        assert!(inspect.contains(needle), "{net_a} lacks {needle}");
    }
    // The bridge the IPv6 rules name is the one Docker made.
    let link = std::process::Command::new("ip")
        .args(["link", "show", "cp-0af000"])
        .output()
        .unwrap();
    assert!(link.status.success(), "no bridge cp-0af000 on the host");
    let inet = std::process::Command::new("nft")
        .args(["list", "table", "inet", "chokepoint"])
        .output()
        .unwrap();
    let inet = String::from_utf8_lossy(&inet.stdout);
    assert!(inet.contains("iifname \"cp-0af000\" drop"), "{inet}");

    // Exec containers, hardened, on their org's network only.
    let data_root = tmp.join("orgs");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut exec = |org: &str, net: &str, name: &str| {
        std::fs::create_dir_all(data_root.join(org)).unwrap();
        let spec = containers::HardenedSpec::new(
            containers::OrgId::parse(org).unwrap(),
            exec_image.clone(),
            data_root.clone(),
            net.to_owned(),
            vec![
                "/bin/busybox".into(),
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "8080".into(),
                "-h".into(),
                "/etc".into(),
            ],
        );
        rt.block_on(async {
            let d = containers::connect().await.unwrap();
            containers::create_hardened(&d, &spec, name).await.unwrap();
        });
        clean.containers.push(name.to_owned());
        docker_ok(&["start", name]);
    };
    let (a1, a2, b1) = (
        format!("cp-e2e-a1-{pid}"),
        format!("cp-e2e-a2-{pid}"),
        format!("cp-e2e-b1-{pid}"),
    );
    exec(&org_a, &net_a, &a1);
    exec(&org_a, &net_a, &a2);
    exec(&org_b, &net_b, &b1);
    // A new container never gets the proxy's address.
    let newcomer = format!("cp-e2e-new-{pid}");
    exec(&org_a, &net_a, &newcomer);
    assert_ne!(container_ip(&newcomer, &net_a), "10.240.0.2");
    let (proxy_a, proxy_b) = ("10.240.0.2", "10.240.1.2");
    let (a2_ip, b1_ip) = (container_ip(&a2, &net_a), container_ip(&b1, &net_b));
    assert!(
        a2_ip.starts_with("10.240.0.")
            && a2_ip.rsplit('.').next().unwrap().parse::<u8>().unwrap() >= 128,
        "{a2_ip}"
    );

    // Wait until the proxy listens (it starts in a moment).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reaches(&a1, proxy_a, 3128) {
        if Instant::now() > deadline {
            let logs = docker(&["logs", "--tail", "20", &proxy]);
            let state = docker(&[
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.ExitCode}}",
                &proxy,
            ]);
            panic!(
                "proxy never reachable from {a1}: state {} logs {}{}",
                String::from_utf8_lossy(&state.stdout),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = format!("http://{outside_ip}:8080/passwd");
    let body = get_via_proxy(&a1, proxy_a, &url).unwrap_or_else(|| {
        let logs = docker(&["logs", "--tail", "5", &proxy]);
        panic!(
            "GET through the proxy failed; proxy: {}",
            String::from_utf8_lossy(&logs.stdout)
        )
    });
    assert!(body.contains("65532"), "{body}");
    assert!(
        get_via_proxy(&b1, proxy_b, &url).is_some(),
        "org b through its proxy address"
    );

    // A real listener on the host side of org a's bridge. Docker gives the
    // bridge no address (inhibit_ipv4); one is added by hand, standing for
    // any host address an exec container could aim at.
    let host_ip = "10.240.0.1";
    let added = Command::new("ip")
        .args(["addr", "add", "10.240.0.1/24", "dev", "cp-0af000"])
        .status()
        .unwrap();
    assert!(added.success());
    clean
        .addrs
        .push(("10.240.0.1/24".into(), "cp-0af000".into()));
    let host = HostListeners::start(host_ip, 2222, 6969);
    // The hardened exec containers cannot send ICMP at all (no CAP_NET_RAW,
    // ping sockets off); the ICMP probes come from a container that can
    // (root with CAP_NET_RAW), standing for one outside HardenedSpec.
    let pinger = format!("cp-e2e-ping-{pid}");
    {
        let spec = containers::HardenedSpec::new(
            containers::OrgId::parse(&org_a).unwrap(),
            exec_image.clone(),
            data_root.clone(),
            net_a.clone(),
            vec!["/bin/sleep".into(), "600".into()],
        );
        let mut body = spec.to_create_body().unwrap();
        body.user = Some("0:0".into());
        body.host_config.as_mut().unwrap().cap_add = Some(vec!["NET_RAW".into()]);
        rt.block_on(async {
            let d = containers::connect().await.unwrap();
            let opts = containers::bollard::query_parameters::CreateContainerOptionsBuilder::new()
                .name(&pinger)
                .build();
            d.create_container(Some(opts), body).await.unwrap();
        });
        clean.containers.push(pinger.clone());
        docker_ok(&["start", &pinger]);
    }
    assert!(
        !probe(&a1, Kind::Icmp, host_ip, 0),
        "a hardened exec container sent ICMP"
    );
    let from = |kind: Kind| {
        if kind == Kind::Icmp {
            pinger.as_str()
        } else {
            a1.as_str()
        }
    };
    let host_probes = [
        (Kind::Tcp, 2222),
        (Kind::Udp, 6969),
        (Kind::Icmp, 0),
        (Kind::Dns, 53),
    ];
    // Baseline: without chokepoint's tables, every probe gets there.
    for family in ["inet", "bridge"] {
        let ok = Command::new("nft")
            .args(["delete", "table", family, "chokepoint"])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    for (kind, port) in host_probes {
        assert!(
            probe(from(kind), kind, host_ip, port),
            "baseline: {kind:?} {host_ip}:{port} should be reachable without the tables"
        );
    }
    assert!(host.dns.seen("probe.chokepoint.test") >= 1);
    // A pass sees the drift and restores the tables: the same probes fail.
    let third = once();
    assert_eq!(third["drift_repaired"], true, "{third}");
    let seen = host.dns.seen("probe.chokepoint.test");
    for (kind, port) in host_probes {
        assert!(
            !probe(from(kind), kind, host_ip, port),
            "{kind:?} {host_ip}:{port} reachable with the tables"
        );
    }
    assert_eq!(
        host.dns.seen("probe.chokepoint.test"),
        seen,
        "a DNS query reached the host with the tables"
    );
    assert!(
        get_via_proxy(&a1, proxy_a, &url).is_some(),
        "the proxy path survives"
    );

    // Every other path is blocked.
    let blocked = [
        (
            "exec -> outside directly",
            a1.as_str(),
            outside_ip.as_str(),
            8080,
        ),
        ("exec -> proxy admin port", a1.as_str(), proxy_a, 9090),
        ("exec -> exec, same org", a1.as_str(), a2_ip.as_str(), 8080),
        (
            "exec -> other org's exec",
            a1.as_str(),
            b1_ip.as_str(),
            8080,
        ),
        (
            "exec -> other org's proxy address",
            a1.as_str(),
            proxy_b,
            3128,
        ),
        (
            "exec -> host bridge address (listening)",
            a1.as_str(),
            "10.240.0.1",
            2222,
        ),
        ("other org -> exec", b1.as_str(), a2_ip.as_str(), 8080),
    ];
    for (what, from, ip, port) in blocked {
        assert!(
            !reaches(from, ip, port),
            "{what} ({from} -> {ip}:{port}) was reachable"
        );
    }
    for (what, ip) in [
        ("ping proxy", proxy_a),
        ("ping exec, same org", a2_ip.as_str()),
        ("ping other org's exec", b1_ip.as_str()),
        ("ping outside", outside_ip.as_str()),
    ] {
        assert!(!probe(&pinger, Kind::Icmp, ip, 0), "{what} ({ip}) answered");
    }
    assert!(
        !probe(&a1, Kind::Dns, &outside_ip, 53),
        "DNS to the outside answered"
    );

    // IPv6: the nft rules cover IPv4 only (docs/threat-model-kernel.md);
    // they rely on Docker leaving exec containers on internal networks
    // without IPv6, and on the container being unable to turn it on. Prove
    // both on the live containers, so a daemon that behaves otherwise fails
    // here instead of leaving an unfiltered path.
    for c in [a1.as_str(), b1.as_str()] {
        let out = docker(&[
            "exec",
            c,
            "/bin/sh",
            "-c",
            "cat /proc/net/if_inet6 && echo READ; echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo ENABLED",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("READ"), "{c}: cannot read if_inet6: {text}");
        assert!(
            !text.lines().any(|l| l.trim_end().ends_with("eth0")),
            "{c} has an IPv6 address on eth0: {text}"
        );
        assert!(!text.contains("ENABLED"), "{c} could enable IPv6: {text}");
    }

    // Delete the table by hand: the running controller restores it.
    let daemon_log = tmp.join("daemon.log");
    clean.daemon = Some(
        Command::new(CONTROLLER)
            .args(controller_args(false))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&daemon_log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let ok = Command::new("nft")
        .args(["delete", "table", "bridge", "chokepoint"])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_for_tables(
        &["bridge"],
        &daemon_log,
        "the controller did not restore the table",
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.join("state/state.json")).unwrap()).unwrap();
    assert!(
        state["controller_drift_total"].as_u64().unwrap() >= 1,
        "{state}"
    );
    let prom = std::fs::read_to_string(tmp.join("state/controller.prom")).unwrap();
    assert!(prom.contains("controller_drift_total"), "{prom}");
    assert!(!reaches(&a1, proxy_a, 9090));

    // Run-time checks: an exec container attached to a second network, one
    // created without the hardened spec's DNS setting, and the root pinger
    // are disconnected and stopped by the running controller.
    docker_ok(&["network", "connect", "bridge", &a2]);
    let rogue = format!("cp-e2e-rogue-{pid}");
    {
        let spec = containers::HardenedSpec::new(
            containers::OrgId::parse(&org_a).unwrap(),
            exec_image.clone(),
            data_root.clone(),
            net_a.clone(),
            vec!["/bin/sleep".into(), "60".into()],
        );
        let mut body = spec.to_create_body().unwrap();
        body.host_config.as_mut().unwrap().dns = None;
        rt.block_on(async {
            let d = containers::connect().await.unwrap();
            let opts = containers::bollard::query_parameters::CreateContainerOptionsBuilder::new()
                .name(&rogue)
                .build();
            d.create_container(Some(opts), body).await.unwrap();
        });
        clean.containers.push(rogue.clone());
        docker_ok(&["start", &rogue]);
    }
    for c in [a2.as_str(), rogue.as_str(), pinger.as_str()] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while docker_ok(&["inspect", "-f", "{{.State.Running}}", c]) == "true" {
            assert!(
                Instant::now() < deadline,
                "{c} still running: {}",
                std::fs::read_to_string(&daemon_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let nets = docker_ok(&["inspect", "-f", "{{len .NetworkSettings.Networks}}", c]);
        assert_eq!(nets, "0", "{c} still attached");
    }
    assert!(
        reaches(&a1, proxy_a, 3128),
        "a good container is left alone"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.join("state/state.json")).unwrap()).unwrap();
    assert!(
        state["controller_containers_stopped_total"]
            .as_u64()
            .unwrap()
            >= 2,
        "{state}"
    );

    // Proxy down: nothing gets out.
    docker_ok(&["stop", "-t", "2", &proxy]);
    assert!(
        get_via_proxy(&a1, proxy_a, &url).is_none(),
        "GET succeeded with the proxy stopped"
    );
    assert!(!reaches(&a1, proxy_a, 3128));
    assert!(!reaches(&a1, &outside_ip, 8080));

    // The rules come first: with the proxy container gone, Docker's
    // DOCKER-USER chain deleted (as `flush ruleset` would) and both tables
    // deleted, the running controller restores the tables; the Docker
    // steps' failures are reported on their own.
    // Only what the daemon logs from here on counts below.
    let log_before = std::fs::metadata(&daemon_log).map_or(0, |m| m.len()) as usize;
    docker_ok(&["rm", "-f", &proxy]);
    clean.docker_user = true;
    // One transaction, so the running controller cannot put its accepts
    // back between the flush and the delete.
    let mut restore = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    restore
        .stdin
        .take()
        .unwrap()
        .write_all(b"*filter\n-D FORWARD -j DOCKER-USER\n-F DOCKER-USER\n-X DOCKER-USER\nCOMMIT\n")
        .unwrap();
    assert!(restore.wait().unwrap().success(), "deleting DOCKER-USER");
    assert!(
        !Command::new("iptables")
            .args(["-w", "-S", "DOCKER-USER"])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "DOCKER-USER still there"
    );
    for family in ["inet", "bridge"] {
        let ok = Command::new("nft")
            .args(["delete", "table", family, "chokepoint"])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    wait_for_tables(
        &["inet", "bridge"],
        &daemon_log,
        "the controller did not restore the tables without the proxy and DOCKER-USER",
    );
    restore_docker_user();
    for (kind, port) in host_probes.into_iter().filter(|(k, _)| *k != Kind::Icmp) {
        assert!(
            !probe(&a1, kind, host_ip, port),
            "{kind:?} after the restore"
        );
    }
    if let Some(mut d) = clean.daemon.take() {
        let _ = d.kill();
        let _ = d.wait();
    }
    let full = std::fs::read_to_string(&daemon_log).unwrap();
    let log = full.get(log_before..).unwrap_or(&full);
    // The proxy's loss is reported as its own step. DOCKER-USER is either
    // reported missing or, when the daemon recreated the chain first (it
    // does on network events), our accepts were inserted into it again.
    let reinserted = log
        .split("\"docker_user_rules_inserted\":")
        .skip(1)
        .any(|rest| {
            rest.as_bytes()
                .first()
                .is_some_and(|b| (b'1'..=b'9').contains(b))
        });
    assert!(
        log.contains("\"step\":\"proxy_attach\"")
            && (log.contains("\"step\":\"docker_user\"") || reinserted),
        "{log}"
    );
}

/// The report of the `reconcile` line of `--once`'s output (the
/// `docker_daemon` line comes first).
fn pass_report(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let daemon = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "docker_daemon")
        .unwrap_or_else(|| panic!("no docker_daemon line: {text}"));
    assert!(daemon["version"].is_string(), "{daemon}");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "reconcile")
        .unwrap_or_else(|| panic!("no reconcile line: {text}"))["report"]
        .clone()
}

/// Wait (20 s at most) until the `chokepoint` table of each family exists.
fn wait_for_tables(families: &[&str], log: &Path, msg: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !families.iter().all(|f| {
        Command::new("nft")
            .args(["list", "table", f, "chokepoint"])
            .output()
            .unwrap()
            .status
            .success()
    }) {
        assert!(
            Instant::now() < deadline,
            "{msg}; controller log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the two smaller tests below share: the guard, a temp folder, the
/// exec image, a one-shot controller.
struct Small {
    clean: Cleanup,
    tmp: PathBuf,
    image: String,
    base: String,
    rt: tokio::runtime::Runtime,
}

impl Small {
    fn new(name: &str, base: &str) -> Small {
        let pid = std::process::id();
        let mut clean = Cleanup::default();
        let tmp = std::env::temp_dir().join(format!("chokepoint-{name}-{pid}"));
        std::fs::create_dir_all(tmp.join("state")).unwrap();
        std::fs::create_dir_all(tmp.join("orgs")).unwrap();
        clean.dirs.push(tmp.clone());
        let image = format!("chokepoint-{name}:{pid}");
        containers::build_scratch_image(&containers::ImageSpec::exec(&image)).unwrap();
        clean.images.push(image.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Small {
            clean,
            tmp,
            image,
            base: base.to_owned(),
            rt,
        }
    }

    /// Write a policy with these orgs and run `egress-controller --once`;
    /// the pass's report.
    fn once(&mut self, orgs: &[&str]) -> serde_json::Value {
        let mut policy = "version: v1\norgs:\n".to_owned();
        for (i, o) in orgs.iter().enumerate() {
            let clients = format!("192.0.2.{}/30", 4 * i);
            policy.push_str(&format!("  {o}:\n    clients: [{clients}]\n"));
            self.clean.networks.push(format!("chokepoint-{o}"));
        }
        let path = self.tmp.join("policy.yaml");
        std::fs::write(&path, policy).unwrap();
        let out = Command::new(CONTROLLER)
            .args(["--once", "--policy"])
            .arg(&path)
            .args(["--subnet-base", &self.base, "--state-dir"])
            .arg(self.tmp.join("state"))
            .arg("--ruleset-file")
            .arg(self.tmp.join("state/nft-ruleset.json"))
            .arg("--data-root")
            .arg(self.tmp.join("orgs"))
            .output()
            .unwrap();
        // Whatever the pass put in DOCKER-USER is removed on drop, at the
        // subnets it really gave out.
        let state = controller::reconcile::State::load(&self.tmp.join("state"));
        let nets = self.clean.org_nets.get_or_insert_with(Vec::new);
        for (org, subnet) in &state.subnets {
            if let Some(n) = controller::network::org_network(org, *subnet)
                && !nets.contains(&n)
            {
                nets.push(n);
            }
        }
        assert!(
            out.status.success(),
            "controller: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pass_report(&out.stdout)
    }

    /// Create and start a container from `spec`'s body, changed by `edit`.
    fn start(
        &mut self,
        spec: &containers::HardenedSpec,
        name: &str,
        edit: impl FnOnce(&mut containers::bollard::models::ContainerCreateBody),
    ) {
        let mut body = spec.to_create_body().unwrap();
        edit(&mut body);
        self.clean.containers.push(name.to_owned());
        self.rt.block_on(async {
            let d = containers::connect().await.unwrap();
            let opts = containers::bollard::query_parameters::CreateContainerOptionsBuilder::new()
                .name(name)
                .build();
            d.create_container(Some(opts), body).await.unwrap();
        });
        docker_ok(&["start", name]);
    }

    fn spec(&self, org: &str, net: &str) -> containers::HardenedSpec {
        std::fs::create_dir_all(self.tmp.join("orgs").join(org)).unwrap();
        containers::HardenedSpec::new(
            containers::OrgId::parse(org).unwrap(),
            self.image.clone(),
            self.tmp.join("orgs"),
            net.to_owned(),
            vec!["/bin/sleep".into(), "600".into()],
        )
    }
}

fn docker_and_nft() -> bool {
    let have_docker = docker(&["info", "--format", "{{.ServerVersion}}"])
        .status
        .success();
    let have_nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    e2e::require(
        "the Docker daemon and nft (as root)",
        have_docker && have_nft,
    )
}

/// Docker's embedded DNS is not a way out (CVE-2024-29018): with the host's
/// resolver on loopback (a recording DNS server on 127.0.0.153:53, added to
/// /etc/resolv.conf for the seconds it takes to start two containers), a
/// container created without the DNS setting gets a canary name to it on an
/// affected daemon (so the probe can fail), while the hardened spec's
/// container (DNS server = its network's gateway) gets nothing out;
/// `verify_exec` names the first and a pass stops it.
#[test]
fn exec_dns_does_not_leave_through_a_loopback_host_resolver() {
    if !docker_and_nft() {
        return;
    }
    let _serial = serial();
    let pid = std::process::id();
    let mut w = Small::new("dns-e2e", "10.243.0.0/16");
    let org = format!("d{pid}");
    let net = format!("chokepoint-{org}");
    w.once(&[&org]);
    let version = docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    let affected = controller::daemon::cve_2024_29018_affected(&version);

    let resolver = e2e::dns::DnsServer::start_on("127.0.0.153:53".parse().unwrap());
    let original = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    w.clean.resolv_conf = Some(original.clone());
    // Appended: the host's own lookups still go to its first server.
    std::fs::write(
        "/etc/resolv.conf",
        format!("{}\nnameserver 127.0.0.153\n", original.trim_end()),
    )
    .unwrap();
    let (exposed, hardened) = (
        format!("cp-dns-exposed-{pid}"),
        format!("cp-dns-hard-{pid}"),
    );
    let mut spec = w.spec(&org, &net);
    w.start(&spec, &exposed, |b| {
        b.host_config.as_mut().unwrap().dns = None
    });
    spec.dns = "10.243.0.1".parse().unwrap(); // the gateway: no host address
    w.start(&spec, &hardened, |_| {});
    std::fs::write("/etc/resolv.conf", &original).unwrap();
    w.clean.resolv_conf = None;

    let lookup = |c: &str, name: &str| {
        docker(&[
            "exec",
            c,
            "/bin/sh",
            "-c",
            &format!("timeout 8 nslookup {name}"),
        ])
        .status
        .success()
    };
    let leak = format!("leak{pid}.exfil.test");
    lookup(&exposed, &leak);
    assert_eq!(
        resolver.seen(&leak) > 0,
        affected,
        "Docker {version}: a container without the DNS setting {} the host's loopback resolver",
        if affected { "did not reach" } else { "reached" }
    );
    let canary = format!("canary{pid}.exfil.test");
    assert!(
        !lookup(&hardened, &canary),
        "the hardened container resolved"
    );
    assert!(
        !docker(&[
            "exec",
            &hardened,
            "/bin/sh",
            "-c",
            &format!("timeout 5 nslookup {canary} 10.243.0.1")
        ])
        .status
        .success(),
        "a direct query to the gateway was answered"
    );
    assert_eq!(
        resolver.seen(&canary),
        0,
        "the canary reached the host's resolver"
    );

    let report = w.once(&[&org]);
    let stopped: Vec<&str> = report["containers_stopped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["container"].as_str().unwrap_or_default())
        .collect();
    assert!(stopped.iter().any(|c| c.contains(&exposed)), "{report}");
    assert!(!stopped.iter().any(|c| c.contains(&hardened)), "{report}");
    let findings = report["containers_stopped"].to_string();
    assert!(findings.contains("cp-dns"), "{findings}");
}

/// Orgs keep their subnet: [a, c], then [a, b, c], then [a, b] all pass; c
/// keeps its range while b is added, and c's network is drained (its
/// container stopped) and deleted when c leaves the policy.
#[test]
fn org_subnets_stay_put_and_removed_orgs_go() {
    if !docker_and_nft() {
        return;
    }
    let _serial = serial();
    let pid = std::process::id();
    let mut w = Small::new("subnets-e2e", "10.244.0.0/16");
    let (a, b, c) = (format!("s{pid}a"), format!("s{pid}b"), format!("s{pid}c"));
    let subnet = |org: &str| {
        docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            &format!("chokepoint-{org}"),
        ])
    };
    let first = w.once(&[&a, &c]);
    assert_eq!(
        first["networks_created"].as_array().unwrap().len(),
        2,
        "{first}"
    );
    let c_range = subnet(&c);
    assert_eq!(c_range, "10.244.1.0/24");
    let member = format!("cp-subnets-c-{pid}");
    let spec = w.spec(&c, &format!("chokepoint-{c}"));
    w.start(&spec, &member, |_| {});

    let second = w.once(&[&a, &b, &c]);
    assert_eq!(
        second["networks_created"],
        serde_json::json!([format!("chokepoint-{b}")])
    );
    assert_eq!(subnet(&c), c_range, "c moved");
    assert_eq!(subnet(&b), "10.244.2.0/24");
    assert!(
        second["containers_stopped"].as_array().unwrap().is_empty(),
        "{second}"
    );

    let third = w.once(&[&a, &b]);
    assert_eq!(
        third["networks_removed"],
        serde_json::json!([format!("chokepoint-{c}")])
    );
    assert!(
        !docker(&["network", "inspect", &format!("chokepoint-{c}")])
            .status
            .success(),
        "c's network is still there"
    );
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.Running}}", &member]),
        "false"
    );
    assert_eq!(subnet(&b), "10.244.2.0/24");
    let inet = Command::new("nft")
        .args(["list", "table", "inet", "chokepoint"])
        .output()
        .unwrap();
    let inet = String::from_utf8_lossy(&inet.stdout);
    assert!(
        inet.contains("10.244.2.0/24") && !inet.contains("10.244.1.0/24"),
        "{inet}"
    );
}
