//! Cross-validation of the whole training recipe, for every model and a lookup baseline:
//! forward in time (the headline), then grouped random folds (incident-disjoint and
//! tenant-disjoint).
//!
//! Each outer fold runs the same [`super::fit`] as `threatrank train` on the training incidents
//! only (encoders, out-of-fold matrix, calibration), then predicts the held-out incidents.
//! Predictions of all folds are pooled and scored once. Splits never put one incident on both
//! sides.
//!
//! * `forward` ([`SplitKind::Forward`], [`eval::forward_folds`]): what a deployment lives
//!   through. Origins `D_1 < … < D_k` are UTC day boundaries at the time quantiles of the latest
//!   [`CvParams::forward_test_share`] of labelled incidents (by `first_seen`); fold `j` trains on
//!   the incidents that ended before `D_j` (a verdict exists from the end of its incident,
//!   `last_seen`) and tests those that began in `[D_j, D_{j+1})`. Windows are disjoint, so
//!   pooling works as for the other splits; each origin's own figures and their mean are kept
//!   ([`ForwardModelCv`]), and the pooled figures of test incidents whose tenant has training
//!   incidents in that fold (*with history*) and of those whose tenant has none (*new tenants*).
//! * `incident-disjoint`, `tenant-disjoint`: seeded grouped k-fold, random in time (a training
//!   incident may be later than the incident scored). The tenant-disjoint split keeps every
//!   tenant on one side, so its figures are those of tenants never seen in training.
//!
//! [`CvPlan`] is the one fold assignment: `run` evaluates it and `threatrank report` hands the
//! same folds to the peer models (`bench::peers`). With [`CvParams::keep_predictions`] every
//! model keeps its pooled held-out predictions ([`HeldOut`]) for the report's curves.

use super::{fit, DataInfo, DecisionRule, TrainError, TrainParams};
use crate::correlate::{most_frequent, Correlated};
use crate::domain::{Evidence, IncidentKey};
use crate::eval::{self, ClassMetrics, Fold};
use crate::models::calibrate::{class_reliability_curve, curve_ece, ReliabilityBin};
use crate::models::conformal::ConformalReport;
use crate::models::{Algorithm, GradeSet, N_CLASSES};
use crate::signals::Knowledge;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How incidents are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitKind {
    /// forward in time: train on incidents that ended before an origin, test those that
    /// began after it (see the module docs)
    Forward,
    /// random folds, no incident on both sides (a tenant's other incidents may be in
    /// training, earlier or later)
    IncidentDisjoint,
    /// random folds, no tenant on both sides (tenants never seen in training)
    TenantDisjoint,
}

impl SplitKind {
    /// Every kind, in report order: forward first.
    pub const ALL: [SplitKind; 3] = [
        SplitKind::Forward,
        SplitKind::IncidentDisjoint,
        SplitKind::TenantDisjoint,
    ];
    /// The grouped random-fold kinds.
    pub const RANDOM: [SplitKind; 2] = [SplitKind::IncidentDisjoint, SplitKind::TenantDisjoint];

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            SplitKind::Forward => "forward",
            SplitKind::IncidentDisjoint => "incident-disjoint",
            SplitKind::TenantDisjoint => "tenant-disjoint",
        }
    }

    /// The kind named `name` ([`SplitKind::name`], or the short `incident` / `tenant`).
    pub fn from_name(name: &str) -> Option<SplitKind> {
        match name {
            "forward" => Some(SplitKind::Forward),
            "incident" | "incident-disjoint" => Some(SplitKind::IncidentDisjoint),
            "tenant" | "tenant-disjoint" => Some(SplitKind::TenantDisjoint),
            _ => None,
        }
    }

    /// True for the grouped random-fold kinds (folds random in time).
    pub fn is_random(self) -> bool {
        self != SplitKind::Forward
    }
}

/// What the tables print under a random-fold split.
pub const RANDOM_FOLDS_NOTE: &str =
    "random folds: a training incident may be later than the incident scored";

/// Cross-validation parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CvParams {
    /// Outer folds of the random-fold splits. Default 5.
    pub folds: usize,
    /// Evaluate only this many folds: the *first* N folds of a random-fold split (`Some(1)`: a
    /// quick grouped holdout of `1/folds` of the incidents) and the *last* N origins of the
    /// forward split (the most recent windows); `None` evaluates all. Default `None`.
    pub folds_to_run: Option<usize>,
    /// Origins of the forward split (checked ≥ 1). Default 3.
    pub forward_origins: usize,
    /// Share of the labelled incidents, the latest by `first_seen`, that the forward split's
    /// test windows hold (checked in `(0, 1)`). Default 0.5.
    pub forward_test_share: f64,
    /// Seed of the fold assignment. Default 42.
    pub seed: u64,
    /// Algorithms to evaluate. Default: all.
    pub algorithms: Vec<Algorithm>,
    /// Also evaluate the (tenant, detector) → tenant → detector majority lookup. Default true.
    pub baseline: bool,
    /// Split kinds, in report order. Default: [`SplitKind::ALL`] (forward first).
    pub splits: Vec<SplitKind>,
    /// Training recipe template (its algorithm is replaced per model).
    pub train: TrainParams,
    /// With the GBDT, also train a LambdaMART ranker per fold and compare its queue order with
    /// the classifier's P(TP). Default true.
    pub compare_ranker: bool,
    /// Keep every model's pooled held-out predictions in [`ModelCv::held_out`] (for the curves
    /// of `threatrank report`); costs the TP contributions of every held-out incident. Default
    /// false.
    pub keep_predictions: bool,
}

impl CvParams {
    /// Folds evaluated per random-fold split: `folds_to_run` clamped to `1..=folds` (all
    /// folds when `None`).
    pub fn folds_run(&self) -> usize {
        self.folds_to_run
            .unwrap_or(self.folds)
            .clamp(1, self.folds.max(1))
    }

    /// Folds evaluated for split `kind`: [`CvParams::folds_run`], or for the forward split
    /// `folds_to_run` clamped to `1..=forward_origins` (the last ones).
    pub fn folds_run_of(&self, kind: SplitKind) -> usize {
        match kind {
            SplitKind::Forward => self
                .folds_to_run
                .unwrap_or(self.forward_origins)
                .clamp(1, self.forward_origins.max(1)),
            _ => self.folds_run(),
        }
    }

    /// Folds evaluated over every split kind (one fit per model and fold).
    pub fn fold_runs(&self) -> usize {
        self.splits.iter().map(|&k| self.folds_run_of(k)).sum()
    }

    /// Checks the forward split's parameters (origins ≥ 1, test share in `(0, 1)`).
    pub fn check_forward(&self) -> Result<(), TrainError> {
        if self.forward_origins == 0 {
            return Err(TrainError::Param {
                name: "forward_origins",
                reason: "0 (need at least 1)".into(),
            });
        }
        let share = self.forward_test_share;
        if !(share > 0.0 && share < 1.0) {
            return Err(TrainError::Param {
                name: "forward_test_share",
                reason: format!("{share} (must be in (0, 1))"),
            });
        }
        Ok(())
    }
}

impl Default for CvParams {
    fn default() -> Self {
        Self {
            folds: 5,
            folds_to_run: None,
            forward_origins: 3,
            forward_test_share: 0.5,
            seed: 42,
            algorithms: Algorithm::ALL.to_vec(),
            baseline: true,
            splits: SplitKind::ALL.to_vec(),
            train: TrainParams::default(),
            compare_ranker: true,
            keep_predictions: false,
        }
    }
}

