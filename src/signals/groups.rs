//! Actor attribution: which known threat groups use the techniques an incident shows.
//!
//! Part of `signals` (public knowledge), read by `features` once per incident. The table is MITRE
//! ATT&CK v18.1's intrusion sets and the techniques each is documented to use ("uses"
//! relationships), shipped in `datasets/attack/group_techniques.csv` (168 groups, © The MITRE
//! Corporation, ATT&CK terms of use) and compiled into the binary.
//!
//! # Similarity
//!
//! Techniques are weighted by inverse document frequency over the groups, so that a technique that
//! half the groups use (`T1105` Ingress Tool Transfer) says less about the actor than one that a
//! single group uses:
//!
//! ```text
//! w(t) = ln((G + 1) / (df(t) + 1)) + φ
//! ```
//!
//! with G the number of groups, df(t) the number of groups that use exactly `t`, φ = `idf_floor`
//! (default 0.1) so that even a technique every group uses keeps a positive weight. A query
//! technique that no group uses exactly gets df = 0.
//!
//! A group `g` earns credit c(q, g) for a query technique `q`: 1 when it uses `q` itself; ρ =
//! `related_credit` (default ½) when it uses only other members of `q`'s family (the parent, or a
//! sibling or child sub-technique: `T1078` vs `T1078.004`); 0 otherwise. The query Q is the set of
//! distinct, well-formed technique ids whose family some group uses (the others cannot tell groups
//! apart and are ignored). With
//!
//! ```text
//! I(g) = Σ_{q∈Q} c(q,g)·w(q)    W_Q = Σ_{q∈Q} w(q)    W(g) = Σ_{t∈g} w(t)
//!
//! score(g) = I(g) / (W_Q + β·max(W(g) − I(g), 0) + κ)
//! ```
//!
//! with β = `size_penalty` (default 0.01) and κ = `evidence_prior` (default 1). Without κ this is
//! Tversky's ratio model of similarity (A. Tversky, "Features of similarity", Psychological Review
//! 84(4), 1977), S = I / (I + α·|Q∖g| + β·|g∖Q|), on weighted sets with α = 1 and a small β.
//!
//! Why not Jaccard (α = β = 1): an incident holds 1–5 techniques, a group 10–100, so Jaccard is
//! dominated by group size and favours tiny groups that share one technique over a large group
//! that explains the whole incident. Why not pure query coverage I / W_Q (β = 0): every group that
//! covers the query scores 1, so a 100-technique group ties with a 2-technique group, and a
//! single-technique query scores 1 for every group that uses it however common the technique is.
//! With β = 0.01 a missed query technique costs fully, while a hundred group techniques the incident
//! did not show cost about as much as one missed query technique of the same weight: an incident
//! rarely shows more than a few percent of an actor's documented repertoire, so the rest is weak
//! evidence against the actor.
//!
//! κ is additive smoothing of the ratio: a pseudo-weight of evidence that no group explains. The
//! ATT&CK profiles of some groups hold one or two techniques (their documentation is thin), so
//! without κ a query of one very common technique (`T1105`, w ≈ 0.8) scores about 0.9 against such
//! a group, more than the only group that uses a rare technique. With κ an exact match on query
//! weight W_Q scores at most W_Q / (W_Q + κ): little evidence cannot reach a high score, and the
//! score reads as attribution strength across incidents, not only as a ranking within one.
//! κ = 1 is about the weight of a technique that 60 of the 168 groups use.
//!
//! Properties (tested below): 0 < score < 1 for every group that shares a technique family (≤ 1,
//! and exactly 1 when the group uses exactly the query, if κ = 0); more covered query weight
//! scores higher; among groups that cover the query alike, the one with less other weight scores
//! higher; a single rare technique scores higher than a single common one, both for one group
//! that uses both and for the best group of each; the result does not depend on the order or
//! repetition of the query's techniques.
//!
//! # Speed
//!
//! Technique ids are turned into integer codes (no hashing, no allocation) and looked up by binary
//! search; per-technique and per-family posting lists (technique → groups, CSR layout) mean a
//! query touches only the groups that share a family with it; the accumulators live in a reusable
//! [`GroupScratch`], so [`Groups::top_into`] allocates nothing once the scratch and output have
//! grown.

