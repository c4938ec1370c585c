"""Pseudo-label selection on hand-made predictions (paper eq. 2 and eq. 3 weights)."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.postprocess.pseudo_label import (PseudoLabelError, average_predictions, confidence, read_pseudo_csv,
                                            select_confident_series, train_label_rates)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pred(rows):
    """rows: (series_uid, sop_uid, slice_idx, six probabilities)."""
    recs = []
    for ser, sop, idx, probs in rows:
        rec = {"patient_id": "P_" + ser, "study_uid": "ST_" + ser, "series_uid": ser, "sop_uid": sop,
               "slice_idx": idx, "position": 5.0 * idx}
        rec.update(dict(zip(LABELS, probs)))
        recs.append(rec)
    return pd.DataFrame(recs)


NEG = [0.01, 0.02, 0.01, 0.03, 0.01, 0.02]
POS_SDH = [0.01, 0.02, 0.01, 0.03, 0.99, 0.98]
# series A: all confident (one subdural slice). series B: one slice has subarachnoid 0.9 (s = 0.9 < 0.95).
# series C: confident except 'any' = 0.95 exactly (s = 0.95, not > 0.95 -> dropped).
ROWS = [("A", "ID_a0", 0, NEG), ("A", "ID_a1", 1, POS_SDH), ("A", "ID_a2", 2, NEG),
        ("B", "ID_b0", 0, NEG), ("B", "ID_b1", 1, [0.01, 0.02, 0.01, 0.90, 0.01, 0.97]), ("B", "ID_b2", 2, NEG),
        ("C", "ID_c0", 0, NEG), ("C", "ID_c1", 1, [0.01, 0.02, 0.01, 0.03, 0.01, 0.95])]


def test_confidence_eq2():
    np.testing.assert_allclose(confidence(np.array([0.0, 0.2, 0.5, 0.93])), [1.0, 0.8, 0.5, 0.93])


def test_series_with_one_unconfident_slice_is_dropped():
    sel = select_confident_series(_pred(ROWS), tau_s=0.95, tau_p=0.5)
    assert (sel.n_series, sel.kept_series, sel.n_slices, sel.kept_slices) == (3, 1, 8, 3)
    p = sel.pseudo
    assert list(p["sop_uid"]) == ["ID_a0", "ID_a1", "ID_a2"]
    assert p[list(LABELS)].to_numpy().tolist() == [[0] * 6, [0, 0, 0, 0, 1, 1], [0] * 6]
    # min over classes of max(p, 1-p): slice a1 -> min(0.99, 0.98, 0.99, 0.97, 0.99, 0.98) = 0.97
    assert p["confidence"].tolist() == pytest.approx([0.97, 0.97, 0.97])
    # B's weakest slice has s = 0.90, C's 0.95: both listed as dropped, C first (more confident)
    assert [s for s, _ in sel.dropped_examples] == ["C", "B"]
    # lower tau_s keeps B too (0.90 > 0.89), and its 0.90 subarachnoid becomes 1
    sel2 = select_confident_series(_pred(ROWS), tau_s=0.89)
    assert sel2.kept_series == 3
    b1 = sel2.pseudo.set_index("sop_uid").loc["ID_b1", list(LABELS)].tolist()
    assert b1 == [0, 0, 0, 1, 0, 1]


def test_tau_validation():
    with pytest.raises(PseudoLabelError, match=r"^PseudoLabel\.tau_s must be in \[0\.5, 1\) "
                                               r"\(max\(p, 1-p\) >= 0\.5\), got 0\.3$"):
        select_confident_series(_pred(ROWS), tau_s=0.3)


def test_average_of_two_files_and_mismatch():
    a = _pred(ROWS)
    b = _pred(ROWS)
    b[list(LABELS)] = 1.0 - b[list(LABELS)]  # mean = 0.5 everywhere -> nothing confident
    avg = average_predictions([a, b], ["a.csv", "b.csv"])
    np.testing.assert_allclose(avg[list(LABELS)].to_numpy(), 0.5)
    assert select_confident_series(avg).kept_series == 0
    c = _pred(ROWS[:-1])
    with pytest.raises(PseudoLabelError, match=r"c.csv: 7 slices vs 8.*1 missing \(e.g. ID_c1\)"):
        average_predictions([a, c], ["a.csv", "c.csv"])


def test_train_label_rates(tmp_path):
    # two images (+ one duplicated row set): epidural positive in one of two, any in one of two
    rows = []
    for img, pos in (("ID_x1", {"epidural", "any"}), ("ID_x2", set())):
        rows += [(f"{img}_{lab}", int(lab in pos)) for lab in LABELS]
    rows += rows[:6]  # duplicates are dropped
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(tmp_path / "train.csv", index=False)
    n, rates = train_label_rates(str(tmp_path / "train.csv"))
    assert n == 2 and rates["epidural"] == 0.5 and rates["any"] == 0.5 and rates["subdural"] == 0.0


def test_cli(tmp_path):
    _pred(ROWS).to_csv(tmp_path / "pred.csv", index=False)
    out = tmp_path / "pseudo.csv"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pseudo_label.py"), "--pred",
                        str(tmp_path / "pred.csv"), "--tau-s", "0.95", "--tau-p", "0.5", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "kept 1/3 series" in r.stdout and "3/8 slices" in r.stdout
    assert "WARNING" not in r.stdout  # series A carries a subdural/any positive
    df = read_pseudo_csv(str(out))
    assert df["sop_uid"].tolist() == ["ID_a0", "ID_a1", "ID_a2"] and int(df["any"].sum()) == 1
    # only all-negative series kept -> warning
    _pred(ROWS[:1] + ROWS[2:3]).to_csv(tmp_path / "neg.csv", index=False)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pseudo_label.py"), "--pred",
                        str(tmp_path / "neg.csv"), "--out", str(tmp_path / "neg_pseudo.csv")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "every kept pseudo-label is negative" in r.stdout
    # a submission file has no series information: clear error
    pd.DataFrame({"ID": ["ID_a0_any"], "Label": [0.1]}).to_csv(tmp_path / "sub.csv", index=False)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pseudo_label.py"), "--pred",
                        str(tmp_path / "sub.csv"), "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "sub.csv" in r.stderr and "series_uid" in r.stderr


# --- eq. 3 weights (paper example: ranks 1, 2 with pseudo-labels, 33 without) ---------------------------------
# hand-worked: w1 = 1 - 3/36 (pseudo group), w2 = 1 - 33/36; inside the group (1 - 1/3) w1 and (1 - 2/3) w1
# -> 22/36, 11/36, 3/36 (they sum to 1)
EQ3 = np.array([22, 11, 3]) / 36.0
THREE = [[("X", "ID_x0", 0, NEG), ("X", "ID_x1", 1, NEG)],
         [("X", "ID_x0", 0, NEG), ("X", "ID_x1", 1, NEG)],
         [("X", "ID_x0", 0, NEG), ("X", "ID_x1", 1, NEG[:5] + [0.40])]]   # the rank-33 model doubts slice 1


def test_weighted_average_eq3_hand_values():
    frames = [_pred(r) for r in THREE]
    avg = average_predictions(frames, ["a", "b", "c"], weights=EQ3)
    # any on slice 1: (22 * 0.02 + 11 * 0.02 + 3 * 0.40) / 36 = 1.86 / 36 = 0.051667 -> s = 0.948 (dropped);
    # with 0.01 in a, b: see the CLI test; here only the arithmetic
    assert avg.loc[1, "any"] == pytest.approx((22 * 0.02 + 11 * 0.02 + 3 * 0.40) / 36)
    assert avg.loc[0, "any"] == pytest.approx(0.02) and avg.loc[1, "epidural"] == pytest.approx(0.01)
    eq = average_predictions(frames, ["a", "b", "c"])
    assert eq.loc[1, "any"] == pytest.approx((0.02 + 0.02 + 0.40) / 3)
    # weights are normalised; wrong count / negative weights are refused
    np.testing.assert_allclose(average_predictions(frames, None, weights=EQ3 * 7)[list(LABELS)],
                               avg[list(LABELS)])
    with pytest.raises(PseudoLabelError, match=r"^3 prediction files need 3 non-negative weights with a positive sum, "
                                               r"got \[1, 2\]$"):
        average_predictions(frames, None, weights=[1, 2])
    with pytest.raises(PseudoLabelError, match=r"^3 prediction files need 3 non-negative weights with a positive sum, "
                                               r"got \[1, -1, 1\]$"):
        average_predictions(frames, None, weights=[1, -1, 1])


def test_cli_ranks_groups_select_with_eq3(tmp_path):
    rows = [list(r) for r in THREE]
    rows[0] = [("X", "ID_x0", 0, NEG), ("X", "ID_x1", 1, NEG[:5] + [0.01])]
    rows[1] = [("X", "ID_x0", 0, NEG), ("X", "ID_x1", 1, NEG[:5] + [0.01])]
    paths = []
    for k, r in enumerate(rows):
        paths.append(str(tmp_path / f"p{k}.csv"))
        _pred(r).to_csv(paths[-1], index=False)
    tool = [sys.executable, os.path.join(ROOT, "tools", "pseudo_label.py"), "--pred", *paths]
    # eq. 3: any on slice 1 = (33 * 0.01 + 3 * 0.40) / 36 = 0.0425 -> s = 0.9575 > 0.95: the series is kept
    r = subprocess.run(tool + ["--ranks", "1", "2", "33", "--groups", "pseudo", "pseudo", "plain",
                               "--out", str(tmp_path / "w.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "kept 1/1 series" in r.stdout and "0.611111, 0.305556, 0.083333" in r.stdout
    assert read_pseudo_csv(str(tmp_path / "w.csv"))["confidence"].min() == pytest.approx(1 - 0.0425)
    # equal weights: (0.01 + 0.01 + 0.40) / 3 = 0.14 -> s = 0.86: dropped
    r = subprocess.run(tool + ["--out", str(tmp_path / "e.csv")], capture_output=True, text=True)
    assert r.returncode == 4 and "kept 0/1 series" in r.stdout  # nothing kept: exit 4 (tools/pseudo_label.py)
    assert "no series passed tau_s=0.95 (0/1 kept)" in r.stderr and "e.csv is empty" in r.stderr
    # explicit weights, and mistakes
    r = subprocess.run(tool + ["--weights", "22", "11", "3", "--out", str(tmp_path / "x.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "kept 1/1 series" in r.stdout
    r = subprocess.run(tool + ["--ranks", "1", "2", "--out", str(tmp_path / "y.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "3 --pred files but 2" in r.stderr
    r = subprocess.run(tool + ["--ranks", "1", "2", "3", "--weights", "1", "1", "1", "--out", str(tmp_path / "z.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not both" in r.stderr
