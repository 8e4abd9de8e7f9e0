//! Evaluation: metrics and leak-free splits.
//!
//! `eval` sits after `models` in the pipeline: it scores predictions (multiclass TP/BP/FP
//! grading, PR-AUC, per-tenant ranking quality, hunter workload) and builds grouped
//! train/test splits so that rows of one incident (or tenant) never leak across a split.
//! It depends on nothing but `std`, `serde` and `thiserror` (for [`EvalError`]); it does not
//! know about models or feature matrices, only about labels, scores and row indices.
//!
//! Class ids follow the crate convention: `0` = TruePositive, `1` = BenignPositive,
//! `2` = FalsePositive.
//!
//! * [`metrics`]: confusion matrix, per-class and macro precision/recall/F1, average precision,
//!   PR curve, per-queue precision/recall/NDCG at k (and NDCG per queue), workload at recall,
//!   log loss.
//! * [`split`]: seeded grouped k-fold and grouped holdout; forward-chaining folds in time.

pub mod metrics;
pub mod split;

pub use metrics::{
    argmax3, average_precision, classification_report, log_loss, ndcg_at_k, ndcg_at_k_per_queue,
    pr_curve, precision_at_k, recall_at_k, workload_at_recall, ClassMetrics, ConfusionMatrix,
    MulticlassReport, QueueMetric, N_CLASSES,
};
pub use split::{forward_folds, grouped_holdout, grouped_kfold, Fold, ForwardFolds, DAY_SECONDS};

/// Errors raised by evaluation functions on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// Two inputs that must be parallel have different lengths.
    #[error("length mismatch for {what}: expected {expected}, got {got}")]
    LengthMismatch {
        /// which input is wrong
        what: &'static str,
        /// required length
        expected: usize,
        /// actual length
        got: usize,
    },
    /// An input that must hold at least one element is empty.
    #[error("empty input: {what}")]
    Empty {
        /// which input is empty
        what: &'static str,
    },
    /// A class id is not 0 (TP), 1 (BP) or 2 (FP).
    #[error("invalid class id {class} at row {index} (expected 0, 1 or 2)")]
    InvalidClass {
        /// row index
        index: usize,
        /// offending class id
        class: u8,
    },
    /// A sample weight is negative, NaN or infinite.
    #[error("invalid weight {weight} at row {index} (must be finite and >= 0)")]
    InvalidWeight {
        /// row index
        index: usize,
        /// offending weight
        weight: f64,
    },
    /// All sample weights are zero, so every ratio would be 0/0.
    #[error("total sample weight is zero")]
    ZeroTotalWeight,
    /// A probability is NaN or infinite.
    #[error("invalid probability {value} at flat index {index}")]
    InvalidProbability {
        /// index in the flat row-major buffer
        index: usize,
        /// offending value
        value: f32,
    },
    /// A rank cutoff `k` of zero was requested.
    #[error("rank cutoff k must be >= 1")]
    ZeroK,
    /// Fewer than two folds were requested.
    #[error("need at least 2 folds, got {n_folds}")]
    TooFewFolds {
        /// folds requested
        n_folds: usize,
    },
    /// There are fewer distinct groups than the split needs.
    #[error("need at least {needed} distinct groups, got {groups}")]
    TooFewGroups {
        /// distinct groups present
        groups: usize,
        /// distinct groups needed
        needed: usize,
    },
    /// Forward folds need at least one origin.
    #[error("need at least 1 forward origin, got {origins}")]
    TooFewOrigins {
        /// origins requested
        origins: usize,
    },
    /// A row ends before it starts.
    #[error("row {index} ends before it starts (first seen {first_seen}, last seen {last_seen})")]
    InvalidInterval {
        /// row index
        index: usize,
        /// its start, Unix seconds
        first_seen: i64,
        /// its end, Unix seconds
        last_seen: i64,
    },
    /// The data cannot give the forward origins asked for.
    #[error("cannot place {needed} day-aligned forward origins: {reason}")]
    ForwardOrigins {
        /// origins requested
        needed: usize,
        /// what is missing
        reason: String,
    },
    /// A holdout fraction outside the open interval (0, 1) (or NaN).
    #[error("test fraction must be in (0, 1), got {fraction}")]
    InvalidFraction {
        /// offending fraction
        fraction: f64,
    },
}
