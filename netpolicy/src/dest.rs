//! [`Destination`]: a request target parsed once into a canonical record.
//!
//! SKELETON: the types and signatures here are the contract the proxy and the
//! worker code against. Bodies are filled in by the netpolicy work.

use std::net::IpAddr;

use crate::Reason;

/// The scheme of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `http://` (absolute-form request forwarded in the clear).
    Http,
    /// `https://` (absolute-form; the worker's client speaks TLS).
    Https,
    /// A CONNECT authority: an opaque tunnel, only host:port is known.
    Tunnel,
}

impl Scheme {
    /// `http`, `https` or `tunnel`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Tunnel => "tunnel",
        }
    }
}

/// A normalized host: an IP literal, or a lowercase ASCII DNS name (A-labels,
/// no trailing dot) that passed the length, label, special-use and homograph
/// checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 literal (IPv6 without brackets).
    Ip(IpAddr),
    /// A validated DNS name.
    Name(String),
}

impl Host {
    /// The host as text: a name, a dotted IPv4, or an IPv6 without brackets.
    pub fn to_text(&self) -> String {
        match self {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Where a request goes. Every later step (Host header, SNI, CONNECT target,
/// policy, metrics, audit, dial) reads this one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The scheme.
    pub scheme: Scheme,
    /// The normalized host.
    pub host: Host,
    /// The port (the scheme's default when the URL gave none).
    pub port: u16,
}

/// An absolute-form URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// Where it goes.
    pub dest: Destination,
    /// The origin-form request target to forward: path plus `?query`, never
    /// empty (at least `/`), without the fragment.
    pub origin_form: String,
}

/// Why a target could not become a [`Destination`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DestError {
    /// Not a URL / not `host:port`.
    #[error("invalid request target: {0}")]
    Invalid(&'static str),
    /// A scheme other than http/https.
    #[error("unsupported scheme")]
    UnsupportedScheme,
    /// `user:pass@` in the URL.
    #[error("userinfo in URL")]
    Userinfo,
    /// A host that fails UTS #46 / DNS length or label rules.
    #[error("invalid host: {0}")]
    InvalidHost(&'static str),
    /// A special-use name.
    #[error("special-use name")]
    SpecialUse,
    /// A homograph.
    #[error("IDN spoof: {0}")]
    IdnSpoof(&'static str),
}

impl DestError {
    /// The denial reason.
    pub const fn reason(&self) -> Reason {
        match self {
            DestError::Invalid(_) => Reason::InvalidTarget,
            DestError::UnsupportedScheme => Reason::UnsupportedScheme,
            DestError::Userinfo => Reason::UserinfoInUrl,
            DestError::InvalidHost(_) => Reason::InvalidHost,
            DestError::SpecialUse => Reason::SpecialUseName,
            DestError::IdnSpoof(_) => Reason::IdnSpoof,
        }
    }
}

impl Destination {
    /// Parse an absolute-form URL (`http`/`https`, WHATWG parsing).
    pub fn parse_url(input: &str) -> Result<ParsedUrl, DestError> {
        let _ = input;
        Err(DestError::Invalid("not implemented yet"))
    }

    /// Parse a CONNECT authority `host:port` (port required).
    pub fn parse_authority(input: &str) -> Result<Destination, DestError> {
        let _ = input;
        Err(DestError::Invalid("not implemented yet"))
    }

    /// Normalize a bare host (as in a Host header without port, or a policy
    /// entry) the same way a URL's host is normalized.
    pub fn normalize_host(input: &str) -> Result<Host, DestError> {
        let _ = input;
        Err(DestError::Invalid("not implemented yet"))
    }

    /// `host:port` as text (IPv6 bracketed), for logs and CONNECT lines.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
