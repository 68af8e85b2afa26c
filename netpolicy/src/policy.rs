//! The egress policy: YAML (`version: v1`), strict, validated into types.
//!
//! Loading is two steps, each reporting the line, the field and the fix:
//! 1. serde into raw types with `deny_unknown_fields`; every leaf that needs
//!    checking (version, org ids, CIDRs, hosts, ports) is a newtype whose
//!    `Deserialize` validates it, so the YAML parser attaches the line itself;
//! 2. cross-field checks (duplicates, overlapping client ranges), whose line
//!    is found by looking the offending entry up in the text.
//!
//! The format is documented in `docs/policy.md`. A policy never changes once
//! built: a reload builds a new one and swaps it in whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::dest::{Destination, Host};
use crate::ip::classify;

/// An organization id as written in the policy (`[a-z0-9][a-z0-9_-]{0,62}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

impl OrgId {
    /// Validate an org id.
    pub fn parse(s: &str) -> Result<OrgId, &'static str> {
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok =
            bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if first_ok && rest_ok && s.len() <= 63 {
            Ok(OrgId(s.to_owned()))
        } else {
            Err("an org id is 1 to 63 of a-z, 0-9, '-', '_', starting with a letter or digit")
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A policy file that failed to load: where, which field, and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {problem}; {fix}")]
pub struct PolicyError {
    /// The file name (or `<string>`).
    pub file: String,
    /// 1-based line (0 when unknown, e.g. an I/O error).
    pub line: usize,
    /// The dotted field path, e.g. `orgs.acme.clients[0]`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

// ---------------------------------------------------------------------------
// Raw (serde) layer. Custom messages are "problem; fix".
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(rename = "version")]
    _version: Version,
    #[serde(default)]
    unsafe_allow_ranges: Vec<Cidr>,
    #[serde(default = "default_read_ports")]
    read_ports: Vec<PortNum>,
    #[serde(default)]
    package_repos: Vec<RawRepo>,
    #[serde(default)]
    orgs: UniqueMap<OrgKey, RawOrg>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrg {
    #[serde(default)]
    clients: Vec<Cidr>,
    #[serde(default)]
    integrations: UniqueMap<String, RawIntegration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegration {
    hosts: Vec<HostPattern>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepoMap {
    host: PolicyHost,
    #[serde(default = "default_repo_ports")]
    ports: Vec<PortNum>,
}

fn default_repo_ports() -> Vec<PortNum> {
    vec![PortNum(443)]
}

/// The ports reads may go to when the policy lists none: http, https and
/// the common alternate http port (squid's `Safe_ports` spirit).
pub const DEFAULT_READ_PORTS: [u16; 3] = [80, 443, 8080];

fn default_read_ports() -> Vec<PortNum> {
    DEFAULT_READ_PORTS.iter().map(|&p| PortNum(p)).collect()
}

/// A YAML mapping that refuses duplicate keys (serde's maps keep the last
/// one silently, which would let a second `acme:` replace the first).
struct UniqueMap<K, V>(BTreeMap<K, V>);

impl<K, V> Default for UniqueMap<K, V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, K, V> Deserialize<'de> for UniqueMap<K, V>
where
    K: Deserialize<'de> + Ord + KeyName,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for V2<K, V>
        where
            K: Deserialize<'de> + Ord + KeyName,
            V: Deserialize<'de>,
        {
            type Value = UniqueMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = map.next_key::<K>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!(
                            "`{}` is listed twice; merge the two entries into one",
                            k.key_name()
                        )));
                    }
                    let v = map.next_value::<V>()?;
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// The text of a map key, for error messages.
trait KeyName {
    fn key_name(&self) -> &str;
}

impl KeyName for String {
    fn key_name(&self) -> &str {
        self
    }
}

impl KeyName for OrgKey {
    fn key_name(&self) -> &str {
        self.0.as_str()
    }
}

/// `- pypi.org` or `- {host: pypi.org, ports: [443]}`.
struct RawRepo(RawRepoMap);

impl<'de> Deserialize<'de> for RawRepo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRepo;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a host name, or a mapping with `host` and `ports`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRepo, E> {
                Ok(RawRepo(RawRepoMap {
                    host: PolicyHost::from_text(v).map_err(E::custom)?,
                    ports: default_repo_ports(),
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRepo, A::Error> {
                RawRepoMap::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawRepo)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserialize a string and validate it with `parse`, whose error is the
/// message ("problem; fix").
fn parse_str<'de, D, T>(d: D, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    parse(&s).map_err(de::Error::custom)
}

struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            if s == "v1" {
                Ok(Version)
            } else {
                Err(format!(
                    "unsupported policy version `{s}`; write `version: v1`"
                ))
            }
        })
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct OrgKey(OrgId);

impl<'de> Deserialize<'de> for OrgKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            OrgId::parse(s)
                .map(OrgKey)
                .map_err(|e| format!("invalid org id `{s}`; {e}, e.g. `acme` or `team-7`"))
        })
    }
}