use serde::{Deserialize, Serialize};

use super::{technique_code, technique_id, SignalsError};

const GROUP_TECHNIQUES_CSV: &str = include_str!("../../datasets/attack/group_techniques.csv");

const TABLE: &str = "group_techniques";

/// Parameters of the group similarity (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupsParams {
    related_credit: f32,
    size_penalty: f32,
    evidence_prior: f32,
    idf_floor: f32,
}

impl Default for GroupsParams {
    fn default() -> Self {
        GroupsParams {
            related_credit: 0.5,
            size_penalty: 0.01,
            evidence_prior: 1.0,
            idf_floor: 0.1,
        }
    }
}

impl GroupsParams {
    /// Credit ρ ∈ [0, 1] for a parent/sibling/child match instead of the exact technique.
    /// Default 0.5.
    pub fn related_credit(mut self, v: f32) -> Self {
        self.related_credit = v;
        self
    }

    /// Weight β ≥ 0 of the group's techniques that the query does not show. Default 0.01.
    pub fn size_penalty(mut self, v: f32) -> Self {
        self.size_penalty = v;
        self
    }

    /// Pseudo-weight κ ≥ 0 of unexplained evidence in the denominator. Default 1.0.
    pub fn evidence_prior(mut self, v: f32) -> Self {
        self.evidence_prior = v;
        self
    }

    /// Floor φ > 0 added to every IDF weight. Default 0.1.
    pub fn idf_floor(mut self, v: f32) -> Self {
        self.idf_floor = v;
        self
    }

    /// Checks the ranges.
    pub fn check(&self) -> Result<GroupsValidParams, SignalsError> {
        let bad = |name: &'static str, reason: &str, v: f32| SignalsError::Param {
            name,
            reason: format!("{reason}, got {v}"),
        };
        if !(0.0..=1.0).contains(&self.related_credit) {
            return Err(bad(
                "related_credit",
                "must be in [0, 1]",
                self.related_credit,
            ));
        }
        if !(self.size_penalty.is_finite() && self.size_penalty >= 0.0) {
            return Err(bad(
                "size_penalty",
                "must be finite and >= 0",
                self.size_penalty,
            ));
        }
        if !(self.evidence_prior.is_finite() && self.evidence_prior >= 0.0) {
            return Err(bad(
                "evidence_prior",
                "must be finite and >= 0",
                self.evidence_prior,
            ));
        }
        if !(self.idf_floor.is_finite() && self.idf_floor > 0.0) {
            return Err(bad("idf_floor", "must be finite and > 0", self.idf_floor));
        }
        Ok(GroupsValidParams(*self))
    }
}

/// [`GroupsParams`] that passed [`GroupsParams::check`].
/// Its default is the checked [`GroupsParams::default`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GroupsValidParams(GroupsParams);

/// One ranked group, with the query techniques it explains.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMatch {
    /// ATT&CK group id, e.g. `G0016`.
    pub id: String,
    /// Group name, e.g. `APT29`.
    pub name: String,
    /// Similarity in (0, 1) (module docs; ≤ 1 when κ = 0).
    pub score: f32,
    /// Query techniques the group uses exactly, ascending.
    pub shared: Vec<String>,
    /// Query techniques for which the group uses only a parent/sibling/child, ascending.
    pub related: Vec<String>,
}

/// A ranked group by index (see [`Groups::id`], [`Groups::name`]); the allocation-free result of
/// [`Groups::top_into`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupHit {
    /// Index of the group, 0..[`Groups::len`] (groups are ordered by id).
    pub index: usize,
    /// Similarity, as in [`GroupMatch::score`].
    pub score: f32,
}

