//! CLI contract: `train`, `score`, `queue`, `--help`, exit codes, and bad input through the
//! binary.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SCORE_PREFIX: [&str; 9] = [
    "Id",
    "OrgId",
    "IncidentId",
    "AlertId",
    "predicted_grade",
    "p_true_positive",
    "p_benign_positive",
    "p_false_positive",
    "priority",
];

/// Sample rows 1500..2300: data the shared model was not trained on.
fn score_rows() -> Vec<Vec<String>> {
    sample().1[TRAIN_ROWS..TRAIN_ROWS + 800]
        .iter()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn score_cli(model: &Path, input: &Path, output: &Path) -> std::process::Output {
    run_os(&[
        "score".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
    ])
}

fn train_cli(input: &Path, model: &Path, extra: &[&str]) -> std::process::Child {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_threatrank"));
    c.arg("train")
        .arg("--input")
        .arg(input)
        .arg("--model")
        .arg(model)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.spawn().expect("spawn train")
}

#[track_caller]
fn assert_ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// Checks the score contract of `out` against the input `rows` (all expected to be scored).
fn check_scores(out: &Path, rows: &[Vec<String>]) {
    let (h, got) = read_csv(out);
    assert_eq!(&h[..9], SCORE_PREFIX);
    assert_eq!(got.len(), rows.len(), "one output row per input row");
    let grades = ["TruePositive", "BenignPositive", "FalsePositive"];
    for (i, (o, r)) in got.iter().zip(rows).enumerate() {
        for (k, name) in ["Id", "OrgId", "IncidentId", "AlertId"].iter().enumerate() {
            assert_eq!(o[k], r[col(name)], "row {i} column {name}");
        }
        assert!(grades.contains(&o[4].as_str()), "row {i}: grade {:?}", o[4]);
        let p: Vec<f64> = o[5..8].iter().map(|s| s.parse().unwrap()).collect();
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)), "row {i}: {p:?}");
        let sum: f64 = p.iter().sum();
        assert!(
            (sum - 1.0).abs() <= 1e-5,
            "row {i}: probabilities sum to {sum}"
        );
        let prio: u8 = o[8].parse().unwrap();
        assert!(
            (f64::from(prio) - 100.0 * p[0]).abs() <= 0.5 + 1e-4,
            "row {i}: priority {prio} for P(TP) {}",
            p[0]
        );
        assert_eq!(o[9], "scored", "row {i}");
        assert_eq!(o[11], "", "row {i}");
        // The conformal set is never empty, holds the decided grade unless the engine is
        // uncertain, and `certainty` says which.
        let set: threatrank::models::GradeSet = o[12].parse().unwrap();
        assert!(!set.is_empty(), "row {i}: empty set");
        let uncertain = set.is_uncertain();
        assert_eq!(
            o[13],
            if uncertain { "uncertain" } else { "confident" },
            "row {i}"
        );
    }
    // Rows of one incident share its scores.
    let mut by_incident: BTreeMap<(&str, &str), &[String]> = BTreeMap::new();
    for o in &got {
        let prev = by_incident.insert((&o[1], &o[2]), &o[4..9]);
        if let Some(prev) = prev {
            assert_eq!(prev, &o[4..9], "incident {}/{}", o[1], o[2]);
        }
    }
}

#[test]
fn train_writes_model_and_rejects_and_is_deterministic() {
    let dir = tmp();
    let input = train_csv();
    let (m1, m2) = (
        dir.path().join("model1.json"),
        dir.path().join("model2.json"),
    );
    // Two trainings with the shared model's seed at once (2 cores).
    let c1 = train_cli(input, &m1, &["--algorithm", "logistic", "--seed", "42"]);
    let c2 = train_cli(input, &m2, &["--seed", "42", "--algorithm", "logistic"]);
    let (o1, o2) = (
        c1.wait_with_output().unwrap(),
        c2.wait_with_output().unwrap(),
    );
    assert_ok(&o1);
    assert_ok(&o2);
    assert_eq!(stdout(&o1).trim(), m1.display().to_string());
    let e = stderr(&o1);
    assert!(
        e.contains(&format!(
            "{}: {TRAIN_ROWS} records read = {TRAIN_ROWS} accepted + 0 rejected",
            input.display()
        )),
        "{e}"
    );
    assert!(e.contains("trained logistic on"), "{e}");
    let b1 = std::fs::read(&m1).unwrap();
    assert!(b1 == std::fs::read(&m2).unwrap(), "same seed, same bytes");
    // The CLI is glue over the library: same input and seed as the shared model, same bytes.
    assert!(
        b1 == std::fs::read(shared_model()).unwrap(),
        "CLI and library models differ"
    );
    for m in [&m1, &m2] {
        let rej = threatrank::ingest::rejects_path_for(m);
        assert_eq!(
            std::fs::read_to_string(&rej).unwrap(),
            "file,line,record,column,reason\n",
            "{}",
            rej.display()
        );
    }
    let a = threatrank::train::Artifact::load(&m1).unwrap();
    assert_eq!(a.model.algorithm(), threatrank::models::Algorithm::Logistic);
    assert_eq!(a.card.data.records, TRAIN_ROWS as u64);
    assert_eq!(a.card.data.accepted, TRAIN_ROWS as u64);
    assert_eq!(a.card.data.rejected, 0);
    assert_eq!(a.card.data.file, "train.csv");
}