/// A CIDR. A bare address is a host route (/32, /128); host bits must be 0.
#[derive(Clone, Copy)]
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            let net = match s.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match s.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "`{s}` is not a CIDR; write an address range like `10.10.0.0/24` or `fd00::/64`"
                        ));
                    }
                },
            };
            if net.trunc() != net {
                return Err(format!("`{s}` has host bits set; write `{}`", net.trunc()));
            }
            Ok(Cidr(net))
        })
    }
}

/// A normalized host for a package repository or an integration.
#[derive(Clone)]
struct PolicyHost(Host);

impl PolicyHost {
    fn from_text(s: &str) -> Result<PolicyHost, String> {
        if s.contains('*') {
            return Err(format!(
                "`{s}`: wildcards are not allowed here; list each host name"
            ));
        }
        Destination::normalize_host(s).map(PolicyHost).map_err(|e| {
            format!("invalid host `{s}` ({e}); write a public DNS name like `pypi.org`")
        })
    }
}

impl<'de> Deserialize<'de> for PolicyHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, PolicyHost::from_text)
    }
}

/// An exact host, or `*.suffix` (any name below the suffix, not the suffix).
#[derive(Clone)]
enum HostPattern {
    Exact(Host),
    Wildcard(String),
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            if let Some(suffix) = s.strip_prefix("*.") {
                if suffix.contains('*') {
                    return Err(format!(
                        "`{s}`: only one leading `*.` is allowed; write `*.{}`",
                        suffix.trim_start_matches("*.")
                    ));
                }
                match Destination::normalize_host(suffix) {
                    Ok(Host::Name(n)) => Ok(HostPattern::Wildcard(n)),
                    Ok(Host::Ip(_)) => Err(format!(
                        "`{s}`: a wildcard needs a DNS name; write `*.example.com`"
                    )),
                    Err(e) => Err(format!(
                        "invalid wildcard `{s}` ({e}); write `*.` followed by a public DNS name, like `*.githubusercontent.com`"
                    )),
                }
            } else if s.contains('*') {
                Err(format!(
                    "`{s}`: `*` is allowed only as the whole leftmost label; write `*.example.com`"
                ))
            } else {
                PolicyHost::from_text(s).map(|h| HostPattern::Exact(h.0))
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PortNum(u16);

impl<'de> Deserialize<'de> for PortNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(PortNum(p)),
            _ => Err(de::Error::custom(format!(
                "port {n} is out of range; write a port from 1 to 65535, like 443"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// Validated layer.
// ---------------------------------------------------------------------------

/// One organization.
#[derive(Debug, Clone)]
pub struct Org {
    id: OrgId,
    clients: Vec<IpNet>,
    integrations: BTreeMap<String, Vec<String>>,
    exact: HashSet<String>,
    wildcard: HashSet<String>,
}

impl Org {
    /// Its id.
    pub fn id(&self) -> &OrgId {
        &self.id
    }

    /// Source ranges of its exec containers.
    pub fn clients(&self) -> &[IpNet] {
        &self.clients
    }

    /// Integration name → host patterns as written (normalized).
    pub fn integrations(&self) -> &BTreeMap<String, Vec<String>> {
        &self.integrations
    }

    /// Whether a write to `host` is to one of this org's integrations.
    pub fn is_integration_host(&self, host: &Host) -> bool {
        match host {
            Host::Ip(ip) => self.exact.contains(&ip.to_string()),
            Host::Name(name) => {
                if self.exact.contains(name.as_str()) {
                    return true;
                }
                // Walk the proper suffixes: a.b.c -> b.c -> c.
                let mut rest = name.as_str();
                while let Some((_, tail)) = rest.split_once('.') {
                    if self.wildcard.contains(tail) {
                        return true;
                    }
                    rest = tail;
                }
                false
            }
        }
    }

    /// Whether `host` is one of the hosts of this org's integration `name`
    /// (exact, or below a `*.suffix` pattern); false for an unknown name.
    /// The worker sends a credential only where this holds.
    pub fn integration_has_host(&self, name: &str, host: &Host) -> bool {
        let Some(patterns) = self.integrations.get(name) else {
            return false;
        };
        let text = match host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        };
        patterns.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => {
                matches!(host, Host::Name(_))
                    && text
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            }
            None => *p == text,
        })
    }
}

/// A validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    unsafe_allow: Vec<IpNet>,
    /// Ports GET/HEAD may go to.
    read_ports: Vec<u16>,
    /// Package repository host text → allowed ports.
    repos: BTreeMap<String, Vec<u16>>,
    orgs: HashMap<String, Org>,
    /// Every org's client ranges, most specific first.
    clients: Vec<(IpNet, String)>,
}

impl Policy {
    /// Parse and validate policy YAML. `file` names the source in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let err = |needle: &str, field: String, problem: String, fix: &str| PolicyError {
            file: file.to_owned(),
            line: line_of(text, needle),
            field,
            problem,
            fix: fix.to_owned(),
        };

