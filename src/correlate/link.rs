//! Linking alerts that came without an incident id into candidate threats.
//!
//! Part of `correlate` (second pipeline stage). Native JSONL alerts may lack `incident_id`; a
//! [`Linker`] groups them, per tenant, by the strong entities they share:
//!
//! 1. **Nodes** are alerts `(tenant, alert id)` whose evidence has no given incident id
//!    ([`Evidence::incident_given`] false). Evidence with a given id keeps its incident.
//! 2. **Links.** For every `(tenant, column, code)` of a strong entity column
//!    ([`STRONG_COLUMNS`]: device, account, file hash, IP address, mail message) that is not on
//!    the stoplist, the evidence rows carrying it are sorted by `(timestamp, alert)` and
//!    consecutive rows whose time gap is at most `window_seconds` link their alerts (single
//!    linkage). Links never leave a tenant. Components come from a union-find with path
//!    halving and union by size: O(n log n) for the sort, near-linear after.
//! 3. **Stoplist** (entities too common to link on), learnt once from *training* evidence by
//!    [`Linker::learn`] and then applied unchanged to any batch:
//!    - (a) GUIDE's "not present" codes: per column, the most frequent code when it covers at
//!      least `sentinel_share` (default 20%) of the training rows (the rule of
//!      `features::learn_sentinels`);
//!    - (b) codes carried by more than `max_alerts_per_entity` distinct training alerts
//!      (`(tenant, alert)` pairs, all tenants together: a code common anywhere is common).
//!
//!    The stoplist is deliberately *not* computed from the batch being correlated: a bigger
//!    batch would then turn an entity common and split groups that a smaller batch formed.
//! 4. **Ids.** A candidate threat's id is [`CORRELATED_INCIDENT_BIT`] | its smallest alert id:
//!    deterministic, independent of input order, and in a namespace that given incident ids
//!    never use (every reader rejects given ids ≥ 2^62, `GIVEN_ID_LIMIT`; [`Linker::correlate`] returns
//!    [`CorrelateError`] for such evidence built by other callers).
//!
//! Properties (proptest in `tests/it/correlation.rs`): input order does not change the result;
//! no candidate threat holds two tenants; correlating a superset of the evidence never splits a
//! group of the subset (an added row can only add links: in a sorted run, a row inserted between
//! two linked neighbours is within the window of both).

use super::{build, Correlated, Keyed};
use crate::domain::{
    AlertId, Evidence, IncidentId, IncidentKey, TenantId, CORRELATED_INCIDENT_BIT, ENTITY_COLUMNS,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Entity columns that identify one device, account, file, address or mail message, and so
/// can link alerts: `DeviceId`, `DeviceName`, `AccountSid`, `AccountUpn`, `AccountObjectId`,
/// `AccountName`, `Sha256`, `IpAddress`, `NetworkMessageId`. URLs, folders, registry values,
/// applications and OS fields are shared by unrelated activity and are not used.
pub const STRONG_COLUMNS: [&str; 9] = [
    "DeviceId",
    "DeviceName",
    "AccountSid",
    "AccountUpn",
    "AccountObjectId",
    "AccountName",
    "Sha256",
    "IpAddress",
    "NetworkMessageId",
];

/// Errors of correlation parameters and of applying a [`Linker`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CorrelateError {
    /// A parameter is out of range.
    #[error("invalid correlation parameter `{name}`: {reason}")]
    Param {
        /// name
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// A column name that is not a GUIDE entity column.
    #[error("unknown entity column `{column}` (expected one of {})", ENTITY_COLUMNS.join(", "))]
    UnknownColumn {
        /// the name
        column: String,
    },
    /// A given incident id in the correlated namespace, in a batch that also holds alerts
    /// without one (their ids could collide).
    #[error("tenant {tenant}: given incident id {incident} is ≥ 2^63, which is reserved for correlated candidate threats")]
    ReservedIncident {
        /// tenant
        tenant: TenantId,
        /// the id
        incident: IncidentId,
    },
    /// An alert to correlate whose id is ≥ 2^63 (two groups' ids could collide).
    #[error("tenant {tenant}: alert {alert} has no incident id and an id ≥ 2^63, which is reserved for correlated candidate threats")]
    ReservedAlert {
        /// tenant
        tenant: TenantId,
        /// the id
        alert: AlertId,
    },
}

/// Correlation parameters (unchecked).
///
/// ```
/// use threatrank::correlate::CorrelateParams;
/// let p = CorrelateParams::default().window_seconds(1800).max_alerts_per_entity(20);
/// assert!(p.check().is_ok());
/// assert!(CorrelateParams::default().window_seconds(-1).check().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorrelateParams {
    /// Largest time gap (seconds) between consecutive sightings of one entity that still links
    /// their alerts. Default 21600 (6 h). Measured on the GUIDE sample, correlating from scratch
    /// (README, "Correlation"): pairwise precision is flat from 1 h to 6 h (0.24 → 0.23) while
    /// recall grows 2.4× from 2 h to 6 h; at 24 h precision falls to 0.14. Half of the sample's
    /// same-incident alert pairs are more than 8 h apart, so a shorter window forgoes most links.
    pub window_seconds: i64,
    /// An entity carried by more than this many distinct training alerts is too common to link
    /// on (a shared server, a mail relay, a popular file). Default 50.
    pub max_alerts_per_entity: u64,
    /// A column's most frequent training code is GUIDE's "not present" marker when it covers at
    /// least this share of the training rows. Default 0.2 (as `features`).
    pub sentinel_share: f64,
    /// Entity columns that link alerts. Default [`STRONG_COLUMNS`].
    pub columns: Vec<String>,
}

