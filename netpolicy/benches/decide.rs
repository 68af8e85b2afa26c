//! Benchmarks: `decide` with 10,000 integration hosts across 1,000 orgs,
//! `classify` over a mix of addresses, and policy load time.
//!
//! Run: `cargo bench -p netpolicy --bench decide -- --warm-up-time 1 --measurement-time 3`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use netpolicy::{Destination, Method, Policy, Request, Source, classify, decide};

/// 1,000 orgs × 10 integration hosts (half exact, half wildcard).
fn big_policy_yaml() -> String {
    let mut y =
        String::from("version: v1\npackage_repos: [pypi.org, files.pythonhosted.org]\norgs:\n");
    for o in 0..1000 {
        let _ = writeln!(
            y,
            "  org{o}:\n    clients: [10.{}.{}.0/24]\n    integrations:",
            o / 256,
            o % 256
        );
        for i in 0..5 {
            let _ = writeln!(
                y,
                "      svc{i}:\n        hosts: [api{i}.org{o}.example.com, \"*.hooks{i}.org{o}.example.net\"]"
            );
        }
    }
    y
}

fn bench(c: &mut Criterion) {
    let yaml = big_policy_yaml();
    c.bench_function("policy_load_1000_orgs_10000_hosts", |b| {
        b.iter(|| Policy::from_yaml("bench", black_box(&yaml)).unwrap())
    });
    let policy = Policy::from_yaml("bench", &yaml).unwrap();
    let dest = |u: &str| Destination::parse_url(u).unwrap().dest;
    let cases = [
        (
            "write_exact_hit",
            Source::Worker,
            "org517",
            Method::Post,
            dest("https://api3.org517.example.com/x"),
        ),
        (
            "write_wildcard_hit",
            Source::Worker,
            "org999",
            Method::Put,
            dest("https://a.b.hooks4.org999.example.net/x"),
        ),
        (
            "write_miss",
            Source::Worker,
            "org42",
            Method::Post,
            dest("https://api3.org43.example.com/x"),
        ),
        (
            "read_public",
            Source::Container,
            "org7",
            Method::Get,
            dest("http://example.com/index.html"),
        ),
        (
            "write_from_container",
            Source::Container,
            "org7",
            Method::Post,
            dest("https://api0.org7.example.com/"),
        ),
    ];
    let mut group = c.benchmark_group("decide");
    for (name, source, org, method, d) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                decide(
                    black_box(&policy),
                    black_box(&Request {
                        source: *source,
                        org,
                        method: *method,
                        dest: d,
                    }),
                )
            })
        });
    }
    let connect = Destination::parse_authority("files.pythonhosted.org:443").unwrap();
    group.bench_function("connect_package_repo", |b| {
        b.iter(|| {
            decide(
                black_box(&policy),
                black_box(&Request {
                    source: Source::Container,
                    org: "org1",
                    method: Method::Connect,
                    dest: &connect,
                }),
            )
        })
    });
    group.finish();

    let addrs: Vec<IpAddr> = [
        "8.8.8.8",
        "10.1.2.3",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.1.1",
        "203.0.113.5",
        "2606:4700::1111",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
        "2002::1",
        "fe80::1",
        "2001:db8::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    c.bench_function("classify_one_of_12_mixed", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % addrs.len();
            classify(black_box(addrs[i]))
        })
    });
    c.bench_function("parse_url_absolute", |b| {
        b.iter(|| Destination::parse_url(black_box("http://Example.COM:8080/a/b?c=d")).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
