//! Streaming score (`threatrank::stream`): partitioned, in memory and the whole-input
//! reference give the same bytes; explanations go to the heads of each tenant's queue.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use threatrank::pipeline::{self, ScoreOutcome};
use threatrank::stream::{Explain, StreamParams};
use threatrank::{report, train::Artifact};

/// Sample rows 1500..4500 (not the shared model's training rows) with three malformed rows.
fn input(dir: &Path) -> PathBuf {
    let header = header_names();
    let mut rows: Vec<Vec<String>> = rows(4500).split_off(1500);
    let mut bad_org = rows[10].clone();
    bad_org[col("OrgId")] = "x7".into();
    rows.insert(5, bad_org);
    let mut bad_time = rows[20].clone();
    bad_time[col("Timestamp")] = "yesterday".into();
    rows.insert(700, bad_time);
    let mut short = rows[30].clone();
    short.truncate(10);
    rows.push(short);
    let p = dir.join("in.csv");
    std::fs::write(&p, csv_text(&header, &rows)).unwrap();
    p
}

fn score(input: &Path, out: &Path, memory_rows: usize, explain: Explain) -> ScoreOutcome {
    let params = StreamParams {
        memory_rows,
        explain,
    }
    .check()
    .unwrap();
    pipeline::score_file_with(shared_model(), input, out, kn(), &params).unwrap()
}

/// Whole input in memory, every incident explained: the path `score` took before streaming.
fn reference(input: &Path, out: &Path) {
    let art = Artifact::load(shared_model()).unwrap();
    let loaded = pipeline::load_unlabelled(input).unwrap();
    let s = pipeline::score_loaded(&art, loaded, 1, kn()).unwrap();
    let l = &s.loaded;
    report::write_scores(out, &l.evidence, &l.corr, &l.report, &s.incidents).unwrap();
}

fn scratch_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn partitioned_in_memory_and_reference_are_byte_identical() {
    let dir = tmp();
    let inp = input(dir.path());
    let (whole, mem, parts) = (
        dir.path().join("ref.csv"),
        dir.path().join("mem.csv"),
        dir.path().join("parts.csv"),
    );
    reference(&inp, &whole);
    let a = score(&inp, &mem, 1_000_000, Explain::All);
    let b = score(&inp, &parts, 300, Explain::All);
    assert_eq!(a.report.partitions, 1);
    assert!(
        b.report.partitions >= 8,
        "{} partitions",
        b.report.partitions
    );
    for o in [&a, &b] {
        assert_eq!(o.report.records, 3003);
        assert_eq!(o.report.rejected, 3);
        assert_eq!(o.report.records, o.report.accepted + o.report.rejected);
        assert_eq!(o.rows, 3003);
    }
    let want = std::fs::read(&whole).unwrap();
    assert_eq!(std::fs::read(&mem).unwrap(), want, "in memory differs");
    assert_eq!(std::fs::read(&parts).unwrap(), want, "partitioned differs");
    // Rejected rows keep their place: data row 6 (0-based record 5) is the bad OrgId.
    let (_, rows) = read_csv(&parts);
    assert_eq!(rows[5][9], "rejected");
    assert!(rows[5][11].contains("OrgId"), "{}", rows[5][11]);
    // Both rejects files list the same three records.
    let rej = |p: &Path| std::fs::read_to_string(report_rejects(p)).unwrap();
    assert_eq!(rej(&mem), rej(&parts));
    assert_eq!(rej(&parts).lines().count(), 4);
    assert!(
        scratch_left(dir.path()).is_empty(),
        "{:?}",
        scratch_left(dir.path())
    );
}

fn report_rejects(out: &Path) -> PathBuf {
    threatrank::ingest::rejects_path_for(out)
}

