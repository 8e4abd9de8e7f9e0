//! Global signals: what a detector, alert title, category, ATT&CK technique, threat family or
//! entity has meant across *many* tenants, released without revealing any one of them.
//!
//! A [`GlobalSignals`] snapshot is built by a [`SnapshotBuilder`] from many tenants' incidents
//! and verdicts, and read by the `global` feature family. Per key it holds how many distinct
//! tenants saw it, how often (incidents, alerts), and the grade mix of the verdicts. The privacy
//! rules are part of the types:
//!
//! - **Floor.** A key is released only when at least `k` distinct tenants contribute
//!   ([`SignalsParams::min_tenants`], default 5); below it the key is absent from the snapshot
//!   ("unknown"), never a small count. The floor also applies to *each* released statistic: a
//!   grade count is released only when `k` tenants gave that grade, so every released count is a
//!   sum over at least `k` tenants that each contributed at least one, and is therefore strictly
//!   larger than any single tenant's own count. The floor uses exact tenant counts: it is
//!   k-anonymity, not differential privacy.
//! - **No tenant ids.** The builder takes tenant ids only to count distinct tenants, and only
//!   through a keyed pseudonym; the snapshot stores no tenant id and no per-tenant value (a test
//!   rebuilds it with every tenant id changed and gets the same bytes). Tenant-side identifiers
//!   (entities: device, account, file hash, IP, URL, mailbox codes) are stored only as
//!   HMAC-SHA256 pseudonyms under a secret [`PseudonymKey`]; product-side vocabulary (detector,
//!   title, category, technique, threat family) is stored in clear. The snapshot records the
//!   key's fingerprint (an HMAC of a fixed label, which does not reveal the key) so that scoring
//!   with another key is an error, not a silent miss.
//! - **Noise (optional).** With `epsilon = Some(ε)`, every released value gets Laplace noise:
//!   scale `1/ε` on the tenant count, `cap/ε` on incident, alert and grade counts, where each
//!   tenant's contribution to a key is clipped to `cap` ([`SignalsParams::contribution_cap`]).
//!   Each released statistic is then ε-differentially private with respect to adding or
//!   removing one tenant, *given* the key's release (the floor decision itself is exact); the
//!   snapshot as a whole composes these (many statistics ⇒ a larger total ε, by sequential
//!   composition). Noise is drawn from a generator keyed by the secret and the statistic, so a
//!   rebuild on the same data gives the same snapshot (no averaging attack across rebuilds) and
//!   nobody without the key can subtract it. Released values are clamped at 0.

use crate::domain::{Grade, TenantId};
use crate::keymap::KeyMap;
use crate::rng::SplitMix64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the snapshot file format; [`GlobalSignals::load`] refuses others.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// What a released key identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// the detector (GUIDE `DetectorId`)
    Detector,
    /// the alert title
    Title,
    /// the alert category
    Category,
    /// an ATT&CK technique
    Technique,
    /// the threat family named by the antimalware engine
    Family,
    /// a tenant-side entity (`column/code`): stored as a keyed pseudonym
    Entity,
}

impl SignalKind {
    /// All kinds, in feature order.
    pub const ALL: [SignalKind; 6] = [
        SignalKind::Detector,
        SignalKind::Title,
        SignalKind::Category,
        SignalKind::Technique,
        SignalKind::Family,
        SignalKind::Entity,
    ];

    /// Lower-case name (feature names, file keys).
    pub fn name(self) -> &'static str {
        match self {
            SignalKind::Detector => "detector",
            SignalKind::Title => "title",
            SignalKind::Category => "category",
            SignalKind::Technique => "technique",
            SignalKind::Family => "family",
            SignalKind::Entity => "entity",
        }
    }

    /// True for kinds whose values identify something of one tenant (pseudonymized).
    pub fn is_tenant_side(self) -> bool {
        matches!(self, SignalKind::Entity)
    }
}

