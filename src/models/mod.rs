//! Models: multiclass graders over a [`FeatureMatrix`] (TP / BP / FP), behind one interface.
//!
//! Sits after `features` and before `rank`. This module never sees an alert: it is tested and
//! benchmarked on synthetic matrices. Third-party learners (linfa, smartcore) are used only to
//! *fit*; the fitted parameters are copied into our own plain structs, so that scoring, serde
//! and explanations are ours, fast, and independent of those crates' array types (linfa 0.8 is
//! on ndarray 0.16, smartcore 0.7 on ndarray 0.17: adapters in `logistic.rs` / `forest.rs`
//! convert, nothing else sees either crate).
//!
//! Typestate: a `*Params` value is checked into `*ValidParams`, whose [`Fit::fit`] returns the
//! fitted model type; there is no "not trained yet" state.
//!
//! Class order everywhere: `0 = TruePositive, 1 = BenignPositive, 2 = FalsePositive`
//! ([`N_CLASSES`] columns of probabilities per row).

use crate::matrix::FeatureMatrix;
use serde::{Deserialize, Serialize};

pub mod calibrate;
pub mod conformal;
pub mod forest;
pub mod gbdt;
pub mod logistic;
pub mod online;

#[cfg(test)]
mod conformance;

pub use calibrate::{Calibrator, ProbabilityCalibrator, TenantCalibration};
pub use conformal::{ConformalPredictor, GradeSet};
pub use forest::{FittedForest, ForestParams, ForestValidParams};
pub use gbdt::{FittedGbdt, FittedRanker, GbdtParams, GbdtValidParams, RankerParams};
pub use logistic::{FittedLogistic, LogisticParams, LogisticValidParams};
pub use online::{OnlineGbdt, UpdateStats};

/// Number of grades (TP, BP, FP).
pub const N_CLASSES: usize = 3;

/// Errors of fitting, scoring and explaining.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam {
        /// parameter name
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// The matrix has another width than the model was trained on.
    #[error("feature count mismatch: model expects {expected} features, matrix has {got}")]
    FeatureCount {
        /// trained width
        expected: usize,
        /// given width
        got: usize,
    },
    /// Nothing to fit on (or nothing to score, where a caller requires rows).
    #[error("empty input: {what}")]
    Empty {
        /// what was empty
        what: &'static str,
    },
    /// Labels and rows disagree, or a label is out of range.
    #[error("bad labels: {reason}")]
    Labels {
        /// what is wrong
        reason: String,
    },
    /// An output buffer has the wrong length.
    #[error("output buffer has {got} slots, needs {expected}")]
    OutputLength {
        /// needed
        expected: usize,
        /// given
        got: usize,
    },
    /// The underlying learner failed.
    #[error("{learner} failed to fit: {reason}")]
    Learner {
        /// which crate / algorithm
        learner: &'static str,
        /// its message
        reason: String,
    },
}

/// Checked parameters that can be fitted into a [`Scorer`].
pub trait Fit {
    /// The fitted model type.
    type Fitted: Scorer;
    /// Fits on `x` with labels `y` (class ids `0..N_CLASSES`, one per row).
    ///
    /// Errors on an empty matrix, on `y.len() != x.n_rows()` and on labels out of range.
    fn fit(&self, x: &FeatureMatrix, y: &[u8]) -> Result<Self::Fitted, ModelError>;
}

/// A fitted multiclass model.
pub trait Scorer {
    /// Width of the matrices it scores.
    fn n_features(&self) -> usize;

    /// Writes class probabilities, row-major (`N_CLASSES` per row, each row sums to 1) into
    /// `out`, which must hold `x.n_rows() * N_CLASSES` values.
    fn score_into(&self, x: &FeatureMatrix, out: &mut [f32]) -> Result<(), ModelError>;

    /// Writes per-feature additive contributions to the *raw score* of `class` for each row:
    /// `out` holds `x.n_rows() * (n_features + 1)` values; for each row, the last slot is the
    /// bias, and the row's values sum to [`Scorer::raw_score_into`]'s value for that class.
    fn contributions_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError>;

    /// Raw (untransformed) score of `class` per row: the logit for logistic regression, the
    /// one-vs-rest forest mean for the forest, the softmax input (margin) for the GBDT. `out.len() == x.n_rows()`.
    fn raw_score_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError>;

    /// Allocating wrapper over [`Scorer::score_into`].
    fn score(&self, x: &FeatureMatrix) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0; x.n_rows() * N_CLASSES];
        self.score_into(x, &mut out)?;
        Ok(out)
    }

    /// Allocating wrapper over [`Scorer::contributions_into`].
    fn contributions(&self, x: &FeatureMatrix, class: usize) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0; x.n_rows() * (self.n_features() + 1)];
        self.contributions_into(x, class, &mut out)?;
        Ok(out)
    }
}

/// Shared input checks for `fit`.
pub(crate) fn check_fit_input(x: &FeatureMatrix, y: &[u8]) -> Result<(), ModelError> {
    if x.n_rows() == 0 || x.n_cols() == 0 {
        return Err(ModelError::Empty {
            what: "training matrix has no rows or no columns",
        });
    }
    if y.len() != x.n_rows() {
        return Err(ModelError::Labels {
            reason: format!("{} labels for {} rows", y.len(), x.n_rows()),
        });
    }
    if let Some(bad) = y.iter().find(|&&c| c as usize >= N_CLASSES) {
        return Err(ModelError::Labels {
            reason: format!("class id {bad} out of range 0..{N_CLASSES}"),
        });
    }
    if x.as_slice().iter().any(|v| !v.is_finite()) {
        return Err(ModelError::Labels {
            reason: "training matrix holds a non-finite value".into(),
        });
    }
    Ok(())
}

