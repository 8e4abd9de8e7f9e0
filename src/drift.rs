//! Drift: how far the incidents a deployed model scores have moved from the ones it was trained
//! on, and how often analysts agree with its grades.
//!
//! Sits at the end of the pipeline, beside `rank`: `train` fits a [`ReferenceProfile`] on the
//! out-of-fold training matrix, the calibrated out-of-fold P(TP) and each row's tenant, and
//! stores it in the artifact (`Artifact::reference`); a caller (the scoring service's
//! `GET /v1/drift`) counts the feature rows and scores it has produced in a [`DriftCounts`] (one
//! per tenant, merged for the global figure) and asks the profile for a [`DriftReport`]
//! ([`ReferenceProfile::report_for`]): population stability (PSI) of every feature and of the
//! score against a training baseline — the tenant's own training incidents, or all of them for
//! the global report — plus the [`Agreement`] between predicted and analyst grades over the last
//! verdicts, against the thresholds of [`DriftParams`].
//!
//! Why out-of-fold: new incidents are not in the encoders' tenant history and not in the final
//! model's training set. The out-of-fold matrix (history refitted without the incident's own
//! fold) and the inner folds' calibrated probabilities look like new incidents do; the final
//! model's in-sample scores on its own training rows would be more extreme than anything it
//! later sees, and every deployment would look shifted.
//!
//! # Population stability index
//!
//! With reference shares `e_i` and current shares `a_i` over the same bins,
//!
//! ```text
//! PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)
//! ```
//!
//! (the symmetrised Kullback–Leibler divergence, KL(a‖e) + KL(e‖a); Siddiqi, *Credit Risk
//! Scorecards*, 2006; Yurdakul, "Statistical properties of population stability index", 2018).
//! Every term is ≥ 0. The usual reading: below 0.1 no shift, 0.1–0.25 a moderate one, above 0.25
//! a major one (hence [`DriftParams::psi_warn`] = 0.25). A bin that is empty on one side would
//! make the term infinite, so an empty bin's share is floored at half a row of its side,
//! `max(SHARE_FLOOR, 1/(2n))` with `SHARE_FLOOR = 1e-4` (the training side, thousands of rows,
//! gets about 1e-4): every term is then at most `ln(2n) ≤ ln(1e4) ≈ 9.21`, PSI stays finite, and
//! a bin the reference never saw still counts heavily. Half a row rather than 1e-4 on a small
//! side because `n` rows cannot resolve a share below `1/n`: with 1e-4, one of ten 10% bins left
//! empty by chance in a sample of 40 rows would add 0.1 · ln(1000) = 0.69 on its own. A bin empty
//! on both sides adds 0.
//!
//! # Sampling noise
//!
//! A small sample of an unchanged population still has PSI > 0: under no shift,
//! `PSI · n·m/(n + m)` tends to χ² with `B − 1` degrees of freedom (PSI is Jeffreys' divergence;
//! Yurdakul 2018, §3), `n` current rows, `m` training rows, `B` bins holding training rows. Its
//! mean, `(B − 1)(1/n + 1/m)`, is 0.30 for ten bins and 30 rows: above 0.25 with no shift at
//! all. So a PSI warns only when it also passes the (1 − α) quantile of that no-shift
//! distribution, `noise = χ²_{B−1}(1 − α) · (1/n + 1/m)` ([`DriftParams::alpha`], default 0.01;
//! split over the features by Bonferroni, α / features each, as every feature is tested). The
//! threshold a PSI is held to is `max(psi_warn, noise)`: from a few hundred rows on it is
//! `psi_warn`. χ² quantiles by Wilson & Hilferty (1931), the normal quantile by Acklam's
//! rational approximation (relative error < 1.2e-9).
//!
//! # Per-tenant baselines
//!
//! One tenant against all tenants' training incidents measures how that tenant differs from the
//! others as much as any drift: holding out the last third of the shipped sample (no drift at
//! all), every tenant with at least 30 held-out incidents had a score PSI between 1.1 and 8
//! against the pooled reference. So [`ReferenceProfile::fit`] also stores, for every tenant with
//! at least `min_tenant_rows` training incidents ([`MIN_TENANT_ROWS`] = 30 by default), that
//! tenant's own training counts over the same bins (score and every feature), and
//! [`ReferenceProfile::report_for`] judges the tenant against them ([`Baseline::Tenant`]; the
//! sampling noise uses the tenant's training rows). Why 30: it is the fewest rows a PSI is
//! judged on at all ([`DriftParams::min_rows`]), and the noise threshold grows with `1/m` for a
//! baseline of `m` rows: 30 rows already double it for a 30-row sample (`1/30 + 1/30`), 10 would
//! quadruple it, leaving only gross shifts visible, while ten bins cannot be described by fewer
//! rows anyway. The shipped sample has 48 such tenants (+27 KB gzip in the artifact, stored
//! densely: every bin of every column, which compresses well).
//!
//! A tenant without a baseline (fewer training incidents, or new) is shown its PSI against all
//! tenants, for information: [`Baseline::None`], no PSI warning, a note saying why, status
//! `insufficient_data` unless agreement warns (that PSI mostly measures the tenant itself).
//!
//! # Target-encoded families
//!
//! The `tenant` family (the tenant's own grade history) is read past-only, as of each
//! incident's start, in training and at scoring alike (`features` module docs): incidents held
//! out of the same sample (no drift at all) show PSI at most 0.02 on its columns, like every
//! other family, so it is judged like them. The `global` family
//! ([`INFORMATIONAL_FAMILIES`]) is not yet: a training row reads a snapshot of the verdicts
//! that ended before its day (without its tenant fold), scoring reads the one snapshot of all
//! training verdicts, so the values of the same keys differ (its rates sit on a few point
//! masses, one per category or detector, which any other snapshot moves across the bin edges).
//! The same held-out incidents show PSI up to 3.5 on its columns (measured on a logistic
//! model trained on the first 1,500 sample rows, scoring the next 3,000). Reading the full
//! snapshot without only the row's own tenant in training (each row then reads almost what
//! scoring reads) was measured and rejected: the category columns still shift (PSI up to 3.0:
//! each tenant's leave-one-out value is another point mass), and the model learns to read the
//! tenant's own grade mix, later verdicts included, from those small shifts (the leave-one-out
//! leak of target encoding): forward GBDT macro-F1 0.768 rows / 0.745 incidents, TP PR-AUC
//! 0.804, against 0.803 / 0.790 / 0.871 past-only (`threatrank eval --split forward
//! --algorithm gbdt`, 2026-12-08). Its PSI is therefore
//! computed and reported apart ([`DriftReport::informational_features`],
//! [`FeaturePsi::informational`]) but never warns and is left out of
//! [`DriftReport::feature_psi_max`] and of the Bonferroni count; the score's PSI still covers
//! what it does to the model.
//!
//! # Score bins
//!
//! The score is binned by the priority a hunter sees, `round(100 · P(TP))`
//! ([`crate::rank::priority`]), with the same rule as any column (one bin per value for few
//! values, else deduplicated deciles): the shipped model's edges are priorities 0, 1, 2, 6, 18,
//! 48, 97, priority 0 holding a third of the training incidents. Deciles of the raw P(TP) put
//! four edges below 0.013 (0.0035, 0.0049, 0.0073, 0.0124), so a tenant whose incidents all
//! score near 0 showed PSI up to 2.9 for moves from P(TP) 0.004 to 0.003 — a difference that
//! changes no priority and no grade. Profiles stored before this keep their P(TP) edges
//! (`score_unit` absent in the JSON; [`ReferenceProfile::score_in_priorities`]).
//!
//! # Measured (shipped sample, first two thirds trained, last third scored)
//!
//! 34 tenants get a baseline; 10 of them have at least 30 held-out incidents (2,426 held-out
//! incidents in all). No drift, each tenant against its own baseline:
//!
//! | model | tenants `ok` / `warning` | score PSI against own baseline | against all tenants |
//! | --- | --- | --- | --- |
//! | logistic (`tests/it/artifact.rs`) | 10 / 0 | 0.00003–0.42 | 1.1–4.9 |
//! | GBDT (the default) | 7 / 3 | 0–1.37 | 1.4–4.5 |
//! | GBDT, P(TP) deciles instead of priorities | 3 / 7 | 0–2.9 | 2.6–4.3 |
//!
//! Globally (GBDT): score PSI 0.03, largest judged feature PSI 0.02, status `ok`; the largest
//! informational one 6.9 (`family:bp_rate`). Upside-down scores (1 − P(TP)) warn for all 10
//! tenants and globally (score PSI ≥ 7.9 per tenant, 2.7 global), and so does the `size`
//! feature `log_evidence` shifted by 5 (PSI 1.4–10.2 per tenant, 10.5 global).
//!
//! Limit: the GBDT's three remaining tenant warnings are its final model scoring a tenant's new
//! incidents a little more confidently than the inner-fold models scored its training
//! incidents (the final model and the encoders saw the tenant's whole history): the held-out
//! incidents move by one priority point (tenant 4: 67% at priority 1 in training, 97% held
//! out; tenant 11: 18% → 60% at priority 2; tenant 3: 88% → 100% at priority 0, PSI 0.252 at a
//! threshold of 0.25). A per-tenant warning on a GBDT model is therefore worth a look, not
//! proof of drift, when the shift is of a priority point or two.
//!
//! # Bins
//!
//! Right-closed bins `(e_{i-1}, e_i]` between strictly increasing, finite edges, found by binary
//! search: a value's bin is the number of edges below it. A column with at most [`MAX_BINS`]
//! distinct finite training values gets one bin per value (the edges are the values but the
//! largest); any other column gets decile edges (nearest rank), deduplicated, so a value held by
//! many rows (a count that is mostly 0) gets a bin of its own. No edge sits at or above the
//! training maximum: values beyond the training range share the first or last bin. A column
//! constant in training has one bin and never shifts, which is right for the model too: no tree
//! splits on it. Every column also has a missing bin for NaN (empty in training unless NaN
//! occurred there); ±∞ fall into the end bins.
//!
//! ```
//! use threatrank::drift::{
//!     Agreement, Baseline, DriftCounts, DriftParams, DriftStatus, ReferenceProfile, MIN_TENANT_ROWS,
//! };
//! use threatrank::domain::Grade;
//! use threatrank::matrix::{FeatureMatrix, FeatureSchema};
//!
//! let schema = FeatureSchema::new(1, vec![("size".into(), "size".into())]);
//! let values: Vec<f32> = (0..100).map(|i| i as f32).collect();
//! let p_tp: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
//! let x = FeatureMatrix::from_vec(100, 1, values.clone()).unwrap();
//! let tenants = vec![7; 100]; // one tenant
//! let profile = ReferenceProfile::fit(&x, &schema, &p_tp, &tenants, MIN_TENANT_ROWS).unwrap();
//!
//! // Incidents like the training ones: no shift.
//! let mut counts = DriftCounts::new(&profile);
//! for (v, p) in values.iter().zip(&p_tp) {
//!     counts.add(&[*v], *p).unwrap();
//! }
//! let params = DriftParams::default().check().unwrap();
//! let r = profile.report_for(Some(7), &counts, None, &params).unwrap();
//! assert_eq!((r.baseline, r.baseline_rows), (Baseline::Tenant, 100));
//! assert_eq!(r.status, DriftStatus::Ok);
//! assert_eq!(r.score_psi, Some(0.0));
//! // Tenant 8 has no training incidents: PSI against all tenants, for information only.
//! let r = profile.report_for(Some(8), &counts, None, &params).unwrap();
//! assert_eq!((r.baseline, r.status), (Baseline::None, DriftStatus::InsufficientData));
//!
//! // Every incident larger and scored higher than in training: a warning for each.
//! let mut shifted = DriftCounts::new(&profile);
//! for _ in 0..50 {
//!     shifted.add(&[500.0], 0.99).unwrap();
//! }
//! let pairs = (0..50).map(|i| (Grade::TruePositive, if i % 2 == 0 { Grade::TruePositive } else { Grade::FalsePositive }));
//! let r = profile.report_for(None, &shifted, Some(Agreement::from_pairs(pairs)), &params).unwrap();
//! assert_eq!(r.status, DriftStatus::Warning);
//! assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
//! ```

