//! Multinomial logistic regression: one of the two graders behind [`super::Fit`] / [`Scorer`].
//!
//! Sits in `models`, between `features` (which builds the [`FeatureMatrix`]) and `rank`.
//! linfa-logistic (on ndarray 0.16, `f64`) is used only to *fit*, on features standardized here
//! (mean / standard deviation computed in `fit`). The learned weights are then copied into our
//! own plain [`FittedLogistic`], mapped explicitly from linfa's class order to ours, so that
//! scoring, serde and explanations never touch linfa or ndarray: nothing of either crate leaves
//! this file.
//!
//! Raw score (logit) of class `c`: `intercept_c + Σ_j w_cj · (x_j − mean_j) / scale_j`, computed
//! in `f64`; probabilities are the numerically stable softmax of the three logits. The per-feature
//! terms of that sum are the contributions, the intercept is the bias.

use super::{check_class, check_fit_input, check_score_input, Fit, ModelError, Scorer, N_CLASSES};
use crate::matrix::FeatureMatrix;
use linfa::traits::Fit as LinfaFit;
use linfa::ParamGuard;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Intercept given to a class that never occurs in the training labels (its probability is then
/// about `e^-30` relative to the others).
pub const ABSENT_CLASS_INTERCEPT: f32 = -30.0;

/// Rows at or above which scoring is split across rayon threads.
const PAR_MIN_ROWS: usize = 2048;
/// Rows per parallel chunk.
const PAR_CHUNK_ROWS: usize = 512;

fn learner_err(reason: impl std::fmt::Display) -> ModelError {
    ModelError::Learner {
        learner: "linfa-logistic",
        reason: reason.to_string(),
    }
}

/// Unchecked hyper-parameters of the logistic regression (serde-friendly; missing fields take
/// their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogisticParams {
    max_iterations: u64,
    l2: f64,
    gradient_tolerance: f64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        Self {
            max_iterations: 300,
            l2: 1.0,
            gradient_tolerance: 1e-4,
        }
    }
}

impl LogisticParams {
    /// Maximum number of L-BFGS iterations (must be at least 1). Default: `300`.
    pub fn max_iterations(mut self, max_iterations: u64) -> Self {
        self.max_iterations = max_iterations;
        self
    }

    /// L2 penalty weight (linfa's `alpha`; finite, `>= 0`). Default: `1.0`.
    pub fn l2(mut self, l2: f64) -> Self {
        self.l2 = l2;
        self
    }

    /// Gradient-norm tolerance that stops the solver (finite, `> 0`). Default: `1e-4`.
    pub fn gradient_tolerance(mut self, gradient_tolerance: f64) -> Self {
        self.gradient_tolerance = gradient_tolerance;
        self
    }

    /// The configured maximum number of iterations.
    pub fn get_max_iterations(&self) -> u64 {
        self.max_iterations
    }

    /// The configured L2 penalty.
    pub fn get_l2(&self) -> f64 {
        self.l2
    }

    /// The configured gradient tolerance.
    pub fn get_gradient_tolerance(&self) -> f64 {
        self.gradient_tolerance
    }

    /// Validates the parameters; errors with [`ModelError::InvalidParam`] when one is out of
    /// range.
    pub fn check(&self) -> Result<LogisticValidParams, ModelError> {
        if self.max_iterations == 0 {
            return Err(ModelError::InvalidParam {
                name: "max_iterations",
                reason: "must be at least 1".into(),
            });
        }
        if !self.l2.is_finite() || self.l2 < 0.0 {
            return Err(ModelError::InvalidParam {
                name: "l2",
                reason: format!("must be finite and >= 0, got {}", self.l2),
            });
        }
        if !self.gradient_tolerance.is_finite() || self.gradient_tolerance <= 0.0 {
            return Err(ModelError::InvalidParam {
                name: "gradient_tolerance",
                reason: format!("must be finite and > 0, got {}", self.gradient_tolerance),
            });
        }
        Ok(LogisticValidParams(self.clone()))
    }
}

/// Checked logistic-regression parameters, ready to [`Fit::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticValidParams(LogisticParams);

impl LogisticValidParams {
    /// The parameters that were checked.
    pub fn params(&self) -> &LogisticParams {
        &self.0
    }
}

impl Fit for LogisticValidParams {
    type Fitted = FittedLogistic;

