//! Fuzz target of Parquet input (feature `parquet`): structure-aware files (text, binary and
//! integer columns, nulls, row groups) and corrupted bytes.

use super::*;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;
use threatrank::ingest::ParquetGuideReader;

/// How one column is stored.
#[derive(Debug, Clone, Copy)]
enum ColType {
    Utf8,
    /// raw bytes: invalid UTF-8 cannot be read as text
    Binary,
    /// integers where every value parses, else the column stays text
    Int64,
}

#[derive(Debug, Clone)]
struct ParquetCase {
    rows: Vec<(usize, Vec<(usize, Blob)>)>,
    types: Vec<(usize, ColType)>,
    nulls: Vec<(usize, usize)>,
    compression: bool,
    row_group: usize,
    corrupt: Vec<ByteEdit>,
}

fn parquet_case() -> impl Strategy<Value = ParquetCase> {
    let n_sample = sample().1.len();
    let row = (
        0..n_sample,
        prop_oneof![
            2 => Just(Vec::new()),
            3 => proptest::collection::vec((0..46usize, nasty_bytes()), 1..3),
        ],
    );
    let col_type = prop_oneof![
        1 => Just(ColType::Binary),
        1 => Just(ColType::Int64),
        4 => Just(ColType::Utf8),
    ];
    (
        proptest::collection::vec(row, 0..20),
        proptest::collection::vec((0..46usize, col_type), 0..3),
        proptest::collection::vec((0..20usize, 0..46usize), 0..3),
        any::<bool>(),
        1..8usize,
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(byte_edit(), 1..4),
        ],
    )
        .prop_map(
            |(rows, types, nulls, compression, row_group, corrupt)| ParquetCase {
                rows,
                types,
                nulls,
                compression,
                row_group,
                corrupt,
            },
        )
}

/// The case's rows as fields (`None` = null).
fn table(case: &ParquetCase) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut rows: Vec<Vec<Option<Vec<u8>>>> = case
        .rows
        .iter()
        .map(|(s, edits)| {
            let mut f: Vec<Option<Vec<u8>>> = sample().1[*s]
                .split(',')
                .map(|x| Some(x.as_bytes().to_vec()))
                .collect();
            for (i, b) in edits {
                f[i % 46] = Some(b.0.clone());
            }
            f
        })
        .collect();
    for &(r, c) in &case.nulls {
        if let Some(row) = rows.get_mut(r) {
            row[c] = None;
        }
    }
    rows
}

fn column(values: Vec<Option<Vec<u8>>>, t: ColType) -> (DataType, ArrayRef) {
    let ints: Option<Vec<Option<i64>>> = values
        .iter()
        .map(|v| match v {
            None => Some(None),
            Some(b) => std::str::from_utf8(b).ok()?.parse::<i64>().ok().map(Some),
        })
        .collect();
    match (t, ints) {
        (ColType::Int64, Some(ints)) => (DataType::Int64, Arc::new(Int64Array::from(ints))),
        (ColType::Binary, _) => (
            DataType::Binary,
            Arc::new(BinaryArray::from_iter(values.iter().map(|v| v.as_deref()))),
        ),
        _ => (
            DataType::Utf8,
            Arc::new(StringArray::from_iter(values.iter().map(|v| {
                v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
            }))),
        ),
    }
}

/// Writes the case's Parquet file; returns the rows as text (what a reader must see), when
/// every column is text.
fn write_parquet(case: &ParquetCase, path: &Path) -> Vec<Vec<String>> {
    let rows = table(case);
    let names = header_names();
    let mut types = vec![ColType::Utf8; names.len()];
    for &(c, t) in &case.types {
        types[c % names.len()] = t;
    }
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let values: Vec<Option<Vec<u8>>> = rows.iter().map(|r| r[c].clone()).collect();
            let (dt, a) = column(values, types[c]);
            (Field::new(name, dt, true), a)
        })
        .unzip();
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_compression(if case.compression {
            Compression::ZSTD(Default::default())
        } else {
            Compression::UNCOMPRESSED
        })
        .set_max_row_group_row_count(Some(case.row_group))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, schema.clone(), Some(props)).unwrap();
    if !rows.is_empty() {
        w.write(&RecordBatch::try_new(schema, arrays).unwrap())
            .unwrap();
    }
    w.close().unwrap();
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|v| {
                    v.as_ref()
                        .map_or(String::new(), |b| String::from_utf8_lossy(b).into_owned())
                })
                .collect()
        })
        .collect()
}