        let unsafe_allow: Vec<IpNet> = raw.unsafe_allow_ranges.iter().map(|c| c.0).collect();
        for (i, net) in unsafe_allow.iter().enumerate() {
            if net.prefix_len() == 0 {
                return Err(err(
                    &net.to_string(),
                    format!("unsafe_allow_ranges[{i}]"),
                    format!("`{net}` would disable the blocklist entirely"),
                    "list only the narrow ranges your tests need, like `127.0.0.2/32`",
                ));
            }
        }
        let allowed = |ip: IpAddr| unsafe_allow.iter().any(|n| n.contains(&ip));
        let check_literal = |host: &Host, field: String| -> Result<(), PolicyError> {
            if let Host::Ip(ip) = host {
                if !classify(*ip).is_public() && !allowed(*ip) {
                    return Err(err(
                        &ip.to_string(),
                        field,
                        format!("`{ip}` is not a public address"),
                        "use the host's public name, or add the address to `unsafe_allow_ranges` (tests only)",
                    ));
                }
            }
            Ok(())
        };

        if raw.read_ports.is_empty() {
            return Err(err(
                "read_ports",
                "read_ports".into(),
                "no ports listed".into(),
                "write `read_ports: [80, 443, 8080]` or leave `read_ports` out",
            ));
        }
        let mut read_ports: Vec<u16> = Vec::with_capacity(raw.read_ports.len());
        for p in &raw.read_ports {
            if read_ports.contains(&p.0) {
                return Err(err(
                    "read_ports",
                    "read_ports".into(),
                    format!("port {} is listed twice", p.0),
                    "list each port once",
                ));
            }
            read_ports.push(p.0);
        }

        let mut repos: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for (i, repo) in raw.package_repos.iter().enumerate() {
            let RawRepo(RawRepoMap { host, ports }) = repo;
            let field = format!("package_repos[{i}]");
            check_literal(&host.0, field.clone())?;
            let key = host.0.to_text();
            if ports.is_empty() {
                return Err(err(
                    &key,
                    format!("{field}.ports"),
                    "no ports listed".into(),
                    "write `ports: [443]` or leave `ports` out",
                ));
            }
            let mut seen = HashSet::new();
            let mut list = Vec::with_capacity(ports.len());
            for p in ports {
                if !seen.insert(*p) {
                    return Err(err(
                        &key,
                        format!("{field}.ports"),
                        format!("port {} is listed twice", p.0),
                        "list each port once",
                    ));
                }
                list.push(p.0);
            }
            if repos.insert(key.clone(), list).is_some() {
                return Err(err_nth(
                    file,
                    text,
                    &key,
                    2,
                    field,
                    format!("package repository `{key}` is listed twice"),
                    "list each host once, with all its ports",
                ));
            }
        }

