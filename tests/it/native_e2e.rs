//! Native JSONL alerts scored end to end with a model trained on GUIDE CSV.

use crate::common::*;
use serde_json::json;
use threatrank::pipeline;

fn alerts() -> Vec<serde_json::Value> {
    vec![
        // With an incident id, two entities, an id.
        json!({"tenant": 46, "alert_id": 7001, "incident_id": 2165,
               "timestamp": "2024-06-06T17:32:50Z", "detector": "217", "title": "194",
               "category": "Execution", "techniques": ["T1003.001"], "severity": "high",
               "entities": [{"type": "Machine", "role": "Impacted", "value": "host-17"},
                            {"type": "User", "role": "Related", "value": 4411}],
               "id": 123}),
        // Same incident, another alert, no id (defaults to its line number: 2).
        json!({"tenant": 46, "alert_id": 7002, "incident_id": 2165,
               "timestamp": "2024-06-06T18:00:00+02:00", "detector": "217", "title": "194",
               "category": "Execution",
               "entities": [{"type": "Ip", "value": "10.0.0.1"}]}),
        // No incident id: its own incident; no entities.
        json!({"tenant": 358, "alert_id": 7003, "timestamp": "2024-06-08T19:59:54.000Z",
               "detector": "1", "title": "1", "category": "InitialAccess",
               "techniques": ["T1566.002"], "id": 5}),
        // Unknown entity type, a grade that scoring must ignore.
        json!({"tenant": 999999, "alert_id": 7004, "incident_id": 1,
               "timestamp": "2024-06-09T00:00:00Z", "detector": "EDR-x", "title": "odd",
               "category": "Weaponization", "severity": "low", "grade": "Maybe",
               "entities": [{"type": "Satellite", "role": "impacted", "value": "sat-1"}],
               "id": 77}),
    ]
}

fn jsonl(lines: &[String]) -> String {
    lines.join("\n") + "\n"
}

#[test]
fn native_alerts_score_one_row_per_record_in_order() {
    let dir = tmp();
    let lines: Vec<String> = alerts().iter().map(|a| a.to_string()).collect();
    let input = dir.path().join("alerts.jsonl");
    std::fs::write(&input, jsonl(&lines)).unwrap();
    let out = dir.path().join("scores.csv");
    let res = pipeline::score_file(shared_model(), &input, &out, kn()).unwrap();
    assert_eq!(res.report.records, 4);
    assert_eq!(res.report.accepted, 4);
    assert_eq!(res.report.rejected, 0);
    assert_eq!(res.rows, 4);
    assert_eq!(res.incidents, 3);

    let (h, rows) = read_csv(&out);
    assert_eq!(h[..4], ["Id", "OrgId", "IncidentId", "AlertId"]);
    let want = [
        ("123", "46", "2165", "7001"),
        ("2", "46", "2165", "7002"),
        // No incident id: a candidate threat of its own, named 2^63 | its alert id.
        ("5", "358", "9223372036854782811", "7003"),
        ("77", "999999", "1", "7004"),
    ];
    assert_eq!(rows.len(), want.len());
    for (r, w) in rows.iter().zip(want) {
        assert_eq!(
            (r[0].as_str(), r[1].as_str(), r[2].as_str(), r[3].as_str()),
            w
        );
        assert_eq!(r[9], "scored");
        assert!(["TruePositive", "BenignPositive", "FalsePositive"].contains(&r[4].as_str()));
        let p: f64 = r[5..8].iter().map(|s| s.parse::<f64>().unwrap()).sum();
        assert!((p - 1.0).abs() <= 1e-5, "{r:?}");
    }
    // Both alerts of incident 46/2165 carry the incident's scores.
    assert_eq!(rows[0][4..9], rows[1][4..9]);
}

