//! Random forest grader: one-vs-rest regression forests, one per grade (TP, BP, FP).
//!
//! Sits in `models`, beside `logistic.rs`, behind [`super::Fit`] / [`Scorer`]. smartcore 0.7
//! (without its ndarray bindings) is used only to *fit*: for each class `c` a
//! `RandomForestRegressor` learns the 1.0 / 0.0 indicator of `c`, with seed `seed + c`. Its tree
//! nodes are private but serde-serializable, so each fitted forest is serialized to a
//! `serde_json::Value` (exact for `f64`) and read back into private mirror structs, then copied
//! into our own flat [`FittedForest`] / [`Tree`] / [`Node`]. smartcore never leaves this file.
//!
//! Routing replicates smartcore exactly: a row goes to the left (smartcore's "true") child when
//! `x as f64 <= threshold`, else right (so NaN goes right). Raw score of class `c` is the mean
//! leaf value over the class-`c` trees; probabilities are raw scores clamped to `[0, 1]` and
//! normalized (all zero: uniform). Contributions use the Saabas path decomposition, which is
//! exact: root value as bias, plus `value(child) − value(parent)` credited to each split feature.

use super::{check_class, check_fit_input, check_score_input, Fit, ModelError, Scorer, N_CLASSES};
use crate::matrix::FeatureMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;

/// Rows at or above which scoring is split across rayon threads.
const PAR_MIN_ROWS: usize = 2048;
/// Rows per parallel chunk.
const PAR_CHUNK_ROWS: usize = 256;

fn learner_err(reason: impl std::fmt::Display) -> ModelError {
    ModelError::Learner {
        learner: "smartcore random forest",
        reason: reason.to_string(),
    }
}

/// Unchecked hyper-parameters of the forest (serde-friendly; missing fields take their
/// defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForestParams {
    n_trees: usize,
    max_depth: usize,
    min_samples_leaf: usize,
    min_samples_split: usize,
    max_features: Option<usize>,
    seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        Self {
            n_trees: 100,
            max_depth: 20,
            min_samples_leaf: 10,
            min_samples_split: 20,
            max_features: None,
            seed: 42,
        }
    }
}

impl ForestParams {
    /// Trees per class (the forest holds `3 × n_trees` trees; at least 1). Default: `100`.
    pub fn n_trees(mut self, n_trees: usize) -> Self {
        self.n_trees = n_trees;
        self
    }

    /// Maximum tree depth (`1..=65535`). Default: `20`.
    pub fn max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Minimum number of samples in a leaf (at least 1). Default: `10` (measured on the
    /// GUIDE sample: as accurate as 2, with a third of the nodes).
    pub fn min_samples_leaf(mut self, min_samples_leaf: usize) -> Self {
        self.min_samples_leaf = min_samples_leaf;
        self
    }

    /// Minimum number of samples a node needs to be split (at least 2). Default: `20`.
    pub fn min_samples_split(mut self, min_samples_split: usize) -> Self {
        self.min_samples_split = min_samples_split;
        self
    }

    /// Features drawn as split candidates at each node (at least 1; capped at the matrix
    /// width when fitting). Default: `None`, meaning `ceil(sqrt(n_features))`.
    pub fn max_features(mut self, max_features: Option<usize>) -> Self {
        self.max_features = max_features;
        self
    }

    /// Seed of bootstrap sampling and feature draws; class `c`'s forest uses `seed + c`.
    /// Default: `42`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The configured number of trees per class.
    pub fn get_n_trees(&self) -> usize {
        self.n_trees
    }

    /// The configured maximum depth.
    pub fn get_max_depth(&self) -> usize {
        self.max_depth
    }

    /// The configured minimum leaf size.
    pub fn get_min_samples_leaf(&self) -> usize {
        self.min_samples_leaf
    }

    /// The configured minimum split size.
    pub fn get_min_samples_split(&self) -> usize {
        self.min_samples_split
    }

    /// The configured number of split candidates (`None`: `ceil(sqrt(n_features))`).
    pub fn get_max_features(&self) -> Option<usize> {
        self.max_features
    }

    /// The configured seed.
    pub fn get_seed(&self) -> u64 {
        self.seed
    }

    /// Validates the parameters; errors with [`ModelError::InvalidParam`] when one is out of
    /// range.
    pub fn check(&self) -> Result<ForestValidParams, ModelError> {
        let bad = |name, reason: &str| {
            Err(ModelError::InvalidParam {
                name,
                reason: reason.into(),
            })
        };
        if self.n_trees == 0 {
            return bad("n_trees", "must be at least 1");
        }
        if self.max_depth == 0 || self.max_depth > u16::MAX as usize {
            return bad("max_depth", "must be in 1..=65535");
        }
        if self.min_samples_leaf == 0 {
            return bad("min_samples_leaf", "must be at least 1");
        }
        if self.min_samples_split < 2 {
            return bad("min_samples_split", "must be at least 2");
        }
        if self.max_features == Some(0) {
            return bad("max_features", "must be at least 1");
        }
        Ok(ForestValidParams(self.clone()))
    }
}

/// Checked forest parameters, ready to [`Fit::fit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForestValidParams(ForestParams);

impl ForestValidParams {
    /// The parameters that were checked.
    pub fn params(&self) -> &ForestParams {
        &self.0
    }

