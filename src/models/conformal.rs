//! Conformal prediction sets of grades, for abstention: "TP", or "TP|BP" when the model cannot
//! tell.
//!
//! Sits in `models`, after calibration and before `rank`: a [`ConformalPredictor`] is fitted on
//! held-out rows (calibrated probabilities, row-major with [`N_CLASSES`] per row, and true
//! labels) and turns a row of probabilities into a [`GradeSet`] that holds the true grade with
//! probability at least `1 − α`. A set with more than one grade is the model saying "a human
//! should look": the hunter queue can route it differently.
//!
//! Method: split conformal classification with the LAC score (least ambiguous set-valued
//! classifier; Sadinle, Lei & Wasserman 2019; Angelopoulos & Bates, "A gentle introduction to
//! conformal prediction", 2021). The score of a row and class is `s = 1 − p_class`. On `n`
//! calibration rows with scores `s_i = 1 − p_{i, y_i}`, `q̂` is the `k`-th smallest score with
//! `k = ⌈(n + 1)(1 − α)⌉` (when `k > n`, `q̂ = 1`: every grade). A new row's set is
//! `{c : 1 − p_c ≤ q̂}`.
//!
//! Guarantee: if the calibration rows and the new row are *exchangeable* (e.g. i.i.d. draws of
//! the same process: same model, same calibrator, no drift between calibration and use), then
//! `P(y ∈ set) ≥ 1 − α`, exactly in finite samples, marginally over rows (not per tenant, not
//! per row). Without ties in the scores, coverage is also at most `1 − α + 1 / (n + 1)`.
//! Calibration of the probabilities does not affect validity, only the size of the sets.
//!
//! [`ConformalMode::ClassConditional`] (Mondrian conformal, Vovk et al. 2005) computes one `q̂`
//! per true class from that class's rows, so the guarantee holds *per grade*: rare grades (BP,
//! FP) are not under-covered to pay for the frequent one.

use super::{ModelError, N_CLASSES};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Short stable codes of the grades in class order (`0 = TP, 1 = BP, 2 = FP`), used by
/// [`GradeSet`]'s text form.
pub const GRADE_CODES: [&str; N_CLASSES] = ["TP", "BP", "FP"];

/// Rows at or above which [`ConformalPredictor::prediction_sets_into`] runs on rayon threads.
const PAR_MIN_ROWS: usize = 4096;
/// Rows per parallel chunk.
const PAR_CHUNK_ROWS: usize = 1024;
/// Relative slack in `⌈(n + 1)(1 − α)⌉` against floating-point error (`10 · 0.9` must give 9).
const RANK_TOLERANCE: f64 = 1e-12;

// ---------------------------------------------------------------------------------------------
// GradeSet
// ---------------------------------------------------------------------------------------------

/// A set of grades (class ids `0..N_CLASSES`) as a bitset.
///
/// Text form (also its serde form): the codes of [`GRADE_CODES`] in class order joined by `|`,
/// e.g. `"TP"`, `"TP|BP"`, `"TP|BP|FP"`; the empty set is `"-"`. Parsing accepts the codes in
/// any order.
///
/// ```
/// use threatrank::models::conformal::GradeSet;
/// let mut s = GradeSet::single(1);
/// s.insert(0);
/// assert_eq!(s.to_string(), "TP|BP");
/// assert!(s.is_uncertain() && s.contains(0) && !s.contains(2));
/// assert_eq!("BP|TP".parse::<GradeSet>().unwrap(), s);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GradeSet(u8);

impl GradeSet {
    /// No grade.
    pub const EMPTY: GradeSet = GradeSet(0);
    /// Every grade.
    pub const ALL: GradeSet = GradeSet((1 << N_CLASSES) - 1);

    /// The set holding only `class` (empty when `class >= N_CLASSES`).
    pub fn single(class: usize) -> Self {
        let mut s = Self::EMPTY;
        s.insert(class);
        s
    }

    /// Adds `class`; returns whether the set changed (a class `>= N_CLASSES` is never added).
    pub fn insert(&mut self, class: usize) -> bool {
        if class >= N_CLASSES || self.contains(class) {
            return false;
        }
        self.0 |= 1 << class;
        true
    }

    /// Whether `class` is in the set (`false` for `class >= N_CLASSES`).
    pub fn contains(self, class: usize) -> bool {
        class < N_CLASSES && self.0 & (1 << class) != 0
    }

