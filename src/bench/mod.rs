//! Benchmark report (`threatrank report`): what users tune the engine from.
//!
//! Sits at the end of the pipeline beside `report`: it runs the grouped cross-validation of
//! `train::cv` (incident- and tenant-disjoint, every model plus the lookup baseline) keeping
//! the held-out predictions, optionally has peer models (LightGBM / XGBoost, `benches/peers`)
//! predict the very same folds ([`peers`]), and turns all predictions into figures with the
//! same Rust code for every model:
//!
//! ```text
//! CvPlan ──► cv::run (keep_predictions) ──► HeldOut per model ─┐
//!    └─────► peers/folds.csv ─► peers/run guide.py ─► pred.csv ─┴► figures ─► report.json
//!                                                                        ├──► report.md + plots/*.svg
//!                                                                        └──► report.html (inline SVG)
//! ```
//!
//! * [`BenchReport`] is everything written to `report.json` (versioned by [`FORMAT`], stable
//!   field names for notebooks);
//! * [`plot`] draws the SVG charts by hand; `render` lays out the same content as Markdown and
//!   as one self-contained HTML page;
//! * [`ScaleReport`] is the optional end-to-end scale section: [`run`] leaves it `None`; a
//!   scale run reads `report.json` back into a [`BenchReport`], sets it and calls
//!   [`write_report`].
//!
//! Output is deterministic except the timings in `meta`: same input, parameters and seed give
//! byte-identical plots.

pub mod peers;
pub mod plot;
mod render;
pub mod scale;

use crate::correlate::Correlated;
use crate::domain::Evidence;
use crate::eval::{self, EvalError};
use crate::models::N_CLASSES;
use crate::signals::Knowledge;
use crate::train::coldstart::{self, ColdStartParams};
use crate::train::cv::{
    self, CalibrationCv, CvMetrics, CvParams, CvPlan, CvReport, HeldOut, SplitKind,
};
use crate::train::TrainError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Version of the `report.json` layout; bumped when a field changes meaning or goes away.
pub const FORMAT: u32 = 1;
/// Deepest queue position of the precision@k / recall@k curves (k = 1..=this).
pub const QUEUE_DEPTH: usize = 50;
/// TP recall targets of the workload-reduction table.
pub const WORKLOAD_TARGETS: [f64; 3] = [0.90, 0.95, 0.99];
/// Smallest change in recall or precision kept when thinning a PR curve for the report.
pub const PR_CURVE_RESOLUTION: f64 = 0.002;

/// Errors of the benchmark report (peer failures are not errors: they end up in
/// [`PeersSection::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A parameter is out of range.
    #[error("invalid report parameter `{name}`: {reason}")]
    Param {
        /// name
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// Could not write an output file.
    #[error("{file}: cannot write: {source}")]
    Write {
        /// path
        file: String,
        /// cause (an I/O or JSON error)
        #[source]
        source: crate::BoxError,
    },
    /// Cross-validation failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A metric failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// Where the peer models come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeersParams {
    /// Folder holding the `run` script (it runs `script` in its pinned Python venv). Default
    /// `benches/peers`.
    pub dir: PathBuf,
    /// Script `run` executes. Default `guide.py`.
    pub script: String,
}

impl Default for PeersParams {
    fn default() -> Self {
        PeersParams {
            dir: PathBuf::from("benches/peers"),
            script: "guide.py".into(),
        }
    }
}

/// Parameters of the benchmark report (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportParams {
    /// Cross-validation: folds, folds run, seed, algorithms, splits, training recipe. Default
    /// [`CvParams::default`] (`keep_predictions` is switched on by [`ReportParams::check`]).
    pub cv: CvParams,
    /// Also run the peer models. Default `None` (not run).
    pub peers: Option<PeersParams>,
    /// The command line recorded in `report.json`. Default `threatrank report`.
    pub command: String,
    /// The cold-start curve of the default learner, forward in time
    /// ([`crate::train::coldstart`]), measured when the forward split is evaluated. Default
    /// [`ColdStartParams::default`].
    pub cold_start: Option<ColdStartParams>,
}

impl Default for ReportParams {
    fn default() -> Self {
        ReportParams {
            cv: CvParams::default(),
            peers: None,
            command: "threatrank report".into(),
            cold_start: Some(ColdStartParams::default()),
        }
    }
}