    /// Split candidates per node for a matrix of width `d`.
    fn mtry(&self, d: usize) -> usize {
        let default = (d as f64).sqrt().ceil() as usize;
        self.0.max_features.unwrap_or(default).clamp(1, d.max(1))
    }

    fn smartcore_params(&self, d: usize, class: usize) -> RandomForestRegressorParameters {
        RandomForestRegressorParameters::default()
            .with_n_trees(self.0.n_trees)
            .with_max_depth(self.0.max_depth as u16)
            .with_min_samples_leaf(self.0.min_samples_leaf)
            .with_min_samples_split(self.0.min_samples_split)
            .with_m(self.mtry(d))
            .with_keep_samples(false)
            .with_seed(self.0.seed.wrapping_add(class as u64))
    }
}

type SkForest = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// The training matrix in smartcore's form (row-major `f64`).
fn dense(x: &FeatureMatrix) -> Result<DenseMatrix<f64>, ModelError> {
    let data: Vec<f64> = x.as_slice().iter().map(|&v| v as f64).collect();
    DenseMatrix::new(x.n_rows(), x.n_cols(), data, false).map_err(learner_err)
}

/// Fits class `class`'s one-vs-rest smartcore forest.
fn fit_smartcore(
    params: &ForestValidParams,
    x: &DenseMatrix<f64>,
    d: usize,
    y: &[u8],
    class: usize,
) -> Result<SkForest, ModelError> {
    let target: Vec<f64> = y
        .iter()
        .map(|&c| if c as usize == class { 1.0 } else { 0.0 })
        .collect();
    SkForest::fit(x, &target, params.smartcore_params(d, class)).map_err(learner_err)
}

// Private mirrors of smartcore's serialized layout (`random_forest_regressor.rs`,
// `ensemble/base_forest.rs`, `tree/base_tree.rs`); unknown fields are ignored.
#[derive(Deserialize)]
struct SkRegressorRepr {
    forest_regressor: Option<SkBaseForestRepr>,
}

#[derive(Deserialize)]
struct SkBaseForestRepr {
    trees: Option<Vec<SkTreeRepr>>,
}

#[derive(Deserialize)]
struct SkTreeRepr {
    nodes: Vec<SkNodeRepr>,
}

#[derive(Deserialize)]
struct SkNodeRepr {
    output: f64,
    split_feature: usize,
    split_value: Option<f64>,
    #[serde(default)]
    split_score: Option<f64>,
    true_child: Option<usize>,
    false_child: Option<usize>,
}

/// Copies a fitted smartcore forest into our trees.
fn extract(forest: &SkForest, d: usize) -> Result<Vec<Tree>, ModelError> {
    let value = serde_json::to_value(forest).map_err(learner_err)?;
    let repr: SkRegressorRepr = serde_json::from_value(value).map_err(learner_err)?;
    let trees = repr
        .forest_regressor
        .and_then(|f| f.trees)
        .ok_or_else(|| learner_err("fitted forest has no trees"))?;
    if trees.is_empty() {
        return Err(learner_err("fitted forest has no trees"));
    }
    trees.into_iter().map(|t| extract_tree(t, d)).collect()
}

fn extract_tree(tree: SkTreeRepr, d: usize) -> Result<Tree, ModelError> {
    let len = tree.nodes.len();
    if len == 0 || len > u32::MAX as usize {
        return Err(learner_err(format!("tree has {len} nodes")));
    }
    let mut nodes = Vec::with_capacity(len);
    for (i, n) in tree.nodes.into_iter().enumerate() {
        let value = n.output as f32;
        if !value.is_finite() {
            return Err(learner_err("non-finite node output"));
        }
        let node = match (n.true_child, n.false_child) {
            (None, _) => Node::leaf(value),
            (Some(t), Some(f)) => {
                // smartcore appends children after their parent: indices only grow.
                if t <= i || f <= i || t >= len || f >= len || n.split_feature >= d {
                    return Err(learner_err(format!("malformed split at node {i}")));
                }
                let threshold = n
                    .split_value
                    .filter(|v| !v.is_nan())
                    .map(snap_to_f32_grid)
                    .ok_or_else(|| learner_err(format!("split node {i} has no threshold")))?;
                Node {
                    feature: n.split_feature as u32,
                    threshold,
                    left: t as u32,
                    right: f as u32,
                    value,
                    gain: n.split_score.unwrap_or(0.0).max(0.0) as f32,
                    is_leaf: false,
                }
            }
            (Some(_), None) => return Err(learner_err(format!("node {i} has one child"))),
        };
        nodes.push(node);
    }
    Ok(Tree { nodes })
}

/// The largest `f32` value `<= t`, as `f64`.
///
/// For every `f32` input `x` (NaN included), `x as f64 <= t` holds exactly when
/// `x as f64 <= snap_to_f32_grid(t)`: routing is unchanged, and the snapped threshold survives a
/// JSON round trip bit for bit (it is written as its shortest `f32` form, see [`Node`]).
fn snap_to_f32_grid(t: f64) -> f64 {
    let f = t as f32; // nearest; may be above t
    if f as f64 <= t {
        return f as f64;
    }
    // Next f32 towards -inf (f32::next_down needs Rust 1.86; MSRV is 1.85).
    let down = if f == 0.0 {
        -f32::from_bits(1)
    } else if f > 0.0 {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f32::from_bits(f.to_bits() + 1)
    };
    down as f64
}

/// Serde for thresholds, which lie on the `f32` grid: written as `f32` (shortest form, read
/// back exactly), held as `f64`.
mod f32_grid {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f32(*t as f32)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        f32::deserialize(d).map(f64::from)
    }
}

