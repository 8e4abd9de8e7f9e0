"""Small checks of guide.py / pipeline.py (plain unittest; about 30 s on 2 cores):

    benches/peers/run test_guide.py

Folds-file and input errors (exit 2, file/line/column named), training on exactly the listed
incidents of a fold, the encoder's three cases, the
per-incident mean, and both scripts end to end on the first 1,500 rows of the GUIDE sample, twice,
byte for byte.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import guide  # noqa: E402
import guide_common as gc  # noqa: E402

SAMPLE = os.path.join(HERE, "..", "..", "datasets", "guide", "guide_sample.csv")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(HERE, script), *args],
                          capture_output=True, text=True)


class Folds(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def bad(self, body, expect):
        path = write(os.path.join(self.dir.name, "folds.csv"), body)
        with self.assertRaises(gc.InputError) as cm:
            guide.read_folds(path)
        self.assertIn(expect, str(cm.exception))
        self.assertIn("folds.csv", str(cm.exception))

    def test_errors_name_line_and_column(self):
        h = "split,fold,role,OrgId,IncidentId\n"
        self.bad("split,fold,OrgId,IncidentId\n", "line 1")
        self.bad(h, "no incidents")
        self.bad(h + "incident-disjoint,0,test,1,2\nincident-disjoint,-1,test,1,3\n", "line 3, column fold")
        self.bad(h + "random,0,test,1,2\n", "line 2, column split")
        self.bad(h + "forward,0,held,1,2\n", "line 2, column role")
        self.bad(h + "incident-disjoint,0,test,1,x\n", "line 2, column IncidentId")
        # once per (split, fold): not train and test of one fold, not tested in two folds
        self.bad(h + "forward,0,train,1,2\nforward,0,test,1,2\n", "first on line 2")
        self.bad(h + "incident-disjoint,0,test,1,2\nincident-disjoint,1,test,1,2\n",
                 "line 3, column fold")
        self.bad(h + "tenant-disjoint,0,test,1,2\ntenant-disjoint,1,test,1,3\n", "line 3, column fold")
        self.bad(h + "tenant-disjoint,0,test,1,2\ntenant-disjoint,0,train,1,3\n", "line 3, column role")
        self.bad(h + "incident-disjoint,0,test,1\n", "expected 5 fields")

    def test_good_file(self):
        # an incident trains in a later forward fold after being tested in an earlier one
        path = write(os.path.join(self.dir.name, "f.csv"),
                     "split,fold,role,OrgId,IncidentId\nforward,0,test,7,8\nforward,1,train,7,8\n"
                     "tenant-disjoint,0,test,7,8\n")
        df = guide.read_folds(path)
        self.assertEqual(df[["split", "fold", "role", "OrgId", "IncidentId"]].values.tolist(),
                         [["forward", 0, "test", 7, 8], ["forward", 1, "train", 7, 8],
                          ["tenant-disjoint", 0, "test", 7, 8]])


class Recipe(unittest.TestCase):
    def test_encoder_seen_empty_unseen(self):
        cols = {c: [1, 1, 2] for c in gc.CATEGORICAL}
        cols["Category"] = ["b", "a", None]
        train = pd.DataFrame(cols)
        enc = gc.fit_encoders(train)
        self.assertEqual(list(enc["Category"]), ["a", "b"])
        test = pd.DataFrame({c: [2, 3, None] for c in gc.CATEGORICAL})
        test["Category"] = ["b", "zz", None]
        codes = gc.encode(test, enc)
        np.testing.assert_array_equal(codes["Category"].to_numpy(), [1, np.nan, -1])
        np.testing.assert_array_equal(codes["DetectorId"].to_numpy(), [1, np.nan, -1])

    def test_incident_mean_renormalises_and_sorts(self):
        keys = pd.DataFrame({"OrgId": [2, 1, 2], "IncidentId": [5, 9, 5]})
        p = np.array([[0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [0.2, 0.4, 0.4]])
        out = gc.incident_mean(keys, p)
        self.assertEqual(out[["OrgId", "IncidentId"]].values.tolist(), [[1, 9], [2, 5]])
        np.testing.assert_allclose(out[list(gc.PROB_COLUMNS)].to_numpy(),
                                   [[0.1, 0.1, 0.8], [0.4, 0.3, 0.3]])


class EndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        d = cls.dir.name
        cls.small = os.path.join(d, "small.csv")
        with open(SAMPLE) as f, open(cls.small, "w") as g:
            for i, line in enumerate(f):
                if i > 1500:
                    break
                g.write(line)
        df = pd.read_csv(cls.small)
        keys = sorted(set(zip(df.OrgId[df.IncidentGrade.notna()], df.IncidentId[df.IncidentGrade.notna()])))
        rng = random.Random(7)
        shuffled = keys[:]
        rng.shuffle(shuffled)
        fold = {k: i % 3 for i, k in enumerate(shuffled)}
        cls.folds = os.path.join(d, "folds.csv")
        with open(cls.folds, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["split", "fold", "role", "OrgId", "IncidentId"])
            for g in range(3):
                for k in keys:
                    w.writerow(["incident-disjoint", g, "test" if fold[k] == g else "train", *k])
        cls.n_incidents = len(keys)
        cls.keys = keys

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def test_guide_deterministic_and_well_formed(self):
        outs = []
        for i in range(2):
            out = os.path.join(self.dir.name, f"pred{i}.csv")
            r = run("guide.py", "--input", self.small, "--folds", self.folds, "--out", out,
                    "--threads", "1", "--json", os.path.join(self.dir.name, "meta.json"))
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out, "rb") as f:
                outs.append(f.read())
        self.assertEqual(outs[0], outs[1])
        pred = pd.read_csv(os.path.join(self.dir.name, "pred0.csv"))
        self.assertEqual(list(pred.columns), ["split", "model", "OrgId", "IncidentId", "p_tp", "p_bp", "p_fp"])
        self.assertEqual(len(pred), 2 * self.n_incidents)
        self.assertTrue(pred.equals(pred.sort_values(["split", "model", "OrgId", "IncidentId"])
                                    .reset_index(drop=True)))
        s = pred[["p_tp", "p_bp", "p_fp"]].sum(axis=1)
        self.assertLess(float((s - 1).abs().max()), 2e-6)

    def test_trains_on_exactly_the_listed_incidents(self):
        # Fold 0 trains on 40 incidents only and tests 20 others; the rest are on neither side.
        # A second file lists other training incidents for the same test set: the predictions
        # must change (a peer that trained on "everything not tested" would give equal ones),
        # and a file listing the same training incidents in another order must not.
        rng = random.Random(11)
        keys = self.keys[:]
        rng.shuffle(keys)
        test, train_a, train_b = keys[:20], keys[20:60], keys[60:100]

        def folds_file(name, train):
            path = os.path.join(self.dir.name, name)
            with open(path, "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["split", "fold", "role", "OrgId", "IncidentId"])
                for k in train:
                    w.writerow(["forward", 0, "train", *k])
                for k in test:
                    w.writerow(["forward", 0, "test", *k])
            return path

        preds = []
        for name, train in (("a.csv", train_a), ("b.csv", train_b), ("a2.csv", train_a[::-1])):
            out = os.path.join(self.dir.name, "pred-" + name)
            r = run("guide.py", "--input", self.small, "--folds", folds_file(name, train),
                    "--out", out, "--models", "lightgbm", "--json", os.path.join(self.dir.name, "m.json"))
            self.assertEqual(r.returncode, 0, r.stderr)
            preds.append(pd.read_csv(out))
            with open(os.path.join(self.dir.name, "m.json")) as f:
                fold = json.load(f)["runs"][0]["folds"][0]
            df = pd.read_csv(self.small)
            lab = df[df.IncidentGrade.notna()]
            want_rows = int(pd.MultiIndex.from_frame(lab[["OrgId", "IncidentId"]])
                            .isin(pd.MultiIndex.from_tuples(train)).sum())
            self.assertEqual(fold["train_rows"], want_rows)
        self.assertEqual(len(preds[0]), 20)
        self.assertTrue(preds[0].equals(preds[2]))
        self.assertFalse(preds[0][["p_tp", "p_bp", "p_fp"]].equals(preds[1][["p_tp", "p_bp", "p_fp"]]))

    def test_pipeline_keeps_input_order(self):
        outs = []
        for i in range(2):
            out = os.path.join(self.dir.name, f"scored{i}.csv")
            r = run("pipeline.py", "--train", self.small, "--input", SAMPLE, "--out", out,
                    "--json", os.path.join(self.dir.name, "pipe.json"))
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out, "rb") as f:
                outs.append(f.read())
        self.assertEqual(outs[0], outs[1])
        scored = pd.read_csv(os.path.join(self.dir.name, "scored0.csv"))
        src = pd.read_csv(SAMPLE)
        self.assertEqual(list(scored.columns), ["Id", "OrgId", "IncidentId", "AlertId", "p_tp",
                                                "p_bp", "p_fp", "predicted_grade"])
        self.assertTrue(scored[["Id", "OrgId", "IncidentId", "AlertId"]].equals(
            src[["Id", "OrgId", "IncidentId", "AlertId"]]))

    def test_bad_input_exits_2(self):
        nodet = os.path.join(self.dir.name, "nodet.csv")
        pd.read_csv(self.small).drop(columns=["DetectorId"]).to_csv(nodet, index=False)
        r = run("guide.py", "--input", nodet, "--folds", self.folds, "--out", os.devnull)
        self.assertEqual(r.returncode, 2)
        self.assertIn("nodet.csv: line 1: missing GUIDE column(s) DetectorId", r.stderr)
        r = run("pipeline.py", "--train", self.small, "--input", nodet, "--out", os.devnull,
                "--json", os.devnull)
        self.assertEqual(r.returncode, 2)
        self.assertIn("DetectorId", r.stderr)
        foreign = write(os.path.join(self.dir.name, "foreign.csv"),
                        "split,fold,role,OrgId,IncidentId\nincident-disjoint,0,test,999999,1\n")
        r = run("guide.py", "--input", self.small, "--folds", foreign, "--out", os.devnull)
        self.assertEqual(r.returncode, 2)
        self.assertIn("foreign.csv: line 2: incident OrgId=999999", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