    fn fit(&self, x: &FeatureMatrix, y: &[u8]) -> Result<FittedLogistic, ModelError> {
        check_fit_input(x, y)?;
        let (n, d) = (x.n_rows(), x.n_cols());
        let (mean, scale) = standardization(x);

        let mut present = [false; N_CLASSES];
        for &c in y {
            present[c as usize] = true;
        }
        let mut weights = vec![0.0f32; N_CLASSES * d];
        let mut intercept = [ABSENT_CLASS_INTERCEPT; N_CLASSES];

        if present.iter().filter(|&&p| p).count() == 1 {
            // A single class: nothing to learn, it always wins.
            for c in 0..N_CLASSES {
                if present[c] {
                    intercept[c] = 0.0;
                }
            }
        } else {
            let mut xs = Array2::<f64>::zeros((n, d));
            for (i, row) in x.rows().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    xs[[i, j]] = (v as f64 - mean[j] as f64) / scale[j] as f64;
                }
            }
            let ys: Array1<usize> = y.iter().map(|&c| c as usize).collect();
            let dataset = linfa::DatasetBase::new(xs, ys);
            let params = MultiLogisticRegression::<f64>::default()
                .alpha(self.0.l2)
                .max_iterations(self.0.max_iterations)
                .gradient_tolerance(self.0.gradient_tolerance)
                .check()
                .map_err(learner_err)?;
            let model = params.fit(&dataset).map_err(learner_err)?;

            let classes = model.classes();
            let w = model.params();
            let b = model.intercept();
            if w.shape() != [d, classes.len()] || b.len() != classes.len() {
                return Err(learner_err(format!(
                    "unexpected parameter shape {:?} / {} for {} classes",
                    w.shape(),
                    b.len(),
                    classes.len()
                )));
            }
            // linfa's column k is its k-th class label: map it to our class id explicitly.
            for (k, &c) in classes.iter().enumerate() {
                if c >= N_CLASSES || !present[c] {
                    return Err(learner_err(format!("unexpected class label {c}")));
                }
                for j in 0..d {
                    weights[c * d + j] = w[[j, k]] as f32;
                }
                intercept[c] = b[k] as f32;
            }
            if weights.iter().chain(&intercept).any(|v| !v.is_finite()) {
                return Err(learner_err("solver produced non-finite parameters"));
            }
        }

        Ok(FittedLogistic {
            n_features: d,
            mean,
            scale,
            weights,
            intercept,
        })
    }
}