        let mut orgs = HashMap::new();
        let mut clients: Vec<(IpNet, String)> = Vec::new();
        for (OrgKey(id), raw_org) in raw.orgs.0 {
            let name = id.as_str().to_owned();
            let mut exact = HashSet::new();
            let mut wildcard = HashSet::new();
            let mut integrations = BTreeMap::new();
            for (iname, integ) in raw_org.integrations.0 {
                let field = format!("orgs.{name}.integrations.{iname}.hosts");
                if integ.hosts.is_empty() {
                    return Err(err(
                        &iname,
                        field,
                        "no hosts listed".into(),
                        "list the integration's API hosts, like `hosts: [api.github.com]`",
                    ));
                }
                let mut written = Vec::with_capacity(integ.hosts.len());
                for (j, pattern) in integ.hosts.iter().enumerate() {
                    let (fresh, text_form) = match pattern {
                        HostPattern::Exact(h) => {
                            check_literal(h, format!("{field}[{j}]"))?;
                            let t = h.to_text();
                            (exact.insert(t.clone()), t)
                        }
                        HostPattern::Wildcard(s) => (wildcard.insert(s.clone()), format!("*.{s}")),
                    };
                    if !fresh {
                        return Err(err_nth(
                            file,
                            text,
                            &text_form,
                            2,
                            format!("{field}[{j}]"),
                            format!("host `{text_form}` is listed twice in org `{name}`"),
                            "list each host once per org",
                        ));
                    }
                    written.push(text_form);
                }
                integrations.insert(iname, written);
            }
            let org_clients: Vec<IpNet> = raw_org.clients.iter().map(|c| c.0).collect();
            for (j, net) in org_clients.iter().enumerate() {
                if let Some((other_net, other)) = clients
                    .iter()
                    .find(|(n, _)| n.contains(&net.network()) || net.contains(&n.network()))
                {
                    return Err(err(
                        &net.to_string(),
                        format!("orgs.{name}.clients[{j}]"),
                        format!("`{net}` overlaps `{other_net}` of org `{other}`"),
                        "give each org its own, non-overlapping client ranges",
                    ));
                }
                clients.push((*net, name.clone()));
            }
            orgs.insert(
                name,
                Org {
                    id,
                    clients: org_clients,
                    integrations,
                    exact,
                    wildcard,
                },
            );
        }
        clients.sort_by_key(|c| std::cmp::Reverse(c.0.prefix_len()));
        Ok(Policy {
            unsafe_allow,
            read_ports,
            repos,
            orgs,
            clients,
        })
    }

    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: name.clone(),
            line: 0,
            field: String::from("(file)"),
            problem: format!("cannot read the file: {e}"),
            fix: "pass the path of a readable policy YAML file".to_owned(),
        })?;
        Policy::from_yaml(&name, &text)
    }

    /// The org whose `clients` contain this source address (most specific
    /// prefix wins), if any. IPv4-mapped IPv6 sources are matched as IPv4.
    pub fn org_for_client(&self, ip: IpAddr) -> Option<&OrgId> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.clients
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .and_then(|(_, name)| self.orgs.get(name))
            .map(Org::id)
    }

    /// The org with this id, if it exists.
    pub fn org(&self, name: &str) -> Option<&OrgId> {
        self.orgs.get(name).map(Org::id)
    }

    /// The full record of an org.
    pub fn org_entry(&self, name: &str) -> Option<&Org> {
        self.orgs.get(name)
    }

    /// Every org, sorted by id.
    pub fn orgs(&self) -> Vec<&Org> {
        let mut v: Vec<&Org> = self.orgs.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The explicit exceptions to the blocklist.
    pub fn unsafe_allow_ranges(&self) -> &[IpNet] {
        &self.unsafe_allow
    }

    /// The ports reads (GET/HEAD) may go to (`read_ports`).
    pub fn read_ports(&self) -> &[u16] {
        &self.read_ports
    }

    /// Whether a read may go to `port`.
    pub fn read_port_allowed(&self, port: u16) -> bool {
        self.read_ports.contains(&port)
    }

    /// Whether `ip` is inside `unsafe_allow_ranges`.
    pub fn unsafe_allowed(&self, ip: IpAddr) -> bool {
        self.unsafe_allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether `dest` names a package repository host (any port).
    pub fn is_package_repo(&self, dest: &Destination) -> bool {
        self.repo_ports(&dest.host).is_some()
    }

    /// The allowed ports of a package repository host.
    pub fn repo_ports(&self, host: &Host) -> Option<&[u16]> {
        match host {
            Host::Name(n) => self.repos.get(n.as_str()),
            Host::Ip(ip) => self.repos.get(&ip.to_string()),
        }
        .map(Vec::as_slice)
    }

    /// Package repository hosts and their ports.
    pub fn package_repos(&self) -> impl Iterator<Item = (&str, &[u16])> {
        self.repos.iter().map(|(h, p)| (h.as_str(), p.as_slice()))
    }
}

/// The 1-based line of the first occurrence of `needle` (0 if absent).
fn line_of(text: &str, needle: &str) -> usize {
    nth_line_of(text, needle, 1)
}

fn nth_line_of(text: &str, needle: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.split('#').next().is_some_and(|code| {
                code.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase())
            })
        })
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1)
}

