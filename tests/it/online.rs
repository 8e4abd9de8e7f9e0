//! The online-update simulation on the start of the shipped sample: strictly past-only days,
//! all four variants identical on the first simulated day (nothing revealed yet), rows and
//! figures consistent.

use crate::common::{sample_head, tmp};
use threatrank::train::online::{simulate, OnlineSimParams};
use threatrank::train::TrainParams;

#[test]
fn online_simulation_is_past_only_and_consistent() {
    let dir = tmp();
    let path = dir.path().join("head.csv");
    std::fs::write(&path, sample_head(3000)).unwrap();
    let loaded = threatrank::pipeline::load(&path, &Default::default()).unwrap();
    let attack = threatrank::signals::Knowledge::development().unwrap();
    let params = TrainParams::default().check().unwrap();
    let sim = OnlineSimParams {
        initial_share: 0.6,
        ..OnlineSimParams::default()
    };
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
