//! Train: labelled evidence → out-of-fold features → fitted model → calibrated artifact.
//!
//! Sits on top of `features`, `models` and `eval`. The same [`fit`] is used by `threatrank
//! train` and by every fold of `threatrank eval` ([`cv`]), so the evaluated recipe is exactly
//! the shipped one. Steps:
//! 1. encoders + out-of-fold training matrix (`features::fit_transform`);
//! 2. `calibration_folds` inner folds: fit on the rest, predict the held-out part → out-of-fold
//!    probabilities → calibration chosen by cross-fitted log-loss among identity, temperature,
//!    Platt and isotonic, plus per-tenant Platt adjustments shrunk toward the global one
//!    (`models::calibrate`) → a conformal predictor on the calibrated out-of-fold probabilities
//!    (`models::conformal`: prediction sets at the configured coverage, `uncertain` when a set
//!    holds more than one grade) → decision rules → the drift reference profile
//!    (`drift::ReferenceProfile`: bins and training counts of the out-of-fold matrix and of the
//!    calibrated out-of-fold P(TP), of all rows and of each tenant with at least
//!    `drift::MIN_TENANT_ROWS` of them, no extra training pass);
//! 3. final model on all training incidents (the GBDT's early stopping holds out whole
//!    incidents); artifact with model card.
//!
//! The conformal predictor is fitted on the inner models' out-of-fold probabilities and applied
//! to the final model's: a cross-conformal approximation (the final model saw more rows, so its
//! sets are, if anything, slightly conservative). The card's coverage is held out from the
//! conformal fit (per inner fold, a predictor fitted without the fold's incidents sets the
//! fold's rows); `threatrank eval` measures the coverage that results on the outer folds.

mod abstain;
pub mod artifact;
pub mod coldstart;
pub mod cv;
mod decide;
pub mod online;
pub mod tune;

pub use abstain::{coverage_report, ConformalRegimes};
pub use decide::{DecisionRule, DecisionRules};

pub use artifact::{Artifact, ArtifactError, CardMetrics, DataInfo, ModelCard, FORMAT_VERSION};

