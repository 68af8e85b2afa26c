//! `egressctl`: one module per subcommand, each with an `Args` struct and a `run`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod appliance;
pub mod boot;
pub mod check;
pub mod credential;
pub mod exec;
pub mod image;
pub mod policy;
pub mod reconcile;
pub mod scrub;
pub mod status;
pub mod token;

/// chokepoint's operator CLI.
#[derive(Debug, Parser)]
#[command(name = "egressctl", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decide one request against a policy; print one JSON line (exit 0 allow, 1 deny, 2 error).
    Check(check::Args),
    /// Build registry-free `FROM scratch` images (proxy, controller, exec).
    Image(image::Args),
    /// Work with policy files.
    Policy(policy::Args),
    /// Run one controller pass now (networks, proxy attachment, nftables).
    Reconcile(reconcile::Args),
    /// Live probes of every boundary ("All boundaries active"; exit 1 if any line is red).
    /// With --policy: the configuration view (network, proxy attachment, tables per org).
    Status(status::Args),
    /// Remove secrets from stdin and write the result to stdout.
    Scrub(scrub::Args),
    /// Manage the worker's encrypted credentials (add, list, remove, rotate-key).
    Credential(credential::Args),
    /// Install the systemd units that load the saved rules before Docker at boot.
    InstallBoot(boot::Args),
    /// Mint bearer tokens for chokepoint-api.
    Token(token::Args),
    /// Bring the whole appliance up (images, keys, configuration, services) or remove it.
    Appliance(appliance::Args),
    /// Run a command in a hardened exec container of an org (output scrubbed; exits with its status).
    Exec(exec::Args),
}

impl Cli {
    /// Run the chosen subcommand and return the process exit code.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Check(args) => check::run(&args),
            Command::Image(args) => image::run(&args),
            Command::Policy(args) => policy::run(&args),
            Command::Reconcile(args) => reconcile::run_reconcile(&args),
            Command::Status(args) => status::run(&args),
            Command::Scrub(args) => scrub::run(&args),
            Command::Credential(args) => credential::run(&args),
            Command::InstallBoot(args) => boot::run(&args),
            Command::Token(args) => token::run(&args),
            Command::Appliance(args) => appliance::run(&args),
            Command::Exec(args) => exec::run(&args),
        }
    }
}

/// Exit code of a denial (`egressctl check`).
pub const EXIT_DENY: u8 = 1;
/// Exit code of a usage or policy error.
pub const EXIT_USAGE: u8 = 2;

/// Print one line to stdout.
pub(crate) fn emit_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Print one error line to stderr and return the usage exit code.
pub(crate) fn fail_usage(msg: &str) -> ExitCode {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "egressctl: {msg}");
    ExitCode::from(EXIT_USAGE)
}
