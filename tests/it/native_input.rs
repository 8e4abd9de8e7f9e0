//! Bad-input suite for native JSONL alerts (format at the top of `src/ingest/native.rs`).

use crate::common::*;
use serde_json::{json, Value};
use threatrank::domain::{Grade, Severity};
use threatrank::ingest::{self, IngestError, IngestParams, InputFormat, Rejection};

/// A valid alert; `k` varies ids.
pub fn alert(k: u64) -> Value {
    json!({
        "tenant": 40 + k % 3,
        "alert_id": 7000 + k,
        "incident_id": 9 + k / 2,
        "timestamp": "2024-06-06T17:32:50Z",
        "detector": "EDR-credential-dump",
        "title": "LSASS memory read",
        "category": "CredentialAccess",
        "techniques": ["T1003.001"],
        "severity": "high",
        "entities": [
            {"type": "Machine", "role": "Impacted", "value": "host-17"},
            {"type": "User", "role": "Related", "value": 4411}
        ],
        "grade": "TruePositive",
        "id": 123 + k
    })
}

/// Five valid lines, line `bad` (0-based) replaced by `raw` bytes.
fn five_with(bad: usize, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for k in 0..5u64 {
        if k as usize == bad {
            out.extend_from_slice(raw);
        } else {
            out.extend_from_slice(alert(k).to_string().as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// Five lines with a field of line `bad` set (or removed, for `None`).
fn five_with_field(bad: usize, field: &str, value: Option<Value>) -> Vec<u8> {
    let mut a = alert(bad as u64);
    match value {
        Some(v) => a[field] = v,
        None => {
            a.as_object_mut().unwrap().remove(field);
        }
    }
    five_with(bad, a.to_string().as_bytes())
}

#[track_caller]
fn one_rejection(bytes: &[u8]) -> Rejection {
    let ing = read_native(bytes, "bad.jsonl").expect("not fatal");
    assert_counts(&ing, 5, 4, 1);
    // Two entities per accepted alert.
    assert_eq!(ing.evidence.len(), 8);
    let r = ing.report.rejected[0].clone();
    assert_eq!(r.file, "bad.jsonl");
    r
}

#[test]
fn valid_alerts_become_one_evidence_per_entity() {
    let mut lines: Vec<String> = (0..3).map(|k| alert(k).to_string()).collect();
    let mut no_ent = alert(3);
    let obj = no_ent.as_object_mut().unwrap();
    for f in [
        "entities",
        "incident_id",
        "id",
        "grade",
        "severity",
        "techniques",
    ] {
        obj.remove(f);
    }
    lines.push(no_ent.to_string());
    let ing = read_native((lines.join("\n") + "\n").as_bytes(), "ok.jsonl").unwrap();
    assert_counts(&ing, 4, 4, 0);
    assert_eq!(ing.evidence.len(), 7);
    let recs: Vec<u64> = ing.evidence.iter().map(|e| e.record).collect();
    assert_eq!(recs, vec![0, 0, 1, 1, 2, 2, 3]);
    let e = &ing.evidence[0];
    assert_eq!(
        (e.id, e.tenant.0, e.incident.0, e.alert.0),
        (123, 40, 9, 7000)
    );
    assert_eq!(e.timestamp, 1_717_695_170);
    assert_eq!(e.entity_type, "Machine");
    assert!(e.impacted);
    assert!(!ing.evidence[1].impacted);
    assert_eq!(e.grade, Some(Grade::TruePositive));
    assert_eq!(e.severity, Some(Severity::High));
    assert_eq!(e.techniques, vec!["T1003.001"]);
    // Integer entity values are kept as codes.
    let k = threatrank::domain::ENTITY_COLUMNS
        .iter()
        .position(|c| *c == "AccountObjectId")
        .unwrap();
    assert_eq!(ing.evidence[1].entities.codes[k], Some(4411));
    // No incident id: the alert is its own incident; no id: the line number; no entity: one
    // evidence of type None.
    let last = &ing.evidence[6];
    assert_eq!((last.incident.0, last.alert.0, last.id), (7003, 7003, 4));
    assert!(!last.incident_given);
    assert!(ing.evidence[..6].iter().all(|e| e.incident_given));
    assert_eq!(last.entity_type, "None");
    assert_eq!(last.grade, None);
}

#[test]
fn empty_file_is_a_fatal_error_naming_the_file() {
    let err = read_native(b"", "empty.jsonl").unwrap_err();
    assert!(matches!(err, IngestError::Empty { .. }), "{err:?}");
    assert_eq!(err.to_string(), "empty.jsonl: empty file (no header line)");
    let dir = tmp();
    let p = dir.path().join("nothing.jsonl");
    std::fs::write(&p, b"").unwrap();
    let msg = ingest::read_path(&p, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&p.display().to_string()) && msg.contains("empty file"),
        "{msg}"
    );
}

#[test]
fn blank_lines_are_not_records_but_count_as_lines() {
    let ing = read_native(b"\n  \n\r\n", "blank.jsonl").unwrap();
    assert_counts(&ing, 0, 0, 0);
    let mut bytes = b"\n".to_vec();
    bytes.extend_from_slice(&five_with(3, b"{not json"));
    let ing = read_native(&bytes, "bad.jsonl").unwrap();
    assert_counts(&ing, 5, 4, 1);
    assert_eq!(ing.report.rejected[0].line, 5);
    assert_eq!(ing.report.rejected[0].record, 3);
}

#[test]
fn missing_required_field_names_it() {
    for (i, field) in [
        "tenant",
        "alert_id",
        "timestamp",
        "detector",
        "title",
        "category",
    ]
    .iter()
    .enumerate()
    {
        let row = i % 5;
        let r = one_rejection(&five_with_field(row, field, None));
        assert_eq!((r.line, r.record), (row as u64 + 1, row as u64), "{r}");
        assert_eq!(r.column.as_deref(), Some(*field), "{r}");
        assert_eq!(r.reason, "missing required field", "{r}");
    }
}

#[test]
fn unknown_field_is_rejected_naming_it() {
    let mut a = alert(2);
    a["tennant"] = json!(4);
    let r = one_rejection(&five_with(2, a.to_string().as_bytes()));
    assert_eq!((r.line, r.record), (3, 2));
    assert_eq!(r.column.as_deref(), Some("tennant"), "{r}");
    assert!(
        r.reason
            .starts_with("unknown field (expected one of tenant, "),
        "{r}"
    );
}

#[test]
fn bad_utf8_rejects_the_line_and_keeps_the_others() {
    let mut a = alert(1).to_string().into_bytes();
    let pos = a.windows(5).position(|w| w == b"LSASS").unwrap();
    a[pos + 1] = 0xff;
    let r = one_rejection(&five_with(1, &a));
    assert_eq!((r.line, r.record), (2, 1), "{r}");
    assert_eq!(r.column.as_deref(), Some("title"), "{r}");
    assert_eq!(
        r.reason,
        format!("invalid UTF-8 at byte {} of the line", pos + 1)
    );
}

#[test]
fn truncated_last_line_is_rejected() {
    let mut bytes: Vec<u8> = Vec::new();
    for k in 0..4 {
        bytes.extend_from_slice(alert(k).to_string().as_bytes());
        bytes.push(b'\n');
    }
    let last = alert(4).to_string();
    bytes.extend_from_slice(&last.as_bytes()[..last.len() / 2]);
    let r = one_rejection(&bytes);
    assert_eq!((r.line, r.record, r.column.as_deref()), (5, 4, None), "{r}");
    assert!(r.reason.starts_with("invalid JSON: "), "{r}");
    assert!(r.reason.contains("EOF"), "{r}");
}

#[test]
fn complete_last_line_without_newline_is_accepted() {
    let bytes = five_with(9, b"");
    let ing = read_native(&bytes[..bytes.len() - 1], "ok.jsonl").unwrap();
    // `five_with(9, ..)` replaces nothing: five valid lines.
    assert_counts(&ing, 5, 5, 0);
}

#[test]
fn ten_megabyte_field_is_rejected_fast_naming_the_limit() {
    let mut a = alert(2);
    a["title"] = json!("A".repeat(10 * 1024 * 1024));
    let line = a.to_string();
    let t0 = std::time::Instant::now();
    let r = one_rejection(&five_with(2, line.as_bytes()));
    let took = t0.elapsed();
    assert_eq!((r.line, r.record), (3, 2), "{r}");
    assert_eq!(
        r.reason,
        format!(
            "line of {} bytes exceeds the limit of 65536 bytes",
            line.len()
        )
    );
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
}

#[test]
fn non_integer_ids_are_rejected() {
    let cases = [
        ("tenant", json!("abc")),
        ("alert_id", json!(-1)),
        ("incident_id", json!(1.5)),
        ("id", json!("12")),
    ];
    for (i, (field, v)) in cases.into_iter().enumerate() {
        let r = one_rejection(&five_with_field(i, field, Some(v)));
        assert_eq!((r.line, r.record), (i as u64 + 1, i as u64), "{r}");
        assert_eq!(r.column.as_deref(), Some(field), "{r}");
        assert!(r.reason.starts_with("invalid value: invalid "), "{r}");
        assert!(r.reason.contains("expected u64"), "{r}");
    }
}

/// Ids from 2^62 up name correlated candidate threats (from 2^63) and their training ids in
/// `retrain` (from 2^62): a given `incident_id` there, or the `alert_id` of an alert without
/// one, is rejected; 2^62 − 1 is fine, and so is a large alert id with an incident.
#[test]
fn ids_in_the_correlated_namespace_are_rejected() {
    let top = 1u64 << 62;
    for id in [top, top + 5, (1 << 63) + 5, u64::MAX] {
        let r = one_rejection(&five_with_field(1, "incident_id", Some(json!(id))));
        assert_eq!(r.column.as_deref(), Some("incident_id"), "{id}: {r}");
        assert!(r.reason.contains("reserved"), "{r}");
    }
    let ing = read_native(
        &five_with_field(1, "incident_id", Some(json!(top - 1))),
        "ok.jsonl",
    )
    .unwrap();
    assert_counts(&ing, 5, 5, 0);
    let mut a = alert(3);
    a.as_object_mut().unwrap().remove("incident_id");
    a["alert_id"] = json!(top);
    let r = one_rejection(&five_with(3, a.to_string().as_bytes()));
    assert_eq!((r.line, r.column.as_deref()), (4, Some("alert_id")), "{r}");
    let mut a = alert(2);
    a["alert_id"] = json!(u64::MAX);
    let bytes = five_with(2, a.to_string().as_bytes());
    let ing = read_native(&bytes, "ok.jsonl").unwrap();
    assert_counts(&ing, 5, 5, 0);
}

/// The issue asks for the column of every rejection: JSONL type errors name their field.
#[test]
fn non_integer_ids_name_the_field() {
    for (i, field) in ["tenant", "alert_id"].into_iter().enumerate() {
        let r = one_rejection(&five_with_field(i, field, Some(json!("abc"))));
        assert_eq!(r.column.as_deref(), Some(field), "{r}");
    }
}

#[test]
fn bad_timestamp_is_rejected_naming_the_field() {
    let r = one_rejection(&five_with_field(
        0,
        "timestamp",
        Some(json!("2024-02-30T00:00:00Z")),
    ));
    assert_eq!((r.line, r.record), (1, 0));
    assert_eq!(r.column.as_deref(), Some("timestamp"));
    assert_eq!(r.reason, "timestamp out of range: \"2024-02-30T00:00:00Z\"");
    let r = one_rejection(&five_with_field(4, "timestamp", Some(json!("soon"))));
    assert_eq!((r.line, r.column.as_deref()), (5, Some("timestamp")));
    assert_eq!(r.reason, "not an RFC 3339 timestamp: \"soon\"");
}

#[test]
fn bad_grade_is_rejected_when_labels_are_read_and_ignored_when_not() {
    let bytes = five_with_field(3, "grade", Some(json!("Maybe")));
    let r = one_rejection(&bytes);
    assert_eq!((r.line, r.column.as_deref()), (4, Some("grade")));
    assert_eq!(r.reason, "unknown grade \"Maybe\"");
    let p = IngestParams::default().read_labels(false).check().unwrap();
    let ing = ingest::read_from(&bytes[..], "bad.jsonl", InputFormat::NativeJsonl, &p).unwrap();
    assert_counts(&ing, 5, 5, 0);
    assert!(ing.evidence.iter().all(|e| e.grade.is_none()));
}

/// Scoring must never read the label: a non-string grade does not reject the alert.
#[test]
fn non_string_grade_is_ignored_when_labels_are_not_read() {
    let bytes = five_with_field(3, "grade", Some(json!(2)));
    let p = IngestParams::default().read_labels(false).check().unwrap();
    let ing = ingest::read_from(&bytes[..], "x.jsonl", InputFormat::NativeJsonl, &p).unwrap();
    assert_counts(&ing, 5, 5, 0);
}

#[test]
fn bad_technique_and_severity_are_rejected() {
    let r = one_rejection(&five_with_field(
        1,
        "techniques",
        Some(json!(["T1003", "T10"])),
    ));
    assert_eq!((r.line, r.column.as_deref()), (2, Some("techniques")));
    assert_eq!(
        r.reason,
        "not an ATT&CK technique id: \"T10\" (expected like T1566 or T1566.002)"
    );
    let r = one_rejection(&five_with_field(2, "severity", Some(json!("urgent"))));
    assert_eq!(r.line, 3);
    assert!(r.reason.contains("unknown variant `urgent`"), "{r}");
}

#[test]
fn bad_entities_are_rejected_naming_the_subfield() {
    let ent = |e: Value| Some(json!([{"type": "Ip", "value": 1}, e]));
    let r = one_rejection(&five_with_field(
        0,
        "entities",
        ent(json!({"type": "Ip", "role": "Victim"})),
    ));
    assert_eq!((r.line, r.column.as_deref()), (1, Some("entities.role")));
    assert_eq!(
        r.reason,
        "entity 1: expected Impacted or Related, found \"Victim\""
    );
    let r = one_rejection(&five_with_field(1, "entities", ent(json!({"type": " "}))));
    assert_eq!((r.line, r.column.as_deref()), (2, Some("entities.type")));
    assert_eq!(r.reason, "entity 1: empty type");
    let r = one_rejection(&five_with_field(
        2,
        "entities",
        ent(json!({"type": "Ip", "value": [1]})),
    ));
    assert_eq!((r.line, r.column.as_deref()), (3, Some("entities.value")));
    assert_eq!(r.reason, "entity 1: value must be a string or an integer");
}

#[test]
fn empty_required_text_is_rejected() {
    let r = one_rejection(&five_with_field(4, "category", Some(json!("  "))));
    assert_eq!((r.line, r.column.as_deref()), (5, Some("category")));
    assert_eq!(r.reason, "empty value");
}

#[test]
fn non_object_lines_are_rejected_not_fatal() {
    // The JSONL analogue of a wrong field count: a CSV line or an array where an alert belongs.
    let r = one_rejection(&five_with(2, b"1,2,3,Execution"));
    assert_eq!((r.line, r.record), (3, 2));
    assert!(
        r.reason.starts_with("invalid JSON: trailing characters"),
        "{r}"
    );
    let r = one_rejection(&five_with(3, b"[1, 2, 3]"));
    assert_eq!(r.line, 4);
    assert_eq!(
        r.reason, "an alert must be a JSON object, found an array",
        "{r}"
    );
}

/// serde's derive also reads a struct from a JSON array, positionally: the reader requires an
/// object, so a 12-element array is not taken as an alert.
#[test]
fn array_lines_are_not_alerts() {
    let arr = br#"[46, 7001, null, "2024-06-06T17:32:50Z", "d", "t", "Execution", [], null, [], null, null]"#;
    let r = one_rejection(&five_with(0, arr));
    assert_eq!(r.line, 1);
}

#[test]
fn crlf_line_endings_are_accepted_with_correct_line_numbers() {
    let text = String::from_utf8(five_with(3, b"{}")).unwrap();
    let crlf = text.replace('\n', "\r\n");
    let ing = read_native(crlf.as_bytes(), "bad.jsonl").unwrap();
    assert_counts(&ing, 5, 4, 1);
    assert_eq!(ing.report.rejected[0].line, 4);
    let lf = read_native(five_with(9, b"").as_slice(), "a.jsonl").unwrap();
    let crlf = read_native(
        String::from_utf8(five_with(9, b""))
            .unwrap()
            .replace('\n', "\r\n")
            .as_bytes(),
        "a.jsonl",
    )
    .unwrap();
    assert_eq!(lf.evidence, crlf.evidence);
}

#[test]
fn bom_at_start_is_accepted() {
    let mut bytes = b"\xef\xbb\xbf".to_vec();
    bytes.extend_from_slice(&five_with(9, b""));
    let ing = read_native(&bytes, "bom.jsonl").unwrap();
    assert_counts(&ing, 5, 5, 0);
}

/// Found by `fuzz_native_jsonl_structured`: a BOM alone on the first line was read as an empty
/// record and rejected as invalid JSON.
#[test]
fn bom_on_an_otherwise_blank_first_line_is_not_a_record() {
    for blank in [&b"\n"[..], b"\r\n", b"  \n"] {
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(blank);
        bytes.extend_from_slice(&five_with(9, b""));
        let ing = read_native(&bytes, "bom.jsonl").unwrap();
        assert_counts(&ing, 5, 5, 0);
    }
}

#[test]
fn jsonl_extension_selects_the_native_reader() {
    let dir = tmp();
    for ext in ["jsonl", "ndjson", "json"] {
        let p = dir.path().join(format!("a.{ext}"));
        std::fs::write(&p, five_with(1, b"{}")).unwrap();
        let ing = ingest::read_path(&p, &Default::default()).unwrap();
        assert_counts(&ing, 5, 4, 1);
        assert_eq!(ing.report.rejected[0].file, p.display().to_string());
    }
}

/// A NUL in a text value rejects the alert naming the field (before: stored as it came).
#[test]
fn nul_characters_are_rejected_naming_the_field() {
    let r = one_rejection(&five_with_field(2, "title", Some(json!("Sus\u{0}picious"))));
    assert_eq!((r.line, r.column.as_deref()), (3, Some("title")), "{r}");
    assert_eq!(r.reason, "NUL character at byte 3");
}
