//! Command-line interface: argument types and the commands, as thin glue over `pipeline`.
//!
//! The binary `src/bin/threatrank.rs` only parses and maps errors to exit codes. Messages go to
//! stderr, results to stdout or files.

use crate::correlate::CorrelateParams;
use crate::domain::TenantId;
use crate::models::Algorithm;
use crate::pipeline::{self, PipelineError};
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

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on graded incidents and write a self-contained artifact (JSON).
    ///
    /// The artifact is gzip-compressed when MODEL ends in .gz. Rejected input rows are listed
    /// in MODEL.rejects.csv. The default model is made by:
    ///   threatrank train --input datasets/guide/guide_sample.csv --model models/default.json.gz
    Train {
        /// GUIDE CSV or native JSONL with grades (IncidentGrade / grade).
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
    },
    /// Score every input row: one output row per input row, in input order.
    ///
    /// Never reads the label column. Rejected rows keep their place with status=rejected and
    /// the reason; they are also listed in OUTPUT.rejects.csv. Output columns:
    ///
    /// Id,OrgId,IncidentId,AlertId,predicted_grade,p_true_positive,p_benign_positive,p_false_positive,priority,status,top_reason,error,grade_set,certainty
    Score {
        /// Model artifact from `threatrank train`.
        #[arg(long)]
        model: PathBuf,
        /// GUIDE CSV or native JSONL to score.
        #[arg(long)]
        input: PathBuf,
        /// Score CSV to write.
        #[arg(long)]
        output: PathBuf,
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
    },
    /// Grouped cross-validation (incident-disjoint and tenant-disjoint) of every model.
    ///
    /// Prints a table and writes JSON (default eval.json). Macro-F1 is reported over evidence
    /// rows (GUIDE's metric) and over incidents.
    Eval {
        /// Graded GUIDE CSV or native JSONL.
        #[arg(long)]
        input: PathBuf,
        /// Outer folds.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Fold seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Evaluate only this learner (default: all, plus the lookup baseline).
        #[arg(long, value_parser = parse_algorithm)]
        algorithm: Option<Algorithm>,
        /// JSON report path.
        #[arg(long, default_value = "eval.json")]
        json: PathBuf,
        /// Also simulate daily online updates (time-ordered, past-only): a frozen model
        /// against one that folds in each day's verdicts in place.
        #[arg(long)]
        online: bool,
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
    },
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
    /// Train on the shipped GUIDE sample, evaluate, and print the top of the queue.
    Demo {
        /// Shipped sample (default: datasets/guide/guide_sample.csv).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output folder for the model, scores and eval JSON.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
    },
}

fn parse_objective(s: &str) -> Result<crate::train::tune::TuneObjective, String> {
    crate::train::tune::TuneObjective::from_name(s)
        .ok_or_else(|| format!("unknown objective {s:?}; expected incident, tenant or both"))
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

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<(), PipelineError> {
    match cli.command {
        Command::Train {
            input,
            model,
            algorithm,
            seed,
        } => {
            let pb = spinner(&format!(
                "training {} on {}",
                algorithm.name(),
                input.display()
            ));
            let params = TrainParams::default().algorithm(algorithm).seed(seed);
            let out = pipeline::train_file(&input, &model, &params);
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
        } => {
            let pb = spinner(&format!("scoring {}", input.display()));
            let out = pipeline::score_file(&model, &input, &output);
            pb.finish_and_clear();
            let out = out?;
            eprint_report(&out.report, Some(&out.rejects));
            eprintln!(
                "scored {} incidents; wrote {} rows to {}",
                out.incidents,
                out.rows,
                output.display()
            );
            Ok(())
        }
        Command::Queue {
            model,
            input,
            tenant,
            top,
            reasons,
            review,
        } => {
            let (scored, text) =
                pipeline::queue_file(&model, &input, tenant.map(TenantId), top, reasons, review)?;
            eprint_report(&scored.loaded.report, None);
            print!("{text}");
            Ok(())
        }
        Command::Eval {
            input,
            folds,
            seed,
            algorithm,
            json,
            online,
        } => {
            let mut params = CvParams {
                folds,
                seed,
                ..CvParams::default()
            };
            if let Some(a) = algorithm {
                params.algorithms = vec![a];
            }
            let sim = online.then(crate::train::online::OnlineSimParams::default);
            let report = eval_with_progress(&input, &params, sim.as_ref())?;
            print!("{}", report.table());
            crate::report::write_json(&json, &report)?;
            eprintln!("wrote {}", json.display());
            Ok(())
        }
        Command::Tune {
            input,
            model,
            trials,
            folds,
            objective,
            seed,
        } => {
            let tune = crate::train::tune::TuneParams {
                trials,
                folds,
                seed,
                objective,
            };
            let params = TrainParams::default().seed(seed);
            let out = with_progress_bar(trials as u64 + 1, |progress| {
                pipeline::tune_file(&input, &model, &tune, &params, progress)
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
        Command::Demo { input, out } => demo(input, &out),
    }
}

fn eval_with_progress(
    input: &Path,
    params: &CvParams,
    online: Option<&crate::train::online::OnlineSimParams>,
) -> Result<crate::train::cv::CvReport, PipelineError> {
    let folds = params
        .folds_to_run
        .unwrap_or(params.folds)
        .min(params.folds);
    let per_split = params.algorithms.len() * folds;
    with_progress_bar((per_split * params.splits.len()) as u64, |progress| {
        pipeline::eval_file(input, params, online, progress)
    })
}

/// Runs `job` with a progress bar of `len` steps on stderr; each progress message is a step.
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
        reason: e.to_string(),
    })?;
    let model = out.join("model.json");
    eprintln!("1/3 training the default model on {}", input.display());
    let pb = spinner("training gbdt");
    let trained = pipeline::train_file(&input, &model, &TrainParams::default());
    pb.finish_and_clear();
    let trained = trained?;
    eprint_report(&trained.report, Some(&trained.rejects));
    eprintln!("    model written to {}", model.display());

    eprintln!(
        "2/3 grouped holdout (1 of 5 folds), incident-disjoint and tenant-disjoint: the default \
         model against the lookup baseline (`threatrank eval` runs all folds and models)"
    );
    let params = CvParams {
        algorithms: vec![crate::models::Algorithm::Gbdt],
        splits: vec![SplitKind::IncidentDisjoint, SplitKind::TenantDisjoint],
        folds_to_run: Some(1),
        ..CvParams::default()
    };
    let report = eval_with_progress(&input, &params, None)?;
    print!("{}", report.table());
    let json = out.join("eval.json");
    crate::report::write_json(&json, &report)?;
    eprintln!("    full figures in {}", json.display());

    eprintln!(
        "3/3 the hunter's queue: the 3 tenants with the most incidents at priority 50 or above, \
         5 incidents each"
    );
    let loaded = pipeline::load_unlabelled(&input)?;
    let scored = pipeline::score_loaded(&trained.artifact, loaded, 3)?;
    let mut sizes: std::collections::BTreeMap<TenantId, usize> = Default::default();
    for s in scored.incidents.iter().filter(|s| s.priority >= 50) {
        *sizes.entry(s.key.tenant).or_default() += 1;
    }
    let mut by_size: Vec<(TenantId, usize)> = sizes.into_iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (t, _) in by_size.into_iter().take(3) {
        print!(
            "{}",
            crate::report::queue_table(&scored.incidents, Some(t), 5)
        );
    }
    eprintln!("(scored the training sample itself: in-sample, for illustration; see step 2 for honest figures)");
    Ok(())
}