use crate::domain::Grade;
use crate::matrix::{FeatureMatrix, FeatureSchema};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most value bins per column (deciles).
pub const MAX_BINS: usize = 10;

/// Smallest share a bin takes in the PSI sum (see the module docs), so that an empty bin gives a
/// large but finite term.
pub const SHARE_FLOOR: f64 = 1e-4;

/// Features listed in [`DriftReport::top_features`] (and in
/// [`DriftReport::informational_features`]).
pub const TOP_FEATURES: usize = 5;

/// Default fewest training incidents of a tenant for [`ReferenceProfile::fit`] to store that
/// tenant's own baseline (see the module docs, "Per-tenant baselines").
pub const MIN_TENANT_ROWS: u64 = 30;

/// Feature families whose PSI is reported for information only, never warns and is left out of
/// [`DriftReport::feature_psi_max`]: the cross-tenant target encodings, whose training values
/// come from other snapshots than the scoring-time one (module docs, "Target-encoded
/// families").
pub const INFORMATIONAL_FAMILIES: [&str; 1] = ["global"];

/// Whether a feature of `family` is reported for information only ([`INFORMATIONAL_FAMILIES`]).
///
/// ```
/// use threatrank::drift::is_informational;
/// assert!(is_informational("global") && !is_informational("tenant"));
/// assert!(!is_informational("entities"));
/// ```
pub fn is_informational(family: &str) -> bool {
    INFORMATIONAL_FAMILIES.contains(&family)
}

/// Errors of fitting a profile, counting rows and reporting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriftError {
    /// A parameter is out of range.
    #[error("invalid drift parameter `{name}`: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// Inputs of the wrong length.
    #[error("drift: {what} has {got} values, expected {expected}")]
    Shape {
        /// which input
        what: &'static str,
        /// length needed
        expected: usize,
        /// length given
        got: usize,
    },
    /// A profile needs at least one training row.
    #[error("drift: cannot fit a reference profile on an empty training matrix")]
    Empty,
    /// Counts were made with another profile's bins (for example a model reloaded in between).
    #[error("drift: the counts were binned by another reference profile")]
    ProfileMismatch,
    /// A stored profile is inconsistent (edges not increasing, counts not adding up).
    #[error("drift: invalid reference profile: {reason}")]
    Invalid {
        /// what is wrong
        reason: String,
    },
}

/// The bin edges of one column: strictly increasing and finite.
#[derive(Debug, Clone, PartialEq)]
struct Bins {
    edges: Vec<f32>,
}

impl Bins {
    /// Edges for `values` (any order, NaN allowed and ignored); see the module docs.
    fn fit(values: impl Iterator<Item = f32>) -> Bins {
        let mut v: Vec<f32> = values.filter(|x| x.is_finite()).collect();
        v.sort_unstable_by(f32::total_cmp);
        let Some(&max) = v.last() else {
            return Bins { edges: Vec::new() };
        };
        let mut distinct = v.clone();
        distinct.dedup_by(|a, b| a == b);
        let mut edges = if distinct.len() <= MAX_BINS {
            distinct
        } else {
            let n = v.len();
            let mut e: Vec<f32> = (1..MAX_BINS)
                .map(|j| v[(j * n).div_ceil(MAX_BINS) - 1])
                .collect();
            e.dedup_by(|a, b| a == b);
            e
        };
        edges.retain(|&e| e < max);
        Bins { edges }
    }

    /// Value bins plus the missing bin.
    fn len(&self) -> usize {
        self.edges.len() + 2
    }

    /// The bin of `v`: number of edges below it; NaN → the missing bin (last).
    fn bin(&self, v: f32) -> usize {
        if v.is_nan() {
            self.edges.len() + 1
        } else {
            self.edges.partition_point(|&e| e < v)
        }
    }

    fn check(&self, what: &str) -> Result<(), DriftError> {
        if self.edges.iter().any(|e| !e.is_finite()) {
            return Err(DriftError::Invalid {
                reason: format!("{what}: an edge is not finite"),
            });
        }
        if self.edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DriftError::Invalid {
                reason: format!("{what}: edges are not strictly increasing"),
            });
        }
        Ok(())
    }
}

/// The bins of every feature column and of the score, shared by a profile and its counts.
#[derive(Debug, Clone, PartialEq)]
struct Binning {
    features: Vec<Bins>,
    score: Bins,
    /// what the score bins hold
    score_unit: ScoreUnit,
    /// start of each feature's bins in the flat count vector; `features.len() + 1` entries
    offsets: Vec<usize>,
}

impl Binning {
    fn new(features: Vec<Bins>, score: Bins, score_unit: ScoreUnit) -> Binning {
        let mut offsets = Vec::with_capacity(features.len() + 1);
        let mut at = 0;
        offsets.push(at);
        for b in &features {
            at += b.len();
            offsets.push(at);
        }
        Binning {
            features,
            score,
            score_unit,
            offsets,
        }
    }

    fn n_feature_bins(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }
}

/// Current counts per feature bin and score bin, made with one [`ReferenceProfile`]'s bins
/// (cheap to make: the bins are shared, not copied).
///
/// Adding a row costs one binary search over at most nine edges per column.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftCounts {
    binning: Arc<Binning>,
    rows: u64,
    /// per feature, its bins then its missing bin, columns one after the other
    features: Vec<u64>,
    score: Vec<u64>,
}

impl DriftCounts {
    /// Empty counts over `profile`'s bins.
    pub fn new(profile: &ReferenceProfile) -> DriftCounts {
        let binning = Arc::clone(&profile.binning);
        DriftCounts {
            features: vec![0; binning.n_feature_bins()],
            score: vec![0; binning.score.len()],
            rows: 0,
            binning,
        }
    }

    /// Counts one scored row: its features (schema order) and its calibrated P(TP). A row of
    /// another width is an error and changes nothing.
    pub fn add(&mut self, row: &[f32], p_tp: f32) -> Result<(), DriftError> {
        let b = &*self.binning;
        if row.len() != b.features.len() {
            return Err(DriftError::Shape {
                what: "feature row",
                expected: b.features.len(),
                got: row.len(),
            });
        }
        for ((bins, &start), &v) in b.features.iter().zip(&b.offsets).zip(row) {
            self.features[start + bins.bin(v)] += 1;
        }
        self.score[b.score.bin(b.score_unit.value(p_tp))] += 1;
        self.rows += 1;
        Ok(())
    }

    /// Counts every row of `x` with its P(TP) (`p_tp[i]` for row `i`).
    pub fn add_matrix(&mut self, x: &FeatureMatrix, p_tp: &[f32]) -> Result<(), DriftError> {
        if x.n_cols() != self.binning.features.len() {
            return Err(DriftError::Shape {
                what: "feature matrix columns",
                expected: self.binning.features.len(),
                got: x.n_cols(),
            });
        }
        if p_tp.len() != x.n_rows() {
            return Err(DriftError::Shape {
                what: "p_tp",
                expected: x.n_rows(),
                got: p_tp.len(),
            });
        }
        for (row, &p) in x.rows().zip(p_tp) {
            self.add(row, p)?;
        }
        Ok(())
    }

    /// Adds `other`'s counts (per-tenant counts → global ones). Counts made with another
    /// profile's bins are an error and change nothing.
    pub fn merge(&mut self, other: &DriftCounts) -> Result<(), DriftError> {
        if !self.same_bins(&other.binning) {
            return Err(DriftError::ProfileMismatch);
        }
        for (a, b) in self.features.iter_mut().zip(&other.features) {
            *a += b;
        }
        for (a, b) in self.score.iter_mut().zip(&other.score) {
            *a += b;
        }
        self.rows += other.rows;
        Ok(())
    }

    /// Rows counted.
    pub fn n(&self) -> u64 {
        self.rows
    }

    fn same_bins(&self, other: &Arc<Binning>) -> bool {
        Arc::ptr_eq(&self.binning, other) || *self.binning == **other
    }

    fn into_data(self) -> DriftCountsData {
        DriftCountsData {
            features: self.features,
            score: self.score,
        }
    }

    /// Counts of feature `col`: its value bins, then the missing bin.
    fn feature(&self, col: usize) -> &[u64] {
        let o = &self.binning.offsets;
        &self.features[o[col]..o[col + 1]]
    }
}

/// The training snapshot drift is measured against: per feature column and for the calibrated
/// out-of-fold P(TP), bin edges and the training rows per bin (shares = counts / rows).
///
/// The score uses quantile edges like any other column rather than ten equal-width bins on
/// [0, 1]: calibrated P(TP) piles up near 0 and near 1, so fixed-width bins would hold most rows
/// in two bins and leave the middle ones almost empty, where the share floor, not the data,
/// decides the PSI; equal reference mass per bin is the usual PSI recommendation and makes a
/// shift anywhere in the range count alike. An isotonic calibrator's few distinct values simply
/// give fewer (deduplicated) bins.
///
/// Stored in the artifact as JSON: edges as `f32`, counts as integers (exact and short); loading
/// checks that edges increase and counts add up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ProfileData", into = "ProfileData")]
pub struct ReferenceProfile {
    rows: u64,
    names: Vec<String>,
    families: Vec<String>,
    binning: Arc<Binning>,
    /// training counts, laid out like [`DriftCounts`]
    counts: DriftCountsData,
    /// the `min_tenant_rows` the profile was fitted with; `None` for a stored profile from before
    /// per-tenant baselines (it has none)
    min_tenant_rows: Option<u64>,
    /// per-tenant training counts over the same bins, by increasing tenant id
    tenants: Vec<TenantBaseline>,
}

/// The counts of a profile (without the shared bins).
#[derive(Debug, Clone, PartialEq)]
struct DriftCountsData {
    features: Vec<u64>,
    score: Vec<u64>,
}

/// One tenant's training counts.
#[derive(Debug, Clone, PartialEq)]
struct TenantBaseline {
    tenant: u64,
    rows: u64,
    counts: DriftCountsData,
}

/// What a report is measured against: training rows and their counts.
struct Against<'a> {
    rows: u64,
    counts: &'a DriftCountsData,
}