/// `train --model new/dir/m.json` creates the folder for the model and its rejects file.
#[test]
fn train_creates_the_model_folder() {
    let dir = tmp();
    let model = dir.path().join("new/dir/model.json");
    let input = write(dir.path(), "t.csv", &sample_head(300));
    let o = train_cli(&input, &model, &["--algorithm", "logistic"])
        .wait_with_output()
        .unwrap();
    assert_ok(&o);
    assert!(model.exists());
    assert!(threatrank::ingest::rejects_path_for(&model).exists());
}

#[test]
fn gbdt_is_the_default_and_its_scores_keep_the_contract() {
    let dir = tmp();
    let input = write(dir.path(), "small.csv", &sample_head(400));
    let (m1, m2) = (dir.path().join("f1.json"), dir.path().join("f2.json"));
    let c1 = train_cli(&input, &m1, &[]);
    let c2 = train_cli(&input, &m2, &["--seed", "42", "--algorithm", "gbdt"]);
    let (o1, o2) = (
        c1.wait_with_output().unwrap(),
        c2.wait_with_output().unwrap(),
    );
    assert_ok(&o1);
    assert_ok(&o2);
    assert!(stderr(&o1).contains("trained gbdt on"), "{}", stderr(&o1));
    assert_eq!(
        std::fs::read(&m1).unwrap(),
        std::fs::read(&m2).unwrap(),
        "default seed is 42, default algorithm gbdt; same seed, same bytes"
    );
    let a = threatrank::train::Artifact::load(&m1).unwrap();
    assert_eq!(a.model.algorithm(), threatrank::models::Algorithm::Gbdt);

    let rows = score_rows();
    let header = header_names();
    let scored = write(dir.path(), "new.csv", &csv_text(&header, &rows));
    let out = dir.path().join("scores.csv");
    let o = score_cli(&m1, &scored, &out);
    assert_ok(&o);
    check_scores(&out, &rows);
}

