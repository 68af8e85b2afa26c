//! # containers — hardened exec containers, CIS checks, registry-free images
//!
//! Owns: how an exec container is created (six hardening layers), the CIS
//! Docker Benchmark checks run on a live container's inspect output, and
//! building `FROM scratch` images from local binaries. Must never: create a
//! container as root, with added capabilities, unconfined seccomp, a writable
//! root, another org's folder, the Docker socket, or on the default bridge;
//! pull an image from a registry.
//!
//! ## API (stable)
//! ```text
//! OrgId::parse("acme")?                              // [a-z0-9][a-z0-9_-]{0,62}
//! let spec = HardenedSpec::new(org, "chokepoint-exec:dev", "/srv/orgs", "cp-org-acme",
//!                              vec!["/bin/sh".into(), "-c".into(), "sleep 60".into()]);
//! spec.limits = Limits { memory_bytes, nano_cpus, pids, scratch_bytes };
//! spec.env.push("HTTP_PROXY=http://10.0.0.2:3128".into());
//! let body: bollard::models::ContainerCreateBody = spec.to_create_body()?;
//! let docker = connect().await?;                     // unix socket + negotiated API version
//! let id = create_hardened(&docker, &spec, "cp-exec-acme-1").await?;
//! let findings: Vec<Finding> = verify(&docker.inspect_container(&id, None).await?);
//! let findings = inspect_and_verify(&docker, &id).await?; // same, one call
//! // images (shells out to `tar` + `docker import`; never pulls):
//! let image_id = build_scratch_image(&ImageSpec::exec("chokepoint-exec:dev"))?;
//! let image_id = build_scratch_image(&ImageSpec::service("chokepoint-proxy:dev", vec![bin]))?;
//! ```
//! The host folder mounted at `/workspace` is `canonical(data_root)/org_id`; it
//! must exist (the caller creates it) and may not escape the data root.
#![forbid(unsafe_code)]

pub mod image;
pub mod spec;
pub mod verify;

pub use bollard;
pub use image::{
    ImageFile, ImageSpec, build_scratch_image, ldd_libraries, parse_ldd, remove_image,
};
pub use spec::{
    DNS_SINK, EXEC_UID, HardenedSpec, Isolation, Limits, OrgId, SCRATCH, WORKSPACE, check_network,
    dns_is_sink,
};
pub use verify::{ExecExpect, Finding, verify, verify_exec};

use bollard::Docker;
use bollard::query_parameters::CreateContainerOptionsBuilder;

/// A spec that cannot be turned into a hardened container.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The data root cannot be canonicalized.
    #[error("data root unusable: {0}")]
    DataRoot(String),
    /// The org folder does not exist or is not a directory.
    #[error("org folder unusable: {0}")]
    OrgFolder(String),
    /// The org folder resolves outside the data root.
    #[error("org folder escapes the data root")]
    Escape,
    /// A system path or the Docker socket would be mounted.
    #[error("refusing to mount system path {0}")]
    SystemPath(String),
    /// The network is the default bridge, host, none or another container's.
    #[error("refusing network {0:?}: use the org's own user-defined network")]
    BadNetwork(String),
    /// A limit is zero, negative or too small.
    #[error("limits must be positive (memory >= 6 MiB)")]
    BadLimits,
    /// Image or command missing.
    #[error("image and command are required")]
    Empty,
    /// The DNS server is loopback or unspecified: dockerd would forward the
    /// container's queries from the host's namespace.
    #[error(
        "DNS server {0} refused: use an address nothing answers that is not loopback (e.g. the network's gateway)"
    )]
    BadDns(std::net::IpAddr),
    /// The org folder is not a size-capped `nodev,nosuid` filesystem of its
    /// own, as `HardenedSpec::workspace_max_bytes` asks.
    #[error("workspace {0}")]
    Workspace(String),
    /// The daemon lacks what the isolation option needs.
    #[error("isolation {0} is not available on this Docker daemon ({1})")]
    Isolation(&'static str, String),
}

/// Building an image failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The tag is empty or malformed.
    #[error("invalid image tag")]
    BadTag,
    /// Staging files failed.
    #[error("staging image files: {0}")]
    Io(String),
    /// `ldd`, `tar` or `docker` failed.
    #[error("{0}")]
    Tool(String),
}

/// Talking to Docker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The spec was refused before reaching Docker.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The Docker API returned an error.
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// Connect over the local unix socket and negotiate the API version (the
/// daemon may be older than bollard's default, e.g. Engine 20.10 / API 1.41).
pub async fn connect() -> Result<Docker, DockerError> {
    Ok(Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?)
}

/// What the daemon offers for [`Isolation`]: whether it remaps user
/// namespaces (`userns-remap`, seen as `name=userns` in its security
/// options) and which runtimes it has (`runsc` is gVisor).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DaemonIsolation {
    /// The daemon runs containers in a remapped user namespace.
    pub userns_remap: bool,
    /// The runtimes it knows, sorted.
    pub runtimes: Vec<String>,
}

impl DaemonIsolation {
    /// Read it from `docker info`.
    pub async fn detect(docker: &Docker) -> Result<Self, DockerError> {
        let info = docker.info().await?;
        let userns_remap = info
            .security_options
            .unwrap_or_default()
            .iter()
            .any(|o| o.split(',').any(|kv| kv == "name=userns"));
        let mut runtimes: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        Ok(Self {
            userns_remap,
            runtimes,
        })
    }

    /// Whether `iso` can run here; `Err` says what is missing.
    pub fn supports(&self, iso: Isolation) -> Result<(), SpecError> {
        match iso {
            Isolation::Runc => Ok(()),
            Isolation::UsernsRemap if self.userns_remap => Ok(()),
            Isolation::UsernsRemap => Err(SpecError::Isolation(
                iso.as_str(),
                "the daemon has no userns-remap".into(),
            )),
            Isolation::Gvisor if self.runtimes.iter().any(|r| r == "runsc") => Ok(()),
            Isolation::Gvisor => Err(SpecError::Isolation(
                iso.as_str(),
                format!("no runsc runtime (runtimes: {})", self.runtimes.join(", ")),
            )),
        }
    }
}

/// Create (not start) a hardened container named `name`; returns its id.
/// An isolation option the daemon cannot honour is refused before anything
/// is created.
pub async fn create_hardened(
    docker: &Docker,
    spec: &HardenedSpec,
    name: &str,
) -> Result<String, DockerError> {
    let body = spec.to_create_body()?;
    if spec.isolation != Isolation::Runc {
        DaemonIsolation::detect(docker)
            .await?
            .supports(spec.isolation)?;
    }
    let opts = CreateContainerOptionsBuilder::new().name(name).build();
    Ok(docker.create_container(Some(opts), body).await?.id)
}

/// Inspect a container and run every CIS check on it.
pub async fn inspect_and_verify(docker: &Docker, id: &str) -> Result<Vec<Finding>, DockerError> {
    let c = docker.inspect_container(id, None).await?;
    Ok(verify(&c))
}
