//! `threatrank report`: every file written and non-empty, a self-contained HTML page, a
//! parseable versioned JSON, byte-identical plots for the same seed, peers through a fake
//! `run` script (rows in the tables and plots), and every way the peers can fail leaving a
//! complete report that says "peers not run: …".
//!
//! Kept small: 900 sample rows, 3 folds of which 1 is evaluated, logistic + a 30-round GBDT.

use crate::common::{kn, run_os, sample_head, stderr, tmp};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use threatrank::bench::peers::{self, PeersError, PeersRun};
use threatrank::bench::{
    BenchReport, PeersParams, PeersStatus, ReportParams, ScaleReport, ScaleRow,
};
use threatrank::models::gbdt::GbdtParams;
use threatrank::models::{Algorithm, ModelParams};
use threatrank::pipeline;
use threatrank::train::cv::{CvParams, CvPlan, SplitKind};
use threatrank::train::TrainParams;

const ROWS: usize = 900;

/// The first [`ROWS`] sample rows, written once per process.
fn input() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("threatrank-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("head.csv");
        std::fs::write(&p, sample_head(ROWS)).unwrap();
        p
    })
}

fn cv_params() -> CvParams {
    CvParams {
        folds: 3,
        folds_to_run: Some(1),
        algorithms: vec![Algorithm::Logistic, Algorithm::Gbdt],
        compare_ranker: false,
        train: TrainParams {
            model: Some(ModelParams::Gbdt(GbdtParams::default().max_rounds(30))),
            ..TrainParams::default()
        },
        ..CvParams::default()
    }
}

fn report(out: &Path, peers: Option<PeersParams>) -> threatrank::bench::Outcome {
    // cold start with 2 verdicts: the head of the sample has no tenant with 50
    let cold = threatrank::train::coldstart::ColdStartParams {
        verdicts: vec![0, 2],
        groups: 1,
    };
    let params = ReportParams::default()
        .cv(cv_params())
        .peers(peers)
        .cold_start(Some(cold));
    pipeline::report_file(input(), out, &params, kn(), &mut |_| {}).expect("report")
}

/// A `run` script in `dir` with `body` after argument parsing (`$script`, `$input`, `$folds`,
/// `$out`, `$json` are set).
fn fake_run(dir: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("run");
    let text = format!(
        "#!/usr/bin/env bash\nset -eu\nscript=\"$1\"; shift\n\
         while [ $# -gt 0 ]; do case \"$1\" in\n\
         --input) input=\"$2\"; shift 2;; --folds) folds=\"$2\"; shift 2;;\n\
         --out) out=\"$2\"; shift 2;; --json) json=\"$2\"; shift 2;;\n\
         *) echo \"unknown argument $1\" >&2; exit 2;; esac; done\n{body}\n"
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

/// Constant probabilities for every held-out incident: LightGBM says TP, XGBoost says FP.
const GOOD_PEERS: &str = r#"echo "fake peers: $script on $input" >&2
awk -F, 'NR == 1 { print "split,model,OrgId,IncidentId,p_tp,p_bp,p_fp"; next }
         $3 == "test" { print $1 ",lightgbm," $4 "," $5 ",0.5,0.3,0.2"; print $1 ",xgboost," $4 "," $5 ",0.2,0.3,0.5" }' "$folds" > "$out"
printf '{"peers": "fake", "script": "%s"}\n' "$script" > "$json""#;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(dir: &Path) -> Value {
    serde_json::from_str(&read(&dir.join("report.json"))).expect("report.json parses")
}

fn plot_files(v: &Value) -> Vec<String> {
    v["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file"].as_str().unwrap().to_string())
        .collect()
}

/// The report without its timings (the only figures allowed to differ between runs).
fn without_timings(mut v: Value) -> Value {
    let meta = v["meta"].as_object_mut().unwrap();
    meta.remove("timings");
    meta.remove("wall_seconds");
    v
}

