//! Leak-free (grouped) train/test splits.
//!
//! Rows sharing a group id (an incident, or a tenant) always fall on the same side of a split,
//! so a model is never tested on evidence of an incident it has seen in training. Splits are
//! seeded and deterministic: the same groups and seed always give the same folds, on every
//! platform (the RNG is a self-contained splitmix64, no `rand` crate).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EvalError;
use crate::rng::SplitMix64;

/// A train/test partition of row indices; both lists are sorted ascending and disjoint, and
/// together they cover every row.
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
