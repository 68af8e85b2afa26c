//! `egressctl appliance` and `egressctl exec` on bad input: a clear error
//! and nothing changed (no Docker object, no file). No Docker needed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::process::{Command, Output};

const EGRESSCTL: &str = env!("CARGO_BIN_EXE_egressctl");

fn run(args: &[&str]) -> Output {
    Command::new(EGRESSCTL).args(args).output().unwrap()
}

#[test]
fn down_refuses_a_directory_that_is_not_ours_and_removes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep"), "x").unwrap();
    let out = run(&["appliance", "down", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no appliance.json"), "{err}");
    assert!(tmp.path().join("keep").exists());
}

#[test]
fn up_without_the_binaries_says_which_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    let bins = tmp.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    let out = run(&[
        "appliance",
        "up",
        "--dir",
        dir.to_str().unwrap(),
        "--unit-dir",
        tmp.path().join("units").to_str().unwrap(),
        "--bin-dir",
        bins.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("egress-proxy missing"), "{err}");
    assert!(!dir.exists(), "up wrote {}", dir.display());
    assert!(!tmp.path().join("units").exists());
}

#[test]
fn up_refuses_a_bad_org_and_a_small_egress_subnet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    let bin_dir = std::path::Path::new(EGRESSCTL).parent().unwrap();
    for (flag, value, msg) in [
        ("--org", "../x", "--org"),
        ("--egress-subnet", "10.240.254.0/25", "--egress-subnet"),
    ] {
        let out = run(&[
            "appliance",
            "up",
            "--dir",
            dir.to_str().unwrap(),
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            flag,
            value,
        ]);
        assert!(!out.status.success(), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{err}");
        assert!(!dir.exists(), "{flag}: up wrote {}", dir.display());
    }
}

#[test]
fn exec_refuses_an_unknown_org_with_125_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for org in ["nosuch", "../etc", "UPPER"] {
        let out = run(&[
            "exec",
            "--org",
            org,
            "--dir",
            tmp.path().to_str().unwrap(),
            "--",
            "true",
        ]);
        assert_eq!(out.status.code(), Some(125), "{org}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("egressctl: exec: "), "{err}");
        assert!(err.contains("org"), "{err}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    // No command at all: a usage error.
    let out = run(&["exec", "--org", "acme"]);
    assert_eq!(out.status.code(), Some(2));
}