#[test]
fn report_writes_every_file_self_contained_and_deterministic() {
    let dir = tmp();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let out = report(&a, None);
    let v = json(&a);
    // versioned JSON with the documented top-level fields
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["format", "meta", "cv", "splits", "peers", "scale", "plots"])
    );
    assert_eq!(v["format"], 1);
    assert!(v["scale"].is_null());
    assert_eq!(v["peers"]["status"], "off");
    let meta = &v["meta"];
    assert_eq!(meta["input"]["file"], "head.csv");
    assert_eq!(meta["input"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(meta["input"]["records"], ROWS as u64);
    assert!(meta["machine"]["nproc"].as_u64().unwrap() >= 1);
    let stages: Vec<&str> = meta["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["load", "cross-validation", "cold start", "figures", "write"]
    );
    // the cold-start curve: one point per verdict count, the same incidents at each
    let cold = &v["cv"]["cold_start"];
    let points = cold["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for (p, n) in points.iter().zip([0, 2]) {
        assert_eq!(p["verdicts"], n);
        assert_eq!(p["metrics"]["incidents"], cold["incidents"]);
    }
    assert!(cold["incidents"].as_u64().unwrap() > 0);
    assert_eq!(v["cv"]["folds"], 3);
    assert_eq!(v["cv"]["folds_run"], 1);
    // figures of every model on every split, forward first
    let splits = v["splits"].as_array().unwrap();
    assert_eq!(splits.len(), 3);
    for (sp, name) in splits
        .iter()
        .zip(["forward", "incident-disjoint", "tenant-disjoint"])
    {
        assert_eq!(sp["split"], name);
        let models: Vec<&str> = sp["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["model"].as_str().unwrap())
            .collect();
        assert_eq!(models, ["logistic", "gbdt", "lookup-baseline"]);
        let held = sp["incidents"].as_u64().unwrap();
        for m in sp["models"].as_array().unwrap() {
            assert_eq!(m["metrics"]["incidents"].as_u64(), Some(held));
            assert_eq!(m["precision_at_k"].as_array().unwrap().len(), 50);
            assert_eq!(m["recall_at_k"].as_array().unwrap().len(), 50);
            assert_eq!(m["workload"].as_array().unwrap().len(), 51);
            assert!(m["pr_curve"].as_array().unwrap().len() >= 2);
            assert!(!m["tenant_ndcg_at_10"].as_array().unwrap().is_empty());
            let families = m["family_importance"].as_array().unwrap().len();
            assert_eq!(families > 0, m["kind"] == "trained", "{}", m["model"]);
            // per-origin figures on the forward split only: --folds-to-run 1 runs the last
            // origin, whose figures are then the pooled ones
            if name == "forward" {
                let f = &m["forward"];
                let per = f["per_origin"].as_array().unwrap();
                assert_eq!(per.len(), 1, "{}", m["model"]);
                assert_eq!(per[0]["incidents"].as_u64(), Some(held));
                assert_eq!(per[0]["macro_f1_rows"], m["metrics"]["macro_f1_rows"]);
                assert_eq!(f["mean_macro_f1_rows"], m["metrics"]["macro_f1_rows"]);
            } else {
                assert!(m.get("forward").is_none(), "{name} {}", m["model"]);
            }
        }
        let c = &sp["confusion"];
        let total: u64 = c["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
            .sum();
        assert_eq!(total, held);
        assert_eq!(c["model"], sp["best_model"]);
    }
    // every plot file exists, is non-empty, and is in both pages
    let plots = plot_files(&v);
    assert_eq!(plots.len(), out.report.plots.len());
    // per split: pr, 2 calibration, p@k, r@k, workload, confusion, 2 families, ndcg; the
    // cold-start curve
    assert_eq!(plots.len(), 3 * 10 + 1, "{plots:?}");
    assert!(plots.contains(&"plots/cold-start.svg".to_string()));
    let md = read(&a.join("report.md"));
    let html = read(&a.join("report.html"));
    assert!(!md.is_empty() && !html.is_empty());
    for p in &plots {
        let svg = read(&a.join(p));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"), "{p}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{p}");
        assert!(
            md.contains(&format!("]({p})")),
            "{p} not linked in report.md"
        );
        assert!(
            html.contains(&format!("({p})</figcaption>")),
            "{p} not in report.html"
        );
    }
    assert!(out.files.iter().all(|f| f.is_file()));
    // one self-contained page: every plot inline, nothing to fetch
    assert_eq!(html.matches("<svg").count(), plots.len());
    for banned in ["http://", "https://", "<script", "<link", "<img", "src="] {
        assert!(!html.contains(banned), "report.html holds {banned}");
    }
    // the tables of `eval`
    for needle in [
        "| split | model | F1 rows | F1 inc | P(TP) | R(TP)",
        "log-loss raw → cal",
        "skipped at 90% TP recall",
        "| incident-disjoint | gbdt |",
        "| tenant-disjoint | lookup-baseline |",
        "| forward | gbdt |",
        "## Forward in time, per origin",
        // --folds-to-run 1: the last of the 3 origins built
        "1 origin(s) (the last of 3 built) cut the latest 50% of graded incidents",
        "| gbdt | mean of 1 origins |",
        "incident-disjoint, tenant-disjoint: random folds: a training incident may be later \
         than the incident scored",
        "## Tenant-disjoint (random folds): ",
        "Peers not requested",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }

    // same seed → same plots, bytes for bytes, and the same JSON but for the timings
    report(&b, None);
    for p in &plots {
        assert_eq!(read(&a.join(p)), read(&b.join(p)), "{p} differs");
    }
    assert_eq!(without_timings(v), without_timings(json(&b)));

    // a scale run adds its section to an existing report: read report.json, set `scale`,
    // write again (no cross-validation)
    let mut r: BenchReport = serde_json::from_str(&read(&b.join("report.json"))).unwrap();
    let wall = r.meta.wall_seconds;
    r.scale = Some(ScaleReport {
        machine: "2 cores, test".into(),
        rows: [
            (1_000, 0.5, Some(50u64 << 20)),
            (100_000, 20.0, Some(400 << 20)),
        ]
        .into_iter()
        .flat_map(|(rows, seconds, rss)| {
            [
                ScaleRow {
                    system: "threatrank".into(),
                    rows,
                    seconds,
                    peak_rss_bytes: rss,
                    note: "train + score".into(),
                },
                ScaleRow {
                    system: "lightgbm (peer)".into(),
                    rows,
                    seconds: seconds * 3.0,
                    peak_rss_bytes: None,
                    note: String::new(),
                },
            ]
        })
        .collect(),
    });
    let c = dir.path().join("c");
    let files = threatrank::bench::write_report(&mut r, &c).unwrap();
    assert_eq!(files.len(), 3 + plots.len() + 2);
    let w = json(&c);
    assert_eq!(w["scale"]["rows"].as_array().unwrap().len(), 4);
    assert_eq!(plot_files(&w).len(), plots.len() + 2);
    let seconds = read(&c.join("plots/scale-seconds.svg"));
    for tick in [">1k<", ">10k<", ">100k<", ">1<", ">10<", ">100<"] {
        assert!(seconds.contains(tick), "{tick} missing on the log–log axes");
    }
    assert!(seconds.contains(">lightgbm (peer)<") && seconds.contains(">threatrank<"));
    let memory = read(&c.join("plots/scale-memory.svg"));
    assert!(
        !memory.contains(">lightgbm (peer)<"),
        "no memory figures for the peer"
    );
    let md = read(&c.join("report.md"));
    assert!(md.contains("## Scale") && md.contains("| threatrank | 100000 | 20.00 | 400 |"));
    // the plots of the splits are unchanged, the write stage replaced, not added
    for p in &plots {
        assert_eq!(read(&b.join(p)), read(&c.join(p)), "{p} differs");
    }
    let stages = w["meta"]["timings"].as_array().unwrap();
    assert_eq!(stages.iter().filter(|t| t["stage"] == "write").count(), 1);
    assert!((w["meta"]["wall_seconds"].as_f64().unwrap() - wall).abs() < 5.0);
}

#[test]
fn fake_peers_are_scored_like_our_models_on_the_same_folds() {
    let dir = tmp();
    let peers_dir = fake_run(&dir.path().join("peers-bin"), GOOD_PEERS);
    let out_dir = dir.path().join("out");
    let out = report(
        &out_dir,
        Some(PeersParams {
            dir: peers_dir,
            ..PeersParams::default()
        }),
    );
    let r = &out.report;
    assert_eq!(r.peers.status, PeersStatus::Ran, "{:?}", r.peers.reason);
    assert_eq!(r.peers.models, ["lightgbm (peer)", "xgboost (peer)"]);
    assert_eq!(r.peers.meta.as_ref().unwrap()["script"], "guide.py");
    assert!(read(&out_dir.join("peers/log.txt")).contains("fake peers: guide.py on"));

    // folds.csv is the plan that cv::run evaluated: both sides of fold 0 only, listed
    let loaded = pipeline::load(input(), &Default::default()).unwrap();
    let plan = CvPlan::new(&cv_params(), &loaded.corr).unwrap();
    let folds = read(&out_dir.join("peers/folds.csv"));
    let mut lines = folds.lines();
    assert_eq!(lines.next(), Some("split,fold,role,OrgId,IncidentId"));
    let mut want = BTreeSet::new();
    for (kind, folds) in &plan.splits {
        assert_eq!(folds.len(), 1);
        for (role, side) in [("train", &folds[0].train), ("test", &folds[0].test)] {
            for &j in side {
                let k = plan.keys[j];
                want.insert(format!(
                    "{},0,{role},{},{}",
                    kind.name(),
                    k.tenant.0,
                    k.incident.0
                ));
            }
        }
    }
    let got: Vec<String> = lines.map(str::to_string).collect();
    assert_eq!(got.len(), want.len(), "no line twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<String>>(), want);
    // the forward fold lists fewer training incidents than "every one not tested": those
    // that had not ended by the origin (and those after the window) are on neither side
    let (_, fwd) = &plan.splits[0];
    assert!(fwd[0].train.len() + fwd[0].test.len() < plan.labelled.len());

    // the cold start's peers: their own folds (the cold tenants' window incidents, trained
    // without those tenants), scored on the same incidents as the curve; the fake LightGBM
    // says TP for every incident, so its row accuracy is the TP share of the rows
    let cold = r.cv.cold_start.as_ref().expect("cold start measured");
    let cold_folds = read(&out_dir.join("cold-start/peers/folds.csv"));
    let tested = cold_folds.lines().filter(|l| l.contains(",test,")).count();
    assert_eq!(tested, cold.incidents);
    let peers: Vec<&str> = cold
        .peers_at_zero
        .iter()
        .map(|p| p.model.as_str())
        .collect();
    assert_eq!(peers, ["lightgbm (peer)", "xgboost (peer)"]);
    let ours = &cold.points[0].metrics;
    let tp_rows = ours.per_class_rows[0].support / ours.rows as f64;
    for p in &cold.peers_at_zero {
        assert_eq!(p.metrics.incidents, cold.incidents);
        assert_eq!(p.metrics.rows, ours.rows);
    }
    let lgb = &cold.peers_at_zero[0].metrics;
    assert!((lgb.accuracy_rows - tp_rows).abs() < 1e-9, "{lgb:?}");

    for sp in &r.splits {
        let names: Vec<&str> = sp.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(
            names,
            [
                "logistic",
                "gbdt",
                "lookup-baseline",
                "lightgbm (peer)",
                "xgboost (peer)"
            ]
        );
        let lgb = &sp.models[3];
        let ours = &sp.models[1];
        // the peers' per-origin figures on the forward split, by the same code as ours
        assert_eq!(lgb.forward.is_some(), sp.split == SplitKind::Forward);
        if let (Some(p), Some(o)) = (&lgb.forward, &ours.forward) {
            assert_eq!(p.per_origin.len(), o.per_origin.len());
            assert_eq!(p.per_origin[0].incidents, o.per_origin[0].incidents);
            assert_eq!(p.mean_macro_f1_rows, lgb.metrics.macro_f1_rows);
        }
        // same held-out incidents and rows as our models
        assert_eq!(lgb.metrics.incidents, ours.metrics.incidents);
        assert_eq!(lgb.metrics.rows, ours.metrics.rows);
        // LightGBM's constant P(TP) = 0.5 is the argmax: every incident graded TP
        assert_eq!(lgb.metrics.per_class_rows[0].recall, 1.0);
        assert_eq!(lgb.metrics.per_class_rows[2].recall, 0.0);
        assert!((lgb.metrics.per_class_rows[0].precision - sp.tp_share).abs() < 0.2);
        // XGBoost says FP everywhere; all ties: workload at any recall is everything
        let xgb = &sp.models[4];
        assert_eq!(xgb.metrics.per_class_rows[2].recall, 1.0);
        assert!(xgb.workload.iter().all(|w| w.reduction == 0.0));
        assert!(lgb.family_importance.is_empty());
    }
    let md = read(&out_dir.join("report.md"));
    let html = read(&out_dir.join("report.html"));
    for needle in [
        "| incident-disjoint | lightgbm (peer) |",
        "| tenant-disjoint | xgboost (peer) |",
        "Peers ran on the same folds",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }
    assert!(html.contains("<td>xgboost (peer)</td>"));
    let pr = read(&out_dir.join("plots/incident-disjoint-pr.svg"));
    assert!(pr.contains(">lightgbm (peer)<") && pr.contains(">xgboost (peer)<"));
    let ndcg = read(&out_dir.join("plots/tenant-disjoint-tenant-ndcg.svg"));
    assert!(ndcg.contains(">xgboost (peer)<"));
    let v = json(&out_dir);
    assert_eq!(v["peers"]["status"], "ran");
    assert_eq!(v["splits"][1]["models"][4]["kind"], "peer");
    assert!(md.contains("| forward | lightgbm (peer) |"));
    assert!(md.contains("| lightgbm (peer) | mean of 1 origins |"));
}

/// The plan and a report folder for the peers' failure paths (no training needed).
fn plan_and_run(dir: &Path, peers_dir: PathBuf) -> (CvPlan, PeersRun) {
    let loaded = pipeline::load(input(), &Default::default()).unwrap();
    let plan = CvPlan::new(&cv_params(), &loaded.corr).unwrap();
    let params = PeersParams {
        dir: peers_dir,
        ..PeersParams::default()
    };
    (plan, PeersRun::new(&params, input(), &dir.join("out")))
}

#[test]
fn every_failure_of_the_peers_script_is_a_reason() {
    let dir = tmp();
    // no run script at all
    let (plan, run) = plan_and_run(dir.path(), dir.path().join("nowhere"));
    let e = peers::run_and_read(&run, &plan).unwrap_err();
    assert!(matches!(e, PeersError::Spawn { .. }), "{e}");
    assert!(e.to_string().contains("nowhere/run"), "{e}");
    // python missing: exit 3 with the script's message
    let d = fake_run(
        &dir.path().join("nopy"),
        "echo 'benches/peers/run: python3 not found; install python3' >&2; exit 3",
    );
    let (plan, run) = plan_and_run(dir.path(), d);
    let e = peers::run_and_read(&run, &plan).unwrap_err();
    assert!(matches!(e, PeersError::NoPython { .. }), "{e}");
    assert!(e.to_string().starts_with("Python missing"), "{e}");
    assert!(e.to_string().contains("python3 not found"), "{e}");
    // the script fails
    let d = fake_run(
        &dir.path().join("fails"),
        "echo 'Traceback: ModuleNotFoundError: lightgbm' >&2; exit 1",
    );
    let (plan, run) = plan_and_run(dir.path(), d);
    let e = peers::run_and_read(&run, &plan).unwrap_err().to_string();
    assert!(e.contains("exited with status 1"), "{e}");
    assert!(
        e.contains("log.txt") && e.contains("ModuleNotFoundError: lightgbm"),
        "{e}"
    );
    // success without predictions (and a stale pred.csv from an earlier run is not read)
    std::fs::create_dir_all(&run.dir).unwrap();
    std::fs::write(&run.pred, "split,model,OrgId,IncidentId,p_tp,p_bp,p_fp\n").unwrap();
    let d = fake_run(&dir.path().join("silent"), "true");
    let (plan, run) = plan_and_run(dir.path(), d);
    let e = peers::run_and_read(&run, &plan).unwrap_err();
    assert!(matches!(e, PeersError::NoOutput { .. }), "{e}");
}

/// Writes `body` as pred.csv and reads it against the plan.
fn read_pred(dir: &Path, plan: &CvPlan, body: &str) -> Result<usize, String> {
    let p = dir.join("pred.csv");
    std::fs::write(&p, body).unwrap();
    peers::read_predictions(&p, plan)
        .map(|m| m.len())
        .map_err(|e| e.to_string())
}

#[test]
fn malformed_predictions_name_file_line_and_field() {
    let dir = tmp();
    let (plan, _) = plan_and_run(dir.path(), dir.path().join("unused"));
    let held: Vec<String> = (0..plan.splits.len())
        .flat_map(|s| {
            let kind = plan.splits[s].0;
            plan.held(s).into_iter().map(move |(j, _)| (kind, j))
        })
        .map(|(kind, j)| {
            let k = plan.keys[j];
            format!("{},lightgbm,{},{}", kind.name(), k.tenant.0, k.incident.0)
        })
        .collect();
    let header = "split,model,OrgId,IncidentId,p_tp,p_bp,p_fp\n";
    let good: String = held.iter().map(|l| format!("{l},0.2,0.3,0.5\n")).collect();
    assert_eq!(
        read_pred(dir.path(), &plan, &format!("{header}{good}")),
        Ok(3)
    );

    let all_but_last: String = held[..held.len() - 1]
        .iter()
        .map(|l| format!("{l},0.2,0.3,0.5\n"))
        .collect();
    let with_line2 = |second: &str| {
        let mut lines: Vec<String> = held.iter().map(|l| format!("{l},0.2,0.3,0.5")).collect();
        lines[1] = second.to_string();
        format!("{header}{}\n", lines.join("\n"))
    };
    let cases = [
        (
            with_line2(&format!("{},x,0.3,0.5", held[1])),
            "line 3, field p_tp",
        ),
        (
            with_line2(&format!("{},0.2,0.3,1.5", held[1])),
            "line 3, field p_fp",
        ),
        (
            with_line2(&format!("{},0.2,0.3,0.6", held[1])),
            "line 3, field p_tp,p_bp,p_fp",
        ),
        (
            with_line2(&format!("{},0.2,0.3", held[1])),
            "line 3, field record",
        ),
        (
            with_line2("random-split,lightgbm,1,2,0.2,0.3,0.5"),
            "line 3, field split",
        ),
        (
            with_line2(&format!(
                "{},light gbm,1,2,0.2,0.3,0.5",
                SplitKind::IncidentDisjoint.name()
            )),
            "line 3, field model",
        ),
        (
            with_line2(&format!(
                "{},lightgbm,999999999,1,0.2,0.3,0.5",
                SplitKind::IncidentDisjoint.name()
            )),
            "line 3, field IncidentId",
        ),
        (
            with_line2(&format!(
                "{},lightgbm,-1,1,0.2,0.3,0.5",
                SplitKind::IncidentDisjoint.name()
            )),
            "line 3, field OrgId",
        ),
        (
            with_line2(&format!("{},0.2,0.3,0.5", held[0])),
            "line 3, field IncidentId: second prediction of lightgbm",
        ),
        (
            format!("split,model,org,IncidentId,p_tp,p_bp,p_fp\n{good}"),
            "line 1, field header",
        ),
        (
            format!("{header}{}", all_but_last),
            "lightgbm has no prediction for 1 of the",
        ),
        (header.to_string(), "no prediction line"),
    ];
    for (body, want) in cases {
        let e = read_pred(dir.path(), &plan, &body).unwrap_err();
        assert!(e.contains("pred.csv: "), "{e}");
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
}

/// The CLI: a peers script that fails leaves a complete report (exit 0) that says why; the
/// last line on stderr lists what was written, stdout every file.
#[test]
fn cli_report_with_failing_peers_completes_and_says_why() {
    let dir = tmp();
    let peers_dir = fake_run(
        &dir.path().join("peers-bin"),
        "echo 'benches/peers/run: python3 not found' >&2; exit 3",
    );
    let out = dir.path().join("rep");
    let o = run_os(&[
        "report".as_ref(),
        "--input".as_ref(),
        input().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--folds".as_ref(),
        "3".as_ref(),
        "--folds-to-run".as_ref(),
        "1".as_ref(),
        "--algorithms".as_ref(),
        "logistic".as_ref(),
        "--peers".as_ref(),
        "--peers-dir".as_ref(),
        peers_dir.as_os_str(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("report: peers not run: Python missing"),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("wrote ") && last.contains("report.html"),
        "{last}"
    );
    let files: Vec<String> = crate::common::stdout(&o)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(files.iter().all(|f| Path::new(f).is_file()), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("peers/folds.csv")));
    let md = read(&out.join("report.md"));
    assert!(
        md.contains("peers not run: Python missing: ") && md.contains("python3 not found"),
        "{md}"
    );
    let v = json(&out);
    assert_eq!(v["peers"]["status"], "not-run");
    assert!(v["meta"]["command"]
        .as_str()
        .unwrap()
        .starts_with("threatrank report --input"));
    assert_eq!(
        v["splits"][0]["models"].as_array().unwrap().len(),
        2,
        "logistic and the baseline"
    );

    let bad = run_os(&[
        "report".as_ref(),
        "--input".as_ref(),
        input().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--folds-to-run".as_ref(),
        "0".as_ref(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("folds_to_run"), "{}", stderr(&bad));
}

/// The scale section end to end on a small size: every system runs as its own process on the
/// same synthetic file, each row is timed, the streaming scorer and (with DataFusion) the SQL
/// path score the same number of incidents, and the big scratch files are removed.
#[test]
fn a_small_scale_run_times_every_system_on_one_file_and_cleans_up() {
    use threatrank::bench::scale::{self, ScaleParams};
    let dir = tmp();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = dir.path().join("work");
    let p = ScaleParams {
        sizes: vec![1_500],
        tenants: 20,
        seed: 3,
        fit: root.join("datasets/guide/guide_sample.csv"),
        model: root.join("models/default.json.gz"),
        threatrank: PathBuf::from(env!("CARGO_BIN_EXE_threatrank")),
        work_dir: work.clone(),
        peers_dir: None,
        peer_max_rows: 0,
        parquet_max_rows: 1_500,
    };
    let mut steps = Vec::new();
    let r = scale::run(&p, &mut |m| steps.push(m.to_string())).unwrap();
    let systems: Vec<&str> = r.rows.iter().map(|x| x.system.as_str()).collect();
    let mut want = vec![
        "csv crate parse",
        "threatrank score",
        "threatrank score, reasons",
    ];
    if cfg!(feature = "datafusion") {
        want.extend(["DataFusion SQL, CSV", "DataFusion SQL, Parquet"]);
    }
    assert_eq!(systems, want, "{steps:?}");
    for x in &r.rows {
        assert_eq!(x.rows, 1_500);
        assert!(x.seconds > 0.0, "{}", x.system);
        if x.system != "csv crate parse" {
            assert!(x.peak_rss_bytes.is_some_and(|b| b > 0), "{}", x.system);
        }
    }
    // "…: N incidents, …" (score) and "…, N incident rows written" (sql): the same N
    let score_note = &r.rows[1].note;
    let incidents: u64 = score_note
        .split(": ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{score_note}"));
    assert!(incidents > 100, "{score_note}");
    for x in r.rows.iter().filter(|x| x.system.starts_with("DataFusion")) {
        assert!(
            x.note
                .ends_with(&format!(", {incidents} incident rows written")),
            "{}",
            x.note
        );
    }
    // the synthetic file, the Parquet store and the outputs are gone
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
