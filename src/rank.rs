//! Rank: calibrated grade probabilities → priority 0–100 → per-tenant queues, with reasons.
//!
//! Sits after `models`. Priority is `round(100 · P(TP))` of the calibrated probabilities: the
//! queue is ordered by the chance that a hunter's look finds a real attack. Order is total:
//! priority desc, then P(TP) desc, then (tenant, incident) asc — the same input always gives the
//! same queue. Reasons come from the model's additive contributions to the TP raw score
//! (`Scorer::contributions_into`), named and put in words by [`describe`].

use crate::correlate::{most_frequent, Correlated, Incident};
use crate::domain::{Evidence, Grade, IncidentKey, TenantId};
use crate::matrix::{FeatureMatrix, FeatureSchema};
use crate::models::GradeSet;
use crate::signals::{tactic_names, Knowledge};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One reason behind a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// feature name
    pub feature: String,
    /// feature family
    pub family: String,
    /// the feature's value for this incident
    pub value: f32,
    /// additive contribution to the TP raw score (positive = pushed the priority up)
    pub contribution: f32,
    /// the reason in words
    pub text: String,
}

/// A feature family's summed contribution to an incident's TP raw score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyContribution {
    /// family name (see the schema)
    pub family: String,
    /// summed additive contribution
    pub contribution: f32,
}

/// Fewest distinct technique families (`T1078` and `T1078.004` are one) of an incident that a
/// group must match to be named as its likely actor.
pub const MIN_ACTOR_TECHNIQUES: usize = 2;

/// Distinct technique families (parent ids) among matched techniques.
fn matched_families(shared: &[String], related: &[String]) -> usize {
    let mut fams: Vec<&str> = shared
        .iter()
        .chain(related)
        .map(|t| t.split('.').next().unwrap_or(t))
        .collect();
    fams.sort_unstable();
    fams.dedup();
    fams.len()
}

/// The known ATT&CK group whose documented techniques best match an incident's (named only when
/// at least [`MIN_ACTOR_TECHNIQUES`] of them match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// ATT&CK group id, e.g. `G0016`
    pub id: String,
    /// group name, e.g. `APT29`
    pub name: String,
    /// similarity (see `signals::groups`), 0–1
    pub score: f32,
    /// the incident's techniques the group is documented to use
    pub shared: Vec<String>,
    /// the incident's techniques whose parent or sibling the group uses (half credit)
    #[serde(default)]
    pub related: Vec<String>,
}

impl Actor {
    /// `APT29 (G0016): T1078, T1021.001`, with related techniques after `~`
    /// (`APT28 (G0007): T1110 ~T1110.003`)
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.shared.clone();
        parts.extend(self.related.iter().map(|t| format!("~{t}")));
        format!("{} ({}): {}", self.name, self.id, parts.join(", "))
    }
}

/// A scored candidate threat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredIncident {
    /// tenant + incident
    pub key: IncidentKey,
    /// calibrated P(TP), P(BP), P(FP)
    pub probs: [f32; 3],
    /// predicted grade (decision rule over the calibrated probabilities)
    pub predicted: Grade,
    /// conformal prediction set at the artifact's coverage: the grades that cannot be ruled
    /// out; more than one grade means the engine is uncertain and a hunter should look
    pub grade_set: GradeSet,
    /// 0–100
    pub priority: u8,
    /// evidence rows
    pub n_evidence: u32,
    /// distinct alerts
    pub n_alerts: u32,
    /// first evidence time
    pub first_seen: i64,
    /// last evidence time
    pub last_seen: i64,
    /// ATT&CK tactics covered by its techniques, kill-chain order
    pub tactics: Vec<String>,
    /// the most similar known ATT&CK group, when it matches at least
    /// [`MIN_ACTOR_TECHNIQUES`] of the incident's techniques
    #[serde(default)]
    pub actor: Option<Actor>,
    /// most frequent detector
    pub detector: String,
    /// most frequent alert title
    pub title: String,
    /// most frequent category
    pub category: String,
    /// top reasons
    pub reasons: Vec<Reason>,
    /// contributions to the TP raw score summed per feature family, largest `|c|` first
    /// (with the bias, the families sum to the raw score)
    pub families: Vec<FamilyContribution>,
    /// the analysts' grade, when the input carried one (evaluation only; never used to score)
    pub actual: Option<Grade>,
}

