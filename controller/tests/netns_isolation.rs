//! Kernel isolation proven with real packets: network namespaces joined by a
//! bridge stand for exec containers, the proxy, the Docker host and the
//! outside; the rendered ruleset is applied inside the "host" namespace and
//! every path is probed with real packets: TCP connects, UDP echoes, ICMP
//! echo requests and DNS queries, each against a real listener, each first
//! shown to succeed without the rules. A spoofed source address and a TCP
//! connection opened from the proxy's port are probed too.
//!
//! Topology (all addresses exist only inside namespaces this test creates;
//! the IPv6 ones are a unique-local /64, fd77::/64, on the bridge segment):
//! ```text
//!  ex1 10.77.0.11 fd77::11 ─┐
//!  ex2 10.77.0.12 fd77::12 ─┼─ br0 10.77.0.1 fd77::1 [sw: the host, ip_forward=1] 10.78.0.1 ── out 10.78.0.2
//!  px  10.77.0.2  fd77::2  ─┘        (ruleset applied here)
//! ```
//! IPv6 stands for a container that has IPv6 on an exec network: it must
//! reach nothing, the proxy included (the proxy is reached over IPv4).
//! The exec namespaces even get a default route through the host, the worst
//! case (Docker's internal networks have none).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use controller::firewall::{ExecNet, Firewall, Plan, render, save_ruleset};

/// Listeners and probes (tests/support/probe.py), run with `python3 -c`.
const PROBE: &str = include_str!("support/probe.py");

/// What a probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A TCP connect.
    Tcp,
    /// A UDP datagram that a listener echoes.
    Udp,
    /// An ICMP echo request (busybox ping).
    Icmp,
    /// A DNS query that a listener answers.
    Dns,
}

struct Lab {
    ns: Vec<String>,
    listeners: Vec<Child>,
    tag: String,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn name(&self, role: &str) -> String {
        format!("cp{}-{role}", self.tag)
    }

    fn exec(&self, role: &str, args: &[&str]) {
        let ns = self.name(role);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        run(&full);
    }