impl ReportParams {
    /// Sets [`ReportParams::cv`] (default [`CvParams::default`]).
    pub fn cv(mut self, cv: CvParams) -> Self {
        self.cv = cv;
        self
    }
    /// Sets [`ReportParams::peers`] (default `None`).
    pub fn peers(mut self, peers: Option<PeersParams>) -> Self {
        self.peers = peers;
        self
    }
    /// Sets [`ReportParams::cold_start`] (default [`ColdStartParams::default`]).
    pub fn cold_start(mut self, c: Option<ColdStartParams>) -> Self {
        self.cold_start = c;
        self
    }
    /// Sets [`ReportParams::command`] (default `threatrank report`).
    pub fn command(mut self, command: &str) -> Self {
        self.command = command.to_string();
        self
    }

    /// Checks folds (≥ 2; folds to run in `1..=folds`), that something is evaluated, split
    /// kinds without repeats, the forward split's origins and test share, and the training
    /// recipe.
    pub fn check(&self) -> Result<ReportValidParams, BenchError> {
        let c = &self.cv;
        if c.folds < 2 {
            return Err(BenchError::Param {
                name: "folds",
                reason: format!("{} (need at least 2)", c.folds),
            });
        }
        if let Some(n) = c.folds_to_run {
            if n == 0 || n > c.folds {
                return Err(BenchError::Param {
                    name: "folds_to_run",
                    reason: format!("{n} (must be 1..={})", c.folds),
                });
            }
        }
        if c.algorithms.is_empty() && !c.baseline {
            return Err(BenchError::Param {
                name: "algorithms",
                reason: "no algorithm and no baseline: nothing to evaluate".into(),
            });
        }
        let mut seen = Vec::new();
        for (i, a) in c.algorithms.iter().enumerate() {
            if c.algorithms[..i].contains(a) {
                return Err(BenchError::Param {
                    name: "algorithms",
                    reason: format!("{} listed twice", a.name()),
                });
            }
        }
        if c.splits.is_empty() {
            return Err(BenchError::Param {
                name: "splits",
                reason: "no split kind".into(),
            });
        }
        for s in &c.splits {
            if seen.contains(s) {
                return Err(BenchError::Param {
                    name: "splits",
                    reason: format!("{} listed twice", s.name()),
                });
            }
            seen.push(*s);
        }
        c.check_forward()?;
        c.train.check()?;
        if let Some(cs) = &self.cold_start {
            cs.check()?;
        }
        if let Some(p) = &self.peers {
            if p.script.is_empty() {
                return Err(BenchError::Param {
                    name: "peers.script",
                    reason: "empty".into(),
                });
            }
        }
        Ok(ReportValidParams {
            cv: CvParams {
                keep_predictions: true,
                ..c.clone()
            },
            peers: self.peers.clone(),
            command: self.command.clone(),
            cold_start: self.cold_start.clone(),
        })
    }
}

/// Checked [`ReportParams`].
#[derive(Debug, Clone)]
pub struct ReportValidParams {
    cv: CvParams,
    peers: Option<PeersParams>,
    command: String,
    cold_start: Option<ColdStartParams>,
}

/// One row of the optional scale section: one system at one input size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRow {
    /// system measured (`threatrank`, `lightgbm (peer)`, …); one line per system in the plots
    pub system: String,
    /// input rows
    pub rows: u64,
    /// wall seconds end to end
    pub seconds: f64,
    /// peak resident memory, when measured
    pub peak_rss_bytes: Option<u64>,
    /// free text (what was timed, threads, …)
    pub note: String,
}

/// The end-to-end scale section: seconds and peak memory against input rows, per system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleReport {
    /// measurements
    pub rows: Vec<ScaleRow>,
    /// the machine they were taken on, in words
    pub machine: String,
}

/// The input the report was computed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    /// file name (no folder)
    pub file: String,
    /// SHA-256 of the file bytes (hex)
    pub sha256: String,
    /// records read
    pub records: u64,
    /// records accepted (evidence rows)
    pub accepted: u64,
    /// records rejected
    pub rejected: u64,
    /// incidents (labelled or not)
    pub incidents: usize,
    /// incidents with a grade
    pub labelled_incidents: usize,
    /// distinct tenants among the labelled incidents
    pub tenants: usize,
}