/// A class id in range, else [`ModelError::InvalidParam`] (`class`).
pub(crate) fn check_class(class: usize) -> Result<(), ModelError> {
    if class >= N_CLASSES {
        return Err(ModelError::InvalidParam {
            name: "class",
            reason: format!("class id {class} out of range 0..{N_CLASSES}"),
        });
    }
    Ok(())
}

/// Shared input checks for scoring: width and output length.
pub(crate) fn check_score_input(
    n_features: usize,
    x: &FeatureMatrix,
    out_len: usize,
    per_row: usize,
) -> Result<(), ModelError> {
    if x.n_cols() != n_features {
        return Err(ModelError::FeatureCount {
            expected: n_features,
            got: x.n_cols(),
        });
    }
    let expected = x.n_rows() * per_row;
    if out_len != expected {
        return Err(ModelError::OutputLength {
            expected,
            got: out_len,
        });
    }
    Ok(())
}

/// Which learner to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Multinomial logistic regression (linfa-logistic), on standardized features.
    Logistic,
    /// Random forest (smartcore regression forests, one per grade, one-vs-rest).
    Forest,
    /// Gradient-boosted trees (hessboost, multiclass softprob), the default.
    Gbdt,
}

impl Algorithm {
    /// All algorithms, in report order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Logistic, Algorithm::Forest, Algorithm::Gbdt];

    /// Stable name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Logistic => "logistic",
            Algorithm::Forest => "forest",
            Algorithm::Gbdt => "gbdt",
        }
    }

    /// Parses a name from [`Algorithm::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// Parameters of any algorithm (serde-friendly, unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum ModelParams {
    /// see [`LogisticParams`]
    Logistic(LogisticParams),
    /// see [`ForestParams`]
    Forest(ForestParams),
    /// see [`GbdtParams`]
    Gbdt(GbdtParams),
}

impl ModelParams {
    /// Default parameters for `algorithm`, with `seed`.
    pub fn default_for(algorithm: Algorithm, seed: u64) -> Self {
        match algorithm {
            Algorithm::Logistic => ModelParams::Logistic(LogisticParams::default()),
            Algorithm::Forest => ModelParams::Forest(ForestParams::default().seed(seed)),
            Algorithm::Gbdt => ModelParams::Gbdt(GbdtParams::default().seed(seed)),
        }
    }

    /// The algorithm these parameters are for.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            ModelParams::Logistic(_) => Algorithm::Logistic,
            ModelParams::Forest(_) => Algorithm::Forest,
            ModelParams::Gbdt(_) => Algorithm::Gbdt,
        }
    }

    /// Checks the parameters without fitting.
    pub fn check(&self) -> Result<(), ModelError> {
        match self {
            ModelParams::Logistic(p) => p.check().map(|_| ()),
            ModelParams::Forest(p) => p.check().map(|_| ()),
            ModelParams::Gbdt(p) => p.check().map(|_| ()),
        }
    }

    /// Checks and fits (a learner that holds rows out for early stopping splits them row by
    /// row; see [`ModelParams::fit_grouped`]).
    pub fn fit(&self, x: &FeatureMatrix, y: &[u8]) -> Result<TrainedModel, ModelError> {
        Ok(match self {
            ModelParams::Logistic(p) => TrainedModel::Logistic(p.check()?.fit(x, y)?),
            ModelParams::Forest(p) => TrainedModel::Forest(p.check()?.fit(x, y)?),
            ModelParams::Gbdt(p) => TrainedModel::Gbdt(Box::new(p.check()?.fit(x, y)?)),
        })
    }

    /// Checks and fits; a learner that holds rows out (the GBDT's early stopping) keeps each
    /// of `groups` (one id per row) on one side, and one that bounds the groups per leaf (the
    /// GBDT's `min_child_groups`) counts `split_groups` (one per row, e.g. the tenant).
    /// Learners without either ignore them.
    pub fn fit_grouped(
        &self,
        x: &FeatureMatrix,
        y: &[u8],
        groups: &[u64],
        split_groups: Option<&[u64]>,
    ) -> Result<TrainedModel, ModelError> {
        match self {
            ModelParams::Gbdt(p) => Ok(TrainedModel::Gbdt(Box::new(p.check()?.fit_grouped(
                x,
                y,
                groups,
                split_groups,
            )?))),
            _ => self.fit(x, y),
        }
    }
}

/// Any fitted model, as stored in an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum TrainedModel {
    /// fitted logistic regression
    Logistic(FittedLogistic),
    /// fitted forest
    Forest(FittedForest),
    /// fitted gradient-boosted trees
    Gbdt(Box<FittedGbdt>),
}

impl TrainedModel {
    /// Which algorithm produced it.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            TrainedModel::Logistic(_) => Algorithm::Logistic,
            TrainedModel::Forest(_) => Algorithm::Forest,
            TrainedModel::Gbdt(_) => Algorithm::Gbdt,
        }
    }

    fn inner(&self) -> &dyn Scorer {
        match self {
            TrainedModel::Logistic(m) => m,
            TrainedModel::Forest(m) => m,
            TrainedModel::Gbdt(m) => m.as_ref(),
        }
    }
}

impl Scorer for TrainedModel {
    fn n_features(&self) -> usize {
        self.inner().n_features()
    }
    fn score_into(&self, x: &FeatureMatrix, out: &mut [f32]) -> Result<(), ModelError> {
        self.inner().score_into(x, out)
    }
    fn contributions_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.inner().contributions_into(x, class, out)
    }
    fn raw_score_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.inner().raw_score_into(x, class, out)
    }
}