impl ReferenceProfile {
    /// Fits the profile: bins for every column of `x` (named by `schema`) and for `p_tp` (one
    /// calibrated P(TP) per row), the training counts per bin, and, for every tenant with at
    /// least `min_tenant_rows` rows (`tenant_of_row[i]` is row `i`'s tenant; default
    /// [`MIN_TENANT_ROWS`]), that tenant's own counts over the same bins.
    ///
    /// Errors when `x` has no row, its width is not the schema's, `p_tp` or `tenant_of_row` is
    /// not one value per row, or `min_tenant_rows` is 0.
    pub fn fit(
        x: &FeatureMatrix,
        schema: &FeatureSchema,
        p_tp: &[f32],
        tenant_of_row: &[u64],
        min_tenant_rows: u64,
    ) -> Result<ReferenceProfile, DriftError> {
        if x.n_cols() != schema.len() {
            return Err(DriftError::Shape {
                what: "feature matrix columns",
                expected: schema.len(),
                got: x.n_cols(),
            });
        }
        for (what, got) in [("p_tp", p_tp.len()), ("tenant_of_row", tenant_of_row.len())] {
            if got != x.n_rows() {
                return Err(DriftError::Shape {
                    what,
                    expected: x.n_rows(),
                    got,
                });
            }
        }
        if min_tenant_rows == 0 {
            return Err(DriftError::Param {
                name: "min_tenant_rows",
                reason: "must be at least 1".into(),
            });
        }
        if x.n_rows() == 0 {
            return Err(DriftError::Empty);
        }
        let features = (0..x.n_cols())
            .map(|c| Bins::fit(x.rows().map(|r| r[c])))
            .collect();
        let unit = ScoreUnit::Priority;
        let score = Bins::fit(p_tp.iter().map(|&p| unit.value(p)));
        let binning = Arc::new(Binning::new(features, score, unit));
        let mut profile = ReferenceProfile {
            rows: 0,
            names: schema.names().to_vec(),
            families: schema.families().to_vec(),
            binning,
            counts: DriftCountsData {
                features: Vec::new(),
                score: Vec::new(),
            },
            min_tenant_rows: Some(min_tenant_rows),
            tenants: Vec::new(),
        };
        let mut counts = DriftCounts::new(&profile);
        counts.add_matrix(x, p_tp)?;
        profile.rows = counts.rows;
        profile.counts = counts.into_data();
        let mut by_tenant: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for (i, &t) in tenant_of_row.iter().enumerate() {
            by_tenant.entry(t).or_default().push(i);
        }
        for (tenant, rows) in by_tenant {
            if (rows.len() as u64) < min_tenant_rows {
                continue;
            }
            let mut c = DriftCounts::new(&profile);
            for i in rows {
                c.add(x.row(i), p_tp[i])?;
            }
            profile.tenants.push(TenantBaseline {
                tenant,
                rows: c.rows,
                counts: c.into_data(),
            });
        }
        Ok(profile)
    }

    /// Training rows.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Feature columns.
    pub fn n_features(&self) -> usize {
        self.names.len()
    }

    /// Feature names, schema order.
    pub fn feature_names(&self) -> &[String] {
        &self.names
    }

    /// Feature families, schema order.
    pub fn feature_families(&self) -> &[String] {
        &self.families
    }

    /// Bin edges of feature `col` (`None` past the last column).
    pub fn feature_edges(&self, col: usize) -> Option<&[f32]> {
        self.binning.features.get(col).map(|b| b.edges.as_slice())
    }

    /// Training shares of feature `col`: one per value bin (`feature_edges(col).len() + 1`),
    /// then the missing bin's.
    pub fn feature_shares(&self, col: usize) -> Option<Vec<f64>> {
        let o = &self.binning.offsets;
        let (&start, &end) = (o.get(col)?, o.get(col + 1)?);
        Some(shares(&self.counts.features[start..end], self.rows))
    }

    /// Bin edges of the score: priorities (0–100) for a profile fitted by this build, the
    /// calibrated P(TP) for one stored before priority bins ([`Self::score_in_priorities`]).
    pub fn score_edges(&self) -> &[f32] {
        &self.binning.score.edges
    }

    /// Whether the score is binned by priority (every profile [`Self::fit`] makes) rather than
    /// by the calibrated P(TP) itself (profiles stored before priority bins).
    pub fn score_in_priorities(&self) -> bool {
        self.binning.score_unit == ScoreUnit::Priority
    }

    /// Training shares of the score: value bins, then the missing bin.
    pub fn score_shares(&self) -> Vec<f64> {
        shares(&self.counts.score, self.rows)
    }

    /// The fewest training rows of a tenant with a baseline, as fitted; `None` for a stored
    /// profile from before per-tenant baselines (it has none).
    pub fn min_tenant_rows(&self) -> Option<u64> {
        self.min_tenant_rows
    }

    /// Tenants with a baseline, increasing.
    pub fn baseline_tenants(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.tenants.iter().map(|t| t.tenant)
    }

    /// Training rows of `tenant`'s baseline (`None` without one).
    pub fn tenant_rows(&self, tenant: u64) -> Option<u64> {
        self.baseline(tenant).map(|b| b.rows)
    }

    /// Training shares of the calibrated P(TP) of `tenant`'s baseline (`None` without one).
    pub fn tenant_score_shares(&self, tenant: u64) -> Option<Vec<f64>> {
        self.baseline(tenant)
            .map(|b| shares(&b.counts.score, b.rows))
    }

    fn baseline(&self, tenant: u64) -> Option<&TenantBaseline> {
        self.tenants
            .binary_search_by_key(&tenant, |t| t.tenant)
            .ok()
            .map(|i| &self.tenants[i])
    }

    fn pooled(&self) -> Against<'_> {
        Against {
            rows: self.rows,
            counts: &self.counts,
        }
    }

    /// PSI of every feature (schema order) between all training rows and `counts`; `None`
    /// when `counts` holds no row.
    pub fn feature_psi(&self, counts: &DriftCounts) -> Result<Option<Vec<f64>>, DriftError> {
        self.check_counts(counts)?;
        self.feature_psi_against(&self.pooled(), counts)
    }

    fn feature_psi_against(
        &self,
        reference: &Against,
        counts: &DriftCounts,
    ) -> Result<Option<Vec<f64>>, DriftError> {
        if counts.rows == 0 {
            return Ok(None);
        }
        let o = &self.binning.offsets;
        let psi = (0..self.names.len())
            .map(|c| {
                psi(
                    &reference.counts.features[o[c]..o[c + 1]],
                    counts.feature(c),
                )
            })
            .collect::<Result<Vec<f64>, DriftError>>()?;
        Ok(Some(psi))
    }

    /// PSI of the calibrated P(TP) between all training rows and `counts`; `None` when
    /// `counts` holds no row.
    pub fn score_psi(&self, counts: &DriftCounts) -> Result<Option<f64>, DriftError> {
        self.check_counts(counts)?;
        if counts.rows == 0 {
            return Ok(None);
        }
        psi(&self.counts.score, &counts.score).map(Some)
    }

    fn check_counts(&self, counts: &DriftCounts) -> Result<(), DriftError> {
        if counts.same_bins(&self.binning) {
            Ok(())
        } else {
            Err(DriftError::ProfileMismatch)
        }
    }

    /// The global drift report: [`ReferenceProfile::report_for`] with `tenant = None`.
    pub fn report(
        &self,
        counts: &DriftCounts,
        agreement: Option<Agreement>,
        params: &DriftValidParams,
    ) -> Result<DriftReport, DriftError> {
        self.report_for(None, counts, agreement, params)
    }

    /// The drift report of `counts` (and of the verdict window's `agreement`, when given)
    /// against a training baseline and the thresholds of `params`.
    ///
    /// Baseline ([`DriftReport::baseline`]): `tenant = None` → all training rows
    /// ([`Baseline::AllTenants`], global drift, `counts` being every tenant's); `Some(t)` for a
    /// tenant with a stored baseline → its own training rows ([`Baseline::Tenant`]); `Some(t)`
    /// without one → all training rows for information only ([`Baseline::None`]: no PSI
    /// warning, a note says why; a tenant differs from the pooled population without any drift,
    /// see the module docs).
    ///
    /// Warnings: the score's PSI above its threshold; any judged feature's PSI above its
    /// threshold (one warning naming how many and the largest); agreement below
    /// `agreement_warn` over at least `min_verdicts` verdicts. Features of the
    /// [`INFORMATIONAL_FAMILIES`] are reported apart (`informational_features`) and never
    /// warn. A PSI's threshold is `max(psi_warn, sampling noise)` (module docs), the noise
    /// computed with the baseline's training rows. PSI warnings need at least `min_rows` rows.
    /// Status: `warning` when there is a warning (an agreement warning is shown even when there
    /// are too few rows for PSI or no baseline), else `insufficient_data` when
    /// `rows < min_rows` or the baseline is `none` (PSI cannot be judged), else `ok`.
    ///
    /// Counts binned by another profile are an error ([`DriftError::ProfileMismatch`]).
    pub fn report_for(
        &self,
        tenant: Option<u64>,
        counts: &DriftCounts,
        agreement: Option<Agreement>,
        params: &DriftValidParams,
    ) -> Result<DriftReport, DriftError> {
        self.check_counts(counts)?;
        let mut notes = Vec::new();
        let (baseline, reference) = match tenant.map(|t| self.baseline(t)) {
            None => (Baseline::AllTenants, self.pooled()),
            Some(Some(b)) => (
                Baseline::Tenant,
                Against {
                    rows: b.rows,
                    counts: &b.counts,
                },
            ),
            Some(None) => {
                notes.push(match self.min_tenant_rows {
                    Some(m) => format!(
                        "no training baseline for this tenant (fewer than {m} training incidents): PSI shown against all tenants, for information; only analyst agreement can warn"
                    ),
                    None => "no training baseline for this tenant (this model stores no per-tenant baselines; retrain to get them): PSI shown against all tenants, for information; only analyst agreement can warn".into(),
                });
                (Baseline::None, self.pooled())
            }
        };
        let judged = baseline != Baseline::None;
        let p = &params.0;
        let n = counts.rows;
        let m = reference.rows;
        let enough_rows = n >= p.min_rows;
        let may_warn = enough_rows && judged;
        let score_psi = if n == 0 {
            None
        } else {
            Some(psi(&reference.counts.score, &counts.score)?)
        };
        let mut warnings = Vec::new();
        let score_psi_threshold = score_psi.map(|_| {
            let df = df(&reference.counts.score);
            p.psi_warn.max(noise_psi(df, p.alpha, n, m))
        });
        if let (true, Some(s), Some(t)) = (may_warn, score_psi, score_psi_threshold) {
            if s > t {
                warnings.push(format!("score distribution shifted: PSI {s:.2} > {t:.2}"));
            }
        }
        let mut top_features = Vec::new();
        let mut informational_features = Vec::new();
        let mut feature_psi_max = None;
        if let Some(psi) = self.feature_psi_against(&reference, counts)? {
            let o = &self.binning.offsets;
            let informational: Vec<bool> =
                self.families.iter().map(|f| is_informational(f)).collect();
            let n_judged = informational.iter().filter(|&&i| !i).count();
            // Bonferroni over the features that can warn.
            let alpha = p.alpha / n_judged.max(1) as f64;
            let threshold: Vec<f64> = (0..psi.len())
                .map(|c| {
                    let df = df(&reference.counts.features[o[c]..o[c + 1]]);
                    p.psi_warn.max(noise_psi(df, alpha, n, m))
                })
                .collect();
            let mut order: Vec<usize> = (0..psi.len()).collect();
            // Largest first; ties by column order (total: PSI is never NaN).
            order.sort_by(|&a, &b| psi[b].total_cmp(&psi[a]).then(a.cmp(&b)));
            let (info, judged_cols): (Vec<usize>, Vec<usize>) =
                order.into_iter().partition(|&c| informational[c]);
            feature_psi_max = judged_cols.first().map(|&c| psi[c]);
            let entry = |c: usize| FeaturePsi {
                name: self.names[c].clone(),
                family: self.families[c].clone(),
                psi: psi[c],
                threshold: threshold[c],
                informational: informational[c],
            };
            top_features = judged_cols
                .iter()
                .take(TOP_FEATURES)
                .map(|&c| entry(c))
                .collect();
            informational_features = info.iter().take(TOP_FEATURES).map(|&c| entry(c)).collect();
            let over: Vec<usize> = judged_cols
                .iter()
                .copied()
                .filter(|&c| psi[c] > threshold[c])
                .collect();
            if let (true, Some(&c)) = (may_warn, over.first()) {
                warnings.push(format!(
                    "feature distribution shifted: {} of {} features have PSI above their threshold (≥ {:.2}), largest {} ({}) PSI {:.2} > {:.2}",
                    over.len(),
                    n_judged,
                    p.psi_warn,
                    self.names[c],
                    self.families[c],
                    psi[c],
                    threshold[c]
                ));
            }
            if !info.is_empty() {
                notes.push(format!(
                    "PSI of the cross-tenant families ({}) is shown for information and never warns: their training values come from other snapshots than the scoring-time one; the score PSI covers their effect",
                    INFORMATIONAL_FAMILIES.join(", ")
                ));
            }
        }
        if let Some(a) = &agreement {
            if let Some(rate) = a.rate.filter(|_| a.verdicts >= p.min_verdicts as u64) {
                if rate < p.agreement_warn {
                    // the global view's texts name no count (its rows mix tenants)
                    warnings.push(match tenant {
                        Some(_) => format!(
                            "analysts agree with the predicted grade on {rate:.2} of the last {} verdicts < {:.2}",
                            a.verdicts, p.agreement_warn
                        ),
                        None => format!(
                            "analysts agree with the predicted grade on {rate:.2} of the recent verdicts < {:.2}",
                            p.agreement_warn
                        ),
                    });
                }
            }
        }
        let status = if !warnings.is_empty() {
            DriftStatus::Warning
        } else if !may_warn {
            DriftStatus::InsufficientData
        } else {
            DriftStatus::Ok
        };
        Ok(DriftReport {
            rows: n,
            baseline,
            baseline_rows: m,
            score_psi,
            score_psi_threshold,
            feature_psi_max,
            top_features,
            informational_features,
            agreement,
            status,
            warnings,
            notes,
        })
    }
}

