//! Scrubber throughput: 1 MiB of ordinary JSON log lines, without secrets and
//! with ~1 % of lines carrying one; rule-set build time; streaming overhead.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "benchmark harness"
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use scrub::{RuleSet, Scrubber, StreamScrubber};

const MIB: usize = 1024 * 1024;

/// Deterministic ordinary JSON logs (xorshift, no RNG crate).
fn logs(secret_every: Option<usize>) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let paths = [
        "/api/v1/users",
        "/api/v1/orders/123",
        "/healthz",
        "/static/app.js",
        "/auth/login",
        "/v2/search?q=rust+book",
    ];
    let msgs = [
        "request completed",
        "cache miss, fetching from origin",
        "user authenticated via session cookie",
        "retrying upstream after timeout",
        "token bucket refilled",
    ];
    let mut out = String::with_capacity(MIB + 512);
    let mut line_no = 0usize;
    while out.len() < MIB {
        line_no += 1;
        let r = next();
        let path = paths[(r % paths.len() as u64) as usize];
        let msg = msgs[((r >> 8) % msgs.len() as u64) as usize];
        let secret = match secret_every {
            Some(n) if line_no % n == 0 => {
                let tok: String = (0..36)
                    .map(|i| {
                        let a = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                        a[((r >> (i % 50)) as usize + i * 7) % a.len()] as char
                    })
                    .collect();
                format!(",\"note\":\"Authorization: Bearer ghp_{tok}\"")
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "{{\"ts\":\"2026-11-25T03:{:02}:{:02}.{:03}Z\",\"level\":\"info\",\"msg\":\"{msg}\",\"method\":\"GET\",\"path\":\"{path}\",\"status\":200,\"latency_ms\":{},\"bytes\":{},\"request_id\":\"{:016x}\"{secret}}}\n",
            (r >> 20) % 60,
            (r >> 26) % 60,
            (r >> 32) % 1000,
            (r >> 40) % 500,
            (r >> 12) % 100_000,
            next()
        ));
    }
    out
}

fn bench(c: &mut Criterion) {
    let clean = logs(None);
    // One line in 100 carries a secret.
    let dirty = logs(Some(100));
    let scrubber = Scrubber::new();
    // Warm the shared set (lazy regex compilation) outside the measurement.
    let _ = scrubber.scrub(&dirty);
    assert!(scrubber.scrub(&clean).len() == clean.len());

    let mut g = c.benchmark_group("scrub");
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("1MiB_json_logs_no_secrets", |b| {
        b.iter(|| black_box(scrubber.scrub(black_box(&clean))).len())
    });
    g.throughput(Throughput::Bytes(dirty.len() as u64));
    g.bench_function("1MiB_json_logs_1pct_secrets", |b| {
        b.iter(|| black_box(scrubber.scrub(black_box(&dirty))).len())
    });
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("stream_4KiB_chunks_no_secrets", |b| {
        b.iter(|| {
            let mut st = StreamScrubber::new(scrubber.clone());
            let mut n = 0;
            for chunk in clean.as_bytes().chunks(4096) {
                n += st.push_bytes(chunk).len();
            }
            n + st.flush().len()
        })
    });
    g.bench_function("stream_256B_chunks_no_secrets", |b| {
        b.iter(|| {
            let mut st = StreamScrubber::new(scrubber.clone());
            let mut n = 0;
            for chunk in clean.as_bytes().chunks(256) {
                n += st.push_bytes(chunk).len();
            }
            n + st.flush().len()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.bench_function("rule_set_build", |b| {
        b.iter(|| black_box(RuleSet::build_default()).len())
    });
    g.bench_function("rule_set_build_and_compile_all", |b| {
        b.iter(|| {
            let set = RuleSet::build_default();
            black_box(set.compile_all()).len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
