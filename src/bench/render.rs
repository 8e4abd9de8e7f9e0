//! The report's plots and pages: one list of blocks (headings, paragraphs, tables, figures)
//! rendered twice, as Markdown (figures linked as `plots/NAME.svg`) and as one self-contained
//! HTML page (figures inline, CSS inline, no script, nothing fetched), so both say the same.

use super::plot::{
    self, fmt_sig, Axis, BarChart, Heatmap, LineChart, Series, StripGroup, StripPlot, PALETTE,
};
use super::{BenchReport, ModelFigures, ModelKind, PeersStatus, PlotRef, SplitFigures};
use crate::train::cv::{self, CvMetrics, SplitKind};
use std::fmt::Write;

/// One plot: its file reference and SVG bytes.
pub(super) struct Plot {
    pub(super) reference: PlotRef,
    pub(super) svg: String,
}

const GRADES: [&str; 3] = ["TP", "BP", "FP"];
const BASELINE_GREY: &str = "#666666";

/// Colour and dash of a model, the same in every plot: ours by algorithm, the baseline grey
/// and dashed, peers in the warm colours.
fn style(model: &str, kind: ModelKind) -> (String, bool) {
    let c = match (model, kind) {
        (_, ModelKind::Baseline) => return (BASELINE_GREY.into(), true),
        ("gbdt", _) => PALETTE[0],
        ("logistic", _) => PALETTE[1],
        ("forest", _) => PALETTE[2],
        ("lightgbm (peer)", _) => PALETTE[5],
        ("xgboost (peer)", _) => PALETTE[3],
        (_, ModelKind::Trained) => PALETTE[4],
        (_, ModelKind::Peer) => PALETTE[7],
    };
    (c.into(), false)
}

fn series(m: &ModelFigures, points: Vec<(f64, f64)>) -> Series {
    let (color, dashed) = style(&m.model, m.kind);
    Series::new(&m.model, &color, points).dashed(dashed)
}

fn plot(file: String, title: String, svg: String) -> Plot {
    Plot {
        reference: PlotRef {
            file: format!("plots/{file}.svg"),
            title,
        },
        svg,
    }
}

/// Every plot of the report, in report order.
pub(super) fn plots(r: &BenchReport) -> Vec<Plot> {
    let mut out = Vec::new();
    for sp in &r.splits {
        out.extend(split_plots(r, sp));
    }
    if let Some(c) = &r.cv.cold_start {
        out.push(cold_start_plot(c));
    }
    if let Some(scale) = &r.scale {
        out.extend(scale_plots(scale));
    }
    out
}

/// The cold-start curve: macro-F1 (rows, incidents) and TP PR-AUC against verdicts shown.
fn cold_start_plot(c: &crate::train::coldstart::ColdStartReport) -> Plot {
    let line = |f: &dyn Fn(&CvMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        c.points
            .iter()
            .filter_map(|p| f(&p.metrics).map(|y| (p.verdicts as f64, y)))
            .collect()
    };
    let series = vec![
        Series::new(
            "macro-F1 (rows)",
            PALETTE[0],
            line(&|m| Some(m.macro_f1_rows)),
        )
        .markers(true),
        Series::new(
            "macro-F1 (incidents)",
            PALETTE[1],
            line(&|m| Some(m.macro_f1_incidents)),
        )
        .markers(true),
        Series::new("TP PR-AUC", PALETTE[2], line(&|m| m.pr_auc_tp)).markers(true),
    ];
    let mut series = series;
    for peer in &c.peers_at_zero {
        let (color, _) = style(&peer.model, ModelKind::Peer);
        series.push(
            Series::new(
                &format!("{}: macro-F1 (rows) at 0", peer.model),
                &color,
                vec![(0.0, peer.metrics.macro_f1_rows)],
            )
            .markers(true),
        );
    }
    let title = format!(
        "cold start ({}): a held-out tenant's incidents after its first n verdicts",
        c.model
    );
    plot(
        "cold-start".into(),
        title.clone(),
        LineChart {
            title,
            x: Axis::linear("verdicts of the tenant shown (its earliest)"),
            y: Axis::linear("figure").range(0.0, 1.0),
            series,
            diagonal: false,
        }
        .svg(),
    )
}

