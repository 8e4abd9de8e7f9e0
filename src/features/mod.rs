//! Features v1: one row of named numbers per candidate threat (incident).
//!
//! Third stage (`correlate → features → models`). Extractors read the incident's evidence and
//! fitted encoders and write into a [`FeatureMatrix`] row; the column list is fixed by code (not
//! by data), so the [`FeatureSchema`] and its hash identify this version of the extractors.
//! Families: `size`, `entities`, `category`, `kill_chain`, `time`, `verdicts`, `global`
//! (cross-tenant target encodings behind a minimum-tenant floor) and `tenant` (the tenant's own
//! grade history).
//!
//! Leakage: encoders are fitted only on labelled *training* incidents. The training matrix
//! itself is built out-of-fold ([`fit_transform`]): each training incident is encoded by tables
//! fitted on the other folds, so its own grade never reaches its own features. Scoring uses
//! tables fitted on all training incidents ([`FittedFeatures::transform`]).

mod encode;

pub use encode::{smooth, Counts, Table, TableBuilder};

use crate::correlate::{Correlated, Incident};
use crate::domain::{Evidence, N_ENTITY_COLUMNS};
use crate::matrix::{FeatureMatrix, FeatureSchema};
use crate::signals::{Attack, TACTICS};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the extractors; part of the schema hash.
pub const FEATURE_VERSION: u32 = 1;

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
}

/// Feature parameters (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureParams {
    /// Empirical-Bayes pseudo-count `m` of the target encodings. Default 2.0.
    pub smoothing: f64,
    /// Minimum distinct tenants behind a released cross-tenant aggregate. Default 5.
    pub min_tenants: usize,
    /// Folds of the out-of-fold encoding of the training matrix. Default 5.
    pub oof_folds: usize,
    /// Seed of the out-of-fold assignment. Default 7.
    pub seed: u64,
}

impl Default for FeatureParams {
    fn default() -> Self {
        Self {
            smoothing: 2.0,
            min_tenants: 5,
            oof_folds: 5,
            seed: 7,
        }
    }
}

impl FeatureParams {
    /// Sets [`FeatureParams::smoothing`] (default 2.0).
    pub fn smoothing(mut self, m: f64) -> Self {
        self.smoothing = m;
        self
    }
    /// Sets [`FeatureParams::min_tenants`] (default 5).
    pub fn min_tenants(mut self, k: usize) -> Self {
        self.min_tenants = k;
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
        if self.min_tenants < 1 {
            return Err(FeatureError::Param {
                name: "min_tenants",
                reason: "must be at least 1".into(),
            });
        }
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

/// Fitted encoders: everything the extractors need besides the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedFeatures {
    params: FeatureParams,
    /// global grade prior (incident shares)
    prior: [f64; 3],
    /// per entity column, the "not present" code (most frequent code when it covers ≥ 20% rows)
    sentinels: [Option<u64>; N_ENTITY_COLUMNS],
    /// cross-tenant tables, in [`ENCODED_KINDS`] order (privacy floor applied)
    global: Vec<Table>,
    /// tenant grade history, key = tenant id
    tenant: Table,
    /// tenant × detector / title / category, key = `tenant/value`
    tenant_keyed: Vec<Table>,
    /// cross-tenant entity table, key = `column/code` (privacy floor applied)
    entity_global: Table,
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
            let dummy = FittedFeatures::empty();
            let ev = dummy_evidence();
            // Column names do not depend on the knowledge tables: an empty one will do.
            dummy.extract(&[&ev], &Attack::empty(), &mut s);
            FeatureSchema::new(FEATURE_VERSION, s.0)
        })
        .clone()
}

fn dummy_evidence() -> Evidence {
    Evidence {
        record: 0,
        id: 0,
        tenant: crate::domain::TenantId(0),
        incident: crate::domain::IncidentId(0),
        incident_given: true,
        alert: crate::domain::AlertId(0),
        timestamp: 0,
        detector: String::new(),
        title: String::new(),
        category: String::new(),
        techniques: Vec::new(),
        grade: None,
        entity_type: String::new(),
        impacted: false,
        entities: Default::default(),
        suspicion_level: None,
        last_verdict: None,
        threat_family: None,
        antispam_direction: None,
        roles: None,
        severity: None,
    }
}

