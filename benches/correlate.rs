//! Correlate: `threatrank::correlate::group_incidents` on seeded evidence of several sizes
//! (fresh tenants and incidents per copy of the sample, so the incident count scales too).
//! Throughput is evidence rows/s.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use threatrank::correlate::group_incidents;

fn bench_correlate(c: &mut Criterion) {
    let mut g = c.benchmark_group("correlate");
    for &n in &common::ROW_SIZES {
        let evidence = common::ingest(&common::guide_csv(n));
        let incidents = group_incidents(&evidence).incidents.len();
        eprintln!("correlate/{n}: {incidents} incidents");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &evidence, |b, ev| {
            b.iter(|| group_incidents(black_box(ev)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_correlate
}
criterion_main!(benches);