/// Priority from calibrated P(TP): `round(100 · p)`, clamped to 0–100.
///
/// ```
/// assert_eq!(threatrank::rank::priority(0.834), 83);
/// assert_eq!(threatrank::rank::priority(1.2), 100);
/// ```
pub fn priority(p_tp: f32) -> u8 {
    (p_tp.clamp(0.0, 1.0) * 100.0).round() as u8
}

/// Inputs to [`build`]: one row per scored incident, all aligned.
pub struct RankInput<'a> {
    /// all evidence
    pub evidence: &'a [Evidence],
    /// correlation of that evidence
    pub corr: &'a Correlated,
    /// incidents scored (indices into `corr.incidents`), aligned with the rows below
    pub which: &'a [usize],
    /// feature rows
    pub x: &'a FeatureMatrix,
    /// calibrated probabilities, `N_CLASSES` per row
    pub probs: &'a [f32],
    /// predicted class ids (the artifact's decision rule), one per row
    pub grades: &'a [u8],
    /// conformal grade sets, one per row
    pub sets: &'a [GradeSet],
    /// TP contributions, `n_features + 1` per row (last = bias)
    pub contributions: &'a [f32],
    /// the schema of `x`
    pub schema: &'a FeatureSchema,
    /// ATT&CK table for tactic names
    pub knowledge: &'a Knowledge,
    /// reasons per incident
    pub top_reasons: usize,
}

/// The most similar known ATT&CK group for a sorted, deduplicated technique set, when
/// techniques of at least [`MIN_ACTOR_TECHNIQUES`] distinct families match.
pub fn likely_actor(kn: &Knowledge, techniques: &[&str]) -> Option<Actor> {
    kn.groups
        .top(techniques, 1)
        .into_iter()
        .next()
        // One behaviour (often a common one such as T1566, or T1078 with its sub-technique
        // T1078.004) matches many thinly documented groups: name an actor only when techniques
        // of two or more distinct families match.
        .filter(|g| matched_families(&g.shared, &g.related) >= MIN_ACTOR_TECHNIQUES)
        .map(|g| Actor {
            id: g.id,
            name: g.name,
            score: g.score,
            shared: g.shared,
            related: g.related,
        })
}

/// What an incident's evidence says besides its scores: the words its reasons use (most
/// frequent detector, title, category, likely actor), the actor itself and the bit mask of the
/// ATT&CK tactics its techniques cover.
pub fn incident_context(rows: &[&Evidence], kn: &Knowledge) -> (Context, Option<Actor>, u16) {
    let mut mask = 0u16;
    let mut techniques: Vec<&str> = Vec::new();
    for e in rows {
        for t in &e.techniques {
            mask |= kn.attack.tactics_of(t);
            techniques.push(t);
        }
    }
    techniques.sort_unstable();
    techniques.dedup();
    let actor = likely_actor(kn, &techniques);
    let ctx = Context {
        detector: most_frequent(rows.iter().map(|e| e.detector.as_str())),
        title: most_frequent(rows.iter().map(|e| e.title.as_str())),
        category: most_frequent(rows.iter().map(|e| e.category.as_str())),
        actor: actor.as_ref().map(Actor::describe),
    };
    (ctx, actor, mask)
}

/// Builds scored incidents (input order kept).
pub fn build(input: &RankInput<'_>) -> Vec<ScoredIncident> {
    let width = input.x.n_cols();
    input
        .which
        .iter()
        .enumerate()
        .map(|(r, &i)| {
            let inc: &Incident = &input.corr.incidents[i];
            let rows: Vec<&Evidence> = inc.rows(input.evidence);
            let p = &input.probs[r * 3..r * 3 + 3];
            let (ctx, actor, mask) = incident_context(&rows, input.knowledge);
            let contrib = &input.contributions[r * (width + 1)..r * (width + 1) + width];
            let reasons = top_reasons(
                contrib,
                input.x.row(r),
                input.schema,
                &ctx,
                input.top_reasons,
            );
            ScoredIncident {
                key: inc.key,
                probs: [p[0], p[1], p[2]],
                predicted: Grade::from_class_id(input.grades[r]).unwrap_or(Grade::TruePositive),
                grade_set: input.sets[r],
                priority: priority(p[0]),
                n_evidence: inc.evidence.len() as u32,
                n_alerts: inc.alerts.len() as u32,
                first_seen: inc.first_seen,
                last_seen: inc.last_seen,
                tactics: tactic_names(mask).into_iter().map(str::to_string).collect(),
                actor,
                detector: ctx.detector,
                title: ctx.title,
                category: ctx.category,
                reasons,
                families: family_contributions(contrib, input.schema),
                actual: inc.grade,
            }
        })
        .collect()
}

