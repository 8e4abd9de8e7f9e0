//! Peer models (LightGBM, XGBoost, …) on exactly the folds threatrank is evaluated on.
//!
//! The contract with `benches/peers/guide.py` (Python, run through `benches/peers/run`, which
//! creates its pinned virtual environment):
//!
//! 1. threatrank writes `DIR/peers/folds.csv`, header `split,fold,role,OrgId,IncidentId`: for
//!    every evaluated fold of every split, one line per labelled incident on a side of it,
//!    `split` = `forward`, `incident-disjoint` or `tenant-disjoint` ([`SplitKind::name`]),
//!    `fold` = the 0-based fold (in plan order: for the forward split, origins in time order),
//!    `role` = `train` or `test`. For fold `f` of a split, a peer trains on exactly the
//!    incidents listed `train` for `(split, f)` (and fits every encoding or count on them
//!    only) and predicts the ones listed `test`. The lists are explicit because the sides do
//!    not cover the input: a forward fold leaves out incidents that began before its origin
//!    but ended after it, and those that began after its window. Every incident is `test` in at
//!    most one fold of a split, so the held-out incidents of a split are the pooled `test`
//!    lines. The folds are [`CvPlan`]'s, the same assignment `train::cv::run` evaluates.
//! 2. threatrank runs `DIR_PEERS/run SCRIPT --input FILE --folds DIR/peers/folds.csv --out
//!    DIR/peers/pred.csv --json DIR/peers/meta.json`, the child's stdout and stderr going to
//!    `DIR/peers/log.txt`.
//! 3. The script writes `pred.csv`, header `split,model,OrgId,IncidentId,p_tp,p_bp,p_fp`, one
//!    line per (split, model, held-out incident), and optionally `meta.json` (versions,
//!    parameters, timings; embedded as is in `report.json`).
//!
//! `pred.csv` is read strictly ([`read_predictions`]): exact header; known split; model names
//! of `[A-Za-z0-9_.-]`; integer ids of an incident held out in that split; probabilities finite,
//! in `[0, 1]`, summing to 1 ± 0.001; no duplicate; every held-out incident of a (split, model)
//! present. Errors name the file, line and field. None of these failures stops the report:
//! it says `peers not run: <reason>` and still completes (a malformed `pred.csv` is a bug in
//! the script, but the CV of our models has cost minutes and stays valid). `run` exiting 3
//! means Python (or its venv module) is missing.
//!
//! The peers' metrics and curves are then computed by the same code as ours
//! ([`HeldOut::metrics`], `bench::model_figures`; predicted grade = argmax).

use super::PeersParams;
use crate::domain::{IncidentId, IncidentKey, TenantId};
use crate::models::N_CLASSES;
use crate::train::cv::{CvPlan, HeldOut, SplitKind};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Header of `folds.csv`.
pub const FOLDS_HEADER: [&str; 5] = ["split", "fold", "role", "OrgId", "IncidentId"];
/// Header of `pred.csv`.
pub const PRED_HEADER: [&str; 7] = [
    "split",
    "model",
    "OrgId",
    "IncidentId",
    "p_tp",
    "p_bp",
    "p_fp",
];
/// Largest accepted `|p_tp + p_bp + p_fp − 1|`.
pub const SUM_TOLERANCE: f64 = 1e-3;
/// Exit status of `benches/peers/run` when Python or its venv module is missing.
pub const EXIT_NO_PYTHON: i32 = 3;