/// Errors of the global signals.
#[derive(Debug, thiserror::Error)]
pub enum GlobalSignalsError {
    /// A parameter is out of range.
    #[error("invalid signals parameter `{name}`: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// The pseudonymization secret is unusable.
    #[error("signals key: {0}")]
    Key(String),
    /// A snapshot file could not be read or written, or is not a snapshot.
    #[error("{file}: not a usable global-signals snapshot: {reason}")]
    File {
        /// path
        file: String,
        /// what is wrong
        reason: String,
    },
    /// The snapshot was built under another pseudonymization key.
    #[error("global-signals snapshot was built with key {snapshot}, but the configured key is {configured}: entity pseudonyms would never match; configure the snapshot's key (THREATRANK_SIGNALS_KEY_FILE or --signals-key) or rebuild the snapshot")]
    KeyMismatch {
        /// fingerprint in the snapshot
        snapshot: String,
        /// fingerprint of the configured key
        configured: String,
    },
}

/// Parameters of a snapshot (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsParams {
    /// Minimum distinct tenants behind a released key and behind each released count (≥ 2).
    /// Default 5.
    pub min_tenants: usize,
    /// Laplace noise budget ε per released statistic; `None` = no noise. Default `None`.
    pub epsilon: Option<f64>,
    /// With noise: each tenant's contribution to one key's counts is clipped to this (the
    /// sensitivity of those counts). Default 50.
    pub contribution_cap: u32,
}

impl Default for SignalsParams {
    fn default() -> Self {
        Self {
            min_tenants: 5,
            epsilon: None,
            contribution_cap: 50,
        }
    }
}

impl SignalsParams {
    /// Sets [`SignalsParams::min_tenants`] (default 5).
    pub fn min_tenants(mut self, k: usize) -> Self {
        self.min_tenants = k;
        self
    }
    /// Sets [`SignalsParams::epsilon`] (default none).
    pub fn epsilon(mut self, eps: Option<f64>) -> Self {
        self.epsilon = eps;
        self
    }
    /// Sets [`SignalsParams::contribution_cap`] (default 50).
    pub fn contribution_cap(mut self, cap: u32) -> Self {
        self.contribution_cap = cap;
        self
    }
    /// Checks ranges: a floor of 1 would release single-tenant counts, so `min_tenants ≥ 2`.
    pub fn check(&self) -> Result<SignalsValidParams, GlobalSignalsError> {
        if self.min_tenants < 2 {
            return Err(GlobalSignalsError::Param {
                name: "min_tenants",
                reason: format!(
                    "{} would release one tenant's own counts; use at least 2",
                    self.min_tenants
                ),
            });
        }
        if let Some(e) = self.epsilon {
            if !(e.is_finite() && e > 0.0) {
                return Err(GlobalSignalsError::Param {
                    name: "epsilon",
                    reason: format!("{e} must be a positive number"),
                });
            }
        }
        if self.contribution_cap == 0 {
            return Err(GlobalSignalsError::Param {
                name: "contribution_cap",
                reason: "must be at least 1".into(),
            });
        }
        Ok(SignalsValidParams(self.clone()))
    }
}

/// Checked [`SignalsParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct SignalsValidParams(SignalsParams);

impl SignalsValidParams {
    /// The checked values.
    pub fn get(&self) -> &SignalsParams {
        &self.0
    }
}

/// The secret behind the keyed pseudonyms (HMAC-SHA256). Never serialized; `Debug` shows only
/// its fingerprint.
#[derive(Clone)]
pub struct PseudonymKey {
    /// HMAC state with the secret already absorbed (cloned per message: saves hashing the key
    /// pads on every pseudonym)
    keyed: Hmac<Sha256>,
    development: bool,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PseudonymKey({})", self.fingerprint())
    }
}

/// HMAC-SHA256 state keyed with `secret`.
fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for HMAC.
    <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// The development key's secret: public, for demos and tests only.
const DEVELOPMENT_SECRET: &[u8] = b"threatrank development key: not a secret, never for production";