/// Pooled out-of-fold metrics of one model on one split kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvMetrics {
    /// macro-F1 over evidence rows (GUIDE's metric: every row carries its incident's grade)
    pub macro_f1_rows: f64,
    /// macro-F1 over incidents
    pub macro_f1_incidents: f64,
    /// macro precision over rows
    pub macro_precision_rows: f64,
    /// macro recall over rows
    pub macro_recall_rows: f64,
    /// accuracy over rows
    pub accuracy_rows: f64,
    /// per grade (TP, BP, FP), over rows
    pub per_class_rows: [ClassMetrics; 3],
    /// average precision of P(TP) over incidents
    pub pr_auc_tp: Option<f64>,
    /// precision@10 of P(TP) per tenant queue, mean over queues holding a TP
    pub precision_at_10: f64,
    /// NDCG@10 per tenant queue, same queues
    pub ndcg_at_10: f64,
    /// queues counted in the two figures above
    pub queues: usize,
    /// precision@10 over queues holding more than 10 incidents (and a TP): in a shorter queue
    /// precision@min(10, size) is the queue's TP share whatever the order, so only these
    /// queues tell rankers apart
    pub precision_at_10_long: f64,
    /// NDCG@10 over the same long queues
    pub ndcg_at_10_long: f64,
    /// long queues counted
    pub long_queues: usize,
    /// multiclass log-loss over incidents
    pub log_loss: f64,
    /// incidents evaluated
    pub incidents: usize,
    /// evidence rows evaluated
    pub rows: usize,
}

/// Calibration on the outer folds: the model's probabilities before and after the artifact's
/// calibration (both held out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationCv {
    /// multiclass log-loss before calibration
    pub log_loss_raw: f64,
    /// multiclass log-loss after calibration
    pub log_loss_calibrated: f64,
    /// expected calibration error of P(TP), 10 equal-width bins, before
    pub ece_tp_raw: f64,
    /// the same after calibration
    pub ece_tp_calibrated: f64,
    /// reliability curve of P(TP) before calibration (empty bins omitted)
    pub reliability_tp_raw: Vec<ReliabilityBin>,
    /// the same after calibration
    pub reliability_tp_calibrated: Vec<ReliabilityBin>,
}

/// Conformal abstention on the outer folds: how often the held-out incident's grade was in
/// its prediction set, and how good the confident decisions were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbstentionCv {
    /// coverage, per-grade coverage, set sizes and uncertain rate on held-out incidents
    pub sets: ConformalReport,
    /// macro-F1 over incidents on the confident ones only (`None` when all were uncertain)
    pub macro_f1_confident: Option<f64>,
}

/// One model's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCv {
    /// `logistic`, `forest`, `gbdt` or `lookup-baseline`
    pub model: String,
    /// pooled metrics
    pub metrics: CvMetrics,
    /// calibration before/after (trained models only)
    #[serde(default)]
    pub calibration: Option<CalibrationCv>,
    /// conformal coverage (trained models with a conformal predictor only)
    #[serde(default)]
    pub abstention: Option<AbstentionCv>,
    /// queue order by a LambdaMART ranker trained beside this model (GBDT only)
    #[serde(default)]
    pub ranker: Option<QueueCv>,
    /// forward split only: per-origin figures, their mean, and tenants with history against
    /// new tenants
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardModelCv>,
    /// pooled held-out predictions, with [`CvParams::keep_predictions`] only; never serialized
    #[serde(skip)]
    pub held_out: Option<HeldOut>,
}

/// One model's held-out predictions on one split kind, pooled over the evaluated folds, in
/// labelled-incident order (the order of [`CvPlan::held`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldOut {
    /// the incidents
    pub keys: Vec<IncidentKey>,
    /// true class ids (0 TP, 1 BP, 2 FP)
    pub y: Vec<u8>,
    /// evidence rows of each incident (the row weight of GUIDE's per-row metrics)
    pub weights: Vec<f64>,
    /// calibrated probabilities, `N_CLASSES` per incident
    pub probs: Vec<f32>,
    /// predicted class ids
    pub grades: Vec<u8>,
    /// mean over the held-out incidents of |sum of the TP-margin contributions of a feature
    /// family|, per family in schema order; empty for models without contributions (lookup,
    /// peers)
    pub family_importance: Vec<(String, f64)>,
}

impl HeldOut {
    /// Tenant ids, one per incident.
    pub fn tenants(&self) -> Vec<u64> {
        self.keys.iter().map(|k| k.tenant.0).collect()
    }

    /// P(TP), one per incident.
    pub fn p_tp(&self) -> Vec<f32> {
        self.probs.chunks_exact(N_CLASSES).map(|p| p[0]).collect()
    }

    /// True when the incident is a true positive, one per incident.
    pub fn is_tp(&self) -> Vec<bool> {
        self.y.iter().map(|&c| c == 0).collect()
    }

    /// [`metrics`] of these predictions.
    pub fn metrics(&self) -> Result<CvMetrics, TrainError> {
        metrics(
            &self.probs,
            &self.grades,
            &self.y,
            &self.weights,
            &self.tenants(),
        )
    }
}

/// The labelled incidents of a cross-validation and the outer folds of each split kind: the
/// one fold assignment shared by [`run`] and the peer models of `threatrank report`.
#[derive(Debug, Clone, PartialEq)]
pub struct CvPlan {
    /// labelled incidents (indices into `corr.incidents`), in incident order
    pub labelled: Vec<usize>,
    /// their keys
    pub keys: Vec<IncidentKey>,
    /// their true class ids
    pub y: Vec<u8>,
    /// their evidence rows
    pub weights: Vec<f64>,
    /// their tenant ids
    pub tenant_of: Vec<u64>,
    /// distinct tenants
    pub tenants: usize,
    /// folds evaluated per random-fold split ([`CvParams::folds_run`])
    pub folds_run: usize,
    /// per split kind (in [`CvParams::splits`] order), the evaluated folds; `Fold` indices
    /// point into `labelled`. Random-fold folds cover every labelled incident; forward folds
    /// do not (see [`eval::forward_folds`]).
    pub splits: Vec<(SplitKind, Vec<Fold>)>,
    /// the forward split's windows, when it is planned
    pub forward: Option<ForwardPlan>,
}

/// The forward split of a [`CvPlan`]: its evaluated windows and which test incidents have
/// tenant history.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardPlan {
    /// origins built ([`CvParams::forward_origins`]); the evaluated ones are the last
    /// `windows.len()`
    pub built: usize,
    /// [`CvParams::forward_test_share`]
    pub test_share: f64,
    /// evaluated test windows `[origin, end)`, Unix seconds, in time order (one per evaluated
    /// fold of the forward split)
    pub windows: Vec<(i64, i64)>,
    /// per labelled incident: tested by an evaluated forward fold whose training part holds
    /// at least one incident of its tenant
    pub with_history: Vec<bool>,
}

/// One origin of the forward split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardOrigin {
    /// the origin `D_j`, UTC date (`YYYY-MM-DD`, 00:00)
    pub origin: String,
    /// the same, Unix seconds
    pub origin_unix: i64,
    /// end of the test window (exclusive), UTC date
    pub window_end: String,
    /// the same, Unix seconds
    pub window_end_unix: i64,
    /// labelled incidents that ended before the origin (the training part)
    pub train_incidents: usize,
    /// labelled incidents that began in the window (the test part)
    pub test_incidents: usize,
    /// test incidents whose tenant has a training incident
    pub test_with_history: usize,
    /// test incidents of tenants without one
    pub test_new_tenants: usize,
}

/// The forward split's origins (on [`SplitCv::forward`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardSplitCv {
    /// share of the labelled incidents (latest by first evidence) the windows were cut from
    pub test_share: f64,
    /// origins built; with `--folds-to-run N` only the last N are evaluated
    pub origins_built: usize,
    /// the evaluated origins, in time order
    pub origins: Vec<ForwardOrigin>,
}