/// Reusable accumulators for [`Groups::top_into`]; one per thread.
#[derive(Debug, Clone, Default)]
pub struct GroupScratch {
    acc: Vec<f32>,
    stamp: Vec<u32>,
    generation: u32,
    touched: Vec<u16>,
    query: Vec<u32>,
}

impl GroupScratch {
    /// An empty scratch; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Debug, Clone)]
struct Group {
    id: String,
    name: String,
    aliases: Vec<String>,
    /// technique codes, ascending, distinct
    techniques: Vec<u32>,
    /// family (parent) codes, ascending, distinct
    families: Vec<u32>,
    /// W(g)
    mass: f32,
}

/// Posting lists in CSR layout: `keys[i]` → `groups[off[i]..off[i + 1]]` (group indices ascending).
#[derive(Debug, Clone, Default)]
struct Postings {
    keys: Vec<u32>,
    off: Vec<u32>,
    groups: Vec<u16>,
}

impl Postings {
    fn build(mut pairs: Vec<(u32, u16)>) -> Postings {
        pairs.sort_unstable();
        pairs.dedup();
        let mut p = Postings::default();
        for (key, g) in pairs {
            if p.keys.last() != Some(&key) {
                p.keys.push(key);
                p.off.push(p.groups.len() as u32);
            }
            p.groups.push(g);
        }
        p.off.push(p.groups.len() as u32);
        p
    }

    fn find(&self, key: u32) -> Option<usize> {
        self.keys.binary_search(&key).ok()
    }

    fn list(&self, i: usize) -> &[u16] {
        &self.groups[self.off[i] as usize..self.off[i + 1] as usize]
    }
}

/// ATT&CK threat groups with IDF-weighted technique profiles, ranked against an incident's
/// techniques.
#[derive(Debug, Clone)]
pub struct Groups {
    params: GroupsParams,
    groups: Vec<Group>,
    exact: Postings,
    family: Postings,
    /// w(t) per `exact.keys[i]`
    weight: Vec<f32>,
    /// weight of a technique no group uses exactly (df = 0)
    weight_unused: f32,
}

impl Groups {
    /// The shipped ATT&CK v18.1 groups with default parameters.
    ///
    /// ```
    /// let groups = threatrank::signals::Groups::shipped().unwrap();
    /// assert_eq!(groups.len(), 168);
    /// ```
    pub fn shipped() -> Result<Groups, SignalsError> {
        Self::parse(GROUP_TECHNIQUES_CSV, &GroupsValidParams::default())
    }

    /// A table that knows no group (`top` is always empty).
    pub fn empty() -> Groups {
        match Self::parse(
            "group_id,name,aliases,techniques\n",
            &GroupsValidParams::default(),
        ) {
            Ok(g) => g,
            Err(_) => unreachable!("a header-only table parses"),
        }
    }

    /// The shipped groups with other parameters.
    pub fn shipped_with(params: &GroupsValidParams) -> Result<Groups, SignalsError> {
        Self::parse(GROUP_TECHNIQUES_CSV, params)
    }