impl PseudonymKey {
    /// Shortest accepted secret, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A key from secret bytes (at least [`PseudonymKey::MIN_LEN`]).
    pub fn new(secret: &[u8]) -> Result<Self, GlobalSignalsError> {
        if secret.len() < Self::MIN_LEN {
            return Err(GlobalSignalsError::Key(format!(
                "the secret has {} bytes; use at least {} random bytes (e.g. `head -c 32 /dev/urandom | base64`)",
                secret.len(),
                Self::MIN_LEN
            )));
        }
        Ok(Self {
            keyed: keyed(secret),
            development: false,
        })
    }

    /// A key read from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, GlobalSignalsError> {
        let bytes = std::fs::read(path).map_err(|e| {
            GlobalSignalsError::Key(format!("{}: cannot read the secret: {e}", path.display()))
        })?;
        let text = bytes.trim_ascii();
        Self::new(text).map_err(|e| GlobalSignalsError::Key(format!("{}: {e}", path.display())))
    }

    /// The public development key, for demos and tests: pseudonyms under it protect nothing.
    pub fn development() -> Self {
        Self {
            keyed: keyed(DEVELOPMENT_SECRET),
            development: true,
        }
    }

    /// True for [`PseudonymKey::development`].
    pub fn is_development(&self) -> bool {
        self.development
    }

    fn mac(&self, domain: &str, value: &[u8]) -> [u8; 32] {
        let mut m = self.keyed.clone();
        m.update(domain.as_bytes());
        m.update(&[0]);
        m.update(value);
        m.finalize().into_bytes().into()
    }

    fn mac_u64(&self, domain: &str, value: &[u8]) -> u64 {
        let d = self.mac(domain, value);
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// Pseudonym of a value of `kind`: 128 bits of HMAC-SHA256, hex.
    pub fn pseudonym(&self, kind: SignalKind, value: &str) -> String {
        crate::matrix::hex(&self.mac(kind.name(), value.as_bytes())[..16])
    }

    /// [`PseudonymKey::pseudonym`] written into `out` (no allocation: the lookup path).
    fn pseudonym_into<'a>(&self, kind: SignalKind, value: &str, out: &'a mut [u8; 32]) -> &'a str {
        crate::matrix::hex_into(&self.mac(kind.name(), value.as_bytes())[..16], out)
    }

    /// A tenant's pseudonym (used only to count distinct tenants; never stored).
    fn tenant(&self, t: TenantId) -> u64 {
        self.mac_u64("tenant", &t.0.to_le_bytes())
    }

    /// Public fingerprint: 64 bits of the HMAC of a fixed label (reveals nothing of the key).
    pub fn fingerprint(&self) -> String {
        crate::matrix::hex(&self.mac("threatrank/fingerprint", b"")[..8])
    }

    /// Laplace(0, scale) noise for one statistic, from a generator keyed by the secret.
    fn laplace(&self, kind: SignalKind, key: &str, stat: &str, scale: f64) -> f64 {
        let label = format!("{}\u{0}{key}\u{0}{stat}", kind.name());
        let mut g = SplitMix64(self.mac_u64("noise", label.as_bytes()));
        // u ∈ (-1/2, 1/2), never ±1/2: inverse CDF of the Laplace distribution.
        let u: f64 = g.unit() - 0.5;
        let u = u.clamp(-0.5 + f64::EPSILON, 0.5 - f64::EPSILON);
        -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }
}

/// One tenant's contribution to one key.
#[derive(Debug, Clone, Copy, Default)]
struct Contribution {
    incidents: u32,
    alerts: u32,
    grades: [u32; 3],
}

/// Released statistics of one key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Released {
    /// distinct tenants that saw the key (≥ the floor; noisy with ε)
    pub tenants: f64,
    /// incidents holding the key
    pub incidents: f64,
    /// alerts carrying the key
    pub alerts: f64,
    /// graded incidents per grade (TP, BP, FP); `None` when fewer than `min_tenants` tenants
    /// gave that grade
    pub grades: [Option<f64>; 3],
}

