"""GUIDE scoring pipeline peer: what a data scientist's pandas + LightGBM scorer does end to end.

    benches/peers/run pipeline.py --train GUIDE_TRAIN.csv --input BIG.csv --out SCORED.csv \
        --json META.json [--threads N]

First, untimed for the pipeline figure (its seconds are reported as ``train_seconds``): read
GUIDE_TRAIN.csv, fit the encoders on its labelled rows and train guide.py's LightGBM recipe
once. Then the timed pipeline, stage by stage:

- ``read``: ``pandas.read_csv(BIG.csv)`` with default options;
- ``features``: the same feature engineering (encoders from training, unseen value -> missing;
  per-incident counts computed on BIG.csv itself);
- ``predict``: ``Booster.predict`` and the mean of the row probabilities per (OrgId, IncidentId),
  renormalised;
- ``write``: ``DataFrame.to_csv(SCORED.csv)``, one line per input row, in input order:
  ``Id,OrgId,IncidentId,AlertId,p_tp,p_bp,p_fp,predicted_grade`` (6 decimals; the grade is the
  argmax, first on ties, in the order TruePositive, BenignPositive, FalsePositive).

The label column of BIG.csv, if any, is read (read_csv reads every column) but never used.
Exit status 0 ok, 2 bad input (the message names file, line, column).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import pandas as pd

import guide_common as gc

PROG = "pipeline.py"


def train(path: str, threads: int):
    """(booster, encoders, labelled rows) from a GUIDE CSV with labels."""
    import lightgbm as lgb

    df = gc.read_guide(path, need_label=True)
    y = gc.labels_to_codes(df[gc.LABEL])
    keep = y >= 0
    if not keep.any():
        raise gc.InputError(f"{path}: no row has an IncidentGrade")
    base = gc.base_features(df)  # counts over the whole file, labelled or not
    enc = gc.fit_encoders(df[keep])
    X = gc.matrix(base[keep], gc.encode(df[keep], enc))
    ds = lgb.Dataset(X, label=y[keep], feature_name=gc.FEATURES, params={"verbosity": -1})
    booster = lgb.train(gc.lightgbm_params(threads), ds, num_boost_round=gc.ROUNDS)
    return booster, enc, int(keep.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="labelled GUIDE CSV to train on (untimed)")
    ap.add_argument("--input", required=True, help="GUIDE CSV to score (the timed pipeline)")
    ap.add_argument("--out", required=True, help="SCORED.csv to write")
    ap.add_argument("--json", required=True, help="META.json to write")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    load_start = os.getloadavg()

    t0 = time.perf_counter()
    try:
        booster, enc, train_rows = train(args.train, args.threads)
    except gc.InputError as e:
        gc.fail(PROG, e)
    train_s = time.perf_counter() - t0
    print(f"trained on {train_rows} labelled rows of {args.train} in {train_s:.2f}s", flush=True)

    # ---- the timed pipeline ------------------------------------------------------------------
    sec, cpu = {}, {}
    c_start = time.process_time()
    t_start = time.perf_counter()
    try:
        df = gc.read_guide(args.input, need_label=False)
    except gc.InputError as e:
        gc.fail(PROG, e)
    t1, c1 = time.perf_counter(), time.process_time()
    sec["read"], cpu["read"] = t1 - t_start, c1 - c_start

    X = gc.matrix(gc.base_features(df), gc.encode(df, enc))
    t2, c2 = time.perf_counter(), time.process_time()
    sec["features"], cpu["features"] = t2 - t1, c2 - c1

    p = booster.predict(X, num_threads=args.threads)
    probs = pd.DataFrame(p, columns=list(gc.PROB_COLUMNS), index=df.index)
    probs[gc.KEY] = df[gc.KEY]
    probs = probs.groupby(gc.KEY, sort=False)[list(gc.PROB_COLUMNS)].transform("mean")
    probs = probs.div(probs.sum(axis=1), axis=0)
    grade = np.asarray(gc.LABELS)[np.argmax(probs.to_numpy(), axis=1)]
    t3, c3 = time.perf_counter(), time.process_time()
    sec["predict"], cpu["predict"] = t3 - t2, c3 - c2

    out = pd.concat([df[["Id", "OrgId", "IncidentId", "AlertId"]], probs], axis=1)
    out["predicted_grade"] = grade
    out.to_csv(args.out, index=False, float_format="%.6f", lineterminator="\n")
    t4, c4 = time.perf_counter(), time.process_time()
    sec["write"], cpu["write"] = t4 - t3, c4 - c3
    sec["total"], cpu["total"] = t4 - t_start, c4 - c_start
    # ------------------------------------------------------------------------------------------

    rows = len(df)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(f"scored {rows} rows: read {sec['read']:.2f}s  features {sec['features']:.2f}s  "
          f"predict {sec['predict']:.2f}s  write {sec['write']:.2f}s  total {sec['total']:.2f}s  "
          f"(CPU {cpu['total']:.2f}s, {rows / sec['total']:,.0f} rows/s)  peak RSS {peak / 2**20:,.0f} MiB")
    doc = {
        "bench": "threatrank benches/peers/pipeline.py",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train": args.train,
        "input": args.input,
        "out": args.out,
        "rows": rows,
        "seconds": sec,
        # process CPU seconds (all threads) per stage: CPU ~ wall x threads when uncontended
        "cpu_seconds": cpu,
        "rows_per_s": rows / sec["total"] if sec["total"] > 0 else None,
        "train_seconds": train_s,
        "train_rows": train_rows,
        "peak_rss_bytes": peak,
        "threads": args.threads,
        "nproc": gc.nproc(),
        "cpu_model": gc.cpu_model(),
        "platform": platform.platform(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "versions": gc.versions(),
        "recipe": {"rounds": gc.ROUNDS, "features": gc.FEATURES, "excluded": gc.EXCLUDED,
                   "lightgbm": gc.lightgbm_params(args.threads)},
    }
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
