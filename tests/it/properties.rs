//! Tenant isolation and correlation properties over small generated evidence.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use threatrank::correlate::{group_incidents, Correlated};
use threatrank::domain::{AlertId, Entities, Evidence, Grade, IncidentId, IncidentKey, TenantId};
use threatrank::rank::{queue_order, queues, ScoredIncident};

/// (tenant, incident, alert, timestamp, grade) → evidence; `id` is the row's position.
fn evidence(rows: &[(u64, u64, u64, i64, Option<u8>)]) -> Vec<Evidence> {
    rows.iter()
        .enumerate()
        .map(|(i, &(t, inc, al, ts, g))| Evidence {
            record: i as u64,
            id: i as u64,
            tenant: TenantId(t),
            incident: IncidentId(inc),
            incident_given: true,
            alert: AlertId(al),
            timestamp: ts,
            detector: format!("d{}", al % 3),
            title: format!("t{al}"),
            category: "Execution".into(),
            techniques: Vec::new(),
            grade: g.and_then(Grade::from_class_id),
            entity_type: "Ip".into(),
            impacted: i % 2 == 0,
            entities: Entities::default(),
            ..Default::default()
        })
        .collect()
}

fn row() -> impl Strategy<Value = (u64, u64, u64, i64, Option<u8>)> {
    // Few tenants and incident ids, so that the same incident id recurs across tenants.
    (
        0u64..4,
        0u64..5,
        0u64..6,
        1_717_000_000i64..1_717_100_000,
        proptest::option::of(0u8..3),
    )
}

/// Incidents as key → set of evidence ids (position-independent).
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

