//! The API certificate `egressctl appliance up` makes is one the API
//! container's own healthcheck accepts: the rustls self-probe
//! (`chokepoint-api --healthcheck https://IP:8443/readyz --healthcheck-ca
//! tls-cert.pem`) trusts it for its IP address. A CA-marked self-signed
//! certificate (what a bare `openssl req -x509` makes) is refused by the
//! same probe, which is why the container used to report `unhealthy`.
//!
//! The server is `openssl s_server -www` on loopback (it answers any GET
//! with 200), so no other binary is needed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(cert: &Path, key: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn the_appliance_certificate_passes_the_rustls_self_probe() {
    let have = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !e2e::require("openssl", have) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    controller::cli::appliance::self_signed_cert("127.0.0.1".parse().unwrap(), &cert, &key)
        .unwrap();
    let (_server, port) = serve(&cert, &key);
    let url = format!("https://127.0.0.1:{port}/readyz");
    assert_eq!(
        probe::check(&url, Some(&cert)).map_err(|e| e.to_string()),
        Ok(200)
    );
    // Another name than the certificate's (the probe connects to
    // 127.0.0.1 for `localhost`): refused.
    let e = probe::check(&format!("https://localhost:{port}/readyz"), Some(&cert))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid for name"), "{e}");

    // The regression: the same command without the end-entity extensions
    // makes a CA:TRUE certificate, which rustls refuses as a server's.
    let (ca_cert, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=chokepoint-api", "-addext"])
        .arg("subjectAltName=IP:127.0.0.1")
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (_old, port) = serve(&ca_cert, &ca_key);
    let e = probe::check(&format!("https://127.0.0.1:{port}/readyz"), Some(&ca_cert))
        .unwrap_err()
        .to_string();
    assert!(e.contains("CaUsedAsEndEntity"), "{e}");
}
