//! `egressctl policy validate FILE`: load a policy exactly as the proxy does.
//!
//! Prints `ok: N orgs, M package repos` and exits 0, or the one-line error
//! (`file:line: field: problem; fix`) on stderr and exits 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use netpolicy::Policy;

use super::{emit_line, fail_usage};

/// Arguments of `egressctl policy`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// What to do with the policy.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `egressctl policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file; exit 0 if it loads, 2 with the line and fix if not.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
}

/// Run `egressctl policy`.
pub fn run(args: &Args) -> ExitCode {
    match &args.command {
        PolicyCommand::Validate { file } => match Policy::load(file) {
            Ok(p) => {
                let line = format!(
                    "ok: {} orgs, {} package repos",
                    p.orgs().len(),
                    p.package_repos().count()
                );
                match emit_line(&line) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(_) => ExitCode::FAILURE,
                }
            }
            Err(e) => fail_usage(&e.to_string()),
        },
    }
}
