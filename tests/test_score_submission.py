"""tools/score_submission.py: the competition metric on a Kaggle-format submission, worked by hand for 2 images;
the sample-submission ID check (missing / extra / duplicate IDs named, exit 2); the constant-prior row."""
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.metric.submission import SubmissionError, check_against_sample, read_labels, read_submission, score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = [sys.executable, os.path.join(ROOT, "tools", "score_submission.py")]

# image A: subdural + any; image B: negative.  LABELS order: epidural, intraparenchymal, intraventricular,
# subarachnoid, subdural, any
TRUTH = {"ID_aaa": [0, 0, 0, 0, 1, 1], "ID_bbb": [0, 0, 0, 0, 0, 0]}
PROBS = {"ID_aaa": [0.1, 0.2, 0.1, 0.3, 0.8, 0.9], "ID_bbb": [0.1, 0.1, 0.1, 0.1, 0.1, 0.2]}
# by hand: image loss = sum_c w_c ll_c / 7 with w = 1,1,1,1,1,2
L_A = (-math.log(0.9) - math.log(0.8) - math.log(0.9) - math.log(0.7) - math.log(0.8) - 2 * math.log(0.9)) / 7
L_B = (-5 * math.log(0.9) - 2 * math.log(0.8)) / 7
EXPECTED = (L_A + L_B) / 2  # = 0.156964 (1.2244041 / 7 and 0.9730897 / 7, averaged)


def _long(table, path, order=None):
    rows = [(f"{img}_{lab}", v) for img, vals in table.items() for lab, v in zip(LABELS, vals)]
    if order == "reverse":
        rows = rows[::-1]
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(path, index=False)
    return str(path)


def test_hand_worked_two_images(tmp_path):
    assert EXPECTED == pytest.approx(0.156964, abs=1e-6)
    sub = read_submission(_long(PROBS, tmp_path / "sub.csv", "reverse"))  # row order does not matter
    res = score(sub, read_labels(_long(TRUTH, tmp_path / "labels.csv")))
    assert res["n_images"] == 2
    assert res["weighted_log_loss"] == pytest.approx(EXPECTED, rel=1e-12)
    pc = res["log_loss"]
    assert pc["epidural"] == pytest.approx(-math.log(0.9), rel=1e-12)                # both 0.1 on a negative
    assert pc["subarachnoid"] == pytest.approx((-math.log(0.7) - math.log(0.9)) / 2, rel=1e-12)
    assert pc["subdural"] == pytest.approx((-math.log(0.8) - math.log(0.9)) / 2, rel=1e-12)
    assert pc["any"] == pytest.approx((-math.log(0.9) - math.log(0.8)) / 2, rel=1e-12)


def test_cli_score_prior_and_json(tmp_path):
    sub = _long(PROBS, tmp_path / "sub.csv")
    labels = _long(TRUTH, tmp_path / "labels.csv")
    # training labels: one positive (subdural + any) and one negative image, with RSNA's duplicate rows
    train = tmp_path / "train.csv"
    rows = [(f"ID_t1_{lab}", v) for lab, v in zip(LABELS, [0, 0, 0, 0, 1, 1])]
    rows += [(f"ID_t2_{lab}", 0) for lab in LABELS]
    pd.DataFrame(rows + rows[:6], columns=["ID", "Label"]).to_csv(train, index=False)
    r = subprocess.run(TOOL + ["--submission", sub, "--names", "mine", "--labels", labels, "--prior", str(train),
                               "--json", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{EXPECTED:.5f}" in r.stdout and "mine" in r.stdout and "constant prior" in r.stdout
    rows = {x["name"]: x for x in json.load(open(tmp_path / "s.json"))["rows"]}
    assert rows["mine"]["weighted_log_loss"] == pytest.approx(EXPECTED, rel=1e-12)
    # prior: rates 0,0,0,0,0.5,0.5 -> each image: ln 2 (subdural) + 2 ln 2 (any) over 7; the zero rates are
    # clipped to 1e-7 and cost -ln(1 - 1e-7) ~ 1e-7 each on these negatives
    prior = (3 * math.log(2) + 4 * -math.log(1 - 1e-7)) / 7
    assert rows["constant prior"]["weighted_log_loss"] == pytest.approx(prior, rel=1e-9)


def test_sample_check_names_missing_extra_duplicate(tmp_path):
    sample = _long({k: [0.5] * 6 for k in TRUTH}, tmp_path / "sample.csv")
    labels = _long(TRUTH, tmp_path / "labels.csv")
    df = pd.read_csv(_long(PROBS, tmp_path / "full.csv"))
    # one ID missing: refused, the ID named
    df[df["ID"] != "ID_bbb_subdural"].to_csv(tmp_path / "miss.csv", index=False)
    r = subprocess.run(TOOL + ["--submission", str(tmp_path / "miss.csv"), "--labels", labels, "--sample", sample],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "1 IDs of" in r.stderr and "missing: ID_bbb_subdural" in r.stderr, r.stderr
    # an extra and a duplicate ID
    extra = pd.concat([df, pd.DataFrame({"ID": ["ID_zzz_any", "ID_aaa_any"], "Label": [0.5, 0.9]})])
    extra.to_csv(tmp_path / "extra.csv", index=False)
    r = subprocess.run(TOOL + ["--submission", str(tmp_path / "extra.csv"), "--labels", labels, "--sample", sample],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "1 duplicate IDs: ID_aaa_any" in r.stderr and "1 IDs not in" in r.stderr and "ID_zzz_any" in r.stderr
    with pytest.raises(SubmissionError, match="missing: ID_bbb_subdural"):
        check_against_sample(pd.read_csv(tmp_path / "miss.csv")["ID"], sample)
    # without --sample: a duplicate is still an error; an ID without a label too
    r = subprocess.run(TOOL + ["--submission", str(tmp_path / "extra.csv"), "--labels", labels],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "duplicate IDs" in r.stderr and "ID_aaa_any" in r.stderr
    # the complete file passes the check
    r = subprocess.run(TOOL + ["--submission", str(tmp_path / "full.csv"), "--labels", labels, "--sample", sample],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bad_values_and_incomplete_images(tmp_path):
    labels = read_labels(_long(TRUTH, tmp_path / "labels.csv"))
    bad = dict(PROBS, ID_aaa=[0.1, 0.2, 0.1, 0.3, 1.5, 0.9])
    with pytest.raises(SubmissionError, match="outside \\[0, 1\\]: ID_aaa_subdural"):
        read_submission(_long(bad, tmp_path / "bad.csv"))
    df = pd.read_csv(_long(PROBS, tmp_path / "full.csv"))
    df[df["ID"] != "ID_aaa_any"].to_csv(tmp_path / "part.csv", index=False)
    with pytest.raises(SubmissionError, match="without all six labels: ID_aaa"):
        score(read_submission(str(tmp_path / "part.csv")), labels)
    unknown = pd.concat([df, pd.DataFrame({"ID": ["ID_ccc_any"], "Label": [0.5]})])
    unknown.to_csv(tmp_path / "unk.csv", index=False)
    with pytest.raises(SubmissionError, match="without all six labels: ID_ccc"):
        score(read_submission(str(tmp_path / "unk.csv")), labels)
