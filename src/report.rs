//! Report sinks: the per-record score CSV and the hunter's queue table.
//!
//! Last stage of the pipeline. Output order is the input's (scores) or the queue's total order
//! (queues); floats are printed with fixed precision, so the same input gives byte-identical
//! files.

use crate::correlate::Correlated;
use crate::domain::Evidence;
use crate::domain::TenantId;
use crate::ingest::format_rfc3339;
use crate::ingest::IngestReport;
use crate::rank::{queues, ScoredIncident};
use std::io::Write;
use std::path::Path;

/// Errors of writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Could not write.
    #[error("{file}: cannot write: {source}")]
    Write {
        /// path
        file: String,
        /// cause (an I/O, CSV or JSON error)
        #[source]
        source: crate::BoxError,
    },
}

/// Header of the score CSV; the first nine columns are the pipeline contract.
pub const SCORE_HEADER: [&str; 14] = [
    "Id",
    "OrgId",
    "IncidentId",
    "AlertId",
    "predicted_grade",
    "p_true_positive",
    "p_benign_positive",
    "p_false_positive",
    "priority",
    "status",
    "top_reason",
    "error",
    "grade_set",
    "certainty",
];

/// The score-CSV fields of a rejected record: `status=rejected`, the reason in `error`, the
/// rest empty.
pub fn rejected_row(reason: String) -> Vec<String> {
    let mut row = vec![String::new(); SCORE_HEADER.len()];
    row[9] = "rejected".into();
    row[11] = reason;
    row
}

/// Writes one row per input record, in input order: scored records carry their incident's
/// grade probabilities and priority; rejected records keep their place with `status=rejected`
/// and the reason, so pipelines can match rows by position. `incidents` are aligned with
/// `corr.incidents`. Returns the rows written.
pub fn write_scores(
    path: &Path,
    evidence: &[Evidence],
    corr: &Correlated,
    ingest: &IngestReport,
    incidents: &[ScoredIncident],
) -> Result<u64, ReportError> {
    let err = |source: crate::BoxError| ReportError::Write {
        file: path.display().to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(|e| err(e.into()))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 16, file));
    w.write_record(SCORE_HEADER).map_err(|e| err(e.into()))?;
    // First evidence row of every accepted record (JSONL records may hold several).
    let n_records = ingest.records as usize;
    let mut first_ev: Vec<Option<u32>> = vec![None; n_records];
    for (i, e) in evidence.iter().enumerate() {
        if let Some(slot) = first_ev.get_mut(e.record as usize) {
            if slot.is_none() {
                *slot = Some(i as u32);
            }
        }
    }
    let mut rejected = ingest.rejected.iter().peekable();
    let mut rows = 0u64;
    for (rec, ev) in first_ev.iter().enumerate() {
        match ev {
            Some(i) => {
                let e = &evidence[*i as usize];
                let s = &incidents[corr.incident_of[*i as usize] as usize];
                w.write_record([
                    e.id.to_string(),
                    e.tenant.to_string(),
                    // the candidate threat: the given id, or the correlated one (≥ 2^63)
                    s.key.incident.to_string(),
                    e.alert.to_string(),
                    s.predicted.name().to_string(),
                    format!("{:.6}", s.probs[0]),
                    format!("{:.6}", s.probs[1]),
                    format!("{:.6}", s.probs[2]),
                    s.priority.to_string(),
                    "scored".into(),
                    s.reasons
                        .first()
                        .map(|r| r.text.clone())
                        .unwrap_or_default(),
                    String::new(),
                    s.grade_set.to_string(),
                    if s.is_uncertain() {
                        "uncertain"
                    } else {
                        "confident"
                    }
                    .into(),
                ])
                .map_err(|e| err(e.into()))?;
            }
            None => {
                let reason = match rejected.peek() {
                    Some(r) if r.record as usize == rec => rejected.next().map(ToString::to_string),
                    _ => None,
                }
                .unwrap_or_else(|| "record produced no evidence".into());
                w.write_record(rejected_row(reason))
                    .map_err(|e| err(e.into()))?;
            }
        }
        rows += 1;
    }
    w.flush().map_err(|e| err(e.into()))?;
    Ok(rows)
}

/// The hunter's view: per tenant, the top `top` incidents with priority, grade probabilities,
/// tactics and reasons.
pub fn queue_table(incidents: &[ScoredIncident], tenant: Option<TenantId>, top: usize) -> String {
    let mut out = Vec::new();
    let qs = queues(incidents, tenant, top);
    if qs.is_empty() {
        let _ = writeln!(
            out,
            "no incidents{}",
            tenant.map_or(String::new(), |t| format!(" for tenant {t}"))
        );
    }
    for (t, q) in qs {
        let total = incidents.iter().filter(|s| s.key.tenant == t).count();
        let _ = writeln!(out, "tenant {t} — top {} of {total} incidents", q.len());
        let _ = writeln!(
            out,
            "  {:>4}  {:>8}  {:<22} {:>5} {:>5} {:>5}  {:>3} {:>3}  {:<20} category / detector / title",
            "prio",
            "incident",
            "grade",
            "P(TP)",
            "P(BP)",
            "P(FP)",
            "ev",
            "al",
            "first seen",
        );
        for s in q {
            let _ = writeln!(
                out,
                "  {:>4}  {:>8}  {:<22} {:>5.2} {:>5.2} {:>5.2}  {:>3} {:>3}  {:<20} {} / det {} / title {}",
                s.priority,
                s.key.incident,
                s.grade_label(),
                s.probs[0],
                s.probs[1],
                s.probs[2],
                s.n_evidence,
                s.n_alerts,
                format_rfc3339(s.first_seen),
                s.category,
                s.detector,
                s.title
            );
            if !s.tactics.is_empty() {
                let _ = writeln!(out, "        tactics: {}", s.tactics.join(", "));
            }
            if let Some(a) = &s.actor {
                let _ = writeln!(
                    out,
                    "        techniques overlap {} (similarity {:.2})",
                    a.describe(),
                    a.score
                );
            }
            for r in &s.reasons {
                let _ = writeln!(
                    out,
                    "        {} {}",
                    if r.contribution >= 0.0 { "▲" } else { "▼" },
                    r.text
                );
            }
        }
        let _ = writeln!(out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes any serializable value as pretty JSON.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), ReportError> {
    let err = |source: crate::BoxError| ReportError::Write {
        file: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.into()))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| err(e.into()))?;
    std::fs::write(path, text + "\n").map_err(|e| err(e.into()))
}