/// Per-column mean and standard deviation (population), as stored `f32`; a zero, non-finite or
/// sub-normal deviation becomes 1 so that a constant column standardizes to 0.
fn standardization(x: &FeatureMatrix) -> (Vec<f32>, Vec<f32>) {
    let (n, d) = (x.n_rows() as f64, x.n_cols());
    let mut sum = vec![0.0f64; d];
    for row in x.rows() {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let mut sq = vec![0.0f64; d];
    for row in x.rows() {
        for ((s, &v), &m) in sq.iter_mut().zip(row).zip(&mean) {
            let dv = v as f64 - m as f64;
            *s += dv * dv;
        }
    }
    let scale = sq
        .iter()
        .map(|s| {
            let sd = (s / n).sqrt() as f32;
            if sd.is_normal() && sd > 0.0 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    (mean, scale)
}

/// A fitted multinomial logistic regression, in our own plain form.
///
/// `weights` holds one row of `n_features` weights per class (class order TP, BP, FP); weights
/// apply to standardized features `(x_j − mean_j) / scale_j`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FittedLogisticRepr")]
pub struct FittedLogistic {
    n_features: usize,
    mean: Vec<f32>,
    scale: Vec<f32>,
    weights: Vec<f32>,
    intercept: [f32; N_CLASSES],
}

/// Wire form of [`FittedLogistic`], validated before use so that a malformed artifact errors
/// at load time instead of panicking at scoring time.
#[derive(Deserialize)]
struct FittedLogisticRepr {
    n_features: usize,
    mean: Vec<f32>,
    scale: Vec<f32>,
    weights: Vec<f32>,
    intercept: [f32; N_CLASSES],
}

impl TryFrom<FittedLogisticRepr> for FittedLogistic {
    type Error = String;

    fn try_from(r: FittedLogisticRepr) -> Result<Self, String> {
        let d = r.n_features;
        if d == 0 {
            return Err("logistic model has no feature".into());
        }
        if r.mean.len() != d || r.scale.len() != d || r.weights.len() != N_CLASSES * d {
            return Err(format!(
                "logistic model shape mismatch: {d} features, {} means, {} scales, {} weights",
                r.mean.len(),
                r.scale.len(),
                r.weights.len()
            ));
        }
        if r.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("logistic model has a non-positive or non-finite scale".into());
        }
        // A JSON number beyond f32 (1e300) reads as infinity: refuse it rather than score with it.
        if r.mean
            .iter()
            .chain(&r.weights)
            .chain(&r.intercept)
            .any(|v| !v.is_finite())
        {
            return Err("logistic model has a non-finite mean, weight or intercept".into());
        }
        Ok(Self {
            n_features: d,
            mean: r.mean,
            scale: r.scale,
            weights: r.weights,
            intercept: r.intercept,
        })
    }
}

impl FittedLogistic {
    /// Per-feature means used for standardization.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Per-feature scales (standard deviations, 1 for constant columns).
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// Weights of `class` on standardized features (`n_features` values); `None` when
    /// `class >= N_CLASSES`.
    pub fn class_weights(&self, class: usize) -> Option<&[f32]> {
        (class < N_CLASSES)
            .then(|| &self.weights[class * self.n_features..(class + 1) * self.n_features])
    }

    /// Intercepts, one per class.
    pub fn intercept(&self) -> [f32; N_CLASSES] {
        self.intercept
    }

    /// Standardized value of feature `j` of `row`.
    #[inline]
    fn z(&self, row: &[f32], j: usize) -> f64 {
        (row[j] as f64 - self.mean[j] as f64) / self.scale[j] as f64
    }

    /// The three logits of one row.
    fn logits(&self, row: &[f32]) -> [f64; N_CLASSES] {
        let d = self.n_features;
        let mut out = [0.0f64; N_CLASSES];
        for (c, o) in out.iter_mut().enumerate() {
            *o = self.intercept[c] as f64;
        }
        for j in 0..d {
            let z = self.z(row, j);
            for (c, o) in out.iter_mut().enumerate() {
                *o += self.weights[c * d + j] as f64 * z;
            }
        }
        out
    }

    /// Logit of one class for one row.
    fn logit(&self, row: &[f32], class: usize) -> f64 {
        let w = &self.weights[class * self.n_features..(class + 1) * self.n_features];
        let mut s = self.intercept[class] as f64;
        for (j, &wj) in w.iter().enumerate() {
            s += wj as f64 * self.z(row, j);
        }
        s
    }
}

/// Applies `f(row, out_row)` to every row, in parallel chunks for large inputs. Each output row
/// depends only on its input row, so results do not depend on the thread count.
fn fill_rows<F>(x: &FeatureMatrix, out: &mut [f32], per_row: usize, f: F)
where
    F: Fn(&[f32], &mut [f32]) + Sync,
{
    if per_row == 0 {
        return;
    }
    if x.n_rows() >= PAR_MIN_ROWS {
        out.par_chunks_mut(per_row * PAR_CHUNK_ROWS)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let start = ci * PAR_CHUNK_ROWS;
                for (k, o) in chunk.chunks_exact_mut(per_row).enumerate() {
                    f(x.row(start + k), o);
                }
            });
    } else {
        for (i, o) in out.chunks_exact_mut(per_row).enumerate() {
            f(x.row(i), o);
        }
    }
}

/// Numerically stable softmax of `z`, written as `f32`.
fn softmax_into(z: &[f64; N_CLASSES], out: &mut [f32]) {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = z.map(|v| (v - m).exp());
    let s: f64 = e.iter().sum();
    for (o, v) in out.iter_mut().zip(e) {
        *o = (v / s) as f32;
    }
}

impl Scorer for FittedLogistic {
    fn n_features(&self) -> usize {
        self.n_features
    }

    fn score_into(&self, x: &FeatureMatrix, out: &mut [f32]) -> Result<(), ModelError> {
        check_score_input(self.n_features, x, out.len(), N_CLASSES)?;
        fill_rows(x, out, N_CLASSES, |row, o| {
            softmax_into(&self.logits(row), o)
        });
        Ok(())
    }