impl Fit for ForestValidParams {
    type Fitted = FittedForest;

    fn fit(&self, x: &FeatureMatrix, y: &[u8]) -> Result<FittedForest, ModelError> {
        check_fit_input(x, y)?;
        let d = x.n_cols();
        let dm = dense(x)?;
        let one = |c: usize| fit_smartcore(self, &dm, d, y, c).and_then(|f| extract(&f, d));
        let (t0, (t1, t2)) = rayon::join(|| one(0), || rayon::join(|| one(1), || one(2)));
        Ok(FittedForest {
            n_features: d,
            trees: vec![t0?, t1?, t2?],
        })
    }
}

/// One node of a [`Tree`].
///
/// A split node sends a row to `left` when `row[feature] as f64 <= threshold` and to `right`
/// otherwise (NaN goes right). `value` is the node's output: the mean target (class indicator)
/// of the bootstrap samples that reached it, for split nodes as well as leaves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Split feature (0 for leaves).
    pub feature: u32,
    /// Split threshold (0 for leaves). Always an `f32` value: smartcore's `f64` threshold is
    /// snapped down to the `f32` grid, which routes every `f32` input identically and makes
    /// the serialized form exact.
    #[serde(with = "f32_grid")]
    pub threshold: f64,
    /// Child for `x <= threshold` (smartcore's "true" child; 0 for leaves).
    pub left: u32,
    /// Child for `x > threshold` or NaN (smartcore's "false" child; 0 for leaves).
    pub right: u32,
    /// Mean target of the node.
    pub value: f32,
    /// Impurity (squared-error) decrease of the split, weighted by node mass; 0 for leaves.
    #[serde(default)]
    pub gain: f32,
    /// True for leaves.
    pub is_leaf: bool,
}

