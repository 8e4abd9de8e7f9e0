//! Metrics for grading (TP/BP/FP) and ranking (per-tenant queues).
//!
//! All results are `f64` and deterministic: inputs are accumulated in index order and every
//! sort uses a total order (score descending, then row index ascending).
//!
//! Conventions shared by the ranking functions:
//! * a higher score means "more likely positive / review first";
//! * NaN scores rank below every number and tie with each other (they never reach the top);
//! * `0.0` and `-0.0` are the same score (they tie).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EvalError;

/// Number of grading classes: 0 = TruePositive, 1 = BenignPositive, 2 = FalsePositive.
pub const N_CLASSES: usize = 3;

/// Probabilities are clipped to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]` by [`log_loss`].
const LOG_LOSS_EPS: f64 = 1e-15;

/// Weighted 3x3 confusion matrix: `0[t][p]` is the total weight of rows whose true class is
/// `t` and predicted class is `p` (rows = true class, columns = predicted class, as in
/// scikit-learn's `confusion_matrix`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix(pub [[f64; N_CLASSES]; N_CLASSES]);

impl ConfusionMatrix {
    /// Builds the matrix from parallel label slices and optional per-row weights
    /// (default weight 1). Same validation as [`classification_report`].
    ///
    /// ```
    /// use threatrank::eval::ConfusionMatrix;
    /// let cm = ConfusionMatrix::from_predictions(&[0, 1, 2, 2], &[0, 2, 2, 2], None).unwrap();
    /// assert_eq!(cm.0[1][2], 1.0);
    /// assert_eq!(cm.0[2][2], 2.0);
    /// assert_eq!(cm.total(), 4.0);
    /// ```
    pub fn from_predictions(
        y_true: &[u8],
        y_pred: &[u8],
        weights: Option<&[f64]>,
    ) -> Result<Self, EvalError> {
        if y_true.is_empty() {
            return Err(EvalError::Empty { what: "y_true" });
        }
        if y_pred.len() != y_true.len() {
            return Err(EvalError::LengthMismatch {
                what: "y_pred",
                expected: y_true.len(),
                got: y_pred.len(),
            });
        }
        if let Some(w) = weights {
            if w.len() != y_true.len() {
                return Err(EvalError::LengthMismatch {
                    what: "weights",
                    expected: y_true.len(),
                    got: w.len(),
                });
            }
        }
        let mut m = [[0.0f64; N_CLASSES]; N_CLASSES];
        for (index, (&t, &p)) in y_true.iter().zip(y_pred).enumerate() {
            let t_idx = class_index(index, t)?;
            let p_idx = class_index(index, p)?;
            let w = match weights {
                Some(ws) => {
                    let weight = ws[index];
                    if !weight.is_finite() || weight < 0.0 {
                        return Err(EvalError::InvalidWeight { index, weight });
                    }
                    weight
                }
                None => 1.0,
            };
            m[t_idx][p_idx] += w;
        }
        Ok(Self(m))
    }

    /// Total weight in the matrix.
    pub fn total(&self) -> f64 {
        self.0.iter().flatten().sum()
    }

    /// Weight of correctly classified rows (trace).
    pub fn correct(&self) -> f64 {
        (0..N_CLASSES).map(|c| self.0[c][c]).sum()
    }

    /// Weight of rows whose true class is `class` (the class support); `0.0` for `class > 2`.
    pub fn row_sum(&self, class: usize) -> f64 {
        self.0.get(class).map_or(0.0, |r| r.iter().sum())
    }

    /// Weight of rows predicted as `class`; `0.0` for `class > 2`.
    pub fn col_sum(&self, class: usize) -> f64 {
        if class >= N_CLASSES {
            return 0.0;
        }
        self.0.iter().map(|r| r[class]).sum()
    }
}

/// One class's one-vs-rest scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// `tp / (tp + fp)`, 0 when nothing was predicted as this class.
    pub precision: f64,
    /// `tp / (tp + fn)`, 0 when the class is absent from `y_true`.
    pub recall: f64,
    /// `2 tp / (2 tp + fp + fn)` (= harmonic mean of precision and recall), 0 when undefined.
    pub f1: f64,
    /// Weight of rows whose true class is this class.
    pub support: f64,
}

/// Multiclass grading report, see [`classification_report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassReport {
    /// `trace(C) / n`.
    pub accuracy: f64,
    /// Unweighted mean of the 3 per-class F1 scores.
    pub macro_f1: f64,
    /// Unweighted mean of the 3 per-class precisions.
    pub macro_precision: f64,
    /// Unweighted mean of the 3 per-class recalls.
    pub macro_recall: f64,
    /// Scores for TP (0), BP (1), FP (2).
    pub per_class: [ClassMetrics; N_CLASSES],
    /// The (weighted) confusion matrix the scores come from.
    pub confusion: ConfusionMatrix,
    /// Total weight (number of rows when unweighted).
    pub n: f64,
}

