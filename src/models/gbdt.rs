//! Gradient-boosted trees grader (the default): multiclass softprob over TP / BP / FP.
//!
//! Sits in `models`, beside `logistic.rs` and `forest.rs`, behind [`super::Fit`] / [`Scorer`].
//! hessboost 0.4 (pinned) fits, scores and explains; its types never leave this file: the
//! adapter copies our row-major [`FeatureMatrix`] into hessboost's `DMatrix` for fitting and
//! explaining, and scores borrowed rows in place (`predict_margin_rows`, no copy).
//!
//! Fitting holds out a validation share of the rows, split by the caller's groups when given
//! ([`GbdtValidParams::fit_grouped`]; rows of one group never sit on both sides), and boosts
//! until the validation multiclass log-loss has not improved for `early_stopping_rounds`
//! rounds. It then refits on *all* rows for the best round count scaled by
//! `1 / (1 − validation_share)` (the rounds a model needs grow with its rows), so no verdict
//! is wasted. Training is deterministic on any thread count (hessboost's guarantee; tested).
//!
//! Raw scores are the per-class margins (softmax inputs); contributions are exact TreeSHAP
//! values of those margins (hessboost's `predict_contribs`), bias last, summing to the margin.
//!
//! Storage: the fitted model travels inside our JSON artifact as base64 of hessboost's
//! native binary encoding, which hessboost keeps forwards-compatible across releases; the
//! version is pinned anyway, and decoding checks the feature and class counts.

use super::{check_class, check_fit_input, check_score_input, Fit, ModelError, Scorer, N_CLASSES};
use crate::matrix::FeatureMatrix;
use base64::Engine as _;
use hessboost::data::FeatureType;
use hessboost::metric::{Cutoff, EvalMetric};
use hessboost::objective::{LambdaRank, Multiclass};
use hessboost::prelude::{
    BoostedModel, DMatrix, Iterations, ModelFormat, Objective, Trainer, TrainingParams,
};
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;

fn learner_err(reason: impl std::fmt::Display) -> ModelError {
    ModelError::Learner {
        learner: "hessboost gbdt",
        reason: reason.to_string(),
    }
}

/// Unchecked hyper-parameters of the GBDT (serde-friendly; missing fields take defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GbdtParams {
    max_rounds: usize,
    learning_rate: f64,
    max_depth: usize,
    min_child_weight: f64,
    min_child_groups: usize,
    lambda: f64,
    alpha: f64,
    subsample: f64,
    colsample_bytree: f64,
    max_bin: usize,
    early_stopping_rounds: usize,
    validation_share: f64,
    seed: u64,
    categorical_columns: Vec<usize>,
}