#[test]
fn score_writes_one_row_per_input_row_in_input_order() {
    let dir = tmp();
    let rows = score_rows();
    let input = write(dir.path(), "new.csv", &csv_text(&header_names(), &rows));
    let out = dir.path().join("scores.csv");
    let o = score_cli(shared_model(), &input, &out);
    assert_ok(&o);
    let (h, _) = read_csv(&out);
    assert_eq!(
        h,
        [
            "Id",
            "OrgId",
            "IncidentId",
            "AlertId",
            "predicted_grade",
            "p_true_positive",
            "p_benign_positive",
            "p_false_positive",
            "priority",
            "status",
            "top_reason",
            "error",
            "grade_set",
            "certainty"
        ]
    );
    check_scores(&out, &rows);
    let e = stderr(&o);
    assert!(
        e.contains("800 records read = 800 accepted + 0 rejected"),
        "{e}"
    );
    let incidents: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r[col("OrgId")].as_str(), r[col("IncidentId")].as_str()))
        .collect();
    assert!(
        e.contains(&format!("scored {} incidents (", incidents.len()))
            && e.contains("1 partition); wrote 800 rows"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(threatrank::ingest::rejects_path_for(&out)).unwrap(),
        "file,line,record,column,reason\n"
    );
    // Same input, same bytes.
    let out2 = dir.path().join("scores2.csv");
    assert_ok(&score_cli(shared_model(), &input, &out2));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn scoring_never_reads_the_label() {
    let dir = tmp();
    let header = header_names();
    let rows = score_rows();
    let g = col("IncidentGrade");

    let mut files = vec![write(dir.path(), "labelled.csv", &csv_text(&header, &rows))];
    let mut blank = rows.clone();
    for r in &mut blank {
        r[g].clear();
    }
    files.push(write(dir.path(), "blank.csv", &csv_text(&header, &blank)));
    let mut shuffled = rows.clone();
    let n = rows.len();
    for (i, r) in shuffled.iter_mut().enumerate() {
        // Another row's label (7 is coprime with 800), or garbage.
        r[g] = if i % 5 == 0 {
            "Maybe".into()
        } else {
            rows[(i * 7 + 3) % n][g].clone()
        };
    }
    files.push(write(
        dir.path(),
        "garbled.csv",
        &csv_text(&header, &shuffled),
    ));
    let (mut h45, mut r45) = (header.clone(), rows.clone());
    drop_column(&mut h45, &mut r45, g);
    assert_eq!(h45.len(), 45);
    files.push(write(dir.path(), "nolabel.csv", &csv_text(&h45, &r45)));

    let mut outputs = Vec::new();
    for f in &files {
        let out = f.with_extension("scores.csv");
        let o = score_cli(shared_model(), f, &out);
        assert_ok(&o);
        assert!(
            stderr(&o).contains("800 records read = 800 accepted + 0 rejected"),
            "{}",
            stderr(&o)
        );
        outputs.push(std::fs::read(&out).unwrap());
    }
    for (f, o) in files.iter().zip(&outputs).skip(1) {
        assert!(o == &outputs[0], "{} scored differently", f.display());
    }
    check_scores(&files[0].with_extension("scores.csv"), &rows);
}

/// Tenant with the most incidents among `rows`, and its incident ids.
fn busiest_tenant(rows: &[Vec<String>]) -> (String, BTreeSet<String>) {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rows {
        m.entry(r[col("OrgId")].clone())
            .or_default()
            .insert(r[col("IncidentId")].clone());
    }
    m.into_iter().max_by_key(|(_, s)| s.len()).unwrap()
}

/// Parses queue output: (tenant header lines, incident lines as (prio, incident), reason lines
/// per incident).
fn parse_queue(text: &str) -> (Vec<String>, Vec<(u8, String, usize)>) {
    let mut headers = Vec::new();
    let mut incidents: Vec<(u8, String, usize)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("tenant ") {
            headers.push(line.to_string());
        } else if line.starts_with("        ") {
            let t = line.trim_start();
            if t.starts_with('▲') || t.starts_with('▼') {
                incidents.last_mut().expect("reason after an incident").2 += 1;
            }
        } else if let Some(rest) = line.strip_prefix("  ") {
            let mut it = rest.split_whitespace();
            let first = it.next().unwrap_or("");
            if let Ok(p) = first.parse::<u8>() {
                incidents.push((p, it.next().unwrap().to_string(), 0));
            }
        }
    }
    (headers, incidents)
}

#[test]
fn queue_prints_only_the_tenant_asked_for_at_most_top_with_reasons() {
    let dir = tmp();
    let rows = score_rows();
    let input = write(dir.path(), "new.csv", &csv_text(&header_names(), &rows));
    let (tenant, incidents) = busiest_tenant(&rows);
    assert!(
        incidents.len() > 4,
        "need a tenant with more than 4 incidents"
    );
    let model = shared_model();
    let o = run_os(&[
        "queue".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--tenant".as_ref(),
        tenant.as_ref(),
        "--top".as_ref(),
        "4".as_ref(),
        "--reasons".as_ref(),
        "2".as_ref(),
    ]);
    assert_ok(&o);
    let text = stdout(&o);
    let (headers, listed) = parse_queue(&text);
    assert_eq!(
        headers,
        vec![format!(
            "tenant {tenant} — top 4 of {} incidents",
            incidents.len()
        )],
        "{text}"
    );
    assert_eq!(listed.len(), 4, "{text}");
    for w in listed.windows(2) {
        assert!(w[0].0 >= w[1].0, "priority order: {text}");
    }
    for (_, inc, reasons) in &listed {
        assert!(
            incidents.contains(inc),
            "incident {inc} is not tenant {tenant}'s: {text}"
        );
        assert!(
            (1..=2).contains(reasons),
            "{reasons} reasons for {inc}: {text}"
        );
    }

    // Without --tenant: every tenant gets its own block, at most `top` each, own incidents only.
    let o = run_os(&[
        "queue".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--top".as_ref(),
        "2".as_ref(),
    ]);
    assert_ok(&o);
    let text = stdout(&o);
    let mut owner: BTreeMap<(String, String), ()> = BTreeMap::new();
    for r in &rows {
        owner.insert((r[col("OrgId")].clone(), r[col("IncidentId")].clone()), ());
    }
    let tenants: BTreeSet<&str> = rows.iter().map(|r| r[col("OrgId")].as_str()).collect();
    let mut current: Option<String> = None;
    let mut per_block = 0;
    let mut blocks = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("tenant ") {
            current = Some(rest.split_whitespace().next().unwrap().to_string());
            per_block = 0;
            blocks += 1;
        } else if let Some(rest) = line.strip_prefix("  ") {
            let mut it = rest.split_whitespace();
            if it.next().and_then(|p| p.parse::<u8>().ok()).is_some() {
                let inc = it.next().unwrap().to_string();
                let t = current.clone().expect("incident under a tenant");
                assert!(owner.contains_key(&(t.clone(), inc.clone())), "{t}/{inc}");
                per_block += 1;
                assert!(per_block <= 2, "{text}");
            }
        }
    }
    assert_eq!(blocks, tenants.len());

    // An unknown tenant gets an explicit empty answer.
    let o = run_os(&[
        "queue".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--tenant".as_ref(),
        "987654321".as_ref(),
    ]);
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), "no incidents for tenant 987654321");
}

