//! threatrank: ranks candidate security threats for human hunters.
//!
//! Pipeline (data flows one way, see `docs/ARCHITECTURE.md`):
//! `ingest → correlate → features → models → rank → report`, with `signals` feeding
//! `features`, `eval`/`train` around `models`, and `pipeline` as the one code path the CLI and
//! library callers share; `bench` is the benchmark report (`threatrank report`); `drift` compares
//! what a deployed model scores with its training snapshot; `kafka` (feature `kafka`) scores
//! micro-batches of a Kafka topic with the same code.
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
#[cfg(feature = "parquet")]
pub mod convert;
pub mod correlate;
pub mod domain;
pub mod drift;
pub mod eval;
pub mod features;
pub mod ingest;
pub mod jsonfile;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keymap;
pub mod matrix;
pub mod models;
pub mod pipeline;
pub mod rank;
pub mod report;
pub(crate) mod rng;
#[cfg(feature = "service")]
pub mod service;
pub mod signals;
#[cfg(feature = "datafusion")]
pub mod sql;
pub mod stream;
pub mod synth;
pub mod train;

/// The cause of an error whose source can be of several types (an I/O, CSV or JSON error),
/// kept as its `source()` rather than flattened into a string.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