impl Default for GbdtParams {
    fn default() -> Self {
        Self {
            max_rounds: 600,
            learning_rate: 0.026,
            max_depth: 6,
            min_child_weight: 3.0,
            min_child_groups: 1,
            lambda: 1.95,
            alpha: 0.0,
            subsample: 0.8,
            colsample_bytree: 0.8,
            max_bin: 256,
            early_stopping_rounds: 40,
            validation_share: 0.15,
            seed: 42,
            categorical_columns: Vec::new(),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident / $get:ident : $ty:ty;)*) => {
        impl GbdtParams {
            $(
                $(#[$doc])*
                pub fn $name(mut self, v: $ty) -> Self {
                    self.$name = v;
                    self
                }
                /// The configured value (see the setter of the same name).
                pub fn $get(&self) -> $ty {
                    self.$name
                }
            )*
        }
    };
}

setters! {
    /// Upper bound on boosting rounds (each round adds one tree per grade). Default `600`.
    max_rounds / get_max_rounds: usize;
    /// Shrinkage per round, in `(0, 1]`. Default `0.026`.
    ///
    /// The defaults of depth, learning rate, `min_child_weight` and `lambda` are the winner of
    /// `threatrank tune --seed 42` (8 candidates, 3-fold grouped CV, both splits) on the
    /// shipped GUIDE sample; every candidate scored within 0.012 macro-F1 of it.
    learning_rate / get_learning_rate: f64;
    /// Maximum tree depth, `1..=16`. Default `6`.
    max_depth / get_max_depth: usize;
    /// Minimum hessian sum in a child (`>= 0`). Default `3`.
    min_child_weight / get_min_child_weight: f64;
    /// Fewest distinct split groups each child of a split must hold rows of; `0` and `1`
    /// constrain nothing. Training passes each row's tenant as its split group
    /// ([`GbdtValidParams::fit_grouped`]), so no leaf rests on the incidents of fewer tenants
    /// than that; without split groups each row is its own group. `threatrank tune` searches
    /// it. Default `1`:
    /// measured on the GUIDE sample (`eval --repeats 3`, fold seeds 42–44), 5 tenants per leaf
    /// moved the mean macro-F1 rows / incidents by −0.002 / 0.000 incident-disjoint and
    /// +0.003 / −0.003 tenant-disjoint, within the fold noise (seed 42 alone: +0.019 rows
    /// tenant-disjoint, which the other seeds did not repeat).
    min_child_groups / get_min_child_groups: usize;
    /// L2 regularization of leaf weights (`>= 0`). Default `1.95`.
    lambda / get_lambda: f64;
    /// L1 regularization of leaf weights (`>= 0`). Default `0`.
    alpha / get_alpha: f64;
    /// Row share sampled per tree, in `(0, 1]`. Default `0.8`.
    subsample / get_subsample: f64;
    /// Column share sampled per tree, in `(0, 1]`. Default `0.8`.
    colsample_bytree / get_colsample_bytree: f64;
    /// Histogram bins per feature, `2..=65535`. Default `256`.
    max_bin / get_max_bin: usize;
    /// Stop when validation log-loss has not improved for this many rounds; `0` turns early
    /// stopping off (then all `max_rounds` are used and nothing is held out). Default `40`.
    early_stopping_rounds / get_early_stopping_rounds: usize;
    /// Share of rows (of groups, when groups are given) held out for early stopping, in
    /// `(0, 0.5]`. Default `0.15`.
    validation_share / get_validation_share: f64;
    /// Seed of the validation split and of row/column sampling. Default `42`.
    seed / get_seed: u64;
}

impl GbdtParams {
    /// Columns hessboost treats as unordered categories (non-negative integer codes; splits
    /// partition code sets, unseen codes go the missing-value way). Default none.
    pub fn categorical_columns(mut self, columns: Vec<usize>) -> Self {
        self.categorical_columns = columns;
        self
    }

    /// The configured categorical columns.
    pub fn get_categorical_columns(&self) -> &[usize] {
        &self.categorical_columns
    }

    /// Validates the parameters; errors with [`ModelError::InvalidParam`] naming the first one
    /// out of range.
    pub fn check(&self) -> Result<GbdtValidParams, ModelError> {
        let bad = |name, reason: String| Err(ModelError::InvalidParam { name, reason });
        let unit = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        let non_neg = |v: f64| v.is_finite() && v >= 0.0;
        if self.max_rounds == 0 {
            return bad("max_rounds", "must be at least 1".into());
        }
        if !unit(self.learning_rate) {
            return bad(
                "learning_rate",
                format!("must be in (0, 1], got {}", self.learning_rate),
            );
        }
        if !(1..=16).contains(&self.max_depth) {
            return bad(
                "max_depth",
                format!("must be in 1..=16, got {}", self.max_depth),
            );
        }
        for (name, v) in [
            ("min_child_weight", self.min_child_weight),
            ("lambda", self.lambda),
            ("alpha", self.alpha),
        ] {
            if !non_neg(v) {
                return bad(name, format!("must be finite and >= 0, got {v}"));
            }
        }
        for (name, v) in [
            ("subsample", self.subsample),
            ("colsample_bytree", self.colsample_bytree),
        ] {
            if !unit(v) {
                return bad(name, format!("must be in (0, 1], got {v}"));
            }
        }
        if !(2..=65535).contains(&self.max_bin) {
            return bad(
                "max_bin",
                format!("must be in 2..=65535, got {}", self.max_bin),
            );
        }
        if !(self.validation_share > 0.0 && self.validation_share <= 0.5) {
            return bad(
                "validation_share",
                format!("must be in (0, 0.5], got {}", self.validation_share),
            );
        }
        // hessboost validates the combination too; surface its refusal here, not mid-fit.
        self.learner_params()?;
        Ok(GbdtValidParams(self.clone()))
    }

