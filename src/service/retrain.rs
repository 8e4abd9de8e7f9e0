//! `threatrank retrain`: folds the analysts' stored verdicts into training.
//!
//! The latest verdict of each verdicted threat labels that threat's stored evidence; those
//! incidents join the original training input (a verdict overrides the same incident's grade
//! there), and the model is trained again with the old artifact's parameters, so tenant history
//! and every encoder learn from the verdicts too. Before/after is measured on held-out
//! verdicts: the most recent `holdout` share (by audit-log order), scored by the old model and
//! by a model trained without them — the way a retrained model meets tomorrow's threats. The
//! artifact written is then trained on every verdict.

use super::db::{self, Db};
use super::ServiceError;
use crate::correlate::group_incidents;
use crate::domain::{Evidence, Grade, IncidentKey, CORRELATED_INCIDENT_BIT};
use crate::eval::{classification_report, log_loss};
use crate::pipeline::{self, Loaded};
use crate::signals::Knowledge;
use crate::train::{self, Artifact, DataInfo, TrainParams};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Fewest verdicts `retrain` works with (fewer say nothing a before/after could show).
pub const MIN_VERDICTS: usize = 10;

/// `threatrank retrain` parameters.
#[derive(Debug, Clone)]
pub struct RetrainParams {
    /// the service's database
    pub db: PathBuf,
    /// the model the service runs
    pub model: PathBuf,
    /// the labelled input that model was trained on (GUIDE CSV or JSONL)
    pub input: PathBuf,
    /// where to write the new artifact
    pub out: PathBuf,
    /// share of the most recent verdicts held out for before/after (default 0.3)
    pub holdout: f64,
    /// training seed (default 42)
    pub seed: u64,
}

/// Grading quality on the held-out verdicts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerdictMetrics {
    /// held-out threats scored
    pub n: usize,
    /// macro-F1 of the predicted grade against the analysts'
    pub macro_f1: f64,
    /// share of predicted grades equal to the analysts'
    pub accuracy: f64,
    /// log-loss of the calibrated probabilities of the analysts' grades
    pub log_loss: f64,
}

/// What `retrain` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrainReport {
    /// verdicted threats (latest verdict each)
    pub verdicts: usize,
    /// of which used for the before/after model
    pub train_verdicts: usize,
    /// of which held out
    pub held_out: usize,
    /// base training incidents overridden by a verdict
    pub overridden: usize,
    /// the old model on the held-out verdicts
    pub before: VerdictMetrics,
    /// the model trained without them on the held-out verdicts
    pub after: VerdictMetrics,
    /// grades of the verdicts (TP, BP, FP)
    pub grades: [usize; 3],
    /// the held-out verdicted threats, as training incident ids (decimal)
    pub held_out_incidents: Vec<String>,
    /// held-out threats that were also incidents of the base input: left out of the model
    /// measured on them (it would have trained on them under the base input's grade)
    pub held_in_base: usize,
    /// verdicted threats left out, each with why (one tenant's unusable data never stops
    /// the retraining of every tenant)
    pub skipped: Vec<SkippedVerdict>,
}

/// A verdicted threat `retrain` could not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedVerdict {
    /// its tenant
    pub tenant: u64,
    /// the threat id the verdict was given on
    pub threat: u64,
    /// why it was left out
    pub reason: String,
}

/// One verdicted threat as a labelled incident.
struct Labelled {
    tenant: u64,
    incident: u64,
    grade: Grade,
    evidence: Vec<Evidence>,
}

/// Incident id for a verdicted threat in training data: given ids stay; correlated ids (top
/// bit) move to `2^62 + low bits`, below the reserved half, and must not meet a given id.
fn training_id(threat: u64) -> u64 {
    if threat & CORRELATED_INCIDENT_BIT != 0 {
        (1 << 62) | (threat & ((1 << 62) - 1))
    } else {
        threat
    }
}

