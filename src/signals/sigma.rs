//! Sigma severity priors: the level that SigmaHQ's rule authors gave to detections of each ATT&CK
//! technique.
//!
//! Part of `signals` (public knowledge), read by `features`. The table is built from the index of
//! the SigmaHQ rules shipped in `datasets/sigma/sigma_rules.csv` (commit 8eaafff1, Detection Rule
//! License 1.1, attribution to the SigmaHQ project and its rule authors), compiled into the binary
//! so that an artifact scores anywhere.
//!
//! # Definition
//!
//! Each rule's `level` maps to a number: informational 0, low 1, medium 2, high 3, critical 4
//! ([`LEVELS`]). For a technique `t` let R(t) be the rules that tag `t` itself or, when `t` is a
//! parent technique, any of its sub-techniques (a rule for `T1059.001` detects a use of `T1059`);
//! a rule counts once per technique however many of its tags fall in the family. Then
//!
//! * `rules` = |R(t)|,
//! * `mean_level` = mean of the levels of R(t),
//! * `max_level` = max of the levels of R(t).
//!
//! A sub-technique without rules of its own falls back to its parent's prior (`T1078.004` →
//! `T1078`); a technique no rule tags has no prior (`None`).
//!
//! # Statuses
//!
//! Rules whose status is `deprecated` or `unsupported`, or that live in the `deprecated` collection,
//! are skipped: SigmaHQ retired them, usually in favour of a rewritten rule that is also in the
//! index, so counting them would count one detection twice. The other statuses (`stable`, `test`,
//! `experimental`) say how mature a rule is (its false-positive record), not how severe the
//! behaviour is, so they count alike, unweighted.

use std::collections::BTreeMap;

use super::{technique_code, SignalsError};

const SIGMA_RULES_CSV: &str = include_str!("../../datasets/sigma/sigma_rules.csv");

const TABLE: &str = "sigma_rules";

/// Sigma rule levels, in increasing severity; a level's number is its index here.
pub const LEVELS: [&str; 5] = ["informational", "low", "medium", "high", "critical"];

/// The expert severity prior of one ATT&CK technique (see the [module docs](self) for the
/// definition).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmaPrior {
    /// Mean level of the rules that detect the technique, in 0..=4 ([`LEVELS`]).
    pub mean_level: f32,
    /// Highest level among those rules, in 0..=4.
    pub max_level: u8,
    /// Number of (non-deprecated) rules that detect the technique; at least 1.
    pub rules: u32,
}

/// Technique → [`SigmaPrior`] table.
#[derive(Debug, Clone)]
pub struct Sigma {
    /// by technique code
    priors: BTreeMap<u32, SigmaPrior>,
    rules: usize,
    skipped: usize,
}

#[derive(Default)]
struct Acc {
    sum: u32,
    max: u8,
    n: u32,
}

impl Sigma {
    /// A table that knows no rule (every prior `None`).
    pub fn empty() -> Sigma {
        Sigma {
            priors: BTreeMap::new(),
            rules: 0,
            skipped: 0,
        }
    }

    /// The shipped SigmaHQ index (3,952 rules).
    ///
    /// ```
    /// let sigma = threatrank::signals::Sigma::shipped().unwrap();
    /// assert!(sigma.rules() > 3_000);
    /// ```
    pub fn shipped() -> Result<Sigma, SignalsError> {
        Self::parse(SIGMA_RULES_CSV)
    }