#[test]
fn help_of_each_subcommand_exits_zero_and_names_its_flags() {
    let cases: [(&str, &[&str]); 9] = [
        (
            "train",
            &[
                "--input",
                "--model",
                "--algorithm",
                "--seed",
                "--disable",
                "--signals-key",
                "--signals",
            ],
        ),
        ("score", &["--model", "--input", "--output", "--signals"]),
        (
            "queue",
            &["--model", "--input", "--tenant", "--top", "--reasons"],
        ),
        (
            "eval",
            &[
                "--input",
                "--folds",
                "--seed",
                "--algorithm",
                "--json",
                "--ablation",
                "--repeats",
            ],
        ),
        (
            "report",
            &[
                "--input",
                "--out",
                "--folds",
                "--folds-to-run",
                "--seed",
                "--algorithms",
                "--peers",
                "--peers-dir",
                "--signals",
            ],
        ),
        ("signals", &["build"]),
        ("demo", &["--input", "--out"]),
        (
            "correlate",
            &[
                "--input",
                "--learn-on",
                "--window-seconds",
                "--max-alerts-per-entity",
                "--ignore-incident-ids",
            ],
        ),
        (
            "synth",
            &[
                "--rows",
                "--tenants",
                "--seed",
                "--out",
                "--fit",
                "--open-incidents",
                "--grade-smoothing",
            ],
        ),
    ];
    for (sub, flags) in cases {
        let o = run(&[sub, "--help"]);
        assert_ok(&o);
        let text = stdout(&o);
        for f in flags {
            assert!(text.contains(f), "`{sub} --help` lacks {f}:\n{text}");
        }
    }
    let o = run(&["--help"]);
    assert_ok(&o);
    for sub in ["train", "score", "queue", "eval", "report", "demo", "synth"] {
        assert!(stdout(&o).contains(sub), "{}", stdout(&o));
    }
}

#[test]
fn unknown_algorithm_is_a_clear_usage_error() {
    let dir = tmp();
    let model = dir.path().join("m.json");
    let o = run_os(&[
        "train".as_ref(),
        "--input".as_ref(),
        train_csv().as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        "--algorithm".as_ref(),
        "xgboost".as_ref(),
    ]);
    assert!(!o.status.success());
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("unknown algorithm \"xgboost\"; expected one of logistic, forest"),
        "{e}"
    );
    assert!(!model.exists());
    let o = run(&["eval", "--input", "x.csv", "--algorithm", "svm"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown algorithm \"svm\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_required_flag_is_a_usage_error() {
    let o = run(&["score", "--model", "m.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--input"), "{}", stderr(&o));
}

// ---------------------------------------------------------------- bad input through the CLI

#[test]
fn score_of_an_empty_file_fails_naming_the_file() {
    let dir = tmp();
    let input = write(dir.path(), "empty.csv", "");
    let out = dir.path().join("s.csv");
    let o = score_cli(shared_model(), &input, &out);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "error: {}: empty file (no header line)",
            input.display()
        )),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn score_of_a_wrong_header_fails_naming_file_line_and_columns() {
    let dir = tmp();
    let mut header = header_names();
    let mut rows = rows(5);
    drop_column(&mut header, &mut rows, col("Timestamp"));
    let input = write(dir.path(), "hdr.csv", &csv_text(&header, &rows));
    let out = dir.path().join("s.csv");
    let o = score_cli(shared_model(), &input, &out);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "error: {}: line 1: wrong header: missing required column(s) Timestamp",
            input.display()
        )),
        "{e}"
    );
}

