"""Kaggle submission IDs and the readers of per-slice prediction tables (one definition each).

- :func:`submission_id`: ``ID_<sop>[-<frame>]``, the image part of a Kaggle row ID ``ID_<sop>_<label>``;
- :func:`id_label_table`: a submission (``ID,Label``) or a ``predictions.csv`` (``sop_uid`` + six labels) as
  ``ID,Label`` rows (used by the ensemble and by :mod:`ppihd.metric.submission`);
- :func:`read_predictions`: a ``predictions.csv`` (tools/infer.py, deploy/python/predict.py) with its UIDs as
  strings, checked.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import pandas as pd

from ppihd import LABELS

#: columns read as strings (UIDs, ids, paths), never as numbers
STRING_COLUMNS = ("patient_id", "study_uid", "series_uid", "series_id", "sop_uid", "path")


class PostprocessError(ValueError):
    """A prediction, submission or pseudo-label file that cannot be used (the message names the file)."""


def submission_id(sop_uid: Any, frame: Any = None) -> str:
    """Kaggle image ID for a SOPInstanceUID (and the 1-based ``frame`` number of a multi-frame file's slice).

    RSNA files already carry ``ID_<hex>`` as their SOPInstanceUID, which is kept as is (never ``ID_ID_``).
    Any other UID gets the ``ID_`` prefix: ``1.2.3`` -> ``ID_1.2.3``; a frame adds ``-<frame>``:
    ``ID_1.2.3-7``. DICOM UIDs contain only digits and dots, so ``ID_<uid>[-<frame>]_<subtype>`` still splits
    unambiguously at its last ``_``. ``frame`` None, ``""`` or NaN (an empty ``frame`` cell) means no frame.
    """
    sop = str(sop_uid).strip()
    sid = sop if sop.startswith("ID_") else f"ID_{sop}"
    if frame is None or str(frame).strip() in ("", "nan"):
        return sid
    return f"{sid}-{int(float(frame))}"


def id_label_table(df: pd.DataFrame) -> Optional[pd.DataFrame]:
    """``ID,Label`` rows of a submission table (as they are) or of a ``predictions.csv`` table (six rows per
    slice, :data:`ppihd.LABELS` order, IDs from :func:`submission_id` with the ``frame`` column when present).
    None when ``df`` has neither set of columns."""
    cols = set(df.columns)
    if {"ID", "Label"} <= cols:
        return pd.DataFrame({"ID": df["ID"].astype(str).to_numpy(), "Label": df["Label"].to_numpy()})
    if {"sop_uid", *LABELS} <= cols:
        frames = df["frame"] if "frame" in cols else [None] * len(df)
        ids = [f"{submission_id(sop, fr)}_{lab}" for sop, fr in zip(df["sop_uid"], frames) for lab in LABELS]
        return pd.DataFrame({"ID": ids, "Label": df[list(LABELS)].to_numpy(dtype=np.float64).reshape(-1)})
    return None


def read_slice_csv(path: str, not_found: str, missing_hint: str) -> pd.DataFrame:
    """Read a per-slice CSV with its :data:`STRING_COLUMNS` as strings; raise :class:`PostprocessError` with
    ``not_found`` if there is no file, or naming the missing ``series_uid`` / ``sop_uid`` / label columns
    (``missing_hint`` ends that message)."""
    if not os.path.isfile(path):
        raise PostprocessError(not_found)
    df = pd.read_csv(path, dtype={c: str for c in STRING_COLUMNS})
    missing = [c for c in ("series_uid", "sop_uid") + tuple(LABELS) if c not in df.columns]
    if missing:
        raise PostprocessError(f"{path}: missing columns {', '.join(missing)}{missing_hint}")
    return df


def read_predictions(path: str) -> pd.DataFrame:
    """Read a ``predictions.csv`` (UIDs as strings) and check it: the columns, one row per slice (``sop_uid``,
    or ``sop_uid`` + ``frame`` for the frames of multi-frame files) and probabilities in [0, 1].

    Missing metadata columns are filled: ``patient_id`` / ``study_uid`` empty, ``slice_idx`` the row's place in
    its series, ``position`` NaN. Raises :class:`PostprocessError` naming the file and the problem.
    """
    df = read_slice_csv(
        path, f"{path}: file not found",
        "; expected the per-slice predictions.csv written by tools/infer.py or deploy/python/predict.py "
        "(a submission ID,Label file has no series information)")
    for c in ("patient_id", "study_uid"):
        if c not in df.columns:
            df[c] = ""
    if "slice_idx" not in df.columns:
        df["slice_idx"] = df.groupby("series_uid").cumcount()
    if "position" not in df.columns:
        df["position"] = np.nan
    df[["patient_id", "study_uid"]] = df[["patient_id", "study_uid"]].fillna("")
    dup = df["sop_uid"][df.duplicated([c for c in ("sop_uid", "frame") if c in df.columns])]
    if len(dup):
        raise PostprocessError(f"{path}: {len(dup)} duplicate sop_uid rows, e.g. {', '.join(dup.iloc[:3])}")
    probs = df[list(LABELS)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
    if bad.any():
        rows = np.where(bad.any(axis=1))[0][:3]
        raise PostprocessError(f"{path}: {int(bad.any(axis=1).sum())} rows with probabilities missing or outside "
                               f"[0, 1], e.g. sop_uid {', '.join(df['sop_uid'].iloc[rows])}")
    return df
