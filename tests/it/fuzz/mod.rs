//! Fuzz targets on stable Rust: structure-aware property tests (proptest) of every reader and
//! loader that takes outside bytes — GUIDE CSV, native JSONL, the model artifact, the
//! global-signals snapshot, (feature `parquet`) Parquet input and (feature `service`) the HTTP
//! bodies and query strings. `docs/FUZZING.md` lists the invariants, how to run a long
//! campaign and what campaigns found.
//!
//! Every target is one `#[test]` named `fuzz_*`. CI runs [`CI_CASES`]-scaled fixed counts from a
//! fixed seed; `THREATRANK_FUZZ_CASES=N` runs N cases per target and `THREATRANK_FUZZ_SEED=S`
//! explores another part of the input space. A failure names the seed and the shrunk input.

use crate::common::*;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use threatrank::domain::Evidence;
use threatrank::ingest::{
    GuideReader, IngestError, IngestValidParams, Ingested, NativeReader, RecordResult, RecordSource,
};
use threatrank::models::{ForestParams, GbdtParams, ModelParams};
use threatrank::pipeline::{self, Loaded};
use threatrank::signals::{GlobalSignals, Knowledge, PseudonymKey, SignalsParams};
use threatrank::train::{Artifact, TrainParams};

// ---- campaign knobs -------------------------------------------------------------------------

/// Cases per unit of a target's weight in CI (a debug build): the module stays under a minute.
/// A long campaign sets `THREATRANK_FUZZ_CASES` instead (cases per target).
const CI_CASES: u32 = 32;

/// Default seed; `THREATRANK_FUZZ_SEED` overrides it.
const DEFAULT_SEED: u64 = 19;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// Runs `check` on `weight * CI_CASES` generated cases (or `THREATRANK_FUZZ_CASES`), from a
/// seed derived from `THREATRANK_FUZZ_SEED` and the target's name; with
/// `THREATRANK_FUZZ_SECONDS` (CPU seconds, see [`spent_seconds`]), repeats such rounds (the seed moving on each round, starting at
/// `THREATRANK_FUZZ_ROUND`, default 0) until that much time has been spent. Panics with what
/// reproduces the failure and the shrunk failing input.
fn fuzz<S>(
    target: &str,
    weight: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = env_u64("THREATRANK_FUZZ_CASES").map_or(weight * CI_CASES, |n| n as u32);
    let seed = env_u64("THREATRANK_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let budget = env_u64("THREATRANK_FUZZ_SECONDS").map(|s| s as f64);
    let start = std::time::Instant::now();
    let cpu0 = cpu_seconds();
    let first = env_u64("THREATRANK_FUZZ_ROUND").unwrap_or(0);
    let mut round = first;
    loop {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&fnv(target.as_bytes()).to_le_bytes());
        key[16..24].copy_from_slice(&round.to_le_bytes());
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2048,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
        if let Err(e) = runner.run(&strategy, &check) {
            panic!(
                "{target} failed; reproduce with THREATRANK_FUZZ_SEED={seed} \
                 THREATRANK_FUZZ_ROUND={round} THREATRANK_FUZZ_CASES={cases}: {e}"
            );
        }
        round += 1;
        let spent = spent_seconds(cpu0, start);
        if budget.is_some() {
            eprintln!(
                "{target}: round {round} done, {} cases, {spent:.0} s",
                u64::from(cases) * (round - first)
            );
        }
        if budget.is_none_or(|b| spent >= b) {
            break;
        }
    }
    eprintln!(
        "{target}: {} cases ({} rounds of {cases}), seed {seed}, {:.1} s wall, {:.1} s CPU",
        u64::from(cases) * (round - first),
        round - first,
        start.elapsed().as_secs_f64(),
        cpu_seconds()
            .zip(cpu0)
            .map_or(f64::NAN, |(now, then)| now - then),
    );
}

/// CPU seconds (user + system, all threads) this process has used, from `/proc/self/stat`
/// (Linux, 100 ticks per second); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the command name in parentheses: state is the 3rd field, utime the 14th
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// What a campaign budget counts: CPU seconds of this process where they can be read (so a
/// campaign at low priority on a busy machine still does its share of work), else wall seconds.
fn spent_seconds(cpu0: Option<f64>, start: std::time::Instant) -> f64 {
    match (cpu_seconds(), cpu0) {
        (Some(now), Some(then)) => now - then,
        _ => start.elapsed().as_secs_f64(),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Runs `f`, turning a panic into a test failure naming `what`.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        TestCaseError::fail(format!("{what} panicked: {msg}"))
    })
}

// ---- nasty values ---------------------------------------------------------------------------

