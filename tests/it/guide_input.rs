//! Bad-input suite for GUIDE CSV: every malformed case gives a clear fatal error or a
//! rejection naming file, line, column and reason; `records = accepted + rejected` always.

use crate::common::*;
use threatrank::ingest::{
    self, IngestError, IngestParams, IngestReport, InputFormat, Rejection, GUIDE_REQUIRED,
};

/// Header + first 5 sample rows, with one field of one row replaced (row index 0-based; the
/// row sits on line `row + 2`).
fn five_with(row: usize, column: &str, value: &[u8]) -> Vec<u8> {
    let header = header_names();
    let rows = rows(5);
    let c = col(column);
    let mut out = Vec::new();
    out.extend_from_slice(header.join(",").as_bytes());
    out.push(b'\n');
    for (i, r) in rows.iter().enumerate() {
        for (j, f) in r.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            if i == row && j == c {
                out.extend_from_slice(value);
            } else {
                out.extend_from_slice(f.as_bytes());
            }
        }
        out.push(b'\n');
    }
    out
}

/// Reads and expects exactly one rejection (of 5 records); returns it.
#[track_caller]
fn one_rejection(bytes: &[u8]) -> Rejection {
    let ing = read_guide(bytes, "bad.csv").expect("not fatal");
    assert_counts(&ing, 5, 4, 1);
    assert_eq!(ing.evidence.len(), 4);
    ing.report.rejected[0].clone()
}

#[track_caller]
fn assert_rejection(r: &Rejection, line: u64, record: u64, column: Option<&str>, reason: &str) {
    assert_eq!(r.file, "bad.csv", "{r}");
    assert_eq!(r.line, line, "{r}");
    assert_eq!(r.record, record, "{r}");
    assert_eq!(r.column.as_deref(), column, "{r}");
    assert_eq!(r.reason, reason, "{r}");
}

#[test]
fn valid_rows_are_all_accepted_with_their_values() {
    let ing = read_guide(sample_head(5).as_bytes(), "ok.csv").unwrap();
    assert_counts(&ing, 5, 5, 0);
    let rows = rows(5);
    for (i, (e, r)) in ing.evidence.iter().zip(&rows).enumerate() {
        assert_eq!(e.record as usize, i);
        assert_eq!(e.id.to_string(), r[col("Id")]);
        assert_eq!(e.tenant.0.to_string(), r[col("OrgId")]);
        assert_eq!(e.incident.0.to_string(), r[col("IncidentId")]);
        assert_eq!(e.alert.0.to_string(), r[col("AlertId")]);
        assert_eq!(e.category, r[col("Category")]);
        assert_eq!(
            e.grade.map(|g| g.name().to_string()),
            Some(r[col("IncidentGrade")].clone())
        );
    }
    // Row 5 carries `EmailClusterId` = 4192202772.0 (pandas float spelling of an integer).
    assert_eq!(rows[4][col("EmailClusterId")], "4192202772.0");
    let k = threatrank::domain::ENTITY_COLUMNS
        .iter()
        .position(|c| *c == "EmailClusterId")
        .unwrap();
    assert_eq!(ing.evidence[4].entities.codes[k], Some(4_192_202_772));
    assert_eq!(ing.evidence[1].techniques, vec!["T1566.002".to_string()]);
    for (e, r) in ing.evidence.iter().zip(&rows) {
        assert_eq!(e.impacted, r[col("EvidenceRole")] == "Impacted");
    }
    assert!(ing.evidence.iter().any(|e| !e.impacted));
}

// ---------------------------------------------------------------- fatal: the file itself

#[test]
fn empty_file_is_a_fatal_error_naming_the_file() {
    let err = read_guide(b"", "empty.csv").unwrap_err();
    assert!(matches!(err, IngestError::Empty { .. }), "{err:?}");
    assert_eq!(err.to_string(), "empty.csv: empty file (no header line)");

    let dir = tmp();
    let p = dir.path().join("nothing.csv");
    std::fs::write(&p, b"").unwrap();
    let msg = ingest::read_path(&p, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("empty file"), "{msg}");
}