impl Default for CorrelateParams {
    fn default() -> Self {
        Self {
            window_seconds: 21_600,
            max_alerts_per_entity: 50,
            sentinel_share: 0.2,
            columns: STRONG_COLUMNS.iter().map(|c| c.to_string()).collect(),
        }
    }
}

/// Longest accepted window: 30 days.
const MAX_WINDOW_SECONDS: i64 = 30 * 86_400;

impl CorrelateParams {
    /// Sets [`CorrelateParams::window_seconds`] (default 21600).
    pub fn window_seconds(mut self, s: i64) -> Self {
        self.window_seconds = s;
        self
    }
    /// Sets [`CorrelateParams::max_alerts_per_entity`] (default 50).
    pub fn max_alerts_per_entity(mut self, n: u64) -> Self {
        self.max_alerts_per_entity = n;
        self
    }
    /// Sets [`CorrelateParams::sentinel_share`] (default 0.2).
    pub fn sentinel_share(mut self, s: f64) -> Self {
        self.sentinel_share = s;
        self
    }
    /// Sets [`CorrelateParams::columns`] (default [`STRONG_COLUMNS`]).
    pub fn columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.columns = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the parameters: window in `0..=30 days`, `max_alerts_per_entity ≥ 1`,
    /// `sentinel_share` in `(0, 1]`, columns known, distinct and not empty.
    pub fn check(&self) -> Result<CorrelateValidParams, CorrelateError> {
        check_window(self.window_seconds)?;
        if self.max_alerts_per_entity == 0 {
            return Err(CorrelateError::Param {
                name: "max_alerts_per_entity",
                reason: "0 would stop every entity; must be at least 1".into(),
            });
        }
        if !(self.sentinel_share > 0.0 && self.sentinel_share <= 1.0) {
            return Err(CorrelateError::Param {
                name: "sentinel_share",
                reason: format!("{} must be in (0, 1]", self.sentinel_share),
            });
        }
        let slots = resolve(&self.columns)?;
        Ok(CorrelateValidParams {
            params: self.clone(),
            slots,
        })
    }
}

fn check_window(w: i64) -> Result<(), CorrelateError> {
    if !(0..=MAX_WINDOW_SECONDS).contains(&w) {
        return Err(CorrelateError::Param {
            name: "window_seconds",
            reason: format!("{w} must be in 0..={MAX_WINDOW_SECONDS} (30 days)"),
        });
    }
    Ok(())
}

