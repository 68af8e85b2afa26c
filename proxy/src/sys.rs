//! The proxy's view of its own host: the addresses of its interfaces (never
//! a destination) and the file-descriptor limit (which bounds how many
//! connections it can really hold).
//!
//! Owns: reading interface addresses (`getifaddrs`) and raising
//! `RLIMIT_NOFILE`, both through `nix`'s safe wrappers. Must never: fail
//! open (an unreadable interface list is an error the caller reports).

use std::net::IpAddr;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Every address configured on one of this host's interfaces, loopback
/// included, without duplicates.
pub(crate) fn interface_addrs() -> std::io::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    for ifa in addrs {
        let Some(a) = ifa.address else { continue };
        let ip = if let Some(v4) = a.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = a.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// File descriptors kept for everything but client and upstream sockets
/// (listeners, the audit log, DNS sockets, the runtime's own).
const FD_RESERVE: u64 = 64;

/// What [`raise_nofile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBudget {
    /// The soft limit before.
    pub(crate) before: u64,
    /// The soft limit now.
    pub(crate) now: u64,
    /// The most client connections that fit: each may hold a client and an
    /// upstream socket.
    pub(crate) max_connections: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (a container runtime's
/// default soft limit is often 1024), and say how many connections fit.
pub(crate) fn raise_nofile() -> std::io::Result<FdBudget> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let mut now = soft;
    if soft < hard {
        // An unlimited hard limit cannot be the soft limit of NOFILE (the
        // kernel caps it at fs.nr_open): then try the kernel's ceiling.
        let target = if hard == nix::sys::resource::RLIM_INFINITY {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(1 << 20)
        } else {
            hard
        };
        if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
            now = target;
        }
    }
    Ok(FdBudget {
        before: soft,
        now,
        max_connections: now.saturating_sub(FD_RESERVE) / 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_among_the_interface_addresses() {
        let addrs = interface_addrs().unwrap();
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
    }
}
