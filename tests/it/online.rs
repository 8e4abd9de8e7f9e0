//! The online-update simulation on the start of the shipped sample: strictly past-only days,
//! all four variants identical on the first simulated day (nothing revealed yet), rows and
//! figures consistent; changing the grades of later days leaves every earlier day's figures
//! exactly as they were (the leak test).

use crate::common::{sample_head, tmp};
use threatrank::train::online::{simulate, OnlineSimParams};
use threatrank::train::{TrainParams, TrainValidParams};

/// The first 3,000 sample rows, loaded; default training; 60% of the incidents at the start.
fn setup() -> (
    threatrank::pipeline::Loaded,
    threatrank::signals::Knowledge,
    TrainValidParams,
    OnlineSimParams,
) {
    let dir = tmp();
    let path = dir.path().join("head.csv");
    std::fs::write(&path, sample_head(3000)).unwrap();
    let loaded = threatrank::pipeline::load(&path, &Default::default()).unwrap();
    let sim = OnlineSimParams {
        initial_share: 0.6,
        ..OnlineSimParams::default()
    };
    (
        loaded,
        threatrank::signals::Knowledge::development().unwrap(),
        TrainParams::default().check().unwrap(),
        sim,
    )
}

#[test]
fn online_simulation_is_past_only_and_consistent() {
    let (loaded, attack, params, sim) = setup();
    let r = simulate(
        &params,
        &sim,
        &loaded.evidence,
        &loaded.corr,
        &attack,
        &mut |_| {},
    )
    .unwrap();
    let labelled = loaded.corr.labelled().count();
    let scored: usize = r.days.iter().map(|d| d.incidents).sum();
    assert_eq!(r.initial_incidents + scored, labelled);
    assert!(r.initial_incidents as f64 >= 0.6 * labelled as f64);
    assert!(r.days.len() >= 2, "{} simulated days", r.days.len());
    // Days are after the start and strictly increasing (YYYY-MM-DD sorts as text).
    let mut prev = r.initial_until.clone();
    for d in &r.days {
        assert!(d.day > prev, "{} after {prev}", d.day);
        prev = d.day.clone();
    }
    // Nothing revealed before the first simulated day: every variant scores it the same.
    let first = &r.days[0].variants;
    for v in &first[1..] {
        assert_eq!(v, &first[0]);
    }
    assert_eq!(r.days[0].update_seconds, 0.0);
    for v in &r.pooled {
        assert!((0.0..=1.0).contains(&v.macro_f1) && v.log_loss.is_finite());
    }
    assert!(r.table().contains("pooled"));

    let bad = OnlineSimParams {
        initial_share: 1.0,
        ..OnlineSimParams::default()
    };
    assert!(simulate(
        &params,
        &bad,
        &loaded.evidence,
        &loaded.corr,
        &attack,
        &mut |_| {}
    )
    .is_err());
}

/// The leak test: the grades of every incident from the middle simulated day on are changed
/// (TP → BP → FP → TP); the days before it score exactly as before (their models and features
/// saw only earlier days), while the first changed day does move (so the change reached the
/// simulation at all).
#[test]
fn changing_later_grades_does_not_move_earlier_days() {
    use threatrank::domain::Grade;
    let (loaded, kn, params, sim) = setup();
    let run = |evidence: &[threatrank::domain::Evidence]| {
        let corr = threatrank::correlate::group_incidents(evidence);
        simulate(&params, &sim, evidence, &corr, &kn, &mut |_| {}).unwrap()
    };
    let before = run(&loaded.evidence);
    assert!(before.days.len() >= 2, "{} days", before.days.len());
    let middle = before.days.len() / 2;
    let cut_day = &before.days[middle].day;
    // Each incident's first day, as the simulation assigns it.
    let corr = &loaded.corr;
    let mut changed = loaded.evidence.clone();
    let mut moved = 0;
    for (row, e) in changed.iter_mut().enumerate() {
        let inc = &corr.incidents[corr.incident_of[row] as usize];
        let day = threatrank::ingest::format_rfc3339(inc.first_seen)[..10].to_string();
        if day.as_str() >= cut_day.as_str() {
            e.grade = e.grade.map(|g| match g {
                Grade::TruePositive => Grade::BenignPositive,
                Grade::BenignPositive => Grade::FalsePositive,
                Grade::FalsePositive => Grade::TruePositive,
            });
            moved += 1;
        }
    }
    assert!(moved > 0);
    let after = run(&changed);
    assert_eq!(after.days.len(), before.days.len());
    assert_eq!(after.initial_incidents, before.initial_incidents);
    for (a, b) in after.days[..middle].iter().zip(&before.days[..middle]) {
        assert_eq!(
            (&a.day, a.incidents, &a.variants),
            (&b.day, b.incidents, &b.variants),
            "a day before {cut_day} moved"
        );
    }
    assert_ne!(
        after.days[middle].variants, before.days[middle].variants,
        "changed grades did not reach {cut_day}"
    );
}