    /// Number of grades in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty ([`ConformalPredictor::prediction_set`] never returns one).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// More than one grade: the model abstains from a single verdict.
    pub fn is_uncertain(self) -> bool {
        self.len() > 1
    }

    /// The class ids in the set, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..N_CLASSES).filter(move |&c| self.contains(c))
    }

    /// The raw bits (bit `c` set when class `c` is in the set).
    pub fn bits(self) -> u8 {
        self.0
    }
}

impl fmt::Display for GradeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (k, c) in self.iter().enumerate() {
            if k > 0 {
                f.write_str("|")?;
            }
            f.write_str(GRADE_CODES[c])?;
        }
        Ok(())
    }
}

impl fmt::Debug for GradeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GradeSet({self})")
    }
}

impl FromStr for GradeSet {
    type Err = ModelError;

    /// Parses the text form; errors ([`ModelError::InvalidParam`], `grade_set`) on an empty
    /// string, an unknown code or a repeated one.
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::InvalidParam {
            name: "grade_set",
            reason,
        };
        if s == "-" {
            return Ok(Self::EMPTY);
        }
        let mut set = Self::EMPTY;
        for code in s.split('|') {
            let c = GRADE_CODES
                .iter()
                .position(|&g| g == code)
                .ok_or_else(|| bad(format!("unknown grade `{code}` in `{s}` (TP, BP, FP)")))?;
            if !set.insert(c) {
                return Err(bad(format!("grade `{code}` repeated in `{s}`")));
            }
        }
        Ok(set)
    }
}

impl TryFrom<String> for GradeSet {
    type Error = ModelError;

    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<GradeSet> for String {
    fn from(s: GradeSet) -> String {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// Whether one threshold serves all grades or each grade has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConformalMode {
    /// one `q̂` from all calibration rows: `P(y ∈ set) ≥ 1 − α` over rows
    #[default]
    Marginal,
    /// Mondrian: one `q̂_c` from the rows of true class `c`: `P(y ∈ set | y = c) ≥ 1 − α` for
    /// every grade `c`
    ClassConditional,
}

/// Parameters of a [`ConformalPredictor`] (unchecked; missing fields take their defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConformalParams {
    /// Miscoverage `α`, `0 < α < 1`: sets hold the true grade with probability `>= 1 − α`.
    /// Default 0.1.
    pub alpha: f64,
    /// Marginal or per-grade thresholds. Default [`ConformalMode::Marginal`].
    pub mode: ConformalMode,
}

impl Default for ConformalParams {
    fn default() -> Self {
        Self {
            alpha: 0.1,
            mode: ConformalMode::Marginal,
        }
    }
}

impl ConformalParams {
    /// Sets [`ConformalParams::alpha`] (default 0.1).
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets [`ConformalParams::mode`] (default marginal).
    pub fn mode(mut self, mode: ConformalMode) -> Self {
        self.mode = mode;
        self
    }

    /// Checks `0 < α < 1` (NaN rejected), else [`ModelError::InvalidParam`] (`alpha`).
    pub fn check(&self) -> Result<ConformalValidParams, ModelError> {
        check_alpha(self.alpha)?;
        Ok(ConformalValidParams {
            alpha: self.alpha,
            mode: self.mode,
        })
    }
}

fn check_alpha(alpha: f64) -> Result<(), ModelError> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(ModelError::InvalidParam {
            name: "alpha",
            reason: format!("must be in (0, 1), got {alpha}"),
        });
    }
    Ok(())
}

/// Checked [`ConformalParams`]; fits a [`ConformalPredictor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConformalValidParams {
    alpha: f64,
    mode: ConformalMode,
}

impl ConformalValidParams {
    /// Miscoverage `α`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Threshold mode.
    pub fn mode(&self) -> ConformalMode {
        self.mode
    }

