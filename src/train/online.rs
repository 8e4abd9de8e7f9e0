//! Online-update simulation: what folding in each day's analyst verdicts is worth.
//!
//! Sits in `train`, used by `threatrank eval --online`. Labelled incidents are ordered by the
//! UTC day of their first evidence. The earliest days holding `initial_share` of them train the
//! starting point: encoders and an out-of-fold matrix (as `threatrank train` does) and an
//! [`OnlineGbdt`]. Every later day is then scored *before* its verdicts are known, by four
//! variants, and only afterwards are its verdicts revealed:
//!
//! - **frozen**: the starting encoders and model, never changed;
//! - **history**: the frozen model, with encoders (tenant history and cross-tenant tables)
//!   refitted on every verdict before the day;
//! - **updated**: history, plus the model updated in place with each past day's rows (as they
//!   were featurized when scored) — hessboost's in-place update, no retrain;
//! - **retrained**: history, plus the model retrained from scratch on the same rows each day
//!   (the reference the in-place update approximates, and its cost).
//!
//! Strictly past-only: a day's incidents are featurized with encoders fitted on earlier days
//! only, and grades are the arg-max of the probabilities (no tuned decision rule), so the four
//! variants are compared on equal terms.

use super::{row_ids, TrainError, TrainValidParams, DAY_SECONDS};
use crate::correlate::Correlated;
use crate::domain::Evidence;
use crate::eval;
use crate::features::{self, FittedFeatures};
use crate::matrix::FeatureMatrix;
use crate::models::{GbdtParams, ModelParams, OnlineGbdt, N_CLASSES};
use crate::signals::Knowledge;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Parameters of the simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnlineSimParams {
    /// Share of labelled incidents (earliest days first) in the starting training set, in
    /// `(0, 1)`. Default 0.5.
    pub initial_share: f64,
    /// Depth of the online grade models. Default 4: the update state grows with `2^depth`.
    pub max_depth: usize,
    /// Learning rate of the online grade models. Default 0.08.
    pub learning_rate: f64,
    /// Histogram bins of the online grade models. Default 64: the update state grows with it
    /// (measured: 2.5 GB peak RSS at 256 bins, 1.2 GB at 64, same quality).
    pub max_bin: usize,
}

impl Default for OnlineSimParams {
    fn default() -> Self {
        Self {
            initial_share: 0.5,
            max_depth: 4,
            learning_rate: 0.08,
            max_bin: 64,
        }
    }
}

/// Figures of one variant on a set of incidents.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VariantMetrics {
    /// macro-F1 over incidents (arg-max grades)
    pub macro_f1: f64,
    /// accuracy over incidents
    pub accuracy: f64,
    /// multiclass log-loss
    pub log_loss: f64,
}

/// One simulated day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaySim {
    /// UTC day, `YYYY-MM-DD`
    pub day: String,
    /// labelled incidents scored that day
    pub incidents: usize,
    /// frozen / history / updated / retrained
    pub variants: [VariantMetrics; 4],
    /// seconds spent updating the model in place with the previous day's verdicts
    pub update_seconds: f64,
    /// seconds spent retraining from scratch on the same rows
    pub retrain_seconds: f64,
}

/// The simulation's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineReport {
    /// variant names, in the order of [`DaySim::variants`]
    pub variant_names: [String; 4],
    /// labelled incidents in the starting training set
    pub initial_incidents: usize,
    /// last day of the starting training set
    pub initial_until: String,
    /// boosting rounds per grade model (the early-stopped count of a softprob GBDT with the
    /// same depth, learning rate and bins)
    pub rounds: usize,
    /// per simulated day
    pub days: Vec<DaySim>,
    /// pooled over all simulated days
    pub pooled: [VariantMetrics; 4],
    /// total in-place update seconds
    pub update_seconds: f64,
    /// total retrain seconds
    pub retrain_seconds: f64,
}

/// Variant names, in report order.
pub const VARIANTS: [&str; 4] = ["frozen", "history", "updated", "retrained"];