use crate::correlate::{CorrelateParams, CorrelateValidParams, Correlated, Linker};
use crate::domain::{Evidence, Grade};
use crate::drift::{ReferenceProfile, MIN_TENANT_ROWS};
use crate::eval;
use crate::features::{self, FeatureError, FeatureParams};
use crate::matrix::FeatureMatrix;
use crate::models::calibrate::{CalibrationParams, TenantCalibration};
use crate::models::conformal::{
    ConformalMode, ConformalParams, ConformalReport, ConformalValidParams, GradeSet,
};
use crate::models::{
    Algorithm, ModelError, ModelParams, ProbabilityCalibrator, RankerParams, Scorer, N_CLASSES,
};
use crate::signals::Knowledge;
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
    /// Correlation parameters.
    #[error(transparent)]
    Correlate(#[from] crate::correlate::CorrelateError),
    /// Model fitting or scoring failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] eval::EvalError),
    /// Feature rows of mismatched widths.
    #[error(transparent)]
    Matrix(#[from] crate::matrix::MatrixError),
    /// Too little labelled data.
    #[error("not enough labelled data: {reason}")]
    Data {
        /// what is missing
        reason: String,
    },
    /// The drift reference profile could not be fitted.
    #[error(transparent)]
    Drift(#[from] crate::drift::DriftError),
}

/// Training parameters (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainParams {
    /// Learner. Default [`Algorithm::Gbdt`].
    pub algorithm: Algorithm,
    /// Seed of every random step. Default 42.
    pub seed: u64,
    /// Learner parameters; `None` = the algorithm's defaults with `seed`. Default `None`.
    pub model: Option<ModelParams>,
    /// Feature parameters. Default [`FeatureParams::default`].
    pub features: FeatureParams,
    /// Inner folds for calibration and the card's out-of-fold metrics; 0 skips calibration
    /// (and abstention). Default 3.
    pub calibration_folds: usize,
    /// How out-of-fold probabilities are calibrated (methods, per-tenant floor and shrinkage).
    pub calibration: CalibrationParams,
    /// Conformal abstention: coverage `1 - alpha` of the grade sets. Default alpha 0.1,
    /// class-conditional (one threshold per true grade, so true positives are covered at the
    /// target too: measured incident-disjoint, TP/BP/FP coverage 0.902/0.906/0.909 against
    /// 0.854/0.938/0.881 with one marginal threshold).
    pub conformal: ConformalParams,
    /// Also train a LambdaMART ranker over per-tenant daily queues (query = tenant × day of
    /// first evidence, relevance = 1 for a true positive); `threatrank eval` compares its
    /// order with the classifier's P(TP). Default `None` (not trained).
    pub ranker: Option<RankerParams>,
    /// Correlation of alerts without an incident id: the stoplist is learnt from the training
    /// evidence and stored in the artifact. Default [`CorrelateParams::default`].
    pub correlate: CorrelateParams,
    /// Inner folds, grouped by tenant, on which the regime of tenants without graded history
    /// (decision rule and conformal predictor) is fitted: every training incident is shown
    /// as for a tenant never seen ([`crate::features::FittedFeatures::as_unseen_tenant`]) and
    /// scored by a model that never saw its tenant, which makes them exchangeable with a new
    /// tenant; the incidents of one-incident tenants alone are not. 0 fits that regime on the
    /// inner folds by incident, as the other. Default [`UNSEEN_FOLDS`] (10; why, with the
    /// measured coverage, there).
    pub unseen_folds: usize,
}

/// Default folds of the unseen-tenant regime ([`TrainParams::unseen_folds`]).
///
/// The regime of tenants never seen is cross-conformal over tenant groups: its calibration
/// scores come from systems fitted without the scored tenant, which stand in for the shipped
/// system facing a new tenant. Each stand-in's model is trained on the other `K − 1` tenant
/// folds, and the rows it scores read the snapshot of those folds' verdicts (`unseen_rows`), as
/// a new tenant reads the snapshot of every training verdict. A stand-in that knows fewer
/// tenants scores its rows worse than the shipped system scores a new tenant's, so its
/// quantiles come out too high and the sets over-cover; the gap shrinks as `K` grows
/// (leave-one-tenant-out is the jackknife+ limit, Barber et al. 2021: coverage at least
/// `1 − 2α` in the worst case, about `1 − α` in practice). Measured on the GUIDE sample,
/// tenant-disjoint 5-fold CV pooled, GBDT, release build, coverage at a 90% target: 0.929 when
/// the scored rows read the training matrix's snapshots of the verdicts before their day
/// (past-only, smaller than any snapshot scoring reads); 0.917 reading the other folds'
/// snapshot with K = 5; **0.908 with K = 10** (per grade 0.893 / 0.913 / 0.909), macro-F1
/// unchanged (0.537 rows, 0.474 incidents, against 0.549 / 0.472), forward figures unchanged.
/// Cost: ten unseen-regime models instead of five (the tenant-disjoint `eval` of GBDT took about
/// 5 min instead of 4 on 2 cores). See `docs/CONFORMAL.md` for the commands.
pub const UNSEEN_FOLDS: usize = 10;

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Gbdt,
            seed: 42,
            model: None,
            features: FeatureParams::default(),
            calibration_folds: 3,
            calibration: CalibrationParams::default(),
            conformal: ConformalParams::default().mode(ConformalMode::ClassConditional),
            ranker: None,
            correlate: CorrelateParams::default(),
            unseen_folds: UNSEEN_FOLDS,
        }
    }
}