    /// Fits the thresholds on held-out `probs` (row-major, `N_CLASSES` per row, from the same
    /// model and calibrator that will be used at prediction time) and true labels `y`, as
    /// described in the module docs. Deterministic (the `k`-th order statistic does not
    /// depend on the selection algorithm). A grade without calibration rows in
    /// class-conditional mode gets `q̂ = 1`: it is always in the set.
    ///
    /// Errors: [`ModelError::Empty`] without rows; [`ModelError::Labels`] when
    /// `probs.len() != N_CLASSES * y.len()`, a label is out of range or a probability is not
    /// finite.
    ///
    /// ```
    /// use threatrank::models::conformal::ConformalParams;
    /// // 19 confident, correct rows and one wrong: with α = 0.1, k = ⌈21 · 0.9⌉ = 19
    /// let mut probs: Vec<f32> = (0..19).flat_map(|_| [0.9, 0.05, 0.05]).collect();
    /// probs.extend([0.3, 0.6, 0.1]);
    /// let y = vec![0u8; 20];
    /// let cp = ConformalParams::default().alpha(0.1).check().unwrap().fit(&probs, &y).unwrap();
    /// assert_eq!(cp.prediction_set(&[0.92, 0.04, 0.04]).to_string(), "TP");
    /// // no grade reaches p ≥ 1 − q̂ ≈ 0.9: the set falls back to the arg-max
    /// assert_eq!(cp.prediction_set(&[0.5, 0.45, 0.05]).to_string(), "TP");
    /// ```
    pub fn fit(&self, probs: &[f32], y: &[u8]) -> Result<ConformalPredictor, ModelError> {
        check_probs_labels(probs, y)?;
        let mut rows = [0u64; N_CLASSES];
        for &c in y {
            rows[c as usize] += 1;
        }
        let true_score = |(r, &c): (&[f32], &u8)| lac_score(r[c as usize]);
        let thresholds = match self.mode {
            ConformalMode::Marginal => {
                let mut scores: Vec<f64> = probs
                    .chunks_exact(N_CLASSES)
                    .zip(y)
                    .map(true_score)
                    .collect();
                [conformal_quantile(&mut scores, self.alpha); N_CLASSES]
            }
            ConformalMode::ClassConditional => {
                let mut scores: Vec<f64> = Vec::with_capacity(y.len());
                std::array::from_fn(|c| {
                    scores.clear();
                    scores.extend(
                        probs
                            .chunks_exact(N_CLASSES)
                            .zip(y)
                            .filter(|(_, &l)| l as usize == c)
                            .map(true_score),
                    );
                    conformal_quantile(&mut scores, self.alpha)
                })
            }
        };
        Ok(ConformalPredictor {
            alpha: self.alpha,
            mode: self.mode,
            thresholds,
            calibration_rows: rows,
        })
    }
}

/// LAC non-conformity score `1 − clamp(p, 0, 1)` in `f64` (NaN stays NaN, so it never passes a
/// threshold).
fn lac_score(p: f32) -> f64 {
    1.0 - (p as f64).clamp(0.0, 1.0)
}

/// Rank `k = ⌈(n + 1)(1 − α)⌉` of the conformal quantile (1-based; may exceed `n`).
fn conformal_rank(n: usize, alpha: f64) -> usize {
    let x = (n as f64 + 1.0) * (1.0 - alpha);
    (x - RANK_TOLERANCE * x.max(1.0)).ceil().max(1.0) as usize
}

/// The `k`-th smallest score, `k = ⌈(n + 1)(1 − α)⌉`; 1 (every grade) when `k > n` or there
/// are no scores. `scores` is reordered.
fn conformal_quantile(scores: &mut [f64], alpha: f64) -> f64 {
    let k = conformal_rank(scores.len(), alpha);
    if k > scores.len() {
        return 1.0;
    }
    let (_, q, _) = scores.select_nth_unstable_by(k - 1, f64::total_cmp);
    *q
}

/// Shared input checks: at least one row, `N_CLASSES` finite probabilities per label, labels
/// in range.
fn check_probs_labels(probs: &[f32], y: &[u8]) -> Result<(), ModelError> {
    super::calibrate::check_prob_rows(probs, y, "no rows for conformal prediction")
}

// ---------------------------------------------------------------------------------------------
// The fitted predictor
// ---------------------------------------------------------------------------------------------

/// Fitted split-conformal predictor (LAC score): grade `c` is in a row's set when
/// `1 − p_c ≤ q̂_c`, i.e. `p_c ≥ 1 − q̂_c` (marginal mode: one `q̂` for all grades).
///
/// Serialised with its thresholds; validated on load (`0 < α < 1`, thresholds in `[0, 1]`,
/// equal thresholds in marginal mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConformalPredictorRepr")]
pub struct ConformalPredictor {
    alpha: f64,
    mode: ConformalMode,
    thresholds: [f64; N_CLASSES],
    calibration_rows: [u64; N_CLASSES],
}