/// Why the peers did not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeersError {
    /// A file of the exchange could not be written or read.
    #[error("{file}: {reason}")]
    Io {
        /// path
        file: String,
        /// cause
        reason: String,
    },
    /// The `run` script could not be started.
    #[error("cannot start {program}: {reason}")]
    Spawn {
        /// the script
        program: String,
        /// cause
        reason: String,
    },
    /// `run` exited 3: no Python, or no venv module.
    #[error("Python missing: {program} exited {EXIT_NO_PYTHON}{detail}")]
    NoPython {
        /// the script
        program: String,
        /// `: ` and the last line of its output, or empty
        detail: String,
    },
    /// The script failed.
    #[error("{program} {script} {status}; see {log}{detail}")]
    Failed {
        /// the run script
        program: String,
        /// the peer script
        script: String,
        /// `exited with status N` or `was killed by a signal`
        status: String,
        /// the log file
        log: String,
        /// `: ` and the last line of its output, or empty
        detail: String,
    },
    /// The script succeeded but wrote no predictions.
    #[error("{program} exited 0 but wrote no {file}")]
    NoOutput {
        /// the run script
        program: String,
        /// the missing file
        file: String,
    },
    /// A line of `pred.csv` is malformed.
    #[error("{file}: line {line}, field {field}: {reason}")]
    Parse {
        /// path
        file: String,
        /// 1-based line
        line: u64,
        /// column name (or `record`)
        field: String,
        /// what is wrong
        reason: String,
    },
    /// `pred.csv` lacks predictions.
    #[error("{file}: {reason}")]
    Incomplete {
        /// path
        file: String,
        /// what is missing
        reason: String,
    },
}

/// Paths and arguments of one peers run.
#[derive(Debug, Clone, PartialEq)]
pub struct PeersRun {
    /// the `run` script
    pub program: PathBuf,
    /// the peer script it runs
    pub script: String,
    /// the input file
    pub input: PathBuf,
    /// `DIR/peers`
    pub dir: PathBuf,
    /// `DIR/peers/folds.csv`
    pub folds: PathBuf,
    /// `DIR/peers/pred.csv`
    pub pred: PathBuf,
    /// `DIR/peers/meta.json`
    pub meta: PathBuf,
    /// `DIR/peers/log.txt`
    pub log: PathBuf,
}

impl PeersRun {
    /// The run for report folder `out`.
    pub fn new(params: &PeersParams, input: &Path, out: &Path) -> PeersRun {
        let mut program = params.dir.join("run");
        if program.parent().is_none_or(|p| p.as_os_str().is_empty()) {
            // a bare `run` would be looked up on PATH
            program = Path::new(".").join(program);
        }
        let dir = out.join("peers");
        PeersRun {
            program,
            script: params.script.clone(),
            input: input.to_path_buf(),
            folds: dir.join("folds.csv"),
            pred: dir.join("pred.csv"),
            meta: dir.join("meta.json"),
            log: dir.join("log.txt"),
            dir,
        }
    }

    /// The command line, for the report and the progress line.
    pub fn command_line(&self) -> String {
        format!(
            "{} {} --input {} --folds {} --out {} --json {}",
            self.program.display(),
            self.script,
            self.input.display(),
            self.folds.display(),
            self.pred.display(),
            self.meta.display()
        )
    }

    /// The exchange files that exist now.
    pub fn files_present(&self) -> Vec<PathBuf> {
        [&self.folds, &self.pred, &self.meta, &self.log]
            .into_iter()
            .filter(|p| p.is_file())
            .cloned()
            .collect()
    }
}

