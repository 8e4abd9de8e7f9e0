"""GUIDE quality peer: plain pandas + LightGBM / XGBoost on threatrank's own folds.

    benches/peers/run guide.py --input GUIDE.csv --folds FOLDS.csv --out PRED.csv \
        [--json META.json] [--models lightgbm,xgboost] [--threads N]

FOLDS.csv (written by threatrank): header ``split,fold,role,OrgId,IncidentId``; ``split`` is
``forward``, ``incident-disjoint`` or ``tenant-disjoint``; ``fold`` is the 0-based fold; ``role``
is ``train`` or ``test``. For each split and fold f the peers train on the rows of exactly the
incidents listed ``train`` for (split, f) (rows with an empty IncidentGrade are dropped), fit the
categorical encoders on those rows only, and predict every row of the incidents listed ``test``.
The lists are explicit: a forward fold trains only on incidents that ended before its origin and
leaves out those that straddle it, so "every incident not tested" would be wrong. An incident is
``test`` in at most one fold of a split.

PRED.csv: header ``split,model,OrgId,IncidentId,p_tp,p_bp,p_fp``, one line per (split, model,
held-out incident): the mean of the incident's row probabilities, renormalised, 6 decimals;
sorted by split, model, OrgId, IncidentId (numeric). The recipe is in guide_common.py and in
README.md ("GUIDE peers"). Exit status 0 ok, 2 bad input (the message names file, line, column).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
import pandas as pd

import guide_common as gc

PROG = "guide.py"
MODELS = ("lightgbm", "xgboost")
SPLITS = ("forward", "incident-disjoint", "tenant-disjoint")
ROLES = ("train", "test")
FOLDS_HEADER = ["split", "fold", "role", "OrgId", "IncidentId"]


def read_folds(path: str) -> pd.DataFrame:
    """FOLDS.csv -> DataFrame(split, fold, role, OrgId, IncidentId, line), every line checked:
    known split and role, non-negative integers, an incident at most once per (split, fold) and
    tested in at most one fold of a split, a tenant-disjoint tenant tested in one fold only and
    never on both sides of a fold."""
    rows = []
    seen = {}
    tested = {}
    tenant_fold = {}
    tenant_side = {}
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise gc.InputError(f"{path}: cannot read: {e}")
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header != FOLDS_HEADER:
                raise gc.InputError(f"{gc.where(path, 1)}: header must be {','.join(FOLDS_HEADER)}, "
                                    f"found {','.join(header) if header else 'nothing'}")
            for rec in reader:
                line = reader.line_num
                if not rec:
                    continue
                if len(rec) != 5:
                    raise gc.InputError(f"{gc.where(path, line)}: expected 5 fields, found {len(rec)}")
                split, fold_s, role, org_s, inc_s = rec
                if split not in SPLITS:
                    raise gc.InputError(f"{gc.where(path, line, 'split')}: {split!r} is not one of "
                                        f"{', '.join(SPLITS)}")
                if role not in ROLES:
                    raise gc.InputError(f"{gc.where(path, line, 'role')}: {role!r} is not one of "
                                        f"{', '.join(ROLES)}")
                vals = []
                for name, text in (("fold", fold_s), ("OrgId", org_s), ("IncidentId", inc_s)):
                    try:
                        v = int(text)
                    except ValueError:
                        v = -1
                    if v < 0 or text.strip() != text:
                        raise gc.InputError(f"{gc.where(path, line, name)}: {text!r} is not a "
                                            f"non-negative integer")
                    vals.append(v)
                fold, org, inc = vals
                key = (split, fold, org, inc)
                if key in seen:
                    raise gc.InputError(f"{gc.where(path, line)}: incident OrgId={org} IncidentId={inc} "
                                        f"appears twice in split {split} fold {fold} (first on line "
                                        f"{seen[key]})")
                seen[key] = line
                if role == "test":
                    prev = tested.setdefault((split, org, inc), (fold, line))
                    if prev[0] != fold:
                        raise gc.InputError(
                            f"{gc.where(path, line, 'fold')}: incident OrgId={org} IncidentId={inc} "
                            f"is tested in fold {fold} of split {split} and in fold {prev[0]} "
                            f"(line {prev[1]})")
                if split == "tenant-disjoint":
                    if role == "test":
                        prev = tenant_fold.setdefault(org, (fold, line))
                        if prev[0] != fold:
                            raise gc.InputError(
                                f"{gc.where(path, line, 'fold')}: tenant-disjoint split puts OrgId={org} in "
                                f"fold {fold} but line {prev[1]} put it in fold {prev[0]}")
                    prev = tenant_side.setdefault((fold, org), (role, line))
                    if prev[0] != role:
                        raise gc.InputError(
                            f"{gc.where(path, line, 'role')}: tenant-disjoint fold {fold} puts OrgId={org} "
                            f"on the {role} side but line {prev[1]} put it on the {prev[0]} side")
                rows.append((split, fold, role, org, inc, line))
        except csv.Error as e:
            raise gc.InputError(f"{gc.where(path, reader.line_num)}: {e}")
        except UnicodeDecodeError as e:
            raise gc.InputError(f"{path}: not UTF-8: {e}")
    if not rows:
        raise gc.InputError(f"{path}: no incidents (only a header)")
    return pd.DataFrame(rows, columns=["split", "fold", "role", "OrgId", "IncidentId", "line"])


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    f1 = []
    for k in range(3):
        tp = np.sum((pred == k) & (y == k))
        fp = np.sum((pred == k) & (y != k))
        fn = np.sum((pred != k) & (y == k))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def train_predict(model: str, Xtr, ytr, Xte, threads: int):
    """(probabilities [rows, 3], train s, predict s, params)."""
    if model == "lightgbm":
        import lightgbm as lgb

        params = gc.lightgbm_params(threads)
        t0 = time.perf_counter()
        ds = lgb.Dataset(Xtr, label=ytr, feature_name=gc.FEATURES, params={"verbosity": -1})
        booster = lgb.train(params, ds, num_boost_round=gc.ROUNDS)
        t1 = time.perf_counter()
        p = booster.predict(Xte, num_threads=threads)
        t2 = time.perf_counter()
    else:
        import xgboost as xgb

        params = gc.xgboost_params(threads)
        t0 = time.perf_counter()
        dtr = xgb.DMatrix(Xtr, label=ytr, feature_names=gc.FEATURES, nthread=threads)
        booster = xgb.train(params, dtr, num_boost_round=gc.ROUNDS)
        t1 = time.perf_counter()
        p = booster.predict(xgb.DMatrix(Xte, feature_names=gc.FEATURES, nthread=threads))
        t2 = time.perf_counter()
    return np.asarray(p, dtype=np.float64), t1 - t0, t2 - t1, params


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="GUIDE CSV (46 or 45 columns, header line)")
    ap.add_argument("--folds", required=True, help="split,fold,role,OrgId,IncidentId (from threatrank)")
    ap.add_argument("--out", required=True, help="PRED.csv to write")
    ap.add_argument("--json", help="write versions, params, timings, machine to this path")
    ap.add_argument("--models", default="lightgbm,xgboost")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        ap.error(f"--models: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(MODELS)}")
    models = [m for m in MODELS if m in models]  # fixed order
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    load_start = os.getloadavg()
    t_all = time.perf_counter()
    try:
        df = gc.read_guide(args.input, need_label=True)
        folds = read_folds(args.folds)
    except gc.InputError as e:
        gc.fail(PROG, e)

    # Incidents of FOLDS.csv must exist in the input.
    present = df[gc.KEY].drop_duplicates()
    chk = folds.merge(present, on=gc.KEY, how="left", indicator=True)
    missing = chk[chk["_merge"] == "left_only"]
    if len(missing):
        r = missing.sort_values("line").iloc[0]
        gc.fail(PROG, gc.InputError(
            f"{gc.where(args.folds, int(r['line']))}: incident OrgId={r['OrgId']} "
            f"IncidentId={r['IncidentId']} is not in {args.input} ({len(missing)} such lines)"))

    y_all = gc.labels_to_codes(df[gc.LABEL])
    base = gc.base_features(df)  # per-row, fit-free; per-incident counts need only that incident
    inc_label = (pd.DataFrame({"OrgId": df["OrgId"], "IncidentId": df["IncidentId"], "y": y_all})
                 .query("y >= 0").groupby(gc.KEY, sort=True)["y"].first())

    row_key = pd.MultiIndex.from_frame(df[gc.KEY])

    def rows_of(lines: pd.DataFrame) -> np.ndarray:
        """Mask of the input rows of the incidents listed in ``lines``."""
        return np.asarray(row_key.isin(pd.MultiIndex.from_frame(lines[gc.KEY])))

    outputs, runs = [], []
    for split in SPLITS:
        sf = folds[folds["split"] == split]
        if sf.empty:
            continue
        for model in models:
            rec = {"split": split, "model": model, "folds": [], "train_s": 0.0, "predict_s": 0.0}
            preds = []
            t_model = time.perf_counter()
            for fold in sorted(sf["fold"].unique()):
                ff = sf[sf["fold"] == fold]
                # exactly the listed training incidents (graded rows only), never "the rest"
                tr = rows_of(ff[ff["role"] == "train"]) & (y_all >= 0)
                te = rows_of(ff[ff["role"] == "test"])
                if not te.any():
                    continue
                if not tr.any():
                    gc.fail(PROG, gc.InputError(f"{args.folds}: split {split} fold {fold} leaves no "
                                                f"labelled training rows"))
                t0 = time.perf_counter()
                enc = gc.fit_encoders(df[tr])
                Xtr = gc.matrix(base[tr], gc.encode(df[tr], enc))
                Xte = gc.matrix(base[te], gc.encode(df[te], enc))
                t_feat = time.perf_counter() - t0
                p, t_train, t_pred, params = train_predict(model, Xtr, y_all[tr], Xte, args.threads)
                inc = gc.incident_mean(df.loc[te, gc.KEY], p)
                preds.append(inc)
                rec["folds"].append({"fold": int(fold), "train_rows": int(tr.sum()),
                                     "test_rows": int(te.sum()), "test_incidents": len(inc),
                                     "features_s": t_feat, "train_s": t_train, "predict_s": t_pred})
                rec["train_s"] += t_train
                rec["predict_s"] += t_pred
                rec["params"] = params
            rec["wall_s"] = time.perf_counter() - t_model
            out = pd.concat(preds, ignore_index=True)
            out.insert(0, "model", model)
            out.insert(0, "split", split)
            outputs.append(out)
            # Summary only (the Rust side computes the metrics from PRED.csv).
            y = inc_label.reindex(pd.MultiIndex.from_frame(out[gc.KEY]))
            lab = y.notna().to_numpy()
            pred = np.argmax(out[list(gc.PROB_COLUMNS)].to_numpy(), axis=1)
            rec["incidents"] = len(out)
            rec["macro_f1_incidents"] = macro_f1(y.to_numpy()[lab].astype(int), pred[lab])
            runs.append(rec)
            print(f"{split:17s} {model:8s} folds {len(rec['folds'])}  incidents {len(out):6d}  "
                  f"macro-F1 (incidents, argmax) {rec['macro_f1_incidents']:.4f}  "
                  f"train {rec['train_s']:.2f}s  predict {rec['predict_s']:.2f}s  wall {rec['wall_s']:.2f}s",
                  flush=True)

    pred_df = pd.concat(outputs, ignore_index=True)
    pred_df = pred_df.sort_values(["split", "model", "OrgId", "IncidentId"], kind="stable")
    pred_df.to_csv(args.out, index=False, float_format="%.6f", lineterminator="\n")
    wall = time.perf_counter() - t_all
    print(f"wrote {args.out} ({len(pred_df)} lines) in {wall:.1f}s, {args.threads} thread(s)")

    if args.json:
        doc = {
            "bench": "threatrank benches/peers/guide.py",
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "input": {"path": args.input, "sha256": sha256(args.input), "rows": len(df),
                      "labelled_rows": int((y_all >= 0).sum())},
            "folds": {"path": args.folds, "sha256": sha256(args.folds), "lines": len(folds)},
            "out": args.out,
            "threads": args.threads,
            "machine": {
                "nproc": gc.nproc(),
                "cpu_model": gc.cpu_model(),
                "platform": platform.platform(),
                "loadavg_start": list(load_start),
                "loadavg_end": list(os.getloadavg()),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            },
            "versions": gc.versions(),
            "recipe": {"rounds": gc.ROUNDS, "features": gc.FEATURES, "excluded": gc.EXCLUDED,
                       "lightgbm": gc.lightgbm_params(args.threads),
                       "xgboost": gc.xgboost_params(args.threads)},
            "runs": runs,
            "wall_s": wall,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
