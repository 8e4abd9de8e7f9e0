//! Train: labelled evidence → out-of-fold features → fitted model → calibrated artifact.
//!
//! Sits on top of `features`, `models` and `eval`. The same [`fit`] is used by `threatrank
//! train` and by every fold of `threatrank eval` ([`cv`]), so the evaluated recipe is exactly
//! the shipped one. Steps:
//! 1. encoders + out-of-fold training matrix (`features::fit_transform`);
//! 2. `calibration_folds` inner folds: fit on the rest, predict the held-out part → out-of-fold
//!    probabilities → temperature calibrator chosen by log-loss (`models::Calibrator`);
//! 3. final model on all training incidents; artifact with model card.

pub mod artifact;
pub mod cv;
mod decide;

pub use decide::{DecisionRule, DecisionRules};

pub use artifact::{Artifact, ArtifactError, CardMetrics, DataInfo, ModelCard, FORMAT_VERSION};

use crate::correlate::Correlated;
use crate::domain::Evidence;
use crate::eval;
use crate::features::{self, FeatureError, FeatureParams};
use crate::matrix::FeatureMatrix;
use crate::models::{Algorithm, Calibrator, ModelError, ModelParams, Scorer, N_CLASSES};
use crate::signals::Attack;
use serde::{Deserialize, Serialize};

/// Errors of training and prediction.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A parameter is out of range.
    #[error("invalid training parameter `{name}`: {reason}")]
    Param {
        /// name
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// Feature fitting failed.
    #[error(transparent)]
    Features(#[from] FeatureError),
    /// Model fitting or scoring failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] eval::EvalError),
    /// Too little labelled data.
    #[error("not enough labelled data: {reason}")]
    Data {
        /// what is missing
        reason: String,
    },
}

/// Training parameters (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainParams {
    /// Learner. Default [`Algorithm::Forest`].
    pub algorithm: Algorithm,
    /// Seed of every random step. Default 42.
    pub seed: u64,
    /// Learner parameters; `None` = the algorithm's defaults with `seed`. Default `None`.
    pub model: Option<ModelParams>,
    /// Feature parameters. Default [`FeatureParams::default`].
    pub features: FeatureParams,
    /// Inner folds for calibration and the card's out-of-fold metrics; 0 skips calibration.
    /// Default 3.
    pub calibration_folds: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Forest,
            seed: 42,
            model: None,
            features: FeatureParams::default(),
            calibration_folds: 3,
        }
    }
}

impl TrainParams {
    /// Sets [`TrainParams::algorithm`] (default forest).
    pub fn algorithm(mut self, a: Algorithm) -> Self {
        self.algorithm = a;
        self
    }
    /// Sets [`TrainParams::seed`] (default 42).
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// Sets [`TrainParams::calibration_folds`] (default 3).
    pub fn calibration_folds(mut self, k: usize) -> Self {
        self.calibration_folds = k;
        self
    }
    /// Sets [`TrainParams::features`].
    pub fn features(mut self, f: FeatureParams) -> Self {
        self.features = f;
        self
    }
    /// Checks parameters (including the nested model and feature parameters).
    pub fn check(&self) -> Result<TrainValidParams, TrainError> {
        if self.calibration_folds == 1 || self.calibration_folds > 20 {
            return Err(TrainError::Param {
                name: "calibration_folds",
                reason: format!("{} must be 0 (off) or 2..=20", self.calibration_folds),
            });
        }
        let model = self
            .model
            .clone()
            .unwrap_or_else(|| ModelParams::default_for(self.algorithm, self.seed));
        if model.algorithm() != self.algorithm {
            return Err(TrainError::Param {
                name: "model",
                reason: format!(
                    "parameters are for {}, algorithm is {}",
                    model.algorithm().name(),
                    self.algorithm.name()
                ),
            });
        }
        model.check()?;
        let features = self.features.clone().seed(self.features.seed ^ self.seed);
        let features = features.check()?;
        Ok(TrainValidParams {
            model,
            features,
            seed: self.seed,
            calibration_folds: self.calibration_folds,
        })
    }
}

/// Checked [`TrainParams`].
#[derive(Debug, Clone)]
pub struct TrainValidParams {
    model: ModelParams,
    features: features::FeatureValidParams,
    seed: u64,
    calibration_folds: usize,
}

impl TrainValidParams {
    /// The resolved model parameters.
    pub fn model(&self) -> &ModelParams {
        &self.model
    }
}

/// Probability predictions for a set of incidents.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// incidents (indices into `corr.incidents`), aligned with rows
    pub which: Vec<usize>,
    /// their feature rows
    pub x: FeatureMatrix,
    /// calibrated probabilities, `N_CLASSES` per row
    pub probs: Vec<f32>,
    /// predicted class ids (the artifact's decision rule over `probs`)
    pub grades: Vec<u8>,
}

impl Artifact {
    /// Features and calibrated probabilities for the incidents `which`. Never reads grades.
    pub fn predict(
        &self,
        evidence: &[Evidence],
        corr: &Correlated,
        which: &[usize],
        attack: &Attack,
    ) -> Result<Predictions, TrainError> {
        let x = self.features.transform(evidence, corr, which, attack);
        let mut probs = vec![0.0; x.n_rows() * N_CLASSES];
        self.model.score_into(&x, &mut probs)?;
        self.calibrator.apply_into(&mut probs);
        let grades = self.decision.decide_all(&x, &probs);
        Ok(Predictions {
            which: which.to_vec(),
            x,
            probs,
            grades,
        })
    }

