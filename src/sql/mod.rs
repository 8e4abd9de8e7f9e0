//! The trained artifact as Apache DataFusion functions (feature `datafusion`).
//!
//! Two functions carry the engine into SQL, over any table of GUIDE-shaped evidence (CSV,
//! Parquet, or anything DataFusion reads):
//!
//! - **`threatrank_features(<the INPUT_COLUMNS>)`**, an aggregate: grouped by tenant and
//!   incident it turns the incident's evidence rows into one feature row. Each row goes through
//!   the same GUIDE parser as `threatrank score` (a rejected row is counted and its first reason
//!   kept, never dropped silently), and the incidents through the same
//!   `FittedFeatures::transform` with the artifact's fitted encoders and knowledge. Its state is
//!   the incident's raw rows, so partial aggregation, repartitioning and spilling across
//!   partitions (or Ballista executors) give the same incidents as one pass over the file.
//! - **`threatrank_score(tenant, features)`**, a scalar function: a whole batch of feature rows
//!   scored at once with the library's `score_into`, then calibration, decision rule and
//!   conformal set ([`Artifact::predict_rows`]), the path every other command takes.
//!
//! [`register`] adds both plus two views over a registered `alerts` table
//! ([`register_alerts`]): `threatrank_incidents` (one row per incident with its features) and
//! `threatrank_scores` (grade, probabilities, priority, certainty), so a hunter writes
//!
//! ```sql
//! SELECT tenant, incident, predicted_grade, priority FROM threatrank_scores
//! ORDER BY priority DESC LIMIT 20
//! ```
//!
//! Every scored row also carries `model`, the first 16 hex digits of the artifact's SHA-256,
//! so a query run on a cluster can prove every node scored with the same model.

mod accumulate;
#[cfg(feature = "distributed")]
pub mod cluster;
pub mod hunts;
pub mod run;

use crate::ingest::{self, GuideParser, IngestParams, GUIDE_REQUIRED};
use crate::matrix::FeatureMatrix;
use crate::models::N_CLASSES;
use crate::rank;
use crate::signals::Knowledge;
use crate::train::Artifact;
use datafusion::arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Float32Builder, StringBuilder, StructArray,
    UInt64Array, UInt8Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{exec_err, plan_err, Result as DfResult};
use datafusion::logical_expr::{
    AggregateUDF, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use accumulate::FeaturesUdaf;

/// Name of the aggregate function.
pub const FEATURES_FN: &str = "threatrank_features";
/// Name of the scalar scoring function.
pub const SCORE_FN: &str = "threatrank_score";
/// Table name [`register_alerts`] uses.
pub const ALERTS_TABLE: &str = "alerts";

/// Errors of the SQL layer.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// DataFusion planning or execution
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow (casts, formatting)
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// the input cannot be registered
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// writing the result
    #[error("{file}: cannot write: {reason}")]
    Write {
        /// path
        file: String,
        /// cause
        reason: String,
    },
    /// a hunt file or hunt result breaks its contract
    #[error("{file}: {reason}")]
    Hunt {
        /// the hunt file
        file: String,
        /// what is wrong
        reason: String,
    },
    /// a node scored with another model than the caller's
    #[error("{0}")]
    Model(String),
    /// the query did not finish in time
    #[error("{0}")]
    Timeout(String),
    /// the plan needed more memory than its limit allows
    #[error(
        "the query needs more memory than --memory-limit-mib {limit_mib} allows (every spilling \
         operator needs at least one input batch's state; raise the limit, 0 = unbounded): \
         {reason}"
    )]
    Memory {
        /// the limit
        limit_mib: usize,
        /// DataFusion's words
        reason: String,
    },
}

impl SqlError {
    /// A DataFusion out-of-memory error as [`SqlError::Memory`], naming the limit; any other
    /// error unchanged.
    pub fn with_memory_limit(self, limit: run::MemoryLimit) -> SqlError {
        match (self, limit.bytes()) {
            (SqlError::DataFusion(e), Some(bytes))
                if matches!(
                    e.find_root(),
                    datafusion::error::DataFusionError::ResourcesExhausted(_)
                ) =>
            {
                SqlError::Memory {
                    limit_mib: bytes >> 20,
                    reason: e.find_root().to_string(),
                }
            }
            (e, _) => e,
        }
    }
}

