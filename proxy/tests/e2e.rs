//! egress-proxy end to end: the real binary on port 0, a recording origin on
//! 127.0.0.2, a TLS origin (`openssl s_server`) on 127.0.0.3, a test DNS
//! server, and real clients (curl, pip). 127.0.0.2 and 127.0.0.3 are reached
//! only because the test policy lists them in `unsafe_allow_ranges`;
//! 127.0.0.1 stays blocked and stands for "the host itself".
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{DnsServer, Origin, ProxyProcess, proxy_request, send_raw};

const BIN: &str = env!("CARGO_BIN_EXE_egress-proxy");
const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const TLS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn policy(repo_port: u16) -> String {
    policy_reading(repo_port, &[])
}

/// The test policy, with reads allowed to these ports besides 80, 443, 8080
/// (test origins listen on ports the kernel picks).
fn policy_reading(repo_port: u16, read_ports: &[u16]) -> String {
    let mut ports = vec![80, 443, 8080];
    ports.extend_from_slice(read_ports);
    format!(
        "version: v1
unsafe_allow_ranges: [127.0.0.2/32, 127.0.0.3/32]
read_ports: {ports:?}
package_repos:
  - host: repo.chokepoint.dev
    ports: [{repo_port}]
orgs:
  local:
    clients: [127.0.0.1/32]
"
    )
}

struct Setup {
    origin: Origin,
    dns: DnsServer,
    proxy: ProxyProcess,
}

fn setup() -> Setup {
    setup_reading(&[])
}

/// [`setup`], with reads also allowed to `read_ports`.
fn setup_reading(read_ports: &[u16]) -> Setup {
    let origin = Origin::start(ORIGIN_IP);
    let dns = DnsServer::start();
    dns.set_static("origin.chokepoint.dev", &[IpAddr::V4(ORIGIN_IP)]);
    let mut ports = vec![origin.addr.port()];
    ports.extend_from_slice(read_ports);
    let proxy = ProxyProcess::start(Path::new(BIN), &policy_reading(443, &ports), dns.addr);
    Setup { origin, dns, proxy }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn reads_are_forwarded_in_origin_form_without_proxy_headers() {
    let s = setup();
    let port = s.origin.addr.port();
    for (method, url) in [
        ("GET", format!("http://127.0.0.2:{port}/a/b?q=1#frag")),
        ("HEAD", format!("http://127.0.0.2:{port}/head")),
        (
            "GET",
            format!("http://origin.chokepoint.dev:{port}/by-name"),
        ),
    ] {
        let r = proxy_request(
            s.proxy.listen,
            method,
            &url,
            "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 5\r\nTE: trailers\r\n",
        );
        assert_eq!(r.status, 200, "{method} {url}: {:?}", r.text());
    }
    let seen = s.origin.seen();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/a/b?q=1", "/head", "/by-name"]);
    assert_eq!(seen[1].method, "HEAD");
    assert_eq!(
        seen[2].header("host"),
        Some(format!("origin.chokepoint.dev:{port}").as_str())
    );
    for r in &seen {
        for h in [
            "proxy-authorization",
            "proxy-connection",
            "keep-alive",
            "te",
        ] {
            assert!(
                r.header(h).is_none(),
                "{h} reached the origin: {:?}",
                r.headers
            );
        }
    }
}

#[test]
fn writes_from_a_container_are_denied_and_never_sent() {
    let s = setup();
    let port = s.origin.addr.port();
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let r = proxy_request(
            s.proxy.listen,
            method,
            &format!("http://127.0.0.2:{port}/w"),
            "",
        );
        assert_eq!(r.status, 403, "{method}");
        assert_eq!(r.reason(), Some("write_from_container"), "{method}");
        assert!(
            r.text().contains("write"),
            "body says what was denied: {}",
            r.text()
        );
    }
    for method in ["OPTIONS", "TRACE", "PROPFIND"] {
        let r = proxy_request(
            s.proxy.listen,
            method,
            &format!("http://127.0.0.2:{port}/w"),
            "",
        );
        assert_eq!(r.reason(), Some("method_not_allowed"), "{method}");
    }
    assert_eq!(s.origin.connections(), 0);
}

#[test]
fn protocol_misuse_is_refused() {
    let s = setup();
    let port = s.origin.addr.port();
    let url = format!("http://127.0.0.2:{port}/ws");
    let ws = proxy_request(
        s.proxy.listen,
        "GET",
        &url,
        "Upgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n",
    );
    assert_eq!((ws.status, ws.reason()), (403, Some("upgrade_denied")));
    let req = format!("GET {url} HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n");
    let r = send_raw(s.proxy.listen, req.as_bytes(), Duration::from_secs(5)).unwrap();
    assert_eq!(r.reason(), Some("host_mismatch"));
    // The same host and port in other bytes: Pingora would refuse it with a
    // bare 400; the proxy's own denial carries the reason and an audit line.
    for (target, host) in [
        (
            format!("http://ORIGIN.chokepoint.dev:{port}/case"),
            format!("origin.chokepoint.dev:{port}"),
        ),
        (
            format!("http://127.0.0.2:{port}/zero"),
            format!("127.0.0.2:0{port}"),
        ),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = send_raw(s.proxy.listen, req.as_bytes(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("host_mismatch")),
            "{target} / {host}"
        );
    }
    let mismatches = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("\"reason\":\"host_mismatch\""))
            .count()
    };
    let audit = s
        .proxy
        .audit_until(Duration::from_secs(10), |l| mismatches(l) >= 3);
    assert_eq!(mismatches(&audit), 3, "{audit:?}");
    let r = send_raw(
        s.proxy.listen,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!((r.status, r.reason()), (400, Some("not_a_proxy_request")));
    let r = send_raw(
        s.proxy.listen,
        b"GET http://a.example.com/ HTTP/1.1\r\nHost: a.example.com\r\nX: a\r\n folded\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!((r.status, r.reason()), (400, Some("malformed_request")));
    let r = send_raw(
        s.proxy.listen,
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(s.origin.connections(), 0);
}

#[test]
fn dns_rebinding_never_reaches_loopback() {
    // The "host itself": a listener on 127.0.0.1 that must never be reached.
    let host = Origin::start(Ipv4Addr::LOCALHOST);
    let port = host.addr.port();
    // Same port on the allowed origin address: the first answer is good.
    let good = Origin::start_on(SocketAddr::new(IpAddr::V4(ORIGIN_IP), port));
    let s = setup_reading(&[port]);
    s.dns.set(
        "rebind.chokepoint.dev",
        vec![vec![IpAddr::V4(ORIGIN_IP)], vec![ip("127.0.0.1")]],
    );
    let url = format!("http://rebind.chokepoint.dev:{port}/");
    let first = proxy_request(s.proxy.listen, "GET", &url, "");
    assert_eq!(first.status, 200, "{:?}", first.text());
    for _ in 0..5 {
        let r = proxy_request(s.proxy.listen, "GET", &url, "");
        assert_eq!((r.status, r.reason()), (403, Some("blocked_address")));
    }
    assert!(
        s.dns.queries("rebind.chokepoint.dev") >= 2,
        "the proxy re-resolved per request"
    );
    assert_eq!(good.seen().len(), 1);
    assert_eq!(
        host.connections(),
        0,
        "a rebinding answer reached 127.0.0.1"
    );

    // One public and one private address: denied whole.
    s.dns.set_static(
        "mixed.chokepoint.dev",
        &[IpAddr::V4(ORIGIN_IP), ip("10.0.0.1")],
    );
    s.dns.set_static(
        "mixed2.chokepoint.dev",
        &[ip("93.184.215.14"), ip("192.168.1.1")],
    );
    for name in ["mixed.chokepoint.dev", "mixed2.chokepoint.dev"] {
        let r = proxy_request(s.proxy.listen, "GET", &format!("http://{name}:{port}/"), "");
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("blocked_address")),
            "{name}"
        );
    }
    let r = proxy_request(
        s.proxy.listen,
        "GET",
        &format!("http://nxdomain.chokepoint.dev:{port}/"),
        "",
    );
    assert_eq!((r.status, r.reason()), (502, Some("unresolvable")));
    assert_eq!(good.seen().len(), 1);
}

