//! Conformance suite: the same contract tests, run against every grader.
//!
//! Sits in `models` (test builds only). [`conformance!`] takes a test-module name, the
//! [`Algorithm`], a closure `seed -> checked params` (anything implementing [`Fit`] whose fitted
//! model serializes) and a closure `seed -> ModelParams` describing the same learner, and
//! generates tests of the [`Scorer`] contract: accuracy on a seeded synthetic 3-class matrix,
//! probability rows, serde round trip, typed input errors, determinism, exact additive
//! contributions, and the [`TrainedModel`] dispatch. It is invoked for each algorithm at the
//! bottom of this file; a new algorithm gets the whole suite by adding one line.

use super::{Algorithm, Fit, ModelError, ModelParams, Scorer, TrainedModel, N_CLASSES};
use crate::matrix::FeatureMatrix;
use serde::{de::DeserializeOwned, Serialize};

/// Rows of the synthetic training matrix.
pub(super) const ROWS: usize = 300;
/// Columns of the synthetic training matrix.
pub(super) const COLS: usize = 6;

/// splitmix64 step: a tiny, well-mixed deterministic generator.
pub(super) fn splitmix64(state: &mut u64) -> u64 {
    let mut r = crate::rng::SplitMix64(*state);
    let z = r.next_u64();
    *state = r.0;
    z
}

/// Uniform in `[0, 1)`.
fn unit(state: &mut u64) -> f64 {
    (splitmix64(state) >> 11) as f64 / (1u64 << 53) as f64
}

/// Seeded synthetic 3-class data: `n` rows x [`COLS`] features. Features 0..4 are uniform in
/// `[-1, 1]`, feature 4 is on a large offset scale (`[500, 600)`), feature 5 is constant. The
/// class is the arg-max of three linear scores plus uniform noise in `[-0.2, 0.2]`.
pub(super) fn synthetic(seed: u64, n: usize) -> (FeatureMatrix, Vec<u8>) {
    let mut s = seed ^ 0x5_eed0_fc1a_55e5;
    let mut x = FeatureMatrix::with_columns(COLS);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let f: [f64; 4] = std::array::from_fn(|_| unit(&mut s) * 2.0 - 1.0);
        let big = 500.0 + 100.0 * unit(&mut s);
        let z = [
            2.0 * f[0] + f[1],
            -f[0] + 2.0 * f[2] + 0.5 * f[3],
            -f[1] - f[2] + 0.5 * (big - 550.0) / 50.0,
        ];
        let noisy: [f64; 3] = std::array::from_fn(|c| z[c] + 0.4 * unit(&mut s) - 0.2);
        let class = (0..N_CLASSES)
            .max_by(|&a, &b| noisy[a].total_cmp(&noisy[b]))
            .unwrap_or(0);
        let row = [f[0], f[1], f[2], f[3], big, 7.0].map(|v| v as f32);
        x.push_row(&row).unwrap();
        y.push(class as u8);
    }
    (x, y)
}

/// Bit patterns, for bit-identity checks that also hold for NaN.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn fit<P: Fit>(make: &impl Fn(u64) -> P, seed: u64) -> (FeatureMatrix, Vec<u8>, P::Fitted) {
    let (x, y) = synthetic(seed, ROWS);
    let m = make(seed).fit(&x, &y).expect("fit on synthetic data");
    (x, y, m)
}

/// Every output of a scorer on `x`: probabilities, then raw scores and contributions per class.
fn all_outputs(m: &impl Scorer, x: &FeatureMatrix) -> Vec<u32> {
    let mut out = bits(&m.score(x).unwrap());
    for c in 0..N_CLASSES {
        let mut raw = vec![0.0; x.n_rows()];
        m.raw_score_into(x, c, &mut raw).unwrap();
        out.extend(bits(&raw));
        out.extend(bits(&m.contributions(x, c).unwrap()));
    }
    out
}

/// Rows whose true grade has the highest probability (ties count as hits).
pub(super) fn hits(probs: &[f32], y: &[u8]) -> usize {
    probs
        .chunks_exact(N_CLASSES)
        .zip(y)
        .filter(|(r, &c)| (0..N_CLASSES).all(|k| r[c as usize] >= r[k]))
        .count()
}

pub(super) fn check_accuracy<P: Fit>(make: impl Fn(u64) -> P) {
    for seed in [1, 2] {
        let (x, y, m) = fit(&make, seed);
        let acc = hits(&m.score(&x).unwrap(), &y) as f64 / y.len() as f64;
        assert!(acc > 0.8, "training accuracy {acc} with seed {seed}");
        // And on fresh rows of the same distribution, better than the majority class.
        let (xt, yt) = synthetic(seed + 100, ROWS);
        let pt = m.score(&xt).unwrap();
        let hits = pt
            .chunks_exact(N_CLASSES)
            .zip(&yt)
            .filter(|(r, &c)| (0..N_CLASSES).all(|k| r[c as usize] >= r[k]))
            .count();
        assert!(hits as f64 / yt.len() as f64 > 0.7, "held-out accuracy");
    }
}