/// The GUIDE columns `threatrank_features` takes, in argument order: the ones the GUIDE parser
/// reads, labels excluded (scoring never reads them).
pub fn input_columns() -> Vec<&'static str> {
    let mut cols: Vec<&'static str> = vec![
        "Id",
        "OrgId",
        "IncidentId",
        "AlertId",
        "Timestamp",
        "DetectorId",
        "AlertTitle",
        "Category",
        "MitreTechniques",
        "EntityType",
        "EvidenceRole",
    ];
    for c in crate::domain::ENTITY_COLUMNS.iter().chain(&[
        "SuspicionLevel",
        "LastVerdict",
        "ThreatFamily",
        "AntispamDirection",
        "Roles",
    ]) {
        if !cols.contains(c) {
            cols.push(c);
        }
    }
    cols
}

/// What the functions share: the artifact, the knowledge it scores with, the row parser.
#[derive(Debug)]
pub struct Engine {
    artifact: Arc<Artifact>,
    knowledge: Arc<Knowledge>,
    /// hex SHA-256 of the artifact's file bytes
    sha256: String,
    parser: GuideParser,
    /// incidents featurized by this process (a node's share of the work, for operators)
    pub(crate) featurized: AtomicU64,
    /// incidents scored by this process
    pub(crate) scored: AtomicU64,
}

impl Engine {
    /// Engine over a loaded artifact; `sha256` identifies it (hex of the file's bytes).
    pub fn new(
        artifact: Arc<Artifact>,
        knowledge: Arc<Knowledge>,
        sha256: String,
    ) -> Result<Engine, SqlError> {
        let params = IngestParams::default().read_labels(false).check()?;
        let header: Vec<String> = input_columns().iter().map(|s| s.to_string()).collect();
        let parser = GuideParser::from_header(header, "datafusion input", &params)?;
        Ok(Engine {
            artifact,
            knowledge,
            sha256,
            parser,
            featurized: AtomicU64::new(0),
            scored: AtomicU64::new(0),
        })
    }

    /// Loads an artifact file and hashes its bytes.
    pub fn load(
        model: &Path,
        knowledge: Knowledge,
    ) -> Result<Engine, crate::pipeline::PipelineError> {
        let bytes = std::fs::read(model).map_err(|source| ingest::IngestError::Io {
            file: model.display().to_string(),
            source,
        })?;
        let artifact = Artifact::load(model)?;
        let sha = crate::matrix::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        Engine::new(Arc::new(artifact), Arc::new(knowledge), sha).map_err(|e| {
            crate::pipeline::PipelineError::Input {
                file: model.display().to_string(),
                reason: e.to_string(),
            }
        })
    }

    /// The model tag every scored row carries: 16 hex digits of the artifact's SHA-256.
    pub fn model_tag(&self) -> &str {
        &self.sha256[..16.min(self.sha256.len())]
    }

    /// The artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// Feature columns of the artifact's schema.
    pub fn n_features(&self) -> usize {
        self.artifact.schema.len()
    }
}

/// The struct `threatrank_features` returns: the incident, its features, and its scores (the
/// [`score_fields`], computed once per emitted batch of incidents with the same code as
/// `threatrank_score`).
pub fn features_type(n_features: usize) -> DataType {
    let mut fields = vec![
        Field::new("tenant", DataType::UInt64, true),
        Field::new("incident", DataType::UInt64, true),
        Field::new("alerts", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("rejected", DataType::UInt64, false),
        Field::new("rejection", DataType::Utf8, true),
        Field::new(
            "features",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                n_features as i32,
            ),
            true,
        ),
    ];
    fields.extend(score_fields().iter().map(|f| f.as_ref().clone()));
    DataType::Struct(Fields::from(fields))
}

