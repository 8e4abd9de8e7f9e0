//! Probability calibration, applied after any [`super::Scorer`]: temperature, Platt and
//! isotonic calibrators, selection among them by out-of-sample log-loss, per-tenant Platt
//! adjustments with empirical-Bayes shrinkage, and reliability curves for reports.
//!
//! Sits in `models`, after scoring and before `rank` / `eval`: a grader's probabilities are
//! often over- or under-confident, which distorts the ranking by confidence. Everything here is
//! fitted on *held-out* (out-of-fold) probabilities, row-major with [`N_CLASSES`] per row, class
//! order TP, BP, FP.
//!
//! * [`Calibrator`] (temperature scaling): one scalar `T`, fitted by minimising multiclass
//!   log-loss, rescales `p'_c = softmax_c(ln(max(p_c, 1e-6)) / T)`. `T > 1` softens, `T < 1`
//!   sharpens; the arg-max class never changes. The search (golden section on `ln T` over
//!   `[0.05, 20]`, fixed tolerance) is deterministic.
//! * [`PlattCalibrator`] (Platt 1999, one-vs-rest): per class `p'_c = σ(a_c · logit(p_c) + b_c)`,
//!   then the row is renormalised to sum to 1. Fitted by Newton's method on the log-loss with
//!   Platt's smoothed targets and a tiny L2 pull towards the identity `(a, b) = (1, 0)`.
//! * [`IsotonicCalibrator`] (Zadrozny & Elkan 2002, one-vs-rest): per class the best
//!   non-decreasing map `p_c ↦ P(y = c)` (pool-adjacent-violators), stored as sorted breakpoints
//!   with linear interpolation, then rows renormalised.
//! * [`CalibrationValidParams::fit_best`] cross-fits each candidate over whole groups
//!   (incidents) and keeps the one with the lowest out-of-sample log-loss
//!   ([`CalibrationReport`] keeps every candidate's figure for the model card).
//! * [`TenantCalibration`] adds, for tenants with enough held-out verdicts, a Platt map over the
//!   global calibrator's output whose parameters are shrunk towards "no change" by `n / (n + m)`.
//! * [`reliability_curve`] / [`ece`]: equal-width reliability bins and the expected calibration
//!   error, for "before and after" plots.
//!
//! Determinism: folds are assigned from group sizes and a seeded hash of the group id, fits
//! are sequential or per tenant (never a parallel float reduction), maps are ordered.

use super::{ModelError, N_CLASSES};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Smallest temperature [`Calibrator::fit`] may choose.
pub const MIN_TEMPERATURE: f32 = 0.05;
/// Largest temperature [`Calibrator::fit`] may choose.
pub const MAX_TEMPERATURE: f32 = 20.0;
/// Floor on probabilities before taking their logarithm in [`Calibrator::apply_into`]; Platt
/// clamps probabilities to `[PROB_FLOOR, 1 − PROB_FLOOR]` before the logit.
pub const PROB_FLOOR: f64 = 1e-6;
/// Floor on the true-class probability in [`log_loss`].
pub const LOG_LOSS_FLOOR: f64 = 1e-15;
/// Bound on Platt's linear predictor `a · logit(p) + b` ("clamped logits"): outputs stay in
/// `[σ(−30), σ(30)]`, so a row never sums to 0.
pub const PLATT_MAX_LOGIT: f64 = 30.0;
/// Strength of the L2 pull of Platt parameters towards the identity `(a, b) = (1, 0)`, added to
/// the *summed* log-loss: negligible with data, it keeps the Newton system regular when a
/// class's logits are all equal.
pub const PLATT_L2: f64 = 1e-3;
/// Isotonic outputs are clamped to `[ISOTONIC_FLOOR, 1 − ISOTONIC_FLOOR]`: a step function
/// fitted on finite data would otherwise predict exactly 0 for a class that can still occur,
/// with an unbounded log-loss.
pub const ISOTONIC_FLOOR: f64 = 1e-4;

/// Golden-section stops when the bracket on `ln T` is narrower than this.
const LN_T_TOLERANCE: f64 = 1e-7;
/// Rows at or above which `apply_into` runs on rayon threads (and tenant fits run in parallel).
const PAR_MIN_ROWS: usize = 2048;
/// Rows per parallel chunk.
const PAR_CHUNK_ROWS: usize = 1024;
/// Newton iterations of a Platt fit.
const PLATT_MAX_ITER: usize = 100;

// ---------------------------------------------------------------------------------------------
// Temperature scaling
// ---------------------------------------------------------------------------------------------

/// Temperature-scaling calibrator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CalibratorRepr")]
pub struct Calibrator {
    temperature: f32,
}

/// Wire form of [`Calibrator`], validated on load.
#[derive(Deserialize)]
struct CalibratorRepr {
    temperature: f32,
}

impl TryFrom<CalibratorRepr> for Calibrator {
    type Error = String;

    fn try_from(r: CalibratorRepr) -> Result<Self, String> {
        Calibrator::new(r.temperature).map_err(|e| e.to_string())
    }
}

impl Default for Calibrator {
    fn default() -> Self {
        Self::identity()
    }
}

impl Calibrator {
    /// The calibrator that changes nothing (`T = 1`).
    pub fn identity() -> Self {
        Self { temperature: 1.0 }
    }

    /// A calibrator with a given temperature (finite, `> 0`), else
    /// [`ModelError::InvalidParam`].
    pub fn new(temperature: f32) -> Result<Self, ModelError> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(ModelError::InvalidParam {
                name: "temperature",
                reason: format!("must be finite and > 0, got {temperature}"),
            });
        }
        Ok(Self { temperature })
    }

    /// The temperature `T`.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// Fits `T` in `[0.05, 20]` minimising the multiclass log-loss of the rescaled `probs`
    /// (row-major, `N_CLASSES` per row) against labels `y`, by golden-section search on `ln T`.
    /// Keeps `T = 1` unless another temperature is strictly better (beyond rounding noise).
    ///
    /// Errors: [`ModelError::Empty`] without rows; [`ModelError::Labels`] when
    /// `probs.len() != 3 * y.len()`, a label is out of range or a probability is not finite.
    pub fn fit(probs: &[f32], y: &[u8]) -> Result<Calibrator, ModelError> {
        check_probs_labels(probs, y)?;
        let logp: Vec<f64> = probs.iter().map(|&p| floored_ln(p)).collect();
        let loss = |ln_t: f64| scaled_log_loss(&logp, y, (-ln_t).exp());

        let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
        let (mut a, mut b) = ((MIN_TEMPERATURE as f64).ln(), (MAX_TEMPERATURE as f64).ln());
        let mut c = b - inv_phi * (b - a);
        let mut d = a + inv_phi * (b - a);
        let (mut fc, mut fd) = (loss(c), loss(d));
        while b - a > LN_T_TOLERANCE {
            if fc <= fd {
                b = d;
                d = c;
                fd = fc;
                c = b - inv_phi * (b - a);
                fc = loss(c);
            } else {
                a = c;
                c = d;
                fc = fd;
                d = a + inv_phi * (b - a);
                fd = loss(d);
            }
        }
        let (ln_t, best) = if fc <= fd { (c, fc) } else { (d, fd) };
        let at_one = loss(0.0);
        // "Strictly better" beyond rounding noise of the loss evaluation.
        if best.is_nan() || best >= at_one - 1e-12 * at_one.abs().max(1.0) {
            return Ok(Self::identity());
        }
        let t = (ln_t.exp() as f32).clamp(MIN_TEMPERATURE, MAX_TEMPERATURE);
        Ok(Self { temperature: t })
    }

    /// Rescales probabilities in place, row by row (`N_CLASSES` per row; a trailing partial
    /// row is left as is). The identity calibrator leaves `probs` bit-for-bit unchanged.
    pub fn apply_into(&self, probs: &mut [f32]) {
        if self.temperature == 1.0 {
            return;
        }
        let inv_t = 1.0 / self.temperature as f64;
        let row = |r: &mut [f32]| {
            let mut z = [0.0f64; N_CLASSES];
            for (zc, &p) in z.iter_mut().zip(r.iter()) {
                *zc = floored_ln(p) * inv_t;
            }
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e = z.map(|v| (v - m).exp());
            let s: f64 = e.iter().sum();
            for (p, v) in r.iter_mut().zip(e) {
                *p = (v / s) as f32;
            }
        };
        for_each_row(probs, row);
    }
}

/// `ln(max(p, PROB_FLOOR))` in `f64` (NaN counts as the floor).
fn floored_ln(p: f32) -> f64 {
    let p = p as f64;
    if p > PROB_FLOOR {
        p.ln()
    } else {
        PROB_FLOOR.ln()
    }
}

/// Mean log-loss of `softmax(logp · inv_t)` against `y` (inputs already checked).
fn scaled_log_loss(logp: &[f64], y: &[u8], inv_t: f64) -> f64 {
    let mut total = 0.0;
    for (r, &c) in logp.chunks_exact(N_CLASSES).zip(y) {
        let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max) * inv_t;
        let lse = m + r.iter().map(|&v| (v * inv_t - m).exp()).sum::<f64>().ln();
        total += lse - r[c as usize] * inv_t;
    }
    total / y.len() as f64
}

/// Mean multiclass log-loss: `−mean ln(max(p_{row, y_row}, 1e-15))`, `probs` row-major with
/// `N_CLASSES` per row.
///
/// As strict as `eval::log_loss` (which `models` does not call: it sits below `eval`): no
/// rows ([`ModelError::Empty`]), `probs.len() != y.len() * N_CLASSES`, a label out of range or
/// a non-finite probability ([`ModelError::Labels`]) are errors, never a figure over part of
/// the rows.
pub fn log_loss(probs: &[f32], y: &[u8]) -> Result<f64, ModelError> {
    check_prob_rows(probs, y, "no rows to compute a log-loss on")?;
    let total: f64 = probs
        .chunks_exact(N_CLASSES)
        .zip(y)
        .map(|(r, &c)| -f64::from(r[usize::from(c)]).max(LOG_LOSS_FLOOR).ln())
        .sum();
    Ok(total / y.len() as f64)
}

/// Shared input checks of every fit: at least one row, `N_CLASSES` finite probabilities per
/// label, labels in range.
fn check_probs_labels(probs: &[f32], y: &[u8]) -> Result<(), ModelError> {
    check_prob_rows(probs, y, "no probabilities to calibrate on")
}

