//! The privacy budget over releases of the global-signals snapshot.
//!
//! Where it sits: `threatrank signals build` ([`crate::pipeline::build_signals_file`]) charges
//! every new release to a ledger file before writing the snapshot. Each release of different
//! data carries independent noise (see [`super::global`]), so an attacker who collects `R`
//! releases can average their differences: by sequential composition what they learn about one
//! tenant's contribution to one key is bounded by the *sum* of the releases' ε per key. The
//! ledger keeps that sum below a configured total: a release that would exceed it is refused
//! (nothing is written), and every charge says how much is left. A rebuild of the same data is
//! the same release (same noise, same [`super::global::Privacy::release_id`]) and costs nothing.
//!
//! A release without noise (`epsilon = None`) is never charged: it is not differentially private
//! at all and must not be shared; the CLI says so when it writes one.

use super::global::{GlobalSignals, Privacy};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the ledger file format.
pub const LEDGER_FORMAT: u32 = 1;

/// The default total ε per key over all releases of a ledger.
pub const DEFAULT_BUDGET: f64 = 10.0;

/// Errors of the budget ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The ledger file cannot be read or written.
    #[error("{file}: cannot {action} the privacy-budget ledger")]
    Io {
        /// path
        file: PathBuf,
        /// read or write
        action: &'static str,
        /// the I/O error
        #[source]
        source: std::io::Error,
    },
    /// The file is not a ledger of this format.
    #[error("{file}: not a privacy-budget ledger of format {LEDGER_FORMAT}")]
    Format {
        /// path
        file: PathBuf,
        /// the parse error
        #[source]
        source: serde_json::Error,
    },
    /// The ledger belongs to releases under another pseudonymization key.
    #[error("{file}: the ledger records releases under key {ledger}, this release is under key {snapshot}: use the ledger of that key (--ledger)")]
    KeyMismatch {
        /// path
        file: PathBuf,
        /// fingerprint in the ledger
        ledger: String,
        /// fingerprint of the snapshot
        snapshot: String,
    },
    /// The release would exceed the budget.
    #[error("privacy budget exhausted: {releases} releases have spent ε {spent} per key of a budget of {budget}, and this release needs {needed}; nothing was written (a larger --budget weakens what every tenant was promised: raise it only by decision)")]
    Exhausted {
        /// releases charged so far
        releases: usize,
        /// ε per key spent so far
        spent: f64,
        /// the configured total
        budget: f64,
        /// ε per key of this release
        needed: f64,
    },
    /// The budget is not a positive number.
    #[error("invalid privacy budget {0}: must be a positive number")]
    Budget(f64),
}

/// One charged release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// the release's public id
    pub release_id: String,
    /// its ε per key
    pub epsilon_per_key: f64,
    /// its ε per tenant (whole release)
    pub epsilon_per_tenant: f64,
    /// the snapshot file it was written to (as given)
    pub snapshot: String,
}

/// The releases charged under one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    format: u32,
    key_fingerprint: String,
    releases: Vec<LedgerEntry>,
}

/// The outcome of a charge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charge {
    /// false when the release was already charged (a rebuild of the same data) or is exact
    pub charged: bool,
    /// ε per key spent after this release
    pub spent: f64,
    /// the configured total
    pub budget: f64,
    /// releases in the ledger after this one
    pub releases: usize,
}

impl Charge {
    /// Budget left (never negative).
    pub fn left(&self) -> f64 {
        (self.budget - self.spent).max(0.0)
    }
}

