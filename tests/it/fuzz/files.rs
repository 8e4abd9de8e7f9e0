//! Fuzz targets of the versioned JSON files: model artifacts (three algorithms, plain and
//! gzip) and the global-signals snapshot.

use super::*;

/// One edit at a random place of a JSON document (path choices taken modulo the widths).
#[derive(Debug, Clone)]
struct JsonEdit {
    path: Vec<usize>,
    op: JsonOp,
}

#[derive(Debug, Clone)]
enum JsonOp {
    Replace(String),
    Remove,
    Duplicate,
    Truncate,
    Scale(f64),
    Bump(i64),
    /// for a base64 string (the GBDT model): edit its decoded bytes
    Bytes(ByteEdit),
}

const NASTY_VALUES: &[&str] = &[
    "null",
    "true",
    "-1",
    "0",
    "0.5",
    "-0.0",
    "1e300",
    "-1e300",
    "1e-300",
    "18446744073709551615",
    "4294967295",
    "4294967296",
    "-9223372036854775808",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "[0]",
    "[1e300,-1e300]",
];

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let op = prop_oneof![
        4 => select(NASTY_VALUES).prop_map(|s| JsonOp::Replace(s.to_string())),
        2 => Just(JsonOp::Remove),
        1 => Just(JsonOp::Duplicate),
        2 => Just(JsonOp::Truncate),
        2 => select(&[-1.0, 0.0, 2.0, 1e6, 1e-6, 1e30][..]).prop_map(JsonOp::Scale),
        2 => select(&[-1i64, 1, 1000, -1000, i64::MAX / 2][..]).prop_map(JsonOp::Bump),
        3 => byte_edit().prop_map(JsonOp::Bytes),
    ];
    (proptest::collection::vec(any::<usize>(), 1..12), op)
        .prop_map(|(path, op)| JsonEdit { path, op })
}

fn is_container(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

/// Applies `e` under `v` (descending while the path lasts and containers are not empty).
fn apply_json(v: &mut Value, path: &[usize], op: &JsonOp) {
    let Some((&step, rest)) = path.split_first() else {
        return;
    };
    match v {
        Value::Object(o) if !o.is_empty() => {
            let key = o.keys().nth(step % o.len()).cloned().unwrap_or_default();
            let descend = !rest.is_empty() && o.get(&key).is_some_and(is_container);
            if descend {
                apply_json(o.get_mut(&key).unwrap(), rest, op);
            } else if matches!(op, JsonOp::Remove) {
                o.remove(&key);
            } else if let Some(child) = o.get_mut(&key) {
                edit_leaf(child, op);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = step % a.len();
            let descend = !rest.is_empty() && is_container(&a[i]);
            if descend {
                apply_json(&mut a[i], rest, op);
            } else {
                match op {
                    JsonOp::Remove => {
                        a.remove(i);
                    }
                    JsonOp::Duplicate => {
                        let c = a[i].clone();
                        a.insert(i, c);
                    }
                    JsonOp::Truncate => a.truncate(a.len() / 2),
                    _ => edit_leaf(&mut a[i], op),
                }
            }
        }
        _ => edit_leaf(v, op),
    }
}

fn edit_leaf(v: &mut Value, op: &JsonOp) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    match (op, &mut *v) {
        (JsonOp::Replace(raw), _) => *v = serde_json::from_str(raw).unwrap_or(Value::Null),
        (JsonOp::Truncate, Value::String(s)) => {
            let cut = (0..=s.len() / 2)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            s.truncate(cut);
        }
        (JsonOp::Truncate, Value::Array(a)) => a.truncate(a.len() / 2),
        (JsonOp::Scale(f), Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0) * f;
            *v = serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        }
        (JsonOp::Bump(d), Value::Number(n)) => {
            *v = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => match u.checked_add_signed(*d) {
                    Some(x) => Value::from(x),
                    None => Value::from(-1),
                },
                (_, Some(i)) => Value::from(i.saturating_add(*d)),
                _ => Value::from(*d),
            }
        }
        (JsonOp::Bytes(e), Value::String(s)) => match b64.decode(s.as_bytes()) {
            Ok(mut raw) if !raw.is_empty() => {
                apply_bytes(&mut raw, e);
                *s = b64.encode(raw);
            }
            _ => {
                let mut raw = s.clone().into_bytes();
                apply_bytes(&mut raw, e);
                *s = String::from_utf8_lossy(&raw).into_owned();
            }
        },
        (JsonOp::Duplicate, _) => *v = Value::Array(vec![v.clone(), v.clone()]),
        _ => *v = Value::Null,
    }
}

/// How the edited document is stored on disk.
#[derive(Debug, Clone)]
enum Container {
    Plain,
    Gzip,
    /// gzip, then the compressed bytes edited (a truncated or corrupted download)
    GzipBytes(ByteEdit),
    /// the JSON text itself edited as bytes
    PlainBytes(ByteEdit),
}