#[test]
fn file_of_blank_lines_is_empty() {
    let err = read_guide(b"\n\n\r\n", "blank.csv").unwrap_err();
    assert!(matches!(err, IngestError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("blank.csv"), "{err}");
}

#[test]
fn missing_file_is_a_fatal_io_error_naming_the_path() {
    let dir = tmp();
    let p = dir.path().join("absent.csv");
    let err = ingest::read_path(&p, &Default::default()).unwrap_err();
    assert!(matches!(err, IngestError::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("absent.csv") && msg.contains("cannot read"),
        "{msg}"
    );
}

#[test]
fn wrong_header_names_the_missing_columns_on_line_1() {
    let mut header = header_names();
    let mut rows = rows(3);
    header[col("OrgId")] = "Org".into();
    drop_column(&mut header, &mut rows, col("IncidentId"));
    let err = read_guide(csv_text(&header, &rows).as_bytes(), "hdr.csv").unwrap_err();
    match &err {
        IngestError::Header { missing, found, .. } => {
            assert_eq!(missing, "OrgId, IncidentId");
            assert_eq!(*found, 45);
        }
        other => panic!("expected a header error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "hdr.csv: line 1: wrong header: missing required column(s) OrgId, IncidentId (found 45 columns: \"Id\", \"Org\""
        ),
        "{msg}"
    );
}

#[test]
fn unrelated_header_lists_every_required_column() {
    let err = read_guide(b"a,b,c\n1,2,3\n", "other.csv").unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "other.csv: line 1: wrong header: missing required column(s) {} (found 3 columns: \"a\", \"b\", \"c\")",
            GUIDE_REQUIRED.join(", ")
        )
    );
}

#[test]
fn jsonl_content_in_a_csv_file_is_a_header_error_not_a_panic() {
    let err = read_guide(
        br#"{"tenant": 1, "alert_id": 2, "timestamp": "2024-06-06T17:32:50Z"}"#,
        "alerts.csv",
    )
    .unwrap_err();
    assert!(matches!(err, IngestError::Header { .. }), "{err:?}");
    assert!(err.to_string().contains("line 1: wrong header"), "{err}");
}

#[test]
fn header_with_bad_utf8_is_a_fatal_error_on_line_1() {
    let mut bytes = b"Id,Org\xffId,IncidentId\n".to_vec();
    bytes.extend_from_slice(b"1,2,3\n");
    let err = read_guide(&bytes, "h8.csv").unwrap_err();
    assert!(matches!(err, IngestError::BadHeader { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("h8.csv: line 1: unreadable header:"),
        "{msg}"
    );
    assert!(msg.contains("field 2 is not valid UTF-8"), "{msg}");
}

#[test]
fn max_field_bytes_below_minimum_is_a_parameter_error() {
    let err = IngestParams::default()
        .max_field_bytes(63)
        .check()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid ingest parameter `max_field_bytes`: 63 is below the minimum of 64"
    );
    assert!(IngestParams::default().max_field_bytes(64).check().is_ok());
}

// ---------------------------------------------------------------- header-level acceptances

#[test]
fn header_only_file_has_zero_records() {
    for text in [format!("{}\n", sample().0), sample().0.clone()] {
        let ing = read_guide(text.as_bytes(), "h.csv").unwrap();
        assert_counts(&ing, 0, 0, 0);
        assert!(ing.evidence.is_empty());
    }
}

#[test]
fn bom_in_header_is_accepted() {
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend_from_slice(sample_head(5).as_bytes());
    let ing = read_guide(&bytes, "bom.csv").unwrap();
    assert_counts(&ing, 5, 5, 0);
    assert_eq!(ing.evidence[0].id.to_string(), rows(1)[0][col("Id")]);
}

#[test]
fn crlf_line_endings_are_accepted() {
    let text = String::from_utf8(five_with(2, "OrgId", b"x1")).unwrap();
    let crlf = text.replace('\n', "\r\n");
    let ing = read_guide(crlf.as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 5, 4, 1);
    let r = &ing.report.rejected[0];
    assert_eq!((r.record, r.column.as_deref()), (2, Some("OrgId")), "{r}");
    assert_eq!(r.reason, "not a non-negative integer: \"x1\"");
    let plain = read_guide(sample_head(5).as_bytes(), "lf.csv").unwrap();
    let crlf = read_guide(sample_head(5).replace('\n', "\r\n").as_bytes(), "crlf.csv").unwrap();
    assert_counts(&crlf, 5, 5, 0);
    assert_eq!(plain.evidence, crlf.evidence);
}

/// csv 1.3 reports the line of a record that follows a `\r\n` one too low; the reader counts
/// lines itself, so a rejection in a CRLF file names its own line.
#[test]
fn crlf_line_numbers_are_right() {
    let text = String::from_utf8(five_with(2, "OrgId", b"x1")).unwrap();
    let ing = read_guide(text.replace('\n', "\r\n").as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 5, 4, 1);
    assert_rejection(
        &ing.report.rejected[0],
        4,
        2,
        Some("OrgId"),
        "not a non-negative integer: \"x1\"",
    );
}

#[test]
fn train_layout_of_45_columns_and_test_layout_of_46_are_accepted() {
    let header = header_names();
    assert_eq!(header.len(), 46);
    assert_eq!(header.last().map(String::as_str), Some("Usage"));
    let test_layout = read_guide(csv_text(&header, &rows(20)).as_bytes(), "test.csv").unwrap();
    assert_counts(&test_layout, 20, 20, 0);

    let mut h45 = header.clone();
    let mut r45 = rows(20);
    drop_column(&mut h45, &mut r45, col("Usage"));
    assert_eq!(h45.len(), 45);
    let train_layout = read_guide(csv_text(&h45, &r45).as_bytes(), "train.csv").unwrap();
    assert_counts(&train_layout, 20, 20, 0);
    assert_eq!(train_layout.evidence, test_layout.evidence);
}

#[test]
fn columns_are_found_by_name_in_any_order() {
    let header = header_names();
    let rows = rows(10);
    let rev_h: Vec<String> = header.iter().rev().cloned().collect();
    let rev_r: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().rev().cloned().collect())
        .collect();
    let a = read_guide(csv_text(&header, &rows).as_bytes(), "a.csv").unwrap();
    let b = read_guide(csv_text(&rev_h, &rev_r).as_bytes(), "b.csv").unwrap();
    assert_counts(&b, 10, 10, 0);
    assert_eq!(a.evidence, b.evidence);
}

// ---------------------------------------------------------------- rejected rows

#[test]
fn bad_utf8_in_a_field_rejects_that_row_naming_column_and_line() {
    let r = one_rejection(&five_with(1, "Category", b"Exec\xffution"));
    assert_rejection(&r, 3, 1, Some("Category"), "invalid UTF-8 at byte 4");
    assert_eq!(
        r.to_string(),
        "bad.csv:3: column Category: invalid UTF-8 at byte 4"
    );
    // Also in a column the reader does not otherwise interpret.
    let r = one_rejection(&five_with(4, "City", b"\xc3("));
    assert_rejection(&r, 6, 4, Some("City"), "invalid UTF-8 at byte 0");
}

#[test]
fn a_character_split_across_two_fields_is_invalid_in_both() {
    // "é" is C3 A9: "x\xc3" then "\xa9y" are each invalid, though the record's bytes
    // without the separator would spell "xéy".
    let header = header_names();
    let (a, b) = (col("State"), col("City"));
    assert_eq!(
        b,
        a + 1,
        "State and City are adjacent in the sample's header"
    );
    let mut out = header.join(",").into_bytes();
    out.push(b'\n');
    for (i, r) in rows(5).iter().enumerate() {
        let fields: Vec<&[u8]> = r
            .iter()
            .enumerate()
            .map(|(j, f)| match (i, j) {
                (2, j) if j == a => &b"x\xc3"[..],
                (2, j) if j == b => &b"\xa9y"[..],
                _ => f.as_bytes(),
            })
            .collect();
        out.extend_from_slice(&fields.join(&b","[..]));
        out.push(b'\n');
    }
    let r = one_rejection(&out);
    assert_rejection(&r, 4, 2, Some("State"), "invalid UTF-8 at byte 1");
}

#[test]
fn batches_and_single_records_interleave_in_order() {
    // next_batch reads the following batch ahead; records asked one at a time afterwards, or
    // in batches of another size, must still come in input order, none lost or repeated.
    let bytes = csv_text(&header_names(), &rows(40)).into_bytes();
    let params = IngestParams::default().check().unwrap();
    let all: Vec<u64> = ingest::GuideReader::new(&bytes[..], "s.csv", &params)
        .unwrap()
        .map(|r| r.unwrap()[0].record)
        .collect();
    assert_eq!(all, (0..40).collect::<Vec<u64>>());
    let mut reader = ingest::GuideReader::new(&bytes[..], "s.csv", &params).unwrap();
    let mut got = Vec::new();
    // 0: two records through `Iterator::next`; otherwise a batch of that size
    for step in [7, 0, 3, 20, 2, 0, 5, 9] {
        let records: Vec<u64> = if step == 0 {
            reader
                .by_ref()
                .take(2)
                .map(|r| r.unwrap()[0].record)
                .collect()
        } else {
            let batch = reader.next_batch(step);
            assert!(batch.len() <= step);
            batch.into_iter().map(|r| r.unwrap()[0].record).collect()
        };
        got.extend(records);
    }
    got.extend(reader.map(|r| r.unwrap()[0].record));
    assert_eq!(got, all);
}

#[test]
fn other_rows_survive_a_rejection_and_keep_their_record_index() {
    let ing = read_guide(&five_with(1, "Category", b"\xff"), "bad.csv").unwrap();
    let recs: Vec<u64> = ing.evidence.iter().map(|e| e.record).collect();
    assert_eq!(recs, vec![0, 2, 3, 4]);
}

#[test]
fn truncated_last_line_without_newline_is_rejected() {
    let mut text = sample_head(4);
    let last = &sample().1[4];
    let cut: Vec<&str> = last.split(',').take(20).collect();
    text.push_str(&cut.join(","));
    let ing = read_guide(text.as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 5, 4, 1);
    assert_rejection(
        &ing.report.rejected[0],
        6,
        4,
        None,
        "expected 46 fields, found 20 (truncated or malformed row)",
    );
}

#[test]
fn complete_last_line_without_newline_is_accepted() {
    let text = sample_head(5);
    let ing = read_guide(text.trim_end().as_bytes(), "ok.csv").unwrap();
    assert_counts(&ing, 5, 5, 0);
}

#[test]
fn unterminated_quote_on_the_last_line_is_rejected() {
    // The quote opens in AlertTitle and never closes: the rest of the line is one field.
    let mut text = sample_head(4);
    let last: Vec<&str> = sample().1[4].split(',').collect();
    let t = col("AlertTitle");
    text.push_str(&last[..t].join(","));
    text.push_str(",\"");
    text.push_str(&last[t..].join(","));
    let ing = read_guide(text.as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 5, 4, 1);
    assert_rejection(
        &ing.report.rejected[0],
        6,
        4,
        None,
        "unterminated quoted field: the record runs to the end of the file",
    );
}

/// `...,"Publ` at end of file: the record has all 46 fields, but its last one never closed;
/// the csv crate accepts it silently, the reader rejects it.
#[test]
fn unterminated_quote_in_the_last_field_is_rejected() {
    let mut text = sample_head(4);
    let last = &sample().1[4];
    let (head, _) = last.rsplit_once(',').unwrap();
    text.push_str(head);
    text.push_str(",\"Publ");
    let ing = read_guide(text.as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 5, 4, 1);
    let r = &ing.report.rejected[0];
    assert_eq!((r.line, r.record), (6, 4), "{r}");
    assert!(r.reason.contains("quote"), "{r}");
}

#[test]
fn ten_megabyte_field_is_rejected_fast_naming_column_and_limit() {
    let big = vec![b'7'; 10 * 1024 * 1024];
    let bytes = five_with(2, "AlertTitle", &big);
    let t0 = std::time::Instant::now();
    let ing = read_guide(&bytes, "bad.csv").unwrap();
    let took = t0.elapsed();
    assert_counts(&ing, 5, 4, 1);
    assert_rejection(
        &ing.report.rejected[0],
        4,
        2,
        Some("AlertTitle"),
        "field of 10485760 bytes exceeds the limit of 65536 bytes",
    );
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    // The limit is a parameter.
    let p = IngestParams::default()
        .max_field_bytes(10 * 1024 * 1024)
        .check()
        .unwrap();
    let ing = ingest::read_from(&bytes[..], "bad.csv", InputFormat::GuideCsv, &p).unwrap();
    assert_counts(&ing, 5, 5, 0);
}

#[test]
fn ten_megabyte_field_with_bad_utf8_reports_the_size() {
    let mut big = vec![b'a'; 10 * 1024 * 1024];
    big[5] = 0xff;
    let r = one_rejection(&five_with(0, "City", &big));
    assert_rejection(
        &r,
        2,
        0,
        Some("City"),
        "field of 10485760 bytes exceeds the limit of 65536 bytes",
    );
}

#[test]
fn non_integer_ids_are_rejected_naming_the_column() {
    let cases: [(&str, &[u8], &str); 7] = [
        ("Id", b"12a", "not a non-negative integer: \"12a\""),
        ("OrgId", b"abc", "not a non-negative integer: \"abc\""),
        ("IncidentId", b"-1", "not a non-negative integer: \"-1\""),
        ("AlertId", b"1.5", "not a non-negative integer: \"1.5\""),
        ("AlertId", b"", "empty value (integer required)"),
        (
            "OrgId",
            b"99999999999999999999999",
            "not a non-negative integer: \"99999999999999999999999\"",
        ),
        ("DeviceId", b"0x1f", "not a non-negative integer: \"0x1f\""),
    ];
    for (row, (column, value, reason)) in cases.iter().enumerate() {
        let row = row % 5;
        let r = one_rejection(&five_with(row, column, value));
        assert_rejection(&r, row as u64 + 2, row as u64, Some(column), reason);
    }
}

#[test]
fn integer_valued_decimal_codes_and_padding_are_accepted() {
    let ing = read_guide(&five_with(3, "OrgId", b" 7.000 "), "ok.csv").unwrap();
    assert_counts(&ing, 5, 5, 0);
    assert_eq!(ing.evidence[3].tenant.0, 7);
}

#[test]
fn bad_timestamps_are_rejected_naming_the_column() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"2024-13-01T00:00:00Z",
            "timestamp out of range: \"2024-13-01T00:00:00Z\"",
        ),
        (b"yesterday", "not an RFC 3339 timestamp: \"yesterday\""),
        (
            b"2023-02-29T10:00:00Z",
            "timestamp out of range: \"2023-02-29T10:00:00Z\"",
        ),
        (b"", "not an RFC 3339 timestamp: \"\""),
    ];
    for (row, (value, reason)) in cases.iter().enumerate() {
        let r = one_rejection(&five_with(row, "Timestamp", value));
        assert_rejection(&r, row as u64 + 2, row as u64, Some("Timestamp"), reason);
    }
}

