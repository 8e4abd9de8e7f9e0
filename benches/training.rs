//! Training: `ModelParams::fit` with default parameters for logistic regression, the forest and the GBDT,
//! on the sample's out-of-fold feature matrix (all labelled incidents) and on a seeded half of
//! it. Throughput is training rows/s. Each iteration is a full fit, so this is the slowest bench.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use threatrank::models::{Algorithm, ModelParams};

fn bench_training(c: &mut Criterion) {
    let (x, y) = common::sample_training_matrix();
    let half = common::subsample(&x, &y, x.n_rows() / 2);
    let sets = [(x.n_rows(), (x, y)), (half.0.n_rows(), half)];
    eprintln!(
        "training: {} x {} (full), {} rows (half)",
        sets[0].1 .0.n_rows(),
        sets[0].1 .0.n_cols(),
        sets[1].0
    );

    let mut g = c.benchmark_group("fit");
    for a in Algorithm::ALL {
        let params = ModelParams::default_for(a, common::SEED);
        eprintln!("training: {params:?}");
        for (n, (x, y)) in &sets {
            g.throughput(Throughput::Elements(*n as u64));
            g.bench_with_input(BenchmarkId::new(a.name(), n), &(x, y), |b, (x, y)| {
                b.iter(|| params.fit(black_box(x), black_box(y)).expect("fit"))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_training
}
criterion_main!(benches);