fn container() -> impl Strategy<Value = Container> {
    prop_oneof![
        3 => Just(Container::Plain),
        1 => Just(Container::Gzip),
        2 => byte_edit().prop_map(Container::GzipBytes),
        2 => byte_edit().prop_map(Container::PlainBytes),
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The stored bytes, and whether they are a strict prefix of the gzip stream (must not load).
fn encode(json: &[u8], c: &Container) -> (Vec<u8>, bool) {
    match c {
        Container::Plain => (json.to_vec(), false),
        Container::Gzip => (gzip(json), false),
        Container::GzipBytes(e) => {
            let full = gzip(json);
            let mut b = full.clone();
            apply_bytes(&mut b, e);
            let truncated = b.len() < full.len() && full.starts_with(&b);
            (b, truncated)
        }
        Container::PlainBytes(e) => {
            let mut b = json.to_vec();
            apply_bytes(&mut b, e);
            (b, false)
        }
    }
}

#[derive(Debug, Clone)]
struct FileCase {
    which: usize,
    edits: Vec<JsonEdit>,
    container: Container,
}

fn file_case(n_bases: usize) -> impl Strategy<Value = FileCase> {
    (
        0..n_bases,
        proptest::collection::vec(json_edit(), 0..4),
        container(),
    )
        .prop_map(|(which, edits, container)| FileCase {
            which,
            edits,
            container,
        })
}

/// Base documents, parsed once: (file bytes as written, JSON value).
fn bases(paths: &[PathBuf]) -> Vec<(Vec<u8>, Value)> {
    paths
        .iter()
        .map(|p| {
            let bytes = threatrank::jsonfile::read(p).unwrap();
            let v = serde_json::from_slice(&bytes).unwrap();
            (bytes, v)
        })
        .collect()
}

/// The edited document's bytes, whether it is truncated gzip, and whether it still holds the
/// base document's exact JSON.
fn file_bytes(case: &FileCase, base: &(Vec<u8>, Value)) -> (Vec<u8>, bool, bool) {
    let json = if case.edits.is_empty() {
        base.0.clone()
    } else {
        let mut v = base.1.clone();
        for e in &case.edits {
            apply_json(&mut v, &e.path, &e.op);
        }
        serde_json::to_vec(&v).unwrap()
    };
    // plain JSON carries no checksum: a flipped digit is another valid document; gzip's CRC
    // must catch any change to the compressed bytes
    let unedited = json == base.0 && !matches!(case.container, Container::PlainBytes(_));
    let (bytes, truncated) = encode(&json, &case.container);
    (bytes, truncated, unedited)
}

/// Scoring rows the models were not trained on.
fn score_evidence() -> &'static Vec<Evidence> {
    static E: OnceLock<Vec<Evidence>> = OnceLock::new();
    E.get_or_init(|| sample_evidence()[TRAIN_ROWS..TRAIN_ROWS + 80].to_vec())
}

/// A loaded artifact (and knowledge) must score without panicking, into probabilities.
fn check_scores(a: &Artifact, kn: &Knowledge) -> Result<(), TestCaseError> {
    let loaded = Loaded::in_memory(score_evidence().clone());
    let first_two = |_: &[threatrank::rank::ScoredIncident]| vec![0, 1];
    let select: pipeline::ExplainSelect<'_> = &first_two;
    let scored = no_panic("scoring", || {
        pipeline::score_loaded_explaining(a, loaded, 3, kn, Some(select))
    })?;
    let Ok(scored) = scored else {
        return Ok(());
    };
    for s in &scored.incidents {
        let sum: f32 = s.probs.iter().sum();
        prop_assert!(
            s.probs
                .iter()
                .all(|p| p.is_finite() && (0.0..=1.0).contains(p))
                && (sum - 1.0).abs() < 1e-3,
            "probabilities {:?} of {:?}",
            s.probs,
            s.key
        );
        prop_assert!(s.priority <= 100);
    }
    Ok(())
}

/// Artifacts of the three algorithms, small, trained once per process.
fn artifacts() -> &'static Vec<PathBuf> {
    static A: OnceLock<Vec<PathBuf>> = OnceLock::new();
    A.get_or_init(|| {
        let small = fuzz_dir().join("small.csv");
        std::fs::write(&small, sample_head(400)).unwrap();
        let mut out = vec![shared_model().clone()];
        for (name, model) in [
            (
                "gbdt.json.gz",
                ModelParams::Gbdt(GbdtParams::default().max_rounds(8).early_stopping_rounds(0)),
            ),
            (
                "forest.json",
                ModelParams::Forest(ForestParams::default().n_trees(4)),
            ),
        ] {
            let p = fuzz_dir().join(name);
            let params = TrainParams {
                algorithm: model.algorithm(),
                model: Some(model),
                calibration_folds: 2,
                unseen_folds: 2,
                ..TrainParams::default()
            };
            pipeline::train_file(&small, &p, &params, kn()).unwrap();
            out.push(p);
        }
        out
    })
}

