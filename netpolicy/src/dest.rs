//! [`Destination`]: a request target parsed once into a canonical record.
//!
//! Absolute-form URLs are parsed by the WHATWG URL parser (the `url` crate),
//! so `2130706433`, `0177.0.0.1`, `0x7f.1` and `127.1` are the IPv4
//! addresses a browser or curl would dial. CONNECT authorities and bare hosts
//! go through the same parser, so the three entry points always agree.
//!
//! After parsing, a name host is checked, in this order:
//! 1. UTS #46 to ASCII (done by the URL parser), lowercase, one trailing dot
//!    removed;
//! 2. DNS syntax: at most 253 octets, labels of 1 to 63 octets of letters,
//!    digits, `-` (not at either end) and `_`;
//! 3. homographs: every `xn--` label is decoded and checked by
//!    [`crate::homograph::check_label`];
//! 4. special-use names (RFC 6761, 6762, 7686, 8375, 9476) and single-label
//!    names, which resolve through search domains to internal hosts.
//!
//! Userinfo (`user:pass@`) in a URL is refused: credentials go through the
//! broker, never through URLs.

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

/// Special-use suffixes: a name equal to one of these or ending in `.` + one
/// of these is never resolved.
pub const SPECIAL_USE_SUFFIXES: &[&str] = &[
    "localhost", // RFC 6761 §6.3
    "local",     // RFC 6762 (mDNS)
    "internal",  // ICANN reserved for private use (2024)
    "home.arpa", // RFC 8375
    "onion",     // RFC 7686
    "invalid",   // RFC 6761 §6.4
    "test",      // RFC 6761 §6.2
    "alt",       // RFC 9476
];

/// The longest DNS name, in octets, without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// The longest DNS label, in octets.
const MAX_LABEL_LEN: usize = 63;

/// The WHATWG "authority" of a special URL, taken from the raw input: after
/// the scheme and any run of `/` or `\`, up to the first `/`, `\`, `?` or `#`.
fn raw_authority(input: &str) -> &str {
    let trimmed = input.trim_matches(|c: char| c <= ' ');
    let rest = match trimmed.find(':') {
        Some(i) => trimmed.get(i + 1..).unwrap_or(""),
        None => trimmed,
    };
    let rest = rest.trim_start_matches(['/', '\\']);
    let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    rest.get(..end).unwrap_or(rest)
}

/// Normalize and validate the host of a parsed URL.
fn host_of(url: &url::Url) -> Result<Host, DestError> {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => Ok(Host::Ip(IpAddr::V4(v4))),
        Some(url::Host::Ipv6(v6)) => Ok(Host::Ip(IpAddr::V6(v6))),
        Some(url::Host::Domain(name)) => check_name(name).map(Host::Name),
        None => Err(DestError::InvalidHost("empty host")),
    }
}

/// Steps 1 to 4 of the module docs on an ASCII name from the URL parser.
fn check_name(name: &str) -> Result<String, DestError> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err(DestError::InvalidHost("empty host"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(DestError::InvalidHost("name longer than 253 octets"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(DestError::InvalidHost("empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(DestError::InvalidHost("label longer than 63 octets"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DestError::InvalidHost(
                "character not allowed in a DNS name",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DestError::InvalidHost("label starts or ends with '-'"));
        }
        if let Some(puny) = label.strip_prefix("xn--") {
            let unicode = idna::punycode::decode_to_string(puny)
                .ok_or(DestError::InvalidHost("invalid punycode label"))?;
            crate::homograph::check_label(&unicode).map_err(DestError::IdnSpoof)?;
        }
    }
    if is_special_use(&name) {
        return Err(DestError::SpecialUse);
    }
    if !name.contains('.') {
        return Err(DestError::SpecialUse);
    }
    Ok(name)
}

/// Whether a normalized name is, or is under, a special-use name.
pub fn is_special_use(name: &str) -> bool {
    SPECIAL_USE_SUFFIXES.iter().any(|suffix| {
        name == *suffix
            || name
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.'))
    })
}

/// Refuse anything in a CONNECT authority or bare host that is not part of
/// `host[:port]`: the URL parser would otherwise read it as a path, query or
/// userinfo.
fn reject_non_authority(input: &str) -> Result<(), DestError> {
    if input.is_empty() {
        return Err(DestError::Invalid("empty authority"));
    }
    if input.contains('@') {
        return Err(DestError::Userinfo);
    }
    if input
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '?' | '#' | '%'))
    {
        return Err(DestError::Invalid(
            "authority holds a path, query or invalid character",
        ));
    }
    Ok(())
}