    fn learner_params(&self) -> Result<TrainingParams, ModelError> {
        TrainingParams::builder()
            .objective(Objective::Softprob(
                Multiclass::new(N_CLASSES).map_err(learner_err)?,
            ))
            .eval_metric(EvalMetric::MLogLoss)
            .eta(self.learning_rate)
            .max_depth(self.max_depth)
            .min_child_weight(self.min_child_weight)
            .min_child_groups(self.min_child_groups)
            .lambda(self.lambda)
            .alpha(self.alpha)
            .subsample(self.subsample)
            .colsample_bytree(self.colsample_bytree)
            .max_bin(self.max_bin)
            .seed(self.seed)
            .build()
            .map_err(learner_err)
    }
}

/// Checked GBDT parameters; [`Fit::fit`] trains a [`FittedGbdt`].
#[derive(Debug, Clone, PartialEq)]
pub struct GbdtValidParams(GbdtParams);

impl GbdtValidParams {
    /// The parameters these were checked from.
    pub fn params(&self) -> &GbdtParams {
        &self.0
    }

    /// Fits with early stopping on a validation split that keeps each group (e.g. incident or
    /// tenant id per row) on one side. `groups.len()` must equal the row count. `split_groups`
    /// (one per row, e.g. the tenant) are what [`GbdtParams::min_child_groups`] counts; `None`
    /// counts each row as its own group.
    pub fn fit_grouped(
        &self,
        x: &FeatureMatrix,
        y: &[u8],
        groups: &[u64],
        split_groups: Option<&[u64]>,
    ) -> Result<FittedGbdt, ModelError> {
        check_fit_input(x, y)?;
        for (what, len) in [
            ("groups", groups.len()),
            (
                "split groups",
                split_groups.map_or(x.n_rows(), <[u64]>::len),
            ),
        ] {
            if len != x.n_rows() {
                return Err(ModelError::Labels {
                    reason: format!("{len} {what} for {} rows", x.n_rows()),
                });
            }
        }
        let p = &self.0;
        let labels: Vec<f32> = y.iter().map(|&c| c as f32).collect();
        let mut all = to_dmatrix(x)?.with_labels(&labels).map_err(learner_err)?;
        if p.min_child_groups > 1 {
            let own: Vec<u64>;
            let split = match split_groups {
                Some(s) => s,
                None => {
                    own = (0..x.n_rows() as u64).collect();
                    &own
                }
            };
            all = all.with_split_groups(split).map_err(learner_err)?;
        }
        if !p.categorical_columns.is_empty() {
            let mut types = vec![FeatureType::Numerical; x.n_cols()];
            for &c in &p.categorical_columns {
                let slot = types.get_mut(c).ok_or_else(|| ModelError::InvalidParam {
                    name: "categorical_columns",
                    reason: format!("column {c} out of range for {} columns", x.n_cols()),
                })?;
                *slot = FeatureType::Categorical;
            }
            all = all.with_feature_types(&types).map_err(learner_err)?;
        }
        let (rounds, stopped_at) = if p.early_stopping_rounds == 0 {
            (p.max_rounds, None)
        } else {
            let (train_rows, valid_rows) = validation_split(groups, p.validation_share, p.seed);
            if train_rows.is_empty() || valid_rows.is_empty() {
                (p.max_rounds, None)
            } else {
                let dtrain = all.select_rows(&train_rows).map_err(learner_err)?;
                let dvalid = all.select_rows(&valid_rows).map_err(learner_err)?;
                let (rounds, best) = early_stopped_rounds(
                    &p.learner_params()?,
                    &dtrain,
                    &dvalid,
                    p.max_rounds,
                    p.early_stopping_rounds,
                    p.validation_share,
                )?;
                (rounds, Some(best))
            }
        };
        let params = p.learner_params()?;
        let model = Trainer::new(&params, &all, rounds)
            .train()
            .map_err(learner_err)?
            .model;
        FittedGbdt::from_model(model, x.n_cols(), rounds, stopped_at)
    }
}

impl Fit for GbdtValidParams {
    type Fitted = FittedGbdt;