/// Field values that have broken parsers elsewhere: signs, overflow, floats, NUL, BOM, invalid
/// and odd UTF-8, bad dates, near-miss vocabulary.
const NASTY: &[&[u8]] = &[
    b"",
    b" ",
    b"-1",
    b"0",
    b"+7",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775808",
    b"99999999999999999999999999999999",
    b"1e999",
    b"-0",
    b"NaN",
    b"inf",
    b"4192202772.0",
    b"7.5",
    b"7.",
    b".0",
    b"0x1F",
    b"\0",
    b"\0\0\0\0",
    b"\xff\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"\xe2\x80\xae",
    b"T1566;T1566.002",
    b"T1",
    b"T9999.999",
    b";;;",
    b"T1566,T1078",
    b"TruePositive",
    b"truepositive",
    b"Impacted",
    b"related",
    b"2024-06-06T17:32:50.000Z",
    b"2024-02-30T00:00:00Z",
    b"2024-13-01T00:00:00Z",
    b"9999-12-31T23:59:59Z",
    b"0000-01-01T00:00:00Z",
    b"-2024-06-06T17:32:50Z",
    b"2024-06-06T17:32:50+99:00",
    b"2024-06-06T17:32:50.99999999999999999999Z",
    b"2024-06-06T24:00:00Z",
    b"2024-06-06T23:59:60Z",
    b"2024-06-06",
    b"2024-06-06T17:32:50",
    b"17:32:50",
];

/// One field value: a nasty one, random bytes, a long digit run, or an oversized field.
fn nasty_bytes() -> impl Strategy<Value = Blob> {
    prop_oneof![
        6 => select(NASTY).prop_map(<[u8]>::to_vec),
        2 => proptest::collection::vec(any::<u8>(), 0..12),
        1 => "[0-9]{15,40}".prop_map(String::into_bytes),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => (65_530usize..65_542).prop_map(|n| vec![b'7'; n]),
    ]
    .prop_map(Blob)
}

/// Bytes that print short in a shrunk failing case: escaped, the first 80 and the length.
#[derive(Clone, PartialEq)]
struct Blob(Vec<u8>);

impl Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.0[..self.0.len().min(80)].escape_ascii().to_string();
        if self.0.len() > 80 {
            write!(f, "b\"{shown}\"… ({} bytes)", self.0.len())
        } else {
            write!(f, "b\"{shown}\"")
        }
    }
}

/// Raw input bytes of up to `max` bytes, drawn from `byte`.
fn blob(byte: impl Strategy<Value = u8>, max: usize) -> impl Strategy<Value = Blob> {
    proptest::collection::vec(byte, 0..max).prop_map(Blob)
}

// ---- shared checks --------------------------------------------------------------------------

/// Line ends as the readers count them (`\r\n` once, lone `\r`, `\n`): the 1-based line of
/// every line start, and whether the line holds any byte.
fn lines_of(bytes: &[u8], cr_ends_line: bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' || (cr_ends_line && b == b'\r') {
            out.push((start, i));
            if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    if start < bytes.len() {
        out.push((start, bytes.len()));
    }
    out
}

/// Invariants every ingest run must keep, whatever the input: counts balance, each record index
/// is either accepted evidence or one rejection, every rejection names the file, a line inside
/// the input and (unless the record as a whole is broken) a column of the header.
fn check_report(
    ing: &Ingested,
    name: &str,
    n_lines: usize,
    columns: &[String],
    whole_record_reasons: &[&str],
) -> Result<(), TestCaseError> {
    let r = &ing.report;
    prop_assert!(r.balanced(), "{}", r.summary());
    let mut seen = vec![false; r.records as usize];
    let mut mark = |i: u64, what: &str| -> Result<(), TestCaseError> {
        let slot = seen.get_mut(i as usize).ok_or_else(|| {
            TestCaseError::fail(format!("{what} record {i} beyond {} records", r.records))
        })?;
        prop_assert!(!*slot || what == "evidence", "record {i} counted twice");
        *slot = true;
        Ok(())
    };
    for e in &ing.evidence {
        mark(e.record, "evidence")?;
    }
    let accepted: std::collections::BTreeSet<u64> = ing.evidence.iter().map(|e| e.record).collect();
    prop_assert_eq!(accepted.len() as u64, r.accepted);
    for rej in &r.rejected {
        prop_assert!(
            !accepted.contains(&rej.record),
            "record {} both accepted and rejected",
            rej.record
        );
        mark(rej.record, "rejection")?;
        prop_assert_eq!(&rej.file, name);
        prop_assert!(
            rej.line >= 1 && rej.line as usize <= n_lines.max(1),
            "rejection line {} outside 1..={n_lines}: {rej}",
            rej.line
        );
        match &rej.column {
            Some(c) => prop_assert!(
                columns.iter().any(|h| h == c),
                "rejection names column {c:?}, not a field of the input: {rej}"
            ),
            None => prop_assert!(
                whole_record_reasons
                    .iter()
                    .any(|p| rej.reason.starts_with(p)),
                "rejection names no field: {rej}"
            ),
        }
    }
    prop_assert!(
        seen.iter().all(|s| *s),
        "a record is neither accepted nor rejected"
    );
    Ok(())
}

