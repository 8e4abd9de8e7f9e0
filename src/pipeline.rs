//! Pipeline: the one code path that the CLI, tests and library callers share.
//!
//! `ingest → correlate → features → models → rank → report`, as functions over files and
//! in-memory data. Nothing here prints: callers pass a `progress` callback for long work.

use crate::correlate::{
    group_incidents, pairwise_agreement, CorrelateError, CorrelateParams, Correlated, Linker,
    PairwiseAgreement,
};
use crate::domain::{Evidence, TenantId};
use crate::ingest::{self, IngestError, IngestReport, IngestValidParams, InputFormat};
use crate::matrix::hex;
use crate::rank::{self, RankInput, ScoredIncident};
use crate::report;
use crate::signals::{Knowledge, SignalsError};
use crate::stream;
use crate::synth::{self, SynthError, SynthParams, SynthSummary};
use crate::train::{self, cv, Artifact, ArtifactError, DataInfo, TrainError, TrainParams};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors of a pipeline run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// reading input
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// training / predicting
    #[error(transparent)]
    Train(#[from] TrainError),
    /// model files
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// knowledge tables
    #[error(transparent)]
    Signals(#[from] SignalsError),
    /// correlation parameters or ids
    #[error(transparent)]
    Correlate(#[from] CorrelateError),
    /// writing outputs
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// streaming score
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// synthetic data: fit file or parameters
    #[error(transparent)]
    Synth(#[from] SynthError),
    /// the benchmark report
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
    /// the scoring service
    #[cfg(feature = "service")]
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    /// Parquet conversion
    #[cfg(feature = "parquet")]
    #[error(transparent)]
    Convert(#[from] crate::convert::ConvertError),
    /// SQL / DataFusion / Ballista
    #[cfg(feature = "datafusion")]
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    /// Kafka micro-batch scoring
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    /// nothing usable in the input
    #[error("{file}: {reason}")]
    Input {
        /// input
        file: String,
        /// what is wrong
        reason: String,
    },
}

/// Input read and correlated.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// accepted evidence
    pub evidence: Vec<Evidence>,
    /// incidents
    pub corr: Correlated,
    /// counts and rejections
    pub report: IngestReport,
    /// SHA-256 of the input bytes (hex)
    pub sha256: String,
}

impl Loaded {
    /// Evidence held in memory (the service's stored rows, retraining sets): records renumbered
    /// in order, incidents grouped by their given ids, no ingest report, no input hash.
    pub fn in_memory(mut evidence: Vec<Evidence>) -> Loaded {
        for (i, e) in evidence.iter_mut().enumerate() {
            e.record = i as u64;
        }
        let corr = group_incidents(&evidence);
        Loaded {
            evidence,
            corr,
            report: IngestReport::default(),
            sha256: String::new(),
        }
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads, hashes and correlates an input file (format from its extension).
pub fn load(path: &Path, params: &IngestValidParams) -> Result<Loaded, PipelineError> {
    if InputFormat::from_path(path) == InputFormat::GuideParquet {
        return load_parquet(path, params);
    }
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| IngestError::Io {
        file: name.clone(),
        source,
    })?;
    let mut reader = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 16, file),
        hasher: Sha256::new(),
    };
    let ing = ingest::read_from(&mut reader, &name, InputFormat::from_path(path), params)?;
    // Drain what the parser did not consume (nothing, normally) so the hash covers the file.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|source| IngestError::Io {
        file: name.clone(),
        source,
    })?;
    let sha256 = hex(&reader.hasher.finalize());
    let corr = group_incidents(&ing.evidence);
    Ok(Loaded {
        evidence: ing.evidence,
        corr,
        report: ing.report,
        sha256,
    })
}

/// [`load`] of a Parquet file or folder: the hash covers every part file's bytes, in the
/// order they are read.
fn load_parquet(path: &Path, params: &IngestValidParams) -> Result<Loaded, PipelineError> {
    let ing = ingest::read_parquet(path, params)?;
    let sha256 = parquet_sha256(path)?;
    let corr = group_incidents(&ing.evidence);
    Ok(Loaded {
        evidence: ing.evidence,
        corr,
        report: ing.report,
        sha256,
    })
}