impl Released {
    /// Grade counts with unknown ones as 0.
    pub fn grade_counts(&self) -> [f64; 3] {
        self.grades.map(|g| g.unwrap_or(0.0).max(0.0))
    }

    /// Grade rates smoothed toward `parent` with pseudo-count `m` (empirical Bayes):
    /// `(n_c + m·parent_c) / (n + m)` over the released grade counts.
    pub fn rates(&self, parent: [f64; 3], m: f64) -> [f64; 3] {
        let n = self.grade_counts();
        let total: f64 = n.iter().sum();
        [0, 1, 2].map(|c| (n[c] + m * parent[c]) / (total + m))
    }
}

/// Collects observations and releases a [`GlobalSignals`] snapshot.
#[derive(Debug)]
pub struct SnapshotBuilder<'k> {
    params: SignalsParams,
    key: &'k PseudonymKey,
    /// (kind, stored key) → tenant pseudonym → contribution
    stats: BTreeMap<(SignalKind, String), BTreeMap<u64, Contribution>>,
}

impl<'k> SnapshotBuilder<'k> {
    /// An empty builder.
    pub fn new(params: &SignalsValidParams, key: &'k PseudonymKey) -> Self {
        Self {
            params: params.get().clone(),
            key,
            stats: BTreeMap::new(),
        }
    }

    /// Records that one incident of `tenant` holds `value` of `kind` on `alerts` of its alerts
    /// (at least 1), with the incident's grade when it has one. Call once per distinct value per
    /// incident. Tenant-side values are pseudonymized here, before aggregation.
    pub fn observe(
        &mut self,
        tenant: TenantId,
        kind: SignalKind,
        value: &str,
        alerts: u32,
        grade: Option<Grade>,
    ) {
        let stored = if kind.is_tenant_side() {
            self.key.pseudonym(kind, value)
        } else {
            value.to_string()
        };
        let t = self.key.tenant(tenant);
        let c = self
            .stats
            .entry((kind, stored))
            .or_default()
            .entry(t)
            .or_default();
        c.incidents += 1;
        c.alerts += alerts.max(1);
        if let Some(g) = grade {
            c.grades[g.class_id() as usize] += 1;
        }
    }

    /// Applies the floor (and the noise) and returns the snapshot.
    pub fn build(self) -> GlobalSignals {
        let p = &self.params;
        let k = p.min_tenants;
        let mut tables: BTreeMap<SignalKind, KeyMap<Released>> = BTreeMap::new();
        for ((kind, key), by_tenant) in self.stats {
            if by_tenant.len() < k {
                continue;
            }
            let noise = |stat: &str, value: f64, scale: f64| match p.epsilon {
                Some(eps) => (value + self.key.laplace(kind, &key, stat, scale / eps)).max(0.0),
                None => value,
            };
            let cap = if p.epsilon.is_some() {
                p.contribution_cap
            } else {
                u32::MAX
            };
            let sum = |f: &dyn Fn(&Contribution) -> u32| -> f64 {
                by_tenant.values().map(|c| f64::from(f(c).min(cap))).sum()
            };
            let scale = f64::from(p.contribution_cap);
            let grades = [0, 1, 2].map(|g| {
                let givers = by_tenant.values().filter(|c| c.grades[g] > 0).count();
                (givers >= k).then(|| {
                    noise(
                        ["tp", "bp", "fp"][g],
                        sum(&|c: &Contribution| c.grades[g]),
                        scale,
                    )
                })
            });
            let released = Released {
                tenants: noise("tenants", by_tenant.len() as f64, 1.0),
                incidents: noise("incidents", sum(&|c: &Contribution| c.incidents), scale),
                alerts: noise("alerts", sum(&|c: &Contribution| c.alerts), scale),
                grades,
            };
            tables.entry(kind).or_default().insert(key, released);
        }
        GlobalSignals {
            format: SNAPSHOT_FORMAT,
            params: self.params,
            key_fingerprint: self.key.fingerprint(),
            tables,
        }
    }
}