/// Column names → positions in [`ENTITY_COLUMNS`] (known, distinct, at least one).
fn resolve(columns: &[String]) -> Result<Vec<usize>, CorrelateError> {
    if columns.is_empty() {
        return Err(CorrelateError::Param {
            name: "columns",
            reason: "no entity column to link on".into(),
        });
    }
    let mut slots = Vec::with_capacity(columns.len());
    for c in columns {
        let slot = ENTITY_COLUMNS
            .iter()
            .position(|k| k == c)
            .ok_or_else(|| CorrelateError::UnknownColumn { column: c.clone() })?;
        if slots.contains(&slot) {
            return Err(CorrelateError::Param {
                name: "columns",
                reason: format!("`{c}` is listed twice"),
            });
        }
        slots.push(slot);
    }
    Ok(slots)
}

/// Checked [`CorrelateParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelateValidParams {
    params: CorrelateParams,
    slots: Vec<usize>,
}

impl CorrelateValidParams {
    /// The checked parameters.
    pub fn get(&self) -> &CorrelateParams {
        &self.params
    }
}

impl Default for CorrelateValidParams {
    fn default() -> Self {
        let params = CorrelateParams::default();
        let slots = STRONG_COLUMNS
            .iter()
            .filter_map(|c| ENTITY_COLUMNS.iter().position(|k| k == c))
            .collect();
        Self { params, slots }
    }
}

/// Why an entity is on the stoplist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// GUIDE's "not present" code of the column: its most frequent code, on `rows` of the
    /// training rows (at least `sentinel_share` of them).
    NotPresent {
        /// training rows carrying it
        rows: u64,
    },
    /// Carried by more than `max_alerts_per_entity` distinct training alerts.
    Common {
        /// distinct training alerts carrying it
        alerts: u64,
    },
}

/// An entity that never links alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopEntity {
    /// entity column name (GUIDE)
    pub column: String,
    /// entity code
    pub code: u64,
    /// why it is stopped
    pub reason: StopReason,
}

/// A learnt correlation model: parameters plus the stoplist of too-common entities, learnt
/// from training evidence and applied unchanged to every batch (stored in the model artifact).
///
/// ```
/// use threatrank::correlate::{CorrelateParams, Linker};
/// let linker = Linker::learn(&[], &CorrelateParams::default().check().unwrap());
/// assert!(linker.stoplist().is_empty());
/// assert!(linker.correlate(&[]).unwrap().incidents.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linker {
    window_seconds: i64,
    max_alerts_per_entity: u64,
    columns: Vec<String>,
    /// sorted by (column position in `ENTITY_COLUMNS`, code)
    stoplist: Vec<StopEntity>,
    /// training evidence rows it was learnt from
    learnt_rows: u64,
}

