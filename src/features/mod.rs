//! Features v1: one row of named numbers per candidate threat (incident).
//!
//! Third stage (`correlate → features → models`). Extractors read the incident's evidence and
//! fitted encoders and write into a [`FeatureMatrix`] row; the column list is fixed by code (not
//! by data), so the [`FeatureSchema`] and its hash identify this version of the extractors.
//! Families: `size`, `entities`, `category`, `kill_chain`, `time`, `verdicts`, `global`
//! (cross-tenant target encodings behind a minimum-tenant floor) and `tenant` (the tenant's own
//! grade history).
//!
//! Leakage: encoders are fitted only on labelled *training* incidents, and every label-derived
//! value is read **past-only**: a verdict is taken to exist from the end (last evidence) of its
//! incident, and an incident's features see only the verdicts of incidents that ended strictly
//! before its first evidence (an incident ending at the very second another begins is not in
//! that one's past). This holds for the grade prior, the tenant family (tenant, tenant ×
//! detector / title / category / entity: [`Series`] histories read as of the incident's
//! start) and, in the training matrix ([`fit_transform`]), the global signals (a snapshot of
//! the incidents that ended before the incident's UTC day began). So an incident never sees its
//! own grade nor any later one, in training, in `eval` and at scoring alike
//! ([`FittedFeatures::transform`] reads the same histories as of each incident's start). The
//! global signals at scoring are the one snapshot the encoders hold (or a given one): built
//! from training verdicts only, which all predate a deployment's incidents.

mod encode;

pub use encode::{smooth, Series, Table, TableBuilder};

use crate::correlate::Correlated;
use crate::domain::{Evidence, N_ENTITY_COLUMNS};
use crate::matrix::{FeatureMatrix, FeatureSchema};
use crate::signals::{
    Attack, GlobalSignals, GroupHit, GroupScratch, Knowledge, PseudonymKey, SignalKind,
    SignalsParams, SnapshotBuilder, TACTICS,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the extractors; part of the schema hash.
pub const FEATURE_VERSION: u32 = 2;

/// A feature family: a group of columns from one extractor, switched on or off together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// evidence, alert and distinct-value counts
    Size,
    /// rows per entity type, distinct present entities per column
    Entities,
    /// rows per alert category
    Category,
    /// ATT&CK tactics, furthest stage, technique counts per key tactic
    KillChain,
    /// expert severity of the techniques from the Sigma rule levels
    Sigma,
    /// similarity of the technique set to known ATT&CK groups
    Actor,
    /// time of day, weekend, span
    Time,
    /// verdict-like evidence attributes (suspicion, last verdict, threat family, severity)
    Verdicts,
    /// cross-tenant aggregates from the global-signals snapshot
    Global,
    /// the tenant's own past grade mix
    Tenant,
}

impl Family {
    /// All families, in column order.
    pub const ALL: [Family; 10] = [
        Family::Size,
        Family::Entities,
        Family::Category,
        Family::KillChain,
        Family::Sigma,
        Family::Actor,
        Family::Time,
        Family::Verdicts,
        Family::Global,
        Family::Tenant,
    ];

    /// Name as in the schema and the config.
    pub fn name(self) -> &'static str {
        match self {
            Family::Size => "size",
            Family::Entities => "entities",
            Family::Category => "category",
            Family::KillChain => "kill_chain",
            Family::Sigma => "sigma",
            Family::Actor => "actor",
            Family::Time => "time",
            Family::Verdicts => "verdicts",
            Family::Global => "global",
            Family::Tenant => "tenant",
        }
    }

    /// The family of a name.
    pub fn from_name(name: &str) -> Option<Family> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// Entity types with their own count column (GUIDE vocabulary); others go to `other`.
pub const ENTITY_TYPES: [&str; 18] = [
    "Ip",
    "User",
    "MailMessage",
    "Machine",
    "Url",
    "CloudLogonRequest",
    "File",
    "Mailbox",
    "Process",
    "MailCluster",
    "CloudLogonSession",
    "CloudApplication",
    "RegistryValue",
    "RegistryKey",
    "Malware",
    "OAuthApplication",
    "AzureResource",
    "GenericEntity",
];

/// Alert categories with their own column (GUIDE vocabulary); others go to `other`.
pub const CATEGORIES: [&str; 20] = [
    "InitialAccess",
    "Exfiltration",
    "SuspiciousActivity",
    "CommandAndControl",
    "Impact",
    "CredentialAccess",
    "Execution",
    "Discovery",
    "Malware",
    "Persistence",
    "DefenseEvasion",
    "LateralMovement",
    "UnwantedSoftware",
    "Collection",
    "Ransomware",
    "PrivilegeEscalation",
    "CredentialStealing",
    "Exploit",
    "WebExploit",
    "Weaponization",
];

/// Identity kinds that get target encodings.
pub const ENCODED_KINDS: [&str; 4] = ["detector", "title", "category", "technique"];

/// Errors of feature fitting.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// A parameter is out of range.
    #[error("invalid feature parameter `{name}`: {reason}")]
    Param {
        /// name
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// No labelled incident to fit encoders on.
    #[error("no labelled incident to fit features on (is the IncidentGrade column empty?)")]
    NoLabels,
    /// Knowledge tables failed to load.
    #[error(transparent)]
    Signals(#[from] crate::signals::SignalsError),
    /// Global-signals parameters or key.
    #[error(transparent)]
    Global(#[from] crate::signals::GlobalSignalsError),
}

/// Feature parameters (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureParams {
    /// Empirical-Bayes pseudo-count `m` of the target encodings. Default 2.0.
    pub smoothing: f64,
    /// Privacy rules of the global-signals snapshot built from the training data (floor of
    /// distinct tenants, default 5; optional Laplace noise).
    pub signals: SignalsParams,
    /// Tenant folds of the leave-tenant-out global signals of the training matrix
    /// ([`FeatureParams::global_leave_tenant_out`]). Default 5.
    pub oof_folds: usize,
    /// Seed of the tenant-fold assignment. Default 7.
    pub seed: u64,
    /// The global signals of a training row leave out the tenants of its tenant fold, so that
    /// the model learns them as they are for a tenant never seen (they are past-only either
    /// way: a snapshot of the incidents that ended before the row's day). With `false` every
    /// row reads the snapshot of all earlier verdicts. Default true.
    pub global_leave_tenant_out: bool,
    /// Families switched off: their columns stay in the schema (so every artifact has the same
    /// schema) and are written as 0, which no model can split on. Default none.
    pub disabled: Vec<Family>,
}

impl Default for FeatureParams {
    fn default() -> Self {
        Self {
            smoothing: 2.0,
            signals: SignalsParams::default(),
            oof_folds: 5,
            seed: 7,
            global_leave_tenant_out: true,
            disabled: Vec::new(),
        }
    }
}

impl FeatureParams {
    /// Sets [`FeatureParams::smoothing`] (default 2.0).
    pub fn smoothing(mut self, m: f64) -> Self {
        self.smoothing = m;
        self
    }
    /// Sets the privacy floor of the global signals (default 5 tenants).
    pub fn min_tenants(mut self, k: usize) -> Self {
        self.signals.min_tenants = k;
        self
    }
    /// Sets [`FeatureParams::signals`].
    pub fn signals(mut self, s: SignalsParams) -> Self {
        self.signals = s;
        self
    }
    /// Switches a family off.
    pub fn disable(mut self, f: Family) -> Self {
        if !self.disabled.contains(&f) {
            self.disabled.push(f);
            self.disabled.sort_unstable();
        }
        self
    }
    /// Sets [`FeatureParams::oof_folds`] (default 5).
    pub fn oof_folds(mut self, k: usize) -> Self {
        self.oof_folds = k;
        self
    }
    /// Sets [`FeatureParams::seed`] (default 7).
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// Checks ranges.
    pub fn check(&self) -> Result<FeatureValidParams, FeatureError> {
        if !(self.smoothing.is_finite() && self.smoothing > 0.0) {
            return Err(FeatureError::Param {
                name: "smoothing",
                reason: format!("{} must be a positive number", self.smoothing),
            });
        }
        self.signals.check()?;
        if !(2..=50).contains(&self.oof_folds) {
            return Err(FeatureError::Param {
                name: "oof_folds",
                reason: format!("{} is outside 2..=50", self.oof_folds),
            });
        }
        Ok(FeatureValidParams(self.clone()))
    }
}

/// Checked [`FeatureParams`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureValidParams(FeatureParams);

impl FeatureValidParams {
    /// The checked values.
    pub fn get(&self) -> &FeatureParams {
        &self.0
    }
}

/// Fitted encoders: everything the extractors need besides the evidence and the public tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedFeatures {
    params: FeatureParams,
    /// global grade prior of all training incidents (add-one smoothed shares)
    prior: [f64; 3],
    /// grade counts of all training incidents by end time: the prior as of an incident's start
    prior_history: Series,
    /// per entity column, the "not present" code (most frequent code when it covers ≥ 20% rows)
    sentinels: [Option<u64>; N_ENTITY_COLUMNS],
    /// cross-tenant aggregates (privacy floor applied, entities pseudonymized)
    global: GlobalSignals,
    /// tenant grade history, key = tenant id
    tenant: Table,
    /// tenant × detector / title / category, key = `tenant/value` (an array: an artifact with
    /// another count is refused at load instead of indexing past the end at scoring)
    tenant_keyed: [Table; 3],
    /// tenant × entity, key = `tenant/column/code`
    entity_tenant: Table,
}

