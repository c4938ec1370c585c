"""Ensemble: paper eq. 3 weights, tau_h / tau_l binarisation, ID checks, the CLI."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.postprocess.ensemble import (EnsembleInputError, binarise, combine, ensemble_files, normalise_weights,
                                        rank_weights, read_probabilities)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paper_example_weights():
    # Paper: ranks 1, 2 (pseudo) and 33 (plain): w1 = 1 - 3/36, w2 = 1 - 33/36,
    # w11 = (1 - 1/3) * w1, w12 = (1 - 2/3) * w1.
    w1, w2 = 1 - 3 / 36, 1 - 33 / 36
    expected = [(2 / 3) * w1, (1 / 3) * w1, w2]  # = 22/36, 11/36, 3/36
    w = rank_weights([1, 2, 33], ["pseudo", "pseudo", "plain"])
    np.testing.assert_allclose(w, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(w, [22 / 36, 11 / 36, 3 / 36], atol=1e-15)
    assert w.sum() == pytest.approx(1.0)


def test_group_order_does_not_matter():
    w = rank_weights([33, 1, 2], ["plain", "pseudo", "pseudo"])
    np.testing.assert_allclose(w, [3 / 36, 22 / 36, 11 / 36], atol=1e-15)


def test_three_in_one_group_normalised():
    # 1 - r/6 for r = 1, 2, 3 -> 5/6, 4/6, 3/6 (sum 2 = n - 1) -> divided by 2.
    np.testing.assert_allclose(rank_weights([1, 2, 3]), [5 / 12, 4 / 12, 3 / 12], atol=1e-15)


def test_rank_errors():
    with pytest.raises(EnsembleInputError, match=r"^ranks must be positive \(leaderboard positions\), "
                                                 r"got \[0\.0, 1\.0\]$"):
        rank_weights([0, 1])
    with pytest.raises(EnsembleInputError, match="--groups has 1"):
        rank_weights([1, 2], ["a"])


def test_explicit_weights_normalised():
    np.testing.assert_allclose(normalise_weights([2, 1, 1]), [0.5, 0.25, 0.25])
    with pytest.raises(EnsembleInputError, match=r"^--weights must be non-negative with a positive sum, "
                                                 r"got \[1, -1\]$"):
        normalise_weights([1, -1])


def test_binarise_thresholds_are_strict():
    p = np.array([0.0005, 0.001, 0.5, 0.998, 0.9985])
    np.testing.assert_array_equal(binarise(p, 0.998, 0.001), [0.0, 0.001, 0.5, 0.998, 1.0])
    np.testing.assert_array_equal(binarise(p, None, None), p)


def test_combine_paper_vs_reference():
    probs = np.array([[0.999, 0.999, 0.2],
                      [0.999, 0.990, 0.4],
                      [0.999, 0.999, 0.6]])
    w = [0.85, 0.05, 0.10]
    mean = [0.999, 0.85 * 0.999 + 0.05 * 0.99 + 0.10 * 0.999, 0.85 * 0.2 + 0.05 * 0.4 + 0.1 * 0.6]
    # paper: threshold the mean (0.99855 > 0.998 -> 1 for the second column too)
    np.testing.assert_allclose(combine(probs, w, tau_h=0.998, mode="paper"), [1.0, 1.0, mean[2]])
    # reference: only where all three models exceed 0.998
    np.testing.assert_allclose(combine(probs, w, tau_h=0.998, mode="reference"), [1.0, mean[1], mean[2]])


def _write_sub(path, ids, vals):
    pd.DataFrame({"ID": ids, "Label": vals}).to_csv(path, index=False)
    return str(path)


def test_id_mismatch_names_the_file(tmp_path):
    ids = [f"ID_{i:09x}_{lab}" for i in range(4) for lab in LABELS]
    a = _write_sub(tmp_path / "a.csv", ids, np.full(len(ids), 0.3))
    b = _write_sub(tmp_path / "b.csv", ids[:-6] + [f"ID_ffffffff0_{lab}" for lab in LABELS], np.full(len(ids), 0.3))
    with pytest.raises(EnsembleInputError) as e:
        ensemble_files([a, b], [0.5, 0.5])
    assert str(e.value) == (
        f"ensemble inputs do not cover the same IDs:\n  {b}: 24 IDs vs 24 in {a}; 6 missing (e.g. "
        "ID_000000003_epidural, ID_000000003_intraparenchymal, ID_000000003_intraventricular); "
        f"6 not in {a} (e.g. ID_ffffffff0_epidural, ID_ffffffff0_intraparenchymal, ID_ffffffff0_intraventricular)")


def test_predictions_csv_equals_submission(tmp_path):
    pred = pd.DataFrame({"patient_id": ["P"] * 2, "study_uid": ["S"] * 2, "series_uid": ["R"] * 2,
                         "sop_uid": ["ID_aaa", "ID_bbb"], "slice_idx": [0, 1], "position": [0.0, 5.0]})
    for j, lab in enumerate(LABELS):
        pred[lab] = [0.1 * j, 0.05 * j]
    pred.to_csv(tmp_path / "pred.csv", index=False)
    s = read_probabilities(str(tmp_path / "pred.csv"))
    assert s.index[0] == "ID_aaa_epidural" and s.index[5] == "ID_aaa_any" and s.index[6] == "ID_bbb_epidural"
    assert s["ID_bbb_subdural"] == pytest.approx(0.2)


def test_cli_paper_example(tmp_path):
    ids = [f"ID_{i:09x}_{lab}" for i in range(2) for lab in LABELS]
    n = len(ids)
    va, vb, vc = np.full(n, 0.36), np.full(n, 0.72), np.zeros(n)
    va[1] = vb[1] = vc[1] = 0.9990   # mean 0.999 > tau_h 0.998 -> 1
    va[2] = vb[2] = vc[2] = 0.1      # mean 0.1 < tau_l 0.3 -> 0
    a = _write_sub(tmp_path / "a.csv", ids, va)
    b = _write_sub(tmp_path / "b.csv", ids, vb)
    c = _write_sub(tmp_path / "c.csv", ids, vc)
    out = tmp_path / "sub.csv"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ensemble.py"), "--inputs", a, b, c,
                        "--ranks", "1", "2", "33", "--groups", "pseudo", "pseudo", "plain",
                        "--tau-h", "0.998", "--tau-l", "0.3", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["ID", "Label"] and list(sub["ID"]) == ids
    # 22/36 * 0.36 + 11/36 * 0.72 + 3/36 * 0 = (7.92 + 7.92) / 36 = 0.44
    assert sub["Label"].iloc[0] == pytest.approx(0.44, abs=1e-7)
    assert sub["Label"].iloc[5] == pytest.approx(0.44, abs=1e-7)
    assert sub["Label"].iloc[1] == 1.0 and sub["Label"].iloc[2] == 0.0
    # mismatch: CLI exits 2 and names the file
    d = _write_sub(tmp_path / "d.csv", ids[:6], np.full(6, 0.5))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ensemble.py"), "--inputs", a, d,
                        "--weights", "1", "1", "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "d.csv" in r.stderr and "6 missing" in r.stderr
