//! Artifact mismatch: a model from another schema or format version is refused with an error
//! naming both values.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use threatrank::train::{Artifact, ArtifactError, FORMAT_VERSION};

fn model_json() -> Value {
    serde_json::from_slice(&std::fs::read(shared_model()).unwrap()).unwrap()
}

fn write_json(dir: &std::path::Path, name: &str, v: &Value) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p
}

#[test]
fn saved_model_loads_and_round_trips() {
    let a = Artifact::load(shared_model()).unwrap();
    assert_eq!(a.format_version, FORMAT_VERSION);
    assert_eq!(a.schema_hash, threatrank::features::schema().hash());
    let dir = tmp();
    let p = dir.path().join("again.json");
    a.save(&p).unwrap();
    assert_eq!(
        std::fs::read(&p).unwrap(),
        std::fs::read(shared_model()).unwrap()
    );
}

#[test]
fn schema_hash_mismatch_names_both_hashes() {
    let dir = tmp();
    let current = threatrank::features::schema().hash().to_string();
    let fake = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert_ne!(fake, current);
    let mut v = model_json();
    v["schema_hash"] = Value::from(fake);
    let p = write_json(dir.path(), "schema.json", &v);
    let err = Artifact::load(&p).unwrap_err();
    match &err {
        ArtifactError::Schema {
            artifact_hash,
            current_hash,
            ..
        } => {
            assert_eq!(artifact_hash, fake);
            assert_eq!(current_hash, &current);
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(fake) && msg.contains(&current), "{msg}");
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("feature schema mismatch"), "{msg}");

    // Through the CLI: exit code 3 and the same message.
    let input = dir.path().join("in.csv");
    std::fs::write(&input, sample_head(3)).unwrap();
    let o = run_os(&[
        "score".as_ref(),
        "--model".as_ref(),
        p.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        dir.path().join("s.csv").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(fake) && stderr(&o).contains(&current),
        "{}",
        stderr(&o)
    );
}

#[test]
fn edited_schema_with_original_hash_is_refused() {
    let dir = tmp();
    let mut v = model_json();
    let first = v.pointer_mut("/schema/names/0").expect("schema.names[0]");
    *first = Value::from(format!("{}_renamed", first.as_str().unwrap()));
    let p = write_json(dir.path(), "edited.json", &v);
    let err = Artifact::load(&p).unwrap_err();
    assert!(matches!(err, ArtifactError::Schema { .. }), "{err:?}");
    assert!(err.to_string().contains("feature schema mismatch"), "{err}");
}

/// An edited schema with its stored hash left alone is refused, and the error names the hash
/// recomputed from the edited schema, not the stale stored one (so the two hashes differ).
#[test]
fn edited_schema_error_names_two_different_hashes() {
    let dir = tmp();
    let mut v = model_json();
    let first = v.pointer_mut("/schema/names/0").unwrap();
    *first = Value::from(format!("{}_renamed", first.as_str().unwrap()));
    let p = write_json(dir.path(), "edited.json", &v);
    match Artifact::load(&p).unwrap_err() {
        ArtifactError::Schema {
            artifact_hash,
            current_hash,
            ..
        } => assert_ne!(artifact_hash, current_hash),
        other => panic!("{other:?}"),
    }
}

#[test]
fn format_version_mismatch_names_both_versions() {
    let dir = tmp();
    let mut v = model_json();
    let found = FORMAT_VERSION + 98;
    v["format_version"] = Value::from(found);
    let p = write_json(dir.path(), "version.json", &v);
    let err = Artifact::load(&p).unwrap_err();
    match &err {
        ArtifactError::Version {
            found: f, expected, ..
        } => assert_eq!((*f, *expected), (found, FORMAT_VERSION)),
        other => panic!("expected a version error, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{}: artifact format version {found}, this build reads version {FORMAT_VERSION}; retrain with `threatrank train`",
            p.display()
        )
    );
}

#[test]
fn version_is_checked_before_schema() {
    let dir = tmp();
    let mut v = model_json();
    v["format_version"] = Value::from(0);
    v["schema_hash"] = Value::from("x");
    let p = write_json(dir.path(), "both.json", &v);
    assert!(matches!(
        Artifact::load(&p).unwrap_err(),
        ArtifactError::Version { found: 0, .. }
    ));
}

#[test]
fn garbage_and_truncated_models_are_parse_errors() {
    let dir = tmp();
    let p = dir.path().join("garbage.json");
    std::fs::write(&p, b"not json").unwrap();
    let err = Artifact::load(&p).unwrap_err();
    assert!(matches!(err, ArtifactError::Parse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("not a valid threatrank model artifact"),
        "{err}"
    );

    let bytes = std::fs::read(shared_model()).unwrap();
    let p = dir.path().join("truncated.json");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = Artifact::load(&p).unwrap_err();
    assert!(matches!(err, ArtifactError::Parse { .. }), "{err:?}");

    let mut v = model_json();
    v.as_object_mut().unwrap().remove("model");
    let p = write_json(dir.path(), "nomodel.json", &v);
    let err = Artifact::load(&p).unwrap_err();
    assert!(matches!(err, ArtifactError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("model"), "{err}");
}

/// The committed default model must load with this build's feature schema (a schema change
/// without `train` fails here), was trained on the shipped sample, and compresses.
#[test]
fn committed_default_model_matches_this_build_and_the_shipped_sample() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("models/default.json.gz");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "not gzip");
    let a = Artifact::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let sample = std::fs::read(sample_path()).unwrap();
    let digest = threatrank::matrix::hex(&<sha2::Sha256 as sha2::Digest>::digest(&sample));
    assert_eq!(a.card.data.sha256, digest);
    assert_eq!(a.card.data.records, 10_000);
    assert_eq!(a.model.algorithm(), threatrank::models::Algorithm::Gbdt);
    // Gzip round trip: saving again gives the same bytes (no timestamp in the header).
    let dir = tmp();
    let p = dir.path().join("again.json.gz");
    a.save(&p).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
}

/// The committed model carries the drift reference: every schema column, fitted on every
/// training incident, shares adding up to one, score edges inside [0, 1].
#[test]
fn committed_default_model_carries_the_drift_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let a = Artifact::load(&root.join("models/default.json.gz")).unwrap();
    let r = a.reference.as_ref().expect("drift reference");
    let schema = threatrank::features::schema();
    assert_eq!(r.feature_names(), schema.names());
    assert_eq!(r.feature_families(), schema.families());
    assert_eq!(r.rows(), a.card.data.incidents);
    for c in 0..schema.len() {
        let s = r.feature_shares(c).unwrap();
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{c}: {s:?}");
    }
    assert!(r.score_edges().iter().all(|e| (0.0..=1.0).contains(e)));
    // Quantile edges on the calibrated P(TP): no value bin holds more than a fifth.
    let s = r.score_shares();
    assert!(s.iter().all(|&v| v < 0.2), "{s:?}");
}