/// The latest verdict of every verdicted threat as a labelled incident, in audit-log order;
/// and the verdicted threats that cannot be used, with why (never an error: one tenant's data
/// cannot stop the retraining of all).
fn labelled_from_db(db: &Db) -> Result<(Vec<Labelled>, Vec<SkippedVerdict>), ServiceError> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    // training id -> the threat that holds it
    let mut ids: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for (v, tenant) in db.latest_verdicts()? {
        let skip = |reason: String| SkippedVerdict {
            tenant,
            threat: v.threat,
            reason,
        };
        let evidence = db.threat_evidence(tenant, v.threat)?;
        if evidence.is_empty() {
            skipped.push(skip(
                "no stored evidence under this threat id (its alerts were correlated into another threat)".into(),
            ));
            continue;
        }
        let incident = training_id(v.threat);
        if let Some(first) = ids.get(&(tenant, incident)) {
            // ids stored before every reader refused ids from 2^62 up (domain::GIVEN_ID_LIMIT)
            skipped.push(skip(format!(
                "its training id {incident} is already threat {first}'s (the verdicted earlier)"
            )));
            continue;
        }
        ids.insert((tenant, incident), v.threat);
        out.push(Labelled {
            tenant,
            incident,
            grade: v.grade,
            evidence: evidence
                .into_iter()
                .map(|e| db::as_incident(e, incident, v.grade))
                .collect(),
        });
    }
    Ok((out, skipped))
}

/// Base evidence minus overridden incidents and minus the `held_out` incidents (so a model
/// measured on them never trained on them under the base input's grade), plus the verdicts'
/// evidence; records renumbered. Also returns how many base incidents a verdict overrode and
/// how many were left out as held out.
fn combine(
    base: &[Evidence],
    verdicts: &[&Labelled],
    held_out: &[&Labelled],
) -> (Vec<Evidence>, usize, usize) {
    let over: BTreeSet<(u64, u64)> = verdicts.iter().map(|l| (l.tenant, l.incident)).collect();
    let held: BTreeSet<(u64, u64)> = held_out.iter().map(|l| (l.tenant, l.incident)).collect();
    let mut overridden = BTreeSet::new();
    let mut left_out = BTreeSet::new();
    let mut all: Vec<Evidence> = Vec::with_capacity(base.len());
    for e in base {
        let key = (e.tenant.0, e.incident.0);
        if over.contains(&key) {
            overridden.insert(key);
        } else if held.contains(&key) {
            left_out.insert(key);
        } else {
            all.push(e.clone());
        }
    }
    for l in verdicts {
        all.extend(l.evidence.iter().cloned());
    }
    for (i, e) in all.iter_mut().enumerate() {
        e.record = i as u64;
    }
    (all, overridden.len(), left_out.len())
}

fn fit(
    params: &TrainParams,
    evidence: Vec<Evidence>,
    data: DataInfo,
    kn: &Knowledge,
) -> Result<Artifact, ServiceError> {
    let valid = params
        .check()
        .map_err(|e| ServiceError::Retrain(e.to_string()))?;
    let corr = group_incidents(&evidence);
    let all: Vec<usize> = (0..corr.incidents.len()).collect();
    train::fit(&valid, &evidence, &corr, &all, kn, data)
        .map_err(|e| ServiceError::Retrain(e.to_string()))
}