#[test]
fn score_of_partly_bad_input_keeps_rows_in_place_and_writes_rejects() {
    let dir = tmp();
    let header = header_names();
    let mut rows = score_rows()[..50].to_vec();
    rows[4][col("OrgId")] = "org".into();
    rows[17][col("Timestamp")] = "2024-06-31T00:00:00Z".into();
    let mut text = csv_text(&header, &rows).into_bytes();
    // Row 49 (line 51) gets bad UTF-8 in AlertTitle.
    let line_start = text[..text.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let title = rows[49][col("AlertTitle")].clone();
    let prefix: usize = rows[49][..col("AlertTitle")]
        .iter()
        .map(|f| f.len() + 1)
        .sum();
    let at = line_start + prefix;
    assert_eq!(&text[at..at + title.len()], title.as_bytes());
    text.splice(at..at, [0xffu8]);
    let input = dir.path().join("partial.csv");
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("s.csv");
    let o = score_cli(shared_model(), &input, &out);
    assert_ok(&o);
    let e = stderr(&o);
    let name = input.display().to_string();
    assert!(
        e.contains(&format!(
            "{name}: 50 records read = 47 accepted + 3 rejected"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "rejected {name}:6: column OrgId: not a non-negative integer: \"org\""
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!("rejected {name}:19: column Timestamp:")),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "rejected {name}:51: column AlertTitle: invalid UTF-8 at byte 0"
        )),
        "{e}"
    );

    let rej = threatrank::ingest::rejects_path_for(&out);
    assert!(
        e.contains(&format!("rejects written to {}", rej.display())),
        "{e}"
    );
    let (_, rr) = read_csv(&rej);
    let got: Vec<(&str, &str, &str, &str)> = rr
        .iter()
        .map(|r| (r[1].as_str(), r[2].as_str(), r[3].as_str(), r[0].as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("6", "4", "OrgId", name.as_str()),
            ("19", "17", "Timestamp", name.as_str()),
            ("51", "49", "AlertTitle", name.as_str())
        ]
    );
    assert_eq!(rr[1][4], "timestamp out of range: \"2024-06-31T00:00:00Z\"");

    let (_, got) = read_csv(&out);
    assert_eq!(got.len(), 50);
    for (i, (o, r)) in got.iter().zip(&rows).enumerate() {
        if [4, 17, 49].contains(&i) {
            assert_eq!(o[9], "rejected", "row {i}");
            assert!(o[..9].iter().all(String::is_empty), "row {i}: {o:?}");
            assert!(
                o[11].starts_with(&format!("{name}:{}: column ", i + 2)),
                "row {i}: {o:?}"
            );
        } else {
            assert_eq!(o[9], "scored", "row {i}");
            assert_eq!(o[0], r[col("Id")], "row {i}");
            assert_eq!(o[3], r[col("AlertId")], "row {i}");
        }
    }
}

#[test]
fn score_of_a_header_only_file_writes_a_header_only_output() {
    let dir = tmp();
    let input = write(dir.path(), "h.csv", &format!("{}\n", sample().0));
    let out = dir.path().join("s.csv");
    let o = score_cli(shared_model(), &input, &out);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("0 records read = 0 accepted + 0 rejected"),
        "{}",
        stderr(&o)
    );
    let (h, rows) = read_csv(&out);
    assert_eq!(&h[..9], SCORE_PREFIX);
    assert!(rows.is_empty());
}

#[test]
fn train_lists_rejected_rows_next_to_the_model() {
    let dir = tmp();
    let header = header_names();
    let mut rows = rows(300);
    rows[10][col("IncidentGrade")] = "Unknown".into();
    rows[200][col("MitreTechniques")] = "T1".into();
    let input = write(dir.path(), "t.csv", &csv_text(&header, &rows));
    let model = dir.path().join("m.json");
    let o = train_cli(&input, &model, &["--algorithm", "logistic"])
        .wait_with_output()
        .unwrap();
    assert_ok(&o);
    let e = stderr(&o);
    assert!(
        e.contains("300 records read = 298 accepted + 2 rejected"),
        "{e}"
    );
    let (_, rr) = read_csv(&threatrank::ingest::rejects_path_for(&model));
    let got: Vec<(&str, &str)> = rr.iter().map(|r| (r[1].as_str(), r[3].as_str())).collect();
    assert_eq!(
        got,
        vec![("12", "IncidentGrade"), ("202", "MitreTechniques")]
    );
    let a = threatrank::train::Artifact::load(&model).unwrap();
    assert_eq!(
        (
            a.card.data.records,
            a.card.data.accepted,
            a.card.data.rejected
        ),
        (300, 298, 2)
    );
}

