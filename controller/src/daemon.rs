//! # daemon — what the Docker daemon is, and whether its DNS leaks
//!
//! CVE-2024-29018: on a host whose resolver is on loopback, dockerd's
//! embedded DNS server (127.0.0.11 in every container of a user-defined
//! network) forwards a container's queries from the *host's* namespace,
//! where no exec-network rule applies: a container with no route out can
//! still exfiltrate through DNS names. Fixed in Docker 23.0.11, 25.0.5 and
//! 26.0.0; 24.x and older had no fix (Debian's docker.io 20.10 has no
//! backport). The fix chokepoint relies on does not depend on the version:
//! every exec container gets a non-loopback DNS server nothing answers
//! (`HardenedSpec::dns`), so dockerd forwards from inside the container,
//! where the rules drop it; the controller stops any container on an org
//! network without it ([`crate::reconcile`]). On an affected daemon the
//! controller refuses to run with that check turned off.

/// The daemon's version as reported, and what chokepoint makes of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DaemonVersion {
    /// `docker version`'s server version, e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// Whether the version is known to forward loopback DNS from the host's
    /// namespace (CVE-2024-29018); an unreadable version counts as affected.
    pub cve_2024_29018_affected: bool,
}

impl DaemonVersion {
    /// From a version string.
    pub fn new(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            cve_2024_29018_affected: cve_2024_29018_affected(version),
        }
    }
}

/// Whether Docker Engine `version` forwards DNS for containers from the
/// host's namespace when the host resolver is on loopback
/// (CVE-2024-29018): everything before 23.0.11, 24.x, and 25.0.0 to 25.0.4.
/// Fails closed: a version it cannot read is affected.
pub fn cve_2024_29018_affected(version: &str) -> bool {
    let core = version
        .trim()
        .trim_start_matches('v')
        .split(['+', '-', '~'])
        .next()
        .unwrap_or_default();
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    let (Some(Ok(major)), Some(Ok(minor)), patch) = (parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    let patch = match patch {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(_)) => return true,
    };
    match major {
        0..=22 => true,
        23 => (minor, patch) < (0, 11),
        24 => true,
        25 => (minor, patch) < (0, 5),
        _ => false,
    }
}

/// Ask the daemon for its version.
pub async fn detect(docker: &bollard::Docker) -> Result<DaemonVersion, bollard::errors::Error> {
    let v = docker.version().await?;
    Ok(DaemonVersion::new(
        v.version.as_deref().unwrap_or("unknown"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affected_and_fixed_versions() {
        for affected in [
            "20.10.24+dfsg1",
            "20.10.5",
            "23.0.10",
            "23.0.0",
            "24.0.9",
            "25.0.4",
            "25.0.0-rc.1",
            "1.13.1",
            "garbage",
            "",
            "27",
        ] {
            assert!(cve_2024_29018_affected(affected), "{affected}");
        }
        for fixed in [
            "23.0.11", "23.0.15", "25.0.5", "25.1.0", "26.0.0", "26.1.4", "27.3.1", "28.2.2",
            "v28.0.0",
        ] {
            assert!(!cve_2024_29018_affected(fixed), "{fixed}");
        }
    }
}
