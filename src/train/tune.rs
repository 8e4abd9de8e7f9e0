//! `threatrank tune`: a small seeded random search over the GBDT's hyper-parameters, each
//! candidate scored by grouped cross-validation of the whole training recipe.
//!
//! Sits in `train`, on top of [`super::cv`]. Candidate 0 is the defaults; the others draw
//! depth, learning rate, minimum child weight, L2 and L1 regularization, row and column
//! sampling, the round cap and the fewest tenants per leaf from fixed ranges with a
//! splitmix64 stream seeded by `seed`, so the same seed always tries the same candidates. A
//! candidate's score is the macro-F1 over incidents on the incident-disjoint split, the
//! tenant-disjoint split, or their mean ([`TuneObjective`]); ties keep the earlier candidate. The winner's parameters and the whole
//! search go into the model card of the artifact trained with them.

use super::cv::{self, CvParams, SplitKind};
use super::{TrainError, TrainParams};
use crate::correlate::Correlated;
use crate::domain::Evidence;
use crate::models::{Algorithm, GbdtParams, ModelParams};
use crate::rng::SplitMix64;
use crate::signals::Knowledge;
use serde::{Deserialize, Serialize};

/// What a candidate is scored on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TuneObjective {
    /// macro-F1 over incidents, incident-disjoint (tenants with history)
    Incident,
    /// macro-F1 over incidents, tenant-disjoint (tenants never seen)
    Tenant,
    /// the mean of both
    Both,
}

impl TuneObjective {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            TuneObjective::Incident => "incident",
            TuneObjective::Tenant => "tenant",
            TuneObjective::Both => "both",
        }
    }

    /// Parses [`TuneObjective::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Incident, Self::Tenant, Self::Both]
            .into_iter()
            .find(|o| o.name() == s)
    }

    fn splits(self) -> Vec<SplitKind> {
        match self {
            TuneObjective::Incident => vec![SplitKind::IncidentDisjoint],
            TuneObjective::Tenant => vec![SplitKind::TenantDisjoint],
            TuneObjective::Both => SplitKind::RANDOM.to_vec(),
        }
    }
}

/// Search parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TuneParams {
    /// candidates, including the defaults (at least 1). Default 8.
    pub trials: usize,
    /// outer CV folds per candidate (2..=20). Default 3.
    pub folds: usize,
    /// seed of the candidate draws and of the folds. Default 42.
    pub seed: u64,
    /// what a candidate is scored on. Default [`TuneObjective::Both`].
    pub objective: TuneObjective,
}

impl Default for TuneParams {
    fn default() -> Self {
        Self {
            trials: 8,
            folds: 3,
            seed: 42,
            objective: TuneObjective::Both,
        }
    }
}

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// the candidate's parameters
    pub params: GbdtParams,
    /// macro-F1 over incidents, incident-disjoint (when evaluated)
    pub incident_f1: Option<f64>,
    /// macro-F1 over incidents, tenant-disjoint (when evaluated)
    pub tenant_f1: Option<f64>,
    /// the objective's value
    pub score: f64,
}

/// The search, as recorded in the model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneReport {
    /// search parameters
    pub params: TuneParams,
    /// every candidate, in the order tried
    pub trials: Vec<Trial>,
    /// index of the winner in `trials`
    pub best: usize,
}

impl TuneReport {
    /// The winning parameters.
    pub fn best_params(&self) -> &GbdtParams {
        &self.trials[self.best].params
    }

    /// Plain-text table of the trials, the winner marked `*`.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let mut s = format!(
            "tune — {} candidates, {}-fold grouped CV, objective {} (macro-F1 over incidents)\n",
            self.trials.len(),
            self.params.folds,
            self.params.objective.name()
        );
        s.push_str(&format!(
            "  {:>3} {:>5} {:>6} {:>5} {:>4} {:>6} {:>5} {:>5} {:>5} {:>6}  {:>8} {:>8} {:>7}\n",
            "#",
            "depth",
            "eta",
            "mcw",
            "mcg",
            "lambda",
            "alpha",
            "subs",
            "cols",
            "rounds",
            "inc F1",
            "ten F1",
            "score"
        ));
        for (i, t) in self.trials.iter().enumerate() {
            let p = &t.params;
            s.push_str(&format!(
                "{} {:>3} {:>5} {:>6.3} {:>5.1} {:>4} {:>6.2} {:>5.2} {:>5.2} {:>5.2} {:>6}  {:>8} {:>8} {:>7.4}\n",
                if i == self.best { "*" } else { " " },
                i,
                p.get_max_depth(),
                p.get_learning_rate(),
                p.get_min_child_weight(),
                p.get_min_child_groups(),
                p.get_lambda(),
                p.get_alpha(),
                p.get_subsample(),
                p.get_colsample_bytree(),
                p.get_max_rounds(),
                opt(t.incident_f1),
                opt(t.tenant_f1),
                t.score
            ));
        }
        s
    }
}

fn pick<T: Copy>(rng: &mut SplitMix64, options: &[T]) -> T {
    options[(rng.next_u64() % options.len() as u64) as usize]
}