/// Drains a reader item by item, then in batches of `batch`: both must give the same items.
fn same_items_by_batch<S: RecordSource>(
    one_by_one: S,
    mut batched: S,
    batch: usize,
) -> Result<(), TestCaseError> {
    let a: Vec<RecordResult> = one_by_one.collect();
    let mut b: Vec<RecordResult> = Vec::new();
    loop {
        let got = batched.next_batch(batch);
        if got.is_empty() {
            break;
        }
        b.extend(got);
    }
    prop_assert_eq!(a, b, "next() and next_batch({}) disagree", batch);
    Ok(())
}

fn without_record(mut e: Evidence) -> Evidence {
    e.record = 0;
    e
}

// ---- GUIDE CSV ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Eol {
    Lf,
    CrLf,
    Cr,
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Eol::Lf => b"\n",
            Eol::CrLf => b"\r\n",
            Eol::Cr => b"\r",
        }
    }
}

fn eol() -> impl Strategy<Value = Eol> {
    prop_oneof![6 => Just(Eol::Lf), 2 => Just(Eol::CrLf), 1 => Just(Eol::Cr)]
}

/// One edit of a CSV row (field indices are taken modulo the row's length).
#[derive(Debug, Clone)]
enum FieldEdit {
    Set(usize, Blob),
    Drop(usize),
    Duplicate(usize),
    Quote(usize),
    OpenQuote(usize),
    Cut(usize),
}

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    prop_oneof![
        8 => (0..46usize, nasty_bytes()).prop_map(|(i, b)| FieldEdit::Set(i, b)),
        1 => (0..46usize).prop_map(FieldEdit::Drop),
        1 => (0..46usize).prop_map(FieldEdit::Duplicate),
        1 => (0..46usize).prop_map(FieldEdit::Quote),
        1 => (0..46usize).prop_map(FieldEdit::OpenQuote),
        1 => (0..400usize).prop_map(FieldEdit::Cut),
    ]
}

#[derive(Debug, Clone)]
enum HeaderEdit {
    Keep,
    /// columns swapped in the header and in every row: nothing may change
    Swap(usize, usize),
    /// surrounding spaces around one name: nothing may change
    Pad(usize),
    DropColumn(usize),
    Rename(usize, Blob),
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    prop_oneof![
        6 => Just(HeaderEdit::Keep),
        2 => (0..46usize, 0..46usize).prop_map(|(a, b)| HeaderEdit::Swap(a, b)),
        1 => (0..46usize).prop_map(HeaderEdit::Pad),
        1 => (0..46usize).prop_map(HeaderEdit::DropColumn),
        1 => (0..46usize, nasty_bytes()).prop_map(|(i, b)| HeaderEdit::Rename(i, b)),
    ]
}

#[derive(Debug, Clone)]
struct CsvRow {
    sample: usize,
    edits: Vec<FieldEdit>,
    eol: Eol,
    blank_before: bool,
}

#[derive(Debug, Clone)]
struct GuideCase {
    header: HeaderEdit,
    bom: bool,
    header_eol: Eol,
    rows: Vec<CsvRow>,
    final_eol: bool,
    cut: Option<usize>,
}

fn guide_case() -> impl Strategy<Value = GuideCase> {
    let n_sample = sample().1.len();
    let row = (
        0..n_sample,
        prop_oneof![
            3 => Just(Vec::new()),
            4 => proptest::collection::vec(field_edit(), 1..4),
        ],
        eol(),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(sample, edits, eol, blank_before)| CsvRow {
            sample,
            edits,
            eol,
            blank_before,
        });
    (
        header_edit(),
        proptest::bool::weighted(0.2),
        eol(),
        proptest::collection::vec(row, 0..24),
        proptest::bool::weighted(0.8),
        proptest::option::weighted(0.1, 0..20_000usize),
    )
        .prop_map(
            |(header, bom, header_eol, rows, final_eol, cut)| GuideCase {
                header,
                bom,
                header_eol,
                rows,
                final_eol,
                cut,
            },
        )
}