#[test]
fn explain_top_k_explains_exactly_the_heads_of_each_tenant_queue() {
    let dir = tmp();
    let inp = input(dir.path());
    let (all, top) = (dir.path().join("all.csv"), dir.path().join("top.csv"));
    score(&inp, &all, 1_000_000, Explain::All);
    let out = score(&inp, &top, 250, Explain::Top(2));
    assert!(out.report.partitions > 1);
    let (h, all_rows) = read_csv(&all);
    let (_, top_rows) = read_csv(&top);
    let c = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (org, inc, prio, ptp, reason) = (
        c("OrgId"),
        c("IncidentId"),
        c("priority"),
        c("p_true_positive"),
        c("top_reason"),
    );
    // The queue from the output itself: per tenant, (priority desc, P(TP) desc, id asc).
    let mut queues: BTreeMap<u64, BTreeSet<(i64, i64, u64)>> = BTreeMap::new();
    for r in top_rows.iter().filter(|r| r[9] == "scored") {
        let p: i64 = r[prio].parse().unwrap();
        let q: i64 = (r[ptp].parse::<f64>().unwrap() * 1e6).round() as i64;
        queues.entry(r[org].parse().unwrap()).or_default().insert((
            -p,
            -q,
            r[inc].parse().unwrap(),
        ));
    }
    let heads: BTreeSet<(u64, u64)> = queues
        .iter()
        .flat_map(|(t, q)| q.iter().take(2).map(move |(_, _, i)| (*t, *i)))
        .collect();
    let mut explained = BTreeSet::new();
    for (a, t) in all_rows.iter().zip(&top_rows) {
        // Everything but the reason is the same.
        let strip = |r: &Vec<String>| {
            let mut r = r.clone();
            r[reason].clear();
            r
        };
        assert_eq!(strip(a), strip(t));
        if t[9] != "scored" {
            continue;
        }
        let k = (
            t[org].parse::<u64>().unwrap(),
            t[inc].parse::<u64>().unwrap(),
        );
        if heads.contains(&k) {
            // A head gets the same exact reason as with every incident explained.
            assert_eq!(t[reason], a[reason], "incident {k:?}");
            explained.insert(k);
        } else {
            assert_eq!(t[reason], "", "incident {k:?} is not a queue head");
        }
    }
    assert_eq!(out.report.explained as usize, heads.len());
    assert!(explained.len() <= 2 * queues.len());
    assert!(!explained.is_empty());
}

#[test]
fn alerts_without_incident_ids_are_correlated_the_same_when_partitioned() {
    let dir = tmp();
    // 3 tenants × 60 alerts, no incident id, devices shared by runs of alerts.
    let mut lines = Vec::new();
    for t in 0..3u64 {
        for a in 0..60u64 {
            lines.push(
                serde_json::json!({
                    "tenant": 500 + t, "alert_id": t * 1000 + a,
                    "timestamp": format!("2024-06-06T{:02}:{:02}:00Z", a / 10, a % 60),
                    "detector": format!("{}", a % 7), "title": format!("{}", a % 5),
                    "category": "Execution",
                    "entities": [{"type": "Machine", "role": "Impacted",
                                  "value": format!("host-{}", a / 6)}]
                })
                .to_string(),
            );
        }
    }
    let inp = dir.path().join("alerts.jsonl");
    std::fs::write(&inp, lines.join("\n") + "\n").unwrap();
    let (mem, parts) = (dir.path().join("mem.csv"), dir.path().join("parts.csv"));
    let a = score(&inp, &mem, 1_000_000, Explain::All);
    let b = score(&inp, &parts, 20, Explain::All);
    assert_eq!(a.report.partitions, 1);
    assert!(b.report.partitions > 1);
    assert_eq!(a.incidents, b.incidents);
    assert!(a.incidents < 180, "alerts sharing a device were linked");
    assert_eq!(std::fs::read(&mem).unwrap(), std::fs::read(&parts).unwrap());
}

#[test]
fn queue_explains_only_what_it_shows_and_prints_the_same_table() {
    let dir = tmp();
    let inp = input(dir.path());
    let art = Artifact::load(shared_model()).unwrap();
    for review in [false, true] {
        let (scored, text) =
            pipeline::queue_file(shared_model(), &inp, None, 3, 2, review, kn()).unwrap();
        // Everything explained, then the same table.
        let all = pipeline::score_loaded(&art, pipeline::load_unlabelled(&inp).unwrap(), 2, kn())
            .unwrap();
        let pool: Vec<_> = all
            .incidents
            .iter()
            .filter(|s| !review || s.is_uncertain())
            .cloned()
            .collect();
        let want = report::queue_table(&pool, None, 3);
        assert!(text.ends_with(&want), "review={review}");
        // Only shown incidents carry reasons.
        let shown: usize = threatrank::rank::queues(&pool, None, 3)
            .values()
            .map(Vec::len)
            .sum();
        let with_reasons = scored
            .incidents
            .iter()
            .filter(|s| !s.reasons.is_empty())
            .count();
        assert!(with_reasons <= shown, "{with_reasons} > {shown}");
        assert!(with_reasons > 0);
    }
}
