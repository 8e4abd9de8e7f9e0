//! The decision rule: which grade to predict from calibrated probabilities.
//!
//! Probabilities stay calibrated; the predicted grade is `argmax_c w_c · p_c`. The weights are
//! chosen on out-of-fold training predictions to maximise macro-F1 (GUIDE's metric, which
//! weighs the rarer grades as much as the common one), over a log-spaced grid `w_TP = 1`,
//! `w_BP, w_FP ∈ 2^{-1.5 … 1.5}`; identity weights are kept unless the gain exceeds 0.002
//! (so noise does not move the rule). This is the "threshold moving" of cost-sensitive
//! classification (Elkan 2001, "The foundations of cost-sensitive learning").

use crate::eval::{self, EvalError};
use crate::models::N_CLASSES;
use serde::{Deserialize, Serialize};

/// Per-grade weights of the decision rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecisionRule {
    /// multiplies P(TP), P(BP), P(FP) before the argmax
    pub weights: [f32; 3],
}

impl Default for DecisionRule {
    fn default() -> Self {
        Self { weights: [1.0; 3] }
    }
}

impl DecisionRule {
    /// The class id chosen for one probability row (ties → lower class id).
    ///
    /// ```
    /// use threatrank::train::DecisionRule;
    /// let r = DecisionRule { weights: [1.0, 1.0, 2.0] };
    /// assert_eq!(r.decide(&[0.4, 0.35, 0.25]), 2);
    /// assert_eq!(DecisionRule::default().decide(&[0.4, 0.35, 0.25]), 0);
    /// ```
    pub fn decide(&self, p: &[f32]) -> u8 {
        let mut best = 0;
        for c in 1..N_CLASSES {
            if p[c] * self.weights[c] > p[best] * self.weights[best] {
                best = c;
            }
        }
        best as u8
    }

    /// Decisions for a row-major probability buffer.
    pub fn decide_all(&self, probs: &[f32]) -> Vec<u8> {
        probs
            .chunks_exact(N_CLASSES)
            .map(|p| self.decide(p))
            .collect()
    }

    /// Fits the weights on out-of-fold probabilities `probs` with labels `y`.
    pub fn fit(probs: &[f32], y: &[u8]) -> Result<DecisionRule, EvalError> {
        let score = |r: &DecisionRule| -> Result<f64, EvalError> {
            Ok(eval::classification_report(y, &r.decide_all(probs), None)?.macro_f1)
        };
        let identity = DecisionRule::default();
        let base = score(&identity)?;
        let grid: Vec<f32> = (-6..=6).map(|k| 2f32.powf(k as f32 * 0.25)).collect();
        let mut best = (base, identity);
        for &wb in &grid {
            for &wf in &grid {
                let r = DecisionRule {
                    weights: [1.0, wb, wf],
                };
                let s = score(&r)?;
                if s > best.0 + 1e-12 {
                    best = (s, r);
                }
            }
        }
        Ok(if best.0 > base + 0.002 {
            best.1
        } else {
            identity
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_moves_toward_an_underpredicted_class() {
        // FP rows whose FP probability is systematically second: identity misses them all.
        let mut probs = Vec::new();
        let mut y = Vec::new();
        for i in 0..90 {
            let c = (i % 3) as u8;
            y.push(c);
            probs.extend_from_slice(match c {
                0 => &[0.7, 0.2, 0.1],
                1 => &[0.1, 0.7, 0.2],
                _ => &[0.1, 0.5, 0.4],
            });
        }
        let identity = DecisionRule::default();
        assert!(identity.decide_all(&probs).iter().all(|&c| c != 2));
        let r = DecisionRule::fit(&probs, &y).unwrap();
        assert!(r.weights[2] / r.weights[1] > 1.25, "{r:?}");
        let pred = r.decide_all(&probs);
        assert!(pred.iter().zip(&y).all(|(p, t)| p == t), "{pred:?}");
    }

    #[test]
    fn perfect_probabilities_keep_identity() {
        let probs = [0.9, 0.05, 0.05, 0.05, 0.9, 0.05, 0.05, 0.05, 0.9];
        let r = DecisionRule::fit(&probs, &[0, 1, 2]).unwrap();
        assert_eq!(r, DecisionRule::default());
    }
}

/// Decision rules for the two regimes a scored incident can be in: its tenant has graded
/// history in the artifact, or it has none (a tenant never seen in training). The second is
/// tuned on the out-of-fold rows whose tenant had no other training incident, which behave like
/// unseen tenants; both are chosen by the feature `tenant:log_support`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecisionRules {
    /// for tenants with graded history
    pub seen: DecisionRule,
    /// for tenants without
    pub unseen: DecisionRule,
    /// column of `tenant:log_support` in the feature matrix
    pub support_column: usize,
}

/// Rows of `x` in a regime: `seen` = the tenant has graded history (`tenant:log_support` at
/// `support_column` is positive).
pub(super) fn regime_rows(
    x: &crate::matrix::FeatureMatrix,
    support_column: usize,
    seen: bool,
) -> Vec<usize> {
    (0..x.n_rows())
        .filter(|&i| (x.get(i, support_column) > 0.0) == seen)
        .collect()
}

/// Fewest out-of-fold rows of a regime for its own rule; below it, the other rule serves.
pub const MIN_REGIME_ROWS: usize = 100;

impl DecisionRules {
    /// One rule for everyone.
    pub fn single(rule: DecisionRule, support_column: usize) -> Self {
        Self {
            seen: rule,
            unseen: rule,
            support_column,
        }
    }

    /// The rule for a feature row.
    pub fn rule_for(&self, x_row: &[f32]) -> &DecisionRule {
        match x_row.get(self.support_column) {
            Some(v) if *v > 0.0 => &self.seen,
            _ => &self.unseen,
        }
    }

    /// Decisions for rows of `x` with probabilities `probs`.
    pub fn decide_all(&self, x: &crate::matrix::FeatureMatrix, probs: &[f32]) -> Vec<u8> {
        x.rows()
            .zip(probs.chunks_exact(N_CLASSES))
            .map(|(row, p)| self.rule_for(row).decide(p))
            .collect()
    }

    /// Fits both rules on out-of-fold probabilities (rows of `x` give the regime).
    pub fn fit(
        x: &crate::matrix::FeatureMatrix,
        probs: &[f32],
        y: &[u8],
        support_column: usize,
    ) -> Result<DecisionRules, EvalError> {
        let all = DecisionRule::fit(probs, y)?;
        let mut rules = Self::single(all, support_column);
        for seen in [true, false] {
            let rows = regime_rows(x, support_column, seen);
            if rows.len() < MIN_REGIME_ROWS {
                continue;
            }
            let p = super::prob_rows(probs, &rows);
            let t: Vec<u8> = rows.iter().map(|&i| y[i]).collect();
            let rule = DecisionRule::fit(&p, &t)?;
            if seen {
                rules.seen = rule;
            } else {
                rules.unseen = rule;
            }
        }
        Ok(rules)
    }
}
