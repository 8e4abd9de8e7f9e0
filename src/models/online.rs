//! Online grader: gradient-boosted trees that take new analyst verdicts in place.
//!
//! Sits in `models`, beside `gbdt.rs`. hessboost's in-place updates (`OnlineModel`, after Lin
//! et al., *Online GBDT: in-place updates for adding/deleting data*) add rows to a trained model
//! by re-ranking each node's split on updated histograms and regrowing only the subtrees whose
//! split is no longer near the best, instead of retraining. They support single-output
//! objectives only, so this grader is three one-vs-rest `binary:logistic` GBDTs (TP, BP, FP);
//! its probabilities are the three sigmoids normalized to sum 1. Updating also needs no row or
//! column sampling (a retrain would draw different samples), so both are 1 here.
//!
//! The approximate mode keeps the original training's histogram bins and refuses an added value
//! beyond the top bin: added rows are clamped to each feature's training maximum (the top bin
//! holds it), which is what the model would have routed them as anyway.
//!
//! The softprob GBDT ([`super::FittedGbdt`]) remains the default grader; this one is for
//! pipelines that fold in verdicts daily between full retrains, and for `threatrank eval
//! --online`, which measures what that is worth.

use super::{check_fit_input, check_score_input, GbdtParams, ModelError, N_CLASSES};
use crate::matrix::FeatureMatrix;
use hessboost::prelude::{DMatrix, Iterations, Objective, RegLoss, TrainingParams};
use hessboost::training::online::{OnlineModel, OnlineParams};

fn learner_err(reason: impl std::fmt::Display) -> ModelError {
    ModelError::Learner {
        learner: "hessboost online gbdt",
        reason: reason.to_string(),
    }
}

/// Largest update state [`OnlineGbdt::train`] accepts (see [`OnlineGbdt::state_bytes`]).
pub const MAX_STATE_BYTES: u64 = 4 << 30;

/// 1.0 where the grade is `class`, else 0.0: the labels of one grade's binary model.
fn one_vs_rest(y: &[u8], class: usize) -> Vec<f32> {
    y.iter()
        .map(|&g| f32::from(u8::from(g as usize == class)))
        .collect()
}

/// What one [`OnlineGbdt::update`] did, summed over the three grade models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// rows added
    pub rows_added: usize,
    /// tree nodes whose split was kept
    pub nodes_kept: usize,
    /// subtrees regrown
    pub subtrees_regrown: usize,
    /// added values clamped to a feature's training maximum
    pub values_clamped: usize,
}

/// Three one-vs-rest GBDTs with in-place update state.
#[derive(Debug, Clone)]
pub struct OnlineGbdt {
    models: Vec<OnlineModel>,
    col_max: Vec<f32>,
    n_features: usize,
    rounds: usize,
}