pub(super) fn check_probabilities<P: Fit>(make: impl Fn(u64) -> P) {
    let (_, _, m) = fit(&make, 3);
    // Training-like rows, plus rows far outside the training range.
    let (x, _) = synthetic(77, 100);
    let mut far = x.clone();
    for i in 0..far.n_rows() {
        for v in far.row_mut(i) {
            *v *= 1000.0;
        }
    }
    for x in [x, far] {
        let p = m.score(&x).unwrap();
        assert_eq!(p.len(), x.n_rows() * N_CLASSES);
        for r in p.chunks_exact(N_CLASSES) {
            assert!(r.iter().all(|v| (0.0..=1.0).contains(v)), "{r:?}");
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{r:?}");
        }
    }
}

pub(super) fn check_serde_round_trip<P: Fit>(make: impl Fn(u64) -> P)
where
    P::Fitted: Serialize + DeserializeOwned,
{
    let (x, _, m) = fit(&make, 4);
    let json = serde_json::to_string(&m).unwrap();
    let back: P::Fitted = serde_json::from_str(&json).unwrap();
    assert_eq!(back.n_features(), m.n_features());
    assert_eq!(all_outputs(&back, &x), all_outputs(&m, &x));
    // Serializing again is stable.
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

pub(super) fn check_feature_count<P: Fit>(make: impl Fn(u64) -> P) {
    let (_, _, m) = fit(&make, 5);
    for cols in [COLS - 1, COLS + 1] {
        let x = FeatureMatrix::from_vec(2, cols, vec![0.5; 2 * cols]).unwrap();
        let is_count = |r: Result<(), ModelError>| matches!(r, Err(ModelError::FeatureCount { expected: COLS, got }) if got == cols);
        assert!(is_count(m.score_into(&x, &mut [0.0; 6])));
        assert!(is_count(m.raw_score_into(&x, 0, &mut [0.0; 2])));
        assert!(is_count(m.contributions_into(
            &x,
            0,
            &mut [0.0; 2 * (COLS + 1)]
        )));
        assert!(matches!(m.score(&x), Err(ModelError::FeatureCount { .. })));
    }
}

pub(super) fn check_output_length<P: Fit>(make: impl Fn(u64) -> P) {
    let (x, _, m) = fit(&make, 6);
    let x = x.select_rows(&[0, 1, 2]);
    let is_len = |r: Result<(), ModelError>, want: usize| matches!(r, Err(ModelError::OutputLength { expected, .. }) if expected == want);
    for bad in [0, 8, 10] {
        assert!(is_len(m.score_into(&x, &mut vec![0.0; bad]), 9));
    }
    assert!(is_len(m.raw_score_into(&x, 1, &mut [0.0; 4]), 3));
    let w = COLS + 1;
    assert!(is_len(
        m.contributions_into(&x, 1, &mut vec![0.0; 3 * w - 1]),
        3 * w
    ));
    // A class out of range is a typed error too, never a panic.
    assert!(m.raw_score_into(&x, N_CLASSES, &mut [0.0; 3]).is_err());
    assert!(m
        .contributions_into(&x, N_CLASSES, &mut vec![0.0; 3 * w])
        .is_err());
    // Zero rows to score is fine.
    let empty = FeatureMatrix::with_columns(COLS);
    assert!(m.score(&empty).unwrap().is_empty());
}

pub(super) fn check_determinism<P: Fit>(make: impl Fn(u64) -> P)
where
    P::Fitted: Serialize,
{
    let (x, _, a) = fit(&make, 7);
    let (_, _, b) = fit(&make, 7);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert_eq!(all_outputs(&a, &x), all_outputs(&b, &x));
}

pub(super) fn check_fit_errors<P: Fit>(make: impl Fn(u64) -> P) {
    let p = make(8);
    let empty = FeatureMatrix::with_columns(COLS);
    assert!(matches!(p.fit(&empty, &[]), Err(ModelError::Empty { .. })));
    let no_cols = FeatureMatrix::from_vec(3, 0, vec![]).unwrap();
    assert!(matches!(
        p.fit(&no_cols, &[0, 1, 2]),
        Err(ModelError::Empty { .. })
    ));
    let (x, mut y) = synthetic(8, 30);
    assert!(matches!(
        p.fit(&x, &y[..29]),
        Err(ModelError::Labels { .. })
    ));
    let mut longer = y.clone();
    longer.push(0);
    assert!(matches!(p.fit(&x, &longer), Err(ModelError::Labels { .. })));
    y[4] = N_CLASSES as u8;
    assert!(matches!(p.fit(&x, &y), Err(ModelError::Labels { .. })));
    y[4] = 0;
    let mut bad = x.clone();
    bad.row_mut(2)[1] = f32::NAN;
    assert!(matches!(p.fit(&bad, &y), Err(ModelError::Labels { .. })));
    assert!(p.fit(&x, &y).is_ok());
}

pub(super) fn check_contributions<P: Fit>(make: impl Fn(u64) -> P) {
    let (x, _, m) = fit(&make, 9);
    let w = m.n_features() + 1;
    for c in 0..N_CLASSES {
        let contrib = m.contributions(&x, c).unwrap();
        assert_eq!(contrib.len(), x.n_rows() * w);
        let mut raw = vec![0.0; x.n_rows()];
        m.raw_score_into(&x, c, &mut raw).unwrap();
        for (i, (r, &s)) in contrib.chunks_exact(w).zip(&raw).enumerate() {
            let sum: f64 = r.iter().map(|&v| v as f64).sum();
            assert!(
                (sum - s as f64).abs() < 1e-5,
                "row {i} class {c}: contributions sum {sum}, raw {s}"
            );
        }
    }
}

pub(super) fn check_dispatch<P: Fit>(
    algorithm: Algorithm,
    make: impl Fn(u64) -> P,
    make_params: impl Fn(u64) -> ModelParams,
) {
    let (x, y, direct) = fit(&make, 10);
    let params = make_params(10);
    assert_eq!(params.algorithm(), algorithm);
    // The params survive serde, with their algorithm tag.
    let pj = serde_json::to_string(&params).unwrap();
    assert!(pj.contains(&format!("\"algorithm\":\"{}\"", algorithm.name())));
    assert_eq!(serde_json::from_str::<ModelParams>(&pj).unwrap(), params);

    let trained = params.fit(&x, &y).unwrap();
    assert_eq!(trained.algorithm(), algorithm);
    assert_eq!(trained.n_features(), direct.n_features());
    assert_eq!(all_outputs(&trained, &x), all_outputs(&direct, &x));

    let json = serde_json::to_string(&trained).unwrap();
    let back: TrainedModel = serde_json::from_str(&json).unwrap();
    assert_eq!(back.algorithm(), algorithm);
    assert_eq!(all_outputs(&back, &x), all_outputs(&trained, &x));

    let narrow = FeatureMatrix::from_vec(1, COLS - 1, vec![0.0; COLS - 1]).unwrap();
    assert!(matches!(
        trained.score(&narrow),
        Err(ModelError::FeatureCount { .. })
    ));
    assert!(matches!(
        trained.score_into(&x, &mut [0.0; 2]),
        Err(ModelError::OutputLength { .. })
    ));
    assert!(matches!(
        params.fit(&FeatureMatrix::with_columns(COLS), &[]),
        Err(ModelError::Empty { .. })
    ));
    assert!(matches!(
        params.fit(&x, &y[1..]),
        Err(ModelError::Labels { .. })
    ));
}

/// Generates the conformance tests for one algorithm.
///
/// `conformance!(module_name, Algorithm::X, |seed| checked_params, |seed| model_params);`
macro_rules! conformance {
    ($name:ident, $algorithm:expr, $checked:expr, $params:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn accuracy_beats_bound() {
                check_accuracy($checked);
            }

            #[test]
            fn probability_rows_are_distributions() {
                check_probabilities($checked);
            }

            #[test]
            fn serde_round_trip_is_bit_identical() {
                check_serde_round_trip($checked);
            }

            #[test]
            fn wrong_feature_count_is_an_error() {
                check_feature_count($checked);
            }

            #[test]
            fn wrong_output_length_is_an_error() {
                check_output_length($checked);
            }

            #[test]
            fn same_seed_same_model() {
                check_determinism($checked);
            }

            #[test]
            fn bad_training_input_is_an_error() {
                check_fit_errors($checked);
            }

            #[test]
            fn contributions_sum_to_raw_score() {
                check_contributions($checked);
            }

            #[test]
            fn trained_model_dispatch() {
                check_dispatch($algorithm, $checked, $params);
            }
        }
    };
}

