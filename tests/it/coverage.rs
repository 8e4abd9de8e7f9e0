//! Held-out conformal coverage of the trained pipeline on the shipped sample: the grade sets
//! of incidents the model never saw (incident-disjoint) and of tenants it never saw
//! (tenant-disjoint) hold the true grade about as often as the 90% target says, with sets
//! far from "every grade". Fold 0 of a seeded 5-fold plan per split (a fixed subset: the
//! full CV is too slow for a debug test).

use crate::common::{kn, sample_path};
use threatrank::models::Algorithm;
use threatrank::train::cv::{self, CvParams, SplitKind};
use threatrank::train::TrainParams;

#[test]
fn held_out_coverage_holds_on_both_splits_and_is_tight_incident_disjoint() {
    let loaded = threatrank::pipeline::load(&sample_path(), &Default::default()).unwrap();
    let params = CvParams {
        folds: 5,
        // Fold 0 of each split only (a fifth of the incidents, ~1,300, held out): the full
        // 5-fold CV ran over 8 minutes in a debug build on a loaded 2-core machine.
        folds_to_run: Some(1),
        seed: 42,
        algorithms: vec![Algorithm::Gbdt],
        baseline: false,
        splits: SplitKind::ALL.to_vec(),
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
            "{:?}: coverage {:.4}, mean set size {:.3}, uncertain {:.3}, rows {}",
            s.split, sets.coverage, sets.mean_set_size, sets.uncertain_rate, sets.rows
        );
        // fold 0 holds out about a fifth of the labelled incidents
        assert!(
            sets.rows * 6 > r.incidents && sets.rows * 4 < r.incidents,
            "{} of {} held out",
            sets.rows,
            r.incidents
        );
        assert!((sets.target_coverage - 0.90).abs() < 1e-9);
        // the conformal guarantee: at least the target, up to sampling noise
        assert!(sets.coverage >= 0.88, "{:?}: {sets:?}", s.split);
        if s.split == SplitKind::IncidentDisjoint {
            // measured 0.9029 with mean set size 1.141
            assert!(sets.coverage <= 0.92, "{sets:?}");
            assert!(sets.mean_set_size <= 1.3, "{sets:?}");
        }
        // Tenant-disjoint is not bounded from above here: measured 0.9518 coverage, mean
        // set size 2.515, 98% of incidents uncertain (sets for a tenant never seen are
        // nearly all grades). That is a defect of the unseen-tenant regime, reported, not
        // pinned by a bound that would accept it.
    }
}