/// Wire form of [`ConformalPredictor`], validated on load.
#[derive(Deserialize)]
struct ConformalPredictorRepr {
    alpha: f64,
    mode: ConformalMode,
    thresholds: [f64; N_CLASSES],
    calibration_rows: [u64; N_CLASSES],
}

impl TryFrom<ConformalPredictorRepr> for ConformalPredictor {
    type Error = String;

    fn try_from(r: ConformalPredictorRepr) -> Result<Self, String> {
        check_alpha(r.alpha).map_err(|e| e.to_string())?;
        if r.thresholds.iter().any(|q| !(0.0..=1.0).contains(q)) {
            return Err(format!(
                "conformal thresholds must be in [0, 1], got {:?}",
                r.thresholds
            ));
        }
        if r.mode == ConformalMode::Marginal && r.thresholds.iter().any(|&q| q != r.thresholds[0]) {
            return Err(format!(
                "marginal mode needs one threshold for all grades, got {:?}",
                r.thresholds
            ));
        }
        Ok(Self {
            alpha: r.alpha,
            mode: r.mode,
            thresholds: r.thresholds,
            calibration_rows: r.calibration_rows,
        })
    }
}

/// Coverage and set sizes of a [`ConformalPredictor`] on labelled rows, for the model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConformalReport {
    /// rows evaluated
    pub rows: usize,
    /// `1 − α`
    pub target_coverage: f64,
    /// fraction of rows whose set holds the true grade
    pub coverage: f64,
    /// coverage among the rows of each true grade (`None` without such rows)
    pub class_coverage: [Option<f64>; N_CLASSES],
    /// mean number of grades per set
    pub mean_set_size: f64,
    /// fraction of rows with more than one grade (abstentions)
    pub uncertain_rate: f64,
    /// rows whose set has 1, 2, … `N_CLASSES` grades
    pub set_size_counts: [u64; N_CLASSES],
}

impl ConformalPredictor {
    /// Miscoverage `α`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Threshold mode.
    pub fn mode(&self) -> ConformalMode {
        self.mode
    }

    /// Score thresholds `q̂_c` (all equal in marginal mode).
    pub fn thresholds(&self) -> [f64; N_CLASSES] {
        self.thresholds
    }

    /// Smallest probability of `class` that puts it in a set: `1 − q̂_class` (NaN for
    /// `class >= N_CLASSES`).
    pub fn probability_floor(&self, class: usize) -> f64 {
        self.thresholds.get(class).map_or(f64::NAN, |q| 1.0 - q)
    }

    /// Calibration rows per true grade.
    pub fn calibration_rows(&self) -> [u64; N_CLASSES] {
        self.calibration_rows
    }

    /// The prediction set of one row of probabilities (the first `N_CLASSES` values; missing
    /// or NaN values never pass a threshold).
    ///
    /// Never empty: when no grade passes its threshold, the set is the arg-max grade (ties to
    /// the lower class id, i.e. towards TP); a row without any finite probability gets every
    /// grade. Adding a grade only raises coverage, so the guarantee still holds.
    pub fn prediction_set(&self, probs_row: &[f32]) -> GradeSet {
        let mut set = GradeSet::EMPTY;
        let mut best: Option<(usize, f32)> = None;
        for (c, &p) in probs_row.iter().take(N_CLASSES).enumerate() {
            if lac_score(p) <= self.thresholds[c] {
                set.insert(c);
            }
            if !p.is_nan() && best.is_none_or(|(_, b)| p > b) {
                best = Some((c, p));
            }
        }
        if !set.is_empty() {
            return set;
        }
        best.map_or(GradeSet::ALL, |(c, _)| GradeSet::single(c))
    }

    /// Prediction sets of many rows into `out` (one per row); rayon from 4096 rows on.
    ///
    /// Errors: [`ModelError::OutputLength`] when `probs.len() != N_CLASSES * out.len()`.
    pub fn prediction_sets_into(
        &self,
        probs: &[f32],
        out: &mut [GradeSet],
    ) -> Result<(), ModelError> {
        let expected = out.len() * N_CLASSES;
        if probs.len() != expected {
            return Err(ModelError::OutputLength {
                expected,
                got: probs.len(),
            });
        }
        if out.len() >= PAR_MIN_ROWS {
            out.par_chunks_mut(PAR_CHUNK_ROWS)
                .zip(probs.par_chunks(N_CLASSES * PAR_CHUNK_ROWS))
                .for_each(|(o, p)| {
                    for (s, r) in o.iter_mut().zip(p.chunks_exact(N_CLASSES)) {
                        *s = self.prediction_set(r);
                    }
                });
        } else {
            for (s, r) in out.iter_mut().zip(probs.chunks_exact(N_CLASSES)) {
                *s = self.prediction_set(r);
            }
        }
        Ok(())
    }

