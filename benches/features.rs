//! Features: `FittedFeatures::transform` of every incident of seeded inputs of several sizes.
//! Encoders are fitted once per size (on all its labelled incidents) outside the timed loop.
//! Throughput is incidents/s. A second group times `features::fit_transform` (encoders plus the
//! out-of-fold training matrix) on the sample itself.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use threatrank::features::{self, FeatureParams};

fn bench_transform(c: &mut Criterion) {
    let attack = common::knowledge();
    let mut g = c.benchmark_group("features_transform");
    for &n in &common::ROW_SIZES {
        let data = common::Dataset::new(n);
        let enc = common::fitted_features(&data);
        let which = data.all();
        eprintln!("features_transform/{n}: {} incidents", which.len());
        g.throughput(Throughput::Elements(which.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &which, |b, which| {
            b.iter(|| enc.transform(&data.evidence, &data.corr, black_box(which), &attack))
        });
    }
    g.finish();
}

fn bench_fit_transform(c: &mut Criterion) {
    let attack = common::knowledge();
    let params = FeatureParams::default().check().expect("feature params");
    let data = common::Dataset::new(10_000);
    let all = data.all();
    let mut g = c.benchmark_group("features_fit_transform");
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function(BenchmarkId::from_parameter(10_000), |b| {
        b.iter(|| {
            features::fit_transform(
                &params,
                &data.evidence,
                &data.corr,
                black_box(&all),
                &attack,
            )
            .expect("fit_transform")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_transform, bench_fit_transform
}
criterion_main!(benches);