    /// Fits with early stopping on a row-level validation split (each row its own group).
    fn fit(&self, x: &FeatureMatrix, y: &[u8]) -> Result<FittedGbdt, ModelError> {
        let groups: Vec<u64> = (0..x.n_rows() as u64).collect();
        self.fit_grouped(x, y, &groups, None)
    }
}

/// Deterministic grouped split: a group goes to validation when a seeded hash of its id falls
/// below `share`. Returns (train rows, validation rows), each ascending.
fn validation_split(groups: &[u64], share: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let cut = (share * u64::MAX as f64) as u64;
    let mut train = Vec::with_capacity(groups.len());
    let mut valid = Vec::new();
    for (i, &g) in groups.iter().enumerate() {
        if crate::rng::mix64(g ^ seed.rotate_left(17)) < cut {
            valid.push(i);
        } else {
            train.push(i);
        }
    }
    (train, valid)
}

/// Boosts on `dtrain` until the validation metric has not improved for `patience` rounds;
/// returns (the best round count scaled to all rows by `1 / (1 − share)`, capped at
/// `max_rounds`; the best round count itself).
fn early_stopped_rounds(
    params: &TrainingParams,
    dtrain: &DMatrix,
    dvalid: &DMatrix,
    max_rounds: usize,
    patience: usize,
    share: f64,
) -> Result<(usize, usize), ModelError> {
    let patience = NonZeroUsize::new(patience).ok_or(ModelError::InvalidParam {
        name: "early_stopping_rounds",
        reason: "must be at least 1 to stop early".into(),
    })?;
    let result = Trainer::new(params, dtrain, max_rounds)
        .eval(dvalid, "valid")
        .early_stopping_rounds(patience)
        .train()
        .map_err(learner_err)?;
    let best = result
        .model
        .best_iteration()
        .map_or(result.model.num_boost_rounds(), |b| b + 1);
    let scaled = (best as f64 / (1.0 - share)).round() as usize;
    Ok((scaled.clamp(1, max_rounds), best))
}

fn to_dmatrix(x: &FeatureMatrix) -> Result<DMatrix, ModelError> {
    DMatrix::from_dense(x.as_slice(), x.n_rows(), x.n_cols()).map_err(learner_err)
}

/// A fitted GBDT: hessboost's model plus what our interface needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "GbdtRepr", into = "GbdtRepr")]
pub struct FittedGbdt {
    model: BoostedModel,
    n_features: usize,
    rounds: usize,
    early_stopped_at: Option<usize>,
}

/// Wire form of [`FittedGbdt`]: the model as base64 of hessboost's binary encoding.
#[derive(Serialize, Deserialize)]
struct GbdtRepr {
    n_features: usize,
    rounds: usize,
    early_stopped_at: Option<usize>,
    hessboost_binary_base64: String,
}

/// hessboost's binary encoding of `model`, as base64 text.
fn encode_model(model: &BoostedModel) -> String {
    let bytes = model
        .encode(ModelFormat::Binary)
        .expect("hessboost encodes a model it trained");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of [`encode_model`], with a message naming what failed.
fn decode_model(text: &str) -> Result<BoostedModel, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| format!("gbdt model is not valid base64: {e}"))?;
    BoostedModel::decode(&bytes, ModelFormat::Binary)
        .map_err(|e| format!("gbdt model does not decode: {e}"))
}

fn same_model(a: &BoostedModel, b: &BoostedModel) -> bool {
    a.encode(ModelFormat::Binary).ok() == b.encode(ModelFormat::Binary).ok()
}

impl From<FittedGbdt> for GbdtRepr {
    fn from(m: FittedGbdt) -> Self {
        GbdtRepr {
            n_features: m.n_features,
            rounds: m.rounds,
            early_stopped_at: m.early_stopped_at,
            hessboost_binary_base64: encode_model(&m.model),
        }
    }
}

impl TryFrom<GbdtRepr> for FittedGbdt {
    type Error = String;

    fn try_from(r: GbdtRepr) -> Result<Self, String> {
        let model = decode_model(&r.hessboost_binary_base64)?;
        FittedGbdt::from_model(model, r.n_features, r.rounds, r.early_stopped_at)
            .map_err(|e| e.to_string())
    }
}

impl PartialEq for FittedGbdt {
    fn eq(&self, other: &Self) -> bool {
        self.n_features == other.n_features
            && self.rounds == other.rounds
            && self.early_stopped_at == other.early_stopped_at
            && same_model(&self.model, &other.model)
    }
}

impl FittedGbdt {
    fn from_model(
        model: BoostedModel,
        n_features: usize,
        rounds: usize,
        early_stopped_at: Option<usize>,
    ) -> Result<Self, ModelError> {
        if model.n_features() != n_features || model.n_outputs() != N_CLASSES {
            return Err(learner_err(format!(
                "model has {} features and {} outputs, expected {n_features} and {N_CLASSES}",
                model.n_features(),
                model.n_outputs()
            )));
        }
        Ok(Self {
            model,
            n_features,
            rounds,
            early_stopped_at,
        })
    }

    /// Boosting rounds of the final model (trees per grade).
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// The round early stopping chose on the validation split, before scaling to all rows
    /// (`None` when early stopping was off or the split was degenerate).
    pub fn early_stopped_at(&self) -> Option<usize> {
        self.early_stopped_at
    }