/// Log-uniform in `[lo, hi]`, rounded to 3 significant digits (readable cards).
fn log_uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    let v = (lo.ln() + rng.unit() * (hi.ln() - lo.ln())).exp();
    let scale = 10f64.powi(2 - v.log10().floor() as i32);
    (v * scale).round() / scale
}

/// The candidates tried for `params`: the defaults, then seeded draws.
pub fn candidates(params: &TuneParams, base: &GbdtParams) -> Vec<GbdtParams> {
    let mut state = SplitMix64(params.seed ^ 0x7475_6e65);
    let mut out = vec![base.clone()];
    while out.len() < params.trials {
        let c = base
            .clone()
            .max_depth(pick(&mut state, &[3, 4, 5, 6, 8]))
            .learning_rate(log_uniform(&mut state, 0.02, 0.3))
            .min_child_weight(pick(&mut state, &[0.5, 1.0, 3.0, 5.0, 10.0]))
            .lambda(log_uniform(&mut state, 0.3, 20.0))
            .alpha(pick(&mut state, &[0.0, 0.0, 0.1, 1.0]))
            .subsample(pick(&mut state, &[0.6, 0.8, 1.0]))
            .colsample_bytree(pick(&mut state, &[0.5, 0.7, 0.8, 1.0]))
            .max_rounds(pick(&mut state, &[300, 600, 1200]))
            .min_child_groups(pick(&mut state, &[1, 2, 5, 10]));
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Runs the search on the labelled incidents of `corr`; `train` is the recipe template (its
/// model parameters, when GBDT, are candidate 0).
pub fn tune(
    params: &TuneParams,
    train: &TrainParams,
    input: &str,
    evidence: &[Evidence],
    corr: &Correlated,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<TuneReport, TrainError> {
    if params.trials == 0 || !(2..=20).contains(&params.folds) {
        return Err(TrainError::Param {
            name: "tune",
            reason: format!(
                "trials must be >= 1 and folds in 2..=20, got {} and {}",
                params.trials, params.folds
            ),
        });
    }
    let base = match &train.model {
        Some(ModelParams::Gbdt(p)) => p.clone(),
        _ => GbdtParams::default().seed(train.seed),
    };
    let mut trials = Vec::with_capacity(params.trials);
    let cands = candidates(params, &base);
    let n = cands.len();
    for (i, cand) in cands.into_iter().enumerate() {
        progress(&format!("candidate {}/{n}", i + 1));
        let cv_params = CvParams {
            folds: params.folds,
            folds_to_run: None,
            seed: params.seed,
            forward_origins: CvParams::default().forward_origins,
            forward_test_share: CvParams::default().forward_test_share,
            algorithms: vec![Algorithm::Gbdt],
            baseline: false,
            splits: params.objective.splits(),
            train: TrainParams {
                algorithm: Algorithm::Gbdt,
                model: Some(ModelParams::Gbdt(cand.clone())),
                ..train.clone()
            },
            compare_ranker: false,
            keep_predictions: false,
        };
        let report = cv::run(&cv_params, input, evidence, corr, kn, &mut |_| {})?;
        let f1 = |kind: SplitKind| {
            report
                .splits
                .iter()
                .find(|s| s.split == kind)
                .and_then(|s| s.models.first())
                .map(|m| m.metrics.macro_f1_incidents)
        };
        let (inc, ten) = (
            f1(SplitKind::IncidentDisjoint),
            f1(SplitKind::TenantDisjoint),
        );
        let got: Vec<f64> = [inc, ten].into_iter().flatten().collect();
        let score = got.iter().sum::<f64>() / got.len().max(1) as f64;
        trials.push(Trial {
            params: cand,
            incident_f1: inc,
            tenant_f1: ten,
            score,
        });
    }
    let best = trials
        .iter()
        .enumerate()
        .fold(0, |b, (i, t)| if t.score > trials[b].score { i } else { b });
    Ok(TuneReport {
        params: params.clone(),
        trials,
        best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_seeded_distinct_valid_and_start_with_the_defaults() {
        let p = TuneParams {
            trials: 12,
            ..TuneParams::default()
        };
        let base = GbdtParams::default();
        let a = candidates(&p, &base);
        assert_eq!(a.len(), 12);
        assert_eq!(a[0], base);
        assert_eq!(a, candidates(&p, &base));
        let other = candidates(
            &TuneParams {
                seed: 7,
                ..p.clone()
            },
            &base,
        );
        assert_ne!(a, other);
        for (i, c) in a.iter().enumerate() {
            assert!(c.check().is_ok(), "candidate {i}: {c:?}");
            assert!(!a[..i].contains(c), "candidate {i} repeats");
        }
    }

    #[test]
    fn log_uniform_stays_in_range_and_rounds() {
        let mut s = SplitMix64(1);
        for _ in 0..1000 {
            let v = log_uniform(&mut s, 0.02, 0.3);
            assert!((0.0199..=0.301).contains(&v), "{v}");
            assert_eq!(v, (v * 1e6).round() / 1e6);
        }
    }
}
