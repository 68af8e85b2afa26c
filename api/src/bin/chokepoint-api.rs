//! `chokepoint-api`: see [`api`] and docs/api.md.
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

fn fail(code: u8, line: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "chokepoint-api: {line}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = probe::main_if_asked("chokepoint-api", &argv) {
        return code;
    }
    let args = api::config::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // A closed stderr (a log pipe gone) must not stop the server:
        // without this, tracing reports the failed write with eprintln!,
        // which panics.
        .log_internal_errors(false)
        .init();
    // The production switch, before anything is bound (exit 78).
    let mode = match mode::Mode::from_env("chokepoint-api") {
        Ok(m) => m,
        Err(code) => return code,
    };
    if let Err(code) = api::production::gate(mode, &args, |k| std::env::var(k).ok()) {
        return code;
    }
    let config = match api::config::Config::from_args(&args, |k| std::env::var(k).ok(), mode) {
        Ok(c) => c,
        Err(e) => return fail(api::EXIT_CONFIG, &e.to_string()),
    };
    if !mode.is_production()
        && std::env::var(api::config::KEY_FILE_ENV)
            .ok()
            .is_none_or(|v| v.is_empty())
    {
        let _ = writeln!(
            std::io::stderr().lock(),
            "chokepoint-api: warning: development: {} is not set: using an ephemeral token key nobody holds (never written or printed); every bearer token is refused until you set it",
            api::config::KEY_FILE_ENV
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    if args.check_config {
        return match runtime.block_on(api::store::open(&config.store)) {
            Ok(_) => {
                let _ = writeln!(std::io::stderr().lock(), "chokepoint-api: configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => fail(api::EXIT_UNAVAILABLE, &e.to_string()),
        };
    }
    match runtime.block_on(api::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(api::EXIT_UNAVAILABLE, &format!("{e:#}")),
    }
}
