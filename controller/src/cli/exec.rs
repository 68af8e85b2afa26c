//! `egressctl exec --org ORG [--image I] -- CMD…`: run an agent's command
//! in a hardened exec container of the org (the one
//! `containers::HardenedSpec`), on the org's network, with `HTTP_PROXY` and
//! `HTTPS_PROXY` set to the org's proxy address. Its output is streamed
//! through the scrubber; the container is removed afterwards, also on
//! Ctrl-C or an error; the exit status is the command's (125 when the
//! container could not run, 130 on Ctrl-C).

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use clap::Args as ClapArgs;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::appliance::{Layout, default_dir};
use crate::reconcile::State;

/// Exit code when the container could not be created or started.
pub const EXIT_CANNOT_RUN: u8 = 125;

/// Arguments of `egressctl exec`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The organization (its network, folder and proxy address).
    #[arg(long)]
    pub org: String,
    /// The image (default: the appliance's exec image).
    #[arg(long)]
    pub image: Option<String>,
    /// The appliance directory (default `CHOKEPOINT_DIR` or /etc/chokepoint).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Removes the container when dropped (error paths, Ctrl-C, normal end).
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn fail(msg: &str) -> ExitCode {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "egressctl: exec: {}",
        scrub::scrub_str(msg)
    );
    ExitCode::from(EXIT_CANNOT_RUN)
}

/// The hardened spec of an exec container of `org` running `command`.
pub fn spec_for(
    layout: &Layout,
    org: &str,
    image: &str,
    command: Vec<String>,
) -> Result<containers::HardenedSpec, String> {
    let id = netpolicy::OrgId::parse(org).map_err(|e| format!("--org: {e}"))?;
    let state = State::load(&layout.state_dir());
    let subnet = state.subnets.get(org).copied().ok_or_else(|| {
        format!(
            "org {org} has no network (not in the policy, or the controller has not run: `egressctl appliance up`)"
        )
    })?;
    let net = crate::network::org_network(org, subnet)
        .ok_or_else(|| format!("org {org}: bad subnet {subnet}"))?;
    // The org's folder (a new org of the policy has none yet).
    let folder = layout.data_root().join(id.as_str());
    if !folder.exists() {
        std::fs::create_dir(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        std::os::unix::fs::chown(
            &folder,
            Some(containers::EXEC_UID),
            Some(containers::EXEC_UID),
        )
        .map_err(|e| format!("{}: {e}", folder.display()))?;
    }
    let mut spec =
        containers::HardenedSpec::new(id, image, layout.data_root(), net.name.clone(), command);
    let proxy = format!("http://{}:{}", net.proxy, super::appliance::PROXY_PORT);
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        spec.env.push(format!("{k}={proxy}"));
    }
    Ok(spec)
}

/// Run `egressctl exec`.
pub fn run(args: &Args) -> ExitCode {
    let layout = Layout::new(args.dir.clone().unwrap_or_else(default_dir));
    let image = args.image.clone().unwrap_or_else(|| {
        layout
            .load_record()
            .map_or_else(|| "chokepoint-exec:appliance".to_owned(), |r| r.exec_image)
    });
    let spec = match spec_for(&layout, &args.org, &image, args.command.clone()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.to_string()),
    };
    rt.block_on(run_spec(spec))
}

async fn run_spec(spec: containers::HardenedSpec) -> ExitCode {
    let docker = match containers::connect().await {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string()),
    };
    let name = match random_suffix() {
        Ok(s) => format!("cp-exec-{}-{s}", spec.org.as_str()),
        Err(e) => return fail(&e),
    };
    let id = match containers::create_hardened(&docker, &spec, &name).await {
        Ok(id) => id,
        Err(e) => return fail(&e.to_string()),
    };
    let _remove = Remove(id.clone());
    // `docker start -a` streams stdout and stderr and exits with the
    // command's status.
    let mut child = match tokio::process::Command::new("docker")
        .args(["start", "-a", &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("docker start: {e}")),
    };
    let out = child.stdout.take().map(|s| tokio::spawn(pump(s, false)));
    let err = child.stderr.take().map(|s| tokio::spawn(pump(s, true)));
    let status = tokio::select! {
        s = child.wait() => s,
        _ = tokio::signal::ctrl_c() => {
            let _ = child.kill().await;
            return ExitCode::from(130);
        }
    };
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    match status {
        Ok(s) => match s.code() {
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => ExitCode::from(EXIT_CANNOT_RUN),
        },
        Err(e) => fail(&e.to_string()),
    }
}

/// Copy `src` to our stdout/stderr one line at a time, scrubbed.
async fn pump<R: tokio::io::AsyncRead + Unpin>(src: R, to_stderr: bool) {
    let mut reader = tokio::io::BufReader::new(src);
    let mut line = Vec::new();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let clean = scrub::scrub_str(&text);
                let w = if to_stderr {
                    stderr.write_all(clean.as_bytes()).await
                } else {
                    stdout.write_all(clean.as_bytes()).await
                };
                if w.is_err() {
                    break;
                }
            }
        }
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
}

fn random_suffix() -> Result<String, String> {
    use std::io::Read;
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
