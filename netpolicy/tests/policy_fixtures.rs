//! Every bad policy in `testdata/bad/` is rejected with its line, the field
//! and what to write instead; the shipped example and the shape load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::path::Path;

use netpolicy::{Policy, PolicyError};

fn load(name: &str) -> Result<Policy, PolicyError> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/bad")
        .join(name);
    Policy::load(&p)
}

#[test]
fn each_mistake_names_line_field_and_fix() {
    // (file, line, field contains, message contains)
    let cases = [
        (
            "unknown_field.yaml",
            6,
            "orgs.acme",
            "expected `clients` or `integrations`",
        ),
        ("missing_version.yaml", 1, "", "add `version: v1`"),
        ("version_v2.yaml", 1, "", "write `version: v1`"),
        (
            "bad_cidr.yaml",
            5,
            "orgs.acme.clients",
            "write an address range like",
        ),
        (
            "host_bits_set.yaml",
            4,
            "orgs.acme.clients",
            "write `10.10.0.0/24`",
        ),
        (
            "wildcard_middle.yaml",
            7,
            "hosts",
            "only as the whole leftmost label",
        ),
        (
            "wildcard_in_repo.yaml",
            3,
            "package_repos",
            "list each host name",
        ),
        ("port_zero.yaml", 4, "ports", "from 1 to 65535"),
        ("port_too_big.yaml", 4, "ports", "from 1 to 65535"),
        ("bad_org_id.yaml", 3, "orgs", "e.g. `acme`"),
        (
            "overlapping_clients.yaml",
            6,
            "orgs.globex.clients[0]",
            "non-overlapping",
        ),
        ("duplicate_host.yaml", 9, "github2", "list each host once"),
        ("duplicate_repo.yaml", 4, "package_repos[1]", "listed twice"),
        ("duplicate_org.yaml", 3, "orgs", "`acme` is listed twice"),
        ("special_use_host.yaml", 3, "package_repos", "special-use"),
        (
            "private_literal.yaml",
            3,
            "package_repos[0]",
            "unsafe_allow_ranges",
        ),
        (
            "allow_everything.yaml",
            2,
            "unsafe_allow_ranges[0]",
            "narrow ranges",
        ),
        ("tabs.yaml", 3, "", "indent with spaces"),
        (
            "integration_no_hosts.yaml",
            6,
            "github.hosts",
            "like `hosts: [api.github.com]`",
        ),
        ("idn_spoof_host.yaml", 3, "package_repos", "IDN spoof"),
        (
            "read_ports_empty.yaml",
            2,
            "read_ports",
            "leave `read_ports` out",
        ),
        ("read_ports_duplicate.yaml", 2, "read_ports", "listed twice"),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bad");
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        on_disk,
        cases.len(),
        "every fixture has a case and every case a fixture"
    );
    for (file, line, field, needle) in cases {
        let err = load(file).expect_err(file);
        assert_eq!(err.line, line, "{file}: {err}");
        assert!(err.field.contains(field), "{file}: field {:?}", err.field);
        assert!(!err.fix.is_empty(), "{file}: no fix in {err}");
        let text = err.to_string();
        assert!(text.contains(needle), "{file}: {text}");
        assert!(
            text.starts_with(&dir.join(file).display().to_string()),
            "{text}"
        );
    }
}

#[test]
fn shipped_example_is_safe() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    let policy = Policy::load(&p).unwrap();
    assert!(
        policy.unsafe_allow_ranges().is_empty(),
        "the default has no exceptions"
    );
    assert!(
        policy
            .package_repos()
            .any(|(h, p)| h == "pypi.org" && p == [443])
    );
    assert_eq!(
        policy
            .org_for_client("127.0.0.1".parse().unwrap())
            .map(|o| o.as_str()),
        Some("local")
    );
    for org in policy.orgs() {
        assert!(
            org.integrations().is_empty(),
            "the default allows no writes"
        );
    }
}

#[test]
fn unreadable_file_is_an_error_not_an_empty_policy() {
    let err = Policy::load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
    assert!(err.problem.contains("cannot read"), "{err}");
}