impl Linker {
    /// Learns the stoplist from training evidence (every row counts, with or without a given
    /// incident id). Deterministic: ordered counting, ties of the "not present" rule go to the
    /// smallest code.
    pub fn learn<'a>(
        evidence: impl IntoIterator<Item = &'a Evidence>,
        params: &CorrelateValidParams,
    ) -> Linker {
        let p = params.get();
        let mut rows_of: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); params.slots.len()];
        // (column k, code, tenant, alert): sorted and deduplicated = distinct alerts per code.
        let mut sightings: Vec<(usize, u64, TenantId, AlertId)> = Vec::new();
        let mut n_rows = 0u64;
        for e in evidence {
            n_rows += 1;
            for (k, &slot) in params.slots.iter().enumerate() {
                if let Some(code) = e.entities.codes[slot] {
                    *rows_of[k].entry(code).or_default() += 1;
                    sightings.push((k, code, e.tenant, e.alert));
                }
            }
        }
        let mut stop: BTreeMap<(usize, u64), StopReason> = BTreeMap::new();
        for (k, counts) in rows_of.iter().enumerate() {
            let mut best: Option<(u64, u64)> = None;
            for (&code, &n) in counts {
                if best.is_none_or(|(_, bn)| n > bn) {
                    best = Some((code, n));
                }
            }
            if let Some((code, n)) = best {
                if n as f64 >= p.sentinel_share * n_rows as f64 {
                    stop.insert((k, code), StopReason::NotPresent { rows: n });
                }
            }
        }
        sightings.sort_unstable();
        sightings.dedup();
        let mut i = 0;
        while i < sightings.len() {
            let (k, code) = (sightings[i].0, sightings[i].1);
            let mut j = i;
            while j < sightings.len() && (sightings[j].0, sightings[j].1) == (k, code) {
                j += 1;
            }
            let alerts = (j - i) as u64;
            if alerts > p.max_alerts_per_entity {
                stop.entry((k, code))
                    .or_insert(StopReason::Common { alerts });
            }
            i = j;
        }
        let mut stoplist: Vec<(usize, StopEntity)> = stop
            .into_iter()
            .map(|((k, code), reason)| {
                (
                    params.slots[k],
                    StopEntity {
                        column: p.columns[k].clone(),
                        code,
                        reason,
                    },
                )
            })
            .collect();
        stoplist.sort_by_key(|(slot, s)| (*slot, s.code));
        Linker {
            window_seconds: p.window_seconds,
            max_alerts_per_entity: p.max_alerts_per_entity,
            columns: p.columns.clone(),
            stoplist: stoplist.into_iter().map(|(_, s)| s).collect(),
            learnt_rows: n_rows,
        }
    }

    /// The time window in seconds.
    pub fn window_seconds(&self) -> i64 {
        self.window_seconds
    }

    /// The "more than N alerts" threshold the stoplist was learnt with.
    pub fn max_alerts_per_entity(&self) -> u64 {
        self.max_alerts_per_entity
    }

    /// Entity columns that link alerts.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Entities that never link, sorted by column (in `ENTITY_COLUMNS` order) and code.
    pub fn stoplist(&self) -> &[StopEntity] {
        &self.stoplist
    }

    /// Training evidence rows the stoplist was learnt from.
    pub fn learnt_rows(&self) -> u64 {
        self.learnt_rows
    }

    /// Incidents of a batch: evidence with a given incident id keeps it (as
    /// [`super::group_incidents`]); alerts without one are linked into candidate threats.
    /// With every id given, the result equals `group_incidents`.
    pub fn correlate(&self, evidence: &[Evidence]) -> Result<Correlated, CorrelateError> {
        self.link(evidence, false)
    }

    /// Like [`Linker::correlate`], but every given incident id is ignored: all alerts are
    /// correlated from scratch (to measure correlation against known incidents).
    pub fn correlate_ignoring_given(
        &self,
        evidence: &[Evidence],
    ) -> Result<Correlated, CorrelateError> {
        self.link(evidence, true)
    }

    fn link(
        &self,
        evidence: &[Evidence],
        ignore_given: bool,
    ) -> Result<Correlated, CorrelateError> {
        // A deserialized linker is checked on use.
        check_window(self.window_seconds)?;
        let slots = resolve(&self.columns)?;
        let stop: HashSet<(usize, u64)> = self
            .stoplist
            .iter()
            .map(|s| {
                let slot = ENTITY_COLUMNS
                    .iter()
                    .position(|k| *k == s.column)
                    .ok_or_else(|| CorrelateError::UnknownColumn {
                        column: s.column.clone(),
                    })?;
                Ok((slot, s.code))
            })
            .collect::<Result<_, CorrelateError>>()?;
        let free = |e: &Evidence| ignore_given || !e.incident_given;
        // Rows to correlate, sorted by (tenant, alert): consecutive equal pairs share a node.
        let mut free_rows: Vec<(TenantId, AlertId, u32)> = Vec::new();
        for (r, e) in evidence.iter().enumerate() {
            if free(e) {
                if e.alert.0 & CORRELATED_INCIDENT_BIT != 0 {
                    return Err(CorrelateError::ReservedAlert {
                        tenant: e.tenant,
                        alert: e.alert,
                    });
                }
                free_rows.push((e.tenant, e.alert, r as u32));
            }
        }
        if free_rows.is_empty() {
            return Ok(super::group_incidents(evidence));
        }
        if let Some(e) = evidence
            .iter()
            .find(|e| !free(e) && e.incident.is_correlated())
        {
            return Err(CorrelateError::ReservedIncident {
                tenant: e.tenant,
                incident: e.incident,
            });
        }
        free_rows.sort_unstable();
        let mut nodes: Vec<(TenantId, AlertId)> = Vec::new();
        let mut node_of_row = vec![u32::MAX; evidence.len()];
        for &(t, a, r) in &free_rows {
            if nodes.last() != Some(&(t, a)) {
                nodes.push((t, a));
            }
            node_of_row[r as usize] = (nodes.len() - 1) as u32;
        }
        // Sightings of linkable entities: (tenant, column, code, time, node), sorted.
        // (rows in memory order: the evidence is read once, sequentially)
        let mut sightings: Vec<(TenantId, u16, u64, i64, u32)> = Vec::new();
        for (r, e) in evidence.iter().enumerate() {
            if node_of_row[r] == u32::MAX {
                continue;
            }
            let t = e.tenant;
            for &slot in &slots {
                if let Some(code) = e.entities.codes[slot] {
                    if !stop.contains(&(slot, code)) {
                        sightings.push((t, slot as u16, code, e.timestamp, node_of_row[r]));
                    }
                }
            }
        }
        sightings.sort_unstable();
        let mut uf = UnionFind::new(nodes.len());
        for w in sightings.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if (a.0, a.1, a.2) == (b.0, b.1, b.2) && b.3.saturating_sub(a.3) <= self.window_seconds
            {
                uf.union(a.4 as usize, b.4 as usize);
            }
        }
        // Nodes are sorted by (tenant, alert): a component's smallest node holds its smallest
        // alert, which names the candidate threat.
        let mut smallest = vec![u32::MAX; nodes.len()];
        for n in 0..nodes.len() {
            let root = uf.find(n);
            smallest[root] = smallest[root].min(n as u32);
        }
        let mut keyed: Vec<Keyed> = Vec::with_capacity(evidence.len());
        for (r, e) in evidence.iter().enumerate() {
            let key = if free(e) {
                let root = uf.find(node_of_row[r] as usize);
                let (tenant, alert) = nodes[smallest[root] as usize];
                IncidentKey {
                    tenant,
                    incident: IncidentId(CORRELATED_INCIDENT_BIT | alert.0),
                }
            } else {
                e.incident_key()
            };
            keyed.push(Keyed::new(key, r, e));
        }
        Ok(build(evidence.len(), keyed))
    }
}