/// What the score column bins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ScoreUnit {
    /// the priority a calibrated P(TP) is shown as ([`crate::rank::priority`], 0–100): what
    /// [`ReferenceProfile::fit`] uses (module docs, "Score bins")
    Priority,
    /// the calibrated P(TP) itself: profiles stored before priorities (no `score_unit` field)
    #[default]
    PTp,
}

impl ScoreUnit {
    /// The value binned for a calibrated P(TP); NaN stays NaN (the missing bin).
    fn value(self, p_tp: f32) -> f32 {
        match self {
            _ if p_tp.is_nan() => f32::NAN,
            ScoreUnit::Priority => f32::from(crate::rank::priority(p_tp)),
            ScoreUnit::PTp => p_tp,
        }
    }
}

/// `counts / rows` per bin.
fn shares(counts: &[u64], rows: u64) -> Vec<f64> {
    counts.iter().map(|&c| c as f64 / rows as f64).collect()
}

/// PSI between two count vectors over the same bins (`expected` = reference, `actual` =
/// current), each turned into shares by its own total; an empty bin's share is floored at
/// `max(SHARE_FLOOR, 1/(2n))` for a side of `n` rows, and a bin empty on both sides counts 0;
/// see the module docs for the formula. Bins are summed in order (deterministic).
///
/// Errors when the lengths differ or either side has no count.
///
/// ```
/// use threatrank::drift::psi;
/// assert_eq!(psi(&[10, 30], &[1, 3]).unwrap(), 0.0);
/// // shares 0.5/0.5 → 0.25/0.75: −0.25·ln 0.5 + 0.25·ln 1.5 = 0.2747
/// assert!((psi(&[1, 1], &[1, 3]).unwrap() - 0.274653).abs() < 1e-6);
/// ```
pub fn psi(expected: &[u64], actual: &[u64]) -> Result<f64, DriftError> {
    if expected.len() != actual.len() {
        return Err(DriftError::Shape {
            what: "actual bins",
            expected: expected.len(),
            got: actual.len(),
        });
    }
    let (ne, na) = (
        expected.iter().sum::<u64>() as f64,
        actual.iter().sum::<u64>() as f64,
    );
    if ne == 0.0 || na == 0.0 {
        return Err(DriftError::Invalid {
            reason: "PSI of bins without any count".into(),
        });
    }
    let (fe, fa) = (share_floor(ne), share_floor(na));
    let mut sum = 0.0;
    for (&e, &a) in expected.iter().zip(actual) {
        if e == 0 && a == 0 {
            continue;
        }
        let e = (e as f64 / ne).max(fe);
        let a = (a as f64 / na).max(fa);
        sum += (a - e) * (a / e).ln();
    }
    Ok(sum)
}

/// Degrees of freedom of a column's no-shift χ²: bins holding training rows − 1 (at least 1;
/// bins empty in training stay empty without a shift).
fn df(reference: &[u64]) -> usize {
    reference
        .iter()
        .filter(|&&c| c > 0)
        .count()
        .saturating_sub(1)
        .max(1)
}

/// The (1 − `alpha`) quantile of a PSI between `n` and `m` rows of one population over bins
/// with `df` degrees of freedom: `χ²_df(1 − alpha) · (1/n + 1/m)`.
fn noise_psi(df: usize, alpha: f64, n: u64, m: u64) -> f64 {
    chi2_upper(df, alpha) * (1.0 / n.max(1) as f64 + 1.0 / m.max(1) as f64)
}

/// `χ²_df(1 − alpha)` by Wilson & Hilferty (1931): `k · (1 − 2/(9k) + z·√(2/(9k)))³`, `z` the
/// standard normal (1 − alpha) quantile. Within 3% of the exact value for one degree of
/// freedom (2.5% low at alpha 0.05) and within 1% from four on, for `alpha ≤ 0.05` (tested
/// against tabulated quantiles).
fn chi2_upper(df: usize, alpha: f64) -> f64 {
    let k = df as f64;
    let h = 2.0 / (9.0 * k);
    let z = normal_upper(alpha);
    k * (1.0 - h + z * h.sqrt()).max(0.0).powi(3)
}

/// The standard normal (1 − `alpha`) quantile for `alpha` in (0, 0.5], by Acklam's rational
/// approximation of the inverse normal CDF (relative error < 1.15e-9), using its symmetry:
/// `Φ⁻¹(1 − α) = −Φ⁻¹(α)`.
fn normal_upper(alpha: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = alpha.clamp(f64::MIN_POSITIVE, 0.5);
    let lower = if p < 0.02425 {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    -lower
}

/// The share an empty bin takes on a side of `n` rows: half a row, at least [`SHARE_FLOOR`].
fn share_floor(n: f64) -> f64 {
    SHARE_FLOOR.max(0.5 / n)
}

/// Agreement between the engine's predicted grades and analysts' verdicts over a window of
/// verdicts (the caller passes the last N).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    verdicts: u64,
    agreed: u64,
    rate: Option<f64>,
}

impl Agreement {
    /// Counts `(predicted, analyst)` pairs and those that agree.
    ///
    /// ```
    /// use threatrank::drift::Agreement;
    /// use threatrank::domain::Grade::*;
    /// let a = Agreement::from_pairs([(TruePositive, TruePositive), (FalsePositive, BenignPositive)]);
    /// assert_eq!((a.verdicts(), a.agreed(), a.rate()), (2, 1, Some(0.5)));
    /// assert_eq!(Agreement::from_pairs([]).rate(), None);
    /// ```
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Grade, Grade)>) -> Agreement {
        let (mut verdicts, mut agreed) = (0u64, 0u64);
        for (predicted, analyst) in pairs {
            verdicts += 1;
            agreed += u64::from(predicted == analyst);
        }
        let rate = (verdicts > 0).then(|| agreed as f64 / verdicts as f64);
        Agreement {
            verdicts,
            agreed,
            rate,
        }
    }

    /// Verdicts in the window.
    pub fn verdicts(&self) -> u64 {
        self.verdicts
    }

    /// Verdicts whose grade is the predicted one.
    pub fn agreed(&self) -> u64 {
        self.agreed
    }

    /// `agreed / verdicts`; `None` without verdicts.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }
}

/// Drift thresholds (unchecked). The defaults are the service's (`--psi-warn`,
/// `--agreement-warn`, `--drift-window`).
///
/// ```
/// use threatrank::drift::DriftParams;
/// assert!(DriftParams::default().check().is_ok());
/// assert!(DriftParams::default().agreement_warn(1.5).check().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DriftParams {
    /// PSI above which a feature or the score warns (> 0, finite). Default 0.25.
    pub psi_warn: f64,
    /// Agreement rate below which the verdict window warns, in [0, 1]. Default 0.6.
    pub agreement_warn: f64,
    /// Fewest rows for PSI warnings (≥ 1); fewer gives `insufficient_data`. Default 30.
    pub min_rows: u64,
    /// Verdicts in the agreement window the caller passes (≥ 1). Default 200.
    pub window: usize,
    /// Fewest verdicts for an agreement warning (1 ..= `window`). Default 30.
    pub min_verdicts: usize,
    /// Chance of a PSI warning without any shift, in (0, 0.5]: a PSI warns only above the
    /// (1 − α) quantile of its sampling noise (see the module docs; Bonferroni over the
    /// features). Default 0.01.
    pub alpha: f64,
}

impl Default for DriftParams {
    fn default() -> Self {
        Self {
            psi_warn: 0.25,
            agreement_warn: 0.6,
            min_rows: 30,
            window: 200,
            min_verdicts: 30,
            alpha: 0.01,
        }
    }
}

