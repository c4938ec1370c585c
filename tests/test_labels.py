"""RSNA label CSV parsing and the series-consistent train/val split."""
import re

import numpy as np
import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.data.labels import LabelError, read_labels, split_series


def _rows(sop, values):
    return [f"{sop}_{lab},{v}" for lab, v in zip(LABELS, values)]


def _write(tmp_path, lines, header="ID,Label"):
    p = tmp_path / "stage_2_train.csv"
    p.write_text("\n".join([header] + lines) + "\n")
    return str(p)


def test_pivot_duplicates_and_checks(tmp_path):
    lines = (_rows("ID_000039fa0", [0, 0, 0, 0, 0, 0])
             + _rows("ID_00005679d", [0, 1, 0, 1, 0, 1])
             + _rows("ID_00005679d", [0, 1, 0, 1, 0, 1])          # an image listed twice (RSNA has 4)
             + _rows("ID_0000aee4b", [1, 0, 0, 0, 0, 0])          # any = 0 but epidural = 1: reported
             + ["ID_0000ca2f6_epidural,0", "ID_0000ca2f6_epidural,1"]   # conflicting duplicate, incomplete
             + _rows("ID_0000ca2f6", [0, 0, 0, 0, 0, 0])[1:])
    labels, rep = read_labels(_write(tmp_path, lines))
    assert list(labels.columns) == list(LABELS)
    assert rep.rows == 31 and rep.duplicate_rows_dropped == 6 and rep.images == 4
    np.testing.assert_array_equal(labels.loc["ID_00005679d"].to_numpy(), [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(labels.loc["ID_000039fa0"].to_numpy(), [0] * 6)
    assert rep.inconsistent_any == ["ID_0000aee4b"]
    assert rep.conflicting_ids == ["ID_0000ca2f6_epidural"]
    assert labels.loc["ID_0000ca2f6", "epidural"] == 0.0          # first row kept
    assert rep.incomplete_images == []
    assert "6 duplicate rows dropped" in rep.summary()


def test_missing_subtype_rows_are_unknown(tmp_path):
    labels, rep = read_labels(_write(tmp_path, _rows("ID_aa", [0, 0, 0, 0, 1, 1])[:5]))
    assert rep.incomplete_images == ["ID_aa"] and np.isnan(labels.loc["ID_aa", "any"])


@pytest.mark.parametrize("lines,header,match", [
    (["ID_1_any,0"], "Image,Target", r"missing column\(s\) \['ID', 'Label'\]"),
    (["ID1any,0"], "ID,Label", r"1 rows with an ID not of the form .*line 2: 'ID1any'"),
    (["ID_1_any,0", "ID_1_bleed,1"], "ID,Label", r"unknown subtype .*line 3: 'ID_1_bleed'"),
    (["ID_1_any,yes"], "ID,Label", r"Label that is not 0 or 1"),
])
def test_wrong_csv_names_file_and_problem(tmp_path, lines, header, match):
    p = _write(tmp_path, lines, header)
    with pytest.raises(LabelError, match=match) as e:
        read_labels(p)
    assert str(e.value).startswith(p)


def test_missing_file(tmp_path):
    with pytest.raises(LabelError, match=rf"^label file not found: {re.escape(str(tmp_path / 'nope.csv'))} "
                                        r"\(set Data\.root / Data\.label_csv\)$"):
        read_labels(str(tmp_path / "nope.csv"))


def test_split_series_consistent_and_seeded():
    tab = pd.DataFrame({"series_id": [f"s{i:02d}" for i in range(20)], "patient_id": [f"p{i // 4}" for i in range(20)]})
    a = split_series(tab, 0.1, seed=42)
    assert (a == "val").sum() == 2 and (a == "train").sum() == 18 and sorted(a.index) == sorted(tab["series_id"])
    b = split_series(tab.sample(frac=1.0, random_state=0), 0.1, seed=42)   # input order does not matter
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index())
    # seed 42 draws from the 20 sorted ids the first two entries of default_rng(42).permutation(20)
    expected = {f"s{i:02d}" for i in np.random.default_rng(42).permutation(20)[:2]}
    assert set(a[a == "val"].index) == expected
    assert split_series(tab, 0.0).eq("train").all()


def test_split_group_by_patient():
    tab = pd.DataFrame({"series_id": [f"s{i:02d}" for i in range(20)], "patient_id": [f"p{i // 4}" for i in range(20)]})
    sp = split_series(tab, 0.3, seed=1, group_by_patient=True)
    val_series = set(sp[sp == "val"].index)
    # 30 % of 20 = 6 series -> whole patients of 4 series each: 2 patients = 8 series
    assert len(val_series) == 8
    by_patient = tab.assign(split=tab["series_id"].map(sp)).groupby("patient_id")["split"].nunique()
    assert (by_patient == 1).all()
    with pytest.raises(ValueError, match="val_fraction"):
        split_series(tab, 1.0)


def _reference_val_uids(uids, test_size=0.1, seed=42):
    """The authors' preprocessing, restated: a slice table sorted by (series_id, position), ``series_id.unique()``
    (so the UIDs in sorted order), then sklearn ``train_test_split(..., test_size, random_state)``."""
    from sklearn.model_selection import train_test_split

    rows = [{"series_id": u, "ImagePos3": float(k)} for u in uids for k in (2, 0, 1)]
    meta = pd.DataFrame(rows).sample(frac=1.0, random_state=3).sort_values(["series_id", "ImagePos3"])
    _, val = train_test_split(meta.series_id.unique(), test_size=test_size, random_state=seed)
    return set(val)


def test_split_reference_equals_sklearn_on_sorted_uids():
    rng = np.random.default_rng(7)
    uids = [f"ID_{rng.integers(16 ** 9):09x}" for _ in range(23)]          # RSNA-style SeriesInstanceUIDs
    tab = pd.DataFrame({"series_id": [f"{u[-6:]}-h{i}" for i, u in enumerate(uids)], "series_uid": uids})
    tab = tab.sample(frac=1.0, random_state=1)                               # input order must not matter
    sp = split_series(tab, 0.1, seed=42, method="reference")
    got = set(tab.loc[tab["series_id"].map(sp) == "val", "series_uid"])
    assert got == _reference_val_uids(uids, 0.1, 42)
    assert len(got) == 3                                                     # sklearn: ceil(0.1 * 23) = 3
    assert (sp == "train").sum() == 20 and sorted(sp.index) == sorted(tab["series_id"])
    # a different seed / fraction is the same call with those arguments
    sp2 = split_series(tab, 0.3, seed=5, method="reference")
    assert set(tab.loc[tab["series_id"].map(sp2) == "val", "series_uid"]) == _reference_val_uids(uids, 0.3, 5)
    # RSNA counts: 21,744 train-folder series -> 2,175 val (Table 2); the ppihd method rounds to 2,174
    assert int(np.ceil(0.1 * 21744)) == 2175 and int(round(0.1 * 21744)) == 2174


def test_split_reference_rejects_bad_combinations():
    tab = pd.DataFrame({"series_id": ["a", "b", "c"], "series_uid": ["1", "2", "3"], "patient_id": ["p", "q", "r"]})
    with pytest.raises(ValueError, match=r"^Data\.split: reference is a series-level split; it cannot be combined "
                                        r"with Data\.group_by_patient: true$"):
        split_series(tab, 0.34, group_by_patient=True, method="reference")
    with pytest.raises(ValueError, match=r"^Data\.split must be one of .*'reference'.*, got 'sklearn'$"):
        split_series(tab, 0.34, method="sklearn")
    with pytest.raises(ValueError, match=r"^split_series\(method='reference'\) needs a 'series_uid' column$"):
        split_series(tab[["series_id"]], 0.34, method="reference")