/// Wall time of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// `load`, `cross-validation`, `peers`, `figures`, `write`
    pub stage: String,
    /// wall seconds
    pub seconds: f64,
}

/// The machine the report ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// logical CPUs available to the process
    pub nproc: usize,
    /// `linux`, `macos`, …
    pub os: String,
    /// `x86_64`, `aarch64`, …
    pub arch: String,
}

impl Machine {
    /// This machine.
    pub fn current() -> Machine {
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }
}

/// The run's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// threatrank version
    pub threatrank_version: String,
    /// command line
    pub command: String,
    /// the input
    pub input: InputInfo,
    /// cross-validation parameters (with the training recipe)
    pub params: CvParams,
    /// machine
    pub machine: Machine,
    /// k of the precision@k / recall@k curves run 1..=this
    pub queue_depth: usize,
    /// TP recall targets of the workload table
    pub workload_targets: Vec<f64>,
    /// wall seconds per stage (the only non-deterministic figures of the report)
    pub timings: Vec<StageTime>,
    /// wall seconds of the whole report, loading included
    pub wall_seconds: f64,
}

/// Which kind of model a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// one of ours, trained per fold by `train::fit`
    Trained,
    /// the (tenant, detector) majority lookup
    Baseline,
    /// a peer model predicting the same folds (`benches/peers`)
    Peer,
}

/// Workload at one TP recall target: going down the pooled held-out incidents by P(TP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadPoint {
    /// share of true positives to find
    pub target_recall: f64,
    /// share of incidents reviewed to find them ([`eval::workload_at_recall`])
    pub reviewed: f64,
    /// share of incidents a hunter can skip: `1 − reviewed`
    pub reduction: f64,
}

/// NDCG@10 of one tenant queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantNdcg {
    /// tenant (OrgId)
    pub tenant: u64,
    /// NDCG@10 of its held-out queue ordered by P(TP)
    pub ndcg: f64,
}

/// Mean |contribution| of one feature family to the TP margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyImportance {
    /// family (schema name)
    pub family: String,
    /// mean over held-out incidents of |sum of the family's contributions to the TP margin|,
    /// in the model's raw-score units
    pub mean_abs_contribution: f64,
}

/// Every figure of one model on one split kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFigures {
    /// label: `gbdt`, `lookup-baseline`, `lightgbm (peer)`, …
    pub model: String,
    /// trained, baseline or peer
    pub kind: ModelKind,
    /// pooled held-out metrics (`cv::metrics`, the same code for every kind)
    pub metrics: CvMetrics,
    /// `[recall, precision]` of P(TP) over held-out incidents by decreasing threshold
    /// ([`eval::pr_curve`], thinned to [`PR_CURVE_RESOLUTION`])
    pub pr_curve: Vec<[f64; 2]>,
    /// precision@k per tenant queue, mean over queues holding a TP, k = 1..=queue_depth
    pub precision_at_k: Vec<f64>,
    /// recall@k, same queues
    pub recall_at_k: Vec<f64>,
    /// queues averaged in the two curves above
    pub queues: usize,
    /// workload at TP recall 0.50, 0.51, …, 1.00
    pub workload: Vec<WorkloadPoint>,
    /// NDCG@10 of every tenant queue holding a TP, ascending tenant
    pub tenant_ndcg_at_10: Vec<TenantNdcg>,
    /// per feature family, schema order (trained models only; empty otherwise)
    pub family_importance: Vec<FamilyImportance>,
    /// forward split only: per-origin figures, their mean, tenants with history and new
    /// tenants (the same [`CvPlan::forward_figures`] for every kind)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<cv::ForwardModelCv>,
}

/// Confusion matrix of one model (rows = true grade TP/BP/FP, columns = predicted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionFigure {
    /// the model (best trained model by row macro-F1)
    pub model: String,
    /// incident counts
    pub incidents: [[u64; 3]; 3],
    /// evidence-row counts (each incident weighted by its rows)
    pub rows: [[f64; 3]; 3],
}

