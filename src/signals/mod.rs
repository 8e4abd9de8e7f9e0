//! Signals: public knowledge (MITRE ATT&CK tactics and groups, Sigma rule levels) and
//! anonymized cross-tenant aggregates ([`global`]).
//!
//! Feeds `features`. Three public tables are compiled into the binary so that a model artifact
//! scores anywhere without the datasets folder:
//!
//! * the ATT&CK technique → tactics table ([`Attack`]; v18.1, `datasets/attack/technique_tactics.csv`,
//!   © The MITRE Corporation, ATT&CK terms of use);
//! * Sigma severity priors per technique ([`Sigma`], module [`sigma`]; SigmaHQ rule index,
//!   Detection Rule License 1.1);
//! * ATT&CK threat groups and the techniques they use ([`Groups`], module [`groups`]), to rank
//!   known actors for an incident's techniques.

use std::collections::BTreeMap;

pub mod dp;
pub mod global;
pub mod ledger;

pub use global::{
    GlobalSignals, GlobalSignalsError, Privacy, PseudonymKey, Released, SignalKind, SignalsParams,
    SignalsValidParams, SnapshotBuilder,
};
pub use ledger::{Ledger, LedgerError};
pub mod groups;
pub mod sigma;

pub use groups::{GroupHit, GroupMatch, GroupScratch, Groups, GroupsParams, GroupsValidParams};
pub use sigma::{Sigma, SigmaPrior};

/// Enterprise ATT&CK tactics in kill-chain order (reconnaissance first, impact last).
pub const TACTICS: [&str; 14] = [
    "reconnaissance",
    "resource-development",
    "initial-access",
    "execution",
    "persistence",
    "privilege-escalation",
    "defense-evasion",
    "credential-access",
    "discovery",
    "lateral-movement",
    "collection",
    "command-and-control",
    "exfiltration",
    "impact",
];

const TECHNIQUE_TACTICS_CSV: &str = include_str!("../../datasets/attack/technique_tactics.csv");

/// Errors of the knowledge tables.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    /// A table row is malformed.
    #[error("{table}: line {line}: {reason}")]
    Table {
        /// table name
        table: &'static str,
        /// 1-based line
        line: usize,
        /// what is wrong
        reason: String,
    },
    /// Global signals: parameters, key or snapshot file.
    #[error(transparent)]
    Global(#[from] GlobalSignalsError),
    /// The privacy-budget ledger of the global signals.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A parameter is out of its range.
    #[error("parameter {name}: {reason}")]
    Param {
        /// parameter name
        name: &'static str,
        /// what is wrong
        reason: String,
    },
}

/// ATT&CK technique → tactic bitmask (bit i = [`TACTICS`]`[i]`).
#[derive(Debug, Clone)]
pub struct Attack {
    tactics: BTreeMap<String, u16>,
    names: BTreeMap<String, String>,
}

impl Attack {
    /// The shipped ATT&CK v18.1 table.
    pub fn shipped() -> Result<Attack, SignalsError> {
        Self::parse(TECHNIQUE_TACTICS_CSV)
    }

    /// A table that knows no technique.
    pub fn empty() -> Attack {
        Attack {
            tactics: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    /// Parses `technique_id,name,tactics,...` CSV (tactics `;`-separated).
    pub fn parse(text: &str) -> Result<Attack, SignalsError> {
        let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let mut tactics = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| SignalsError::Table {
                table: "technique_tactics",
                line,
                reason: e.to_string(),
            })?;
            let (Some(id), Some(name), Some(tac)) = (rec.get(0), rec.get(1), rec.get(2)) else {
                return Err(SignalsError::Table {
                    table: "technique_tactics",
                    line,
                    reason: "fewer than 3 fields".into(),
                });
            };
            let mut mask = 0u16;
            for t in tac.split(';').filter(|t| !t.is_empty()) {
                match TACTICS.iter().position(|k| *k == t) {
                    Some(b) => mask |= 1 << b,
                    None => {
                        return Err(SignalsError::Table {
                            table: "technique_tactics",
                            line,
                            reason: format!("unknown tactic {t:?}"),
                        })
                    }
                }
            }
            tactics.insert(id.to_string(), mask);
            names.insert(id.to_string(), name.to_string());
        }
        Ok(Attack { tactics, names })
    }

