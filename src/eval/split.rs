//! Leak-free train/test splits: grouped random folds and forward-chaining folds in time.
//!
//! Grouped splits ([`grouped_kfold`], [`grouped_holdout`]): rows sharing a group id (an
//! incident, or a tenant) always fall on the same side of a split, so a model is never tested
//! on evidence of an incident it has seen in training. They are seeded and deterministic: the
//! same groups and seed always give the same folds, on every platform (the RNG is a
//! self-contained splitmix64, no `rand` crate). They are random in time: a training incident
//! may be later than the incident scored.
//!
//! Forward chaining ([`forward_folds`]): the folds a deployment lives through. Each fold has
//! an origin (a UTC day boundary); it trains on the incidents that *ended* before the origin
//! (their verdicts existed then) and tests the incidents that *began* in the window from that
//! origin to the next one. Deterministic, no seed.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EvalError;
use crate::rng::SplitMix64;

/// A train/test split of row indices; both lists are sorted ascending and disjoint.
///
/// Folds of [`grouped_kfold`] and [`grouped_holdout`] also cover every row (train ∪ test =
/// all rows). Folds of [`forward_folds`] do not: rows that began before the origin but ended
/// after it, and rows that began after the fold's test window, are on neither side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// Training rows.
    pub train: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

/// Grouped k-fold: each distinct group is the test set of exactly one fold, so every row is
/// tested exactly once and no group is on both sides of any fold.
///
/// Algorithm (scikit-learn's `GroupKFold`, but seeded): collect the distinct group ids (sorted,
/// for determinism), shuffle them with a splitmix64 RNG seeded by `seed`, stable-sort them by
/// size (rows) descending, then assign each group to the fold with the fewest rows so far (ties
/// to the lowest fold index). The shuffle only reorders groups of equal size, so the fold sizes
/// differ by at most the largest group size, and every fold gets at least one group.
///
/// Errors: empty `groups`, `n_folds < 2`, fewer distinct groups than folds.
///
/// ```
/// use threatrank::eval::grouped_kfold;
/// let groups = [10, 10, 11, 12, 12, 12, 13];
/// let folds = grouped_kfold(&groups, 2, 42).unwrap();
/// assert_eq!(folds.len(), 2);
/// let mut tested: Vec<usize> = folds.iter().flat_map(|f| f.test.clone()).collect();
/// tested.sort();
/// assert_eq!(tested, (0..groups.len()).collect::<Vec<_>>());
/// // rows 3, 4, 5 (group 12) are always tested together
/// let f = folds.iter().find(|f| f.test.contains(&3)).unwrap();
/// assert!(f.test.contains(&4) && f.test.contains(&5));
/// assert!(!f.train.contains(&4) && !f.train.contains(&5));
/// ```
pub fn grouped_kfold(groups: &[u64], n_folds: usize, seed: u64) -> Result<Vec<Fold>, EvalError> {
    if groups.is_empty() {
        return Err(EvalError::Empty { what: "groups" });
    }
    if n_folds < 2 {
        return Err(EvalError::TooFewFolds { n_folds });
    }
    let sized = shuffled_groups(groups, seed);
    if sized.len() < n_folds {
        return Err(EvalError::TooFewGroups {
            groups: sized.len(),
            needed: n_folds,
        });
    }
    let mut fold_rows = vec![0usize; n_folds];
    let mut fold_of: BTreeMap<u64, usize> = BTreeMap::new();
    for &(g, size) in &sized {
        let f = (0..n_folds).min_by_key(|&f| fold_rows[f]).unwrap_or(0);
        fold_rows[f] += size;
        fold_of.insert(g, f);
    }
    let mut folds: Vec<Fold> = fold_rows
        .iter()
        .map(|&rows| Fold {
            train: Vec::with_capacity(groups.len() - rows),
            test: Vec::with_capacity(rows),
        })
        .collect();
    for (i, g) in groups.iter().enumerate() {
        let own = fold_of.get(g).copied().unwrap_or(0);
        for (f, fold) in folds.iter_mut().enumerate() {
            if f == own {
                fold.test.push(i);
            } else {
                fold.train.push(i);
            }
        }
    }
    Ok(folds)
}