impl Node {
    fn leaf(value: f32) -> Self {
        Self {
            feature: 0,
            threshold: 0.0,
            left: 0,
            right: 0,
            value,
            gain: 0.0,
            is_leaf: true,
        }
    }
}

/// A regression tree: node 0 is the root, children always come after their parent.
///
/// Serialized column-wise (one array per node field; a node is a leaf when its `left` is 0,
/// since no child can point back to the root), which keeps artifacts about three times smaller
/// than one object per node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "TreeColumns", from = "TreeColumns")]
pub struct Tree {
    nodes: Vec<Node>,
}

/// Wire form of [`Tree`]: parallel arrays. Lengths are checked when the forest is validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TreeColumns {
    feature: Vec<u32>,
    threshold: Vec<f32>,
    left: Vec<u32>,
    right: Vec<u32>,
    value: Vec<f32>,
    gain: Vec<f32>,
}

impl From<Tree> for TreeColumns {
    fn from(t: Tree) -> Self {
        let n = &t.nodes;
        TreeColumns {
            feature: n.iter().map(|x| x.feature).collect(),
            threshold: n.iter().map(|x| x.threshold as f32).collect(),
            left: n
                .iter()
                .map(|x| if x.is_leaf { 0 } else { x.left })
                .collect(),
            right: n
                .iter()
                .map(|x| if x.is_leaf { 0 } else { x.right })
                .collect(),
            value: n.iter().map(|x| x.value).collect(),
            gain: n.iter().map(|x| x.gain).collect(),
        }
    }
}

impl From<TreeColumns> for Tree {
    fn from(c: TreeColumns) -> Self {
        // Ragged columns leave the tree empty, which `Tree::validate` rejects at load time.
        let len = c.feature.len();
        let same = [
            c.threshold.len(),
            c.left.len(),
            c.right.len(),
            c.value.len(),
            c.gain.len(),
        ]
        .iter()
        .all(|&l| l == len);
        if !same {
            return Tree { nodes: Vec::new() };
        }
        let nodes = (0..len)
            .map(|i| Node {
                feature: c.feature[i],
                threshold: f64::from(c.threshold[i]),
                left: c.left[i],
                right: c.right[i],
                value: c.value[i],
                gain: c.gain[i],
                is_leaf: c.left[i] == 0,
            })
            .collect();
        Tree { nodes }
    }
}

impl Tree {
    /// The nodes, root first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Index of the node reached from `from` by `row` (which must be valid for this tree).
    #[inline]
    fn child(&self, node: &Node, row: &[f32]) -> usize {
        if row[node.feature as usize] as f64 <= node.threshold {
            node.left as usize
        } else {
            node.right as usize
        }
    }

    /// The leaf reached by `row`.
    #[inline]
    fn leaf(&self, row: &[f32]) -> &Node {
        let mut node = &self.nodes[0];
        while !node.is_leaf {
            node = &self.nodes[self.child(node, row)];
        }
        node
    }

    /// Adds the path contributions of `row` to `acc` (per feature) and returns the root value.
    #[inline]
    fn add_path(&self, row: &[f32], acc: &mut [f64]) -> f64 {
        let mut node = &self.nodes[0];
        while !node.is_leaf {
            let next = &self.nodes[self.child(node, row)];
            acc[node.feature as usize] += next.value as f64 - node.value as f64;
            node = next;
        }
        self.nodes[0].value as f64
    }

    /// Checks the structure against a width `d`; used when loading an artifact.
    fn validate(&self, d: usize) -> Result<(), String> {
        let len = self.nodes.len();
        if len == 0 || len > u32::MAX as usize {
            return Err(format!("tree has {len} nodes"));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.value.is_finite() {
                return Err(format!("node {i} has a non-finite value"));
            }
            if n.is_leaf {
                // a leaf is stored as left = right = 0: another right child would be dropped
                // on the next save
                if n.right != 0 {
                    return Err(format!("leaf {i} has a right child"));
                }
                continue;
            }
            let (l, r) = (n.left as usize, n.right as usize);
            if l <= i || r <= i || l >= len || r >= len {
                return Err(format!("node {i} has children out of order or range"));
            }
            if n.feature as usize >= d || n.threshold.is_nan() {
                return Err(format!("node {i} has a bad split"));
            }
        }
        Ok(())
    }
}