fn apply_field_edit(fields: &mut Vec<Vec<u8>>, line: &mut Option<usize>, e: &FieldEdit) {
    let n = fields.len();
    if n == 0 {
        return;
    }
    match e {
        FieldEdit::Set(i, b) => fields[i % n] = b.0.clone(),
        FieldEdit::Drop(i) => {
            fields.remove(i % n);
        }
        FieldEdit::Duplicate(i) => {
            let f = fields[i % n].clone();
            fields.insert(i % n, f);
        }
        FieldEdit::Quote(i) => {
            let f = &mut fields[i % n];
            let mut q = vec![b'"'];
            for &b in f.iter() {
                if b == b'"' {
                    q.push(b'"');
                }
                q.push(b);
            }
            q.push(b'"');
            *f = q;
        }
        FieldEdit::OpenQuote(i) => fields[i % n].insert(0, b'"'),
        FieldEdit::Cut(k) => *line = Some(*k),
    }
}

/// The file bytes of a case, and whether each data record maps to one line (no quote, no line
/// end inside a field).
struct BuiltCsv {
    bytes: Vec<u8>,
    /// the header still has every required column, intact
    header_ok: bool,
    /// one record per non-empty line: the line model below is exact
    simple: bool,
    /// for each row of the case: the sample row it must equal when accepted untouched
    untouched: Vec<Option<usize>>,
}

fn build_csv(case: &GuideCase) -> BuiltCsv {
    let mut header: Vec<Vec<u8>> = header_names().into_iter().map(String::into_bytes).collect();
    let mut rows: Vec<Vec<Vec<u8>>> = case
        .rows
        .iter()
        .map(|r| {
            sample().1[r.sample]
                .split(',')
                .map(|f| f.as_bytes().to_vec())
                .collect()
        })
        .collect();
    let n = header.len();
    let mut header_ok = true;
    let mut same_meaning = true;
    match &case.header {
        HeaderEdit::Keep => {}
        HeaderEdit::Swap(a, b) => {
            header.swap(a % n, b % n);
            for r in &mut rows {
                r.swap(a % n, b % n);
            }
        }
        HeaderEdit::Pad(i) => {
            let f = &mut header[i % n];
            f.insert(0, b' ');
            f.push(b' ');
        }
        HeaderEdit::DropColumn(i) => {
            let name = String::from_utf8_lossy(&header[i % n]).into_owned();
            header.remove(i % n);
            for r in &mut rows {
                r.remove(i % n);
            }
            header_ok = !threatrank::ingest::GUIDE_REQUIRED.contains(&name.as_str());
            same_meaning = false;
        }
        HeaderEdit::Rename(i, b) => {
            header[i % n] = b.0.clone();
            header_ok = false;
            same_meaning = false;
        }
    }
    let mut bytes = Vec::new();
    if case.bom {
        bytes.extend_from_slice(b"\xef\xbb\xbf");
    }
    bytes.extend(header.join(&b','));
    let mut prev_eol = case.header_eol;
    bytes.extend_from_slice(prev_eol.bytes());
    let mut simple = !header
        .iter()
        .flatten()
        .any(|b| matches!(b, b'"' | b'\n' | b'\r'));
    let mut untouched = Vec::new();
    let last = case.rows.len().saturating_sub(1);
    for (k, (row, mut fields)) in case.rows.iter().zip(rows).enumerate() {
        let mut cut = None;
        for e in &row.edits {
            apply_field_edit(&mut fields, &mut cut, e);
        }
        let mut line = fields.join(&b',');
        if let Some(c) = cut {
            line.truncate(c);
        }
        simple &= !line.iter().any(|b| matches!(b, b'"' | b'\n' | b'\r'));
        untouched.push((row.edits.is_empty() && same_meaning).then_some(row.sample));
        if row.blank_before {
            // the previous line's own ending again, so `\r` + `\n` never merge into one
            bytes.extend_from_slice(prev_eol.bytes());
        }
        if line.is_empty() && prev_eol == Eol::Cr && row.eol != Eol::Cr {
            // `\r` then `\n` would read as one line end: keep the model honest
            simple = false;
        }
        bytes.extend(line);
        if k < last || case.final_eol {
            bytes.extend_from_slice(row.eol.bytes());
        }
        prev_eol = row.eol;
    }
    if let Some(c) = case.cut {
        bytes.truncate(c);
        untouched.iter_mut().for_each(|u| *u = None);
    }
    BuiltCsv {
        bytes,
        header_ok,
        simple,
        untouched,
    }
}

/// Evidence of every sample row read alone (the shipped sample is all valid).
fn sample_evidence() -> &'static Vec<Evidence> {
    static E: OnceLock<Vec<Evidence>> = OnceLock::new();
    E.get_or_init(|| {
        let ing = read_guide(&std::fs::read(sample_path()).unwrap(), "guide_sample.csv").unwrap();
        assert_eq!(
            ing.evidence.len(),
            sample().1.len(),
            "the sample has rejects"
        );
        ing.evidence.into_iter().map(without_record).collect()
    })
}

