//! Global signals: what a detector, alert title, category, ATT&CK technique, threat family or
//! entity has meant across *many* tenants, released without revealing any one of them.
//!
//! A [`GlobalSignals`] snapshot is built by a [`SnapshotBuilder`] from many tenants' incidents
//! and verdicts, and read by the `global` feature family. Per key it holds how many distinct
//! tenants saw it, how often (incidents, alerts), and the grade mix of the verdicts. The privacy
//! rules are part of the types (threat model and measured cost: `docs/PRIVACY.md`):
//!
//! - **Differential privacy per tenant, on by default.** The privacy unit is one tenant: every
//!   tenant's contribution is bounded before anything is summed, with or without noise (at most
//!   [`SignalsParams::max_keys_per_tenant`] keys of each kind, the ones it holds most incidents
//!   on; per key at most [`SignalsParams::contribution_cap`] incidents, alerts and graded
//!   incidents, the grades scaled down to that total by largest remainder). With
//!   `epsilon = Some(ε)` (default 1) every released count gets integer noise from the discrete
//!   Laplace distribution ([`super::dp`]: exact integer sampling from ChaCha20, no
//!   floating-point leak), calibrated so that all statistics of one key are together ε-DP for
//!   adding or removing one tenant: ε/4 on the tenant count (sensitivity 1), ε/5 on incidents,
//!   ε/20 on alerts (no feature reads them), ε/2 on the grade vector (L1 sensitivity = cap).
//!   A whole release is `kinds × max_keys_per_tenant × ε`-DP per tenant by basic composition
//!   (recorded as [`Privacy::epsilon_per_tenant`]).
//! - **Noisy release decision.** A key is released when its *noisy* tenant count reaches the
//!   floor ([`SignalsParams::min_tenants`], default 5), never on an exact count. A key that one
//!   tenant alone holds is released with probability [`Privacy::delta_single_tenant_key`]
//!   (`P(noise ≥ floor − 1)`), the δ of the release decision. With `epsilon = None` (exact mode,
//!   for experiments and as the attacker test's control) the floor is exact k-anonymity: each
//!   released key and each released grade count comes from at least `k` tenants, which does
//!   **not** survive a differencing attack.
//! - **Noise that does not cancel.** The generator's seed is an HMAC, under the secret, of a
//!   digest of the clipped contributions and the parameters: two releases of different data
//!   carry independent noise (subtracting them does not cancel it), while rebuilding the same
//!   data gives the same release and the same [`Privacy::release_id`], so rebuilding cannot be
//!   used to average noise away. Releases of different data spend budget: see
//!   [`super::ledger`].
//! - **No tenant ids.** The builder takes tenant ids only to count distinct tenants, and only
//!   through a keyed pseudonym; the snapshot stores no tenant id and no per-tenant value (a test
//!   rebuilds it with every tenant id changed and gets the same bytes: the digest behind the
//!   seed is over the multiset of contributions, not over who made them). Tenant-side
//!   identifiers (entities: device, account, file hash, IP, URL, mailbox codes) are stored only
//!   as HMAC-SHA256 pseudonyms under a secret [`PseudonymKey`]; product-side vocabulary
//!   (detector, title, category, technique, threat family) is stored in clear. The snapshot
//!   records the key's fingerprint (an HMAC of a fixed label, which does not reveal the key) so
//!   that scoring with another key is an error, not a silent miss. Released values are clamped
//!   at 0 (post-processing).

use super::dp::{self, ChaCha20Rng, Ratio};
use crate::domain::{Grade, TenantId};
use crate::keymap::KeyMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the snapshot file format; [`GlobalSignals::load`] refuses others.
pub const SNAPSHOT_FORMAT: u32 = 2;

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
    /// Minimum distinct tenants behind a released key (≥ 2), compared with the noisy tenant
    /// count when noise is on. Default 5.
    pub min_tenants: usize,
    /// Differential-privacy budget ε of one key's statistics for one tenant, per release;
    /// `None` = exact counts (k-anonymity only: for experiments, never for sharing). Default 1.
    pub epsilon: Option<f64>,
    /// Each tenant's contribution to one key is clipped to this many incidents, alerts and
    /// graded incidents (the sensitivity of those counts), with or without noise. Default 2.
    pub contribution_cap: u32,
    /// Each tenant contributes to at most this many keys of each kind (the ones it holds most
    /// incidents on; ties by key), with or without noise. Default 32.
    pub max_keys_per_tenant: u32,
}