/// The cold-start section: how it is measured, the table and the plot.
fn cold_start_blocks(b: &mut Vec<Block>, r: &BenchReport, plots: &[Plot]) {
    let Some(c) = &r.cv.cold_start else {
        return;
    };
    b.push(Block::Heading(2, "Cold start".into()));
    b.push(Block::Para(format!(
        "Forward in time, at the forward origins ({}): the tenants with at least {} verdicts \
         that ended before an origin and an incident in its window ({} tenant-origin pairs, {} \
         distinct tenants) are held out of training ({} model(s), each trained without one \
         group of them). Their {} window incidents are scored after n of each tenant's \
         earliest verdicts went through the online path (encoders refitted with them; model \
         and cross-tenant snapshot as trained): the same incidents at every n; n = 0 is a \
         tenant never seen.",
        c.origins.join(", "),
        c.points.last().map_or(0, |p| p.verdicts),
        c.tenants,
        c.distinct_tenants,
        c.models,
        c.incidents
    )));
    let row = |model: &str, n: usize, m: &CvMetrics| {
        vec![
            model.to_string(),
            n.to_string(),
            f3(m.macro_f1_rows),
            f3(m.macro_f1_incidents),
            opt3(m.pr_auc_tp),
        ]
    };
    let mut rows: Vec<Vec<String>> = c
        .points
        .iter()
        .map(|p| row(&c.model, p.verdicts, &p.metrics))
        .collect();
    rows.extend(c.peers_at_zero.iter().map(|p| row(&p.model, 0, &p.metrics)));
    b.push(table(
        &["model", "verdicts shown", "F1 rows", "F1 inc", "TP PR-AUC"],
        1,
        rows,
    ));
    if !c.peers_at_zero.is_empty() {
        b.push(Block::Para(
            "Peers: trained on the same incidents as each group's model, on the same incidents \
             scored; they have no online path, so they are shown at 0 verdicts only."
                .into(),
        ));
    }
    figure(b, plots, "plots/cold-start.svg");
}