    /// Tactic bitmask of a technique; a sub-technique unknown to the table falls back to its
    /// parent (`T1078.004` → `T1078`). 0 when unknown.
    ///
    /// ```
    /// let attack = threatrank::signals::Attack::shipped().unwrap();
    /// let m = attack.tactics_of("T1566.002");
    /// assert_ne!(m & (1 << 2), 0); // initial-access
    /// ```
    pub fn tactics_of(&self, technique: &str) -> u16 {
        if let Some(m) = self.tactics.get(technique) {
            return *m;
        }
        match technique.split_once('.') {
            Some((parent, _)) => self.tactics.get(parent).copied().unwrap_or(0),
            None => 0,
        }
    }

    /// Technique name, when known.
    pub fn name_of(&self, technique: &str) -> Option<&str> {
        self.names.get(technique).map(String::as_str)
    }

    /// Number of techniques in the table.
    pub fn len(&self) -> usize {
        self.tactics.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.tactics.is_empty()
    }
}

/// Everything the extractors know besides the evidence: the public tables, the operator's
/// pseudonymization key and, optionally, a global-signals snapshot built elsewhere (other
/// tenants, an earlier period) to use instead of one built from the training data.
#[derive(Debug, Clone)]
pub struct Knowledge {
    /// ATT&CK technique → tactics
    pub attack: Attack,
    /// Sigma severity priors per technique
    pub sigma: Sigma,
    /// ATT&CK groups, for actor attribution
    pub groups: Groups,
    /// key of the entity pseudonyms in global signals
    pub key: PseudonymKey,
    /// an external snapshot: training uses it for the `global` family (instead of building one,
    /// out-of-fold, from the training incidents), scoring uses it instead of the artifact's
    pub snapshot: Option<GlobalSignals>,
}

impl Knowledge {
    /// The shipped public tables with `key` and no external snapshot.
    pub fn shipped(key: PseudonymKey) -> Result<Knowledge, SignalsError> {
        Ok(Knowledge {
            attack: Attack::shipped()?,
            sigma: Sigma::shipped()?,
            groups: Groups::shipped()?,
            key,
            snapshot: None,
        })
    }

    /// The shipped tables with the public development key (demos, tests).
    pub fn development() -> Result<Knowledge, SignalsError> {
        Self::shipped(PseudonymKey::development())
    }

    /// Uses an external snapshot (checked against the key).
    pub fn with_snapshot(mut self, snapshot: GlobalSignals) -> Result<Knowledge, SignalsError> {
        snapshot.check_key(&self.key)?;
        self.snapshot = Some(snapshot);
        Ok(self)
    }
}

/// Numeric code of an ATT&CK technique id: `T1059` → 1_059_000, `T1059.001` → 1_059_001 (`T` +
/// 4 digits, optionally `.` + 3 digits other than 000; sub-technique numbers start at 001, so the parent's code
/// is the code of the family). `None` for anything else.
pub(crate) fn technique_code(t: &str) -> Option<u32> {
    let b = t.as_bytes();
    let num = |s: &[u8]| {
        s.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    match b.len() {
        5 if b[0] == b'T' => Some(num(&b[1..5])? * 1000),
        9 if b[0] == b'T' && b[5] == b'.' => {
            let sub = num(&b[6..9])?;
            (sub > 0).then_some(num(&b[1..5])? * 1000 + sub)
        }
        _ => None,
    }
}

/// The technique id of a [`technique_code`].
pub(crate) fn technique_id(code: u32) -> String {
    match code % 1000 {
        0 => format!("T{:04}", code / 1000),
        sub => format!("T{:04}.{sub:03}", code / 1000),
    }
}

/// Names of the tactics set in a bitmask, in kill-chain order.
pub fn tactic_names(mask: u16) -> Vec<&'static str> {
    TACTICS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| *t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_loads() {
        let a = Attack::shipped().unwrap();
        assert!(a.len() > 800, "{}", a.len());
        // T1078 Valid Accounts: defense-evasion, persistence, privilege-escalation, initial-access
        let names = tactic_names(a.tactics_of("T1078"));
        assert!(names.contains(&"initial-access"), "{names:?}");
        assert_eq!(a.tactics_of("T1078.999"), a.tactics_of("T1078"));
        assert_eq!(a.tactics_of("T9999"), 0);
    }

    #[test]
    fn technique_codes_round_trip() {
        for (id, code) in [
            ("T1059", 1_059_000),
            ("T1059.001", 1_059_001),
            ("T0001", 1_000),
        ] {
            assert_eq!(technique_code(id), Some(code), "{id}");
            assert_eq!(technique_id(code), id);
        }
        for bad in [
            "",
            "T105",
            "t1059",
            "T1059.",
            "T1059.01",
            "T1059;001",
            "TA0001",
            "T10a9",
            "T1059.000",
        ] {
            assert_eq!(technique_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_table_is_an_error() {
        let e = Attack::parse("technique_id,name,tactics\nT1,x,flying\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
