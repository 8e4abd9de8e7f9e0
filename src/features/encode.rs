//! Target encodings of a tenant's own history (tenant, and tenant × detector/title/category/
//! entity), fitted on labelled training incidents only.
//!
//! Counts are per *incident* (an incident with ten rows of one detector counts once). A rate is
//! smoothed toward its parent by empirical Bayes with pseudo-count `m`:
//! `rate_c = (n_c + m · parent_c) / (n + m)` (Micci-Barreca 2001, "A preprocessing scheme for
//! high-cardinality categorical attributes"). Parents: tenant → the global grade prior;
//! tenant × key → the tenant's rate.
//!
//! Cross-tenant aggregates are not here: they live in the global-signals snapshot
//! (`signals::global`), which enforces the privacy floor.

use crate::keymap::KeyMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Grade counts of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// incidents per grade (TP, BP, FP)
    pub n: [u32; 3],
}

impl Counts {
    /// Total incidents.
    pub fn total(&self) -> u32 {
        self.n.iter().sum()
    }
}

/// One encoding table: key → counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// counts by key (hashed for lookups; serialized sorted, so the artifact is deterministic)
    pub entries: KeyMap<Counts>,
}

impl Table {
    /// Smoothed rates and support (incident count) for `key`, or the parent with support 0.
    pub fn rates(&self, key: &str, parent: [f64; 3], m: f64) -> ([f64; 3], u32) {
        match self.entries.get(key) {
            Some(c) => (smooth(&c.n, parent, m), c.total()),
            None => (parent, 0),
        }
    }
}

/// Empirical-Bayes smoothed rates.
pub fn smooth(n: &[u32; 3], parent: [f64; 3], m: f64) -> [f64; 3] {
    let total = f64::from(n[0] + n[1] + n[2]);
    let mut r = [0.0; 3];
    for c in 0..3 {
        r[c] = (f64::from(n[c]) + m * parent[c]) / (total + m);
    }
    r
}

/// Builds tables from (key, tenant, grade) observations, one per distinct key per incident.
#[derive(Debug, Default)]
pub struct TableBuilder {
    counts: BTreeMap<String, [u32; 3]>,
}

impl TableBuilder {
    /// Adds one incident's observation of `key`.
    pub fn add(&mut self, key: &str, class: u8) {
        let e = self.counts.entry(key.to_string()).or_default();
        e[class as usize] += 1;
    }

    /// Finishes a *tenant-scoped* table (keys already include the tenant; no floor applies:
    /// a tenant's own history is only ever used to score that tenant).
    pub fn build_tenant(self) -> Table {
        Table {
            entries: self
                .counts
                .into_iter()
                .map(|(k, n)| (k, Counts { n }))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_reference_values() {
        // (3 + 2*0.5) / (4 + 2) = 0.6667, (1 + 2*0.25)/6 = 0.25, (0 + 0.5)/6 = 0.0833
        let r = smooth(&[3, 1, 0], [0.5, 0.25, 0.25], 2.0);
        assert!((r[0] - 4.0 / 6.0).abs() < 1e-12);
        assert!((r[1] - 1.5 / 6.0).abs() < 1e-12);
        assert!((r[2] - 0.5 / 6.0).abs() < 1e-12);
    }
}