    /// Allocating wrapper over [`ConformalPredictor::prediction_sets_into`].
    ///
    /// Errors: [`ModelError::OutputLength`] when `probs.len()` is not a multiple of
    /// `N_CLASSES`.
    pub fn prediction_sets(&self, probs: &[f32]) -> Result<Vec<GradeSet>, ModelError> {
        let mut out = vec![GradeSet::EMPTY; probs.len() / N_CLASSES];
        self.prediction_sets_into(probs, &mut out)?;
        Ok(out)
    }

    /// Coverage, per-grade coverage and set sizes on labelled rows (e.g. a test split).
    /// Errors as [`ConformalValidParams::fit`].
    pub fn evaluate(&self, probs: &[f32], y: &[u8]) -> Result<ConformalReport, ModelError> {
        check_probs_labels(probs, y)?;
        let mut covered = [0u64; N_CLASSES];
        let mut of_class = [0u64; N_CLASSES];
        let mut sizes = [0u64; N_CLASSES];
        let mut total_size = 0u64;
        for (r, &c) in probs.chunks_exact(N_CLASSES).zip(y) {
            let set = self.prediction_set(r);
            let c = c as usize;
            of_class[c] += 1;
            covered[c] += set.contains(c) as u64;
            sizes[set.len().clamp(1, N_CLASSES) - 1] += 1;
            total_size += set.len() as u64;
        }
        let n = y.len() as f64;
        Ok(ConformalReport {
            rows: y.len(),
            target_coverage: 1.0 - self.alpha,
            coverage: covered.iter().sum::<u64>() as f64 / n,
            class_coverage: std::array::from_fn(|c| {
                (of_class[c] > 0).then(|| covered[c] as f64 / of_class[c] as f64)
            }),
            mean_set_size: total_size as f64 / n,
            uncertain_rate: sizes[1..].iter().sum::<u64>() as f64 / n,
            set_size_counts: sizes,
        })
    }

    /// Fraction of rows whose prediction set holds the true grade. Errors as
    /// [`ConformalValidParams::fit`].
    pub fn empirical_coverage(&self, probs: &[f32], y: &[u8]) -> Result<f64, ModelError> {
        Ok(self.evaluate(probs, y)?.coverage)
    }