#[test]
fn train_without_labels_fails_clearly() {
    let dir = tmp();
    let header = header_names();
    let mut rows = rows(50);
    for r in &mut rows {
        r[col("IncidentGrade")].clear();
    }
    let input = write(dir.path(), "u.csv", &csv_text(&header, &rows));
    let model = dir.path().join("m.json");
    let o = train_cli(&input, &model, &["--algorithm", "logistic"])
        .wait_with_output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.starts_with("error: ") || e.contains("\nerror: "), "{e}");
    assert!(e.contains("labelled") || e.contains("IncidentGrade"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(!model.exists());
}

#[test]
fn score_with_a_missing_model_exits_3() {
    let dir = tmp();
    let input = write(dir.path(), "in.csv", &sample_head(3));
    let model = dir.path().join("nope.json");
    let o = score_cli(&model, &input, &dir.path().join("s.csv"));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope.json"), "{}", stderr(&o));
}

/// A model path that cannot be read, or is not an artifact: exit 3, and the cause (the
/// operating system's or the JSON parser's words) is printed, once.
#[test]
fn an_unreadable_model_prints_its_cause_once() {
    let dir = tmp();
    let input = write(dir.path(), "in.csv", &sample_head(3));
    let folder = dir.path().join("folder.json");
    std::fs::create_dir(&folder).unwrap();
    let o = score_cli(&folder, &input, &dir.path().join("s.csv"));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    let os_words = std::io::Error::from_raw_os_error(21).to_string();
    assert_eq!(e.matches(&os_words).count(), 1, "{e}");
    assert!(e.contains("folder.json"), "{e}");

    let corrupt = write(dir.path(), "corrupt.json", "{\"format_version\": 3, ");
    let o = score_cli(&corrupt, &input, &dir.path().join("s.csv"));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    let json_words = serde_json::from_str::<serde_json::Value>("{\"format_version\": 3, ")
        .unwrap_err()
        .to_string();
    assert_eq!(e.matches(&json_words).count(), 1, "{e}");
    assert!(
        e.contains("corrupt.json: not a valid threatrank model artifact"),
        "{e}"
    );
}

#[test]
fn train_on_unlabelled_input_fails_naming_the_file() {
    let dir = tmp();
    let input = dir.path().join("alerts.jsonl");
    let alert = r#"{"tenant": 1, "alert_id": 2, "timestamp": "2024-06-06T17:32:50Z", "detector": "d", "title": "t", "category": "Execution"}"#;
    std::fs::write(&input, format!("{alert}\n{alert}\n")).unwrap();
    let model = dir.path().join("m.json");
    let o = run_os(&[
        "train".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "{}: no labelled incident among 2 accepted records",
            input.display()
        )),
        "{e}"
    );
    assert!(!model.exists());
}