/// The peers' held-out predictions: `(split, label, predictions)` with label
/// `MODEL (peer)`, and the script's `meta.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerPredictions {
    /// per split and model, in held-out order ([`CvPlan::held`])
    pub models: Vec<(SplitKind, String, HeldOut)>,
    /// `meta.json`, when present and valid JSON
    pub meta: Option<serde_json::Value>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> PeersError {
    PeersError::Io {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `folds.csv` from the plan (split, fold, then the `train` lines and the `test`
/// lines, each in labelled-incident order); returns the lines written (header excluded).
pub fn write_folds(path: &Path, plan: &CvPlan) -> Result<usize, PeersError> {
    let mut text = FOLDS_HEADER.join(",");
    text.push('\n');
    let mut n = 0;
    for (kind, folds) in &plan.splits {
        for (f, fold) in folds.iter().enumerate() {
            for (role, side) in [("train", &fold.train), ("test", &fold.test)] {
                for &j in side {
                    let k = plan.keys[j];
                    let _ = writeln!(
                        text,
                        "{},{f},{role},{},{}",
                        kind.name(),
                        k.tenant.0,
                        k.incident.0
                    );
                    n += 1;
                }
            }
        }
    }
    std::fs::write(path, text).map_err(|e| io_err(path, e))?;
    Ok(n)
}

/// Last non-empty line of the log (at most 300 characters), as `: line`, or empty.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!(": {}", l.trim().chars().take(300).collect::<String>()),
        None => String::new(),
    }
}

/// Writes the folds, runs the peer script and reads its predictions.
pub fn run_and_read(run: &PeersRun, plan: &CvPlan) -> Result<PeerPredictions, PeersError> {
    std::fs::create_dir_all(&run.dir).map_err(|e| io_err(&run.dir, e))?;
    for stale in [&run.pred, &run.meta] {
        if stale.exists() {
            std::fs::remove_file(stale).map_err(|e| io_err(stale, e))?;
        }
    }
    write_folds(&run.folds, plan)?;
    let log = std::fs::File::create(&run.log).map_err(|e| io_err(&run.log, e))?;
    let log_err = log.try_clone().map_err(|e| io_err(&run.log, e))?;
    let status = Command::new(&run.program)
        .arg(&run.script)
        .arg("--input")
        .arg(&run.input)
        .arg("--folds")
        .arg(&run.folds)
        .arg("--out")
        .arg(&run.pred)
        .arg("--json")
        .arg(&run.meta)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| PeersError::Spawn {
            program: run.program.display().to_string(),
            reason: e.to_string(),
        })?;
    let program = run.program.display().to_string();
    if status.code() == Some(EXIT_NO_PYTHON) {
        return Err(PeersError::NoPython {
            program,
            detail: log_tail(&run.log),
        });
    }
    if !status.success() {
        return Err(PeersError::Failed {
            program,
            script: run.script.clone(),
            status: match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".into(),
            },
            log: run.log.display().to_string(),
            detail: log_tail(&run.log),
        });
    }
    if !run.pred.is_file() {
        return Err(PeersError::NoOutput {
            program,
            file: run.pred.display().to_string(),
        });
    }
    let models = read_predictions(&run.pred, plan)?;
    let meta = std::fs::read_to_string(&run.meta)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    Ok(PeerPredictions { models, meta })
}

