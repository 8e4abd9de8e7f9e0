//! Integration tests of `threatrank`: bad input (GUIDE CSV and native JSONL), the CLI
//! contract, artifact checks, correlation/tenant properties, JSONL end to end, synthetic data,
//! the benchmark report and (feature `service`) the hunters' web page in headless Chromium.
//!
//! One binary (`cargo test --test it`). A logistic model is trained once per process on the
//! first 1,500 rows of the shipped sample (`common::shared_model`).

mod artifact;
#[cfg(feature = "service")]
mod browser;
mod cli;
#[cfg(feature = "distributed")]
mod cluster;
mod common;
mod correlation;
mod coverage;
mod fuzz;
mod guide_input;
#[cfg(feature = "kafka")]
mod kafka;
mod native_e2e;
mod native_input;
mod online;
mod properties;
mod report;
#[cfg(feature = "parquet")]
mod scaleout;
#[cfg(feature = "service")]
mod service;
mod signals;
mod stream;
mod synth;
