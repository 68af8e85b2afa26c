//! The public SSRF corpora in `../shared/corpora/ssrf/` as test tables.
//!
//! Every URL or address that aims at loopback, metadata or a private range
//! must be refused: by the parser (userinfo, special-use name, invalid host)
//! or by address validation (`blocked_address`). Cases chokepoint decides
//! differently from the corpus on purpose are listed below with the reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

mod common;

use std::net::IpAddr;

use netpolicy::{Destination, Host, Policy, Reason, check_addrs};
use serde_json::Value;

fn policy_with(ranges: &[String]) -> Policy {
    let yaml = format!(
        "version: v1\nunsafe_allow_ranges: [{}]\n",
        ranges.join(", ")
    );
    Policy::from_yaml("corpus", &yaml).unwrap()
}

/// What chokepoint does with a URL (or an address, as `http://ADDR/`):
/// `Err(reason)` or `Ok(host)` where an IP host was already validated.
fn outcome(policy: &Policy, url: &str) -> Result<Host, Reason> {
    let parsed = Destination::parse_url(url).map_err(|e| e.reason())?;
    if let Host::Ip(ip) = parsed.dest.host {
        check_addrs(policy, &parsed.dest, &[ip])?;
    }
    Ok(parsed.dest.host)
}

fn as_url(input: &str) -> String {
    if input.contains("://") || input.starts_with("http:") {
        input.to_owned()
    } else if input.contains(':') {
        format!("http://[{input}]/")
    } else {
        format!("http://{input}/")
    }
}

/// Rows whose verdict chokepoint changes on purpose: (input, port, why).
const DIFFERENT: &[(&str, u64, &str)] = &[
    (
        "64:ff9c::1",
        1,
        "outside 2000::/3 no IPv6 unicast is globally allocated; chokepoint denies it as reserved, smokescreen allows anything outside its listed ranges",
    ),
    (
        "64:ff9b::808:808",
        1,
        "NAT64 well-known prefix: chokepoint decodes the embedded IPv4 and re-checks it (8.8.8.8 is public); smokescreen denies every NAT64 address",
    ),
    (
        "8.8.8.8",
        321,
        "smokescreen's test config denies this public address:port by a user deny list; chokepoint has no per-address deny list (policy is by host and method)",
    ),
    (
        "1.1.1.1",
        1,
        "smokescreen's test config denies this public address by a user deny list; chokepoint has no per-address deny list",
    ),
];

#[test]
fn ssrf_address_cases() {
    let text = common::corpus("ssrf/ssrf_address_cases.jsonl");
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).unwrap();
        let input = row["input"].as_str().unwrap();
        let port = row["port"].as_u64().unwrap_or(0);
        let expected_allow = row["expected"] == "allow";
        let config_dependent = row["config_dependent"].as_bool().unwrap();
        // The sources' allow-ranges become an equivalent unsafe_allow_ranges.
        let ranges = match (config_dependent, expected_allow, input.parse::<IpAddr>()) {
            (true, true, Ok(IpAddr::V4(v4))) => vec![format!("{v4}/32")],
            (true, true, Ok(IpAddr::V6(v6))) => vec![format!("\"{v6}/128\"")],
            _ => vec![],
        };
        let got = outcome(&policy_with(&ranges), &as_url(input));
        let allowed = got.is_ok();
        let different = DIFFERENT.iter().any(|(i, p, _)| *i == input && *p == port);
        if different {
            assert_ne!(
                allowed, expected_allow,
                "{input}:{port} is listed as different but agrees"
            );
        } else if allowed != expected_allow {
            mismatches.push(format!(
                "{input}:{port} expected {} got {got:?}",
                row["expected"]
            ));
        }
        if !allowed && !different {
            let reason = got.unwrap_err();
            assert!(
                matches!(
                    reason,
                    Reason::BlockedAddress | Reason::InvalidTarget | Reason::InvalidHost
                ),
                "{input}: unexpected reason {reason}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 100);
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[test]
fn patt_bypass_urls_never_reach_loopback() {
    // URLs whose WHATWG host is a public name: the trick targets a redirect
    // or a second parser; chokepoint decides on the host it parsed (and never
    // follows redirects for the client).
    const PUBLIC_NAME: &[(&str, &str)] = &[
        ("http://ⓔⓧⓐⓜⓟⓛⓔ.ⓒⓞⓜ", "example.com"),
        (
            "https://307.r3dir.me/--to/?url=http://localhost",
            "307.r3dir.me",
        ),
        (
            "https://62epax5fhvj3zzmzigyoe5ipkbn7fysllvges3a.302.r3dir.me",
            "62epax5fhvj3zzmzigyoe5ipkbn7fysllvges3a.302.r3dir.me",
        ),
    ];
    let policy = policy_with(&[]);
    let text = common::corpus("ssrf/patt_ssrf_bypass_urls.txt");
    let mut n = 0;
    for url in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        n += 1;
        let got = outcome(&policy, url);
        if let Some((_, host)) = PUBLIC_NAME.iter().find(|(u, _)| *u == url) {
            assert_eq!(got, Ok(Host::Name((*host).to_owned())), "{url}");
            continue;
        }
        assert!(got.is_err(), "{url} was allowed: {got:?}");
    }
    assert_eq!(n, 42);
}

fn ippy(file: &str, target: IpAddr) {
    let policy = policy_with(&[]);
    let text = common::corpus(file);
    let (mut denied, mut decided_on_allowed, mut on_target) = (0, 0, 0);
    for url in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // The reference: what the WHATWG parser says the host is.
        let reference = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        let got = outcome(&policy, url);
        match reference.as_deref() {
            Some("allowed.example.com") => {
                // The decision is made on that host (or the URL is refused).
                if let Ok(host) = &got {
                    assert_eq!(host, &Host::Name("allowed.example.com".into()), "{url}");
                    decided_on_allowed += 1;
                } else {
                    denied += 1;
                }
            }
            _ if matches!(got, Ok(Host::Name(_))) => {
                // A public name that resolves to the target (e.g. a wildcard
                // DNS service like `*.localdomain.pw`): the decision rests on
                // check_addrs after resolution, which must deny the target.
                let dest = Destination::parse_url(url).unwrap().dest;
                assert_eq!(
                    check_addrs(&policy, &dest, &[target]),
                    Err(Reason::BlockedAddress),
                    "{url}"
                );
                denied += 1;
            }
            _ => {
                assert!(
                    got.is_err(),
                    "{url} was allowed: {got:?} (reference host {reference:?})"
                );
                if let Ok(Host::Ip(ip)) = Destination::parse_url(url).map(|p| p.dest.host) {
                    // Some generated encodings are malformed and land
                    // elsewhere (`0x7f001` is 0.7.240.1): never on a public
                    // address, and never allowed.
                    assert!(!netpolicy::classify(ip).is_public(), "{url} -> {ip}");
                    if ip == target {
                        on_target += 1;
                    }
                }
                denied += 1;
            }
        }
    }
    assert_eq!(denied + decided_on_allowed, 244, "{file}");
    assert!(denied > 200, "{file}: only {denied} denied");
    assert!(
        on_target > 30,
        "{file}: only {on_target} parsed to {target}"
    );
}

#[test]
fn ippy_loopback() {
    ippy(
        "ssrf/ippy_127.0.0.1_80_allowed.example.com.txt",
        "127.0.0.1".parse().unwrap(),
    );
}

#[test]
fn ippy_metadata() {
    ippy(
        "ssrf/ippy_169.254.169.254_80_allowed.example.com.txt",
        "169.254.169.254".parse().unwrap(),
    );
}