/// Sums per-feature contributions by family (schema order of first appearance), then sorts by
/// `|contribution|` descending (ties keep schema order).
pub fn family_contributions(contrib: &[f32], schema: &FeatureSchema) -> Vec<FamilyContribution> {
    let mut out: Vec<FamilyContribution> = schema
        .family_sums(contrib)
        .into_iter()
        .map(|(family, contribution)| FamilyContribution {
            family,
            contribution,
        })
        .collect();
    out.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
    out
}

impl ScoredIncident {
    /// True when the conformal set holds more than one grade.
    pub fn is_uncertain(&self) -> bool {
        self.grade_set.is_uncertain()
    }

    /// The grade as shown to a hunter: the decided grade, or `uncertain (TP|BP)`.
    pub fn grade_label(&self) -> String {
        if self.is_uncertain() {
            format!("uncertain ({})", self.grade_set)
        } else {
            self.predicted.name().to_string()
        }
    }
}

/// Incident context used in reason texts.
pub struct Context {
    /// most frequent detector
    pub detector: String,
    /// most frequent title
    pub title: String,
    /// most frequent category
    pub category: String,
    /// the most similar known group, in words ([`Actor::describe`])
    pub actor: Option<String>,
}

/// The `k` features that moved the TP score most, up (positive contribution) or down
/// (negative): largest `|contribution|` first, ties → lower column. For a high-priority incident
/// these are what pushed it up; for a low one, what held it down.
pub fn top_reasons(
    contrib: &[f32],
    values: &[f32],
    schema: &FeatureSchema,
    ctx: &Context,
    k: usize,
) -> Vec<Reason> {
    let mut chosen: Vec<usize> = (0..contrib.len()).filter(|&j| contrib[j] != 0.0).collect();
    chosen.sort_by(|&a, &b| {
        contrib[b]
            .abs()
            .total_cmp(&contrib[a].abs())
            .then(a.cmp(&b))
    });
    chosen.truncate(k);
    chosen
        .into_iter()
        .map(|j| {
            let name = &schema.names()[j];
            Reason {
                feature: name.clone(),
                family: schema.families()[j].clone(),
                value: values[j],
                contribution: contrib[j],
                text: format!("{} ({:+.2})", describe(name, values[j], ctx), contrib[j]),
            }
        })
        .collect()
}

fn pct(v: f32) -> String {
    format!("{:.0}%", v * 100.0)
}

fn grade_word(rate: &str) -> &'static str {
    match rate {
        "tp_rate" => "TP",
        "bp_rate" => "BP",
        _ => "FP",
    }
}