fn err_nth(
    file: &str,
    text: &str,
    needle: &str,
    n: usize,
    field: String,
    problem: String,
    fix: &str,
) -> PolicyError {
    let line = match nth_line_of(text, needle, n) {
        0 => line_of(text, needle),
        l => l,
    };
    PolicyError {
        file: file.to_owned(),
        line,
        field,
        problem,
        fix: fix.to_owned(),
    }
}

/// Turn a serde_yaml_ng error ("path: message at line L column C") into a
/// [`PolicyError`] with a fix.
fn yaml_error(file: &str, e: &serde_yaml_ng::Error) -> PolicyError {
    let line = e.location().map_or(0, |l| l.line());
    let full = e.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => full.get(..i).unwrap_or(&full),
        None => &full,
    };
    let (field, msg) = match msg.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_owned(), rest),
        _ => ("(document)".to_owned(), msg),
    };
    let (problem, fix) = match msg.split_once("; ") {
        Some((p, f)) => (p.to_owned(), f.to_owned()),
        None => {
            let fix = if msg.starts_with("unknown field") {
                "remove the field, or fix its spelling to one of the expected names"
            } else if msg.starts_with("missing field `version`") {
                "add `version: v1` as the first line"
            } else if msg.starts_with("missing field") {
                "add the missing field"
            } else if msg.starts_with("invalid type") {
                "write a value of the expected type (see docs/policy.md)"
            } else if msg.contains("duplicate") {
                "list each key once"
            } else {
                "check the YAML syntax (indent with spaces, `key: value`); see docs/policy.md"
            };
            (msg.to_owned(), fix.to_owned())
        }
    };
    PolicyError {
        file: file.to_owned(),
        line,
        field,
        problem,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = "version: v1
unsafe_allow_ranges: [127.0.0.2/32]   # explicit exceptions to the blocklist
package_repos:                         # CONNECT targets; port 443 unless given
  - pypi.org
  - files.pythonhosted.org
  - host: registry.npmjs.org
    ports: [443]
orgs:
  acme:
    clients: [10.10.0.0/24]            # source addresses of its exec containers
    integrations:
      github:
        hosts: [api.github.com, \"*.githubusercontent.com\"]
";

    #[test]
    fn issue_example_loads() {
        let p = Policy::from_yaml("t.yaml", ISSUE_EXAMPLE).unwrap();
        assert_eq!(
            p.repo_ports(&Host::Name("pypi.org".into())),
            Some(&[443u16][..])
        );
        assert_eq!(
            p.org_for_client("10.10.0.7".parse().unwrap())
                .map(OrgId::as_str),
            Some("acme")
        );
        assert!(p.org_for_client("10.10.1.7".parse().unwrap()).is_none());
        let acme = p.org_entry("acme").unwrap();
        assert!(acme.is_integration_host(&Host::Name("api.github.com".into())));
        assert!(acme.is_integration_host(&Host::Name("raw.githubusercontent.com".into())));
        assert!(acme.is_integration_host(&Host::Name("a.b.githubusercontent.com".into())));
        assert!(!acme.is_integration_host(&Host::Name("githubusercontent.com".into())));
        assert!(!acme.is_integration_host(&Host::Name("evilgithubusercontent.com".into())));
        assert!(p.unsafe_allowed("127.0.0.2".parse().unwrap()));
        assert!(!p.unsafe_allowed("127.0.0.1".parse().unwrap()));
    }
}
