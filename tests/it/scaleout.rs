//! Scale-out paths (issue 7), built with feature `parquet` or more: Parquet at rest (feature `parquet`), the model as DataFusion
//! functions and saved hunts (feature `datafusion`).

use crate::common::{read_csv, run_os, sample, sample_head, stderr, tmp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use threatrank::ingest::{self, IngestParams};
use threatrank::pipeline;
use threatrank::stream::{Explain, StreamParams};

fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json.gz")
}

/// Rows of the shipped sample the tests use (debug builds featurize slowly).
const ROWS: usize = 2500;

/// The first [`ROWS`] rows of the shipped sample, once per process.
fn sample_path() -> PathBuf {
    static P: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("scaleout-{}-sample.csv", std::process::id()));
        std::fs::write(&p, sample_head(ROWS)).unwrap();
        p
    })
    .clone()
}

/// The rows of [`sample_path`].
fn sample_rows() -> &'static [String] {
    &sample().1[..ROWS]
}

/// [`sample_path`] with two malformed rows appended: a bad timestamp and a short row.
fn input_with_bad_rows(dir: &Path) -> PathBuf {
    let (header, _) = sample();
    let rows = sample_rows();
    let mut text = String::new();
    text.push_str(header);
    text.push('\n');
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    let first: Vec<&str> = rows[0].split(',').collect();
    let mut bad = first.clone();
    bad[4] = "yesterday";
    text.push_str(&bad.join(","));
    text.push('\n');
    text.push_str(&first[..5].join(","));
    text.push('\n');
    let p = dir.join("input.csv");
    std::fs::write(&p, text).unwrap();
    p
}

/// `threatrank score --explain none` through the library: the scored rows, sorted, so inputs in
/// another order compare (the sample holds duplicate rows: a multiset, not a map).
fn score_rows(input: &Path, out: &Path) -> Vec<Vec<String>> {
    let params = StreamParams {
        memory_rows: 400_000,
        explain: Explain::Off,
    }
    .check()
    .unwrap();
    pipeline::score_file_with(&default_model(), input, out, crate::common::kn(), &params)
        .expect("score");
    let (header, rows) = read_csv(out);
    assert_eq!(header[0], "Id");
    let mut rows: Vec<Vec<String>> = rows.into_iter().filter(|r| r[9] == "scored").collect();
    rows.sort();
    rows
}

/// Per incident (tenant, incident): grade, p(TP), p(BP), p(FP), priority, grade set, certainty
/// as `threatrank score` writes them.
fn cli_incidents(out: &Path) -> BTreeMap<(u64, u64), Vec<String>> {
    let (_, rows) = read_csv(out);
    let mut m = BTreeMap::new();
    for r in rows.into_iter().filter(|r| r[9] == "scored") {
        let key = (r[1].parse().unwrap(), r[2].parse().unwrap());
        let v = vec![
            r[4].clone(),
            r[5].clone(),
            r[6].clone(),
            r[7].clone(),
            r[8].clone(),
            r[12].clone(),
            r[13].clone(),
        ];
        if let Some(old) = m.insert(key, v.clone()) {
            assert_eq!(old, v, "one incident, one score");
        }
    }
    m
}

#[cfg(feature = "parquet")]
mod parquet_at_rest {
    use super::*;
    use threatrank::convert::{self, ConvertParams};

