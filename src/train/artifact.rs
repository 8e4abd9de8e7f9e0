//! Versioned model artifacts: everything needed to score, plus the model card.
//!
//! An artifact carries the format version, the feature-schema hash, the fitted encoders (global
//! tables behind the privacy floor and per-tenant history), the fitted model, its calibrator,
//! a model card (data hash, parameters, metrics) and the drift reference profile. Loading refuses a format or schema mismatch
//! with an error naming both values. Stored as JSON: readable, diffable, deterministic (all maps
//! are ordered).

use super::DecisionRules;
use crate::features::{FeatureParams, FittedFeatures};
use crate::matrix::FeatureSchema;
use crate::models::calibrate::{TenantCalibration, TenantCalibrationReport};
use crate::models::conformal::ConformalReport;
use crate::models::{ModelParams, TrainedModel};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Current artifact format version.
pub const FORMAT_VERSION: u32 = 5;

/// Errors of saving and loading artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// File system error.
    #[error("{file}: {source}")]
    Io {
        /// path
        file: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// Not a threatrank artifact, or corrupted (not JSON of an artifact, corrupt gzip), or
    /// not serializable.
    #[error("{file}: not a valid threatrank model artifact: {source}")]
    Parse {
        /// path
        file: String,
        /// cause: the JSON or gzip error
        #[source]
        source: crate::BoxError,
    },
    /// Written by another format version.
    #[error("{file}: artifact format version {found}, this build reads version {expected}; retrain with `threatrank train`")]
    Version {
        /// path
        file: String,
        /// in the file
        found: u32,
        /// supported
        expected: u32,
    },
    /// Trained on another feature schema.
    #[error("{file}: feature schema mismatch: artifact was trained on schema {artifact_hash}, this build extracts schema {current_hash}; retrain with `threatrank train`")]
    Schema {
        /// path
        file: String,
        /// hash in the artifact
        artifact_hash: String,
        /// hash of this build
        current_hash: String,
    },
}

/// What the model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// input file name (as given)
    pub file: String,
    /// SHA-256 of the input bytes
    pub sha256: String,
    /// records read / accepted / rejected
    pub records: u64,
    /// accepted records
    pub accepted: u64,
    /// rejected records
    pub rejected: u64,
    /// labelled training incidents
    pub incidents: u64,
    /// distinct tenants among them
    pub tenants: u64,
    /// training incidents per grade (TP, BP, FP)
    pub grades: [u64; 3],
}

/// Out-of-fold metrics measured while training (inner grouped folds on the training data).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CardMetrics {
    /// macro-F1 over incidents, out-of-fold, calibrated (None when calibration was skipped)
    pub oof_macro_f1: Option<f64>,
    /// multiclass log-loss before calibration
    pub oof_log_loss_raw: Option<f64>,
    /// multiclass log-loss after calibration (global and per-tenant)
    pub oof_log_loss_calibrated: Option<f64>,
    /// number of inner folds (0 = calibration skipped)
    pub folds: usize,
    /// calibration choice: each method's cross-fitted log-loss, and the per-tenant step's gain
    pub calibration: Option<TenantCalibrationReport>,
    /// conformal sets on the calibrated out-of-fold probabilities, held out from the
    /// conformal fit: per inner fold, thresholds fitted without the fold's incidents (the
    /// calibration map saw every row; `threatrank eval` reports coverage on outer folds)
    pub conformal: Option<ConformalReport>,
}

/// The model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// producing crate version
    pub threatrank_version: String,
    /// model parameters
    pub params: ModelParams,
    /// feature parameters
    pub feature_params: FeatureParams,
    /// training data
    pub data: DataInfo,
    /// training-time metrics
    pub metrics: CardMetrics,
    /// intended use and limits, in words
    pub notes: Vec<String>,
    /// the hyper-parameter search that chose `params` (`threatrank tune`), if any
    #[serde(default)]
    pub tuning: Option<super::tune::TuneReport>,
}