fn valid_model_name(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 64
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Reads `pred.csv` strictly (see the module docs) into held-out predictions per split and
/// model, in held-out order; labels are `MODEL (peer)`; splits in plan order, models by name.
pub fn read_predictions(
    path: &Path,
    plan: &CvPlan,
) -> Result<Vec<(SplitKind, String, HeldOut)>, PeersError> {
    let file = path.display().to_string();
    let parse = |line: u64, field: &str, reason: String| PeersError::Parse {
        file: file.clone(),
        line,
        field: field.to_string(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| io_err(path, e))?;
    // (split index, key) → position in that split's held-out list
    let held: Vec<Vec<(usize, usize)>> = (0..plan.splits.len()).map(|s| plan.held(s)).collect();
    let mut position: BTreeMap<(usize, IncidentKey), usize> = BTreeMap::new();
    for (s, h) in held.iter().enumerate() {
        for (pos, &(j, _)) in h.iter().enumerate() {
            position.insert((s, plan.keys[j]), pos);
        }
    }
    // (split index, model) → per held-out position: (line, probabilities)
    type Slots = Vec<Option<(u64, [f32; N_CLASSES])>>;
    let mut got: BTreeMap<(usize, String), Slots> = BTreeMap::new();
    let mut record = csv::StringRecord::new();
    let mut header_seen = false;
    loop {
        let more = reader.read_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            parse(line, "record", e.to_string())
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        if !header_seen {
            header_seen = true;
            let fields: Vec<&str> = record.iter().collect();
            if fields != PRED_HEADER {
                return Err(parse(
                    line,
                    "header",
                    format!(
                        "expected {:?}, got {:?}",
                        PRED_HEADER.join(","),
                        fields.join(",")
                    ),
                ));
            }
            continue;
        }
        if record.len() != PRED_HEADER.len() {
            return Err(parse(
                line,
                "record",
                format!("{} fields, expected {}", record.len(), PRED_HEADER.len()),
            ));
        }
        let split_name = &record[0];
        let s = plan
            .splits
            .iter()
            .position(|(k, _)| k.name() == split_name)
            .ok_or_else(|| {
                let names: Vec<&str> = plan.splits.iter().map(|(k, _)| k.name()).collect();
                parse(
                    line,
                    "split",
                    format!("{split_name:?} is not one of {}", names.join(", ")),
                )
            })?;
        let model = &record[1];
        if !valid_model_name(model) {
            return Err(parse(
                line,
                "model",
                format!("{model:?} is not a name of 1 to 64 letters, digits, '_', '.', '-'"),
            ));
        }
        let id = |c: usize| -> Result<u64, PeersError> {
            record[c].trim().parse::<u64>().map_err(|e| {
                parse(
                    line,
                    PRED_HEADER[c],
                    format!("{:?} is not an id: {e}", &record[c]),
                )
            })
        };
        let key = IncidentKey {
            tenant: TenantId(id(2)?),
            incident: IncidentId(id(3)?),
        };
        let pos = *position.get(&(s, key)).ok_or_else(|| {
            parse(
                line,
                "IncidentId",
                format!(
                    "OrgId {} IncidentId {} is not held out in {split_name} (see folds.csv)",
                    key.tenant.0, key.incident.0
                ),
            )
        })?;
        let mut p = [0f32; N_CLASSES];
        for (c, v) in p.iter_mut().enumerate() {
            let col = 4 + c;
            let x: f64 = record[col].trim().parse().map_err(|e| {
                parse(
                    line,
                    PRED_HEADER[col],
                    format!("{:?} is not a number: {e}", &record[col]),
                )
            })?;
            if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
                return Err(parse(
                    line,
                    PRED_HEADER[col],
                    format!("{x} is not a probability in [0, 1]"),
                ));
            }
            *v = x as f32;
        }
        let sum: f64 = p.iter().map(|&x| f64::from(x)).sum();
        if (sum - 1.0).abs() > SUM_TOLERANCE {
            return Err(parse(
                line,
                "p_tp,p_bp,p_fp",
                format!("probabilities sum to {sum}, not 1 (± {SUM_TOLERANCE})"),
            ));
        }
        let slots = got
            .entry((s, model.to_string()))
            .or_insert_with(|| vec![None; held[s].len()]);
        if let Some((first, _)) = slots[pos] {
            return Err(parse(
                line,
                "IncidentId",
                format!(
                    "second prediction of {model} for OrgId {} IncidentId {} in {split_name} (first on line {first})",
                    key.tenant.0, key.incident.0
                ),
            ));
        }
        slots[pos] = Some((line, p));
    }
    if got.is_empty() {
        return Err(PeersError::Incomplete {
            file,
            reason: "no prediction line".into(),
        });
    }
    let mut out = Vec::new();
    for ((s, model), slots) in got {
        let (kind, _) = plan.splits[s];
        let missing: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_none()).collect();
        if let Some(&first) = missing.first() {
            let k = plan.keys[held[s][first].0];
            return Err(PeersError::Incomplete {
                file,
                reason: format!(
                    "{model} has no prediction for {} of the {} incidents held out in {} (first: OrgId {} IncidentId {})",
                    missing.len(),
                    slots.len(),
                    kind.name(),
                    k.tenant.0,
                    k.incident.0
                ),
            });
        }
        let idx: Vec<usize> = held[s].iter().map(|&(j, _)| j).collect();
        let probs: Vec<f32> = slots
            .iter()
            .flat_map(|x| x.map_or([0.0; N_CLASSES], |(_, p)| p))
            .collect();
        let h = HeldOut {
            keys: idx.iter().map(|&j| plan.keys[j]).collect(),
            y: idx.iter().map(|&j| plan.y[j]).collect(),
            weights: idx.iter().map(|&j| plan.weights[j]).collect(),
            grades: super::argmax_grades(&probs),
            probs,
            family_importance: Vec::new(),
        };
        out.push((kind, format!("{model} (peer)"), h));
    }
    // plan order of splits (BTreeMap gave split index order already), models by name
    Ok(out)
}