/// Checks probability rows against labels: at least one row (else [`ModelError::Empty`] with
/// `what`), `N_CLASSES` finite probabilities per label, labels in range.
pub(super) fn check_prob_rows(
    probs: &[f32],
    y: &[u8],
    what: &'static str,
) -> Result<(), ModelError> {
    if y.is_empty() {
        return Err(ModelError::Empty { what });
    }
    if probs.len() != y.len() * N_CLASSES {
        return Err(ModelError::Labels {
            reason: format!(
                "{} labels for {} probabilities ({} per row)",
                y.len(),
                probs.len(),
                N_CLASSES
            ),
        });
    }
    if let Some(bad) = y.iter().find(|&&c| c as usize >= N_CLASSES) {
        return Err(ModelError::Labels {
            reason: format!("class id {bad} out of range 0..{N_CLASSES}"),
        });
    }
    if probs.iter().any(|p| !p.is_finite()) {
        return Err(ModelError::Labels {
            reason: "probabilities hold a non-finite value".into(),
        });
    }
    Ok(())
}

/// Runs `f` on every complete row, on rayon threads from [`PAR_MIN_ROWS`] rows on (rows are
/// independent, so the result does not depend on scheduling).
fn for_each_row<F>(probs: &mut [f32], f: F)
where
    F: Fn(&mut [f32]) + Sync + Send,
{
    if probs.len() / N_CLASSES >= PAR_MIN_ROWS {
        probs
            .par_chunks_mut(N_CLASSES * PAR_CHUNK_ROWS)
            .for_each(|chunk| chunk.chunks_exact_mut(N_CLASSES).for_each(&f));
    } else {
        probs.chunks_exact_mut(N_CLASSES).for_each(f);
    }
}

/// Writes `q / Σq` into `row` when the sum is finite and positive. Otherwise (every class
/// mapped to 0, or a NaN input) keeps the uncalibrated row if it is itself a usable
/// distribution (finite, non-negative, positive sum; renormalised), else writes the uniform
/// row.
fn write_normalised(row: &mut [f32], q: [f64; N_CLASSES]) {
    let s: f64 = q.iter().sum();
    if s.is_finite() && s > 0.0 {
        for (p, v) in row.iter_mut().zip(q) {
            *p = (v / s) as f32;
        }
        return;
    }
    let orig: f64 = row.iter().map(|&p| p as f64).sum();
    let usable = row.iter().all(|p| p.is_finite() && *p >= 0.0) && orig > 0.0;
    for p in row.iter_mut() {
        *p = if usable {
            (*p as f64 / orig) as f32
        } else {
            1.0 / N_CLASSES as f32
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Platt scaling
// ---------------------------------------------------------------------------------------------

/// One-vs-rest Platt scaling: `p'_c = σ(a_c · logit(p_c) + b_c)` per class, then the row is
/// renormalised to sum to 1.
///
/// `logit` clamps `p` to `[1e-6, 1 − 1e-6]` ([`PROB_FLOOR`]) and the linear predictor to
/// `±`[`PLATT_MAX_LOGIT`]. `(a, b) = (1, 0)` for every class is the identity up to the
/// renormalisation of rows that did not sum to 1.
///
/// ```
/// use threatrank::models::calibrate::PlattCalibrator;
/// // over-confident scores: labels agree with the arg-max only 60 % of the time
/// let probs: Vec<f32> = (0..100).flat_map(|_| [0.98, 0.01, 0.01]).collect();
/// let y: Vec<u8> = (0..100).map(|i| if i % 5 < 3 { 0 } else { 1 }).collect();
/// let cal = PlattCalibrator::fit(&probs, &y).unwrap();
/// let mut row = [0.98, 0.01, 0.01];
/// cal.apply_into(&mut row);
/// assert!((row[0] - 0.6).abs() < 0.05, "{row:?}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PlattRepr")]
pub struct PlattCalibrator {
    a: [f64; N_CLASSES],
    b: [f64; N_CLASSES],
}

/// Wire form of [`PlattCalibrator`], validated on load.
#[derive(Deserialize)]
struct PlattRepr {
    a: [f64; N_CLASSES],
    b: [f64; N_CLASSES],
}

impl TryFrom<PlattRepr> for PlattCalibrator {
    type Error = String;

    fn try_from(r: PlattRepr) -> Result<Self, String> {
        PlattCalibrator::new(r.a, r.b).map_err(|e| e.to_string())
    }
}

impl Default for PlattCalibrator {
    fn default() -> Self {
        Self::identity()
    }
}

impl PlattCalibrator {
    /// `(a, b) = (1, 0)` for every class.
    pub fn identity() -> Self {
        Self {
            a: [1.0; N_CLASSES],
            b: [0.0; N_CLASSES],
        }
    }

    /// A Platt calibrator with given slopes `a` and intercepts `b` (all finite), else
    /// [`ModelError::InvalidParam`].
    pub fn new(a: [f64; N_CLASSES], b: [f64; N_CLASSES]) -> Result<Self, ModelError> {
        if let Some(v) = a.iter().chain(&b).find(|v| !v.is_finite()) {
            return Err(ModelError::InvalidParam {
                name: "platt",
                reason: format!("parameters must be finite, got {v}"),
            });
        }
        Ok(Self { a, b })
    }

    /// Slopes `a_c`.
    pub fn slopes(&self) -> [f64; N_CLASSES] {
        self.a
    }

    /// Intercepts `b_c`.
    pub fn intercepts(&self) -> [f64; N_CLASSES] {
        self.b
    }

    /// Fits `(a_c, b_c)` per class on `probs` (row-major, `N_CLASSES` per row) against the
    /// indicator `y == c`, by Newton's method with step halving on the binary log-loss.
    ///
    /// Targets are Platt's smoothed labels `(N₊ + 1) / (N₊ + 2)` and `1 / (N₋ + 2)`, so a class
    /// that never (or always) occurs gets finite parameters instead of running off to
    /// infinity; [`PLATT_L2`] pulls `(a, b)` towards `(1, 0)`. Deterministic.
    ///
    /// Errors as [`Calibrator::fit`].
    pub fn fit(probs: &[f32], y: &[u8]) -> Result<Self, ModelError> {
        check_probs_labels(probs, y)?;
        let mut z = Vec::with_capacity(y.len());
        let mut a = [1.0; N_CLASSES];
        let mut b = [0.0; N_CLASSES];
        for c in 0..N_CLASSES {
            z.clear();
            z.extend(probs.chunks_exact(N_CLASSES).map(|r| clamped_logit(r[c])));
            (a[c], b[c]) = fit_platt_class(&z, y, c as u8);
        }
        Ok(Self { a, b })
    }

    /// Calibrates rows in place (`N_CLASSES` per row; a trailing partial row is left as is).
    pub fn apply_into(&self, probs: &mut [f32]) {
        for_each_row(probs, |r| self.apply_row(r));
    }

    fn apply_row(&self, row: &mut [f32]) {
        let mut q = [0.0f64; N_CLASSES];
        for (c, (qc, &p)) in q.iter_mut().zip(row.iter()).enumerate() {
            *qc = if p.is_nan() {
                f64::NAN
            } else {
                sigmoid(self.a[c] * clamped_logit(p) + self.b[c])
            };
        }
        write_normalised(row, q);
    }

    /// Shrinks towards the identity: `a' = 1 + w (a − 1)`, `b' = w b`.
    fn shrunk(&self, w: f64) -> Self {
        Self {
            a: self.a.map(|a| 1.0 + w * (a - 1.0)),
            b: self.b.map(|b| w * b),
        }
    }
}

/// `logit(clamp(p, 1e-6, 1 − 1e-6))` in `f64`.
fn clamped_logit(p: f32) -> f64 {
    let p = (p as f64).clamp(PROB_FLOOR, 1.0 - PROB_FLOOR);
    (p / (1.0 - p)).ln()
}

/// `σ(clamp(η, ±PLATT_MAX_LOGIT))`.
fn sigmoid(eta: f64) -> f64 {
    1.0 / (1.0 + (-eta.clamp(-PLATT_MAX_LOGIT, PLATT_MAX_LOGIT)).exp())
}

/// Newton's method for one class: minimises
/// `Σ_i [softplus(η_i) − t_i η_i] + PLATT_L2/2 · ((a − 1)² + b²)`, `η_i = clamp(a z_i + b)`,
/// with Platt's smoothed targets `t_i`. Starts at the identity; halves the step until the
/// objective does not increase.
fn fit_platt_class(z: &[f64], y: &[u8], class: u8) -> (f64, f64) {
    let n_pos = y.iter().filter(|&&c| c == class).count() as f64;
    let n_neg = y.len() as f64 - n_pos;
    let t_pos = (n_pos + 1.0) / (n_pos + 2.0);
    let t_neg = 1.0 / (n_neg + 2.0);
    let target = |c: u8| if c == class { t_pos } else { t_neg };
    let objective = |a: f64, b: f64| {
        let mut f = 0.5 * PLATT_L2 * ((a - 1.0).powi(2) + b * b);
        for (&zi, &c) in z.iter().zip(y) {
            let eta = (a * zi + b).clamp(-PLATT_MAX_LOGIT, PLATT_MAX_LOGIT);
            let softplus = if eta > 0.0 {
                eta + (-eta).exp().ln_1p()
            } else {
                eta.exp().ln_1p()
            };
            f += softplus - target(c) * eta;
        }
        f
    };
    let (mut a, mut b) = (1.0f64, 0.0f64);
    let mut f = objective(a, b);
    for _ in 0..PLATT_MAX_ITER {
        let (mut ga, mut gb) = (PLATT_L2 * (a - 1.0), PLATT_L2 * b);
        let (mut haa, mut hab, mut hbb) = (PLATT_L2, 0.0, PLATT_L2);
        for (&zi, &c) in z.iter().zip(y) {
            let p = sigmoid(a * zi + b);
            let d = p - target(c);
            let w = p * (1.0 - p);
            ga += d * zi;
            gb += d;
            haa += w * zi * zi;
            hab += w * zi;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if !(det.is_finite() && det > 0.0) {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        let mut step = 1.0;
        let mut accepted = None;
        while step > 1e-10 {
            let (na, nb) = (a - step * da, b - step * db);
            let nf = objective(na, nb);
            if nf <= f {
                accepted = Some((na, nb, nf));
                break;
            }
            step *= 0.5;
        }
        let Some((na, nb, nf)) = accepted else { break };
        let moved = (na - a).abs() + (nb - b).abs();
        let gained = f - nf;
        (a, b, f) = (na, nb, nf);
        if moved < 1e-10 || gained <= 1e-12 * f.abs().max(1.0) {
            break;
        }
    }
    (a, b)
}

// ---------------------------------------------------------------------------------------------
// Isotonic regression
// ---------------------------------------------------------------------------------------------

/// A non-decreasing piecewise-linear map `[0, 1] → [0, 1]` given by breakpoints `(x_k, y_k)`:
/// `x` strictly increasing, `y` non-decreasing, both finite with `y` in `[0, 1]`. Below `x_0`
/// it is `y_0`, above the last breakpoint the last `y`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "IsotonicCurveRepr")]
pub struct IsotonicCurve {
    x: Vec<f64>,
    y: Vec<f64>,
}

/// Wire form of [`IsotonicCurve`], validated on load.
#[derive(Deserialize)]
struct IsotonicCurveRepr {
    x: Vec<f64>,
    y: Vec<f64>,
}

impl TryFrom<IsotonicCurveRepr> for IsotonicCurve {
    type Error = String;

    fn try_from(r: IsotonicCurveRepr) -> Result<Self, String> {
        IsotonicCurve::new(r.x, r.y).map_err(|e| e.to_string())
    }
}

impl IsotonicCurve {
    /// A curve from breakpoints, checked as described on the type, else
    /// [`ModelError::InvalidParam`].
    pub fn new(x: Vec<f64>, y: Vec<f64>) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::InvalidParam {
            name: "isotonic",
            reason,
        };
        if x.is_empty() || x.len() != y.len() {
            return Err(bad(format!(
                "needs as many x as y breakpoints, at least one; got {} and {}",
                x.len(),
                y.len()
            )));
        }
        if x.iter().any(|v| !v.is_finite()) || y.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(bad("x must be finite and y in [0, 1]".into()));
        }
        if x.windows(2).any(|w| w[0] >= w[1]) || y.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad(
                "x must be strictly increasing and y non-decreasing".into()
            ));
        }
        Ok(Self { x, y })
    }

    /// Breakpoint abscissae (strictly increasing).
    pub fn x(&self) -> &[f64] {
        &self.x
    }

    /// Breakpoint values (non-decreasing).
    pub fn y(&self) -> &[f64] {
        &self.y
    }

    /// The curve at `p` (linear between breakpoints, constant outside; NaN stays NaN).
    pub fn eval(&self, p: f64) -> f64 {
        if p.is_nan() {
            return f64::NAN;
        }
        // first breakpoint with x > p
        let k = self.x.partition_point(|&x| x <= p);
        if k == 0 {
            return self.y[0];
        }
        if k == self.x.len() {
            return self.y[k - 1];
        }
        let (x0, x1, y0, y1) = (self.x[k - 1], self.x[k], self.y[k - 1], self.y[k]);
        y0 + (y1 - y0) * (p - x0) / (x1 - x0)
    }

    /// Pool-adjacent-violators on `(score, positive)` pairs: equal scores are pooled first,
    /// then adjacent blocks are merged while their means are not increasing. Each block
    /// contributes the breakpoints `(min score, mean)` and `(max score, mean)`; means are
    /// clamped to `[ISOTONIC_FLOOR, 1 − ISOTONIC_FLOOR]`. `pairs` is sorted in place.
    fn fit_pav(pairs: &mut [(f32, bool)]) -> Self {
        pairs.sort_unstable_by(|l, r| l.0.total_cmp(&r.0));
        // (lo, hi, positives, weight)
        let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::new();
        let mut i = 0;
        while i < pairs.len() {
            let x = pairs[i].0;
            let mut pos = 0.0;
            let mut w = 0.0;
            while i < pairs.len() && pairs[i].0 == x {
                pos += pairs[i].1 as u8 as f64;
                w += 1.0;
                i += 1;
            }
            blocks.push((x as f64, x as f64, pos, w));
            while blocks.len() >= 2 {
                let (l, r) = (blocks[blocks.len() - 2], blocks[blocks.len() - 1]);
                // merge while mean(l) >= mean(r)
                if l.2 * r.3 < r.2 * l.3 {
                    break;
                }
                blocks.pop();
                let last = blocks.len() - 1;
                blocks[last] = (l.0, r.1, l.2 + r.2, l.3 + r.3);
            }
        }
        let mut x = Vec::with_capacity(2 * blocks.len());
        let mut y = Vec::with_capacity(2 * blocks.len());
        for (lo, hi, pos, w) in blocks {
            let v = (pos / w).clamp(ISOTONIC_FLOOR, 1.0 - ISOTONIC_FLOOR);
            x.push(lo);
            y.push(v);
            if hi > lo {
                x.push(hi);
                y.push(v);
            }
        }
        Self { x, y }
    }
}

/// One-vs-rest isotonic calibration: per class a non-decreasing [`IsotonicCurve`] fitted by
/// pool-adjacent-violators on `(p_c, y == c)`, then the row is renormalised to sum to 1.
///
/// A row whose calibrated values sum to 0 or are not finite (only possible with hand-made
/// curves or NaN inputs) keeps its uncalibrated values when those form a distribution, else
/// becomes uniform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsotonicCalibrator {
    curves: [IsotonicCurve; N_CLASSES],
}

