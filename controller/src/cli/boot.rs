//! `egressctl install-boot`: install the systemd units that keep the kernel
//! rules across reboots (controller/systemd/): `chokepoint-nft.service`
//! loads the ruleset the controller saved before docker.service starts (and
//! Docker requires it: no rules, no Docker), then
//! `chokepoint-controller.service` runs the controller.
//!
//! Refuses to install while no saved ruleset exists (run the controller, or
//! `egressctl reconcile --ruleset-file ...`, once first): the boot unit
//! would fail and, by design, keep Docker from starting.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args as ClapArgs;

use super::{emit_line, fail_usage};
use crate::firewall::SAVED_RULESET;

/// The units, as shipped in the tree.
pub const UNITS: [(&str, &str); 2] = [
    (
        "chokepoint-nft.service",
        include_str!("../../systemd/chokepoint-nft.service"),
    ),
    (
        "chokepoint-controller.service",
        include_str!("../../systemd/chokepoint-controller.service"),
    ),
];

/// Arguments of `egressctl install-boot`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Install under this root instead of `/` (packaging, tests).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Only write the unit files; do not run `systemctl daemon-reload` and
    /// `systemctl enable`.
    #[arg(long)]
    pub no_enable: bool,
}

/// Write the units, then reload and enable them.
pub fn run(args: &Args) -> ExitCode {
    let saved = args.root.join(SAVED_RULESET.trim_start_matches('/'));
    if !saved.is_file() {
        return fail_usage(&format!(
            "no saved ruleset at {}: run egress-controller (or egressctl reconcile) once first",
            saved.display()
        ));
    }
    let dir = args.root.join("etc/systemd/system");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail_usage(&format!("{}: {e}", dir.display()));
    }
    for (name, text) in UNITS {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            return fail_usage(&format!("{}: {e}", path.display()));
        }
        if emit_line(&format!("installed {}", path.display())).is_err() {
            return ExitCode::FAILURE;
        }
    }
    if args.no_enable {
        return ExitCode::SUCCESS;
    }
    let names: Vec<&str> = UNITS.iter().map(|(n, _)| *n).collect();
    for argv in [vec!["daemon-reload"], [&["enable"][..], &names].concat()] {
        match Command::new("systemctl").args(&argv).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return fail_usage(&format!("systemctl {}: {s}", argv.join(" "))),
            Err(e) => return fail_usage(&format!("systemctl: {e}")),
        }
    }
    ExitCode::SUCCESS
}