    /// Parses `group_id,name,aliases,techniques` CSV (header first; aliases and techniques
    /// `;`-separated). A malformed technique id, an empty or repeated
    /// group id, or a short row is an error naming the table and the 1-based line.
    pub fn parse(text: &str, params: &GroupsValidParams) -> Result<Groups, SignalsError> {
        let err = |line: usize, reason: String| SignalsError::Table {
            table: TABLE,
            line,
            reason,
        };
        let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let mut rows: Vec<(usize, Group)> = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| err(line, e.to_string()))?;
            let (Some(id), Some(name), Some(aliases), Some(techs)) =
                (rec.get(0), rec.get(1), rec.get(2), rec.get(3))
            else {
                return Err(err(line, "fewer than 4 fields".into()));
            };
            if id.is_empty() {
                return Err(err(line, "empty group id".into()));
            }
            let mut techniques = Vec::new();
            for t in techs.split(';').filter(|t| !t.is_empty()) {
                let code = technique_code(t)
                    .ok_or_else(|| err(line, format!("malformed technique id {t:?}")))?;
                techniques.push(code);
            }
            techniques.sort_unstable();
            techniques.dedup();
            let mut families: Vec<u32> = techniques.iter().map(|c| c / 1000 * 1000).collect();
            families.dedup(); // sorted already: the family code is monotone in the code
            let aliases = aliases
                .split(';')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect();
            let group = Group {
                id: id.to_string(),
                name: name.to_string(),
                aliases,
                techniques,
                families,
                mass: 0.0,
            };
            rows.push((line, group));
        }
        rows.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        if let Some(w) = rows.windows(2).find(|w| w[0].1.id == w[1].1.id) {
            let (first, again) = (w[0].0.min(w[1].0), w[0].0.max(w[1].0));
            return Err(err(
                again,
                format!("group id {:?} repeats line {first}", w[0].1.id),
            ));
        }
        if rows.len() > usize::from(u16::MAX) {
            return Err(err(rows.len() + 1, "more than 65,535 groups".into()));
        }
        let mut groups: Vec<Group> = rows.into_iter().map(|(_, g)| g).collect();