/// A trained, self-contained scoring artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// [`FORMAT_VERSION`] at write time
    pub format_version: u32,
    /// hash of `schema`
    pub schema_hash: String,
    /// the feature schema the model was trained on
    pub schema: FeatureSchema,
    /// fitted encoders (global tables and tenant history)
    pub features: FittedFeatures,
    /// fitted model
    pub model: TrainedModel,
    /// probability calibration: global method chosen by log-loss, plus per-tenant maps
    pub calibration: TenantCalibration,
    /// conformal predictors for grade sets, per tenant regime (`None` when calibration was
    /// skipped)
    pub conformal: Option<super::ConformalRegimes>,
    /// grade decision rules over calibrated probabilities (tenants with / without history)
    pub decision: DecisionRules,
    /// LambdaMART ranker over daily tenant queues (`None` unless training asked for one)
    #[serde(default)]
    pub ranker: Option<crate::models::FittedRanker>,
    /// model card
    pub card: ModelCard,
    /// correlation of alerts without a given incident id (window, stoplist learnt from the
    /// training evidence); `None` in artifacts written before it existed: such alerts then stay
    /// one incident each (absent from the JSON when `None`, so those artifacts re-save
    /// byte for byte)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<crate::correlate::Linker>,
    /// the drift reference: bins and training counts of every feature over the out-of-fold
    /// training matrix and of the calibrated out-of-fold P(TP) (`crate::drift`); `None` when
    /// calibration was skipped (no out-of-fold probabilities) and in artifacts written before it
    /// existed (absent from the JSON when `None`, so those artifacts re-save byte for byte)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::drift::ReferenceProfile>,
}

impl ArtifactError {
    fn from_file(e: crate::jsonfile::JsonFileError) -> Self {
        match e {
            crate::jsonfile::JsonFileError::Io { file, source } => Self::Io { file, source },
            crate::jsonfile::JsonFileError::Json { file, source } => Self::Parse {
                file,
                source: source.into(),
            },
            crate::jsonfile::JsonFileError::Gzip { file, source } => Self::Parse {
                file,
                source: source.into(),
            },
        }
    }
}

impl Artifact {
    /// Writes the artifact as JSON (parent folders created); gzip-compressed when the path ends
    /// in `.gz`.
    pub fn save(&self, path: &Path) -> Result<(), ArtifactError> {
        crate::jsonfile::write(path, self).map_err(ArtifactError::from_file)
    }

    /// Reads an artifact (JSON, or gzip-compressed JSON: detected by its magic bytes) and checks
    /// its format version and schema hash against this build.
    pub fn load(path: &Path) -> Result<Artifact, ArtifactError> {
        let json = crate::jsonfile::read(path).map_err(ArtifactError::from_file)?;
        Self::from_slice(&json, &path.display().to_string())
    }

    /// Parses and checks an artifact held in memory (`file` names it in errors).
    pub fn from_slice(bytes: &[u8], file: &str) -> Result<Artifact, ArtifactError> {
        #[derive(Deserialize)]
        struct Head {
            format_version: u32,
            schema_hash: String,
        }
        let parse = |e: serde_json::Error| ArtifactError::Parse {
            file: file.to_string(),
            source: e.into(),
        };
        let head: Head = serde_json::from_slice(bytes).map_err(parse)?;
        if head.format_version != FORMAT_VERSION {
            return Err(ArtifactError::Version {
                file: file.to_string(),
                found: head.format_version,
                expected: FORMAT_VERSION,
            });
        }
        let current = crate::features::schema();
        if head.schema_hash != current.hash() {
            return Err(ArtifactError::Schema {
                file: file.to_string(),
                artifact_hash: head.schema_hash,
                current_hash: current.hash().to_string(),
            });
        }
        let a: Artifact = serde_json::from_slice(bytes).map_err(parse)?;
        if a.schema.hash() != a.schema_hash || a.schema != current {
            return Err(ArtifactError::Schema {
                file: file.to_string(),
                artifact_hash: a.schema.computed_hash(),
                current_hash: current.hash().to_string(),
            });
        }
        Ok(a)
    }
}