impl TrainParams {
    /// Sets [`TrainParams::algorithm`] (default GBDT).
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
        if self.unseen_folds == 1 || self.unseen_folds > 20 {
            return Err(TrainError::Param {
                name: "unseen_folds",
                reason: format!("{} must be 0 (off) or 2..=20", self.unseen_folds),
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
        let calibration = self.calibration.clone().seed(self.seed).check()?;
        let conformal = self.conformal.check()?;
        let ranker = self
            .ranker
            .as_ref()
            .map(|r| r.clone().seeded(self.seed).check())
            .transpose()?;
        let correlate = self.correlate.check()?;
        Ok(TrainValidParams {
            model,
            features,
            seed: self.seed,
            calibration_folds: self.calibration_folds,
            calibration,
            conformal,
            ranker,
            correlate,
            unseen_folds: self.unseen_folds,
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
    calibration: crate::models::calibrate::CalibrationValidParams,
    conformal: crate::models::conformal::ConformalValidParams,
    ranker: Option<crate::models::gbdt::RankerValidParams>,
    correlate: CorrelateValidParams,
    unseen_folds: usize,
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
    /// the model's probabilities before calibration, `N_CLASSES` per row
    pub raw: Vec<f32>,
    /// predicted class ids (the artifact's decision rule over `probs`)
    pub grades: Vec<u8>,
    /// conformal grade sets at the artifact's coverage (all single grades when the artifact
    /// has no conformal predictor); more than one grade = `uncertain`
    pub sets: Vec<GradeSet>,
    /// LambdaMART ranking scores, when the artifact holds a ranker
    pub rank_scores: Option<Vec<f32>>,
}

impl Artifact {
    /// Features and calibrated probabilities for the incidents `which`. Never reads grades.
    pub fn predict(
        &self,
        evidence: &[Evidence],
        corr: &Correlated,
        which: &[usize],
        kn: &Knowledge,
    ) -> Result<Predictions, TrainError> {
        let x = self.features.transform(evidence, corr, which, kn);
        let tenants = corr.tenants_of(which);
        let mut pred = self.predict_rows(x, &tenants)?;
        pred.which = which.to_vec();
        Ok(pred)
    }

    /// [`Artifact::predict`] from feature rows already extracted (one per incident, with each
    /// incident's tenant): model scores, per-tenant calibration, decision rule, conformal sets
    /// and ranking scores. `which` of the result is `0..rows`. What the DataFusion function
    /// `threatrank_score` calls on each batch.
    pub fn predict_rows(
        &self,
        x: FeatureMatrix,
        tenants: &[u64],
    ) -> Result<Predictions, TrainError> {
        let mut probs = vec![0.0; x.n_rows() * N_CLASSES];
        self.model.score_into(&x, &mut probs)?;
        let raw = probs.clone();
        self.calibration.apply_into(tenants, &mut probs)?;
        let grades = self.decision.decide_all(&x, &probs);
        let sets = match &self.conformal {
            Some(c) => c.sets(&x, &probs),
            None => grades
                .iter()
                .map(|&g| GradeSet::single(g as usize))
                .collect(),
        };
        let rank_scores = match &self.ranker {
            Some(r) => {
                let mut s = vec![0.0; x.n_rows()];
                r.score_into(&x, &mut s)?;
                Some(s)
            }
            None => None,
        };
        Ok(Predictions {
            which: (0..x.n_rows()).collect(),
            x,
            probs,
            raw,
            grades,
            sets,
            rank_scores,
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
    kn: &Knowledge,
    data: DataInfo,
) -> Result<Artifact, TrainError> {
    let (encoders, x, y, rows) =
        features::fit_transform(&params.features, evidence, corr, train, kn)?;
    let tenant_of_row = corr.tenants_of(&rows);
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
    let unseen = if params.unseen_folds > 0 {
        Some(unseen_rows(
            params,
            &encoders,
            &x,
            &Incidents {
                evidence,
                corr,
                rows: &rows,
            },
            &tenant_of_row,
            kn,
        )?)
    } else {
        None
    };
    let Calibrated {
        calibration,
        conformal,
        decision,
        metrics,
        p_tp,
    } = calibrate(
        params,
        &Rows {
            x: &x,
            unseen: unseen.as_ref(),
            y: &y,
            tenant_of_row: &tenant_of_row,
            support_column,
        },
    )?;
    // The drift snapshot: out-of-fold rows and calibrated out-of-fold P(TP) look like the
    // incidents the final model will score (see `drift`).
    let reference = p_tp
        .map(|p| ReferenceProfile::fit(&x, &schema, &p, &tenant_of_row, MIN_TENANT_ROWS))
        .transpose()?;
    let model = params
        .model
        .fit_grouped(&x, &y, &row_ids(x.n_rows()), Some(&tenant_of_row))?;
    let ranker = match &params.ranker {
        Some(r) => {
            let query: Vec<u64> = rows.iter().map(|&i| queue_of(&corr.incidents[i])).collect();
            let relevance: Vec<f32> = y.iter().map(|&c| f32::from(u8::from(c == 0))).collect();
            Some(r.fit(&x, &relevance, &query)?)
        }
        None => None,
    };
    let correlation = Linker::learn(
        train
            .iter()
            .flat_map(|&i| corr.incidents[i].evidence.iter())
            .map(|&r| &evidence[r as usize]),
        &params.correlate,
    );
    let mut grades = [0u64; 3];
    for &c in &y {
        grades[c as usize] += 1;
    }
    let mut tenants = corr.tenants_of(train);
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
                "`certainty = uncertain` marks incidents whose conformal set holds more than one grade: a hunter should look rather than trust the grade.".into(),
            ],
            tuning: None,
        },
        features: encoders,
        model,
        calibration,
        conformal,
        decision,
        ranker,
        correlation: Some(correlation),
        reference,
    })
}

/// Number of distinct values.
fn distinct_count(v: &[u64]) -> usize {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v.len()
}

/// Seconds per day, for daily queues and the online replay.
const DAY_SECONDS: i64 = 86_400;

/// One group id per row (`0..n`): every training row is one incident, so row-level splits keep
/// incidents whole.
fn row_ids(n: usize) -> Vec<u64> {
    (0..n as u64).collect()
}

/// The ranker's query: the tenant's queue on the UTC day of the incident's first evidence.
fn queue_of(incident: &crate::correlate::Incident) -> u64 {
    let day = incident.first_seen.div_euclid(DAY_SECONDS) as u64;
    let mut h = incident.key.tenant.0 ^ day.rotate_left(32);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 31)
}

/// What [`calibrate`] learns from the inner folds.
struct Calibrated {
    calibration: TenantCalibration,
    conformal: Option<ConformalRegimes>,
    decision: DecisionRules,
    metrics: CardMetrics,
    /// calibrated out-of-fold P(TP), one per row (`None` when calibration was skipped)
    p_tp: Option<Vec<f32>>,
}

/// The folds grouped by tenant on which the regime of tenants without history is fitted.
fn unseen_tenant_folds(
    params: &TrainValidParams,
    tenant_of_row: &[u64],
) -> Result<Vec<eval::Fold>, TrainError> {
    Ok(eval::grouped_kfold(
        tenant_of_row,
        params.unseen_folds,
        params.seed ^ 0x7465_6e61_6e74,
    )?)
}

/// The training incidents behind the rows of a training matrix.
struct Incidents<'a> {
    evidence: &'a [Evidence],
    corr: &'a Correlated,
    /// the incident of each row (indices into `corr.incidents`)
    rows: &'a [usize],
}

/// The training rows as scoring writes them for a tenant never seen, on the folds grouped by
/// tenant ([`unseen_tenant_folds`]) the regime without history is fitted on: no history of its
/// own ([`features::FittedFeatures::as_unseen_tenant`]) and the global signals of every
/// training incident but those of the row's tenant fold (a new tenant reads the snapshot of all
/// training verdicts, none of them its own). A row of the training matrix reads a snapshot of
/// the verdicts before its day instead, which holds fewer verdicts than any scored incident
/// reads: rows scored that way looked harder than a new tenant's incidents, and the regime's
/// grade sets over-covered (measured in `docs/CONFORMAL.md`). With a snapshot given in `kn`,
/// every row reads it, as scoring does.
fn unseen_rows(
    params: &TrainValidParams,
    encoders: &features::FittedFeatures,
    x: &FeatureMatrix,
    inc: &Incidents<'_>,
    tenant_of_row: &[u64],
    kn: &Knowledge,
) -> Result<FeatureMatrix, TrainError> {
    let starts: Vec<i64> = inc
        .rows
        .iter()
        .map(|&i| inc.corr.incidents[i].first_seen)
        .collect();
    if kn.snapshot.is_some() || distinct_count(tenant_of_row) < params.unseen_folds {
        return Ok(encoders.as_unseen_tenant(x, &starts));
    }
    let mut out = x.clone();
    for fold in unseen_tenant_folds(params, tenant_of_row)? {
        let of = |side: &[usize]| -> Vec<usize> { side.iter().map(|&r| inc.rows[r]).collect() };
        let snapshot = encoders.snapshot_of(inc.evidence, inc.corr, &of(&fold.train), &kn.key)?;
        let xt = encoders.transform_with(&snapshot, inc.evidence, inc.corr, &of(&fold.test), kn);
        for (r, &j) in fold.test.iter().enumerate() {
            out.row_mut(j).copy_from_slice(xt.row(r));
        }
    }
    Ok(encoders.as_unseen_tenant(&out, &starts))
}

/// The training rows [`calibrate`] works on.
struct Rows<'a> {
    /// one row per incident, tenant history out-of-fold by incident
    x: &'a FeatureMatrix,
    /// the same rows as for a tenant without history (`unseen_folds > 0`), else `None`
    unseen: Option<&'a FeatureMatrix>,
    y: &'a [u8],
    tenant_of_row: &'a [u64],
    support_column: usize,
}

/// Out-of-fold probabilities of the rows of `score` (aligned with `x`, `N_CLASSES` per row):
/// per fold, a model trained on the other folds' rows of `x` scores the fold's rows of `score`.
///
/// A fold whose training part holds fewer than two grades cannot fit a model: its rows get that
/// training part's grade prior, add-one smoothed (`(n_c + 1) / (n + N_CLASSES)`, see
/// [`smoothed_prior`]): what a model that learnt nothing but the grade shares would say, never
/// 0 for a grade (calibration, conformal sets and decision rules take logs and ranks of these),
/// and computed from training labels only, so the held-out rows' own grades never reach them.
fn out_of_fold(
    params: &TrainValidParams,
    x: &FeatureMatrix,
    y: &[u8],
    tenant_of_row: &[u64],
    folds: &[eval::Fold],
    score: &FeatureMatrix,
) -> Result<Vec<f32>, TrainError> {
    let mut oof = vec![0f32; score.n_rows() * N_CLASSES];
    for fold in folds {
        let xt = x.select_rows(&fold.train);
        let yt: Vec<u8> = fold.train.iter().map(|&i| y[i]).collect();
        let present = (0..N_CLASSES as u8).filter(|c| yt.contains(c)).count();
        if present < 2 {
            let prior = smoothed_prior(&yt);
            for &i in &fold.test {
                oof[i * N_CLASSES..(i + 1) * N_CLASSES].copy_from_slice(&prior);
            }
            continue;
        }
        let gt: Vec<u64> = fold.train.iter().map(|&i| i as u64).collect();
        let tt: Vec<u64> = fold.train.iter().map(|&i| tenant_of_row[i]).collect();
        let m = params.model.fit_grouped(&xt, &yt, &gt, Some(&tt))?;
        let p = m.score(&score.select_rows(&fold.test))?;
        for (r, &i) in fold.test.iter().enumerate() {
            oof[i * N_CLASSES..(i + 1) * N_CLASSES]
                .copy_from_slice(&p[r * N_CLASSES..(r + 1) * N_CLASSES]);
        }
    }
    Ok(oof)
}

/// Add-one smoothed grade shares of `y`: `(n_c + 1) / (n + N_CLASSES)` per grade.
fn smoothed_prior(y: &[u8]) -> [f32; N_CLASSES] {
    let mut n = [0usize; N_CLASSES];
    for &c in y {
        if let Some(k) = n.get_mut(usize::from(c)) {
            *k += 1;
        }
    }
    let total = (y.len() + N_CLASSES) as f32;
    n.map(|k| (k + 1) as f32 / total)
}

/// The rows the conformal regimes and decision rules are fitted on.
struct Regime<'a> {
    x: &'a FeatureMatrix,
    /// calibrated probabilities, `N_CLASSES` per row
    probs: &'a [f32],
    y: &'a [u8],
    /// the row of the training matrix (the incident) each row comes from
    origin: &'a [usize],
}