impl Destination {
    /// Parse an absolute-form URL (`http`/`https`, WHATWG parsing).
    pub fn parse_url(input: &str) -> Result<ParsedUrl, DestError> {
        let url = url::Url::parse(input).map_err(|_| DestError::Invalid("not an absolute URL"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(DestError::UnsupportedScheme),
        };
        if !url.username().is_empty()
            || url.password().is_some()
            || raw_authority(input).contains('@')
        {
            return Err(DestError::Userinfo);
        }
        let host = host_of(&url)?;
        let port = url
            .port_or_known_default()
            .ok_or(DestError::Invalid("no port"))?;
        if port == 0 {
            return Err(DestError::Invalid("port 0"));
        }
        let mut origin_form = String::with_capacity(url.path().len() + 1);
        origin_form.push_str(url.path());
        if origin_form.is_empty() {
            origin_form.push('/');
        }
        if let Some(q) = url.query() {
            origin_form.push('?');
            origin_form.push_str(q);
        }
        Ok(ParsedUrl {
            dest: Destination { scheme, host, port },
            origin_form,
        })
    }

    /// Parse a CONNECT authority `host:port` (port required; IPv6 in
    /// brackets).
    pub fn parse_authority(input: &str) -> Result<Destination, DestError> {
        reject_non_authority(input)?;
        let (host_part, port_part) = input
            .rsplit_once(':')
            .ok_or(DestError::Invalid("CONNECT target needs host:port"))?;
        if host_part.contains(':') && !(host_part.starts_with('[') && host_part.ends_with(']')) {
            return Err(DestError::Invalid("IPv6 host must be in brackets"));
        }
        if port_part.is_empty()
            || !port_part.bytes().all(|b| b.is_ascii_digit())
            || port_part.len() > 5
        {
            return Err(DestError::Invalid("port must be a number"));
        }
        let port: u16 = port_part
            .parse()
            .map_err(|_| DestError::Invalid("port out of range"))?;
        if port == 0 {
            return Err(DestError::Invalid("port 0"));
        }
        let host = Self::normalize_host(host_part)?;
        Ok(Destination {
            scheme: Scheme::Tunnel,
            host,
            port,
        })
    }

    /// Normalize a bare host (as in a Host header without port, or a policy
    /// entry) the same way a URL's host is normalized. IPv6 may be given with
    /// or without brackets.
    pub fn normalize_host(input: &str) -> Result<Host, DestError> {
        reject_non_authority(input)?;
        if let Ok(ip) = input.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if input.contains(':') && !(input.starts_with('[') && input.ends_with(']')) {
            return Err(DestError::InvalidHost(
                "a port or unbracketed IPv6 in a host",
            ));
        }
        let url = url::Url::parse(&format!("http://{input}/"))
            .map_err(|_| DestError::InvalidHost("not a valid host"))?;
        if url.port().is_some() {
            return Err(DestError::InvalidHost("a port in a host"));
        }
        host_of(&url)
    }

    /// `host:port` as text (IPv6 bracketed), for logs and CONNECT lines.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn url_host(s: &str) -> Result<Host, DestError> {
        Destination::parse_url(s).map(|p| p.dest.host)
    }

    #[test]
    fn numeric_ipv4_forms_are_addresses() {
        let lo = Ok(Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        for s in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0x7f000001/",
        ] {
            assert_eq!(url_host(s), lo, "{s}");
        }
        assert_eq!(
            url_host("http://[::1]:8080/"),
            Ok(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
    }

    #[test]
    fn names_are_normalized() {
        let p = Destination::parse_url("HTTP://Example.COM./a/b?x=1#frag").unwrap();
        assert_eq!(p.dest.host, Host::Name("example.com".into()));
        assert_eq!(p.dest.port, 80);
        assert_eq!(p.dest.scheme, Scheme::Http);
        assert_eq!(p.origin_form, "/a/b?x=1");
        let p = Destination::parse_url("https://münchen.de").unwrap();
        assert_eq!(p.dest.host, Host::Name("xn--mnchen-3ya.de".into()));
        assert_eq!(p.dest.port, 443);
        assert_eq!(p.origin_form, "/");
    }

    #[test]
    fn refusals_carry_reasons() {
        use crate::Reason as R;
        let cases = [
            ("http://user:pw@example.com/", R::UserinfoInUrl),
            ("http://@example.com/", R::UserinfoInUrl),
            ("http://a@b@example.com/", R::UserinfoInUrl),
            ("ftp://example.com/", R::UnsupportedScheme),
            ("file:///etc/passwd", R::UnsupportedScheme),
            ("/relative", R::InvalidTarget),
            ("http://localhost/", R::SpecialUseName),
            ("http://foo.localhost/", R::SpecialUseName),
            ("http://printer.local/", R::SpecialUseName),
            ("http://metadata.google.internal/", R::SpecialUseName),
            ("http://x.home.arpa/", R::SpecialUseName),
            ("http://abc.onion/", R::SpecialUseName),
            ("http://intranet/", R::SpecialUseName),
            ("http://xn--80ak6aa92e.com/", R::IdnSpoof),
            ("http://exa_mple.com:0/", R::InvalidTarget),
            ("http://-bad.com/", R::InvalidHost),
        ];
        for (s, want) in cases {
            assert_eq!(
                Destination::parse_url(s).map_err(|e| e.reason()),
                Err(want),
                "{s}"
            );
        }
    }

    #[test]
    fn authorities() {
        let d = Destination::parse_authority("PyPI.org:443").unwrap();
        assert_eq!(d.host, Host::Name("pypi.org".into()));
        assert_eq!((d.port, d.scheme), (443, Scheme::Tunnel));
        let d = Destination::parse_authority("[::1]:80").unwrap();
        assert_eq!(d.host, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(d.port, 80);
        let d = Destination::parse_authority("2130706433:443").unwrap();
        assert_eq!(d.host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        for bad in [
            "pypi.org",
            "pypi.org:",
            ":443",
            "pypi.org:0",
            "pypi.org:65536",
            "::1:443",
            "a@pypi.org:443",
            "pypi.org:443/x",
            "pypi.org:+443",
            "pypi.org: 443",
            "",
        ] {
            assert!(Destination::parse_authority(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bare_hosts_agree_with_urls() {
        for h in [
            "Example.com",
            "münchen.de",
            "127.1",
            "[::1]",
            "::1",
            "0x7f.1",
        ] {
            let via_url = Destination::parse_url(&format!("http://{h}/"))
                .map(|p| p.dest.host)
                .ok();
            let bare = Destination::normalize_host(h).ok();
            if h != "::1" {
                assert_eq!(bare, via_url, "{h}");
            } else {
                assert!(bare.is_some());
            }
        }
        assert!(Destination::normalize_host("example.com:80").is_err());
    }
}