/// Grouped holdout: one train/test split with whole groups on each side, for inner validation
/// (e.g. early stopping inside a training fold).
///
/// Distinct groups are sorted and shuffled as in [`grouped_kfold`]; walking them in that order,
/// a group joins the test side when that brings the test row count strictly closer to
/// `test_fraction * n` (the first group always joins). A group is never added if that would
/// leave the train side without a group, so both sides are non-empty.
///
/// Errors: empty `groups`, `test_fraction` not in `(0, 1)` (or NaN), fewer than 2 distinct
/// groups.
///
/// ```
/// use threatrank::eval::grouped_holdout;
/// let groups: Vec<u64> = (0..100).map(|i| i / 2).collect(); // 50 groups of 2 rows
/// let fold = grouped_holdout(&groups, 0.2, 7).unwrap();
/// assert_eq!(fold.test.len(), 20);
/// assert_eq!(fold.train.len() + fold.test.len(), 100);
/// ```
pub fn grouped_holdout(groups: &[u64], test_fraction: f64, seed: u64) -> Result<Fold, EvalError> {
    if groups.is_empty() {
        return Err(EvalError::Empty { what: "groups" });
    }
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(EvalError::InvalidFraction {
            fraction: test_fraction,
        });
    }
    let sized = shuffled_groups(groups, seed);
    if sized.len() < 2 {
        return Err(EvalError::TooFewGroups {
            groups: sized.len(),
            needed: 2,
        });
    }
    let target = test_fraction * groups.len() as f64;
    let mut test_groups: BTreeMap<u64, ()> = BTreeMap::new();
    let mut test_rows = 0usize;
    for &(g, size) in &sized {
        if test_groups.len() + 1 >= sized.len() {
            break; // keep at least one group for training
        }
        let now = (test_rows as f64 - target).abs();
        let after = ((test_rows + size) as f64 - target).abs();
        if test_groups.is_empty() || after < now {
            test_groups.insert(g, ());
            test_rows += size;
        }
    }
    let mut fold = Fold {
        train: Vec::with_capacity(groups.len() - test_rows),
        test: Vec::with_capacity(test_rows),
    };
    for (i, g) in groups.iter().enumerate() {
        if test_groups.contains_key(g) {
            fold.test.push(i);
        } else {
            fold.train.push(i);
        }
    }
    Ok(fold)
}

/// Seconds in a day; forward origins are multiples of it (UTC midnights of Unix time).
pub const DAY_SECONDS: i64 = 86_400;

/// Forward-chaining folds: the origins, the end of the last test window and one [`Fold`] per
/// origin (in origin order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardFolds {
    /// origins `D_1 < … < D_k`, Unix seconds, each a UTC day boundary
    pub origins: Vec<i64>,
    /// end (exclusive) of the last test window: the day boundary after the latest start
    pub end: i64,
    /// fold `j`: train = rows with `last_seen < D_j`, test = rows with `first_seen` in
    /// `[D_j, D_{j+1})` (`[D_k, end)` for the last)
    pub folds: Vec<Fold>,
}

impl ForwardFolds {
    /// The test window `[start, end)` of fold `j` (Unix seconds).
    pub fn window(&self, j: usize) -> (i64, i64) {
        let end = self.origins.get(j + 1).copied().unwrap_or(self.end);
        (self.origins[j], end)
    }
}

