//! DNS pinning: resolve a destination once, validate every answer with
//! `netpolicy::check_addrs`, and return the exact socket addresses to dial.
//!
//! Owns: the hickory resolver (system configuration, or only the
//! `--dns-server`s given). Must never: hand out an unvalidated address, or
//! let anything downstream resolve the name again.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use netpolicy::{Destination, Host, Policy, Reason};

use crate::metrics::Metrics;

/// Bound on one whole lookup (all servers, all attempts).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The resolver.
pub(crate) struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// The system resolver (`/etc/resolv.conf`) when `servers` is empty,
    /// otherwise exactly those servers over UDP and TCP.
    pub(crate) fn new(servers: &[SocketAddr]) -> anyhow::Result<Resolver> {
        let provider = TokioRuntimeProvider::default();
        let inner = if servers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| anyhow::anyhow!("cannot read the system DNS configuration: {e}"))?
                .build()
        } else {
            let mut config = ResolverConfig::default();
            for s in servers {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                config.add_name_server(ns);
            }
            let mut opts = ResolverOpts::default();
            opts.use_hosts_file = ResolveHosts::Never;
            opts.timeout = Duration::from_secs(2);
            TokioResolver::builder_with_config(config, provider)
                .with_options(opts)
                .build()
        }
        .map_err(|e| anyhow::anyhow!("cannot build the DNS resolver: {e}"))?;
        Ok(Resolver { inner })
    }

    /// Resolve and validate `dest`; the addresses to dial, in order.
    pub(crate) async fn addrs(
        &self,
        metrics: &Metrics,
        policy: &Policy,
        dest: &Destination,
    ) -> Result<Vec<SocketAddr>, Reason> {
        let ips: Vec<IpAddr> = match &dest.host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => {
                let started = Instant::now();
                // A trailing dot: the name is absolute, no search domains.
                let fqdn = format!("{name}.");
                let res = tokio::time::timeout(LOOKUP_TIMEOUT, self.inner.lookup_ip(fqdn)).await;
                metrics.dns_resolve.observe(started.elapsed().as_secs_f64());
                match res {
                    Ok(Ok(lookup)) => lookup.iter().collect(),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "lookup failed");
                        return Err(Reason::Unresolvable);
                    }
                    Err(_) => return Err(Reason::Unresolvable),
                }
            }
        };
        if ips.is_empty() {
            return Err(Reason::Unresolvable);
        }
        let ok = netpolicy::check_addrs(policy, dest, &ips)?;
        if ok.is_empty() {
            return Err(Reason::Unresolvable);
        }
        Ok(ok
            .into_iter()
            .map(|ip| SocketAddr::new(ip, dest.port))
            .collect())
    }
}
