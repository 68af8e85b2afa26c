//! `egress-proxy`: chokepoint's egress proxy appliance, the only path out of
//! an exec container.
//!
//! It reads every request head itself (hygiene, 64 KiB bound), asks
//! `netpolicy` for the decision, resolves once and validates every address
//! (DNS pinning), then either forwards plain HTTP through Pingora to the exact
//! validated address or splices a CONNECT tunnel to a package repository.
//! Every request or tunnel is counted (Prometheus) and audited (one scrubbed
//! JSON line). It must never decide policy itself (that is `netpolicy`'s),
//! dial an address that was not validated, or resolve a name twice.
//!
//! Modules: [`cli`] (flags, start, stop), [`server`] (accept loop, heads,
//! dispatch), [`head`] (reader + hygiene), [`connect`] (tunnels), [`forward`]
//! (Pingora `ProxyHttp`), [`resolve`] (DNS pinning), [`deny`] (the one place
//! that renders denials), [`metrics`], [`audit`] (+ scrubbing), [`admin`],
//! [`reload`], [`state`], [`stream`] (buffered client stream).

mod admin;
mod admit;
mod audit;
mod cli;
mod connect;
mod deny;
mod forward;
mod head;
mod metrics;
mod production;
mod reload;
mod resolve;
mod server;
mod state;
mod stream;
mod sys;
mod tls;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: under load glibc's allocator showed as ~12% of the proxy's CPU
/// (arena lock contention between worker threads, consolidation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE: bad flags or configuration.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = probe::main_if_asked("egress-proxy", &argv) {
        return code;
    }
    let args = match cli::Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let _ = writeln!(std::io::stderr(), "egress-proxy: {line}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // The production switch, before anything is bound (exit 78).
    let mode = match mode::Mode::from_env("egress-proxy") {
        Ok(m) => m,
        Err(code) => return code,
    };
    if let Err(code) = production::gate(mode, &args.policy) {
        return code;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // A closed stderr (a log pipe gone) must not stop the server:
        // without this, tracing reports the failed write with eprintln!,
        // which panics.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora=warn")),
        )
        .init();
    match cli::run(args, mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::StartError::Config(line)) => {
            let _ = writeln!(std::io::stderr(), "egress-proxy: {line}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "egress-proxy: {e}");
            ExitCode::from(1)
        }
    }
}