/// One line of a forward table: an origin, the mean over origins, or a pooled tenant group.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRow {
    /// the origin's date, `mean of N origins`, `with history (pooled)` or `new tenants
    /// (pooled)`
    pub what: String,
    /// incidents scored (`None` for the mean)
    pub incidents: Option<usize>,
    /// macro-F1 over rows
    pub macro_f1_rows: f64,
    /// macro-F1 over incidents
    pub macro_f1_incidents: f64,
    /// TP PR-AUC
    pub pr_auc_tp: Option<f64>,
}

impl ForwardModelCv {
    /// The lines every forward table prints: per origin, the mean, with history, new tenants.
    pub fn rows(&self) -> Vec<ForwardRow> {
        let mut out: Vec<ForwardRow> = self
            .per_origin
            .iter()
            .map(|o| ForwardRow {
                what: o.origin.clone(),
                incidents: Some(o.incidents),
                macro_f1_rows: o.macro_f1_rows,
                macro_f1_incidents: o.macro_f1_incidents,
                pr_auc_tp: o.pr_auc_tp,
            })
            .collect();
        out.push(ForwardRow {
            what: format!("mean of {} origins", self.per_origin.len()),
            incidents: None,
            macro_f1_rows: self.mean_macro_f1_rows,
            macro_f1_incidents: self.mean_macro_f1_incidents,
            pr_auc_tp: self.mean_pr_auc_tp,
        });
        for (what, x) in [
            ("with history (pooled)", &self.with_history),
            ("new tenants (pooled)", &self.new_tenants),
        ] {
            if let Some(x) = x {
                out.push(ForwardRow {
                    what: what.into(),
                    incidents: Some(x.incidents),
                    macro_f1_rows: x.macro_f1_rows,
                    macro_f1_incidents: x.macro_f1_incidents,
                    pr_auc_tp: x.pr_auc_tp,
                });
            }
        }
        out
    }
}

impl ForwardSplitCv {
    /// `N origin(s)`, and `(the last of M built)` when `--folds-to-run` cut them.
    pub fn origins_text(&self) -> String {
        let n = self.origins.len();
        if n < self.origins_built {
            format!("{n} origin(s) (the last of {} built)", self.origins_built)
        } else {
            format!("{n} origin(s)")
        }
    }
}

/// One model's figures on one forward origin's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginFigures {
    /// the origin, UTC date
    pub origin: String,
    /// test incidents
    pub incidents: usize,
    /// macro-F1 over evidence rows
    pub macro_f1_rows: f64,
    /// macro-F1 over incidents
    pub macro_f1_incidents: f64,
    /// average precision of P(TP) (`None` when the window holds no TP)
    pub pr_auc_tp: Option<f64>,
}

/// One model on the forward split: per origin, the mean over origins, and the pooled figures
/// of tenants with history and new tenants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardModelCv {
    /// per evaluated origin, in time order
    pub per_origin: Vec<OriginFigures>,
    /// mean over origins of macro-F1 over rows
    pub mean_macro_f1_rows: f64,
    /// mean over origins of macro-F1 over incidents
    pub mean_macro_f1_incidents: f64,
    /// mean over the origins whose window holds a TP of the TP PR-AUC
    pub mean_pr_auc_tp: Option<f64>,
    /// pooled over origins: test incidents whose tenant has ≥ 1 training incident in that
    /// fold (`None` when there are none)
    pub with_history: Option<CvMetrics>,
    /// pooled over origins: test incidents of tenants without training incidents
    pub new_tenants: Option<CvMetrics>,
}

impl CvPlan {
    /// Per split kind: seeded grouped k-fold of the labelled incidents (groups: incidents, or
    /// tenants), truncated to the first folds evaluated; or forward folds from the incidents'
    /// times ([`eval::forward_folds`] over `first_seen`/`last_seen`), truncated to the last
    /// origins evaluated.
    pub fn new(params: &CvParams, corr: &Correlated) -> Result<CvPlan, TrainError> {
        params.check_forward()?;
        let labelled: Vec<usize> = corr.labelled().map(|(i, _, _)| i).collect();
        if labelled.len() < params.folds * 2 {
            return Err(TrainError::Data {
                reason: format!(
                    "{} labelled incidents for {} folds",
                    labelled.len(),
                    params.folds
                ),
            });
        }
        let keys: Vec<IncidentKey> = labelled.iter().map(|&i| corr.incidents[i].key).collect();
        let y: Vec<u8> = labelled
            .iter()
            .map(|&i| corr.incidents[i].grade.map_or(0, |g| g.class_id()))
            .collect();
        let weights: Vec<f64> = labelled
            .iter()
            .map(|&i| corr.incidents[i].evidence.len() as f64)
            .collect();
        let tenant_of: Vec<u64> = keys.iter().map(|k| k.tenant.0).collect();
        let mut distinct = tenant_of.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let folds_run = params.folds_run();
        let mut splits = Vec::with_capacity(params.splits.len());
        let mut forward = None;
        for &kind in &params.splits {
            let groups: Vec<u64> = match kind {
                SplitKind::Forward => {
                    let (folds, plan) = forward_plan(params, corr, &labelled, &tenant_of)?;
                    forward = Some(plan);
                    splits.push((kind, folds));
                    continue;
                }
                SplitKind::IncidentDisjoint => (0..labelled.len() as u64).collect(),
                SplitKind::TenantDisjoint => tenant_of.clone(),
            };
            let mut folds = eval::grouped_kfold(&groups, params.folds, params.seed)?;
            folds.truncate(folds_run);
            splits.push((kind, folds));
        }
        Ok(CvPlan {
            labelled,
            keys,
            y,
            weights,
            tenant_of,
            tenants: distinct.len(),
            folds_run,
            splits,
            forward,
        })
    }

    /// The forward split's figures of predictions `h` of its held-out incidents (in
    /// [`CvPlan::held`] order): per origin, the mean over origins, with history / new
    /// tenants. `None` when the plan has no forward split.
    pub fn forward_figures(&self, h: &HeldOut) -> Result<Option<ForwardModelCv>, TrainError> {
        let (Some(fp), Some(s)) = (
            &self.forward,
            self.splits
                .iter()
                .position(|(k, _)| *k == SplitKind::Forward),
        ) else {
            return Ok(None);
        };
        let held = self.held(s);
        if held.len() != h.y.len() {
            return Err(TrainError::Data {
                reason: format!(
                    "{} forward predictions for {} held-out incidents",
                    h.y.len(),
                    held.len()
                ),
            });
        }
        let subset = |pick: &dyn Fn(usize) -> bool| -> Result<Option<CvMetrics>, TrainError> {
            let idx: Vec<usize> = (0..held.len()).filter(|&i| pick(i)).collect();
            if idx.is_empty() {
                return Ok(None);
            }
            let sel = |v: &[u8]| idx.iter().map(|&i| v[i]).collect::<Vec<u8>>();
            let w: Vec<f64> = idx.iter().map(|&i| h.weights[i]).collect();
            let t: Vec<u64> = idx.iter().map(|&i| h.keys[i].tenant.0).collect();
            let p = super::prob_rows(&h.probs, &idx);
            metrics(&p, &sel(&h.grades), &sel(&h.y), &w, &t).map(Some)
        };
        let mut per_origin = Vec::with_capacity(fp.windows.len());
        for (f, &(start, _)) in fp.windows.iter().enumerate() {
            let Some(m) = subset(&|i| held[i].1 == f)? else {
                continue;
            };
            per_origin.push(OriginFigures {
                origin: day_name(start),
                incidents: m.incidents,
                macro_f1_rows: m.macro_f1_rows,
                macro_f1_incidents: m.macro_f1_incidents,
                pr_auc_tp: m.pr_auc_tp,
            });
        }
        let n = per_origin.len().max(1) as f64;
        let aps: Vec<f64> = per_origin.iter().filter_map(|o| o.pr_auc_tp).collect();
        Ok(Some(ForwardModelCv {
            mean_macro_f1_rows: per_origin.iter().map(|o| o.macro_f1_rows).sum::<f64>() / n,
            mean_macro_f1_incidents: per_origin.iter().map(|o| o.macro_f1_incidents).sum::<f64>()
                / n,
            mean_pr_auc_tp: (!aps.is_empty()).then(|| aps.iter().sum::<f64>() / aps.len() as f64),
            per_origin,
            with_history: subset(&|i| fp.with_history[held[i].0])?,
            new_tenants: subset(&|i| !fp.with_history[held[i].0])?,
        }))
    }

