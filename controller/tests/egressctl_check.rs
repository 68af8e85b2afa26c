//! `egressctl check` and `egressctl policy validate`, run as the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn egressctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egressctl"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const POLICY: &str = "examples/policy.yaml";

fn check(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["check", "--policy", POLICY];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = egressctl(&all);
    assert_eq!(stdout.lines().count(), 1, "one JSON line; stderr: {stderr}");
    (code, serde_json::from_str(stdout.trim()).unwrap())
}

#[test]
fn allow_prints_the_addresses_to_dial() {
    let (code, v) = check(&[
        "--resolve",
        "example.com=93.184.215.14,2606:2800:21f:cb07:6820:80da:af6b:8b2c",
        "GET",
        "http://Example.com./x",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["reason"], "read_public");
    assert_eq!(v["host"], "example.com");
    assert_eq!(v["port"], 80);
    assert_eq!(v["addresses"].as_array().unwrap().len(), 2);
}

#[test]
fn denials_exit_1_with_the_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["POST", "https://example.com/"], "write_from_container"),
        (&["GET", "http://127.0.0.1/"], "blocked_address"),
        (&["GET", "http://0x7f.1/"], "blocked_address"),
        (
            &["GET", "http://169.254.169.254/latest/"],
            "blocked_address",
        ),
        (
            &[
                "--resolve",
                "rebind.example.com=93.184.215.14,10.0.0.1",
                "GET",
                "http://rebind.example.com/",
            ],
            "blocked_address",
        ),
        (
            &[
                "--resolve",
                "gone.example.com=",
                "GET",
                "http://gone.example.com/",
            ],
            "unresolvable",
        ),
        (
            &["GET", "http://metadata.google.internal/"],
            "special_use_name",
        ),
        (&["CONNECT", "example.com:443"], "connect_not_package_repo"),
        (&["CONNECT", "pypi.org:22"], "connect_port_not_allowed"),
        (&["OPTIONS", "http://example.com/"], "method_not_allowed"),
        (
            &["--source", "worker", "POST", "https://example.com/"],
            "write_not_integration",
        ),
        (
            &["--org", "nobody", "GET", "http://example.com/"],
            "unknown_org",
        ),
        (&["GET", "http://user:pw@example.com/"], "userinfo_in_url"),
        // `--resolve` for a name netpolicy refuses: the denial, not exit 2.
        (
            &[
                "--resolve",
                "xn--80ak6aa92e.com=93.184.215.14",
                "GET",
                "http://xn--80ak6aa92e.com/",
            ],
            "idn_spoof",
        ),
        (
            &[
                "--resolve",
                "localhost=127.0.0.1",
                "GET",
                "http://localhost/",
            ],
            "special_use_name",
        ),
        (
            &[
                "--resolve",
                "example.com=93.184.215.14",
                "GET",
                "http://example.com:6379/",
            ],
            "port_not_allowed",
        ),
    ];
    for (args, reason) in cases {
        let (code, v) = check(args);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(v["verdict"], "deny", "{args:?}");
        assert_eq!(v["reason"], *reason, "{args:?}");
        assert!(v["addresses"].as_array().unwrap().is_empty());
    }
}

#[test]
fn connect_to_a_package_repo_is_allowed() {
    let (code, v) = check(&[
        "--resolve",
        "pypi.org=151.101.0.223",
        "CONNECT",
        "pypi.org:443",
    ]);
    assert_eq!((code, v["reason"].as_str()), (0, Some("package_repo")));
}

#[test]
fn usage_and_policy_errors_exit_2() {
    let (code, _, stderr) = egressctl(&[
        "check",
        "--policy",
        "netpolicy/testdata/bad/bad_cidr.yaml",
        "GET",
        "http://example.com/",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("bad_cidr.yaml:5"), "{stderr}");
    let (code, _, _) = egressctl(&["check", "--policy", POLICY, "GET"]);
    assert_eq!(code, 2);
    let (code, _, stderr) = egressctl(&[
        "check",
        "--policy",
        POLICY,
        "--resolve",
        "x",
        "GET",
        "http://example.com/",
    ]);
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, _) = egressctl(&["check", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--resolve"));
}

#[test]
fn policy_validate() {
    let (code, stdout, _) = egressctl(&["policy", "validate", POLICY]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("ok: 1 orgs, 7 package repos"),
        "{stdout}"
    );
    let (code, stdout, stderr) = egressctl(&[
        "policy",
        "validate",
        "netpolicy/testdata/bad/unknown_field.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(":6: orgs.acme: unknown field `integrashuns`"),
        "{stderr}"
    );
}