fn day_name(day: i64) -> String {
    crate::ingest::format_rfc3339(day * DAY_SECONDS)[..10].to_string()
}

fn variant_metrics(probs: &[f32], y: &[u8]) -> Result<VariantMetrics, TrainError> {
    let pred: Vec<u8> = probs
        .chunks_exact(N_CLASSES)
        .map(|p| eval::argmax3(&[p[0], p[1], p[2]]))
        .collect();
    let r = eval::classification_report(y, &pred, None)?;
    Ok(VariantMetrics {
        macro_f1: r.macro_f1,
        accuracy: r.accuracy,
        log_loss: eval::log_loss(probs, y)?,
    })
}

/// Runs the simulation on the labelled incidents of `corr`.
pub fn simulate(
    params: &TrainValidParams,
    sim: &OnlineSimParams,
    evidence: &[Evidence],
    corr: &Correlated,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<OnlineReport, TrainError> {
    if !(sim.initial_share > 0.0 && sim.initial_share < 1.0) {
        return Err(TrainError::Param {
            name: "initial_share",
            reason: format!("must be in (0, 1), got {}", sim.initial_share),
        });
    }
    let gbdt = match params.model() {
        ModelParams::Gbdt(p) => p.clone(),
        _ => GbdtParams::default(),
    }
    .max_depth(sim.max_depth)
    .learning_rate(sim.learning_rate)
    .max_bin(sim.max_bin);
    let mut by_day: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, inc, _) in corr.labelled() {
        by_day
            .entry(inc.first_seen.div_euclid(DAY_SECONDS))
            .or_default()
            .push(i);
    }
    let total: usize = by_day.values().map(Vec::len).sum();
    let mut initial: Vec<usize> = Vec::new();
    let mut days = by_day.into_iter().peekable();
    let mut initial_until = i64::MIN;
    while let Some((d, incs)) = days.peek() {
        if initial.len() as f64 >= sim.initial_share * total as f64 {
            break;
        }
        initial.extend(incs);
        initial_until = *d;
        days.next();
    }
    let later: Vec<(i64, Vec<usize>)> = days.collect();
    if initial.is_empty() || later.is_empty() {
        return Err(TrainError::Data {
            reason: format!(
                "{total} labelled incidents on too few days to split into a start and later days"
            ),
        });
    }
    let grade = |i: usize| corr.incidents[i].grade.map_or(0, |g| g.class_id());

    progress("starting model");
    let (frozen_enc, x0, y0, rows0) =
        features::fit_transform(&params.features, evidence, corr, &initial, kn)?;
    let rounds = gbdt
        .check()?
        .fit_grouped(
            &x0,
            &y0,
            &row_ids(x0.n_rows()),
            Some(&corr.tenants_of(&rows0)),
        )?
        .rounds();
    let frozen = OnlineGbdt::train(&gbdt, rounds, &x0, &y0)?;
    let mut updated = frozen.clone();
    // Rows the updated/retrained models hold: the starting matrix plus each day's rows.
    let mut held_x = x0.clone();
    let mut held_y = y0.clone();
    let mut seen: Vec<usize> = initial.clone();
    let mut out_days = Vec::with_capacity(later.len());
    let mut pooled_probs: [Vec<f32>; 4] = Default::default();
    let mut pooled_y: Vec<u8> = Vec::new();
    let mut pending: Option<(FeatureMatrix, Vec<u8>)> = None;
    let (mut update_total, mut retrain_total) = (0.0, 0.0);
    let mut retrained = frozen.clone();
    for (k, (day, incs)) in later.iter().enumerate() {
        progress(&format!(
            "day {}/{} ({})",
            k + 1,
            later.len(),
            day_name(*day)
        ));
        // Reveal yesterday's verdicts: update in place, and retrain for reference.
        let (mut update_seconds, mut retrain_seconds) = (0.0, 0.0);
        if let Some((xp, yp)) = pending.take() {
            let t = Instant::now();
            updated = updated.update(&xp, &yp)?.0;
            update_seconds = t.elapsed().as_secs_f64();
            held_x.extend(&xp)?;
            held_y.extend_from_slice(&yp);
            let t = Instant::now();
            retrained = OnlineGbdt::train(&gbdt, rounds, &held_x, &held_y)?;
            retrain_seconds = t.elapsed().as_secs_f64();
        }
        let history = FittedFeatures::fit(&params.features, evidence, corr, &seen, kn)?;
        let x_frozen = frozen_enc.transform(evidence, corr, incs, kn);
        let x_now = history.transform(evidence, corr, incs, kn);
        let y: Vec<u8> = incs.iter().map(|&i| grade(i)).collect();
        let mut variants = [VariantMetrics {
            macro_f1: 0.0,
            accuracy: 0.0,
            log_loss: 0.0,
        }; 4];
        for (v, (model, x)) in [
            (&frozen, &x_frozen),
            (&frozen, &x_now),
            (&updated, &x_now),
            (&retrained, &x_now),
        ]
        .into_iter()
        .enumerate()
        {
            let mut p = vec![0.0; x.n_rows() * N_CLASSES];
            model.score_into(x, &mut p)?;
            variants[v] = variant_metrics(&p, &y)?;
            pooled_probs[v].extend_from_slice(&p);
        }
        pooled_y.extend_from_slice(&y);
        update_total += update_seconds;
        retrain_total += retrain_seconds;
        out_days.push(DaySim {
            day: day_name(*day),
            incidents: incs.len(),
            variants,
            update_seconds,
            retrain_seconds,
        });
        pending = Some((x_now, y));
        seen.extend(incs);
    }
    let mut pooled = [VariantMetrics {
        macro_f1: 0.0,
        accuracy: 0.0,
        log_loss: 0.0,
    }; 4];
    for (v, p) in pooled_probs.iter().enumerate() {
        pooled[v] = variant_metrics(p, &pooled_y)?;
    }
    Ok(OnlineReport {
        variant_names: VARIANTS.map(str::to_string),
        initial_incidents: initial.len(),
        initial_until: day_name(initial_until),
        rounds,
        days: out_days,
        pooled,
        update_seconds: update_total,
        retrain_seconds: retrain_total,
    })
}