impl OnlineGbdt {
    /// Trains `rounds` rounds per grade with `params`' depth, learning rate, regularization and
    /// seed (sampling and early stopping do not apply: see the module docs). Keeps the training
    /// rows, as in-place updates need them.
    pub fn train(
        params: &GbdtParams,
        rounds: usize,
        x: &FeatureMatrix,
        y: &[u8],
    ) -> Result<Self, ModelError> {
        check_fit_input(x, y)?;
        params.check()?;
        if rounds == 0 {
            return Err(ModelError::InvalidParam {
                name: "rounds",
                reason: "must be at least 1".into(),
            });
        }
        let state = Self::state_bytes(params, rounds, x.n_rows(), x.n_cols());
        if state > MAX_STATE_BYTES {
            return Err(ModelError::InvalidParam {
                name: "rounds",
                reason: format!(
                    "the in-place update state would need about {:.1} GiB (limit {} GiB): \
                     lower max_depth ({}), max_bin ({}) or rounds ({rounds})",
                    state as f64 / f64::from(1u32 << 30),
                    MAX_STATE_BYTES >> 30,
                    params.get_max_depth(),
                    params.get_max_bin()
                ),
            });
        }
        let learner = TrainingParams::builder()
            .objective(Objective::BinaryLogistic(RegLoss::default()))
            .eta(params.get_learning_rate())
            .max_depth(params.get_max_depth())
            .min_child_weight(params.get_min_child_weight())
            .lambda(params.get_lambda())
            .alpha(params.get_alpha())
            .max_bin(params.get_max_bin())
            .seed(params.get_seed())
            .build()
            .map_err(learner_err)?;
        let mut col_max = vec![f32::NEG_INFINITY; x.n_cols()];
        for row in x.rows() {
            for (m, &v) in col_max.iter_mut().zip(row) {
                *m = m.max(v);
            }
        }
        let models = (0..N_CLASSES)
            .map(|c| {
                let labels = one_vs_rest(y, c);
                let data = DMatrix::from_dense(x.as_slice(), x.n_rows(), x.n_cols())
                    .and_then(|d| d.with_labels(&labels))
                    .map_err(learner_err)?;
                OnlineModel::train(&learner, &data, rounds, OnlineParams::default())
                    .map_err(learner_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            models,
            col_max,
            n_features: x.n_cols(),
            rounds,
        })
    }

    /// Folds new verdicts (`x` rows graded `y`) into the three models in place, returning the
    /// updated grader. It consumes `self`: the update state is large (a gradient histogram per
    /// tree node), so it is not copied for a rollback; a caller that wants one clones first.
    /// Input errors are caught before anything changes.
    pub fn update(
        mut self,
        x: &FeatureMatrix,
        y: &[u8],
    ) -> Result<(Self, UpdateStats), ModelError> {
        check_fit_input(x, y)?;
        if x.n_cols() != self.n_features {
            return Err(ModelError::FeatureCount {
                expected: self.n_features,
                got: x.n_cols(),
            });
        }
        let mut stats = UpdateStats {
            rows_added: x.n_rows(),
            ..UpdateStats::default()
        };
        let mut values = x.as_slice().to_vec();
        for row in values.chunks_exact_mut(self.n_features) {
            for (v, &m) in row.iter_mut().zip(&self.col_max) {
                if *v > m {
                    *v = m;
                    stats.values_clamped += 1;
                }
            }
        }
        for (c, model) in self.models.iter_mut().enumerate() {
            let labels = one_vs_rest(y, c);
            let rows = DMatrix::from_dense(&values, x.n_rows(), self.n_features)
                .and_then(|d| d.with_labels(&labels))
                .map_err(learner_err)?;
            let report = model.update(Some(&rows), &[]).map_err(learner_err)?;
            stats.nodes_kept += report.nodes_kept;
            stats.subtrees_regrown += report.subtrees_regrown;
        }
        Ok((self, stats))
    }

    /// Upper estimate of the update state hessboost keeps (its documented cost): per tree, one
    /// gradient pair per row and one histogram of `f64` pairs over all bins per internal node,
    /// for the three grade models; an update briefly holds a second copy.
    pub fn state_bytes(params: &GbdtParams, rounds: usize, rows: usize, cols: usize) -> u64 {
        let internal = (1u64 << params.get_max_depth().min(30)) - 1;
        let bins = (cols * params.get_max_bin()) as u64;
        let per_tree = 8 * rows as u64 + 16 * bins * internal;
        N_CLASSES as u64 * rounds as u64 * per_tree
    }

    /// Rounds per grade model.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Training rows held (initial plus added).
    pub fn n_rows(&self) -> usize {
        self.models.first().map_or(0, |m| m.data().n_rows())
    }

    /// Width of the matrices it scores.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Class probabilities, row-major (`N_CLASSES` per row): the three one-vs-rest
    /// probabilities normalized to sum 1.
    pub fn score_into(&self, x: &FeatureMatrix, out: &mut [f32]) -> Result<(), ModelError> {
        check_score_input(self.n_features, x, out.len(), N_CLASSES)?;
        if x.n_rows() == 0 {
            return Ok(());
        }
        for (c, m) in self.models.iter().enumerate() {
            let p = m
                .model()
                .predict_rows(x.as_slice(), Iterations::Best)
                .map_err(learner_err)?;
            for (o, &v) in out.chunks_exact_mut(N_CLASSES).zip(p.as_slice()) {
                o[c] = v;
            }
        }
        for o in out.chunks_exact_mut(N_CLASSES) {
            let sum: f32 = o.iter().sum();
            if sum > 0.0 && sum.is_finite() {
                o.iter_mut().for_each(|v| *v /= sum);
            } else {
                o.fill(1.0 / N_CLASSES as f32);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::conformance::{synthetic, ROWS};

    fn accuracy(m: &OnlineGbdt, x: &FeatureMatrix, y: &[u8]) -> f64 {
        let mut p = vec![0.0; x.n_rows() * N_CLASSES];
        m.score_into(x, &mut p).unwrap();
        let right = p
            .chunks_exact(N_CLASSES)
            .zip(y)
            .filter(|(r, &c)| {
                let best = (0..N_CLASSES)
                    .max_by(|&a, &b| r[a].total_cmp(&r[b]))
                    .unwrap();
                best == c as usize
            })
            .count();
        right as f64 / y.len() as f64
    }

    /// Trained on few rows, updated with many: accuracy on fresh rows rises, rows are kept,
    /// out-of-range values are clamped instead of refused, and probabilities sum to 1.
    #[test]
    fn updates_add_rows_and_help() {
        let p = GbdtParams::default().max_depth(3);
        let (x0, y0) = synthetic(11, 60);
        let (x1, y1) = synthetic(12, ROWS * 3);
        let (xt, yt) = synthetic(13, ROWS * 2);
        let m = OnlineGbdt::train(&p, 30, &x0, &y0).unwrap();
        let before = accuracy(&m, &xt, &yt);
        let mut big = x1.clone();
        // one value far beyond the training range
        let mut row = big.row(0).to_vec();
        row[0] = 1e6;
        big.push_row(&row).unwrap();
        let mut y1b = y1.clone();
        y1b.push(y1[0]);
        let (m, stats) = m.update(&big, &y1b).unwrap();
        assert_eq!(stats.rows_added, big.n_rows());
        assert!(stats.values_clamped >= 1);
        assert_eq!(m.n_rows(), x0.n_rows() + big.n_rows());
        let after = accuracy(&m, &xt, &yt);
        assert!(after > before + 0.03, "accuracy {before} → {after}");
        let mut probs = vec![0.0; xt.n_rows() * N_CLASSES];
        m.score_into(&xt, &mut probs).unwrap();
        for r in probs.chunks_exact(N_CLASSES) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let p = GbdtParams::default();
        let (x, y) = synthetic(11, 60);
        assert!(OnlineGbdt::train(&p, 0, &x, &y).is_err());
        // Depth 16 on 256 bins would need terabytes of update state: refused up front.
        let deep = GbdtParams::default().max_depth(16);
        assert!(OnlineGbdt::state_bytes(&deep, 100, 60, 6) > MAX_STATE_BYTES);
        assert!(matches!(
            OnlineGbdt::train(&deep, 100, &x, &y),
            Err(ModelError::InvalidParam { name: "rounds", .. })
        ));
        let m = OnlineGbdt::train(&p, 5, &x, &y).unwrap();
        let narrow = FeatureMatrix::from_vec(1, 2, vec![0.0, 1.0]).unwrap();
        assert!(matches!(
            m.clone().update(&narrow, &[0]),
            Err(ModelError::FeatureCount { .. })
        ));
        assert!(m.update(&x, &y[1..]).is_err());
    }
}
