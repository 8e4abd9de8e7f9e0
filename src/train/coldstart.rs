//! Cold start: what a new tenant's first verdicts are worth.
//!
//! Sits in `train`, used by `threatrank eval --cold-start` and `threatrank report`. Forward in
//! time, at each origin `D` of the forward split (window `[D, E)`): the tenants with at least
//! `max(verdicts)` graded incidents that ended before `D` and at least one graded incident that
//! began in the window are the *cold* tenants. They are split into [`ColdStartParams::groups`]
//! groups; for each group a model is trained (`train::fit`, every default) on the incidents
//! that ended before `D` of every other tenant, so it never saw the group's tenants. The
//! group's window incidents are then scored after `n` of each tenant's verdicts have gone
//! through the online path, for every `n` of [`ColdStartParams::verdicts`]: the encoders are
//! refitted on the training incidents plus each cold tenant's `n` *earliest* verdicts (by end
//! time), as a deployment refits them when verdicts arrive, the model and the cross-tenant
//! snapshot staying as trained. `n = 0` is a tenant never seen.
//!
//! Every `n` scores the same incidents (the window incidents of the cold tenants), so the
//! points of the curve differ only by the verdicts shown. All of a tenant's `n` verdicts ended
//! before `D`, so before every incident scored: no figure uses a verdict given after the
//! incident it scores. Figures are pooled over origins and groups (a tenant can be cold at
//! several origins; each time with the incidents of that window).

use super::cv::{self, CvMetrics, CvParams, CvPlan, SplitKind};
use super::{TrainError, TrainValidParams};
use crate::correlate::Correlated;
use crate::domain::Evidence;
use crate::features::FittedFeatures;
use crate::models::N_CLASSES;
use crate::signals::Knowledge;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Parameters of the cold-start curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ColdStartParams {
    /// Verdicts shown per cold tenant, one point of the curve each, ascending. Default
    /// 0, 1, 2, 5, 10, 20, 50.
    pub verdicts: Vec<usize>,
    /// Groups the cold tenants of an origin are split into (one model per group, trained
    /// without them). Default 2: each model still trains on the other half of the largest
    /// tenants.
    pub groups: usize,
}

impl Default for ColdStartParams {
    fn default() -> Self {
        Self {
            verdicts: vec![0, 1, 2, 5, 10, 20, 50],
            groups: 2,
        }
    }
}

impl ColdStartParams {
    /// Checks the verdict counts (non-empty, ascending) and the groups (`1..=16`).
    pub fn check(&self) -> Result<(), TrainError> {
        let ascending = self.verdicts.windows(2).all(|w| w[0] < w[1]);
        if self.verdicts.is_empty() || !ascending {
            return Err(TrainError::Param {
                name: "verdicts",
                reason: format!("{:?} is not a non-empty ascending list", self.verdicts),
            });
        }
        if !(1..=16).contains(&self.groups) {
            return Err(TrainError::Param {
                name: "groups",
                reason: format!("{} is outside 1..=16", self.groups),
            });
        }
        Ok(())
    }
}

/// One point of the curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStartPoint {
    /// verdicts shown per cold tenant
    pub verdicts: usize,
    /// pooled figures over the cold tenants' window incidents
    pub metrics: CvMetrics,
}

/// The cold-start curve ([`curve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStartReport {
    /// the learner (the training default)
    pub model: String,
    /// forward origins used (UTC dates)
    pub origins: Vec<String>,
    /// (origin, tenant) pairs scored
    pub tenants: usize,
    /// distinct cold tenants over all origins
    pub distinct_tenants: usize,
    /// incidents scored at every point
    pub incidents: usize,
    /// models trained (one per origin and group)
    pub models: usize,
    /// the curve, by verdicts ascending
    pub points: Vec<ColdStartPoint>,
    /// peer models (`threatrank report --peers`) on the same incidents, trained on the same
    /// incidents as each group's model: what they score for a tenant never seen (they have no
    /// online path); empty from `threatrank eval`
    #[serde(default)]
    pub peers_at_zero: Vec<PeerPoint>,
}

/// A peer model's figures on the cold tenants' incidents ([`peer_plan`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerPoint {
    /// the peer's label (`lightgbm (peer)`, …)
    pub model: String,
    /// pooled figures over the same incidents as every point of the curve
    pub metrics: CvMetrics,
}