impl Default for SignalsParams {
    fn default() -> Self {
        Self {
            min_tenants: 5,
            epsilon: Some(DEFAULT_EPSILON),
            contribution_cap: 2,
            max_keys_per_tenant: 32,
        }
    }
}

/// The default ε per key and release.
pub const DEFAULT_EPSILON: f64 = 1.0;

/// Largest accepted ε (a larger one protects nothing and its noise rounds to 0 anyway).
pub const MAX_EPSILON: f64 = 100.0;

/// Share of one key's ε spent on each statistic: tenants, incidents, alerts, grade vector
/// (sums to 1; the grades carry what the model reads, alerts feed no feature).
const EPSILON_SHARES: [(u64, u64); 4] = [(1, 4), (1, 5), (1, 20), (1, 2)];

impl SignalsParams {
    /// Sets [`SignalsParams::min_tenants`] (default 5).
    pub fn min_tenants(mut self, k: usize) -> Self {
        self.min_tenants = k;
        self
    }
    /// Sets [`SignalsParams::epsilon`] (default `Some(1.0)`; `None` = exact counts).
    pub fn epsilon(mut self, eps: Option<f64>) -> Self {
        self.epsilon = eps;
        self
    }
    /// Sets [`SignalsParams::contribution_cap`] (default 2).
    pub fn contribution_cap(mut self, cap: u32) -> Self {
        self.contribution_cap = cap;
        self
    }
    /// Sets [`SignalsParams::max_keys_per_tenant`] (default 32).
    pub fn max_keys_per_tenant(mut self, n: u32) -> Self {
        self.max_keys_per_tenant = n;
        self
    }
    /// Checks ranges: a floor of 1 would release single-tenant counts, so `min_tenants ≥ 2`;
    /// ε in (0, 100] with at most six decimals; cap in 1..=10,000; at least one key per tenant.
    pub fn check(&self) -> Result<SignalsValidParams, GlobalSignalsError> {
        let bad =
            |name: &'static str, reason: String| Err(GlobalSignalsError::Param { name, reason });
        if self.min_tenants < 2 {
            return bad(
                "min_tenants",
                format!(
                    "{} would release one tenant's own counts; use at least 2",
                    self.min_tenants
                ),
            );
        }
        if let Some(e) = self.epsilon {
            if !(e.is_finite() && e > 0.0 && e <= MAX_EPSILON) || Ratio::from_f64(e).is_none() {
                return bad(
                    "epsilon",
                    format!("{e} must be a number in (0, {MAX_EPSILON}] (at least 0.000001)"),
                );
            }
        }
        if !(1..=10_000).contains(&self.contribution_cap) {
            return bad(
                "contribution_cap",
                format!("{} must be in 1..=10000", self.contribution_cap),
            );
        }
        if self.max_keys_per_tenant == 0 {
            return bad("max_keys_per_tenant", "must be at least 1".into());
        }
        // never a silent exact release: with ε the noise scales must compute
        if self.epsilon.is_some() && noise_scales(self).is_none() {
            return bad(
                "epsilon",
                format!("{:?} gives no representable noise scale", self.epsilon),
            );
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

    /// The seed and public id of a release of `digest` (see the module docs).
    fn release(&self, digest: &[u8]) -> ([u8; 32], String) {
        let seed = self.mac("threatrank/release-seed", digest);
        let id = crate::matrix::hex(&self.mac("threatrank/release-id", digest)[..8]);
        (seed, id)
    }
}

/// One tenant's contribution to one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Contribution {
    incidents: u32,
    alerts: u32,
    grades: [u32; 3],
}

/// Released statistics of one key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Released {
    /// distinct tenants that saw the key (noisy with ε; exact and ≥ the floor without)
    pub tenants: f64,
    /// incidents holding the key
    pub incidents: f64,
    /// alerts carrying the key
    pub alerts: f64,
    /// graded incidents per grade (TP, BP, FP): always released (noisy) with ε; without noise
    /// `None` when fewer than `min_tenants` tenants gave that grade
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

/// Collects observations and releases a [`GlobalSignals`] snapshot (cloned to release the
/// snapshot of a prefix of the observations and go on observing).
#[derive(Debug, Clone)]
pub struct SnapshotBuilder<'k> {
    params: SignalsParams,
    key: &'k PseudonymKey,
    /// (kind, stored key) → tenant pseudonym → contribution
    stats: BTreeMap<(SignalKind, String), BTreeMap<u64, Contribution>>,
}

