//! `egressctl`: the operator CLI. See [`controller::cli`].
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = controller::cli::Cli::parse();
    // The production switch: an operator command prints no warning, but a
    // value that is neither `production` nor `development` is refused as
    // in every other binary (exit 78).
    let value = std::env::var_os(mode::ENV);
    if let Err(r) = mode::Mode::parse(value.as_ref().map(|v| v.to_str().unwrap_or("\u{fffd}"))) {
        let _ = writeln!(std::io::stderr().lock(), "egressctl: {r}");
        return ExitCode::from(mode::EX_CONFIG);
    }
    cli.run()
}