/// Accuracy, per-class and macro precision/recall/F1 for the 3 grading classes.
///
/// With `C` the weighted confusion matrix (rows = true, cols = predicted), for class `c`:
/// `tp = C[c][c]`, `fp = Σ_t C[t][c] − tp`, `fn = Σ_p C[c][p] − tp`,
/// `precision = tp / (tp + fp)`, `recall = tp / (tp + fn)`, `f1 = 2 tp / (2 tp + fp + fn)`,
/// each defined as `0` when its denominator is `0` (scikit-learn
/// `precision_recall_fscore_support(labels=[0, 1, 2], zero_division=0)`). Macro averages are
/// unweighted means over all 3 classes, including classes absent from both inputs
/// (scikit-learn `average="macro"` with explicit `labels`). `accuracy = trace(C) / n`.
///
/// `weights` (finite, `>= 0`) lets, e.g., an incident count once across its evidence rows
/// (weight `1 / rows_in_incident`); `None` means weight 1 per row.
///
/// Errors: empty input, length mismatch, class id `> 2`, invalid weight, all weights zero.
///
/// ```
/// use threatrank::eval::classification_report;
/// let r = classification_report(&[0, 0, 1, 1], &[0, 1, 1, 1], None).unwrap();
/// assert_eq!(r.accuracy, 0.75);
/// assert_eq!(r.per_class[1].recall, 1.0);
/// assert_eq!(r.per_class[2].f1, 0.0); // class 2 absent: defined as 0
/// assert!((r.macro_recall - 0.5).abs() < 1e-12);
/// ```
pub fn classification_report(
    y_true: &[u8],
    y_pred: &[u8],
    weights: Option<&[f64]>,
) -> Result<MulticlassReport, EvalError> {
    let confusion = ConfusionMatrix::from_predictions(y_true, y_pred, weights)?;
    let n = confusion.total();
    if n <= 0.0 {
        return Err(EvalError::ZeroTotalWeight);
    }
    let mut per_class = [ClassMetrics::default(); N_CLASSES];
    for (c, m) in per_class.iter_mut().enumerate() {
        let tp = confusion.0[c][c];
        let row = confusion.row_sum(c);
        let col = confusion.col_sum(c);
        *m = ClassMetrics {
            precision: safe_div(tp, col),
            recall: safe_div(tp, row),
            // 2tp + fp + fn = row + col
            f1: safe_div(2.0 * tp, row + col),
            support: row,
        };
    }
    let mean = |f: fn(&ClassMetrics) -> f64| per_class.iter().map(f).sum::<f64>() / 3.0;
    Ok(MulticlassReport {
        accuracy: confusion.correct() / n,
        macro_f1: mean(|m| m.f1),
        macro_precision: mean(|m| m.precision),
        macro_recall: mean(|m| m.recall),
        per_class,
        confusion,
        n,
    })
}