    /// Total gain of each feature's splits, summed over the trees (index = feature column).
    pub fn gain_importance(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.n_features];
        for (f, g) in self
            .model
            .feature_importance(hessboost::prelude::ImportanceType::TotalGain)
        {
            if let Some(slot) = out.get_mut(f) {
                *slot = g;
            }
        }
        out
    }

    fn margins(&self, x: &FeatureMatrix) -> Result<Vec<f32>, ModelError> {
        if x.n_rows() == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .model
            .predict_margin_rows(x.as_slice(), Iterations::Best)
            .map_err(learner_err)?
            .as_slice()
            .to_vec())
    }
}

impl Scorer for FittedGbdt {
    fn n_features(&self) -> usize {
        self.n_features
    }

    fn score_into(&self, x: &FeatureMatrix, out: &mut [f32]) -> Result<(), ModelError> {
        check_score_input(self.n_features, x, out.len(), N_CLASSES)?;
        let margins = self.margins(x)?;
        for (o, m) in out
            .chunks_exact_mut(N_CLASSES)
            .zip(margins.chunks_exact(N_CLASSES))
        {
            let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (oc, &mc) in o.iter_mut().zip(m) {
                *oc = (mc - max).exp();
                sum += *oc;
            }
            for oc in o.iter_mut() {
                *oc /= sum;
            }
        }
        Ok(())
    }

    fn contributions_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        check_class(class)?;
        let w = self.n_features + 1;
        check_score_input(self.n_features, x, out.len(), w)?;
        if x.n_rows() == 0 {
            return Ok(());
        }
        let contribs = self
            .model
            .predict_contribs(&to_dmatrix(x)?, Iterations::Best)
            .map_err(learner_err)?;
        for (row, o) in out.chunks_exact_mut(w).enumerate() {
            let c = contribs
                .get(row, class)
                .ok_or_else(|| learner_err("contributions have fewer rows than the input"))?;
            o.copy_from_slice(c);
        }
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
        let margins = self.margins(x)?;
        for (o, m) in out.iter_mut().zip(margins.chunks_exact(N_CLASSES)) {
            *o = m[class];
        }
        Ok(())
    }
}

/// Unchecked parameters of the LambdaMART ranker (`rank:ndcg` over query groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RankerParams {
    /// upper bound on boosting rounds
    pub max_rounds: usize,
    /// shrinkage per round, `(0, 1]`
    pub learning_rate: f64,
    /// maximum tree depth, `1..=16`
    pub max_depth: usize,
    /// minimum hessian sum in a child (`>= 0`)
    pub min_child_weight: f64,
    /// L2 regularization of leaf weights (`>= 0`)
    pub lambda: f64,
    /// column share sampled per tree, `(0, 1]`
    pub colsample_bytree: f64,
    /// stop when validation NDCG@10 has not improved for this many rounds (`0`: off)
    pub early_stopping_rounds: usize,
    /// share of queries held out for early stopping, `(0, 0.5]`
    pub validation_share: f64,
    /// seed of the validation split and column sampling
    pub seed: u64,
}

impl Default for RankerParams {
    fn default() -> Self {
        Self {
            max_rounds: 400,
            learning_rate: 0.08,
            max_depth: 4,
            min_child_weight: 1.0,
            lambda: 1.0,
            colsample_bytree: 0.8,
            early_stopping_rounds: 40,
            validation_share: 0.15,
            seed: 42,
        }
    }
}

/// NDCG cut-off the ranker is early-stopped on (the hunter's first screen).
pub const RANK_CUTOFF: usize = 10;

impl RankerParams {
    /// The same parameters with `seed` mixed into the ranker's seed (a training run's seed).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed ^= seed;
        self
    }

    /// Validates the parameters, naming the first one out of range.
    pub fn check(&self) -> Result<RankerValidParams, ModelError> {
        // The shared ranges are those of the classifier's parameters.
        GbdtParams::default()
            .max_rounds(self.max_rounds)
            .learning_rate(self.learning_rate)
            .max_depth(self.max_depth)
            .min_child_weight(self.min_child_weight)
            .lambda(self.lambda)
            .colsample_bytree(self.colsample_bytree)
            .validation_share(self.validation_share)
            .check()?;
        self.learner_params()?;
        Ok(RankerValidParams(self.clone()))
    }

    fn learner_params(&self) -> Result<TrainingParams, ModelError> {
        TrainingParams::builder()
            .objective(Objective::RankNdcg(LambdaRank::default()))
            .eval_metric(EvalMetric::Ndcg(
                Cutoff::top(RANK_CUTOFF).map_err(learner_err)?,
            ))
            .eta(self.learning_rate)
            .max_depth(self.max_depth)
            .min_child_weight(self.min_child_weight)
            .lambda(self.lambda)
            .colsample_bytree(self.colsample_bytree)
            .seed(self.seed)
            .build()
            .map_err(learner_err)
    }
}

