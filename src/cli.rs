//! Command-line interface: argument types and the commands, as thin glue over `pipeline`.
//!
//! The binary `src/bin/threatrank.rs` only parses and maps errors to exit codes. Messages go to
//! stderr, results to stdout or files.

use crate::correlate::CorrelateParams;
use crate::domain::TenantId;
use crate::models::Algorithm;
use crate::pipeline::{self, PipelineError};
use crate::signals::{GlobalSignals, Knowledge, PseudonymKey, SignalsError};
use crate::synth::SynthParams;
use crate::train::cv::{CvParams, SplitKind};
use crate::train::TrainParams;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Ranks candidate security threats (Defender XDR / GUIDE incidents) for human hunters.
///
/// Typical flow: `threatrank train` on graded history, `threatrank score` or `threatrank
/// queue` on new alerts, `threatrank eval` to measure before trusting a model. Input is GUIDE
/// CSV (45 or 46 columns; `.csv`) or native JSONL alerts (`.jsonl`, format in the README).
#[derive(Debug, Parser)]
#[command(
    name = "threatrank",
    version,
    about,
    long_about,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The memory pool of a local DataFusion plan (`sql`, `hunt run`).
#[cfg(feature = "datafusion")]
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Memory (MiB) the local DataFusion plan may hold before its aggregation spills sorted
    /// state to the temporary folder; 0 = unbounded (no spilling). A --cluster run uses the
    /// executors' pools instead.
    #[arg(long, default_value_t = crate::sql::run::MemoryLimit::DEFAULT_MIB)]
    pub memory_limit_mib: usize,
}

#[cfg(feature = "datafusion")]
impl MemoryArgs {
    /// The limit.
    pub fn limit(&self) -> crate::sql::run::MemoryLimit {
        crate::sql::run::MemoryLimit::mib(self.memory_limit_mib)
    }
}

/// Where the global signals come from (shared by every command that extracts features).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SignalsArgs {
    /// File holding the secret of the entity pseudonyms (HMAC-SHA256 key, ≥ 16 bytes); default
    /// $THREATRANK_SIGNALS_KEY_FILE, else the public development key (fine for demos, not for
    /// snapshots that leave the machine).
    #[arg(long, value_name = "FILE")]
    pub signals_key: Option<PathBuf>,
    /// A global-signals snapshot from `threatrank signals build` to use instead of the one
    /// built from the training data (training) or stored in the model (scoring).
    #[arg(long, value_name = "FILE")]
    pub signals: Option<PathBuf>,
}

/// A differential-privacy ε, or `off` (`None`: exact counts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epsilon(pub Option<f64>);

fn parse_epsilon(s: &str) -> Result<Epsilon, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Epsilon(None));
    }
    let e: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is neither a number nor `off`"))?;
    crate::signals::SignalsParams::default()
        .epsilon(Some(e))
        .check()
        .map(|_| Epsilon(Some(e)))
        .map_err(|e| e.to_string())
}

/// Environment variable naming the file of the pseudonymization secret.
pub const KEY_FILE_ENV: &str = "THREATRANK_SIGNALS_KEY_FILE";

impl SignalsArgs {
    /// The pseudonymization key: `--signals-key`, else `$THREATRANK_SIGNALS_KEY_FILE`, else the
    /// development key.
    pub fn key(&self) -> Result<PseudonymKey, PipelineError> {
        let file = self
            .signals_key
            .clone()
            .or_else(|| std::env::var_os(KEY_FILE_ENV).map(PathBuf::from));
        Ok(match file {
            Some(f) => PseudonymKey::from_file(&f).map_err(SignalsError::from)?,
            None => PseudonymKey::development(),
        })
    }