/// Incidents the shared model never saw, from the same sample, counted against its reference:
/// the score does not shift and neither does any feature outside the two target-encoded
/// families, `global` and `tenant`. Those do (measured: 36 global and 15 tenant columns above
/// 0.25): their out-of-fold training values come from per-fold encoders (each fold's own grade
/// prior for unknown keys and for smoothing, per-tenant-fold snapshots), scoring uses the one
/// fitted on everything, so a key's value at scoring time is a point between the fold values
/// the model was trained on. The same rows scored upside down (1 − P(TP)) do shift.
#[test]
fn held_out_incidents_do_not_shift_the_score() {
    use threatrank::drift::{Agreement, DriftCounts, DriftParams, DriftStatus};
    let a = Artifact::load(shared_model()).unwrap();
    let profile = a.reference.as_ref().expect("drift reference");
    let (h, lines) = sample();
    let mut text = format!("{h}\n");
    for l in &lines[TRAIN_ROWS..TRAIN_ROWS + 3000] {
        text.push_str(l);
        text.push('\n');
    }
    let dir = tmp();
    let path = dir.path().join("held_out.csv");
    std::fs::write(&path, text).unwrap();
    let params = threatrank::ingest::IngestParams::default().check().unwrap();
    let l = threatrank::pipeline::load(&path, &params).unwrap();
    let which: Vec<usize> = (0..l.corr.incidents.len()).collect();
    let pred = a.predict(&l.evidence, &l.corr, &which, kn()).unwrap();
    let p_tp: Vec<f32> = pred.probs.chunks(3).map(|p| p[0]).collect();
    let mut counts = DriftCounts::new(profile);
    counts.add_matrix(&pred.x, &p_tp).unwrap();
    assert_eq!(counts.n(), which.len() as u64);
    let agreement = Agreement::from_pairs(which.iter().enumerate().filter_map(|(r, &i)| {
        let analyst = l.corr.incidents[i].grade?;
        Some((
            threatrank::domain::Grade::from_class_id(pred.grades[r])?,
            analyst,
        ))
    }));
    let drift = DriftParams::default().check().unwrap();
    let r = profile.report(&counts, Some(agreement), &drift).unwrap();
    // Measured: score PSI 0.07 over 2,211 incidents, agreement 0.80.
    assert!(r.score_psi.unwrap() < 0.15, "{r:?}");
    assert!(agreement.rate().unwrap() > 0.7, "{agreement:?}");
    assert!(r.warnings.iter().all(|w| !w.starts_with("score")), "{r:?}");
    let psi = profile.feature_psi(&counts).unwrap().unwrap();
    let shifted: Vec<(&String, &String, f64)> = profile
        .feature_names()
        .iter()
        .zip(profile.feature_families())
        .zip(&psi)
        .filter(|(_, &v)| v > 0.25)
        .map(|((n, f), &v)| (n, f, v))
        .collect();
    assert!(
        shifted
            .iter()
            .all(|(_, f, _)| *f == "global" || *f == "tenant"),
        "{shifted:?}"
    );

    let flipped: Vec<f32> = p_tp.iter().map(|p| 1.0 - p).collect();
    let mut upside_down = DriftCounts::new(profile);
    upside_down.add_matrix(&pred.x, &flipped).unwrap();
    let r = profile.report(&upside_down, None, &drift).unwrap();
    assert_eq!(r.status, DriftStatus::Warning);
    assert!(r.score_psi.unwrap() > 1.0, "{r:?}");
    assert!(
        r.warnings[0].starts_with("score distribution shifted"),
        "{r:?}"
    );
}
