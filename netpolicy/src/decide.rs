//! `decide` and `check_addrs`: the verdicts.
//!
//! [`decide`] looks at the request only (who, which org, which method,
//! where); [`check_addrs`] runs after resolution on the addresses themselves.
//! Both fail closed: anything not positively allowed is a denial with a
//! [`Reason`].

use std::net::IpAddr;

use crate::dest::{Host, Scheme};
use crate::{Destination, Policy, Reason, classify};

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// An exec container, through the proxy.
    Container,
    /// The worker's HTTP tool.
    Worker,
}

impl Source {
    /// `container` or `worker`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Container => "container",
            Source::Worker => "worker",
        }
    }
}

/// An HTTP method, with every unknown method folded into [`Method::Other`]
/// (so the metric label stays bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// CONNECT
    Connect,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// Anything else.
    Other,
}

impl Method {
    /// Parse a method token (case-sensitive, as HTTP methods are).
    pub fn parse(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }

    /// The canonical token, or `OTHER`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Other => "OTHER",
        }
    }
}

/// A request to decide on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who asks.
    pub source: Source,
    /// The org name (for a container: the org of its source address).
    pub org: &'a str,
    /// The method.
    pub method: Method,
    /// Where it goes.
    pub dest: &'a Destination,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The request may go on (to address validation).
    Allow,
    /// The request is refused.
    Deny,
}

impl Verdict {
    /// `allow` or `deny`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// A verdict and the reason for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// A denial with this reason.
    pub const fn deny(reason: Reason) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            reason,
        }
    }

    /// An allow with this reason.
    pub const fn allow(reason: Reason) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            reason,
        }
    }

    /// Whether the verdict is allow.
    pub const fn is_allow(&self) -> bool {
        matches!(self.verdict, Verdict::Allow)
    }
}

/// The method-aware policy verdict. Does not look at resolved addresses: an
/// allow here must still pass [`check_addrs`] after resolution.
///
/// Checks, in order (the first that fails decides):
/// 1. the org exists (`unknown_org`);
/// 2. by method:
///    - GET, HEAD: the target is an http(s) URL (`invalid_target`) →
///      `read_public`, subject to 4.;
///    - POST, PUT, PATCH, DELETE: the source is the worker
///      (`write_from_container`), the target is a URL (`invalid_target`) over
///      https (`write_requires_https`) to a host of one of the org's
///      integrations (`write_not_integration`) → `integration_write`;
///    - CONNECT: the target is an authority (`invalid_target`) naming a
///      package repository (`connect_not_package_repo`) on one of its ports
///      (`connect_port_not_allowed`) → `package_repo`;
///    - anything else: `method_not_allowed`;
/// 3. an IP-literal host must be public or inside `unsafe_allow_ranges`
///    (`blocked_address`);
/// 4. a read (GET, HEAD) goes only to a port in `read_ports`
///    (`port_not_allowed`), whatever the source.
pub fn decide(policy: &Policy, req: &Request<'_>) -> Decision {
    let Some(org) = policy.org_entry(req.org) else {
        return Decision::deny(Reason::UnknownOrg);
    };
    let dest = req.dest;
    let allow = match req.method {
        Method::Get | Method::Head => {
            if dest.scheme == Scheme::Tunnel {
                return Decision::deny(Reason::InvalidTarget);
            }
            Reason::ReadPublic
        }
        Method::Post | Method::Put | Method::Patch | Method::Delete => {
            if req.source != Source::Worker {
                return Decision::deny(Reason::WriteFromContainer);
            }
            match dest.scheme {
                Scheme::Https => {}
                Scheme::Http => return Decision::deny(Reason::WriteRequiresHttps),
                Scheme::Tunnel => return Decision::deny(Reason::InvalidTarget),
            }
            if !org.is_integration_host(&dest.host) {
                return Decision::deny(Reason::WriteNotIntegration);
            }
            Reason::IntegrationWrite
        }
        Method::Connect => {
            if dest.scheme != Scheme::Tunnel {
                return Decision::deny(Reason::InvalidTarget);
            }
            let Some(ports) = policy.repo_ports(&dest.host) else {
                return Decision::deny(Reason::ConnectNotPackageRepo);
            };
            if !ports.contains(&dest.port) {
                return Decision::deny(Reason::ConnectPortNotAllowed);
            }
            Reason::PackageRepo
        }
        Method::Options | Method::Trace | Method::Other => {
            return Decision::deny(Reason::MethodNotAllowed);
        }
    };
    if let Host::Ip(ip) = dest.host {
        if !addr_allowed(policy, ip) {
            return Decision::deny(Reason::BlockedAddress);
        }
    }
    if allow == Reason::ReadPublic && !policy.read_port_allowed(dest.port) {
        return Decision::deny(Reason::PortNotAllowed);
    }
    Decision::allow(allow)
}

/// Whether one address may be dialed.
fn addr_allowed(policy: &Policy, ip: IpAddr) -> bool {
    classify(ip).is_public() || policy.unsafe_allowed(ip)
}

/// Validate every resolved address of `dest` (or its IP literal). Denies
/// (`blocked_address`) when ANY address is not public and not inside
/// `unsafe_allow_ranges`; denies (`unresolvable`) when `addrs` is empty.
/// Returns the exact addresses to dial, in the order given, without
/// duplicates. For an IP-literal destination, only the literal itself is
/// accepted.
pub fn check_addrs(
    policy: &Policy,
    dest: &Destination,
    addrs: &[IpAddr],
) -> Result<Vec<IpAddr>, Reason> {
    if addrs.is_empty() {
        return Err(Reason::Unresolvable);
    }
    if let Host::Ip(literal) = dest.host {
        if addrs.iter().any(|a| *a != literal) {
            return Err(Reason::BlockedAddress);
        }
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(addrs.len());
    for &ip in addrs {
        if !addr_allowed(policy, ip) {
            return Err(Reason::BlockedAddress);
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}