#[test]
fn every_blocked_corpus_address_is_denied_as_literal_and_through_dns() {
    let s = setup();
    let text =
        std::fs::read_to_string(e2e::corpora().join("ssrf/ssrf_address_cases.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        if row["expected"] != "deny"
            || row["form"] != "ip-literal"
            || row["config_dependent"] == true
        {
            continue;
        }
        let addr: IpAddr = row["input"].as_str().unwrap().parse().unwrap();
        // NAT64 of a public IPv4 is allowed on purpose (docs/blocked-ranges.md).
        if addr == ip("64:ff9b::808:808") {
            continue;
        }
        let literal = match addr {
            IpAddr::V4(v4) => format!("http://{v4}:8080/"),
            IpAddr::V6(v6) => format!("http://[{v6}]:8080/"),
        };
        let r = proxy_request(s.proxy.listen, "GET", &literal, "");
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("blocked_address")),
            "{literal}"
        );
        let name = format!("c{n}.chokepoint.dev");
        s.dns.set_static(&name, &[addr]);
        let r = proxy_request(s.proxy.listen, "GET", &format!("http://{name}:8080/"), "");
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("blocked_address")),
            "{name} -> {addr}"
        );
        n += 1;
    }
    assert!(n >= 40, "only {n} corpus addresses");
}

#[test]
fn smuggling_mutations_get_400_or_reach_the_origin_as_one_request() {
    let s = setup();
    let port = s.origin.addr.port();
    let text =
        std::fs::read_to_string(e2e::corpora().join("http/smuggler_mutations.jsonl")).unwrap();
    let body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n";
    let (mut refused, mut forwarded, mut other) = (0, 0, 0);
    let started = Instant::now();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "smuggling run took too long"
        );
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let req = v["header_template"]
            .as_str()
            .unwrap()
            .replace("__METHOD__", "GET")
            .replace("__ENDPOINT__", &format!("http://127.0.0.2:{port}/"))
            .replace("__RANDOM__", "1")
            .replace("__HOST__", &format!("127.0.0.2:{port}"))
            .replace("__REPLACE_CL__", &body.len().to_string());
        // Templates carry raw bytes as \u00XX escapes: one char, one byte.
        let mut bytes: Vec<u8> = req.chars().map(|c| (u32::from(c) & 0xff) as u8).collect();
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body.as_bytes());
        match send_raw(s.proxy.listen, &bytes, Duration::from_secs(5)) {
            Some(r) if r.status == 400 => refused += 1,
            Some(r) if r.status == 200 => forwarded += 1,
            Some(r) => {
                assert!(r.status >= 400, "{}: {}", v["name"], r.status);
                other += 1;
            }
            None => panic!("{}: no response", v["name"]),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = s.origin.seen();
    assert!(
        seen.iter().all(|r| !r.target.contains("smuggled")),
        "a smuggled request reached the origin"
    );
    assert_eq!(
        seen.len(),
        forwarded,
        "each forwarded mutation is exactly one request at the origin"
    );
    // A GET with a body is refused (`body_on_read`), so whatever reached
    // the origin carried none.
    assert!(
        seen.iter().all(|r| r.body_len == 0),
        "a read reached the origin with a body"
    );
    assert_eq!(refused + forwarded + other, 1768);
    println!(
        "smuggling: {refused} refused (400), {forwarded} forwarded as one request, {other} other denials"
    );
}

#[test]
fn unknown_clients_are_denied() {
    if !e2e::require("curl", e2e::have_tool("curl")) {
        return;
    }
    let s = setup();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "10",
            "--interface",
            "127.0.0.9",
            "-x",
        ])
        .arg(format!("http://{}", s.proxy.listen))
        .arg(format!("http://127.0.0.2:{}/", s.origin.addr.port()))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("x-egress-error: unknown_client"), "{head}");
    assert_eq!(s.origin.connections(), 0);
}

/// An `openssl s_server` TLS origin for `repo.chokepoint.dev` on 127.0.0.3.
struct TlsOrigin {
    port: u16,
    ca: PathBuf,
    child: Child,
    dir: PathBuf,
}

