//! `egressctl`: one module per subcommand, each with an `Args` struct and a `run`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod scrub;

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
    /// Remove secrets from stdin and write the result to stdout.
    Scrub(scrub::Args),
}

impl Cli {
    /// Run the chosen subcommand and return the process exit code.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Scrub(args) => scrub::run(&args),
        }
    }
}