/// Average precision (area under the precision-recall curve), as scikit-learn's
/// `average_precision_score`:
///
/// `AP = Σ_n (R_n − R_{n−1}) P_n`, with `R_0 = 0`,
///
/// where `P_n`, `R_n` are precision and recall when flagging every item scored `>=` the n-th
/// distinct score (descending). Tied scores enter together (one threshold), so AP does not
/// depend on the order of tied items. No interpolation.
///
/// Returns `None` when there is no positive (recall undefined), when the input is empty, or
/// when `scores` and `positive` differ in length.
///
/// ```
/// use threatrank::eval::average_precision;
/// // scikit-learn docs example: y_true = [0, 0, 1, 1], scores = [0.1, 0.4, 0.35, 0.8] -> 0.8333
/// let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
/// assert!((ap - 5.0 / 6.0).abs() < 1e-12);
/// assert_eq!(average_precision(&[0.3], &[false]), None);
/// ```
pub fn average_precision(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let curve = pr_curve_checked(scores, positive)?;
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for (recall, precision, _) in curve {
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Some(ap)
}

/// Precision-recall points, one per distinct score, by decreasing threshold (so increasing
/// recall): `(recall, precision, threshold)` where the point counts every item with score
/// `>= threshold` as flagged; `recall = tp / positives`, `precision = tp / flagged`.
///
/// Unlike scikit-learn's `precision_recall_curve` there is no synthetic `(0, 1)` end point and
/// the order is by decreasing threshold. Empty when there is no positive or the lengths differ.
///
/// ```
/// use threatrank::eval::pr_curve;
/// let c = pr_curve(&[0.9, 0.5, 0.5], &[true, false, true]);
/// assert_eq!(c, vec![(0.5, 1.0, 0.9), (1.0, 2.0 / 3.0, 0.5)]);
/// ```
pub fn pr_curve(scores: &[f32], positive: &[bool]) -> Vec<(f64, f64, f32)> {
    pr_curve_checked(scores, positive).unwrap_or_default()
}

/// One distinct threshold of the binary ranking curve.
struct CurvePoint {
    /// positives with score at or above the threshold
    tp: usize,
    /// items with score at or above the threshold
    flagged: usize,
    threshold: f32,
}

/// Points by decreasing threshold and the number of positives; `None` on length mismatch or
/// no positive. Shared by [`pr_curve`], [`average_precision`] and [`workload_at_recall`].
fn curve_points(scores: &[f32], positive: &[bool]) -> Option<(Vec<CurvePoint>, usize)> {
    if scores.len() != positive.len() {
        return None;
    }
    let total_pos = positive.iter().filter(|&&p| p).count();
    if total_pos == 0 {
        return None;
    }
    let order = order_by_score_desc(scores);
    let mut points = Vec::new();
    let mut tp = 0usize;
    for (pos, &i) in order.iter().enumerate() {
        tp += usize::from(positive[i]);
        let last_of_tie = order
            .get(pos + 1)
            .is_none_or(|&j| cmp_score_desc(scores[i], scores[j]) != Ordering::Equal);
        if last_of_tie {
            points.push(CurvePoint {
                tp,
                flagged: pos + 1,
                threshold: scores[i],
            });
        }
    }
    Some((points, total_pos))
}

/// `(recall, precision, threshold)` points, see [`pr_curve`].
fn pr_curve_checked(scores: &[f32], positive: &[bool]) -> Option<Vec<(f64, f64, f32)>> {
    let (points, total_pos) = curve_points(scores, positive)?;
    Some(
        points
            .iter()
            .map(|p| {
                (
                    p.tp as f64 / total_pos as f64,
                    p.tp as f64 / p.flagged as f64,
                    p.threshold,
                )
            })
            .collect(),
    )
}

/// A ranking metric averaged over queues (one queue per group id, e.g. tenant).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueueMetric {
    /// Unweighted mean over the `n_queues` queues that hold at least one positive
    /// (`0.0` when there is none).
    pub mean: f64,
    /// Number of queues averaged (queues with at least one positive).
    pub n_queues: usize,
}

/// Mean per-queue precision at `k`.
///
/// Each queue (rows sharing a group id) is ranked by score descending, ties broken by row index
/// ascending (a total, deterministic order). With `k_q = min(k, queue size)`:
/// `P@k_q = (positives among the top k_q) / k_q` (Manning, Raghavan & Schütze,
/// *Introduction to Information Retrieval*, §8.4; capping at the queue size so a small tenant
/// is not penalised for having fewer than `k` items).
///
/// The mean is taken over queues with at least one positive only: a queue without any positive
/// has nothing to find (its precision is 0 whatever the model does) and would only dilute the
/// mean by the share of all-negative tenants. `n_queues` reports how many queues were averaged.
///
/// Errors: length mismatch, `k == 0`. Empty input gives `mean = 0, n_queues = 0`.
///
/// ```
/// use threatrank::eval::precision_at_k;
/// let groups = [1, 1, 1, 2, 2];
/// let scores = [0.9, 0.8, 0.1, 0.5, 0.5];
/// let positive = [false, true, true, false, true];
/// let m = precision_at_k(&groups, &scores, &positive, 2).unwrap();
/// assert_eq!((m.mean, m.n_queues), (0.5, 2));
/// ```
pub fn precision_at_k(
    groups: &[u64],
    scores: &[f32],
    positive: &[bool],
    k: usize,
) -> Result<QueueMetric, EvalError> {
    per_queue(groups, scores, positive, k, |ranked, k_q, _| {
        hits(ranked, k_q) as f64 / k_q as f64
    })
}

/// Mean per-queue recall at `k`: `(positives among the top min(k, queue size)) / (positives in
/// the queue)`, same ranking, averaging and errors as [`precision_at_k`].
///
/// ```
/// use threatrank::eval::recall_at_k;
/// let m = recall_at_k(&[7, 7, 7], &[0.9, 0.8, 0.1], &[false, true, true], 2).unwrap();
/// assert_eq!((m.mean, m.n_queues), (0.5, 1));
/// ```
pub fn recall_at_k(
    groups: &[u64],
    scores: &[f32],
    positive: &[bool],
    k: usize,
) -> Result<QueueMetric, EvalError> {
    per_queue(groups, scores, positive, k, |ranked, k_q, n_pos| {
        hits(ranked, k_q) as f64 / n_pos as f64
    })
}