impl Ledger {
    /// The ledger at `path`, or an empty one for `key_fingerprint` when the file does not exist.
    pub fn load_or_new(path: &Path, key_fingerprint: &str) -> Result<Self, LedgerError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    format: LEDGER_FORMAT,
                    key_fingerprint: key_fingerprint.to_string(),
                    releases: Vec::new(),
                })
            }
            Err(source) => {
                return Err(LedgerError::Io {
                    file: path.to_path_buf(),
                    action: "read",
                    source,
                })
            }
        };
        let l: Ledger = serde_json::from_slice(&bytes).map_err(|source| LedgerError::Format {
            file: path.to_path_buf(),
            source,
        })?;
        if l.format != LEDGER_FORMAT {
            return Err(LedgerError::Format {
                file: path.to_path_buf(),
                source: serde::de::Error::custom(format!("format {}", l.format)),
            });
        }
        if l.key_fingerprint != key_fingerprint {
            return Err(LedgerError::KeyMismatch {
                file: path.to_path_buf(),
                ledger: l.key_fingerprint,
                snapshot: key_fingerprint.to_string(),
            });
        }
        Ok(l)
    }

    /// ε per key spent by the charged releases.
    pub fn spent(&self) -> f64 {
        self.releases.iter().map(|r| r.epsilon_per_key).sum()
    }

    /// The charged releases, oldest first.
    pub fn releases(&self) -> &[LedgerEntry] {
        &self.releases
    }

    /// Charges `snapshot` (written to `name`) against `budget`, or refuses it.
    pub fn charge(
        &mut self,
        snapshot: &GlobalSignals,
        name: &str,
        budget: f64,
    ) -> Result<Charge, LedgerError> {
        if !(budget.is_finite() && budget > 0.0) {
            return Err(LedgerError::Budget(budget));
        }
        let p: &Privacy = snapshot.privacy();
        let done = |l: &Ledger, charged| Charge {
            charged,
            spent: l.spent(),
            budget,
            releases: l.releases.len(),
        };
        let (Some(eps), Some(eps_tenant)) = (p.epsilon_per_key, p.epsilon_per_tenant) else {
            return Ok(done(self, false));
        };
        if self.releases.iter().any(|r| r.release_id == p.release_id) {
            return Ok(done(self, false));
        }
        let spent = self.spent();
        // a relative tolerance so that ten releases of 0.1 fit a budget of 1
        if spent + eps > budget * (1.0 + 1e-9) {
            return Err(LedgerError::Exhausted {
                releases: self.releases.len(),
                spent,
                budget,
                needed: eps,
            });
        }
        self.releases.push(LedgerEntry {
            release_id: p.release_id.clone(),
            epsilon_per_key: eps,
            epsilon_per_tenant: eps_tenant,
            snapshot: name.to_string(),
        });
        Ok(done(self, true))
    }

    /// Writes the ledger (to a temporary file beside it, then renamed: a crash leaves the old
    /// ledger or the new one, never half of one).
    pub fn save(&self, path: &Path) -> Result<(), LedgerError> {
        let io = |source| LedgerError::Io {
            file: path.to_path_buf(),
            action: "write",
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// The default ledger of a snapshot written to `out`: `signals-ledger.json` in its folder.
pub fn default_ledger_path(out: &Path) -> PathBuf {
    out.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(
            || PathBuf::from("signals-ledger.json"),
            |p| p.join("signals-ledger.json"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Grade, TenantId};
    use crate::signals::global::{PseudonymKey, SignalKind, SignalsParams, SnapshotBuilder};

    fn release(tenants: u64, eps: Option<f64>) -> GlobalSignals {
        let key = PseudonymKey::development();
        let p = SignalsParams::default().epsilon(eps).check().unwrap();
        let mut b = SnapshotBuilder::new(&p, &key);
        for t in 0..tenants {
            b.observe(
                TenantId(t),
                SignalKind::Detector,
                "d",
                1,
                Some(Grade::TruePositive),
            );
        }
        b.build()
    }

    #[test]
    fn charges_new_releases_refuses_past_the_budget_and_rebuilds_are_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let fp = PseudonymKey::development().fingerprint();
        let mut l = Ledger::load_or_new(&path, &fp).unwrap();
        let c = l.charge(&release(10, Some(1.0)), "a", 2.5).unwrap();
        assert!(c.charged);
        assert_eq!((c.spent, c.left(), c.releases), (1.0, 1.5, 1));
        // the same data again: the same release, nothing spent
        let again = l.charge(&release(10, Some(1.0)), "a2", 2.5).unwrap();
        assert!(!again.charged);
        assert_eq!(again.spent, 1.0);
        assert!(l.charge(&release(11, Some(1.0)), "b", 2.5).unwrap().charged);
        l.save(&path).unwrap();
        let mut l = Ledger::load_or_new(&path, &fp).unwrap();
        assert_eq!(l.releases().len(), 2);
        let e = l.charge(&release(12, Some(1.0)), "c", 2.5).unwrap_err();
        assert!(
            matches!(e, LedgerError::Exhausted { releases: 2, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("ε 2 per key of a budget of 2.5"),
            "{e}"
        );
        // a smaller release still fits; an exact one is never charged
        assert!(l.charge(&release(12, Some(0.5)), "c", 2.5).unwrap().charged);
        assert!(!l.charge(&release(13, None), "x", 2.5).unwrap().charged);
        assert_eq!(l.spent(), 2.5);
        assert!(Ledger::load_or_new(&path, "0000").is_err());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Ledger::load_or_new(&path, &fp),
            Err(LedgerError::Format { .. })
        ));
        assert!(l.charge(&release(14, Some(1.0)), "y", 0.0).is_err());
    }

    #[test]
    fn default_ledger_sits_beside_the_snapshot() {
        assert_eq!(
            default_ledger_path(Path::new("out/s.json.gz")),
            PathBuf::from("out/signals-ledger.json")
        );
        assert_eq!(
            default_ledger_path(Path::new("s.json")),
            PathBuf::from("signals-ledger.json")
        );
    }
}
