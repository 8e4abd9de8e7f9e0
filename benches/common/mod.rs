//! Shared, seeded inputs for the per-stage criterion benches.
//!
//! Inputs are built by replicating the shipped GUIDE sample (`datasets/guide/guide_sample.csv`,
//! 10,000 rows): copy `k` shifts `Id`, `OrgId`, `IncidentId` and `AlertId` by `k` times (max + 1)
//! of that column, so every copy brings fresh tenants, incidents and alerts and the number of
//! incidents grows with the row count. The rows of all copies are then shuffled with a fixed
//! seed ([`SEED`]), so every run (and every bench binary) sees the same bytes.
//!
//! Each bench binary uses only part of this module.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use threatrank::correlate::{group_incidents, Correlated};
use threatrank::domain::Evidence;
use threatrank::features::{self, FeatureParams, FittedFeatures};
use threatrank::ingest::{read_from, IngestValidParams, InputFormat};
use threatrank::matrix::FeatureMatrix;
use threatrank::signals::Knowledge;

/// The shipped GUIDE sample.
pub const SAMPLE_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/datasets/guide/guide_sample.csv"
);

/// Seed of every random choice in the benches.
pub const SEED: u64 = 0x7417_5EED;

/// Evidence-row sizes of the ingest / correlate / features benches.
pub const ROW_SIZES: [usize; 3] = [10_000, 50_000, 200_000];

/// Criterion settings shared by all benches: short runs on a small shared machine.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

/// splitmix64: a tiny seeded generator (no extra dev-dependency).
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform index in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Columns rewritten per copy.
const ID_COLUMNS: [&str; 4] = ["Id", "OrgId", "IncidentId", "AlertId"];

/// A GUIDE CSV (header + `rows` data rows) made of seeded, re-keyed copies of the sample.
pub fn guide_csv(rows: usize) -> Vec<u8> {
    let mut rdr = csv::Reader::from_path(SAMPLE_PATH).expect("open the GUIDE sample");
    let header = rdr.headers().expect("sample header").clone();
    let records: Vec<csv::StringRecord> = rdr
        .records()
        .collect::<Result<_, _>>()
        .expect("parse the GUIDE sample");
    assert!(!records.is_empty(), "empty GUIDE sample");
    let cols: Vec<usize> = ID_COLUMNS
        .iter()
        .map(|name| {
            header
                .iter()
                .position(|h| h == *name)
                .unwrap_or_else(|| panic!("sample lacks column {name}"))
        })
        .collect();
    let strides: Vec<u64> = cols
        .iter()
        .map(|&c| {
            records
                .iter()
                .filter_map(|r| r[c].parse::<u64>().ok())
                .max()
                .unwrap_or(0)
                + 1
        })
        .collect();

    let mut out: Vec<csv::StringRecord> = Vec::with_capacity(rows);
    let mut copy = 0u64;
    while out.len() < rows {
        for r in &records {
            if out.len() == rows {
                break;
            }
            if copy == 0 {
                out.push(r.clone());
                continue;
            }
            let fields: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, f)| match cols.iter().position(|&c| c == i) {
                    Some(k) => match f.parse::<u64>() {
                        Ok(v) => (v + copy * strides[k]).to_string(),
                        Err(_) => f.to_string(),
                    },
                    None => f.to_string(),
                })
                .collect();
            out.push(csv::StringRecord::from(fields));
        }
        copy += 1;
    }
    SplitMix::new(SEED ^ rows as u64).shuffle(&mut out);

    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows * 280));
    w.write_record(&header).expect("write header");
    for r in &out {
        w.write_record(r).expect("write record");
    }
    w.into_inner().expect("flush CSV buffer")
}

/// Ingests a GUIDE CSV buffer (labels read), asserting that nothing was rejected.
pub fn ingest(csv: &[u8]) -> Vec<Evidence> {
    let ing = read_from(
        csv,
        "bench.csv",
        InputFormat::GuideCsv,
        &IngestValidParams::default(),
    )
    .expect("ingest bench CSV");
    assert!(ing.report.balanced());
    assert!(
        ing.report.rejected.is_empty(),
        "bench input rejected: {}",
        ing.report.summary()
    );
    ing.evidence
}

/// Evidence and incidents of a seeded input of `rows` rows.
pub struct Dataset {
    /// evidence rows
    pub evidence: Vec<Evidence>,
    /// incidents
    pub corr: Correlated,
}

impl Dataset {
    /// Builds, ingests and correlates a seeded input of `rows` rows.
    pub fn new(rows: usize) -> Self {
        let evidence = ingest(&guide_csv(rows));
        let corr = group_incidents(&evidence);
        Self { evidence, corr }
    }

    /// Indices of every incident.
    pub fn all(&self) -> Vec<usize> {
        (0..self.corr.incidents.len()).collect()
    }
}

/// The shipped knowledge tables with the development pseudonymization key.
pub fn knowledge() -> Knowledge {
    Knowledge::development().expect("shipped knowledge tables")
}

/// Encoders fitted on every labelled incident of `data` (default feature parameters).
pub fn fitted_features(data: &Dataset) -> FittedFeatures {
    let params = FeatureParams::default().check().expect("feature params");
    FittedFeatures::fit(
        &params,
        &data.evidence,
        &data.corr,
        &data.all(),
        &knowledge(),
    )
    .expect("fit encoders")
}

/// The sample's out-of-fold training matrix and labels (one row per labelled incident).
pub fn sample_training_matrix() -> (FeatureMatrix, Vec<u8>) {
    let data = Dataset::new(10_000);
    let params = FeatureParams::default().check().expect("feature params");
    let (_enc, x, y, _rows) = features::fit_transform(
        &params,
        &data.evidence,
        &data.corr,
        &data.all(),
        &knowledge(),
    )
    .expect("fit_transform on the sample");
    (x, y)
}

/// The first `n` rows of `(x, y)` after a seeded shuffle.
pub fn subsample(x: &FeatureMatrix, y: &[u8], n: usize) -> (FeatureMatrix, Vec<u8>) {
    let mut idx: Vec<usize> = (0..x.n_rows()).collect();
    SplitMix::new(SEED ^ 0x5ab5).shuffle(&mut idx);
    idx.truncate(n.min(idx.len()));
    let ys = idx.iter().map(|&i| y[i]).collect();
    (x.select_rows(&idx), ys)
}

/// A matrix of `n` rows drawn (seeded, with replacement) from the rows of `x`.
pub fn tile_rows(x: &FeatureMatrix, n: usize) -> FeatureMatrix {
    let mut rng = SplitMix::new(SEED ^ n as u64);
    let idx: Vec<usize> = (0..n).map(|_| rng.below(x.n_rows())).collect();
    x.select_rows(&idx)
}