    /// Parses a Sigma rule index: a CSV with a header naming at least the columns `level`,
    /// `status` and `techniques` (`;`-separated ATT&CK ids such as `T1059.001`); a `collection`
    /// column is optional. An unknown level, a malformed technique id or a missing column is an
    /// error naming the table and the 1-based line.
    pub fn parse(text: &str) -> Result<Sigma, SignalsError> {
        let err = |line: usize, reason: String| SignalsError::Table {
            table: TABLE,
            line,
            reason,
        };
        let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let header = rdr.headers().map_err(|e| err(1, e.to_string()))?.clone();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| err(1, format!("no column {name:?}")))
        };
        let (c_level, c_status, c_tech) = (col("level")?, col("status")?, col("techniques")?);
        let c_collection = header.iter().position(|h| h == "collection");

        let mut acc: BTreeMap<u32, Acc> = BTreeMap::new();
        let mut rules = 0usize;
        let mut skipped = 0usize;
        let mut codes: Vec<u32> = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| err(line, e.to_string()))?;
            let field = |c: usize| {
                rec.get(c)
                    .ok_or_else(|| err(line, format!("fewer than {} fields", c + 1)))
            };
            let level_name = field(c_level)?;
            let level = LEVELS
                .iter()
                .position(|l| *l == level_name)
                .ok_or_else(|| err(line, format!("unknown level {level_name:?}")))?
                as u8;
            let status = field(c_status)?;
            let collection = match c_collection {
                Some(c) => field(c)?,
                None => "",
            };
            let techniques = field(c_tech)?;
            codes.clear();
            for t in techniques.split(';').filter(|t| !t.is_empty()) {
                let code = technique_code(t)
                    .ok_or_else(|| err(line, format!("malformed technique id {t:?}")))?;
                // the technique itself plus its parent, each once per rule
                codes.push(code);
                codes.push(code / 1000 * 1000);
            }
            if matches!(status, "deprecated" | "unsupported") || collection == "deprecated" {
                skipped += 1;
                continue;
            }
            rules += 1;
            codes.sort_unstable();
            codes.dedup();
            for &code in &codes {
                let a = acc.entry(code).or_default();
                a.sum += u32::from(level);
                a.max = a.max.max(level);
                a.n += 1;
            }
        }
        let priors = acc
            .into_iter()
            .map(|(t, a)| {
                let prior = SigmaPrior {
                    mean_level: a.sum as f32 / a.n as f32,
                    max_level: a.max,
                    rules: a.n,
                };
                (t, prior)
            })
            .collect();
        Ok(Sigma {
            priors,
            rules,
            skipped,
        })
    }

    /// The prior of a technique; a sub-technique without rules falls back to its parent; `None`
    /// when no rule detects the technique (or its parent) or the id is malformed.
    ///
    /// ```
    /// let sigma = threatrank::signals::Sigma::shipped().unwrap();
    /// let p = sigma.prior("T1003.001").unwrap(); // LSASS memory dumping
    /// assert!(p.mean_level > 2.5 && p.max_level == 4 && p.rules > 10);
    /// assert_eq!(sigma.prior("T1078.999"), sigma.prior("T1078")); // parent fallback
    /// assert!(sigma.prior("T9999").is_none());
    /// ```
    pub fn prior(&self, technique: &str) -> Option<SigmaPrior> {
        let code = technique_code(technique)?;
        self.priors
            .get(&code)
            .or_else(|| self.priors.get(&(code / 1000 * 1000)))
            .copied()
    }

    /// Number of rules that entered the table.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// Number of rules skipped as deprecated or unsupported.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Number of techniques (parents and sub-techniques) with a prior of their own.
    pub fn len(&self) -> usize {
        self.priors.len()
    }

    /// True when no technique has a prior.
    pub fn is_empty(&self) -> bool {
        self.priors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "id,title,level,status,techniques,tactics,product,category,service,collection,path\n";

    fn table(rows: &[&str]) -> String {
        let mut s = HEADER.to_string();
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        s
    }

    #[test]
    fn shipped_table_loads() {
        let s = Sigma::shipped().unwrap();
        // Reference values counted with Python's csv module over the shipped file: 3,952 rules,
        // 172 deprecated (status or collection) or unsupported; T1003.001 (LSASS memory) has 79
        // live rules, mean level 2.975, max critical.
        assert_eq!(s.rules() + s.skipped(), 3_952);
        assert_eq!(s.skipped(), 172);
        let lsass = s.prior("T1003.001").unwrap();
        assert_eq!((lsass.rules, lsass.max_level), (79, 4));
        assert!((lsass.mean_level - 2.9747).abs() < 1e-3, "{lsass:?}");
        assert!(s.len() > 300, "{}", s.len());
        // Every prior is within the level range and backed by at least one rule.
        for t in ["T1059", "T1059.001", "T1003", "T1566.001", "T1078"] {
            let p = s.prior(t).unwrap();
            assert!(p.rules >= 1 && p.max_level <= 4, "{t}: {p:?}");
            assert!(
                p.mean_level >= 0.0 && p.mean_level <= f32::from(p.max_level),
                "{t}: {p:?}"
            );
        }
        // A parent counts the rules of its sub-techniques.
        assert!(s.prior("T1059").unwrap().rules >= s.prior("T1059.001").unwrap().rules);
    }

    #[test]
    fn levels_statuses_and_fallback() {
        let s = Sigma::parse(&table(&[
            "a,x,low,test,T1059.001,,,,,rules,",
            "b,x,critical,experimental,T1059.001;T1059,,,,,rules,",
            "c,x,high,stable,T1003,,,,,rules,",
            "d,x,critical,deprecated,T1003,,,,,deprecated,",
            "e,x,critical,test,T1003,,,,,deprecated,",
            "f,x,informational,test,,,,,,rules,",
        ]))
        .unwrap();
        assert_eq!((s.rules(), s.skipped()), (4, 2));
        // low (1) and critical (4)
        let sub = s.prior("T1059.001").unwrap();
        assert_eq!(
            sub,
            SigmaPrior {
                mean_level: 2.5,
                max_level: 4,
                rules: 2
            }
        );
        // rule b tags both the parent and the sub-technique: counted once for the parent
        assert_eq!(s.prior("T1059"), Some(sub));
        // sub-technique without rules falls back to the parent
        assert_eq!(s.prior("T1059.003"), Some(sub));
        // deprecated rules do not count
        assert_eq!(
            s.prior("T1003"),
            Some(SigmaPrior {
                mean_level: 3.0,
                max_level: 3,
                rules: 1
            })
        );
        assert_eq!(s.prior("T1003.001"), s.prior("T1003"));
        assert_eq!(s.prior("T1110"), None);
        assert_eq!(s.prior(""), None);
    }

    #[test]
    fn bad_rows_name_table_and_line() {
        let e = Sigma::parse(&table(&[
            "a,x,low,test,T1059,,,,,rules,",
            "b,x,severe,test,T1059,,,,,rules,",
        ]))
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("sigma_rules") && msg.contains("line 3"),
            "{msg}"
        );
        assert!(msg.contains("severe"), "{msg}");

        let e = Sigma::parse(&table(&["a,x,low,test,T59,,,,,rules,"])).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");

        let e = Sigma::parse("id,title,status,techniques\na,x,test,T1059\n").unwrap_err();
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("level"),
            "{e}"
        );
    }
}