impl DriftParams {
    /// Sets [`DriftParams::psi_warn`] (default 0.25).
    pub fn psi_warn(mut self, v: f64) -> Self {
        self.psi_warn = v;
        self
    }
    /// Sets [`DriftParams::agreement_warn`] (default 0.6).
    pub fn agreement_warn(mut self, v: f64) -> Self {
        self.agreement_warn = v;
        self
    }
    /// Sets [`DriftParams::min_rows`] (default 30).
    pub fn min_rows(mut self, n: u64) -> Self {
        self.min_rows = n;
        self
    }
    /// Sets [`DriftParams::window`] (default 200).
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }
    /// Sets [`DriftParams::min_verdicts`] (default 30).
    pub fn min_verdicts(mut self, n: usize) -> Self {
        self.min_verdicts = n;
        self
    }
    /// Sets [`DriftParams::alpha`] (default 0.01).
    pub fn alpha(mut self, a: f64) -> Self {
        self.alpha = a;
        self
    }

    /// Checks every parameter; errors name the parameter.
    pub fn check(&self) -> Result<DriftValidParams, DriftError> {
        let bad = |name, reason: String| Err(DriftError::Param { name, reason });
        if !(self.psi_warn > 0.0 && self.psi_warn.is_finite()) {
            return bad(
                "psi_warn",
                format!("{} is not a positive number", self.psi_warn),
            );
        }
        if !(0.0..=1.0).contains(&self.agreement_warn) {
            return bad(
                "agreement_warn",
                format!("{} is outside [0, 1]", self.agreement_warn),
            );
        }
        if self.min_rows == 0 {
            return bad("min_rows", "must be at least 1".into());
        }
        if self.window == 0 {
            return bad("window", "must be at least 1".into());
        }
        if self.min_verdicts == 0 || self.min_verdicts > self.window {
            return bad(
                "min_verdicts",
                format!(
                    "{} is outside 1 ..= window ({})",
                    self.min_verdicts, self.window
                ),
            );
        }
        if !(self.alpha > 0.0 && self.alpha <= 0.5) {
            return bad("alpha", format!("{} is outside (0, 0.5]", self.alpha));
        }
        Ok(DriftValidParams(self.clone()))
    }
}

/// Checked [`DriftParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct DriftValidParams(DriftParams);

impl DriftValidParams {
    /// The checked values.
    pub fn get(&self) -> &DriftParams {
        &self.0
    }
}

/// Overall drift state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftStatus {
    /// enough rows, no warning
    Ok,
    /// at least one warning
    Warning,
    /// no warning, and fewer rows than `min_rows` or no baseline to judge PSI against
    /// ([`Baseline::None`])
    InsufficientData,
}

/// What a [`DriftReport`]'s PSI is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// the tenant's own training incidents (a tenant with at least `min_tenant_rows` of them)
    Tenant,
    /// all training incidents (the global report)
    AllTenants,
    /// a tenant without a baseline of its own: PSI against all training incidents, shown for
    /// information only (never warns; one tenant differs from the pooled population without
    /// any drift)
    None,
}

/// One feature's PSI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeaturePsi {
    /// column name
    pub name: String,
    /// its family
    pub family: String,
    /// PSI against the baseline
    pub psi: f64,
    /// what `psi` is held to: `max(psi_warn, sampling noise at these rows)`
    pub threshold: f64,
    /// a feature of the [`INFORMATIONAL_FAMILIES`]: shown, never warns
    pub informational: bool,
}

/// What [`ReferenceProfile::report_for`] finds.
///
/// JSON (`serde_json::to_value`):
///
/// ```text
/// {"rows": 412, "baseline": "tenant", "baseline_rows": 136,
///  "score_psi": 0.08, "score_psi_threshold": 0.37, "feature_psi_max": 0.21,
///  "top_features": [{"name": "…", "family": "…", "psi": 0.21, "threshold": 1.9,
///                    "informational": false}, …],
///  "informational_features": [{…, "family": "global", "informational": true}, …],
///  "agreement": {"verdicts": 200, "agreed": 161, "rate": 0.805} | null,
///  "status": "ok" | "warning" | "insufficient_data",
///  "warnings": ["…"], "notes": ["…"]}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    /// rows counted
    pub rows: u64,
    /// what the PSI is measured against
    pub baseline: Baseline,
    /// training rows of that baseline (all training rows for `all_tenants` and `none`)
    pub baseline_rows: u64,
    /// PSI of the calibrated P(TP) (`None` without rows)
    pub score_psi: Option<f64>,
    /// what `score_psi` is held to: `max(psi_warn, sampling noise at these rows)` (`None`
    /// without rows)
    pub score_psi_threshold: Option<f64>,
    /// largest PSI of a feature outside the [`INFORMATIONAL_FAMILIES`] (`None` without rows or
    /// such features)
    pub feature_psi_max: Option<f64>,
    /// the [`TOP_FEATURES`] features outside the [`INFORMATIONAL_FAMILIES`] with the largest
    /// PSI, largest first (ties by column order); empty without rows
    pub top_features: Vec<FeaturePsi>,
    /// the same for the features of the [`INFORMATIONAL_FAMILIES`] (shown, never warn)
    pub informational_features: Vec<FeaturePsi>,
    /// predicted vs analyst grades over the verdict window, when given
    pub agreement: Option<Agreement>,
    /// overall state
    pub status: DriftStatus,
    /// what crossed a threshold, in words
    pub warnings: Vec<String>,
    /// what a reader needs to know to read the figures (no baseline for the tenant,
    /// informational families), in words; never changes `status`
    pub notes: Vec<String>,
}

/// The stored form of a [`ReferenceProfile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProfileData {
    rows: u64,
    /// absent (= `p_tp`) in profiles stored before priority bins
    #[serde(default)]
    score_unit: ScoreUnit,
    score: ColumnData,
    features: Vec<FeatureData>,
    /// absent in profiles stored before per-tenant baselines
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_tenant_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tenants: Vec<TenantData>,
}