/// The struct `threatrank_score` returns.
pub fn score_fields() -> Fields {
    Fields::from(vec![
        Field::new("predicted_grade", DataType::Utf8, true),
        Field::new("p_true_positive", DataType::Float32, true),
        Field::new("p_benign_positive", DataType::Float32, true),
        Field::new("p_false_positive", DataType::Float32, true),
        Field::new("priority", DataType::UInt8, true),
        Field::new("grade_set", DataType::Utf8, true),
        Field::new("certainty", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
    ])
}

/// `threatrank_score(tenant, features)`: scores a batch of feature rows.
#[derive(Debug)]
pub struct ScoreUdf {
    engine: Arc<Engine>,
    signature: Signature,
}

impl ScoreUdf {
    /// The function over an engine.
    pub fn new(engine: Arc<Engine>) -> ScoreUdf {
        ScoreUdf {
            engine,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl PartialEq for ScoreUdf {
    fn eq(&self, other: &Self) -> bool {
        self.engine.sha256 == other.engine.sha256
    }
}
impl Eq for ScoreUdf {}
impl Hash for ScoreUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        SCORE_FN.hash(state);
        self.engine.sha256.hash(state);
    }
}

impl ScalarUDFImpl for ScoreUdf {
    fn name(&self) -> &str {
        SCORE_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        let n = self.engine.n_features() as i32;
        match arg_types {
            [t, f] if t.is_integer() && matches!(f, DataType::FixedSizeList(_, m) if *m == n) => {}
            [t, f] if t.is_integer() && matches!(f, DataType::List(_)) => {}
            _ => {
                return plan_err!(
                    "{SCORE_FN}(tenant, features) takes an integer tenant and the {n} features \
                     of threatrank_features(...)['features'], got {arg_types:?}"
                )
            }
        }
        Ok(DataType::Struct(score_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let tenants = datafusion::arrow::compute::cast(&arrays[0], &DataType::UInt64)?;
        let tenants = tenants
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("tenant cast".into()))?;
        let n = self.engine.n_features();
        let feats = feature_rows(&arrays[1], n)?;
        // rows with both a tenant and features are scored together, in one call
        let mut x = FeatureMatrix::with_columns(n);
        let mut ts = Vec::new();
        let mut at = Vec::with_capacity(rows);
        for (r, f) in feats.iter().enumerate().take(rows) {
            match (f, tenants.is_null(r)) {
                (Some(v), false) => {
                    at.push(Some(ts.len()));
                    ts.push(tenants.value(r));
                    x.push_row(v).map_err(|e| {
                        datafusion::error::DataFusionError::Execution(e.to_string())
                    })?;
                }
                _ => at.push(None),
            }
        }
        let (columns, valid) = score_arrays(&self.engine, x, &ts, &at)?;
        let out = StructArray::try_new(score_fields(), columns, Some(valid.into()))?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Scores feature rows `x` (tenant `tenants[i]` for row `i`) with [`Artifact::predict_rows`]
/// and lays them out as the [`score_fields`] columns over `at` (output row → scored row, or
/// `None` for an output row without features). Returns the columns and each row's validity.
pub(crate) fn score_arrays(
    engine: &Engine,
    x: FeatureMatrix,
    tenants: &[u64],
    at: &[Option<usize>],
) -> DfResult<(Vec<ArrayRef>, Vec<bool>)> {
    let pred = engine
        .artifact
        .predict_rows(x, tenants)
        .map_err(|e| datafusion::error::DataFusionError::Execution(format!("scoring: {e}")))?;
    engine
        .scored
        .fetch_add(tenants.len() as u64, Ordering::Relaxed);
    let rows = at.len();
    let mut grade = StringBuilder::new();
    let mut p = [
        Float32Builder::new(),
        Float32Builder::new(),
        Float32Builder::new(),
    ];
    let mut priority = UInt8Builder::new();
    let mut set = StringBuilder::new();
    let mut certainty = StringBuilder::new();
    let mut model = StringBuilder::new();
    let mut valid = Vec::with_capacity(rows);
    for slot in at {
        match *slot {
            Some(i) => {
                let g = crate::domain::Grade::from_class_id(pred.grades[i])
                    .map_or("unknown", |g| g.name());
                grade.append_value(g);
                let probs = &pred.probs[i * N_CLASSES..(i + 1) * N_CLASSES];
                for (b, v) in p.iter_mut().zip(probs) {
                    b.append_value(*v);
                }
                priority.append_value(rank::priority(probs[0]));
                set.append_value(pred.sets[i].to_string());
                certainty.append_value(if pred.sets[i].is_uncertain() {
                    "uncertain"
                } else {
                    "confident"
                });
                model.append_value(engine.model_tag());
                valid.push(true);
            }
            None => {
                grade.append_null();
                for b in p.iter_mut() {
                    b.append_null();
                }
                priority.append_null();
                set.append_null();
                certainty.append_null();
                model.append_null();
                valid.push(false);
            }
        }
    }
    let [mut p0, mut p1, mut p2] = p;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(grade.finish()),
        Arc::new(p0.finish()),
        Arc::new(p1.finish()),
        Arc::new(p2.finish()),
        Arc::new(priority.finish()),
        Arc::new(set.finish()),
        Arc::new(certainty.finish()),
        Arc::new(model.finish()),
    ];
    Ok((columns, valid))
}

/// Feature rows of a `FixedSizeList<Float32>` (or `List<Float32>`) column; `None` for nulls.
fn feature_rows(col: &ArrayRef, n: usize) -> DfResult<Vec<Option<Vec<f32>>>> {
    let len = col.len();
    let mut out = Vec::with_capacity(len);
    let values_of = |a: ArrayRef| -> DfResult<Vec<f32>> {
        let a = datafusion::arrow::compute::cast(&a, &DataType::Float32)?;
        let a = a
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("feature cast".into()))?;
        if a.len() != n {
            return exec_err!(
                "{SCORE_FN}: a feature row holds {} values, the model takes {n}",
                a.len()
            );
        }
        Ok((0..n)
            .map(|i| if a.is_null(i) { f32::NAN } else { a.value(i) })
            .collect())
    };
    if let Some(f) = col.as_any().downcast_ref::<FixedSizeListArray>() {
        for r in 0..len {
            out.push(if f.is_null(r) {
                None
            } else {
                Some(values_of(f.value(r))?)
            });
        }
    } else if let Some(l) = col
        .as_any()
        .downcast_ref::<datafusion::arrow::array::ListArray>()
    {
        for r in 0..len {
            out.push(if l.is_null(r) {
                None
            } else {
                Some(values_of(l.value(r))?)
            });
        }
    } else {
        return exec_err!(
            "{SCORE_FN}: features must be a list of floats, got {}",
            col.data_type()
        );
    }
    Ok(out)
}

/// Registers `threatrank_features` and `threatrank_score` over `engine`.
pub fn register_functions(ctx: &SessionContext, engine: Arc<Engine>) {
    ctx.register_udf(ScalarUDF::new_from_impl(ScoreUdf::new(engine.clone())));
    ctx.register_udaf(AggregateUDF::new_from_impl(FeaturesUdaf::new(engine)));
}

/// Registers a GUIDE-shaped input as table `alerts`: a CSV file (every column read as text,
/// the header naming them) or Parquet (a file, or a folder such as `threatrank convert`
/// writes). Returns the table's column names.
pub async fn register_alerts(ctx: &SessionContext, input: &Path) -> Result<Vec<String>, SqlError> {
    use datafusion::arrow::datatypes::Schema;
    use datafusion::prelude::{CsvReadOptions, ParquetReadOptions};
    let name = input.display().to_string();
    let path = input.to_str().ok_or_else(|| ingest::IngestError::Format {
        file: name.clone(),
        reason: "path is not valid UTF-8".into(),
    })?;
    match ingest::InputFormat::from_path(input) {
        ingest::InputFormat::GuideParquet => {
            let path = if input.is_dir() && !path.ends_with('/') {
                format!("{path}/")
            } else {
                path.to_string()
            };
            ctx.register_parquet(ALERTS_TABLE, &path, ParquetReadOptions::default())
                .await?;
        }
        ingest::InputFormat::GuideCsv => {
            let header = csv_header(input)?;
            let schema = Schema::new(
                header
                    .iter()
                    .map(|h| Field::new(h, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            // the file's own extension (DataFusion lists by extension)
            let ext = input
                .extension()
                .map(|e| format!(".{}", e.to_string_lossy()))
                .unwrap_or_default();
            let opts = CsvReadOptions::new()
                .has_header(true)
                // a short row reads as nulls, and the GUIDE parser rejects it (counted)
                .truncated_rows(true)
                .schema(&schema)
                .file_extension(&ext);
            ctx.register_csv(ALERTS_TABLE, path, opts).await?;
        }
        ingest::InputFormat::NativeJsonl => {
            return Err(ingest::IngestError::Format {
                file: name,
                reason: "SQL reads GUIDE-shaped tables (CSV or Parquet); native JSONL alerts \
                         go through `threatrank score`"
                    .into(),
            }
            .into())
        }
    }
    let table = ctx.table(ALERTS_TABLE).await?;
    let cols: Vec<String> = table
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let missing: Vec<&str> = GUIDE_REQUIRED
        .iter()
        .copied()
        .filter(|c| !cols.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        return Err(ingest::IngestError::Format {
            file: name,
            reason: format!("the table lacks required column(s) {}", missing.join(", ")),
        }
        .into());
    }
    Ok(cols)
}

/// The trimmed header of a CSV file.
fn csv_header(input: &Path) -> Result<Vec<String>, SqlError> {
    let name = input.display().to_string();
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(input)
        .map_err(|e| ingest::IngestError::BadHeader {
            file: name.clone(),
            reason: e.to_string(),
        })?;
    let mut rec = csv::StringRecord::new();
    if !r
        .read_record(&mut rec)
        .map_err(|e| ingest::IngestError::BadHeader {
            file: name.clone(),
            reason: e.to_string(),
        })?
    {
        return Err(ingest::IngestError::Empty { file: name }.into());
    }
    Ok(rec
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_string()
        })
        .collect())
}

/// SQL quoting of an identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Creates the views `threatrank_incidents` and `threatrank_scores` over table `alerts`
/// with columns `cols` (columns the table lacks are passed as NULL).
pub async fn create_views(ctx: &SessionContext, cols: &[String]) -> Result<(), SqlError> {
    create_views_over(ctx, cols, ALERTS_TABLE, "threatrank_").await
}

/// Creates `<prefix>incidents` and `<prefix>scores` over the table expression `source`
/// (a table name or a parenthesized query with the columns `cols`).
pub async fn create_views_over(
    ctx: &SessionContext,
    cols: &[String],
    source: &str,
    prefix: &str,
) -> Result<(), SqlError> {
    let args: Vec<String> = input_columns()
        .iter()
        .map(|c| {
            if cols.iter().any(|h| h == c) {
                ident(c)
            } else {
                "CAST(NULL AS VARCHAR)".to_string()
            }
        })
        .collect();
    let incidents = format!(
        "CREATE OR REPLACE VIEW {prefix}incidents AS \
         SELECT f['tenant'] AS tenant, f['incident'] AS incident, f['alerts'] AS alerts, \
                f['rows'] AS rows, f['rejected'] AS rejected, f['rejection'] AS rejection, \
                f['features'] AS features \
         FROM (SELECT {FEATURES_FN}({}) AS f FROM {source} src \
               GROUP BY src.\"OrgId\", src.\"IncidentId\")",
        args.join(", ")
    );
    ctx.sql(&incidents).await?;
    // the aggregate's own scores: one scoring pass per batch of incidents (a projection of
    // `threatrank_score(...)['field']` would call the function once per field)
    let scores = format!(
        "CREATE OR REPLACE VIEW {prefix}scores AS \
         SELECT f['tenant'] AS tenant, f['incident'] AS incident, f['alerts'] AS alerts, \
                f['rows'] AS rows, f['rejected'] AS rejected, f['rejection'] AS rejection, \
                f['predicted_grade'] AS predicted_grade, f['p_true_positive'] AS p_true_positive, \
                f['p_benign_positive'] AS p_benign_positive, \
                f['p_false_positive'] AS p_false_positive, f['priority'] AS priority, \
                f['grade_set'] AS grade_set, f['certainty'] AS certainty, f['model'] AS model \
         FROM (SELECT {FEATURES_FN}({}) AS f FROM {source} src \
               GROUP BY src.\"OrgId\", src.\"IncidentId\")",
        args.join(", ")
    );
    ctx.sql(&scores).await?;
    Ok(())
}

/// A session with the functions registered, `input` as table `alerts` and both views.
pub async fn session(engine: Arc<Engine>, input: &Path) -> Result<SessionContext, SqlError> {
    let ctx = SessionContext::new();
    register_functions(&ctx, engine);
    let cols = register_alerts(&ctx, input).await?;
    create_views(&ctx, &cols).await?;
    Ok(ctx)
}

/// The query `threatrank sql` runs when given none: the 20 top-priority incidents.
pub const DEFAULT_QUERY: &str = "SELECT tenant, incident, predicted_grade, priority, \
     p_true_positive, certainty, alerts FROM threatrank_scores \
     WHERE priority IS NOT NULL ORDER BY priority DESC, tenant, incident LIMIT 20";

/// What `threatrank score --cluster` runs: every incident's score, in a stable order.
pub const CLUSTER_SCORE_QUERY: &str = "SELECT tenant, incident, alerts, rows, rejected, \
     rejection, predicted_grade, p_true_positive, p_benign_positive, p_false_positive, priority, \
     grade_set, certainty, model FROM threatrank_scores ORDER BY tenant, incident";

/// What the benchmark's scale section runs: every incident scored and written, unordered
/// (the per-incident counterpart of `threatrank score --explain none`).
pub const SCALE_QUERY: &str = "SELECT tenant, incident, predicted_grade, p_true_positive, \
     p_benign_positive, p_false_positive, priority, certainty FROM threatrank_scores";