fn csv_of(rows: &[Vec<String>]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header_names()).unwrap();
    for r in rows {
        w.write_record(r).unwrap();
    }
    w.into_inner().unwrap()
}

#[test]
fn fuzz_parquet() {
    let _ = sample_evidence();
    let path = fuzz_dir().join("fuzz.parquet");
    let name = path.display().to_string();
    fuzz("fuzz_parquet", 2, parquet_case(), |case| {
        let text_rows = write_parquet(&case, &path);
        let mut bytes = std::fs::read(&path).unwrap();
        for e in &case.corrupt {
            apply_bytes(&mut bytes, e);
        }
        std::fs::write(&path, &bytes).unwrap();
        let params = IngestValidParams::default();
        let read = no_panic("Parquet reader", || {
            ParquetGuideReader::open(&path, &params).and_then(threatrank::ingest::collect)
        })?;
        let ing = match read {
            Ok(ing) => ing,
            Err(e) => {
                prop_assert!(!case.corrupt.is_empty(), "a written file was refused: {e}");
                prop_assert!(e.to_string().contains(&name), "{e}");
                return Ok(());
            }
        };
        // A file that fails mid-way ends with one rejection naming it (row 0, no column).
        let mut body = ing.clone();
        if let Some(last) = body.report.rejected.last() {
            if last.line == 0 {
                prop_assert!(!case.corrupt.is_empty(), "a written file failed: {last}");
                prop_assert!(
                    last.column.is_none() && last.reason.contains(&name),
                    "{last}"
                );
                body.report.rejected.pop();
                body.report.records -= 1;
            }
        }
        check_report(
            &body,
            &name,
            case.rows.len(),
            &header_names(),
            GUIDE_WHOLE_RECORD,
        )?;
        if !case.corrupt.is_empty() {
            return Ok(());
        }
        prop_assert_eq!(ing.report.records, case.rows.len() as u64);
        for rej in &ing.report.rejected {
            prop_assert_eq!(&rej.file, &name);
            prop_assert_eq!(rej.line, rej.record + 1, "row of {}", rej);
        }
        // Text columns: the same evidence and rejections as the CSV of the same rows.
        let binary_bad = case.types.iter().any(|(_, t)| !matches!(t, ColType::Utf8));
        if binary_bad {
            return Ok(());
        }
        let csv = read_guide(&csv_of(&text_rows), "same.csv")
            .map_err(|e| TestCaseError::fail(format!("CSV twin refused: {e}")))?;
        prop_assert_eq!(&ing.evidence, &csv.evidence);
        let why = |i: &Ingested| -> Vec<(u64, Option<String>, String)> {
            i.report
                .rejected
                .iter()
                .map(|r| (r.record, r.column.clone(), r.reason.clone()))
                .collect()
        };
        prop_assert_eq!(why(&ing), why(&csv));
        Ok(())
    });
}

/// Found by `fuzz_parquet`: the parquet crate panics on some corrupt footers ("called
/// `Option::unwrap()` on a `None` value", "Type NONE not supported", "Type <UNKNOWN 245> not
/// supported", "column start and length should not be negative"). Bit 0 flipped at these
/// footer offsets of this file made it panic (found by flipping every footer byte of it); each
/// is now refused with an error naming the file.
#[test]
fn corrupt_footers_are_refused_not_panics() {
    let path = fuzz_dir().join("flip.parquet");
    let case = ParquetCase {
        rows: vec![(9784, Vec::new()), (9944, Vec::new()), (1998, Vec::new())],
        types: Vec::new(),
        nulls: Vec::new(),
        compression: true,
        row_group: 3,
        corrupt: Vec::new(),
    };
    write_parquet(&case, &path);
    let good = std::fs::read(&path).unwrap();
    let footer = u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().unwrap());
    let footer_start = good.len() - 8 - footer as usize;
    let params = IngestValidParams::default();
    let name = path.display().to_string();
    for at in [5522, 5566, 5867] {
        let mut bytes = good.clone();
        bytes[footer_start + at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let read = catch_unwind(AssertUnwindSafe(|| {
            ParquetGuideReader::open(&path, &params).and_then(threatrank::ingest::collect)
        }));
        match read {
            Err(_) => panic!("footer byte {at}: the reader panicked"),
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(&name) && msg.contains("corrupt"), "{msg}");
            }
            Ok(Ok(ing)) => panic!("footer byte {at}: read {}", ing.report.summary()),
        }
    }
}