/// SHA-256 over every part file's bytes, in the order they are read.
#[cfg(feature = "parquet")]
fn parquet_sha256(path: &Path) -> Result<String, PipelineError> {
    let mut hasher = Sha256::new();
    for f in ingest::parquet_files(path)? {
        let mut file = std::fs::File::open(&f).map_err(|source| IngestError::Io {
            file: f.display().to_string(),
            source,
        })?;
        std::io::copy(&mut file, &mut hasher).map_err(|source| IngestError::Io {
            file: f.display().to_string(),
            source,
        })?;
    }
    Ok(hex(&hasher.finalize()))
}

/// Without the `parquet` feature no Parquet input is read (`read_parquet` says so first).
#[cfg(not(feature = "parquet"))]
fn parquet_sha256(path: &Path) -> Result<String, PipelineError> {
    Err(ingest::no_parquet(path).into())
}

/// Errors naming the file when no incident carries a grade.
fn require_labels(input: &Path, loaded: &Loaded, what: &str) -> Result<(), PipelineError> {
    if loaded.corr.labelled().next().is_none() {
        return Err(PipelineError::Input {
            file: input.display().to_string(),
            reason: format!(
                "no labelled incident among {} accepted records (IncidentGrade / grade empty or \
                 absent): {what}",
                loaded.report.accepted
            ),
        });
    }
    Ok(())
}

/// The file name of a path (the whole path when it has none), as recorded in model cards and
/// reports: folders differ between machines, the name does not.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