/// Mean per-queue NDCG at `k` with binary relevance (Järvelin & Kekäläinen, 2002, ACM TOIS
/// 20(4); the `1 / log2(i + 1)` discount as in scikit-learn's `ndcg_score`):
///
/// `DCG@k = Σ_{i=1}^{k_q} rel_i / log2(i + 1)`, `NDCG@k = DCG@k / IDCG@k`,
///
/// where `rel_i ∈ {0, 1}` is the relevance at rank `i`, `k_q = min(k, queue size)` and `IDCG@k`
/// is the DCG of the same queue sorted by relevance (`min(k_q, positives)` ones on top).
/// Ranking, averaging (queues with a positive, so `IDCG > 0`) and errors as in
/// [`precision_at_k`]. Ties are broken by row index, not averaged as scikit-learn does.
///
/// ```
/// use threatrank::eval::ndcg_at_k;
/// // one queue, the only positive at rank 2: NDCG = (1 / log2 3) / 1
/// let m = ndcg_at_k(&[1, 1], &[0.9, 0.2], &[false, true], 2).unwrap();
/// assert!((m.mean - 1.0 / 3f64.log2()).abs() < 1e-12);
/// ```
pub fn ndcg_at_k(
    groups: &[u64],
    scores: &[f32],
    positive: &[bool],
    k: usize,
) -> Result<QueueMetric, EvalError> {
    per_queue(groups, scores, positive, k, ndcg_of_ranked)
}

/// NDCG at `k` of every queue holding a positive, as `(group id, NDCG@k)` in ascending group
/// order: the per-queue values whose mean is [`ndcg_at_k`] (same ranking, discount and errors).
/// For the spread of ranking quality across tenants.
///
/// ```
/// use threatrank::eval::ndcg_at_k_per_queue;
/// let q = ndcg_at_k_per_queue(&[2, 2, 1, 3], &[0.9, 0.2, 0.5, 0.1], &[false, true, true, false], 10)
///     .unwrap();
/// assert_eq!(q.len(), 2); // queue 3 holds no positive
/// assert_eq!(q[0], (1, 1.0));
/// assert_eq!(q[1].0, 2);
/// assert!((q[1].1 - 1.0 / 3f64.log2()).abs() < 1e-12);
/// ```
pub fn ndcg_at_k_per_queue(
    groups: &[u64],
    scores: &[f32],
    positive: &[bool],
    k: usize,
) -> Result<Vec<(u64, f64)>, EvalError> {
    per_queue_values(groups, scores, positive, k, ndcg_of_ranked)
}