    /// Mean number of grades per prediction set.
    ///
    /// Errors: [`ModelError::Empty`] without rows; [`ModelError::OutputLength`] when
    /// `probs.len()` is not a multiple of `N_CLASSES`.
    pub fn average_set_size(&self, probs: &[f32]) -> Result<f64, ModelError> {
        if probs.is_empty() {
            return Err(ModelError::Empty {
                what: "no rows for conformal prediction",
            });
        }
        let sets = self.prediction_sets(probs)?;
        Ok(sets.iter().map(|s| s.len() as u64).sum::<u64>() as f64 / sets.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 uniforms in `[0, 1)` (Vigna's generator), so the tests are deterministic.
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f64 {
            let mut r = crate::rng::SplitMix64(self.0);
            let u = r.unit();
            self.0 = r.0;
            u
        }
    }

    /// `n` rows: true probabilities `q ∝ class_weight · exp(5u)` (`u` uniform; the weights make
    /// some grades rarer), a label drawn from `q`, and model probabilities `softmax(k · ln q)`
    /// (miscalibrated unless `k = 1`).
    fn synthetic(seed: u64, n: usize, class_weight: [f64; 3], k: f64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = Rng(seed);
        let mut probs = Vec::with_capacity(n * 3);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let w: [f64; 3] =
                std::array::from_fn(|c| class_weight[c] * (5.0 * rng.uniform()).exp());
            let s: f64 = w.iter().sum();
            let q = w.map(|v| v / s);
            let u = rng.uniform();
            y.push(if u < q[0] {
                0
            } else if u < q[0] + q[1] {
                1
            } else {
                2
            });
            let d = q.map(|v| v.powf(k));
            let ds: f64 = d.iter().sum();
            probs.extend(d.iter().map(|v| (v / ds) as f32));
        }
        (probs, y)
    }

    #[test]
    fn marginal_coverage_matches_target() {
        let (probs, y) = synthetic(42, 40_000, [1.0, 0.6, 1.4], 1.3);
        let (fit_p, test_p) = probs.split_at(60_000);
        let (fit_y, test_y) = y.split_at(20_000);
        for alpha in [0.05, 0.1, 0.2] {
            let cp = ConformalParams::default()
                .alpha(alpha)
                .check()
                .unwrap()
                .fit(fit_p, fit_y)
                .unwrap();
            let r = cp.evaluate(test_p, test_y).unwrap();
            println!(
                "alpha {alpha}: coverage {:.4}, mean size {:.3}, uncertain {:.3}, q {:.4}",
                r.coverage,
                r.mean_set_size,
                r.uncertain_rate,
                cp.thresholds()[0]
            );
            assert!(
                (r.coverage - (1.0 - alpha)).abs() <= 0.02,
                "alpha {alpha}: {r:?}"
            );
            assert_eq!(cp.empirical_coverage(test_p, test_y).unwrap(), r.coverage);
            assert_eq!(cp.average_set_size(test_p).unwrap(), r.mean_set_size);
            assert_eq!(r.set_size_counts.iter().sum::<u64>(), 20_000);
        }
    }

    #[test]
    fn class_conditional_covers_every_grade() {
        // BP is rare and hard: a single threshold under-covers it
        let (probs, y) = synthetic(7, 40_000, [1.0, 0.25, 1.0], 1.0);
        let (fit_p, test_p) = probs.split_at(60_000);
        let (fit_y, test_y) = y.split_at(20_000);
        // measured mean set sizes 2.016, 1.684, 1.286: bounded a little above
        for (alpha, max_size) in [(0.05, 2.1), (0.1, 1.8), (0.2, 1.4)] {
            let params = ConformalParams::default().alpha(alpha);
            let mondrian = params
                .mode(ConformalMode::ClassConditional)
                .check()
                .unwrap()
                .fit(fit_p, fit_y)
                .unwrap();
            let marginal = params.check().unwrap().fit(fit_p, fit_y).unwrap();
            let rm = mondrian.evaluate(test_p, test_y).unwrap();
            let rg = marginal.evaluate(test_p, test_y).unwrap();
            println!(
                "alpha {alpha}: per-grade coverage mondrian {:?} (size {:.3}), marginal {:?}",
                rm.class_coverage, rm.mean_set_size, rg.class_coverage
            );
            // Each grade covered near its target, not far above it: a predictor that always
            // returned every grade (coverage 1, size 3) would fail here.
            for c in 0..3 {
                let cov = rm.class_coverage[c].unwrap();
                assert!(cov >= 1.0 - alpha - 0.02, "alpha {alpha} class {c}: {rm:?}");
                assert!(cov <= 1.0 - alpha + 0.02, "alpha {alpha} class {c}: {rm:?}");
            }
            assert!(rm.mean_set_size <= max_size, "alpha {alpha}: {rm:?}");
            assert_eq!(mondrian.calibration_rows().iter().sum::<u64>(), 20_000);
        }
    }

    #[test]
    fn small_calibration_sets_cover_exactly_k_over_n_plus_one_on_average() {
        // Split conformal with n exchangeable calibration rows and no ties: the coverage,
        // averaged over calibration draws, is exactly k / (n + 1), k = ⌈(n + 1)(1 − α)⌉
        // (Angelopoulos & Bates 2021, §1 and appendix D): at least 1 − α and below
        // 1 − α + 1 / (n + 1). n = 24, α = 0.1: k = 23, 23 / 25 = 0.92. The naive rank
        // ⌈n(1 − α)⌉ = 22 would give 0.88, one rank more 0.96, every grade 1.0.
        let (n, draws, test_rows) = (24, 400, 500);
        let params = ConformalParams::default().alpha(0.1).check().unwrap();
        let mut mean = 0.0;
        for d in 0..draws {
            let (probs, y) = synthetic(1000 + d, n + test_rows, [1.0, 0.6, 1.4], 1.3);
            let (fit_p, test_p) = probs.split_at(n * 3);
            let (fit_y, test_y) = y.split_at(n);
            let cp = params.fit(fit_p, fit_y).unwrap();
            mean += cp.empirical_coverage(test_p, test_y).unwrap() / draws as f64;
        }
        println!("mean coverage over {draws} draws of {n} rows: {mean:.4}");
        assert_eq!(conformal_rank(n, 0.1), 23);
        // the sd of the mean over 400 draws is about 0.003
        assert!((mean - 23.0 / 25.0).abs() <= 0.01, "{mean}");
    }

    #[test]
    fn quantile_is_the_finite_sample_rank() {
        // 9 rows, p_true = 0.1 … 0.9 → scores 0.9 … 0.1
        let ps: Vec<f32> = (1..=9).map(|i| i as f32 / 10.0).collect();
        let probs: Vec<f32> = ps.iter().flat_map(|&p| [p, 1.0 - p, 0.0]).collect();
        let y = vec![0u8; 9];
        let fit = |alpha: f64| {
            ConformalParams::default()
                .alpha(alpha)
                .check()
                .unwrap()
                .fit(&probs, &y)
                .unwrap()
        };
        // α = 0.1: k = ⌈10 · 0.9⌉ = 9 → the largest score
        assert_eq!(fit(0.1).thresholds()[0], lac_score(0.1));
        // α = 0.2: k = 8 → second largest
        assert_eq!(fit(0.2).thresholds()[0], lac_score(0.2));
        assert_eq!(
            fit(0.2).prediction_set(&[0.2, 0.8, 0.0]).to_string(),
            "TP|BP"
        );
        assert_eq!(
            fit(0.2).prediction_set(&[0.19, 0.81, 0.0]).to_string(),
            "BP"
        );
        // α = 0.05 with 9 rows: k = 10 > 9 → every grade
        let all = fit(0.05);
        assert_eq!(all.thresholds(), [1.0; 3]);
        assert_eq!(all.prediction_set(&[1.0, 0.0, 0.0]), GradeSet::ALL);
        assert_eq!(conformal_rank(9, 0.1), 9);
        assert_eq!(conformal_rank(99, 0.1), 90);
        assert_eq!(conformal_rank(4, 0.1), 5);
        assert_eq!(conformal_rank(1000, 0.999), 2);
    }

    #[test]
    fn sets_are_never_empty() {
        // perfectly confident calibration rows: q̂ = 0, only p = 1 passes
        let probs = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0].repeat(50);
        let y: Vec<u8> = [0u8, 1].repeat(50);
        let cp = ConformalParams::default()
            .check()
            .unwrap()
            .fit(&probs, &y)
            .unwrap();
        assert_eq!(cp.thresholds(), [0.0; 3]);
        assert_eq!(cp.probability_floor(0), 1.0);
        assert_eq!(cp.prediction_set(&[0.3, 0.5, 0.2]).to_string(), "BP");
        assert_eq!(cp.prediction_set(&[0.4, 0.4, 0.2]).to_string(), "TP"); // tie → TP
        assert_eq!(cp.prediction_set(&[f32::NAN, 0.1, 0.2]).to_string(), "FP");
        assert_eq!(cp.prediction_set(&[f32::NAN; 3]), GradeSet::ALL);
        assert_eq!(cp.prediction_set(&[]), GradeSet::ALL);
        let sets = cp.prediction_sets(&[0.3, 0.5, 0.2, 1.0, 0.0, 0.0]).unwrap();
        assert_eq!(sets, vec![GradeSet::single(1), GradeSet::single(0)]);
        assert!(sets.iter().all(|s| !s.is_empty() && !s.is_uncertain()));
    }

