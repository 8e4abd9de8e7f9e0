//! Held-out conformal coverage of the trained pipeline on the shipped sample: the grade sets
//! of incidents the model never saw (incident-disjoint) and of tenants it never saw
//! (tenant-disjoint) hold the true grade about as often as the 90% target says, not less and
//! not more, with sets far from "every grade". Incident-disjoint: fold 0 of a seeded 5-fold
//! plan (a fixed fifth of the incidents, ~1,300). Tenant-disjoint: all 5 folds pooled (one
//! fold's few hundred tenants move its coverage by a point or two).

use crate::common::{kn, sample_path};
use threatrank::models::Algorithm;
use threatrank::train::cv::{self, CvParams, SplitKind};
use threatrank::train::TrainParams;

#[test]
fn held_out_coverage_is_near_the_target_on_both_splits_with_small_sets() {
    let loaded = threatrank::pipeline::load(&sample_path(), &Default::default()).unwrap();
    let run = |split: SplitKind, folds_to_run: Option<usize>| {
        let params = CvParams {
            folds: 5,
            folds_to_run,
            seed: 42,
            algorithms: vec![Algorithm::Gbdt],
            baseline: false,
            // Forward windows are left to `eval` (pooled over origins: 0.889 on the sample).
            splits: vec![split],
            train: TrainParams::default(),
            compare_ranker: false,
            ..CvParams::default()
        };
        cv::run(
            &params,
            "guide_sample.csv",
            &loaded.evidence,
            &loaded.corr,
            kn(),
            &mut |_| {},
        )
        .unwrap()
    };
    let incident = run(SplitKind::IncidentDisjoint, Some(1));
    let tenant = run(SplitKind::TenantDisjoint, None);
    let r = threatrank::train::cv::CvReport {
        splits: vec![incident.splits[0].clone(), tenant.splits[0].clone()],
        ..incident
    };
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
        // incident-disjoint fold 0 holds out about a fifth of the labelled incidents, the
        // tenant-disjoint folds all of them
        if s.split == SplitKind::TenantDisjoint {
            assert_eq!(sets.rows, r.incidents);
        } else {
            assert!(
                sets.rows * 6 > r.incidents && sets.rows * 4 < r.incidents,
                "{} of {} held out",
                sets.rows,
                r.incidents
            );
        }
        assert!((sets.target_coverage - 0.90).abs() < 1e-9);
        // Within 2 points of the target, both ways: a predictor that returned every grade
        // (coverage 1) fails, and so does one whose quantiles come from a calibration system
        // much weaker than the shipped one (tenant-disjoint covered 0.929 pooled when the
        // new-tenant regime's rows read the training matrix's smaller snapshots).
        assert!(
            (sets.coverage - 0.90).abs() <= 0.02,
            "{:?}: coverage {} not within 0.02 of 0.90: {sets:?}",
            s.split,
            sets.coverage
        );
        // Sets far from every grade (size 3). Measured (debug build, as here, default
        // parameters): incident-disjoint fold 0 coverage 0.9075, mean set size 1.325 (per
        // grade TP/BP/FP 0.952/0.876/0.941); tenant-disjoint pooled 0.9077, size 2.447
        // (0.893/0.913/0.909). A tenant never seen gets large sets: the model knows little
        // about it, and each grade is covered near 90%.
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
        for (g, &c) in per_grade.iter().enumerate() {
            assert!(
                (0.82..=0.98).contains(&c),
                "{:?}: grade {g} coverage {c}: {sets:?}",
                s.split
            );
        }
        assert_eq!(sets.set_size_counts.iter().sum::<u64>() as usize, sets.rows);
    }
}