/// Figures of one split kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitFigures {
    /// split kind
    pub split: SplitKind,
    /// held-out incidents (every model is scored on all of them)
    pub incidents: usize,
    /// share of true positives among them
    pub tp_share: f64,
    /// trained model with the best row macro-F1
    pub best_model: Option<String>,
    /// its confusion matrix
    pub confusion: Option<ConfusionFigure>,
    /// ours in evaluation order, the lookup baseline, then peers by name
    pub models: Vec<ModelFigures>,
}

/// Did the peers run?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeersStatus {
    /// not requested (`--peers` absent)
    Off,
    /// ran; their rows are in the tables and plots
    Ran,
    /// requested but not run (see `reason`)
    NotRun,
}

/// The peer models' part of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersSection {
    /// off, ran or not-run
    pub status: PeersStatus,
    /// why they did not run (the script's exit, a missing or malformed `pred.csv`, …)
    pub reason: Option<String>,
    /// the command run
    pub command: Option<String>,
    /// peer model labels found (`lightgbm (peer)`, …)
    pub models: Vec<String>,
    /// the script's `meta.json`, when it wrote valid JSON
    pub meta: Option<serde_json::Value>,
}

/// One plot file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlotRef {
    /// path relative to the report folder (`plots/NAME.svg`)
    pub file: String,
    /// title (caption and alt text)
    pub title: String,
}

/// Everything in `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`FORMAT`]
    pub format: u32,
    /// the run
    pub meta: RunMeta,
    /// the cross-validation report, as `threatrank eval` writes it
    pub cv: CvReport,
    /// figures per split kind, every model (ours, baseline, peers)
    pub splits: Vec<SplitFigures>,
    /// the peers
    pub peers: PeersSection,
    /// end-to-end scale runs (`null` until a scale run fills it)
    pub scale: Option<ScaleReport>,
    /// plot files, in report order
    pub plots: Vec<PlotRef>,
}

/// Stage or per-fold progress of [`run`].
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// one cross-validation fold starts (`cv::run`'s messages)
    Fold(&'a str),
    /// a stage starts or ends (worth a line of its own)
    Stage(&'a str),
}

/// The input of [`run`], read and correlated by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// path of the input file (handed to the peers)
    pub path: &'a Path,
    /// what it holds
    pub info: &'a InputInfo,
    /// accepted evidence
    pub evidence: &'a [Evidence],
    /// incidents
    pub corr: &'a Correlated,
    /// seconds spent reading it (the `load` stage)
    pub load_seconds: f64,
}

/// What [`run`] wrote.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// the report (as in `report.json`)
    pub report: BenchReport,
    /// every file written, report files first
    pub files: Vec<PathBuf>,
}

