//! Correlation of alerts without an incident id (`correlate::Linker`): properties over small
//! generated batches, and a check on the GUIDE sample.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use threatrank::correlate::{
    group_incidents, pairwise_agreement, CorrelateParams, Correlated, Linker,
};
use threatrank::domain::{
    AlertId, Entities, Evidence, IncidentId, IncidentKey, TenantId, ENTITY_COLUMNS,
};

/// Columns the generator fills: three strong ones and one that never links (`Url`).
const COLUMNS: [&str; 4] = ["DeviceId", "IpAddress", "AccountName", "Url"];

/// (tenant, alert, time, given incident, (column, code)) of one generated row.
type Row = (u64, u64, i64, Option<u64>, Option<(usize, u64)>);

fn row() -> impl Strategy<Value = Row> {
    // Few tenants, alerts and codes, so that entities recur within and across tenants.
    (
        0u64..3,
        0u64..20,
        0i64..20_000,
        proptest::option::weighted(0.2, 0u64..4),
        proptest::option::weighted(0.9, (0usize..COLUMNS.len(), 0u64..6)),
    )
}

/// Rows → evidence; `id` is the row's position (unique, order-independent identity).
fn evidence(rows: &[Row]) -> Vec<Evidence> {
    rows.iter()
        .enumerate()
        .map(|(i, &(t, a, ts, inc, ent))| {
            let mut entities = Entities::default();
            if let Some((c, code)) = ent {
                let slot = ENTITY_COLUMNS
                    .iter()
                    .position(|k| *k == COLUMNS[c])
                    .unwrap();
                entities.codes[slot] = Some(code);
            }
            Evidence {
                record: i as u64,
                id: i as u64,
                tenant: TenantId(t),
                incident: IncidentId(inc.unwrap_or(a)),
                incident_given: inc.is_some(),
                alert: AlertId(a),
                timestamp: ts,
                detector: "d".into(),
                title: "t".into(),
                category: "Execution".into(),
                techniques: Vec::new(),
                grade: None,
                entity_type: "Ip".into(),
                impacted: false,
                entities,
                ..Default::default()
            }
        })
        .collect()
}

/// A linker whose training data makes `DeviceId` 0 a "not present" code and `IpAddress` 5
/// common (on 4 training alerts, N = 3).
fn linker(window: i64) -> Linker {
    let mut train = Vec::new();
    for a in 0..10u64 {
        let ent = match a {
            0..=2 => Some((0, 0)),
            3..=6 => Some((1, 5)),
            _ => None,
        };
        train.push((0, a, 0, None, ent));
    }
    let params = CorrelateParams::default()
        .window_seconds(window)
        .max_alerts_per_entity(3)
        .check()
        .unwrap();
    let l = Linker::learn(&evidence(&train), &params);
    assert_eq!(l.stoplist().len(), 2);
    l
}

/// Incidents as key → set of evidence ids.
fn incident_sets(ev: &[Evidence], c: &Correlated) -> BTreeMap<IncidentKey, BTreeSet<u64>> {
    c.incidents
        .iter()
        .map(|inc| {
            (
                inc.key,
                inc.evidence.iter().map(|&i| ev[i as usize].id).collect(),
            )
        })
        .collect()
}