impl IsotonicCalibrator {
    /// A calibrator from one curve per class.
    pub fn new(curves: [IsotonicCurve; N_CLASSES]) -> Self {
        Self { curves }
    }

    /// The per-class curves.
    pub fn curves(&self) -> &[IsotonicCurve; N_CLASSES] {
        &self.curves
    }

    /// Fits one curve per class. Deterministic (sorting by value; equal values are pooled, so
    /// their order does not matter). Errors as [`Calibrator::fit`].
    pub fn fit(probs: &[f32], y: &[u8]) -> Result<Self, ModelError> {
        check_probs_labels(probs, y)?;
        let mut pairs: Vec<(f32, bool)> = Vec::with_capacity(y.len());
        let curves = std::array::from_fn(|c| {
            pairs.clear();
            pairs.extend(
                probs
                    .chunks_exact(N_CLASSES)
                    .zip(y)
                    .map(|(r, &l)| (r[c], l as usize == c)),
            );
            IsotonicCurve::fit_pav(&mut pairs)
        });
        Ok(Self { curves })
    }

    /// Calibrates rows in place (`N_CLASSES` per row; a trailing partial row is left as is).
    pub fn apply_into(&self, probs: &mut [f32]) {
        for_each_row(probs, |r| self.apply_row(r));
    }

    fn apply_row(&self, row: &mut [f32]) {
        let mut q = [0.0f64; N_CLASSES];
        for ((qc, curve), &p) in q.iter_mut().zip(&self.curves).zip(row.iter()) {
            *qc = curve.eval(p as f64);
        }
        write_normalised(row, q);
    }
}

// ---------------------------------------------------------------------------------------------
// Any calibrator, and selection by out-of-sample log-loss
// ---------------------------------------------------------------------------------------------

/// Calibration methods, in the order of increasing flexibility (ties in
/// [`CalibrationValidParams::fit_best`] go to the earlier, simpler one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    /// no change
    Identity,
    /// one temperature for all classes ([`Calibrator`])
    Temperature,
    /// per-class sigmoid of the logit ([`PlattCalibrator`])
    Platt,
    /// per-class monotone step curve ([`IsotonicCalibrator`])
    Isotonic,
}

impl CalibrationMethod {
    /// Every method, in tie-break order.
    pub const ALL: [CalibrationMethod; 4] = [
        CalibrationMethod::Identity,
        CalibrationMethod::Temperature,
        CalibrationMethod::Platt,
        CalibrationMethod::Isotonic,
    ];

    /// Stable name used in files and reports.
    pub fn name(self) -> &'static str {
        match self {
            CalibrationMethod::Identity => "identity",
            CalibrationMethod::Temperature => "temperature",
            CalibrationMethod::Platt => "platt",
            CalibrationMethod::Isotonic => "isotonic",
        }
    }
}

/// Any fitted calibrator, as stored in an artifact (`{"method": "platt", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum ProbabilityCalibrator {
    /// leaves probabilities unchanged
    #[default]
    Identity,
    /// temperature scaling
    Temperature(Calibrator),
    /// one-vs-rest Platt scaling
    Platt(PlattCalibrator),
    /// one-vs-rest isotonic regression
    Isotonic(IsotonicCalibrator),
}

impl ProbabilityCalibrator {
    /// Fits a calibrator of the given method on `probs` / `y` (errors as [`Calibrator::fit`]).
    pub fn fit(method: CalibrationMethod, probs: &[f32], y: &[u8]) -> Result<Self, ModelError> {
        Ok(match method {
            CalibrationMethod::Identity => {
                check_probs_labels(probs, y)?;
                ProbabilityCalibrator::Identity
            }
            CalibrationMethod::Temperature => {
                ProbabilityCalibrator::Temperature(Calibrator::fit(probs, y)?)
            }
            CalibrationMethod::Platt => {
                ProbabilityCalibrator::Platt(PlattCalibrator::fit(probs, y)?)
            }
            CalibrationMethod::Isotonic => {
                ProbabilityCalibrator::Isotonic(IsotonicCalibrator::fit(probs, y)?)
            }
        })
    }

    /// Which method this is.
    pub fn method(&self) -> CalibrationMethod {
        match self {
            ProbabilityCalibrator::Identity => CalibrationMethod::Identity,
            ProbabilityCalibrator::Temperature(_) => CalibrationMethod::Temperature,
            ProbabilityCalibrator::Platt(_) => CalibrationMethod::Platt,
            ProbabilityCalibrator::Isotonic(_) => CalibrationMethod::Isotonic,
        }
    }

    /// Calibrates rows in place (`N_CLASSES` per row; a trailing partial row is left as is;
    /// [`ProbabilityCalibrator::Identity`] leaves `probs` bit-for-bit unchanged).
    pub fn apply_into(&self, probs: &mut [f32]) {
        match self {
            ProbabilityCalibrator::Identity => {}
            ProbabilityCalibrator::Temperature(c) => c.apply_into(probs),
            ProbabilityCalibrator::Platt(c) => c.apply_into(probs),
            ProbabilityCalibrator::Isotonic(c) => c.apply_into(probs),
        }
    }

    /// One row (serial).
    fn apply_row(&self, row: &mut [f32]) {
        match self {
            ProbabilityCalibrator::Identity => {}
            ProbabilityCalibrator::Temperature(c) => c.apply_into(row),
            ProbabilityCalibrator::Platt(c) => c.apply_row(row),
            ProbabilityCalibrator::Isotonic(c) => c.apply_row(row),
        }
    }
}

/// Parameters of calibrator selection and of per-tenant calibration (unchecked; missing
/// fields take their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationParams {
    /// Cross-fitting folds over groups, `2..=20`. Default 5. With fewer distinct groups, one
    /// fold per group.
    pub folds: usize,
    /// Seed of the fold assignment. Default 42.
    pub seed: u64,
    /// Candidate methods (at least one; duplicates ignored). Default all of
    /// [`CalibrationMethod::ALL`].
    pub methods: Vec<CalibrationMethod>,
    /// Held-out rows a tenant needs for its own Platt adjustment (`>= 1`). Default 50.
    pub min_verdicts: usize,
    /// Shrinkage strength `m` (finite, `>= 0`): a tenant with `n` rows keeps the fraction
    /// `n / (n + m)` of its own adjustment. Default 100.
    pub shrinkage: f64,
}