impl ColdStartReport {
    /// Plain-text table of the curve.
    pub fn table(&self) -> String {
        let mut s = format!(
            "cold start ({}): {} cold tenants at {} origin(s) ({} distinct), {} incidents scored at every point;\n\
             each tenant's first n verdicts (ended before the origin) through the online path, model trained without it\n",
            self.model,
            self.tenants,
            self.origins.len(),
            self.distinct_tenants,
            self.incidents
        );
        s.push_str(&format!(
            "{:>9} {:>8} {:>8} {:>8}\n",
            "verdicts", "F1(row)", "F1(inc)", "PRAUC"
        ));
        for p in &self.points {
            s.push_str(&format!(
                "{:>9} {:>8.3} {:>8.3} {:>8}\n",
                p.verdicts,
                p.metrics.macro_f1_rows,
                p.metrics.macro_f1_incidents,
                p.metrics
                    .pr_auc_tp
                    .map_or("-".to_string(), |v| format!("{v:.3}"))
            ));
        }
        s
    }
}

/// The cold tenants of one origin and their groups.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdOrigin {
    /// the origin, Unix seconds
    pub origin: i64,
    /// per group: the cold tenants' earliest verdicts (indices into `corr.incidents`, by end
    /// time, at most `max(verdicts)` per tenant) and their window incidents
    pub groups: Vec<ColdGroup>,
}

/// One group of cold tenants at one origin.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ColdGroup {
    /// tenant → its earliest verdicts, by end time
    pub verdicts: BTreeMap<u64, Vec<usize>>,
    /// the window incidents of these tenants (indices into `corr.incidents`)
    pub test: Vec<usize>,
    /// the training incidents: ended before the origin, of every other tenant
    pub train: Vec<usize>,
}

/// The cold tenants and groups of every evaluated forward window of `plan`.
pub fn cold_origins(params: &ColdStartParams, plan: &CvPlan, corr: &Correlated) -> Vec<ColdOrigin> {
    let need = params.verdicts.last().copied().unwrap_or(0).max(1);
    let Some(fp) = &plan.forward else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &(origin, end) in &fp.windows {
        let mut before: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut window: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &i in &plan.labelled {
            let inc = &corr.incidents[i];
            let t = inc.key.tenant.0;
            if inc.last_seen < origin {
                before.entry(t).or_default().push(i);
            }
            if (origin..end).contains(&inc.first_seen) {
                window.entry(t).or_default().push(i);
            }
        }
        let cold: Vec<u64> = before
            .iter()
            .filter(|(t, v)| v.len() >= need && window.contains_key(t))
            .map(|(t, _)| *t)
            .collect();
        let mut groups = vec![ColdGroup::default(); params.groups];
        for (r, t) in cold.iter().enumerate() {
            let g = &mut groups[r % params.groups];
            let mut v = before[t].clone();
            v.sort_by_key(|&i| (corr.incidents[i].last_seen, i));
            v.truncate(need);
            g.verdicts.insert(*t, v);
            g.test.extend(&window[t]);
        }
        for g in &mut groups {
            g.test.sort_unstable();
            g.train = before
                .iter()
                .filter(|(t, _)| !g.verdicts.contains_key(t))
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            g.train.sort_unstable();
        }
        groups.retain(|g| !g.test.is_empty());
        out.push(ColdOrigin { origin, groups });
    }
    out
}

/// The encoders after `n` of each cold tenant's verdicts: refitted on `train` plus them, with
/// the cross-tenant snapshot of `base` (so only the tenant's own history and the prior move).
pub fn encoders_after(
    base: &FittedFeatures,
    group: &ColdGroup,
    n: usize,
    evidence: &[Evidence],
    corr: &Correlated,
    kn: &Knowledge,
) -> Result<(FittedFeatures, Knowledge), TrainError> {
    let mut seen = group.train.clone();
    for v in group.verdicts.values() {
        seen.extend(v.iter().take(n));
    }
    seen.sort_unstable();
    let kn = Knowledge {
        snapshot: Some(base.global_signals().clone()),
        ..kn.clone()
    };
    let params = base.params().clone().check()?;
    let enc = FittedFeatures::fit(&params, evidence, corr, &seen, &kn)?;
    Ok((enc, kn))
}

/// The plan of `cv_params`' forward split alone (its windows are the cold start's origins).
fn forward_plan(cv_params: &CvParams, corr: &Correlated) -> Result<CvPlan, TrainError> {
    let forward_only = CvParams {
        splits: vec![SplitKind::Forward],
        ..cv_params.clone()
    };
    CvPlan::new(&forward_only, corr)
}

