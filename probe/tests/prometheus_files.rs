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
        src("../controller/src/worker_scrape.rs"),
        src("../api/src/metrics.rs"),
    ]
    .concat();
    for name in [
        "controller_drift_total",
        "egress_audit_write_errors_total",
        "worker_token_echo_total",
        "controller_last_reconcile_timestamp_seconds",
        "worker_refresh_orphans_total",
        "worker_credentials_needs_reauth",
        "controller_worker_scrape_up",
        "chokepoint_api_queue_write_errors_total",
        "chokepoint_api_auth_refusals_total",
    ] {
        assert!(rules.contains(name), "alerts.yml does not use {name}");
        assert!(exported.contains(name), "no binary exports {name}");
    }
}

#[test]
fn scrape_targets_are_what_the_appliance_binds() {
    // The proxy's admin and the API's metrics listeners as compose.yaml
    // binds them (their defaults), the controller's --metrics-listen
    // default; the worker is scraped through the controller, never directly.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let prom = read("deploy/prometheus/prometheus.yml");
    let compose = read("compose.yaml");
    let controller = read("controller/src/bin/egress-controller.rs");
    for (target, bound_in, binding) in [
        (
            "10.230.0.2:9090",
            &compose,
            "--admin-listen=${CHOKEPOINT_PROXY_ADMIN_IP:-10.230.0.2}:9090",
        ),
        (
            "10.230.0.3:9092",
            &compose,
            "--metrics-listen=${CHOKEPOINT_API_IP:-10.230.0.3}:9092",
        ),
        (
            "127.0.0.1:9091",
            &controller,
            "#[arg(long, default_value = \"127.0.0.1:9091\")]\n    metrics_listen",
        ),
    ] {
        assert!(
            prom.contains(&format!("targets: [\"{target}\"]")),
            "prometheus.yml does not scrape {target}"
        );
        assert!(
            bound_in.contains(binding),
            "nothing binds {target} ({binding})"
        );
    }
    assert!(
        !prom.contains("job_name: chokepoint-worker"),
        "the worker cannot be scraped directly (0600 unix socket)"
    );
}