/// The first CSV record of `bytes` (BOM stripped, fields trimmed): the header a reader sees.
fn first_record(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut rec = csv::ByteRecord::new();
    match r.read_byte_record(&mut rec) {
        Ok(true) => rec
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_string())
            .collect(),
        _ => Vec::new(),
    }
}

const GUIDE_WHOLE_RECORD: &[&str] = &["expected ", "unterminated quoted field", "read error"];

fn check_guide(bytes: &[u8], header: &[String]) -> Result<Option<Ingested>, TestCaseError> {
    let name = "fuzz.csv";
    let params = IngestValidParams::default();
    let ing = match no_panic("GUIDE reader", || read_guide(bytes, name))? {
        Ok(ing) => ing,
        Err(
            IngestError::Empty { file }
            | IngestError::Header { file, .. }
            | IngestError::BadHeader { file, .. },
        ) => {
            prop_assert_eq!(file, name);
            return Ok(None);
        }
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error kind: {e}"))),
    };
    let n_lines = lines_of(bytes, true).len();
    check_report(&ing, name, n_lines, header, GUIDE_WHOLE_RECORD)?;
    let batch = 1 + (bytes.len() % 5);
    no_panic("GUIDE batches", || {
        same_items_by_batch(
            GuideReader::new(bytes, name, &params).unwrap(),
            GuideReader::new(bytes, name, &params).unwrap(),
            batch,
        )
    })??;
    Ok(Some(ing))
}

