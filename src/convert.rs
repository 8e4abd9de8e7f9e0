//! `threatrank convert` (feature `parquet`): GUIDE CSV ↔ Parquet at rest.
//!
//! **CSV → Parquet.** Every record goes through the GUIDE reader first, so a store holds only
//! rows the engine accepts: rejected records go to the rejects CSV (file, line, column, reason)
//! and `records = accepted + rejected` is reported. Accepted rows keep every column of the
//! input, as text (empty fields are nulls), zstd-compressed, partitioned by tenant and UTC day:
//! `OUT/tenant=<OrgId>/day=<YYYY-MM-DD>/part-<NNNNN>.parquet` (Hive-style folder names, so
//! DataFusion and Spark read the partitions as columns too). Rows are buffered up to
//! [`ConvertParams::buffer_rows`]; each flush writes one part file per partition it holds, so
//! memory stays bounded at any input size. Output is deterministic: same input, same files.
//!
//! **Parquet → CSV.** A Parquet file or folder (files in path order) back to one CSV with the
//! stored columns as header, rows in the store's order (partition by partition).

use crate::ingest::{self, GuideReader, IngestError, IngestReport, RecordSource, RejectsWriter};
use arrow_array::builder::StringBuilder;
use arrow_array::{Array as _, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of `convert`.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// reading the input
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// writing an output file
    #[error("{file}: cannot write: {reason}")]
    Write {
        /// path
        file: String,
        /// cause
        reason: String,
    },
    /// parameters out of range
    #[error("invalid convert parameter `{name}`: {reason}")]
    Param {
        /// parameter
        name: &'static str,
        /// what is wrong
        reason: String,
    },
}

/// Parameters of CSV → Parquet.
#[derive(Debug, Clone)]
pub struct ConvertParams {
    /// rows buffered before a flush (bounds memory: about 0.5 KB per GUIDE row)
    pub buffer_rows: usize,
    /// zstd level (1..=22)
    pub zstd_level: i32,
    /// rows per Parquet row group
    pub row_group_rows: usize,
}

impl Default for ConvertParams {
    fn default() -> Self {
        ConvertParams {
            buffer_rows: 1_000_000,
            zstd_level: 3,
            row_group_rows: 256 * 1024,
        }
    }
}

/// [`ConvertParams`] that passed [`ConvertParams::check`].
#[derive(Debug, Clone)]
pub struct ConvertValidParams(ConvertParams);

