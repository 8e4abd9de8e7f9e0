"""Shared pieces of the GUIDE peers (guide.py, pipeline.py): input checks, the Kaggle-style
feature recipe and the LightGBM / XGBoost parameters. Not a script; see README.md, "GUIDE peers".

The recipe is what a data scientist tries first on the GUIDE Kaggle data, row by row:

- ``pandas.read_csv`` with default options;
- every categorical id column (``CATEGORICAL`` below) label-encoded as integer codes, with the
  codes fitted on the training rows: a training value gets its rank among the sorted distinct
  training values (0, 1, ...), an empty cell gets -1 (so "missing" is a learnable value), and a
  value never seen in training becomes NaN (the boosters' missing value);
- ``OrgId`` as a raw number (Kaggle solutions did this; it lets trees isolate big tenants);
- ``hour`` and ``day_of_week`` from ``Timestamp`` (UTC);
- per-incident counts from the input columns, never from labels: rows, distinct alerts,
  distinct detectors and distinct entity types of the row's (OrgId, IncidentId);
- no class weights, no early stopping, fixed rounds.

Columns left out (``EXCLUDED``): the keys Id, IncidentId, AlertId; the label IncidentGrade;
Timestamp (replaced by hour and day of week); Usage (the Kaggle test file's public/private
leaderboard flag, not evidence); ActionGranular (free text); and the per-entity pseudonyms
(DeviceId, Sha256, IpAddress, Url, AccountSid, AccountUpn, AccountObjectId, AccountName,
DeviceName, NetworkMessageId, EmailClusterId, FileName, FolderPath). Those name one machine,
file, address, account or mail each; the full GUIDE release has up to hundreds of thousands of
distinct values per column, most of them seen once, and their codes carry no order.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import warnings

import numpy as np
import pandas as pd

LABELS = ("TruePositive", "BenignPositive", "FalsePositive")  # class 0, 1, 2 = p_tp, p_bp, p_fp
PROB_COLUMNS = ("p_tp", "p_bp", "p_fp")
KEY = ["OrgId", "IncidentId"]
LABEL = "IncidentGrade"

CATEGORICAL = [
    "DetectorId", "AlertTitle", "Category", "MitreTechniques", "ActionGrouped", "EntityType",
    "EvidenceRole", "RegistryKey", "RegistryValueName", "RegistryValueData", "ApplicationId",
    "ApplicationName", "OAuthApplicationId", "ThreatFamily", "ResourceIdName", "ResourceType",
    "Roles", "OSFamily", "OSVersion", "AntispamDirection", "SuspicionLevel", "LastVerdict",
    "CountryCode", "State", "City",
]
EXCLUDED = {
    "Id": "key (not unique; no meaning across incidents)",
    "IncidentId": "key",
    "AlertId": "key (used only for the distinct-alerts count)",
    "IncidentGrade": "label",
    "Timestamp": "replaced by hour and day_of_week",
    "Usage": "Kaggle test file's public/private leaderboard flag, not evidence",
    "ActionGranular": "free text",
    **{c: "per-entity pseudonym (high cardinality, unordered codes)" for c in (
        "DeviceId", "Sha256", "IpAddress", "Url", "AccountSid", "AccountUpn", "AccountObjectId",
        "AccountName", "DeviceName", "NetworkMessageId", "EmailClusterId", "FileName",
        "FolderPath")},
}
COUNT_FEATURES = ["incident_rows", "incident_alerts", "incident_detectors", "incident_entity_types"]
FEATURES = ["OrgId", "hour", "day_of_week", *COUNT_FEATURES, *CATEGORICAL]
# Columns the recipe reads (the label only where it trains).
SCORING_COLUMNS = ["Id", "OrgId", "IncidentId", "AlertId", "Timestamp", *CATEGORICAL]

ROUNDS = 300
LEARNING_RATE = 0.05


class InputError(Exception):
    """Bad input: the message names the file and, where known, the line and column."""


def where(path, line=None, column=None) -> str:
    out = str(path)
    if line is not None:
        out += f": line {line}"
    if column is not None:
        out += f", column {column}" if line is not None else f": column {column}"
    return out


def lightgbm_params(threads: int) -> dict:
    return {
        "objective": "multiclass",
        "num_class": 3,
        "learning_rate": LEARNING_RATE,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "max_bin": 255,
        "feature_fraction": 0.8,
        "bagging_fraction": 1.0,
        "bagging_freq": 0,
        "seed": 0,
        "deterministic": True,
        # LightGBM's docs ask for a forced histogram layout with deterministic=true (the automatic
        # choice is made by timing both layouts).
        "force_row_wise": True,
        "num_threads": threads,
        "verbosity": -1,
    }


def xgboost_params(threads: int) -> dict:
    return {
        "objective": "multi:softprob",
        "num_class": 3,
        "tree_method": "hist",
        "eta": LEARNING_RATE,
        "max_depth": 6,
        "colsample_bytree": 0.8,  # LightGBM's feature_fraction
        "max_bin": 256,
        "seed": 0,
        "nthread": threads,
        "verbosity": 0,
    }


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


def read_guide(path: str, need_label: bool) -> pd.DataFrame:
    """pandas.read_csv(path), after checking the header names every column the recipe reads."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}")
    if not header:
        raise InputError(f"{where(path, 1)}: empty file, expected a GUIDE CSV header")
    need = SCORING_COLUMNS + ([LABEL] if need_label else [])
    missing = [c for c in need if c not in header]
    if missing:
        raise InputError(f"{where(path, 1)}: missing GUIDE column(s) {', '.join(missing)}")
    try:
        with warnings.catch_warnings():
            # Columns that are empty in one of read_csv's internal chunks (ActionGrouped,
            # ActionGranular, ResourceType on GUIDE) come back as object columns mixing NaN and
            # str; encode() treats both alike, so pandas' DtypeWarning about them is noise.
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: pandas.read_csv failed: {e}")
    for col in KEY:
        check_integer_column(df, col, path)
    if need_label:
        bad = df[LABEL].notna() & ~df[LABEL].isin(LABELS)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{where(path, i + 2, LABEL)}: {df[LABEL].iloc[i]!r} is not one of "
                             f"{', '.join(LABELS)} or empty")
    return df


