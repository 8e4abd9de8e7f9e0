//! GUIDE-shaped alerts at rest in Parquet (feature `parquet`): one file, or a folder of files
//! such as `threatrank convert` writes (`tenant=<OrgId>/day=<YYYY-MM-DD>/part-NNNNN.parquet`,
//! every GUIDE column kept inside the files).
//!
//! Columns are found by name like the CSV reader's header; any Arrow type that casts to text is
//! read (strings, integers, floats; timestamps are written as RFC 3339 UTC). Each row becomes the
//! raw record the CSV parser would have seen and goes through the same [`GuideParser`], so
//! Parquet and CSV inputs give the same evidence and the same rejections. A rejection names the
//! part file and the row within it (1-based, in the `line` field: Parquet has no lines).
//! Files are read in ascending path order, so record numbers are deterministic.

use super::guide::GuideParser;
use super::{IngestError, IngestValidParams, RecordResult, RecordSource};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::DataType;
use csv::ByteRecord;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Rows per Arrow batch read from a file.
const BATCH_ROWS: usize = 8192;

/// The Parquet files of an input: the file itself, or every `*.parquet` under a folder
/// (recursively, hidden entries and `_`-prefixed ones such as `_SUCCESS` skipped), sorted.
pub fn parquet_files(path: &Path) -> Result<Vec<PathBuf>, IngestError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| IngestError::Io {
        file: name.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| IngestError::Io {
            file: dir.display().to_string(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| IngestError::Io {
                file: dir.display().to_string(),
                source,
            })?;
            let p = entry.path();
            let fname = entry.file_name();
            let fname = fname.to_string_lossy();
            if fname.starts_with('.') || fname.starts_with('_') {
                continue;
            }
            let ft = entry.file_type().map_err(|source| IngestError::Io {
                file: p.display().to_string(),
                source,
            })?;
            if ft.is_dir() {
                stack.push(p);
            } else if fname.ends_with(".parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(IngestError::Format {
            file: name,
            reason: "a folder input must hold *.parquet files; none found".into(),
        });
    }
    Ok(out)
}

/// An opened part file: its batches and the parser for its column layout.
struct Open {
    batches: ParquetRecordBatchReader,
    parser: Arc<GuideParser>,
    /// text columns of the current batch, in the parser's header order
    columns: Vec<StringArray>,
    /// next row of the current batch
    row: usize,
    /// rows of this file handed out so far
    rows_done: u64,
}

/// Streaming reader of GUIDE rows stored in Parquet: one item per row.
pub struct ParquetGuideReader {
    name: String,
    files: Vec<PathBuf>,
    next_file: usize,
    open: Option<Open>,
    params: IngestValidParams,
    index: u64,
    failed: bool,
    /// rows handed out so far, shared with a progress or sizing observer
    rows_read: Arc<AtomicU64>,
}

impl ParquetGuideReader {
    /// Lists the input's files and checks the first one's columns.
    pub fn open(path: &Path, params: &IngestValidParams) -> Result<Self, IngestError> {
        let files = parquet_files(path)?;
        let mut r = ParquetGuideReader {
            name: path.display().to_string(),
            files,
            next_file: 0,
            open: None,
            params: params.clone(),
            index: 0,
            failed: false,
            rows_read: Arc::new(AtomicU64::new(0)),
        };
        r.open_next()?;
        Ok(r)
    }