/// How a release was made: recorded in the snapshot (`privacy`) and in the budget ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// `discrete_laplace`, or `exact` (no noise: k-anonymity only)
    pub mechanism: String,
    /// ε of one key's statistics for one tenant (`None` when exact)
    pub epsilon_per_key: Option<f64>,
    /// ε of the whole release for one tenant, by basic composition over the keys it may
    /// contribute to (`kinds × max_keys_per_tenant × ε`)
    pub epsilon_per_tenant: Option<f64>,
    /// probability that a key held by a single tenant is released (the δ of the noisy floor)
    pub delta_single_tenant_key: Option<f64>,
    /// Laplace scales of the noise: tenants, incidents, alerts, each grade count
    pub scales: Option<[f64; 4]>,
    /// public id of the release: an HMAC of the digest of its inputs (same data ⇒ same id)
    pub release_id: String,
}

/// The noise scale of one statistic: `sensitivity / (ε · share)`.
fn scale_of(eps: Ratio, share: (u64, u64), sensitivity: u64) -> Option<Ratio> {
    let spent = eps.times(Ratio::new(share.0, share.1)?)?;
    Ratio::new(sensitivity, 1)?.times(spent.inv())
}

/// The noise scales of tenants, incidents, alerts and each grade count; `None` without ε or
/// when they do not compute (which [`SignalsParams::check`] refuses).
fn noise_scales(p: &SignalsParams) -> Option<[Ratio; 4]> {
    let eps = Ratio::from_f64(p.epsilon?)?;
    let cap = u64::from(p.contribution_cap);
    let sens = [1, cap, cap, cap];
    let mut out = [eps; 4];
    for i in 0..4 {
        out[i] = scale_of(eps, EPSILON_SHARES[i], sens[i])?;
    }
    Some(out)
}