/// `tune` tries the seeded candidates, keeps the best by its objective, trains with it and
/// records the search in the model card; a bad objective is a usage error.
#[test]
fn tune_records_the_search_and_trains_the_winner() {
    let dir = tmp();
    let input = write(dir.path(), "t.csv", &sample_head(900));
    let model = dir.path().join("tuned.json");
    let o = run_os(&[
        "tune".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--model".as_ref(),
        model.as_os_str(),
        "--trials".as_ref(),
        "3".as_ref(),
        "--folds".as_ref(),
        "2".as_ref(),
        "--objective".as_ref(),
        "incident".as_ref(),
    ]);
    assert_ok(&o);
    assert!(stdout(&o).contains("objective incident"), "{}", stdout(&o));
    let a = threatrank::train::Artifact::load(&model).unwrap();
    let t = a.card.tuning.as_ref().expect("card.tuning");
    assert_eq!(t.trials.len(), 3);
    let best = t.trials[t.best].score;
    assert!(t.trials.iter().all(|x| x.score <= best));
    assert!(t
        .trials
        .iter()
        .all(|x| x.tenant_f1.is_none() && x.incident_f1.is_some()));
    assert_eq!(
        a.card.params,
        threatrank::models::ModelParams::Gbdt(t.best_params().clone())
    );
    let bad = run(&[
        "tune",
        "--input",
        "x.csv",
        "--model",
        "m.json",
        "--objective",
        "all",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// `queue --review` lists exactly the incidents the score CSV marks `uncertain`, labelled
/// `uncertain (…)`, each tenant by priority.
#[test]
fn queue_review_lists_exactly_the_uncertain_incidents() {
    let dir = tmp();
    let rows = score_rows();
    let input = write(dir.path(), "new.csv", &csv_text(&header_names(), &rows));
    let model = shared_model();
    let out = dir.path().join("scores.csv");
    assert_ok(&score_cli(model, &input, &out));
    let (_, scored) = read_csv(&out);
    let uncertain: BTreeSet<(String, String)> = scored
        .iter()
        .filter(|r| r[13] == "uncertain")
        .map(|r| (r[1].clone(), r[2].clone()))
        .collect();
    assert!(
        !uncertain.is_empty(),
        "the sample should hold uncertain incidents"
    );
    let o = run_os(&[
        "queue".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--top".as_ref(),
        "100000".as_ref(),
        "--review".as_ref(),
    ]);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(
        text.starts_with(&format!("needs review: {} of ", uncertain.len())),
        "{text}"
    );
    let mut listed = BTreeSet::new();
    let mut tenant = String::new();
    let mut last_prio = u8::MAX;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("tenant ") {
            tenant = rest.split_whitespace().next().unwrap().to_string();
            last_prio = u8::MAX;
        } else if let Some(rest) = line.strip_prefix("  ") {
            let mut it = rest.split_whitespace();
            if let Ok(p) = it.next().unwrap_or("").parse::<u8>() {
                assert!(p <= last_prio, "priority order: {line}");
                last_prio = p;
                listed.insert((tenant.clone(), it.next().unwrap().to_string()));
                assert!(line.contains("uncertain ("), "{line}");
            }
        }
    }
    assert_eq!(listed, uncertain);
}

#[test]
fn correlate_from_scratch_reports_pairwise_agreement_and_checks_its_params() {
    let sample = sample_path();
    let s = sample.to_str().unwrap();
    let o = run(&["correlate", "--input", s, "--ignore-incident-ids"]);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(text.contains("window 21600 s"), "{text}");
    assert!(
        text.contains("pairwise vs given incident ids: precision 0."),
        "{text}"
    );
    // Without ignoring them, GUIDE ids are all given: nothing to correlate.
    let o = run(&["correlate", "--input", s]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("0 evidence rows to correlate"),
        "{}",
        stdout(&o)
    );
    let o = run(&["correlate", "--input", s, "--window-seconds=-5"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("window_seconds"),
        "{o:?}"
    );
}

/// `eval --repeats 2`: the CV runs with fold seeds 42 and 43; the report keeps seed 42's
/// figures and adds each figure's spread and the paired differences, which agree with the
/// per-model means; the table prints both.
#[test]
fn eval_repeats_reports_spread_and_paired_differences() {
    let dir = tmp();
    let json = dir.path().join("eval.json");
    let o = run_os(&[
        "eval".as_ref(),
        "--input".as_ref(),
        train_csv().as_os_str(),
        "--folds".as_ref(),
        "2".as_ref(),
        "--algorithm".as_ref(),
        "logistic".as_ref(),
        "--split".as_ref(),
        "incident,tenant".as_ref(),
        "--repeats".as_ref(),
        "2".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("repeated CV over 2 fold seeds (42, 43)"),
        "{out}"
    );
    assert!(out.contains("logistic − lookup-baseline"), "{out}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["seed"], 42);
    let r = &v["repeats"];
    assert_eq!(r["seeds"], serde_json::json!([42, 43]));
    assert_eq!(r["reference"], "logistic");
    let rows = r["rows"].as_array().unwrap();
    let paired = r["paired"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "2 splits × (logistic, lookup-baseline)");
    assert_eq!(paired.len(), 2);
    let f = |x: &serde_json::Value| x.as_f64().unwrap();
    for p in paired {
        let split = &p["split"];
        let mean = |model: &str| {
            let row = rows
                .iter()
                .find(|x| &x["split"] == split && x["model"] == model)
                .unwrap();
            let s = &row["macro_f1_rows"];
            assert!(f(&s["min"]) <= f(&s["mean"]) && f(&s["mean"]) <= f(&s["max"]));
            f(&s["mean"])
        };
        let d = f(&p["diff_rows"]["mean"]);
        assert!((d - (mean("logistic") - mean("lookup-baseline"))).abs() < 1e-12);
        assert!(p["ahead_rows"].as_u64().unwrap() <= 2);
    }
    // seed 42's own figures are the first repeat's
    let first = v["splits"][0]["models"][0]["metrics"]["macro_f1_rows"].clone();
    let row = &rows[0]["macro_f1_rows"];
    assert!(f(&row["min"]) <= f(&first) && f(&first) <= f(&row["max"]));
}

/// `eval --split forward` on the first 1,500 sample rows: three day-aligned origins in time
/// order, consecutive windows, a training part at each; every model has per-origin figures
/// whose test counts add up to the pooled figure and whose mean is the mean of the rows; tests
/// with and without tenant history add up to the pooled test set; the table prints the
/// origins and no random-fold split. Bad forward parameters are refused, naming them.
#[test]
fn eval_forward_split_reports_every_origin() {
    let dir = tmp();
    let json = dir.path().join("eval.json");
    let o = run_os(&[
        "eval".as_ref(),
        "--input".as_ref(),
        train_csv().as_os_str(),
        "--split".as_ref(),
        "forward".as_ref(),
        "--algorithm".as_ref(),
        "logistic".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let splits = v["splits"].as_array().unwrap();
    assert_eq!(splits.len(), 1);
    let sp = &splits[0];
    assert_eq!(sp["split"], "forward");
    let f = &sp["forward"];
    assert_eq!(f["test_share"], 0.5);
    assert_eq!(f["origins_built"], 3);
    let origins = f["origins"].as_array().unwrap();
    assert!(origins.len() >= 3, "{f}");
    let int = |x: &serde_json::Value| x.as_i64().unwrap();
    let mut tested = 0;
    for (j, o) in origins.iter().enumerate() {
        let (start, end) = (int(&o["origin_unix"]), int(&o["window_end_unix"]));
        assert_eq!(start % 86_400, 0, "day-aligned origin {o}");
        assert!(start < end, "{o}");
        if let Some(next) = origins.get(j + 1) {
            assert_eq!(end, int(&next["origin_unix"]), "consecutive windows");
        }
        assert!(o["origin"].as_str().unwrap().starts_with("2024-0"), "{o}");
        assert!(int(&o["train_incidents"]) > 0 && int(&o["test_incidents"]) > 0);
        assert_eq!(
            int(&o["test_with_history"]) + int(&o["test_new_tenants"]),
            int(&o["test_incidents"])
        );
        tested += int(&o["test_incidents"]);
    }
    // the latest half of the labelled incidents, give or take the day rounding
    let labelled = int(&v["incidents"]);
    assert!(
        (tested - labelled / 2).abs() < labelled / 5,
        "{tested} of {labelled}"
    );
    let f64_of = |x: &serde_json::Value| x.as_f64().unwrap();
    let models = sp["models"].as_array().unwrap();
    let names: Vec<&str> = models
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["logistic", "lookup-baseline"]);
    for m in models {
        assert_eq!(int(&m["metrics"]["incidents"]), tested);
        let fm = &m["forward"];
        let per = fm["per_origin"].as_array().unwrap();
        assert_eq!(per.len(), origins.len());
        for (p, o) in per.iter().zip(origins) {
            assert_eq!(p["origin"], o["origin"]);
            assert_eq!(p["incidents"], o["test_incidents"]);
            for k in ["macro_f1_rows", "macro_f1_incidents", "pr_auc_tp"] {
                let x = f64_of(&p[k]);
                assert!((0.0..=1.0).contains(&x), "{k} {p}");
            }
        }
        let mean = per.iter().map(|p| f64_of(&p["macro_f1_rows"])).sum::<f64>() / per.len() as f64;
        assert!((f64_of(&fm["mean_macro_f1_rows"]) - mean).abs() < 1e-12);
        let hist = int(&fm["with_history"]["incidents"]);
        let new = int(&fm["new_tenants"]["incidents"]);
        assert_eq!(hist + new, tested);
        // the slice has both: tenants seen before the origin and tenants first seen after it
        assert!(hist > 0 && new > 0, "{hist} with history, {new} new");
        let want_hist: i64 = origins.iter().map(|o| int(&o["test_with_history"])).sum();
        assert_eq!(hist, want_hist);
    }
    for needle in [
        "(forward origins)",
        "mean of 3 origins",
        "with history (pooled)",
        "new tenants (pooled)",
    ] {
        assert!(out.contains(needle), "table lacks {needle:?}:\n{out}");
    }
    assert!(!out.contains("random folds"), "{out}");

    for (flag, value, want) in [
        ("--forward-origins", "0", "forward_origins"),
        ("--forward-test-share", "1", "forward_test_share"),
        ("--split", "later", "unknown split"),
    ] {
        let o = run_os(&[
            "eval".as_ref(),
            "--input".as_ref(),
            train_csv().as_os_str(),
            "--split".as_ref(),
            "forward".as_ref(),
            flag.as_ref(),
            value.as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
        ]);
        assert!(!o.status.success(), "{flag} {value}");
        assert!(stderr(&o).contains(want), "{flag} {value}: {}", stderr(&o));
    }
}