    /// The shipped tables, the key and the external snapshot, if any.
    pub fn knowledge(&self) -> Result<Knowledge, PipelineError> {
        let kn = Knowledge::shipped(self.key()?)?;
        Ok(match &self.signals {
            Some(path) => {
                let snap = GlobalSignals::load(path).map_err(SignalsError::from)?;
                kn.with_snapshot(snap)?
            }
            None => kn,
        })
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on graded incidents and write a self-contained artifact (JSON).
    ///
    /// The artifact is gzip-compressed when MODEL ends in .gz. Rejected input rows are listed
    /// in MODEL.rejects.csv. The default model is made by:
    ///   threatrank train --input datasets/guide/guide_sample.csv --model models/default.json.gz
    Train {
        /// GUIDE CSV, native JSONL or Parquet (feature `parquet`) with grades (IncidentGrade / grade).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the model artifact.
        #[arg(long)]
        model: PathBuf,
        /// Learner: gbdt (default), forest or logistic.
        #[arg(long, default_value = "gbdt", value_parser = parse_algorithm)]
        algorithm: Algorithm,
        /// Seed of every random step (same seed, same artifact).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Feature families to switch off (repeatable): size, entities, category, kill_chain,
        /// time, verdicts, global, tenant.
        #[arg(long, value_parser = parse_family)]
        disable: Vec<crate::features::Family>,
        /// Differential-privacy ε per key of the global signals built from the training data
        /// (stored in the model), or `off` for exact counts (experiments only).
        #[arg(long, default_value = "1", value_parser = parse_epsilon)]
        signals_epsilon: Epsilon,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Score every input row: one output row per input row, in input order.
    ///
    /// Never reads the label column. Rejected rows keep their place with status=rejected and
    /// the reason; they are also listed in OUTPUT.rejects.csv. Output columns:
    ///
    /// Id,OrgId,IncidentId,AlertId,predicted_grade,p_true_positive,p_benign_positive,p_false_positive,priority,status,top_reason,error,grade_set,certainty
    ///
    /// Streams: memory stays bounded by --memory-rows whatever the input's size (larger inputs
    /// are partitioned by incident into scratch files beside OUTPUT, removed at the end).
    Score {
        /// Model artifact from `threatrank train`.
        #[arg(long)]
        model: PathBuf,
        /// GUIDE CSV, native JSONL, or a Parquet file or folder (feature `parquet`) to score.
        #[arg(long)]
        input: PathBuf,
        /// Score CSV to write.
        #[arg(long)]
        output: PathBuf,
        /// Which incidents get a top_reason (exact TreeSHAP, ~0.4 ms each): the first N of
        /// each tenant's queue, `all`, or `none`.
        #[arg(long, default_value = "10")]
        explain: crate::stream::Explain,
        /// Evidence rows held in memory before the input is partitioned.
        #[arg(long, default_value_t = 400_000)]
        memory_rows: usize,
        /// Also write the run's figures as JSON (seconds, peak memory, counts), for benchmarks.
        #[arg(long)]
        stats_json: Option<PathBuf>,
        /// Score on a Ballista cluster (df://HOST:PORT, nodes started with
        /// threatrank-scheduler / threatrank-executor and the same model) instead of in
        /// process. The output then has one row per incident (the threatrank_scores view,
        /// ordered by tenant and incident), not one per input record.
        #[cfg(feature = "distributed")]
        #[arg(long)]
        cluster: Option<String>,
        /// With --cluster: give up (exit 1, no output) after this many seconds.
        #[cfg(feature = "distributed")]
        #[arg(long, default_value_t = 3600.0)]
        timeout_seconds: f64,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// The hunter's view: top incidents per tenant with priority, probabilities and reasons.
    Queue {
        /// Model artifact from `threatrank train`.
        #[arg(long)]
        model: PathBuf,
        /// GUIDE CSV or native JSONL to rank.
        #[arg(long)]
        input: PathBuf,
        /// Only this tenant (OrgId).
        #[arg(long)]
        tenant: Option<u64>,
        /// Incidents per tenant.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Reasons per incident.
        #[arg(long, default_value_t = 3)]
        reasons: usize,
        /// Only the incidents that need a human decision: those whose conformal grade set
        /// holds more than one grade (`uncertain`), by priority.
        #[arg(long)]
        review: bool,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Cross-validation of every model: forward in time, then grouped random folds
    /// (incident-disjoint and tenant-disjoint).
    ///
    /// Prints a table and writes JSON (default eval.json). Macro-F1 is reported over evidence
    /// rows (GUIDE's metric) and over incidents; the forward split also per origin, as the
    /// mean over origins, and for tenants with and without history.
    Eval {
        /// Graded GUIDE CSV or native JSONL.
        #[arg(long)]
        input: PathBuf,
        /// splits and the forward split's origins
        #[command(flatten)]
        split: SplitArgs,
        /// Outer folds of the random-fold splits.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Fold seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Evaluate only these learners (repeat the flag; default: all, plus the lookup
        /// baseline).
        #[arg(long, value_parser = parse_algorithm)]
        algorithm: Vec<Algorithm>,
        /// JSON report path.
        #[arg(long, default_value = "eval.json")]
        json: PathBuf,
        /// Also simulate daily online updates (time-ordered, past-only): a frozen model
        /// against one that folds in each day's verdicts in place.
        #[arg(long)]
        online: bool,
        /// Also measure the cold-start curve, forward in time: tenants with 50 verdicts before
        /// an origin are held out of training, and their incidents in the window are scored
        /// after 0, 1, 2, 5, 10, 20 and 50 of their earliest verdicts went through the online path.
        #[arg(long)]
        cold_start: bool,
        /// Also run the CV once per feature family with that family switched off, and report
        /// macro-F1 without each (what each family is worth).
        #[arg(long)]
        ablation: bool,
        /// Repeat the CV with fold seeds SEED+1 … SEED+N-1 and report each figure's mean, sd
        /// and range, and the default model's paired differences against every other model
        /// (how many repeats it led): one seed's figures move by about ±0.01–0.02 with the
        /// fold assignment on the GUIDE sample, as much as most differences between models.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
        repeats: u16,
        /// Differential-privacy ε per key of the global signals each fold builds from its
        /// training part, or `off` for exact counts.
        #[arg(long, default_value = "1", value_parser = parse_epsilon)]
        signals_epsilon: Epsilon,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Benchmark report: grouped cross-validation of every model as JSON, Markdown, one
    /// self-contained HTML page and SVG plots (PR curves, calibration, precision/recall@k,
    /// workload reduction, confusion matrix, feature-family importance, per-tenant NDCG@10).
    ///
    /// Writes OUT/report.json (every figure, versioned), OUT/report.md, OUT/report.html and
    /// OUT/plots/*.svg. With --peers, LightGBM and XGBoost (benches/peers) are trained and
    /// scored on the same folds (OUT/peers/folds.csv → pred.csv) and put in the same tables and
    /// plots; when they cannot run, the report says why and still completes.
    Report {
        /// Graded GUIDE CSV or native JSONL.
        #[arg(long)]
        input: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// splits and the forward split's origins
        #[command(flatten)]
        split: SplitArgs,
        /// Outer folds of the random-fold splits.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Evaluate only N folds per split: the first N random folds (1: a quick grouped
        /// holdout) and the last N forward origins (the most recent); default all.
        #[arg(long, value_name = "N")]
        folds_to_run: Option<usize>,
        /// Fold seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Learners to evaluate, comma-separated (default: all, plus the lookup baseline).
        #[arg(long, alias = "algorithm", value_delimiter = ',', value_parser = parse_algorithm)]
        algorithms: Vec<Algorithm>,
        /// Also run the peer models (LightGBM, XGBoost) on the same folds.
        #[arg(long)]
        peers: bool,
        /// Folder of the peers' `run` script.
        #[arg(long, value_name = "DIR", default_value = "benches/peers")]
        peers_dir: PathBuf,
        /// Scale section: end-to-end scoring of synthetic files of these sizes, e.g.
        /// `1e4,1e5,1e6,1e7` (with the csv-parse floor, and pandas + LightGBM with --peers).
        #[arg(long, value_delimiter = ',', value_parser = parse_rows, value_name = "ROWS")]
        scale: Vec<u64>,
        /// Only the scale section: keep the cross-validation of an existing OUT/report.json.
        #[arg(long, requires = "scale")]
        scale_only: bool,
        /// Tenants of the synthetic files.
        #[arg(long, default_value_t = 1000)]
        scale_tenants: u64,
        /// Model the scale runs score with.
        #[arg(long, default_value = "models/default.json.gz")]
        scale_model: PathBuf,
        /// Largest size the pandas + LightGBM pipeline runs at (10^7 rows needs ~9 GB).
        #[arg(long, default_value_t = 1_000_000)]
        scale_peer_max_rows: u64,
        /// Largest size `convert` + DataFusion over Parquet run at (builds with feature
        /// `datafusion`; converting 10^7 rows into tenant × day partitions takes ~17 minutes).
        #[arg(long, default_value_t = 1_000_000)]
        scale_parquet_max_rows: u64,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Search GBDT hyper-parameters with grouped CV, then train with the best and write the
    /// artifact; the search is recorded in its model card (`card.tuning`).
    Tune {
        /// Graded GUIDE CSV or native JSONL.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the tuned model artifact.
        #[arg(long)]
        model: PathBuf,
        /// Candidates (the first is the defaults).
        #[arg(long, default_value_t = 8)]
        trials: usize,
        /// Grouped CV folds per candidate.
        #[arg(long, default_value_t = 3)]
        folds: usize,
        /// Score candidates on: incident (incident-disjoint), tenant (tenant-disjoint) or both
        /// (the mean of their macro-F1 over incidents).
        #[arg(long, default_value = "both", value_parser = parse_objective)]
        objective: crate::train::tune::TuneObjective,
        /// Seed of the candidate draws, folds and training.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Global signals: cross-tenant aggregates behind a privacy floor.
    #[command(subcommand)]
    Signals(SignalsCommand),
    /// Correlate alerts without an incident id into candidate threats, and measure it.
    ///
    /// Learns the stoplist of too-common entities on LEARN_ON (default: the input itself) and
    /// prints the candidate threats formed. With --ignore-incident-ids every given incident id
    /// is ignored, all alerts are correlated from scratch and compared with the given ids:
    /// pairwise precision and recall over pairs of alerts.
    Correlate {
        /// GUIDE CSV or native JSONL.
        #[arg(long)]
        input: PathBuf,
        /// Learn the stoplist on this file instead of the input.
        #[arg(long)]
        learn_on: Option<PathBuf>,
        /// Largest gap (seconds) between two sightings of an entity that still links them.
        #[arg(long, default_value_t = CorrelateParams::default().window_seconds)]
        window_seconds: i64,
        /// Entities on more than this many learning alerts never link.
        #[arg(long, default_value_t = CorrelateParams::default().max_alerts_per_entity)]
        max_alerts_per_entity: u64,
        /// Ignore given incident ids; report agreement with them.
        #[arg(long)]
        ignore_incident_ids: bool,
    },
    /// Write GUIDE-shaped synthetic CSV fitted to the marginals of a real GUIDE file.
    ///
    /// For scale benchmarks: any number of rows, streamed with bounded memory, same arguments
    /// and fit file → byte-identical output. Fitted: incident sizes and grades, alerts
    /// (detector, title, category, techniques) given the grade, evidence rows (entity type,
    /// role, other columns, "not present" codes) given grade and category, tenant sizes, time
    /// span and hour of day; entity codes come from per-tenant pools. Ids are synthetic. See
    /// the README's "Synthetic data".
    Synth {
        /// Rows to write.
        #[arg(long)]
        rows: u64,
        /// Tenants (OrgId 0 … T-1, heavy-tailed sizes; at most this many appear).
        #[arg(long, default_value_t = SynthParams::default().tenants)]
        tenants: u64,
        /// Seed of every random draw.
        #[arg(long, default_value_t = SynthParams::default().seed)]
        seed: u64,
        /// CSV file to write.
        #[arg(long)]
        out: PathBuf,
        /// Real GUIDE CSV whose marginals are fitted (default: datasets/guide/guide_sample.csv).
        #[arg(long)]
        fit: Option<PathBuf>,
        /// Incidents open at once, whose rows are interleaved.
        #[arg(long, default_value_t = SynthParams::default().open_incidents)]
        open_incidents: usize,
        /// Weight of the unconditional draw in the grade-conditional ones (0 … 1).
        #[arg(long, default_value_t = SynthParams::default().grade_smoothing)]
        grade_smoothing: f64,
    },
    /// Run the scoring service: HTTP API per tenant (push alerts, queue, verdicts,
    /// notifications, drift), the hunters' web page at /, state in one SQLite file.
    /// SIGHUP reloads the model; SIGTERM/Ctrl-C stops. See docs/SERVICE.md.
    #[cfg(feature = "service")]
    Serve {
        /// Model artifact (reloaded from the same path on SIGHUP).
        #[arg(long, default_value = "models/default.json.gz")]
        model: PathBuf,
        /// SQLite database (created when absent).
        #[arg(long, default_value = "threatrank.db")]
        db: PathBuf,
        /// Address to listen on (port 0: any free port, printed on stdout).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Largest request body, bytes.
        #[arg(long, default_value_t = 8 << 20)]
        max_body_bytes: usize,
        /// Request deadline, seconds.
        #[arg(long, default_value_t = 30.0)]
        request_timeout_seconds: f64,
        /// Time a connection has to send a request's headers (after connecting, or after its
        /// previous response: idle keep-alive connections end too), seconds.
        #[arg(long, default_value_t = 10.0)]
        header_timeout_seconds: f64,
        /// On SIGTERM/Ctrl-C, how long requests in flight may still run, seconds.
        #[arg(long, default_value_t = 10.0)]
        shutdown_grace_seconds: f64,
        /// Request bodies held in memory at once over all requests, bytes (at least
        /// --max-body-bytes); a request waits until its declared length fits.
        #[arg(long, default_value_t = 64 << 20)]
        max_inflight_body_bytes: usize,
        /// Longest text value of an alert (a CSV field; a JSONL alert's detector, title,
        /// category, technique, entity type and value), bytes; longer ones reject the record.
        #[arg(long, default_value_t = 2048)]
        max_text_bytes: usize,
        /// Most entities (evidence rows) one JSONL alert may carry; more reject the alert.
        #[arg(long, default_value_t = 256)]
        max_entities_per_alert: usize,
        /// Most evidence rows one request may expand into; a larger batch gets 413.
        #[arg(long, default_value_t = 50_000)]
        max_batch_rows: usize,
        /// Notifications for threats at or above this priority (0–100).
        #[arg(long, default_value_t = 80)]
        notify_priority: u8,
        /// Verdicts in the drift agreement window.
        #[arg(long, default_value_t = 200)]
        drift_window: usize,
        /// Most recent threats in the drift population window.
        #[arg(long, default_value_t = 1000)]
        drift_rows: usize,
        /// PSI above which drift warns.
        #[arg(long, default_value_t = 0.25)]
        psi_warn: f64,
        /// Predicted/analyst agreement below which drift warns.
        #[arg(long, default_value_t = 0.6)]
        agreement_warn: f64,
        /// The global drift view is withheld when one tenant holds more than this share of
        /// the rows (or verdicts) behind it.
        #[arg(long, default_value_t = 0.5)]
        global_max_tenant_share: f64,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// GUIDE CSV ↔ Parquet. CSV in: every record is checked by the GUIDE reader (rejects in
    /// OUT.rejects.csv), accepted rows are written zstd-compressed under
    /// OUT/tenant=<OrgId>/day=<YYYY-MM-DD>/part-NNNNN.parquet. Parquet in (a file or folder):
    /// one CSV with the stored columns.
    #[cfg(feature = "parquet")]
    Convert {
        /// GUIDE CSV, or a Parquet file/folder.
        #[arg(long)]
        input: PathBuf,
        /// Parquet folder (CSV in) or CSV file (Parquet in).
        #[arg(long)]
        out: PathBuf,
        /// Rows buffered before part files are written (bounds memory).
        #[arg(long, default_value_t = 1_000_000)]
        buffer_rows: usize,
        /// zstd level, 1..=22.
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
    },
    /// SQL over GUIDE-shaped alerts with the model as DataFusion functions.
    ///
    /// Tables and views: `alerts` (the input, CSV or Parquet), `threatrank_incidents` (one row
    /// per incident: tenant, incident, alerts, rows, rejected, rejection, features) and
    /// `threatrank_scores` (… predicted_grade, p_true_positive, p_benign_positive,
    /// p_false_positive, priority, grade_set, certainty, model). Functions:
    /// threatrank_features(<GUIDE columns>) (aggregate) and threatrank_score(tenant, features).
    /// Without --query: the 20 top-priority incidents.
    #[cfg(feature = "datafusion")]
    Sql {
        /// Model artifact.
        #[arg(long, default_value = "models/default.json.gz")]
        model: PathBuf,
        /// GUIDE CSV, or a Parquet file or folder.
        #[arg(long)]
        input: PathBuf,
        /// The query.
        #[arg(long, conflicts_with = "query_file")]
        query: Option<String>,
        /// A file holding the query.
        #[arg(long)]
        query_file: Option<PathBuf>,
        /// Write the result as CSV here (streamed) instead of a table on stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// DataFusion partitions (threads of the plan); default: the machine's cores.
        #[arg(long)]
        partitions: Option<usize>,
        /// Ballista scheduler to run the query on (df://HOST:PORT) instead of in process.
        #[cfg(feature = "distributed")]
        #[arg(long)]
        cluster: Option<String>,
        /// Give up (exit 1, no output) after this many seconds.
        #[arg(long)]
        timeout_seconds: Option<f64>,
        /// Also write the run's figures as JSON (seconds, peak memory, rows).
        #[arg(long)]
        stats_json: Option<PathBuf>,
        /// memory pool of the local plan
        #[command(flatten)]
        memory: MemoryArgs,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Saved hunting queries (hunts/*.sql): list them, or run one and queue its hits.
    #[cfg(feature = "datafusion")]
    Hunt {
        /// What to do.
        #[command(subcommand)]
        command: HuntCommand,
    },
    /// Manage the service's API keys (one tenant each; only their SHA-256 is stored).
    #[cfg(feature = "service")]
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Fold the analysts' stored verdicts into training: writes a new artifact and reports
    /// before/after metrics on the most recent verdicts, held out.
    #[cfg(feature = "service")]
    Retrain {
        /// The service's database.
        #[arg(long)]
        db: PathBuf,
        /// The model the service runs.
        #[arg(long)]
        model: PathBuf,
        /// The labelled input that model was trained on (default: the shipped sample).
        #[arg(long)]
        input: Option<PathBuf>,
        /// New artifact to write.
        #[arg(long)]
        out: PathBuf,
        /// Share of the most recent verdicts held out for before/after.
        #[arg(long, default_value_t = 0.3)]
        holdout: f64,
        /// Training seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also write the before/after report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Score a Kafka topic of native JSONL alerts in micro-batches (one alert per message) and
    /// produce one JSON message per scored threat, keyed by tenant. At-least-once: a batch's
    /// offsets are committed only after its results are acknowledged; rejected messages go to
    /// the rejects topic with their reason and offset. SIGTERM/Ctrl-C finishes the batch,
    /// commits and exits 0. See docs/STREAM.md.
    #[cfg(feature = "kafka")]
    Stream {
        /// Bootstrap brokers, HOST:PORT[,HOST:PORT…].
        #[arg(long)]
        brokers: String,
        /// Input topic: native JSONL alerts, one per message value.
        #[arg(long)]
        topic: String,
        /// Topic of the scored threats (message key: tenant id).
        #[arg(long)]
        output_topic: String,
        /// Topic of the rejected messages (default: the output topic, "type": "rejected").
        #[arg(long)]
        rejects_topic: Option<String>,
        /// Consumer group whose offsets are committed.
        #[arg(long, default_value = "threatrank")]
        group: String,
        /// Model artifact.
        #[arg(long, default_value = "models/default.json.gz")]
        model: PathBuf,
        /// Most messages per micro-batch.
        #[arg(long, default_value_t = 500)]
        max_batch: usize,
        /// Longest wait after a batch's first message, ms.
        #[arg(long, default_value_t = 1000)]
        max_wait_ms: u64,
        /// Exit once no message came for this long while holding partitions, ms (batch jobs,
        /// tests); default: run until stopped.
        #[arg(long)]
        exit_when_idle_ms: Option<u64>,
        /// Most alerts held across batches, so that an incident spanning batches is scored
        /// with all its alerts seen so far (0: each batch on its own).
        #[arg(long, default_value_t = 100_000)]
        state_alerts: usize,
        /// Reasons per threat (exact TreeSHAP for every threat produced; 0: none).
        #[arg(long, default_value_t = 0)]
        reasons: usize,
        /// Extra librdkafka property for both clients, KEY=VALUE (repeatable), e.g.
        /// security.protocol=SASL_SSL.
        #[arg(long = "kafka-config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        kafka_config: Vec<(String, String)>,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
    /// Forward in time on the shipped GUIDE sample: evaluate at 3 origins, train on the earlier
    /// days, and print the queue of the later days as that model scores them.
    Demo {
        /// Shipped sample (default: datasets/guide/guide_sample.csv).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output folder for the model, scores and eval JSON.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
    },
}

/// `threatrank signals …`
#[derive(Debug, Subcommand)]
pub enum SignalsCommand {
    /// Build a snapshot from many tenants' alerts and verdicts: per detector, title, category,
    /// technique, threat family and entity, the distinct tenants, incidents, alerts and grade
    /// mix, each released only when at least MIN_TENANTS tenants contribute; entities stored
    /// as keyed pseudonyms; no tenant id stored.
    Build {
        /// GUIDE CSV or native JSONL (grades optional).
        #[arg(long)]
        input: PathBuf,
        /// Snapshot to write (JSON; gzip when it ends in .gz).
        #[arg(long)]
        out: PathBuf,
        /// Privacy floor: a key is released when its (noisy) tenant count reaches it (≥ 2).
        #[arg(long, default_value_t = 5)]
        min_tenants: usize,
        /// Differential-privacy ε of one key's statistics for one tenant, per release.
        #[arg(long, default_value_t = crate::signals::global::DEFAULT_EPSILON, conflicts_with = "exact")]
        epsilon: f64,
        /// No noise: exact counts behind the floor (k-anonymity only, which a differencing
        /// attack defeats). For experiments; never share such a snapshot.
        #[arg(long)]
        exact: bool,
        /// Clip each tenant's contribution to one key to this many incidents, alerts and
        /// graded incidents.
        #[arg(long, default_value_t = 2)]
        contribution_cap: u32,
        /// Each tenant contributes to at most this many keys of each kind.
        #[arg(long, default_value_t = 32)]
        max_keys_per_tenant: u32,
        /// Total ε per key over every release charged to the ledger; a release past it is
        /// refused.
        #[arg(long, default_value_t = crate::signals::ledger::DEFAULT_BUDGET)]
        budget: f64,
        /// The privacy-budget ledger (default: signals-ledger.json beside --out).
        #[arg(long, value_name = "FILE")]
        ledger: Option<PathBuf>,
        /// File holding the pseudonymization secret (default $THREATRANK_SIGNALS_KEY_FILE,
        /// else the public development key, with a warning).
        #[arg(long, value_name = "FILE")]
        signals_key: Option<PathBuf>,
    },
}

/// `threatrank hunt …`
#[cfg(feature = "datafusion")]
#[derive(Debug, Subcommand)]
pub enum HuntCommand {
    /// List the hunts: name, version, owner, techniques, description.
    List {
        /// Folder of hunt files.
        #[arg(long, default_value = "hunts")]
        hunts: PathBuf,
    },
    /// Run one hunt over an alert store; its hits are scored and printed as a queue.
    Run {
        /// Hunt name.
        name: String,
        /// GUIDE CSV, or a Parquet file or folder.
        #[arg(long)]
        input: PathBuf,
        /// Model artifact that scores the hits.
        #[arg(long, default_value = "models/default.json.gz")]
        model: PathBuf,
        /// Folder of hunt files.
        #[arg(long, default_value = "hunts")]
        hunts: PathBuf,
        /// Write the queue as CSV here instead of a table on stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Also write the run's figures as JSON (seconds to find, to score, hits).
        #[arg(long)]
        stats_json: Option<PathBuf>,
        /// memory pool of the local plan
        #[command(flatten)]
        memory: MemoryArgs,
        /// pseudonymization key and external snapshot
        #[command(flatten)]
        signals: SignalsArgs,
    },
}

/// `threatrank keys …`
#[cfg(feature = "service")]
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key for a tenant; prints it once on stdout (it is not stored, only its hash).
    Add {
        /// The service's database (created when absent).
        #[arg(long)]
        db: PathBuf,
        /// Tenant (GUIDE OrgId / native `tenant`).
        #[arg(long)]
        tenant: u64,
        /// Who holds the key (recorded as the analyst of its verdicts).
        #[arg(long)]
        label: String,
    },
    /// Revoke a key by id: its requests get 401 from then on.
    Revoke {
        /// The service's database.
        #[arg(long)]
        db: PathBuf,
        /// Key id (see `keys list`).
        #[arg(long)]
        key_id: i64,
    },
    /// List keys: id, tenant, label, created, revoked (never the secrets).
    List {
        /// The service's database.
        #[arg(long)]
        db: PathBuf,
    },
}

fn parse_family(s: &str) -> Result<crate::features::Family, String> {
    crate::features::Family::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = crate::features::Family::ALL
            .iter()
            .map(|f| f.name())
            .collect();
        format!(
            "unknown feature family {s:?}; expected one of {}",
            names.join(", ")
        )
    })
}

fn parse_objective(s: &str) -> Result<crate::train::tune::TuneObjective, String> {
    crate::train::tune::TuneObjective::from_name(s)
        .ok_or_else(|| format!("unknown objective {s:?}; expected incident, tenant or both"))
}

/// A row count: `1000000`, `1e6` or `10^6`.
#[cfg(feature = "kafka")]
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn parse_rows(s: &str) -> Result<u64, String> {
    let bad = || format!("not a row count: {s:?} (expected e.g. 1000000, 1e6 or 10^6)");
    if let Some((m, e)) = s
        .split_once(['e', 'E'])
        .or_else(|| s.strip_prefix("10^").map(|e| ("1", e)))
    {
        let m: u64 = m.parse().map_err(|_| bad())?;
        let e: u32 = e.parse().map_err(|_| bad())?;
        return 10u64
            .checked_pow(e)
            .and_then(|p| p.checked_mul(m))
            .ok_or_else(bad);
    }
    s.parse().map_err(|_| bad())
}

fn parse_split(s: &str) -> Result<SplitKind, String> {
    SplitKind::from_name(s)
        .ok_or_else(|| format!("unknown split {s:?}; expected one of forward, incident, tenant"))
}

/// The splits of `eval` and `report`.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    /// Splits to evaluate, in this order: `forward` (train on incidents that ended before
    /// each origin, test the next window: what a deployment sees), `incident`
    /// (incident-disjoint random folds), `tenant` (tenant-disjoint random folds). Repeat the
    /// flag or give a comma list; default `forward,incident,tenant`.
    #[arg(long = "split", value_delimiter = ',', value_parser = parse_split, value_name = "SPLIT")]
    splits: Vec<SplitKind>,
    /// Origins of the forward split (UTC day boundaries at the time quantiles of the latest
    /// --forward-test-share of graded incidents).
    #[arg(long, default_value_t = 3)]
    forward_origins: usize,
    /// Share of the graded incidents, the latest by first evidence, that the forward split's
    /// test windows hold (in (0, 1)).
    #[arg(long, default_value_t = 0.5)]
    forward_test_share: f64,
}

impl SplitArgs {
    /// The split kinds of `--split` in the order given, without repeats; all kinds (forward
    /// first) when none was given.
    fn chosen(&self) -> Vec<SplitKind> {
        if self.splits.is_empty() {
            return SplitKind::ALL.to_vec();
        }
        let mut out: Vec<SplitKind> = Vec::new();
        for &k in &self.splits {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        format!(
            "unknown algorithm {s:?}; expected one of {}",
            names.join(", ")
        )
    })
}

/// The report's scale section, progress on stderr; the scratch folder is removed after.
fn run_scale(
    p: &crate::bench::scale::ScaleParams,
) -> Result<crate::bench::ScaleReport, PipelineError> {
    let r = crate::bench::scale::run(p, &mut |m| eprintln!("report: {m}"));
    let _ = std::fs::remove_dir_all(&p.work_dir);
    Ok(r?)
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(msg.to_string());
    pb
}

/// A positive, finite number of seconds.
#[cfg(feature = "datafusion")]
fn positive_seconds(s: f64, name: &'static str) -> Result<std::time::Duration, PipelineError> {
    if s.is_finite() && s > 0.0 {
        Ok(std::time::Duration::from_secs_f64(s))
    } else {
        Err(PipelineError::Input {
            file: format!("--{}", name.replace('_', "-")),
            reason: format!("{s} is not a positive number of seconds"),
        })
    }
}

fn eprint_report(r: &crate::ingest::IngestReport, rejects: Option<&Path>) {
    eprintln!("{}", r.summary());
    for rej in r.rejected.iter().take(5) {
        eprintln!("  rejected {rej}");
    }
    if r.rejected.len() > 5 {
        eprintln!("  … {} more", r.rejected.len() - 5);
    }
    if let Some(p) = rejects {
        eprintln!("rejects written to {}", p.display());
    }
}

/// What the binary prints for an error: `error: <message>`, then one `  caused by: <cause>`
/// line for each error down the `source()` chain whose text the lines above do not already
/// hold (most messages embed their direct cause: printing it again would only repeat it).
///
/// ```
/// let e = std::io::Error::other("disk full");
/// assert_eq!(threatrank::cli::error_lines(&e), vec!["error: disk full"]);
/// ```
pub fn error_lines(e: &dyn std::error::Error) -> Vec<String> {
    let mut lines = vec![format!("error: {e}")];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !lines.iter().any(|l| l.contains(&text)) {
            lines.push(format!("  caused by: {text}"));
        }
        source = s.source();
    }
    lines
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<(), PipelineError> {
    match cli.command {
        Command::Train {
            input,
            model,
            algorithm,
            seed,
            disable,
            signals_epsilon,
            signals,
        } => {
            let kn = signals.knowledge()?;
            warn_development_key(&kn.key, "the model's global signals");
            let pb = spinner(&format!(
                "training {} on {}",
                algorithm.name(),
                input.display()
            ));
            let mut params = TrainParams::default().algorithm(algorithm).seed(seed);
            for f in disable {
                params.features = params.features.disable(f);
            }
            params.features.signals.epsilon = signals_epsilon.0;
            let out = pipeline::train_file(&input, &model, &params, &kn);
            pb.finish_and_clear();
            let out = out?;
            eprint_report(&out.report, Some(&out.rejects));
            let card = &out.artifact.card;
            eprintln!(
                "trained {} on {} incidents from {} tenants (grades TP/BP/FP {:?}); out-of-fold macro-F1 {}",
                algorithm.name(),
                card.data.incidents,
                card.data.tenants,
                card.data.grades,
                card.metrics.oof_macro_f1.map_or("n/a".into(), |v| format!("{v:.3}"))
            );
            println!("{}", model.display());
            Ok(())
        }
        Command::Score {
            model,
            input,
            output,
            explain,
            memory_rows,
            stats_json,
            #[cfg(feature = "distributed")]
            cluster,
            #[cfg(feature = "distributed")]
            timeout_seconds,
            signals,
        } => {
            #[cfg(feature = "distributed")]
            if let Some(url) = cluster {
                let run = crate::sql::run::SqlRun {
                    model,
                    input,
                    query: crate::sql::CLUSTER_SCORE_QUERY.to_string(),
                    output: Some(output),
                    partitions: None,
                    cluster: Some(url),
                    timeout: Some(positive_seconds(timeout_seconds, "timeout_seconds")?),
                    stats_json,
                    // the plan runs on the cluster's executors, under their own limits
                    memory: crate::sql::run::MemoryLimit::mib(0),
                };
                return crate::sql::run::sql(&run, signals.knowledge()?);
            }
            let started = std::time::Instant::now();
            let kn = signals.knowledge()?;
            let params = crate::stream::StreamParams {
                memory_rows,
                explain,
            }
            .check()?;
            let pb = spinner(&format!("scoring {}", input.display()));
            let out = pipeline::score_file_with(&model, &input, &output, &kn, &params);
            pb.finish_and_clear();
            let out = out?;
            let r = &out.report;
            eprintln!("{}", r.summary());
            for rej in r.first_rejections.iter().take(5) {
                eprintln!("  rejected {rej}");
            }
            if r.rejected > 5 {
                eprintln!("  … {} more", r.rejected - 5);
            }
            eprintln!("rejects written to {}", out.rejects.display());
            eprintln!(
                "scored {} incidents ({} explained, {} partition{}); wrote {} rows to {}",
                out.incidents,
                r.explained,
                r.partitions,
                if r.partitions == 1 { "" } else { "s" },
                out.rows,
                output.display()
            );
            if let Some(p) = stats_json {
                let stats = serde_json::json!({
                    "seconds": started.elapsed().as_secs_f64(),
                    "peak_rss_bytes": crate::stream::peak_rss_bytes(),
                    "records": r.records,
                    "accepted": r.accepted,
                    "rejected": r.rejected,
                    "incidents": r.incidents,
                    "explained": r.explained,
                    "partitions": r.partitions,
                    "memory_rows": memory_rows,
                    "explain": explain.to_string(),
                });
                std::fs::write(&p, stats.to_string() + "\n").map_err(|e| {
                    crate::report::ReportError::Write {
                        file: p.display().to_string(),
                        source: e.into(),
                    }
                })?;
            }
            Ok(())
        }
        Command::Queue {
            model,
            input,
            tenant,
            top,
            reasons,
            review,
            signals,
        } => {
            let kn = signals.knowledge()?;
            let (scored, text) = pipeline::queue_file(
                &model,
                &input,
                tenant.map(TenantId),
                top,
                reasons,
                review,
                &kn,
            )?;
            eprint_report(&scored.loaded.report, None);
            print!("{text}");
            Ok(())
        }
        Command::Eval {
            input,
            split,
            folds,
            seed,
            algorithm,
            json,
            online,
            cold_start,
            ablation,
            repeats,
            signals_epsilon,
            signals,
        } => {
            let kn = signals.knowledge()?;
            let mut params = CvParams {
                folds,
                seed,
                splits: split.chosen(),
                forward_origins: split.forward_origins,
                forward_test_share: split.forward_test_share,
                ..CvParams::default()
            };
            params.train.features.signals.epsilon = signals_epsilon.0;
            if !algorithm.is_empty() {
                params.algorithms.clear();
                for a in algorithm {
                    if !params.algorithms.contains(&a) {
                        params.algorithms.push(a);
                    }
                }
            }
            let extras = pipeline::EvalExtras {
                online: online.then(crate::train::online::OnlineSimParams::default),
                cold_start: cold_start.then(crate::train::coldstart::ColdStartParams::default),
                ablation,
                repeats: usize::from(repeats),
            };
            let report = eval_with_progress(&input, &params, &extras, &kn)?;
            print!("{}", report.table());
            if let (Some(c), None) = (&extras.cold_start, &report.cold_start) {
                eprintln!("{}", crate::train::coldstart::none_reason(c));
            }
            crate::report::write_json(&json, &report)?;
            eprintln!("wrote {}", json.display());
            Ok(())
        }
        Command::Report {
            input,
            out,
            split,
            folds,
            folds_to_run,
            seed,
            algorithms,
            peers,
            peers_dir,
            scale,
            scale_only,
            scale_tenants,
            scale_model,
            scale_peer_max_rows,
            scale_parquet_max_rows,
            signals,
        } => {
            let scale_params = (!scale.is_empty()).then(|| crate::bench::scale::ScaleParams {
                sizes: scale.clone(),
                tenants: scale_tenants,
                seed: 42,
                fit: PathBuf::from("datasets/guide/guide_sample.csv"),
                model: scale_model.clone(),
                threatrank: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("threatrank")),
                work_dir: out.join("scale-work"),
                peers_dir: peers.then(|| peers_dir.clone()),
                peer_max_rows: scale_peer_max_rows,
                parquet_max_rows: scale_parquet_max_rows,
            });
            if let Some(sp) = &scale_params {
                sp.check()?;
            }
            if scale_only {
                let json = out.join("report.json");
                let text = std::fs::read_to_string(&json).map_err(|e| PipelineError::Input {
                    file: json.display().to_string(),
                    reason: format!("--scale-only needs an earlier report: {e}"),
                })?;
                let mut report: crate::bench::BenchReport =
                    serde_json::from_str(&text).map_err(|e| PipelineError::Input {
                        file: json.display().to_string(),
                        reason: e.to_string(),
                    })?;
                if let Some(sp) = &scale_params {
                    report.scale = Some(run_scale(sp)?);
                }
                for f in crate::bench::write_report(&mut report, &out)? {
                    println!("{}", f.display());
                }
                return Ok(());
            }
            let kn = signals.knowledge()?;
            let mut cv = CvParams {
                folds,
                folds_to_run,
                seed,
                splits: split.chosen(),
                forward_origins: split.forward_origins,
                forward_test_share: split.forward_test_share,
                ..CvParams::default()
            };
            if !algorithms.is_empty() {
                cv.algorithms = algorithms;
            }
            // the program as `threatrank` (not the install path), the arguments as given
            let command: Vec<String> = std::iter::once("threatrank".to_string())
                .chain(std::env::args().skip(1))
                .collect();
            let params = crate::bench::ReportParams::default()
                .cv(cv)
                .peers(peers.then(|| crate::bench::PeersParams {
                    dir: peers_dir,
                    ..Default::default()
                }))
                .command(&command.join(" "));
            let steps = params.cv.algorithms.len() * params.cv.fold_runs();
            let pb = ProgressBar::new(steps as u64);
            pb.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let out_dir = out.clone();
            let result = pipeline::report_file(&input, &out, &params, &kn, &mut |p| match p {
                crate::bench::Progress::Fold(m) => {
                    pb.set_message(m.to_string());
                    pb.inc(1);
                }
                crate::bench::Progress::Stage(m) => {
                    pb.suspend(|| eprintln!("report: {m}"));
                    pb.set_message(m.to_string());
                }
            });
            pb.finish_and_clear();
            let mut outcome = result?;
            if let Some(sp) = &scale_params {
                outcome.report.scale = Some(run_scale(sp)?);
                let written = crate::bench::write_report(&mut outcome.report, &out)?;
                for f in written {
                    if !outcome.files.contains(&f) {
                        outcome.files.push(f);
                    }
                }
            }
            for f in &outcome.files {
                println!("{}", f.display());
            }
            let plots = outcome.report.plots.len();
            eprintln!(
                "wrote {} files to {}: report.json, report.md, report.html, {plots} plots in plots/{}",
                outcome.files.len(),
                out_dir.display(),
                match outcome.report.peers.status {
                    crate::bench::PeersStatus::Off => String::new(),
                    _ => ", peers/ (folds, predictions, log)".to_string(),
                }
            );
            Ok(())
        }
        Command::Tune {
            input,
            model,
            trials,
            folds,
            objective,
            seed,
            signals,
        } => {
            let kn = signals.knowledge()?;
            let tune = crate::train::tune::TuneParams {
                trials,
                folds,
                seed,
                objective,
            };
            let params = TrainParams::default().seed(seed);
            let out = with_progress_bar(trials as u64 + 1, |progress| {
                pipeline::tune_file(&input, &model, &tune, &params, &kn, progress)
            });
            let out = out?;
            eprint_report(&out.report, Some(&out.rejects));
            if let Some(t) = &out.artifact.card.tuning {
                print!("{}", t.table());
            }
            eprintln!(
                "wrote {} (tuned parameters in card.params, the search in card.tuning)",
                model.display()
            );
            Ok(())
        }
        Command::Signals(SignalsCommand::Build {
            input,
            out,
            min_tenants,
            epsilon,
            exact,
            contribution_cap,
            max_keys_per_tenant,
            budget,
            ledger,
            signals_key,
        }) => {
            let args = SignalsArgs {
                signals_key,
                signals: None,
            };
            let key = args.key()?;
            warn_development_key(&key, &out.display().to_string());
            let params = crate::signals::SignalsParams::default()
                .min_tenants(min_tenants)
                .epsilon((!exact).then_some(epsilon))
                .contribution_cap(contribution_cap)
                .max_keys_per_tenant(max_keys_per_tenant);
            let ledger =
                ledger.unwrap_or_else(|| crate::signals::ledger::default_ledger_path(&out));
            let built = pipeline::build_signals_file(&input, &out, &params, &key, &ledger, budget)?;
            eprint_report(&built.report, None);
            eprintln!("{}", built.summary());
            if exact {
                eprintln!("warning: {} holds exact counts (no differential privacy): a differencing attack reads one tenant's counts from two such snapshots; never share it", out.display());
            }
            println!("{}", out.display());
            Ok(())
        }
        Command::Correlate {
            input,
            learn_on,
            window_seconds,
            max_alerts_per_entity,
            ignore_incident_ids,
        } => {
            let params = CorrelateParams::default()
                .window_seconds(window_seconds)
                .max_alerts_per_entity(max_alerts_per_entity);
            let out = pipeline::correlate_file(
                &input,
                learn_on.as_deref(),
                &params,
                ignore_incident_ids,
            )?;
            eprint_report(&out.report, None);
            let l = &out.linker;
            println!(
                "window {} s, max alerts per entity {}, stoplist {} entities (learnt on {} rows)",
                l.window_seconds(),
                l.max_alerts_per_entity(),
                l.stoplist().len(),
                l.learnt_rows()
            );
            let correlated = out
                .incidents
                .incidents
                .iter()
                .filter(|i| i.key.incident.is_correlated());
            let (threats, multi) = correlated.fold((0, 0), |(n, m), i| {
                (n + 1, m + usize::from(i.alerts.len() > 1))
            });
            println!(
                "{} evidence rows to correlate -> {threats} candidate threats ({multi} with more \
                 than one alert); {} incidents in all",
                out.free_rows,
                out.incidents.incidents.len()
            );
            if let Some(a) = out.agreement {
                let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
                println!(
                    "pairwise vs given incident ids: precision {} recall {} ({} agreed of {} \
                     predicted and {} true pairs; {} alerts, {} given incidents, {} candidate \
                     threats)",
                    f(a.precision()),
                    f(a.recall()),
                    a.agreed_pairs,
                    a.predicted_pairs,
                    a.true_pairs,
                    a.alerts,
                    a.true_groups,
                    a.predicted_groups
                );
            }
            Ok(())
        }
        #[cfg(feature = "service")]
        Command::Serve {
            model,
            db,
            listen,
            max_body_bytes,
            request_timeout_seconds,
            header_timeout_seconds,
            shutdown_grace_seconds,
            max_inflight_body_bytes,
            max_text_bytes,
            max_entities_per_alert,
            max_batch_rows,
            notify_priority,
            drift_window,
            drift_rows,
            psi_warn,
            agreement_warn,
            global_max_tenant_share,
            signals,
        } => {
            let kn = signals.knowledge()?;
            let mut p = crate::service::ServeParams::new(model, db);
            p.listen = listen;
            p.max_body_bytes = max_body_bytes;
            p.max_inflight_body_bytes = max_inflight_body_bytes;
            p.max_text_bytes = max_text_bytes;
            p.max_entities_per_alert = max_entities_per_alert;
            p.max_batch_rows = max_batch_rows;
            let seconds = |name, v: f64| {
                // the range itself is checked with the other parameters
                if v.is_finite() && v > 0.0 && v <= 1e6 {
                    Ok(std::time::Duration::from_secs_f64(v))
                } else {
                    Err(crate::service::ServiceError::Param {
                        name,
                        reason: format!("{v} is not a positive number of seconds"),
                    })
                }
            };
            p.request_timeout = seconds("request_timeout_seconds", request_timeout_seconds)?;
            p.header_timeout = seconds("header_timeout_seconds", header_timeout_seconds)?;
            p.shutdown_grace = seconds("shutdown_grace_seconds", shutdown_grace_seconds)?;
            p.notify_priority = notify_priority;
            p.drift_window = drift_window;
            p.drift_rows = drift_rows;
            p.psi_warn = psi_warn;
            p.agreement_warn = agreement_warn;
            p.max_tenant_share = global_max_tenant_share;
            crate::service::serve(&p, kn)?;
            Ok(())
        }
        #[cfg(feature = "parquet")]
        Command::Convert {
            input,
            out,
            buffer_rows,
            zstd_level,
        } => {
            let params = crate::convert::ConvertParams {
                buffer_rows,
                zstd_level,
                ..Default::default()
            }
            .check()?;
            let pb = spinner(&format!("converting {}", input.display()));
            let res = if crate::ingest::InputFormat::from_path(&input)
                == crate::ingest::InputFormat::GuideParquet
            {
                crate::convert::parquet_to_csv(&input, &out)
            } else {
                crate::convert::csv_to_parquet(&input, &out, &params)
            };
            pb.finish_and_clear();
            let res = res?;
            eprint_report(&res.report, res.rejects.as_deref());
            eprintln!("{}", res.summary());
            Ok(())
        }
        #[cfg(feature = "datafusion")]
        Command::Sql {
            model,
            input,
            query,
            query_file,
            output,
            partitions,
            #[cfg(feature = "distributed")]
            cluster,
            timeout_seconds,
            stats_json,
            memory,
            signals,
        } => {
            let query = match (query, query_file) {
                (Some(q), _) => q,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).map_err(|e| PipelineError::Input {
                        file: f.display().to_string(),
                        reason: format!("cannot read the query: {e}"),
                    })?
                }
                (None, None) => crate::sql::DEFAULT_QUERY.to_string(),
            };
            let run = crate::sql::run::SqlRun {
                model,
                input,
                query,
                output,
                partitions,
                #[cfg(feature = "distributed")]
                cluster,
                timeout: timeout_seconds
                    .map(|t| positive_seconds(t, "timeout_seconds"))
                    .transpose()?,
                stats_json,
                memory: memory.limit(),
            };
            crate::sql::run::sql(&run, signals.knowledge()?)
        }
        #[cfg(feature = "datafusion")]
        Command::Hunt { command } => match command {
            HuntCommand::List { hunts } => {
                let hs = crate::sql::hunts::load_dir(&hunts)?;
                println!("name\tversion\towner\ttechniques\tdescription");
                for h in hs {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        h.name,
                        h.version,
                        h.owner,
                        h.techniques.join(","),
                        h.description
                    );
                }
                Ok(())
            }
            HuntCommand::Run {
                name,
                input,
                model,
                hunts,
                output,
                stats_json,
                memory,
                signals,
            } => crate::sql::run::hunt(
                &crate::sql::run::HuntRun {
                    name,
                    input,
                    model,
                    hunts,
                    output,
                    stats_json,
                    memory: memory.limit(),
                },
                signals.knowledge()?,
            ),
        },
        #[cfg(feature = "service")]
        Command::Keys { command } => {
            use crate::service::Db;
            match command {
                KeysCommand::Add { db, tenant, label } => {
                    let d = Db::open(&db, 1).map_err(crate::service::ServiceError::from)?;
                    let (id, key) = d
                        .add_key(tenant, &label)
                        .map_err(crate::service::ServiceError::from)?;
                    eprintln!("key {id} for tenant {tenant} ({label}); shown once, store it now:");
                    println!("{key}");
                }
                KeysCommand::Revoke { db, key_id } => {
                    let d = Db::open(&db, 1).map_err(crate::service::ServiceError::from)?;
                    d.revoke_key(key_id)
                        .map_err(crate::service::ServiceError::from)?;
                    eprintln!("key {key_id} revoked");
                }
                KeysCommand::List { db } => {
                    let d = Db::open(&db, 1).map_err(crate::service::ServiceError::from)?;
                    println!("id\ttenant\tlabel\tcreated\trevoked");
                    for k in d.keys().map_err(crate::service::ServiceError::from)? {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            k.id,
                            k.tenant,
                            k.label,
                            crate::ingest::format_rfc3339(k.created),
                            k.revoked
                                .map_or_else(|| "-".to_string(), crate::ingest::format_rfc3339)
                        );
                    }
                }
            }
            Ok(())
        }
        #[cfg(feature = "service")]
        Command::Retrain {
            db,
            model,
            input,
            out,
            holdout,
            seed,
            json,
            signals,
        } => {
            let kn = signals.knowledge()?;
            let p = crate::service::retrain::RetrainParams {
                db,
                model,
                input: input.unwrap_or_else(shipped_sample),
                out,
                holdout,
                seed,
            };
            let (artifact, r) = with_progress_bar(3, |progress| {
                crate::service::retrain::retrain(&p, &kn, progress)
            })?;
            println!(
                "retrained on {} verdicts (TP/BP/FP {:?}; {} base incidents overridden) -> {}",
                r.verdicts,
                r.grades,
                r.overridden,
                p.out.display()
            );
            println!(
                "held-out verdicts: {} (the most recent {:.0}%)\n{:<28} {:>9} {:>9} {:>9}\n{:<28} {:>9.3} {:>9.3} {:>9.3}\n{:<28} {:>9.3} {:>9.3} {:>9.3}",
                r.held_out,
                holdout * 100.0,
                "",
                "macro-F1",
                "accuracy",
                "log-loss",
                "before (model in service)",
                r.before.macro_f1,
                r.before.accuracy,
                r.before.log_loss,
                "after (retrained w/o them)",
                r.after.macro_f1,
                r.after.accuracy,
                r.after.log_loss
            );
            println!(
                "model card: {} incidents, {} tenants",
                artifact.card.data.incidents, artifact.card.data.tenants
            );
            if !r.skipped.is_empty() {
                println!("skipped {} verdicted threats:", r.skipped.len());
                for s in &r.skipped {
                    println!("  tenant {} threat {}: {}", s.tenant, s.threat, s.reason);
                }
            }
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&r).expect("report serializes");
                std::fs::write(&path, text + "\n").map_err(|e| {
                    crate::report::ReportError::Write {
                        file: path.display().to_string(),
                        source: e.into(),
                    }
                })?;
            }
            Ok(())
        }
        Command::Synth {
            rows,
            tenants,
            seed,
            out,
            fit,
            open_incidents,
            grade_smoothing,
        } => {
            let fit = fit.unwrap_or_else(shipped_sample);
            let params = SynthParams::default()
                .rows(rows)
                .tenants(tenants)
                .seed(seed)
                .open_incidents(open_incidents)
                .grade_smoothing(grade_smoothing);
            let pb = ProgressBar::new(rows);
            pb.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} rows {elapsed_precise} ({per_sec}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_message(format!("fitting {}", fit.display()));
            let mut first = true;
            let out_res = pipeline::synth_file(&fit, &out, &params, &mut |n| {
                if first {
                    pb.set_message(format!("writing {}", out.display()));
                    first = false;
                }
                pb.set_position(n);
            });
            pb.finish_and_clear();
            let o = out_res?;
            eprintln!(
                "fitted on {}: {} rows, {} incidents, {} tenants, {:.2} rows per incident ({:.2} s)",
                fit.display(),
                o.fit.rows,
                o.fit.incidents,
                o.fit.tenants,
                o.fit.mean_incident_rows(),
                o.fit_seconds
            );
            let s = &o.summary;
            eprintln!(
                "synth: {} rows, {} incidents, {} alerts, {} tenants, {} bytes in {:.2} s ({:.2} M rows/s, {:.0} bytes/row)",
                s.rows,
                s.incidents,
                s.alerts,
                s.tenants,
                s.bytes,
                o.seconds,
                s.rows as f64 / o.seconds.max(1e-9) / 1e6,
                s.bytes as f64 / s.rows.max(1) as f64
            );
            println!("{}", out.display());
            Ok(())
        }
        #[cfg(feature = "kafka")]
        Command::Stream {
            brokers,
            topic,
            output_topic,
            rejects_topic,
            group,
            model,
            max_batch,
            max_wait_ms,
            exit_when_idle_ms,
            state_alerts,
            reasons,
            kafka_config,
            signals,
        } => {
            use crate::kafka;
            let kn = signals.knowledge()?;
            let mut p = kafka::StreamKafkaParams::new(brokers, topic, output_topic)
                .rejects_topic(rejects_topic)
                .group(group)
                .model(model)
                .max_batch(max_batch)
                .max_wait_ms(max_wait_ms)
                .exit_when_idle_ms(exit_when_idle_ms)
                .state_alerts(state_alerts)
                .reasons(reasons);
            p.config = kafka_config;
            let stop = kafka::Stop::new();
            kafka::stop_on_signals(&stop)?;
            let mut last = kafka::StreamKafkaOutcome::default();
            let mut shown = std::time::Instant::now();
            let res = kafka::stream(&p, &kn, &stop, &mut |e| match e {
                kafka::Event::Assigned(parts) => eprintln!("assigned: {}", parts_text(parts)),
                kafka::Event::Revoked {
                    partitions,
                    released,
                } => eprintln!(
                    "revoked: {} ({released} uncommitted messages handed back)",
                    parts_text(partitions)
                ),
                kafka::Event::Warning(w) => eprintln!("warning: {w}"),
                kafka::Event::Batch { totals, .. } => {
                    last = totals.clone();
                    if shown.elapsed() >= Duration::from_secs(10) {
                        shown = std::time::Instant::now();
                        eprintln!("{}", totals.summary());
                    }
                }
            });
            match res {
                Ok(totals) => {
                    eprintln!("{}", totals.summary());
                    Ok(())
                }
                Err(e) => {
                    eprintln!("committed before the error: {}", last.summary());
                    Err(e.into())
                }
            }
        }
        Command::Demo { input, out } => demo(input, &out),
    }
}

/// Says on stderr when pseudonyms that will be written to disk use the public development key.
fn warn_development_key(key: &PseudonymKey, what: &str) {
    if key.is_development() {
        eprintln!(
            "note: {what} pseudonymize entities with the public development key; set \
             {KEY_FILE_ENV} or --signals-key to a file with a secret before sharing them"
        );
    }
}

fn eval_with_progress(
    input: &Path,
    params: &CvParams,
    extras: &pipeline::EvalExtras,
    kn: &Knowledge,
) -> Result<crate::train::cv::CvReport, PipelineError> {
    let per_run = params.algorithms.len() * params.fold_runs();
    let runs = extras.repeats.max(1)
        + usize::from(extras.cold_start.is_some())
        + if extras.ablation {
            crate::features::Family::ALL.len()
        } else {
            0
        };
    with_progress_bar((runs * per_run) as u64, |progress| {
        pipeline::eval_file(input, params, extras, kn, progress)
    })
}

/// Runs `job` with a progress bar of `len` steps on stderr; each progress message is a step.
#[cfg(feature = "kafka")]
fn parts_text(parts: &[(String, i32)]) -> String {
    let v: Vec<String> = parts.iter().map(|(t, p)| format!("{t}/{p}")).collect();
    v.join(", ")
}

fn with_progress_bar<T>(len: u64, job: impl FnOnce(&mut dyn FnMut(&str)) -> T) -> T {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = |m: &str| {
        pb.set_message(m.to_string());
        pb.inc(1);
    };
    let out = job(&mut progress);
    pb.finish_and_clear();
    out
}

/// Path of the shipped GUIDE sample: relative to the working directory, else to the crate.
pub fn shipped_sample() -> PathBuf {
    let rel = PathBuf::from("datasets/guide/guide_sample.csv");
    if rel.exists() {
        rel
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}

fn demo(input: Option<PathBuf>, out: &Path) -> Result<(), PipelineError> {
    let input = input.unwrap_or_else(shipped_sample);
    std::fs::create_dir_all(out).map_err(|e| crate::report::ReportError::Write {
        file: out.display().to_string(),
        source: e.into(),
    })?;
    let kn = SignalsArgs::default().knowledge()?;
    eprintln!(
        "1/3 forward in time, as a deployment scores: at each of 3 origins, train on the \
         incidents that ended before it, score those that began in the next window; the \
         default model against the lookup baseline (`threatrank eval` adds random folds, \
         `threatrank report --peers` LightGBM and XGBoost)"
    );
    let params = CvParams {
        algorithms: vec![crate::models::Algorithm::Gbdt],
        splits: vec![SplitKind::Forward],
        compare_ranker: false,
        ..CvParams::default()
    };
    let report = eval_with_progress(&input, &params, &pipeline::EvalExtras::default(), &kn)?;
    print!("{}", report.table());
    let json = out.join("eval.json");
    crate::report::write_json(&json, &report)?;
    eprintln!("    full figures in {}", json.display());
    let last = report
        .splits
        .iter()
        .filter_map(|s| s.forward.as_ref())
        .filter_map(|f| f.origins.last())
        .next_back()
        .ok_or_else(|| PipelineError::Input {
            file: input.display().to_string(),
            reason: "the forward split placed no origin".into(),
        })?;

    let model = out.join("model.json");
    eprintln!(
        "2/3 training the default model on the incidents that ended before {} (the last origin)",
        last.origin
    );
    let pb = spinner("training gbdt");
    let trained = pipeline::train_file_before(
        &input,
        &model,
        &TrainParams::default(),
        &kn,
        Some(last.origin_unix),
    );
    pb.finish_and_clear();
    let trained = trained?;
    eprint_report(&trained.report, Some(&trained.rejects));
    eprintln!("    model written to {}", model.display());

    eprintln!(
        "3/3 the hunter's queue from {} on, scored by that model (what a hunter would have \
         seen): the 3 tenants with the most incidents at priority 50 or above, 5 incidents each",
        last.origin
    );
    let loaded = pipeline::load_unlabelled(&input)?;
    let scored = pipeline::score_loaded(&trained.artifact, loaded, 3, &kn)?;
    let later: Vec<crate::rank::ScoredIncident> = scored
        .incidents
        .into_iter()
        .filter(|s| s.first_seen >= last.origin_unix)
        .collect();
    let mut sizes: std::collections::BTreeMap<TenantId, usize> = Default::default();
    for s in later.iter().filter(|s| s.priority >= 50) {
        *sizes.entry(s.key.tenant).or_default() += 1;
    }
    let mut by_size: Vec<(TenantId, usize)> = sizes.into_iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (t, _) in by_size.into_iter().take(3) {
        print!("{}", crate::report::queue_table(&later, Some(t), 5));
    }
    eprintln!(
        "({} incidents began from {} on; the model and every reason use only verdicts of \
         incidents that ended before it)",
        later.len(),
        last.origin
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a fixed message and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn error_lines_print_every_cause_not_already_said() {
        let io = Layer("Is a directory (os error 21)", None);
        let parse = Layer("m.json: not a model", Some(Box::new(io)));
        let top = Layer("loading the model", Some(Box::new(parse)));
        assert_eq!(
            error_lines(&top),
            vec![
                "error: loading the model",
                "  caused by: m.json: not a model",
                "  caused by: Is a directory (os error 21)",
            ]
        );
        // a message that embeds its cause is not followed by it again
        let io = Layer("Is a directory (os error 21)", None);
        let embeds = Layer("m.json: Is a directory (os error 21)", Some(Box::new(io)));
        assert_eq!(
            error_lines(&embeds),
            vec!["error: m.json: Is a directory (os error 21)"]
        );
    }
}