    #[test]
    fn parallel_sets_match_serial() {
        let (probs, y) = synthetic(3, PAR_MIN_ROWS + 11, [1.0, 1.0, 1.0], 1.0);
        let cp = ConformalParams::default()
            .alpha(0.1)
            .check()
            .unwrap()
            .fit(&probs, &y)
            .unwrap();
        let sets = cp.prediction_sets(&probs).unwrap();
        for (i, r) in probs.chunks(3).enumerate() {
            assert_eq!(sets[i], cp.prediction_set(r));
        }
        assert!(sets.iter().any(|s| s.is_uncertain()));
    }

    #[test]
    fn grade_set_text_form() {
        assert_eq!(GradeSet::single(0).to_string(), "TP");
        assert_eq!(GradeSet::ALL.to_string(), "TP|BP|FP");
        assert_eq!(GradeSet::EMPTY.to_string(), "-");
        let mut s = GradeSet::single(2);
        assert!(s.insert(0));
        assert!(!s.insert(0));
        assert!(!s.insert(3));
        assert_eq!((s.len(), s.to_string()), (2, "TP|FP".to_string()));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 2]);
        assert!(!s.contains(7));
        assert_eq!(format!("{s:?}"), "GradeSet(TP|FP)");
        for text in ["TP", "BP", "FP", "TP|BP", "BP|FP", "TP|BP|FP", "-"] {
            assert_eq!(text.parse::<GradeSet>().unwrap().to_string(), text);
        }
        for bad in ["", "tp", "TP|", "TP|TP", "XX", "TP,BP"] {
            assert!(bad.parse::<GradeSet>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&vec![s, GradeSet::single(1)]).unwrap();
        assert_eq!(json, r#"["TP|FP","BP"]"#);
        let back: Vec<GradeSet> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![s, GradeSet::single(1)]);
        assert!(serde_json::from_str::<GradeSet>(r#""QQ""#).is_err());
    }

    #[test]
    fn predictor_round_trips_and_is_validated_on_load() {
        let (probs, y) = synthetic(9, 3000, [1.0, 0.5, 1.0], 1.0);
        for mode in [ConformalMode::Marginal, ConformalMode::ClassConditional] {
            let cp = ConformalParams::default()
                .alpha(0.1)
                .mode(mode)
                .check()
                .unwrap()
                .fit(&probs, &y)
                .unwrap();
            let json = serde_json::to_string(&cp).unwrap();
            let back: ConformalPredictor = serde_json::from_str(&json).unwrap();
            assert_eq!(back, cp);
            assert_eq!(
                back.prediction_sets(&probs).unwrap(),
                cp.prediction_sets(&probs).unwrap()
            );
            let report = cp.evaluate(&probs, &y).unwrap();
            let rj = serde_json::to_string(&report).unwrap();
            assert_eq!(
                serde_json::from_str::<ConformalReport>(&rj).unwrap(),
                report
            );
        }
        let load = |s: &str| serde_json::from_str::<ConformalPredictor>(s);
        let ok = r#"{"alpha":0.1,"mode":"marginal","thresholds":[0.5,0.5,0.5],"calibration_rows":[1,2,3]}"#;
        assert!(load(ok).is_ok());
        assert!(load(&ok.replace("0.1,", "1.5,")).is_err());
        assert!(load(&ok.replace("0.1,", "0.0,")).is_err());
        assert!(load(&ok.replace("[0.5,0.5,0.5]", "[0.5,0.5,1.5]")).is_err());
        assert!(load(&ok.replace("[0.5,0.5,0.5]", "[0.5,0.4,0.5]")).is_err());
        let cc = ok
            .replace("marginal", "class-conditional")
            .replace("[0.5,0.5,0.5]", "[0.5,0.4,0.5]");
        assert!(load(&cc).is_ok());
    }

    #[test]
    fn bad_input_is_rejected() {
        for alpha in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            assert!(matches!(
                ConformalParams::default().alpha(alpha).check(),
                Err(ModelError::InvalidParam { name: "alpha", .. })
            ));
        }
        let p = ConformalParams::default().check().unwrap();
        assert!(matches!(p.fit(&[], &[]), Err(ModelError::Empty { .. })));
        assert!(matches!(
            p.fit(&[0.2, 0.3, 0.5], &[3]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            p.fit(&[0.2, 0.3, 0.5], &[0, 1]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            p.fit(&[0.2, 0.3], &[0]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            p.fit(&[0.2, f32::NAN, 0.5], &[0]),
            Err(ModelError::Labels { .. })
        ));
        let cp = p.fit(&[0.2, 0.3, 0.5], &[2]).unwrap();
        assert!(cp.evaluate(&[0.2, 0.3, 0.5], &[]).is_err());
        assert!(cp.empirical_coverage(&[0.2, 0.3, 0.5], &[1, 1]).is_err());
        assert!(matches!(
            cp.prediction_sets(&[0.2, 0.3, 0.5, 0.1]),
            Err(ModelError::OutputLength { .. })
        ));
        assert!(matches!(
            cp.average_set_size(&[]),
            Err(ModelError::Empty { .. })
        ));
        assert!(cp.probability_floor(3).is_nan());
    }
}