/// NDCG of one ranked queue at `k_q` with `n_pos` positives (see [`ndcg_at_k`]).
fn ndcg_of_ranked(ranked: &[bool], k_q: usize, n_pos: usize) -> f64 {
    let discount = |rank0: usize| 1.0 / ((rank0 + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(k_q)
        .enumerate()
        .filter(|(_, &rel)| rel)
        .map(|(r, _)| discount(r))
        .sum();
    let idcg: f64 = (0..k_q.min(n_pos)).map(discount).sum();
    dcg / idcg
}

/// Number of positives among the first `k` of `ranked`.
fn hits(ranked: &[bool], k: usize) -> usize {
    ranked.iter().take(k).filter(|&&p| p).count()
}

/// Groups rows by queue, ranks each queue, applies `metric(ranked relevances, k_q, positives)`
/// to queues with at least one positive and averages (in ascending group order).
fn per_queue(
    groups: &[u64],
    scores: &[f32],
    positive: &[bool],
    k: usize,
    metric: impl Fn(&[bool], usize, usize) -> f64,
) -> Result<QueueMetric, EvalError> {
    let values = per_queue_values(groups, scores, positive, k, metric)?;
    let n_queues = values.len();
    let sum: f64 = values.iter().map(|(_, v)| v).sum();
    let mean = if n_queues == 0 {
        0.0
    } else {
        sum / n_queues as f64
    };
    Ok(QueueMetric { mean, n_queues })
}

/// `(group id, metric)` of every queue holding a positive, in ascending group order (see
/// [`per_queue`]).
fn per_queue_values(
    groups: &[u64],
    scores: &[f32],
    positive: &[bool],
    k: usize,
    metric: impl Fn(&[bool], usize, usize) -> f64,
) -> Result<Vec<(u64, f64)>, EvalError> {
    if scores.len() != groups.len() {
        return Err(EvalError::LengthMismatch {
            what: "scores",
            expected: groups.len(),
            got: scores.len(),
        });
    }
    if positive.len() != groups.len() {
        return Err(EvalError::LengthMismatch {
            what: "positive",
            expected: groups.len(),
            got: positive.len(),
        });
    }
    if k == 0 {
        return Err(EvalError::ZeroK);
    }
    let mut queues: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        queues.entry(g).or_default().push(i);
    }
    let mut out = Vec::new();
    let mut ranked = Vec::new();
    for (&g, rows) in queues.iter_mut() {
        let n_pos = rows.iter().filter(|&&i| positive[i]).count();
        if n_pos == 0 {
            continue;
        }
        rows.sort_by(|&a, &b| cmp_score_desc(scores[a], scores[b]).then(a.cmp(&b)));
        ranked.clear();
        ranked.extend(rows.iter().map(|&i| positive[i]));
        out.push((g, metric(&ranked, k.min(rows.len()), n_pos)));
    }
    Ok(out)
}

/// Fraction of all items a hunter must review, going down the global ranking by score, to
/// find at least `target_recall` of the positives.
///
/// Items are reviewed by descending score; a group of tied scores is reviewed whole (the model
/// cannot order inside it), so the result is `reviewed / n` at the first distinct threshold
/// whose recall `tp / positives >= target_recall`. Lower is better; a random ranking needs
/// about `target_recall` on average.
///
/// Returns `None` when there is no positive, the lengths differ, or `target_recall` is not in
/// `(0, 1]` (or NaN).
///
/// ```
/// use threatrank::eval::workload_at_recall;
/// let scores = [0.9, 0.8, 0.7, 0.6, 0.5];
/// let positive = [true, false, true, false, true];
/// // 2 of 3 positives are found after reviewing the top 3 of 5 items
/// assert_eq!(workload_at_recall(&scores, &positive, 0.5), Some(0.6));
/// ```
pub fn workload_at_recall(scores: &[f32], positive: &[bool], target_recall: f64) -> Option<f64> {
    if !(target_recall > 0.0 && target_recall <= 1.0) {
        return None;
    }
    let (points, total_pos) = curve_points(scores, positive)?;
    points
        .iter()
        .find(|p| p.tp as f64 / total_pos as f64 >= target_recall)
        .map(|p| p.flagged as f64 / scores.len() as f64)
}

/// Multiclass log loss (cross-entropy), as scikit-learn's `log_loss`:
///
/// `L = −(1/n) Σ_i ln(clip(p_{i, y_i}, 1e-15, 1 − 1e-15))`
///
/// `probs` holds `n` rows of 3 class probabilities, row-major (`probs[3 i + c]`). Rows are not
/// renormalised. Computed in `f64`.
///
/// Errors: empty input, `probs.len() != 3 * y.len()`, class id `> 2`, NaN or infinite
/// probability.
///
/// ```
/// use threatrank::eval::log_loss;
/// let l = log_loss(&[1.0, 0.0, 0.0, 0.0, 0.5, 0.5], &[0, 2]).unwrap();
/// assert!((l - (2f64).ln() / 2.0).abs() < 1e-9);
/// ```
pub fn log_loss(probs: &[f32], y: &[u8]) -> Result<f64, EvalError> {
    if y.is_empty() {
        return Err(EvalError::Empty { what: "y" });
    }
    let expected = y.len().saturating_mul(N_CLASSES);
    if probs.len() != expected {
        return Err(EvalError::LengthMismatch {
            what: "probs",
            expected,
            got: probs.len(),
        });
    }
    if let Some((index, &value)) = probs.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EvalError::InvalidProbability { index, value });
    }
    let mut sum = 0.0f64;
    for (i, &class) in y.iter().enumerate() {
        let c = class_index(i, class)?;
        let p = f64::from(probs[i * N_CLASSES + c]).clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
        sum -= p.ln();
    }
    Ok(sum / y.len() as f64)
}

/// Index of the largest of three class probabilities; ties go to the lowest index, NaN entries
/// never win (all NaN gives 0).
///
/// ```
/// use threatrank::eval::argmax3;
/// assert_eq!(argmax3(&[0.2, 0.5, 0.3]), 1);
/// assert_eq!(argmax3(&[0.4, 0.4, 0.2]), 0);
/// ```
pub fn argmax3(probs_row: &[f32; N_CLASSES]) -> u8 {
    let mut best = 0u8;
    let mut best_v = f32::NEG_INFINITY;
    for (c, &v) in (0u8..).zip(probs_row) {
        if v > best_v {
            best = c;
            best_v = v;
        }
    }
    best
}

/// Validates a class id and returns it as an index.
fn class_index(index: usize, class: u8) -> Result<usize, EvalError> {
    let c = usize::from(class);
    if c < N_CLASSES {
        Ok(c)
    } else {
        Err(EvalError::InvalidClass { index, class })
    }
}