impl OnlineReport {
    /// Plain-text table: per day and pooled, macro-F1 (and log-loss) of each variant.
    pub fn table(&self) -> String {
        let mut s = format!(
            "online updates — start: {} labelled incidents up to {}, {} rounds per grade model\n",
            self.initial_incidents, self.initial_until, self.rounds
        );
        s.push_str(&format!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10}\n",
            "day",
            "incidents",
            "frozen",
            "history",
            "updated",
            "retrained",
            "update s",
            "retrain s"
        ));
        for d in &self.days {
            s.push_str(&format!(
                "{:<12} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>10.3} {:>9.2} {:>10.2}\n",
                d.day,
                d.incidents,
                d.variants[0].macro_f1,
                d.variants[1].macro_f1,
                d.variants[2].macro_f1,
                d.variants[3].macro_f1,
                d.update_seconds,
                d.retrain_seconds
            ));
        }
        let n: usize = self.days.iter().map(|d| d.incidents).sum();
        s.push_str(&format!(
            "{:<12} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>10.3} {:>9.2} {:>10.2}   (macro-F1 over incidents)\n",
            "pooled",
            n,
            self.pooled[0].macro_f1,
            self.pooled[1].macro_f1,
            self.pooled[2].macro_f1,
            self.pooled[3].macro_f1,
            self.update_seconds,
            self.retrain_seconds
        ));
        s.push_str(&format!(
            "{:<12} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>10.3}   (log-loss)\n",
            "pooled",
            "",
            self.pooled[0].log_loss,
            self.pooled[1].log_loss,
            self.pooled[2].log_loss,
            self.pooled[3].log_loss
        ));
        s
    }
}