/// Checked ranker parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RankerValidParams(RankerParams);

impl RankerValidParams {
    /// Fits LambdaMART: `relevance` per row (e.g. 1 for a true positive, 0 otherwise) and a
    /// `query` id per row (e.g. tenant × day: the queue a hunter works). Rows need not be
    /// sorted; each query's rows are gathered. Early stopping holds out whole queries.
    pub fn fit(
        &self,
        x: &FeatureMatrix,
        relevance: &[f32],
        query: &[u64],
    ) -> Result<FittedRanker, ModelError> {
        if x.n_rows() == 0 || x.n_cols() == 0 {
            return Err(ModelError::Empty {
                what: "ranking matrix has no rows or no columns",
            });
        }
        if relevance.len() != x.n_rows() || query.len() != x.n_rows() {
            return Err(ModelError::Labels {
                reason: format!(
                    "{} relevance labels and {} query ids for {} rows",
                    relevance.len(),
                    query.len(),
                    x.n_rows()
                ),
            });
        }
        if relevance.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
            return Err(ModelError::Labels {
                reason: "relevance must be finite and >= 0".into(),
            });
        }
        let p = &self.0;
        let params = p.learner_params()?;
        let grouped = |rows: &[usize]| -> Result<DMatrix, ModelError> {
            // Rows of one query must be contiguous: stable sort by query id.
            let mut order = rows.to_vec();
            order.sort_by_key(|&i| query[i]);
            let mut sizes: Vec<usize> = Vec::new();
            let mut values = Vec::with_capacity(order.len() * x.n_cols());
            let mut labels = Vec::with_capacity(order.len());
            for (k, &i) in order.iter().enumerate() {
                if k == 0 || query[order[k - 1]] != query[i] {
                    sizes.push(0);
                }
                *sizes.last_mut().expect("pushed above") += 1;
                values.extend_from_slice(x.row(i));
                labels.push(relevance[i]);
            }
            DMatrix::from_dense_vec(values, order.len(), x.n_cols())
                .and_then(|d| d.with_labels(&labels))
                .and_then(|d| d.with_group_sizes(&sizes))
                .map_err(learner_err)
        };
        let all_rows: Vec<usize> = (0..x.n_rows()).collect();
        let all = grouped(&all_rows)?;
        let mut rounds = p.max_rounds;
        if p.early_stopping_rounds > 0 {
            let (train_rows, valid_rows) = validation_split(query, p.validation_share, p.seed);
            if !train_rows.is_empty() && !valid_rows.is_empty() {
                let (dtrain, dvalid) = (grouped(&train_rows)?, grouped(&valid_rows)?);
                rounds = early_stopped_rounds(
                    &params,
                    &dtrain,
                    &dvalid,
                    p.max_rounds,
                    p.early_stopping_rounds,
                    p.validation_share,
                )?
                .0;
            }
        }
        let model = Trainer::new(&params, &all, rounds)
            .train()
            .map_err(learner_err)?
            .model;
        Ok(FittedRanker {
            model,
            n_features: x.n_cols(),
            rounds,
        })
    }
}

/// A fitted LambdaMART ranker: one score per row, higher = earlier in the queue. Scores are
/// comparable within a query, not probabilities.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RankerRepr", into = "RankerRepr")]
pub struct FittedRanker {
    model: BoostedModel,
    n_features: usize,
    rounds: usize,
}

#[derive(Serialize, Deserialize)]
struct RankerRepr {
    n_features: usize,
    rounds: usize,
    hessboost_binary_base64: String,
}

impl From<FittedRanker> for RankerRepr {
    fn from(m: FittedRanker) -> Self {
        RankerRepr {
            n_features: m.n_features,
            rounds: m.rounds,
            hessboost_binary_base64: encode_model(&m.model),
        }
    }
}

impl TryFrom<RankerRepr> for FittedRanker {
    type Error = String;

