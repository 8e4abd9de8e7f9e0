//! Scoring: `Scorer::score_into` of a fitted logistic, forest and GBDT model (default parameters,
//! trained once on the sample's out-of-fold feature matrix, outside the timed loops) on matrices
//! of 1k / 10k / 100k rows drawn (seeded) from that matrix, in rows/s; the latency of scoring a
//! single row; and `Scorer::contributions_into` (TP class) in rows/s.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use threatrank::matrix::FeatureMatrix;
use threatrank::models::{Algorithm, ModelParams, Scorer, TrainedModel, N_CLASSES};

const SCORE_SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const CONTRIB_SIZES: [usize; 2] = [1_000, 10_000];

fn models() -> (FeatureMatrix, Vec<(&'static str, TrainedModel)>) {
    let (x, y) = common::sample_training_matrix();
    let models = Algorithm::ALL
        .iter()
        .map(|&a| {
            let params = ModelParams::default_for(a, common::SEED);
            eprintln!("scoring: {params:?}");
            let m = params.fit(&x, &y).expect("fit model");
            (a.name(), m)
        })
        .collect();
    (x, models)
}

fn bench_scoring(c: &mut Criterion) {
    let (x, models) = models();

    let mut g = c.benchmark_group("score_into");
    for &n in &SCORE_SIZES {
        let xs = common::tile_rows(&x, n);
        let mut out = vec![0f32; n * N_CLASSES];
        g.throughput(Throughput::Elements(n as u64));
        for (name, m) in &models {
            g.bench_with_input(BenchmarkId::new(*name, n), &xs, |b, xs| {
                b.iter(|| m.score_into(black_box(xs), &mut out).expect("score"))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("score_single_row");
    let one = common::tile_rows(&x, 1);
    let mut out = [0f32; N_CLASSES];
    for (name, m) in &models {
        g.bench_with_input(BenchmarkId::from_parameter(name), &one, |b, one| {
            b.iter(|| m.score_into(black_box(one), &mut out).expect("score"))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("contributions_into");
    for &n in &CONTRIB_SIZES {
        let xs = common::tile_rows(&x, n);
        g.throughput(Throughput::Elements(n as u64));
        for (name, m) in &models {
            let mut out = vec![0f32; n * (m.n_features() + 1)];
            g.bench_with_input(BenchmarkId::new(*name, n), &xs, |b, xs| {
                b.iter(|| {
                    m.contributions_into(black_box(xs), 0, &mut out)
                        .expect("contributions")
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_scoring
}
criterion_main!(benches);
