//! temporary: replaced by the eval helper's version
use super::EvalError;
/// fold
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// train
    pub train: Vec<usize>,
    /// test
    pub test: Vec<usize>,
}
/// kfold
pub fn grouped_kfold(groups: &[u64], n_folds: usize, seed: u64) -> Result<Vec<Fold>, EvalError> {
    let mut g: Vec<u64> = groups.to_vec();
    g.sort_unstable();
    g.dedup();
    let h = |x: u64| {
        let mut z = x ^ seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    g.sort_by_key(|&x| h(x));
    let fold_of: std::collections::HashMap<u64, usize> = g
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, i % n_folds))
        .collect();
    Ok((0..n_folds)
        .map(|f| Fold {
            train: (0..groups.len())
                .filter(|&i| fold_of[&groups[i]] != f)
                .collect(),
            test: (0..groups.len())
                .filter(|&i| fold_of[&groups[i]] == f)
                .collect(),
        })
        .collect())
}
/// holdout
pub fn grouped_holdout(groups: &[u64], _f: f64, seed: u64) -> Result<Fold, EvalError> {
    Ok(grouped_kfold(groups, 5, seed)?.remove(0))
}
