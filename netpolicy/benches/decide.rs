//! Benchmarks for `decide` and `classify` (filled in by the netpolicy work).
#![allow(missing_docs)]
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    c.bench_function("noop", |b| b.iter(|| 1 + 1));
}

criterion_group!(benches, bench);
criterion_main!(benches);