fn create_parent(path: &Path) -> Result<(), PipelineError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| report::ReportError::Write {
            file: dir.display().to_string(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Outcome of training.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// the artifact written
    pub artifact: Artifact,
    /// ingest counts
    pub report: IngestReport,
    /// where rejects were written
    pub rejects: PathBuf,
}

/// `threatrank train`: reads labelled input, trains, writes the artifact and the rejects file
/// (`<model>.rejects.csv`).
pub fn train_file(
    input: &Path,
    model_out: &Path,
    params: &TrainParams,
    kn: &Knowledge,
) -> Result<TrainOutcome, PipelineError> {
    train_file_before(input, model_out, params, kn, None)
}

/// [`train_file`] on the graded incidents of `input` that ended strictly before `before`
/// (Unix seconds; a verdict exists from the end of its incident), or on all of them with
/// `None`: the model a deployment would have had at that time. Errors as [`train_file`], and
/// when no graded incident ended before `before`.
pub fn train_file_before(
    input: &Path,
    model_out: &Path,
    params: &TrainParams,
    kn: &Knowledge,
    before: Option<i64>,
) -> Result<TrainOutcome, PipelineError> {
    let valid = params.check()?;
    let loaded = load(input, &IngestValidParams::default())?;
    let rejects = ingest::rejects_path_for(model_out);
    create_parent(&rejects)?;
    loaded.report.write_rejects(&rejects)?;
    require_labels(input, &loaded, "nothing to train on")?;
    let train: Vec<usize> = (0..loaded.corr.incidents.len())
        .filter(|&i| before.is_none_or(|t| loaded.corr.incidents[i].last_seen < t))
        .collect();
    if let Some(t) = before {
        if !train
            .iter()
            .any(|&i| loaded.corr.incidents[i].grade.is_some())
        {
            return Err(PipelineError::Input {
                file: input.display().to_string(),
                reason: format!(
                    "no labelled incident ended before {}",
                    ingest::format_rfc3339(t)
                ),
            });
        }
    }
    let data = DataInfo {
        file: file_name(input),
        sha256: loaded.sha256.clone(),
        records: loaded.report.records,
        accepted: loaded.report.accepted,
        rejected: loaded.report.rejected.len() as u64,
        incidents: 0,
        tenants: 0,
        grades: [0; 3],
    };
    let artifact = train::fit(&valid, &loaded.evidence, &loaded.corr, &train, kn, data)?;
    artifact.save(model_out)?;
    Ok(TrainOutcome {
        artifact,
        report: loaded.report,
        rejects,
    })
}

/// Tunes the GBDT with grouped CV on `input`, then trains and writes the artifact with the
/// winning parameters; the search is recorded in the model card.
pub fn tune_file(
    input: &Path,
    model_out: &Path,
    tune: &crate::train::tune::TuneParams,
    params: &TrainParams,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<TrainOutcome, PipelineError> {
    let loaded = load(input, &IngestValidParams::default())?;
    require_labels(input, &loaded, "nothing to tune on")?;
    let report = crate::train::tune::tune(
        tune,
        params,
        &file_name(input),
        &loaded.evidence,
        &loaded.corr,
        kn,
        progress,
    )?;
    let best = TrainParams {
        algorithm: crate::models::Algorithm::Gbdt,
        model: Some(crate::models::ModelParams::Gbdt(
            report.best_params().clone(),
        )),
        ..params.clone()
    };
    progress("training the winner");
    let mut outcome = train_file(input, model_out, &best, kn)?;
    outcome.artifact.card.tuning = Some(report);
    outcome.artifact.save(model_out)?;
    Ok(outcome)
}

/// Scored input: incidents with reasons, plus what is needed to write per-record output.
#[derive(Debug, Clone)]
pub struct Scored {
    /// the input
    pub loaded: Loaded,
    /// one per incident, in `loaded.corr.incidents` order
    pub incidents: Vec<ScoredIncident>,
    /// the incidents' feature rows (same order), for drift monitoring
    pub features: crate::matrix::FeatureMatrix,
}

/// Scores every incident of an input with an artifact. Labels are never read. Alerts without a
/// given incident id are first correlated into candidate threats with the artifact's
/// [`Linker`] (artifacts without one leave each such alert its own incident).
pub fn score_loaded(
    artifact: &Artifact,
    loaded: Loaded,
    top_reasons: usize,
    kn: &Knowledge,
) -> Result<Scored, PipelineError> {
    score_loaded_explaining(artifact, loaded, top_reasons, kn, None)
}

/// Without an external snapshot, the artifact's own one must have been built under the
/// configured pseudonymization key (else entity lookups would silently miss).
fn check_signals_key(artifact: &Artifact, kn: &Knowledge) -> Result<(), PipelineError> {
    if kn.snapshot.is_none() {
        artifact
            .features
            .global_signals()
            .check_key(&kn.key)
            .map_err(SignalsError::from)?;
    }
    Ok(())
}

/// Which scored incidents get exact reasons: given every incident (reasons empty), the indices
/// to explain.
pub type ExplainSelect<'a> = &'a dyn Fn(&[ScoredIncident]) -> Vec<usize>;

/// [`score_loaded`], with exact contributions (reasons, family sums) computed only for the
/// incidents `select` picks (`None`: all). TreeSHAP costs far more than scoring, and a queue
/// shows only its heads.
pub fn score_loaded_explaining(
    artifact: &Artifact,
    mut loaded: Loaded,
    top_reasons: usize,
    kn: &Knowledge,
    select: Option<ExplainSelect<'_>>,
) -> Result<Scored, PipelineError> {
    check_signals_key(artifact, kn)?;
    if let Some(linker) = &artifact.correlation {
        if loaded.evidence.iter().any(|e| !e.incident_given) {
            loaded.corr = linker.correlate(&loaded.evidence)?;
        }
    }
    let which: Vec<usize> = (0..loaded.corr.incidents.len()).collect();
    let pred = artifact.predict(&loaded.evidence, &loaded.corr, &which, kn)?;
    let full = |contributions| RankInput {
        evidence: &loaded.evidence,
        corr: &loaded.corr,
        which: &which,
        x: &pred.x,
        probs: &pred.probs,
        grades: &pred.grades,
        sets: &pred.sets,
        contributions,
        schema: &artifact.schema,
        knowledge: kn,
        top_reasons,
    };
    let Some(select) = select else {
        let contributions = artifact.tp_contributions(&pred.x)?;
        let incidents = rank::build(&full(&contributions));
        return Ok(Scored {
            loaded,
            incidents,
            features: pred.x,
        });
    };
    let zero = vec![0f32; pred.x.n_rows() * (pred.x.n_cols() + 1)];
    let mut incidents = rank::build(&full(&zero));
    let mut chosen = select(&incidents);
    chosen.sort_unstable();
    chosen.dedup();
    chosen.retain(|&i| i < incidents.len());
    if !chosen.is_empty() {
        let x = pred.x.select_rows(&chosen);
        let probs = train::prob_rows(&pred.probs, &chosen);
        let grades: Vec<u8> = chosen.iter().map(|&i| pred.grades[i]).collect();
        let sets: Vec<_> = chosen.iter().map(|&i| pred.sets[i]).collect();
        let contributions = artifact.tp_contributions(&x)?;
        let sub: Vec<usize> = chosen.iter().map(|&i| which[i]).collect();
        let explained = rank::build(&RankInput {
            which: &sub,
            x: &x,
            probs: &probs,
            grades: &grades,
            sets: &sets,
            contributions: &contributions,
            ..full(&zero)
        });
        for (i, s) in chosen.into_iter().zip(explained) {
            incidents[i] = s;
        }
    }
    Ok(Scored {
        loaded,
        incidents,
        features: pred.x,
    })
}

/// Reads an input for scoring: the label column is not even parsed.
pub fn load_unlabelled(input: &Path) -> Result<Loaded, PipelineError> {
    let params = ingest::IngestParams::default().read_labels(false).check()?;
    load(input, &params)
}

/// Outcome of `threatrank score`.
#[derive(Debug, Clone)]
pub struct ScoreOutcome {
    /// counts, the first rejections, incidents scored and explained, rows written
    /// (= records read), partitions used
    pub report: stream::StreamOutcome,
    /// incidents scored
    pub incidents: usize,
    /// output rows written (= records read)
    pub rows: u64,
    /// where rejects were written
    pub rejects: PathBuf,
}

/// `threatrank score` with default streaming parameters (the first 10 incidents of each
/// tenant's queue explained; see [`score_file_with`]).
pub fn score_file(
    model: &Path,
    input: &Path,
    output: &Path,
    kn: &Knowledge,
) -> Result<ScoreOutcome, PipelineError> {
    let params = stream::StreamParams::default()
        .check()
        .map_err(PipelineError::from)?;
    score_file_with(model, input, output, kn, &params)
}

/// `threatrank score`: one output row per input record, in input order, streamed with
/// memory bounded by `params` ([`crate::stream`]). Labels are never read.
pub fn score_file_with(
    model: &Path,
    input: &Path,
    output: &Path,
    kn: &Knowledge,
    params: &stream::StreamValidParams,
) -> Result<ScoreOutcome, PipelineError> {
    let artifact = Artifact::load(model)?;
    check_signals_key(&artifact, kn)?;
    let rejects = ingest::rejects_path_for(output);
    create_parent(&rejects)?;
    let ip = ingest::IngestParams::default().read_labels(false).check()?;
    if InputFormat::from_path(input) == InputFormat::GuideParquet {
        return score_parquet(&artifact, input, output, &rejects, kn, params, &ip);
    }
    let name = input.display().to_string();
    let io = |source| IngestError::Io {
        file: name.clone(),
        source,
    };
    let file = std::fs::File::open(input).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = std::io::BufReader::with_capacity(
        1 << 16,
        stream::CountingReader::new(file, counter.clone()),
    );
    let out = match InputFormat::from_path(input) {
        InputFormat::GuideCsv => stream::score(
            &artifact,
            ingest::GuideReader::new(reader, &name, &ip)?,
            len,
            &counter,
            output,
            &rejects,
            params,
            kn,
        ),
        InputFormat::NativeJsonl => stream::score(
            &artifact,
            ingest::NativeReader::new(reader, &name, &ip)?,
            len,
            &counter,
            output,
            &rejects,
            params,
            kn,
        ),
        InputFormat::GuideParquet => unreachable!("handled above"),
    }?;
    Ok(ScoreOutcome {
        incidents: out.incidents as usize,
        rows: out.rows,
        report: out,
        rejects,
    })
}

/// [`score_file_with`] over Parquet: partitions are sized from the row counts in the footers.
#[cfg(feature = "parquet")]
fn score_parquet(
    artifact: &Artifact,
    input: &Path,
    output: &Path,
    rejects: &Path,
    kn: &Knowledge,
    params: &stream::StreamValidParams,
    ip: &IngestValidParams,
) -> Result<ScoreOutcome, PipelineError> {
    let reader = ingest::ParquetGuideReader::open(input, ip)?;
    let total = reader.total_rows()?;
    let rows_read = reader.rows_read();
    let out = stream::score(
        artifact, reader, total, &rows_read, output, rejects, params, kn,
    )?;
    Ok(ScoreOutcome {
        incidents: out.incidents as usize,
        rows: out.rows,
        report: out,
        rejects: rejects.to_path_buf(),
    })
}

#[cfg(not(feature = "parquet"))]
fn score_parquet(
    _artifact: &Artifact,
    input: &Path,
    _output: &Path,
    _rejects: &Path,
    _kn: &Knowledge,
    _params: &stream::StreamValidParams,
    _ip: &IngestValidParams,
) -> Result<ScoreOutcome, PipelineError> {
    Err(ingest::no_parquet(input).into())
}

/// `threatrank queue`: the top incidents per tenant.
pub fn queue_file(
    model: &Path,
    input: &Path,
    tenant: Option<TenantId>,
    top: usize,
    top_reasons: usize,
    review_only: bool,
    kn: &Knowledge,
) -> Result<(Scored, String), PipelineError> {
    let artifact = Artifact::load(model)?;
    let loaded = load_unlabelled(input)?;
    // Exact reasons only for the incidents the table shows.
    let shown = |all: &[ScoredIncident]| -> Vec<usize> {
        let pool: Vec<ScoredIncident> = all
            .iter()
            .filter(|s| !review_only || s.is_uncertain())
            .cloned()
            .collect();
        let index: std::collections::BTreeMap<_, usize> =
            all.iter().enumerate().map(|(i, s)| (s.key, i)).collect();
        rank::queues(&pool, tenant, top)
            .values()
            .flatten()
            .filter_map(|s| index.get(&s.key).copied())
            .collect()
    };
    let scored = score_loaded_explaining(&artifact, loaded, top_reasons, kn, Some(&shown))?;
    let text = if review_only {
        let uncertain: Vec<_> = scored
            .incidents
            .iter()
            .filter(|s| s.is_uncertain())
            .cloned()
            .collect();
        format!(
            "needs review: {} of {} incidents are uncertain (conformal set holds more than one grade)\n\n{}",
            uncertain.len(),
            scored.incidents.len(),
            report::queue_table(&uncertain, tenant, top)
        )
    } else {
        report::queue_table(&scored.incidents, tenant, top)
    };
    Ok((scored, text))
}

/// What `threatrank eval` measures besides the cross-validation itself.
#[derive(Debug, Clone, Default)]
pub struct EvalExtras {
    /// the online-update simulation (`--online`)
    pub online: Option<crate::train::online::OnlineSimParams>,
    /// the cold-start curve (`--cold-start`)
    pub cold_start: Option<crate::train::coldstart::ColdStartParams>,
    /// the feature-family ablation (`--ablation`)
    pub ablation: bool,
    /// CV runs with fold seeds `seed`, `seed + 1` … (`--repeats`; 0 and 1 = one run)
    pub repeats: usize,
}

/// `threatrank eval`: grouped cross-validation of the training recipe.
///
/// With `repeats > 1` the CV (not the online replay nor the ablation) runs again with fold
/// seeds `seed + 1 …`, and `report.repeats` holds the spread and the default model's paired
/// differences; the report's own figures stay those of `seed`.
pub fn eval_file(
    input: &Path,
    params: &cv::CvParams,
    extras: &EvalExtras,
    kn: &Knowledge,
    progress: &mut dyn FnMut(&str),
) -> Result<cv::CvReport, PipelineError> {
    let EvalExtras {
        online,
        cold_start,
        ablation,
        repeats,
    } = extras;
    let (online, cold_start, ablation, repeats) =
        (online.as_ref(), cold_start.as_ref(), *ablation, *repeats);
    let loaded = load(input, &IngestValidParams::default())?;
    require_labels(input, &loaded, "nothing to evaluate")?;
    let name = file_name(input);
    let mut report = cv::run(params, &name, &loaded.evidence, &loaded.corr, kn, progress)?;
    if repeats > 1 {
        let mut all = vec![report.clone()];
        for k in 1..repeats as u64 {
            let p = cv::CvParams {
                seed: params.seed.wrapping_add(k),
                ..params.clone()
            };
            all.push(cv::run(
                &p,
                &name,
                &loaded.evidence,
                &loaded.corr,
                kn,
                progress,
            )?);
        }
        // the default learner when evaluated, else the first one asked for
        let reference = if params.algorithms.contains(&params.train.algorithm) {
            params.train.algorithm
        } else {
            params
                .algorithms
                .first()
                .copied()
                .unwrap_or(params.train.algorithm)
        };
        report.repeats = Some(cv::repeated(&all, reference.name()));
    }
    if let Some(sim) = online {
        report.online = Some(crate::train::online::simulate(
            &params.train.check()?,
            sim,
            &loaded.evidence,
            &loaded.corr,
            kn,
            progress,
        )?);
    }
    if let Some(c) = cold_start {
        report.cold_start = crate::train::coldstart::curve(
            params,
            c,
            &loaded.evidence,
            &loaded.corr,
            kn,
            progress,
        )?;
        if report.cold_start.is_none() {
            progress(&crate::train::coldstart::none_reason(c));
        }
    }
    if ablation {
        report.ablation = Some(cv::ablation(
            params,
            &name,
            &loaded.evidence,
            &loaded.corr,
            kn,
            progress,
        )?);
    }
    Ok(report)
}

/// `threatrank report`: grouped cross-validation of every model (and the peers, when asked)
/// written to `out` as `report.json`, `report.md`, `report.html` and `plots/*.svg`.
pub fn report_file(
    input: &Path,
    out: &Path,
    params: &crate::bench::ReportParams,
    kn: &Knowledge,
    progress: &mut dyn FnMut(crate::bench::Progress<'_>),
) -> Result<crate::bench::Outcome, PipelineError> {
    let valid = params.check()?;
    let start = std::time::Instant::now();
    let loaded = load(input, &IngestValidParams::default())?;
    require_labels(input, &loaded, "nothing to evaluate")?;
    let labelled: Vec<usize> = loaded.corr.labelled().map(|(i, _, _)| i).collect();
    let mut tenants = loaded.corr.tenants_of(&labelled);
    tenants.sort_unstable();
    tenants.dedup();
    let info = crate::bench::InputInfo {
        file: file_name(input),
        sha256: loaded.sha256.clone(),
        records: loaded.report.records,
        accepted: loaded.report.accepted,
        rejected: loaded.report.rejected.len() as u64,
        incidents: loaded.corr.incidents.len(),
        labelled_incidents: labelled.len(),
        tenants: tenants.len(),
    };
    let data = crate::bench::Input {
        path: input,
        info: &info,
        evidence: &loaded.evidence,
        corr: &loaded.corr,
        load_seconds: start.elapsed().as_secs_f64(),
    };
    Ok(crate::bench::run(&valid, data, out, kn, progress)?)
}

/// Outcome of `threatrank signals build`.
#[derive(Debug, Clone)]
pub struct BuiltSignals {
    /// ingest counts
    pub report: IngestReport,
    /// the snapshot written
    pub snapshot: crate::signals::GlobalSignals,
    /// what the release cost in the budget ledger
    pub charge: crate::signals::ledger::Charge,
}

impl BuiltSignals {
    /// What was released (keys per kind), under which privacy, and the budget left.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = crate::signals::SignalKind::ALL
            .iter()
            .map(|k| format!("{} {}", self.snapshot.released(*k), k.name()))
            .collect();
        let p = self.snapshot.privacy();
        let privacy = match (p.epsilon_per_key, p.epsilon_per_tenant, p.delta_single_tenant_key) {
            (Some(e), Some(et), Some(d)) => format!(
                "discrete Laplace, ε {e} per key ({et} per tenant over the release), a single tenant's key released with probability {d:.3}; budget: {} ε per key spent of {}, {} left ({})",
                self.charge.spent,
                self.charge.budget,
                self.charge.left(),
                if self.charge.charged { "charged" } else { "the same release as before: not charged again" }
            ),
            _ => "exact counts, no differential privacy (not charged)".into(),
        };
        format!(
            "released (noisy tenant count ≥ {}): {}; key {}; release {}; {privacy}",
            self.snapshot.params().min_tenants,
            kinds.join(", "),
            self.snapshot.key_fingerprint(),
            p.release_id,
        )
    }
}

/// `threatrank signals build`: a global-signals snapshot from every incident of `input`,
/// charged to the privacy-budget `ledger` (refused, and nothing written, past `budget`).
pub fn build_signals_file(
    input: &Path,
    out: &Path,
    params: &crate::signals::SignalsParams,
    key: &crate::signals::PseudonymKey,
    ledger: &Path,
    budget: f64,
) -> Result<BuiltSignals, PipelineError> {
    let valid = params.check().map_err(SignalsError::from)?;
    let mut book = crate::signals::Ledger::load_or_new(ledger, &key.fingerprint())
        .map_err(SignalsError::from)?;
    let loaded = load(input, &IngestValidParams::default())?;
    let snapshot = crate::features::build_snapshot(&valid, key, &loaded.evidence, &loaded.corr);
    let charge = book
        .charge(&snapshot, &out.display().to_string(), budget)
        .map_err(SignalsError::from)?;
    // the ledger first: a crash between the two over-counts the budget, never under-counts it
    if charge.charged {
        book.save(ledger).map_err(SignalsError::from)?;
    }
    snapshot.save(out).map_err(SignalsError::from)?;
    Ok(BuiltSignals {
        report: loaded.report,
        snapshot,
        charge,
    })
}

/// Outcome of `threatrank correlate`.
#[derive(Debug, Clone)]
pub struct CorrelationOutcome {
    /// the linker learnt (on `learn_on`, else on the input)
    pub linker: Linker,
    /// ingest counts of the input
    pub report: IngestReport,
    /// the input's evidence rows without a given incident id (all of them when ignoring ids)
    pub free_rows: usize,
    /// the candidate threats (incidents) after correlation
    pub incidents: Correlated,
    /// pairwise agreement with the input's given incident ids (only when they were ignored)
    pub agreement: Option<PairwiseAgreement>,
}

/// `threatrank correlate`: learns a [`Linker`] on `learn_on` (default: the input itself, so
/// the stoplist is then in-sample) and correlates the input. With `ignore_given`, every given
/// incident id is ignored and the candidate threats are compared with them pair by pair.
pub fn correlate_file(
    input: &Path,
    learn_on: Option<&Path>,
    params: &CorrelateParams,
    ignore_given: bool,
) -> Result<CorrelationOutcome, PipelineError> {
    let valid = params.check()?;
    let loaded = load_unlabelled(input)?;
    let linker = match learn_on {
        Some(p) => Linker::learn(&load_unlabelled(p)?.evidence, &valid),
        None => Linker::learn(&loaded.evidence, &valid),
    };
    let (incidents, agreement) = if ignore_given {
        let c = linker.correlate_ignoring_given(&loaded.evidence)?;
        let a = pairwise_agreement(&loaded.evidence, &c);
        (c, Some(a))
    } else {
        (linker.correlate(&loaded.evidence)?, None)
    };
    let free_rows = if ignore_given {
        loaded.evidence.len()
    } else {
        loaded.evidence.iter().filter(|e| !e.incident_given).count()
    };
    Ok(CorrelationOutcome {
        linker,
        report: loaded.report,
        free_rows,
        incidents,
        agreement,
    })
}

/// Outcome of `threatrank synth`.
#[derive(Debug, Clone)]
pub struct SynthOutcome {
    /// what the fit file held
    pub fit: synth::ProfileStats,
    /// what was written
    pub summary: SynthSummary,
    /// seconds spent fitting the profile
    pub fit_seconds: f64,
    /// seconds spent writing the rows
    pub seconds: f64,
}

/// `threatrank synth`: fits a [`synth::Profile`] to `fit` (GUIDE CSV) and writes
/// `params.rows` synthetic rows to `out` through a `BufWriter`; `progress` gets the rows
/// written so far every 65,536 rows.
pub fn synth_file(
    fit: &Path,
    out: &Path,
    params: &SynthParams,
    progress: &mut dyn FnMut(u64),
) -> Result<SynthOutcome, PipelineError> {
    let valid = params.check()?;
    let start = std::time::Instant::now();
    let profile = synth::Profile::fit_file(fit)?;
    let fit_seconds = start.elapsed().as_secs_f64();
    create_parent(out)?;
    let write_err = |source| SynthError::Write {
        target: out.display().to_string(),
        source,
    };
    let file = std::fs::File::create(out).map_err(write_err)?;
    let start = std::time::Instant::now();
    let summary = synth::generate_with_progress(
        &profile,
        &valid,
        std::io::BufWriter::with_capacity(1 << 16, file),
        progress,
    )
    .map_err(|e| e.in_output(out))?;
    Ok(SynthOutcome {
        fit: profile.stats().clone(),
        summary,
        fit_seconds,
        seconds: start.elapsed().as_secs_f64(),
    })
}
