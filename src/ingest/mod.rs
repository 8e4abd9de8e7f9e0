//! Ingest: GUIDE CSV and native JSONL alerts → typed [`Evidence`], with every rejected record
//! accounted for.
//!
//! First stage of the pipeline (`ingest → correlate → features → models → rank`). Readers stream
//! record by record; a fatal problem with the file itself (missing, empty, wrong header) is an
//! [`IngestError`], while a bad record becomes a [`Rejection`] naming file, line, column and
//! reason, and the good records still come through. The invariant every run reports:
//! `records read = accepted + rejected` ([`IngestReport`]).

mod guide;
mod native;
#[cfg(feature = "parquet")]
mod parquet;
mod time;

pub(crate) use guide::parse_code;
#[cfg(feature = "datafusion")]
pub(crate) use guide::GuideParser;
pub use guide::{GuideReader, GUIDE_COLUMNS, GUIDE_REQUIRED};
pub use native::{NativeAlert, NativeEntity, NativeReader};
#[cfg(feature = "datafusion")]
pub(crate) use parquet::as_text;
#[cfg(feature = "parquet")]
pub use parquet::{parquet_files, ParquetGuideReader};
pub(crate) use time::civil_from_days;
pub use time::{format_rfc3339, parse_rfc3339};

use crate::domain::Evidence;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Fatal ingest errors: the file as a whole cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file could not be opened or read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// path
        file: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// The file holds no bytes at all (not even a header).
    #[error("{file}: empty file (no header line)")]
    Empty {
        /// path
        file: String,
    },
    /// The header lacks required columns.
    #[error("{file}: line 1: wrong header: missing required column(s) {missing} (found {found} columns: {found_names})")]
    Header {
        /// path
        file: String,
        /// missing names, comma-separated
        missing: String,
        /// number of header fields
        found: usize,
        /// the first header fields, for the reader of the message
        found_names: String,
    },
    /// The header line itself is not valid UTF-8 or not CSV.
    #[error("{file}: line 1: unreadable header: {reason}")]
    BadHeader {
        /// path
        file: String,
        /// cause
        reason: String,
    },
    /// The format could not be recognised from the file name or content.
    #[error("{file}: unknown input format: {reason}")]
    Format {
        /// path
        file: String,
        /// why
        reason: String,
    },
    /// Parameters are out of range.
    #[error("invalid ingest parameter `{name}`: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// what is wrong
        reason: String,
    },
    /// Writing the rejects file failed.
    #[error("{file}: cannot write rejects: {source}")]
    Rejects {
        /// path
        file: String,
        /// cause
        #[source]
        source: csv::Error,
    },
}

/// One rejected record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// input file
    pub file: String,
    /// 1-based line where the record starts
    pub line: u64,
    /// 0-based data-record index (aligns score output)
    pub record: u64,
    /// offending column (field name), when one is to blame
    pub column: Option<String>,
    /// what is wrong
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(
                f,
                "{}:{}: column {}: {}",
                self.file, self.line, c, self.reason
            ),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.reason),
        }
    }
}

/// Counts of one ingest run: `records == accepted + rejected.len()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReport {
    /// input file
    pub file: String,
    /// data records read (header excluded)
    pub records: u64,
    /// records accepted
    pub accepted: u64,
    /// every rejected record
    pub rejected: Vec<Rejection>,
}

impl IngestReport {
    /// True when `records == accepted + rejected`.
    pub fn balanced(&self) -> bool {
        self.records == self.accepted + self.rejected.len() as u64
    }

    /// One-line summary, e.g. `data.csv: 10000 records read = 9998 accepted + 2 rejected`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} records read = {} accepted + {} rejected",
            self.file,
            self.records,
            self.accepted,
            self.rejected.len()
        )
    }

    /// Writes the rejects as CSV (`file,line,record,column,reason`), header always present.
    pub fn write_rejects(&self, path: &Path) -> Result<(), IngestError> {
        let mut w = RejectsWriter::create(path)?;
        for r in &self.rejected {
            w.write(r)?;
        }
        w.finish()
    }
}

/// Streams rejections to a rejects CSV (`file,line,record,column,reason`, header always
/// present): what [`IngestReport::write_rejects`] writes, one rejection at a time.
pub struct RejectsWriter {
    path: PathBuf,
    w: csv::Writer<std::io::BufWriter<File>>,
}