/// Puts a feature value in a hunter's words.
///
/// ```
/// use threatrank::rank::{describe, Context};
/// let ctx = Context {
///     detector: "217".into(),
///     title: "9".into(),
///     category: "Execution".into(),
///     actor: Some("APT29 (G0016): T1078, T1021.001".into()),
/// };
/// assert_eq!(
///     describe("tenant_detector:tp_rate", 0.64, &ctx),
///     "this tenant graded detector 217 TP in 64% of past incidents"
/// );
/// assert_eq!(
///     describe("actor_top_shared", 2.0, &ctx),
///     "2 techniques shared with APT29 (G0016): T1078, T1021.001"
/// );
/// ```
pub fn describe(name: &str, v: f32, ctx: &Context) -> String {
    let (base, suffix) = name.split_once(':').unwrap_or((name, ""));
    let count = || format!("{:.0}", (f64::from(v)).exp_m1().max(0.0));
    match (base, suffix) {
        ("tenant", "log_support") => format!("this tenant has {} past graded incidents", count()),
        ("tenant", r) => format!(
            "this tenant's past incidents were {} {} of the time",
            grade_word(r),
            pct(v)
        ),
        ("tenant_detector" | "tenant_title" | "tenant_category", s) => {
            let (what, id) = match base {
                "tenant_detector" => ("detector", &ctx.detector),
                "tenant_title" => ("alert title", &ctx.title),
                _ => ("category", &ctx.category),
            };
            match s {
                "log_support" => format!(
                    "this tenant has {} past graded incidents from {what} {id}",
                    count()
                ),
                "share_seen" if v == 0.0 => format!("this tenant never graded {what} {id} before"),
                "share_seen" => format!("this tenant graded {what} {id} before"),
                r => format!(
                    "this tenant graded {what} {id} {} in {} of past incidents",
                    grade_word(r),
                    pct(v)
                ),
            }
        }
        ("tenant_entity", s) => match s {
            "log_support" => format!(
                "this tenant has {} past graded incidents on the same entities",
                count()
            ),
            "share_seen" if v == 0.0 => {
                "none of its entities appeared in this tenant's graded incidents".to_string()
            }
            "share_seen" => format!(
                "{} of its entities appeared in this tenant's graded incidents",
                pct(v)
            ),
            r => format!(
                "this tenant graded incidents on the same entities {} {} of the time",
                grade_word(r),
                pct(v)
            ),
        },
        ("entity", s) => match s {
            "log_support" => format!("its entities: {} graded incidents across tenants", count()),
            "max_tp_rate" | "max_fp_rate" => format!(
                "one of its entities was graded {} in {} of incidents across tenants",
                grade_word(&s[4..]),
                pct(v)
            ),
            "log_tenants" => format!("its entities seen in {} tenants", count()),
            "share_released" if v == 0.0 => {
                "its entities: too few tenants for a cross-tenant signal".to_string()
            }
            "share_released" => format!(
                "{} of its entities have a cross-tenant track record",
                pct(v)
            ),
            r => format!(
                "incidents with its entities were graded {} {} of the time across tenants",
                grade_word(r),
                pct(v)
            ),
        },
        ("detector" | "title" | "category" | "technique" | "family", s) => {
            let (what, id) = match base {
                "detector" => ("detector", ctx.detector.as_str()),
                "title" => ("alert title", ctx.title.as_str()),
                "category" => ("category", ctx.category.as_str()),
                "family" => ("its threat family", ""),
                _ => ("its ATT&CK techniques", ""),
            };
            let subject = if id.is_empty() {
                what.to_string()
            } else {
                format!("{what} {id}")
            };
            match s {
                "log_support" => format!("{subject}: {} graded incidents across tenants", count()),
                "log_tenants" => format!("{subject} seen in {} tenants", count()),
                "share_released" if v == 0.0 => {
                    format!("{subject}: too few tenants for a cross-tenant signal")
                }
                "share_released" => format!("{subject} has a cross-tenant track record"),
                "max_tp_rate" | "max_fp_rate" => format!(
                    "{subject}: up to {} graded {} across tenants",
                    pct(v),
                    grade_word(&s[4..])
                ),
                r => format!(
                    "{subject} was graded {} in {} of incidents across tenants",
                    grade_word(r),
                    pct(v)
                ),
            }
        }
        ("tactic", t) if v > 0.0 => format!("ATT&CK tactic {t} present"),
        ("tactic", t) => format!("no ATT&CK {t} activity"),
        ("tactics_covered", _) => format!("{v:.0} ATT&CK tactics covered"),
        ("techniques_in", t) => format!("{v:.0} {t} techniques"),
        ("ransomware", _) if v > 0.0 => "ransomware activity (category or T1486)".to_string(),
        ("ransomware", _) => "no ransomware activity".to_string(),
        ("sigma_max_level", _) => match v as usize {
            0 => "no Sigma rule covers its techniques".to_string(),
            l => format!(
                "Sigma rules rate its techniques up to {}",
                crate::signals::sigma::LEVELS
                    .get(l - 1)
                    .copied()
                    .unwrap_or("critical")
            ),
        },
        ("sigma_mean_level", _) if v == 0.0 => "no Sigma rule covers its techniques".to_string(),
        ("sigma_mean_level", _) => format!(
            "Sigma rules on its techniques average {:.1} (1 informational … 5 critical)",
            v
        ),
        ("actor_top_score", _) => match &ctx.actor {
            Some(a) => format!("techniques overlap {a} (similarity {v:.2})"),
            None => "its techniques match no known ATT&CK group".to_string(),
        },
        ("actor_top_shared", _) => match &ctx.actor {
            Some(a) => format!("{v:.0} techniques shared with {a}"),
            None => "no technique shared with a known ATT&CK group".to_string(),
        },
        ("actor_margin", _) => format!("attribution margin {v:.2} over the next group"),
        ("furthest_stage", _) => format!("furthest kill-chain stage {v:.0} of 14"),
        ("log_evidence", _) => format!("{} evidence rows", count()),
        ("log_alerts", _) => format!("{} alerts", count()),
        ("entity_type_rows", t) => format!("{} {t} entities", count()),
        ("distinct_present", c) => format!("{} distinct {c} values", count()),
        ("category_rows", c) => format!("{} {c} evidence rows", count()),
        ("share_last_verdict", s) => format!("{} of evidence last verdict {s}", pct(v)),
        ("log_span_seconds", _) => format!("spans {} seconds", count()),
        _ if suffix.is_empty() => format!("{base} = {v:.3}"),
        _ => format!("{base} {suffix} = {v:.3}"),
    }
}