/// A fitted one-vs-rest forest, in our own flat form: `trees[c]` are class `c`'s trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FittedForestRepr")]
pub struct FittedForest {
    n_features: usize,
    trees: Vec<Vec<Tree>>,
}

/// Wire form of [`FittedForest`], validated before use (so that a malformed artifact errors at
/// load time instead of panicking or looping at scoring time).
#[derive(Deserialize)]
struct FittedForestRepr {
    n_features: usize,
    trees: Vec<Vec<Tree>>,
}

impl TryFrom<FittedForestRepr> for FittedForest {
    type Error = String;

    fn try_from(r: FittedForestRepr) -> Result<Self, String> {
        if r.n_features == 0 {
            return Err("forest has no feature".into());
        }
        if r.trees.len() != N_CLASSES || r.trees.iter().any(Vec::is_empty) {
            return Err(format!("forest needs {N_CLASSES} non-empty tree lists"));
        }
        for t in r.trees.iter().flatten() {
            t.validate(r.n_features)?;
        }
        Ok(Self {
            n_features: r.n_features,
            trees: r.trees,
        })
    }
}

impl FittedForest {
    /// Class `class`'s trees (`None` when `class >= N_CLASSES`).
    pub fn trees(&self, class: usize) -> Option<&[Tree]> {
        self.trees.get(class).map(Vec::as_slice)
    }

    /// Mean-decrease-in-impurity importances, one per feature, summing to 1 (all zero when no
    /// tree splits): each tree's split gains are normalized to sum 1, then averaged over all
    /// trees of all classes and normalized again (smartcore's / scikit-learn's convention).
    pub fn feature_importances(&self) -> Vec<f32> {
        let d = self.n_features;
        let mut total = vec![0.0f64; d];
        let mut per_tree = vec![0.0f64; d];
        for tree in self.trees.iter().flatten() {
            per_tree.fill(0.0);
            for n in tree.nodes.iter().filter(|n| !n.is_leaf) {
                per_tree[n.feature as usize] += n.gain as f64;
            }
            let s: f64 = per_tree.iter().sum();
            if s > 0.0 {
                for (t, p) in total.iter_mut().zip(&per_tree) {
                    *t += p / s;
                }
            }
        }
        let s: f64 = total.iter().sum();
        total
            .iter()
            .map(|t| if s > 0.0 { (t / s) as f32 } else { 0.0 })
            .collect()
    }

    /// Mean leaf value of class `c`'s trees for `row`, in `f64`.
    #[inline]
    fn raw(&self, row: &[f32], class: usize) -> f64 {
        let trees = &self.trees[class];
        let s: f64 = trees.iter().map(|t| t.leaf(row).value as f64).sum();
        s / trees.len() as f64
    }
}

/// Applies `f(scratch, row, out_row)` to every row, in parallel chunks for large inputs (one
/// scratch per chunk). Each output row depends only on its input row, so results do not depend
/// on the thread count.
/// Rows per block of tree-major scoring (3 KB of accumulators on the stack).
const SCORE_BLOCK: usize = 128;

fn fill_rows<S, I, F>(x: &FeatureMatrix, out: &mut [f32], per_row: usize, init: I, f: F)
where
    I: Fn() -> S + Sync,
    F: Fn(&mut S, &[f32], &mut [f32]) + Sync,
{
    if per_row == 0 {
        return;
    }
    if x.n_rows() >= PAR_MIN_ROWS {
        out.par_chunks_mut(per_row * PAR_CHUNK_ROWS)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let mut s = init();
                let start = ci * PAR_CHUNK_ROWS;
                for (k, o) in chunk.chunks_exact_mut(per_row).enumerate() {
                    f(&mut s, x.row(start + k), o);
                }
            });
    } else {
        let mut s = init();
        for (i, o) in out.chunks_exact_mut(per_row).enumerate() {
            f(&mut s, x.row(i), o);
        }
    }
}