impl RejectsWriter {
    /// Creates the file and writes the header.
    pub fn create(path: &Path) -> Result<Self, IngestError> {
        let err = rejects_err(path);
        let f = File::create(path).map_err(|e| err(e.into()))?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(f));
        w.write_record(["file", "line", "record", "column", "reason"])
            .map_err(err)?;
        Ok(RejectsWriter {
            path: path.to_path_buf(),
            w,
        })
    }

    /// Appends one rejection.
    pub fn write(&mut self, r: &Rejection) -> Result<(), IngestError> {
        self.w
            .write_record([
                r.file.as_str(),
                &r.line.to_string(),
                &r.record.to_string(),
                r.column.as_deref().unwrap_or(""),
                r.reason.as_str(),
            ])
            .map_err(rejects_err(&self.path))
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<(), IngestError> {
        self.w
            .flush()
            .map_err(|e| rejects_err(&self.path)(e.into()))
    }
}

fn rejects_err(path: &Path) -> impl Fn(csv::Error) -> IngestError + '_ {
    move |source| IngestError::Rejects {
        file: path.display().to_string(),
        source,
    }
}

/// Ingest parameters (unchecked). See [`IngestParams::check`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestParams {
    /// Largest accepted field (or JSONL line), in bytes. Default 65,536: GUIDE fields are short
    /// codes, so a larger one is a broken export, rejected with its line and column.
    pub max_field_bytes: usize,
    /// Whether to read the label column (`IncidentGrade` / `grade`). Default true; scoring sets
    /// it to false so the label is never even parsed.
    pub read_labels: bool,
    /// When set, a record of any other tenant is rejected (naming its tenant column): the
    /// service takes alerts only for the tenant of the caller's key. Default `None`.
    pub only_tenant: Option<u64>,
    /// Most entities one native alert may carry (each becomes an evidence row): an alert with
    /// more is rejected naming `entities` and the limit. Default 1,024 (the shipped sample's
    /// largest alert has 28 evidence rows); the service uses a smaller one.
    pub max_entities_per_alert: usize,
    /// Longest text value of a native alert (detector, title, category, entity type and
    /// value, technique), bytes; a longer one is rejected naming its field and the limit.
    /// Default 65,536 (GUIDE CSV fields have `max_field_bytes`).
    pub max_text_bytes: usize,
}

impl Default for IngestParams {
    fn default() -> Self {
        Self {
            max_field_bytes: 65_536,
            read_labels: true,
            only_tenant: None,
            max_entities_per_alert: 1024,
            max_text_bytes: 65_536,
        }
    }
}

impl IngestParams {
    /// Sets [`IngestParams::max_field_bytes`] (default 65,536).
    pub fn max_field_bytes(mut self, n: usize) -> Self {
        self.max_field_bytes = n;
        self
    }
    /// Sets [`IngestParams::read_labels`] (default true).
    pub fn read_labels(mut self, yes: bool) -> Self {
        self.read_labels = yes;
        self
    }
    /// Sets [`IngestParams::only_tenant`].
    pub fn only_tenant(mut self, tenant: Option<u64>) -> Self {
        self.only_tenant = tenant;
        self
    }
    /// Sets [`IngestParams::max_entities_per_alert`] (default 1,024).
    pub fn max_entities_per_alert(mut self, n: usize) -> Self {
        self.max_entities_per_alert = n;
        self
    }
    /// Sets [`IngestParams::max_text_bytes`] (default 65,536).
    pub fn max_text_bytes(mut self, n: usize) -> Self {
        self.max_text_bytes = n;
        self
    }
    /// Checks the parameters.
    pub fn check(&self) -> Result<IngestValidParams, IngestError> {
        if self.max_field_bytes < 64 {
            return Err(IngestError::Param {
                name: "max_field_bytes",
                reason: format!("{} is below the minimum of 64", self.max_field_bytes),
            });
        }
        if self.max_entities_per_alert == 0 {
            return Err(IngestError::Param {
                name: "max_entities_per_alert",
                reason: "0: an alert may carry at least one entity".into(),
            });
        }
        if self.max_text_bytes < 16 {
            return Err(IngestError::Param {
                name: "max_text_bytes",
                reason: format!("{} is below the minimum of 16", self.max_text_bytes),
            });
        }
        Ok(IngestValidParams(self.clone()))
    }
}

/// Checked [`IngestParams`] (the default is the checked default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IngestValidParams(IngestParams);

impl IngestValidParams {
    /// The checked values.
    pub fn get(&self) -> &IngestParams {
        &self.0
    }
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// GUIDE CSV (45 or 46 columns)
    GuideCsv,
    /// native JSONL alerts
    NativeJsonl,
    /// GUIDE columns in Parquet: a `.parquet` file or a folder of them (feature `parquet`)
    GuideParquet,
}