fn rows_and_perm() -> impl Strategy<Value = (Vec<Row>, Vec<usize>)> {
    proptest::collection::vec(row(), 1..80).prop_flat_map(|rows| {
        let n = rows.len();
        (
            Just(rows),
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn input_order_does_not_change_the_candidate_threats(
        (rows, perm) in rows_and_perm(), window in 0i64..6_000
    ) {
        let l = linker(window);
        let ev = evidence(&rows);
        let shuffled: Vec<Evidence> = perm.iter().map(|&i| ev[i].clone()).collect();
        let a = l.correlate(&ev).unwrap();
        let b = l.correlate(&shuffled).unwrap();
        prop_assert_eq!(incident_sets(&ev, &a), incident_sets(&shuffled, &b));
        let a = l.correlate_ignoring_given(&ev).unwrap();
        let b = l.correlate_ignoring_given(&shuffled).unwrap();
        prop_assert_eq!(incident_sets(&ev, &a), incident_sets(&shuffled, &b));
    }

    #[test]
    fn candidate_threats_partition_evidence_within_one_tenant(
        rows in proptest::collection::vec(row(), 0..80), window in 0i64..6_000
    ) {
        let ev = evidence(&rows);
        let c = linker(window).correlate(&ev).unwrap();
        prop_assert_eq!(c.incident_of.len(), ev.len());
        let mut seen = vec![0u32; ev.len()];
        for (k, inc) in c.incidents.iter().enumerate() {
            for &r in &inc.evidence {
                let e = &ev[r as usize];
                // No candidate threat holds two tenants.
                prop_assert_eq!(e.tenant, inc.key.tenant);
                prop_assert_eq!(c.incident_of[r as usize] as usize, k);
                if e.incident_given {
                    prop_assert_eq!(e.incident, inc.key.incident);
                } else {
                    // Correlated ids: the top bit and one of the group's alerts (the smallest).
                    prop_assert!(inc.key.incident.is_correlated());
                    let smallest = inc.alerts[0].0;
                    prop_assert_eq!(inc.key.incident.0 & !(1u64 << 63), smallest);
                }
                seen[r as usize] += 1;
            }
        }
        prop_assert!(seen.iter().all(|&n| n == 1));
        // Rows of one alert without a given id share one candidate threat.
        let mut of_alert: BTreeMap<(TenantId, AlertId), u32> = BTreeMap::new();
        for (r, e) in ev.iter().enumerate().filter(|(_, e)| !e.incident_given) {
            let k = *of_alert.entry((e.tenant, e.alert)).or_insert(c.incident_of[r]);
            prop_assert_eq!(k, c.incident_of[r]);
        }
    }

    #[test]
    fn a_superset_never_splits_a_group(
        rows in proptest::collection::vec(row(), 1..80),
        keep in proptest::collection::vec(any::<bool>(), 80),
        window in 0i64..6_000,
    ) {
        let l = linker(window);
        let all = evidence(&rows);
        let sub: Vec<Evidence> = all
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(e, _)| e.clone())
            .collect();
        for ignore in [false, true] {
            let run = |e: &[Evidence]| {
                if ignore { l.correlate_ignoring_given(e) } else { l.correlate(e) }
            };
            let small = run(&sub).unwrap();
            let big = run(&all).unwrap();
            // Evidence id → its group in the superset run (ids are positions in `all`).
            let group_of: Vec<u32> = big.incident_of.clone();
            for inc in &small.incidents {
                let groups: BTreeSet<u32> = inc
                    .evidence
                    .iter()
                    .map(|&r| group_of[sub[r as usize].id as usize])
                    .collect();
                prop_assert_eq!(groups.len(), 1, "group {} split: {:?}", inc.key, groups);
            }
        }
    }
}

#[test]
fn every_id_given_means_the_given_incidents() {
    let loaded = threatrank::pipeline::load_unlabelled(&crate::common::sample_path()).unwrap();
    let l = Linker::learn(&loaded.evidence, &Default::default());
    // GUIDE ids are all given: correlation changes nothing.
    assert_eq!(
        l.correlate(&loaded.evidence).unwrap(),
        group_incidents(&loaded.evidence)
    );
    // From scratch, the learnt stoplist holds the GUIDE "not present" codes (DeviceId 98799
    // among them). The sample keeps ~1 row per alert, so only 0.6% of GUIDE's same-incident
    // alert pairs share a strong entity at all: recall is tiny, but links must be far better
    // than chance (measured at the defaults: precision 0.23, recall 0.0033; README).
    assert!(l
        .stoplist()
        .iter()
        .any(|s| s.column == "DeviceId" && s.code == 98799));
    let c = l.correlate_ignoring_given(&loaded.evidence).unwrap();
    let a = pairwise_agreement(&loaded.evidence, &c);
    assert!(a.precision().unwrap() > 0.15, "{a:?}");
    assert!(a.recall().unwrap() > 0.002, "{a:?}");
    assert!(c.incidents.iter().all(|i| i.key.incident.is_correlated()));
}