impl Scorer for FittedForest {
    fn n_features(&self) -> usize {
        self.n_features
    }

    /// Tree-major over blocks of [`SCORE_BLOCK`] rows: each tree routes the whole block while
    /// its nodes are in cache (row-major scoring walked 300 trees per row and missed the cache
    /// on nearly every node). Per row the trees are still summed in order, so the result is
    /// bit-identical to the row-major sum.
    fn score_into(&self, x: &FeatureMatrix, out: &mut [f32]) -> Result<(), ModelError> {
        check_score_input(self.n_features, x, out.len(), N_CLASSES)?;
        let block = |b: usize, o: &mut [f32]| {
            let start = b * SCORE_BLOCK;
            let n = o.len() / N_CLASSES;
            let mut acc = [[0.0f64; N_CLASSES]; SCORE_BLOCK];
            for (c, trees) in self.trees.iter().enumerate() {
                for tree in trees {
                    for (r, a) in acc.iter_mut().enumerate().take(n) {
                        a[c] += tree.leaf(x.row(start + r)).value as f64;
                    }
                }
            }
            for (a, o) in acc.iter().zip(o.chunks_exact_mut(N_CLASSES)) {
                let mut p = [0.0f64; N_CLASSES];
                for (c, pc) in p.iter_mut().enumerate() {
                    *pc = (a[c] / self.trees[c].len() as f64).clamp(0.0, 1.0);
                }
                let s: f64 = p.iter().sum();
                for (oc, pc) in o.iter_mut().zip(p) {
                    *oc = if s > 0.0 {
                        (pc / s) as f32
                    } else {
                        1.0 / N_CLASSES as f32
                    };
                }
            }
        };
        if x.n_rows() >= PAR_MIN_ROWS {
            out.par_chunks_mut(SCORE_BLOCK * N_CLASSES)
                .enumerate()
                .for_each(|(b, o)| block(b, o));
        } else {
            out.chunks_mut(SCORE_BLOCK * N_CLASSES)
                .enumerate()
                .for_each(|(b, o)| block(b, o));
        }
        Ok(())
    }