/// Disjoint sets over `0..n`: path halving and union by size (near-constant amortized cost,
/// Tarjan 1975).
struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] as usize != x {
            let grand = self.parent[self.parent[x] as usize];
            self.parent[x] = grand;
            x = grand as usize;
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a as u32;
        self.size[a] += self.size[b];
    }
}

/// Pairwise agreement of a correlation with the given incident ids, over alerts: a pair of
/// alerts (same tenant) is *true* when they share a given incident and *predicted* when they
/// share a candidate threat. An alert's given incident is the smallest among its rows (GUIDE
/// puts a few alerts in two incidents), its candidate threat likewise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairwiseAgreement {
    /// distinct `(tenant, alert)`
    pub alerts: u64,
    /// given incidents (over those alerts)
    pub true_groups: u64,
    /// candidate threats
    pub predicted_groups: u64,
    /// pairs in one given incident
    pub true_pairs: u64,
    /// pairs in one candidate threat
    pub predicted_pairs: u64,
    /// pairs in both
    pub agreed_pairs: u64,
}

impl PairwiseAgreement {
    /// agreed / predicted pairs (`None` without predicted pairs).
    pub fn precision(&self) -> Option<f64> {
        (self.predicted_pairs > 0).then(|| self.agreed_pairs as f64 / self.predicted_pairs as f64)
    }

    /// agreed / true pairs (`None` without true pairs).
    pub fn recall(&self) -> Option<f64> {
        (self.true_pairs > 0).then(|| self.agreed_pairs as f64 / self.true_pairs as f64)
    }
}