/// Clips one tenant's contribution to `cap` per count; grades are scaled to a total of at most
/// `cap` by largest remainder (ties to the lower grade index), so the grade vector's L1 norm is
/// at most `cap`.
fn clip(c: Contribution, cap: u32) -> Contribution {
    let total: u64 = c.grades.iter().map(|&g| u64::from(g)).sum();
    let grades = if total <= u64::from(cap) {
        c.grades
    } else {
        let cap64 = u64::from(cap);
        let mut out = [0u32; 3];
        let mut rem = [(0u64, 0usize); 3];
        for g in 0..3 {
            let x = u64::from(c.grades[g]) * cap64;
            out[g] = (x / total) as u32;
            rem[g] = (x % total, g);
        }
        let mut left = cap - out.iter().sum::<u32>();
        rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, g) in rem {
            if left == 0 {
                break;
            }
            out[g] += 1;
            left -= 1;
        }
        out
    };
    Contribution {
        incidents: c.incidents.min(cap),
        alerts: c.alerts.min(cap),
        grades,
    }
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
        c.incidents = c.incidents.saturating_add(1);
        c.alerts = c.alerts.saturating_add(alerts.max(1));
        if let Some(g) = grade {
            let n = &mut c.grades[g.class_id() as usize];
            *n = n.saturating_add(1);
        }
    }

    /// Bounds every tenant's contribution: at most `max_keys_per_tenant` keys of each kind
    /// (its largest by incidents, ties by key), each clipped to `contribution_cap`.
    fn bounded(
        stats: BTreeMap<(SignalKind, String), BTreeMap<u64, Contribution>>,
        p: &SignalsParams,
    ) -> BTreeMap<(SignalKind, String), Vec<Contribution>> {
        // (tenant, kind) → (incidents, key) of every key it touched
        let mut per_tenant: BTreeMap<(u64, SignalKind), Vec<(u32, &str)>> = BTreeMap::new();
        for ((kind, key), by_tenant) in &stats {
            for (t, c) in by_tenant {
                per_tenant
                    .entry((*t, *kind))
                    .or_default()
                    .push((c.incidents, key.as_str()));
            }
        }
        let mut dropped: std::collections::BTreeSet<(u64, SignalKind, String)> =
            std::collections::BTreeSet::new();
        let l0 = p.max_keys_per_tenant as usize;
        for ((t, kind), mut keys) in per_tenant {
            if keys.len() <= l0 {
                continue;
            }
            keys.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            for (_, key) in &keys[l0..] {
                dropped.insert((t, kind, (*key).to_string()));
            }
        }
        let mut out = BTreeMap::new();
        for ((kind, key), by_tenant) in stats {
            let mut v: Vec<Contribution> = by_tenant
                .into_iter()
                .filter(|(t, _)| dropped.is_empty() || !dropped.contains(&(*t, kind, key.clone())))
                .map(|(_, c)| clip(c, p.contribution_cap))
                .collect();
            if v.is_empty() {
                continue;
            }
            // a multiset: who contributed what must not reach the digest
            v.sort_unstable();
            out.insert((kind, key), v);
        }
        out
    }

    /// SHA-256 of the parameters and the bounded contributions (as multisets per key).
    fn digest(
        p: &SignalsParams,
        bounded: &BTreeMap<(SignalKind, String), Vec<Contribution>>,
    ) -> [u8; 32] {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(b"threatrank/snapshot-digest/v2\0");
        h.update((p.min_tenants as u64).to_le_bytes());
        h.update(p.epsilon.map_or(u64::MAX, f64::to_bits).to_le_bytes());
        h.update(p.contribution_cap.to_le_bytes());
        h.update(p.max_keys_per_tenant.to_le_bytes());
        for ((kind, key), v) in bounded {
            h.update(kind.name().as_bytes());
            h.update([0]);
            h.update(key.as_bytes());
            h.update([0]);
            h.update((v.len() as u64).to_le_bytes());
            for c in v {
                for x in [c.incidents, c.alerts, c.grades[0], c.grades[1], c.grades[2]] {
                    h.update(x.to_le_bytes());
                }
            }
        }
        h.finalize().into()
    }

    /// Bounds the contributions, applies the floor (on the noisy tenant count with noise on)
    /// and the noise, and returns the snapshot.
    pub fn build(self) -> GlobalSignals {
        let p = self.params;
        let k = p.min_tenants;
        let bounded = Self::bounded(self.stats, &p);
        let digest = Self::digest(&p, &bounded);
        let (seed, release_id) = self.key.release(&digest);
        let mut rng = <ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_seed(seed);
        // `check` refused any ε whose scales do not compute, so `None` here means exact mode
        let scales = noise_scales(&p);
        let mut tables: BTreeMap<SignalKind, KeyMap<Released>> = BTreeMap::new();
        for ((kind, key), v) in bounded {
            let sum = |f: &dyn Fn(&Contribution) -> u32| -> f64 {
                v.iter().map(|c| f64::from(f(c))).sum()
            };
            let exact = [
                v.len() as f64,
                sum(&|c| c.incidents),
                sum(&|c| c.alerts),
                sum(&|c| c.grades[0]),
                sum(&|c| c.grades[1]),
                sum(&|c| c.grades[2]),
            ];
            let released = match &scales {
                Some(sc) => {
                    // every key draws all six, released or not: the stream stays aligned
                    let scale_of_stat = [sc[0], sc[1], sc[2], sc[3], sc[3], sc[3]];
                    let noisy: [f64; 6] = std::array::from_fn(|i| {
                        exact[i] + dp::discrete_laplace(&mut rng, scale_of_stat[i]) as f64
                    });
                    if noisy[0] < k as f64 {
                        continue;
                    }
                    Released {
                        tenants: noisy[0],
                        incidents: noisy[1].max(0.0),
                        alerts: noisy[2].max(0.0),
                        grades: [3, 4, 5].map(|i| Some(noisy[i].max(0.0))),
                    }
                }
                None => {
                    if v.len() < k {
                        continue;
                    }
                    let grades = [0, 1, 2].map(|g| {
                        let givers = v.iter().filter(|c| c.grades[g] > 0).count();
                        (givers >= k).then_some(exact[3 + g])
                    });
                    Released {
                        tenants: exact[0],
                        incidents: exact[1],
                        alerts: exact[2],
                        grades,
                    }
                }
            };
            tables.entry(kind).or_default().insert(key, released);
        }
        let privacy = Privacy {
            mechanism: if scales.is_some() {
                "discrete_laplace"
            } else {
                "exact"
            }
            .into(),
            epsilon_per_key: p.epsilon.filter(|_| scales.is_some()),
            epsilon_per_tenant: p
                .epsilon
                .filter(|_| scales.is_some())
                .map(|e| e * f64::from(p.max_keys_per_tenant) * SignalKind::ALL.len() as f64),
            delta_single_tenant_key: scales
                .map(|sc| dp::tail_at_least(sc[0].as_f64(), k as i64 - 1)),
            scales: scales.map(|sc| sc.map(Ratio::as_f64)),
            release_id,
        };
        GlobalSignals {
            format: SNAPSHOT_FORMAT,
            params: p,
            key_fingerprint: self.key.fingerprint(),
            privacy,
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
    privacy: Privacy,
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

    /// How this release was made (mechanism, ε, δ of the floor, release id).
    pub fn privacy(&self) -> &Privacy {
        &self.privacy
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

    /// Exact counts, no clipping in effect: the k-anonymity layer alone.
    fn params(k: usize) -> SignalsValidParams {
        SignalsParams::default()
            .min_tenants(k)
            .epsilon(None)
            .contribution_cap(10_000)
            .check()
            .unwrap()
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
        assert!(SignalsParams::default()
            .epsilon(Some(1e-9))
            .check()
            .is_err());
        assert!(SignalsParams::default().epsilon(Some(1e3)).check().is_err());
        assert!(SignalsParams::default()
            .max_keys_per_tenant(0)
            .check()
            .is_err());
        // differential privacy is the default
        assert_eq!(SignalsParams::default().epsilon, Some(DEFAULT_EPSILON));
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
    fn clipping_bounds_each_count_and_keeps_the_grade_mix() {
        let c = Contribution {
            incidents: 9,
            alerts: 30,
            grades: [6, 2, 1],
        };
        let k = clip(c, 4);
        assert_eq!((k.incidents, k.alerts), (4, 4));
        // 6/9·4 = 2.67, 2/9·4 = 0.89, 1/9·4 = 0.44: floors 2, 0, 0; remainders give BP then TP
        assert_eq!(k.grades, [3, 1, 0]);
        assert_eq!(k.grades.iter().sum::<u32>(), 4);
        // under the cap nothing moves
        let small = Contribution {
            incidents: 2,
            alerts: 2,
            grades: [1, 0, 1],
        };
        assert_eq!(clip(small, 4), small);
    }

    #[test]
    fn each_tenant_contributes_to_at_most_max_keys_per_kind() {
        let key = PseudonymKey::development();
        let p = SignalsParams::default()
            .min_tenants(2)
            .epsilon(None)
            .max_keys_per_tenant(2)
            .check()
            .unwrap();
        let mut b = SnapshotBuilder::new(&p, &key);
        for t in 0..3 {
            // tenant t: "a" 3 times, "b" twice, "c" once: "c" is its third key
            for (v, n) in [("a", 3), ("b", 2), ("c", 1)] {
                for _ in 0..n {
                    b.observe(TenantId(t), SignalKind::Title, v, 1, None);
                }
            }
        }
        let s = b.build();
        assert!(s.get(SignalKind::Title, "a").is_some());
        assert!(s.get(SignalKind::Title, "b").is_some());
        assert!(s.get(SignalKind::Title, "c").is_none());
        // incidents clipped to the default cap of 2 per tenant: 3 tenants × 2
        assert_eq!(s.get(SignalKind::Title, "a").unwrap().incidents, 6.0);
    }

    /// `n_keys` detector keys, each held by `tenants` tenants with one TP incident each.
    fn many_keys(
        p: &SignalsValidParams,
        key: &PseudonymKey,
        n_keys: usize,
        tenants: u64,
    ) -> GlobalSignals {
        let mut b = SnapshotBuilder::new(p, key);
        for i in 0..n_keys {
            for t in 0..tenants {
                b.observe(
                    TenantId(t + i as u64 * tenants),
                    SignalKind::Detector,
                    &i.to_string(),
                    1,
                    Some(Grade::TruePositive),
                );
            }
        }
        b.build()
    }

    #[test]
    fn noise_has_the_recorded_scale_and_the_floor_its_delta() {
        let key = PseudonymKey::development();
        let p = SignalsParams::default().check().unwrap();
        let s = many_keys(&p, &key, 3000, 20);
        let pr = s.privacy().clone();
        assert_eq!(pr.mechanism, "discrete_laplace");
        assert_eq!(pr.epsilon_per_key, Some(1.0));
        assert_eq!(pr.epsilon_per_tenant, Some(32.0 * 6.0));
        // ε/4 on a count of sensitivity 1, ε/2 on grades of L1 sensitivity 2 (cap)
        assert_eq!(pr.scales, Some([4.0, 10.0, 40.0, 4.0]));
        // E|Z| of the discrete Laplace, α = e^(−1/b): 2α / (1 − α²)
        let expect = |b: f64| {
            let a = (-1.0 / b).exp();
            2.0 * a / (1.0 - a * a)
        };
        let (mut dev_t, mut dev_tp, mut n, mut integral) = (0.0, 0.0, 0.0, true);
        for i in 0..3000 {
            if let Some(r) = s.get(SignalKind::Detector, &i.to_string()) {
                dev_t += (r.tenants - 20.0).abs();
                dev_tp += (r.grades[0].unwrap() - 20.0).abs();
                integral &= r.tenants.fract() == 0.0 && r.incidents.fract() == 0.0;
                n += 1.0;
            }
        }
        // nearly every key is released (20 tenants against a floor of 5, P(Z ≤ −16) ≈ 1%):
        // the truncation at the floor moves the mean |noise| by little
        assert!(n > 2900.0, "{n}");
        assert!(integral, "noisy counts are integers");
        assert!((dev_t / n - expect(4.0)).abs() < 0.3, "{}", dev_t / n);
        assert!((dev_tp / n - expect(4.0)).abs() < 0.3, "{}", dev_tp / n);
        // single-tenant keys are released with probability δ = P(Z ≥ floor − 1)
        let single = many_keys(&p, &key, 4000, 1);
        let delta = single.privacy().delta_single_tenant_key.unwrap();
        let released = single.released(SignalKind::Detector) as f64 / 4000.0;
        let sd = (delta * (1.0 - delta) / 4000.0).sqrt();
        assert!(
            (released - delta).abs() < 5.0 * sd,
            "{released} vs δ {delta}"
        );
        // exact mode: none of them
        assert_eq!(
            many_keys(&params(5), &key, 100, 1).released(SignalKind::Detector),
            0
        );
    }

    #[test]
    fn same_data_same_release_other_data_independent_noise() {
        let key = PseudonymKey::development();
        let p = SignalsParams::default().check().unwrap();
        let build = |extra: bool| {
            let mut b = SnapshotBuilder::new(&p, &key);
            for i in 0..400 {
                for t in 0..12u64 {
                    b.observe(TenantId(t), SignalKind::Title, &i.to_string(), 1, None);
                }
            }
            if extra {
                b.observe(TenantId(99), SignalKind::Title, "0", 1, None);
            }
            b.build()
        };
        let a = build(false);
        assert_eq!(a, build(false));
        let b = build(true);
        assert_ne!(a.privacy().release_id, b.privacy().release_id);
        // keys 1..400 hold the same data in both: with noise keyed by the statistic alone
        // (the old design) every difference would be 0 and cancel exactly
        let mut same = 0;
        for i in 1..400 {
            let (x, y) = (
                a.get(SignalKind::Title, &i.to_string()),
                b.get(SignalKind::Title, &i.to_string()),
            );
            if let (Some(x), Some(y)) = (x, y) {
                same += usize::from(x.tenants == y.tenants);
            }
        }
        // P(two independent draws of scale 4 agree) ≈ 0.06
        assert!(
            same < 60,
            "{same} of 399 tenant counts equal across releases"
        );
        // another key, another release
        let other = PseudonymKey::new(b"another secret of sixteen+").unwrap();
        let mut c = SnapshotBuilder::new(&p, &other);
        for i in 0..400 {
            for t in 0..12u64 {
                c.observe(TenantId(t), SignalKind::Title, &i.to_string(), 1, None);
            }
        }
        assert_ne!(c.build().privacy().release_id, a.privacy().release_id);
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