/// A released snapshot of cross-tenant aggregates (see the module docs for what it may hold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSignals {
    format: u32,
    params: SignalsParams,
    key_fingerprint: String,
    tables: BTreeMap<SignalKind, KeyMap<Released>>,
}

impl GlobalSignals {
    /// A snapshot that releases nothing (every key unknown).
    pub fn empty(params: &SignalsValidParams, key: &PseudonymKey) -> Self {
        SnapshotBuilder::new(params, key).build()
    }

    /// The released statistics of a stored key (`value` already pseudonymized for tenant-side
    /// kinds: see [`GlobalSignals::lookup`]), `None` when below the floor or never seen.
    pub fn get(&self, kind: SignalKind, stored: &str) -> Option<&Released> {
        self.tables.get(&kind).and_then(|t| t.get(stored))
    }

    /// The released statistics of a raw value (pseudonymized with `key` for tenant-side kinds).
    pub fn lookup(&self, kind: SignalKind, value: &str, key: &PseudonymKey) -> Option<&Released> {
        if kind.is_tenant_side() {
            let mut buf = [0u8; 32];
            self.get(kind, key.pseudonym_into(kind, value, &mut buf))
        } else {
            self.get(kind, value)
        }
    }

    /// Number of released keys of a kind.
    pub fn released(&self, kind: SignalKind) -> usize {
        self.tables.get(&kind).map_or(0, KeyMap::len)
    }

    /// The parameters the snapshot was built with.
    pub fn params(&self) -> &SignalsParams {
        &self.params
    }

    /// Fingerprint of the key the snapshot was built with.
    pub fn key_fingerprint(&self) -> &str {
        &self.key_fingerprint
    }

    /// Errors unless `key` is the key this snapshot was built with.
    pub fn check_key(&self, key: &PseudonymKey) -> Result<(), GlobalSignalsError> {
        let configured = key.fingerprint();
        if configured != self.key_fingerprint {
            return Err(GlobalSignalsError::KeyMismatch {
                snapshot: self.key_fingerprint.clone(),
                configured,
            });
        }
        Ok(())
    }