    fn contributions_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        check_class(class)?;
        let d = self.n_features;
        check_score_input(d, x, out.len(), d + 1)?;
        let w = &self.weights[class * d..(class + 1) * d];
        let bias = self.intercept[class];
        fill_rows(x, out, d + 1, |row, o| {
            for (j, (oj, &wj)) in o.iter_mut().zip(w).enumerate() {
                *oj = (wj as f64 * self.z(row, j)) as f32;
            }
            o[d] = bias;
        });
        Ok(())
    }

    fn raw_score_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        check_class(class)?;
        check_score_input(self.n_features, x, out.len(), 1)?;
        fill_rows(x, out, 1, |row, o| o[0] = self.logit(row, class) as f32);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well separated blobs along feature 0 (class c around 10·c), feature 1 noise-free
    /// constant, feature 2 on a large scale.
    fn blobs(counts: [usize; N_CLASSES], centers: [f32; N_CLASSES]) -> (FeatureMatrix, Vec<u8>) {
        let mut x = FeatureMatrix::with_columns(3);
        let mut y = Vec::new();
        for c in 0..N_CLASSES {
            for i in 0..counts[c] {
                let jitter = (i % 7) as f32 * 0.1 - 0.3;
                x.push_row(&[centers[c] + jitter, 5.0, 1000.0 + 37.0 * (i % 5) as f32])
                    .unwrap();
                y.push(c as u8);
            }
        }
        (x, y)
    }

    fn argmax(p: &[f32]) -> usize {
        (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
    }

    #[test]
    fn params_are_checked() {
        assert!(LogisticParams::default().check().is_ok());
        for bad in [
            LogisticParams::default().max_iterations(0),
            LogisticParams::default().l2(-1.0),
            LogisticParams::default().l2(f64::NAN),
            LogisticParams::default().gradient_tolerance(0.0),
            LogisticParams::default().gradient_tolerance(f64::INFINITY),
        ] {
            assert!(matches!(bad.check(), Err(ModelError::InvalidParam { .. })));
        }
        let p: LogisticParams = serde_json::from_str(r#"{"l2": 0.5}"#).unwrap();
        assert_eq!(p, LogisticParams::default().l2(0.5));
    }

    #[test]
    fn class_order_is_mapped_with_majority_class_two() {
        // Class 2 is by far the most frequent, and sits at the lowest feature value: a wrong
        // mapping of linfa's columns would swap predictions.
        let (x, y) = blobs([20, 25, 120], [10.0, 20.0, 0.0]);
        let m = LogisticParams::default()
            .l2(0.01)
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let p = m.score(&x).unwrap();
        for (i, &c) in y.iter().enumerate() {
            assert_eq!(argmax(&p[i * 3..i * 3 + 3]), c as usize, "row {i}");
        }
        // The constant column standardizes with scale 1.
        assert_eq!(m.scale()[1], 1.0);
    }

    #[test]
    fn absent_class_gets_zero_weight_and_low_intercept() {
        for (present, centers) in [([0u8, 2], [0.0, 50.0, 10.0]), ([1, 2], [50.0, 0.0, 10.0])] {
            let mut counts = [0; N_CLASSES];
            counts[present[0] as usize] = 40;
            counts[present[1] as usize] = 60;
            let (x, y) = blobs(counts, centers);
            let m = LogisticParams::default()
                .l2(0.01)
                .check()
                .unwrap()
                .fit(&x, &y)
                .unwrap();
            let absent = (0..N_CLASSES)
                .find(|c| !present.contains(&(*c as u8)))
                .unwrap();
            assert_eq!(m.intercept()[absent], ABSENT_CLASS_INTERCEPT);
            assert!(m.class_weights(absent).unwrap().iter().all(|&w| w == 0.0));
            let p = m.score(&x).unwrap();
            for (i, &c) in y.iter().enumerate() {
                let row = &p[i * 3..i * 3 + 3];
                assert_eq!(argmax(row), c as usize);
                assert!(row[absent] < 1e-9);
            }
        }
    }

    #[test]
    fn single_class_always_wins() {
        let (x, y) = blobs([0, 10, 0], [0.0, 1.0, 2.0]);
        let m = LogisticParams::default()
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let p = m.score(&x).unwrap();
        assert!(p.chunks(3).all(|r| r[1] > 0.999_999));
    }

    #[test]
    fn malformed_artifact_is_rejected() {
        let (x, y) = blobs([10, 10, 10], [0.0, 10.0, 20.0]);
        let m = LogisticParams::default()
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let mut v = serde_json::to_value(&m).unwrap();
        v["weights"].as_array_mut().unwrap().pop();
        assert!(serde_json::from_value::<FittedLogistic>(v).is_err());
        let mut v = serde_json::to_value(&m).unwrap();
        v["scale"][0] = serde_json::json!(0.0);
        assert!(serde_json::from_value::<FittedLogistic>(v).is_err());
    }

    #[test]
    fn parallel_scoring_matches_serial() {
        let (x, y) = blobs([10, 10, 10], [0.0, 10.0, 20.0]);
        let m = LogisticParams::default()
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let idx: Vec<usize> = (0..PAR_MIN_ROWS + 37).map(|i| i % x.n_rows()).collect();
        let big = x.select_rows(&idx);
        let p_big = m.score(&big).unwrap();
        let p_small = m.score(&x).unwrap();
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(&p_big[k * 3..k * 3 + 3], &p_small[i * 3..i * 3 + 3]);
        }
        let c_big = m.contributions(&big, 2).unwrap();
        let c_small = m.contributions(&x, 2).unwrap();
        let w = 4;
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(&c_big[k * w..k * w + w], &c_small[i * w..i * w + w]);
        }
    }
}