/// The card's conformal figures on rows held out from the conformal fit: per inner fold,
/// regimes fitted on the regime rows that do not come from the fold's incidents give the
/// sets of the fold's rows; pooled over the folds. (The probabilities are the calibrated
/// out-of-fold ones; the calibration map itself was fitted on all rows.)
fn held_out_conformal(
    params: &ConformalValidParams,
    target: f64,
    folds: &[eval::Fold],
    rows: &Rows<'_>,
    calibrated: &[f32],
    regime: &Regime<'_>,
) -> Result<ConformalReport, TrainError> {
    let n = rows.x.n_rows();
    let mut sets = vec![GradeSet::EMPTY; n];
    let mut held = vec![false; n];
    for fold in folds {
        held.fill(false);
        for &i in &fold.test {
            held[i] = true;
        }
        let keep: Vec<usize> = (0..regime.origin.len())
            .filter(|&r| !held[regime.origin[r]])
            .collect();
        let y: Vec<u8> = keep.iter().map(|&r| regime.y[r]).collect();
        let fitted = ConformalRegimes::fit(
            params,
            &regime.x.select_rows(&keep),
            &prob_rows(regime.probs, &keep),
            &y,
            rows.support_column,
        )?;
        let test = fitted.sets(
            &rows.x.select_rows(&fold.test),
            &prob_rows(calibrated, &fold.test),
        );
        for (s, &i) in test.into_iter().zip(&fold.test) {
            sets[i] = s;
        }
    }
    Ok(abstain::coverage_report(target, &sets, rows.y))
}