/// `num / den`, or 0 when `den == 0`.
fn safe_div(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Score order for ranking: higher first, NaN last (NaNs tie), `0.0 == -0.0`.
fn cmp_score_desc(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// Row indices by score descending, ties by index ascending.
fn order_by_score_desc(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| cmp_score_desc(scores[a], scores[b]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn report_matches_hand_computed_values() {
        // Hand-computed: C = [[2,1,0],[0,1,1],[1,0,2]], n = 8, trace = 5.
        // class 0: p = 2/3, r = 2/3; class 1: p = 1/2, r = 1/2; class 2: p = 2/3, r = 2/3.
        // macro = (2/3 + 1/2 + 2/3) / 3 = 11/18 for p, r and f1.
        let y_true = [0, 0, 0, 1, 1, 2, 2, 2];
        let y_pred = [0, 1, 0, 1, 2, 2, 2, 0];
        let r = classification_report(&y_true, &y_pred, None).unwrap();
        assert_eq!(
            r.confusion.0,
            [[2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 2.0]]
        );
        assert_eq!(r.n, 8.0);
        assert!(close(r.accuracy, 0.625));
        assert!(close(r.per_class[0].f1, 2.0 / 3.0));
        assert!(close(r.per_class[1].precision, 0.5));
        assert!(close(r.per_class[2].recall, 2.0 / 3.0));
        assert_eq!(r.per_class[2].support, 3.0);
        assert!(close(r.macro_f1, 11.0 / 18.0));
        assert!(close(r.macro_precision, 11.0 / 18.0));
        assert!(close(r.macro_recall, 11.0 / 18.0));
    }

    #[test]
    fn report_absent_class_is_zero_and_counts_in_macro() {
        // Hand-computed: C = [[1,1,0],[0,2,0],[0,0,0]].
        // class 0: p = 1, r = 1/2, f1 = 2/(2+0+1) = 2/3; class 1: p = 2/3, r = 1, f1 = 4/5;
        // class 2: all 0 (zero_division = 0). macro p = 5/9, r = 1/2, f1 = (2/3 + 4/5)/3 = 22/45.
        let r = classification_report(&[0, 0, 1, 1], &[0, 1, 1, 1], None).unwrap();
        assert_eq!(r.per_class[2], ClassMetrics::default());
        assert!(close(r.per_class[0].f1, 2.0 / 3.0));
        assert!(close(r.per_class[1].f1, 0.8));
        assert!(close(r.macro_precision, 5.0 / 9.0));
        assert!(close(r.macro_recall, 0.5));
        assert!(close(r.macro_f1, 22.0 / 45.0));
        assert!(close(r.accuracy, 0.75));
    }

    #[test]
    fn report_weighted() {
        // Hand-computed: weights [2, 1, 0.5] give C = [[2,0,0],[0,0,1],[0,0,0.5]], n = 3.5.
        // accuracy = 2.5/3.5; class 2: p = 0.5/1.5 = 1/3, r = 1, f1 = 1/(1 + 1) = 0.5.
        let r = classification_report(&[0, 1, 2], &[0, 2, 2], Some(&[2.0, 1.0, 0.5])).unwrap();
        assert!(close(r.n, 3.5));
        assert!(close(r.accuracy, 5.0 / 7.0));
        assert!(close(r.per_class[2].precision, 1.0 / 3.0));
        assert!(close(r.per_class[2].f1, 0.5));
        assert_eq!(r.per_class[1].support, 1.0);
        // integer weights == repeated rows
        let rep = classification_report(&[0, 0, 1, 2, 2], &[0, 0, 2, 2, 2], None).unwrap();
        let w = classification_report(&[0, 1, 2], &[0, 2, 2], Some(&[2.0, 1.0, 2.0])).unwrap();
        assert_eq!(rep, w);
    }

    #[test]
    fn report_errors() {
        use EvalError::*;
        assert_eq!(
            classification_report(&[], &[], None),
            Err(Empty { what: "y_true" })
        );
        assert!(matches!(
            classification_report(&[0, 1], &[0], None),
            Err(LengthMismatch { .. })
        ));
        assert!(matches!(
            classification_report(&[0, 1], &[0, 1], Some(&[1.0])),
            Err(LengthMismatch { .. })
        ));
        assert_eq!(
            classification_report(&[0, 3], &[0, 1], None),
            Err(InvalidClass { index: 1, class: 3 })
        );
        assert!(matches!(
            classification_report(&[0], &[0], Some(&[-1.0])),
            Err(InvalidWeight { index: 0, .. })
        ));
        assert!(matches!(
            classification_report(&[0], &[0], Some(&[f64::NAN])),
            Err(InvalidWeight { .. })
        ));
        assert_eq!(
            classification_report(&[0], &[0], Some(&[0.0])),
            Err(ZeroTotalWeight)
        );
    }

    #[test]
    fn ap_hand_computed() {
        // Hand-computed: order T F T F -> (R, P) = (.5, 1), (.5, .5), (1, 2/3), (1, .5);
        // AP = .5 * 1 + .5 * 2/3 = 5/6.
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.6], &[true, false, true, false]).unwrap();
        assert!(close(ap, 5.0 / 6.0));
        // perfect ranking
        let ap = average_precision(&[0.9, 0.8, 0.1], &[true, true, false]).unwrap();
        assert!(close(ap, 1.0));
    }

    #[test]
    fn ap_ties_grouped() {
        // Hand-computed: thresholds 0.9 (tp 0, fp 1), 0.5 (tp 2, fp 2), 0.1 (tp 3, fp 2), P = 3:
        // AP = (2/3) * (2/4) + (1/3) * (3/5) = 1/3 + 1/5 = 8/15.
        let scores = [0.9, 0.5, 0.5, 0.5, 0.1];
        let pos = [false, true, false, true, true];
        assert!(close(average_precision(&scores, &pos).unwrap(), 8.0 / 15.0));
        // order inside a tie does not matter
        let pos2 = [false, false, true, true, true];
        assert_eq!(
            average_precision(&scores, &pos),
            average_precision(&scores, &pos2)
        );
        // all tied: AP = prevalence
        let ap = average_precision(&[0.3; 4], &[true, false, false, true]).unwrap();
        assert!(close(ap, 0.5));
        // 0.0 and -0.0 tie
        assert_eq!(average_precision(&[0.0, -0.0], &[false, true]), Some(0.5));
    }

    #[test]
    fn ap_none_cases() {
        assert_eq!(average_precision(&[], &[]), None);
        assert_eq!(average_precision(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(average_precision(&[0.1], &[true, false]), None);
        assert!(pr_curve(&[0.1], &[false]).is_empty());
    }

    #[test]
    fn pr_curve_points_and_nan_last() {
        let c = pr_curve(
            &[0.9, 0.5, 0.5, 0.5, 0.1],
            &[false, true, false, true, true],
        );
        assert_eq!(
            c,
            vec![(0.0, 0.0, 0.9), (2.0 / 3.0, 0.5, 0.5), (1.0, 0.6, 0.1)]
        );
        // NaN ranks last
        let c = pr_curve(&[f32::NAN, 0.2], &[false, true]);
        assert_eq!(c[0], (1.0, 1.0, 0.2));
        assert_eq!((c[1].0, c[1].1), (1.0, 0.5));
        assert!(c[1].2.is_nan());
    }

    // Queues for the ranking tests (hand-ranked):
    // queue 1: rows 0 (0.9, F), 1 (0.8, T), 2 (0.1, T)
    // queue 2: rows 3 (0.5, F), 4 (0.5, T) -> tie broken by index: 3 then 4
    // queue 3: row 5 (0.3, F) -> no positive, excluded
    const G: [u64; 6] = [1, 1, 1, 2, 2, 3];
    const S: [f32; 6] = [0.9, 0.8, 0.1, 0.5, 0.5, 0.3];
    const P: [bool; 6] = [false, true, true, false, true, false];

    #[test]
    fn precision_at_k_hand_computed() {
        let m = precision_at_k(&G, &S, &P, 2).unwrap();
        assert_eq!(
            m,
            QueueMetric {
                mean: 0.5,
                n_queues: 2
            }
        );
        assert_eq!(precision_at_k(&G, &S, &P, 1).unwrap().mean, 0.0);
        // k capped at queue size: q1 = 2/3, q2 = 1/2 -> 7/12
        assert!(close(
            precision_at_k(&G, &S, &P, 5).unwrap().mean,
            7.0 / 12.0
        ));
    }

    #[test]
    fn recall_at_k_hand_computed() {
        // q1: 1 of 2, q2: 1 of 1 -> 0.75
        assert_eq!(recall_at_k(&G, &S, &P, 2).unwrap().mean, 0.75);
        assert_eq!(recall_at_k(&G, &S, &P, 1).unwrap().mean, 0.0);
        assert_eq!(recall_at_k(&G, &S, &P, 3).unwrap().mean, 1.0);
    }

    #[test]
    fn ndcg_at_k_hand_computed() {
        // q1: DCG = 1/log2 3, IDCG = 1 + 1/log2 3 -> 1/(log2 3 + 1) ~ 0.3868528
        // q2: DCG = 1/log2 3, IDCG = 1 (one positive) -> ~ 0.6309298
        let l3 = 3f64.log2();
        let m = ndcg_at_k(&G, &S, &P, 2).unwrap();
        assert_eq!(m.n_queues, 2);
        assert!(close(m.mean, (1.0 / (l3 + 1.0) + 1.0 / l3) / 2.0));
        assert!((m.mean - 0.5088913).abs() < 1e-6);
        // perfect ranking
        let m = ndcg_at_k(&[1, 1, 1], &[0.9, 0.8, 0.1], &[true, true, false], 3).unwrap();
        assert!(close(m.mean, 1.0));
    }

    #[test]
    fn ndcg_per_queue_values_average_to_the_mean() {
        // same queues as above: q1 ~ 0.3868528, q2 ~ 0.6309298, q3 excluded (no positive)
        let q = ndcg_at_k_per_queue(&G, &S, &P, 2).unwrap();
        let l3 = 3f64.log2();
        assert_eq!(q.iter().map(|(g, _)| *g).collect::<Vec<_>>(), vec![1, 2]);
        assert!(close(q[0].1, 1.0 / (l3 + 1.0)));
        assert!(close(q[1].1, 1.0 / l3));
        let mean = ndcg_at_k(&G, &S, &P, 2).unwrap().mean;
        assert_eq!(mean, (q[0].1 + q[1].1) / 2.0);
        assert_eq!(ndcg_at_k_per_queue(&G, &S, &P, 0), Err(EvalError::ZeroK));
    }

    #[test]
    fn queue_metric_edge_cases() {
        assert_eq!(precision_at_k(&G, &S, &P, 0), Err(EvalError::ZeroK));
        assert!(matches!(
            ndcg_at_k(&G, &S[..5], &P, 2),
            Err(EvalError::LengthMismatch { what: "scores", .. })
        ));
        assert!(matches!(
            recall_at_k(&G, &S, &P[..5], 2),
            Err(EvalError::LengthMismatch {
                what: "positive",
                ..
            })
        ));
        let none = QueueMetric {
            mean: 0.0,
            n_queues: 0,
        };
        assert_eq!(precision_at_k(&[], &[], &[], 3), Ok(none));
        assert_eq!(
            ndcg_at_k(&[1, 2], &[0.1, 0.2], &[false, false], 3),
            Ok(none)
        );
    }

    #[test]
    fn workload_hand_computed() {
        let s = [0.9, 0.8, 0.7, 0.6, 0.5];
        let p = [true, false, true, false, true];
        assert_eq!(workload_at_recall(&s, &p, 1.0 / 3.0), Some(0.2));
        assert_eq!(workload_at_recall(&s, &p, 0.5), Some(0.6));
        assert_eq!(workload_at_recall(&s, &p, 1.0), Some(1.0));
        // ties reviewed whole: 0.9 (F) then {0.5 T, 0.5 F} -> 3 of 4
        let s = [0.9, 0.5, 0.5, 0.1];
        let p = [false, true, false, true];
        assert_eq!(workload_at_recall(&s, &p, 0.5), Some(0.75));
        assert_eq!(workload_at_recall(&s, &[false; 4], 0.5), None);
        assert_eq!(workload_at_recall(&s, &p, 0.0), None);
        assert_eq!(workload_at_recall(&s, &p, 1.5), None);
        assert_eq!(workload_at_recall(&s, &p, f64::NAN), None);
    }

    #[test]
    fn log_loss_hand_computed() {
        // -(ln 0.7 + ln 0.8) / 2 (f32 inputs widened to f64)
        let l = log_loss(&[0.7, 0.2, 0.1, 0.1, 0.8, 0.1], &[0, 1]).unwrap();
        let want = -(f64::from(0.7f32).ln() + f64::from(0.8f32).ln()) / 2.0;
        assert!(close(l, want));
        assert!((l - 0.2899092).abs() < 1e-6);
        // clipping: p = 0 on the true class -> -ln(1e-15) ~ 34.5387764
        let l = log_loss(&[0.0, 1.0, 0.0], &[0]).unwrap();
        assert!(close(l, -(1e-15f64).ln()));
        // p = 1 clipped to 1 - 1e-15: tiny but positive
        let l = log_loss(&[1.0, 0.0, 0.0], &[0]).unwrap();
        assert!(l > 0.0 && l < 1e-14);
    }

    #[test]
    fn log_loss_errors() {
        assert_eq!(log_loss(&[], &[]), Err(EvalError::Empty { what: "y" }));
        assert!(matches!(
            log_loss(&[0.5, 0.5], &[0]),
            Err(EvalError::LengthMismatch {
                expected: 3,
                got: 2,
                ..
            })
        ));
        assert_eq!(
            log_loss(&[0.5, 0.5, 0.0], &[3]),
            Err(EvalError::InvalidClass { index: 0, class: 3 })
        );
        assert!(matches!(
            log_loss(&[0.5, f32::NAN, 0.0], &[0]),
            Err(EvalError::InvalidProbability { index: 1, .. })
        ));
    }

    #[test]
    fn argmax3_ties_and_nan() {
        assert_eq!(argmax3(&[0.1, 0.2, 0.7]), 2);
        assert_eq!(argmax3(&[0.1, 0.45, 0.45]), 1);
        assert_eq!(argmax3(&[1.0 / 3.0; 3]), 0);
        assert_eq!(argmax3(&[f32::NAN, 0.1, 0.2]), 2);
        assert_eq!(argmax3(&[f32::NAN; 3]), 0);
    }
}
