//! Kernel isolation proven with real packets: network namespaces joined by a
//! bridge stand for exec containers, the proxy, the Docker host and the
//! outside; the rendered ruleset is applied inside the "host" namespace and
//! every path is probed with a real TCP connect.
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

use controller::firewall::{ExecNet, Firewall, Plan, render};

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

    fn build() -> Lab {
        let tag = format!("{}", std::process::id() % 100_000);
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
        let script = format!(
            "import socket,threading,time\n\
             def serve(p):\n\
             \x20 s=socket.socket({family}); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('{ip}',p)); s.listen(64)\n\
             \x20 while True:\n\
             \x20\x20 c,_=s.accept(); c.close()\n\
             for p in {ports:?}: threading.Thread(target=serve,args=(p,),daemon=True).start()\n\
             time.sleep(600)\n",
            family = family(ip),
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name(role), "python3", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.listeners.push(child);
        // Wait until every port accepts, from inside that namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        for &p in ports {
            while !self.reaches(role, ip, p) {
                assert!(
                    Instant::now() < deadline,
                    "listener {role} {ip}:{p} did not start"
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
        let script = format!(
            "import socket,sys\ns=socket.socket({family}); s.settimeout(1)\nsys.exit(0 if s.connect_ex(('{ip}',{port}))==0 else 1)",
            family = family(ip),
        );
        Command::new("ip")
            .args(["netns", "exec", &self.name(role), "python3", "-c", &script])
            .status()
            .unwrap()
            .success()
    }

    fn firewall(&self) -> Firewall {
        Firewall {
            netns: Some(self.name("sw")),
        }
    }

    /// (description, from, to ip, port, expected reach) for the whole matrix.
    /// `v6_bridged_open`: bridged IPv6 (exec to exec or proxy, same segment)
    /// is expected to pass, which it does without br_netfilter (the bridge
    /// table cannot name a bridge on this kernel; see `ipv6_rules`).
    fn matrix(
        &self,
        proxy_up: bool,
        v6_bridged_open: bool,
    ) -> Vec<(&'static str, &'static str, &'static str, u16, bool)> {
        vec![
            ("exec -> proxy:3128", "ex1", "10.77.0.2", 3128, proxy_up),
            ("exec2 -> proxy:3128", "ex2", "10.77.0.2", 3128, proxy_up),
            (
                "exec -> proxy:9090 (other port)",
                "ex1",
                "10.77.0.2",
                9090,
                false,
            ),
            ("exec -> exec", "ex1", "10.77.0.12", 8080, false),
            (
                "exec -> host bridge address",
                "ex1",
                "10.77.0.1",
                2222,
                false,
            ),
            (
                "exec -> host other address",
                "ex1",
                "10.78.0.1",
                2222,
                false,
            ),
            ("exec -> outside", "ex1", "10.78.0.2", 80, false),
            (
                "exec -> proxy:3128 over IPv6",
                "ex1",
                "fd77::2",
                3128,
                v6_bridged_open,
            ),
            (
                "exec -> exec over IPv6",
                "ex1",
                "fd77::12",
                8080,
                v6_bridged_open,
            ),
            ("exec -> host over IPv6", "ex1", "fd77::1", 2222, false),
        ]
    }

    fn check(&self, label: &str, proxy_up: bool, v6_bridged_open: bool) {
        let mut wrong = Vec::new();
        for (what, from, ip, port, want) in self.matrix(proxy_up, v6_bridged_open) {
            let got = self.reaches(from, ip, port);
            if got != want {
                wrong.push(format!("{what}: reached={got}, expected {want}"));
            }
        }
        assert!(wrong.is_empty(), "{label}: {wrong:#?}");
    }
}

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

/// The Python socket family for an address.
fn family(ip: &str) -> &'static str {
    if ip.contains(':') {
        "socket.AF_INET6"
    } else {
        "socket.AF_INET"
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
    let mut lab = Lab::build();
    let proxy = lab.listen("px", "10.77.0.2", &[3128, 9090]);
    lab.listen("ex2", "10.77.0.12", &[8080]);
    lab.listen("sw", "0.0.0.0", &[2222]);
    lab.listen("out", "10.78.0.2", &[80]);
    lab.listen("px", "fd77::2", &[3128]);
    lab.listen("ex2", "fd77::12", &[8080]);
    lab.listen("sw", "fd77::1", &[2222]);

    // Baseline, no rules: everything reaches (so the matrix below can fail).
    for (what, from, ip, port, _) in lab.matrix(true, true) {
        assert!(
            lab.reaches(from, ip, port),
            "baseline: {what} should reach without rules"
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

    // Proxy down: nothing reaches anything.
    lab.stop(proxy);
    lab.check("proxy stopped", false, !on);

    // Someone deletes our bridge table (with br_netfilter off, so the inet
    // table cannot cover for it): drift is seen, a re-apply restores
    // isolation.
    set_br_netfilter(&lab, false);
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