fn split_plots(r: &BenchReport, sp: &SplitFigures) -> Vec<Plot> {
    let name = sp.split.name();
    let mut out = Vec::new();
    // 1. precision-recall of TP
    let mut pr: Vec<Series> = sp
        .models
        .iter()
        .map(|m| series(m, m.pr_curve.iter().map(|p| (p[0], p[1])).collect()))
        .collect();
    pr.push(
        Series::new(
            "TP share (random order)",
            "#aaaaaa",
            vec![(0.0, sp.tp_share), (1.0, sp.tp_share)],
        )
        .dashed(true),
    );
    let title = format!("{name}: precision–recall of TP (P(TP), held-out incidents)");
    out.push(plot(
        format!("{name}-pr"),
        title.clone(),
        LineChart {
            title,
            x: Axis::linear("recall of true positives").range(0.0, 1.0),
            y: Axis::linear("precision").range(0.0, 1.0),
            series: pr,
            diagonal: false,
        }
        .svg(),
    ));
    // 2. calibration before / after, per trained model
    for m in sp.models.iter().filter(|m| m.kind == ModelKind::Trained) {
        let Some(c) = super::calibration_of(&r.cv, sp.split, &m.model) else {
            continue;
        };
        let (color, _) = style(&m.model, m.kind);
        let pts = |bins: &[crate::models::calibrate::ReliabilityBin]| {
            bins.iter()
                .map(|b| (b.mean_predicted, b.observed_rate))
                .collect::<Vec<_>>()
        };
        let title = format!(
            "{name}: reliability of P(TP), {} (ECE {} → {})",
            m.model,
            f3(c.ece_tp_raw),
            f3(c.ece_tp_calibrated)
        );
        out.push(plot(
            format!("{name}-calibration-{}", m.model),
            title.clone(),
            LineChart {
                title,
                x: Axis::linear("mean predicted P(TP) in bin").range(0.0, 1.0),
                y: Axis::linear("observed share of true positives").range(0.0, 1.0),
                // "before" on top: with an identity calibration both curves coincide
                series: vec![
                    Series::new(
                        "after calibration",
                        &color,
                        pts(&c.reliability_tp_calibrated),
                    )
                    .markers(true),
                    Series::new("before calibration", "#999999", pts(&c.reliability_tp_raw))
                        .dashed(true)
                        .markers(true),
                ],
                diagonal: true,
            }
            .svg(),
        ));
    }
    // 3. precision@k and recall@k
    for (what, pick) in [
        (
            "precision",
            (|m| &m.precision_at_k) as fn(&ModelFigures) -> &Vec<f64>,
        ),
        ("recall", |m| &m.recall_at_k),
    ] {
        let s: Vec<Series> = sp
            .models
            .iter()
            .map(|m| {
                let v = pick(m);
                series(
                    m,
                    v.iter()
                        .enumerate()
                        .map(|(i, &y)| ((i + 1) as f64, y))
                        .collect(),
                )
            })
            .collect();
        let queues = sp.models.first().map_or(0, |m| m.queues);
        let title =
            format!("{name}: {what}@k by queue depth (mean over {queues} tenant queues with a TP)");
        out.push(plot(
            format!("{name}-{what}-at-k"),
            title.clone(),
            LineChart {
                title,
                x: Axis::linear("queue depth k (incidents reviewed per tenant)")
                    .range(1.0, super::QUEUE_DEPTH as f64),
                y: Axis::linear(&format!("{what}@k")).range(0.0, 1.0),
                series: s,
                diagonal: false,
            }
            .svg(),
        ));
    }
    // 4. workload reduction against target recall
    let mut w: Vec<Series> = sp
        .models
        .iter()
        .map(|m| {
            series(
                m,
                m.workload
                    .iter()
                    .map(|p| (p.target_recall, p.reduction))
                    .collect(),
            )
        })
        .collect();
    w.push(Series::new("random order", "#aaaaaa", vec![(0.5, 0.5), (1.0, 0.0)]).dashed(true));
    w.push(
        Series::new(
            "perfect ranking",
            "#000000",
            vec![(0.5, 1.0 - 0.5 * sp.tp_share), (1.0, 1.0 - sp.tp_share)],
        )
        .dashed(true),
    );
    let title = format!("{name}: workload reduction at fixed TP recall (incidents skipped)");
    out.push(plot(
        format!("{name}-workload"),
        title.clone(),
        LineChart {
            title,
            x: Axis::linear("target recall of true positives").range(0.5, 1.0),
            y: Axis::linear("share of incidents a hunter can skip").range(0.0, 1.0),
            series: w,
            diagonal: false,
        }
        .svg(),
    ));
    // 5. confusion matrix of the best model
    if let Some(c) = &sp.confusion {
        let mut shade = Vec::new();
        let mut labels = Vec::new();
        for row in &c.incidents {
            let total: u64 = row.iter().sum();
            let share = |v: u64| v as f64 / total.max(1) as f64;
            shade.push(row.iter().map(|&v| share(v)).collect());
            labels.push(
                row.iter()
                    .map(|&v| format!("{v} ({:.0}%)", 100.0 * share(v)))
                    .collect(),
            );
        }
        let title = format!(
            "{name}: confusion matrix of {} (incidents; shade = share of the true grade)",
            c.model
        );
        out.push(plot(
            format!("{name}-confusion"),
            title.clone(),
            Heatmap {
                title,
                col_title: "predicted grade".into(),
                row_title: "true grade".into(),
                rows: GRADES.iter().map(|g| g.to_string()).collect(),
                cols: GRADES.iter().map(|g| g.to_string()).collect(),
                shade,
                labels,
            }
            .svg(),
        ));
    }
    // 6. feature-family importance per trained model
    for m in sp
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Trained && !m.family_importance.is_empty())
    {
        let mut bars: Vec<(String, f64)> = m
            .family_importance
            .iter()
            .map(|f| (f.family.clone(), f.mean_abs_contribution))
            .collect();
        bars.sort_by(|a, b| b.1.total_cmp(&a.1));
        let title = format!("{name}: feature families of {} (TP margin)", m.model);
        out.push(plot(
            format!("{name}-families-{}", m.model),
            title.clone(),
            BarChart {
                title,
                axis_title: "mean |contribution| to the TP margin per held-out incident".into(),
                bars,
                color: style(&m.model, m.kind).0,
            }
            .svg(),
        ));
    }
    // 7. per-tenant NDCG@10
    let groups = sp
        .models
        .iter()
        .map(|m| StripGroup {
            name: m.model.clone(),
            color: style(&m.model, m.kind).0,
            values: m.tenant_ndcg_at_10.iter().map(|t| t.ndcg).collect(),
        })
        .collect();
    let title = format!("{name}: NDCG@10 per tenant queue holding a TP (box: quartiles)");
    out.push(plot(
        format!("{name}-tenant-ndcg"),
        title.clone(),
        StripPlot {
            title,
            axis: Axis::linear("NDCG@10 of the tenant's held-out queue by P(TP)").range(0.0, 1.0),
            groups,
        }
        .svg(),
    ));
    out
}