fn seconds(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Runs the cross-validation, the peers (when asked) and writes the report into `out`:
/// `report.json`, `report.md`, `report.html`, `plots/*.svg` (and `peers/` with `--peers`).
pub fn run(
    params: &ReportValidParams,
    input: Input<'_>,
    out: &Path,
    kn: &Knowledge,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Outcome, BenchError> {
    let start = Instant::now();
    let mut timings = vec![StageTime {
        stage: "load".into(),
        seconds: input.load_seconds,
    }];
    create_dir(out)?;
    let t = Instant::now();
    progress(Progress::Stage("cross-validation"));
    let mut report = cv::run(
        &params.cv,
        &input.info.file,
        input.evidence,
        input.corr,
        kn,
        &mut |m| progress(Progress::Fold(m)),
    )?;
    timings.push(StageTime {
        stage: "cross-validation".into(),
        seconds: seconds(t),
    });
    if let Some(c) = params
        .cold_start
        .as_ref()
        .filter(|_| params.cv.splits.contains(&SplitKind::Forward))
    {
        let t = Instant::now();
        progress(Progress::Stage("cold start"));
        report.cold_start =
            coldstart::curve(&params.cv, c, input.evidence, input.corr, kn, &mut |m| {
                progress(Progress::Fold(m))
            })?;
        if report.cold_start.is_none() {
            progress(Progress::Stage(&coldstart::none_reason(c)));
        }
        timings.push(StageTime {
            stage: "cold start".into(),
            seconds: seconds(t),
        });
    }
    let plan = CvPlan::new(&params.cv, input.corr)?;
    let mut peer_models: Vec<(SplitKind, String, HeldOut)> = Vec::new();
    let mut files = Vec::new();
    let peers_section = match &params.peers {
        None => PeersSection {
            status: PeersStatus::Off,
            reason: None,
            command: None,
            models: Vec::new(),
            meta: None,
        },
        Some(p) => {
            let t = Instant::now();
            let run = peers::PeersRun::new(p, input.path, out);
            progress(Progress::Stage(&format!(
                "peers: {} (output in {})",
                run.command_line(),
                run.log.display()
            )));
            let outcome = peers::run_and_read(&run, &plan);
            files.extend(run.files_present());
            timings.push(StageTime {
                stage: "peers".into(),
                seconds: seconds(t),
            });
            let section = match outcome {
                Ok(read) => {
                    let models: Vec<String> = {
                        let mut m: Vec<String> = read
                            .models
                            .iter()
                            .map(|(_, name, _)| name.clone())
                            .collect();
                        m.sort();
                        m.dedup();
                        m
                    };
                    peer_models = read.models;
                    progress(Progress::Stage(&format!(
                        "peers: ran {}",
                        models.join(", ")
                    )));
                    PeersSection {
                        status: PeersStatus::Ran,
                        reason: None,
                        command: Some(run.command_line()),
                        models,
                        meta: read.meta,
                    }
                }
                Err(e) => {
                    progress(Progress::Stage(&format!("peers not run: {e}")));
                    PeersSection {
                        status: PeersStatus::NotRun,
                        reason: Some(e.to_string()),
                        command: Some(run.command_line()),
                        models: Vec::new(),
                        meta: None,
                    }
                }
            };
            section
        }
    };
    if let (Some(p), Some(c), Some(cold)) = (
        &params.peers,
        &params.cold_start,
        report.cold_start.as_mut(),
    ) {
        if let Some(cold_plan) = coldstart::peer_plan(&params.cv, c, input.corr)? {
            let t = Instant::now();
            let run = peers::PeersRun::new(p, input.path, &out.join("cold-start"));
            progress(Progress::Stage(&format!(
                "cold start, peers: {} (output in {})",
                run.command_line(),
                run.log.display()
            )));
            let outcome = peers::run_and_read(&run, &cold_plan);
            files.extend(run.files_present());
            match outcome {
                Ok(read) => {
                    for (_, model, held) in &read.models {
                        cold.peers_at_zero.push(coldstart::PeerPoint {
                            model: model.clone(),
                            metrics: held.metrics()?,
                        });
                    }
                }
                Err(e) => progress(Progress::Stage(&format!("cold start, peers not run: {e}"))),
            }
            timings.push(StageTime {
                stage: "cold start, peers".into(),
                seconds: seconds(t),
            });
        }
    }
    let t = Instant::now();
    progress(Progress::Stage("figures"));
    let splits = figures(&report, &peer_models, &plan)?;
    timings.push(StageTime {
        stage: "figures".into(),
        seconds: seconds(t),
    });
    let mut bench = BenchReport {
        format: FORMAT,
        meta: RunMeta {
            threatrank_version: env!("CARGO_PKG_VERSION").into(),
            command: params.command.clone(),
            input: input.info.clone(),
            params: CvParams {
                keep_predictions: false,
                ..params.cv.clone()
            },
            machine: Machine::current(),
            queue_depth: QUEUE_DEPTH,
            workload_targets: WORKLOAD_TARGETS.to_vec(),
            timings,
            wall_seconds: 0.0,
        },
        cv: report,
        splits,
        peers: peers_section,
        scale: None,
        plots: Vec::new(),
    };
    // everything but the writing itself; write_report adds its own time
    bench.meta.wall_seconds = input.load_seconds + seconds(start);
    progress(Progress::Stage("writing"));
    let mut all = write_report(&mut bench, out)?;
    all.push(write_predictions(out, &bench.cv, &peer_models)?);
    all.extend(files);
    Ok(Outcome {
        report: bench,
        files: all,
    })
}

/// Renders a report into `out`: `plots/*.svg` (stale `.svg` files there removed),
/// `report.md`, `report.html` and `report.json`; sets [`BenchReport::plots`] and the `write`
/// stage of the timings (replacing an earlier one, `wall_seconds` adjusted). Returns the files
/// written, `report.json`, `report.md`, `report.html` first.
///
/// This is also how a scale run adds its section: read `report.json` into a [`BenchReport`],
/// set [`BenchReport::scale`], and call this again.
pub fn write_report(report: &mut BenchReport, out: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let t = Instant::now();
    create_dir(out)?;
    let plots = render::plots(report);
    report.plots = plots.iter().map(|p| p.reference.clone()).collect();
    let plot_dir = out.join("plots");
    create_dir(&plot_dir)?;
    remove_stale_plots(&plot_dir)?;
    let mut written = Vec::new();
    for p in &plots {
        let path = out.join(&p.reference.file);
        write(&path, &p.svg)?;
        written.push(path);
    }
    let md = out.join("report.md");
    let html = out.join("report.html");
    let json = out.join("report.json");
    let meta = &mut report.meta;
    if let Some(i) = meta.timings.iter().position(|s| s.stage == "write") {
        meta.wall_seconds -= meta.timings.remove(i).seconds;
    }
    meta.timings.push(StageTime {
        stage: "write".into(),
        seconds: 0.0,
    });
    let set_write_time = |r: &mut BenchReport, secs: f64| {
        if let Some(w) = r.meta.timings.last_mut() {
            r.meta.wall_seconds += secs - w.seconds;
            w.seconds = secs;
        }
    };
    // the pages show the time up to here; the JSON gets the whole write
    set_write_time(report, seconds(t));
    let blocks = render::blocks(report, &plots);
    write(&md, &render::markdown(&blocks))?;
    write(&html, &render::html(&blocks, &report.meta.input.file))?;
    set_write_time(report, seconds(t));
    let text = serde_json::to_string_pretty(&*report).map_err(|e| BenchError::Write {
        file: json.display().to_string(),
        source: e.into(),
    })?;
    write(&json, &(text + "\n"))?;
    let mut all = vec![json, md, html];
    all.extend(written);
    Ok(all)
}

/// Header of `predictions.csv`.
pub const PREDICTIONS_HEADER: &str =
    "split,model,kind,OrgId,IncidentId,rows,grade,predicted,p_tp,p_bp,p_fp";

/// Writes `DIR/predictions.csv`: every model's held-out prediction of every incident, one line
/// per split, model and incident (ours and the baseline in evaluation order, then peers), for
/// notebooks (per-tenant thresholds and calibration need the incidents, not only the curves).
pub fn write_predictions(
    out: &Path,
    cv: &CvReport,
    peers: &[(SplitKind, String, HeldOut)],
) -> Result<PathBuf, BenchError> {
    use std::fmt::Write as _;
    let path = out.join("predictions.csv");
    let mut text = String::from(PREDICTIONS_HEADER);
    text.push('\n');
    let grade = |c: u8| crate::domain::Grade::from_class_id(c).map_or("", |g| g.name());
    let mut put = |split: SplitKind, model: &str, kind: &str, h: &HeldOut| {
        for (i, k) in h.keys.iter().enumerate() {
            let p = &h.probs[i * 3..i * 3 + 3];
            let _ = writeln!(
                text,
                "{},{},{kind},{},{},{},{},{},{:.6},{:.6},{:.6}",
                split.name(),
                model,
                k.tenant,
                k.incident,
                h.weights[i],
                grade(h.y[i]),
                grade(h.grades[i]),
                p[0],
                p[1],
                p[2]
            );
        }
    };
    for sp in &cv.splits {
        for m in &sp.models {
            if let Some(h) = &m.held_out {
                let kind = if m.model == "lookup-baseline" {
                    "baseline"
                } else {
                    "trained"
                };
                put(sp.split, &m.model, kind, h);
            }
        }
        for (split, name, h) in peers.iter().filter(|(s, _, _)| *s == sp.split) {
            put(*split, name, "peer", h);
        }
    }
    write(&path, &text)?;
    Ok(path)
}

fn create_dir(dir: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::Write {
        file: dir.display().to_string(),
        source: e.into(),
    })
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::Write {
        file: path.display().to_string(),
        source: e.into(),
    })
}

