"""RSNA labels (``stage_2_train.csv``) and the train/val split (docs/data.md).

    labels, report = read_labels("data/rsna/stage_2_train.csv")   # DataFrame [images, 6], index = SOP UID
    split = split_series(series_table, val_fraction=0.1, seed=42)  # Series: series_id -> "train" | "val"

The CSV has a header ``ID,Label`` and one row per image × subtype, ``ID = <SOPInstanceUID>_<subtype>``
(e.g. ``ID_000039fa0_any``). Duplicate rows are dropped, conflicting duplicates (same ID, different
Label) and images whose ``any`` is not the OR of the five subtypes are reported, not fatal. A file that is
not such a CSV raises :class:`LabelError` naming the file and the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from .. import LABELS


class LabelError(ValueError):
    """A label file that does not have the RSNA format."""


@dataclass
class LabelReport:
    """What :func:`read_labels` found (numbers of rows / images)."""

    rows: int = 0
    duplicate_rows_dropped: int = 0
    conflicting_ids: List[str] = field(default_factory=list)     # same ID with different labels (first kept)
    inconsistent_any: List[str] = field(default_factory=list)    # SOP UIDs where any != OR(five)
    incomplete_images: List[str] = field(default_factory=list)   # SOP UIDs missing some of the six rows
    images: int = 0

    def summary(self) -> str:
        return (f"{self.rows} rows, {self.duplicate_rows_dropped} duplicate rows dropped, {self.images} images; "
                f"{len(self.conflicting_ids)} conflicting IDs, {len(self.inconsistent_any)} images with "
                f"'any' != OR of the subtypes, {len(self.incomplete_images)} images missing subtype rows")


def _bad_rows(path: str, what: str, mask: np.ndarray, values: pd.Series) -> LabelError:
    rows = np.flatnonzero(mask)
    examples = ", ".join(f"line {r + 2}: {values.iloc[r]!r}" for r in rows[:3])  # +2: header, 1-based
    return LabelError(f"{path}: {len(rows)} rows with {what} ({examples})")


def read_labels(path: str) -> "tuple[pd.DataFrame, LabelReport]":
    """Read an RSNA label CSV → (DataFrame indexed by SOP UID with the six ``LABELS`` columns as float32,
    NaN where a subtype row is missing; :class:`LabelReport`). Raises :class:`LabelError`."""
    if not os.path.isfile(path):
        raise LabelError(f"label file not found: {path} (set Data.root / Data.label_csv)")
    try:
        df = pd.read_csv(path, dtype={"ID": str, "Label": str}, keep_default_na=False)
    except Exception as e:
        raise LabelError(f"{path}: not a readable CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in ("ID", "Label") if c not in df.columns]
    if missing:
        raise LabelError(f"{path}: missing column(s) {missing}; expected header 'ID,Label', got {list(df.columns)}")
    rep = LabelReport(rows=len(df))
    ids = df["ID"].str.strip()
    parts = ids.str.rpartition("_")
    sop, sub = parts[0], parts[2]
    bad_id = (parts[1] != "_") | (sop == "")
    if bad_id.any():
        raise _bad_rows(path, "an ID not of the form <SOPInstanceUID>_<subtype>", bad_id.to_numpy(), ids)
    unknown = ~sub.isin(LABELS)
    if unknown.any():
        raise _bad_rows(path, f"an unknown subtype (known: {', '.join(LABELS)})", unknown.to_numpy(), ids)
    lab = df["Label"].str.strip()
    bad_lab = ~lab.isin(["0", "1", "0.0", "1.0"])
    if bad_lab.any():
        raise _bad_rows(path, "a Label that is not 0 or 1", bad_lab.to_numpy(), df["Label"])
    tidy = pd.DataFrame({"sop": sop, "sub": sub, "id": ids, "y": lab.astype(float).astype(np.float32)})
    n0 = len(tidy)
    tidy = tidy.drop_duplicates(subset=["id", "y"])
    rep.duplicate_rows_dropped = n0 - len(tidy)
    conflict = tidy["id"].duplicated(keep=False)
    if conflict.any():
        rep.conflicting_ids = sorted(tidy.loc[conflict, "id"].unique().tolist())
        tidy = tidy.drop_duplicates(subset=["id"], keep="first")
    wide = tidy.pivot(index="sop", columns="sub", values="y").reindex(columns=list(LABELS)).astype(np.float32)
    wide.index.name = "sop_uid"
    wide.columns.name = None
    rep.images = len(wide)
    incomplete = wide.isna().any(axis=1)
    rep.incomplete_images = wide.index[incomplete].tolist()
    full = wide[~incomplete]
    any_or = (full[list(LABELS[:5])].to_numpy() > 0.5).any(axis=1)
    bad_any = any_or != (full["any"].to_numpy() > 0.5)
    rep.inconsistent_any = full.index[bad_any].tolist()
    return wide, rep


SPLIT_METHODS = ("ppihd", "reference")


def reference_split(series_uids: Sequence[str], val_fraction: float = 0.1, seed: int = 42) -> set:
    """The authors' split: scikit-learn ``train_test_split(uids, test_size=val_fraction, random_state=seed)``
    over the **sorted unique SeriesInstanceUIDs** of the training folder (their preprocessing sorts the slice
    table by series UID, then passes ``series_id.unique()``, i.e. the UIDs in sorted order). Returns the set
    of validation UIDs. scikit-learn rounds the test count up: ``ceil(0.1 * 21,744) = 2,175`` RSNA series."""
    from sklearn.model_selection import train_test_split

    uids = np.array(sorted(set(str(u) for u in series_uids)), dtype=object)
    if len(uids) < 2 or float(val_fraction) == 0.0:
        return set()
    _, val = train_test_split(uids, test_size=float(val_fraction), random_state=int(seed))
    return set(val.tolist())


def split_series(series: pd.DataFrame, val_fraction: float = 0.1, seed: int = 42,
                 group_by_patient: bool = False, method: str = "ppihd") -> pd.Series:
    """Assign each series to ``train`` or ``val``: a seeded random ``val_fraction`` of the series
    (paper: 10 % of the series, series-consistent; seed 42 as the reference). ``series`` has one row per series
    with columns ``series_id``, (for ``group_by_patient``) ``patient_id`` and (for ``method="reference"``)
    ``series_uid``. With ``group_by_patient`` whole patients are drawn until the validation series reach the
    target count, so no patient is in both splits.

    ``method`` (``Data.split``): ``ppihd`` = ``round(val_fraction * n)`` series from a numpy permutation of the
    sorted series ids; ``reference`` = :func:`reference_split` (the authors' exact split; series sharing a
    SeriesInstanceUID go together, as in their table).

    Returns a Series indexed by ``series_id`` with values "train" / "val". Deterministic for a given
    seed and set of series (input order does not matter).
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"Data.val_fraction must be in [0, 1), got {val_fraction}")
    if "series_id" not in series.columns:
        raise ValueError("split_series needs a 'series_id' column")
    if method not in SPLIT_METHODS:
        raise ValueError(f"Data.split must be one of {SPLIT_METHODS}, got {method!r}")
    if method == "reference":
        if group_by_patient:
            raise ValueError("Data.split: reference is a series-level split; it cannot be combined with "
                             "Data.group_by_patient: true")
        if "series_uid" not in series.columns:
            raise ValueError("split_series(method='reference') needs a 'series_uid' column")
        tab = series.drop_duplicates("series_id").sort_values("series_id")
        val = reference_split(tab["series_uid"].astype(str).tolist(), val_fraction, seed)
        flags = np.where(tab["series_uid"].astype(str).isin(val), "val", "train")
        return pd.Series(flags, index=tab["series_id"].to_numpy(), name="split", dtype=object)
    tab = series.drop_duplicates("series_id").sort_values("series_id").reset_index(drop=True)
    n = len(tab)
    out = pd.Series("train", index=tab["series_id"].to_numpy(), name="split", dtype=object)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    if n_val == 0:
        return out
    rng = np.random.default_rng(seed)
    if not group_by_patient:
        pick = rng.permutation(n)[:n_val]
        out.iloc[np.sort(pick)] = "val"
        return out
    if "patient_id" not in tab.columns:
        raise ValueError("split_series(group_by_patient=True) needs a 'patient_id' column")
    patients = np.array(sorted(tab["patient_id"].astype(str).unique()))
    per_patient = tab.groupby(tab["patient_id"].astype(str))["series_id"].apply(list)
    chosen: List[str] = []
    for p in patients[rng.permutation(len(patients))]:
        if len(chosen) >= n_val:
            break
        if len(chosen) + len(per_patient[p]) >= n and chosen:  # never empty the train split
            continue
        chosen.extend(per_patient[p])
    out.loc[chosen] = "val"
    return out