def check_integer_column(df: pd.DataFrame, col: str, path: str) -> None:
    """OrgId / IncidentId must be integers (line numbers assume one CSV record per line)."""
    if pd.api.types.is_integer_dtype(df[col].dtype):
        return
    num = pd.to_numeric(df[col], errors="coerce")
    bad = num.isna() | (num != np.floor(num))
    i = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else None
    if i is None:  # integral floats without blanks: accept
        df[col] = num.astype(np.int64)
        return
    raise InputError(f"{where(path, i + 2, col)}: {df[col].iloc[i]!r} is not an integer")


def labels_to_codes(s: pd.Series) -> np.ndarray:
    """IncidentGrade -> 0/1/2, -1 for empty."""
    out = np.full(len(s), -1, dtype=np.int32)
    for k, name in enumerate(LABELS):
        out[(s == name).to_numpy()] = k
    return out


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def incident_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Per-row counts of the row's incident, from input columns only (never the label)."""
    g = df.groupby(KEY, sort=False)
    return pd.DataFrame({
        "incident_rows": g["AlertId"].transform("size"),
        "incident_alerts": g["AlertId"].transform("nunique"),
        "incident_detectors": g["DetectorId"].transform("nunique"),
        "incident_entity_types": g["EntityType"].transform("nunique"),
    }, index=df.index)


def base_features(df: pd.DataFrame) -> pd.DataFrame:
    """The features that need no fitting: OrgId, hour, day of week, per-incident counts."""
    ts = pd.to_datetime(df["Timestamp"], format="ISO8601", utc=True, errors="coerce")
    out = pd.DataFrame({
        "OrgId": df["OrgId"],
        "hour": ts.dt.hour,
        "day_of_week": ts.dt.day_of_week,
    }, index=df.index)
    return pd.concat([out, incident_counts(df)], axis=1)


def fit_encoders(df: pd.DataFrame) -> dict:
    """Per categorical column: the sorted distinct non-empty values of the training rows."""
    enc = {}
    for col in CATEGORICAL:
        uniq = pd.Index(pd.unique(df[col].dropna()))
        try:
            enc[col] = uniq.sort_values()
        except TypeError:  # mixed types in one column: order by text, still deterministic
            enc[col] = pd.Index(sorted(uniq, key=lambda v: (type(v).__name__, str(v))), dtype=object)
    return enc


def encode(df: pd.DataFrame, enc: dict) -> pd.DataFrame:
    """Training value -> its code, empty -> -1, unseen value -> NaN (missing)."""
    cols = {}
    for col in CATEGORICAL:
        s = df[col]
        idx = enc[col].get_indexer(s)
        codes = idx.astype(np.float32)
        codes[(idx < 0) & s.notna().to_numpy()] = np.nan
        codes[s.isna().to_numpy()] = -1.0
        cols[col] = codes
    return pd.DataFrame(cols, index=df.index)


def matrix(base: pd.DataFrame, codes: pd.DataFrame) -> np.ndarray:
    """float32 [rows, len(FEATURES)] in FEATURES order (all values are exact in float32)."""
    X = np.empty((len(base), len(FEATURES)), dtype=np.float32)
    for j, name in enumerate(FEATURES):
        src = codes[name] if name in codes.columns else base[name]
        X[:, j] = src.to_numpy(dtype=np.float32, na_value=np.nan)
    return X


def incident_mean(keys: pd.DataFrame, p: np.ndarray) -> pd.DataFrame:
    """Mean of the rows' probabilities per (OrgId, IncidentId), renormalised; sorted by key."""
    frame = keys[KEY].reset_index(drop=True).copy()
    for k, c in enumerate(PROB_COLUMNS):
        frame[c] = p[:, k]
    out = frame.groupby(KEY, sort=True)[list(PROB_COLUMNS)].mean()
    out = out.div(out.sum(axis=1), axis=0)
    return out.reset_index()


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__}
    for mod in ("lightgbm", "xgboost"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def fail(prog: str, err: Exception) -> None:
    print(f"{prog}: {err}", file=sys.stderr)
    sys.exit(2)