    /// Writes the snapshot as JSON (gzip when the path ends in `.gz`).
    pub fn save(&self, path: &Path) -> Result<(), GlobalSignalsError> {
        crate::jsonfile::write(path, self).map_err(|e| GlobalSignalsError::File {
            file: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads a snapshot, refusing another format version.
    pub fn load(path: &Path) -> Result<Self, GlobalSignalsError> {
        let file = path.display().to_string();
        let err = |reason: String| GlobalSignalsError::File {
            file: file.clone(),
            reason,
        };
        let json = crate::jsonfile::read(path).map_err(|e| err(e.to_string()))?;
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(&json).map_err(|e| err(e.to_string()))?;
        if head.format != SNAPSHOT_FORMAT {
            return Err(err(format!(
                "format version {}, this build reads version {SNAPSHOT_FORMAT}; rebuild it with `threatrank signals build`",
                head.format
            )));
        }
        serde_json::from_slice(&json).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(k: usize) -> SignalsValidParams {
        SignalsParams::default().min_tenants(k).check().unwrap()
    }

    #[test]
    fn params_are_checked() {
        assert!(SignalsParams::default().min_tenants(1).check().is_err());
        assert!(SignalsParams::default().epsilon(Some(0.0)).check().is_err());
        assert!(SignalsParams::default()
            .epsilon(Some(f64::NAN))
            .check()
            .is_err());
        assert!(SignalsParams::default()
            .contribution_cap(0)
            .check()
            .is_err());
        assert!(SignalsParams::default().epsilon(Some(1.0)).check().is_ok());
        assert!(PseudonymKey::new(b"short").is_err());
    }

    #[test]
    fn floor_applies_to_keys_and_to_each_grade_count() {
        let key = PseudonymKey::development();
        let mut b = SnapshotBuilder::new(&params(3), &key);
        for t in 0..3 {
            b.observe(
                TenantId(t),
                SignalKind::Detector,
                "d1",
                2,
                Some(Grade::BenignPositive),
            );
        }
        b.observe(
            TenantId(0),
            SignalKind::Detector,
            "d1",
            1,
            Some(Grade::TruePositive),
        );
        for t in 0..2 {
            b.observe(
                TenantId(t),
                SignalKind::Detector,
                "rare",
                1,
                Some(Grade::TruePositive),
            );
        }
        let s = b.build();
        let r = s.get(SignalKind::Detector, "d1").unwrap();
        assert_eq!(r.tenants, 3.0);
        assert_eq!(r.incidents, 4.0);
        assert_eq!(r.alerts, 7.0);
        assert_eq!(r.grades, [None, Some(3.0), None]);
        assert!(s.get(SignalKind::Detector, "rare").is_none());
        assert_eq!(s.released(SignalKind::Detector), 1);
        // rates from released counts only, smoothed toward the parent
        let rates = r.rates([0.5, 0.25, 0.25], 1.0);
        assert!((rates[1] - 3.25 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn entities_are_pseudonymized_and_keys_checked() {
        let key = PseudonymKey::new(b"0123456789abcdef-secret").unwrap();
        let mut b = SnapshotBuilder::new(&params(2), &key);
        for t in 0..2 {
            b.observe(TenantId(t), SignalKind::Entity, "3/12345", 1, None);
        }
        let s = b.build();
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("12345"), "{json}");
        assert!(s.lookup(SignalKind::Entity, "3/12345", &key).is_some());
        assert!(s.check_key(&key).is_ok());
        let other = PseudonymKey::development();
        assert!(s.lookup(SignalKind::Entity, "3/12345", &other).is_none());
        let e = s.check_key(&other).unwrap_err().to_string();
        assert!(e.contains(&key.fingerprint()), "{e}");
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn noise_is_keyed_deterministic_and_clamped() {
        let key = PseudonymKey::development();
        let p = SignalsParams::default()
            .min_tenants(2)
            .epsilon(Some(0.5))
            .contribution_cap(3)
            .check()
            .unwrap();
        let build = |key: &PseudonymKey| {
            let mut b = SnapshotBuilder::new(&p, key);
            for t in 0..6 {
                for _ in 0..(t + 1) {
                    b.observe(
                        TenantId(t),
                        SignalKind::Title,
                        "x",
                        1,
                        Some(Grade::FalsePositive),
                    );
                }
            }
            b.build()
        };
        let a = build(&key);
        assert_eq!(a, build(&key));
        let r = a.get(SignalKind::Title, "x").unwrap();
        // exact clipped sum is 1+2+3+3+3+3 = 15; the noise moves it
        assert_ne!(r.incidents, 15.0);
        assert!(r.incidents >= 0.0 && r.alerts >= 0.0 && r.tenants >= 0.0);
        let other = build(&PseudonymKey::new(b"another secret of sixteen+").unwrap());
        assert_ne!(
            other.get(SignalKind::Title, "x").unwrap().incidents,
            r.incidents
        );
        // Laplace scale: mean |noise| ≈ scale over many statistics
        let mut sum = 0.0;
        for i in 0..4000 {
            sum += key
                .laplace(SignalKind::Detector, &i.to_string(), "s", 2.0)
                .abs();
        }
        let mean = sum / 4000.0;
        assert!((mean - 2.0).abs() < 0.15, "{mean}");
    }

    #[test]
    fn snapshot_file_round_trip_and_version_check() {
        let dir = tempfile::tempdir().unwrap();
        let key = PseudonymKey::development();
        let mut b = SnapshotBuilder::new(&params(2), &key);
        for t in 0..2 {
            b.observe(
                TenantId(t),
                SignalKind::Technique,
                "T1078",
                1,
                Some(Grade::TruePositive),
            );
        }
        let s = b.build();
        let path = dir.path().join("s.json.gz");
        s.save(&path).unwrap();
        assert_eq!(GlobalSignals::load(&path).unwrap(), s);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, br#"{"format": 99}"#).unwrap();
        let e = GlobalSignals::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("99"), "{e}");
    }
}