/// The schema of this version of the extractors (built once, by running the extractors with a
/// name sink).
pub fn schema() -> FeatureSchema {
    static SCHEMA: std::sync::OnceLock<FeatureSchema> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut s = NameSink(Vec::new());
            let kn = Knowledge {
                attack: Attack::empty(),
                sigma: crate::signals::Sigma::empty(),
                groups: crate::signals::Groups::empty(),
                key: PseudonymKey::development(),
                snapshot: None,
            };
            let dummy = FittedFeatures::empty(&kn.key);
            let ev = dummy_evidence();
            // Column names do not depend on the knowledge tables: empty ones will do.
            dummy.extract(&[&ev], &kn, &dummy.global, &mut s);
            FeatureSchema::new(FEATURE_VERSION, s.0)
        })
        .clone()
}

fn dummy_evidence() -> Evidence {
    Evidence::default()
}

/// Receives feature values (and, for the schema, their names) in column order.
trait Sink {
    fn put(&mut self, family: Family, name: &str, suffix: &str, v: f64);
}

/// Writes 0 for the columns of switched-off families.
struct Masked<'a, S> {
    inner: &'a mut S,
    off: u16,
}

impl<S: Sink> Sink for Masked<'_, S> {
    #[inline]
    fn put(&mut self, family: Family, name: &str, suffix: &str, v: f64) {
        let v = if self.off & family.bit() != 0 { 0.0 } else { v };
        self.inner.put(family, name, suffix, v);
    }
}

struct NameSink(Vec<(String, String)>);

impl Sink for NameSink {
    fn put(&mut self, family: Family, name: &str, suffix: &str, _v: f64) {
        let n = if suffix.is_empty() {
            name.to_string()
        } else {
            format!("{name}:{suffix}")
        };
        self.0.push((n, family.name().to_string()));
    }
}

struct RowSink<'a> {
    out: &'a mut [f32],
    i: usize,
}

impl Sink for RowSink<'_> {
    #[inline]
    fn put(&mut self, _family: Family, _name: &str, _suffix: &str, v: f64) {
        if let Some(slot) = self.out.get_mut(self.i) {
            *slot = if v.is_finite() { v as f32 } else { 0.0 };
        }
        self.i += 1;
    }
}

/// Collects the values in order (for fixed blocks of columns).
struct ValueSink<'a>(&'a mut Vec<f32>);

impl Sink for ValueSink<'_> {
    fn put(&mut self, _family: Family, _name: &str, _suffix: &str, v: f64) {
        self.0.push(if v.is_finite() { v as f32 } else { 0.0 });
    }
}

fn ln1p(n: usize) -> f64 {
    (n as f64).ln_1p()
}

/// Category name → tactic index (GUIDE categories mostly name ATT&CK tactics).
fn category_tactic(cat: &str) -> Option<usize> {
    let t = match cat {
        "InitialAccess" => "initial-access",
        "Execution" => "execution",
        "Persistence" => "persistence",
        "PrivilegeEscalation" => "privilege-escalation",
        "DefenseEvasion" => "defense-evasion",
        "CredentialAccess" | "CredentialStealing" => "credential-access",
        "Discovery" => "discovery",
        "LateralMovement" => "lateral-movement",
        "Collection" => "collection",
        "CommandAndControl" => "command-and-control",
        "Exfiltration" => "exfiltration",
        "Impact" | "Ransomware" => "impact",
        _ => return None,
    };
    TACTICS.iter().position(|x| *x == t)
}

/// Learns, per entity column, the code GUIDE uses for "not present": the most frequent code of
/// the training rows when it covers at least 20% of them (ties → smallest code).
fn learn_sentinels(
    evidence: &[Evidence],
    corr: &Correlated,
    train: &[usize],
) -> [Option<u64>; N_ENTITY_COLUMNS] {
    let mut code_counts: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); N_ENTITY_COLUMNS];
    let mut n_rows = 0u64;
    for &i in train {
        for &r in &corr.incidents[i].evidence {
            n_rows += 1;
            for (c, code) in evidence[r as usize].entities.codes.iter().enumerate() {
                if let Some(code) = code {
                    *code_counts[c].entry(*code).or_default() += 1;
                }
            }
        }
    }
    let mut sentinels = [None; N_ENTITY_COLUMNS];
    for (s, counts) in sentinels.iter_mut().zip(&code_counts) {
        let mut best: Option<(u64, u64)> = None;
        for (&code, &n) in counts {
            if best.is_none_or(|(_, bn)| n > bn) {
                best = Some((code, n));
            }
        }
        if let Some((code, n)) = best {
            if n * 5 >= n_rows {
                *s = Some(code);
            }
        }
    }
    sentinels
}

/// Entity columns that identify an entity (device, file, address, account, …); the last two
/// entity columns (`OSFamily`, `OSVersion`) describe one and are not keys.
const ENTITY_KEY_COLUMNS: usize = N_ENTITY_COLUMNS - 2;

