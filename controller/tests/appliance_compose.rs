//! compose.yaml: valid for docker-compose v1 (`docker-compose config`, the
//! Compose Specification's own check) and every service hardened: an image
//! made by `egressctl appliance up` (no `build:`), read-only root, all
//! capabilities dropped, no-new-privileges, a non-root numeric user, memory,
//! CPU and pids limits, a healthcheck through the binary's self-probe, and
//! no published port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::process::Command;

const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml");

#[test]
fn compose_file_is_valid_and_every_service_is_hardened() {
    let have = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !e2e::require("docker-compose", have) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("docker-compose")
        .args(["-p", "chokepoint", "-f", COMPOSE, "config"])
        .env("CHOKEPOINT_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let services = doc["services"].as_mapping().unwrap();
    assert!(!services.is_empty());
    for (name, s) in services {
        let name = name.as_str().unwrap();
        assert!(s.get("build").is_none(), "{name}: build");
        assert!(
            s["image"].as_str().unwrap().starts_with("chokepoint-"),
            "{name}"
        );
        assert_eq!(s["read_only"], serde_yaml_ng::Value::Bool(true), "{name}");
        let caps: Vec<&str> = s["cap_drop"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(caps, ["ALL"], "{name}");
        assert!(s.get("cap_add").is_none(), "{name}: cap_add");
        assert!(s.get("privileged").is_none(), "{name}: privileged");
        assert!(s.get("ports").is_none(), "{name}: published ports");
        let sec = format!("{:?}", s["security_opt"]);
        assert!(sec.contains("no-new-privileges:true"), "{name}: {sec}");
        let user = s["user"].as_str().unwrap();
        let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
        assert_ne!(uid, 0, "{name}");
        for limit in ["mem_limit", "cpus", "pids_limit"] {
            assert!(s.get(limit).is_some(), "{name}: no {limit}");
        }
        let test = format!("{:?}", s["healthcheck"]["test"]);
        assert!(test.contains("--healthcheck"), "{name}: {test}");
        let vols = format!("{:?}", s.get("volumes"));
        assert!(!vols.contains("docker.sock"), "{name}: the Docker socket");
        // Admin and metrics listeners bind the service's own address on
        // the egress network (no exec container joins it), never 0.0.0.0.
        let args: Vec<&str> = s["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for flag in ["--admin-listen=", "--metrics-listen="] {
            if let Some(a) = args.iter().find_map(|a| a.strip_prefix(flag)) {
                let ip = s["networks"]["egress"]["ipv4_address"].as_str().unwrap();
                assert_eq!(a.rsplit_once(':').unwrap().0, ip, "{name}: {flag}{a}");
            }
        }
    }
    let api_args = format!("{:?}", services["api"]["command"]);
    assert!(
        api_args.contains("--metrics-listen=10.230.0.3:9092"),
        "the API's metrics listener: {api_args}"
    );
}
