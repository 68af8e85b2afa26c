//! deploy/prometheus: the scrape configuration and the alert rules pass
//! `promtool check config` / `check rules`, and every alert fires on
//! synthetic series (`promtool test rules alerts_test.yml`). Skips when
//! promtool is missing, unless CHOKEPOINT_REQUIRE_PRIVILEGED=1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test code

use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let have = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("CHOKEPOINT_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "CHOKEPOINT_REQUIRE_PRIVILEGED=1 but promtool (apt-get install prometheus) is not available"
        );
        eprintln!("SKIP: promtool is not available");
        return None;
    }
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .unwrap();
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn scrape_config_alert_rules_and_their_unit_tests_pass_promtool() {
    // --syntax-only: the secret files it names exist only on the appliance.
    for args in [
        &["check", "config", "--syntax-only", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        if let Some((ok, out)) = promtool(args) {
            assert!(ok, "promtool {args:?}:\n{out}");
        }
    }
}

#[test]
fn alert_rules_use_metrics_the_binaries_export() {
    let rules = std::fs::read_to_string(dir().join("alerts.yml")).unwrap();
    let src = |p: &str| {
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
    };
    let exported = [
        src("../proxy/src/metrics.rs"),
        src("../worker/src/metrics.rs"),
        src("../controller/src/reconcile.rs"),
    ]
    .concat();
    for name in [
        "controller_drift_total",
        "egress_audit_write_errors_total",
        "worker_token_echo_total",
        "controller_last_reconcile_timestamp_seconds",
        "worker_refresh_orphans_total",
        "worker_credentials_needs_reauth",
    ] {
        assert!(rules.contains(name), "alerts.yml does not use {name}");
        assert!(exported.contains(name), "no binary exports {name}");
    }
}