/// Removes `*.svg` left in `plots/` by an earlier report (other models, other splits), so the
/// folder holds exactly this report's plots.
fn remove_stale_plots(dir: &Path) -> Result<(), BenchError> {
    let err = |e: std::io::Error| BenchError::Write {
        file: dir.display().to_string(),
        source: e.into(),
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.extension().is_some_and(|e| e == "svg") && path.is_file() {
            std::fs::remove_file(&path).map_err(err)?;
        }
    }
    Ok(())
}

/// Figures of every split: our models and the baseline from `report` (which must have been
/// run with `keep_predictions`), then the peers of that split by name; `plan` is the plan
/// `report` evaluated (the forward split's per-origin figures of the peers come from it).
pub fn figures(
    report: &CvReport,
    peers: &[(SplitKind, String, HeldOut)],
    plan: &CvPlan,
) -> Result<Vec<SplitFigures>, BenchError> {
    let mut out = Vec::new();
    for sp in &report.splits {
        let mut models = Vec::new();
        let mut first: Option<&HeldOut> = None;
        for m in &sp.models {
            let Some(h) = &m.held_out else {
                return Err(BenchError::Param {
                    name: "cv.keep_predictions",
                    reason: format!("{} on {} kept no predictions", m.model, sp.split.name()),
                });
            };
            first.get_or_insert(h);
            let kind = if m.model == "lookup-baseline" {
                ModelKind::Baseline
            } else {
                ModelKind::Trained
            };
            let mut f = model_figures(&m.model, kind, m.metrics.clone(), h)?;
            f.forward = m.forward.clone();
            models.push(f);
        }
        let mut own: Vec<&(SplitKind, String, HeldOut)> =
            peers.iter().filter(|(k, _, _)| *k == sp.split).collect();
        own.sort_by(|a, b| a.1.cmp(&b.1));
        for (_, name, h) in own {
            let mut f = model_figures(name, ModelKind::Peer, h.metrics()?, h)?;
            if sp.split == SplitKind::Forward {
                f.forward = plan.forward_figures(h)?;
            }
            models.push(f);
        }
        let best = report.best(sp.split).map(|m| m.model.clone());
        let confusion = best
            .as_ref()
            .and_then(|b| sp.models.iter().find(|m| &m.model == b))
            .and_then(|m| m.held_out.as_ref().map(|h| (m.model.clone(), h)))
            .map(|(model, h)| confusion(&model, h))
            .transpose()?;
        let (incidents, tp_share) = first.map_or((0, 0.0), |h| {
            let tp = h.y.iter().filter(|&&c| c == 0).count();
            (h.y.len(), tp as f64 / h.y.len().max(1) as f64)
        });
        out.push(SplitFigures {
            split: sp.split,
            incidents,
            tp_share,
            best_model: best,
            confusion,
            models,
        });
    }
    Ok(out)
}

