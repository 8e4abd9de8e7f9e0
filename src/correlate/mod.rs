//! Correlate: evidence → alerts → incidents (candidate threats).
//!
//! Second stage of the pipeline. A GUIDE incident is `(OrgId, IncidentId)`; the key always
//! includes the tenant, so no candidate threat ever spans two tenants. Grouping uses ordered maps:
//! the incidents (and their order) do not depend on the order of the input rows.
//!
//! Two entry points:
//! - [`group_incidents`]: by the given `(tenant, incident id)`; an alert without a given id is
//!   its own incident (keyed by its alert id). Training uses this.
//! - [`Linker`] (module [`link`]): learnt from training evidence (window, too-common entities),
//!   then applied unchanged to any batch; alerts without a given incident id that share a strong
//!   entity within the time window join one candidate threat (single linkage, union-find).
//!   Scoring uses it when the artifact carries one.

pub mod link;

pub use link::{
    pairwise_agreement, CorrelateError, CorrelateParams, CorrelateValidParams, Linker,
    PairwiseAgreement, StopEntity, StopReason, STRONG_COLUMNS,
};

use crate::domain::{AlertId, Evidence, Grade, IncidentKey};
use std::collections::BTreeMap;

/// One candidate threat: the evidence rows of one `(tenant, incident)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// tenant + incident id
    pub key: IncidentKey,
    /// indices into the evidence slice, ascending
    pub evidence: Vec<u32>,
    /// distinct alerts, ascending
    pub alerts: Vec<AlertId>,
    /// earliest evidence time (Unix seconds)
    pub first_seen: i64,
    /// latest evidence time
    pub last_seen: i64,
    /// the analysts' grade, when labels were read: the most frequent grade among its rows
    /// (ties → TP, then BP, then FP); GUIDE grades are per incident so they agree
    pub grade: Option<Grade>,
    /// number of rows whose grade disagreed with [`Incident::grade`]
    pub grade_conflicts: u32,
}

impl Incident {
    /// Its evidence rows, borrowed from the evidence slice it was correlated from.
    pub fn rows<'a>(&self, evidence: &'a [Evidence]) -> Vec<&'a Evidence> {
        self.evidence
            .iter()
            .map(|&r| &evidence[r as usize])
            .collect()
    }
}

/// Incidents of one input, sorted by key, with the incident of every evidence row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Correlated {
    /// incidents, sorted by (tenant, incident)
    pub incidents: Vec<Incident>,
    /// for each evidence row, the index of its incident in `incidents`
    pub incident_of: Vec<u32>,
}

impl Correlated {
    /// Incidents that carry a grade (training and evaluation use these).
    pub fn labelled(&self) -> impl Iterator<Item = (usize, &Incident, Grade)> {
        self.incidents
            .iter()
            .enumerate()
            .filter_map(|(i, inc)| inc.grade.map(|g| (i, inc, g)))
    }

    /// The tenant id of each of the incidents `which` (indices into `incidents`), in order.
    pub fn tenants_of(&self, which: &[usize]) -> Vec<u64> {
        which
            .iter()
            .map(|&i| self.incidents[i].key.tenant.0)
            .collect()
    }
}

/// The most frequent value (ties → the smallest; empty → empty string), e.g. an incident's
/// main detector.
///
/// ```
/// use threatrank::correlate::most_frequent;
/// assert_eq!(most_frequent(["b", "a", "b", "a", "c"].into_iter()), "a");
/// assert_eq!(most_frequent(std::iter::empty()), "");
/// ```
pub fn most_frequent<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    // Strictly greater keeps the first (smallest) of equal counts, in BTreeMap order.
    let mut best: Option<(&str, usize)> = None;
    for (v, n) in counts {
        if best.is_none_or(|(_, bn)| n > bn) {
            best = Some((v, n));
        }
    }
    best.map(|(v, _)| v.to_string()).unwrap_or_default()
}

/// Groups evidence into incidents.
///
/// ```
/// use threatrank::correlate::group_incidents;
/// let incidents = group_incidents(&[]);
/// assert!(incidents.incidents.is_empty());
/// ```
pub fn group_incidents(evidence: &[Evidence]) -> Correlated {
    let keyed: Vec<Keyed> = evidence
        .iter()
        .enumerate()
        .map(|(i, e)| Keyed::new(e.incident_key(), i, e))
        .collect();
    build(evidence.len(), keyed)
}

/// What grouping needs of one evidence row, gathered in one pass over the rows in memory
/// order: after the sort nothing reads the (shuffled, ~0.5 kB) evidence rows again, which at
/// millions of rows costs a cache miss each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Keyed {
    key: IncidentKey,
    /// evidence row (unique: the fields below never decide the order)
    row: u32,
    alert: AlertId,
    timestamp: i64,
    /// grade class id, `u8::MAX` when ungraded
    grade: u8,
}

impl Keyed {
    /// Row `row` (evidence `e`) under incident `key`.
    pub(crate) fn new(key: IncidentKey, row: usize, e: &Evidence) -> Self {
        Self {
            key,
            row: row as u32,
            alert: e.alert,
            timestamp: e.timestamp,
            grade: e.grade.map_or(u8::MAX, |g| g.class_id()),
        }
    }
}

/// Incidents of `n_rows` evidence rows from one [`Keyed`] per row: alerts, first/last seen and
/// grade per key, in key order. One sort of the rows (ascending within a key) instead of a map
/// of vectors: flat memory, cache-friendly at millions of rows.
fn build(n_rows: usize, mut keyed: Vec<Keyed>) -> Correlated {
    keyed.sort_unstable();
    let mut incident_of = vec![0u32; n_rows];
    let mut incidents: Vec<Incident> = Vec::new();
    for group in keyed.chunk_by(|a, b| a.key == b.key) {
        let k = incidents.len() as u32;
        let mut alerts: Vec<AlertId> = group.iter().map(|r| r.alert).collect();
        alerts.sort_unstable();
        alerts.dedup();
        let mut counts = [0u32; 3];
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for r in group {
            incident_of[r.row as usize] = k;
            first = first.min(r.timestamp);
            last = last.max(r.timestamp);
            if let Some(c) = counts.get_mut(usize::from(r.grade)) {
                *c += 1;
            }
        }
        let total: u32 = counts.iter().sum();
        let (grade, conflicts) = if total == 0 {
            (None, 0)
        } else {
            // max_by_key keeps the last maximum: iterate in reverse so ties go to TP.
            let best = (0..3).rev().max_by_key(|&c| counts[c]).unwrap_or(0);
            (Grade::from_class_id(best as u8), total - counts[best])
        };
        incidents.push(Incident {
            key: group[0].key,
            evidence: group.iter().map(|r| r.row).collect(),
            alerts,
            first_seen: first,
            last_seen: last,
            grade,
            grade_conflicts: conflicts,
        });
    }
    Correlated {
        incidents,
        incident_of,
    }
}