    fn try_from(r: RankerRepr) -> Result<Self, String> {
        let model = decode_model(&r.hessboost_binary_base64)?;
        if model.n_features() != r.n_features || model.n_outputs() != 1 {
            return Err(format!(
                "ranker has {} features and {} outputs, expected {} and 1",
                model.n_features(),
                model.n_outputs(),
                r.n_features
            ));
        }
        Ok(FittedRanker {
            model,
            n_features: r.n_features,
            rounds: r.rounds,
        })
    }
}

impl PartialEq for FittedRanker {
    fn eq(&self, other: &Self) -> bool {
        self.n_features == other.n_features
            && self.rounds == other.rounds
            && same_model(&self.model, &other.model)
    }
}

impl FittedRanker {
    /// Boosting rounds of the final model.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Width of the matrices it scores.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Ranking score per row into `out` (`out.len() == x.n_rows()`).
    pub fn score_into(&self, x: &FeatureMatrix, out: &mut [f32]) -> Result<(), ModelError> {
        check_score_input(self.n_features, x, out.len(), 1)?;
        if x.n_rows() == 0 {
            return Ok(());
        }
        let margins = self
            .model
            .predict_margin_rows(x.as_slice(), Iterations::Best)
            .map_err(learner_err)?;
        out.copy_from_slice(margins.as_slice());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::conformance::{synthetic, ROWS};

    #[test]
    fn bad_params_are_named() {
        let cases = [
            (GbdtParams::default().max_rounds(0), "max_rounds"),
            (GbdtParams::default().learning_rate(0.0), "learning_rate"),
            (GbdtParams::default().max_depth(0), "max_depth"),
            (GbdtParams::default().lambda(-1.0), "lambda"),
            (GbdtParams::default().subsample(1.5), "subsample"),
            (GbdtParams::default().max_bin(1), "max_bin"),
            (
                GbdtParams::default().validation_share(0.9),
                "validation_share",
            ),
        ];
        for (p, name) in cases {
            match p.check() {
                Err(ModelError::InvalidParam { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: expected InvalidParam, got {other:?}"),
            }
        }
    }

    #[test]
    fn validation_split_keeps_groups_whole_and_is_seeded() {
        let groups: Vec<u64> = (0..2000).map(|i| i / 4).collect();
        let (t, v) = validation_split(&groups, 0.2, 7);
        assert_eq!(t.len() + v.len(), groups.len());
        let vg: std::collections::HashSet<u64> = v.iter().map(|&i| groups[i]).collect();
        assert!(t.iter().all(|&i| !vg.contains(&groups[i])));
        let share = v.len() as f64 / groups.len() as f64;
        assert!((0.15..0.25).contains(&share), "share {share}");
        assert_eq!(validation_split(&groups, 0.2, 7), (t, v.clone()));
        assert_ne!(validation_split(&groups, 0.2, 8).1, v);
    }

    #[test]
    fn early_stopping_stops_before_the_cap_and_refits_on_all_rows() {
        let (x, y) = synthetic(3, ROWS * 4);
        let m = GbdtParams::default()
            .learning_rate(0.2)
            .max_rounds(2000)
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let stopped = m.early_stopped_at().expect("early stopping ran");
        assert!(stopped < 2000, "stopped at {stopped}");
        assert!(
            m.rounds() >= stopped,
            "refit rounds {} < {stopped}",
            m.rounds()
        );
    }

    /// A class decided by an unordered code (0..12, classes by code % 3): as a category the
    /// GBDT separates it with shallow trees; an out-of-range column is an error.
    #[test]
    fn categorical_columns_are_used_and_checked() {
        let mut x = FeatureMatrix::with_columns(2);
        let mut y = Vec::new();
        for i in 0..600u32 {
            let code = (i * 7) % 12;
            x.push_row(&[code as f32, (i % 5) as f32]).unwrap();
            y.push(((code * 5) % 3) as u8);
        }
        let p = GbdtParams::default()
            .max_depth(2)
            .early_stopping_rounds(0)
            .max_rounds(30);
        let cat = p
            .clone()
            .categorical_columns(vec![0])
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let right = crate::models::conformance::hits(&cat.score(&x).unwrap(), &y);
        assert_eq!(right, y.len(), "categorical splits separate the codes");
        assert!(matches!(
            p.categorical_columns(vec![5]).check().unwrap().fit(&x, &y),
            Err(ModelError::InvalidParam {
                name: "categorical_columns",
                ..
            })
        ));
    }

    /// Each of 12 tenants shows its own value of feature 0 and its own grade (neighbouring
    /// values differ in grade). Unconstrained, or with each row its own group, the trees give
    /// every value its leaf; with `min_child_groups = 4` and tenants as split groups a leaf
    /// must hold four tenants, so no tenant-specific pattern is learnt.
    #[test]
    fn min_child_groups_keeps_leaves_off_single_tenants() {
        let mut x = FeatureMatrix::with_columns(2);
        let (mut y, mut tenants) = (Vec::new(), Vec::new());
        for i in 0..600u32 {
            let t = i % 12;
            x.push_row(&[t as f32, ((i * 7) % 11) as f32]).unwrap();
            y.push(((t * 5) % 3) as u8);
            tenants.push(u64::from(t));
        }
        let groups: Vec<u64> = (0..x.n_rows() as u64).collect();
        let p = GbdtParams::default()
            .early_stopping_rounds(0)
            .max_rounds(40)
            .learning_rate(0.3)
            .colsample_bytree(1.0);
        let accuracy = |m: &FittedGbdt| {
            crate::models::conformance::hits(&m.score(&x).unwrap(), &y) as f64 / y.len() as f64
        };
        let free = p.clone().min_child_groups(1).check().unwrap();
        let bound = p.clone().min_child_groups(4).check().unwrap();
        let learnt = accuracy(&free.fit_grouped(&x, &y, &groups, Some(&tenants)).unwrap());
        let per_row = accuracy(&bound.fit_grouped(&x, &y, &groups, None).unwrap());
        let held = accuracy(&bound.fit_grouped(&x, &y, &groups, Some(&tenants)).unwrap());
        assert_eq!(learnt, 1.0, "unconstrained");
        assert_eq!(per_row, 1.0, "each row its own group");
        assert!(held < 0.75, "single tenants' grades were learnt: {held}");
    }

    #[test]
    fn groups_of_the_wrong_length_are_an_error() {
        let (x, y) = synthetic(3, ROWS);
        let p = GbdtParams::default().check().unwrap();
        assert!(matches!(
            p.fit_grouped(&x, &y, &[1, 2, 3], None),
            Err(ModelError::Labels { .. })
        ));
        let groups: Vec<u64> = (0..x.n_rows() as u64).collect();
        assert!(matches!(
            p.fit_grouped(&x, &y, &groups, Some(&[1, 2, 3])),
            Err(ModelError::Labels { .. })
        ));
    }

    /// Queries of 8 rows; relevance is 1 where feature 0 is high. The ranker must order a
    /// fresh set of queries better than chance, and survive a serde round trip.
    #[test]
    fn ranker_learns_an_order_and_round_trips() {
        let (x, y) = synthetic(5, ROWS * 4);
        let query: Vec<u64> = (0..x.n_rows() as u64).map(|i| i / 8).collect();
        let relevance: Vec<f32> = y.iter().map(|&c| f32::from(u8::from(c == 0))).collect();
        let m = RankerParams::default()
            .check()
            .unwrap()
            .fit(&x, &relevance, &query)
            .unwrap();
        let (xt, yt) = synthetic(6, ROWS);
        let mut s = vec![0.0; xt.n_rows()];
        m.score_into(&xt, &mut s).unwrap();
        // Pairwise order accuracy between relevant and irrelevant rows.
        let (mut right, mut pairs) = (0u32, 0u32);
        for i in 0..yt.len() {
            for j in 0..yt.len() {
                if yt[i] == 0 && yt[j] != 0 {
                    pairs += 1;
                    right += u32::from(s[i] > s[j]);
                }
            }
        }
        let auc = f64::from(right) / f64::from(pairs);
        assert!(auc > 0.85, "ranking AUC {auc}");
        let back: FittedRanker = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let mut s2 = vec![0.0; xt.n_rows()];
        back.score_into(&xt, &mut s2).unwrap();
        assert_eq!(s, s2);
        assert!(matches!(
            RankerParams::default()
                .check()
                .unwrap()
                .fit(&x, &relevance[1..], &query),
            Err(ModelError::Labels { .. })
        ));
    }

    #[test]
    fn corrupt_serialized_model_is_an_error() {
        let (x, y) = synthetic(3, ROWS);
        let m = GbdtParams::default().check().unwrap().fit(&x, &y).unwrap();
        let mut v = serde_json::to_value(&m).unwrap();
        v["hessboost_binary_base64"] = serde_json::Value::String("AAAA".into());
        assert!(serde_json::from_value::<FittedGbdt>(v.clone()).is_err());
        v["hessboost_binary_base64"] = serde_json::Value::String("not base64!".into());
        assert!(serde_json::from_value::<FittedGbdt>(v).is_err());
    }
}