impl InputFormat {
    /// Guesses from the extension (`.jsonl`/`.ndjson`/`.json` → JSONL, `.parquet` or a folder
    /// → Parquet, anything else → CSV).
    pub fn from_path(path: &Path) -> InputFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson" | "json") => InputFormat::NativeJsonl,
            Some("parquet") => InputFormat::GuideParquet,
            _ if path.is_dir() => InputFormat::GuideParquet,
            _ => InputFormat::GuideCsv,
        }
    }
}

/// Everything read from one input.
#[derive(Debug, Clone, Default)]
pub struct Ingested {
    /// accepted evidence, in input order
    pub evidence: Vec<Evidence>,
    /// counts and rejections
    pub report: IngestReport,
}

/// Reads a whole file (format from its extension) into memory.
pub fn read_path(path: &Path, params: &IngestValidParams) -> Result<Ingested, IngestError> {
    let name = path.display().to_string();
    if InputFormat::from_path(path) == InputFormat::GuideParquet {
        return read_parquet(path, params);
    }
    let file = File::open(path).map_err(|source| IngestError::Io {
        file: name.clone(),
        source,
    })?;
    let reader = BufReader::with_capacity(1 << 16, file);
    match InputFormat::from_path(path) {
        InputFormat::GuideCsv => collect(GuideReader::new(reader, &name, params)?),
        InputFormat::NativeJsonl => collect(NativeReader::new(reader, &name, params)?),
        InputFormat::GuideParquet => unreachable!("handled above"),
    }
}

/// Reads a Parquet input (a file or a folder of them) into memory.
#[cfg(feature = "parquet")]
pub fn read_parquet(path: &Path, params: &IngestValidParams) -> Result<Ingested, IngestError> {
    collect(ParquetGuideReader::open(path, params)?)
}

/// Reads a Parquet input: this build has no Parquet reader, so it says how to get one.
#[cfg(not(feature = "parquet"))]
pub fn read_parquet(path: &Path, _params: &IngestValidParams) -> Result<Ingested, IngestError> {
    Err(no_parquet(path))
}

/// The error of a build without the `parquet` feature given a Parquet input.
pub fn no_parquet(path: &Path) -> IngestError {
    IngestError::Format {
        file: path.display().to_string(),
        reason: "Parquet input needs threatrank built with the `parquet` feature \
                 (cargo build --release --features parquet)"
            .into(),
    }
}

/// Item of the streaming readers: one record's evidence rows, or its rejection.
pub type RecordResult = Result<Vec<Evidence>, Rejection>;

/// A streaming reader that knows its file name.
pub trait RecordSource: Iterator<Item = RecordResult> {
    /// Input name used in messages.
    fn file_name(&self) -> &str;

    /// Up to `max` items, in order (empty at the end). Readers that can parse records in
    /// parallel override it.
    fn next_batch(&mut self, max: usize) -> Vec<RecordResult>
    where
        Self: Sized,
    {
        self.by_ref().take(max).collect()
    }
}

/// Records per [`RecordSource::next_batch`] when draining a reader.
pub const BATCH_RECORDS: usize = 8192;

/// Drains a streaming reader into memory, counting as it goes.
pub fn collect<S: RecordSource>(source: S) -> Result<Ingested, IngestError> {
    let mut out = Ingested {
        report: IngestReport {
            file: source.file_name().to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut source = source;
    loop {
        let batch = source.next_batch(BATCH_RECORDS);
        if batch.is_empty() {
            break;
        }
        for item in batch {
            out.report.records += 1;
            match item {
                Ok(ev) => {
                    out.report.accepted += 1;
                    out.evidence.extend(ev);
                }
                Err(rej) => out.report.rejected.push(rej),
            }
        }
    }
    Ok(out)
}

/// Reads from any `Read` with an explicit format (for tests and library callers).
pub fn read_from<R: Read + Send>(
    reader: R,
    name: &str,
    format: InputFormat,
    params: &IngestValidParams,
) -> Result<Ingested, IngestError> {
    match format {
        InputFormat::GuideCsv => collect(GuideReader::new(reader, name, params)?),
        InputFormat::NativeJsonl => collect(NativeReader::new(reader, name, params)?),
        InputFormat::GuideParquet => Err(IngestError::Format {
            file: name.to_string(),
            reason: "Parquet is read from a path (a file or folder), not from a stream".into(),
        }),
    }
}

/// Default rejects path next to an output: `<out>.rejects.csv`.
pub fn rejects_path_for(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".rejects.csv");
    PathBuf::from(s)
}