/// The cold-start curve of the training default on the forward windows of `cv`; `None` when
/// no tenant is cold at any origin (no tenant has `max(verdicts)` verdicts before an origin and
/// an incident in its window: a small input).
pub fn curve(
    cv_params: &CvParams,
    params: &ColdStartParams,
    evidence: &[Evidence],
    corr: &Correlated,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<ColdStartReport>, TrainError> {
    params.check()?;
    let plan = forward_plan(cv_params, corr)?;
    let tp: TrainValidParams = cv_params.train.check()?;
    let origins = cold_origins(params, &plan, corr);
    let k = params.verdicts.len();
    // per point: probabilities, grades; shared: truth, rows, tenants
    let mut probs: Vec<Vec<f32>> = vec![Vec::new(); k];
    let mut grades: Vec<Vec<u8>> = vec![Vec::new(); k];
    let (mut y, mut w, mut tenant_of) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pairs, mut distinct) = (0, std::collections::BTreeSet::new());
    let total: usize = origins.iter().map(|o| o.groups.len()).sum();
    let mut step = 0;
    for o in &origins {
        for g in &o.groups {
            step += 1;
            progress(&format!("cold start: model {step}/{total}"));
            let art = super::fit(&tp, evidence, corr, &g.train, kn, cv::empty_info(""))?;
            let tenants = corr.tenants_of(&g.test);
            for (p, &n) in params.verdicts.iter().enumerate() {
                let (enc, kn_n) = encoders_after(&art.features, g, n, evidence, corr, kn)?;
                let x = enc.transform(evidence, corr, &g.test, &kn_n);
                let pred = art.predict_rows(x, &tenants)?;
                probs[p].extend_from_slice(&pred.probs);
                grades[p].extend_from_slice(&pred.grades);
            }
            for &i in &g.test {
                let inc = &corr.incidents[i];
                y.push(inc.grade.map_or(0, |g| g.class_id()));
                w.push(inc.evidence.len() as f64);
                tenant_of.push(inc.key.tenant.0);
            }
            pairs += g.verdicts.len();
            distinct.extend(g.verdicts.keys().copied());
        }
    }
    if y.is_empty() {
        return Ok(None);
    }
    debug_assert!(probs.iter().all(|p| p.len() == y.len() * N_CLASSES));
    let mut points = Vec::with_capacity(k);
    for (p, &n) in params.verdicts.iter().enumerate() {
        points.push(ColdStartPoint {
            verdicts: n,
            metrics: cv::metrics(&probs[p], &grades[p], &y, &w, &tenant_of)?,
        });
    }
    Ok(Some(ColdStartReport {
        model: tp.model().algorithm().name().to_string(),
        origins: origins
            .iter()
            .map(|o| crate::ingest::format_rfc3339(o.origin)[..10].to_string())
            .collect(),
        tenants: pairs,
        distinct_tenants: distinct.len(),
        incidents: y.len(),
        models: total,
        points,
        peers_at_zero: Vec::new(),
    }))
}

/// The cold-start models' folds as a plan for the peer models (`bench::peers`): one forward
/// fold per origin and group, `train` = that group's training incidents, `test` = its
/// tenants' window incidents; `None` when no tenant is cold.
pub fn peer_plan(
    cv_params: &CvParams,
    params: &ColdStartParams,
    corr: &Correlated,
) -> Result<Option<CvPlan>, TrainError> {
    params.check()?;
    let mut plan = forward_plan(cv_params, corr)?;
    let position: BTreeMap<usize, usize> = plan
        .labelled
        .iter()
        .enumerate()
        .map(|(j, &i)| (i, j))
        .collect();
    let to_labelled = |v: &[usize]| -> Vec<usize> { v.iter().map(|i| position[i]).collect() };
    let folds: Vec<crate::eval::Fold> = cold_origins(params, &plan, corr)
        .iter()
        .flat_map(|o| o.groups.iter())
        .map(|g| crate::eval::Fold {
            train: to_labelled(&g.train),
            test: to_labelled(&g.test),
        })
        .collect();
    if folds.is_empty() {
        return Ok(None);
    }
    plan.splits = vec![(SplitKind::Forward, folds)];
    plan.forward = None;
    Ok(Some(plan))
}

/// Why [`curve`] returned `None`.
pub fn none_reason(params: &ColdStartParams) -> String {
    format!(
        "cold start not measured: no tenant has {} verdicts before a forward origin and an \
         incident in its window",
        params.verdicts.last().copied().unwrap_or(0).max(1)
    )
}