/// Per-tenant queues: tenant → incidents in priority order (at most `top` each; `tenant` keeps
/// only that tenant). A tenant's queue holds only its own incidents.
pub fn queues(
    scored: &[ScoredIncident],
    tenant: Option<TenantId>,
    top: usize,
) -> BTreeMap<TenantId, Vec<&ScoredIncident>> {
    let mut out: BTreeMap<TenantId, Vec<&ScoredIncident>> = BTreeMap::new();
    for s in scored {
        if tenant.is_none_or(|t| t == s.key.tenant) {
            out.entry(s.key.tenant).or_default().push(s);
        }
    }
    for q in out.values_mut() {
        q.sort_by(|a, b| queue_order(a, b));
        q.truncate(top);
    }
    out
}

/// The queue's total order.
pub fn queue_order(a: &ScoredIncident, b: &ScoredIncident) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(b.probs[0].total_cmp(&a.probs[0]))
        .then(a.key.cmp(&b.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            detector: "217".into(),
            title: "9".into(),
            category: "Execution".into(),
            actor: Some("APT29 (G0016): T1078, T1021.001".into()),
        }
    }

    #[test]
    fn actor_and_sigma_reasons_read_as_words() {
        let c = ctx();
        assert_eq!(
            describe("actor_top_score", 0.74, &c),
            "techniques overlap APT29 (G0016): T1078, T1021.001 (similarity 0.74)"
        );
        assert_eq!(
            describe("sigma_max_level", 4.0, &c),
            "Sigma rules rate its techniques up to high"
        );
        assert_eq!(
            describe("sigma_max_level", 0.0, &c),
            "no Sigma rule covers its techniques"
        );
        assert_eq!(
            describe("techniques_in:lateral-movement", 2.0, &c),
            "2 lateral-movement techniques"
        );
        let none = Context {
            actor: None,
            ..ctx()
        };
        assert_eq!(
            describe("actor_top_score", 0.0, &none),
            "its techniques match no known ATT&CK group"
        );
    }

    #[test]
    fn reasons_are_the_largest_moves_with_their_sign() {
        let schema = FeatureSchema::new(
            1,
            ["a", "tenant_detector:tp_rate", "c", "d"]
                .iter()
                .map(|n| (n.to_string(), "f".to_string()))
                .collect(),
        );
        let contrib = [0.05, 0.40, -0.60, 0.0];
        let values = [1.0, 0.64, 3.0, 7.0];
        let r = top_reasons(&contrib, &values, &schema, &ctx(), 3);
        let names: Vec<&str> = r.iter().map(|r| r.feature.as_str()).collect();
        assert_eq!(names, ["c", "tenant_detector:tp_rate", "a"]);
        assert_eq!(
            r[1].text,
            "this tenant graded detector 217 TP in 64% of past incidents (+0.40)"
        );
        assert!(r[0].text.ends_with("(-0.60)"), "{}", r[0].text);
        // A zero contribution is never a reason.
        assert_eq!(top_reasons(&contrib, &values, &schema, &ctx(), 9).len(), 3);
    }

    #[test]
    fn priority_rounds_and_clamps() {
        assert_eq!(priority(0.0), 0);
        assert_eq!(priority(0.495), 50);
        assert_eq!(priority(-0.2), 0);
        assert_eq!(priority(f32::NAN.max(0.3)), 30);
    }
}