fn confusion(model: &str, h: &HeldOut) -> Result<ConfusionFigure, BenchError> {
    let by_rows = eval::ConfusionMatrix::from_predictions(&h.y, &h.grades, Some(&h.weights))?;
    let by_inc = eval::ConfusionMatrix::from_predictions(&h.y, &h.grades, None)?;
    Ok(ConfusionFigure {
        model: model.to_string(),
        incidents: by_inc.0.map(|r| r.map(|v| v.round() as u64)),
        rows: by_rows.0,
    })
}

/// Every curve of one model's held-out predictions.
pub fn model_figures(
    model: &str,
    kind: ModelKind,
    metrics: CvMetrics,
    h: &HeldOut,
) -> Result<ModelFigures, BenchError> {
    let p_tp = h.p_tp();
    let is_tp = h.is_tp();
    let tenants = h.tenants();
    let mut precision_at_k = Vec::with_capacity(QUEUE_DEPTH);
    let mut recall_at_k = Vec::with_capacity(QUEUE_DEPTH);
    let mut queues = 0;
    for k in 1..=QUEUE_DEPTH {
        let p = eval::precision_at_k(&tenants, &p_tp, &is_tp, k)?;
        let r = eval::recall_at_k(&tenants, &p_tp, &is_tp, k)?;
        queues = p.n_queues;
        precision_at_k.push(p.mean);
        recall_at_k.push(r.mean);
    }
    let workload = (50..=100)
        .filter_map(|pct| {
            let target = f64::from(pct) / 100.0;
            eval::workload_at_recall(&p_tp, &is_tp, target).map(|reviewed| WorkloadPoint {
                target_recall: target,
                reviewed,
                reduction: 1.0 - reviewed,
            })
        })
        .collect();
    let tenant_ndcg_at_10 = eval::ndcg_at_k_per_queue(&tenants, &p_tp, &is_tp, 10)?
        .into_iter()
        .map(|(tenant, ndcg)| TenantNdcg { tenant, ndcg })
        .collect();
    Ok(ModelFigures {
        model: model.to_string(),
        kind,
        metrics,
        pr_curve: thin(&eval::pr_curve(&p_tp, &is_tp), PR_CURVE_RESOLUTION),
        precision_at_k,
        recall_at_k,
        queues,
        workload,
        tenant_ndcg_at_10,
        family_importance: h
            .family_importance
            .iter()
            .map(|(family, v)| FamilyImportance {
                family: family.clone(),
                mean_abs_contribution: *v,
            })
            .collect(),
        forward: None,
    })
}