    /// Additive contributions to the TP raw score (`n_features + 1` per row, last = bias).
    pub fn tp_contributions(&self, x: &FeatureMatrix) -> Result<Vec<f32>, TrainError> {
        Ok(self.model.contributions(x, 0)?)
    }
}

/// The probability rows `idx` of a row-major `N_CLASSES`-wide buffer, in that order.
pub(crate) fn prob_rows(probs: &[f32], idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| probs[i * N_CLASSES..(i + 1) * N_CLASSES].iter().copied())
        .collect()
}

/// The feature that tells whether a tenant has graded history (chooses the decision rule).
pub const TENANT_SUPPORT: &str = "tenant:log_support";

/// Trains an artifact on the labelled incidents among `train` (indices into `corr.incidents`).
pub fn fit(
    params: &TrainValidParams,
    evidence: &[Evidence],
    corr: &Correlated,
    train: &[usize],
    attack: &Attack,
    data: DataInfo,
) -> Result<Artifact, TrainError> {
    let (encoders, x, y, _rows) =
        features::fit_transform(&params.features, evidence, corr, train, attack)?;
    let present = (0..N_CLASSES as u8).filter(|c| y.contains(c)).count();
    if present < 2 {
        return Err(TrainError::Data {
            reason: format!(
                "{} labelled incidents with {present} distinct grade(s); at least two grades are needed",
                y.len()
            ),
        });
    }
    let schema = features::schema();
    let support_column = schema.index_of(TENANT_SUPPORT).ok_or(TrainError::Param {
        name: "features",
        reason: format!("schema has no `{TENANT_SUPPORT}` column"),
    })?;
    let (calibrator, decision, metrics) = calibrate(params, &x, &y, support_column)?;
    let model = params.model.fit(&x, &y)?;
    let mut grades = [0u64; 3];
    for &c in &y {
        grades[c as usize] += 1;
    }
    let mut tenants: Vec<u64> = train
        .iter()
        .map(|&i| corr.incidents[i].key.tenant.0)
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    let data = DataInfo {
        incidents: y.len() as u64,
        tenants: tenants.len() as u64,
        grades,
        ..data
    };
    Ok(Artifact {
        format_version: FORMAT_VERSION,
        schema_hash: schema.hash().to_string(),
        schema,
        card: ModelCard {
            threatrank_version: env!("CARGO_PKG_VERSION").to_string(),
            params: params.model.clone(),
            feature_params: encoders.params().clone(),
            data,
            metrics,
            notes: vec![
                "Grades Defender XDR / GUIDE incidents TruePositive / BenignPositive / FalsePositive; priority = round(100 * calibrated P(TP)).".into(),
                "Trained on a 10,000-row sample: tenants absent from training get only cross-tenant signals and are graded markedly worse (see `threatrank eval`, tenant-disjoint).".into(),
                "Cross-tenant encodings are released only for keys seen by at least `feature_params.min_tenants` tenants.".into(),
            ],
        },
        features: encoders,
        model,
        calibrator,
        decision,
    })
}

/// Inner folds → out-of-fold probabilities → temperature calibrator and card metrics.
fn calibrate(
    params: &TrainValidParams,
    x: &FeatureMatrix,
    y: &[u8],
    support_column: usize,
) -> Result<(Calibrator, DecisionRules, CardMetrics), TrainError> {
    let k = params.calibration_folds;
    if k == 0 || x.n_rows() < k * 2 {
        return Ok((
            Calibrator::identity(),
            DecisionRules::single(DecisionRule::default(), support_column),
            CardMetrics {
                oof_macro_f1: None,
                oof_log_loss_raw: None,
                oof_log_loss_calibrated: None,
                folds: 0,
            },
        ));
    }
    // Every training row is one incident: rows are the groups.
    let groups: Vec<u64> = (0..x.n_rows() as u64).collect();
    let folds = eval::grouped_kfold(&groups, k, params.seed ^ 0x5eed)?;
    let mut oof = vec![0f32; x.n_rows() * N_CLASSES];
    for fold in &folds {
        let xt = x.select_rows(&fold.train);
        let yt: Vec<u8> = fold.train.iter().map(|&i| y[i]).collect();
        let present = (0..N_CLASSES as u8).filter(|c| yt.contains(c)).count();
        if present < 2 {
            continue;
        }
        let m = params.model.fit(&xt, &yt)?;
        let p = m.score(&x.select_rows(&fold.test))?;
        for (r, &i) in fold.test.iter().enumerate() {
            oof[i * N_CLASSES..(i + 1) * N_CLASSES]
                .copy_from_slice(&p[r * N_CLASSES..(r + 1) * N_CLASSES]);
        }
    }
    let raw = eval::log_loss(&oof, y)?;
    let cal = Calibrator::fit(&oof, y)?;
    let mut calibrated = oof.clone();
    cal.apply_into(&mut calibrated);
    let after = eval::log_loss(&calibrated, y)?;
    let decision = DecisionRules::fit(x, &calibrated, y, support_column)?;
    let report = eval::classification_report(y, &decision.decide_all(x, &calibrated), None)?;
    Ok((
        cal,
        decision,
        CardMetrics {
            oof_macro_f1: Some(report.macro_f1),
            oof_log_loss_raw: Some(raw),
            oof_log_loss_calibrated: Some(after),
            folds: k,
        },
    ))
}