/// Writes a case's bytes to `file` and loads them: `None` when refused (with an error naming
/// the file), else the loaded value, after checking that a truncated gzip did not load and that
/// an unedited document loaded as `original`.
fn write_and_load<T: PartialEq, E: std::fmt::Display>(
    what: &str,
    file: &Path,
    case: &FileCase,
    base: &(Vec<u8>, Value),
    original: &T,
    load: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<Option<T>, TestCaseError> {
    let (bytes, truncated, unedited) = file_bytes(case, base);
    std::fs::write(file, &bytes).unwrap();
    let loaded = match no_panic(what, || load(file))? {
        Err(e) => {
            prop_assert!(e.to_string().contains(&file.display().to_string()), "{e}");
            return Ok(None);
        }
        Ok(v) => v,
    };
    prop_assert!(!truncated, "{what}: a truncated gzip file loaded");
    prop_assert!(
        !unedited || loaded == *original,
        "{what}: a corrupted file loaded as another value"
    );
    Ok(Some(loaded))
}

#[test]
fn fuzz_artifact() {
    let paths = artifacts();
    let bases = bases(paths);
    let originals: Vec<Artifact> = paths.iter().map(|p| Artifact::load(p).unwrap()).collect();
    let file = fuzz_dir().join("fuzzed-artifact");
    fuzz("fuzz_artifact", 3, file_case(bases.len()), |case| {
        let Some(a) = write_and_load(
            "Artifact::load",
            &file,
            &case,
            &bases[case.which],
            &originals[case.which],
            Artifact::load,
        )?
        else {
            return Ok(());
        };
        check_scores(&a, kn())?;
        // what loads saves and loads back as itself
        let again = fuzz_dir().join("resaved-artifact.json");
        a.save(&again).unwrap();
        prop_assert!(
            Artifact::load(&again).unwrap() == a,
            "save/load changed the artifact"
        );
        Ok(())
    });
}

/// A snapshot built from the whole sample under the development key (floor 2, so it holds keys).
fn snapshot_path() -> &'static PathBuf {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let p = fuzz_dir().join("signals.json");
        pipeline::build_signals_file(
            &sample_path(),
            &p,
            &SignalsParams::default().min_tenants(2),
            &PseudonymKey::development(),
            &fuzz_dir().join("signals-ledger.json"),
            1000.0,
        )
        .unwrap();
        p
    })
}

#[test]
fn fuzz_signals_snapshot() {
    let paths = vec![snapshot_path().clone()];
    let bases = bases(&paths);
    let original = GlobalSignals::load(&paths[0]).unwrap();
    let model = Artifact::load(shared_model()).unwrap();
    let file = fuzz_dir().join("fuzzed-signals");
    fuzz("fuzz_signals_snapshot", 3, file_case(1), |case| {
        let Some(s) = write_and_load(
            "GlobalSignals::load",
            &file,
            &case,
            &bases[0],
            &original,
            GlobalSignals::load,
        )?
        else {
            return Ok(());
        };
        let Ok(kn) = no_panic("Knowledge::with_snapshot", || kn().clone().with_snapshot(s))? else {
            return Ok(());
        };
        check_scores(&model, &kn)
    });
}

/// Found by `fuzz_artifact` (campaign seed 2026120705, round 47): a forest leaf whose stored
/// right child was 1 instead of 0 loaded, and re-saving it wrote 0, so the artifact did not
/// load back as itself. A leaf with a child is refused at load.
#[test]
fn forest_leaf_with_a_child_is_refused_at_load() {
    let forest = &artifacts()[2];
    let mut v: Value =
        serde_json::from_slice(&threatrank::jsonfile::read(forest).unwrap()).unwrap();
    // the first tree's first leaf (left = 0 marks a leaf)
    fn tree_at(v: &Value, at: String) -> Option<String> {
        match v {
            Value::Object(o) if o.contains_key("left") && o.contains_key("right") => Some(at),
            Value::Object(o) => o.iter().find_map(|(k, c)| tree_at(c, format!("{at}/{k}"))),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, c)| tree_at(c, format!("{at}/{i}"))),
            _ => None,
        }
    }
    let at = tree_at(&v, String::new()).expect("a forest artifact holds trees");
    let tree = v.pointer_mut(&at).unwrap();
    let leaf = tree["left"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l == 0)
        .expect("a tree has a leaf");
    assert_eq!(tree["right"][leaf], 0);
    tree["right"][leaf] = Value::from(1);
    let p = fuzz_dir().join("leaf-with-child.json");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = Artifact::load(&p).unwrap_err();
    assert!(err.to_string().contains("has a right child"), "{err}");
}