/// Forward-chaining folds over rows with a start and end time (Unix seconds), e.g. incidents
/// with `first_seen` and `last_seen`; a row's label is taken to exist from its end.
///
/// Origins: the rows are sorted by start; the latest `test_share` of them (`ceil(share · n)`
/// rows) is cut into `origins` equal consecutive shares, and origin `j` is the start of the
/// first row of share `j` rounded to the nearest UTC day boundary. So the origins follow the
/// data's own time quantiles whatever its span, and each test window holds about
/// `test_share / origins` of the rows (less evenly when a day holds many rows).
///
/// Fold `j`: train = rows that ended strictly before `D_j` (`last_seen < D_j`), test = rows
/// that started in `[D_j, D_{j+1})`, the last window `[D_k, end)`. A row that started before
/// `D_j` and ended at or after it is on neither side of fold `j`. Windows are disjoint and in
/// order, so every row is tested at most once over the folds.
///
/// Errors: empty input, lengths that differ, `last_seen < first_seen` ([`EvalError::InvalidInterval`]),
/// `origins == 0`, `test_share` outside `(0, 1)`, and data that cannot give `origins` distinct
/// day-aligned origins with a non-empty training side at the first origin and a non-empty
/// test window at each ([`EvalError::ForwardOrigins`]).
///
/// ```
/// use threatrank::eval::{forward_folds, DAY_SECONDS};
/// // one incident a day for 10 days, each lasting an hour
/// let first: Vec<i64> = (0..10).map(|d| d * DAY_SECONDS + 3600).collect();
/// let last: Vec<i64> = first.iter().map(|t| t + 3600).collect();
/// let f = forward_folds(&first, &last, 2, 0.4).unwrap();
/// assert_eq!(f.origins, vec![6 * DAY_SECONDS, 8 * DAY_SECONDS]);
/// assert_eq!(f.folds[0].train, vec![0, 1, 2, 3, 4, 5]);
/// assert_eq!(f.folds[0].test, vec![6, 7]);
/// assert_eq!(f.folds[1].train, vec![0, 1, 2, 3, 4, 5, 6, 7]);
/// assert_eq!(f.folds[1].test, vec![8, 9]);
/// ```
pub fn forward_folds(
    first_seen: &[i64],
    last_seen: &[i64],
    origins: usize,
    test_share: f64,
) -> Result<ForwardFolds, EvalError> {
    if first_seen.is_empty() {
        return Err(EvalError::Empty { what: "first_seen" });
    }
    if last_seen.len() != first_seen.len() {
        return Err(EvalError::LengthMismatch {
            what: "last_seen",
            expected: first_seen.len(),
            got: last_seen.len(),
        });
    }
    if let Some(index) = (0..first_seen.len()).find(|&i| last_seen[i] < first_seen[i]) {
        return Err(EvalError::InvalidInterval {
            index,
            first_seen: first_seen[index],
            last_seen: last_seen[index],
        });
    }
    if origins == 0 {
        return Err(EvalError::TooFewOrigins { origins });
    }
    if !(test_share > 0.0 && test_share < 1.0) {
        return Err(EvalError::InvalidFraction {
            fraction: test_share,
        });
    }
    let n = first_seen.len();
    let mut starts = first_seen.to_vec();
    starts.sort_unstable();
    let m = ((test_share * n as f64).ceil() as usize).clamp(1, n);
    let begin = n - m;
    let round_day = |t: i64| (t + DAY_SECONDS / 2).div_euclid(DAY_SECONDS) * DAY_SECONDS;
    // errors name days as Unix day numbers (`eval` knows no calendar)
    let day = |t: i64| format!("Unix day {}", t.div_euclid(DAY_SECONDS));
    let fail = |reason: String| EvalError::ForwardOrigins {
        needed: origins,
        reason,
    };
    let mut ds: Vec<i64> = Vec::with_capacity(origins);
    for j in 0..origins {
        let d = round_day(starts[begin + j * m / origins]);
        if let Some(&prev) = ds.last() {
            if d <= prev {
                return Err(fail(format!(
                    "origins {j} and {} both round to {}: the latest {m} of {n} rows                      (test share {test_share}) span too few days",
                    j + 1,
                    day(d)
                )));
            }
        }
        ds.push(d);
    }
    let end = starts[n - 1].div_euclid(DAY_SECONDS) * DAY_SECONDS + DAY_SECONDS;
    let mut folds = Vec::with_capacity(origins);
    for (j, &d) in ds.iter().enumerate() {
        let next = ds.get(j + 1).copied().unwrap_or(end);
        let train: Vec<usize> = (0..n).filter(|&i| last_seen[i] < d).collect();
        let test: Vec<usize> = (0..n)
            .filter(|&i| first_seen[i] >= d && first_seen[i] < next)
            .collect();
        if train.is_empty() {
            return Err(fail(format!(
                "no row ended before origin {} ({})",
                j + 1,
                day(d)
            )));
        }
        if test.is_empty() {
            return Err(fail(format!(
                "no row started in the window of origin {} ({} to {})",
                j + 1,
                day(d),
                day(next)
            )));
        }
        folds.push(Fold { train, test });
    }
    Ok(ForwardFolds {
        origins: ds,
        end,
        folds,
    })
}

