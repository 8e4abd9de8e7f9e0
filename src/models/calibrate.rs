//! Probability calibration by temperature scaling, applied after any [`super::Scorer`].
//!
//! Sits in `models`, after scoring and before `rank` / `eval`: a grader's probabilities are
//! often over- or under-confident, which distorts the ranking by confidence. One scalar
//! temperature `T`, fitted on held-out probabilities by minimising multiclass log-loss, rescales
//! them: `p'_c = softmax_c(ln(max(p_c, 1e-6)) / T)`. `T > 1` softens, `T < 1` sharpens; the
//! arg-max class never changes. The search (golden section on `ln T` over `[0.05, 20]`, fixed
//! tolerance) is deterministic.

use super::{ModelError, N_CLASSES};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Smallest temperature [`Calibrator::fit`] may choose.
pub const MIN_TEMPERATURE: f32 = 0.05;
/// Largest temperature [`Calibrator::fit`] may choose.
pub const MAX_TEMPERATURE: f32 = 20.0;
/// Floor on probabilities before taking their logarithm in [`Calibrator::apply_into`].
pub const PROB_FLOOR: f64 = 1e-6;
/// Floor on the true-class probability in [`log_loss`].
pub const LOG_LOSS_FLOOR: f64 = 1e-15;

/// Golden-section stops when the bracket on `ln T` is narrower than this.
const LN_T_TOLERANCE: f64 = 1e-7;
/// Rows at or above which [`Calibrator::apply_into`] runs on rayon threads.
const PAR_MIN_ROWS: usize = 2048;
/// Rows per parallel chunk.
const PAR_CHUNK_ROWS: usize = 1024;

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
        if y.is_empty() {
            return Err(ModelError::Empty {
                what: "no probabilities to calibrate on",
            });
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
        if probs.len() / N_CLASSES >= PAR_MIN_ROWS {
            probs
                .par_chunks_mut(N_CLASSES * PAR_CHUNK_ROWS)
                .for_each(|chunk| chunk.chunks_exact_mut(N_CLASSES).for_each(row));
        } else {
            probs.chunks_exact_mut(N_CLASSES).for_each(row);
        }
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
/// Rows are paired with labels up to the shorter of the two; a label out of range counts as a
/// probability of 0 (the floor). Returns NaN when no row is paired.
pub fn log_loss(probs: &[f32], y: &[u8]) -> f64 {
    let mut total = 0.0;
    let mut n = 0usize;
    for (r, &c) in probs.chunks_exact(N_CLASSES).zip(y) {
        let p = r.get(c as usize).map_or(0.0, |&p| p as f64);
        total -= if p > LOG_LOSS_FLOOR {
            p
        } else {
            LOG_LOSS_FLOOR
        }
        .ln();
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        total / n as f64
    }
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
        let before = log_loss(&probs, &y);
        let cal = Calibrator::fit(&probs, &y).unwrap();
        assert!(cal.temperature() > 1.5, "T = {}", cal.temperature());
        cal.apply_into(&mut probs);
        let after = log_loss(&probs, &y);
        assert!(after < before - 0.05, "{before} -> {after}");
        assert!(probs
            .chunks(3)
            .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    }

    #[test]
    fn under_confident_probabilities_are_sharpened() {
        let (mut probs, y) = synthetic(2000, 0.3);
        let before = log_loss(&probs, &y);
        let cal = Calibrator::fit(&probs, &y).unwrap();
        assert!(cal.temperature() < 0.7, "T = {}", cal.temperature());
        cal.apply_into(&mut probs);
        assert!(log_loss(&probs, &y) < before);
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
        assert!(log_loss(&[], &[]).is_nan());
        assert!((log_loss(&[1.0, 0.0, 0.0], &[0])).abs() < 1e-12);
        assert!((log_loss(&[0.0, 0.0, 1.0], &[0]) + LOG_LOSS_FLOOR.ln()).abs() < 1e-9);
    }
}
