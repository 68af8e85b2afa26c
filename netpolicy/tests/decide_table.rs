//! `decide` and `check_addrs`, table-driven, asserting the reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failed test

use std::net::IpAddr;

use netpolicy::{
    Decision, Destination, Method, Policy, Reason, Request, Source, Verdict, check_addrs, decide,
};

const POLICY: &str = r#"
version: v1
unsafe_allow_ranges: [127.0.0.2/32]
package_repos:
  - pypi.org
  - files.pythonhosted.org
  - host: registry.npmjs.org
    ports: [443, 8443]
orgs:
  acme:
    clients: [10.10.0.0/24]
    integrations:
      github:
        hosts: [api.github.com, "*.githubusercontent.com"]
  globex:
    clients: [10.20.0.0/24, "fd00:20::/64"]
    integrations:
      slack:
        hosts: [slack.com]
"#;

fn policy() -> Policy {
    Policy::from_yaml("t", POLICY).unwrap()
}

fn run(p: &Policy, source: Source, org: &str, method: &str, target: &str) -> Decision {
    let method = Method::parse(method);
    let dest = if method == Method::Connect {
        Destination::parse_authority(target)
    } else {
        Destination::parse_url(target).map(|u| u.dest)
    };
    match dest {
        Ok(dest) => decide(
            p,
            &Request {
                source,
                org,
                method,
                dest: &dest,
            },
        ),
        Err(e) => Decision::deny(e.reason()),
    }
}

