#!/usr/bin/env python3
"""Prints a Markdown table (median time, throughput at the median) of a criterion run.

Usage: python3 benches/summarize.py [CRITERION_DIR]
(default: $CARGO_TARGET_DIR/criterion, else target/criterion)
"""
import json
import os
import sys
from pathlib import Path

ORDER = ["ingest_bytes", "ingest_rows", "correlate", "features_transform",
         "features_fit_transform", "score_into", "score_single_row",
         "contributions_into", "fit"]


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_thrpt(tp, ns):
    if not tp:
        return ""
    (kind, n), = tp.items()
    per_s = n / (ns / 1e9)
    if kind == "Bytes":
        return f"{per_s / 1e6:.1f} MB/s"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if per_s >= scale:
            return f"{per_s / scale:.3g} {unit}elem/s"
    return f"{per_s:.3g} elem/s"


def main():
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(
        os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
    rows = []
    for bench in root.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        ns = est["median"]["point_estimate"]
        lo = est["median"]["confidence_interval"]["lower_bound"]
        hi = est["median"]["confidence_interval"]["upper_bound"]
        rows.append((meta["group_id"], meta, ns, lo, hi))
    key = lambda r: (ORDER.index(r[0]) if r[0] in ORDER else len(ORDER), r[0],
                     r[1].get("function_id") or "",
                     float(r[1]["value_str"]) if (r[1].get("value_str") or "").isdigit() else 0)
    print("| benchmark | median | 95% CI of median | throughput (at median) |")
    print("|---|---:|---:|---:|")
    for _, meta, ns, lo, hi in sorted(rows, key=key):
        print(f"| `{meta['full_id']}` | {fmt_time(ns)} | {fmt_time(lo)} – {fmt_time(hi)} "
              f"| {fmt_thrpt(meta.get('throughput'), ns)} |")


if __name__ == "__main__":
    main()