    #[test]
    fn convert_partitions_by_tenant_and_day_counts_every_record_and_round_trips() {
        let dir = tmp();
        let input = input_with_bad_rows(dir.path());
        let store = dir.path().join("store");
        let params = ConvertParams {
            buffer_rows: 1000, // several flushes: several part files per busy partition
            ..Default::default()
        }
        .check()
        .unwrap();
        let out = convert::csv_to_parquet(&input, &store, &params).expect("convert");
        let n = sample_rows().len() as u64;
        assert_eq!(out.report.records, n + 2);
        assert_eq!(out.report.rejected.len(), 2, "{:?}", out.report.rejected);
        assert_eq!(out.report.accepted, n);
        assert_eq!(out.rows, n);
        let rejects = std::fs::read_to_string(out.rejects.as_ref().unwrap()).unwrap();
        assert!(rejects.contains("Timestamp"), "{rejects}");
        // every part file sits under tenant=<OrgId>/day=<YYYY-MM-DD>, its rows of that tenant
        for f in &out.files {
            let rel = f.strip_prefix(&store).unwrap();
            let parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            assert_eq!(parts.len(), 3, "{rel:?}");
            assert!(parts[0].starts_with("tenant="), "{rel:?}");
            assert!(
                parts[1].starts_with("day=") && parts[1].len() == 14,
                "{rel:?}"
            );
            assert!(parts[2].starts_with("part-") && parts[2].ends_with(".parquet"));
        }
        assert!(out.partitions > 10);
        assert!(
            out.files.len() > out.partitions,
            "several flushes wrote several parts"
        );
        // Parquet → CSV gives back exactly the accepted rows (order: partition by partition)
        let back = dir.path().join("back.csv");
        let o2 = convert::parquet_to_csv(&store, &back).expect("back");
        assert_eq!(o2.rows, n);
        let (h, mut rows) = read_csv(&back);
        let (h0, mut rows0) = read_csv(&sample_path());
        assert_eq!(h, h0);
        rows.sort();
        rows0.sort();
        assert_eq!(rows, rows0);
        // same input, same files
        let store2 = dir.path().join("store2");
        let out2 = convert::csv_to_parquet(&input, &store2, &params).unwrap();
        assert_eq!(out.files.len(), out2.files.len());
        for (a, b) in out.files.iter().zip(&out2.files) {
            assert_eq!(
                std::fs::read(a).unwrap(),
                std::fs::read(b).unwrap(),
                "{}",
                a.display()
            );
        }
    }

    #[test]
    fn scoring_a_parquet_store_gives_what_scoring_the_csv_gives() {
        let dir = tmp();
        let store = dir.path().join("store");
        let params = ConvertParams::default().check().unwrap();
        convert::csv_to_parquet(&sample_path(), &store, &params).unwrap();
        let from_csv = score_rows(&sample_path(), &dir.path().join("a.csv"));
        let from_pq = score_rows(&store, &dir.path().join("b.csv"));
        assert_eq!(from_csv.len(), sample_rows().len());
        assert_eq!(from_csv, from_pq);
        // a single part file reads too, and the CLI takes a folder
        let o = run_os(&[
            "score".as_ref(),
            "--model".as_ref(),
            default_model().as_os_str(),
            "--input".as_ref(),
            store.as_os_str(),
            "--output".as_ref(),
            dir.path().join("c.csv").as_os_str(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (_, rows) = read_csv(&dir.path().join("c.csv"));
        assert_eq!(rows.len(), sample_rows().len());
    }

    #[test]
    fn bad_parquet_rows_are_rejected_with_file_row_and_column_and_bad_files_named() {
        use arrow_array::{ArrayRef, RecordBatch, StringArray};
        use std::sync::Arc;
        let dir = tmp();
        // a typed file of our own making: two good rows and one with a bad AlertId
        let (header, rows) = sample();
        let names: Vec<&str> = header.split(',').collect();
        let cells: Vec<Vec<String>> = rows[..3]
            .iter()
            .map(|r| r.split(',').map(str::to_string).collect())
            .collect();
        let mut cols: Vec<(&str, ArrayRef)> = Vec::new();
        for (c, name) in names.iter().enumerate() {
            let vals: Vec<Option<String>> = cells
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    if *name == "AlertId" && i == 1 {
                        Some("not-a-number".to_string())
                    } else {
                        Some(r[c].clone()).filter(|v| !v.is_empty())
                    }
                })
                .collect();
            cols.push((name, Arc::new(StringArray::from(vals)) as ArrayRef));
        }
        let batch = RecordBatch::try_from_iter(cols).unwrap();
        let p = dir.path().join("one.parquet");
        let f = std::fs::File::create(&p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let ip = IngestParams::default().check().unwrap();
        let ing = ingest::read_path(&p, &ip).expect("read");
        assert_eq!(ing.report.records, 3);
        assert_eq!(ing.report.accepted, 2);
        let rej = &ing.report.rejected[0];
        assert_eq!(rej.file, p.display().to_string());
        assert_eq!(rej.line, 2, "the row within the file");
        assert_eq!(rej.column.as_deref(), Some("AlertId"));
        // not Parquet at all: a clear error naming the file
        let junk = dir.path().join("junk.parquet");
        std::fs::write(&junk, b"Id,OrgId\n1,2\n").unwrap();
        let e = ingest::read_path(&junk, &ip).unwrap_err().to_string();
        assert!(e.contains("junk.parquet") && e.contains("Parquet"), "{e}");
        // a Parquet file without the required columns
        let thin = RecordBatch::try_from_iter(vec![(
            "Id",
            Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
        )])
        .unwrap();
        let tp = dir.path().join("thin.parquet");
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&tp).unwrap(),
            thin.schema(),
            None,
        )
        .unwrap();
        w.write(&thin).unwrap();
        w.close().unwrap();
        let e = ingest::read_path(&tp, &ip).unwrap_err().to_string();
        assert!(e.contains("thin.parquet") && e.contains("OrgId"), "{e}");
        // an empty folder
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = ingest::read_path(&empty, &ip).unwrap_err().to_string();
        assert!(e.contains("no") || e.contains("none"), "{e}");
    }
}

