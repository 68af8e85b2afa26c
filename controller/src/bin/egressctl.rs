//! `egressctl`: the operator CLI. See [`controller::cli`].
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    controller::cli::Cli::parse().run()
}
