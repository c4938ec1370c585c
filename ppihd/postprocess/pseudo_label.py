"""FixMatch pseudo-label selection (paper §Enhanced modeling; docs/reproduce.md).

Confidence ``s = max(p, 1 - p)`` per slice and class (eq. 2). A series is kept only if ``s > tau_s`` for ALL
its slices and all six classes; its pseudo-labels are ``p > tau_p`` (``tau_p = 0.5`` in the paper).

Input: one or more ``predictions.csv`` (tools/infer.py: ``patient_id, study_uid, series_uid, sop_uid,
slice_idx, position`` + the six probabilities in ``ppihd.LABELS`` order); several files are averaged (the
"ensemble results" of the paper: equal weights, or eq. 3's rank weights) and must cover the same slices.

Output ``pseudo.csv`` (the file ``Data.pseudo_label_csv`` points to), one row per kept slice::

    patient_id, study_uid, series_uid, sop_uid, slice_idx, position,
    epidural, intraparenchymal, intraventricular, subarachnoid, subdural, any   (0/1 ints),
    confidence   (min over the six classes of max(p, 1 - p) of the averaged prediction)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ppihd import LABELS
from ppihd.postprocess.tables import PostprocessError, read_predictions, read_slice_csv
from ppihd.utils.fileio import atomic_path

SERIES_KEY = ("patient_id", "study_uid", "series_uid")
META_COLUMNS = ("patient_id", "study_uid", "series_uid", "sop_uid", "slice_idx", "position")
PSEUDO_COLUMNS = META_COLUMNS + tuple(LABELS) + ("confidence",)


class PseudoLabelError(PostprocessError):
    """Prediction files that cannot be used for pseudo-labelling (missing columns, mismatched slices)."""


@dataclass
class Selection:
    """Result of :func:`select_confident_series`."""

    pseudo: pd.DataFrame                      # kept slices, PSEUDO_COLUMNS
    n_series: int                             # series in the input
    n_slices: int
    kept_series: int
    kept_slices: int
    dropped_examples: List[Tuple[str, float]] = field(default_factory=list)  # (series_uid, min confidence)


def read_for_pseudo_labels(path: str) -> pd.DataFrame:
    """A ``predictions.csv`` (:func:`ppihd.postprocess.tables.read_predictions`) of single-frame slices: a
    pseudo-label is matched to its cached slice by ``sop_uid``, so frames of multi-frame files are refused."""
    df = read_predictions(path)
    if "frame" in df.columns and df["frame"].notna().any():
        raise PseudoLabelError(f"{path}: slices that are frames of multi-frame files (column frame); "
                               "pseudo-labelling takes single-frame slices only (one sop_uid per slice)")
    return df


def average_predictions(frames: Sequence[pd.DataFrame], paths: Optional[Sequence[str]] = None,
                        weights: Optional[Sequence[float]] = None) -> pd.DataFrame:
    """Mean of the six probabilities over several prediction tables of the SAME slices (matched by sop_uid);
    with ``weights`` (one per table, e.g. eq. 3's from :func:`ppihd.postprocess.ensemble.rank_weights`; divided by
    their sum) the weighted mean, i.e. the ensemble's prediction.

    The first table's row order and metadata are kept. Raises :class:`PseudoLabelError` naming the file
    whose slices differ (counts and a few example sop_uids), or on weights that do not fit.
    """
    paths = list(paths) if paths is not None else [f"input {i + 1}" for i in range(len(frames))]
    if weights is None:
        w = np.full(len(frames), 1.0 / len(frames))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(frames),) or np.any(w < 0) or not w.sum() > 0:
            raise PseudoLabelError(f"{len(frames)} prediction files need {len(frames)} non-negative weights "
                                   f"with a positive sum, got {list(weights)}")
        w = w / w.sum()
    base = frames[0].set_index("sop_uid", drop=False)
    acc = w[0] * base[list(LABELS)].to_numpy(dtype=np.float64)
    for df, p, wi in zip(frames[1:], paths[1:], w[1:]):
        other = df.set_index("sop_uid")
        missing = base.index.difference(other.index, sort=False)
        extra = other.index.difference(base.index, sort=False)
        if len(missing) or len(extra):
            raise PseudoLabelError(
                f"{p}: {len(other)} slices vs {len(base)} in {paths[0]}; {len(missing)} missing "
                f"(e.g. {', '.join(map(str, missing[:3]))}), {len(extra)} extra (e.g. {', '.join(map(str, extra[:3]))})")
        acc += wi * other.reindex(base.index)[list(LABELS)].to_numpy(dtype=np.float64)
    out = base.reset_index(drop=True).copy()
    out[list(LABELS)] = acc
    return out


def confidence(probs: np.ndarray) -> np.ndarray:
    """Eq. 2: ``s = max(p, 1 - p)`` elementwise (any shape)."""
    p = np.asarray(probs, dtype=np.float64)
    return np.maximum(p, 1.0 - p)


def select_confident_series(pred: pd.DataFrame, tau_s: float = 0.95, tau_p: float = 0.5) -> Selection:
    """Keep series whose every slice and class has ``s > tau_s``; pseudo-label = ``p > tau_p``.

    Args:
        pred: per-slice predictions (``SERIES_KEY`` + ``sop_uid`` + six probabilities).
    Returns:
        :class:`Selection` with the kept slices (0/1 labels, ordered by series then ``slice_idx``).
    """
    if not 0.5 <= tau_s < 1.0:
        raise PseudoLabelError(f"PseudoLabel.tau_s must be in [0.5, 1) (max(p, 1-p) >= 0.5), got {tau_s}")
    if not 0.0 < tau_p < 1.0:
        raise PseudoLabelError(f"PseudoLabel.tau_p must be in (0, 1), got {tau_p}")
    df = pred.copy()
    probs = df[list(LABELS)].to_numpy(dtype=np.float64)
    df["confidence"] = confidence(probs).min(axis=1)
    series_conf = df.groupby(list(SERIES_KEY), sort=False)["confidence"].transform("min")
    keep = series_conf > tau_s
    kept = df[keep].copy()
    kept[list(LABELS)] = (kept[list(LABELS)].to_numpy(dtype=np.float64) > tau_p).astype(np.int64)
    kept = kept.sort_values(list(SERIES_KEY) + ["slice_idx"], kind="stable")
    per_series = df.groupby(list(SERIES_KEY), sort=False)["confidence"].min()
    dropped = per_series[per_series <= tau_s].sort_values(ascending=False)
    return Selection(
        pseudo=kept[list(PSEUDO_COLUMNS)].reset_index(drop=True),
        n_series=int(len(per_series)), n_slices=int(len(df)),
        kept_series=int((per_series > tau_s).sum()), kept_slices=int(keep.sum()),
        dropped_examples=[(str(k[2]), float(v)) for k, v in dropped.iloc[:5].items()])


def train_label_rates(label_csv: str) -> Tuple[int, Dict[str, float]]:
    """Positive rate per class of an RSNA ``stage_2_train.csv`` (``ID,Label`` long format, duplicates dropped).

    Returns ``(n_images, {label: rate})``.
    """
    if not os.path.isfile(label_csv):
        raise PseudoLabelError(f"{label_csv}: training label file not found")
    df = pd.read_csv(label_csv, dtype={"ID": str})
    if not {"ID", "Label"} <= set(df.columns):
        raise PseudoLabelError(f"{label_csv}: expected columns ID,Label, found {', '.join(df.columns)}")
    df = df.drop_duplicates("ID")
    parts = df["ID"].str.rsplit("_", n=1, expand=True)
    df = df.assign(image=parts[0], label=parts[1])
    df = df[df["label"].isin(LABELS)]
    wide = df.pivot(index="image", columns="label", values="Label")
    return int(len(wide)), {lab: float(wide[lab].mean()) if lab in wide else float("nan") for lab in LABELS}


def label_distribution_table(pseudo: pd.DataFrame, train_rates: Optional[Dict[str, float]] = None) -> str:
    """A text table: per class, pseudo positives, pseudo rate, and the training-set rate when known."""
    n = max(len(pseudo), 1)
    lines = [f"{'label':<18}{'pseudo +':>10}{'pseudo rate':>13}" + (f"{'train rate':>12}" if train_rates else "")]
    for lab in LABELS:
        pos = int(pseudo[lab].sum()) if len(pseudo) else 0
        line = f"{lab:<18}{pos:>10d}{pos / n:>13.4f}"
        if train_rates:
            line += f"{train_rates[lab]:>12.4f}"
        lines.append(line)
    return "\n".join(lines)


def write_pseudo_csv(pseudo: pd.DataFrame, path: str) -> str:
    """Write ``pseudo.csv`` atomically (columns :data:`PSEUDO_COLUMNS`). Returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        pseudo.to_csv(tmp, index=False, float_format="%.6g")
    return path


def read_pseudo_csv(path: str) -> pd.DataFrame:
    """Read a ``pseudo.csv`` written by :func:`write_pseudo_csv`; checks columns and 0/1 labels."""
    df = read_slice_csv(
        path, f"Data.pseudo_label_csv: {path} not found (make it with tools/pseudo_label.py)",
        f" (expected {', '.join(PSEUDO_COLUMNS)})")
    vals = df[list(LABELS)].to_numpy()
    if not np.isin(vals, (0, 1)).all():
        raise PseudoLabelError(f"{path}: label columns must be 0/1 pseudo-labels")
    return df
