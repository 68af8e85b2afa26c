//! Registry-free images: a `FROM scratch` root filesystem assembled from local
//! files (our binaries, the shared libraries `ldd` names, the dynamic loader,
//! a CA bundle, `/etc/passwd` and `/etc/group` with the unprivileged user),
//! packed with `tar` and loaded with `docker import`. Must never pull.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ImageError;
use crate::spec::EXEC_UID;

/// Busybox applets linked into the exec test image.
pub const EXEC_APPLETS: &[&str] = &[
    "sh", "id", "cat", "ls", "mkdir", "touch", "echo", "sleep", "wget", "nc", "head", "tail", "cp",
    "chmod", "timeout", "dd", "true", "false", "test", "grep", "rm", "env", "ps", "seq", "yes",
    "tr", "sort", "wc", "nslookup", "ping", "tftp",
];
/// The CA bundle copied into every image.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// One file copied into the image.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// Source on the host.
    pub host: PathBuf,
    /// Absolute destination inside the image.
    pub dest: String,
    /// Explicit mode (e.g. `0o4755` for a setuid test binary); None keeps the source mode.
    pub mode: Option<u32>,
}

/// What to put in a `FROM scratch` image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Tag to give the image (`name:tag`).
    pub tag: String,
    /// Executables, copied to `/usr/local/bin/<name>` with their `ldd` libraries.
    pub binaries: Vec<PathBuf>,
    /// Extra files.
    pub files: Vec<ImageFile>,
    /// Symlinks `(link path, target)`.
    pub links: Vec<(String, String)>,
    /// Default command.
    pub cmd: Vec<String>,
}

impl ImageSpec {
    /// The exec test image: busybox-static at `/bin/busybox` with applet links.
    pub fn exec(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            files: vec![ImageFile {
                host: BUSYBOX.into(),
                dest: BUSYBOX.into(),
                mode: Some(0o755),
            }],
            links: EXEC_APPLETS
                .iter()
                .map(|a| (format!("/bin/{a}"), "busybox".to_owned()))
                .collect(),
            cmd: vec!["/bin/sh".into()],
            ..Self::default()
        }
    }

    /// A service image (proxy/controller): the given binaries, first one is the command.
    pub fn service(tag: &str, binaries: Vec<PathBuf>) -> Self {
        let cmd = binaries
            .first()
            .and_then(|b| b.file_name())
            .map(|n| vec![format!("/usr/local/bin/{}", n.to_string_lossy())])
            .unwrap_or_default();
        Self {
            tag: tag.to_owned(),
            binaries,
            cmd,
            ..Self::default()
        }
    }
}

/// The shared libraries (and loader) `ldd` reports for `bin`; empty for static binaries.
pub fn ldd_libraries(bin: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| ImageError::Tool(format!("ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries: "not a dynamic executable" (exit 1).
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic") || err.contains("not a dynamic") {
            return Ok(Vec::new());
        }
        return Err(ImageError::Tool(format!("ldd failed on {}", bin.display())));
    }
    Ok(parse_ldd(&text))
}

/// Parse `ldd` output: `name => /path (addr)` and `/loader (addr)` lines.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    libs
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Build the image and return its id (`sha256:...`).
pub fn build_scratch_image(spec: &ImageSpec) -> Result<String, ImageError> {
    if spec.tag.is_empty() || spec.tag.starts_with('-') || spec.tag.contains(char::is_whitespace) {
        return Err(ImageError::BadTag);
    }
    let dir = std::env::temp_dir().join(format!(
        "chokepoint-img-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let res = stage_and_import(spec, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn stage_and_import(spec: &ImageSpec, dir: &Path) -> Result<String, ImageError> {
    let io = |e: std::io::Error| ImageError::Io(e.to_string());
    for d in [
        "etc",
        "tmp",
        "workspace",
        "proc",
        "sys",
        "dev",
        "usr/local/bin",
    ] {
        std::fs::create_dir_all(dir.join(d)).map_err(io)?;
    }
    set_mode(&dir.join("tmp"), 0o1777)?;
    let u = EXEC_UID;
    std::fs::write(
        dir.join("etc/passwd"),
        format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{u}:{u}:nonroot:/workspace:/sbin/nologin\n"),
    )
    .map_err(io)?;
    std::fs::write(
        dir.join("etc/group"),
        format!("root:x:0:\nnonroot:x:{u}:\n"),
    )
    .map_err(io)?;
    let mut files = spec.files.clone();
    if Path::new(CA_BUNDLE).exists() {
        files.push(ImageFile {
            host: CA_BUNDLE.into(),
            dest: CA_BUNDLE.into(),
            mode: Some(0o644),
        });
    }
    for bin in &spec.binaries {
        let name = bin
            .file_name()
            .ok_or_else(|| ImageError::Io(format!("bad binary path {}", bin.display())))?;
        files.push(ImageFile {
            host: bin.clone(),
            dest: format!("/usr/local/bin/{}", name.to_string_lossy()),
            mode: Some(0o755),
        });
        for lib in ldd_libraries(bin)? {
            let dest = lib.to_string_lossy().into_owned();
            files.push(ImageFile {
                host: lib,
                dest,
                mode: None,
            });
        }
    }
    for f in &files {
        let rel = f.dest.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return Err(ImageError::Io(format!("bad destination {}", f.dest)));
        }
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::copy(&f.host, &target)
            .map_err(|e| ImageError::Io(format!("{}: {e}", f.host.display())))?;
        if let Some(mode) = f.mode {
            set_mode(&target, mode)?;
        }
    }
    for (link, target) in &spec.links {
        let rel = link.trim_start_matches('/');
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::os::unix::fs::symlink(target, &p).map_err(io)?;
    }
    import(spec, dir)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::Io(e.to_string()))
}

fn import(spec: &ImageSpec, dir: &Path) -> Result<String, ImageError> {
    let tool = |e: std::io::Error| ImageError::Tool(e.to_string());
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(tool)?;
    let tar_out = tar
        .stdout
        .take()
        .ok_or_else(|| ImageError::Tool("tar stdout".into()))?;
    let cmd_json = format!(
        "CMD [{}]",
        spec.cmd
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("USER {EXEC_UID}:{EXEC_UID}"),
            "--change",
            &cmd_json,
        ])
        .args(["--change", "WORKDIR /workspace", "-", &spec.tag])
        .stdin(tar_out)
        .output()
        .map_err(tool)?;
    let tar_ok = tar.wait().map_err(tool)?.success();
    if !tar_ok || !out.status.success() {
        return Err(ImageError::Tool(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let _ = std::io::stderr().flush();
    Ok(id)
}

/// Remove an image by tag or id (`docker rmi -f`); errors are ignored by callers doing cleanup.
pub fn remove_image(tag: &str) -> Result<(), ImageError> {
    let st = Command::new("docker")
        .args(["rmi", "-f", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| ImageError::Tool(e.to_string()))?;
    if st.success() {
        Ok(())
    } else {
        Err(ImageError::Tool(format!("docker rmi {tag} failed")))
    }
}