#[test]
fn bad_grade_is_rejected_when_labels_are_read_and_ignored_when_not() {
    let bytes = five_with(2, "IncidentGrade", b"Maybe");
    let r = one_rejection(&bytes);
    assert_rejection(
        &r,
        4,
        2,
        Some("IncidentGrade"),
        "unknown grade \"Maybe\" (expected TruePositive, BenignPositive or FalsePositive)",
    );
    let ing = read_guide_unlabelled(&bytes, "bad.csv").unwrap();
    assert_counts(&ing, 5, 5, 0);
    assert!(ing.evidence.iter().all(|e| e.grade.is_none()));
}

#[test]
fn empty_and_short_grades_are_accepted() {
    let ing = read_guide(&five_with(0, "IncidentGrade", b""), "ok.csv").unwrap();
    assert_counts(&ing, 5, 5, 0);
    assert_eq!(ing.evidence[0].grade, None);
    let ing = read_guide(&five_with(0, "IncidentGrade", b"FP"), "ok.csv").unwrap();
    assert_eq!(
        ing.evidence[0].grade,
        Some(threatrank::domain::Grade::FalsePositive)
    );
}

#[test]
fn bad_technique_id_is_rejected_naming_the_column() {
    let r = one_rejection(&five_with(3, "MitreTechniques", b"T1566;T1566.02"));
    assert_rejection(
        &r,
        5,
        3,
        Some("MitreTechniques"),
        "not an ATT&CK technique id: \"T1566.02\" (expected like T1566 or T1566.002)",
    );
    let ing = read_guide(
        &five_with(3, "MitreTechniques", b"T1078;T1078.004;T1078"),
        "ok.csv",
    )
    .unwrap();
    assert_counts(&ing, 5, 5, 0);
    assert_eq!(ing.evidence[3].techniques, vec!["T1078", "T1078.004"]);
}