/// The cold-start curve's plan and online path on the shipped sample, checked against an
/// independent reading of the incidents: every cold tenant has at least the largest n of
/// verdicts ended before the origin and an incident in the window; the verdicts shown are its
/// earliest by end time; the group's model trains on no incident of its tenants and on none
/// that ended after the origin; after n verdicts every scored row of the group reads exactly n
/// verdicts of its tenant (`tenant:log_support` = ln(1 + n)).
#[test]
fn cold_start_shows_each_tenant_its_first_n_verdicts_and_nothing_else() {
    use std::collections::BTreeMap;
    use threatrank::train::coldstart::{cold_origins, encoders_after, ColdStartParams};
    use threatrank::train::cv::{CvParams, CvPlan, SplitKind};
    let loaded =
        threatrank::pipeline::load(&crate::common::sample_path(), &Default::default()).unwrap();
    let corr = &loaded.corr;
    let kn = crate::common::kn();
    let params = ColdStartParams {
        verdicts: vec![0, 3, 20],
        groups: 2,
    };
    let cv = CvParams {
        splits: vec![SplitKind::Forward],
        ..CvParams::default()
    };
    let plan = CvPlan::new(&cv, corr).unwrap();
    let origins = cold_origins(&params, &plan, corr);
    let windows = &plan.forward.as_ref().unwrap().windows;
    assert_eq!(origins.len(), windows.len());
    let mut checked_groups = 0;
    for (o, &(origin, end)) in origins.iter().zip(windows) {
        assert_eq!(o.origin, origin);
        // independent reading: per tenant, graded incidents ended before the origin (by end
        // time) and graded incidents that began in the window
        let mut before: BTreeMap<u64, Vec<(i64, usize)>> = BTreeMap::new();
        let mut window: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, inc) in corr.incidents.iter().enumerate() {
            if inc.grade.is_none() {
                continue;
            }
            if inc.last_seen < origin {
                before
                    .entry(inc.key.tenant.0)
                    .or_default()
                    .push((inc.last_seen, i));
            }
            if inc.first_seen >= origin && inc.first_seen < end {
                *window.entry(inc.key.tenant.0).or_default() += 1;
            }
        }
        let cold: Vec<u64> = before
            .iter()
            .filter(|(t, v)| v.len() >= 20 && window.contains_key(t))
            .map(|(t, _)| *t)
            .collect();
        let mut got: Vec<u64> = o
            .groups
            .iter()
            .flat_map(|g| g.verdicts.keys().copied())
            .collect();
        got.sort_unstable();
        assert_eq!(got, cold, "cold tenants at {origin}");
        for g in &o.groups {
            for (t, v) in &g.verdicts {
                let mut want = before[t].clone();
                want.sort_unstable();
                let want: Vec<usize> = want.iter().take(20).map(|&(_, i)| i).collect();
                assert_eq!(v, &want, "tenant {t}: not its 20 earliest verdicts");
            }
            assert!(g.train.iter().all(|&i| {
                let inc = &corr.incidents[i];
                inc.last_seen < origin && !g.verdicts.contains_key(&inc.key.tenant.0)
            }));
            let test_tenants: usize = g.verdicts.keys().map(|t| window[t]).sum();
            assert_eq!(g.test.len(), test_tenants);
            // the rows after n verdicts
            let base = threatrank::features::FittedFeatures::fit(
                &threatrank::features::FeatureParams::default()
                    .check()
                    .unwrap(),
                &loaded.evidence,
                corr,
                &g.train,
                kn,
            )
            .unwrap();
            let col = threatrank::features::schema()
                .index_of("tenant:log_support")
                .unwrap();
            for &n in &params.verdicts {
                let (enc, kn_n) = encoders_after(&base, g, n, &loaded.evidence, corr, kn).unwrap();
                let x = enc.transform(&loaded.evidence, corr, &g.test, &kn_n);
                for r in 0..x.n_rows() {
                    let v = f64::from(x.get(r, col));
                    assert!((v - (n as f64).ln_1p()).abs() < 1e-5, "n {n}: support {v}");
                }
            }
            checked_groups += 1;
        }
    }
    assert!(checked_groups >= 4, "{checked_groups} groups");
}