/// Receives feature values (and, for the schema, their names) in column order.
trait Sink {
    fn put(&mut self, family: &'static str, name: &str, suffix: &str, v: f64);
}

struct NameSink(Vec<(String, String)>);

impl Sink for NameSink {
    fn put(&mut self, family: &'static str, name: &str, suffix: &str, _v: f64) {
        let n = if suffix.is_empty() {
            name.to_string()
        } else {
            format!("{name}:{suffix}")
        };
        self.0.push((n, family.to_string()));
    }
}

struct RowSink<'a> {
    out: &'a mut [f32],
    i: usize,
}

impl Sink for RowSink<'_> {
    #[inline]
    fn put(&mut self, _family: &'static str, _name: &str, _suffix: &str, v: f64) {
        if let Some(slot) = self.out.get_mut(self.i) {
            *slot = if v.is_finite() { v as f32 } else { 0.0 };
        }
        self.i += 1;
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

/// Key of a tenant-scoped table.
fn tenant_key(tenant: u64, value: &str) -> String {
    format!("{tenant}/{value}")
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

impl FittedFeatures {
    fn empty() -> Self {
        Self {
            params: FeatureParams::default(),
            prior: [1.0 / 3.0; 3],
            sentinels: [None; N_ENTITY_COLUMNS],
            global: vec![Table::default(); ENCODED_KINDS.len()],
            tenant: Table::default(),
            tenant_keyed: vec![Table::default(); 3],
            entity_global: Table::default(),
            entity_tenant: Table::default(),
        }
    }

    /// Fits encoders on the labelled incidents listed in `train` (indices into
    /// `corr.incidents`).
    pub fn fit(
        params: &FeatureValidParams,
        evidence: &[Evidence],
        corr: &Correlated,
        train: &[usize],
    ) -> Result<Self, FeatureError> {
        let sentinels = learn_sentinels(evidence, corr, train);
        Self::fit_with_sentinels(params, evidence, corr, train, sentinels)
    }

    fn fit_with_sentinels(
        params: &FeatureValidParams,
        evidence: &[Evidence],
        corr: &Correlated,
        train: &[usize],
        sentinels: [Option<u64>; N_ENTITY_COLUMNS],
    ) -> Result<Self, FeatureError> {
        let p = params.get().clone();
        let mut entity_global = TableBuilder::default();
        let mut entity_tenant = TableBuilder::default();
        let mut prior_n = [0u32; 3];
        let mut global: Vec<TableBuilder> = (0..ENCODED_KINDS.len())
            .map(|_| TableBuilder::default())
            .collect();
        let mut tenant = TableBuilder::default();
        let mut keyed: Vec<TableBuilder> = (0..3).map(|_| TableBuilder::default()).collect();
        for &i in train {
            let inc = &corr.incidents[i];
            let Some(g) = inc.grade else { continue };
            let class = g.class_id();
            let t = inc.key.tenant.0;
            prior_n[class as usize] += 1;
            let rows: Vec<&Evidence> = inc
                .evidence
                .iter()
                .map(|&r| &evidence[r as usize])
                .collect();
            for key in entity_keys(&rows, &sentinels) {
                entity_global.add(&key, t, class);
                entity_tenant.add(&tenant_key(t, &key), t, class);
            }
            tenant.add(&t.to_string(), t, class);
            for (k, b) in global.iter_mut().enumerate() {
                for v in identities(&rows, k) {
                    b.add(v, t, class);
                    if k < 3 {
                        keyed[k].add(&tenant_key(t, v), t, class);
                    }
                }
            }
        }
        let total: u32 = prior_n.iter().sum();
        if total == 0 {
            return Err(FeatureError::NoLabels);
        }
        let prior = [0, 1, 2].map(|c| f64::from(prior_n[c]) / f64::from(total));
        Ok(Self {
            prior,
            sentinels,
            global: global
                .into_iter()
                .map(|b| b.build_global(p.min_tenants))
                .collect(),
            tenant: tenant.build_tenant(),
            tenant_keyed: keyed.into_iter().map(TableBuilder::build_tenant).collect(),
            entity_global: entity_global.build_global(p.min_tenants),
            entity_tenant: entity_tenant.build_tenant(),
            params: p,
        })
    }

    /// The parameters these encoders were fitted with.
    pub fn params(&self) -> &FeatureParams {
        &self.params
    }

    /// Global grade prior (TP, BP, FP shares of training incidents).
    pub fn prior(&self) -> [f64; 3] {
        self.prior
    }

    /// Cross-tenant table of a kind in [`ENCODED_KINDS`] (after the privacy floor).
    pub fn global_table(&self, kind: usize) -> Option<&Table> {
        self.global.get(kind)
    }

    /// Feature rows for the incidents `which` (indices into `corr.incidents`), in that order.
    pub fn transform(
        &self,
        evidence: &[Evidence],
        corr: &Correlated,
        which: &[usize],
        attack: &Attack,
    ) -> FeatureMatrix {
        let width = schema_len();
        let mut data = vec![0f32; which.len() * width];
        data.par_chunks_mut(width.max(1))
            .zip(which.par_iter())
            .with_min_len(64)
            .for_each(|(row, &i)| {
                let inc = &corr.incidents[i];
                let rows: Vec<&Evidence> = inc
                    .evidence
                    .iter()
                    .map(|&r| &evidence[r as usize])
                    .collect();
                self.extract(&rows, attack, &mut RowSink { out: row, i: 0 });
            });
        FeatureMatrix::from_vec(which.len(), width, data)
            .unwrap_or_else(|_| FeatureMatrix::with_columns(width))
    }

    /// Writes one incident's features. `rows` is non-empty and from one tenant.
    fn extract<S: Sink>(&self, rows: &[&Evidence], attack: &Attack, s: &mut S) {
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
        s.put("size", "log_evidence", "", ln1p(rows.len()));
        s.put("size", "log_alerts", "", ln1p(alerts.len()));
        s.put(
            "size",
            "distinct_entity_types",
            "",
            distinct(&|e| &e.entity_type) as f64,
        );
        s.put(
            "size",
            "distinct_detectors",
            "",
            distinct(&|e| &e.detector) as f64,
        );
        s.put(
            "size",
            "distinct_titles",
            "",
            distinct(&|e| &e.title) as f64,
        );
        s.put(
            "size",
            "distinct_categories",
            "",
            distinct(&|e| &e.category) as f64,
        );
        let impacted = rows.iter().filter(|e| e.impacted).count();
        s.put("size", "share_impacted", "", impacted as f64 / nf);

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
            s.put("entities", "entity_type_rows", name, ln1p(type_counts[k]));
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
            s.put("entities", "distinct_present", col, ln1p(codes.len()));
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
            s.put("category", "category_rows", name, ln1p(cat_counts[k]));
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
                "kill_chain",
                "tactic",
                name,
                f64::from(u8::from(mask & (1 << b) != 0)),
            );
        }
        s.put(
            "kill_chain",
            "tactics_covered",
            "",
            f64::from(mask.count_ones()),
        );
        let furthest = (0..TACTICS.len())
            .rev()
            .find(|b| mask & (1 << b) != 0)
            .map_or(0, |b| b + 1);
        s.put("kill_chain", "furthest_stage", "", furthest as f64);
        s.put("kill_chain", "log_techniques", "", ln1p(techniques.len()));
        let with_tech = rows.iter().filter(|e| !e.techniques.is_empty()).count();
        s.put(
            "kill_chain",
            "share_rows_with_techniques",
            "",
            with_tech as f64 / nf,
        );

        // --- time
        let first = rows.iter().map(|e| e.timestamp).min().unwrap_or(0);
        let last = rows.iter().map(|e| e.timestamp).max().unwrap_or(0);
        s.put(
            "time",
            "log_span_seconds",
            "",
            ((last - first).max(0) as f64).ln_1p(),
        );
        let hour = (first.rem_euclid(86_400) as f64) / 3600.0;
        let angle = hour / 24.0 * std::f64::consts::TAU;
        s.put("time", "hour_sin", "", angle.sin());
        s.put("time", "hour_cos", "", angle.cos());
        // 1970-01-01 was a Thursday: day 0 → weekday 3 (Mon = 0).
        let weekday = (first.div_euclid(86_400) + 3).rem_euclid(7);
        s.put("time", "weekend", "", f64::from(u8::from(weekday >= 5)));

        // --- verdict-like evidence attributes
        let share =
            |f: &dyn Fn(&Evidence) -> bool| rows.iter().filter(|e| f(e)).count() as f64 / nf;
        s.put(
            "verdicts",
            "share_suspicion_level",
            "",
            share(&|e| e.suspicion_level.is_some()),
        );
        for v in ["Malicious", "Suspicious", "NoThreatsFound"] {
            s.put(
                "verdicts",
                "share_last_verdict",
                v,
                share(&|e| e.last_verdict.as_deref() == Some(v)),
            );
        }
        s.put(
            "verdicts",
            "share_threat_family",
            "",
            share(&|e| e.threat_family.is_some()),
        );
        for v in ["Inbound", "Intraorg", "Outbound"] {
            s.put(
                "verdicts",
                "share_antispam",
                v,
                share(&|e| e.antispam_direction.as_deref() == Some(v)),
            );
        }
        s.put("verdicts", "share_roles", "", share(&|e| e.roles.is_some()));
        let sev = rows
            .iter()
            .filter_map(|e| e.severity)
            .map(|v| f64::from(v.rank()) + 1.0)
            .fold(0.0, f64::max);
        s.put("verdicts", "max_severity", "", sev);

        // --- cross-tenant encodings (privacy floor applied at fit time)
        let ids: Vec<Vec<&str>> = (0..3).map(|k| identities(rows, k)).collect();
        for (k, kind) in ENCODED_KINDS.iter().enumerate() {
            let values = if k == 3 { &techniques } else { &ids[k] };
            self.put_encoding(s, "global", kind, &self.global[k], values, self.prior);
        }
        let entities = entity_keys(rows, &self.sentinels);
        let entity_refs: Vec<&str> = entities.iter().map(String::as_str).collect();
        self.put_encoding(
            s,
            "global",
            "entity",
            &self.entity_global,
            &entity_refs,
            self.prior,
        );

        // --- the tenant's own history (smoothed toward the global prior, and tenant × key
        // toward the tenant's own rates)
        let (t_rates, t_support) =
            self.tenant
                .rates(&tenant.to_string(), self.prior, self.params.smoothing);
        for (c, g) in RATE_NAMES.iter().enumerate() {
            s.put("tenant", "tenant", g, t_rates[c]);
        }
        s.put("tenant", "tenant", "log_support", ln1p(t_support as usize));
        let keyed = [
            ("tenant_detector", &ids[0]),
            ("tenant_title", &ids[1]),
            ("tenant_category", &ids[2]),
        ];
        for (k, (name, values)) in keyed.into_iter().enumerate() {
            let keys: Vec<String> = values.iter().map(|v| tenant_key(tenant, v)).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            self.put_encoding(s, "tenant", name, &self.tenant_keyed[k], &keys, t_rates);
        }
        let keys: Vec<String> = entities.iter().map(|v| tenant_key(tenant, v)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.put_encoding(
            s,
            "tenant",
            "tenant_entity",
            &self.entity_tenant,
            &keys,
            t_rates,
        );
    }

    /// Writes one target encoding: the three smoothed rates, log support, then for the `global`
    /// family log tenants and the share of values released, for the `tenant` family the share
    /// seen before.
    fn put_encoding<S: Sink>(
        &self,
        s: &mut S,
        family: &'static str,
        name: &str,
        table: &Table,
        values: &[&str],
        parent: [f64; 3],
    ) {
        let global = family == "global";
        let (rates, support, tenants, known) =
            self.mean_rates(table, values, parent, self.params.smoothing);
        for (c, g) in RATE_NAMES.iter().enumerate() {
            s.put(family, name, g, rates[c]);
        }
        s.put(family, name, "log_support", support);
        if global {
            s.put(family, name, "log_tenants", tenants);
            s.put(family, name, "share_released", known);
        } else {
            s.put(family, name, "share_seen", known);
        }
    }

    /// Mean smoothed rates over `values`, log1p of summed support, log1p of max tenants and the
    /// share of values found in the table. No value → parent, 0, 0, 0.
    fn mean_rates(
        &self,
        table: &Table,
        values: &[&str],
        parent: [f64; 3],
        m: f64,
    ) -> ([f64; 3], f64, f64, f64) {
        if values.is_empty() {
            return (parent, 0.0, 0.0, 0.0);
        }
        let mut acc = [0.0; 3];
        let mut support = 0u64;
        let mut tenants = 0u32;
        let mut known = 0usize;
        for v in values {
            let (r, n) = table.rates(v, parent, m);
            for c in 0..3 {
                acc[c] += r[c];
            }
            support += u64::from(n);
            if n > 0 {
                known += 1;
                tenants = tenants.max(table.entries.get(*v).map_or(0, |c| c.tenants));
            }
        }
        let k = values.len() as f64;
        (
            acc.map(|a| a / k),
            (support as f64).ln_1p(),
            f64::from(tenants).ln_1p(),
            known as f64 / k,
        )
    }
}

/// Suffixes of the three grade-rate columns of an encoding.
const RATE_NAMES: [&str; 3] = ["tp_rate", "bp_rate", "fp_rate"];

/// Width of the v1 schema.
pub fn schema_len() -> usize {
    static LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| schema().len())
}