fn check_partition(ev: &[Evidence], c: &Correlated) -> Result<(), TestCaseError> {
    prop_assert_eq!(c.incident_of.len(), ev.len());
    let mut seen = vec![0u32; ev.len()];
    for (k, inc) in c.incidents.iter().enumerate() {
        prop_assert!(!inc.evidence.is_empty());
        prop_assert!(inc.evidence.windows(2).all(|w| w[0] < w[1]), "ascending");
        for &i in &inc.evidence {
            let e = &ev[i as usize];
            // No incident mixes tenants (or incident ids).
            prop_assert_eq!(e.tenant, inc.key.tenant);
            prop_assert_eq!(e.incident, inc.key.incident);
            prop_assert_eq!(c.incident_of[i as usize] as usize, k);
            seen[i as usize] += 1;
        }
        let alerts: BTreeSet<AlertId> =
            inc.evidence.iter().map(|&i| ev[i as usize].alert).collect();
        prop_assert_eq!(inc.alerts.clone(), alerts.into_iter().collect::<Vec<_>>());
        let ts = inc.evidence.iter().map(|&i| ev[i as usize].timestamp);
        prop_assert_eq!(inc.first_seen, ts.clone().min().unwrap());
        prop_assert_eq!(inc.last_seen, ts.max().unwrap());
        let graded = inc
            .evidence
            .iter()
            .filter(|&&i| ev[i as usize].grade.is_some())
            .count();
        prop_assert_eq!(inc.grade.is_some(), graded > 0);
        if let Some(g) = inc.grade {
            let agree = inc
                .evidence
                .iter()
                .filter(|&&i| ev[i as usize].grade == Some(g))
                .count();
            prop_assert_eq!(inc.grade_conflicts as usize, graded - agree);
        }
    }
    // Every evidence row is in exactly one incident.
    prop_assert!(seen.iter().all(|&n| n == 1), "{:?}", seen);
    // Keys are unique and sorted.
    prop_assert!(c.incidents.windows(2).all(|w| w[0].key < w[1].key));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incidents_partition_evidence_within_one_tenant(
        rows in proptest::collection::vec(row(), 0..60)
    ) {
        let ev = evidence(&rows);
        let c = group_incidents(&ev);
        check_partition(&ev, &c)?;
        let keys: BTreeSet<(u64, u64)> = rows.iter().map(|r| (r.0, r.1)).collect();
        prop_assert_eq!(c.incidents.len(), keys.len());
    }

    #[test]
    fn input_order_does_not_change_the_incidents(
        (rows, perm) in proptest::collection::vec(row(), 1..60).prop_flat_map(|rows| {
            let n = rows.len();
            (Just(rows), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
        })
    ) {
        let ev = evidence(&rows);
        let shuffled: Vec<Evidence> = perm.iter().map(|&i| ev[i].clone()).collect();
        let a = group_incidents(&ev);
        let b = group_incidents(&shuffled);
        check_partition(&shuffled, &b)?;
        prop_assert_eq!(incident_sets(&ev, &a), incident_sets(&shuffled, &b));
        let keys = |c: &Correlated| c.incidents.iter().map(|i| i.key).collect::<Vec<_>>();
        prop_assert_eq!(keys(&a), keys(&b));
        for (x, y) in a.incidents.iter().zip(&b.incidents) {
            prop_assert_eq!(&x.alerts, &y.alerts);
            prop_assert_eq!((x.first_seen, x.last_seen), (y.first_seen, y.last_seen));
            prop_assert_eq!(x.grade, y.grade);
            prop_assert_eq!(x.grade_conflicts, y.grade_conflicts);
        }
    }

    #[test]
    fn same_incident_id_in_two_tenants_gives_two_incidents(
        inc in 0u64..1000, t1 in 0u64..50, dt in 1u64..50
    ) {
        let ev = evidence(&[(t1, inc, 1, 0, None), (t1 + dt, inc, 1, 0, None)]);
        let c = group_incidents(&ev);
        prop_assert_eq!(c.incidents.len(), 2);
        prop_assert_ne!(c.incident_of[0], c.incident_of[1]);
    }

    #[test]
    fn a_tenants_queue_holds_only_its_incidents(
        items in proptest::collection::vec((0u64..5, 0u64..20, 0u8..=100), 0..80),
        top in 0usize..8,
        only in proptest::option::of(0u64..6),
    ) {
        // Unique keys, as scoring produces.
        let mut keys = BTreeSet::new();
        let scored: Vec<ScoredIncident> = items
            .into_iter()
            .filter(|(t, i, _)| keys.insert((*t, *i)))
            .map(|(t, i, p)| scored(t, i, p))
            .collect();
        let qs = queues(&scored, only.map(TenantId), top);
        for (tenant, q) in &qs {
            if let Some(o) = only {
                prop_assert_eq!(tenant.0, o);
            }
            prop_assert!(q.iter().all(|s| s.key.tenant == *tenant));
            let available = scored.iter().filter(|s| s.key.tenant == *tenant).count();
            prop_assert_eq!(q.len(), available.min(top));
            prop_assert!(q.windows(2).all(|w| queue_order(w[0], w[1]).is_le()));
            // The queue is the tenant's best `top`: nobody left out outranks the last one in.
            if let Some(last) = q.last() {
                for s in scored.iter().filter(|s| s.key.tenant == *tenant) {
                    if !q.iter().any(|x| x.key == s.key) {
                        prop_assert!(queue_order(last, s).is_lt());
                    }
                }
            }
        }
        // Every tenant with incidents gets a queue (when `top` > 0 or not: keys present).
        let tenants: BTreeSet<u64> = scored
            .iter()
            .map(|s| s.key.tenant.0)
            .filter(|t| only.is_none_or(|o| o == *t))
            .collect();
        prop_assert_eq!(qs.keys().map(|t| t.0).collect::<BTreeSet<_>>(), tenants);
    }
}

fn scored(tenant: u64, incident: u64, prio: u8) -> ScoredIncident {
    let p = f32::from(prio) / 100.0;
    ScoredIncident {
        key: IncidentKey {
            tenant: TenantId(tenant),
            incident: IncidentId(incident),
        },
        probs: [p, (1.0 - p) / 2.0, (1.0 - p) / 2.0],
        predicted: Grade::TruePositive,
        grade_set: threatrank::models::GradeSet::single(0),
        priority: prio,
        n_evidence: 1,
        n_alerts: 1,
        first_seen: 0,
        last_seen: 0,
        tactics: Vec::new(),
        actor: None,
        detector: "d".into(),
        title: "t".into(),
        category: "c".into(),
        reasons: Vec::new(),
        families: Vec::new(),
        actual: None,
    }
}

#[test]
fn queues_of_real_scores_never_mix_tenants() {
    use threatrank::pipeline;
    let model = threatrank::train::Artifact::load(crate::common::shared_model()).unwrap();
    let dir = crate::common::tmp();
    let input = dir.path().join("q.csv");
    let (h, lines) = crate::common::sample();
    std::fs::write(&input, format!("{h}\n{}\n", lines[2000..2600].join("\n"))).unwrap();
    let loaded = pipeline::load_unlabelled(&input).unwrap();
    let scored = pipeline::score_loaded(&model, loaded, 2, crate::common::kn()).unwrap();
    assert!(!scored.incidents.is_empty());
    for s in &scored.incidents {
        assert!((s.probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(s.priority, threatrank::rank::priority(s.probs[0]));
        assert!(s.reasons.len() <= 2);
    }
    let qs = queues(&scored.incidents, None, 3);
    let mut total = 0;
    for (t, q) in &qs {
        assert!(q.iter().all(|s| s.key.tenant == *t));
        assert!(q.len() <= 3);
        total += scored
            .incidents
            .iter()
            .filter(|s| s.key.tenant == *t)
            .count()
            .min(3);
    }
    assert_eq!(qs.values().map(Vec::len).sum::<usize>(), total);
}