#[test]
fn fuzz_guide_csv_structured() {
    let _ = sample_evidence();
    fuzz("fuzz_guide_csv_structured", 4, guide_case(), |case| {
        let built = build_csv(&case);
        let ing = check_guide(&built.bytes, &first_record(&built.bytes))?;
        let Some(ing) = ing else {
            prop_assert!(
                !built.header_ok || case.cut.is_some(),
                "an intact header was refused"
            );
            return Ok(());
        };
        if case.cut.is_some() {
            return Ok(());
        }
        // Model of the input: one record per non-empty data line.
        if built.simple {
            let lines = lines_of(&built.bytes, true);
            let records: Vec<usize> = (1..lines.len())
                .filter(|&l| lines[l].1 > lines[l].0)
                .collect();
            prop_assert_eq!(ing.report.records, records.len() as u64, "records read");
            for rej in &ing.report.rejected {
                prop_assert_eq!(
                    rej.line as usize,
                    records[rej.record as usize] + 1,
                    "line of record {}: {}",
                    rej.record,
                    rej
                );
            }
            // Rows left untouched read exactly as the sample row (header by name).
            let by_record: BTreeMap<u64, &Evidence> =
                ing.evidence.iter().map(|e| (e.record, e)).collect();
            let nonblank: Vec<usize> = (0..case.rows.len())
                .filter(|&k| {
                    !case.rows[k]
                        .edits
                        .iter()
                        .any(|e| matches!(e, FieldEdit::Cut(0)))
                })
                .collect();
            if nonblank.len() == records.len() {
                for (rec, &k) in nonblank.iter().enumerate() {
                    if let Some(s) = built.untouched[k] {
                        let got = by_record.get(&(rec as u64)).ok_or_else(|| {
                            TestCaseError::fail(format!("untouched row {k} was rejected"))
                        })?;
                        prop_assert_eq!(
                            &without_record((*got).clone()),
                            &sample_evidence()[s],
                            "untouched row {} misread",
                            k
                        );
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_guide_csv_bytes() {
    let header = sample().0.clone();
    let input = prop_oneof![
        blob(any::<u8>(), 2048),
        blob(
            prop_oneof![4 => any::<u8>(), 1 => select(&b",\"\r\n\0"[..])],
            2048
        )
        .prop_map(move |b| {
            let mut v = header.clone().into_bytes();
            v.push(b'\n');
            v.extend(b.0);
            Blob(v)
        }),
    ];
    fuzz("fuzz_guide_csv_bytes", 2, input, |Blob(bytes)| {
        let _ = check_guide(&bytes, &first_record(&bytes))?;
        Ok(())
    });
}

// ---- native JSONL ---------------------------------------------------------------------------

/// One alert line as ordered (key, raw JSON text) pairs, built from a sample row.
fn native_fields(row: usize) -> Vec<(String, String)> {
    let line = &sample().1[row];
    let f: Vec<&str> = line.split(',').collect();
    let get = |name: &str| f[col(name)];
    let s = |v: &str| serde_json::to_string(v).unwrap();
    let techniques: Vec<&str> = get("MitreTechniques")
        .split(';')
        .filter(|t| !t.is_empty())
        .collect();
    let severity = ["informational", "low", "medium", "high", "critical"][row % 5];
    let mut out = vec![
        ("tenant".to_string(), get("OrgId").to_string()),
        ("alert_id".into(), get("AlertId").to_string()),
        ("incident_id".into(), get("IncidentId").to_string()),
        ("timestamp".into(), s(get("Timestamp"))),
        ("detector".into(), s(&format!("D{}", get("DetectorId")))),
        ("title".into(), s(get("AlertTitle"))),
        ("category".into(), s(get("Category"))),
        (
            "techniques".into(),
            serde_json::to_string(&techniques).unwrap(),
        ),
        ("severity".into(), s(severity)),
        (
            "entities".into(),
            format!(
                r#"[{{"type":{},"role":{},"value":{}}}]"#,
                s(get("EntityType")),
                s(get("EvidenceRole")),
                get("DeviceId")
            ),
        ),
        ("id".into(), get("Id").to_string()),
    ];
    if !get("IncidentGrade").is_empty() {
        out.push(("grade".into(), s(get("IncidentGrade"))));
    }
    out
}

fn join_fields(fields: &[(String, String)]) -> Vec<u8> {
    let parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
        .collect();
    format!("{{{}}}", parts.join(",")).into_bytes()
}

/// Raw JSON values that break decoders: overflow, lone surrogates, deep nesting, wrong types.
const NASTY_JSON: &[&str] = &[
    "null",
    "true",
    "-1",
    "0",
    "1.5",
    "1e400",
    "-1e400",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "-9223372036854775809",
    "\"\"",
    "\" \"",
    "\"x\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\uFEFF\"",
    "\"2024-02-30T00:00:00Z\"",
    "\"2024-06-06T17:32:50+99:00\"",
    "\"9999-12-31T23:59:59.999999999Z\"",
    "\"T1566\"",
    "[\"T1566\",\"x\"]",
    "[\"T1566.002\",\"T1566.002\"]",
    "[]",
    "{}",
    "[null]",
    "[{}]",
    "[{\"type\":\"Ip\",\"value\":[1]}]",
    "[{\"type\":\"Ip\",\"role\":\"Impacted\",\"value\":-5}]",
    "[{\"type\":\"Machine\",\"role\":\"Impacted\",\"value\":1.5e300}]",
    "[{\"type\":\"\",\"value\":1}]",
    "[{\"type\":\"Ip\",\"extra\":1}]",
    "\"TruePositive\"",
    "\"truepositive\"",
    "\"critical\"",
    "\"CRITICAL\"",
];

#[derive(Debug, Clone)]
enum JsonLineEdit {
    Remove(usize),
    Set(usize, String),
    Deep(usize, usize),
    Unknown(String),
    DuplicateKey(usize, String),
    Splice(usize, Blob),
    Cut(usize),
}

fn json_line_edit() -> impl Strategy<Value = JsonLineEdit> {
    let raw = prop_oneof![
        4 => select(NASTY_JSON).prop_map(str::to_string),
        1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        1 => any::<i128>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| f.to_string()),
    ];
    prop_oneof![
        2 => (0..12usize).prop_map(JsonLineEdit::Remove),
        6 => (0..12usize, raw.clone()).prop_map(|(i, r)| JsonLineEdit::Set(i, r)),
        1 => (0..12usize, 100..300usize).prop_map(|(i, d)| JsonLineEdit::Deep(i, d)),
        1 => "[a-z_]{1,10}".prop_map(JsonLineEdit::Unknown),
        1 => (0..12usize, raw).prop_map(|(i, r)| JsonLineEdit::DuplicateKey(i, r)),
        2 => (0..400usize, nasty_bytes()).prop_map(|(p, b)| JsonLineEdit::Splice(p, b)),
        1 => (0..400usize).prop_map(JsonLineEdit::Cut),
    ]
}

#[derive(Debug, Clone)]
struct JsonRow {
    sample: usize,
    edits: Vec<JsonLineEdit>,
    crlf: bool,
    blank_before: bool,
}

#[derive(Debug, Clone)]
struct NativeCase {
    bom: bool,
    rows: Vec<JsonRow>,
    final_eol: bool,
    labels: bool,
}

fn native_case() -> impl Strategy<Value = NativeCase> {
    let n_sample = sample().1.len();
    let row = (
        0..n_sample,
        prop_oneof![
            3 => Just(Vec::new()),
            4 => proptest::collection::vec(json_line_edit(), 1..4),
        ],
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(sample, edits, crlf, blank_before)| JsonRow {
            sample,
            edits,
            crlf,
            blank_before,
        });
    (
        proptest::bool::weighted(0.2),
        proptest::collection::vec(row, 1..24),
        proptest::bool::weighted(0.8),
        any::<bool>(),
    )
        .prop_map(|(bom, rows, final_eol, labels)| NativeCase {
            bom,
            rows,
            final_eol,
            labels,
        })
}

fn native_line(row: &JsonRow) -> Vec<u8> {
    let mut fields = native_fields(row.sample);
    let mut tail: Vec<JsonLineEdit> = Vec::new();
    for e in &row.edits {
        let n = fields.len();
        match e {
            JsonLineEdit::Remove(i) if n > 0 => {
                fields.remove(i % n);
            }
            JsonLineEdit::Set(i, raw) if n > 0 => fields[i % n].1 = raw.clone(),
            JsonLineEdit::Deep(i, d) if n > 0 => {
                fields[i % n].1 = format!("{}{}", "[".repeat(*d), "]".repeat(*d))
            }
            JsonLineEdit::Unknown(k) => fields.push((k.clone(), "1".into())),
            JsonLineEdit::DuplicateKey(i, raw) if n > 0 => {
                let k = fields[i % n].0.clone();
                fields.push((k, raw.clone()));
            }
            JsonLineEdit::Splice(..) | JsonLineEdit::Cut(_) => tail.push(e.clone()),
            _ => {}
        }
    }
    let mut line = join_fields(&fields);
    for e in tail {
        match e {
            JsonLineEdit::Splice(p, b) => {
                let p = p.min(line.len());
                line.splice(p..p, b.0);
            }
            JsonLineEdit::Cut(c) => line.truncate(c),
            _ => {}
        }
    }
    line
}

fn build_jsonl(case: &NativeCase) -> (Vec<u8>, Vec<Option<usize>>) {
    let mut bytes = Vec::new();
    if case.bom {
        bytes.extend_from_slice(b"\xef\xbb\xbf");
    }
    let mut untouched = Vec::new();
    let last = case.rows.len() - 1;
    for (k, row) in case.rows.iter().enumerate() {
        if row.blank_before {
            bytes.push(b'\n');
        }
        bytes.extend(native_line(row));
        untouched.push(row.edits.is_empty().then_some(row.sample));
        if k < last || case.final_eol {
            bytes.extend_from_slice(if row.crlf { b"\r\n" } else { b"\n" });
        }
    }
    (bytes, untouched)
}

/// Evidence of one unedited sample alert line, read alone.
fn native_evidence(row: usize, labels: bool) -> Vec<Evidence> {
    let p = threatrank::ingest::IngestParams::default()
        .read_labels(labels)
        .check()
        .unwrap();
    let line = join_fields(&native_fields(row));
    let ing = threatrank::ingest::read_from(
        line.as_slice(),
        "one.jsonl",
        threatrank::ingest::InputFormat::NativeJsonl,
        &p,
    )
    .unwrap();
    assert!(ing.report.rejected.is_empty(), "{:?}", ing.report.rejected);
    ing.evidence.into_iter().map(without_record).collect()
}

/// Fields a native rejection may name: the top-level fields of [`NativeAlert`] as serde spells
/// them, and the entity sub-fields.
fn native_columns() -> Vec<String> {
    let alert = threatrank::ingest::NativeAlert {
        tenant: 0,
        alert_id: 0,
        incident_id: None,
        timestamp: String::new(),
        detector: String::new(),
        title: String::new(),
        category: String::new(),
        techniques: Vec::new(),
        severity: None,
        entities: Vec::new(),
        grade: None,
        id: None,
    };
    let mut cols: Vec<String> = match serde_json::to_value(&alert) {
        Ok(Value::Object(o)) => o.keys().cloned().collect(),
        other => panic!("a native alert serializes as an object, not {other:?}"),
    };
    cols.extend(["entities.role", "entities.type", "entities.value"].map(String::from));
    cols
}

/// Reasons of whole-line problems, which name no field.
const NATIVE_WHOLE_RECORD: &[&str] = &[
    "invalid JSON",
    "an alert must be a JSON object",
    "invalid alert",
    "line of ",
    "invalid UTF-8",
    "read error",
];

/// Top-level keys of every line that parses as a JSON object (an unknown key is named as
/// spelt).
fn line_keys(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, l)| {
            let l = if i == 0 {
                l.strip_prefix(b"\xef\xbb\xbf").unwrap_or(l)
            } else {
                l
            };
            serde_json::from_str::<Value>(&String::from_utf8_lossy(l)).ok()
        })
        .filter_map(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
        .flatten()
        .collect()
}

fn check_native(bytes: &[u8], labels: bool) -> Result<Option<Ingested>, TestCaseError> {
    let name = "fuzz.jsonl";
    let params = threatrank::ingest::IngestParams::default()
        .read_labels(labels)
        .check()
        .unwrap();
    let read = || {
        threatrank::ingest::read_from(
            bytes,
            name,
            threatrank::ingest::InputFormat::NativeJsonl,
            &params,
        )
    };
    let ing = match no_panic("native reader", read)? {
        Ok(ing) => ing,
        Err(IngestError::Empty { file }) => {
            prop_assert_eq!(file, name);
            prop_assert!(bytes.is_empty());
            return Ok(None);
        }
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error kind: {e}"))),
    };
    let mut columns = native_columns();
    columns.extend(line_keys(bytes));
    check_report(
        &ing,
        name,
        lines_of(bytes, false).len(),
        &columns,
        NATIVE_WHOLE_RECORD,
    )?;
    no_panic("native batches", || {
        same_items_by_batch(
            NativeReader::new(bytes, name, &params).unwrap(),
            NativeReader::new(bytes, name, &params).unwrap(),
            1 + bytes.len() % 5,
        )
    })??;
    Ok(Some(ing))
}

#[test]
fn fuzz_native_jsonl_structured() {
    fuzz("fuzz_native_jsonl_structured", 4, native_case(), |case| {
        let (bytes, untouched) = build_jsonl(&case);
        let Some(ing) = check_native(&bytes, case.labels)? else {
            return Ok(());
        };
        let simple = !case.rows.iter().flat_map(|r| &r.edits).any(|e| match e {
            JsonLineEdit::Splice(_, b) => b.0.contains(&b'\n'),
            JsonLineEdit::Set(_, s) | JsonLineEdit::DuplicateKey(_, s) => s.contains('\n'),
            _ => false,
        });
        if !simple {
            return Ok(());
        }
        // one record per line holding anything but whitespace (a BOM is not content)
        let lines = lines_of(&bytes, false);
        let mut records = Vec::new();
        for (l, &(s, e)) in lines.iter().enumerate() {
            let mut text = &bytes[s..e];
            if l == 0 {
                text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
            }
            if !text.iter().all(u8::is_ascii_whitespace) {
                records.push(l);
            }
        }
        prop_assert_eq!(ing.report.records, records.len() as u64, "records read");
        for rej in &ing.report.rejected {
            prop_assert_eq!(
                rej.line as usize,
                records[rej.record as usize] + 1,
                "{}",
                rej
            );
        }
        // untouched lines read exactly as alone; their record is the line's position
        let rows_as_records: Vec<usize> = case
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !native_line(r).iter().all(u8::is_ascii_whitespace))
            .map(|(k, _)| k)
            .collect();
        if rows_as_records.len() == records.len() {
            for (rec, &k) in rows_as_records.iter().enumerate() {
                if let Some(s) = untouched[k] {
                    let got: Vec<Evidence> = ing
                        .evidence
                        .iter()
                        .filter(|e| e.record == rec as u64)
                        .cloned()
                        .map(without_record)
                        .collect();
                    prop_assert_eq!(got, native_evidence(s, case.labels), "line {} misread", k);
                }
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_native_jsonl_bytes() {
    let input = blob(
        prop_oneof![
            4 => any::<u8>(),
            2 => select(&b"{}[]\":,\n\r\\ 0123456789eE.-tnfu"[..]),
        ],
        2048,
    );
    fuzz("fuzz_native_jsonl_bytes", 2, input, |Blob(bytes)| {
        let _ = check_native(&bytes, true)?;
        Ok(())
    });
}

// ---- shared by the file targets ------------------------------------------------------------

/// One edit of a byte string (positions taken modulo its length).
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Set(usize, u8),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => (any::<usize>(), 0..8u8).prop_map(|(p, b)| ByteEdit::Flip(p, b)),
        1 => any::<usize>().prop_map(ByteEdit::Cut),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(p, b)| ByteEdit::Insert(p, b)),
        2 => (any::<usize>(), select(&[0u8, 1, 0x7f, 0x80, 0xff][..]))
            .prop_map(|(p, b)| ByteEdit::Set(p, b)),
    ]
}

fn apply_bytes(b: &mut Vec<u8>, e: &ByteEdit) {
    let n = b.len();
    match e {
        ByteEdit::Flip(p, bit) if n > 0 => b[p % n] ^= 1 << bit,
        ByteEdit::Cut(p) => b.truncate(p % (n + 1)),
        ByteEdit::Insert(p, x) => {
            let p = p % (n + 1);
            b.splice(p..p, x.iter().copied());
        }
        ByteEdit::Set(p, v) if n > 0 => b[p % n] = *v,
        _ => {}
    }
}

/// A folder for this process's fuzz files, inside the test process's own folder.
fn fuzz_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = process_dir().join("fuzz");
        std::fs::create_dir_all(&d).expect("fuzz dir");
        d
    })
}

mod files;
#[cfg(feature = "service")]
mod http;
#[cfg(feature = "parquet")]
mod parquet_input;