/// Out-of-fold fold of a training incident (deterministic in seed and key).
fn oof_fold(inc: &Incident, p: &FeatureParams) -> usize {
    let t = crate::rng::mix64(p.seed ^ crate::rng::mix64(inc.key.tenant.0));
    let z = crate::rng::mix64(
        t ^ crate::rng::mix64(inc.key.incident.0.wrapping_add(0x5851_F42D_4C95_7F2D)),
    );
    (z % p.oof_folds as u64) as usize
}

/// The training matrix, built out-of-fold, and the encoders fitted on all of `train`.
///
/// Returns `(encoders, matrix, labels)`, rows in the order of the labelled incidents of `train`
/// (unlabelled ones are skipped; the returned index list says which incident each row is).
pub fn fit_transform(
    params: &FeatureValidParams,
    evidence: &[Evidence],
    corr: &Correlated,
    train: &[usize],
    attack: &Attack,
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
    let full = FittedFeatures::fit(params, evidence, corr, &labelled)?;
    let width = schema_len();
    let mut x = FeatureMatrix::from_vec(labelled.len(), width, vec![0.0; labelled.len() * width])
        .unwrap_or_else(|_| FeatureMatrix::with_columns(width));
    let fold_of: Vec<usize> = labelled
        .iter()
        .map(|&i| oof_fold(&corr.incidents[i], p))
        .collect();
    for f in 0..p.oof_folds {
        let fit_on: Vec<usize> = labelled
            .iter()
            .zip(&fold_of)
            .filter(|(_, &k)| k != f)
            .map(|(&i, _)| i)
            .collect();
        let pos: Vec<usize> = (0..labelled.len()).filter(|&j| fold_of[j] == f).collect();
        if pos.is_empty() {
            continue;
        }
        let enc = if fit_on.is_empty() {
            let mut e = FittedFeatures::empty();
            e.params = p.clone();
            e.prior = full.prior;
            e.sentinels = full.sentinels;
            e
        } else {
            // Sentinels describe the export format, not labels: use the full-data ones.
            FittedFeatures::fit_with_sentinels(params, evidence, corr, &fit_on, full.sentinels)?
        };
        let which: Vec<usize> = pos.iter().map(|&j| labelled[j]).collect();
        let part = enc.transform(evidence, corr, &which, attack);
        for (r, &j) in pos.iter().enumerate() {
            x.row_mut(j).copy_from_slice(part.row(r));
        }
    }
    let y: Vec<u8> = labelled
        .iter()
        .map(|&i| corr.incidents[i].grade.map_or(0, |g| g.class_id()))
        .collect();
    Ok((full, x, y, labelled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_stable_and_named() {
        let s = schema();
        assert_eq!(s.len(), schema_len());
        assert_eq!(s, schema());
        let mut names = s.names().to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), s.len(), "duplicate feature names");
        assert!(s.index_of("tenant_detector:tp_rate").is_some());
        assert!(s.index_of("tactic:lateral-movement").is_some());
    }
}
