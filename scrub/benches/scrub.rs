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

include!("common/logs.rs");

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