#[test]
fn native_rejects_keep_their_place_and_blank_lines_are_skipped() {
    let dir = tmp();
    let mut lines: Vec<String> = alerts().iter().map(|a| a.to_string()).collect();
    lines.insert(1, "{\"tenant\": 46}".into()); // line 2: missing fields
    lines.insert(3, String::new()); // line 4: blank, not a record
    let input = dir.path().join("mixed.ndjson");
    std::fs::write(&input, jsonl(&lines)).unwrap();
    let out = dir.path().join("scores.csv");
    let o = run_os(&[
        "score".as_ref(),
        "--model".as_ref(),
        shared_model().as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let name = input.display().to_string();
    let e = stderr(&o);
    assert!(
        e.contains(&format!("{name}: 5 records read = 4 accepted + 1 rejected")),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "rejected {name}:2: column alert_id: missing required field"
        )),
        "{e}"
    );
    let (_, rows) = read_csv(&out);
    let status: Vec<&str> = rows.iter().map(|r| r[9].as_str()).collect();
    assert_eq!(status, ["scored", "rejected", "scored", "scored", "scored"]);
    assert_eq!(rows[0][0], "123");
    // The alert without an id now sits on line 3.
    assert_eq!(rows[2][0], "3");
    assert_eq!(rows[3][0], "5");
    assert!(
        rows[1][11].starts_with(&format!("{name}:2: ")),
        "{:?}",
        rows[1]
    );
    let (_, rej) = read_csv(&threatrank::ingest::rejects_path_for(&out));
    assert_eq!(rej.len(), 1);
    assert_eq!((rej[0][1].as_str(), rej[0][2].as_str()), ("2", "1"));
}

#[test]
fn native_scores_do_not_depend_on_line_order() {
    // The same alerts as JSONL twice in different order give the same per-alert scores.
    let dir = tmp();
    let lines: Vec<String> = alerts().iter().map(|a| a.to_string()).collect();
    let mut rev = lines.clone();
    rev.reverse();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, jsonl(&lines)).unwrap();
    std::fs::write(&b, jsonl(&rev)).unwrap();
    let (oa, ob) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    pipeline::score_file(shared_model(), &a, &oa, kn()).unwrap();
    pipeline::score_file(shared_model(), &b, &ob, kn()).unwrap();
    let (_, ra) = read_csv(&oa);
    let (_, mut rb) = read_csv(&ob);
    rb.reverse();
    for (x, y) in ra.iter().zip(&rb) {
        // Id differs only for the alert whose id is its line number.
        assert_eq!(x[1..10], y[1..10], "{x:?} vs {y:?}");
    }
}

/// Alerts without an incident id that share a device within the artifact's window (6 h) form
/// one candidate threat; a later sighting and another tenant's do not join it.
#[test]
fn native_alerts_without_incident_id_are_correlated_by_the_artifact() {
    let model = threatrank::train::Artifact::load(shared_model()).unwrap();
    let linker = model.correlation.as_ref().expect("trained with a linker");
    assert_eq!(linker.window_seconds(), 21_600);
    let alert = |tenant: u64, id: u64, ts: &str, host: &str| {
        json!({"tenant": tenant, "alert_id": id, "timestamp": ts, "detector": "217",
               "title": "194", "category": "Execution",
               "entities": [{"type": "Machine", "role": "Impacted", "value": host},
                            {"type": "Ip", "value": format!("10.0.0.{id}")}]})
        .to_string()
    };
    let lines = [
        alert(46, 9002, "2024-06-06T10:00:00Z", "host-9"),
        alert(46, 9001, "2024-06-06T14:00:00Z", "host-9"),
        alert(46, 9003, "2024-06-09T10:00:00Z", "host-9"),
        alert(47, 9004, "2024-06-06T10:30:00Z", "host-9"),
    ];
    let dir = tmp();
    let input = dir.path().join("free.jsonl");
    std::fs::write(&input, jsonl(&lines)).unwrap();
    let out = dir.path().join("scores.csv");
    let res = pipeline::score_file(shared_model(), &input, &out, kn()).unwrap();
    assert_eq!(res.incidents, 3);
    let (_, rows) = read_csv(&out);
    let top = 1u64 << 63;
    let ids: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    let want = [top | 9001, top | 9001, top | 9003, top | 9004].map(|v| v.to_string());
    assert_eq!(ids, want);
    // One candidate threat, one score.
    assert_eq!(rows[0][4..9], rows[1][4..9]);
}
