//! `egressctl install-boot` (the systemd units that load the saved rules
//! before Docker) and `egressctl status` (daemon, DNS and isolation lines),
//! run as the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::path::Path;
use std::process::Command;

fn egressctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egressctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn install_boot_writes_the_units_of_the_tree_and_needs_a_saved_ruleset() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    // No saved ruleset yet: the boot unit would fail and keep Docker down.
    let (code, _, err) = egressctl(&["install-boot", "--root", r, "--no-enable"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no saved ruleset"), "{err}");
    assert!(!root.path().join("etc/systemd/system").exists());

    let saved = root.path().join("var/lib/chokepoint/nft-ruleset.json");
    std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
    std::fs::write(&saved, "{\"nftables\": []}").unwrap();
    let (code, out, err) = egressctl(&["install-boot", "--root", r, "--no-enable"]);
    assert_eq!(code, 0, "{err}");
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for unit in ["chokepoint-nft.service", "chokepoint-controller.service"] {
        let installed = root.path().join("etc/systemd/system").join(unit);
        assert_eq!(
            std::fs::read_to_string(&installed).unwrap(),
            std::fs::read_to_string(tree.join(unit)).unwrap(),
            "{unit}"
        );
        assert!(out.contains(unit), "{out}");
    }
    let nft = std::fs::read_to_string(tree.join("chokepoint-nft.service")).unwrap();
    assert!(nft.contains(controller::firewall::SAVED_RULESET), "{nft}");
    assert!(nft.contains("RequiredBy=docker.service"), "{nft}");
    // Where systemd's own checker is installed, the boot unit passes it.
    if e2e::have_tool("systemd-analyze") {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(tree.join("chokepoint-nft.service"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn status_reports_the_daemon_and_the_isolation_it_can_give() {
    let have_docker = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !e2e::require("the Docker daemon", have_docker) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: v1\norgs:\n  statusorg:\n    clients: [192.0.2.0/30]\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let p = policy.to_str().unwrap();
    let s = state.to_str().unwrap();
    let version = String::from_utf8(
        Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let runsc = String::from_utf8(
        Command::new("docker")
            .args(["info", "--format", "{{json .Runtimes}}"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .contains("\"runsc\"");
    for iso in ["runc", "gvisor"] {
        let (code, out, err) = egressctl(&[
            "status",
            "--policy",
            p,
            "--state-dir",
            s,
            "--subnet-base",
            "10.245.0.0/16",
            "--isolation",
            iso,
        ]);
        // Nothing was reconciled here: status is not ok either way.
        assert_eq!(code, 1, "{out}{err}");
        let daemon: serde_json::Value = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("docker_version").is_some())
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(daemon["docker_version"], version.as_str(), "{daemon}");
        assert_eq!(
            daemon["cve_2024_29018_affected"],
            controller::daemon::cve_2024_29018_affected(&version),
            "{daemon}"
        );
        let isolation = &daemon["isolation"];
        assert_eq!(isolation["expected"], iso, "{daemon}");
        assert_eq!(isolation["gvisor_runsc"], runsc, "{daemon}");
        assert!(!isolation["daemon_runtimes"].as_array().unwrap().is_empty());
        let available = isolation["available"].as_str().unwrap();
        match iso {
            "runc" => assert_eq!(available, "yes"),
            _ if runsc => assert_eq!(available, "yes"),
            _ => assert!(available.starts_with("no: "), "{available}"),
        }
    }
}

/// On a daemon affected by CVE-2024-29018, the controller logs its version
/// and refuses to run with the container checks (which enforce the DNS
/// setting) turned off, before it changes anything.
#[test]
fn controller_refuses_an_affected_daemon_without_container_checks() {
    let version = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    let have_docker = version.as_ref().is_ok_and(|o| o.status.success());
    if !e2e::require("the Docker daemon", have_docker) {
        return;
    }
    let version = String::from_utf8(version.unwrap().stdout).unwrap();
    if !controller::daemon::cve_2024_29018_affected(version.trim()) {
        eprintln!("Docker {version} is not affected: nothing to refuse here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: v1\norgs:\n  refuseorg:\n    clients: [192.0.2.0/30]\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let ruleset = dir.path().join("ruleset.json");
    let out = Command::new(env!("CARGO_BIN_EXE_egress-controller"))
        .args(["--once", "--unsafe-skip-container-checks", "--policy"])
        .arg(&policy)
        .args(["--subnet-base", "10.246.0.0/16", "--state-dir"])
        .arg(&state)
        .arg("--ruleset-file")
        .arg(&ruleset)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stdout}{stderr}");
    assert!(stderr.contains("CVE-2024-29018"), "{stderr}");
    assert!(
        stdout.contains("\"cve_2024_29018_affected\":true"),
        "{stdout}"
    );
    assert!(!ruleset.exists() && !state.exists(), "it changed something");
}
