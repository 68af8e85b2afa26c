//! `decide` and `check_addrs`: the verdicts.
//!
//! SKELETON: contract only; bodies are filled in by the netpolicy work.

use std::net::IpAddr;

use crate::{Destination, Policy, Reason};

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
        Decision { verdict: Verdict::Deny, reason }
    }

    /// An allow with this reason.
    pub const fn allow(reason: Reason) -> Decision {
        Decision { verdict: Verdict::Allow, reason }
    }

    /// Whether the verdict is allow.
    pub const fn is_allow(&self) -> bool {
        matches!(self.verdict, Verdict::Allow)
    }
}

/// The method-aware policy verdict. Does not look at addresses: an allow here
/// must still pass [`check_addrs`] after resolution.
pub fn decide(policy: &Policy, req: &Request<'_>) -> Decision {
    let _ = (policy, req);
    Decision::deny(Reason::InternalError)
}

/// Validate every resolved address of `dest` (or its IP literal). Denies
/// (`blocked_address`) when ANY address is not public and not inside
/// `unsafe_allow_ranges`; denies (`unresolvable`) when `addrs` is empty.
/// Returns the exact addresses to dial, in the order given.
pub fn check_addrs(policy: &Policy, dest: &Destination, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, Reason> {
    let _ = (policy, dest, addrs);
    Err(Reason::InternalError)
}