#[test]
fn bad_evidence_role_and_empty_required_text_are_rejected() {
    let r = one_rejection(&five_with(0, "EvidenceRole", b"Victim"));
    assert_rejection(
        &r,
        2,
        0,
        Some("EvidenceRole"),
        "expected Impacted or Related, found \"Victim\"",
    );
    let r = one_rejection(&five_with(1, "DetectorId", b"  "));
    assert_rejection(&r, 3, 1, Some("DetectorId"), "empty value");
}

#[test]
fn wrong_field_count_is_rejected() {
    let header = header_names();
    let mut rows = rows(5);
    rows[1].push("extra".into());
    rows[3].truncate(45);
    let ing = read_guide(csv_text(&header, &rows).as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 5, 3, 2);
    assert_rejection(
        &ing.report.rejected[0],
        3,
        1,
        None,
        "expected 46 fields, found 47 (unquoted separator or malformed row)",
    );
    assert_rejection(
        &ing.report.rejected[1],
        5,
        3,
        None,
        "expected 46 fields, found 45 (truncated or malformed row)",
    );
}

#[test]
fn blank_lines_are_not_records_and_do_not_shift_line_numbers() {
    let text = String::from_utf8(five_with(4, "OrgId", b"bad")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, ""); // after the first data row
    lines.insert(4, "");
    let text = lines.join("\n") + "\n";
    let ing = read_guide(text.as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 5, 4, 1);
    // Data row 5 now sits on line 8 (header, r1, blank, r2, blank, r3, r4, r5).
    assert_rejection(
        &ing.report.rejected[0],
        8,
        4,
        Some("OrgId"),
        "not a non-negative integer: \"bad\"",
    );
}