/// Scores held-out verdicted threats (labels stripped) and compares with the analysts.
fn measure(
    artifact: &Artifact,
    held: &[&Labelled],
    kn: &Knowledge,
) -> Result<VerdictMetrics, ServiceError> {
    let mut evidence: Vec<Evidence> = held
        .iter()
        .flat_map(|l| l.evidence.iter().cloned())
        .collect();
    for e in &mut evidence {
        e.grade = None;
    }
    let loaded = Loaded::in_memory(evidence);
    let scored = pipeline::score_loaded(artifact, loaded, 0, kn)
        .map_err(|e| ServiceError::Retrain(format!("scoring held-out verdicts: {e}")))?;
    let truth: BTreeMap<IncidentKey, Grade> = held
        .iter()
        .map(|l| {
            (
                IncidentKey {
                    tenant: crate::domain::TenantId(l.tenant),
                    incident: crate::domain::IncidentId(l.incident),
                },
                l.grade,
            )
        })
        .collect();
    let (mut y, mut pred, mut probs) = (Vec::new(), Vec::new(), Vec::new());
    for s in &scored.incidents {
        let Some(g) = truth.get(&s.key) else { continue };
        y.push(g.class_id());
        pred.push(s.predicted.class_id());
        probs.extend_from_slice(&s.probs);
    }
    let r =
        classification_report(&y, &pred, None).map_err(|e| ServiceError::Retrain(e.to_string()))?;
    Ok(VerdictMetrics {
        n: y.len(),
        macro_f1: r.macro_f1,
        accuracy: r.accuracy,
        log_loss: log_loss(&probs, &y).map_err(|e| ServiceError::Retrain(e.to_string()))?,
    })
}

