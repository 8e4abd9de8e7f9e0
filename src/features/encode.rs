//! Target encodings of a tenant's own history (tenant, and tenant × detector/title/category/
//! entity), fitted on labelled training incidents only, and read *past-only*: an incident's
//! features count only the incidents that ended strictly before it began ([`Series`]).
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

/// Grade history of one key: the cumulative incident counts per grade (TP, BP, FP) after each
/// distinct time at which a graded incident holding the key *ended*, ascending in time.
///
/// Past-only lookups ([`Series::as_of`]) see an incident's verdict only from strictly after
/// the incident's last evidence: an incident never sees its own grade (its end is not before
/// its own start), nor the grade of any incident that ended at or after its first evidence.
/// Serialized as `[[time, tp, bp, fp], …]`; loading refuses a series that is empty, not
/// strictly increasing in time, or whose counts decrease or do not grow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<(i64, u32, u32, u32)>")]
pub struct Series(Vec<(i64, [u32; 3])>);

impl Serialize for Series {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (t, n) in &self.0 {
            seq.serialize_element(&(t, n[0], n[1], n[2]))?;
        }
        seq.end()
    }
}

impl TryFrom<Vec<(i64, u32, u32, u32)>> for Series {
    type Error = String;

    fn try_from(v: Vec<(i64, u32, u32, u32)>) -> Result<Self, String> {
        if v.is_empty() {
            return Err("a grade history holds at least one point".into());
        }
        let mut out: Vec<(i64, [u32; 3])> = Vec::with_capacity(v.len());
        for (t, a, b, c) in v {
            let n = [a, b, c];
            let total = u64::from(a) + u64::from(b) + u64::from(c);
            if total > u64::from(u32::MAX) {
                return Err(format!("grade counts at time {t} overflow"));
            }
            if let Some(&(pt, pn)) = out.last() {
                if t <= pt {
                    return Err(format!("grade history times not increasing: {pt} then {t}"));
                }
                if (0..3).any(|k| n[k] < pn[k]) || total <= pn.iter().map(|&x| u64::from(x)).sum() {
                    return Err(format!("grade history counts do not grow at time {t}"));
                }
            } else if total == 0 {
                return Err(format!(
                    "grade history point at time {t} counts no incident"
                ));
            }
            out.push((t, n));
        }
        Ok(Series(out))
    }
}

impl Series {
    /// Counts of the incidents that ended strictly before `t`.
    #[inline]
    pub fn as_of(&self, t: i64) -> [u32; 3] {
        match self.0.last() {
            // the common case at scoring: everything in the history is older
            Some(&(last, n)) if last < t => n,
            _ => {
                let k = self.0.partition_point(|&(x, _)| x < t);
                if k == 0 {
                    [0; 3]
                } else {
                    self.0[k - 1].1
                }
            }
        }
    }

    /// Counts of every incident in the history.
    pub fn total(&self) -> [u32; 3] {
        self.0.last().map_or([0; 3], |&(_, n)| n)
    }

    /// From (end time, class id) events in any order.
    fn from_events(mut events: Vec<(i64, u8)>) -> Series {
        events.sort_unstable();
        let mut out: Vec<(i64, [u32; 3])> = Vec::new();
        let mut n = [0u32; 3];
        for (t, c) in events {
            n[usize::from(c).min(2)] += 1;
            match out.last_mut() {
                Some(last) if last.0 == t => last.1 = n,
                _ => out.push((t, n)),
            }
        }
        Series(out)
    }
}

/// One encoding table: key → past-only grade history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// history by key (hashed for lookups; serialized sorted, so the artifact is deterministic)
    pub entries: KeyMap<Series>,
}