fn scale_plots(scale: &super::ScaleReport) -> Vec<Plot> {
    let mut systems: Vec<&str> = scale.rows.iter().map(|r| r.system.as_str()).collect();
    systems.sort_unstable();
    systems.dedup();
    let lines = |f: &dyn Fn(&super::ScaleRow) -> Option<f64>| -> Vec<Series> {
        systems
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut pts: Vec<(f64, f64)> = scale
                    .rows
                    .iter()
                    .filter(|r| r.system == *s)
                    .filter_map(|r| f(r).map(|y| (r.rows as f64, y)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series::new(s, PALETTE[i % PALETTE.len()], pts).markers(true)
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let mut out = Vec::new();
    let title = "scale: wall seconds against input rows".to_string();
    out.push(plot(
        "scale-seconds".into(),
        title.clone(),
        LineChart {
            title,
            x: Axis::log("input rows"),
            y: Axis::log("wall seconds"),
            series: lines(&|r| Some(r.seconds)),
            diagonal: false,
        }
        .svg(),
    ));
    let mem = lines(&|r| r.peak_rss_bytes.map(|b| b as f64 / (1u64 << 20) as f64));
    if !mem.is_empty() {
        let title = "scale: peak memory against input rows".to_string();
        out.push(plot(
            "scale-memory".into(),
            title.clone(),
            LineChart {
                title,
                x: Axis::log("input rows"),
                y: Axis::log("peak resident memory (MiB)"),
                series: mem,
                diagonal: false,
            }
            .svg(),
        ));
    }
    out
}

/// A piece of the report.
pub(super) enum Block {
    /// heading of level 1..=3
    Heading(u8, String),
    /// a paragraph of plain text
    Para(String),
    /// a table; `numeric` columns are right-aligned
    Table {
        head: Vec<String>,
        numeric: Vec<bool>,
        rows: Vec<Vec<String>>,
    },
    /// a plot
    Figure {
        file: String,
        title: String,
        svg: String,
    },
}

fn f3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "-".into()
    }
}

fn opt3(v: Option<f64>) -> String {
    v.map_or("-".into(), f3)
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn table(head: &[&str], numeric_from: usize, rows: Vec<Vec<String>>) -> Block {
    Block::Table {
        head: head.iter().map(|h| h.to_string()).collect(),
        numeric: (0..head.len()).map(|i| i >= numeric_from).collect(),
        rows,
    }
}

fn figure(blocks: &mut Vec<Block>, plots: &[Plot], file: &str) {
    if let Some(p) = plots.iter().find(|p| p.reference.file == file) {
        blocks.push(Block::Figure {
            file: p.reference.file.clone(),
            title: p.reference.title.clone(),
            svg: p.svg.clone(),
        });
    }
}

/// The report's content.
pub(super) fn blocks(r: &BenchReport, plots: &[Plot]) -> Vec<Block> {
    let m = &r.meta;
    let cv = &r.cv;
    let mut b = vec![Block::Heading(
        1,
        format!("threatrank benchmark report: {}", m.input.file),
    )];
    b.push(Block::Para(format!(
        "Cross-validation of the whole training recipe: every model is trained on the training \
         part only and scored on the held-out incidents. Forward (the headline, what a \
         deployment sees): at each origin, a UTC day boundary, train on the graded incidents \
         that ended before it and score those that began in the window up to the next origin. \
         Incident-disjoint and tenant-disjoint are grouped {}-fold {}{} (seed {}): \
         incident-disjoint keeps no incident on both sides (a tenant's other incidents may be in \
         training), tenant-disjoint no tenant (the figures for tenants never seen in training). \
         Every model, the lookup baseline and the peers are scored on the same held-out \
         incidents by the same code.",
        cv.folds,
        cv::RANDOM_FOLDS_NOTE,
        if cv.folds_run < cv.folds {
            format!(", first {} fold(s) evaluated (a holdout)", cv.folds_run)
        } else {
            String::new()
        },
        cv.seed
    )));
    b.push(Block::Heading(2, "Run".into()));
    let mut run = vec![
        vec!["command".into(), m.command.clone()],
        vec!["threatrank".into(), m.threatrank_version.clone()],
        vec!["input".into(), m.input.file.clone()],
        vec!["input SHA-256".into(), m.input.sha256.clone()],
        vec![
            "records".into(),
            format!(
                "{} read, {} accepted, {} rejected",
                m.input.records, m.input.accepted, m.input.rejected
            ),
        ],
        vec![
            "incidents".into(),
            format!(
                "{} ({} graded, from {} tenants)",
                m.input.incidents, m.input.labelled_incidents, m.input.tenants
            ),
        ],
        vec![
            "models".into(),
            m.params
                .algorithms
                .iter()
                .map(|a| a.name())
                .chain(m.params.baseline.then_some("lookup-baseline"))
                .collect::<Vec<_>>()
                .join(", "),
        ],
        vec![
            "machine".into(),
            format!(
                "{} logical CPUs, {}/{}",
                m.machine.nproc, m.machine.os, m.machine.arch
            ),
        ],
    ];
    for t in &m.timings {
        run.push(vec![
            format!("time: {}", t.stage),
            format!("{:.1} s", t.seconds),
        ]);
    }
    b.push(table(&["", "value"], 99, run));

    b.push(Block::Heading(2, "Grading and ranking".into()));
    b.push(Block::Para(
        "Macro-F1 over evidence rows is GUIDE's metric (every row carries its incident's grade); \
         over incidents each candidate threat counts once. Per-grade precision and recall are over \
         rows. PR-AUC is the average precision of P(TP) over incidents. P@10 and NDCG@10 rank \
         each tenant's held-out queue by P(TP), averaged over queues holding a true positive; \
         P@10L and NDCG@10L only over queues longer than 10 incidents, where the order matters. \
         Log-loss is over incidents."
            .into(),
    ));
    let mut rows = Vec::new();
    for sp in &r.splits {
        for mf in &sp.models {
            let x = &mf.metrics;
            let pc = &x.per_class_rows;
            rows.push(vec![
                sp.split.name().to_string(),
                mf.model.clone(),
                f3(x.macro_f1_rows),
                f3(x.macro_f1_incidents),
                f3(pc[0].precision),
                f3(pc[0].recall),
                f3(pc[1].precision),
                f3(pc[1].recall),
                f3(pc[2].precision),
                f3(pc[2].recall),
                opt3(x.pr_auc_tp),
                f3(x.precision_at_10),
                f3(x.ndcg_at_10),
                f3(x.precision_at_10_long),
                f3(x.ndcg_at_10_long),
                f3(x.log_loss),
            ]);
        }
    }
    b.push(table(
        &[
            "split", "model", "F1 rows", "F1 inc", "P(TP)", "R(TP)", "P(BP)", "R(BP)", "P(FP)",
            "R(FP)", "PR-AUC", "P@10", "NDCG@10", "P@10L", "NDCG@10L", "log-loss",
        ],
        2,
        rows,
    ));
    if r.splits.iter().any(|sp| sp.split.is_random()) {
        b.push(Block::Para(format!(
            "incident-disjoint, tenant-disjoint: {}; forward is not.",
            cv::RANDOM_FOLDS_NOTE
        )));
    }
    forward_blocks(&mut b, r);
    cold_start_blocks(&mut b, r, plots);

    b.push(Block::Heading(2, "Calibration and abstention".into()));
    b.push(Block::Para(
        "Log-loss and expected calibration error (ECE, 10 bins) of P(TP) before and after the \
         artifact's calibration, both on held-out incidents; conformal grade sets: target and \
         measured coverage (overall and per true grade), share of incidents marked uncertain \
         (set of more than one grade) and macro-F1 over incidents on the confident ones."
            .into(),
    ));
    let mut rows = Vec::new();
    for sp in &cv.splits {
        for mc in &sp.models {
            let Some(c) = &mc.calibration else { continue };
            let a = mc.abstention.as_ref();
            rows.push(vec![
                sp.split.name().to_string(),
                mc.model.clone(),
                format!("{} → {}", f3(c.log_loss_raw), f3(c.log_loss_calibrated)),
                format!("{} → {}", f3(c.ece_tp_raw), f3(c.ece_tp_calibrated)),
                opt3(a.map(|a| a.sets.target_coverage)),
                opt3(a.map(|a| a.sets.coverage)),
                a.map_or("-".into(), |a| {
                    a.sets
                        .class_coverage
                        .iter()
                        .map(|v| opt3(*v))
                        .collect::<Vec<_>>()
                        .join(" / ")
                }),
                a.map_or("-".into(), |a| pct(a.sets.uncertain_rate)),
                opt3(a.and_then(|a| a.macro_f1_confident)),
            ]);
        }
    }
    b.push(table(
        &[
            "split",
            "model",
            "log-loss raw → cal",
            "ECE(TP) raw → cal",
            "target",
            "covered",
            "TP / BP / FP covered",
            "uncertain",
            "F1 confident",
        ],
        2,
        rows,
    ));

    let ranked: Vec<Vec<String>> = cv
        .splits
        .iter()
        .flat_map(|sp| {
            sp.models.iter().filter_map(move |mc| {
                let q = mc.ranker.as_ref()?;
                let x = &mc.metrics;
                Some(vec![
                    vec![
                        sp.split.name().to_string(),
                        format!("{} P(TP)", mc.model),
                        f3(x.precision_at_10),
                        f3(x.ndcg_at_10),
                        f3(x.precision_at_10_long),
                        f3(x.ndcg_at_10_long),
                    ],
                    vec![
                        sp.split.name().to_string(),
                        "lambdamart".into(),
                        f3(q.precision_at_10),
                        f3(q.ndcg_at_10),
                        f3(q.precision_at_10_long),
                        f3(q.ndcg_at_10_long),
                    ],
                ])
            })
        })
        .flatten()
        .collect();
    if !ranked.is_empty() {
        b.push(Block::Heading(
            2,
            "Queue order: P(TP) against LambdaMART".into(),
        ));
        b.push(table(
            &[
                "split",
                "queue order",
                "P@10",
                "NDCG@10",
                "P@10L",
                "NDCG@10L",
            ],
            2,
            ranked,
        ));
    }

    b.push(Block::Heading(2, "Workload reduction".into()));
    b.push(Block::Para(
        "A hunter reviews the held-out incidents of all tenants by decreasing P(TP) and stops once \
         the target share of true positives has been seen (incidents with tied scores are \
         reviewed together). The figure is the share of incidents left unreviewed: 60% at 90% \
         recall means that 9 of 10 true positives are found while skipping 6 of 10 incidents. A \
         random order skips about 1 − target; a perfect ranking skips 1 − target × TP share."
            .into(),
    ));
    let mut rows = Vec::new();
    for sp in &r.splits {
        let at = |mf: &ModelFigures, t: f64| {
            mf.workload
                .iter()
                .find(|p| (p.target_recall - t).abs() < 1e-9)
                .map_or("-".into(), |p| pct(p.reduction))
        };
        for mf in &sp.models {
            let mut row = vec![sp.split.name().to_string(), mf.model.clone()];
            row.extend(super::WORKLOAD_TARGETS.iter().map(|&t| at(mf, t)));
            rows.push(row);
        }
        for (name, f) in [
            (
                "random order",
                (|_: f64, t: f64| 1.0 - t) as fn(f64, f64) -> f64,
            ),
            ("perfect ranking", |share: f64, t: f64| 1.0 - t * share),
        ] {
            let mut row = vec![sp.split.name().to_string(), name.to_string()];
            row.extend(
                super::WORKLOAD_TARGETS
                    .iter()
                    .map(|&t| pct(f(sp.tp_share, t))),
            );
            rows.push(row);
        }
    }
    let heads: Vec<String> = super::WORKLOAD_TARGETS
        .iter()
        .map(|t| format!("skipped at {:.0}% TP recall", 100.0 * t))
        .collect();
    let mut head = vec!["split", "model"];
    head.extend(heads.iter().map(String::as_str));
    b.push(table(&head, 2, rows));

    b.push(Block::Heading(2, "Peers".into()));
    b.push(Block::Para(match r.peers.status {
        PeersStatus::Off => {
            "Peers not requested (threatrank report --peers runs LightGBM and XGBoost on the same \
             folds through benches/peers)."
                .into()
        }
        PeersStatus::Ran => format!(
            "Peers ran on the same folds and are scored by the same code: {}. Command: {}",
            r.peers.models.join(", "),
            r.peers.command.as_deref().unwrap_or("-")
        ),
        PeersStatus::NotRun => format!(
            "peers not run: {}",
            r.peers.reason.as_deref().unwrap_or("unknown reason")
        ),
    }));

    for sp in &r.splits {
        split_blocks(&mut b, r, sp, plots);
    }
    if let Some(s) = &r.scale {
        b.push(Block::Heading(2, "Scale".into()));
        b.push(Block::Para(format!(
            "End-to-end runs at several input sizes on {}.",
            s.machine
        )));
        let rows = s
            .rows
            .iter()
            .map(|x| {
                vec![
                    x.system.clone(),
                    x.rows.to_string(),
                    format!("{:.2}", x.seconds),
                    x.peak_rss_bytes.map_or("-".into(), |v| {
                        format!("{:.0}", v as f64 / (1u64 << 20) as f64)
                    }),
                    x.note.clone(),
                ]
            })
            .collect();
        b.push(table(
            &["system", "rows", "seconds", "peak RSS (MiB)", "note"],
            1,
            rows,
        ));
        figure(&mut b, plots, "plots/scale-seconds.svg");
        figure(&mut b, plots, "plots/scale-memory.svg");
    }
    b
}

fn split_blocks(b: &mut Vec<Block>, r: &BenchReport, sp: &SplitFigures, plots: &[Plot]) {
    let name = sp.split.name();
    b.push(Block::Heading(
        2,
        format!(
            "{}: {} held-out incidents, {} true positives",
            title_case(sp.split),
            sp.incidents,
            pct(sp.tp_share)
        ),
    ));
    b.push(Block::Heading(3, "Precision–recall of TP".into()));
    figure(b, plots, &format!("plots/{name}-pr.svg"));
    b.push(Block::Heading(3, "Calibration of P(TP)".into()));
    b.push(Block::Para(
        "Reliability curves: held-out incidents binned by predicted P(TP) (10 equal-width bins, \
         empty bins left out); a calibrated model lies on the diagonal."
            .into(),
    ));
    for m in sp.models.iter().filter(|m| m.kind == ModelKind::Trained) {
        figure(
            b,
            plots,
            &format!("plots/{name}-calibration-{}.svg", m.model),
        );
    }
    b.push(Block::Heading(
        3,
        "Precision@k and recall@k by queue depth".into(),
    ));
    figure(b, plots, &format!("plots/{name}-precision-at-k.svg"));
    figure(b, plots, &format!("plots/{name}-recall-at-k.svg"));
    b.push(Block::Heading(3, "Workload reduction".into()));
    figure(b, plots, &format!("plots/{name}-workload.svg"));
    if let Some(c) = &sp.confusion {
        b.push(Block::Heading(
            3,
            format!("Confusion matrix of {} (best row macro-F1)", c.model),
        ));
        figure(b, plots, &format!("plots/{name}-confusion.svg"));
        let rows = (0..3)
            .map(|t| {
                let mut row = vec![GRADES[t].to_string()];
                row.extend(
                    (0..3).map(|p| format!("{} ({:.0} rows)", c.incidents[t][p], c.rows[t][p])),
                );
                row
            })
            .collect();
        b.push(table(&["true \\ predicted", "TP", "BP", "FP"], 1, rows));
    }
    let trained: Vec<&ModelFigures> = sp
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Trained && !m.family_importance.is_empty())
        .collect();
    if !trained.is_empty() {
        b.push(Block::Heading(3, "Feature-family importance".into()));
        b.push(Block::Para(
            "Mean over held-out incidents of |sum of a family's additive contributions to the TP \
             margin| (TreeSHAP for the GBDT, Saabas path contributions for the forest, \
             coefficient × standardized value for the logistic model), in each model's own raw-score units: compare families \
             within a model, not values across models."
                .into(),
        ));
        for m in &trained {
            figure(b, plots, &format!("plots/{name}-families-{}.svg", m.model));
        }
        let families: Vec<&str> = trained[0]
            .family_importance
            .iter()
            .map(|f| f.family.as_str())
            .collect();
        let rows = families
            .iter()
            .map(|fam| {
                let mut row = vec![fam.to_string()];
                row.extend(trained.iter().map(|m| {
                    m.family_importance
                        .iter()
                        .find(|f| f.family == *fam)
                        .map_or("-".into(), |f| fmt_sig(f.mean_abs_contribution))
                }));
                row
            })
            .collect();
        let mut head = vec!["family"];
        head.extend(trained.iter().map(|m| m.model.as_str()));
        b.push(table(&head, 1, rows));
    }
    b.push(Block::Heading(3, "NDCG@10 per tenant".into()));
    b.push(Block::Para(
        "Each point is one tenant's held-out queue holding a true positive, ordered by P(TP); the \
         box spans the quartiles, the thick line is the median, the whiskers the range."
            .into(),
    ));
    figure(b, plots, &format!("plots/{name}-tenant-ndcg.svg"));
    let _ = r;
}

/// The forward split's origins and every model's figures per origin, their mean, and tenants
/// with history against new tenants.
fn forward_blocks(b: &mut Vec<Block>, r: &BenchReport) {
    let Some(f) = r.cv.splits.iter().find_map(|sp| sp.forward.as_ref()) else {
        return;
    };
    b.push(Block::Heading(2, "Forward in time, per origin".into()));
    b.push(Block::Para(format!(
        "{} cut the latest {:.0}% of graded incidents (by first evidence) into consecutive \
         windows. Train: incidents that ended before the origin (a verdict exists from the end \
         of its incident). Test: incidents that began in the window; an incident that began \
         before the origin and ended after it is on neither side. History: the test \
         incident's tenant has at least one training incident at that origin.",
        f.origins_text(),
        100.0 * f.test_share
    )));
    let rows = f
        .origins
        .iter()
        .map(|o| {
            vec![
                o.origin.clone(),
                o.window_end.clone(),
                o.train_incidents.to_string(),
                o.test_incidents.to_string(),
                o.test_with_history.to_string(),
                o.test_new_tenants.to_string(),
            ]
        })
        .collect();
    b.push(table(
        &[
            "origin",
            "window end",
            "train",
            "test",
            "with history",
            "new tenants",
        ],
        2,
        rows,
    ));
    let mut rows = Vec::new();
    for sp in r.splits.iter().filter(|sp| sp.split == SplitKind::Forward) {
        for mf in &sp.models {
            let Some(fm) = &mf.forward else { continue };
            for r in fm.rows() {
                rows.push(vec![
                    mf.model.clone(),
                    r.what,
                    r.incidents.map_or("-".into(), |n| n.to_string()),
                    f3(r.macro_f1_rows),
                    f3(r.macro_f1_incidents),
                    opt3(r.pr_auc_tp),
                ]);
            }
        }
    }
    b.push(table(
        &[
            "model",
            "origin",
            "incidents",
            "F1 rows",
            "F1 inc",
            "PR-AUC",
        ],
        2,
        rows,
    ));
}

fn title_case(s: SplitKind) -> &'static str {
    match s {
        SplitKind::Forward => "Forward",
        SplitKind::IncidentDisjoint => "Incident-disjoint (random folds)",
        SplitKind::TenantDisjoint => "Tenant-disjoint (random folds)",
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The blocks as Markdown; figures as `![title](plots/NAME.svg)`.
pub(super) fn markdown(blocks: &[Block]) -> String {
    let mut s = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(s, "{} {}\n", "#".repeat(usize::from(*level)), text);
            }
            Block::Para(text) => {
                let _ = writeln!(s, "{text}\n");
            }
            Block::Table {
                head,
                numeric,
                rows,
            } => {
                let cells: Vec<String> = head.iter().map(|h| md_cell(h)).collect();
                let _ = writeln!(s, "| {} |", cells.join(" | "));
                let align: Vec<&str> = numeric
                    .iter()
                    .map(|&n| if n { "---:" } else { "---" })
                    .collect();
                let _ = writeln!(s, "|{}|", align.join("|"));
                for row in rows {
                    let cells: Vec<String> = row.iter().map(|c| md_cell(c)).collect();
                    let _ = writeln!(s, "| {} |", cells.join(" | "));
                }
                s.push('\n');
            }
            Block::Figure { file, title, .. } => {
                let _ = writeln!(s, "![{}]({file})\n", title.replace(['[', ']'], ""));
            }
        }
    }
    s
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;\
margin:0;background:#fafafa;color:#222;line-height:1.45}\
main{max-width:1180px;margin:0 auto;padding:1.5rem 1.25rem 4rem}\
h1{font-size:1.6rem}h2{margin-top:2.4rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}\
table{border-collapse:collapse;margin:.8rem 0 1.4rem;font-size:.86rem;background:#fff;display:block;overflow-x:auto}\
th,td{border:1px solid #ddd;padding:.25rem .5rem;white-space:nowrap}th{background:#f0f0f0}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:1rem 0 2rem;background:#fff;border:1px solid #e5e5e5;padding:.5rem;overflow-x:auto}\
figure svg{max-width:100%;height:auto;display:block}figcaption{font-size:.8rem;color:#555}";

/// The blocks as one self-contained HTML page: inline CSS and SVG, no script, no link.
pub(super) fn html(blocks: &[Block], input: &str) -> String {
    let e = plot::escape;
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>threatrank benchmark report: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        e(input)
    );
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(s, "<h{level}>{}</h{level}>", e(text));
            }
            Block::Para(text) => {
                let _ = writeln!(s, "<p>{}</p>", e(text));
            }
            Block::Table {
                head,
                numeric,
                rows,
            } => {
                s.push_str("<table>\n<thead><tr>");
                for h in head {
                    let _ = write!(s, "<th>{}</th>", e(h));
                }
                s.push_str("</tr></thead>\n<tbody>\n");
                for row in rows {
                    s.push_str("<tr>");
                    for (i, c) in row.iter().enumerate() {
                        let class = if numeric.get(i).copied().unwrap_or(false) {
                            " class=\"n\""
                        } else {
                            ""
                        };
                        let _ = write!(s, "<td{class}>{}</td>", e(c));
                    }
                    s.push_str("</tr>\n");
                }
                s.push_str("</tbody>\n</table>\n");
            }
            Block::Figure { file, title, svg } => {
                let _ = write!(
                    s,
                    "<figure>\n{}<figcaption>{} ({})</figcaption>\n</figure>\n",
                    plot::inline(svg),
                    e(title),
                    e(file)
                );
            }
        }
    }
    s.push_str("</main>\n</body>\n</html>\n");
    s
}