/// `(recall, precision)` points of a PR curve, keeping the first and last and every point that
/// moves recall or precision by at least `resolution` from the last one kept.
fn thin(curve: &[(f64, f64, f32)], resolution: f64) -> Vec<[f64; 2]> {
    let mut out: Vec<[f64; 2]> = Vec::new();
    for (i, &(r, p, _)) in curve.iter().enumerate() {
        let keep = match out.last() {
            None => true,
            Some(l) => {
                i + 1 == curve.len()
                    || (r - l[0]).abs() >= resolution
                    || (p - l[1]).abs() >= resolution
            }
        };
        if keep {
            out.push([r, p]);
        }
    }
    out
}

/// Predicted grade of peer probabilities: the argmax (ties to the lower class id).
pub fn argmax_grades(probs: &[f32]) -> Vec<u8> {
    probs
        .chunks_exact(N_CLASSES)
        .map(|p| eval::argmax3(&[p[0], p[1], p[2]]))
        .collect()
}

/// Calibration of a trained model (before/after), from the cross-validation report.
pub(crate) fn calibration_of<'a>(
    report: &'a CvReport,
    split: SplitKind,
    model: &str,
) -> Option<&'a CalibrationCv> {
    report
        .splits
        .iter()
        .find(|s| s.split == split)?
        .models
        .iter()
        .find(|m| m.model == model)?
        .calibration
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_ends_and_resolution() {
        let curve: Vec<(f64, f64, f32)> = (0..=1000)
            .map(|i| (i as f64 / 1000.0, 1.0 - i as f64 / 2000.0, 0.0))
            .collect();
        let t = thin(&curve, 0.01);
        assert_eq!(t.first(), Some(&[0.0, 1.0]));
        assert_eq!(t.last(), Some(&[1.0, 0.5]));
        assert!(t.len() >= 100 && t.len() <= 102, "{}", t.len());
        // every kept point but the forced last one moved recall by the resolution
        for w in t[..t.len() - 1].windows(2) {
            assert!(w[1][0] - w[0][0] >= 0.0099, "{w:?}");
        }
        assert!(thin(&[], 0.01).is_empty());
    }

    #[test]
    fn check_refuses_bad_folds_and_repeats() {
        let bad = |cv: CvParams| ReportParams::default().cv(cv).check().is_err();
        assert!(bad(CvParams {
            folds: 1,
            ..CvParams::default()
        }));
        assert!(bad(CvParams {
            folds_to_run: Some(0),
            ..CvParams::default()
        }));
        assert!(bad(CvParams {
            folds_to_run: Some(6),
            ..CvParams::default()
        }));
        assert!(bad(CvParams {
            splits: vec![SplitKind::TenantDisjoint, SplitKind::TenantDisjoint],
            ..CvParams::default()
        }));
        assert!(bad(CvParams {
            algorithms: vec![],
            baseline: false,
            ..CvParams::default()
        }));
        assert!(bad(CvParams {
            forward_origins: 0,
            ..CvParams::default()
        }));
        for share in [0.0, 1.0, f64::NAN] {
            assert!(bad(CvParams {
                forward_test_share: share,
                ..CvParams::default()
            }));
        }
        let ok = ReportParams::default().check().unwrap();
        assert!(
            ok.cv.keep_predictions,
            "the report always keeps predictions"
        );
    }

    #[test]
    fn argmax_of_peer_probabilities() {
        assert_eq!(
            argmax_grades(&[0.2, 0.5, 0.3, 0.4, 0.4, 0.2, 0.1, 0.1, 0.8]),
            vec![1, 0, 2]
        );
    }
}