        let mut exact_pairs = Vec::new();
        let mut family_pairs = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            exact_pairs.extend(g.techniques.iter().map(|&t| (t, gi as u16)));
            family_pairs.extend(g.families.iter().map(|&f| (f, gi as u16)));
        }
        let exact = Postings::build(exact_pairs);
        let family = Postings::build(family_pairs);

        let p = params.0;
        let n = groups.len() as f64;
        let idf = |df: usize| ((n + 1.0) / (df as f64 + 1.0)).ln() as f32 + p.idf_floor;
        let weight: Vec<f32> = (0..exact.keys.len())
            .map(|i| idf(exact.list(i).len()))
            .collect();
        let weight_unused = idf(0);
        for g in &mut groups {
            // f32, ascending codes: the same additions as a query equal to the group makes, so
            // that such a query scores exactly 1
            g.mass = g.techniques.iter().fold(0.0f32, |m, t| {
                m + exact.find(*t).map_or(weight_unused, |i| weight[i])
            });
        }
        Ok(Groups {
            params: p,
            groups,
            exact,
            family,
            weight,
            weight_unused,
        })
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True when the table holds no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Id of the group at `index` (groups are ordered by id). Panics when out of range, like
    /// slice indexing; indices come from [`GroupHit`].
    pub fn id(&self, index: usize) -> &str {
        &self.groups[index].id
    }

    /// Name of the group at `index`.
    pub fn name(&self, index: usize) -> &str {
        &self.groups[index].name
    }

    /// Aliases of the group at `index`.
    pub fn aliases(&self, index: usize) -> &[String] {
        &self.groups[index].aliases
    }

    /// Index of a group id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.groups.binary_search_by(|g| g.id.as_str().cmp(id)).ok()
    }

    /// IDF weight w(t) of a technique as a query term; `None` when no group uses its family (the
    /// technique is then ignored by [`top`](Self::top)) or the id is malformed.
    ///
    /// ```
    /// let groups = threatrank::signals::Groups::shipped().unwrap();
    /// // Ingress Tool Transfer is used by half the groups, Cloud Accounts by a few
    /// assert!(groups.weight("T1105").unwrap() < groups.weight("T1078.004").unwrap());
    /// ```
    pub fn weight(&self, technique: &str) -> Option<f32> {
        let code = technique_code(technique)?;
        self.family.find(code / 1000 * 1000)?;
        Some(self.weight_of(code))
    }

    fn weight_of(&self, code: u32) -> f32 {
        match self.exact.find(code) {
            Some(i) => self.weight[i],
            None => self.weight_unused,
        }
    }

    /// The `k` groups most similar to an incident's techniques, by score descending then group id
    /// ascending; only groups that share a technique family with the query; empty when none does
    /// (or the query is empty). Entries that are not technique ids are ignored, and so are
    /// repeats.
    ///
    /// ```
    /// let groups = threatrank::signals::Groups::shipped().unwrap();
    /// let top = groups.top(&["T1078.004", "T1098.005", "T1556.007"], 3);
    /// assert_eq!(top[0].name, "APT29");
    /// assert_eq!(top[0].shared, ["T1078.004", "T1098.005", "T1556.007"]);
    /// assert!(groups.top(&["T9999"], 3).is_empty());
    /// ```
    pub fn top<S: AsRef<str>>(&self, techniques: &[S], k: usize) -> Vec<GroupMatch> {
        let mut scratch = GroupScratch::new();
        let mut hits = Vec::new();
        self.top_into(techniques, k, &mut scratch, &mut hits);
        hits.iter()
            .map(|h| {
                let g = &self.groups[h.index];
                let mut shared = Vec::new();
                let mut related = Vec::new();
                for &q in &scratch.query {
                    if g.techniques.binary_search(&q).is_ok() {
                        shared.push(technique_id(q));
                    } else if g.families.binary_search(&(q / 1000 * 1000)).is_ok() {
                        related.push(technique_id(q));
                    }
                }
                GroupMatch {
                    id: g.id.clone(),
                    name: g.name.clone(),
                    score: h.score,
                    shared,
                    related,
                }
            })
            .collect()
    }

    /// How many of the techniques of the last [`top_into`](Self::top_into) call on `scratch`
    /// `hit`'s group uses exactly ([`GroupMatch::shared`]'s length), without allocation.
    pub fn shared_count(&self, hit: &GroupHit, scratch: &GroupScratch) -> usize {
        let g = &self.groups[hit.index];
        scratch
            .query
            .iter()
            .filter(|q| g.techniques.binary_search(q).is_ok())
            .count()
    }

    /// [`top`](Self::top) without allocation once `scratch` and `out` have grown: clears `out` and
    /// fills it with at most `k` hits in the same order.
    ///
    /// ```
    /// use threatrank::signals::{GroupScratch, Groups};
    /// let groups = Groups::shipped().unwrap();
    /// let (mut scratch, mut out) = (GroupScratch::new(), Vec::new());
    /// for incident in [&["T1110.003", "T1078.004"][..], &["T1566.002"][..]] {
    ///     groups.top_into(incident, 1, &mut scratch, &mut out);
    ///     assert_eq!(out.len(), 1);
    ///     assert!(out[0].score > 0.0 && out[0].score <= 1.0);
    /// }
    /// ```
    pub fn top_into<S: AsRef<str>>(
        &self,
        techniques: &[S],
        k: usize,
        scratch: &mut GroupScratch,
        out: &mut Vec<GroupHit>,
    ) {
        out.clear();
        let GroupScratch {
            acc,
            stamp,
            generation,
            touched,
            query,
        } = scratch;
        query.clear();
        touched.clear();
        query.extend(techniques.iter().filter_map(|t| technique_code(t.as_ref())));
        query.sort_unstable();
        query.dedup();
        if k == 0 || query.is_empty() {
            return;
        }
        let n = self.groups.len();
        if acc.len() < n {
            acc.resize(n, 0.0);
            stamp.resize(n, 0);
        }
        if *generation == u32::MAX {
            stamp.iter_mut().for_each(|s| *s = 0);
            *generation = 0;
        }
        *generation += 1;
        let gen = *generation;

        let rho = self.params.related_credit;
        let mut w_query = 0.0f32;
        // Ascending codes: the accumulation order, hence the floats, do not depend on the input.
        for &q in query.iter() {
            // a family no group uses cannot tell groups apart: not part of Q
            let Some(fi) = self.family.find(q / 1000 * 1000) else {
                continue;
            };
            let (w, exact) = match self.exact.find(q) {
                Some(i) => (self.weight[i], self.exact.list(i)),
                None => (self.weight_unused, &[][..]),
            };
            w_query += w;
            // exact ⊆ family, both ascending: merge
            let mut e = exact.iter().peekable();
            for &g in self.family.list(fi) {
                let credit = if e.peek() == Some(&&g) {
                    e.next();
                    w
                } else {
                    rho * w
                };
                let gi = usize::from(g);
                if stamp[gi] != gen {
                    stamp[gi] = gen;
                    acc[gi] = 0.0;
                    touched.push(g);
                }
                acc[gi] += credit;
            }
        }
        let beta = self.params.size_penalty;
        let base = w_query + self.params.evidence_prior;
        for &g in touched.iter() {
            let gi = usize::from(g);
            let i = acc[gi];
            if i > 0.0 {
                let score = i / (base + beta * (self.groups[gi].mass - i).max(0.0));
                out.push(GroupHit {
                    index: gi,
                    score: score.min(1.0),
                });
            }
        }
        let order =
            |a: &GroupHit, b: &GroupHit| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index));
        if out.len() > k {
            out.select_nth_unstable_by(k - 1, order);
            out.truncate(k);
        }
        out.sort_unstable_by(order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(params: GroupsParams) -> Groups {
        let csv = "group_id,name,aliases,techniques\n\
                   G0003,Big,\"B, Co;Bee\",T1001;T1002;T1003;T1004;T1005;T1006;T1007;T1008;T1059\n\
                   G0001,Small,,T1001;T1002\n\
                   G0002,Twin,,T1001;T1002\n\
                   G0004,Sub,,T1078.004;T1059\n";
        Groups::parse(csv, &params.check().unwrap()).unwrap()
    }

    #[test]
    fn empty_table_matches_nothing() {
        let g = Groups::empty();
        assert!(g.is_empty());
        assert!(g.top(&["T1078", "T1021.001"], 3).is_empty());
    }

    #[test]
    fn shipped_table_loads() {
        let g = Groups::shipped().unwrap();
        assert_eq!(g.len(), 168);
        let apt29 = g.index_of("G0016").unwrap();
        assert_eq!(g.name(apt29), "APT29");
        assert!(
            g.aliases(apt29).iter().any(|a| a == "Cozy Bear"),
            "{:?}",
            g.aliases(apt29)
        );
        // 66 techniques for APT29 in the shipped file (Python csv count)
        assert_eq!(g.groups[apt29].techniques.len(), 66);
        // ids ascending: index order is id order
        assert!(g.groups.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn apt29_distinctive_techniques_rank_apt29_first() {
        let g = Groups::shipped().unwrap();
        // Techniques only APT29 uses among the 168 groups (df = 1 in the shipped file):
        // T1098.005 Device Registration, T1556.007 Hybrid Identity, T1649 Steal or Forge
        // Authentication Certificates, T1651 Cloud Administration Command; plus a common one.
        let top = g.top(
            &["T1098.005", "T1556.007", "T1649", "T1651", "T1059.001"],
            3,
        );
        assert_eq!(top[0].id, "G0016", "{top:?}");
        assert_eq!(top[0].shared.len(), 5, "{top:?}");
        assert!(top[0].score > 2.0 * top[1].score, "{top:?}");
    }

    #[test]
    fn rare_technique_scores_higher_than_common() {
        let g = Groups::shipped().unwrap();
        assert!(g.weight("T1059").unwrap() > g.weight("T1105").unwrap());
        // For the same group, a single rare technique beats a single very common one.
        let apt29 = g.index_of("G0016").unwrap();
        let score_of = |t: &str| {
            let all = g.top(&[t], 168);
            all.iter().find(|m| m.id == "G0016").unwrap().score
        };
        assert!(g.groups[apt29]
            .techniques
            .contains(&technique_code("T1105").unwrap()));
        assert!(
            score_of("T1649") > score_of("T1105"),
            "{} {}",
            score_of("T1649"),
            score_of("T1105")
        );
        // and the best group for the rare one (APT29, the only user) scores higher than the best
        // for the common one (a group documented with a handful of techniques): κ at work
        let (rare, common) = (g.top(&["T1649"], 1), g.top(&["T1105"], 1));
        assert!(rare[0].score > common[0].score, "{rare:?} {common:?}");
        let g0 =
            Groups::shipped_with(&GroupsParams::default().evidence_prior(0.0).check().unwrap())
                .unwrap();
        assert!(g0.top(&["T1649"], 1)[0].score < g0.top(&["T1105"], 1)[0].score);
    }

    #[test]
    fn evidence_prior_bounds_scores_by_evidence() {
        // an exact match scores W_Q / (W_Q + κ): more (or rarer) evidence, higher score
        let g = toy(GroupsParams::default().size_penalty(0.0));
        let wq = g.weight("T1001").unwrap() + g.weight("T1002").unwrap();
        let top = g.top(&["T1001", "T1002"], 1);
        assert!((top[0].score - wq / (wq + 1.0)).abs() < 1e-6, "{top:?}");
        assert!(g.top(&["T1001"], 1)[0].score < top[0].score);
    }

    #[test]
    fn exact_match_scores_one_and_size_is_penalised_mildly() {
        // tie on equal profiles, broken by id, with the default parameters
        let top = toy(GroupsParams::default()).top(&["T1001", "T1002"], 5);
        assert_eq!((top[0].id.as_str(), top[1].id.as_str()), ("G0001", "G0002"));
        assert_eq!(top[0].score, top[1].score);
        assert!(top[0].score < 1.0 && top[2].score < top[1].score, "{top:?}");

        // the Tversky part alone (κ = 0)
        let g = toy(GroupsParams::default().evidence_prior(0.0));
        let top = g.top(&["T1001", "T1002"], 5);
        // Small and Twin use exactly the query: score 1, tie broken by id
        assert_eq!(top[0].id, "G0001");
        assert_eq!(top[1].id, "G0002");
        assert_eq!((top[0].score, top[1].score), (1.0, 1.0));
        // Big covers the query too, but has 7 other techniques: lower, yet well above 0.5
        assert_eq!(top[2].id, "G0003");
        assert!(top[2].score < 1.0 && top[2].score > 0.8, "{top:?}");
        assert_eq!(top.len(), 3);
        // Covering more of the query beats being small: Big explains both, Sub only one
        let top = g.top(&["T1059", "T1003"], 5);
        assert_eq!(top[0].id, "G0003", "{top:?}");
        assert_eq!(top[1].id, "G0004", "{top:?}");
        // With β = 0 (pure coverage) Big and Small tie on the first query
        let g0 = toy(GroupsParams::default()
            .size_penalty(0.0)
            .evidence_prior(0.0));
        let top = g0.top(&["T1001", "T1002"], 5);
        assert!(top.iter().all(|m| m.score == 1.0), "{top:?}");
    }

    #[test]
    fn sub_technique_partial_credit() {
        let g = toy(GroupsParams::default());
        // no group uses T1078 itself: it weighs as much as any technique with df = 0
        assert_eq!(g.weight("T1078"), g.weight("T1078.001"));
        assert!(g.weight("T1078").unwrap() > g.weight("T1078.004").unwrap());
        assert_eq!(g.weight("T1110"), None); // family unknown to every group
                                             // parent in the query, sub-technique in the group: half credit
        let m = &g.top(&["T1078"], 1)[0];
        assert_eq!(m.id, "G0004");
        assert!(m.shared.is_empty());
        assert_eq!(m.related, ["T1078"]);
        let exact = g.top(&["T1078.004"], 1)[0].score;
        // sibling: half credit as well, and less than the exact match
        let sibling = g.top(&["T1078.001"], 1)[0].score;
        assert!(sibling < exact && sibling > 0.0, "{sibling} {exact}");
        // I = w/2, W_Q = w, W(g) = w(T1078.004) + w(T1059): score = (w/2)/(w + β(W(g) − w/2))
        let wq = g.weight("T1078.001").unwrap();
        let mass = g.groups[3].mass;
        let want = 0.5 * wq / (wq + 1.0 + 0.01 * (mass - 0.5 * wq));
        assert!((sibling - want).abs() < 1e-6, "{sibling} {want}");
        // credit 0: the family alone no longer counts
        let g1 = toy(GroupsParams::default().related_credit(0.0));
        assert!(g1.top(&["T1078"], 3).is_empty());
    }

    #[test]
    fn empty_unknown_and_malformed_queries_are_empty() {
        let g = Groups::shipped().unwrap();
        let none: [&str; 0] = [];
        assert!(g.top(&none, 3).is_empty());
        assert!(g.top(&["T9999", "", "not-a-technique"], 3).is_empty());
        assert!(g.top(&["T1059"], 0).is_empty());
        // unknown entries do not change the scores of known ones
        assert_eq!(
            g.top(&["T1566.002"], 3),
            g.top(&["T1566.002", "T9999", "junk"], 3)
        );
    }

    #[test]
    fn order_is_total_and_independent_of_the_query_order() {
        let g = Groups::shipped().unwrap();
        let q = ["T1110", "T1110.003", "T1110.001", "T1078.004"];
        let a = g.top(&q, 168);
        let b = g.top(
            &["T1078.004", "T1110.001", "T1110.003", "T1110", "T1110"],
            168,
        );
        assert_eq!(a, b);
        assert!(a.len() > 10);
        for w in a.windows(2) {
            assert!(w[0].score > w[1].score || (w[0].score == w[1].score && w[0].id < w[1].id));
        }
        // top-k is the prefix of the full ranking
        assert_eq!(g.top(&q, 3), a[..3]);
        // reusing a scratch gives the same hits as a fresh one
        let mut scratch = GroupScratch::new();
        let mut out = Vec::new();
        for _ in 0..3 {
            g.top_into(&["T1566.002"], 5, &mut scratch, &mut out);
            g.top_into(&q, 5, &mut scratch, &mut out);
        }
        let fresh: Vec<_> = a[..5].iter().map(|m| (m.id.clone(), m.score)).collect();
        let reused: Vec<_> = out
            .iter()
            .map(|h| (g.id(h.index).to_string(), h.score))
            .collect();
        assert_eq!(fresh, reused);
    }

    #[test]
    fn bad_tables_and_params_are_errors() {
        let p = GroupsValidParams::default();
        let e = Groups::parse(
            "group_id,name,aliases,techniques\nG1,a,,T1059\nG2,b,,T59\n",
            &p,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("group_techniques") && msg.contains("line 3"),
            "{msg}"
        );
        let e = Groups::parse(
            "group_id,name,aliases,techniques\nG1,a,,T1059\nG1,b,,T1003\n",
            &p,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("G1"),
            "{e}"
        );
        let e = Groups::parse("group_id,name,aliases,techniques\nG1,a\n", &p).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");

        assert!(GroupsParams::default().related_credit(1.5).check().is_err());
        assert!(GroupsParams::default()
            .size_penalty(f32::NAN)
            .check()
            .is_err());
        assert!(GroupsParams::default().idf_floor(0.0).check().is_err());
        assert!(GroupsParams::default()
            .evidence_prior(-0.1)
            .check()
            .is_err());
        let e = GroupsParams::default().idf_floor(-1.0).check().unwrap_err();
        assert!(e.to_string().contains("idf_floor"), "{e}");
        let p: GroupsParams = serde_json::from_str(r#"{"size_penalty": 0.02}"#).unwrap();
        assert_eq!(p, GroupsParams::default().size_penalty(0.02));
    }
}