/// A tenant's baseline: its training rows per bin, every bin listed (value bins, then the
/// missing bin), over the profile's edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TenantData {
    tenant: u64,
    rows: u64,
    score: Vec<u64>,
    /// one list per feature, schema order
    features: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ColumnData {
    edges: Vec<f32>,
    /// training rows per value bin (`edges.len() + 1`)
    counts: Vec<u64>,
    /// training rows with NaN
    #[serde(default, skip_serializing_if = "is_zero")]
    missing: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FeatureData {
    name: String,
    family: String,
    edges: Vec<f32>,
    counts: Vec<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    missing: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ColumnData {
    fn new(bins: &Bins, counts: &[u64]) -> ColumnData {
        let (values, missing) = counts.split_at(counts.len() - 1);
        ColumnData {
            edges: bins.edges.clone(),
            counts: values.to_vec(),
            missing: missing[0],
        }
    }

    /// Bins and counts (missing bin last), checked against the profile's rows.
    fn into_parts(self, what: &str, rows: u64) -> Result<(Bins, Vec<u64>), DriftError> {
        let bins = Bins { edges: self.edges };
        bins.check(what)?;
        if self.counts.len() != bins.edges.len() + 1 {
            return Err(DriftError::Invalid {
                reason: format!(
                    "{what}: {} counts for {} edges (expected {})",
                    self.counts.len(),
                    bins.edges.len(),
                    bins.edges.len() + 1
                ),
            });
        }
        let mut counts = self.counts;
        counts.push(self.missing);
        let total = counts
            .iter()
            .try_fold(0u64, |s, &c| s.checked_add(c))
            .unwrap_or(u64::MAX);
        if total != rows {
            return Err(DriftError::Invalid {
                reason: format!("{what}: counts add up to {total}, the profile has {rows} rows"),
            });
        }
        Ok((bins, counts))
    }
}

impl From<ReferenceProfile> for ProfileData {
    fn from(p: ReferenceProfile) -> ProfileData {
        let b = &*p.binning;
        let features = (0..p.names.len())
            .map(|c| {
                let column = ColumnData::new(
                    &b.features[c],
                    &p.counts.features[b.offsets[c]..b.offsets[c + 1]],
                );
                FeatureData {
                    name: p.names[c].clone(),
                    family: p.families[c].clone(),
                    edges: column.edges,
                    counts: column.counts,
                    missing: column.missing,
                }
            })
            .collect();
        let tenants = p
            .tenants
            .iter()
            .map(|t| TenantData {
                tenant: t.tenant,
                rows: t.rows,
                score: t.counts.score.clone(),
                features: b
                    .offsets
                    .windows(2)
                    .map(|w| t.counts.features[w[0]..w[1]].to_vec())
                    .collect(),
            })
            .collect();
        ProfileData {
            rows: p.rows,
            score_unit: b.score_unit,
            score: ColumnData::new(&b.score, &p.counts.score),
            features,
            min_tenant_rows: p.min_tenant_rows,
            tenants,
        }
    }
}

impl TenantData {
    /// The baseline, checked against the profile's bins and counts: every column's counts add
    /// up to the tenant's rows, at least `min_tenant_rows` of them, and no bin holds more than
    /// all tenants' training rows do.
    fn into_baseline(
        self,
        binning: &Binning,
        pooled: &DriftCountsData,
        min_tenant_rows: u64,
    ) -> Result<TenantBaseline, DriftError> {
        let what = format!("tenant {}", self.tenant);
        let invalid = |reason: String| DriftError::Invalid {
            reason: format!("{what}: {reason}"),
        };
        if self.rows < min_tenant_rows.max(1) {
            return Err(invalid(format!(
                "{} rows, a baseline needs at least {}",
                self.rows,
                min_tenant_rows.max(1)
            )));
        }
        if self.features.len() != binning.features.len() {
            return Err(invalid(format!(
                "{} feature columns, the profile has {}",
                self.features.len(),
                binning.features.len()
            )));
        }
        let columns = std::iter::once(("score", &self.score, binning.score.len())).chain(
            self.features
                .iter()
                .zip(&binning.features)
                .map(|(c, b)| ("a feature", c, b.len())),
        );
        for (column, counts, bins) in columns {
            if counts.len() != bins {
                return Err(invalid(format!(
                    "{column} has {} counts for {bins} bins",
                    counts.len()
                )));
            }
            let total = counts
                .iter()
                .try_fold(0u64, |s, &c| s.checked_add(c))
                .unwrap_or(u64::MAX);
            if total != self.rows {
                return Err(invalid(format!(
                    "{column}'s counts add up to {total}, the baseline has {} rows",
                    self.rows
                )));
            }
        }
        let features: Vec<u64> = self.features.into_iter().flatten().collect();
        let above_pooled = |mine: &[u64], all: &[u64]| mine.iter().zip(all).any(|(a, b)| a > b);
        if above_pooled(&self.score, &pooled.score) || above_pooled(&features, &pooled.features) {
            return Err(invalid(
                "a bin holds more rows than all tenants' training rows".into(),
            ));
        }
        Ok(TenantBaseline {
            tenant: self.tenant,
            rows: self.rows,
            counts: DriftCountsData {
                features,
                score: self.score,
            },
        })
    }
}

impl TryFrom<ProfileData> for ReferenceProfile {
    type Error = DriftError;

    fn try_from(d: ProfileData) -> Result<ReferenceProfile, DriftError> {
        if d.rows == 0 {
            return Err(DriftError::Empty);
        }
        let rows = d.rows;
        let (score, score_counts) = d.score.into_parts("score", rows)?;
        let (mut names, mut families) = (Vec::new(), Vec::new());
        let (mut bins, mut counts) = (Vec::new(), Vec::new());
        for f in d.features {
            let what = format!("feature `{}`", f.name);
            let column = ColumnData {
                edges: f.edges,
                counts: f.counts,
                missing: f.missing,
            };
            let (b, c) = column.into_parts(&what, rows)?;
            names.push(f.name);
            families.push(f.family);
            bins.push(b);
            counts.extend(c);
        }
        let binning = Arc::new(Binning::new(bins, score, d.score_unit));
        let counts = DriftCountsData {
            features: counts,
            score: score_counts,
        };
        if d.min_tenant_rows == Some(0) {
            return Err(DriftError::Invalid {
                reason: "min_tenant_rows is 0".into(),
            });
        }
        if !d.tenants.is_empty() && d.min_tenant_rows.is_none() {
            return Err(DriftError::Invalid {
                reason: "tenant baselines without min_tenant_rows".into(),
            });
        }
        if d.tenants.windows(2).any(|w| w[0].tenant >= w[1].tenant) {
            return Err(DriftError::Invalid {
                reason: "tenant baselines are not in strictly increasing tenant order".into(),
            });
        }
        let tenant_rows = d
            .tenants
            .iter()
            .map(|t| t.rows)
            .fold(0u64, u64::saturating_add);
        if tenant_rows > rows {
            return Err(DriftError::Invalid {
                reason: format!("tenant baselines hold {tenant_rows} rows, the profile has {rows}"),
            });
        }
        let min = d.min_tenant_rows.unwrap_or(1);
        let tenants = d
            .tenants
            .into_iter()
            .map(|t| t.into_baseline(&binning, &counts, min))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReferenceProfile {
            rows,
            names,
            families,
            binning,
            counts,
            min_tenant_rows: d.min_tenant_rows,
            tenants,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn schema(n: usize) -> FeatureSchema {
        FeatureSchema::new(
            1,
            (0..n)
                .map(|i| (format!("f{i}"), format!("fam{}", i % 2)))
                .collect(),
        )
    }

    /// Standard normal by Box–Muller from the crate's seeded generator.
    fn normal(r: &mut SplitMix64) -> f64 {
        let u = 1.0 - r.unit();
        let v = r.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Three columns: continuous N(shift, 1), a count that is 0 for ~70% of rows, a 0/1 flag;
    /// P(TP) a logistic of the first column.
    fn sample(n: usize, seed: u64, shift: f64) -> (FeatureMatrix, Vec<f32>) {
        let mut r = SplitMix64(seed);
        let mut data = Vec::with_capacity(n * 3);
        let mut p = Vec::with_capacity(n);
        for _ in 0..n {
            let z = normal(&mut r) + shift;
            let count = if r.unit() < 0.7 {
                0.0
            } else {
                (r.below(20) + 1) as f32
            };
            let flag = f32::from(u8::from(r.unit() < 0.3));
            data.extend([z as f32, count, flag]);
            p.push((1.0 / (1.0 + (-2.0 * z).exp())) as f32);
        }
        (FeatureMatrix::from_vec(n, 3, data).unwrap(), p)
    }

    fn counts_of(profile: &ReferenceProfile, x: &FeatureMatrix, p: &[f32]) -> DriftCounts {
        let mut c = DriftCounts::new(profile);
        c.add_matrix(x, p).unwrap();
        c
    }

    /// A profile with four tenants (row `i` is tenant `i % 4`), default `min_tenant_rows`.
    fn fit(
        x: &FeatureMatrix,
        schema: &FeatureSchema,
        p: &[f32],
    ) -> Result<ReferenceProfile, DriftError> {
        let tenants: Vec<u64> = (0..x.n_rows() as u64).map(|i| i % 4).collect();
        ReferenceProfile::fit(x, schema, p, &tenants, MIN_TENANT_ROWS)
    }

    fn params() -> DriftValidParams {
        DriftParams::default().check().unwrap()
    }

    #[test]
    fn psi_of_identical_distributions_is_zero() {
        assert_eq!(psi(&[5, 0, 7, 1], &[5, 0, 7, 1]).unwrap(), 0.0);
        // Same shares at another size.
        assert!(psi(&[5, 0, 7, 1], &[50, 0, 70, 10]).unwrap().abs() < 1e-12);
    }

    /// Hand-computed reference values.
    #[test]
    fn psi_reference_values() {
        // 0.5/0.5 → 0.25/0.75: −0.25·ln(0.5) + 0.25·ln(1.5)
        let want = -0.25 * 0.5f64.ln() + 0.25 * 1.5f64.ln();
        assert!((psi(&[1, 1], &[1, 3]).unwrap() - want).abs() < 1e-12);
        assert!((want - 0.274_653).abs() < 1e-6);
        // Symmetric in its arguments (up to rounding).
        assert!((psi(&[1, 1], &[1, 3]).unwrap() - psi(&[1, 3], &[1, 1]).unwrap()).abs() < 1e-15);
    }

    #[test]
    fn empty_bins_are_floored_to_a_finite_value() {
        // e = [1, ε, ε], a = [ε, ε, 1], the middle bin empty on both sides: 2 · (1 − ε) · ln(1/ε),
        // ε = half a row of 100 …
        let v = psi(&[100, 0, 0], &[0, 0, 100]).unwrap();
        let want = 2.0 * (1.0 - 0.005) * (1.0f64 / 0.005).ln();
        assert!(v.is_finite() && (v - want).abs() < 1e-9, "{v} vs {want}");
        // … or SHARE_FLOOR for 10,000 rows on each side.
        let v = psi(&[10_000, 0, 0], &[0, 0, 10_000]).unwrap();
        let want = 2.0 * (1.0 - SHARE_FLOOR) * (1.0 / SHARE_FLOOR).ln();
        assert!((v - want).abs() < 1e-9, "{v} vs {want}");
        // A bin empty on both sides adds nothing.
        assert_eq!(psi(&[3, 0, 1], &[6, 0, 2]).unwrap(), 0.0);
        assert!(psi(&[1, 2], &[1]).is_err());
        assert!(psi(&[0, 0], &[1, 1]).is_err());
    }

    #[test]
    fn bins_follow_the_data() {
        // Flag: one bin per value; right-closed; beyond the range → end bins; NaN → missing.
        let b = Bins::fit([0.0, 1.0, 1.0, f32::NAN].into_iter());
        assert_eq!(b.edges, vec![0.0]);
        assert_eq!(
            [-1.0, 0.0, 0.5, 1.0, 7.0, f32::NAN, f32::INFINITY].map(|v| b.bin(v)),
            [0, 0, 1, 1, 1, 2, 1]
        );
        // Constant column: one value bin.
        assert!(Bins::fit([3.0; 10].into_iter()).edges.is_empty());
        assert!(Bins::fit(std::iter::empty()).edges.is_empty());
        // 1..=1000: nine decile edges, 100 values per bin.
        let b = Bins::fit((1..=1000).map(|i| i as f32));
        assert_eq!(
            b.edges,
            vec![100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0]
        );
        // A mass point at 0 (70%) gets its own bin; edges deduplicated.
        let v: Vec<f32> = (0..1000)
            .map(|i| if i < 700 { 0.0 } else { i as f32 })
            .collect();
        let b = Bins::fit(v.iter().copied());
        assert_eq!(b.edges, vec![0.0, 799.0, 899.0]);
        assert_eq!(v.iter().filter(|&&x| b.bin(x) == 0).count(), 700);
        // Infinities never become edges.
        let b = Bins::fit([f32::NEG_INFINITY, 1.0, 2.0, f32::INFINITY].into_iter());
        assert_eq!(b.edges, vec![1.0]);
    }

    /// Tenant `t`'s rows are the standard sample shifted by `2t` standard deviations: every
    /// tenant differs from the pooled population without any drift.
    fn tenants_sample(sizes: &[usize], seed: u64) -> (FeatureMatrix, Vec<f32>, Vec<u64>) {
        let mut x = FeatureMatrix::with_columns(3);
        let (mut p, mut t) = (Vec::new(), Vec::new());
        for (tenant, &n) in sizes.iter().enumerate() {
            let (xt, pt) = sample(n, seed + tenant as u64, 2.0 * tenant as f64);
            x.extend(&xt).unwrap();
            p.extend(pt);
            t.extend(std::iter::repeat_n(tenant as u64, n));
        }
        (x, p, t)
    }

    #[test]
    fn tenants_are_judged_against_their_own_baseline() {
        // Tenants 0, 1, 2 with 400, 300, 29 training rows: 2 has no baseline.
        let (x, p, t) = tenants_sample(&[400, 300, 29], 40);
        let profile = ReferenceProfile::fit(&x, &schema(3), &p, &t, MIN_TENANT_ROWS).unwrap();
        assert_eq!(profile.baseline_tenants().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(
            (
                profile.tenant_rows(0),
                profile.tenant_rows(1),
                profile.tenant_rows(2)
            ),
            (Some(400), Some(300), None)
        );
        assert_eq!(profile.min_tenant_rows(), Some(MIN_TENANT_ROWS));
        let s = profile.tenant_score_shares(1).unwrap();
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // New rows of tenant 1, same population: ok against its own rows, shifted against all.
        let (x1, p1) = sample(200, 77, 2.0);
        let c = counts_of(&profile, &x1, &p1);
        let own = profile.report_for(Some(1), &c, None, &params()).unwrap();
        assert_eq!((own.baseline, own.baseline_rows), (Baseline::Tenant, 300));
        assert_eq!(own.status, DriftStatus::Ok, "{own:?}");
        assert!(own.notes.is_empty(), "{own:?}");
        let pooled = profile.report_for(None, &c, None, &params()).unwrap();
        assert_eq!(
            (pooled.baseline, pooled.baseline_rows),
            (Baseline::AllTenants, 729)
        );
        assert_eq!(pooled.status, DriftStatus::Warning, "{pooled:?}");
        assert_eq!(profile.report(&c, None, &params()).unwrap(), pooled);
        // Its own training rows: PSI 0 against its baseline.
        let rows: Vec<usize> = (400..700).collect();
        let c = counts_of(&profile, &x.select_rows(&rows), &p[400..700]);
        let own = profile.report_for(Some(1), &c, None, &params()).unwrap();
        assert_eq!(own.score_psi, Some(0.0));
        assert_eq!(own.feature_psi_max, Some(0.0));
        // Tenant 1 moving one more standard deviation up warns against its baseline.
        let (x2, p2) = sample(200, 78, 3.0);
        let c = counts_of(&profile, &x2, &p2);
        let r = profile.report_for(Some(1), &c, None, &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Warning, "{r:?}");
        assert!(
            r.warnings[0].starts_with("score distribution shifted"),
            "{r:?}"
        );
    }

    #[test]
    fn a_tenant_without_baseline_is_shown_but_only_agreement_warns() {
        use Grade::*;
        let (x, p, t) = tenants_sample(&[400, 300, 29], 40);
        let profile = ReferenceProfile::fit(&x, &schema(3), &p, &t, MIN_TENANT_ROWS).unwrap();
        // Far from everything: PSI is large, but there is nothing of its own to compare with.
        let (x2, p2) = sample(200, 79, 6.0);
        let c = counts_of(&profile, &x2, &p2);
        for tenant in [2, 99] {
            let r = profile
                .report_for(Some(tenant), &c, None, &params())
                .unwrap();
            assert_eq!((r.baseline, r.baseline_rows), (Baseline::None, 729));
            assert!(r.score_psi.unwrap() > 1.0, "{r:?}");
            assert!(r.warnings.is_empty(), "{r:?}");
            assert_eq!(r.status, DriftStatus::InsufficientData);
            assert_eq!(r.notes.len(), 1);
            assert!(
                r.notes[0].starts_with("no training baseline for this tenant (fewer than 30")
                    && r.notes[0].contains("for information"),
                "{:?}",
                r.notes
            );
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["baseline"], "none");
            assert_eq!(v["status"], "insufficient_data");
        }
        // Agreement still warns.
        let bad = Agreement::from_pairs((0..100).map(|_| (TruePositive, FalsePositive)));
        let r = profile
            .report_for(Some(2), &c, Some(bad), &params())
            .unwrap();
        assert_eq!(r.status, DriftStatus::Warning);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].starts_with("analysts agree"), "{r:?}");
        // A smaller min_tenant_rows gives tenant 2 a baseline.
        let p10 = ReferenceProfile::fit(&x, &schema(3), &p, &t, 10).unwrap();
        assert_eq!(p10.tenant_rows(2), Some(29));
        let r = p10.report_for(Some(2), &c, None, &params()).unwrap();
        assert_eq!(r.baseline, Baseline::Tenant);
        assert_eq!(r.status, DriftStatus::Warning);
    }

    #[test]
    fn informational_families_are_reported_apart_and_never_warn() {
        // f0 and f1 (global) are informational, f2 (size) is judged.
        let schema = FeatureSchema::new(
            1,
            vec![
                ("f0".into(), "global".into()),
                ("f1".into(), "global".into()),
                ("f2".into(), "size".into()),
            ],
        );
        let (x, p) = sample(2000, 7, 0.0);
        let t = vec![0; 2000];
        let profile = ReferenceProfile::fit(&x, &schema, &p, &t, MIN_TENANT_ROWS).unwrap();
        // f0 shifted, score unchanged: no warning, f0 listed as informational.
        let (mut x2, _) = sample(1000, 8, 0.0);
        for i in 0..1000 {
            x2.row_mut(i)[0] += 3.0;
        }
        let p2 = p[..1000].to_vec();
        let c = counts_of(&profile, &x2, &p2);
        for tenant in [None, Some(0)] {
            let r = profile.report_for(tenant, &c, None, &params()).unwrap();
            assert_eq!(r.status, DriftStatus::Ok, "{r:?}");
            assert!(r.warnings.is_empty());
            assert_eq!(r.top_features.len(), 1);
            assert_eq!(r.top_features[0].name, "f2");
            assert!(!r.top_features[0].informational);
            assert_eq!(r.feature_psi_max, Some(r.top_features[0].psi));
            assert!(r.feature_psi_max.unwrap() < 0.05, "{r:?}");
            let info: Vec<&str> = r
                .informational_features
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            assert_eq!(info, vec!["f0", "f1"]);
            assert!(r.informational_features.iter().all(|f| f.informational));
            assert!(r.informational_features[0].psi > 1.0, "{r:?}");
            assert!(r.notes.iter().any(|n| n.contains("(global)")), "{r:?}");
        }
        // The judged column shifted: it warns, and the count names only judged features.
        for i in 0..1000 {
            x2.row_mut(i)[2] = 1.0 - x2.row(i)[2];
        }
        let c = counts_of(&profile, &x2, &p2);
        let r = profile.report(&c, None, &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Warning);
        assert!(r.warnings[0].contains("1 of 1 features"), "{r:?}");
        assert!(is_informational("global") && !is_informational("size"));
    }

    #[test]
    fn score_bins_are_priorities() {
        // P(TP) differing below one priority point (all round to 0) never shifts.
        let x = FeatureMatrix::from_vec(100, 1, vec![0.0; 100]).unwrap();
        let p: Vec<f32> = (0..100)
            .map(|i| {
                if i < 50 {
                    0.001
                } else {
                    0.2 + i as f32 / 200.0
                }
            })
            .collect();
        let profile =
            ReferenceProfile::fit(&x, &schema(1), &p, &[0; 100], MIN_TENANT_ROWS).unwrap();
        assert_eq!(profile.score_edges()[0], 0.0);
        assert!(profile
            .score_edges()
            .iter()
            .all(|e| e.fract() == 0.0 && (0.0..=100.0).contains(e)));
        let mut c = DriftCounts::new(&profile);
        for (i, &v) in p.iter().enumerate() {
            c.add(&[0.0], if i < 50 { 0.004_9 } else { v }).unwrap();
        }
        assert_eq!(profile.score_psi(&c).unwrap(), Some(0.0));
        // NaN goes to the missing bin.
        c.add(&[0.0], f32::NAN).unwrap();
        assert!(profile.score_psi(&c).unwrap().unwrap() > 0.0);
    }

    #[test]
    fn training_matrix_has_zero_psi_everywhere() {
        let (x, p) = sample(2000, 7, 0.0);
        let profile = fit(&x, &schema(3), &p).unwrap();
        assert_eq!(profile.rows(), 2000);
        let c = counts_of(&profile, &x, &p);
        assert_eq!(c.n(), 2000);
        assert_eq!(profile.feature_psi(&c).unwrap().unwrap(), vec![0.0; 3]);
        assert_eq!(profile.score_psi(&c).unwrap(), Some(0.0));
        // Shares: deciles hold ~10%, the zero count bin ~70%, the flag two bins.
        let s = profile.feature_shares(0).unwrap();
        assert_eq!(s.len(), 11);
        assert!(s[..10].iter().all(|&v| (v - 0.1).abs() < 0.002), "{s:?}");
        assert_eq!(s[10], 0.0);
        let s = profile.feature_shares(1).unwrap();
        assert!((s[0] - 0.7).abs() < 0.03, "{s:?}");
        assert_eq!(profile.feature_edges(2).unwrap(), &[0.0]);
        assert!(profile.feature_shares(3).is_none());
        assert_eq!(profile.score_edges().len(), 9);
        let r = profile.report(&c, None, &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Ok);
        assert!(r.warnings.is_empty());
        assert_eq!(r.feature_psi_max, Some(0.0));
    }

    #[test]
    fn another_sample_of_the_same_population_does_not_warn() {
        let (x, p) = sample(2000, 7, 0.0);
        let profile = fit(&x, &schema(3), &p).unwrap();
        let (x2, p2) = sample(1000, 8, 0.0);
        let c = counts_of(&profile, &x2, &p2);
        let r = profile.report(&c, None, &params()).unwrap();
        assert!(r.feature_psi_max.unwrap() < 0.05, "{r:?}");
        assert!(r.score_psi.unwrap() < 0.05, "{r:?}");
        assert_eq!(r.status, DriftStatus::Ok);
    }

    #[test]
    fn a_shifted_population_warns() {
        let (x, p) = sample(2000, 7, 0.0);
        let profile = fit(&x, &schema(3), &p).unwrap();
        // One standard deviation up: the first feature and the score move, the others do not.
        let (x2, p2) = sample(1000, 8, 1.0);
        let c = counts_of(&profile, &x2, &p2);
        let r = profile.report(&c, None, &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Warning);
        assert!(r.score_psi.unwrap() > 0.25, "{r:?}");
        assert_eq!(r.top_features[0].name, "f0");
        assert_eq!(r.top_features[0].family, "fam0");
        assert!(r.top_features[0].psi > 0.25);
        assert!(r.top_features[1].psi < 0.05, "{r:?}");
        assert_eq!(r.top_features.len(), 3);
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("score distribution shifted: PSI "));
        assert!(
            r.warnings[1].contains("1 of 3 features") && r.warnings[1].contains("f0 (fam0)"),
            "{:?}",
            r.warnings
        );
        // At 1,000 rows the thresholds are psi_warn itself.
        assert_eq!(r.score_psi_threshold, Some(0.25));
        assert!(r.top_features.iter().all(|f| f.threshold == 0.25));
        // A raised threshold silences it.
        let lax = DriftParams::default().psi_warn(50.0).check().unwrap();
        assert_eq!(
            profile.report(&c, None, &lax).unwrap().status,
            DriftStatus::Ok
        );
    }

    #[test]
    fn too_few_rows_is_insufficient_data_without_psi_warnings() {
        let (x, p) = sample(500, 7, 0.0);
        let profile = fit(&x, &schema(3), &p).unwrap();
        let mut c = DriftCounts::new(&profile);
        let r = profile.report(&c, None, &params()).unwrap();
        assert_eq!(r.status, DriftStatus::InsufficientData);
        assert_eq!((r.rows, r.score_psi, r.feature_psi_max), (0, None, None));
        assert!(r.top_features.is_empty());
        for _ in 0..29 {
            c.add(&[9.0, 99.0, 1.0], 0.999).unwrap();
        }
        let r = profile.report(&c, None, &params()).unwrap();
        assert!(r.score_psi.unwrap() > 0.25);
        assert_eq!(r.status, DriftStatus::InsufficientData);
        assert!(r.warnings.is_empty());
        c.add(&[9.0, 99.0, 1.0], 0.999).unwrap();
        let r = profile.report(&c, None, &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Warning);
    }

    #[test]
    fn agreement_below_the_threshold_warns_with_enough_verdicts() {
        use Grade::*;
        let (x, p) = sample(500, 7, 0.0);
        let profile = fit(&x, &schema(3), &p).unwrap();
        let c = counts_of(&profile, &x, &p);
        let pairs = |n: usize, agree: usize| {
            Agreement::from_pairs((0..n).map(|i| {
                (
                    TruePositive,
                    if i < agree {
                        TruePositive
                    } else {
                        FalsePositive
                    },
                )
            }))
        };
        let a = pairs(100, 55);
        assert_eq!((a.verdicts(), a.agreed(), a.rate()), (100, 55, Some(0.55)));
        let r = profile.report(&c, Some(a), &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Warning);
        // the global report (all tenants) names no count: its verdicts mix tenants
        assert_eq!(
            r.warnings,
            vec!["analysts agree with the predicted grade on 0.55 of the recent verdicts < 0.60"]
        );
        // At the threshold: no warning.
        let r = profile.report(&c, Some(pairs(100, 60)), &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Ok);
        // Too few verdicts to judge.
        let r = profile.report(&c, Some(pairs(29, 0)), &params()).unwrap();
        assert_eq!(r.status, DriftStatus::Ok);
        // An agreement warning shows even without enough rows for PSI.
        let empty = DriftCounts::new(&profile);
        let r = profile
            .report(&empty, Some(pairs(100, 10)), &params())
            .unwrap();
        assert_eq!(r.status, DriftStatus::Warning);
    }

    #[test]
    fn merged_counts_equal_counts_of_the_whole() {
        let (x, p) = sample(600, 7, 0.0);
        let profile = fit(&x, &schema(3), &p).unwrap();
        let (x2, p2) = sample(300, 9, 0.5);
        let whole = counts_of(&profile, &x2, &p2);
        let mut a = DriftCounts::new(&profile);
        let mut b = DriftCounts::new(&profile);
        for (i, row) in x2.rows().enumerate() {
            let part = if i % 3 == 0 { &mut a } else { &mut b };
            part.add(row, p2[i]).unwrap();
        }
        a.merge(&b).unwrap();
        assert_eq!(a, whole);
        assert_eq!(a.n(), 300);
        // Counts over another profile's bins are refused everywhere.
        let (x3, p3) = sample(600, 11, 3.0);
        let other = fit(&x3, &schema(3), &p3).unwrap();
        let foreign = DriftCounts::new(&other);
        assert_eq!(a.merge(&foreign), Err(DriftError::ProfileMismatch));
        assert_eq!(a, whole);
        assert_eq!(
            profile.report(&foreign, None, &params()),
            Err(DriftError::ProfileMismatch)
        );
        // An equal profile (e.g. the artifact loaded again) is accepted.
        let again: ReferenceProfile =
            serde_json::from_str(&serde_json::to_string(&profile).unwrap()).unwrap();
        assert!(again.report(&whole, None, &params()).is_ok());
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let (x, p) = sample(50, 7, 0.0);
        assert!(matches!(
            fit(&x, &schema(4), &p),
            Err(DriftError::Shape {
                expected: 4,
                got: 3,
                ..
            })
        ));
        assert!(matches!(
            fit(&x, &schema(3), &p[1..]),
            Err(DriftError::Shape { what: "p_tp", .. })
        ));
        assert!(matches!(
            ReferenceProfile::fit(&x, &schema(3), &p, &[0; 49], MIN_TENANT_ROWS),
            Err(DriftError::Shape {
                what: "tenant_of_row",
                expected: 50,
                got: 49
            })
        ));
        assert!(matches!(
            ReferenceProfile::fit(&x, &schema(3), &p, &[0; 50], 0),
            Err(DriftError::Param {
                name: "min_tenant_rows",
                ..
            })
        ));
        assert_eq!(
            fit(&FeatureMatrix::with_columns(3), &schema(3), &[]),
            Err(DriftError::Empty)
        );
        let profile = fit(&x, &schema(3), &p).unwrap();
        let mut c = DriftCounts::new(&profile);
        assert!(c.add(&[1.0, 2.0], 0.5).is_err());
        assert_eq!(c.n(), 0);
        assert!(c.add_matrix(&x, &p[1..]).is_err());
        assert_eq!(c.n(), 0);
    }

    #[test]
    fn params_are_checked() {
        let d = DriftParams::default;
        for (p, name) in [
            (d().psi_warn(0.0), "psi_warn"),
            (d().psi_warn(f64::NAN), "psi_warn"),
            (d().psi_warn(f64::INFINITY), "psi_warn"),
            (d().agreement_warn(-0.1), "agreement_warn"),
            (d().agreement_warn(1.1), "agreement_warn"),
            (d().min_rows(0), "min_rows"),
            (d().window(0), "window"),
            (d().min_verdicts(0), "min_verdicts"),
            (d().window(20), "min_verdicts"),
            (d().alpha(0.0), "alpha"),
            (d().alpha(0.6), "alpha"),
            (d().alpha(f64::NAN), "alpha"),
        ] {
            match p.check() {
                Err(DriftError::Param { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        let ok = d().window(20).min_verdicts(20).check().unwrap();
        assert_eq!(ok.get().window, 20);
    }

    #[test]
    fn profile_round_trips_and_refuses_corruption() {
        let (mut x, p) = sample(400, 7, 0.0);
        x.row_mut(3)[1] = f32::NAN;
        let profile = fit(&x, &schema(3), &p).unwrap();
        let json = serde_json::to_string(&profile).unwrap();
        let back: ReferenceProfile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, profile);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["features"][1]["missing"], 1);
        assert!(v["features"][0].get("missing").is_none());
        assert_eq!(v["features"][2]["edges"], serde_json::json!([0.0]));
        let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = v.clone();
            edit(&mut v);
            serde_json::from_value::<ReferenceProfile>(v)
                .unwrap_err()
                .to_string()
        };
        let e = bad(&|v| v["features"][0]["edges"][1] = v["features"][0]["edges"][0].clone());
        assert!(
            e.contains("not strictly increasing") && e.contains("`f0`"),
            "{e}"
        );
        let e = bad(&|v| v["features"][2]["counts"][0] = 1.into());
        assert!(e.contains("add up to"), "{e}");
        let e = bad(&|v| v["score"]["counts"] = serde_json::json!([400]));
        assert!(e.contains("score") && e.contains("counts for"), "{e}");
        // Tenant baselines: four tenants of 100 rows, every bin listed, checked on load.
        assert_eq!(v["min_tenant_rows"], 30);
        assert_eq!(v["score_unit"], "priority");
        let tenants = v["tenants"].as_array().unwrap();
        assert_eq!(tenants.len(), 4);
        assert_eq!(
            (&tenants[1]["tenant"], &tenants[1]["rows"]),
            (&1.into(), &100.into())
        );
        assert_eq!(tenants[1]["features"].as_array().unwrap().len(), 3);
        assert_eq!(
            tenants[1]["features"][2],
            serde_json::json!([
                v["tenants"][1]["features"][2][0].as_u64().unwrap(),
                100 - v["tenants"][1]["features"][2][0].as_u64().unwrap(),
                0
            ])
        );
        let e = bad(&|v| v["tenants"][1]["features"][0][0] = 1000.into());
        assert!(e.contains("tenant 1") && e.contains("add up to"), "{e}");
        let e = bad(&|v| {
            let b = v["tenants"][1]["score"][0].as_u64().unwrap();
            v["tenants"][1]["score"][0] = (b + 1).into();
            v["tenants"][1]["rows"] = 101.into();
        });
        assert!(e.contains("tenant baselines hold 401 rows"), "{e}");
        let e = bad(&|v| v["tenants"][2]["tenant"] = 0.into());
        assert!(e.contains("increasing tenant order"), "{e}");
        let e = bad(&|v| {
            v["tenants"][3]["features"]
                .as_array_mut()
                .unwrap()
                .pop()
                .map(|_| ())
                .unwrap()
        });
        assert!(e.contains("2 feature columns"), "{e}");
        let e = bad(&|v| {
            v["tenants"][3]["score"]
                .as_array_mut()
                .unwrap()
                .push(0.into())
        });
        assert!(e.contains("score has"), "{e}");
        let e = bad(&|v| v["min_tenant_rows"] = 101.into());
        assert!(e.contains("at least 101"), "{e}");
        // A bin of one tenant holding more rows than all tenants together.
        let e = bad(&|v| {
            let mine = v["tenants"][0]["features"][2][0].as_u64().unwrap();
            let all = &mut v["features"][2]["counts"];
            let total = all[0].as_u64().unwrap() + all[1].as_u64().unwrap();
            all[0] = (mine - 1).into();
            all[1] = (total - mine + 1).into();
        });
        assert!(e.contains("more rows than all tenants"), "{e}");
        // A profile stored before tenant baselines loads and has none.
        let old = bad_free(&v, &|v| {
            let o = v.as_object_mut().unwrap();
            o.remove("tenants");
            o.remove("min_tenant_rows");
            o.remove("score_unit");
        });
        assert_eq!(old.min_tenant_rows(), None);
        assert!(!old.score_in_priorities() && profile.score_in_priorities());
        assert_eq!(old.baseline_tenants().len(), 0);
        let c = DriftCounts::new(&old);
        let r = old.report_for(Some(1), &c, None, &params()).unwrap();
        assert_eq!(r.baseline, Baseline::None);
        assert!(r.notes[0].contains("retrain"), "{:?}", r.notes);
    }

    fn bad_free(v: &serde_json::Value, edit: &dyn Fn(&mut serde_json::Value)) -> ReferenceProfile {
        let mut v = v.clone();
        edit(&mut v);
        serde_json::from_value(v).unwrap()
    }

    /// Tabulated quantiles (Abramowitz & Stegun, tables 26.1 and 26.8).
    #[test]
    fn normal_and_chi2_quantiles() {
        for (alpha, z) in [
            (0.5, 0.0),
            (0.05, 1.644_853_627),
            (0.025, 1.959_963_985),
            (0.01, 2.326_347_874),
            (1e-5, 4.264_890_794),
        ] {
            assert!((normal_upper(alpha) - z).abs() < 1e-8, "{alpha}");
        }
        for (df, alpha, q) in [
            (1, 0.01, 6.634_897),
            (1, 0.05, 3.841_459),
            (4, 0.01, 13.276_70),
            (9, 0.01, 21.665_99),
            (9, 0.05, 16.918_98),
            (20, 0.01, 37.566_23),
        ] {
            let got = chi2_upper(df, alpha);
            let tolerance = if df == 1 { 0.03 } else { 0.01 };
            assert!(
                (got / q - 1.0).abs() < tolerance,
                "df {df} alpha {alpha}: {got} vs {q}"
            );
        }
    }

    /// Small samples of the unchanged population: a bare 0.25 threshold warns often, the
    /// noise-aware one about as rarely as alpha says.
    #[test]
    fn small_samples_without_shift_rarely_warn() {
        let (x, p) = sample(5000, 7, 0.0);
        let profile = fit(&x, &schema(3), &p).unwrap();
        let (mut bare, mut warned) = (0, 0);
        let runs = 300;
        for seed in 0..runs {
            let (x2, p2) = sample(40, 1000 + seed, 0.0);
            let c = counts_of(&profile, &x2, &p2);
            let r = profile.report(&c, None, &params()).unwrap();
            bare += usize::from(r.score_psi.unwrap() > 0.25);
            warned += usize::from(r.status == DriftStatus::Warning);
            assert!(r.score_psi_threshold.unwrap() > 0.25);
        }
        assert!(
            bare > runs as usize / 5,
            "bare threshold warned {bare} of {runs}"
        );
        // Measured over 2,000 runs: bare 0.25 warns 66% / 48% / 16% of samples of 30 / 40 / 60
        // rows, the noise-aware threshold 0.7% / 2.1% / 2.9% (nominal 1% for the score plus 1%
        // over the features; the χ² limit is rough at 4 rows per bin); both 0 from 200 rows.
        assert!(
            warned <= runs as usize * 4 / 100,
            "warned {warned} of {runs}"
        );
        // A real shift at the same size still warns.
        let (x2, p2) = sample(40, 999, 2.0);
        let c = counts_of(&profile, &x2, &p2);
        assert_eq!(
            profile.report(&c, None, &params()).unwrap().status,
            DriftStatus::Warning
        );
    }

    #[test]
    fn deterministic() {
        let (x, p) = sample(1500, 21, 0.0);
        let a = fit(&x, &schema(3), &p).unwrap();
        let b = fit(&x, &schema(3), &p).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let (x2, p2) = sample(700, 22, 0.3);
        let ra = a.report(&counts_of(&a, &x2, &p2), None, &params()).unwrap();
        let rb = b.report(&counts_of(&b, &x2, &p2), None, &params()).unwrap();
        assert_eq!(
            serde_json::to_string(&ra).unwrap(),
            serde_json::to_string(&rb).unwrap()
        );
        // Equal PSI (two identical columns): column order decides.
        let tied =
            FeatureMatrix::from_vec(4, 2, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]).unwrap();
        let prof = fit(&tied, &schema(2), &[0.1, 0.2, 0.3, 0.4]).unwrap();
        let mut c = DriftCounts::new(&prof);
        c.add(&[3.0, 3.0], 0.4).unwrap();
        let r = prof.report(&c, None, &params()).unwrap();
        assert_eq!(r.top_features[0].psi, r.top_features[1].psi);
        assert_eq!(
            (
                r.top_features[0].name.as_str(),
                r.top_features[1].name.as_str()
            ),
            ("f0", "f1")
        );
    }
}
