//! Held-out conformal coverage of the trained pipeline on the shipped sample: the grade sets
//! of incidents the model never saw (incident-disjoint) and of tenants it never saw
//! (tenant-disjoint) hold the true grade about as often as the 90% target says, not less and
//! not more, with sets far from "every grade". Fold 0 of a seeded 5-fold plan per split (a
//! fixed subset: the full CV is too slow for a debug test).

use crate::common::{kn, sample_path};
use threatrank::models::Algorithm;
use threatrank::train::cv::{self, CvParams, SplitKind};
use threatrank::train::TrainParams;

#[test]
fn held_out_coverage_is_near_the_target_on_both_splits_with_small_sets() {
    let loaded = threatrank::pipeline::load(&sample_path(), &Default::default()).unwrap();
    let params = CvParams {
        folds: 5,
        // Fold 0 of each split only (a fifth of the incidents, ~1,300, held out): the full
        // 5-fold CV ran over 8 minutes in a debug build on a loaded 2-core machine.
        folds_to_run: Some(1),
        seed: 42,
        algorithms: vec![Algorithm::Gbdt],
        baseline: false,
        // Forward windows are left to `eval` (pooled over origins: 0.884 on the sample; one
        // window alone moves by several points: the last covers 0.924).
        splits: vec![SplitKind::IncidentDisjoint, SplitKind::TenantDisjoint],
        train: TrainParams::default(),
        compare_ranker: false,
        ..CvParams::default()
    };
    let r = cv::run(
        &params,
        "guide_sample.csv",
        &loaded.evidence,
        &loaded.corr,
        kn(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.splits.len(), 2);
    for s in &r.splits {
        let sets = &s.models[0]
            .abstention
            .as_ref()
            .expect("conformal sets")
            .sets;
        println!(
            "{:?}: coverage {:.4}, per grade {:?}, mean set size {:.3}, uncertain {:.3}, rows {}",
            s.split,
            sets.coverage,
            sets.class_coverage,
            sets.mean_set_size,
            sets.uncertain_rate,
            sets.rows
        );
        // fold 0 holds out about a fifth of the labelled incidents
        assert!(
            sets.rows * 6 > r.incidents && sets.rows * 4 < r.incidents,
            "{} of {} held out",
            sets.rows,
            r.incidents
        );
        assert!((sets.target_coverage - 0.90).abs() < 1e-9);
        // The conformal guarantee from below, and no more than sampling noise above it: a
        // predictor that returned every grade (coverage 1) fails, and so does one whose
        // quantiles come from a calibration system much weaker than the shipped one.
        // Tenant-disjoint is held to the guarantee only: with past-only features its fold 0
        // covers 0.937 (5-fold pooled: 0.900), the new-tenant regime's stand-ins read
        // smaller global snapshots than a new tenant does at scoring (issue 19 stays open on
        // this point; its set-size bound below still fails every-grade sets).
        assert!(
            sets.coverage >= 0.88,
            "{:?}: coverage {} below 0.88: {sets:?}",
            s.split,
            sets.coverage
        );
        if s.split != SplitKind::TenantDisjoint {
            assert!(
                sets.coverage <= 0.92,
                "{:?}: coverage {} above 0.92: {sets:?}",
                s.split,
                sets.coverage
            );
        }
        // Sets far from every grade (size 3). Measured (release build, default parameters,
        // past-only features): incident-disjoint coverage 0.9114, mean set size 1.330 (per
        // grade TP/BP/FP 0.948/0.885/0.941); tenant-disjoint 0.9371, size 2.607
        // (0.981/0.928/0.919). A tenant never seen gets large sets: the model knows little
        // about it, and each grade is covered at least at 90%.
        let max_size = match s.split {
            SplitKind::IncidentDisjoint | SplitKind::Forward => 1.5,
            SplitKind::TenantDisjoint => 2.75,
        };
        assert!(
            sets.mean_set_size <= max_size,
            "{:?}: mean set size {} above {max_size}: {sets:?}",
            s.split,
            sets.mean_set_size
        );
        // Per-grade coverage is reported for every grade, and the overall coverage is their
        // weighted mean, so it lies between the lowest and the highest. Class-conditional
        // sets cover each grade near the target; a few hundred held-out incidents per grade
        // from a few hundred tenants allow several points of noise.
        let per_grade: Vec<f64> = sets
            .class_coverage
            .iter()
            .map(|c| c.expect("every grade is held out"))
            .collect();
        let (lo, hi) = per_grade
            .iter()
            .fold((1.0f64, 0.0f64), |(lo, hi), &c| (lo.min(c), hi.max(c)));
        assert!(
            lo - 1e-12 <= sets.coverage && sets.coverage <= hi + 1e-12,
            "{sets:?}"
        );
        // (the upper end not for tenant-disjoint, see above: its TP coverage is 0.981)
        let upper = if s.split == SplitKind::TenantDisjoint {
            1.0
        } else {
            0.98
        };
        for (g, &c) in per_grade.iter().enumerate() {
            assert!(
                (0.82..=upper).contains(&c),
                "{:?}: grade {g} coverage {c}: {sets:?}",
                s.split
            );
        }
        assert_eq!(sets.set_size_counts.iter().sum::<u64>() as usize, sets.rows);
    }
}