use super::{ForestParams, GbdtParams, LogisticParams};

conformance!(
    logistic,
    Algorithm::Logistic,
    |_seed: u64| LogisticParams::default().check().unwrap(),
    |_seed: u64| ModelParams::Logistic(LogisticParams::default()),
);

conformance!(
    forest,
    Algorithm::Forest,
    |seed: u64| ForestParams::default().seed(seed).check().unwrap(),
    |seed: u64| ModelParams::default_for(Algorithm::Forest, seed),
);

/// The contract does not depend on the hyper-parameters: a shorter schedule keeps it fast.
fn quick_gbdt(seed: u64) -> GbdtParams {
    GbdtParams::default()
        .seed(seed)
        .max_rounds(120)
        .learning_rate(0.1)
}

conformance!(
    gbdt,
    Algorithm::Gbdt,
    |seed: u64| quick_gbdt(seed).check().unwrap(),
    |seed: u64| ModelParams::Gbdt(quick_gbdt(seed)),
);

#[test]
fn synthetic_data_is_seeded_and_balanced_enough() {
    let (a, ya) = synthetic(1, ROWS);
    let (b, yb) = synthetic(1, ROWS);
    let (c, _) = synthetic(2, ROWS);
    assert_eq!((a.as_slice(), &ya), (b.as_slice(), &yb));
    assert_ne!(a.as_slice(), c.as_slice());
    for class in 0..N_CLASSES as u8 {
        let n = ya.iter().filter(|&&y| y == class).count();
        assert!(n > ROWS / 10, "class {class} has {n} rows");
    }
}