impl Default for CalibrationParams {
    fn default() -> Self {
        Self {
            folds: 5,
            seed: 42,
            methods: CalibrationMethod::ALL.to_vec(),
            min_verdicts: 50,
            shrinkage: 100.0,
        }
    }
}

impl CalibrationParams {
    /// Sets [`CalibrationParams::folds`] (default 5).
    pub fn folds(mut self, k: usize) -> Self {
        self.folds = k;
        self
    }
    /// Sets [`CalibrationParams::seed`] (default 42).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets [`CalibrationParams::methods`] (default all four).
    pub fn methods(mut self, methods: &[CalibrationMethod]) -> Self {
        self.methods = methods.to_vec();
        self
    }
    /// Sets [`CalibrationParams::min_verdicts`] (default 50).
    pub fn min_verdicts(mut self, n: usize) -> Self {
        self.min_verdicts = n;
        self
    }
    /// Sets [`CalibrationParams::shrinkage`] (default 100).
    pub fn shrinkage(mut self, m: f64) -> Self {
        self.shrinkage = m;
        self
    }

    /// Checks the parameters, else [`ModelError::InvalidParam`] naming the field.
    pub fn check(&self) -> Result<CalibrationValidParams, ModelError> {
        if !(2..=20).contains(&self.folds) {
            return Err(ModelError::InvalidParam {
                name: "folds",
                reason: format!("must be in 2..=20, got {}", self.folds),
            });
        }
        if self.methods.is_empty() {
            return Err(ModelError::InvalidParam {
                name: "methods",
                reason: "needs at least one calibration method".into(),
            });
        }
        if self.min_verdicts == 0 {
            return Err(ModelError::InvalidParam {
                name: "min_verdicts",
                reason: "must be >= 1".into(),
            });
        }
        if !(self.shrinkage.is_finite() && self.shrinkage >= 0.0) {
            return Err(ModelError::InvalidParam {
                name: "shrinkage",
                reason: format!("must be finite and >= 0, got {}", self.shrinkage),
            });
        }
        let mut methods = self.methods.clone();
        methods.sort_unstable();
        methods.dedup();
        Ok(CalibrationValidParams {
            folds: self.folds,
            seed: self.seed,
            methods,
            min_verdicts: self.min_verdicts,
            shrinkage: self.shrinkage,
        })
    }
}

/// Checked [`CalibrationParams`]; fits calibrators.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationValidParams {
    folds: usize,
    seed: u64,
    methods: Vec<CalibrationMethod>,
    min_verdicts: usize,
    shrinkage: f64,
}

/// Out-of-sample multiclass log-loss of one candidate method.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CandidateLogLoss {
    /// the method
    pub method: CalibrationMethod,
    /// mean log-loss over all rows, each row calibrated by a fit that did not see its group
    pub log_loss: f64,
}

/// What [`CalibrationValidParams::fit_best`] measured, for the model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// the method with the lowest out-of-sample log-loss (refitted on all rows)
    pub chosen: CalibrationMethod,
    /// every candidate, in [`CalibrationMethod`] order
    pub candidates: Vec<CandidateLogLoss>,
    /// held-out rows used
    pub rows: usize,
    /// distinct groups among them
    pub groups: usize,
    /// cross-fitting folds actually used (`min(folds, groups)`)
    pub folds: usize,
}

impl CalibrationReport {
    /// The out-of-sample log-loss of `method`, if it was a candidate.
    pub fn log_loss_of(&self, method: CalibrationMethod) -> Option<f64> {
        self.candidates
            .iter()
            .find(|c| c.method == method)
            .map(|c| c.log_loss)
    }
}

impl CalibrationValidParams {
    /// Cross-fitting folds requested.
    pub fn folds(&self) -> usize {
        self.folds
    }
    /// Candidate methods (sorted, distinct).
    pub fn methods(&self) -> &[CalibrationMethod] {
        &self.methods
    }
    /// Rows a tenant needs for its own adjustment.
    pub fn min_verdicts(&self) -> usize {
        self.min_verdicts
    }
    /// Shrinkage strength `m`.
    pub fn shrinkage(&self) -> f64 {
        self.shrinkage
    }

    /// Chooses the calibration method with the lowest *out-of-sample* multiclass log-loss and
    /// refits it on all rows.
    ///
    /// `probs` (row-major, `N_CLASSES` per row) must already be held out from the model (e.g.
    /// out-of-fold predictions); `groups` holds one id per row (e.g. the incident) so that rows
    /// of a group are always on the same side of a split. Distinct groups are assigned to
    /// `min(folds, groups)` folds: largest group first (ties by a seeded hash of the id), each
    /// to the fold with the fewest rows so far. Each candidate is fitted on all folds but one
    /// and applied to that one; its log-loss is the mean over all rows. Ties go to the simpler
    /// method ([`CalibrationMethod`] order).
    ///
    /// Errors as [`Calibrator::fit`]; [`ModelError::Labels`] when `groups.len() != y.len()`;
    /// [`ModelError::InvalidParam`] (`groups`) with fewer than 2 distinct groups.
    pub fn fit_best(
        &self,
        probs: &[f32],
        y: &[u8],
        groups: &[u64],
    ) -> Result<(ProbabilityCalibrator, CalibrationReport), ModelError> {
        let sel = self.select(probs, y, groups)?;
        Ok((sel.calibrator, sel.report))
    }

    /// [`CalibrationValidParams::fit_best`] plus the chosen method's out-of-fold calibrated
    /// probabilities and the fold of every row.
    fn select(&self, probs: &[f32], y: &[u8], groups: &[u64]) -> Result<Selection, ModelError> {
        check_probs_labels(probs, y)?;
        check_row_ids("groups", groups, y.len())?;
        let folds = GroupFolds::new(groups, self.folds, self.seed)?;
        let mut best_buf = vec![0.0f32; probs.len()];
        let mut scratch = vec![0.0f32; probs.len()];
        let mut best: Option<(CalibrationMethod, f64)> = None;
        let mut candidates = Vec::with_capacity(self.methods.len());
        for &method in &self.methods {
            cross_fit(method, probs, y, &folds, &mut scratch)?;
            let loss = log_loss(&scratch, y)?;
            candidates.push(CandidateLogLoss {
                method,
                log_loss: loss,
            });
            if best.is_none_or(|(_, l)| loss < l) {
                best = Some((method, loss));
                std::mem::swap(&mut best_buf, &mut scratch);
            }
        }
        let chosen = best.map_or(CalibrationMethod::Identity, |(m, _)| m);
        let calibrator = ProbabilityCalibrator::fit(chosen, probs, y)?;
        Ok(Selection {
            calibrator,
            report: CalibrationReport {
                chosen,
                candidates,
                rows: y.len(),
                groups: folds.n_groups,
                folds: folds.k,
            },
            oof: best_buf,
            folds,
        })
    }

    /// Fits a [`TenantCalibration`]: the global calibrator of
    /// [`CalibrationValidParams::fit_best`], then for every tenant with at least
    /// `min_verdicts` rows a one-vs-rest Platt map over the *out-of-fold* globally calibrated
    /// probabilities of its rows, shrunk towards "no change" by `w = n / (n + m)`:
    /// `a = 1 + w (â − 1)`, `b = w b̂` (empirical-Bayes style: few verdicts, little trust).
    /// Other tenants get the global calibrator alone.
    ///
    /// The returned report also holds the out-of-sample log-loss with and without the tenant
    /// maps: the tenant step is cross-fitted over the same group folds.
    ///
    /// Errors as [`CalibrationValidParams::fit_best`]; [`ModelError::Labels`] when
    /// `tenant.len() != y.len()`.
    pub fn fit_per_tenant(
        &self,
        probs: &[f32],
        y: &[u8],
        groups: &[u64],
        tenant: &[u64],
    ) -> Result<(TenantCalibration, TenantCalibrationReport), ModelError> {
        check_probs_labels(probs, y)?;
        check_row_ids("tenant", tenant, y.len())?;
        let sel = self.select(probs, y, groups)?;
        let oof = &sel.oof;

        // Out-of-sample effect of the tenant step, over the same folds.
        let mut adjusted = oof.clone();
        let mut train_rows: Vec<usize> = Vec::with_capacity(y.len());
        for f in 0..sel.folds.k {
            train_rows.clear();
            train_rows.extend((0..y.len()).filter(|&i| sel.folds.fold_of_row[i] != f));
            let fold_cal = self.tenant_adjustments(oof, y, tenant, &mut train_rows)?;
            if fold_cal.is_empty() {
                continue;
            }
            for i in (0..y.len()).filter(|&i| sel.folds.fold_of_row[i] == f) {
                if let Ok(k) = fold_cal.binary_search_by_key(&tenant[i], |t| t.tenant) {
                    fold_cal[k]
                        .platt
                        .apply_row(&mut adjusted[i * N_CLASSES..(i + 1) * N_CLASSES]);
                }
            }
        }

        let mut all_rows: Vec<usize> = (0..y.len()).collect();
        let tenants = self.tenant_adjustments(oof, y, tenant, &mut all_rows)?;
        let mut distinct = tenant.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let report = TenantCalibrationReport {
            log_loss_global: log_loss(oof, y)?,
            log_loss_tenant: log_loss(&adjusted, y)?,
            tenants: distinct.len(),
            tenants_adjusted: tenants.len(),
            rows_adjusted: tenants.iter().map(|t| t.rows as usize).sum(),
            selection: sel.report,
        };
        let cal = TenantCalibration {
            global: sel.calibrator,
            min_verdicts: self.min_verdicts as u64,
            shrinkage: self.shrinkage,
            tenants,
        };
        Ok((cal, report))
    }

    /// Shrunk Platt adjustments of every tenant with at least `min_verdicts` of `rows`
    /// (reordered in place), fitted on `probs`; sorted by tenant.
    fn tenant_adjustments(
        &self,
        probs: &[f32],
        y: &[u8],
        tenant: &[u64],
        rows: &mut [usize],
    ) -> Result<Vec<TenantAdjustment>, ModelError> {
        rows.sort_unstable_by_key(|&i| (tenant[i], i));
        let runs: Vec<&[usize]> = rows
            .chunk_by(|&i, &j| tenant[i] == tenant[j])
            .filter(|run| run.len() >= self.min_verdicts)
            .collect();
        let fit_one = |run: &&[usize]| -> Result<TenantAdjustment, ModelError> {
            let mut p = Vec::with_capacity(run.len() * N_CLASSES);
            let mut l = Vec::with_capacity(run.len());
            for &i in run.iter() {
                p.extend_from_slice(&probs[i * N_CLASSES..(i + 1) * N_CLASSES]);
                l.push(y[i]);
            }
            let n = run.len() as f64;
            let w = n / (n + self.shrinkage);
            Ok(TenantAdjustment {
                tenant: tenant[run[0]],
                rows: run.len() as u64,
                weight: w,
                platt: PlattCalibrator::fit(&p, &l)?.shrunk(w),
            })
        };
        if rows.len() >= PAR_MIN_ROWS && runs.len() > 1 {
            runs.par_iter().map(fit_one).collect()
        } else {
            runs.iter().map(fit_one).collect()
        }
    }
}