/// Distinct present entities of an incident as `column/code` keys (sentinels excluded).
fn entity_keys(rows: &[&Evidence], sentinels: &[Option<u64>; N_ENTITY_COLUMNS]) -> Vec<String> {
    let mut keys: Vec<(usize, u64)> = Vec::new();
    for e in rows {
        for (c, code) in e.entities.codes[..ENTITY_KEY_COLUMNS].iter().enumerate() {
            if let Some(code) = code {
                if Some(*code) != sentinels[c] {
                    keys.push((c, *code));
                }
            }
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|(c, code)| format!("{c}/{code}"))
        .collect()
}

thread_local! {
    /// Each extraction thread's accumulators for the actor family's [`Groups::top_into`].
    static GROUP_SCRATCH: std::cell::RefCell<(GroupScratch, Vec<GroupHit>)> =
        std::cell::RefCell::new((GroupScratch::new(), Vec::new()));
}

/// Key of a tenant-scoped table.
fn tenant_key(tenant: u64, value: &str) -> String {
    format!("{tenant}/{value}")
}

/// [`tenant_key`] of each value, written into `buf` (cleared) at `spans` (cleared): one
/// buffer for all of an incident's keys instead of a `String` each.
fn tenant_keys<'a>(
    tenant: u64,
    values: impl Iterator<Item = &'a str>,
    buf: &mut String,
    spans: &mut Vec<std::ops::Range<usize>>,
) {
    use std::fmt::Write as _;
    buf.clear();
    spans.clear();
    let _ = write!(buf, "{tenant}/");
    let prefix = buf.len();
    for v in values {
        let start = buf.len();
        buf.extend_from_within(..prefix);
        buf.push_str(v);
        spans.push(start..buf.len());
    }
}

/// Distinct values of one identity kind in an incident (sorted, deduplicated).
fn identities<'a>(rows: &[&'a Evidence], kind: usize) -> Vec<&'a str> {
    let mut v: Vec<&str> = Vec::new();
    for e in rows {
        match kind {
            0 => v.push(&e.detector),
            1 => v.push(&e.title),
            2 => v.push(&e.category),
            _ => v.extend(e.techniques.iter().map(String::as_str)),
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Distinct threat families named in an incident (sorted).
fn threat_families<'a>(rows: &[&'a Evidence]) -> Vec<&'a str> {
    let mut v: Vec<&str> = rows
        .iter()
        .filter_map(|e| e.threat_family.as_deref())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// What one incident tells the global signals: each distinct detector, title, category, ATT&CK
