//! `egressctl check`: ask netpolicy what it would do with one request.
//!
//! Runs the same two steps as the proxy: `decide` on the request, then (for
//! an allow) resolve the host and `check_addrs` on every address. Prints one
//! JSON line and exits 0 for allow, 1 for deny, 2 for a usage or policy error.
//!
//! Must never: allow when resolution fails (that is `unresolvable`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, ValueEnum};
use netpolicy::{Decision, Destination, Host, Method, Policy, Reason, Request, Source};
use serde::Serialize;

use super::{EXIT_DENY, EXIT_USAGE, emit_line, fail_usage};

/// Who sends the request.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceArg {
    /// An exec container, through the proxy.
    Container,
    /// The worker's HTTP tool.
    Worker,
}

/// Arguments of `egressctl check`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The policy file.
    #[arg(long)]
    pub policy: PathBuf,
    /// The org (default: the only org of the policy).
    #[arg(long)]
    pub org: Option<String>,
    /// Who sends the request.
    #[arg(long, value_enum, default_value = "container")]
    pub source: SourceArg,
    /// Answer DNS for HOST with these addresses instead of asking the system:
    /// `HOST=IP[,IP...]` (an empty list means the name does not resolve).
    #[arg(long = "resolve", value_name = "HOST=IP[,IP...]")]
    pub resolve: Vec<String>,
    /// The HTTP method (GET, POST, CONNECT, ...).
    pub method: String,
    /// An absolute URL, or `host:port` for CONNECT.
    pub target: String,
}

/// The one JSON line `check` prints.
#[derive(Debug, Serialize)]
struct Output {
    verdict: &'static str,
    reason: &'static str,
    host: Option<String>,
    port: Option<u16>,
    addresses: Vec<String>,
}

/// Run `egressctl check`.
pub fn run(args: &Args) -> ExitCode {
    let policy = match Policy::load(&args.policy) {
        Ok(p) => p,
        Err(e) => return fail_usage(&e.to_string()),
    };
    let overrides = match parse_resolve(&args.resolve) {
        Ok(o) => o,
        Err(e) => return fail_usage(&e),
    };
    let org = match (&args.org, policy.orgs().as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [only]) => only.id().as_str().to_owned(),
        (None, _) => return fail_usage("the policy has several orgs (or none): pass --org ORG"),
    };
    let method = Method::parse(&args.method);
    let parsed = if method == Method::Connect {
        Destination::parse_authority(&args.target)
    } else {
        Destination::parse_url(&args.target).map(|p| p.dest)
    };
    let dest = match parsed {
        Ok(d) => d,
        Err(e) => return report(None, Decision::deny(e.reason()), Vec::new()),
    };
    let source = match args.source {
        SourceArg::Container => Source::Container,
        SourceArg::Worker => Source::Worker,
    };
    let decision = netpolicy::decide(
        &policy,
        &Request {
            source,
            org: &org,
            method,
            dest: &dest,
        },
    );
    if !decision.is_allow() {
        return report(Some(&dest), decision, Vec::new());
    }
    let addrs = match &dest.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => match overrides.get(name) {
            Some(list) => list.clone(),
            None => system_resolve(name, dest.port),
        },
    };
    match netpolicy::check_addrs(&policy, &dest, &addrs) {
        Ok(dial) => report(Some(&dest), decision, dial),
        Err(reason) => report(Some(&dest), Decision::deny(reason), Vec::new()),
    }
}

/// Resolve through the system's resolver (one-shot CLI check; the proxy uses
/// hickory and never resolves twice). A failure is an empty answer, which
/// `check_addrs` turns into `unresolvable`.
#[allow(clippy::disallowed_methods)] // one-shot lookup in an operator CLI, not a dial path
fn system_resolve(name: &str, port: u16) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(iter) = (name, port).to_socket_addrs() {
        for sa in iter {
            if !out.contains(&sa.ip()) {
                out.push(sa.ip());
            }
        }
    }
    out
}

fn parse_resolve(items: &[String]) -> Result<HashMap<String, Vec<IpAddr>>, String> {
    let mut map = HashMap::new();
    for item in items {
        let (host, ips) = item
            .split_once('=')
            .ok_or_else(|| format!("--resolve {item}: write HOST=IP[,IP...]"))?;
        let host = match Destination::normalize_host(host) {
            Ok(Host::Name(n)) => n,
            Ok(Host::Ip(_)) => return Err(format!("--resolve {item}: HOST must be a name")),
            // A name netpolicy refuses (a spoof, a special-use name, ...):
            // the target naming it is denied for that reason, which is the
            // answer `check` owes (exit 1), not a usage error. Kept under
            // its raw text, it can match no normalized name.
            Err(_) => host.to_owned(),
        };
        let mut list = Vec::new();
        for ip in ips.split(',').filter(|s| !s.is_empty()) {
            list.push(
                ip.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("--resolve {item}: `{ip}` is not an IP address"))?,
            );
        }
        map.insert(host, list);
    }
    Ok(map)
}

fn report(dest: Option<&Destination>, decision: Decision, addrs: Vec<IpAddr>) -> ExitCode {
    let out = Output {
        verdict: decision.verdict.as_str(),
        reason: decision.reason.as_str(),
        host: dest.map(|d| d.host.to_text()),
        port: dest.map(|d| d.port),
        addresses: addrs.iter().map(ToString::to_string).collect(),
    };
    let line = serde_json::to_string(&out).unwrap_or_else(|_| {
        format!(
            "{{\"verdict\":\"deny\",\"reason\":\"{}\"}}",
            Reason::InternalError.as_str()
        )
    });
    if emit_line(&line).is_err() {
        return ExitCode::from(EXIT_USAGE);
    }
    if decision.is_allow() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENY)
    }
}