impl TlsOrigin {
    fn start() -> TlsOrigin {
        let dir = std::env::temp_dir().join(format!("chokepoint-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
            ])
            .args([
                "-subj",
                "/CN=repo.chokepoint.dev",
                "-addext",
                "subjectAltName=DNS:repo.chokepoint.dev",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let port = free_port(TLS_IP);
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.3:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((TLS_IP, port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsOrigin {
            port,
            ca: cert,
            child,
            dir,
        }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn curl(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn connect_tunnels_only_to_package_repos_with_curl() {
    if !e2e::require(
        "curl and openssl",
        e2e::have_tool("curl") && Command::new("openssl").arg("version").output().is_ok(),
    ) {
        return;
    }
    let tls = TlsOrigin::start();
    let dns = DnsServer::start();
    for name in ["repo.chokepoint.dev", "notrepo.chokepoint.dev"] {
        dns.set_static(name, &[IpAddr::V4(TLS_IP)]);
    }
    let proxy = ProxyProcess::start(Path::new(BIN), &policy(tls.port), dns.addr);
    let px = format!("http://{}", proxy.listen);
    let ca = tls.ca.display().to_string();
    // curl -p -x: an explicit CONNECT tunnel, TLS end to end.
    let (ok, body, err) = curl(
        &[
            "-p",
            "-x",
            &px,
            "--cacert",
            &ca,
            &format!("https://repo.chokepoint.dev:{}/", tls.port),
        ],
        &[],
    );
    assert!(ok, "tunnel to the package repo failed: {err}");
    assert!(body.contains("s_server"), "{body}");
    // The same through HTTPS_PROXY, as pip and friends use it.
    let (ok, _, err) = curl(
        &[
            "--cacert",
            &ca,
            &format!("https://repo.chokepoint.dev:{}/", tls.port),
        ],
        &[("HTTPS_PROXY", px.clone())],
    );
    assert!(ok, "HTTPS_PROXY: {err}");
    // Not a package repo / wrong port: the CONNECT gets 403 with the reason.
    for (target, reason) in [
        (
            format!("notrepo.chokepoint.dev:{}", tls.port),
            "connect_not_package_repo",
        ),
        (
            "repo.chokepoint.dev:22".to_owned(),
            "connect_port_not_allowed",
        ),
        (
            format!("127.0.0.3:{}", tls.port),
            "connect_not_package_repo",
        ),
    ] {
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let r = send_raw(proxy.listen, req.as_bytes(), Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.reason()), (403, Some(reason)), "{target}");
    }
    let (ok, _, err) = curl(
        &[
            "--cacert",
            &ca,
            &format!("https://notrepo.chokepoint.dev:{}/", tls.port),
        ],
        &[("HTTPS_PROXY", px)],
    );
    assert!(!ok && err.contains("403"), "{err}");
    // The tunnel shows in the audit log and the metrics.
    let audit = proxy
        .audit_until(Duration::from_secs(10), |l| {
            l.iter().any(|l| l.contains("\"reason\":\"package_repo\""))
        })
        .join("\n");
    assert!(audit.contains("\"reason\":\"package_repo\""), "{audit}");
    let metrics = proxy.metrics();
    assert!(metrics.contains("egress_tunnel_bytes_total"), "{metrics}");
}

#[test]
fn curl_and_pip_through_http_proxy() {
    if !e2e::require("curl", e2e::have_tool("curl")) {
        return;
    }
    let s = setup();
    let port = s.origin.addr.port();
    let px = format!("http://{}", s.proxy.listen);
    let (ok, body, err) = curl(
        &[&format!("http://origin.chokepoint.dev:{port}/curl")],
        &[("HTTP_PROXY", px.clone()), ("http_proxy", px.clone())],
    );
    assert!(ok, "{err}");
    assert_eq!(body, "origin-ok\n");

    if !e2e::require(
        "python3 -m pip",
        Command::new("python3")
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
    ) {
        return;
    }
    // A PEP 503 index with one wheel, served by the origin.
    let wheel = build_wheel();
    let wheel_name = "chokepointdemo-1.0-py3-none-any.whl";
    s.origin.route(
        "/simple/chokepointdemo/",
        "text/html",
        format!("<html><body><a href=\"/files/{wheel_name}\">{wheel_name}</a></body></html>")
            .into_bytes(),
    );
    s.origin.route(
        "/simple/",
        "text/html",
        b"<html><body><a href=\"/simple/chokepointdemo/\">chokepointdemo</a></body></html>"
            .to_vec(),
    );
    s.origin.route(
        &format!("/files/{wheel_name}"),
        "application/octet-stream",
        wheel,
    );
    let dest = std::env::temp_dir().join(format!("chokepoint-pip-{}", std::process::id()));
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--isolated",
            "--index-url",
        ])
        .arg(format!("http://origin.chokepoint.dev:{port}/simple/"))
        .args(["--trusted-host", "origin.chokepoint.dev", "-d"])
        .arg(&dest)
        .arg("chokepointdemo")
        .env("HTTP_PROXY", &px)
        .env("http_proxy", &px)
        .env_remove("PIP_FIND_LINKS")
        .env_remove("PIP_INDEX_URL")
        .output()
        .unwrap();
    let downloaded = dest.join(wheel_name).is_file();
    let _ = std::fs::remove_dir_all(&dest);
    assert!(
        downloaded,
        "pip: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.origin
            .seen()
            .iter()
            .any(|r| r.target.starts_with("/files/"))
    );
}

/// A minimal valid wheel, built with Python's zipfile.
fn build_wheel() -> Vec<u8> {
    let path = std::env::temp_dir().join(format!("chokepoint-wheel-{}.whl", std::process::id()));
    let script = r#"
import sys, zipfile, hashlib, base64
files = {
 "chokepointdemo/__init__.py": b"VALUE = 1\n",
 "chokepointdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: chokepointdemo\nVersion: 1.0\n",
 "chokepointdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: chokepoint-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
rec = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for n, d in files.items():
        z.writestr(n, d)
        h = base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
        rec.append(f"{n},sha256={h},{len(d)}")
    rec.append("chokepointdemo-1.0.dist-info/RECORD,,")
    z.writestr("chokepointdemo-1.0.dist-info/RECORD", "\n".join(rec) + "\n")
"#;
    let ok = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .status()
        .unwrap();
    assert!(ok.success());
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    bytes
}

#[test]
fn reload_applies_good_files_and_keeps_the_old_policy_on_bad_ones() {
    let s = setup();
    let port = s.origin.addr.port();
    let target = format!("pkg.chokepoint.dev:{port}");
    s.dns
        .set_static("pkg.chokepoint.dev", &[IpAddr::V4(ORIGIN_IP)]);
    let connect = || {
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let mut c = TcpStream::connect(s.proxy.listen).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        e2e::read_response(&mut c, Duration::from_secs(5))
            .map(|r| (r.status, r.reason().map(str::to_owned)))
    };
    assert_eq!(
        connect(),
        Some((403, Some("connect_not_package_repo".to_owned())))
    );
    let generation = |m: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with("egress_policy_generation"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let g0 = generation(&s.proxy.metrics());

    // A good file via POST /reload: the tunnel is now allowed.
    let good = policy(443).replace(
        "    ports: [443]",
        &format!("    ports: [443]\n  - host: pkg.chokepoint.dev\n    ports: [{port}]"),
    );
    std::fs::write(&s.proxy.policy_path, &good).unwrap();
    assert_eq!(s.proxy.reload().status, 200);
    assert_eq!(connect().map(|c| c.0), Some(200));
    assert_eq!(generation(&s.proxy.metrics()), g0 + 1.0);

    // A bad file: refused with the line, the old policy stays.
    std::fs::write(
        &s.proxy.policy_path,
        "version: v1\norgs:\n  local:\n    clients: [not-a-cidr]\n",
    )
    .unwrap();
    let r = s.proxy.reload();
    assert!(r.status >= 400, "{}", r.status);
    assert!(
        r.text().contains(":4:"),
        "the error names the line: {}",
        r.text()
    );
    assert_eq!(connect().map(|c| c.0), Some(200), "old policy kept");
    let metrics = s.proxy.metrics();
    assert!(
        metrics.contains("egress_policy_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert_eq!(generation(&metrics), g0 + 1.0);

    // SIGHUP reloads too: back to the original policy.
    std::fs::write(&s.proxy.policy_path, policy(443)).unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &s.proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while generation(&s.proxy.metrics()) < g0 + 2.0 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        connect(),
        Some((403, Some("connect_not_package_repo".to_owned())))
    );
}

#[test]
fn metrics_and_audit_carry_the_reason_and_no_secret() {
    let s = setup();
    let port = s.origin.addr.port();
    let token = "ghp_R8kQ2mZ7vP4nL1tX9cB6wY3hJ5sD0fG2aE8u";
    let r = proxy_request(
        s.proxy.listen,
        "GET",
        &format!("http://127.0.0.2:{port}/cb?access_token={token}"),
        "",
    );
    assert_eq!(r.status, 200);
    let r = proxy_request(
        s.proxy.listen,
        "POST",
        &format!("http://127.0.0.2:{port}/cb?access_token={token}"),
        "",
    );
    assert_eq!(r.reason(), Some("write_from_container"));
    assert!(
        !r.text().contains(token),
        "error body leaks the token: {}",
        r.text()
    );
    // The audit log never records paths or queries; a token-shaped host
    // name (labels may hold '_') shows the scrubber on the audit line and on
    // the error body.
    let host_token = "ghp_r8kq2mz7vp4nl1tx9cb6wy3hj5sd0fg2ae8u";
    let r = proxy_request(
        s.proxy.listen,
        "GET",
        &format!("http://{host_token}.chokepoint.dev:{port}/"),
        "",
    );
    assert_eq!(r.reason(), Some("unresolvable"));
    assert!(
        !r.text().contains(host_token),
        "error body leaks the token: {}",
        r.text()
    );
    let audit = s
        .proxy
        .audit_until(Duration::from_secs(5), |l| l.len() >= 3);
    assert!(audit.len() >= 3, "no audit lines: {audit:?}");
    for line in &audit {
        assert!(!line.contains(token), "audit leaks the token: {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in [
            "time",
            "org",
            "client",
            "method",
            "scheme",
            "host",
            "port",
            "verdict",
            "reason",
            "status",
            "bytes_up",
            "bytes_down",
            "duration_ms",
        ] {
            assert!(v.get(field).is_some(), "audit line lacks {field}: {line}");
        }
    }
    // Found by reason: a forwarded request is audited after its response
    // is out, so the next request's line may come first.
    let by_reason = |reason: &str| -> serde_json::Value {
        audit
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} line: {audit:?}"))
    };
    let unresolvable = by_reason("unresolvable").to_string();
    assert!(
        unresolvable.contains("[REDACTED:"),
        "the scrubbed host shows the redaction: {unresolvable}"
    );
    assert!(!unresolvable.contains(host_token));
    let allowed = by_reason("read_public");
    assert_eq!(allowed["dialed"], format!("127.0.0.2:{port}"));
    let denied = by_reason("write_from_container");
    assert_eq!(denied["verdict"].as_str(), Some("deny"));
    let metrics = s.proxy.metrics();
    for needle in [
        "egress_requests_total{method=\"GET\",reason=\"read_public\",source=\"container\",verdict=\"allow\"} 1",
        "egress_requests_total{method=\"POST\",reason=\"write_from_container\",source=\"container\",verdict=\"deny\"} 1",
        "egress_upstream_connect_seconds",
        "egress_dns_resolve_seconds",
        "egress_tunnels_active",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    assert_eq!(s.proxy.admin_get("/healthz").status, 200);
    assert_eq!(s.proxy.admin_get("/readyz").status, 200);
}

#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_response() {
    use std::io::Read;
    let s = setup();
    let port = s.origin.addr.port();
    let mut c = TcpStream::connect(s.proxy.listen).unwrap();
    let req =
        format!("GET http://127.0.0.2:{port}/half HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let r = e2e::read_response(&mut c, Duration::from_secs(10)).expect("a response");
    assert_eq!(r.status, 200, "{:?}", r.text());
    // Then the proxy closes the connection (nothing more can arrive).
    let mut rest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.read_to_end(&mut rest).map_err(|e| e.kind()), Ok(0));
    let targets: Vec<String> = s.origin.seen().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/half"]);
    let audit = s.proxy.audit_until(Duration::from_secs(10), |l| {
        l.iter().any(|l| l.contains("\"status\":200"))
    });
    assert!(
        audit.iter().any(|l| l.contains("\"status\":200")),
        "{audit:?}"
    );
}

#[test]
fn a_silent_upstream_times_out_with_504() {
    // An origin that accepts and never answers.
    let silent = std::net::TcpListener::bind((ORIGIN_IP, 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let held = silent.accept();
        std::thread::sleep(Duration::from_secs(4));
        drop(held);
    });
    let dns = DnsServer::start();
    let proxy = ProxyProcess::start_with(
        Path::new(BIN),
        &policy_reading(443, &[port]),
        dns.addr,
        &["--upstream-idle-timeout-secs", "1"],
    );
    let started = Instant::now();
    let r = proxy_request(
        proxy.listen,
        "GET",
        &format!("http://127.0.0.2:{port}/slow"),
        "",
    );
    assert_eq!(
        (r.status, r.reason()),
        (504, Some("upstream_timeout")),
        "{:?}",
        r.text()
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    holder.join().unwrap();
}

#[test]
fn a_second_proxy_on_a_busy_port_exits_instead_of_sharing_it() {
    let dns = DnsServer::start();
    let first = ProxyProcess::start(Path::new(BIN), &policy(443), dns.addr);
    let dir = std::env::temp_dir().join(format!("chokepoint-busy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy(443)).unwrap();
    let out = Command::new(BIN)
        .arg("--policy")
        .arg(&policy_path)
        .args(["--listen", &first.listen.to_string()])
        .args(["--admin-listen", "127.0.0.1:0", "--audit-log", "/dev/null"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot bind"), "{err}");
    // The first proxy still serves every connection.
    let r = proxy_request(first.listen, "GET", "http://127.0.0.1:9/", "");
    assert_eq!(r.reason(), Some("blocked_address"));
}

#[test]
fn reads_that_carry_a_body_are_refused_before_any_connection() {
    let s = setup();
    let port = s.origin.addr.port();
    let url = format!("http://127.0.0.2:{port}/up");
    let auth = format!("127.0.0.2:{port}");
    for req in [
        format!("GET {url} HTTP/1.1\r\nHost: {auth}\r\nContent-Length: 5\r\n\r\nhello"),
        format!(
            "GET {url} HTTP/1.1\r\nHost: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        format!("HEAD {url} HTTP/1.1\r\nHost: {auth}\r\nContent-Length: 3\r\n\r\nabc"),
        // An empty chunked body is still a body framing on a read.
        format!(
            "GET {url} HTTP/1.1\r\nHost: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    ] {
        let r = send_raw(s.proxy.listen, req.as_bytes(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("body_on_read")),
            "{req:?}"
        );
    }
    if e2e::require("curl", e2e::have_tool("curl")) {
        // curl sends `GET` with `--data` as a GET with Content-Length.
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--max-time",
                "10",
                "-X",
                "GET",
            ])
            .args(["--data", "exfiltrated-bytes", "-x"])
            .arg(format!("http://{}", s.proxy.listen))
            .arg(&url)
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(head.contains("x-egress-error: body_on_read"), "{head}");
    }
    assert_eq!(s.origin.connections(), 0, "the origin saw a connection");
    // `Content-Length: 0` is no body.
    let r = proxy_request(s.proxy.listen, "GET", &url, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let audit = s.proxy.audit_until(Duration::from_secs(10), |l| {
        l.iter()
            .filter(|l| l.contains("\"reason\":\"body_on_read\""))
            .count()
            >= 4
    });
    assert!(
        audit
            .iter()
            .filter(|l| l.contains("\"reason\":\"body_on_read\""))
            .count()
            >= 4,
        "{audit:?}"
    );
}

#[test]
fn absolute_form_https_is_refused_and_never_sent_in_the_clear() {
    let s = setup();
    let port = s.origin.addr.port();
    for url in [
        format!("https://127.0.0.2:{port}/plain"),
        format!("https://origin.chokepoint.dev:{port}/plain"),
    ] {
        let r = proxy_request(s.proxy.listen, "GET", &url, "");
        assert_eq!(
            (r.status, r.reason()),
            (400, Some("https_requires_connect")),
            "{url}"
        );
        assert!(r.text().contains("CONNECT"), "{}", r.text());
    }
    assert_eq!(s.origin.connections(), 0);
}

/// A TCP "upstream" that accepts connections and counts the bytes it
/// receives (never answers): proof that nothing reached it.
struct Sink {
    addr: SocketAddr,
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink {
    fn start(ip: Ipv4Addr) -> Sink {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, a) = (received.clone(), accepted.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        r.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Sink {
            addr,
            received,
            accepted,
        }
    }

    fn received(&self) -> usize {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A ClientHello record with these extensions (type, data).
fn client_hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    let mut e = Vec::new();
    for (kind, data) in exts {
        e.extend_from_slice(&kind.to_be_bytes());
        e.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        e.extend_from_slice(data);
    }
    body.extend_from_slice(&u16::try_from(e.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&e);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// The `server_name` extension for `name`.
fn sni_ext(name: &str) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    entry.extend_from_slice(name.as_bytes());
    let mut data = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(&entry);
    (0, data)
}

/// Open a CONNECT tunnel to `target`; the stream after `200`.
fn open_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    use std::io::Read;
    let mut c = TcpStream::connect(proxy).unwrap();
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "tunnel closed: {head:?}");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c
}

/// Read until the peer closes (or 10 s): what arrived.
fn read_to_close(c: &mut TcpStream) -> Vec<u8> {
    use std::io::Read;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out
}

fn audit_reasons(proxy: &ProxyProcess, reason: &str, n: usize) -> Vec<String> {
    let needle = format!("\"reason\":\"{reason}\"");
    proxy
        .audit_until(Duration::from_secs(10), |l| {
            l.iter().filter(|l| l.contains(&needle)).count() >= n
        })
        .into_iter()
        .filter(|l| l.contains(&needle))
        .collect()
}

#[test]
fn a_tunnels_sni_must_be_its_connect_host() {
    let sink = Sink::start(ORIGIN_IP);
    let dns = DnsServer::start();
    dns.set_static("repo.chokepoint.dev", &[IpAddr::V4(ORIGIN_IP)]);
    let proxy = ProxyProcess::start(Path::new(BIN), &policy(sink.addr.port()), dns.addr);
    let target = format!("repo.chokepoint.dev:{}", sink.addr.port());
    // Another tenant's name, no name, ECH, plain HTTP: closed before a
    // byte goes upstream; a TLS alert for a bad name.
    let other = client_hello(&[sni_ext("other-tenant.example.com")]);
    let none = client_hello(&[(10, vec![0, 2, 0, 29])]);
    let ech = client_hello(&[sni_ext("repo.chokepoint.dev"), (0xfe0d, vec![0; 40])]);
    for (first, reason, alert) in [
        (other, "sni_mismatch", Some(112u8)),
        (none, "sni_mismatch", Some(112)),
        (ech, "ech_not_allowed", Some(40)),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "tunnel_not_tls",
            None,
        ),
    ] {
        let mut c = open_tunnel(proxy.listen, &target);
        c.write_all(&first).unwrap();
        let back = read_to_close(&mut c);
        match alert {
            Some(a) => assert_eq!(back, [21, 3, 3, 0, 2, 2, a], "{reason}"),
            None => assert!(back.is_empty(), "{reason}: {back:?}"),
        }
        assert!(!audit_reasons(&proxy, reason, 1).is_empty(), "{reason}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.received(), 0, "bytes reached the upstream");
    // The right name passes, split over two writes.
    let good = client_hello(&[sni_ext("Repo.Chokepoint.Dev")]);
    let mut c = open_tunnel(proxy.listen, &target);
    c.write_all(&good[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.write_all(&good[7..]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.received() < good.len() {
        assert!(
            Instant::now() < deadline,
            "the ClientHello never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = &audit_reasons(&proxy, "sni_mismatch", 2)[0];
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["method"].as_str()),
        (Some("deny"), Some("CONNECT"))
    );
}

#[test]
fn openssl_s_client_through_the_proxy_needs_the_right_servername() {
    if !e2e::require(
        "openssl",
        Command::new("openssl").arg("version").output().is_ok(),
    ) {
        return;
    }
    let tls = TlsOrigin::start();
    let dns = DnsServer::start();
    dns.set_static("repo.chokepoint.dev", &[IpAddr::V4(TLS_IP)]);
    let proxy = ProxyProcess::start(Path::new(BIN), &policy(tls.port), dns.addr);
    let s_client = |servername: Option<&str>| -> (bool, String) {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-proxy"])
            .arg(proxy.listen.to_string())
            .arg("-connect")
            .arg(format!("repo.chokepoint.dev:{}", tls.port))
            .arg("-CAfile")
            .arg(&tls.ca)
            .args(["-verify_return_error", "-brief", "-ign_eof"]);
        match servername {
            Some(n) => cmd.args(["-servername", n]),
            None => cmd.arg("-noservername"),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (text.contains("s_server"), text)
    };
    let (ok, text) = s_client(Some("repo.chokepoint.dev"));
    assert!(ok, "the right name must work: {text}");
    let (ok, text) = s_client(Some("other.chokepoint.dev"));
    assert!(!ok, "another name must fail: {text}");
    assert!(
        text.contains("unrecognized name") || text.contains("alert"),
        "{text}"
    );
    let (ok, text) = s_client(None);
    assert!(!ok, "no name must fail: {text}");
    assert_eq!(audit_reasons(&proxy, "sni_mismatch", 2).len(), 2);
}

#[test]
fn upstream_failures_never_log_the_query() {
    let token = "ghp_Q7mZ2vR8kP4nL1tX9cB6wY3hJ5sD0fG2aE8x";
    // 502: nothing listens on this port.
    let closed = free_port(ORIGIN_IP);
    // 504: accepts and never answers.
    let silent = std::net::TcpListener::bind((ORIGIN_IP, 0)).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let held = silent.accept();
        std::thread::sleep(Duration::from_secs(4));
        drop(held);
    });
    let dns = DnsServer::start();
    let proxy = ProxyProcess::start_with(
        Path::new(BIN),
        &policy_reading(443, &[closed, silent_port]),
        dns.addr,
        &["--upstream-idle-timeout-secs", "1"],
    );
    for (port, status, reason) in [
        (closed, 502, "upstream_connect_failed"),
        (silent_port, 504, "upstream_timeout"),
    ] {
        let r = proxy_request(
            proxy.listen,
            "GET",
            &format!("http://127.0.0.2:{port}/cb?access_token={token}&state=x"),
            "",
        );
        assert_eq!((r.status, r.reason()), (status, Some(reason)));
        assert!(!r.text().contains(token));
    }
    holder.join().unwrap();
    let audit = audit_reasons(&proxy, "upstream_timeout", 1);
    assert!(!audit.is_empty());
    for l in proxy.audit() {
        assert!(
            !l.contains(token) && !l.contains("access_token"),
            "audit: {l}"
        );
    }
    // Pingora did log both failures, without the target's path or query.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let err = proxy.stderr();
        let failures = err.iter().filter(|l| l.contains("Fail to proxy")).count();
        if failures >= 2 {
            for l in &err {
                assert!(
                    !l.contains(token) && !l.contains("access_token"),
                    "stderr: {l}"
                );
                assert!(!l.contains("/cb"), "stderr names the path: {l}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Pingora failure lines: {err:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failing_audit_log_stops_traffic_and_is_counted() {
    let s = setup();
    let port = s.origin.addr.port();
    let dns = DnsServer::start();
    let proxy = ProxyProcess::start_with(
        Path::new(BIN),
        &policy_reading(443, &[port]),
        dns.addr,
        &["--audit-log", "/dev/full"],
    );
    let url = format!("http://127.0.0.2:{port}/a");
    // The first line fails to write; from then on nothing is served.
    let _ = proxy_request(proxy.listen, "GET", &url, "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy
        .metric("egress_audit_write_errors_total")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "{}", proxy.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = s.origin.seen().len();
    for _ in 0..3 {
        let r = proxy_request(proxy.listen, "GET", &url, "");
        assert_eq!((r.status, r.reason()), (503, Some("audit_unavailable")));
    }
    let req = "CONNECT repo.chokepoint.dev:443 HTTP/1.1\r\nHost: repo.chokepoint.dev:443\r\n\r\n";
    let r = send_raw(proxy.listen, req.as_bytes(), Duration::from_secs(5)).unwrap();
    assert_eq!((r.status, r.reason()), (503, Some("audit_unavailable")));
    assert_eq!(s.origin.seen().len(), seen, "a request went out unaudited");
    // Counted in the request's logging phase, which may finish just after
    // the client has its answer: wait (bounded) for the third.
    let counted = "egress_requests_total{method=\"GET\",reason=\"audit_unavailable\",source=\"container\",verdict=\"deny\"} 3";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.metrics().contains(counted) {
        assert!(Instant::now() < deadline, "{}", proxy.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_tunnel_is_on_disk_before_its_first_byte_goes_up_and_survives_sigkill() {
    let sink = Sink::start(ORIGIN_IP);
    let dns = DnsServer::start();
    dns.set_static("repo.chokepoint.dev", &[IpAddr::V4(ORIGIN_IP)]);
    let proxy = ProxyProcess::start(Path::new(BIN), &policy(sink.addr.port()), dns.addr);
    let mut c = open_tunnel(
        proxy.listen,
        &format!("repo.chokepoint.dev:{}", sink.addr.port()),
    );
    c.write_all(&client_hello(&[sni_ext("repo.chokepoint.dev")]))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.received() == 0 {
        assert!(Instant::now() < deadline, "nothing reached the upstream");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The first byte is upstream: the open line is already in the file.
    let ok = Command::new("kill")
        .args(["-KILL", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    std::thread::sleep(Duration::from_millis(200));
    let audit = proxy.audit();
    let open: Vec<&String> = audit
        .iter()
        .filter(|l| l.contains("\"event\":\"tunnel_open\""))
        .collect();
    assert_eq!(open.len(), 1, "{audit:?}");
    assert!(
        open[0].contains("\"reason\":\"package_repo\""),
        "{}",
        open[0]
    );
    assert!(sink.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn reads_go_only_to_read_ports_and_never_to_this_hosts_addresses() {
    let s = setup();
    // A port the policy does not list.
    let other = Origin::start(ORIGIN_IP);
    let r = proxy_request(
        s.proxy.listen,
        "GET",
        &format!("http://127.0.0.2:{}/", other.addr.port()),
        "",
    );
    assert_eq!((r.status, r.reason()), (403, Some("port_not_allowed")));
    assert_eq!(other.connections(), 0);

    // An address of one of this host's interfaces, let through the class
    // check on purpose: still refused.
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output();
    let own: Option<Ipv4Addr> = out.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            .find(|a| !a.is_loopback())
    });
    if !e2e::require("a non-loopback IPv4 interface address", own.is_some()) {
        return;
    }
    let own = own.unwrap();
    let host = Origin::start(own);
    let port = host.addr.port();
    let dns = DnsServer::start();
    dns.set_static("self.chokepoint.dev", &[IpAddr::V4(own)]);
    let yaml = policy_reading(443, &[port]).replace(
        "unsafe_allow_ranges: [",
        &format!("unsafe_allow_ranges: [{own}/32, "),
    );
    let proxy = ProxyProcess::start(Path::new(BIN), &yaml, dns.addr);
    for url in [
        format!("http://{own}:{port}/"),
        format!("http://self.chokepoint.dev:{port}/"),
    ] {
        let r = proxy_request(proxy.listen, "GET", &url, "");
        assert_eq!(
            (r.status, r.reason()),
            (403, Some("proxy_host_address")),
            "{url}"
        );
    }
    assert_eq!(host.connections(), 0, "the proxy reached its own host");
}

#[test]
fn reload_over_http_needs_the_admin_token() {
    let s = setup();
    let g = |p: &ProxyProcess| p.metric("egress_policy_generation").unwrap();
    let g0 = g(&s.proxy);
    for token in [None, Some("wrong-token-wrong-token")] {
        let r = s.proxy.reload_with(token);
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
    }
    assert_eq!(g(&s.proxy), g0, "reloaded without the token");
    assert_eq!(s.proxy.reload().status, 200);
    assert_eq!(g(&s.proxy), g0 + 1.0);
}

#[test]
fn admin_responses_carry_the_security_headers() {
    // Written out here, not imported: the test states the contract itself.
    const EXPECTED: [(&str, &str); 5] = [
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", "default-src 'none'"),
        ("referrer-policy", "no-referrer"),
    ];
    let s = setup();
    let responses = [
        ("/metrics", s.proxy.admin_get("/metrics")),
        ("/healthz", s.proxy.admin_get("/healthz")),
        ("/readyz", s.proxy.admin_get("/readyz")),
        ("/nowhere", s.proxy.admin_get("/nowhere")),
        ("POST /reload without token", s.proxy.reload_with(None)),
        ("POST /reload", s.proxy.reload()),
    ];
    let statuses: Vec<u16> = responses.iter().map(|(_, r)| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 401, 200]);
    for (what, r) in &responses {
        for (name, value) in EXPECTED {
            assert_eq!(r.header(name), Some(value), "{what}: {name}");
        }
    }
}

#[test]
fn an_origin_cannot_forge_a_proxy_denial() {
    let s = setup();
    let port = s.origin.addr.port();
    s.origin
        .route_headers("/forged", "X-Egress-Error: write_from_container\r\n");
    let r = proxy_request(
        s.proxy.listen,
        "GET",
        &format!("http://127.0.0.2:{port}/forged"),
        "",
    );
    assert_eq!((r.status, r.reason()), (200, None), "{:?}", r.headers);
}

#[test]
fn slow_and_broken_heads_are_counted_and_audited() {
    let s = setup();
    let proxy = ProxyProcess::start_with(
        Path::new(BIN),
        &policy(443),
        s.dns.addr,
        &["--client-read-timeout-secs", "1"],
    );
    // Half a head, then nothing: 408 head_timeout.
    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.write_all(b"GET http://a.example.com/ HTTP/1.1\r\nHost: a.exa")
        .unwrap();
    let r = e2e::read_response(&mut c, Duration::from_secs(5)).expect("a 408");
    assert_eq!((r.status, r.reason()), (408, Some("head_timeout")));
    // Half a head, then a close: head_incomplete (no one to answer).
    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.write_all(b"GET http://a.example.com/ HTTP/1.1\r\nHo")
        .unwrap();
    drop(c);
    assert_eq!(audit_reasons(&proxy, "head_timeout", 1).len(), 1);
    assert_eq!(audit_reasons(&proxy, "head_incomplete", 1).len(), 1);
    let m = proxy.metrics();
    for reason in ["head_timeout", "head_incomplete"] {
        assert!(
            m.contains(&format!(
                "egress_requests_total{{method=\"OTHER\",reason=\"{reason}\",source=\"container\",verdict=\"deny\"}} 1"
            )),
            "{m}"
        );
    }
}

#[test]
fn open_connections_and_tunnels_are_gauged() {
    let sink = Sink::start(ORIGIN_IP);
    let dns = DnsServer::start();
    dns.set_static("repo.chokepoint.dev", &[IpAddr::V4(ORIGIN_IP)]);
    let proxy = ProxyProcess::start(Path::new(BIN), &policy(sink.addr.port()), dns.addr);
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(proxy.listen).unwrap())
        .collect();
    let mut t = open_tunnel(
        proxy.listen,
        &format!("repo.chokepoint.dev:{}", sink.addr.port()),
    );
    t.write_all(&client_hello(&[sni_ext("repo.chokepoint.dev")]))
        .unwrap();
    let wait_for = |name: &str, v: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.metric(name) != Some(v) {
            assert!(
                Instant::now() < deadline,
                "{name} != {v}: {}",
                proxy.metrics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("egress_tunnels_active", 1.0);
    // Three idle, one tunnel; the admin connection is not counted.
    wait_for("egress_connections_open", 4.0);
    drop(idle);
    drop(t);
    wait_for("egress_tunnels_active", 0.0);
    wait_for("egress_connections_open", 0.0);
}

/// Two orgs: `a` on 127.0.0.1, `b` on 127.0.0.5.
fn two_org_policy(read_port: u16, repo_port: u16) -> String {
    format!(
        "version: v1
unsafe_allow_ranges: [127.0.0.2/32]
read_ports: [80, {read_port}]
package_repos:
  - host: repo.chokepoint.dev
    ports: [{repo_port}]
orgs:
  a:
    clients: [127.0.0.1/32]
  b:
    clients: [127.0.0.5/32]
"
    )
}

#[test]
fn one_org_cannot_starve_another_and_non_readers_are_cut_off() {
    if !e2e::require("curl", e2e::have_tool("curl")) {
        return;
    }
    let origin = Origin::start(ORIGIN_IP);
    let port = origin.addr.port();
    origin.route_zeros("/big", 1 << 30);
    let sink = Sink::start(ORIGIN_IP);
    let dns = DnsServer::start();
    dns.set_static("repo.chokepoint.dev", &[IpAddr::V4(ORIGIN_IP)]);
    let proxy = ProxyProcess::start_with(
        Path::new(BIN),
        &two_org_policy(port, sink.addr.port()),
        dns.addr,
        &[
            "--max-connections",
            "110",
            "--max-connections-per-client",
            "120",
            "--max-connections-per-org",
            "100",
            "--max-tunnels-per-org",
            "2",
            "--client-write-timeout-secs",
            "3",
            "--client-read-timeout-secs",
            "30",
        ],
    );
    // Org a: 50 idle connections, then 100 downloads it never reads (50
    // over its cap).
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(proxy.listen).unwrap())
        .collect();
    let wait_open = |n: f64, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let open = proxy.metric("egress_connections_open").unwrap_or(-1.0);
            if open == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{open} connections open, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_open(50.0, Duration::from_secs(10));
    let req = format!("GET http://127.0.0.2:{port}/big HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n");
    let downloads: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(proxy.listen).unwrap();
            let _ = c.write_all(req.as_bytes());
            c
        })
        .collect();
    wait_open(100.0, Duration::from_secs(10));
    // Org b still gets its reads.
    for i in 0..5 {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(["--interface", "127.0.0.5", "-x"])
            .arg(format!("http://{}", proxy.listen))
            .arg(format!("http://127.0.0.2:{port}/small"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "org b, request {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Org a's tunnels are capped too.
    let target = format!("repo.chokepoint.dev:{}", sink.addr.port());
    drop(idle);
    wait_open(50.0, Duration::from_secs(10));
    let tunnels: Vec<TcpStream> = (0..2).map(|_| open_tunnel(proxy.listen, &target)).collect();
    let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let r = send_raw(proxy.listen, connect.as_bytes(), Duration::from_secs(5)).unwrap();
    assert_eq!((r.status, r.reason()), (429, Some("tunnel_limit")));
    drop(tunnels);
    // The 50 downloads that never read are closed by the client write
    // deadline (3 s), not held forever.
    let started = Instant::now();
    wait_open(0.0, Duration::from_secs(15));
    assert!(started.elapsed() < Duration::from_secs(15));
    let cut = audit_reasons(&proxy, "client_timeout", 50);
    assert_eq!(cut.len(), 50, "{cut:?}");
    let m = proxy.metrics();
    assert!(
        m.contains("egress_requests_total{method=\"OTHER\",reason=\"org_limit\",source=\"container\",verdict=\"deny\"} 50"),
        "{m}"
    );
    drop(downloads);
}

#[test]
fn the_descriptor_limit_is_raised_and_bounds_max_connections() {
    if !e2e::require(
        "prlimit",
        Command::new("prlimit").arg("--version").output().is_ok(),
    ) {
        return;
    }
    let dns = DnsServer::start();
    let proxy = ProxyProcess::start_wrapped(
        &["prlimit", "--nofile=300:400", "--"],
        Path::new(BIN),
        &policy(443),
        dns.addr,
        &["--max-connections", "10000"],
    );
    // (400 - 64) / 2 descriptors per connection.
    assert_eq!(proxy.metric("egress_connections_max"), Some(168.0));
    let err = proxy.stderr().join("\n");
    assert!(
        err.contains("raised RLIMIT_NOFILE") && err.contains("to=400"),
        "{err}"
    );
    assert!(
        err.contains("--max-connections clamped") && err.contains("clamped=168"),
        "{err}"
    );
}

#[test]
fn a_request_past_its_deadline_is_cut_and_audited() {
    // An upstream that accepts and never answers, with a long idle timeout:
    // only the whole-request deadline ends the request.
    let silent = std::net::TcpListener::bind((ORIGIN_IP, 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let held = silent.accept();
        std::thread::sleep(Duration::from_secs(6));
        drop(held);
    });
    let dns = DnsServer::start();
    let proxy = ProxyProcess::start_with(
        Path::new(BIN),
        &policy_reading(443, &[port]),
        dns.addr,
        &[
            "--request-timeout-secs",
            "1",
            "--upstream-idle-timeout-secs",
            "60",
        ],
    );
    let started = Instant::now();
    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.write_all(
        format!("GET http://127.0.0.2:{port}/slow HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let _ = read_to_close(&mut c);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the connection outlived the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(audit_reasons(&proxy, "request_deadline", 1).len(), 1);
    holder.join().unwrap();
}

#[test]
fn compose_keeps_the_admin_listener_off_exec_networks_with_a_token() {
    // The admin port listens on one address: loopback, or the proxy's own
    // fixed address on the egress network (which no exec container joins),
    // never on every interface; and it needs a token.
    let text = std::fs::read_to_string(e2e::workspace_root().join("compose.yaml")).unwrap();
    let default = |v: &str| -> String {
        // `${VAR:-default}` -> default
        match v.find(":-") {
            Some(i) if v.starts_with("${") => {
                let rest = &v[i + 2..];
                let end = rest.find('}').expect("closing brace");
                format!("{}{}", &rest[..end], &rest[end + 1..])
            }
            _ => v.to_owned(),
        }
    };
    let admin: SocketAddr = default(
        text.lines()
            .find_map(|l| l.trim().strip_prefix("- --admin-listen="))
            .expect("compose.yaml sets --admin-listen"),
    )
    .parse()
    .unwrap();
    assert!(!admin.ip().is_unspecified(), "{admin}");
    if !admin.ip().is_loopback() {
        let own = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ipv4_address: "))
            .map(default)
            .any(|a| a == admin.ip().to_string());
        assert!(
            own,
            "{admin} is not the proxy's fixed egress-network address"
        );
    }
    assert!(
        text.contains("EGRESS_ADMIN_TOKEN_FILE:"),
        "no admin token file"
    );
}