    /// The forward split's origins with their counts (`None` without a forward split).
    pub fn forward_origins(&self) -> Option<ForwardSplitCv> {
        let fp = self.forward.as_ref()?;
        let (_, folds) = self.splits.iter().find(|(k, _)| *k == SplitKind::Forward)?;
        let origins = folds
            .iter()
            .zip(&fp.windows)
            .map(|(fold, &(start, end))| {
                let hist = fold.test.iter().filter(|&&j| fp.with_history[j]).count();
                ForwardOrigin {
                    origin: day_name(start),
                    origin_unix: start,
                    window_end: day_name(end),
                    window_end_unix: end,
                    train_incidents: fold.train.len(),
                    test_incidents: fold.test.len(),
                    test_with_history: hist,
                    test_new_tenants: fold.test.len() - hist,
                }
            })
            .collect();
        Some(ForwardSplitCv {
            test_share: fp.test_share,
            origins_built: fp.built,
            origins,
        })
    }

    /// The incidents (indices into `labelled`) held out by an evaluated fold of split `s`
    /// (index into [`CvPlan::splits`]), ascending, with their fold index.
    pub fn held(&self, s: usize) -> Vec<(usize, usize)> {
        let mut h: Vec<(usize, usize)> = self.splits[s]
            .1
            .iter()
            .enumerate()
            .flat_map(|(f, fold)| fold.test.iter().map(move |&j| (j, f)))
            .collect();
        h.sort_unstable();
        h
    }
}

/// `YYYY-MM-DD` of the UTC day holding Unix time `t`.
fn day_name(t: i64) -> String {
    crate::ingest::format_rfc3339(t)[..10].to_string()
}

/// The forward folds of the labelled incidents (indices into `labelled`), the last
/// [`CvParams::folds_run_of`] of them, and their [`ForwardPlan`].
fn forward_plan(
    params: &CvParams,
    corr: &Correlated,
    labelled: &[usize],
    tenant_of: &[u64],
) -> Result<(Vec<Fold>, ForwardPlan), TrainError> {
    let first: Vec<i64> = labelled
        .iter()
        .map(|&i| corr.incidents[i].first_seen)
        .collect();
    let last: Vec<i64> = labelled
        .iter()
        .map(|&i| corr.incidents[i].last_seen)
        .collect();
    let ff = eval::forward_folds(
        &first,
        &last,
        params.forward_origins,
        params.forward_test_share,
    )?;
    let skip = ff.folds.len() - params.folds_run_of(SplitKind::Forward);
    let windows: Vec<(i64, i64)> = (skip..ff.folds.len()).map(|j| ff.window(j)).collect();
    let folds: Vec<Fold> = ff.folds.into_iter().skip(skip).collect();
    let mut with_history = vec![false; labelled.len()];
    for fold in &folds {
        let seen: std::collections::BTreeSet<u64> =
            fold.train.iter().map(|&j| tenant_of[j]).collect();
        for &j in &fold.test {
            with_history[j] = seen.contains(&tenant_of[j]);
        }
    }
    Ok((
        folds,
        ForwardPlan {
            built: params.forward_origins,
            test_share: params.forward_test_share,
            windows,
            with_history,
        },
    ))
}

/// Queue-order figures of one scoring of held-out incidents, per tenant queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueCv {
    /// precision@10 per tenant queue, mean over queues holding a TP
    pub precision_at_10: f64,
    /// NDCG@10, same queues
    pub ndcg_at_10: f64,
    /// queues counted
    pub queues: usize,
    /// precision@10 over queues longer than 10 incidents
    pub precision_at_10_long: f64,
    /// NDCG@10 over the same long queues
    pub ndcg_at_10_long: f64,
    /// long queues counted
    pub long_queues: usize,
}

/// Per-tenant queue metrics of `scores` (higher first) against `is_tp`.
pub fn queue_cv(tenant_of: &[u64], scores: &[f32], is_tp: &[bool]) -> Result<QueueCv, TrainError> {
    let p10 = eval::precision_at_k(tenant_of, scores, is_tp, 10)?;
    let ndcg = eval::ndcg_at_k(tenant_of, scores, is_tp, 10)?;
    let mut queue_size: BTreeMap<u64, usize> = BTreeMap::new();
    for t in tenant_of {
        *queue_size.entry(*t).or_default() += 1;
    }
    let long: Vec<usize> = (0..scores.len())
        .filter(|&i| queue_size[&tenant_of[i]] > 10)
        .collect();
    let lt: Vec<u64> = long.iter().map(|&i| tenant_of[i]).collect();
    let ls: Vec<f32> = long.iter().map(|&i| scores[i]).collect();
    let lp: Vec<bool> = long.iter().map(|&i| is_tp[i]).collect();
    let p10_long = eval::precision_at_k(&lt, &ls, &lp, 10)?;
    let ndcg_long = eval::ndcg_at_k(&lt, &ls, &lp, 10)?;
    Ok(QueueCv {
        precision_at_10: p10.mean,
        ndcg_at_10: ndcg.mean,
        queues: p10.n_queues,
        precision_at_10_long: p10_long.mean,
        ndcg_at_10_long: ndcg_long.mean,
        long_queues: p10_long.n_queues,
    })
}

/// All models on one split kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitCv {
    /// split kind
    pub split: SplitKind,
    /// forward split only: its origins and their counts
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardSplitCv>,
    /// per model, in evaluation order
    pub models: Vec<ModelCv>,
}

/// A cross-validation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvReport {
    /// input name
    pub input: String,
    /// outer folds
    pub folds: usize,
    /// folds evaluated (fewer than `folds` for a quick holdout)
    pub folds_run: usize,
    /// fold seed
    pub seed: u64,
    /// labelled incidents
    pub incidents: usize,
    /// tenants
    pub tenants: usize,
    /// per split kind
    pub splits: Vec<SplitCv>,
    /// online-update simulation (`threatrank eval --online`)
    #[serde(default)]
    pub online: Option<super::online::OnlineReport>,
    /// macro-F1 of the default model with each feature family switched off
    /// (`threatrank eval --ablation`)
    #[serde(default)]
    pub ablation: Option<Vec<AblationRow>>,
    /// the same CV repeated with other fold seeds (`threatrank eval --repeats`): the spread of
    /// each figure and the default model's paired differences
    #[serde(default)]
    pub repeats: Option<RepeatedCv>,
    /// what a new tenant's first verdicts are worth, forward in time (`threatrank eval
    /// --cold-start`, `threatrank report`)
    #[serde(default)]
    pub cold_start: Option<super::coldstart::ColdStartReport>,
}

/// Mean, sample standard deviation, min and max of one figure over repeats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// mean
    pub mean: f64,
    /// sample standard deviation (0 for a single value)
    pub sd: f64,
    /// smallest
    pub min: f64,
    /// largest
    pub max: f64,
}