#[test]
fn every_rule_by_reason() {
    use Reason as R;
    use Source::{Container as C, Worker as W};
    let p = policy();
    let cases: &[(Source, &str, &str, &str, Reason)] = &[
        // Reads: any public host, both sources, http or https.
        (C, "acme", "GET", "http://example.com/x", R::ReadPublic),
        (C, "acme", "HEAD", "https://example.com/", R::ReadPublic),
        (W, "acme", "GET", "https://example.com/", R::ReadPublic),
        (C, "acme", "GET", "http://8.8.8.8/", R::ReadPublic),
        (C, "acme", "GET", "http://127.0.0.2:8080/", R::ReadPublic), // unsafe_allow_ranges
        (C, "acme", "GET", "http://127.0.0.1/", R::BlockedAddress),
        // Reads go only to `read_ports` (default 80, 443, 8080), both sources.
        (C, "acme", "GET", "http://example.com:443/", R::ReadPublic),
        (
            C,
            "acme",
            "GET",
            "http://example.com:22/",
            R::PortNotAllowed,
        ),
        (
            C,
            "acme",
            "HEAD",
            "http://example.com:6379/",
            R::PortNotAllowed,
        ),
        (
            W,
            "acme",
            "GET",
            "https://example.com:8443/",
            R::PortNotAllowed,
        ),
        (C, "acme", "GET", "http://8.8.8.8:25/", R::PortNotAllowed),
        (
            C,
            "acme",
            "GET",
            "http://169.254.169.254/latest/meta-data",
            R::BlockedAddress,
        ),
        (
            C,
            "acme",
            "GET",
            "http://[::ffff:10.0.0.1]/",
            R::BlockedAddress,
        ),
        (C, "acme", "GET", "http://localhost/", R::SpecialUseName),
        (
            C,
            "acme",
            "GET",
            "http://u:p@example.com/",
            R::UserinfoInUrl,
        ),
        // Writes: worker only, https only, integration hosts only.
        (
            C,
            "acme",
            "POST",
            "https://api.github.com/repos",
            R::WriteFromContainer,
        ),
        (
            C,
            "acme",
            "DELETE",
            "https://api.github.com/x",
            R::WriteFromContainer,
        ),
        (
            W,
            "acme",
            "POST",
            "https://api.github.com/repos",
            R::IntegrationWrite,
        ),
        (
            W,
            "acme",
            "PUT",
            "https://raw.githubusercontent.com/x",
            R::IntegrationWrite,
        ),
        (
            W,
            "acme",
            "PATCH",
            "https://a.b.githubusercontent.com/x",
            R::IntegrationWrite,
        ),
        (
            W,
            "acme",
            "POST",
            "https://githubusercontent.com/x",
            R::WriteNotIntegration,
        ),
        (
            W,
            "acme",
            "POST",
            "http://api.github.com/repos",
            R::WriteRequiresHttps,
        ),
        (
            W,
            "acme",
            "POST",
            "https://slack.com/api",
            R::WriteNotIntegration,
        ), // globex's
        (
            W,
            "globex",
            "POST",
            "https://slack.com/api",
            R::IntegrationWrite,
        ),
        (
            W,
            "acme",
            "DELETE",
            "https://example.com/",
            R::WriteNotIntegration,
        ),
        // CONNECT: package repos on allowed ports.
        (C, "acme", "CONNECT", "pypi.org:443", R::PackageRepo),
        (C, "acme", "CONNECT", "PyPI.org.:443", R::PackageRepo),
        (
            C,
            "acme",
            "CONNECT",
            "registry.npmjs.org:8443",
            R::PackageRepo,
        ),
        (
            C,
            "acme",
            "CONNECT",
            "pypi.org:22",
            R::ConnectPortNotAllowed,
        ),
        (
            C,
            "acme",
            "CONNECT",
            "example.com:443",
            R::ConnectNotPackageRepo,
        ),
        (
            C,
            "acme",
            "CONNECT",
            "api.github.com:443",
            R::ConnectNotPackageRepo,
        ),
        (
            C,
            "acme",
            "CONNECT",
            "10.0.0.1:443",
            R::ConnectNotPackageRepo,
        ),
        (C, "acme", "CONNECT", "pypi.org", R::InvalidTarget),
        // Everything else.
        (
            C,
            "acme",
            "OPTIONS",
            "http://example.com/",
            R::MethodNotAllowed,
        ),
        (
            W,
            "acme",
            "TRACE",
            "https://example.com/",
            R::MethodNotAllowed,
        ),
        (
            C,
            "acme",
            "PROPFIND",
            "http://example.com/",
            R::MethodNotAllowed,
        ),
        (C, "acme", "get", "http://example.com/", R::MethodNotAllowed), // methods are case-sensitive
        (C, "nobody", "GET", "http://example.com/", R::UnknownOrg),
    ];
    for &(source, org, method, target, want) in cases {
        let d = run(&p, source, org, method, target);
        assert_eq!(d.reason, want, "{source:?} {org} {method} {target}");
        let verdict = if want.is_allow() {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        assert_eq!(d.verdict, verdict, "{method} {target}");
    }
}

#[test]
fn check_addrs_denies_if_any_address_is_not_public() {
    let p = policy();
    let dest = Destination::parse_url("http://example.com/").unwrap().dest;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(check_addrs(&p, &dest, &[]), Err(Reason::Unresolvable));
    assert_eq!(
        check_addrs(
            &p,
            &dest,
            &[ip("93.184.215.14"), ip("2606:2800::1"), ip("93.184.215.14")]
        ),
        Ok(vec![ip("93.184.215.14"), ip("2606:2800::1")])
    );
    assert_eq!(
        check_addrs(&p, &dest, &[ip("93.184.215.14"), ip("10.0.0.1")]),
        Err(Reason::BlockedAddress)
    );
    assert_eq!(
        check_addrs(&p, &dest, &[ip("::ffff:127.0.0.1")]),
        Err(Reason::BlockedAddress)
    );
    assert_eq!(
        check_addrs(&p, &dest, &[ip("127.0.0.2")]),
        Ok(vec![ip("127.0.0.2")])
    );
    assert_eq!(
        check_addrs(&p, &dest, &[ip("127.0.0.3")]),
        Err(Reason::BlockedAddress)
    );
    // An IP literal destination dials only itself.
    let lit = Destination::parse_url("http://8.8.8.8/").unwrap().dest;
    assert_eq!(
        check_addrs(&p, &lit, &[ip("8.8.4.4")]),
        Err(Reason::BlockedAddress)
    );
}

#[test]
fn clients_map_to_orgs() {
    let p = policy();
    let org = |s: &str| {
        p.org_for_client(s.parse().unwrap())
            .map(|o| o.as_str().to_owned())
    };
    assert_eq!(org("10.10.0.9").as_deref(), Some("acme"));
    assert_eq!(org("::ffff:10.10.0.9").as_deref(), Some("acme"));
    assert_eq!(org("fd00:20::5").as_deref(), Some("globex"));
    assert_eq!(org("10.30.0.1"), None);
}

#[test]
fn read_ports_are_the_policys_own_list() {
    let p = Policy::from_yaml(
        "t",
        "version: v1\nread_ports: [8081]\norgs:\n  acme:\n    clients: [10.10.0.0/24]\n",
    )
    .unwrap();
    assert_eq!(p.read_ports(), &[8081]);
    assert_eq!(
        run(
            &p,
            Source::Container,
            "acme",
            "GET",
            "http://example.com:8081/"
        )
        .reason,
        Reason::ReadPublic
    );
    for url in ["http://example.com/", "https://example.com/"] {
        assert_eq!(
            run(&p, Source::Worker, "acme", "GET", url).reason,
            Reason::PortNotAllowed,
            "{url}"
        );
    }
    assert_eq!(policy().read_ports(), &[80, 443, 8080]);
}
