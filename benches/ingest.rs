//! Ingest: `threatrank::ingest::read_from` over an in-memory GUIDE CSV (labels read), at several
//! sizes. Two groups time the same call: `ingest_bytes` reports MB/s, `ingest_rows` rows/s.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use threatrank::ingest::{read_from, IngestValidParams, InputFormat};

fn read(csv: &[u8], params: &IngestValidParams) -> usize {
    let ing = read_from(csv, "bench.csv", InputFormat::GuideCsv, params).expect("ingest");
    ing.evidence.len()
}

fn bench_ingest(c: &mut Criterion) {
    let params = IngestValidParams::default();
    let inputs: Vec<(usize, Vec<u8>)> = common::ROW_SIZES
        .iter()
        .map(|&n| (n, common::guide_csv(n)))
        .collect();
    for (n, csv) in &inputs {
        assert_eq!(read(csv, &params), *n, "every bench row must be accepted");
    }

    let mut g = c.benchmark_group("ingest_bytes");
    for (n, csv) in &inputs {
        g.throughput(Throughput::Bytes(csv.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), csv, |b, csv| {
            b.iter(|| read(black_box(csv), &params))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ingest_rows");
    for (n, csv) in &inputs {
        g.throughput(Throughput::Elements(*n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), csv, |b, csv| {
            b.iter(|| read(black_box(csv), &params))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_ingest
}
criterion_main!(benches);
