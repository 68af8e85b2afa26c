//! WHATWG URL conformance (`../shared/corpora/url/urltestdata.json`): for
//! every non-failure http/https case, the host chokepoint checks is the spec's
//! `hostname`; failure cases never become a Destination.
//!
//! Normalizations chokepoint applies on top of the spec, by design:
//! - one trailing dot is removed from names (`example.com.` checks as
//!   `example.com`);
//! - IPv6 hosts are compared without brackets.
//!
//! Cases chokepoint refuses although the spec parses them are counted by
//! reason; the refusal reasons allowed are the policy ones (userinfo,
//! special-use or single-label names, names that are not DNS names, IDN
//! spoofs), never a disagreement about which host it is.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;

use netpolicy::{Destination, Host, Reason};
use serde_json::Value;

#[test]
fn hosts_match_the_spec() {
    let data: Vec<Value> = serde_json::from_str(&common::corpus("url/urltestdata.json")).unwrap();
    let (mut matched, mut failures_refused) = (0, 0);
    let mut refused: BTreeMap<&'static str, usize> = BTreeMap::new();
    for case in data.iter().filter(|c| c.is_object()) {
        let input = case["input"].as_str().unwrap();
        let base = case["base"].as_str();
        if case.get("failure").and_then(Value::as_bool) == Some(true) {
            // Only absolute inputs reach the proxy; a relative one needs a
            // base the proxy never has, so it is refused as well.
            assert!(
                Destination::parse_url(input).is_err(),
                "failure case accepted: {input:?}"
            );
            failures_refused += 1;
            continue;
        }
        let href = case["href"].as_str().unwrap();
        if !(href.starts_with("http://") || href.starts_with("https://")) {
            continue;
        }
        let spec_host = case["hostname"].as_str().unwrap();
        let want = spec_host
            .strip_suffix('.')
            .unwrap_or(spec_host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        // The serialized URL, and the input itself when it is absolute.
        let mut inputs = vec![href];
        if base.is_none() {
            inputs.push(input);
        }
        for s in inputs {
            match Destination::parse_url(s) {
                Ok(p) => {
                    let got = match &p.dest.host {
                        Host::Name(n) => n.clone(),
                        Host::Ip(ip) => ip.to_string(),
                    };
                    assert_eq!(got, want, "{s:?}");
                    matched += 1;
                }
                Err(e) => {
                    let r = e.reason();
                    assert!(
                        matches!(
                            r,
                            Reason::UserinfoInUrl
                                | Reason::InvalidTarget
                                | Reason::SpecialUseName
                                | Reason::InvalidHost
                                | Reason::IdnSpoof
                        ),
                        "{s:?} refused as {r}"
                    );
                    // The parser still agrees on the host: the refusal is policy.
                    // `invalid_target` means the `url` crate (an older WHATWG
                    // revision than this data) rejects the URL: fail closed.
                    match url::Url::parse(s) {
                        Ok(u) => {
                            let h = u.host_str().unwrap_or("");
                            let h = h.strip_suffix('.').unwrap_or(h);
                            assert_eq!(
                                h.trim_start_matches('[').trim_end_matches(']'),
                                want,
                                "{s:?}"
                            );
                        }
                        Err(_) => assert_eq!(r, Reason::InvalidTarget, "{s:?}"),
                    }
                    *refused.entry(r.as_str()).or_default() += 1;
                }
            }
        }
    }
    println!(
        "matched {matched}, failure cases refused {failures_refused}, policy refusals {refused:?}"
    );
    assert!(matched > 200, "only {matched} hosts compared");
    assert!(
        refused.get("invalid_target").copied().unwrap_or(0) < 20,
        "{refused:?}"
    );
    assert!(failures_refused > 250);
}
