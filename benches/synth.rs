//! Synthetic data: `threatrank::synth::Profile::fit_file` on the shipped sample, and
//! `synth::generate` of 10^4, 10^5 and 10^6 rows into `io::sink()` (formatting and drawing only,
//! no disk). Throughput is rows/s.

mod common;

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use threatrank::synth::{generate, Profile, SynthParams};

fn bench_synth(c: &mut Criterion) {
    let path = Path::new(common::SAMPLE_PATH);
    let mut g = c.benchmark_group("synth_fit");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("10000", |b| {
        b.iter(|| Profile::fit_file(black_box(path)).expect("sample fits"))
    });
    g.finish();

    let profile = Profile::fit_file(path).expect("sample fits");
    let mut g = c.benchmark_group("synth_rows");
    for rows in [10_000u64, 100_000, 1_000_000] {
        let params = SynthParams::default()
            .rows(rows)
            .tenants(1_000)
            .seed(common::SEED)
            .check()
            .expect("valid params");
        g.throughput(Throughput::Elements(rows));
        g.bench_with_input(BenchmarkId::from_parameter(rows), &params, |b, p| {
            b.iter(|| generate(&profile, p, std::io::sink()).expect("sink never fails"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_synth
}
criterion_main!(benches);