    fn contributions_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        check_class(class)?;
        let d = self.n_features;
        check_score_input(d, x, out.len(), d + 1)?;
        let trees = &self.trees[class];
        let n_trees = trees.len() as f64;
        fill_rows(
            x,
            out,
            d + 1,
            || vec![0.0f64; d],
            |acc, row, o| {
                acc.fill(0.0);
                let mut bias = 0.0f64;
                for t in trees {
                    bias += t.add_path(row, acc);
                }
                for (oj, a) in o.iter_mut().zip(acc.iter()) {
                    *oj = (a / n_trees) as f32;
                }
                o[d] = (bias / n_trees) as f32;
            },
        );
        Ok(())
    }

    fn raw_score_into(
        &self,
        x: &FeatureMatrix,
        class: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        check_class(class)?;
        check_score_input(self.n_features, x, out.len(), 1)?;
        fill_rows(
            x,
            out,
            1,
            || (),
            |_, row, o| o[0] = self.raw(row, class) as f32,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic matrix with ties, a constant column and a few classes.
    fn data(n: usize) -> (FeatureMatrix, Vec<u8>) {
        let mut x = FeatureMatrix::with_columns(4);
        let mut y = Vec::new();
        let mut s = 0x9e37_79b9_u64;
        for i in 0..n {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let a = ((s >> 40) % 1000) as f32 / 100.0;
            let b = ((s >> 20) % 7) as f32; // many ties
            let c = (i % 13) as f32 * 0.37;
            x.push_row(&[a, b, 1.5, c]).unwrap();
            y.push(if a > 6.0 {
                0
            } else if b >= 4.0 || c > 3.5 {
                1
            } else {
                2
            });
        }
        (x, y)
    }

    #[test]
    fn params_are_checked() {
        assert!(ForestParams::default().check().is_ok());
        for bad in [
            ForestParams::default().n_trees(0),
            ForestParams::default().max_depth(0),
            ForestParams::default().max_depth(70_000),
            ForestParams::default().min_samples_leaf(0),
            ForestParams::default().min_samples_split(1),
            ForestParams::default().max_features(Some(0)),
        ] {
            assert!(matches!(bad.check(), Err(ModelError::InvalidParam { .. })));
        }
        let p: ForestParams = serde_json::from_str(r#"{"n_trees": 7}"#).unwrap();
        assert_eq!(p, ForestParams::default().n_trees(7));
        let v = ForestParams::default().check().unwrap();
        assert_eq!(v.mtry(1), 1);
        assert_eq!(v.mtry(6), 3);
        assert_eq!(v.mtry(9), 3);
        assert_eq!(v.mtry(10), 4);
        assert_eq!(
            ForestParams::default()
                .max_features(Some(50))
                .check()
                .unwrap()
                .mtry(6),
            6
        );
    }

    #[test]
    fn snapping_keeps_routing() {
        let vals = [
            0.0f32, -0.0, 1.0, -1.0, 0.1, -0.1, 1e-40, -1e-40, 3.4e38, 7.25,
        ];
        let mut ts: Vec<f64> = vec![0.1, -0.1, 1e-300, -1e-300, 0.0, 5.0, -7.3, 1e39];
        for w in vals.windows(2) {
            let (a, b) = (w[0] as f64, w[1] as f64);
            ts.push(a + (b - a) / 2.0);
        }
        for &t in &ts {
            let s = snap_to_f32_grid(t);
            assert!(s <= t && (s as f32) as f64 == s, "{t} -> {s}");
            for &x in vals
                .iter()
                .chain(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
            {
                assert_eq!(x as f64 <= t, x as f64 <= s, "x {x} t {t}");
            }
        }
    }

    /// Our extracted trees route every training row exactly as smartcore does.
    #[test]
    fn extracted_forest_predicts_like_smartcore() {
        use smartcore::linalg::basic::arrays::Array;
        let (x, y) = data(200);
        let dm = dense(&x).unwrap();
        let d = x.n_cols();
        // One tree: smartcore's prediction is that tree's leaf output, bit for bit.
        for seed in 0..4 {
            let p = ForestParams::default()
                .n_trees(1)
                .min_samples_leaf(1)
                .min_samples_split(2)
                .seed(seed)
                .check()
                .unwrap();
            for class in 0..N_CLASSES {
                let sk = fit_smartcore(&p, &dm, d, &y, class).unwrap();
                let theirs = sk.predict(&dm).unwrap();
                let ours = extract(&sk, d).unwrap();
                assert_eq!(ours.len(), 1);
                for (i, row) in x.rows().enumerate() {
                    assert_eq!(ours[0].leaf(row).value, theirs[i] as f32, "row {i}");
                }
            }
        }
        // Many trees: the means agree to f32 rounding of the stored node values.
        let p = ForestParams::default().n_trees(25).check().unwrap();
        for class in 0..N_CLASSES {
            let sk = fit_smartcore(&p, &dm, d, &y, class).unwrap();
            let theirs = sk.predict(&dm).unwrap();
            assert_eq!(theirs.shape(), x.n_rows());
            let ours = extract(&sk, d).unwrap();
            let ff = FittedForest {
                n_features: d,
                trees: vec![ours.clone(), ours.clone(), ours],
            };
            for (i, row) in x.rows().enumerate() {
                assert!((ff.raw(row, class) - theirs[i]).abs() < 1e-6, "row {i}");
            }
        }
    }

    #[test]
    fn contributions_are_exact_and_importances_sum_to_one() {
        let (x, y) = data(150);
        let m = ForestParams::default()
            .n_trees(10)
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let d = x.n_cols();
        for class in 0..N_CLASSES {
            let c = m.contributions(&x, class).unwrap();
            let mut raw = vec![0.0; x.n_rows()];
            m.raw_score_into(&x, class, &mut raw).unwrap();
            for i in 0..x.n_rows() {
                let s: f32 = c[i * (d + 1)..(i + 1) * (d + 1)].iter().sum();
                assert!((s - raw[i]).abs() < 1e-5);
            }
            // The constant column never splits.
            assert!(c.chunks(d + 1).all(|r| r[2] == 0.0));
        }
        let imp = m.feature_importances();
        assert_eq!(imp.len(), d);
        assert!((imp.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(imp[2], 0.0);
        assert!(imp[0] > 0.1);
    }

    #[test]
    fn absent_class_and_nan_rows_are_handled() {
        let (x, y) = data(100);
        let y: Vec<u8> = y.iter().map(|&c| if c == 1 { 0 } else { c }).collect();
        let m = ForestParams::default()
            .n_trees(5)
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        // smartcore may still split a constant target; every node value stays 0.
        let t1 = m.trees(1).unwrap();
        assert!(t1.iter().flat_map(Tree::nodes).all(|n| n.value == 0.0));
        let p = m.score(&x).unwrap();
        assert!(p.chunks(3).all(|r| r[1] == 0.0));
        let nan = FeatureMatrix::from_vec(1, 4, vec![f32::NAN; 4]).unwrap();
        let p = m.score(&nan).unwrap();
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(m.trees(3).is_none());
    }

    #[test]
    fn malformed_artifact_is_rejected() {
        let (x, y) = data(60);
        let m = ForestParams::default()
            .n_trees(2)
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let good = serde_json::to_value(&m).unwrap();
        assert_eq!(
            serde_json::from_value::<FittedForest>(good.clone()).unwrap(),
            m
        );
        let mut v = good.clone();
        v["trees"][0][0]["left"][0] = serde_json::json!(999_999);
        assert!(serde_json::from_value::<FittedForest>(v).is_err());
        let mut v = good.clone();
        v["trees"][0][0]["value"].as_array_mut().unwrap().pop();
        assert!(serde_json::from_value::<FittedForest>(v).is_err());
        let mut v = good.clone();
        v["trees"][0][0]["feature"][0] = serde_json::json!(99);
        assert!(serde_json::from_value::<FittedForest>(v).is_err());
        let mut v = good;
        v["trees"].as_array_mut().unwrap().pop();
        assert!(serde_json::from_value::<FittedForest>(v).is_err());
    }

    #[test]
    fn parallel_scoring_matches_serial() {
        let (x, y) = data(80);
        let m = ForestParams::default()
            .n_trees(5)
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        let idx: Vec<usize> = (0..PAR_MIN_ROWS + 11).map(|i| i % x.n_rows()).collect();
        let big = x.select_rows(&idx);
        let (p_big, p_small) = (m.score(&big).unwrap(), m.score(&x).unwrap());
        let (c_big, c_small) = (
            m.contributions(&big, 1).unwrap(),
            m.contributions(&x, 1).unwrap(),
        );
        let w = x.n_cols() + 1;
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(&p_big[k * 3..k * 3 + 3], &p_small[i * 3..i * 3 + 3]);
            assert_eq!(&c_big[k * w..k * w + w], &c_small[i * w..i * w + w]);
        }
    }

    #[test]
    fn blocked_scoring_equals_normalised_raw_scores() {
        let (x, y) = data(80);
        let m = ForestParams::default()
            .n_trees(7)
            .check()
            .unwrap()
            .fit(&x, &y)
            .unwrap();
        // Several blocks and a partial one.
        let idx: Vec<usize> = (0..2 * SCORE_BLOCK + 5)
            .map(|i| (i * 7) % x.n_rows())
            .collect();
        let xs = x.select_rows(&idx);
        let p = m.score(&xs).unwrap();
        let mut raw = vec![vec![0f32; xs.n_rows()]; N_CLASSES];
        for (c, r) in raw.iter_mut().enumerate() {
            m.raw_score_into(&xs, c, r).unwrap();
        }
        for i in 0..xs.n_rows() {
            let q: Vec<f64> = (0..N_CLASSES)
                .map(|c| m.raw(xs.row(i), c).clamp(0.0, 1.0))
                .collect();
            let s: f64 = q.iter().sum();
            for c in 0..N_CLASSES {
                assert_eq!(raw[c][i], m.raw(xs.row(i), c) as f32);
                let want = if s > 0.0 {
                    (q[c] / s) as f32
                } else {
                    1.0 / 3.0
                };
                assert_eq!(p[i * 3 + c], want, "row {i} class {c}");
            }
        }
    }
}