impl Table {
    /// Smoothed rates and support of `key` over the incidents that ended strictly before
    /// `as_of`, or the parent with support 0 when there is none.
    #[inline]
    pub fn rates(&self, key: &str, parent: [f64; 3], m: f64, as_of: i64) -> ([f64; 3], u32) {
        let n = self.entries.get(key).map_or([0; 3], |s| s.as_of(as_of));
        let total = n[0] + n[1] + n[2];
        if total == 0 {
            (parent, 0)
        } else {
            (smooth(&n, parent, m), total)
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

/// Builds tables from (key, grade, end time) observations, one per distinct key per incident.
#[derive(Debug, Default)]
pub struct TableBuilder {
    events: BTreeMap<String, Vec<(i64, u8)>>,
}

impl TableBuilder {
    /// Adds one incident's observation of `key`: its class id and the time it ended.
    pub fn add(&mut self, key: &str, class: u8, ended: i64) {
        match self.events.get_mut(key) {
            Some(v) => v.push((ended, class)),
            None => {
                self.events.insert(key.to_string(), vec![(ended, class)]);
            }
        }
    }

    /// Finishes a *tenant-scoped* table (keys already include the tenant; no floor applies:
    /// a tenant's own history is only ever used to score that tenant).
    pub fn build_tenant(self) -> Table {
        Table {
            entries: self
                .events
                .into_iter()
                .map(|(k, e)| (k, Series::from_events(e)))
                .collect(),
        }
    }

    /// Finishes a single history of every event added, whatever its key.
    pub fn build_series(self) -> Series {
        Series::from_events(self.events.into_values().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_answers_strictly_before_its_time() {
        let mut b = TableBuilder::default();
        b.add("k", 0, 100);
        b.add("k", 2, 100);
        b.add("k", 1, 50);
        b.add("other", 0, 10);
        let t = b.build_tenant();
        let s = t.entries.get("k").unwrap();
        assert_eq!(s.as_of(50), [0, 0, 0], "ended at 50: not before 50");
        assert_eq!(s.as_of(51), [0, 1, 0]);
        assert_eq!(s.as_of(100), [0, 1, 0], "ended at 100: not before 100");
        assert_eq!(s.as_of(101), [1, 1, 1]);
        assert_eq!(s.as_of(i64::MAX), [1, 1, 1]);
        assert_eq!(s.as_of(i64::MIN), [0, 0, 0]);
        assert_eq!(s.total(), [1, 1, 1]);
        // rates: the parent with no support before anything ended
        let parent = [0.5, 0.25, 0.25];
        assert_eq!(t.rates("k", parent, 2.0, 40), (parent, 0));
        assert_eq!(t.rates("missing", parent, 2.0, 1000), (parent, 0));
        let (r, n) = t.rates("k", parent, 2.0, 60);
        assert_eq!(n, 1);
        assert!((r[1] - (1.0 + 0.5) / 3.0).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn a_history_round_trips_and_malformed_ones_are_refused() {
        let s = Series::from_events(vec![(5, 0), (3, 2), (5, 1)]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "[[3,0,0,1],[5,1,1,1]]");
        assert_eq!(serde_json::from_str::<Series>(&json).unwrap(), s);
        for bad in [
            "[]",
            "[[3,0,0,0]]",
            "[[5,1,0,0],[3,2,0,0]]",
            "[[3,1,0,0],[3,2,0,0]]",
            "[[3,2,0,0],[5,1,1,0]]",
            "[[3,1,0,0],[5,1,0,0]]",
            "[[3,4294967295,4294967295,0]]",
        ] {
            assert!(serde_json::from_str::<Series>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn smoothing_reference_values() {
        // (3 + 2*0.5) / (4 + 2) = 0.6667, (1 + 2*0.25)/6 = 0.25, (0 + 0.5)/6 = 0.0833
        let r = smooth(&[3, 1, 0], [0.5, 0.25, 0.25], 2.0);
        assert!((r[0] - 4.0 / 6.0).abs() < 1e-12);
        assert!((r[1] - 1.5 / 6.0).abs() < 1e-12);
        assert!((r[2] - 0.5 / 6.0).abs() < 1e-12);
    }
}