/// Result of the selection step: the refitted calibrator, its report, out-of-fold calibrated
/// probabilities of the chosen method, and the folds.
struct Selection {
    calibrator: ProbabilityCalibrator,
    report: CalibrationReport,
    oof: Vec<f32>,
    folds: GroupFolds,
}

/// `ids.len() == n`, else [`ModelError::Labels`] naming the id column.
fn check_row_ids(what: &str, ids: &[u64], n: usize) -> Result<(), ModelError> {
    if ids.len() != n {
        return Err(ModelError::Labels {
            reason: format!("{} {what} ids for {n} rows", ids.len()),
        });
    }
    Ok(())
}

/// Deterministic grouped folds: the fold of every row, whole groups per fold.
struct GroupFolds {
    fold_of_row: Vec<usize>,
    k: usize,
    n_groups: usize,
}

impl GroupFolds {
    /// Distinct groups, largest first (ties by `crate::rng::mix64(id ^ seed)`, then id), each to the
    /// fold with the fewest rows so far (ties to the lowest index); `min(folds, groups)` folds.
    fn new(groups: &[u64], folds: usize, seed: u64) -> Result<Self, ModelError> {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for &g in groups {
            *counts.entry(g).or_default() += 1;
        }
        if counts.len() < 2 {
            return Err(ModelError::InvalidParam {
                name: "groups",
                reason: format!(
                    "cross-fitting needs at least 2 distinct groups, got {}",
                    counts.len()
                ),
            });
        }
        let k = folds.min(counts.len());
        let mut order: Vec<(u64, usize)> = counts.into_iter().collect();
        order
            .sort_unstable_by_key(|&(g, n)| (std::cmp::Reverse(n), crate::rng::mix64(g ^ seed), g));
        let mut load = vec![0usize; k];
        let mut fold_of_group: Vec<(u64, usize)> = Vec::with_capacity(order.len());
        for &(g, n) in &order {
            let f = (0..k).min_by_key(|&f| (load[f], f)).unwrap_or(0);
            load[f] += n;
            fold_of_group.push((g, f));
        }
        fold_of_group.sort_unstable();
        let fold_of_row = groups
            .iter()
            .map(|g| {
                fold_of_group
                    .binary_search_by_key(g, |&(id, _)| id)
                    .map_or(0, |k| fold_of_group[k].1)
            })
            .collect();
        Ok(Self {
            fold_of_row,
            k,
            n_groups: fold_of_group.len(),
        })
    }
}