impl Spread {
    /// The spread of `v` (`None` when empty).
    pub fn of(v: &[f64]) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(Spread {
            mean,
            sd,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One model on one split kind over the repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatRow {
    /// split kind
    pub split: SplitKind,
    /// model name
    pub model: String,
    /// macro-F1 over rows
    pub macro_f1_rows: Spread,
    /// macro-F1 over incidents
    pub macro_f1_incidents: Spread,
    /// log-loss over incidents
    pub log_loss: Spread,
    /// held-out conformal coverage (models with a conformal predictor)
    pub coverage: Option<Spread>,
}

/// The default model minus another model, repeat by repeat (same folds within a repeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedRow {
    /// split kind
    pub split: SplitKind,
    /// the model compared with the default one
    pub other: String,
    /// default − other, macro-F1 over rows
    pub diff_rows: Spread,
    /// default − other, macro-F1 over incidents
    pub diff_incidents: Spread,
    /// repeats in which the default model scored higher over rows
    pub ahead_rows: usize,
    /// repeats in which the default model scored higher over incidents
    pub ahead_incidents: usize,
}

/// Repeated grouped CV: the same recipe over several fold seeds. One seed's figures move with
/// the fold assignment (on the GUIDE sample tenant-disjoint macro-F1 moves by ±0.01–0.02, the
/// size of most differences between models); the spread says how much, and paired differences
/// (both models on the same folds) tell a real lead from a lucky split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatedCv {
    /// fold seeds, the report's own first
    pub seeds: Vec<u64>,
    /// the default model (what the paired rows compare against)
    pub reference: String,
    /// per split and model
    pub rows: Vec<RepeatRow>,
    /// the reference minus each other model
    pub paired: Vec<PairedRow>,
}

/// Aggregates reports of the same CV run with different fold seeds (same splits and models).
pub fn repeated(reports: &[CvReport], reference: &str) -> RepeatedCv {
    let mut rows = Vec::new();
    let mut paired = Vec::new();
    let Some(first) = reports.first() else {
        return RepeatedCv {
            seeds: Vec::new(),
            reference: reference.to_string(),
            rows,
            paired,
        };
    };
    let model_of = |r: &CvReport, split: SplitKind, name: &str| -> Option<ModelCv> {
        r.splits
            .iter()
            .find(|s| s.split == split)?
            .models
            .iter()
            .find(|m| m.model == name)
            .cloned()
    };
    for sp in &first.splits {
        for m in &sp.models {
            let runs: Vec<ModelCv> = reports
                .iter()
                .filter_map(|r| model_of(r, sp.split, &m.model))
                .collect();
            let figure = |f: &dyn Fn(&ModelCv) -> f64| -> Spread {
                let v: Vec<f64> = runs.iter().map(f).collect();
                Spread::of(&v).unwrap_or(Spread {
                    mean: f64::NAN,
                    sd: f64::NAN,
                    min: f64::NAN,
                    max: f64::NAN,
                })
            };
            let cov: Vec<f64> = runs
                .iter()
                .filter_map(|m| m.abstention.as_ref().map(|a| a.sets.coverage))
                .collect();
            rows.push(RepeatRow {
                split: sp.split,
                model: m.model.clone(),
                macro_f1_rows: figure(&|m| m.metrics.macro_f1_rows),
                macro_f1_incidents: figure(&|m| m.metrics.macro_f1_incidents),
                log_loss: figure(&|m| m.metrics.log_loss),
                coverage: Spread::of(&cov),
            });
            if m.model == reference {
                continue;
            }
            let pairs: Vec<(ModelCv, ModelCv)> = reports
                .iter()
                .filter_map(|r| {
                    Some((
                        model_of(r, sp.split, reference)?,
                        model_of(r, sp.split, &m.model)?,
                    ))
                })
                .collect();
            let diff = |f: &dyn Fn(&CvMetrics) -> f64| -> (Vec<f64>, usize) {
                let d: Vec<f64> = pairs
                    .iter()
                    .map(|(a, b)| f(&a.metrics) - f(&b.metrics))
                    .collect();
                let ahead = d.iter().filter(|&&x| x > 0.0).count();
                (d, ahead)
            };
            let (dr, ar) = diff(&|m| m.macro_f1_rows);
            let (di, ai) = diff(&|m| m.macro_f1_incidents);
            if let (Some(diff_rows), Some(diff_incidents)) = (Spread::of(&dr), Spread::of(&di)) {
                paired.push(PairedRow {
                    split: sp.split,
                    other: m.model.clone(),
                    diff_rows,
                    diff_incidents,
                    ahead_rows: ar,
                    ahead_incidents: ai,
                });
            }
        }
    }
    RepeatedCv {
        seeds: reports.iter().map(|r| r.seed).collect(),
        reference: reference.to_string(),
        rows,
        paired,
    }
}

impl RepeatedCv {
    /// Plain-text tables: mean ± sd per model, then the paired differences.
    pub fn table(&self) -> String {
        let n = self.seeds.len();
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut s = format!(
            "\nrepeated CV over {n} fold seeds ({}): mean ± sd [min, max]\n{:<18} {:<16} {:>24} {:>24} {:>15} {:>15}\n",
            seeds.join(", "),
            "split",
            "model",
            "F1(row)",
            "F1(inc)",
            "logloss",
            "covered"
        );
        let ms = |v: &Spread| format!("{:.3} ± {:.3}", v.mean, v.sd);
        let range = |v: &Spread| format!("{} [{:.3}, {:.3}]", ms(v), v.min, v.max);
        for r in &self.rows {
            s.push_str(&format!(
                "{:<18} {:<16} {:>24} {:>24} {:>15} {:>15}\n",
                r.split.name(),
                r.model,
                range(&r.macro_f1_rows),
                range(&r.macro_f1_incidents),
                ms(&r.log_loss),
                r.coverage.as_ref().map_or("-".to_string(), ms),
            ));
        }
        if !self.paired.is_empty() {
            s.push_str(&format!(
                "\n{:<18} {:<28} {:>18} {:>8} {:>18} {:>8}\n",
                "split", "paired difference", "Δ F1(row)", "ahead", "Δ F1(inc)", "ahead"
            ));
            for p in &self.paired {
                let d = |v: &Spread| format!("{:+.3} ± {:.3}", v.mean, v.sd);
                s.push_str(&format!(
                    "{:<18} {:<28} {:>18} {:>8} {:>18} {:>8}\n",
                    p.split.name(),
                    format!("{} − {}", self.reference, p.other),
                    d(&p.diff_rows),
                    format!("{}/{n}", p.ahead_rows),
                    d(&p.diff_incidents),
                    format!("{}/{n}", p.ahead_incidents),
                ));
            }
        }
        s
    }
}

/// One row of the ablation table: the default model's pooled macro-F1 with one feature family
/// switched off (`removed = None`: all families on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationRow {
    /// the family switched off
    pub removed: Option<String>,
    /// split kind
    pub split: SplitKind,
    /// macro-F1 over rows
    pub macro_f1_rows: f64,
    /// macro-F1 over incidents
    pub macro_f1_incidents: f64,
    /// macro-F1 over incidents minus the all-families figure (negative: the family helps)
    pub delta_incidents: f64,
}

/// Runs the CV of `params.train.algorithm` once per feature family with that family switched
/// off (plus once with all on), without the ranker comparison; one row per run and split.
pub fn ablation(
    params: &CvParams,
    input: &str,
    evidence: &[Evidence],
    corr: &Correlated,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<AblationRow>, TrainError> {
    let mut runs: Vec<Option<crate::features::Family>> = vec![None];
    runs.extend(crate::features::Family::ALL.into_iter().map(Some));
    let mut rows: Vec<AblationRow> = Vec::new();
    let mut base: Vec<(SplitKind, f64)> = Vec::new();
    for off in runs {
        let mut p = params.clone();
        p.algorithms = vec![params.train.algorithm];
        p.baseline = false;
        p.compare_ranker = false;
        if let Some(f) = off {
            p.train.features = p.train.features.clone().disable(f);
        }
        let report = run(&p, input, evidence, corr, kn, progress)?;
        for sp in &report.splits {
            let Some(m) = sp.models.first() else { continue };
            let f1 = m.metrics.macro_f1_incidents;
            if off.is_none() {
                base.push((sp.split, f1));
            }
            let b = base
                .iter()
                .find(|(k, _)| *k == sp.split)
                .map_or(f1, |(_, v)| *v);
            rows.push(AblationRow {
                removed: off.map(|f| f.name().to_string()),
                split: sp.split,
                macro_f1_rows: m.metrics.macro_f1_rows,
                macro_f1_incidents: f1,
                delta_incidents: f1 - b,
            });
        }
    }
    Ok(rows)
}

/// Plain-text ablation table.
pub fn ablation_table(rows: &[AblationRow]) -> String {
    let mut s = format!(
        "\n{:<18} {:<14} {:>8} {:>8} {:>9}   (default model, one feature family off)\n",
        "split", "family off", "F1(row)", "F1(inc)", "Δ F1(inc)"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<18} {:<14} {:>8.3} {:>8.3} {:>+9.3}\n",
            r.split.name(),
            r.removed.as_deref().unwrap_or("(none)"),
            r.macro_f1_rows,
            r.macro_f1_incidents,
            r.delta_incidents
        ));
    }
    s
}

