//! Shared helpers: the shipped sample, CSV builders, a model trained once per test process,
//! and running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use threatrank::ingest::{
    self, IngestError, IngestParams, IngestValidParams, Ingested, InputFormat,
};
use threatrank::models::Algorithm;
use threatrank::pipeline;
use threatrank::train::TrainParams;

/// Path of the shipped GUIDE sample.
pub fn sample_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/guide/guide_sample.csv")
}

/// Header and data lines of the shipped sample (no line terminators). The sample has no quoted
/// fields, so one line is one record.
pub fn sample() -> &'static (String, Vec<String>) {
    static S: OnceLock<(String, Vec<String>)> = OnceLock::new();
    S.get_or_init(|| {
        let text = std::fs::read_to_string(sample_path()).expect("shipped sample is readable");
        assert!(
            !text.contains('"'),
            "helpers assume the sample has no quoted fields"
        );
        let mut lines = text.lines().map(str::to_string);
        let header = lines.next().expect("sample has a header");
        (header, lines.collect())
    })
}

/// Sample header split into names.
pub fn header_names() -> Vec<String> {
    sample().0.split(',').map(str::to_string).collect()
}

/// Position of a column in the sample's (46-column) layout.
pub fn col(name: &str) -> usize {
    header_names()
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

/// The first `n` data rows of the sample, split into fields.
pub fn rows(n: usize) -> Vec<Vec<String>> {
    sample().1[..n]
        .iter()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Joins a header and rows as CSV text (no quoting; `\n` after every line).
pub fn csv_text(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = header.join(",");
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    s
}

/// Header line plus the first `n` data lines, verbatim, each ending in `\n`.
pub fn sample_head(n: usize) -> String {
    let (h, lines) = sample();
    let mut s = String::with_capacity(n * 200);
    s.push_str(h);
    s.push('\n');
    for l in &lines[..n] {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// Removes column `c` from a header and its rows.
pub fn drop_column(header: &mut Vec<String>, rows: &mut [Vec<String>], c: usize) {
    header.remove(c);
    for r in rows {
        r.remove(c);
    }
}

/// Reads GUIDE CSV bytes with default parameters.
pub fn read_guide(bytes: &[u8], name: &str) -> Result<Ingested, IngestError> {
    ingest::read_from(
        bytes,
        name,
        InputFormat::GuideCsv,
        &IngestValidParams::default(),
    )
}

/// Reads GUIDE CSV bytes without labels (as scoring does).
pub fn read_guide_unlabelled(bytes: &[u8], name: &str) -> Result<Ingested, IngestError> {
    let p = IngestParams::default().read_labels(false).check().unwrap();
    ingest::read_from(bytes, name, InputFormat::GuideCsv, &p)
}

/// Reads native JSONL bytes with default parameters.
pub fn read_native(bytes: &[u8], name: &str) -> Result<Ingested, IngestError> {
    ingest::read_from(
        bytes,
        name,
        InputFormat::NativeJsonl,
        &IngestValidParams::default(),
    )
}

/// Asserts the counting invariant and the exact counts.
#[track_caller]
pub fn assert_counts(ing: &Ingested, records: u64, accepted: u64, rejected: usize) {
    let r = &ing.report;
    assert_eq!(
        (r.records, r.accepted, r.rejected.len()),
        (records, accepted, rejected),
        "counts of {}: {:#?}",
        r.summary(),
        r.rejected
    );
    assert!(r.balanced(), "{}", r.summary());
    assert_eq!(r.records, r.accepted + r.rejected.len() as u64);
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("threatrank-it-")
        .tempdir()
        .expect("temp dir")
}

/// A directory that lives as long as the test process (for the shared model).
pub fn process_dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("threatrank-it-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("process dir");
        d
    })
}

/// Number of sample rows used to train the shared model.
pub const TRAIN_ROWS: usize = 1500;

/// The first [`TRAIN_ROWS`] sample rows, written once per process.
pub fn train_csv() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = process_dir().join("train.csv");
        std::fs::write(&p, sample_head(TRAIN_ROWS)).unwrap();
        p
    })
}

/// A logistic model trained once per process through the library on [`train_csv`].
pub fn shared_model() -> &'static PathBuf {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let m = process_dir().join("model.json");
        let params = TrainParams::default()
            .algorithm(Algorithm::Logistic)
            .seed(42);
        let out = pipeline::train_file(train_csv(), &m, &params, kn()).expect("train shared model");
        assert!(out.report.rejected.is_empty());
        m
    })
}

/// Runs the binary with arguments.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_threatrank"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// Runs the binary with path arguments.
pub fn run_os<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_threatrank"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Reads a CSV file with headers into (header, rows).
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// The shipped knowledge tables with the development key (shared by every test).
pub fn kn() -> &'static threatrank::signals::Knowledge {
    static KN: std::sync::OnceLock<threatrank::signals::Knowledge> = std::sync::OnceLock::new();
    KN.get_or_init(|| threatrank::signals::Knowledge::development().expect("shipped tables"))
}