/// Out-of-fold calibrated probabilities of `method` into `out`: for each fold, fit on the
/// other folds' rows, apply to this fold's rows.
fn cross_fit(
    method: CalibrationMethod,
    probs: &[f32],
    y: &[u8],
    folds: &GroupFolds,
    out: &mut [f32],
) -> Result<(), ModelError> {
    out.copy_from_slice(probs);
    if method == CalibrationMethod::Identity {
        return Ok(());
    }
    let mut tp: Vec<f32> = Vec::with_capacity(probs.len());
    let mut ty: Vec<u8> = Vec::with_capacity(y.len());
    for f in 0..folds.k {
        tp.clear();
        ty.clear();
        for (i, (r, &l)) in probs.chunks_exact(N_CLASSES).zip(y).enumerate() {
            if folds.fold_of_row[i] != f {
                tp.extend_from_slice(r);
                ty.push(l);
            }
        }
        let cal = ProbabilityCalibrator::fit(method, &tp, &ty)?;
        for (i, r) in out.chunks_exact_mut(N_CLASSES).enumerate() {
            if folds.fold_of_row[i] == f {
                cal.apply_row(r);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Per-tenant calibration
// ---------------------------------------------------------------------------------------------

/// A tenant's own Platt map, applied after the global calibrator (already shrunk).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TenantAdjustment {
    /// tenant key
    pub tenant: u64,
    /// held-out rows it was fitted on
    pub rows: u64,
    /// shrinkage weight `n / (n + m)` in `[0, 1]`
    pub weight: f64,
    /// the shrunk map: `a = 1 + w (â − 1)`, `b = w b̂`
    pub platt: PlattCalibrator,
}

/// Global calibrator plus shrunk per-tenant Platt maps over its output.
///
/// Tenants with fewer than `min_verdicts` held-out rows (or unseen tenants) get the global
/// calibrator alone. The tenant map sits *after* the global calibrator, so shrinking it towards
/// `(a, b) = (1, 0)` shrinks the tenant towards the global calibration whatever its method
/// (temperature, Platt or isotonic), and a tenant just above the floor differs little from one
/// just below it.
///
/// Serialised with tenants as a list sorted by key (deterministic output), validated on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TenantCalibrationRepr")]
pub struct TenantCalibration {
    global: ProbabilityCalibrator,
    min_verdicts: u64,
    shrinkage: f64,
    tenants: Vec<TenantAdjustment>,
}

/// Wire form of [`TenantCalibration`], validated on load.
#[derive(Deserialize)]
struct TenantCalibrationRepr {
    global: ProbabilityCalibrator,
    min_verdicts: u64,
    shrinkage: f64,
    tenants: Vec<TenantAdjustment>,
}

impl TryFrom<TenantCalibrationRepr> for TenantCalibration {
    type Error = String;

    fn try_from(r: TenantCalibrationRepr) -> Result<Self, String> {
        if !(r.shrinkage.is_finite() && r.shrinkage >= 0.0) {
            return Err(format!(
                "shrinkage must be finite and >= 0, got {}",
                r.shrinkage
            ));
        }
        if r.tenants.windows(2).any(|w| w[0].tenant >= w[1].tenant) {
            return Err("tenants must be sorted by key without duplicates".into());
        }
        if let Some(t) = r
            .tenants
            .iter()
            .find(|t| !(0.0..=1.0).contains(&t.weight) || t.rows == 0)
        {
            return Err(format!(
                "tenant {}: weight must be in [0, 1] and rows >= 1",
                t.tenant
            ));
        }
        Ok(Self {
            global: r.global,
            min_verdicts: r.min_verdicts,
            shrinkage: r.shrinkage,
            tenants: r.tenants,
        })
    }
}

/// What [`CalibrationValidParams::fit_per_tenant`] measured, for the model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantCalibrationReport {
    /// selection of the global calibrator
    pub selection: CalibrationReport,
    /// out-of-sample log-loss with the global calibrator alone
    pub log_loss_global: f64,
    /// out-of-sample log-loss with the tenant maps added (cross-fitted over the same folds)
    pub log_loss_tenant: f64,
    /// distinct tenants among the rows
    pub tenants: usize,
    /// tenants with their own map
    pub tenants_adjusted: usize,
    /// rows of those tenants
    pub rows_adjusted: usize,
}

impl From<ProbabilityCalibrator> for TenantCalibration {
    fn from(global: ProbabilityCalibrator) -> Self {
        Self::global_only(global)
    }
}

impl TenantCalibration {
    /// The global calibrator for every tenant (no tenant maps; `min_verdicts` 50, `m` 100 are
    /// recorded only).
    pub fn global_only(global: ProbabilityCalibrator) -> Self {
        let d = CalibrationParams::default();
        Self {
            global,
            min_verdicts: d.min_verdicts as u64,
            shrinkage: d.shrinkage,
            tenants: Vec::new(),
        }
    }

    /// The global calibrator.
    pub fn global(&self) -> &ProbabilityCalibrator {
        &self.global
    }

    /// Tenant maps, sorted by tenant key.
    pub fn tenants(&self) -> &[TenantAdjustment] {
        &self.tenants
    }

    /// The map of one tenant, if it has one.
    pub fn tenant(&self, tenant: u64) -> Option<&TenantAdjustment> {
        self.tenants
            .binary_search_by_key(&tenant, |t| t.tenant)
            .ok()
            .map(|k| &self.tenants[k])
    }

    /// Rows a tenant needed for its own map when fitted.
    pub fn min_verdicts(&self) -> u64 {
        self.min_verdicts
    }

    /// Shrinkage strength `m` used when fitted.
    pub fn shrinkage(&self) -> f64 {
        self.shrinkage
    }

    /// Calibrates one row (`N_CLASSES` values) of `tenant`: global calibrator, then the
    /// tenant's map if it has one.
    pub fn apply_row(&self, tenant: u64, row: &mut [f32]) {
        self.global.apply_row(row);
        if let Some(t) = self.tenant(tenant) {
            t.platt.apply_row(row);
        }
    }

    /// Calibrates rows in place; row `i` belongs to tenant `tenant_of_row[i]`.
    ///
    /// Errors: [`ModelError::OutputLength`] when `probs.len() != N_CLASSES *
    /// tenant_of_row.len()` (nothing is changed then).
    pub fn apply_into(&self, tenant_of_row: &[u64], probs: &mut [f32]) -> Result<(), ModelError> {
        let expected = tenant_of_row.len() * N_CLASSES;
        if probs.len() != expected {
            return Err(ModelError::OutputLength {
                expected,
                got: probs.len(),
            });
        }
        self.global.apply_into(probs);
        if self.tenants.is_empty() {
            return Ok(());
        }
        let chunk = |(rows, tenants): (&mut [f32], &[u64])| {
            // rows of one tenant often come together: remember the last lookup
            let mut last: Option<(u64, Option<&TenantAdjustment>)> = None;
            for (r, &t) in rows.chunks_exact_mut(N_CLASSES).zip(tenants) {
                let adj = match last {
                    Some((lt, a)) if lt == t => a,
                    _ => {
                        let a = self.tenant(t);
                        last = Some((t, a));
                        a
                    }
                };
                if let Some(a) = adj {
                    a.platt.apply_row(r);
                }
            }
        };
        if tenant_of_row.len() >= PAR_MIN_ROWS {
            probs
                .par_chunks_mut(N_CLASSES * PAR_CHUNK_ROWS)
                .zip(tenant_of_row.par_chunks(PAR_CHUNK_ROWS))
                .for_each(chunk);
        } else {
            chunk((probs, tenant_of_row));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reliability curves
// ---------------------------------------------------------------------------------------------

/// One bin of a reliability curve: rows whose predicted probability fell in `[lo, hi)` (the
/// last bin also holds `hi = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// lower edge
    pub lo: f64,
    /// upper edge
    pub hi: f64,
    /// rows in the bin (always `>= 1`: empty bins are omitted)
    pub count: u64,
    /// mean predicted probability of the rows
    pub mean_predicted: f64,
    /// fraction of the rows that were positive
    pub observed_rate: f64,
}

/// Reliability curve of one class: `bins` equal-width bins over `[0, 1]`; for each non-empty
/// bin the mean predicted probability and the observed positive rate (a calibrated model lies
/// on the diagonal).
///
/// Empty bins are **omitted**, so every returned bin has `count >= 1`; `lo` / `hi` locate it.
/// Probabilities outside `[0, 1]` are counted in the end bins. Sums run sequentially in `f64`
/// (deterministic).
///
/// Errors: [`ModelError::InvalidParam`] (`bins`) when `bins == 0`; [`ModelError::Empty`]
/// without rows; [`ModelError::Labels`] on a length mismatch or a non-finite probability.
///
/// ```
/// use threatrank::models::calibrate::{ece, reliability_curve};
/// let p = [0.1, 0.1, 0.9, 0.9];
/// let pos = [false, false, true, false];
/// let curve = reliability_curve(&p, &pos, 2).unwrap();
/// assert_eq!(curve.len(), 2);
/// assert_eq!(curve[1].observed_rate, 0.5);
/// // ECE = 0.5·|0.1 − 0| + 0.5·|0.9 − 0.5|
/// assert!((ece(&p, &pos, 2).unwrap() - 0.25).abs() < 1e-6);
/// ```
pub fn reliability_curve(
    probs_of_class: &[f32],
    positive: &[bool],
    bins: usize,
) -> Result<Vec<ReliabilityBin>, ModelError> {
    if positive.len() != probs_of_class.len() {
        return Err(ModelError::Labels {
            reason: format!(
                "{} outcomes for {} probabilities",
                positive.len(),
                probs_of_class.len()
            ),
        });
    }
    curve_from(
        probs_of_class.iter().copied().zip(positive.iter().copied()),
        bins,
    )
}

/// [`reliability_curve`] of `class` from row-major probabilities (`N_CLASSES` per row) and
/// labels, without copying the column out.
///
/// Errors as [`reliability_curve`]; also [`ModelError::Labels`] when `class >= N_CLASSES`, a
/// label is out of range or `probs.len() != N_CLASSES * y.len()`.
pub fn class_reliability_curve(
    probs: &[f32],
    y: &[u8],
    class: usize,
    bins: usize,
) -> Result<Vec<ReliabilityBin>, ModelError> {
    if class >= N_CLASSES {
        return Err(ModelError::Labels {
            reason: format!("class id {class} out of range 0..{N_CLASSES}"),
        });
    }
    if y.is_empty() {
        return Err(ModelError::Empty {
            what: "no rows for a reliability curve",
        });
    }
    check_probs_labels(probs, y)?;
    curve_from(
        probs
            .chunks_exact(N_CLASSES)
            .zip(y)
            .map(|(r, &l)| (r[class], l as usize == class)),
        bins,
    )
}

/// Expected calibration error of a curve: `Σ_bins (count / n) · |mean_predicted −
/// observed_rate|` (NaN for an empty curve).
pub fn curve_ece(curve: &[ReliabilityBin]) -> f64 {
    let n: u64 = curve.iter().map(|b| b.count).sum();
    if n == 0 {
        return f64::NAN;
    }
    curve
        .iter()
        .map(|b| b.count as f64 * (b.mean_predicted - b.observed_rate).abs())
        .sum::<f64>()
        / n as f64
}

/// Expected calibration error with `bins` equal-width bins (Naeini et al. 2015):
/// [`curve_ece`] of [`reliability_curve`]. Errors as [`reliability_curve`].
pub fn ece(probs_of_class: &[f32], positive: &[bool], bins: usize) -> Result<f64, ModelError> {
    Ok(curve_ece(&reliability_curve(
        probs_of_class,
        positive,
        bins,
    )?))
}

fn curve_from(
    pairs: impl Iterator<Item = (f32, bool)>,
    bins: usize,
) -> Result<Vec<ReliabilityBin>, ModelError> {
    if bins == 0 {
        return Err(ModelError::InvalidParam {
            name: "bins",
            reason: "a reliability curve needs at least one bin".into(),
        });
    }
    // (count, sum of p, positives)
    let mut acc = vec![(0u64, 0.0f64, 0u64); bins];
    for (p, pos) in pairs {
        if !p.is_finite() {
            return Err(ModelError::Labels {
                reason: "probabilities hold a non-finite value".into(),
            });
        }
        let p = p as f64;
        let k = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        let a = &mut acc[k];
        a.0 += 1;
        a.1 += p;
        a.2 += pos as u64;
    }
    if acc.iter().all(|a| a.0 == 0) {
        return Err(ModelError::Empty {
            what: "no rows for a reliability curve",
        });
    }
    Ok(acc
        .iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(k, &(count, sum, pos))| ReliabilityBin {
            lo: k as f64 / bins as f64,
            hi: (k + 1) as f64 / bins as f64,
            count,
            mean_predicted: sum / count as f64,
            observed_rate: pos as f64 / count as f64,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic "true" probabilities and labels drawn from them, plus a distortion of
    /// the probabilities by `softmax(k · ln q)`.
    fn synthetic(n: usize, k: f64) -> (Vec<f32>, Vec<u8>) {
        let mut s = 0x1234_5678_u64;
        let mut next = || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut probs = Vec::with_capacity(n * 3);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let w = [next() + 0.05, next() + 0.05, next() * 2.0 + 0.05];
            let s: f64 = w.iter().sum();
            let q = w.map(|v| v / s);
            let u = next();
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
    fn over_confident_probabilities_are_softened() {
        let (mut probs, y) = synthetic(2000, 3.0);
        let before = log_loss(&probs, &y).unwrap();
        let cal = Calibrator::fit(&probs, &y).unwrap();
        assert!(cal.temperature() > 1.5, "T = {}", cal.temperature());
        cal.apply_into(&mut probs);
        let after = log_loss(&probs, &y).unwrap();
        assert!(after < before - 0.05, "{before} -> {after}");
        assert!(probs
            .chunks(3)
            .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    }

    #[test]
    fn under_confident_probabilities_are_sharpened() {
        let (mut probs, y) = synthetic(2000, 0.3);
        let before = log_loss(&probs, &y).unwrap();
        let cal = Calibrator::fit(&probs, &y).unwrap();
        assert!(cal.temperature() < 0.7, "T = {}", cal.temperature());
        cal.apply_into(&mut probs);
        assert!(log_loss(&probs, &y).unwrap() < before);
    }

    #[test]
    fn fit_is_deterministic_and_identity_is_a_no_op() {
        let (probs, y) = synthetic(500, 2.0);
        assert_eq!(
            Calibrator::fit(&probs, &y).unwrap(),
            Calibrator::fit(&probs, &y).unwrap()
        );
        let mut p = probs.clone();
        Calibrator::identity().apply_into(&mut p);
        assert_eq!(p, probs);
        // Uniform probabilities carry no signal: every T is as good, keep 1.
        let flat = vec![1.0 / 3.0; 30];
        let labels = vec![0u8; 10];
        assert_eq!(
            Calibrator::fit(&flat, &labels).unwrap(),
            Calibrator::identity()
        );
    }

    #[test]
    fn parallel_apply_matches_serial() {
        let (probs, _) = synthetic(PAR_MIN_ROWS + 5, 1.0);
        let cal = Calibrator::new(2.5).unwrap();
        let mut big = probs.clone();
        cal.apply_into(&mut big);
        for (i, r) in probs.chunks(3).enumerate().step_by(97) {
            let mut one = r.to_vec();
            cal.apply_into(&mut one);
            assert_eq!(&big[i * 3..i * 3 + 3], &one[..]);
        }
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(matches!(
            Calibrator::fit(&[], &[]),
            Err(ModelError::Empty { .. })
        ));
        assert!(matches!(
            Calibrator::fit(&[0.2, 0.3, 0.5], &[0, 1]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            Calibrator::fit(&[0.2, 0.3, 0.5], &[3]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            Calibrator::fit(&[0.2, f32::NAN, 0.5], &[0]),
            Err(ModelError::Labels { .. })
        ));
        assert!(Calibrator::new(0.0).is_err());
        assert!(serde_json::from_str::<Calibrator>(r#"{"temperature": -1.0}"#).is_err());
        let c: Calibrator = serde_json::from_str(r#"{"temperature": 2.0}"#).unwrap();
        assert_eq!(c.temperature(), 2.0);
        assert!((log_loss(&[1.0, 0.0, 0.0], &[0]).unwrap()).abs() < 1e-12);
        assert!((log_loss(&[0.0, 0.0, 1.0], &[0]).unwrap() + LOG_LOSS_FLOOR.ln()).abs() < 1e-9);
    }

    #[test]
    fn log_loss_refuses_what_it_cannot_pair() {
        assert!(matches!(log_loss(&[], &[]), Err(ModelError::Empty { .. })));
        // two rows, one label: not a figure over the first row
        let two_rows = [0.7, 0.2, 0.1, 0.1, 0.1, 0.8];
        assert!(matches!(
            log_loss(&two_rows, &[0]),
            Err(ModelError::Labels { .. })
        ));
        // one row, two labels
        assert!(matches!(
            log_loss(&two_rows[..3], &[0, 2]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            log_loss(&[0.5, 0.5, 0.0], &[3]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            log_loss(&[0.5, f32::NAN, 0.0], &[0]),
            Err(ModelError::Labels { .. })
        ));
        let both = log_loss(&two_rows, &[0, 2]).unwrap();
        assert!((both - (-(0.7f64.ln() + 0.8f64.ln()) / 2.0)).abs() < 1e-6);
    }

    /// splitmix64 stream of uniforms in `[0, 1)` for the tests below.
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f64 {
            let mut r = crate::rng::SplitMix64(self.0);
            let u = r.unit();
            self.0 = r.0;
            u
        }
    }

    /// Rows of one tenant: true probabilities `q`, a label drawn from `q`, and the model's
    /// probabilities `softmax(k · ln q + bias)` (a known, tenant-specific miscalibration).
    fn tenant_rows(
        rng: &mut Rng,
        n: usize,
        k: f64,
        bias: [f64; 3],
        probs: &mut Vec<f32>,
        y: &mut Vec<u8>,
    ) {
        for _ in 0..n {
            let w = [
                rng.uniform() + 0.05,
                rng.uniform() + 0.05,
                2.0 * rng.uniform() + 0.05,
            ];
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
            let z: Vec<f64> = q.iter().zip(bias).map(|(v, b)| k * v.ln() + b).collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let es: f64 = e.iter().sum();
            probs.extend(e.iter().map(|v| (v / es) as f32));
        }
    }

    fn rows_sum_to_one(probs: &[f32]) -> bool {
        probs
            .chunks(3)
            .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5 && r.iter().all(|p| *p >= 0.0))
    }

    #[test]
    fn platt_corrects_per_class_miscalibration() {
        let mut rng = Rng(7);
        let (mut probs, mut y) = (Vec::new(), Vec::new());
        tenant_rows(&mut rng, 4000, 2.0, [1.0, -0.5, -0.5], &mut probs, &mut y);
        let before = log_loss(&probs, &y).unwrap();
        let cal = PlattCalibrator::fit(&probs, &y).unwrap();
        assert_eq!(cal, PlattCalibrator::fit(&probs, &y).unwrap());
        let mut p = probs.clone();
        cal.apply_into(&mut p);
        let after = log_loss(&p, &y).unwrap();
        assert!(after < before - 0.05, "{before} -> {after}");
        assert!(rows_sum_to_one(&p));
        // over-confident input: every slope below 1
        assert!(cal.slopes().iter().all(|&a| a < 0.9), "{cal:?}");
        // identity parameters leave a normalised row (almost) unchanged
        let mut r = [0.2f32, 0.3, 0.5];
        PlattCalibrator::identity().apply_into(&mut r);
        assert!((r[0] - 0.2).abs() < 1e-6 && (r[2] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn platt_keeps_absent_class_finite() {
        // class 2 never occurs: smoothed targets keep the fit finite and its output small
        let probs: Vec<f32> = (0..200)
            .flat_map(|i| {
                let t = (i % 10) as f32 / 20.0;
                [0.5 - t / 2.0, 0.5 - t / 2.0, t]
            })
            .collect();
        let y: Vec<u8> = (0..200).map(|i| (i % 2) as u8).collect();
        let cal = PlattCalibrator::fit(&probs, &y).unwrap();
        assert!(cal
            .slopes()
            .iter()
            .chain(&cal.intercepts())
            .all(|v| v.is_finite()));
        let mut p = probs.clone();
        cal.apply_into(&mut p);
        assert!(p.chunks(3).all(|r| r[2] < 0.05), "{:?}", &p[..9]);
    }

    #[test]
    fn pav_matches_hand_computed_blocks() {
        // x: 0.1 0.2 0.3 0.4 0.4 0.5 with labels 0 1 0 1 0 1:
        // PAV pools {0.2, 0.3} (mean 1/2) and the tie {0.4, 0.4} (1/2) into one block of mean
        // 1/2 over [0.2, 0.4]; blocks {0.1}: 0, {0.5}: 1 (clamped to the floor / ceiling).
        let mut pairs = vec![
            (0.4f32, true),
            (0.1, false),
            (0.3, false),
            (0.2, true),
            (0.5, true),
            (0.4, false),
        ];
        let c = IsotonicCurve::fit_pav(&mut pairs);
        let f = ISOTONIC_FLOOR;
        assert_eq!(
            c.x(),
            &[0.1f32 as f64, 0.2f32 as f64, 0.4f32 as f64, 0.5f32 as f64]
        );
        assert_eq!(c.y(), &[f, 0.5, 0.5, 1.0 - f]);
        assert_eq!(c.eval(0.0), f);
        assert_eq!(c.eval(0.3), 0.5);
        assert_eq!(c.eval(0.9), 1.0 - f);
        let mid = c.eval(0.15f32 as f64);
        assert!((mid - (f + 0.5) / 2.0).abs() < 1e-6, "{mid}");
        assert!(c.eval(f64::NAN).is_nan());
    }

    #[test]
    fn isotonic_is_monotone_and_improves_log_loss() {
        let mut rng = Rng(11);
        let (mut probs, mut y) = (Vec::new(), Vec::new());
        tenant_rows(&mut rng, 4000, 0.4, [0.0, 0.0, 0.0], &mut probs, &mut y);
        let cal = IsotonicCalibrator::fit(&probs, &y).unwrap();
        for c in cal.curves() {
            assert!(c.x().windows(2).all(|w| w[0] < w[1]));
            assert!(c.y().windows(2).all(|w| w[0] <= w[1]));
        }
        let mut p = probs.clone();
        cal.apply_into(&mut p);
        assert!(log_loss(&p, &y).unwrap() < log_loss(&probs, &y).unwrap() - 0.02);
        assert!(rows_sum_to_one(&p));
    }

    #[test]
    fn all_zero_rows_fall_back() {
        // hand-made curves mapping everything to 0
        let zero = IsotonicCurve::new(vec![0.0, 1.0], vec![0.0, 0.0]).unwrap();
        let cal = IsotonicCalibrator::new([zero.clone(), zero.clone(), zero]);
        let mut p = [0.2f32, 0.2, 0.6, f32::NAN, f32::NAN, f32::NAN];
        cal.apply_into(&mut p);
        // a usable row stays as it was; an unusable one becomes uniform
        assert_eq!(&p[..3], &[0.2, 0.2, 0.6]);
        assert!(p[3..].iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-7));
        assert!(IsotonicCurve::new(vec![0.5, 0.5], vec![0.1, 0.2]).is_err());
        assert!(IsotonicCurve::new(vec![0.1, 0.5], vec![0.3, 0.2]).is_err());
        assert!(IsotonicCurve::new(vec![], vec![]).is_err());
        assert!(serde_json::from_str::<IsotonicCurve>(r#"{"x":[0.1],"y":[1.5]}"#).is_err());
    }

    #[test]
    fn fit_best_cross_fits_and_reports_every_candidate() {
        let mut rng = Rng(3);
        let (mut probs, mut y) = (Vec::new(), Vec::new());
        tenant_rows(&mut rng, 3000, 2.5, [0.0, 0.0, 0.0], &mut probs, &mut y);
        let groups: Vec<u64> = (0..y.len() as u64).map(|i| i / 4).collect();
        let params = CalibrationParams::default().check().unwrap();
        let (cal, report) = params.fit_best(&probs, &y, &groups).unwrap();
        assert_eq!(report.candidates.len(), 4);
        assert_eq!(report.folds, 5);
        assert_eq!(report.groups, 750);
        assert_eq!(cal.method(), report.chosen);
        let identity = report.log_loss_of(CalibrationMethod::Identity).unwrap();
        let chosen = report.log_loss_of(report.chosen).unwrap();
        assert!(report.chosen != CalibrationMethod::Identity);
        assert!(chosen < identity - 0.05, "{report:?}");
        assert!(report.candidates.iter().all(|c| chosen <= c.log_loss));
        println!("fit_best: {report:?}");
        // deterministic, and the report serialises
        let (cal2, report2) = params.fit_best(&probs, &y, &groups).unwrap();
        assert_eq!((cal2, &report2), (cal.clone(), &report));
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            serde_json::from_str::<CalibrationReport>(&json).unwrap(),
            report
        );
        // restricted candidates
        let temp_only = CalibrationParams::default()
            .methods(&[
                CalibrationMethod::Temperature,
                CalibrationMethod::Temperature,
            ])
            .check()
            .unwrap();
        let (c, r) = temp_only.fit_best(&probs, &y, &groups).unwrap();
        assert_eq!(r.candidates.len(), 1);
        assert_eq!(c.method(), CalibrationMethod::Temperature);
    }

    #[test]
    fn group_folds_keep_groups_together() {
        let groups: Vec<u64> = (0..200u64).map(|i| (i * 7919) % 37).collect();
        let f = GroupFolds::new(&groups, 5, 1).unwrap();
        assert_eq!((f.k, f.n_groups), (5, 37));
        for (i, gi) in groups.iter().enumerate() {
            for (j, gj) in groups.iter().enumerate() {
                if gi == gj {
                    assert_eq!(f.fold_of_row[i], f.fold_of_row[j]);
                }
            }
        }
        let mut sizes = [0usize; 5];
        f.fold_of_row.iter().for_each(|&k| sizes[k] += 1);
        assert!(sizes.iter().all(|&s| (30..=50).contains(&s)), "{sizes:?}");
        // fewer groups than folds: one fold per group; one group: error
        assert_eq!(GroupFolds::new(&[1, 2, 1, 2], 5, 0).unwrap().k, 2);
        assert!(matches!(
            GroupFolds::new(&[4, 4, 4], 5, 0),
            Err(ModelError::InvalidParam { name: "groups", .. })
        ));
    }

    #[test]
    fn bad_calibration_params_and_inputs_are_rejected() {
        let bad = |p: CalibrationParams| p.check().unwrap_err();
        assert!(matches!(
            bad(CalibrationParams::default().folds(1)),
            ModelError::InvalidParam { name: "folds", .. }
        ));
        assert!(matches!(
            bad(CalibrationParams::default().folds(21)),
            ModelError::InvalidParam { name: "folds", .. }
        ));
        assert!(matches!(
            bad(CalibrationParams::default().methods(&[])),
            ModelError::InvalidParam {
                name: "methods",
                ..
            }
        ));
        assert!(matches!(
            bad(CalibrationParams::default().min_verdicts(0)),
            ModelError::InvalidParam {
                name: "min_verdicts",
                ..
            }
        ));
        for m in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                bad(CalibrationParams::default().shrinkage(m)),
                ModelError::InvalidParam {
                    name: "shrinkage",
                    ..
                }
            ));
        }
        let p = CalibrationParams::default().check().unwrap();
        let probs = [0.2f32, 0.3, 0.5, 0.6, 0.2, 0.2];
        assert!(matches!(
            p.fit_best(&[], &[], &[]),
            Err(ModelError::Empty { .. })
        ));
        assert!(matches!(
            p.fit_best(&probs, &[0, 1], &[1]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            p.fit_best(&probs, &[0, 3], &[1, 2]),
            Err(ModelError::Labels { .. })
        ));
        assert!(matches!(
            p.fit_per_tenant(&probs, &[0, 1], &[1, 2], &[9]),
            Err(ModelError::Labels { .. })
        ));
        assert!(PlattCalibrator::new([1.0, f64::NAN, 1.0], [0.0; 3]).is_err());
        assert!(PlattCalibrator::fit(&probs, &[0]).is_err());
        assert!(IsotonicCalibrator::fit(&probs[..3], &[5]).is_err());
    }

    #[test]
    fn calibrators_round_trip_through_serde() {
        let mut rng = Rng(5);
        let (mut probs, mut y) = (Vec::new(), Vec::new());
        tenant_rows(&mut rng, 600, 1.7, [0.3, 0.0, -0.3], &mut probs, &mut y);
        for m in CalibrationMethod::ALL {
            let cal = ProbabilityCalibrator::fit(m, &probs, &y).unwrap();
            let json = serde_json::to_string(&cal).unwrap();
            assert!(
                json.contains(&format!(r#""method":"{}""#, m.name())),
                "{json}"
            );
            let back: ProbabilityCalibrator = serde_json::from_str(&json).unwrap();
            assert_eq!(back, cal);
            let (mut a, mut b) = (probs.clone(), probs.clone());
            cal.apply_into(&mut a);
            back.apply_into(&mut b);
            assert_eq!(a, b);
        }
        assert!(serde_json::from_str::<ProbabilityCalibrator>(
            r#"{"method":"temperature","temperature":0.0}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ProbabilityCalibrator>(
            r#"{"method":"platt","a":[1,1,1],"b":[0,0,1e999]}"#
        )
        .is_err());
    }

    #[test]
    fn parallel_apply_matches_serial_for_every_method() {
        let mut rng = Rng(9);
        let (mut probs, mut y) = (Vec::new(), Vec::new());
        tenant_rows(
            &mut rng,
            PAR_MIN_ROWS + 7,
            1.5,
            [0.2, 0.0, 0.0],
            &mut probs,
            &mut y,
        );
        for m in CalibrationMethod::ALL {
            let cal = ProbabilityCalibrator::fit(m, &probs[..1500], &y[..500]).unwrap();
            let mut big = probs.clone();
            cal.apply_into(&mut big);
            for (i, r) in probs.chunks(3).enumerate().step_by(101) {
                let mut one = r.to_vec();
                cal.apply_into(&mut one);
                assert_eq!(&big[i * 3..i * 3 + 3], &one[..], "{m:?}");
            }
        }
    }

    /// Seeded tenants with different known distortions; a 60-row tenant just above the floor
    /// and a 10-row tenant below it.
    fn tenant_data(seed: u64, scale: usize) -> (Vec<f32>, Vec<u8>, Vec<u64>, Vec<u64>) {
        let specs: [(u64, usize, f64, [f64; 3]); 8] = [
            (10, 1500, 2.5, [0.0, 0.0, 0.0]),
            (11, 1500, 0.6, [0.0, 0.0, 0.0]),
            (12, 1500, 1.0, [1.0, 0.0, -1.0]),
            (13, 1500, 1.0, [-1.0, 0.5, 0.5]),
            (14, 1500, 1.8, [0.0, -1.0, 1.0]),
            (15, 1500, 1.0, [0.0, 0.0, 0.0]),
            (16, 60, 2.5, [1.0, 0.0, -1.0]),
            (17, 10, 2.5, [1.0, 0.0, -1.0]),
        ];
        let mut rng = Rng(seed);
        let (mut probs, mut y, mut groups, mut tenant) = (vec![], vec![], vec![], vec![]);
        for (t, n, k, bias) in specs {
            let n = n * scale;
            let start = y.len();
            tenant_rows(&mut rng, n, k, bias, &mut probs, &mut y);
            groups.extend((0..n as u64).map(|i| (t << 32) | (i / 3)));
            tenant.extend(std::iter::repeat_n(t, y.len() - start));
        }
        (probs, y, groups, tenant)
    }

    #[test]
    fn per_tenant_calibration_beats_global_and_shrinks_small_tenants() {
        let (probs, y, groups, tenant) = tenant_data(21, 1);
        let params = CalibrationParams::default().check().unwrap();
        let (cal, report) = params.fit_per_tenant(&probs, &y, &groups, &tenant).unwrap();
        assert_eq!(report.tenants, 8);
        assert_eq!(report.tenants_adjusted, 7); // all but the 10-row tenant
        assert!(cal.tenant(17).is_none());
        let small = cal.tenant(16).unwrap();
        assert_eq!(small.rows, 60);
        assert!((small.weight - 60.0 / 160.0).abs() < 1e-12);
        // cross-fitted estimate on the fitting rows
        assert!(
            report.log_loss_tenant < report.log_loss_global - 0.01,
            "{report:?}"
        );

        // fresh rows from the same tenants
        let (test_p, test_y, _, test_t) = tenant_data(22, 1);
        let mut global = test_p.clone();
        cal.global().apply_into(&mut global);
        let mut per_tenant = test_p.clone();
        cal.apply_into(&test_t, &mut per_tenant).unwrap();
        assert!(rows_sum_to_one(&per_tenant));
        let (lg, lt) = (
            log_loss(&global, &test_y).unwrap(),
            log_loss(&per_tenant, &test_y).unwrap(),
        );
        println!(
            "held-out log-loss: raw {:.4}, global {lg:.4}, per-tenant {lt:.4}; {report:?}",
            log_loss(&test_p, &test_y).unwrap()
        );
        assert!(lt < lg - 0.02, "global {lg} vs per-tenant {lt}");

        // the 10-row tenant gets exactly the global calibration; the 60-row one keeps only
        // 60 / 160 of its own adjustment: it moves far less than without shrinkage (m = 0)
        let (unshrunk, _) = CalibrationParams::default()
            .shrinkage(0.0)
            .check()
            .unwrap()
            .fit_per_tenant(&probs, &y, &groups, &tenant)
            .unwrap();
        assert_eq!(unshrunk.global(), cal.global());
        let mut no_shrink = test_p.clone();
        unshrunk.apply_into(&test_t, &mut no_shrink).unwrap();
        let mean_shift = |adjusted: &[f32], t: u64| {
            let rows: Vec<usize> = (0..test_t.len()).filter(|&i| test_t[i] == t).collect();
            let total: f64 = rows
                .iter()
                .flat_map(|&i| (0..3).map(move |c| i * 3 + c))
                .map(|k| (adjusted[k] - global[k]).abs() as f64)
                .sum();
            total / (rows.len() * 3) as f64
        };
        assert_eq!(mean_shift(&per_tenant, 17), 0.0);
        assert_eq!(mean_shift(&no_shrink, 17), 0.0);
        let (shrunk_small, free_small) = (mean_shift(&per_tenant, 16), mean_shift(&no_shrink, 16));
        let (shrunk_big, free_big) = (mean_shift(&per_tenant, 10), mean_shift(&no_shrink, 10));
        println!(
            "mean |p - p_global|: 60-row tenant {shrunk_small:.4} (m = 0: {free_small:.4}), \
             1500-row tenant {shrunk_big:.4} (m = 0: {free_big:.4})"
        );
        assert!(
            shrunk_small < 0.6 * free_small,
            "{shrunk_small} vs {free_small}"
        );
        // a large tenant keeps most of its adjustment (1500 / 1600)
        assert!(shrunk_big > 0.8 * free_big, "{shrunk_big} vs {free_big}");

        // one row at a time gives the same numbers
        let mut row = test_p[..3].to_vec();
        cal.apply_row(test_t[0], &mut row);
        assert_eq!(&row[..], &per_tenant[..3]);
        assert!(matches!(
            cal.apply_into(&test_t[1..], &mut test_p.clone()),
            Err(ModelError::OutputLength { .. })
        ));
    }

    #[test]
    fn tenant_calibration_round_trips_and_is_validated() {
        let (probs, y, groups, tenant) = tenant_data(31, 1);
        let params = CalibrationParams::default().check().unwrap();
        let (cal, _) = params.fit_per_tenant(&probs, &y, &groups, &tenant).unwrap();
        let (again, _) = params.fit_per_tenant(&probs, &y, &groups, &tenant).unwrap();
        assert_eq!(cal, again);
        let json = serde_json::to_string(&cal).unwrap();
        let back: TenantCalibration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cal);
        let (mut a, mut b) = (probs.clone(), probs.clone());
        cal.apply_into(&tenant, &mut a).unwrap();
        back.apply_into(&tenant, &mut b).unwrap();
        assert_eq!(a, b);
        // unsorted tenants, weight out of range, bad shrinkage: rejected
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let ts = v["tenants"].as_array_mut().unwrap();
        ts.swap(0, 1);
        assert!(serde_json::from_value::<TenantCalibration>(v.clone()).is_err());
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["tenants"][0]["weight"] = serde_json::json!(1.5);
        assert!(serde_json::from_value::<TenantCalibration>(v).is_err());
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["shrinkage"] = serde_json::json!(-3.0);
        assert!(serde_json::from_value::<TenantCalibration>(v).is_err());
        // global only: identical to the global calibrator
        let g = TenantCalibration::global_only(cal.global().clone());
        let mut c = probs.clone();
        g.apply_into(&tenant, &mut c).unwrap();
        let mut d = probs.clone();
        cal.global().apply_into(&mut d);
        assert_eq!(c, d);
    }

    #[test]
    fn reliability_curve_and_ece() {
        // hand example: bins of width 0.25
        let p = [0.1f32, 0.2, 0.3, 0.9, 1.0, 1.2];
        let pos = [false, true, true, true, true, false];
        let curve = reliability_curve(&p, &pos, 4).unwrap();
        assert_eq!(curve.len(), 3); // [0.5, 0.75) is empty and omitted
        assert_eq!((curve[0].lo, curve[0].hi, curve[0].count), (0.0, 0.25, 2));
        assert!((curve[0].mean_predicted - 0.15).abs() < 1e-7);
        assert_eq!(curve[0].observed_rate, 0.5);
        assert_eq!((curve[1].lo, curve[1].count), (0.25, 1));
        assert_eq!((curve[2].lo, curve[2].hi, curve[2].count), (0.75, 1.0, 3));
        let e = ece(&p, &pos, 4).unwrap();
        let want = (2.0 * (0.15f64 - 0.5).abs()
            + (0.3f32 as f64 - 1.0).abs()
            + 3.0 * ((0.9f32 as f64 + 1.0 + 1.2f32 as f64) / 3.0 - 2.0 / 3.0).abs())
            / 6.0;
        assert!((e - want).abs() < 1e-6, "{e} vs {want}");
        let json = serde_json::to_string(&curve).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<ReliabilityBin>>(&json).unwrap(),
            curve
        );

        // calibration lowers ECE on miscalibrated data
        let mut rng = Rng(13);
        let (mut probs, mut y) = (Vec::new(), Vec::new());
        tenant_rows(&mut rng, 5000, 2.5, [0.0, 0.0, 0.0], &mut probs, &mut y);
        let before = curve_ece(&class_reliability_curve(&probs, &y, 0, 10).unwrap());
        let cal = ProbabilityCalibrator::fit(CalibrationMethod::Platt, &probs, &y).unwrap();
        cal.apply_into(&mut probs);
        let after = curve_ece(&class_reliability_curve(&probs, &y, 0, 10).unwrap());
        println!("ECE(TP) before {before:.4}, after Platt {after:.4}");
        assert!(after < 0.5 * before, "{before} -> {after}");

        assert!(matches!(
            reliability_curve(&p, &pos, 0),
            Err(ModelError::InvalidParam { name: "bins", .. })
        ));
        assert!(matches!(
            reliability_curve(&[], &[], 5),
            Err(ModelError::Empty { .. })
        ));
        assert!(reliability_curve(&p, &pos[..2], 5).is_err());
        assert!(reliability_curve(&[f32::NAN], &[true], 5).is_err());
        assert!(class_reliability_curve(&probs, &y, 3, 10).is_err());
        assert!(curve_ece(&[]).is_nan());
    }
}