/// technique, threat family and present entity (`column/code`, "not present" codes excluded)
/// once, with the number of the incident's alerts that carry it; sorted.
pub fn incident_signals(
    rows: &[&Evidence],
    sentinels: &[Option<u64>; N_ENTITY_COLUMNS],
) -> Vec<(SignalKind, String, u32)> {
    let mut seen: Vec<(SignalKind, std::borrow::Cow<'_, str>, u64)> = Vec::new();
    for e in rows {
        let a = e.alert.0;
        seen.push((SignalKind::Detector, e.detector.as_str().into(), a));
        seen.push((SignalKind::Title, e.title.as_str().into(), a));
        seen.push((SignalKind::Category, e.category.as_str().into(), a));
        for t in &e.techniques {
            seen.push((SignalKind::Technique, t.as_str().into(), a));
        }
        if let Some(f) = &e.threat_family {
            seen.push((SignalKind::Family, f.as_str().into(), a));
        }
        for k in entity_keys(std::slice::from_ref(e), sentinels) {
            seen.push((SignalKind::Entity, k.into(), a));
        }
    }
    seen.sort_unstable();
    seen.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < seen.len() {
        let n = seen[i..]
            .iter()
            .take_while(|x| x.0 == seen[i].0 && x.1 == seen[i].1)
            .count();
        out.push((seen[i].0, seen[i].1.to_string(), n as u32));
        i += n;
    }
    out
}

/// Records one incident in a global-signals builder ([`incident_signals`]).
pub fn observe_incident(
    b: &mut SnapshotBuilder<'_>,
    rows: &[&Evidence],
    sentinels: &[Option<u64>; N_ENTITY_COLUMNS],
    grade: Option<crate::domain::Grade>,
) {
    let Some(first) = rows.first() else { return };
    for (kind, value, alerts) in incident_signals(rows, sentinels) {
        b.observe(first.tenant, kind, &value, alerts, grade);
    }
}

/// The "not present" code of each entity column in an input (see [`FittedFeatures`]): the
/// most frequent code of the column when it covers at least 20% of the rows.
pub fn input_sentinels(
    evidence: &[Evidence],
    corr: &Correlated,
) -> [Option<u64>; N_ENTITY_COLUMNS] {
    let all: Vec<usize> = (0..corr.incidents.len()).collect();
    learn_sentinels(evidence, corr, &all)
}

/// Builds a global-signals snapshot from every incident of an input (graded or not), under the
/// privacy rules of `params` and the pseudonyms of `key` (`threatrank signals build`).
pub fn build_snapshot(
    params: &crate::signals::SignalsValidParams,
    key: &PseudonymKey,
    evidence: &[Evidence],
    corr: &Correlated,
) -> GlobalSignals {
    let sentinels = input_sentinels(evidence, corr);
    let all: Vec<usize> = (0..corr.incidents.len()).collect();
    snapshot_of(params, key, evidence, corr, &all, &sentinels)
}

/// A snapshot of the incidents `which` (indices into `corr.incidents`).
fn snapshot_of(
    params: &crate::signals::SignalsValidParams,
    key: &PseudonymKey,
    evidence: &[Evidence],
    corr: &Correlated,
    which: &[usize],
    sentinels: &[Option<u64>; N_ENTITY_COLUMNS],
) -> GlobalSignals {
    let mut b = SnapshotBuilder::new(params, key);
    for &i in which {
        let inc = &corr.incidents[i];
        let rows: Vec<&Evidence> = inc.rows(evidence);
        observe_incident(&mut b, &rows, sentinels, inc.grade);
    }
    b.build()
}

impl FittedFeatures {
    fn empty(key: &PseudonymKey) -> Self {
        let params = FeatureParams::default();
        let global = match params.signals.check() {
            Ok(p) => GlobalSignals::empty(&p, key),
            Err(_) => unreachable!("default signals parameters are valid"),
        };
        Self {
            params,
            prior: [1.0 / 3.0; 3],
            prior_history: Series::default(),
            sentinels: [None; N_ENTITY_COLUMNS],
            global,
            tenant: Table::default(),
            tenant_keyed: Default::default(),
            entity_tenant: Table::default(),
        }
    }

    /// Fits encoders on the labelled incidents listed in `train` (indices into
    /// `corr.incidents`). The global signals are `kn.snapshot` when given, else a snapshot
    /// built from these incidents under `kn.key`.
    pub fn fit(
        params: &FeatureValidParams,
        evidence: &[Evidence],
        corr: &Correlated,
        train: &[usize],
        kn: &Knowledge,
    ) -> Result<Self, FeatureError> {
        let sentinels = learn_sentinels(evidence, corr, train);
        Self::fit_with_sentinels(
            params,
            evidence,
            corr,
            train,
            sentinels,
            &kn.key,
            kn.snapshot.as_ref(),
        )
    }

    fn fit_with_sentinels(
        params: &FeatureValidParams,
        evidence: &[Evidence],
        corr: &Correlated,
        train: &[usize],
        sentinels: [Option<u64>; N_ENTITY_COLUMNS],
        key: &PseudonymKey,
        given: Option<&GlobalSignals>,
    ) -> Result<Self, FeatureError> {
        let p = params.get().clone();
        let mut entity_tenant = TableBuilder::default();
        let mut prior_n = [0u32; 3];
        let mut prior_history = TableBuilder::default();
        let mut tenant = TableBuilder::default();
        let mut keyed: [TableBuilder; 3] = Default::default();
        let signals = p.signals.check()?;
        let mut snapshot = given.is_none().then(|| SnapshotBuilder::new(&signals, key));
        for &i in train {
            let inc = &corr.incidents[i];
            let Some(g) = inc.grade else { continue };
            let class = g.class_id();
            let t = inc.key.tenant.0;
            let ended = inc.last_seen;
            prior_n[class as usize] += 1;
            prior_history.add("", class, ended);
            let rows: Vec<&Evidence> = inc.rows(evidence);
            if let Some(b) = snapshot.as_mut() {
                observe_incident(b, &rows, &sentinels, Some(g));
            }
            for key in entity_keys(&rows, &sentinels) {
                entity_tenant.add(&tenant_key(t, &key), class, ended);
            }
            tenant.add(&t.to_string(), class, ended);
            for (k, b) in keyed.iter_mut().enumerate() {
                for v in identities(&rows, k) {
                    b.add(&tenant_key(t, v), class, ended);
                }
            }
        }
        let total: u32 = prior_n.iter().sum();
        if total == 0 {
            return Err(FeatureError::NoLabels);
        }
        let prior = prior_of(prior_n);
        let global = match (snapshot, given) {
            (Some(b), _) => b.build(),
            (None, Some(g)) => g.clone(),
            (None, None) => unreachable!("a builder exists when no snapshot is given"),
        };
        Ok(Self {
            prior,
            prior_history: prior_history.build_series(),
            sentinels,
            global,
            tenant: tenant.build_tenant(),
            tenant_keyed: keyed.map(TableBuilder::build_tenant),
            entity_tenant: entity_tenant.build_tenant(),
            params: p,
        })
    }

    /// The learnt "not present" code of an entity column (`ENTITY_COLUMNS` index), if any.
    pub fn sentinel(&self, column: usize) -> Option<u64> {
        self.sentinels.get(column).copied().flatten()
    }

    /// The cross-tenant snapshot these encoders were fitted with.
    pub fn global_signals(&self) -> &GlobalSignals {
        &self.global
    }

    /// Replaces the global-signals snapshot (e.g. a fresher one at scoring time).
    pub fn set_global_signals(&mut self, snapshot: GlobalSignals) {
        self.global = snapshot;
    }

    /// The parameters these encoders were fitted with.
    pub fn params(&self) -> &FeatureParams {
        &self.params
    }

    /// Global grade prior (TP, BP, FP add-one smoothed shares of all training incidents).
    pub fn prior(&self) -> [f64; 3] {
        self.prior
    }

    /// The grade prior as of time `t`: add-one smoothed shares of the training incidents that
    /// ended strictly before `t` (uniform before any did).
    pub fn prior_at(&self, t: i64) -> [f64; 3] {
        prior_of(self.prior_history.as_of(t))
    }

    /// Feature rows for the incidents `which` (indices into `corr.incidents`), in that order.
    pub fn transform(
        &self,
        evidence: &[Evidence],
        corr: &Correlated,
        which: &[usize],
        kn: &Knowledge,
    ) -> FeatureMatrix {
        // An external snapshot, when given, replaces the one fitted with these encoders.
        let global = kn.snapshot.as_ref().unwrap_or(&self.global);
        self.transform_with(global, evidence, corr, which, kn)
    }

    /// A snapshot of the labelled incidents `which` (indices into `corr.incidents`) under these
    /// encoders' privacy rules and "not present" codes: what [`FittedFeatures::fit`] builds
    /// from its training incidents, for another set of them.
    pub fn snapshot_of(
        &self,
        evidence: &[Evidence],
        corr: &Correlated,
        which: &[usize],
        key: &PseudonymKey,
    ) -> Result<GlobalSignals, FeatureError> {
        let signals = self.params.signals.check()?;
        let graded: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| corr.incidents[i].grade.is_some())
            .collect();
        Ok(snapshot_of(
            &signals,
            key,
            evidence,
            corr,
            &graded,
            &self.sentinels,
        ))
    }

    /// [`FittedFeatures::transform`] with the global signals of `global` (instead of the
    /// snapshot these encoders hold or one given in `kn`).
    pub fn transform_with(
        &self,
        global: &GlobalSignals,
        evidence: &[Evidence],
        corr: &Correlated,
        which: &[usize],
        kn: &Knowledge,
    ) -> FeatureMatrix {
        let width = schema_len();
        let mut x = FeatureMatrix::zeros(which.len(), width);
        x.as_mut_slice()
            .par_chunks_mut(width.max(1))
            .zip(which.par_iter())
            .with_min_len(64)
            .for_each(|(row, &i)| {
                let inc = &corr.incidents[i];
                let rows: Vec<&Evidence> = inc.rows(evidence);
                self.extract(&rows, kn, global, &mut RowSink { out: row, i: 0 });
            });
        x
    }

    /// Writes one incident's features (0 in the columns of switched-off families). `rows` is
    /// non-empty and from one tenant.
    fn extract<S: Sink>(
        &self,
        rows: &[&Evidence],
        kn: &Knowledge,
        global: &GlobalSignals,
        s: &mut S,
    ) {
        let off = self.params.disabled.iter().fold(0u16, |m, f| m | f.bit());
        self.extract_all(rows, kn, global, &mut Masked { inner: s, off });
    }

    fn extract_all<S: Sink>(
        &self,
        rows: &[&Evidence],
        kn: &Knowledge,
        global: &GlobalSignals,
        s: &mut S,
    ) {
        let attack = &kn.attack;
        // the incident's start: every label-derived value is read as of it
        let first = rows.iter().map(|e| e.timestamp).min().unwrap_or(0);
        let prior = self.prior_at(first);
        let n = rows.len().max(1);
        let nf = n as f64;
        let tenant = rows.first().map(|e| e.tenant.0).unwrap_or(0);

        // --- size
        let mut alerts: Vec<u64> = rows.iter().map(|e| e.alert.0).collect();
        alerts.sort_unstable();
        alerts.dedup();
        let distinct = |f: &dyn Fn(&Evidence) -> &str| {
            let mut v: Vec<&str> = rows.iter().map(|e| f(e)).collect();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        s.put(Family::Size, "log_evidence", "", ln1p(rows.len()));
        s.put(Family::Size, "log_alerts", "", ln1p(alerts.len()));
        s.put(
            Family::Size,
            "distinct_entity_types",
            "",
            distinct(&|e| &e.entity_type) as f64,
        );
        s.put(
            Family::Size,
            "distinct_detectors",
            "",
            distinct(&|e| &e.detector) as f64,
        );
        s.put(
            Family::Size,
            "distinct_titles",
            "",
            distinct(&|e| &e.title) as f64,
        );
        s.put(
            Family::Size,
            "distinct_categories",
            "",
            distinct(&|e| &e.category) as f64,
        );
        let impacted = rows.iter().filter(|e| e.impacted).count();
        s.put(Family::Size, "share_impacted", "", impacted as f64 / nf);

        // --- entities: rows per entity type, distinct present codes per entity column
        let mut type_counts = [0usize; ENTITY_TYPES.len() + 1];
        for e in rows {
            let k = ENTITY_TYPES
                .iter()
                .position(|t| *t == e.entity_type)
                .unwrap_or(ENTITY_TYPES.len());
            type_counts[k] += 1;
        }
        for (k, name) in ENTITY_TYPES.iter().chain(["other"].iter()).enumerate() {
            s.put(
                Family::Entities,
                "entity_type_rows",
                name,
                ln1p(type_counts[k]),
            );
        }
        let mut codes: Vec<u64> = Vec::with_capacity(rows.len());
        for (c, col) in crate::domain::ENTITY_COLUMNS.iter().enumerate() {
            codes.clear();
            codes.extend(
                rows.iter()
                    .filter_map(|e| e.entities.codes[c])
                    .filter(|code| Some(*code) != self.sentinels[c]),
            );
            codes.sort_unstable();
            codes.dedup();
            s.put(Family::Entities, "distinct_present", col, ln1p(codes.len()));
        }

        // --- category mix
        let mut cat_counts = [0usize; CATEGORIES.len() + 1];
        for e in rows {
            let k = CATEGORIES
                .iter()
                .position(|c| *c == e.category)
                .unwrap_or(CATEGORIES.len());
            cat_counts[k] += 1;
        }
        for (k, name) in CATEGORIES.iter().chain(["other"].iter()).enumerate() {
            s.put(Family::Category, "category_rows", name, ln1p(cat_counts[k]));
        }

        // --- kill chain (ATT&CK techniques ∪ category tactic)
        let techniques = identities(rows, 3);
        let mut mask = 0u16;
        for t in &techniques {
            mask |= attack.tactics_of(t);
        }
        for e in rows {
            if let Some(b) = category_tactic(&e.category) {
                mask |= 1 << b;
            }
        }
        for (b, name) in TACTICS.iter().enumerate() {
            s.put(
                Family::KillChain,
                "tactic",
                name,
                f64::from(u8::from(mask & (1 << b) != 0)),
            );
        }
        s.put(
            Family::KillChain,
            "tactics_covered",
            "",
            f64::from(mask.count_ones()),
        );
        let furthest = (0..TACTICS.len())
            .rev()
            .find(|b| mask & (1 << b) != 0)
            .map_or(0, |b| b + 1);
        s.put(Family::KillChain, "furthest_stage", "", furthest as f64);
        for tactic in [
            "credential-access",
            "lateral-movement",
            "exfiltration",
            "impact",
        ] {
            let b = TACTICS.iter().position(|t| *t == tactic).unwrap_or(0);
            let n = techniques
                .iter()
                .filter(|t| attack.tactics_of(t) & (1 << b) != 0)
                .count();
            s.put(Family::KillChain, "techniques_in", tactic, n as f64);
        }
        let ransomware = rows.iter().any(|e| e.category == "Ransomware")
            || techniques.iter().any(|t| t.starts_with("T1486"));
        s.put(
            Family::KillChain,
            "ransomware",
            "",
            f64::from(u8::from(ransomware)),
        );
        s.put(
            Family::KillChain,
            "log_techniques",
            "",
            ln1p(techniques.len()),
        );
        let with_tech = rows.iter().filter(|e| !e.techniques.is_empty()).count();
        s.put(
            Family::KillChain,
            "share_rows_with_techniques",
            "",
            with_tech as f64 / nf,
        );

        // --- Sigma: expert severity of the techniques (levels 0 informational … 4 critical;
        // written +1 so that 0 means "no Sigma rule")
        let (mut max_level, mut sum_mean, mut known, mut rules) = (0u8, 0.0f64, 0usize, 0u32);
        for t in &techniques {
            if let Some(p) = kn.sigma.prior(t) {
                max_level = max_level.max(p.max_level + 1);
                sum_mean += f64::from(p.mean_level) + 1.0;
                known += 1;
                rules += p.rules;
            }
        }
        s.put(Family::Sigma, "sigma_max_level", "", f64::from(max_level));
        s.put(
            Family::Sigma,
            "sigma_mean_level",
            "",
            if known == 0 {
                0.0
            } else {
                sum_mean / known as f64
            },
        );
        s.put(
            Family::Sigma,
            "sigma_share_known",
            "",
            if techniques.is_empty() {
                0.0
            } else {
                known as f64 / techniques.len() as f64
            },
        );
        s.put(
            Family::Sigma,
            "sigma_log_rules",
            "",
            f64::from(rules).ln_1p(),
        );

        // --- actor: similarity of the technique set to known ATT&CK groups
        let (top, second, shared) = GROUP_SCRATCH.with_borrow_mut(|(scratch, hits)| {
            kn.groups.top_into(&techniques, 2, scratch, hits);
            let score = |i: usize| hits.get(i).map_or(0.0, |h| f64::from(h.score));
            let shared = hits
                .first()
                .map_or(0, |h| kn.groups.shared_count(h, scratch));
            (score(0), score(1), shared)
        });
        s.put(Family::Actor, "actor_top_score", "", top);
        s.put(Family::Actor, "actor_margin", "", top - second);
        s.put(Family::Actor, "actor_top_shared", "", shared as f64);

        // --- time
        let last = rows.iter().map(|e| e.timestamp).max().unwrap_or(0);
        s.put(
            Family::Time,
            "log_span_seconds",
            "",
            ((last - first).max(0) as f64).ln_1p(),
        );
        let hour = (first.rem_euclid(86_400) as f64) / 3600.0;
        let angle = hour / 24.0 * std::f64::consts::TAU;
        s.put(Family::Time, "hour_sin", "", angle.sin());
        s.put(Family::Time, "hour_cos", "", angle.cos());
        // 1970-01-01 was a Thursday: day 0 → weekday 3 (Mon = 0).
        let weekday = (first.div_euclid(86_400) + 3).rem_euclid(7);
        s.put(
            Family::Time,
            "weekend",
            "",
            f64::from(u8::from(weekday >= 5)),
        );

        // --- verdict-like evidence attributes
        let share =
            |f: &dyn Fn(&Evidence) -> bool| rows.iter().filter(|e| f(e)).count() as f64 / nf;
        s.put(
            Family::Verdicts,
            "share_suspicion_level",
            "",
            share(&|e| e.suspicion_level.is_some()),
        );
        for v in ["Malicious", "Suspicious", "NoThreatsFound"] {
            s.put(
                Family::Verdicts,
                "share_last_verdict",
                v,
                share(&|e| e.last_verdict.as_deref() == Some(v)),
            );
        }
        s.put(
            Family::Verdicts,
            "share_threat_family",
            "",
            share(&|e| e.threat_family.is_some()),
        );
        for v in ["Inbound", "Intraorg", "Outbound"] {
            s.put(
                Family::Verdicts,
                "share_antispam",
                v,
                share(&|e| e.antispam_direction.as_deref() == Some(v)),
            );
        }
        s.put(
            Family::Verdicts,
            "share_roles",
            "",
            share(&|e| e.roles.is_some()),
        );
        let sev = rows
            .iter()
            .filter_map(|e| e.severity)
            .map(|v| f64::from(v.rank()) + 1.0)
            .fold(0.0, f64::max);
        s.put(Family::Verdicts, "max_severity", "", sev);

        // --- global signals (privacy floor applied when the snapshot was built)
        let ids: Vec<Vec<&str>> = (0..3).map(|k| identities(rows, k)).collect();
        let entities = entity_keys(rows, &self.sentinels);
        let entity_refs: Vec<&str> = entities.iter().map(String::as_str).collect();
        let families = threat_families(rows);
        for kind in SignalKind::ALL {
            let values: &[&str] = match kind {
                SignalKind::Detector => &ids[0],
                SignalKind::Title => &ids[1],
                SignalKind::Category => &ids[2],
                SignalKind::Technique => &techniques,
                SignalKind::Family => &families,
                SignalKind::Entity => &entity_refs,
            };
            self.put_global(s, kind, values, kn, global, prior);
        }

        // --- the tenant's own history (smoothed toward the global prior, and tenant × key
        // toward the tenant's own rates)
        self.put_tenant(s, Some((tenant, first)), prior, &ids, &entities);
    }

    /// Writes the `tenant` family: the tenant's own grade history overall and per detector /
    /// title / category / entity, over its incidents that ended before `as_of` (`tenant =
    /// Some((tenant, as_of))`), smoothed toward `prior`. `tenant = None` writes what a tenant
    /// without graded history gets, whatever the incident: the prior and zero support (see
    /// [`FittedFeatures::as_unseen_tenant`]).
    fn put_tenant<S: Sink>(
        &self,
        s: &mut S,
        tenant: Option<(u64, i64)>,
        prior: [f64; 3],
        ids: &[Vec<&str>],
        entities: &[String],
    ) {
        let m = self.params.smoothing;
        let as_of = tenant.map_or(i64::MIN, |(_, t)| t);
        let (t_rates, t_support) = match tenant {
            Some((t, as_of)) => self.tenant.rates(&t.to_string(), prior, m, as_of),
            None => (prior, 0),
        };
        for (c, g) in RATE_NAMES.iter().enumerate() {
            s.put(Family::Tenant, "tenant", g, t_rates[c]);
        }
        s.put(
            Family::Tenant,
            "tenant",
            "log_support",
            ln1p(t_support as usize),
        );
        let keyed = [
            ("tenant_detector", &ids[0]),
            ("tenant_title", &ids[1]),
            ("tenant_category", &ids[2]),
        ];
        let empty = Table::default();
        // Every tenant × value key of the incident, written into one buffer.
        let mut buf = String::new();
        let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
        for (k, (name, values)) in keyed.into_iter().enumerate() {
            let table = match tenant {
                Some((t, _)) => {
                    tenant_keys(t, values.iter().copied(), &mut buf, &mut spans);
                    &self.tenant_keyed[k]
                }
                None => &empty,
            };
            let keys: Vec<&str> = spans.iter().map(|r| &buf[r.clone()]).collect();
            self.put_encoding(s, name, table, &keys, t_rates, as_of);
        }
        let table = match tenant {
            Some((t, _)) => {
                tenant_keys(t, entities.iter().map(String::as_str), &mut buf, &mut spans);
                &self.entity_tenant
            }
            None => &empty,
        };
        let keys: Vec<&str> = spans.iter().map(|r| &buf[r.clone()]).collect();
        self.put_encoding(s, "tenant_entity", table, &keys, t_rates, as_of);
    }

    /// `x` as it would be for tenants without graded history: every `tenant` family column
    /// set to what [`FittedFeatures::transform`] writes for a tenant never seen (the prior as
    /// of the row's incident start `starts[r]`, zero support, nothing seen); every other column
    /// unchanged. Training fits the grade weights and conformal sets of new tenants on every
    /// training incident rewritten so (`TrainParams::unseen_folds`).
    ///
    /// # Panics
    /// When `starts` does not hold one time per row of `x` (a caller's bug).
    pub fn as_unseen_tenant(&self, x: &FeatureMatrix, starts: &[i64]) -> FeatureMatrix {
        assert_eq!(starts.len(), x.n_rows(), "one incident start per row");
        let schema = schema();
        let cols: Vec<usize> = (0..schema.len())
            .filter(|&j| schema.families()[j] == Family::Tenant.name())
            .collect();
        let off = self.params.disabled.iter().fold(0u16, |m, f| m | f.bit());
        let no_ids = [Vec::new(), Vec::new(), Vec::new()];
        let mut values = Vec::with_capacity(cols.len());
        let mut out = x.clone();
        for (i, &start) in starts.iter().enumerate() {
            values.clear();
            let mut sink = Masked {
                inner: &mut ValueSink(&mut values),
                off,
            };
            self.put_tenant(&mut sink, None, self.prior_at(start), &no_ids, &[]);
            let row = out.row_mut(i);
            for (&j, &v) in cols.iter().zip(&values) {
                row[j] = v;
            }
        }
        out
    }

    /// Writes one tenant-history encoding: the three smoothed rates, log support and the share
    /// of values seen before.
    fn put_encoding<S: Sink>(
        &self,
        s: &mut S,
        name: &str,
        table: &Table,
        values: &[&str],
        parent: [f64; 3],
        as_of: i64,
    ) {
        let (rates, support, known) =
            mean_rates(table, values, parent, self.params.smoothing, as_of);
        for (c, g) in RATE_NAMES.iter().enumerate() {
            s.put(Family::Tenant, name, g, rates[c]);
        }
        s.put(Family::Tenant, name, "log_support", support);
        s.put(Family::Tenant, name, "share_seen", known);
    }

    /// Writes one kind of global signal over an incident's distinct `values`: the mean
    /// smoothed TP/BP/FP rates, the largest TP and FP rates, log1p of the summed incidents,
    /// log1p of the most tenants, and the share of values released. Unknown values (below the
    /// floor, or never seen) count as the global prior.
    fn put_global<S: Sink>(
        &self,
        s: &mut S,
        kind: SignalKind,
        values: &[&str],
        kn: &Knowledge,
        global: &GlobalSignals,
        prior: [f64; 3],
    ) {
        let m = self.params.smoothing;
        let mut acc = [0.0; 3];
        let (mut max_tp, mut max_fp) = (0.0f64, 0.0f64);
        let (mut support, mut tenants, mut known) = (0.0, 0.0f64, 0usize);
        for v in values {
            let rates = match global.lookup(kind, v, &kn.key) {
                Some(r) => {
                    support += r.incidents;
                    tenants = tenants.max(r.tenants);
                    known += 1;
                    r.rates(prior, m)
                }
                None => prior,
            };
            for c in 0..3 {
                acc[c] += rates[c];
            }
            max_tp = max_tp.max(rates[0]);
            max_fp = max_fp.max(rates[2]);
        }
        let (rates, share) = if values.is_empty() {
            max_tp = prior[0];
            max_fp = prior[2];
            (prior, 0.0)
        } else {
            let k = values.len() as f64;
            (acc.map(|a| a / k), known as f64 / k)
        };
        let name = kind.name();
        for (c, g) in RATE_NAMES.iter().enumerate() {
            s.put(Family::Global, name, g, rates[c]);
        }
        s.put(Family::Global, name, "max_tp_rate", max_tp);
        s.put(Family::Global, name, "max_fp_rate", max_fp);
        s.put(Family::Global, name, "log_support", f64::ln_1p(support));
        s.put(Family::Global, name, "log_tenants", tenants.ln_1p());
        s.put(Family::Global, name, "share_released", share);
    }
}

/// Mean smoothed rates over `values` (their histories as of `as_of`), log1p of summed support
/// and the share of values with support. No value → parent, 0, 0.
fn mean_rates(
    table: &Table,
    values: &[&str],
    parent: [f64; 3],
    m: f64,
    as_of: i64,
) -> ([f64; 3], f64, f64) {
    if values.is_empty() {
        return (parent, 0.0, 0.0);
    }
    let mut acc = [0.0; 3];
    let mut support = 0u64;
    let mut known = 0usize;
    for v in values {
        let (r, n) = table.rates(v, parent, m, as_of);
        for c in 0..3 {
            acc[c] += r[c];
        }
        support += u64::from(n);
        known += usize::from(n > 0);
    }
    let k = values.len() as f64;
    (
        acc.map(|a| a / k),
        (support as f64).ln_1p(),
        known as f64 / k,
    )
}

/// Add-one smoothed grade shares of `n` (uniform when `n` is all zero).
fn prior_of(n: [u32; 3]) -> [f64; 3] {
    let total = f64::from(n[0]) + f64::from(n[1]) + f64::from(n[2]);
    n.map(|c| (f64::from(c) + 1.0) / (total + 3.0))
}

/// Suffixes of the three grade-rate columns of an encoding.
const RATE_NAMES: [&str; 3] = ["tp_rate", "bp_rate", "fp_rate"];

/// Width of the schema.
pub fn schema_len() -> usize {
    static LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| schema().len())
}