impl CvReport {
    /// The model with the best row-level macro-F1 on a split kind.
    pub fn best(&self, split: SplitKind) -> Option<&ModelCv> {
        self.splits
            .iter()
            .find(|s| s.split == split)?
            .models
            .iter()
            .filter(|m| m.model != "lookup-baseline")
            .max_by(|a, b| a.metrics.macro_f1_rows.total_cmp(&b.metrics.macro_f1_rows))
    }

    /// Plain-text table: splits in report order (forward first), random-fold splits labelled
    /// as such, then the forward split's origins, then calibration and queue order.
    pub fn table(&self) -> String {
        let random = self.splits.iter().any(|sp| sp.split.is_random());
        let forward = self.splits.iter().find_map(|sp| sp.forward.as_ref());
        let mut s = format!(
            "{} — {} labelled incidents, {} tenants\n",
            self.input, self.incidents, self.tenants
        );
        if let Some(f) = forward {
            s.push_str(&format!(
                "forward: {} over the latest {:.0}% of incidents: train = ended before the \
                 origin, test = began in the window up to the next origin\n",
                f.origins_text(),
                100.0 * f.test_share
            ));
        }
        if random {
            s.push_str(&format!(
                "{}: grouped {}-fold CV{} ({RANDOM_FOLDS_NOTE})\n",
                self.splits
                    .iter()
                    .filter(|sp| sp.split.is_random())
                    .map(|sp| sp.split.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.folds,
                if self.folds_run < self.folds {
                    format!(", first {} fold(s) evaluated: a holdout", self.folds_run)
                } else {
                    String::new()
                },
            ));
        }
        s.push_str(&format!(
            "{:<18} {:<16} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
            "split",
            "model",
            "F1(row)",
            "F1(inc)",
            "P(TP)",
            "R(TP)",
            "P(BP)",
            "R(BP)",
            "P(FP)",
            "R(FP)",
            "PRAUC",
            "P@10",
            "NDCG10",
            "P@10L",
            "NDCG10L"
        ));
        for sp in &self.splits {
            for m in &sp.models {
                let x = &m.metrics;
                // (P@10L / NDCG10L: tenant queues longer than 10 incidents only)
                let pc = &x.per_class_rows;
                s.push_str(&format!(
                    "{:<18} {:<16} {:>8.3} {:>8.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7} {:>7.3} {:>7.3} {:>7.3} {:>7.3}\n",
                    sp.split.name(),
                    m.model,
                    x.macro_f1_rows,
                    x.macro_f1_incidents,
                    pc[0].precision,
                    pc[0].recall,
                    pc[1].precision,
                    pc[1].recall,
                    pc[2].precision,
                    pc[2].recall,
                    x.pr_auc_tp.map_or("-".to_string(), |v| format!("{v:.3}")),
                    x.precision_at_10,
                    x.ndcg_at_10,
                    x.precision_at_10_long,
                    x.ndcg_at_10_long,
                ));
            }
        }
        if let Some(f) = forward {
            s.push_str(&forward_table(f, &self.splits));
        }
        s.push_str(&format!(
            "\n{:<18} {:<16} {:>15} {:>15} {:>8} {:>8} {:>22} {:>7} {:>9}\n",
            "split",
            "model",
            "logloss raw→cal",
            "ECE(TP) raw→cal",
            "target",
            "covered",
            "covered TP/BP/FP",
            "unsure",
            "F1(conf)"
        ));
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        for sp in &self.splits {
            for m in &sp.models {
                let Some(c) = &m.calibration else { continue };
                let a = m.abstention.as_ref();
                s.push_str(&format!(
                    "{:<18} {:<16} {:>15} {:>15} {:>8} {:>8} {:>22} {:>7} {:>9}\n",
                    sp.split.name(),
                    m.model,
                    format!("{:.3}→{:.3}", c.log_loss_raw, c.log_loss_calibrated),
                    format!("{:.3}→{:.3}", c.ece_tp_raw, c.ece_tp_calibrated),
                    opt(a.map(|a| a.sets.target_coverage)),
                    opt(a.map(|a| a.sets.coverage)),
                    a.map_or("-".to_string(), |a| a
                        .sets
                        .class_coverage
                        .map(opt)
                        .join("/")),
                    opt(a.map(|a| a.sets.uncertain_rate)),
                    opt(a.and_then(|a| a.macro_f1_confident)),
                ));
            }
        }
        let ranked: Vec<_> = self
            .splits
            .iter()
            .flat_map(|sp| sp.models.iter().map(move |m| (sp, m)))
            .filter_map(|(sp, m)| m.ranker.as_ref().map(|r| (sp, m, r)))
            .collect();
        if !ranked.is_empty() {
            s.push_str(&format!(
                "\n{:<18} {:<22} {:>7} {:>7} {:>7} {:>7}   (per tenant queue)\n",
                "split", "queue order", "P@10", "NDCG10", "P@10L", "NDCG10L"
            ));
            for (sp, m, r) in ranked {
                let x = &m.metrics;
                for (name, v) in [
                    (
                        format!("{} P(TP)", m.model),
                        [
                            x.precision_at_10,
                            x.ndcg_at_10,
                            x.precision_at_10_long,
                            x.ndcg_at_10_long,
                        ],
                    ),
                    (
                        "lambdamart".to_string(),
                        [
                            r.precision_at_10,
                            r.ndcg_at_10,
                            r.precision_at_10_long,
                            r.ndcg_at_10_long,
                        ],
                    ),
                ] {
                    s.push_str(&format!(
                        "{:<18} {:<22} {:>7.3} {:>7.3} {:>7.3} {:>7.3}\n",
                        sp.split.name(),
                        name,
                        v[0],
                        v[1],
                        v[2],
                        v[3]
                    ));
                }
            }
        }
        if let Some(o) = &self.online {
            s.push('\n');
            s.push_str(&o.table());
        }
        if let Some(c) = &self.cold_start {
            s.push('\n');
            s.push_str(&c.table());
        }
        if let Some(a) = &self.ablation {
            s.push_str(&ablation_table(a));
        }
        if let Some(r) = &self.repeats {
            s.push_str(&r.table());
        }
        s
    }
}

/// The forward split's origins and each model's figures per origin, their mean, and the
/// pooled figures of tenants with history and new tenants.
fn forward_table(f: &ForwardSplitCv, splits: &[SplitCv]) -> String {
    let mut s = format!(
        "\n{:<12} {:<12} {:>8} {:>8} {:>8} {:>8}   (forward origins)\n",
        "origin", "window end", "train", "test", "history", "new"
    );
    for o in &f.origins {
        s.push_str(&format!(
            "{:<12} {:<12} {:>8} {:>8} {:>8} {:>8}\n",
            o.origin,
            o.window_end,
            o.train_incidents,
            o.test_incidents,
            o.test_with_history,
            o.test_new_tenants
        ));
    }
    s.push_str(&format!(
        "\n{:<18} {:<16} {:<22} {:>9} {:>8} {:>8} {:>7}\n",
        "split", "model", "origin", "incidents", "F1(row)", "F1(inc)", "PRAUC"
    ));
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for sp in splits.iter().filter(|sp| sp.split == SplitKind::Forward) {
        for m in &sp.models {
            let Some(fm) = &m.forward else { continue };
            for r in fm.rows() {
                s.push_str(&format!(
                    "{:<18} {:<16} {:<22} {:>9} {:>8.3} {:>8.3} {:>7}\n",
                    sp.split.name(),
                    m.model,
                    r.what,
                    r.incidents.map_or("-".to_string(), |n| n.to_string()),
                    r.macro_f1_rows,
                    r.macro_f1_incidents,
                    opt(r.pr_auc_tp)
                ));
            }
        }
    }
    s
}

/// Runs the cross-validation of every split kind. `progress` receives one message per fitted
/// fold.
pub fn run(
    params: &CvParams,
    input: &str,
    evidence: &[Evidence],
    corr: &Correlated,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<CvReport, TrainError> {
    let plan = CvPlan::new(params, corr)?;
    let (labelled, y, weights, tenant_of) =
        (&plan.labelled, &plan.y, &plan.weights, &plan.tenant_of);
    let mut splits = Vec::new();
    for (s, (kind, folds)) in plan.splits.iter().enumerate() {
        let kind = *kind;
        // Metrics cover the incidents that were held out by an evaluated fold.
        let held: Vec<usize> = plan.held(s).into_iter().map(|(j, _)| j).collect();
        let mut models = Vec::new();
        for &alg in &params.algorithms {
            let tp = params.train.clone().algorithm(alg);
            let tp = if params
                .train
                .model
                .as_ref()
                .is_some_and(|m| m.algorithm() == alg)
            {
                tp
            } else {
                TrainParams { model: None, ..tp }
            };
            let with_ranker = params.compare_ranker && alg == Algorithm::Gbdt;
            let tp = TrainParams {
                ranker: if with_ranker {
                    Some(tp.ranker.clone().unwrap_or_default())
                } else {
                    None
                },
                ..tp
            };
            let tp = tp.check()?;
            let mut oof = vec![0f32; labelled.len() * N_CLASSES];
            let mut rank_scores = vec![0f32; labelled.len()];
            let mut raw = vec![0f32; labelled.len() * N_CLASSES];
            let mut grades = vec![0u8; labelled.len()];
            let mut sets = vec![GradeSet::EMPTY; labelled.len()];
            let mut target_coverage = None;
            let mut importance = FamilyImportance::default();
            for (f, fold) in folds.iter().enumerate() {
                progress(&format!(
                    "{} {} fold {}/{}",
                    kind.name(),
                    alg.name(),
                    f + 1,
                    folds.len()
                ));
                let train: Vec<usize> = fold.train.iter().map(|&j| labelled[j]).collect();
                let test: Vec<usize> = fold.test.iter().map(|&j| labelled[j]).collect();
                let art = fit(&tp, evidence, corr, &train, kn, empty_info(input))?;
                let pred = art.predict(evidence, corr, &test, kn)?;
                target_coverage = art.conformal.as_ref().map(|c| 1.0 - c.alpha());
                for (r, &j) in fold.test.iter().enumerate() {
                    let (dst, src) = (j * N_CLASSES..(j + 1) * N_CLASSES, r * N_CLASSES);
                    oof[dst.clone()].copy_from_slice(&pred.probs[src..src + N_CLASSES]);
                    raw[dst].copy_from_slice(&pred.raw[src..src + N_CLASSES]);
                    grades[j] = pred.grades[r];
                    sets[j] = pred.sets[r];
                    if let Some(rs) = &pred.rank_scores {
                        rank_scores[j] = rs[r];
                    }
                }
                if params.keep_predictions {
                    let contrib = art.tp_contributions(&pred.x)?;
                    importance.add(&contrib, &art.schema);
                }
            }
            let held_y: Vec<u8> = held.iter().map(|&j| y[j]).collect();
            let held_raw = super::prob_rows(&raw, &held);
            let held_cal = super::prob_rows(&oof, &held);
            let held_sets: Vec<GradeSet> = held.iter().map(|&j| sets[j]).collect();
            let held_grades: Vec<u8> = held.iter().map(|&j| grades[j]).collect();
            models.push(ModelCv {
                model: alg.name().to_string(),
                metrics: metrics_on(&held, &oof, &grades, y, weights, tenant_of)?,
                calibration: Some(calibration_cv(&held_raw, &held_cal, &held_y)?),
                abstention: target_coverage
                    .map(|t| abstention_cv(t, &held_sets, &held_grades, &held_y))
                    .transpose()?,
                ranker: if with_ranker {
                    let t: Vec<u64> = held.iter().map(|&j| tenant_of[j]).collect();
                    let sc: Vec<f32> = held.iter().map(|&j| rank_scores[j]).collect();
                    let tp: Vec<bool> = held_y.iter().map(|&c| c == 0).collect();
                    Some(queue_cv(&t, &sc, &tp)?)
                } else {
                    None
                },
                forward: forward_of(&plan, kind, &held, &oof, &grades)?,
                held_out: params.keep_predictions.then(|| HeldOut {
                    family_importance: importance.means(),
                    ..plan.held_out(&held, &oof, &grades)
                }),
            });
        }
        if params.baseline {
            let mut oof = vec![0f32; labelled.len() * N_CLASSES];
            for fold in folds {
                let train: Vec<usize> = fold.train.iter().map(|&j| labelled[j]).collect();
                let lookup = Lookup::fit(evidence, corr, &train);
                for &j in &fold.test {
                    let p = lookup.predict(evidence, corr, labelled[j]);
                    oof[j * N_CLASSES..(j + 1) * N_CLASSES].copy_from_slice(&p);
                }
            }
            let grades = DecisionRule::default().decide_all(&oof);
            models.push(ModelCv {
                model: "lookup-baseline".into(),
                metrics: metrics_on(&held, &oof, &grades, y, weights, tenant_of)?,
                calibration: None,
                abstention: None,
                ranker: None,
                forward: forward_of(&plan, kind, &held, &oof, &grades)?,
                held_out: params
                    .keep_predictions
                    .then(|| plan.held_out(&held, &oof, &grades)),
            });
        }
        splits.push(SplitCv {
            split: kind,
            forward: if kind == SplitKind::Forward {
                plan.forward_origins()
            } else {
                None
            },
            models,
        });
    }
    Ok(CvReport {
        input: input.to_string(),
        folds: params.folds,
        folds_run: plan.folds_run,
        seed: params.seed,
        incidents: labelled.len(),
        tenants: plan.tenants,
        splits,
        online: None,
        ablation: None,
        repeats: None,
        cold_start: None,
    })
}

/// [`CvPlan::forward_figures`] of buffers over all labelled incidents, on the forward split
/// only.
fn forward_of(
    plan: &CvPlan,
    kind: SplitKind,
    held: &[usize],
    probs: &[f32],
    grades: &[u8],
) -> Result<Option<ForwardModelCv>, TrainError> {
    if kind != SplitKind::Forward {
        return Ok(None);
    }
    plan.forward_figures(&plan.held_out(held, probs, grades))
}

impl CvPlan {
    /// The predictions of the incidents `held` (indices into `labelled`, ascending) from
    /// buffers over all labelled incidents, without family importance.
    fn held_out(&self, held: &[usize], probs: &[f32], grades: &[u8]) -> HeldOut {
        HeldOut {
            keys: held.iter().map(|&j| self.keys[j]).collect(),
            y: held.iter().map(|&j| self.y[j]).collect(),
            weights: held.iter().map(|&j| self.weights[j]).collect(),
            probs: super::prob_rows(probs, held),
            grades: held.iter().map(|&j| grades[j]).collect(),
            family_importance: Vec::new(),
        }
    }
}

/// Running sums of |family contribution| to the TP margin over held-out incidents.
#[derive(Default)]
struct FamilyImportance {
    /// (family, sum of |contribution|), schema order
    sums: Vec<(String, f64)>,
    rows: usize,
}

impl FamilyImportance {
    /// Adds the rows of `contrib` (`schema.len() + 1` per row, last = bias).
    fn add(&mut self, contrib: &[f32], schema: &crate::matrix::FeatureSchema) {
        let width = schema.len() + 1;
        for row in contrib.chunks_exact(width) {
            for (family, c) in schema.family_sums(&row[..width - 1]) {
                let abs = f64::from(c.abs());
                match self.sums.iter_mut().find(|(f, _)| *f == family) {
                    Some((_, s)) => *s += abs,
                    None => self.sums.push((family, abs)),
                }
            }
            self.rows += 1;
        }
    }

    /// Mean |contribution| per family.
    fn means(&self) -> Vec<(String, f64)> {
        let n = self.rows.max(1) as f64;
        self.sums.iter().map(|(f, s)| (f.clone(), s / n)).collect()
    }
}

pub(crate) fn empty_info(input: &str) -> DataInfo {
    DataInfo {
        file: input.to_string(),
        sha256: String::new(),
        records: 0,
        accepted: 0,
        rejected: 0,
        incidents: 0,
        tenants: 0,
        grades: [0; 3],
    }
}

/// Bins of the reliability curves and ECE in [`CalibrationCv`].
pub const RELIABILITY_BINS: usize = 10;

fn calibration_cv(raw: &[f32], cal: &[f32], y: &[u8]) -> Result<CalibrationCv, TrainError> {
    let reliability_tp_raw = class_reliability_curve(raw, y, 0, RELIABILITY_BINS)?;
    let reliability_tp_calibrated = class_reliability_curve(cal, y, 0, RELIABILITY_BINS)?;
    Ok(CalibrationCv {
        log_loss_raw: eval::log_loss(raw, y)?,
        log_loss_calibrated: eval::log_loss(cal, y)?,
        ece_tp_raw: curve_ece(&reliability_tp_raw),
        ece_tp_calibrated: curve_ece(&reliability_tp_calibrated),
        reliability_tp_raw,
        reliability_tp_calibrated,
    })
}

fn abstention_cv(
    target_coverage: f64,
    sets: &[GradeSet],
    grades: &[u8],
    y: &[u8],
) -> Result<AbstentionCv, TrainError> {
    let confident: Vec<usize> = (0..y.len()).filter(|&i| !sets[i].is_uncertain()).collect();
    let pick = |v: &[u8]| confident.iter().map(|&i| v[i]).collect::<Vec<u8>>();
    let macro_f1_confident = if confident.is_empty() {
        None
    } else {
        Some(eval::classification_report(&pick(y), &pick(grades), None)?.macro_f1)
    };
    Ok(AbstentionCv {
        sets: super::coverage_report(target_coverage, sets, y),
        macro_f1_confident,
    })
}

/// [`metrics`] over the rows `held` only.
fn metrics_on(
    held: &[usize],
    probs: &[f32],
    pred: &[u8],
    y: &[u8],
    weights: &[f64],
    tenant_of: &[u64],
) -> Result<CvMetrics, TrainError> {
    if held.len() == y.len() {
        return metrics(probs, pred, y, weights, tenant_of);
    }
    let p = super::prob_rows(probs, held);
    let pick = |v: &[u8]| held.iter().map(|&j| v[j]).collect::<Vec<u8>>();
    let w: Vec<f64> = held.iter().map(|&j| weights[j]).collect();
    let t: Vec<u64> = held.iter().map(|&j| tenant_of[j]).collect();
    metrics(&p, &pick(pred), &pick(y), &w, &t)
}

/// Pooled metrics from out-of-fold probabilities and predicted grades.
pub fn metrics(
    probs: &[f32],
    pred: &[u8],
    y: &[u8],
    weights: &[f64],
    tenant_of: &[u64],
) -> Result<CvMetrics, TrainError> {
    let rows = eval::classification_report(y, pred, Some(weights))?;
    let inc = eval::classification_report(y, pred, None)?;
    let p_tp: Vec<f32> = probs.chunks_exact(N_CLASSES).map(|p| p[0]).collect();
    let is_tp: Vec<bool> = y.iter().map(|&c| c == 0).collect();
    let q = queue_cv(tenant_of, &p_tp, &is_tp)?;
    Ok(CvMetrics {
        macro_f1_rows: rows.macro_f1,
        macro_f1_incidents: inc.macro_f1,
        macro_precision_rows: rows.macro_precision,
        macro_recall_rows: rows.macro_recall,
        accuracy_rows: rows.accuracy,
        per_class_rows: rows.per_class,
        pr_auc_tp: eval::average_precision(&p_tp, &is_tp),
        precision_at_10: q.precision_at_10,
        ndcg_at_10: q.ndcg_at_10,
        queues: q.queues,
        precision_at_10_long: q.precision_at_10_long,
        ndcg_at_10_long: q.ndcg_at_10_long,
        long_queues: q.long_queues,
        log_loss: eval::log_loss(probs, y)?,
        incidents: y.len(),
        rows: weights.iter().sum::<f64>() as usize,
    })
}

/// The reference lookup: majority grade by (tenant, detector), else tenant, else detector,
/// else the global prior. Probabilities are the grade shares of the level used.
struct Lookup {
    by_tenant_detector: BTreeMap<(u64, String), [u32; 3]>,
    by_tenant: BTreeMap<u64, [u32; 3]>,
    by_detector: BTreeMap<String, [u32; 3]>,
    prior: [u32; 3],
}

fn primary_detector(evidence: &[Evidence], corr: &Correlated, i: usize) -> String {
    most_frequent(
        corr.incidents[i]
            .evidence
            .iter()
            .map(|&r| evidence[r as usize].detector.as_str()),
    )
}

impl Lookup {
    fn fit(evidence: &[Evidence], corr: &Correlated, train: &[usize]) -> Lookup {
        let mut l = Lookup {
            by_tenant_detector: BTreeMap::new(),
            by_tenant: BTreeMap::new(),
            by_detector: BTreeMap::new(),
            prior: [0; 3],
        };
        for &i in train {
            let inc = &corr.incidents[i];
            let Some(g) = inc.grade else { continue };
            let c = g.class_id() as usize;
            let d = primary_detector(evidence, corr, i);
            let t = inc.key.tenant.0;
            l.by_tenant_detector.entry((t, d.clone())).or_default()[c] += 1;
            l.by_tenant.entry(t).or_default()[c] += 1;
            l.by_detector.entry(d).or_default()[c] += 1;
            l.prior[c] += 1;
        }
        l
    }

    fn predict(&self, evidence: &[Evidence], corr: &Correlated, i: usize) -> [f32; 3] {
        let t = corr.incidents[i].key.tenant.0;
        let d = primary_detector(evidence, corr, i);
        let counts = self
            .by_tenant_detector
            .get(&(t, d.clone()))
            .or_else(|| self.by_tenant.get(&t))
            .or_else(|| self.by_detector.get(&d))
            .unwrap_or(&self.prior);
        let total: u32 = counts.iter().sum::<u32>().max(1);
        counts.map(|n| n as f32 / total as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_mean_sample_sd_and_range() {
        let s = Spread::of(&[1.0, 2.0, 4.0]).unwrap();
        let mean = 7.0 / 3.0;
        assert!((s.mean - mean).abs() < 1e-12);
        let var = [1.0f64, 2.0, 4.0]
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / 2.0;
        assert!((s.sd - var.sqrt()).abs() < 1e-12);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert_eq!(Spread::of(&[0.5]).unwrap().sd, 0.0);
        assert!(Spread::of(&[]).is_none());
    }
}