/// Distinct `(group, rows)` pairs: sorted by id, shuffled with `seed`, then stable-sorted by
/// size descending.
fn shuffled_groups(groups: &[u64], seed: u64) -> Vec<(u64, usize)> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for &g in groups {
        *counts.entry(g).or_default() += 1;
    }
    let mut sized: Vec<(u64, usize)> = counts.into_iter().collect();
    let mut rng = SplitMix64(seed);
    // Fisher-Yates
    for i in (1..sized.len()).rev() {
        let j = rng.below(i + 1);
        sized.swap(i, j);
    }
    sized.sort_by_key(|&(_, size)| Reverse(size));
    sized
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn group_set(groups: &[u64], rows: &[usize]) -> BTreeSet<u64> {
        rows.iter().map(|&i| groups[i]).collect()
    }

    #[test]
    fn kfold_by_hand() {
        // sizes: group 5 -> 3 rows, group 6 -> 2 rows, group 7 -> 1 row.
        // sorted by size desc: 5, 6, 7 -> folds 0, 1, then 7 joins fold 1 (2 < 3 rows).
        let groups = [5, 6, 5, 7, 6, 5];
        let folds = grouped_kfold(&groups, 2, 123).unwrap();
        assert_eq!(
            folds[0],
            Fold {
                train: vec![1, 3, 4],
                test: vec![0, 2, 5]
            }
        );
        assert_eq!(
            folds[1],
            Fold {
                train: vec![0, 2, 5],
                test: vec![1, 3, 4]
            }
        );
    }

    #[test]
    fn kfold_errors() {
        assert_eq!(
            grouped_kfold(&[], 3, 0),
            Err(EvalError::Empty { what: "groups" })
        );
        assert_eq!(
            grouped_kfold(&[1, 2], 1, 0),
            Err(EvalError::TooFewFolds { n_folds: 1 })
        );
        assert_eq!(
            grouped_kfold(&[1, 1, 2], 3, 0),
            Err(EvalError::TooFewGroups {
                groups: 2,
                needed: 3
            })
        );
    }

    #[test]
    fn kfold_seeds_differ() {
        let groups: Vec<u64> = (0..20).collect();
        let base = grouped_kfold(&groups, 4, 0).unwrap();
        let differing = (1..10u64)
            .filter(|&s| grouped_kfold(&groups, 4, s).unwrap() != base)
            .count();
        assert!(differing >= 8, "only {differing} of 9 seeds differ");
        assert_eq!(grouped_kfold(&groups, 4, 0).unwrap(), base);
    }

    #[test]
    fn holdout_errors_and_minimums() {
        assert_eq!(
            grouped_holdout(&[], 0.2, 0),
            Err(EvalError::Empty { what: "groups" })
        );
        for f in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(matches!(
                grouped_holdout(&[1, 2], f, 0),
                Err(EvalError::InvalidFraction { .. })
            ));
        }
        assert_eq!(
            grouped_holdout(&[4, 4], 0.5, 0),
            Err(EvalError::TooFewGroups {
                groups: 1,
                needed: 2
            })
        );
        // tiny and huge fractions still leave both sides non-empty
        let f = grouped_holdout(&[1, 2], 0.01, 0).unwrap();
        assert_eq!((f.train.len(), f.test.len()), (1, 1));
        let f = grouped_holdout(&[1, 2, 3], 0.99, 0).unwrap();
        assert_eq!((f.train.len(), f.test.len()), (1, 2));
    }

    const H: i64 = 3600;
    const DAY: i64 = DAY_SECONDS;

    #[test]
    fn forward_by_hand_train_ended_strictly_before_origin() {
        // 12 incidents, two a day on days 0..6 (09:00 and 15:00), each lasting 2 hours, except:
        // row 6 (day 3, 09:00) lasts to exactly midnight of day 4, row 7 (day 3, 15:00) to one
        // second before it
        let mut first: Vec<i64> = (0..12)
            .map(|i| (i / 2) * DAY + [9, 15][i as usize % 2] * H)
            .collect();
        let mut last: Vec<i64> = first.iter().map(|t| t + 2 * H).collect();
        last[6] = 4 * DAY;
        last[7] = 4 * DAY - 1;
        // row 12: begins day 3 09:00, ends day 5 noon; row 13: day 2 20:00 to day 3 01:00
        first.extend([3 * DAY + 9 * H, 2 * DAY + 20 * H]);
        last.extend([5 * DAY + 12 * H, 3 * DAY + H]);
        // latest half of 14 rows: 7 rows from sorted position 7, 7/2 = 3 per window: the
        // starts at positions 7 and 10 are day 3 09:00 and day 4 09:00, rounded to midnight
        let f = forward_folds(&first, &last, 2, 0.5).unwrap();
        assert_eq!(f.origins, vec![3 * DAY, 4 * DAY]);
        assert_eq!(f.end, 6 * DAY);
        assert_eq!(f.window(0), (3 * DAY, 4 * DAY));
        assert_eq!(f.window(1), (4 * DAY, 6 * DAY));
        // row 13 began before the first origin and ended after it: on neither side of fold 0
        assert_eq!(f.folds[0].train, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(f.folds[0].test, vec![6, 7, 12]);
        // row 6 ended at the origin itself, not before it: not in training; row 7 ended one
        // second before: trains; row 12 straddles the origin: neither side
        assert_eq!(f.folds[1].train, vec![0, 1, 2, 3, 4, 5, 7, 13]);
        assert_eq!(f.folds[1].test, vec![8, 9, 10, 11]);
    }

    #[test]
    fn forward_origins_are_day_aligned_quantiles() {
        // 100 rows, one every 6 hours from 03:00 of day 0: 4 a day over 25 days
        let first: Vec<i64> = (0..100).map(|i| 3 * H + i * 6 * H).collect();
        let f = forward_folds(&first, &first, 3, 0.3).unwrap();
        // latest 30 rows start at position 70 (day 17 15:00): positions 70, 80, 90 → days
        // 17 15:00, 20 03:00, 22 15:00, rounded to the nearest midnight
        assert_eq!(f.origins, vec![18 * DAY, 20 * DAY, 23 * DAY]);
        assert!(f.origins.iter().all(|d| d % DAY == 0));
        let sizes: Vec<usize> = f.folds.iter().map(|x| x.test.len()).collect();
        assert_eq!(sizes, vec![8, 12, 8]);
    }

    #[test]
    fn forward_errors() {
        assert_eq!(
            forward_folds(&[], &[], 3, 0.5),
            Err(EvalError::Empty { what: "first_seen" })
        );
        assert_eq!(
            forward_folds(&[1, 2], &[1], 3, 0.5),
            Err(EvalError::LengthMismatch {
                what: "last_seen",
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            forward_folds(&[1, 5], &[1, 4], 3, 0.5),
            Err(EvalError::InvalidInterval {
                index: 1,
                first_seen: 5,
                last_seen: 4
            })
        );
        let first: Vec<i64> = (0..40).map(|d| d * DAY + H).collect();
        assert_eq!(
            forward_folds(&first, &first, 0, 0.5),
            Err(EvalError::TooFewOrigins { origins: 0 })
        );
        for share in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            assert!(matches!(
                forward_folds(&first, &first, 3, share),
                Err(EvalError::InvalidFraction { .. })
            ));
        }
        // every row on one day: three origins cannot be distinct days
        let same: Vec<i64> = (0..40).map(|i| 10 * DAY + i * 60).collect();
        assert!(matches!(
            forward_folds(&same, &same, 3, 0.5),
            Err(EvalError::ForwardOrigins { needed: 3, .. })
        ));
        // the latest 99% starts with the first row: nothing ended before the first origin
        let two = [H, DAY + H];
        assert!(matches!(
            forward_folds(&two, &two, 1, 0.99),
            Err(EvalError::ForwardOrigins { needed: 1, .. })
        ));
        // the last origin rounds up past the only row of its window (day 5 20:00 → day 6)
        let late = [H, DAY + H, 2 * DAY + H, 5 * DAY + 20 * H];
        assert!(matches!(
            forward_folds(&late, &late, 1, 0.25),
            Err(EvalError::ForwardOrigins { needed: 1, .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn kfold_properties(
            groups in proptest::collection::vec(0u64..12, 1..60),
            n_folds in 2usize..5,
            seed in any::<u64>(),
        ) {
            let distinct: BTreeSet<u64> = groups.iter().copied().collect();
            prop_assume!(distinct.len() >= n_folds);
            let folds = grouped_kfold(&groups, n_folds, seed).unwrap();
            prop_assert_eq!(folds.len(), n_folds);

            // every row in exactly one test fold
            let mut seen = vec![0usize; groups.len()];
            for f in &folds {
                for &i in &f.test {
                    seen[i] += 1;
                }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));

            for f in &folds {
                // sorted, disjoint, covering
                prop_assert!(f.train.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(f.test.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(!f.test.is_empty());
                prop_assert_eq!(f.train.len() + f.test.len(), groups.len());
                // no group on both sides
                let tr = group_set(&groups, &f.train);
                let te = group_set(&groups, &f.test);
                prop_assert!(tr.is_disjoint(&te));
            }

            // balance within the largest group size
            let largest = distinct
                .iter()
                .map(|g| groups.iter().filter(|&x| x == g).count())
                .max()
                .unwrap_or(0);
            let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
            let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
            prop_assert!(spread <= largest, "sizes {:?}, largest group {}", sizes, largest);

            // determinism
            prop_assert_eq!(grouped_kfold(&groups, n_folds, seed).unwrap(), folds);
        }

        #[test]
        fn forward_properties(
            rows in proptest::collection::vec((0i64..30 * 86_400, 0i64..3 * 86_400), 1..80),
            origins in 1usize..5,
            share in 0.05f64..0.95,
        ) {
            let first: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let last: Vec<i64> = rows.iter().map(|r| r.0 + r.1).collect();
            let f = match forward_folds(&first, &last, origins, share) {
                Ok(f) => f,
                Err(EvalError::ForwardOrigins { needed, .. }) => {
                    prop_assert_eq!(needed, origins);
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
            };
            prop_assert_eq!(f.origins.len(), origins);
            prop_assert_eq!(f.folds.len(), origins);
            prop_assert!(f.origins.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(f.origins.iter().all(|d| d % DAY_SECONDS == 0));
            prop_assert!(f.end % DAY_SECONDS == 0 && f.end > *f.origins.last().unwrap());
            // each origin within half a day of its quantile's start
            let mut sorted = first.clone();
            sorted.sort_unstable();
            let n = sorted.len();
            let m = ((share * n as f64).ceil() as usize).clamp(1, n);
            for (j, d) in f.origins.iter().enumerate() {
                let q = sorted[n - m + j * m / origins];
                prop_assert!((d - q).abs() <= DAY_SECONDS / 2, "origin {} vs quantile {}", d, q);
            }
            let mut tested = vec![0usize; n];
            for (j, fold) in f.folds.iter().enumerate() {
                let (lo, hi) = f.window(j);
                prop_assert!(!fold.train.is_empty() && !fold.test.is_empty());
                prop_assert!(fold.train.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(fold.test.windows(2).all(|w| w[0] < w[1]));
                // exactly the rows that ended strictly before the origin train
                let want_train: Vec<usize> = (0..n).filter(|&i| last[i] < lo).collect();
                prop_assert_eq!(&fold.train, &want_train);
                // exactly the rows that started in the window are tested
                let want_test: Vec<usize> =
                    (0..n).filter(|&i| first[i] >= lo && first[i] < hi).collect();
                prop_assert_eq!(&fold.test, &want_test);
                // every training row ended before any test row began
                let last_train = fold.train.iter().map(|&i| last[i]).max().unwrap();
                let first_test = fold.test.iter().map(|&i| first[i]).min().unwrap();
                prop_assert!(last_train < first_test);
                for &i in &fold.test {
                    tested[i] += 1;
                }
                // windows in order: this fold's tests all start before the next fold's
                if let Some(next) = f.folds.get(j + 1) {
                    let this_max = fold.test.iter().map(|&i| first[i]).max().unwrap();
                    let next_min = next.test.iter().map(|&i| first[i]).min().unwrap();
                    prop_assert!(this_max < next_min);
                }
            }
            prop_assert!(tested.iter().all(|&c| c <= 1));
            // the windows cover every row that started at or after the first origin
            for i in 0..n {
                prop_assert_eq!(tested[i] == 1, first[i] >= f.origins[0]);
            }
            prop_assert_eq!(forward_folds(&first, &last, origins, share).unwrap(), f);
        }

        #[test]
        fn holdout_properties(
            groups in proptest::collection::vec(0u64..12, 2..60),
            fraction in 0.05f64..0.95,
            seed in any::<u64>(),
        ) {
            let distinct: BTreeSet<u64> = groups.iter().copied().collect();
            prop_assume!(distinct.len() >= 2);
            let f = grouped_holdout(&groups, fraction, seed).unwrap();
            prop_assert!(!f.train.is_empty() && !f.test.is_empty());
            prop_assert_eq!(f.train.len() + f.test.len(), groups.len());
            prop_assert!(f.train.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(f.test.windows(2).all(|w| w[0] < w[1]));
            let tr = group_set(&groups, &f.train);
            let te = group_set(&groups, &f.test);
            prop_assert!(tr.is_disjoint(&te));
            prop_assert_eq!(grouped_holdout(&groups, fraction, seed).unwrap(), f);
        }
    }
}