/// Retrains from the database's verdicts; writes the new artifact (with a card note) and
/// returns the before/after report. `progress` hears each step.
pub fn retrain(
    p: &RetrainParams,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<(Artifact, RetrainReport), ServiceError> {
    if !(p.holdout > 0.0 && p.holdout < 1.0) {
        return Err(ServiceError::Param {
            name: "holdout",
            reason: format!("{} is outside (0, 1)", p.holdout),
        });
    }
    let old = Artifact::load(&p.model)?;
    let db = Db::open(&p.db, 1)?;
    let (labelled, skipped) = labelled_from_db(&db)?;
    if labelled.len() < MIN_VERDICTS {
        return Err(ServiceError::Retrain(format!(
            "{}: {} verdicted threats, at least {MIN_VERDICTS} are needed",
            p.db.display(),
            labelled.len()
        )));
    }
    let n_held = ((labelled.len() as f64 * p.holdout).ceil() as usize).clamp(1, labelled.len() - 1);
    let split = labelled.len() - n_held;
    let train_part: Vec<&Labelled> = labelled[..split].iter().collect();
    let held: Vec<&Labelled> = labelled[split..].iter().collect();
    let all_verdicts: Vec<&Labelled> = labelled.iter().collect();
    progress(&format!("reading {}", p.input.display()));
    let base = pipeline::load(&p.input, &Default::default())
        .map_err(|e| ServiceError::Retrain(e.to_string()))?;
    let card = &old.card;
    let params = TrainParams {
        algorithm: card.params.algorithm(),
        model: Some(card.params.clone()),
        features: card.feature_params.clone(),
        ..TrainParams::default()
    }
    .seed(p.seed);
    let data = |file: String, evidence: &[Evidence]| DataInfo {
        file,
        sha256: base.sha256.clone(),
        records: base.report.records,
        accepted: evidence.len() as u64,
        rejected: base.report.rejected.len() as u64,
        incidents: 0,
        tenants: 0,
        grades: [0; 3],
    };
    progress("scoring held-out verdicts with the old model");
    let before = measure(&old, &held, kn)?;
    progress("training without the held-out verdicts");
    let (ev, _, held_in_base) = combine(&base.evidence, &train_part, &held);
    let d = data(String::new(), &ev);
    let probe = fit(&params, ev, d, kn)?;
    let after = measure(&probe, &held, kn)?;
    progress("training on every verdict");
    let (ev, overridden, _) = combine(&base.evidence, &all_verdicts, &[]);
    let file = format!(
        "{} + {} verdicts from {}",
        p.input.file_name().map_or_else(
            || p.input.display().to_string(),
            |f| f.to_string_lossy().into_owned()
        ),
        labelled.len(),
        p.db.file_name().map_or_else(
            || p.db.display().to_string(),
            |f| f.to_string_lossy().into_owned()
        )
    );
    let d = data(file, &ev);
    let mut artifact = fit(&params, ev, d, kn)?;
    let mut grades = [0usize; 3];
    for l in &labelled {
        grades[l.grade.class_id() as usize] += 1;
    }
    let report = RetrainReport {
        verdicts: labelled.len(),
        train_verdicts: train_part.len(),
        held_out: held.len(),
        overridden,
        before,
        after,
        grades,
        skipped,
        held_out_incidents: held.iter().map(|l| l.incident.to_string()).collect(),
        held_in_base,
    };
    artifact.card.notes.push(format!(
        "Retrained with {} analyst verdicts (TP/BP/FP {:?}; {} base incidents overridden; {} verdicted threats skipped). On the {} most recent verdicts held out: macro-F1 {:.3} -> {:.3}, accuracy {:.3} -> {:.3}, log-loss {:.3} -> {:.3} (old model -> model trained without them).",
        report.verdicts,
        report.grades,
        report.overridden,
        report.skipped.len(),
        report.held_out,
        report.before.macro_f1,
        report.after.macro_f1,
        report.before.accuracy,
        report.after.accuracy,
        report.before.log_loss,
        report.after.log_loss,
    ));
    artifact.save(&p.out)?;
    Ok((artifact, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlated_ids_move_below_the_reserved_half() {
        assert_eq!(training_id(17), 17);
        let c = CORRELATED_INCIDENT_BIT | 99;
        assert_eq!(training_id(c), (1 << 62) | 99);
        assert_eq!(training_id(c) & CORRELATED_INCIDENT_BIT, 0);
    }

    /// A database written before every reader refused ids from 2^62 up can hold a given id
    /// equal to a correlated threat's training id, and a verdict whose threat has no evidence
    /// left: both are skipped with their reason, the rest is used (before: the collision made
    /// every tenant's retrain fail, and the empty threat was dropped without a word).
    #[test]
    fn unusable_verdicts_are_skipped_and_reported() {
        use crate::domain::{AlertId, IncidentId, TenantId};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.db"), 1).unwrap();
        let ev = |incident: u64, given: bool, alert: u64| Evidence {
            id: alert,
            tenant: TenantId(3),
            incident: IncidentId(incident),
            incident_given: given,
            alert: AlertId(alert),
            timestamp: 1_700_000_000,
            detector: "d".into(),
            title: "t".into(),
            category: "Execution".into(),
            entity_type: "Machine".into(),
            impacted: true,
            ..Default::default()
        };
        let corr = CORRELATED_INCIDENT_BIT | 99;
        let given = (1u64 << 62) | 99;
        assert_eq!(training_id(corr), given);
        db.insert_evidence(
            3,
            &[ev(corr, false, 99), ev(given, true, 5), ev(8, true, 6)],
        )
        .unwrap();
        db.execute_batch_for_tests(&format!(
            "INSERT INTO verdicts(tenant, threat, grade, analyst, key_id, at, predicted, tenant_seq)
             VALUES (3, {}, 'TP', 'a', 1, 10, 'TP', 1), (3, {}, 'FP', 'a', 1, 11, 'TP', 2),
             (3, 777, 'BP', 'a', 1, 12, 'TP', 3), (3, 8, 'BP', 'a', 1, 13, 'TP', 4)",
            db::id_to_sql(corr),
            db::id_to_sql(given)
        ))
        .unwrap();
        let (labelled, skipped) = labelled_from_db(&db).unwrap();
        let used: Vec<(u64, Grade)> = labelled.iter().map(|l| (l.incident, l.grade)).collect();
        assert_eq!(
            used,
            [(given, Grade::TruePositive), (8, Grade::BenignPositive)]
        );
        let why: Vec<(u64, &str)> = skipped
            .iter()
            .map(|s| (s.threat, s.reason.as_str()))
            .collect();
        assert_eq!(why.len(), 2, "{why:?}");
        assert_eq!(why[0].0, given);
        assert!(
            why[0].1.contains(&format!("already threat {corr}")),
            "{why:?}"
        );
        assert_eq!(why[1].0, 777);
        assert!(why[1].1.starts_with("no stored evidence"), "{why:?}");
    }
}
