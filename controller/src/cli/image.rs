//! `egressctl image build`: assemble a `FROM scratch` image from local files
//! (our binaries + their `ldd` libraries + CA bundle + passwd/group for the
//! unprivileged user; busybox-static for the `exec` test image) and load it
//! with `tar | docker import`. Prints one JSON line `{"tag":..,"id":..}`.
//!
//! Must never pull from a registry. Exit 0 built, 2 usage error, 1 build failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use containers::{ImageSpec, build_scratch_image};

/// Arguments of `egressctl image`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The image action.
    #[command(subcommand)]
    pub action: Action,
}

/// `egressctl image` actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Build an image from local files.
    Build(BuildArgs),
}

/// Which image to build.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// The egress proxy appliance (`--binary` = egress-proxy).
    Proxy,
    /// The controller (`--binary` = egress-controller, egressctl).
    Controller,
    /// The test exec image: busybox-static plus any `--binary`.
    Exec,
}

/// Arguments of `egressctl image build`.
#[derive(Debug, ClapArgs)]
pub struct BuildArgs {
    /// Which image.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Image tag (`name:tag`).
    #[arg(long)]
    pub tag: String,
    /// A binary to include (with its shared libraries); repeatable. The first
    /// one is the image's command for proxy/controller.
    #[arg(long = "binary")]
    pub binaries: Vec<PathBuf>,
}

/// Run `egressctl image`.
pub fn run(args: &Args) -> ExitCode {
    match &args.action {
        Action::Build(b) => build(b),
    }
}

fn build(b: &BuildArgs) -> ExitCode {
    if let Some(missing) = b.binaries.iter().find(|p| !p.is_file()) {
        return super::fail_usage(&format!("binary not found: {}", missing.display()));
    }
    let spec = match b.kind {
        Kind::Exec => {
            let mut s = ImageSpec::exec(&b.tag);
            s.binaries.clone_from(&b.binaries);
            s
        }
        Kind::Proxy | Kind::Controller => {
            if b.binaries.is_empty() {
                return super::fail_usage("--binary is required for proxy and controller images");
            }
            ImageSpec::service(&b.tag, b.binaries.clone())
        }
    };
    match build_scratch_image(&spec) {
        Ok(id) => {
            let line = serde_json::json!({ "tag": b.tag, "id": id }).to_string();
            if super::emit_line(&line).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(containers::ImageError::BadTag) => super::fail_usage("invalid --tag"),
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "egressctl: image build failed: {e}"
            );
            ExitCode::FAILURE
        }
    }
}