/// Found by `fuzz_guide_csv_structured`: csv skips empty lines inside the next record's span,
/// so a rejection right after blank lines named the first blank line instead of its own.
#[test]
fn a_rejection_right_after_blank_lines_names_its_own_line() {
    let text = String::from_utf8(five_with(4, "OrgId", b"bad")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for eol in ["\n", "\r\n", "\r"] {
        // header, r1..r4, two blank lines, r5 (bad): r5 on line 8
        let mut t = lines[..5].join(eol);
        t.push_str(&eol.repeat(3));
        t.push_str(lines[5]);
        t.push_str(eol);
        let ing = read_guide(t.as_bytes(), "bad.csv").unwrap();
        assert_counts(&ing, 5, 4, 1);
        assert_rejection(
            &ing.report.rejected[0],
            8,
            4,
            Some("OrgId"),
            "not a non-negative integer: \"bad\"",
        );
    }
}

#[test]
fn quoted_field_spanning_lines_keeps_later_line_numbers_right() {
    let mut bytes = five_with(1, "City", b"\"two\nlines\"");
    // Row index 3 gets a bad OrgId: it starts on line 6 (one extra line from the quoted field).
    let text = String::from_utf8(bytes.clone()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut f: Vec<String> = lines[5].split(',').map(str::to_string).collect();
    f[col("OrgId")] = "x".into();
    lines[5] = f.join(",");
    bytes = (lines.join("\n") + "\n").into_bytes();
    let ing = read_guide(&bytes, "bad.csv").unwrap();
    assert_counts(&ing, 5, 4, 1);
    assert_rejection(
        &ing.report.rejected[0],
        6,
        3,
        Some("OrgId"),
        "not a non-negative integer: \"x\"",
    );
}

#[test]
fn many_bad_rows_each_reported_once_in_order_and_written_to_rejects() {
    let header = header_names();
    let mut rows = rows(40);
    let bad: [(usize, &str, &str); 6] = [
        (3, "OrgId", "o"),
        (7, "Timestamp", "2024-06-06"),
        (8, "IncidentGrade", "tp"),
        (20, "MitreTechniques", "X1"),
        (33, "EvidenceRole", ""),
        (39, "AlertId", "a"),
    ];
    for (r, c, v) in bad {
        rows[r][col(c)] = v.into();
    }
    let ing = read_guide(csv_text(&header, &rows).as_bytes(), "many.csv").unwrap();
    assert_counts(&ing, 40, 34, 6);
    let got: Vec<(u64, u64, Option<&str>)> = ing
        .report
        .rejected
        .iter()
        .map(|r| (r.line, r.record, r.column.as_deref()))
        .collect();
    let want: Vec<(u64, u64, Option<&str>)> = bad
        .iter()
        .map(|(r, c, _)| (*r as u64 + 2, *r as u64, Some(*c)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        ing.report.summary(),
        "many.csv: 40 records read = 34 accepted + 6 rejected"
    );

    let dir = tmp();
    let p = dir.path().join("rejects.csv");
    ing.report.write_rejects(&p).unwrap();
    let (h, rs) = read_csv(&p);
    assert_eq!(h, ["file", "line", "record", "column", "reason"]);
    assert_eq!(rs.len(), 6);
    for (row, rej) in rs.iter().zip(&ing.report.rejected) {
        assert_eq!(row[0], "many.csv");
        assert_eq!(row[1], rej.line.to_string());
        assert_eq!(row[2], rej.record.to_string());
        assert_eq!(row[3], rej.column.clone().unwrap_or_default());
        assert_eq!(row[4], rej.reason);
    }
}

#[test]
fn rejects_file_has_a_header_even_without_rejections() {
    let dir = tmp();
    let p = dir.path().join("none.rejects.csv");
    IngestReport::default().write_rejects(&p).unwrap();
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "file,line,record,column,reason\n"
    );
}

#[test]
fn read_path_picks_the_format_from_the_extension() {
    let dir = tmp();
    let p = dir.path().join("rows.csv");
    std::fs::write(&p, five_with(0, "OrgId", b"?")).unwrap();
    let ing = ingest::read_path(&p, &Default::default()).unwrap();
    assert_counts(&ing, 5, 4, 1);
    assert_eq!(ing.report.file, p.display().to_string());
    assert_eq!(ing.report.rejected[0].file, p.display().to_string());
    assert_eq!(ing.report.rejected[0].line, 2);
}

#[test]
fn unterminated_quote_mid_file_is_one_rejection_and_counts_stay_balanced() {
    // The quote swallows the rest of the file into one field: rows after it are not records.
    let mut text = sample_head(2);
    let bad: Vec<&str> = sample().1[2].split(',').collect();
    let t = col("AlertTitle");
    text.push_str(&bad[..t].join(","));
    text.push_str(",\"");
    text.push_str(&bad[t..].join(","));
    text.push('\n');
    for l in &sample().1[3..6] {
        text.push_str(l);
        text.push('\n');
    }
    let ing = read_guide(text.as_bytes(), "bad.csv").unwrap();
    assert_counts(&ing, 3, 2, 1);
    assert_rejection(
        &ing.report.rejected[0],
        4,
        2,
        None,
        "unterminated quoted field: the record runs to the end of the file \
         (3 more lines read as part of it)",
    );
}

#[cfg(not(feature = "parquet"))]
#[test]
fn parquet_input_without_the_feature_says_how_to_get_it() {
    let dir = crate::common::tmp();
    let p = dir.path().join("x.parquet");
    std::fs::write(&p, b"PAR1").unwrap();
    let ip = threatrank::ingest::IngestParams::default().check().unwrap();
    let e = threatrank::ingest::read_path(&p, &ip)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--features parquet"), "{e}");
}

/// One id rule for every reader: a GUIDE `IncidentId` from 2^62 up (the ids of correlated
/// threats and of their training incidents in `retrain`) is rejected naming the column, as
/// native JSONL rejects it; 2^62 − 1 is read.
#[test]
fn incident_ids_in_the_reserved_space_are_rejected() {
    for id in [1u64 << 62, (1 << 62) + 99, (1 << 63) + 10_000, u64::MAX] {
        let r = one_rejection(&five_with(2, "IncidentId", id.to_string().as_bytes()));
        assert_rejection(
            &r,
            4,
            2,
            Some("IncidentId"),
            "ids from 2^62 up are reserved (correlated candidate threats and their training ids)",
        );
    }
    let ok = five_with(2, "IncidentId", ((1u64 << 62) - 1).to_string().as_bytes());
    let ing = read_guide(&ok, "ok.csv").unwrap();
    assert_counts(&ing, 5, 5, 0);
}

/// A NUL byte is never part of a GUIDE value: the record is rejected naming the column (before:
/// stored as it came).
#[test]
fn nul_bytes_are_rejected_naming_the_column() {
    let r = one_rejection(&five_with(3, "AlertTitle", b"Sus\0picious"));
    assert_rejection(&r, 5, 3, Some("AlertTitle"), "NUL byte at byte 3");
}