/// Inner folds → out-of-fold probabilities → calibration (global + per tenant), conformal
/// predictor, decision rules, card metrics and the calibrated out-of-fold P(TP) (for the drift
/// reference).
///
/// The regime of tenants with history is fitted on folds by incident (the final model will
/// have seen the tenant's other incidents). With `unseen_folds`, the regime of tenants without
/// history is fitted on every incident shown without history and scored by models trained on
/// folds grouped by tenant, so none of them saw the incident's tenant.
fn calibrate(params: &TrainValidParams, rows: &Rows<'_>) -> Result<Calibrated, TrainError> {
    let Rows {
        x,
        y,
        tenant_of_row,
        support_column,
        ..
    } = *rows;
    let k = params.calibration_folds;
    if k == 0 || x.n_rows() < k * 2 {
        return Ok(Calibrated {
            calibration: TenantCalibration::global_only(ProbabilityCalibrator::Identity),
            conformal: None,
            decision: DecisionRules::single(DecisionRule::default(), support_column),
            metrics: CardMetrics::default(),
            p_tp: None,
        });
    }
    let groups = row_ids(x.n_rows());
    let folds = eval::grouped_kfold(&groups, k, params.seed ^ 0x5eed)?;
    let oof = out_of_fold(params, x, y, tenant_of_row, &folds, x)?;
    let raw = eval::log_loss(&oof, y)?;
    let (mut calibration, tenant_report) =
        params
            .calibration
            .fit_per_tenant(&oof, y, &groups, tenant_of_row)?;
    // Per-tenant maps are kept only when they lowered the cross-fitted log-loss.
    if tenant_report.log_loss_tenant >= tenant_report.log_loss_global {
        calibration = TenantCalibration::global_only(calibration.global().clone());
    }
    let mut calibrated = oof.clone();
    calibration.apply_into(tenant_of_row, &mut calibrated)?;
    let after = eval::log_loss(&calibrated, y)?;
    // The rows the regimes are fitted on: with `unseen_folds`, those of tenants with history
    // plus every incident as for a tenant without, scored out-of-fold by tenant and calibrated
    // by the global map, as a new tenant's are. (A map of their own, Platt chosen by log-loss
    // cross-fitted by tenant, was measured: tenant-disjoint log-loss 0.939 → 0.920, but PR-AUC
    // of P(TP) 0.462 → 0.434 and the incidents a hunter can skip at 90% TP recall 26.5% →
    // 21.5%: renormalizing per-grade maps reorders the priority. Not kept.)
    let regime_rows = match rows.unseen {
        Some(unseen) if distinct_count(tenant_of_row) >= params.unseen_folds => {
            let tenant_folds = unseen_tenant_folds(params, tenant_of_row)?;
            let mut unseen_probs = out_of_fold(params, x, y, tenant_of_row, &tenant_folds, unseen)?;
            calibration.global().apply_into(&mut unseen_probs);
            let seen: Vec<usize> = (0..x.n_rows())
                .filter(|&i| x.get(i, support_column) > 0.0)
                .collect();
            let mut xr = x.select_rows(&seen);
            xr.extend(unseen)?;
            let mut pr = prob_rows(&calibrated, &seen);
            pr.extend_from_slice(&unseen_probs);
            let mut yr: Vec<u8> = seen.iter().map(|&i| y[i]).collect();
            yr.extend_from_slice(y);
            // the row of `x` (the incident) each regime row comes from
            let mut origin = seen;
            origin.extend(0..x.n_rows());
            Some((xr, pr, yr, origin))
        }
        _ => None,
    };
    let every_row: Vec<usize> = (0..x.n_rows()).collect();
    let regime = match &regime_rows {
        Some((xr, pr, yr, origin)) => Regime {
            x: xr,
            probs: pr,
            y: yr,
            origin,
        },
        None => Regime {
            x,
            probs: &calibrated,
            y,
            origin: &every_row,
        },
    };
    let (xr, pr, yr) = (regime.x, regime.probs, regime.y);
    let conformal = ConformalRegimes::fit(&params.conformal, xr, pr, yr, support_column)?;
    let conformal_report = held_out_conformal(
        &params.conformal,
        1.0 - conformal.alpha(),
        &folds,
        rows,
        &calibrated,
        &regime,
    )?;
    let decision = DecisionRules::fit(xr, pr, yr, support_column)?;
    let report = eval::classification_report(y, &decision.decide_all(x, &calibrated), None)?;
    let tp = usize::from(Grade::TruePositive.class_id());
    let p_tp = calibrated.chunks_exact(N_CLASSES).map(|p| p[tp]).collect();
    Ok(Calibrated {
        calibration,
        conformal: Some(conformal),
        decision,
        metrics: CardMetrics {
            oof_macro_f1: Some(report.macro_f1),
            oof_log_loss_raw: Some(raw),
            oof_log_loss_calibrated: Some(after),
            folds: k,
            calibration: Some(tenant_report),
            conformal: Some(conformal_report),
        },
        p_tp: Some(p_tp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_folds_are_checked() {
        for bad in [1, 21] {
            let p = TrainParams {
                unseen_folds: bad,
                ..TrainParams::default()
            };
            let err = p.check().unwrap_err().to_string();
            assert!(err.contains("unseen_folds"), "{err}");
        }
        for ok in [0, 2, 5, 20] {
            let p = TrainParams {
                unseen_folds: ok,
                ..TrainParams::default()
            };
            assert!(p.check().is_ok());
        }
    }

    #[test]
    fn a_fold_without_two_grades_gets_its_training_prior() {
        // 6 rows; the first fold trains on rows 2..6, all TP (class 0), and tests rows 0, 1.
        let x = FeatureMatrix::from_vec(6, 1, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let y = [1, 2, 0, 0, 0, 0];
        let folds = [
            eval::Fold {
                train: vec![2, 3, 4, 5],
                test: vec![0, 1],
            },
            eval::Fold {
                train: vec![0, 1, 2, 3],
                test: vec![4, 5],
            },
        ];
        let params = TrainParams::default()
            .algorithm(Algorithm::Logistic)
            .check()
            .unwrap();
        let oof = out_of_fold(&params, &x, &y, &[1; 6], &folds, &x).unwrap();
        // (4 + 1) / 7 for TP, 1 / 7 for the grades the training part never saw
        let prior = [5.0 / 7.0, 1.0 / 7.0, 1.0 / 7.0];
        for r in 0..2 {
            for (got, want) in oof[r * N_CLASSES..(r + 1) * N_CLASSES].iter().zip(prior) {
                assert!((got - want).abs() < 1e-6, "row {r}: {oof:?}");
            }
        }
        // the other fold was fitted: its rows are probabilities too
        for r in 4..6 {
            let s: f32 = oof[r * N_CLASSES..(r + 1) * N_CLASSES].iter().sum();
            assert!((s - 1.0).abs() < 1e-4, "row {r}: {oof:?}");
        }
    }

    #[test]
    fn the_card_coverage_is_held_out_from_the_conformal_fit() {
        // 40 rows, all TP: fold 0 easy (P(TP) 0.9), fold 1 hard (P(TP) 0.1). Fitted on all
        // rows, the 90% threshold covers every row (coverage 1.0 in-sample); held out, the
        // hard fold's threshold comes from the easy fold and misses all of it: 0.5.
        let n = 40;
        let x = FeatureMatrix::from_vec(n, 1, vec![1.0; n]).unwrap();
        let y = vec![0u8; n];
        let probs: Vec<f32> = (0..n)
            .flat_map(|i| {
                if i < 20 {
                    [0.9, 0.05, 0.05]
                } else {
                    [0.1, 0.45, 0.45]
                }
            })
            .collect();
        let folds = [
            eval::Fold {
                train: (20..40).collect(),
                test: (0..20).collect(),
            },
            eval::Fold {
                train: (0..20).collect(),
                test: (20..40).collect(),
            },
        ];
        let rows = Rows {
            x: &x,
            unseen: None,
            y: &y,
            tenant_of_row: &[1; 40],
            support_column: 0,
        };
        let every_row: Vec<usize> = (0..n).collect();
        let regime = Regime {
            x: &x,
            probs: &probs,
            y: &y,
            origin: &every_row,
        };
        let params = ConformalParams::default().alpha(0.1).check().unwrap();
        let in_sample = ConformalRegimes::fit(&params, &x, &probs, &y, 0).unwrap();
        let all = abstain::coverage_report(0.9, &in_sample.sets(&x, &probs), &y);
        assert_eq!(all.coverage, 1.0);
        let r = held_out_conformal(&params, 0.9, &folds, &rows, &probs, &regime).unwrap();
        assert_eq!((r.rows, r.coverage), (40, 0.5), "{r:?}");
    }

    #[test]
    fn distinct_count_counts_values_once() {
        assert_eq!(distinct_count(&[3, 1, 3, 2, 1]), 3);
        assert_eq!(distinct_count(&[]), 0);
    }
}
