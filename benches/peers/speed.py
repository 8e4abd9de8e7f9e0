"""Speed peer: LightGBM and XGBoost trained and scored on threatrank's synthetic 3-class matrices.

Run it through ``benches/peers/run`` (pinned venv, ``OMP_WAIT_POLICY=PASSIVE``)::

    benches/peers/run speed.py --rows 200000 --threads 1,2 --json /tmp/peers.json
    benches/peers/run speed.py --rows 1000 --checksum-only      # data checksums only

The matrices are defined bit for bit in ``SYNTHETIC.md`` (same folder); the Rust criterion bench
implements the same generator and compares its checksums with the ones printed here.

Generator (splitmix64, all arithmetic on u64 with wrapping add/multiply)::

    GAMMA = 0x9E3779B97F4A7C15
    state = seed
    next():
        state = state + GAMMA                      (wrapping)
        z = state
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9   (wrapping)
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB   (wrapping)
        return z ^ (z >> 31)
    unit(d) = (d >> 11) as f64 * 2^-53            (f64 in [0, 1))

So the k-th output (k = 0, 1, ...) is mix(seed + (k + 1) * GAMMA), which is how it is vectorised
below. Check value: seed 0 gives first output 0xE220A8397B1DCDAF.

One matrix of n rows is drawn from one generator (train: seed 1, test: seed 2). Row i consumes
exactly 32 outputs, d[0..32], in order (row-major, rows 0..n):

    x[j] = ((unit(d[j]) * 2.0 - 1.0) as f32)  for j in 0..30    (the 30 features, f32)
    flip = unit(d[30]) < 0.12
    noisy_label = d[31] % 3                       (u64 remainder)

Scores use a[j] = x[j] as f64 (exact), evaluated left to right in f64, no fused multiply-add:

    s0 = 1.5*a0 - a1 + 2.0*a2*a3 + (1.0 if a4 > 0.25 else 0.0)
    s1 = 1.2*a1 - 0.5*a0 + 2.0*a5*a5 - 0.8*a6 - 0.6 + (0.9 if a0*a7 > 0.0 else 0.0)
    s2 = a3 + 1.5*abs(a2 - a4) - 0.5 + 1.5*a8*a9
    clean = index of the largest of (s0, s1, s2), first one on ties
    label = noisy_label if flip else clean        (u32 / i32 in 0..3)

Features 10..29 are pure noise. 12 % of the labels are redrawn uniformly, so about 8 % are wrong
and the best possible test accuracy is about 0.92 (log-loss about 0.33).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

# the folder's shared machine description (nproc, CPU model), also used by guide.py
from guide_common import cpu_model, nproc

GAMMA = 0x9E3779B97F4A7C15
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB
N_FEATURES = 30
DRAWS_PER_ROW = 32
FLIP_RATE = 0.12
TRAIN_SEED = 1
TEST_SEED = 2
N_CLASSES = 3


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------


def splitmix64_block(seed: int, start: int, count: int) -> np.ndarray:
    """Outputs start .. start+count of the splitmix64 stream seeded with `seed` (uint64 array)."""
    k = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + k * np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MUL1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MUL2)
    return z ^ (z >> np.uint64(31))


def unit(d: np.ndarray) -> np.ndarray:
    return (d >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def generate(n: int, seed: int, chunk_rows: int = 100_000):
    """(X f32 [n, 30] C-order, y int32 [n], clean int32 [n]) for `seed`, as in SYNTHETIC.md."""
    X = np.empty((n, N_FEATURES), dtype=np.float32)
    y = np.empty(n, dtype=np.int32)
    clean = np.empty(n, dtype=np.int32)
    for r0 in range(0, n, chunk_rows):
        r1 = min(n, r0 + chunk_rows)
        d = splitmix64_block(seed, r0 * DRAWS_PER_ROW, (r1 - r0) * DRAWS_PER_ROW)
        d = d.reshape(r1 - r0, DRAWS_PER_ROW)
        xf = (unit(d[:, :N_FEATURES]) * 2.0 - 1.0).astype(np.float32)
        X[r0:r1] = xf
        a = xf[:, :10].astype(np.float64)
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = (a[:, j] for j in range(10))
        s0 = 1.5 * a0 - a1 + 2.0 * a2 * a3 + np.where(a4 > 0.25, 1.0, 0.0)
        s1 = 1.2 * a1 - 0.5 * a0 + 2.0 * a5 * a5 - 0.8 * a6 - 0.6 + np.where(a0 * a7 > 0.0, 0.9, 0.0)
        s2 = a3 + 1.5 * np.abs(a2 - a4) - 0.5 + 1.5 * a8 * a9
        c = np.argmax(np.stack([s0, s1, s2], axis=1), axis=1).astype(np.int32)  # first max on ties
        flip = unit(d[:, 30]) < FLIP_RATE
        noisy = (d[:, 31] % np.uint64(3)).astype(np.int32)
        clean[r0:r1] = c
        y[r0:r1] = np.where(flip, noisy, c)
    return X, y, clean


def reference_rows(n: int, seed: int):
    """Scalar, plain-Python twin of `generate` (the spec, line by line); used by --self-check."""
    M = (1 << 64) - 1
    state = seed

    def nxt():
        nonlocal state
        state = (state + GAMMA) & M
        z = state
        z = ((z ^ (z >> 30)) * MUL1) & M
        z = ((z ^ (z >> 27)) * MUL2) & M
        return z ^ (z >> 31)

    rows = []
    for _ in range(n):
        d = [nxt() for _ in range(DRAWS_PER_ROW)]
        x = [float(np.float32((d[j] >> 11) * 2.0**-53 * 2.0 - 1.0)) for j in range(N_FEATURES)]
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9 = x[:10]
        s0 = 1.5 * a0 - a1 + 2.0 * a2 * a3 + (1.0 if a4 > 0.25 else 0.0)
        s1 = 1.2 * a1 - 0.5 * a0 + 2.0 * a5 * a5 - 0.8 * a6 - 0.6 + (0.9 if a0 * a7 > 0.0 else 0.0)
        s2 = a3 + 1.5 * abs(a2 - a4) - 0.5 + 1.5 * a8 * a9
        s = [s0, s1, s2]
        clean = s.index(max(s))
        label = d[31] % 3 if (d[30] >> 11) * 2.0**-53 < FLIP_RATE else clean
        rows.append((x, label))
    return rows


def self_check(n: int = 2000) -> None:
    first = int(splitmix64_block(0, 0, 1)[0])
    assert first == 0xE220A8397B1DCDAF, hex(first)
    for seed in (TRAIN_SEED, TEST_SEED):
        X, y, _ = generate(n, seed, chunk_rows=700)  # odd chunk size: chunking must not matter
        for i, (x, label) in enumerate(reference_rows(n, seed)):
            assert [float(v) for v in X[i]] == x and int(y[i]) == label, (seed, i)
    print(f"self-check ok: splitmix64(0) first output 0xE220A8397B1DCDAF; vectorised == scalar on {n} rows x 2 seeds")


def checksum(X: np.ndarray, y: np.ndarray) -> dict:
    """Checksums the Rust side recomputes (see SYNTHETIC.md, "Checksums")."""
    bits = X.view(np.uint32).astype(np.uint64)
    flat = X.ravel().astype(np.float64)
    idx = np.arange(len(y), dtype=np.uint64)
    return {
        "rows": int(X.shape[0]),
        # wrapping u64 sum of f32::to_bits over all features (order-free, exact)
        "feature_bits_sum": int(bits.sum(dtype=np.uint64)),
        # f64 sum of all features, sequential in row-major order (a plain Rust fold)
        "feature_sum_seq": float(np.cumsum(flat)[-1]) if flat.size else 0.0,
        "label_counts": [int(v) for v in np.bincount(y, minlength=N_CLASSES)],
        # u64 sum over rows of row_index * label
        "label_index_sum": int((idx * y.astype(np.uint64)).sum(dtype=np.uint64)),
        "row0_x0_x1_x2": [float(v) for v in X[0, :3]] if len(y) else [],
        "first_labels": [int(v) for v in y[:16]],
    }


# ---------------------------------------------------------------------------------------------
# Metrics and timing
# ---------------------------------------------------------------------------------------------


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean multiclass log-loss, probabilities clipped to [1e-15, 1 - 1e-15] (sklearn's default)."""
    py = np.clip(p[np.arange(len(y)), y], 1e-15, 1 - 1e-15)
    return float(-np.mean(np.log(py)))


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == y))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timed_cpu(fn):
    """(wall s, process CPU s of all threads, result)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


def lightgbm_params(threads: int, layout: str) -> dict:
    p = {
        "objective": "multiclass",
        "num_class": N_CLASSES,
        "num_leaves": 63,
        "max_depth": 6,
        "learning_rate": 0.1,
        "min_data_in_leaf": 20,
        "max_bin": 255,
        "num_threads": threads,
        "deterministic": True,
        "seed": 0,
        "verbosity": -1,
    }
    p["force_row_wise" if layout == "row" else "force_col_wise"] = True
    return p


def xgboost_params(threads: int) -> dict:
    return {
        "objective": "multi:softprob",
        "num_class": N_CLASSES,
        "tree_method": "hist",
        "max_depth": 6,
        "eta": 0.1,
        "max_bin": 256,
        "nthread": threads,
        "seed": 0,
        "verbosity": 0,
    }


def run_lightgbm(Xtr, ytr, Xte, threads, trees, layout):
    import lightgbm as lgb

    params = lightgbm_params(threads, layout)

    def train():
        # Dataset construction (binning) happens inside train: it is part of the timed fit.
        return lgb.train(params, lgb.Dataset(Xtr, label=ytr, params={"verbosity": -1}),
                         num_boost_round=trees)

    def predict(b):
        return b.predict(Xte, num_threads=threads)

    return params, train, predict


def run_xgboost(Xtr, ytr, Xte, threads, trees):
    import xgboost as xgb

    params = xgboost_params(threads)

    def train():
        # QuantileDMatrix (the sketch for hist) is built inside the timed fit.
        d = xgb.QuantileDMatrix(Xtr, label=ytr, nthread=threads, max_bin=params["max_bin"])
        return xgb.train(params, d, num_boost_round=trees)

    def predict(b):
        return b.inplace_predict(Xte)

    return params, train, predict


def bench_model(name, factory, Xte, yte, train_repeats, predict_repeats):
    params, train, predict = factory()
    train_times, train_cpu, losses = [], [], []
    booster = None
    for _ in range(train_repeats):
        t, c, booster = timed_cpu(train)
        train_times.append(t)
        train_cpu.append(c)
        losses.append(log_loss(predict(booster), yte))  # also warms the predictor
    pred_times, pred_cpu = [], []
    p = None
    for _ in range(predict_repeats):
        t, c, p = timed_cpu(lambda: predict(booster))
        pred_times.append(t)
        pred_cpu.append(c)
    med = statistics.median(pred_times)
    return {
        "model": name,
        "params": params,
        "train_s_best": min(train_times),
        "train_s_median": statistics.median(train_times),
        "train_s_all": train_times,
        "train_cpu_s_all": train_cpu,
        "predict_s_median": med,
        "predict_s_all": pred_times,
        "predict_cpu_s_all": pred_cpu,
        "predict_rows_per_s": len(yte) / med,
        "test_logloss": log_loss(p, yte),
        "test_accuracy": accuracy(p, yte),
        "deterministic_across_fits": len(set(losses)) == 1,
    }


# ---------------------------------------------------------------------------------------------
# Machine / output
# ---------------------------------------------------------------------------------------------


def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("lightgbm", "xgboost", "scipy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def print_checksums(tag, seed, cs):
    print(f"{tag:5s} seed {seed}: rows {cs['rows']}  feature_bits_sum {cs['feature_bits_sum']}  "
          f"feature_sum_seq {cs['feature_sum_seq']!r}  label_counts {cs['label_counts']}  "
          f"label_index_sum {cs['label_index_sum']}")


def print_table(results, n_train, n_test):
    print()
    print(f"train {n_train} rows, test {n_test} rows, 30 features, 3 classes")
    head = (f"{'model':9s} {'thr':>3s} {'train s (best)':>14s} {'train s (med)':>13s} "
            f"{'predict s':>9s} {'rows/s':>11s} {'log-loss':>9s} {'accuracy':>8s}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['model']:9s} {r['threads']:3d} {r['train_s_best']:14.2f} {r['train_s_median']:13.2f} "
              f"{r['predict_s_median']:9.3f} {r['predict_rows_per_s']:11,.0f} "
              f"{r['test_logloss']:9.4f} {r['test_accuracy']:8.4f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="train rows (and test rows unless --test-rows)")
    ap.add_argument("--test-rows", type=int, default=None)
    ap.add_argument("--threads", default="1", help="thread counts, comma separated (e.g. 1,2)")
    ap.add_argument("--models", default="lightgbm,xgboost")
    ap.add_argument("--trees", type=int, default=100, help="boosting rounds (one tree per class each)")
    ap.add_argument("--train-repeats", type=int, default=3, help="fits timed; best and median reported")
    ap.add_argument("--predict-repeats", type=int, default=5, help="predictions timed; median reported")
    ap.add_argument("--lgb-layout", choices=("row", "col"), default="row",
                    help="LightGBM histogram layout: force_row_wise or force_col_wise (see README)")
    ap.add_argument("--self-check", action="store_true",
                    help="check the vectorised generator against the scalar reference, then stop")
    ap.add_argument("--checksum-only", action="store_true", help="print data checksums and stop")
    ap.add_argument("--json", help="write every figure to this path")
    args = ap.parse_args(argv)
    n_test = args.test_rows if args.test_rows is not None else args.rows
    threads = [int(t) for t in args.threads.split(",") if t]
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    if args.self_check:
        self_check()
        return
    load_start = os.getloadavg()
    t_gen, ((Xtr, ytr, _), (Xte, yte, cte)) = timed(
        lambda: (generate(args.rows, TRAIN_SEED), generate(n_test, TEST_SEED)))
    cs_train, cs_test = checksum(Xtr, ytr), checksum(Xte, yte)
    print(f"generated train ({args.rows} rows) and test ({n_test} rows) in {t_gen:.2f}s")
    print_checksums("train", TRAIN_SEED, cs_train)
    print_checksums("test", TEST_SEED, cs_test)
    # Reference: the generating rule itself (clean label, with the 12 % redraw as probabilities).
    p_bayes = np.full((n_test, N_CLASSES), FLIP_RATE / 3)
    p_bayes[np.arange(n_test), cte] += 1 - FLIP_RATE
    bayes = {"test_logloss": log_loss(p_bayes, yte), "test_accuracy": accuracy(p_bayes, yte)}
    print(f"generating rule on test: log-loss {bayes['test_logloss']:.4f}, accuracy {bayes['test_accuracy']:.4f}")

    results = []
    if not args.checksum_only:
        for thr in threads:
            for m in models:
                if m == "lightgbm":
                    factory = lambda: run_lightgbm(Xtr, ytr, Xte, thr, args.trees, args.lgb_layout)
                elif m == "xgboost":
                    factory = lambda: run_xgboost(Xtr, ytr, Xte, thr, args.trees)
                else:
                    sys.exit(f"unknown model {m!r} (lightgbm, xgboost)")
                r = bench_model(m, factory, Xte, yte, args.train_repeats, args.predict_repeats)
                r["threads"] = thr
                results.append(r)
                print(f"  {m} threads={thr}: train best {r['train_s_best']:.2f}s, "
                      f"predict {r['predict_rows_per_s']:,.0f} rows/s, log-loss {r['test_logloss']:.4f}",
                      flush=True)
        print_table(results, args.rows, n_test)

    if args.json:
        doc = {
            "bench": "threatrank benches/peers/speed.py",
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {
                "nproc": nproc(),
                "cpu_model": cpu_model(),
                "platform": platform.platform(),
                "loadavg_start": list(load_start),
                "loadavg_end": list(os.getloadavg()),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            },
            "versions": versions(),
            "data": {
                "features": N_FEATURES,
                "classes": N_CLASSES,
                "train_rows": args.rows,
                "test_rows": n_test,
                "train_seed": TRAIN_SEED,
                "test_seed": TEST_SEED,
                "checksum_train": cs_train,
                "checksum_test": cs_test,
                "generating_rule": bayes,
            },
            "trees": args.trees,
            "train_repeats": args.train_repeats,
            "predict_repeats": args.predict_repeats,
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