    /// The lab; `suffix` keeps tests that run at once apart.
    fn build(suffix: &str) -> Lab {
        let tag = format!("{}{suffix}", std::process::id() % 100_000);
        let mut lab = Lab {
            ns: Vec::new(),
            listeners: Vec::new(),
            tag,
        };
        for role in ["sw", "ex1", "ex2", "px", "out"] {
            let ns = lab.name(role);
            run(&["ip", "netns", "add", &ns]);
            lab.ns.push(ns);
            lab.exec(role, &["ip", "link", "set", "lo", "up"]);
        }
        let sw = lab.name("sw");
        lab.exec("sw", &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.exec("sw", &["ip", "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        lab.exec(
            "sw",
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "fd77::1/64",
                "dev",
                "br0",
                "nodad",
            ],
        );
        lab.exec("sw", &["ip", "link", "set", "br0", "up"]);
        lab.exec("sw", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (role, ip, ip6) in [
            ("ex1", "10.77.0.11", "fd77::11/64"),
            ("ex2", "10.77.0.12", "fd77::12/64"),
            ("px", "10.77.0.2", "fd77::2/64"),
        ] {
            let (a, b) = (format!("{role}{}", lab.tag), "eth0");
            let peer = lab.name(role);
            run(&[
                "ip", "-n", &sw, "link", "add", &a, "type", "veth", "peer", "name", b, "netns",
                &peer,
            ]);
            lab.exec("sw", &["ip", "link", "set", &a, "master", "br0", "up"]);
            lab.exec(
                role,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            lab.exec(
                role,
                &["ip", "-6", "addr", "add", ip6, "dev", "eth0", "nodad"],
            );
            lab.exec(role, &["ip", "link", "set", "eth0", "up"]);
            lab.exec(role, &["ip", "route", "add", "default", "via", "10.77.0.1"]);
        }
        let out_ns = lab.name("out");
        let a = format!("out{}", lab.tag);
        run(&[
            "ip", "-n", &sw, "link", "add", &a, "type", "veth", "peer", "name", "eth0", "netns",
            &out_ns,
        ]);
        lab.exec("sw", &["ip", "addr", "add", "10.78.0.1/24", "dev", &a]);
        lab.exec("sw", &["ip", "link", "set", &a, "up"]);
        lab.exec("out", &["ip", "addr", "add", "10.78.0.2/24", "dev", "eth0"]);
        lab.exec("out", &["ip", "link", "set", "eth0", "up"]);
        lab.exec(
            "out",
            &["ip", "route", "add", "default", "via", "10.78.0.1"],
        );
        lab
    }

    /// A TCP listener on `ip:ports` inside `role`'s namespace.
    fn listen(&mut self, role: &str, ip: &str, ports: &[u16]) -> usize {
        self.serve(role, Kind::Tcp, ip, ports)
    }

    /// A listener of `kind` (TCP accept, UDP echo, DNS answer) on
    /// `ip:ports` inside `role`'s namespace; returns when every port
    /// answers from inside that namespace.
    fn serve(&mut self, role: &str, kind: Kind, ip: &str, ports: &[u16]) -> usize {
        let kind_arg = match kind {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Dns => "dns",
            Kind::Icmp => panic!("the kernel answers ICMP"),
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name(role), "python3", "-c", PROBE])
            .args(["serve", kind_arg, ip])
            .args(ports.iter().map(u16::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.listeners.push(child);
        let local = if ip == "0.0.0.0" { "127.0.0.1" } else { ip };
        let deadline = Instant::now() + Duration::from_secs(10);
        for &p in ports {
            while !self.probe(role, kind, local, p) {
                assert!(
                    Instant::now() < deadline,
                    "listener {kind:?} {role} {ip}:{p} did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.listeners.len() - 1
    }

    fn stop(&mut self, idx: usize) {
        let _ = self.listeners[idx].kill();
        let _ = self.listeners[idx].wait();
    }

    /// A real TCP connect from `role`'s namespace, 1 s timeout.
    fn reaches(&self, role: &str, ip: &str, port: u16) -> bool {
        self.probe(role, Kind::Tcp, ip, port)
    }

    /// One real probe from `role`'s namespace (1 s timeout): whether it got
    /// through (connected, echoed, answered).
    fn probe(&self, role: &str, kind: Kind, ip: &str, port: u16) -> bool {
        let ns = self.name(role);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]);
        match kind {
            Kind::Icmp => cmd.args(["busybox", "ping", "-c", "1", "-W", "1", ip]),
            Kind::Tcp => cmd.args(["python3", "-c", PROBE, "tcp", ip]),
            Kind::Udp => cmd.args(["python3", "-c", PROBE, "udp", ip]),
            Kind::Dns => cmd.args(["python3", "-c", PROBE, "dns", ip]),
        };
        if kind != Kind::Icmp {
            cmd.arg(port.to_string());
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Whether a UDP datagram sent from `from` with the spoofed source
    /// address `SPOOFED` reaches a one-shot receiver on `to_role` `ip:port`.
    fn spoofed_arrives(&self, from: &str, to_role: &str, ip: &str, port: u16) -> bool {
        use std::io::BufRead;
        let mut rx = Command::new("ip")
            .args(["netns", "exec", &self.name(to_role), "python3", "-c", PROBE])
            .args(["recv", ip, &port.to_string(), SPOOFED, "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(rx.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "receiver on {to_role} did not start");
        let ns = self.name(from);
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "python3",
            "-c",
            PROBE,
            "spoof",
            SPOOFED,
            ip,
            &port.to_string(),
        ]);
        rx.wait().unwrap().success()
    }

    /// Whether the proxy's namespace can OPEN a TCP connection from
    /// `proxy:3128` to ex2's listener (not a reply: the rules must refuse it).
    fn proxy_port_opens_connection(&self) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name("px"), "python3", "-c", PROBE])
            .args(["tcp-from", "10.77.0.2", "3128", "10.77.0.12", "8080"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn firewall(&self) -> Firewall {
        Firewall {
            netns: Some(self.name("sw")),
        }
    }

    /// (description, from, kind, to ip, port, expected reach) for the whole
    /// matrix. `v6_bridged_open`: bridged IPv6 (exec to exec or proxy, same
    /// segment) is expected to pass, which it does without br_netfilter (the
    /// bridge table cannot name a bridge on this kernel; see `chain_rules`).
    #[allow(clippy::type_complexity)]
    fn matrix(
        &self,
        proxy_up: bool,
        v6_bridged_open: bool,
    ) -> Vec<(&'static str, &'static str, Kind, &'static str, u16, bool)> {
        use Kind::{Dns, Icmp, Tcp, Udp};
        vec![
            (
                "exec -> proxy:3128",
                "ex1",
                Tcp,
                "10.77.0.2",
                3128,
                proxy_up,
            ),
            (
                "exec2 -> proxy:3128",
                "ex2",
                Tcp,
                "10.77.0.2",
                3128,
                proxy_up,
            ),
            (
                "exec -> proxy:9090 (other port)",
                "ex1",
                Tcp,
                "10.77.0.2",
                9090,
                false,
            ),
            ("exec -> exec", "ex1", Tcp, "10.77.0.12", 8080, false),
            (
                "exec -> host bridge address",
                "ex1",
                Tcp,
                "10.77.0.1",
                2222,
                false,
            ),
            (
                "exec -> host other address",
                "ex1",
                Tcp,
                "10.78.0.1",
                2222,
                false,
            ),
            ("exec -> outside", "ex1", Tcp, "10.78.0.2", 80, false),
            (
                "exec -> proxy:3128 over IPv6",
                "ex1",
                Tcp,
                "fd77::2",
                3128,
                v6_bridged_open,
            ),
            (
                "exec -> exec over IPv6",
                "ex1",
                Tcp,
                "fd77::12",
                8080,
                v6_bridged_open,
            ),
            ("exec -> host over IPv6", "ex1", Tcp, "fd77::1", 2222, false),
            (
                "exec -> proxy:3128/udp",
                "ex1",
                Udp,
                "10.77.0.2",
                3128,
                false,
            ),
            ("exec -> exec udp", "ex1", Udp, "10.77.0.12", 7, false),
            ("exec -> host udp", "ex1", Udp, "10.77.0.1", 7, false),
            ("exec -> outside udp", "ex1", Udp, "10.78.0.2", 7, false),
            (
                "exec -> host udp over IPv6",
                "ex1",
                Udp,
                "fd77::1",
                7,
                false,
            ),
            ("exec -> proxy ping", "ex1", Icmp, "10.77.0.2", 0, false),
            ("exec -> exec ping", "ex1", Icmp, "10.77.0.12", 0, false),
            ("exec -> host ping", "ex1", Icmp, "10.77.0.1", 0, false),
            ("exec -> outside ping", "ex1", Icmp, "10.78.0.2", 0, false),
            (
                "exec -> host ping over IPv6",
                "ex1",
                Icmp,
                "fd77::1",
                0,
                false,
            ),
            ("exec -> host DNS", "ex1", Dns, "10.77.0.1", 53, false),
            ("exec -> outside DNS", "ex1", Dns, "10.78.0.2", 53, false),
            ("exec -> proxy DNS", "ex1", Dns, "10.77.0.2", 53, false),
        ]
    }

    fn check(&self, label: &str, proxy_up: bool, v6_bridged_open: bool) {
        let mut wrong = Vec::new();
        for (what, from, kind, ip, port, want) in self.matrix(proxy_up, v6_bridged_open) {
            let got = self.probe(from, kind, ip, port);
            if got != want {
                wrong.push(format!("{what}: reached={got}, expected {want}"));
            }
        }
        for (what, to, ip) in SPOOF_TARGETS {
            if self.spoofed_arrives("ex1", to, ip, 5555) {
                wrong.push(format!("{what}: a spoofed source got through"));
            }
        }
        assert!(wrong.is_empty(), "{label}: {wrong:#?}");
    }
}

/// The source address ex1 claims in the spoofing probe (outside the exec
/// subnet, so no address-based rule matches it).
const SPOOFED: &str = "10.99.0.5";

/// (description, receiving role, its address) of the spoofing probe.
const SPOOF_TARGETS: [(&str, &str, &str); 2] = [
    ("spoofed exec -> host", "sw", "10.77.0.1"),
    ("spoofed exec -> outside", "out", "10.78.0.2"),
];

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.listeners {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace removes its veths, bridge and nft tables.
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn privileged() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let tools = ["nft", "ip", "python3"].iter().all(|t| {
        Command::new(t)
            .arg(if *t == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    e2e::require(
        "root, nft, ip and python3 for the namespace test",
        root && tools,
    )
}

fn plan() -> Plan {
    Plan {
        nets: vec![ExecNet {
            org: "acme".into(),
            subnet: "10.77.0.0/24".parse().unwrap(),
            proxy: "10.77.0.2".parse().unwrap(),
            bridge: "br0".into(),
        }],
        proxy_port: 3128,
    }
}

/// Set `net.bridge.bridge-nf-call-iptables` and `-ip6tables` in the host namespace, if the
/// sysctl exists there; returns whether it was set.
fn set_br_netfilter(lab: &Lab, on: bool) -> bool {
    let v = if on { "1" } else { "0" };
    ["iptables", "ip6tables"].iter().all(|t| {
        Command::new("ip")
            .args(["netns", "exec", &lab.name("sw"), "sysctl", "-qw"])
            .arg(format!("net.bridge.bridge-nf-call-{t}={v}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn exec_namespaces_reach_only_the_proxy_port() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::build("");
    let proxy = lab.listen("px", "10.77.0.2", &[3128, 9090]);
    lab.listen("ex2", "10.77.0.12", &[8080]);
    lab.listen("sw", "0.0.0.0", &[2222]);
    lab.listen("out", "10.78.0.2", &[80]);
    lab.listen("px", "fd77::2", &[3128]);
    lab.listen("ex2", "fd77::12", &[8080]);
    lab.listen("sw", "fd77::1", &[2222]);
    lab.serve("px", Kind::Udp, "10.77.0.2", &[3128]);
    lab.serve("ex2", Kind::Udp, "10.77.0.12", &[7]);
    lab.serve("sw", Kind::Udp, "0.0.0.0", &[7]);
    lab.serve("sw", Kind::Udp, "fd77::1", &[7]);
    lab.serve("out", Kind::Udp, "10.78.0.2", &[7]);
    lab.serve("sw", Kind::Dns, "10.77.0.1", &[53]);
    lab.serve("out", Kind::Dns, "10.78.0.2", &[53]);
    lab.serve("px", Kind::Dns, "10.77.0.2", &[53]);
    // ex1 may send from an address outside the exec subnet (a container
    // with CAP_NET_RAW could); the host does no reverse-path filtering, so
    // only the rules can stop it.
    lab.exec(
        "ex1",
        &["ip", "addr", "add", &format!("{SPOOFED}/32"), "dev", "eth0"],
    );
    for k in ["all", "default", "br0"] {
        lab.exec(
            "sw",
            &["sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")],
        );
    }

    // Baseline, no rules: everything reaches (so the matrix below can fail).
    for (what, from, kind, ip, port, _) in lab.matrix(true, true) {
        assert!(
            lab.probe(from, kind, ip, port),
            "baseline: {what} should reach without rules"
        );
    }
    for (what, to, ip) in SPOOF_TARGETS {
        assert!(
            lab.spoofed_arrives("ex1", to, ip, 5555),
            "baseline: {what} should arrive without rules"
        );
    }

    let fw = lab.firewall();
    let ruleset = render(&plan()).unwrap();
    let fingerprint = fw.apply_and_fingerprint(&ruleset).unwrap();
    assert!(!fingerprint.is_empty());

    // br_netfilter off: isolation must come from the bridge table alone.
    let off = set_br_netfilter(&lab, false);
    lab.check("br_netfilter off (or absent)", true, true);
    // br_netfilter on, when the module can be loaded: the inet table sees
    // bridged traffic too; the result must not change.
    let _ = Command::new("modprobe").arg("br_netfilter").status();
    let on = set_br_netfilter(&lab, true);
    if on {
        // Bridged IPv6 now reaches the inet hooks, which drop it.
        lab.check("br_netfilter on", true, false);
    }
    println!("br_netfilter sysctl: off-run={off}, on-run={on}");

    // Idempotent: a second apply leaves the same rules.
    assert_eq!(fw.apply_and_fingerprint(&ruleset).unwrap(), fingerprint);
    assert!(!fw.drifted(&fingerprint).unwrap());

    // Proxy down: nothing reaches anything, and whatever takes the proxy's
    // address and port cannot open a connection to an exec container (its
    // "replies" are accepted only within a connection the exec side opened).
    lab.stop(proxy);
    lab.check("proxy stopped", false, !on);
    assert!(
        !lab.proxy_port_opens_connection(),
        "a connection opened from proxy:3128 reached an exec container"
    );
    // The bridge table alone (br_netfilter off) refuses it too.
    set_br_netfilter(&lab, false);
    assert!(
        !lab.proxy_port_opens_connection(),
        "br_netfilter off: a connection opened from proxy:3128 reached an exec container"
    );

    // Someone deletes our bridge table (with br_netfilter off, so the inet
    // table cannot cover for it): drift is seen, a re-apply restores
    // isolation.
    lab.exec("sw", &["nft", "delete", "table", "bridge", "chokepoint"]);
    assert!(fw.drifted(&fingerprint).unwrap());
    lab.listen("px", "10.77.0.2", &[9090]);
    assert!(
        lab.reaches("ex1", "10.77.0.2", 9090),
        "without the bridge table the hole is real"
    );
    fw.apply(&ruleset).unwrap();
    assert!(!fw.drifted(&fingerprint).unwrap());
    assert!(!lab.reaches("ex1", "10.77.0.2", 9090));

    // Without our tables the two probes above do get through: they can fail.
    for family in ["inet", "bridge"] {
        lab.exec("sw", &["nft", "delete", "table", family, "chokepoint"]);
    }
    assert!(
        lab.proxy_port_opens_connection(),
        "baseline: a connection from proxy:3128 should open without rules"
    );
}

/// The boot path (item: a reboot leaves nothing): the ruleset the
/// controller saves is loaded by the command of the systemd unit in the tree
/// (`controller/systemd/chokepoint-nft.service`, run before docker.service),
/// in a fresh namespace with no rules, and isolates for real.
#[test]
fn saved_ruleset_loads_at_boot_in_a_fresh_namespace() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::build("c");
    lab.listen("px", "10.77.0.2", &[3128, 9090]);
    lab.listen("sw", "0.0.0.0", &[2222]);
    lab.serve("sw", Kind::Udp, "0.0.0.0", &[7]);
    let probes = [
        ("exec -> proxy:3128", Kind::Tcp, "10.77.0.2", 3128, true),
        ("exec -> proxy:9090", Kind::Tcp, "10.77.0.2", 9090, false),
        ("exec -> host", Kind::Tcp, "10.77.0.1", 2222, false),
        ("exec -> host udp", Kind::Udp, "10.77.0.1", 7, false),
        ("exec -> host ping", Kind::Icmp, "10.77.0.1", 0, false),
    ];
    for (what, kind, ip, port, _) in probes {
        assert!(lab.probe("ex1", kind, ip, port), "baseline: {what}");
    }

    let dir = std::env::temp_dir().join(format!("chokepoint-boot-{}", lab.tag));
    let saved = dir.join("nft-ruleset.json");
    save_ruleset(&render(&plan()).unwrap(), &saved).unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/chokepoint-nft.service"
    ))
    .unwrap();
    assert!(
        unit.lines()
            .any(|l| l.starts_with("Before=") && l.contains("docker.service")),
        "{unit}"
    );
    assert!(unit.contains("RequiredBy=docker.service"), "{unit}");
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart in the unit");
    let argv: Vec<String> = exec_start
        .split_whitespace()
        .map(|a| {
            if a == controller::firewall::SAVED_RULESET {
                saved.display().to_string()
            } else {
                a.to_owned()
            }
        })
        .collect();
    assert!(argv.contains(&saved.display().to_string()), "{exec_start}");
    let ns = lab.name("sw");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(&argv)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{exec_start}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (what, kind, ip, port, want) in probes {
        assert_eq!(
            lab.probe("ex1", kind, ip, port),
            want,
            "after boot load: {what}"
        );
    }
}

#[test]
fn tables_of_others_are_left_alone() {
    if !privileged() {
        return;
    }
    let lab = Lab {
        ns: vec![],
        listeners: vec![],
        tag: format!("{}b", std::process::id() % 100_000),
    };
    let mut lab = lab;
    let ns = lab.name("solo");
    run(&["ip", "netns", "add", &ns]);
    lab.ns.push(ns.clone());
    run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "nft",
        "add table inet other; add chain inet other c { type filter hook forward priority 0; }; add rule inet other c counter",
    ]);
    let fw = Firewall {
        netns: Some(ns.clone()),
    };
    fw.apply(&render(&plan()).unwrap()).unwrap();
    fw.apply(&render(&plan()).unwrap()).unwrap();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, "nft", "list", "table", "inet", "other",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("counter"));
}
