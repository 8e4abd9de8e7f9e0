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