/// Compares `corr` (from [`Linker::correlate_ignoring_given`] over the same `evidence`) with
/// the evidence's given incident ids, pair by pair.
///
/// ```
/// use threatrank::correlate::{group_incidents, pairwise_agreement};
/// let a = pairwise_agreement(&[], &group_incidents(&[]));
/// assert_eq!((a.true_pairs, a.precision()), (0, None));
/// ```
pub fn pairwise_agreement(evidence: &[Evidence], corr: &Correlated) -> PairwiseAgreement {
    let mut alert: BTreeMap<(TenantId, AlertId), (IncidentKey, u32)> = BTreeMap::new();
    for (r, e) in evidence.iter().enumerate() {
        let pred = corr.incident_of.get(r).copied().unwrap_or(u32::MAX);
        let v = alert
            .entry((e.tenant, e.alert))
            .or_insert((e.incident_key(), pred));
        v.0 = v.0.min(e.incident_key());
        v.1 = v.1.min(pred);
    }
    let mut truth: BTreeMap<IncidentKey, u64> = BTreeMap::new();
    let mut pred: BTreeMap<u32, u64> = BTreeMap::new();
    let mut both: BTreeMap<(u32, IncidentKey), u64> = BTreeMap::new();
    for &(t, p) in alert.values() {
        *truth.entry(t).or_default() += 1;
        *pred.entry(p).or_default() += 1;
        *both.entry((p, t)).or_default() += 1;
    }
    let pairs = |n: &u64| n * n.saturating_sub(1) / 2;
    PairwiseAgreement {
        alerts: alert.len() as u64,
        true_groups: truth.len() as u64,
        predicted_groups: pred.len() as u64,
        true_pairs: truth.values().map(pairs).sum(),
        predicted_pairs: pred.values().map(pairs).sum(),
        agreed_pairs: both.values().map(pairs).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::group_incidents;
    use crate::domain::Entities;

    fn slot(column: &str) -> usize {
        ENTITY_COLUMNS.iter().position(|c| *c == column).unwrap()
    }

    /// One evidence row without a given incident id: (tenant, alert, time, entities).
    fn ev(tenant: u64, alert: u64, ts: i64, ents: &[(&str, u64)]) -> Evidence {
        let mut entities = Entities::default();
        for &(c, code) in ents {
            entities.codes[slot(c)] = Some(code);
        }
        Evidence {
            record: 0,
            id: alert,
            tenant: TenantId(tenant),
            incident: IncidentId(alert),
            incident_given: false,
            alert: AlertId(alert),
            timestamp: ts,
            detector: "d".into(),
            title: "t".into(),
            category: "Execution".into(),
            techniques: Vec::new(),
            grade: None,
            entity_type: "Machine".into(),
            impacted: true,
            entities,
            ..Default::default()
        }
    }

    fn linker(window: i64, n: u64) -> Linker {
        let p = CorrelateParams::default()
            .window_seconds(window)
            .max_alerts_per_entity(n)
            .check()
            .unwrap();
        Linker::learn(&[], &p)
    }

    /// Groups as sorted sets of alert ids.
    fn groups(c: &Correlated) -> Vec<Vec<u64>> {
        let mut g: Vec<Vec<u64>> = c
            .incidents
            .iter()
            .map(|i| i.alerts.iter().map(|a| a.0).collect())
            .collect();
        g.sort();
        g
    }

    #[test]
    fn window_is_inclusive_and_links_chain() {
        let l = linker(100, 50);
        // 1 –100s– 2 –100s– 3: a chain (1 and 3 are 200 s apart); 4 comes 101 s after 3.
        let e = [
            ev(1, 1, 0, &[("DeviceId", 7)]),
            ev(1, 2, 100, &[("DeviceId", 7)]),
            ev(1, 3, 200, &[("DeviceId", 7)]),
            ev(1, 4, 301, &[("DeviceId", 7)]),
        ];
        let c = l.correlate(&e).unwrap();
        assert_eq!(groups(&c), vec![vec![1, 2, 3], vec![4]]);
        // Window 0: only same-second sightings link.
        let c = linker(0, 50).correlate(&e).unwrap();
        assert_eq!(c.incidents.len(), 4);
    }

    #[test]
    fn only_strong_columns_link_and_never_across_tenants() {
        let l = linker(3600, 50);
        let e = [
            ev(1, 1, 0, &[("Url", 5), ("IpAddress", 9)]),
            ev(1, 2, 10, &[("Url", 5)]),
            ev(1, 3, 20, &[("IpAddress", 9)]),
            ev(2, 4, 20, &[("IpAddress", 9)]),
        ];
        let c = l.correlate(&e).unwrap();
        assert_eq!(groups(&c), vec![vec![1, 3], vec![2], vec![4]]);
        assert!(c.incidents.iter().all(|i| i
            .evidence
            .iter()
            .all(|&r| e[r as usize].tenant == i.key.tenant)));
    }

    #[test]
    fn candidate_threat_id_is_the_smallest_alert_in_the_correlated_namespace() {
        let e = [
            ev(3, 90, 0, &[("Sha256", 1)]),
            ev(3, 12, 5, &[("Sha256", 1)]),
            ev(3, 40, 9, &[("Sha256", 1)]),
        ];
        let c = linker(60, 50).correlate(&e).unwrap();
        assert_eq!(c.incidents.len(), 1);
        let id = c.incidents[0].key.incident;
        assert_eq!(id, IncidentId(CORRELATED_INCIDENT_BIT | 12));
        assert!(id.is_correlated());
    }

    #[test]
    fn given_ids_are_kept_and_all_given_equals_group_incidents() {
        let mut e = vec![
            ev(1, 1, 0, &[("DeviceId", 7)]),
            ev(1, 2, 1, &[("DeviceId", 7)]),
            ev(1, 3, 2, &[("DeviceId", 7)]),
        ];
        e[0].incident_given = true;
        e[0].incident = IncidentId(500);
        let l = linker(60, 50);
        let c = l.correlate(&e).unwrap();
        assert_eq!(groups(&c), vec![vec![1], vec![2, 3]]);
        assert_eq!(c.incidents[0].key.incident, IncidentId(500));
        // Ignoring given ids, the three link.
        let c = l.correlate_ignoring_given(&e).unwrap();
        assert_eq!(groups(&c), vec![vec![1, 2, 3]]);
        for x in &mut e {
            x.incident_given = true;
        }
        assert_eq!(l.correlate(&e).unwrap(), group_incidents(&e));
    }

    #[test]
    fn stoplist_learns_not_present_codes_and_common_entities() {
        // 10 training rows: DeviceId 98799 on 2 of them (20%: a "not present" code), IpAddress
        // 5 on 4 alerts (common at N = 3), IpAddress 6 on 3 alerts (not common at N = 3),
        // AccountName 8 on 1 row (10%: rare, kept).
        let mut train = Vec::new();
        for a in 0..10u64 {
            let mut ents = vec![];
            if a < 2 {
                ents.push(("DeviceId", 98799));
            }
            if a < 4 {
                ents.push(("IpAddress", 5));
            } else if a < 7 {
                ents.push(("IpAddress", 6));
            }
            if a == 9 {
                ents.push(("AccountName", 8));
            }
            train.push(ev(a % 2, a, 0, &ents));
        }
        let p = CorrelateParams::default()
            .max_alerts_per_entity(3)
            .check()
            .unwrap();
        let l = Linker::learn(&train, &p);
        assert_eq!(l.learnt_rows(), 10);
        let stop: Vec<(&str, u64, StopReason)> = l
            .stoplist()
            .iter()
            .map(|s| (s.column.as_str(), s.code, s.reason))
            .collect();
        // Ordered by ENTITY_COLUMNS position: DeviceId, then IpAddress. IpAddress 5 is also
        // the column's most frequent code at 40%: "not present" wins.
        assert_eq!(
            stop,
            vec![
                ("DeviceId", 98799, StopReason::NotPresent { rows: 2 }),
                ("IpAddress", 5, StopReason::NotPresent { rows: 4 }),
            ]
        );
        // With a higher share, IpAddress 5 is stopped only for being common.
        let p = p.get().clone().sentinel_share(0.5).check().unwrap();
        let l = Linker::learn(&train, &p);
        let stop: Vec<(&str, u64, StopReason)> = l
            .stoplist()
            .iter()
            .map(|s| (s.column.as_str(), s.code, s.reason))
            .collect();
        assert_eq!(
            stop,
            vec![("IpAddress", 5, StopReason::Common { alerts: 4 })]
        );
        // Stopped entities do not link; the others still do.
        let batch = [
            ev(1, 1, 0, &[("IpAddress", 5)]),
            ev(1, 2, 0, &[("IpAddress", 5)]),
            ev(1, 3, 0, &[("IpAddress", 6)]),
            ev(1, 4, 0, &[("IpAddress", 6)]),
        ];
        let c = l.correlate(&batch).unwrap();
        assert_eq!(groups(&c), vec![vec![1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn stoplist_does_not_depend_on_the_batch() {
        // 200 alerts on one device within the window: none of it is in the (empty) training
        // stoplist, so the batch links them all, however many there are.
        let e: Vec<Evidence> = (0..200)
            .map(|a| ev(1, a, a as i64, &[("DeviceId", 7)]))
            .collect();
        let c = linker(10, 5).correlate(&e).unwrap();
        assert_eq!(c.incidents.len(), 1);
    }

    #[test]
    fn bad_params_are_typed_errors() {
        let d = CorrelateParams::default;
        let name = |p: CorrelateParams| match p.check() {
            Err(CorrelateError::Param { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(name(d().window_seconds(-1)), "window_seconds");
        assert_eq!(
            name(d().window_seconds(MAX_WINDOW_SECONDS + 1)),
            "window_seconds"
        );
        assert_eq!(name(d().max_alerts_per_entity(0)), "max_alerts_per_entity");
        assert_eq!(name(d().sentinel_share(0.0)), "sentinel_share");
        assert_eq!(name(d().sentinel_share(f64::NAN)), "sentinel_share");
        assert_eq!(name(d().columns(Vec::<String>::new())), "columns");
        assert_eq!(name(d().columns(["DeviceId", "DeviceId"])), "columns");
        assert_eq!(
            d().columns(["Device"]).check().unwrap_err(),
            CorrelateError::UnknownColumn {
                column: "Device".into()
            }
        );
        assert!(d().window_seconds(MAX_WINDOW_SECONDS).check().is_ok());
        assert_eq!(
            CorrelateValidParams::default(),
            CorrelateParams::default().check().unwrap()
        );
    }

    #[test]
    fn reserved_ids_and_bad_stored_linkers_are_errors() {
        let l = linker(60, 50);
        let mut e = vec![ev(1, 1, 0, &[]), ev(1, 2, 0, &[])];
        e[0].incident_given = true;
        e[0].incident = IncidentId(CORRELATED_INCIDENT_BIT | 3);
        assert_eq!(
            l.correlate(&e).unwrap_err(),
            CorrelateError::ReservedIncident {
                tenant: TenantId(1),
                incident: e[0].incident
            }
        );
        // Without alerts to correlate, given ids are left alone.
        e[1].incident_given = true;
        assert!(l.correlate(&e).is_ok());
        let e = [ev(1, CORRELATED_INCIDENT_BIT, 0, &[])];
        assert!(matches!(
            l.correlate(&e),
            Err(CorrelateError::ReservedAlert { .. })
        ));
        let mut json = serde_json::to_value(&l).unwrap();
        json["columns"] = serde_json::json!(["Nope"]);
        let bad: Linker = serde_json::from_value(json.clone()).unwrap();
        assert!(matches!(
            bad.correlate(&[]),
            Err(CorrelateError::UnknownColumn { .. })
        ));
        json["columns"] = serde_json::json!(["DeviceId"]);
        json["window_seconds"] = serde_json::json!(-5);
        let bad: Linker = serde_json::from_value(json).unwrap();
        assert!(matches!(
            bad.correlate(&[]),
            Err(CorrelateError::Param {
                name: "window_seconds",
                ..
            })
        ));
    }

    #[test]
    fn linker_round_trips_through_serde() {
        let train = [ev(1, 1, 0, &[("DeviceId", 98799)])];
        let l = Linker::learn(&train, &CorrelateValidParams::default());
        assert_eq!(l.stoplist().len(), 1);
        let back: Linker = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn pairwise_agreement_counts_pairs_of_alerts() {
        // Truth: {1,2,3} and {4}. Prediction: {1,2}, {3,4}.
        let mut e = vec![
            ev(1, 1, 0, &[("DeviceId", 1)]),
            ev(1, 2, 0, &[("DeviceId", 1)]),
            ev(1, 3, 1000, &[("DeviceId", 2)]),
            ev(1, 4, 1000, &[("DeviceId", 2)]),
        ];
        for (x, inc) in e.iter_mut().zip([10, 10, 10, 11]) {
            x.incident = IncidentId(inc);
            x.incident_given = true;
        }
        let c = linker(10, 50).correlate_ignoring_given(&e).unwrap();
        let a = pairwise_agreement(&e, &c);
        assert_eq!((a.alerts, a.true_groups, a.predicted_groups), (4, 2, 2));
        assert_eq!((a.true_pairs, a.predicted_pairs, a.agreed_pairs), (3, 2, 1));
        assert_eq!((a.precision(), a.recall()), (Some(0.5), Some(1.0 / 3.0)));
    }
}