    /// Rows of every file, from the footers (no data read).
    pub fn total_rows(&self) -> Result<u64, IngestError> {
        let mut total = 0u64;
        for path in &self.files {
            let file = path.display().to_string();
            let f = std::fs::File::open(path).map_err(|source| IngestError::Io {
                file: file.clone(),
                source,
            })?;
            let b = guarded(|| ParquetRecordBatchReaderBuilder::try_new(f))
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| IngestError::Format {
                    file,
                    reason: format!("not a readable Parquet file: {e}"),
                })?;
            total += b.metadata().file_metadata().num_rows().max(0) as u64;
        }
        Ok(total)
    }

    /// Counter of the rows handed out so far.
    pub fn rows_read(&self) -> Arc<AtomicU64> {
        self.rows_read.clone()
    }

    fn open_next(&mut self) -> Result<bool, IngestError> {
        self.open = None;
        let Some(path) = self.files.get(self.next_file) else {
            return Ok(false);
        };
        self.next_file += 1;
        let file = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|source| IngestError::Io {
            file: file.clone(),
            source,
        })?;
        let bad = |e: parquet::errors::ParquetError| IngestError::Format {
            file: file.clone(),
            reason: format!("not a readable Parquet file: {e}"),
        };
        let corrupt = |reason: String| IngestError::Format {
            file: file.clone(),
            reason: format!("not a readable Parquet file: corrupt: {reason}"),
        };
        let builder = guarded(|| ParquetRecordBatchReaderBuilder::try_new(f))
            .map_err(&corrupt)?
            .map_err(bad)?;
        let header: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().trim().to_string())
            .collect();
        let parser =
            GuideParser::from_header(header, &file, &self.params).map_err(|e| match e {
                IngestError::Header {
                    missing,
                    found,
                    found_names,
                    ..
                } => IngestError::Format {
                    file: file.clone(),
                    reason: format!(
                        "schema lacks required column(s) {missing} (found {found} columns: \
                     {found_names})"
                    ),
                },
                other => other,
            })?;
        let batches = guarded(|| builder.with_batch_size(BATCH_ROWS).build())
            .map_err(&corrupt)?
            .map_err(bad)?;
        self.open = Some(Open {
            batches,
            parser: Arc::new(parser),
            columns: Vec::new(),
            row: 0,
            rows_done: 0,
        });
        Ok(true)
    }

    /// Makes sure the current batch has a row left; false at the end of the input.
    fn fill(&mut self) -> Result<bool, IngestError> {
        loop {
            let Some(open) = self.open.as_mut() else {
                return Ok(false);
            };
            if open.columns.first().is_some_and(|c| open.row < c.len()) {
                return Ok(true);
            }
            let next = guarded(|| open.batches.next()).unwrap_or_else(|reason| {
                Some(Err(arrow_schema::ArrowError::ParquetError(format!(
                    "corrupt: {reason}"
                ))))
            });
            match next {
                Some(Ok(batch)) => {
                    open.columns = text_columns(&batch).map_err(|reason| IngestError::Format {
                        file: open.parser.file().to_string(),
                        reason,
                    })?;
                    open.row = 0;
                }
                Some(Err(e)) => {
                    return Err(IngestError::Format {
                        file: open.parser.file().to_string(),
                        reason: format!(
                            "unreadable Parquet data after row {}: {e}",
                            open.rows_done
                        ),
                    })
                }
                None => {
                    if !self.open_next()? {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// Runs a call into the parquet crate, which panics on some corrupt files (a negative chunk
/// offset in the footer, an unknown physical type, …): the panic becomes `Err` with its message.
/// The reader that panicked is never used again.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the Parquet decoder panicked".into())
    })
}

/// Every column of a batch as text (nulls read as empty fields, like empty CSV fields).
fn text_columns(batch: &RecordBatch) -> Result<Vec<StringArray>, String> {
    batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .map(|(col, field)| {
            as_text(col).map_err(|e| {
                format!(
                    "column {:?} ({}) cannot be read as text: {e}",
                    field.name(),
                    col.data_type()
                )
            })
        })
        .collect()
}

/// One Arrow column as text: any type Arrow casts to `Utf8`; timestamps as RFC 3339 in UTC, as
/// GUIDE writes them (a zone-less timestamp is taken as UTC). The Parquet reader and the
/// DataFusion aggregate both read their input through it.
pub(crate) fn as_text(col: &ArrayRef) -> Result<StringArray, String> {
    let text = match col.data_type() {
        DataType::Timestamp(unit, _) => {
            let utc = DataType::Timestamp(*unit, Some("+00:00".into()));
            let t = arrow_cast::cast(col, &utc).map_err(|e| e.to_string())?;
            let s = arrow_cast::cast(&t, &DataType::Utf8).map_err(|e| e.to_string())?;
            let s = s
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or("cast to text failed")?;
            return Ok(s
                .iter()
                .map(|v| v.map(|v| v.replace("+00:00", "Z")))
                .collect());
        }
        DataType::Utf8 => col.clone(),
        _ => arrow_cast::cast(col, &DataType::Utf8).map_err(|e| e.to_string())?,
    };
    text.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| "cast to text failed".to_string())
}

impl Iterator for ParquetGuideReader {
    type Item = RecordResult;

    fn next(&mut self) -> Option<RecordResult> {
        self.next_batch(1).pop()
    }
}

impl RecordSource for ParquetGuideReader {
    fn file_name(&self) -> &str {
        &self.name
    }

    /// Up to `max` rows, parsed in parallel, in order. A file that cannot be read ends the
    /// input with one rejection naming it (the rows before it were delivered).
    fn next_batch(&mut self, max: usize) -> Vec<RecordResult> {
        let mut raw: Vec<(Arc<GuideParser>, ByteRecord, u64, u64)> = Vec::new();
        let mut failure = None;
        while raw.len() < max && !self.failed {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.failed = true;
                    failure = Some(e);
                    break;
                }
            }
            let Some(open) = self.open.as_mut() else {
                break;
            };
            let n = open.columns[0].len();
            while open.row < n && raw.len() < max {
                let mut rec = ByteRecord::new();
                for c in &open.columns {
                    rec.push_field(if c.is_null(open.row) {
                        b""
                    } else {
                        c.value(open.row).as_bytes()
                    });
                }
                open.row += 1;
                open.rows_done += 1;
                raw.push((open.parser.clone(), rec, open.rows_done, self.index));
                self.index += 1;
            }
        }
        self.rows_read
            .fetch_add(raw.len() as u64, Ordering::Relaxed);
        let mut out: Vec<RecordResult> = raw
            .par_iter()
            .map(|(parser, rec, row, index)| parser.parse(rec, *row, *index).map(|e| vec![e]))
            .collect();
        if let Some(e) = failure {
            out.push(Err(super::Rejection {
                file: self.name.clone(),
                line: 0,
                record: self.index,
                column: None,
                reason: e.to_string(),
            }));
            self.index += 1;
        }
        out
    }
}