#[cfg(feature = "datafusion")]
mod datafusion_functions {
    use super::*;
    use datafusion::arrow::array::{
        Array, Float32Array, RecordBatch, StringArray, UInt64Array, UInt8Array,
    };
    use std::sync::Arc;
    use threatrank::sql::{self, Engine};

    fn engine() -> Arc<Engine> {
        Arc::new(Engine::load(&default_model(), crate::common::kn().clone()).unwrap())
    }

    fn collect(input: &Path, query: &str) -> Vec<RecordBatch> {
        let rt = sql::run::runtime().unwrap();
        rt.block_on(async {
            let ctx =
                sql::run::local_session(engine(), input, Some(2), sql::run::MemoryLimit::default())
                    .await
                    .unwrap();
            ctx.sql(query).await.unwrap().collect().await.unwrap()
        })
    }

    fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .as_any()
            .downcast_ref::<T>()
            .unwrap_or_else(|| panic!("{name}: {:?}", b.column_by_name(name).unwrap().data_type()))
    }

    /// threatrank_scores as the CLI's per-incident values, plus (rows, rejected) per incident.
    fn sql_incidents(input: &Path) -> (BTreeMap<(u64, u64), Vec<String>>, u64, u64) {
        let batches = collect(
            input,
            "SELECT tenant, incident, rows, rejected, predicted_grade, p_true_positive, \
             p_benign_positive, p_false_positive, priority, grade_set, certainty, model \
             FROM threatrank_scores",
        );
        let mut m = BTreeMap::new();
        let (mut rows_n, mut rej_n) = (0, 0);
        for b in &batches {
            let t = col::<UInt64Array>(b, "tenant");
            let i = col::<UInt64Array>(b, "incident");
            let rows = col::<UInt64Array>(b, "rows");
            let rej = col::<UInt64Array>(b, "rejected");
            let g = col::<StringArray>(b, "predicted_grade");
            let p: Vec<&Float32Array> =
                ["p_true_positive", "p_benign_positive", "p_false_positive"]
                    .iter()
                    .map(|n| col::<Float32Array>(b, n))
                    .collect();
            let pr = col::<UInt8Array>(b, "priority");
            let set = col::<StringArray>(b, "grade_set");
            let cert = col::<StringArray>(b, "certainty");
            let model = col::<StringArray>(b, "model");
            for r in 0..b.num_rows() {
                rows_n += rows.value(r);
                rej_n += rej.value(r);
                if t.is_null(r) {
                    continue;
                }
                assert_eq!(model.value(r).len(), 16);
                let v = vec![
                    g.value(r).to_string(),
                    format!("{:.6}", p[0].value(r)),
                    format!("{:.6}", p[1].value(r)),
                    format!("{:.6}", p[2].value(r)),
                    pr.value(r).to_string(),
                    set.value(r).to_string(),
                    cert.value(r).to_string(),
                ];
                assert!(
                    m.insert((t.value(r), i.value(r)), v).is_none(),
                    "incident twice"
                );
            }
        }
        (m, rows_n, rej_n)
    }

    /// Rows of `query` (as text, sorted) and the spills of its plan, under `memory`.
    fn rows_and_spills(
        input: &Path,
        query: &str,
        memory: sql::run::MemoryLimit,
    ) -> (Vec<Vec<String>>, usize) {
        use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
        use datafusion::physical_plan::ExecutionPlan;
        fn spills(p: &Arc<dyn ExecutionPlan>) -> usize {
            p.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
                + p.children().into_iter().map(spills).sum::<usize>()
        }
        let rt = sql::run::runtime().unwrap();
        rt.block_on(async {
            let ctx = sql::run::local_session(engine(), input, Some(2), memory)
                .await
                .unwrap();
            let plan = ctx
                .sql(query)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
                .await
                .unwrap();
            let mut rows = Vec::new();
            for b in &batches {
                let f: Vec<ArrayFormatter> = b
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()))
                    .collect::<Result<_, _>>()
                    .unwrap();
                for r in 0..b.num_rows() {
                    rows.push(f.iter().map(|f| f.value(r).to_string()).collect());
                }
            }
            rows.sort();
            (rows, spills(&plan))
        })
    }

    /// Under a memory limit the aggregation sorts its incidents' state, spills it and merges
    /// the runs back: the scores are the unbounded plan's, and the plan did spill. (2 MiB is
    /// about the smallest pool this plan runs in: each of its four spilling operators needs
    /// one input batch's state.)
    #[test]
    fn a_memory_limit_spills_the_aggregation_and_keeps_every_score() {
        let q = "SELECT tenant, incident, rows, predicted_grade, p_true_positive, \
                 p_benign_positive, p_false_positive, priority, grade_set, certainty \
                 FROM threatrank_scores";
        let (free, free_spills) = rows_and_spills(&sample_path(), q, sql::run::MemoryLimit::mib(0));
        let (tight, tight_spills) =
            rows_and_spills(&sample_path(), q, sql::run::MemoryLimit::mib(2));
        assert_eq!(free_spills, 0);
        assert!(tight_spills > 0, "2 MiB over {ROWS} rows did not spill");
        assert!(free.len() > 1000, "{} incidents", free.len());
        assert_eq!(free, tight);
        // below what one batch needs: a clear error naming the limit, not a wrong answer
        let o = crate::common::run(&[
            "sql",
            "--model",
            default_model().to_str().unwrap(),
            "--input",
            sample_path().to_str().unwrap(),
            "--memory-limit-mib",
            "1",
            "--partitions",
            "2",
        ]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains("--memory-limit-mib 1"), "{e}");
    }

    #[test]
    fn sql_scores_equal_the_cli_score_on_csv_and_on_parquet_and_count_rejects() {
        let dir = tmp();
        let input = input_with_bad_rows(dir.path());
        let out = dir.path().join("cli.csv");
        score_rows(&input, &out);
        let cli = cli_incidents(&out);
        let (from_csv, rows, rejected) = sql_incidents(&input);
        assert_eq!(cli.len(), from_csv.len());
        assert_eq!(cli, from_csv);
        // the scalar function over the feature column scores exactly as the view does
        let b = collect(
            &input,
            "SELECT count(*) AS n, \
                    sum(CASE WHEN s['priority'] = c.priority \
                              AND s['p_true_positive'] = c.p_true_positive \
                              AND s['p_false_positive'] = c.p_false_positive \
                              AND s['predicted_grade'] = c.predicted_grade \
                              AND s['grade_set'] = c.grade_set THEN 1 ELSE 0 END) AS same \
             FROM (SELECT tenant, incident, threatrank_score(tenant, features) AS s \
                   FROM threatrank_incidents WHERE tenant IS NOT NULL) i \
             JOIN threatrank_scores c ON i.tenant = c.tenant AND i.incident = c.incident",
        );
        let n = b[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        let same = b[0]
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n as usize, cli.len());
        assert_eq!(
            same, n,
            "threatrank_score(tenant, features) = the view's scores"
        );
        // records = accepted + rejected: the two malformed rows are counted, not dropped
        assert_eq!(rows + rejected, sample_rows().len() as u64 + 2);
        assert_eq!(rejected, 2);
        // the same store in Parquet
        let store = dir.path().join("store");
        threatrank::convert::csv_to_parquet(
            &input,
            &store,
            &threatrank::convert::ConvertParams::default()
                .check()
                .unwrap(),
        )
        .unwrap();
        let (from_pq, rows, rejected) = sql_incidents(&store);
        assert_eq!(cli, from_pq);
        assert_eq!((rows, rejected), (sample_rows().len() as u64, 0));
    }

    #[test]
    fn the_top_20_query_orders_by_priority_and_the_cli_writes_it() {
        let batches = collect(&sample_path(), sql::DEFAULT_QUERY);
        let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(n, 20);
        let pr: Vec<u8> = batches
            .iter()
            .flat_map(|b| col::<UInt8Array>(b, "priority").values().to_vec())
            .collect();
        assert!(pr.windows(2).all(|w| w[0] >= w[1]), "{pr:?}");
        let dir = tmp();
        let out = dir.path().join("top.csv");
        let o = run_os(&[
            "sql".as_ref(),
            "--input".as_ref(),
            sample_path().as_os_str(),
            "--model".as_ref(),
            default_model().as_os_str(),
            "--query".as_ref(),
            "SELECT tenant, incident, priority, model FROM threatrank_scores ORDER BY priority DESC, tenant, incident LIMIT 5".as_ref(),
            "--output".as_ref(),
            out.as_os_str(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (h, rows) = read_csv(&out);
        assert_eq!(h, ["tenant", "incident", "priority", "model"]);
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0][2], pr[0].to_string());
        // a query error is reported, not a panic
        let o = run_os(&[
            "sql".as_ref(),
            "--input".as_ref(),
            sample_path().as_os_str(),
            "--query".as_ref(),
            "SELECT nope FROM threatrank_scores".as_ref(),
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    }

    #[test]
    fn shipped_hunts_parse_run_and_queue_their_hits_by_priority() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hunts");
        let hunts = sql::hunts::load_dir(&dir).unwrap();
        assert!(hunts.len() >= 4, "{hunts:?}");
        let e = engine();
        let rt = sql::run::runtime().unwrap();
        let incidents: std::collections::BTreeSet<(String, String)> = sample_rows()
            .iter()
            .map(|r| {
                let f: Vec<&str> = r.split(',').collect();
                (f[1].to_string(), f[2].to_string())
            })
            .collect();
        let mut any = 0;
        for h in &hunts {
            assert!(
                !h.techniques.is_empty() && !h.owner.is_empty(),
                "{}",
                h.name
            );
            let res = rt
                .block_on(async {
                    let ctx = sql::run::local_session(
                        e.clone(),
                        &sample_path(),
                        Some(2),
                        sql::run::MemoryLimit::default(),
                    )
                    .await?;
                    sql::hunts::run(&ctx, &e, h).await
                })
                .unwrap_or_else(|err| panic!("{}: {err}", h.name));
            let n: usize = res.queue.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(n, res.hits, "{}: every hit is scored", h.name);
            any += n;
            let mut last = u8::MAX;
            for b in &res.queue {
                let t = col::<UInt64Array>(b, "tenant");
                let i = col::<UInt64Array>(b, "incident");
                let pr = col::<UInt8Array>(b, "priority");
                for r in 0..b.num_rows() {
                    assert!(incidents.contains(&(t.value(r).to_string(), i.value(r).to_string())));
                    assert!(pr.value(r) <= last, "{}: queue order", h.name);
                    last = pr.value(r);
                }
            }
        }
        assert!(any > 0, "the shipped hunts find something in the sample");
    }

    #[test]
    fn hunt_files_and_results_that_break_the_contract_are_clear_errors() {
        let dir = tmp();
        let bad = "-- name: x\n-- version: 1\n-- owner: me\n-- techniques: X99\n-- description: d\nSELECT 1";
        let e = sql::hunts::parse(Path::new("x.sql"), bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.sql") && e.contains("line 4") && e.contains("X99"),
            "{e}"
        );
        let e = sql::hunts::parse(Path::new("y.sql"), "-- name: y\nSELECT 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("version"), "{e}");
        std::fs::write(
            dir.path().join("no_ids.sql"),
            "-- name: no_ids\n-- version: 3\n-- owner: me\n-- techniques: T1078\n\
             -- description: returns no incident ids\nSELECT \"OrgId\" FROM alerts",
        )
        .unwrap();
        let o = run_os(&[
            "hunt".as_ref(),
            "run".as_ref(),
            "no_ids".as_ref(),
            "--input".as_ref(),
            sample_path().as_os_str(),
            "--model".as_ref(),
            default_model().as_os_str(),
            "--hunts".as_ref(),
            dir.path().as_os_str(),
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("IncidentId"), "{}", stderr(&o));
        let o = run_os(&[
            "hunt".as_ref(),
            "list".as_ref(),
            "--hunts".as_ref(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("hunts")
                .as_os_str(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let listed = crate::common::stdout(&o);
        assert!(
            listed.contains("device_multi_detector_day\t2\t"),
            "{listed}"
        );
    }
}