impl ConvertParams {
    /// Checks ranges.
    pub fn check(&self) -> Result<ConvertValidParams, ConvertError> {
        if self.buffer_rows == 0 {
            return Err(ConvertError::Param {
                name: "buffer_rows",
                reason: "must be at least 1".into(),
            });
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(ConvertError::Param {
                name: "zstd_level",
                reason: format!("{} is outside 1..=22", self.zstd_level),
            });
        }
        if self.row_group_rows == 0 {
            return Err(ConvertError::Param {
                name: "row_group_rows",
                reason: "must be at least 1".into(),
            });
        }
        Ok(ConvertValidParams(self.clone()))
    }
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertOutcome {
    /// records read, accepted, rejected (CSV → Parquet); all accepted for Parquet → CSV
    pub report: IngestReport,
    /// rows written
    pub rows: u64,
    /// files written (part files, or the one CSV)
    pub files: Vec<PathBuf>,
    /// partitions (tenant × day) written; 0 for Parquet → CSV
    pub partitions: usize,
    /// where rejected records were written (CSV → Parquet)
    pub rejects: Option<PathBuf>,
}

impl ConvertOutcome {
    /// One line for the terminal.
    pub fn summary(&self) -> String {
        format!(
            "{}; wrote {} rows in {} file(s){}",
            self.report.summary(),
            self.rows,
            self.files.len(),
            if self.partitions > 0 {
                format!(" over {} tenant-day partitions", self.partitions)
            } else {
                String::new()
            }
        )
    }
}

/// Buffered rows of one partition: one text column per header field.
struct Part {
    columns: Vec<StringBuilder>,
    rows: usize,
}

/// GUIDE CSV → partitioned Parquet folder `out` (created; existing part files of the same
/// names are replaced). Rejects go to `<out>.rejects.csv`.
pub fn csv_to_parquet(
    input: &Path,
    out: &Path,
    params: &ConvertValidParams,
) -> Result<ConvertOutcome, ConvertError> {
    let p = &params.0;
    let name = input.display().to_string();
    let file = std::fs::File::open(input).map_err(|source| IngestError::Io {
        file: name.clone(),
        source,
    })?;
    let ip = ingest::IngestParams::default().check()?;
    let mut reader =
        GuideReader::new(std::io::BufReader::with_capacity(1 << 16, file), &name, &ip)?;
    let header: Vec<String> = reader.header().to_vec();
    let org = header.iter().position(|h| h == "OrgId");
    let schema = Arc::new(Schema::new(
        header
            .iter()
            .map(|h| Field::new(h, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    std::fs::create_dir_all(out).map_err(|e| ConvertError::Write {
        file: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let rejects_path = ingest::rejects_path_for(out);
    let mut rejects = RejectsWriter::create(&rejects_path)?;
    let mut report = IngestReport {
        file: reader.file_name().to_string(),
        ..Default::default()
    };
    let mut parts: BTreeMap<(String, String), Part> = BTreeMap::new();
    let mut buffered = 0usize;
    let mut flushes = 0usize;
    let mut files = Vec::new();
    let mut rows = 0u64;
    let mut partitions = std::collections::BTreeSet::new();
    loop {
        let (batch, raw) = reader.next_batch_raw(ingest::BATCH_RECORDS);
        if batch.is_empty() {
            break;
        }
        for (item, rec) in batch.into_iter().zip(raw) {
            report.records += 1;
            match item {
                Ok(ev) => {
                    report.accepted += 1;
                    let Some(e) = ev.first() else { continue };
                    // the tenant as written (the reader validated it); the UTC day of the alert
                    let tenant = org
                        .and_then(|i| rec.get(i))
                        .and_then(|f| std::str::from_utf8(f).ok())
                        .map_or_else(|| e.tenant.0.to_string(), |s| s.trim().to_string());
                    let (y, m, d) = ingest::civil_from_days(e.timestamp.div_euclid(86_400));
                    let day = format!("{y:04}-{m:02}-{d:02}");
                    let part = parts.entry((tenant, day)).or_insert_with(|| Part {
                        columns: (0..header.len()).map(|_| StringBuilder::new()).collect(),
                        rows: 0,
                    });
                    for (c, col) in part.columns.iter_mut().enumerate() {
                        match rec.get(c).map(std::str::from_utf8) {
                            // UTF-8 was validated by the reader
                            Some(Ok(f)) if !f.is_empty() => col.append_value(f),
                            _ => col.append_null(),
                        }
                    }
                    part.rows += 1;
                    buffered += 1;
                    if buffered >= p.buffer_rows {
                        rows += flush(
                            &mut parts,
                            out,
                            &schema,
                            p,
                            flushes,
                            &mut files,
                            &mut partitions,
                        )?;
                        flushes += 1;
                        buffered = 0;
                    }
                }
                Err(rej) => {
                    rejects.write(&rej)?;
                    report.rejected.push(rej);
                }
            }
        }
    }
    rows += flush(
        &mut parts,
        out,
        &schema,
        p,
        flushes,
        &mut files,
        &mut partitions,
    )?;
    rejects.finish()?;
    Ok(ConvertOutcome {
        report,
        rows,
        files,
        partitions: partitions.len(),
        rejects: Some(rejects_path),
    })
}

/// Writes every buffered partition as `part-<flush>.parquet` and empties the buffer.
fn flush(
    parts: &mut BTreeMap<(String, String), Part>,
    out: &Path,
    schema: &Arc<Schema>,
    p: &ConvertParams,
    flush_no: usize,
    files: &mut Vec<PathBuf>,
    partitions: &mut std::collections::BTreeSet<(String, String)>,
) -> Result<u64, ConvertError> {
    let mut rows = 0u64;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(p.zstd_level).map_err(|e| ConvertError::Param {
                name: "zstd_level",
                reason: e.to_string(),
            })?,
        ))
        .set_max_row_group_row_count(Some(p.row_group_rows))
        .set_created_by(format!("threatrank {}", env!("CARGO_PKG_VERSION")))
        .build();
    for ((tenant, day), part) in std::mem::take(parts) {
        let dir = out
            .join(format!("tenant={tenant}"))
            .join(format!("day={day}"));
        let path = dir.join(format!("part-{flush_no:05}.parquet"));
        let werr = |reason: String| ConvertError::Write {
            file: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&dir).map_err(|e| werr(e.to_string()))?;
        let n = part.rows;
        let arrays: Vec<ArrayRef> = part
            .columns
            .into_iter()
            .map(|mut c| Arc::new(c.finish()) as ArrayRef)
            .collect();
        let batch =
            RecordBatch::try_new(schema.clone(), arrays).map_err(|e| werr(e.to_string()))?;
        let f = std::fs::File::create(&path).map_err(|e| werr(e.to_string()))?;
        let mut w = ArrowWriter::try_new(f, schema.clone(), Some(props.clone()))
            .map_err(|e| werr(e.to_string()))?;
        w.write(&batch).map_err(|e| werr(e.to_string()))?;
        w.close().map_err(|e| werr(e.to_string()))?;
        rows += n as u64;
        files.push(path);
        partitions.insert((tenant, day));
    }
    Ok(rows)
}

/// Parquet file or folder → one CSV with the stored columns as header.
pub fn parquet_to_csv(input: &Path, out: &Path) -> Result<ConvertOutcome, ConvertError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let files = ingest::parquet_files(input)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ConvertError::Write {
            file: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let werr = |reason: String| ConvertError::Write {
        file: out.display().to_string(),
        reason,
    };
    let mut w = csv::Writer::from_path(out).map_err(|e| werr(e.to_string()))?;
    let mut header: Option<Vec<String>> = None;
    let mut rows = 0u64;
    for path in &files {
        let file = path.display().to_string();
        let fmt = |reason: String| {
            ConvertError::Ingest(IngestError::Format {
                file: file.clone(),
                reason,
            })
        };
        let f = std::fs::File::open(path).map_err(|source| IngestError::Io {
            file: file.clone(),
            source,
        })?;
        let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| fmt(e.to_string()))?;
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        match &header {
            None => {
                w.write_record(&names).map_err(|e| werr(e.to_string()))?;
                header = Some(names);
            }
            Some(h) if *h != names => {
                return Err(fmt(format!(
                    "columns differ from the first file's ({} vs {}): one CSV needs one header",
                    names.len(),
                    h.len()
                )))
            }
            Some(_) => {}
        }
        for batch in b.build().map_err(|e| fmt(e.to_string()))? {
            let batch = batch.map_err(|e| fmt(e.to_string()))?;
            let cols: Vec<StringArray> = batch
                .columns()
                .iter()
                .map(|c| {
                    let t = arrow_cast::cast(c, &DataType::Utf8).map_err(|e| fmt(e.to_string()))?;
                    t.as_any()
                        .downcast_ref::<StringArray>()
                        .cloned()
                        .ok_or_else(|| fmt("cast to text failed".into()))
                })
                .collect::<Result<_, _>>()?;
            let mut rec = csv::ByteRecord::new();
            for r in 0..batch.num_rows() {
                rec.clear();
                for c in &cols {
                    rec.push_field(if c.is_null(r) {
                        b""
                    } else {
                        c.value(r).as_bytes()
                    });
                }
                w.write_byte_record(&rec).map_err(|e| werr(e.to_string()))?;
                rows += 1;
            }
        }
    }
    w.flush().map_err(|e| werr(e.to_string()))?;
    Ok(ConvertOutcome {
        report: IngestReport {
            file: input.display().to_string(),
            records: rows,
            accepted: rows,
            ..Default::default()
        },
        rows,
        files: vec![out.to_path_buf()],
        partitions: 0,
        rejects: None,
    })
}