/// Seconds of a UTC day.
const DAY: i64 = 86_400;

/// The fold of a tenant in the leave-tenant-out global signals of the training matrix
/// (deterministic in the seed and the tenant id).
fn tenant_fold(tenant: u64, p: &FeatureParams) -> usize {
    // "tenant" in ASCII: a stream of its own
    let z = crate::rng::mix64(p.seed ^ 0x7465_6e61_6e74 ^ crate::rng::mix64(tenant));
    (z % p.oof_folds as u64) as usize
}

/// The training matrix, built past-only, and the encoders fitted on all of `train`.
///
/// Every row reads only verdicts that existed when its incident began (module docs): the
/// prior and the tenant family from the fitted histories as of the incident's start, exactly
/// as [`FittedFeatures::transform`] reads them; the global signals from a snapshot of the
/// labelled training incidents that ended before the incident's UTC day began (with
/// [`FeatureParams::global_leave_tenant_out`], also without the tenants of the incident's
/// tenant fold, as they are for a tenant never seen). A snapshot given in `kn` is used for
/// every row as it is (it is not sliced by time).
///
/// Returns `(encoders, matrix, labels, incidents)`, rows in the order of the labelled
/// incidents of `train` (unlabelled ones are skipped; the returned index list says which
/// incident each row is).
pub fn fit_transform(
    params: &FeatureValidParams,
    evidence: &[Evidence],
    corr: &Correlated,
    train: &[usize],
    kn: &Knowledge,
) -> Result<(FittedFeatures, FeatureMatrix, Vec<u8>, Vec<usize>), FeatureError> {
    let p = params.get();
    let labelled: Vec<usize> = train
        .iter()
        .copied()
        .filter(|&i| corr.incidents[i].grade.is_some())
        .collect();
    if labelled.is_empty() {
        return Err(FeatureError::NoLabels);
    }
    let full = FittedFeatures::fit(params, evidence, corr, &labelled, kn)?;
    let y: Vec<u8> = labelled
        .iter()
        .map(|&i| corr.incidents[i].grade.map_or(0, |g| g.class_id()))
        .collect();
    if kn.snapshot.is_some() {
        let x = full.transform(evidence, corr, &labelled, kn);
        return Ok((full, x, y, labelled));
    }
    let signals = p.signals.check()?;
    let groups = if p.global_leave_tenant_out {
        p.oof_folds
    } else {
        1
    };
    // the tenant fold of each row (position in `labelled`), hashed once
    let group: Vec<usize> = labelled
        .iter()
        .map(|&i| {
            if groups == 1 {
                0
            } else {
                tenant_fold(corr.incidents[i].key.tenant.0, p)
            }
        })
        .collect();
    // rows (positions in `labelled`) by the UTC day their incident began
    let mut by_day: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (j, &i) in labelled.iter().enumerate() {
        by_day
            .entry(corr.incidents[i].first_seen.div_euclid(DAY))
            .or_default()
            .push(j);
    }
    // rows in the order their verdicts became known
    let mut by_end: Vec<usize> = (0..labelled.len()).collect();
    by_end.sort_by_key(|&j| (corr.incidents[labelled[j]].last_seen, labelled[j]));
    let mut builders: Vec<SnapshotBuilder<'_>> = (0..groups)
        .map(|_| SnapshotBuilder::new(&signals, &kn.key))
        .collect();
    let mut next = 0;
    let mut x = FeatureMatrix::zeros(labelled.len(), schema_len());
    for (day, rows) in by_day {
        let start = day.saturating_mul(DAY);
        while let Some(&j) = by_end.get(next) {
            let inc = &corr.incidents[labelled[j]];
            if inc.last_seen >= start {
                break;
            }
            let ev: Vec<&Evidence> = inc.rows(evidence);
            for (g, b) in builders.iter_mut().enumerate() {
                if groups == 1 || g != group[j] {
                    observe_incident(b, &ev, &full.sentinels, inc.grade);
                }
            }
            next += 1;
        }
        for (g, b) in builders.iter().enumerate() {
            let sub: Vec<usize> = rows.iter().copied().filter(|&j| group[j] == g).collect();
            if sub.is_empty() {
                continue;
            }
            let snapshot = b.clone().build();
            let which: Vec<usize> = sub.iter().map(|&j| labelled[j]).collect();
            let part = full.transform_with(&snapshot, evidence, corr, &which, kn);
            for (r, &j) in sub.iter().enumerate() {
                x.row_mut(j).copy_from_slice(part.row(r));
            }
        }
    }
    Ok((full, x, y, labelled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Grade;

    /// Out-of-fold rows of `evidence` (one graded incident per distinct incident id).
    fn oof_rows(evidence: &[Evidence]) -> FeatureMatrix {
        let corr = crate::correlate::group_incidents(evidence);
        let kn = Knowledge::development().unwrap();
        let params = FeatureParams::default().check().unwrap();
        let all: Vec<usize> = (0..corr.incidents.len()).collect();
        fit_transform(&params, evidence, &corr, &all, &kn)
            .unwrap()
            .1
    }

    #[test]
    fn a_fold_with_nothing_out_of_fold_does_not_see_its_own_grade() {
        // One labelled incident: its fold has no other incident to learn from, so its row must
        // not depend on its own grade (the full-data encoders hold it).
        let incident = |grade| {
            vec![Evidence {
                tenant: crate::domain::TenantId(3),
                incident: crate::domain::IncidentId(11),
                alert: crate::domain::AlertId(5),
                detector: "d1".into(),
                category: "Exfiltration".into(),
                grade: Some(grade),
                ..Evidence::default()
            }]
        };
        let tp = oof_rows(&incident(Grade::TruePositive));
        let fp = oof_rows(&incident(Grade::FalsePositive));
        assert_eq!(tp.n_rows(), 1);
        assert_eq!(tp, fp, "the row moved with its own grade");
        // the tenant family falls back to the uniform prior, not a one-hot of the grade
        let s = schema();
        let tp_rate = s.index_of("tenant:tp_rate").unwrap();
        assert!(
            (tp.get(0, tp_rate) - 1.0 / 3.0).abs() < 1e-6,
            "{}",
            tp.get(0, tp_rate)
        );
    }

    /// Random graded incidents over a few tenants, detectors, entities and days: incident `k`
    /// of the result has one to three rows, all sharing its tenant, grade and a time span.
    fn random_incidents(seed: u64, n: usize) -> Vec<Evidence> {
        let mut r = crate::rng::SplitMix64(seed);
        let mut out = Vec::new();
        for k in 0..n {
            let tenant = r.below(3) as u64;
            let grade = [
                Grade::TruePositive,
                Grade::BenignPositive,
                Grade::FalsePositive,
            ][r.below(3)];
            // a start within 6 days (some on the same second), a span of up to 2 days
            let start = 1_717_200_000 + (r.below(6 * 24) as i64) * 3_600;
            let span = r.below(3) as i64 * 86_400 / 2;
            for a in 0..=r.below(3) {
                let mut e = Evidence {
                    tenant: crate::domain::TenantId(tenant),
                    incident: crate::domain::IncidentId(k as u64),
                    alert: crate::domain::AlertId((k * 4 + a) as u64),
                    timestamp: if a == 0 { start } else { start + span },
                    detector: format!("d{}", r.below(4)),
                    title: format!("t{}", r.below(5)),
                    category: ["Exfiltration", "Execution", "Discovery"][r.below(3)].into(),
                    grade: Some(grade),
                    ..Evidence::default()
                };
                e.entities.codes[0] = Some(r.below(6) as u64);
                out.push(e);
            }
        }
        out
    }

    /// The same incidents with incident `k`'s grade replaced.
    fn regraded(evidence: &[Evidence], k: u64, grade: Grade) -> Vec<Evidence> {
        let mut out = evidence.to_vec();
        for e in &mut out {
            if e.incident.0 == k {
                e.grade = Some(grade);
            }
        }
        out
    }

    fn other_grade(g: Grade) -> Grade {
        match g {
            Grade::TruePositive => Grade::FalsePositive,
            _ => Grade::TruePositive,
        }
    }

    /// Default parameters with exact global signals released from 2 tenants: any grade that
    /// reaches them shows.
    fn exact_params() -> FeatureValidParams {
        FeatureParams::default()
            .signals(SignalsParams::default().min_tenants(2).epsilon(None))
            .check()
            .unwrap()
    }

    /// Past-only training rows: changing the grade of an incident that ended at or after
    /// incident X began never changes X's row, whatever the data (random incidents, default
    /// parameters but exact global signals from 2 tenants). Fails with histories read
    /// regardless of time, or with global signals of the whole training set.
    #[test]
    fn a_later_verdict_never_changes_a_training_row() {
        let kn = Knowledge::development().unwrap();
        let params = exact_params();
        let mut changed_later = 0;
        for seed in 0..12u64 {
            let ev = random_incidents(seed, 40);
            let corr = crate::correlate::group_incidents(&ev);
            let all: Vec<usize> = (0..corr.incidents.len()).collect();
            let (_, x, _, rows) = fit_transform(&params, &ev, &corr, &all, &kn).unwrap();
            let mut r = crate::rng::SplitMix64(seed ^ 0xABCD);
            for _ in 0..4 {
                let z = &corr.incidents[r.below(corr.incidents.len())];
                let flipped = regraded(&ev, z.key.incident.0, other_grade(z.grade.unwrap()));
                let corr2 = crate::correlate::group_incidents(&flipped);
                let (_, x2, _, rows2) =
                    fit_transform(&params, &flipped, &corr2, &all, &kn).unwrap();
                assert_eq!(rows, rows2);
                for (j, &i) in rows.iter().enumerate() {
                    let inc = &corr.incidents[i];
                    if z.last_seen >= inc.first_seen {
                        assert_eq!(
                            x.row(j),
                            x2.row(j),
                            "seed {seed}: regrading {} (ended {}) moved the row of {} (began {})",
                            z.key,
                            z.last_seen,
                            inc.key,
                            inc.first_seen
                        );
                        changed_later += 1;
                    }
                }
            }
        }
        assert!(changed_later > 500, "{changed_later} rows checked");
    }

    /// The same at scoring: encoders fitted on one half, the other half scored; regrading a
    /// training incident that ended at or after a scored incident began changes nothing of
    /// that incident's row, and regrading one that ended before it does change it sometimes
    /// (the history is read at all).
    #[test]
    fn a_later_verdict_never_changes_a_scored_row() {
        let kn = Knowledge::development().unwrap();
        let params = exact_params();
        let (mut unchanged, mut moved_by_earlier) = (0, 0);
        for seed in 0..12u64 {
            let ev = random_incidents(seed + 100, 60);
            let corr = crate::correlate::group_incidents(&ev);
            let (train, test): (Vec<usize>, Vec<usize>) =
                (0..corr.incidents.len()).partition(|i| i % 2 == 0);
            let enc = FittedFeatures::fit(&params, &ev, &corr, &train, &kn).unwrap();
            let x = enc.transform(&ev, &corr, &test, &kn);
            for &zi in train.iter().take(10) {
                let z = &corr.incidents[zi];
                let flipped = regraded(&ev, z.key.incident.0, other_grade(z.grade.unwrap()));
                let corr2 = crate::correlate::group_incidents(&flipped);
                let enc2 = FittedFeatures::fit(&params, &flipped, &corr2, &train, &kn).unwrap();
                // scoring with the global signals fixed: only the histories are under test
                let x2 = enc2.transform_with(enc.global_signals(), &flipped, &corr2, &test, &kn);
                for (r, &i) in test.iter().enumerate() {
                    let inc = &corr.incidents[i];
                    if z.last_seen >= inc.first_seen {
                        assert_eq!(
                            x.row(r),
                            x2.row(r),
                            "seed {seed}: {} moved {}",
                            z.key,
                            inc.key
                        );
                        unchanged += 1;
                    } else if x.row(r) != x2.row(r) {
                        moved_by_earlier += 1;
                    }
                }
            }
        }
        assert!(unchanged > 500, "{unchanged}");
        assert!(moved_by_earlier > 500, "{moved_by_earlier}");
    }

    #[test]
    fn schema_names_families_and_hash_agree_with_the_tables() {
        let s = schema();
        assert_eq!(s.len(), schema_len());
        let mut names = s.names().to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), s.len(), "duplicate feature names");
        // Families: each known, each with columns, in `Family::ALL` order.
        let order: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        let mut last = 0;
        for f in s.families() {
            let k = order.iter().position(|o| o == f).expect("a known family");
            assert!(k >= last, "{f} column after a later family's");
            last = k;
        }
        for f in &order {
            assert!(s.families().iter().any(|x| x == f), "{f} has no column");
        }
        // One column per entry of the public tables the extractors walk.
        let count = |prefix: &str| s.names().iter().filter(|n| n.starts_with(prefix)).count();
        assert_eq!(count("tactic:"), TACTICS.len());
        assert_eq!(
            count("distinct_present:"),
            crate::domain::ENTITY_COLUMNS.len()
        );
        assert_eq!(count("entity_type_rows:"), ENTITY_TYPES.len() + 1);
        assert_eq!(count("category_rows:"), CATEGORIES.len() + 1);
        assert!(s.index_of("tactic:lateral-movement").is_some());
        // Every grade-rate encoding has its three rates.
        let mut encodings = 0;
        for n in s.names() {
            if let Some(prefix) = n.strip_suffix(":tp_rate") {
                encodings += 1;
                for r in ["bp_rate", "fp_rate"] {
                    assert!(s.index_of(&format!("{prefix}:{r}")).is_some(), "{prefix}");
                }
            }
        }
        assert!(s.index_of("tenant_detector:tp_rate").is_some() && encodings > 1);
        // The hash follows the names and the version: another name or version, another hash.
        let columns: Vec<(String, String)> = s
            .names()
            .iter()
            .cloned()
            .zip(s.families().iter().cloned())
            .collect();
        assert_eq!(
            FeatureSchema::new(s.version(), columns.clone()).hash(),
            s.hash()
        );
        let mut renamed = columns.clone();
        renamed[0].0.push('2');
        assert_ne!(FeatureSchema::new(s.version(), renamed).hash(), s.hash());
        assert_ne!(
            FeatureSchema::new(s.version() + 1, columns).hash(),
            s.hash()
        );
    }
}
