"""The RSNA competition metric (docs/numbers.md, metric) and per-class diagnostics.

Weighted multi-label log loss: for image i, ``L_i = sum_c w_c * ll_ic / sum_c w_c`` with
``ll_ic = -(y log p + (1 - y) log(1 - p))`` and ``w = (1, 1, 1, 1, 1, 2)``; the score is the mean of ``L_i`` over
images. Probabilities are clipped to ``[eps, 1 - eps]`` first; ``eps = Metric.eps = 1e-7`` by default (1 - 1e-7 is
still distinct from 1 in float32, so float32 predictions are not rounded onto the clip; the reference code did not
clip at all, which gives inf on a confident mistake). This equals ``sklearn.metrics.log_loss`` on the N*6 flattened
binary rows with per-row sample weights ``w_c``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import numpy as np

from .. import LABEL_WEIGHTS, LABELS


def _check(y_true: Any, y_prob: Any) -> tuple:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"metric: y_true and y_prob must both be [N, C], got {y.shape} and {p.shape}")
    if y.shape[0] == 0:
        raise ValueError("metric: no images to score (N = 0)")
    if not np.all(np.isfinite(p)):
        raise ValueError("metric: y_prob contains NaN or inf")
    return y, p


def elementwise_log_loss(y_true: Any, y_prob: Any, eps: float = 1e-7) -> np.ndarray:
    """``-(y log p + (1 - y) log(1 - p))`` with p clipped to [eps, 1 - eps]; [N, C] float64."""
    y, p = _check(y_true, y_prob)
    p = np.clip(p, eps, 1.0 - eps)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def weighted_log_loss(y_true: Any, y_prob: Any, weights: Sequence[float] = LABEL_WEIGHTS,
                      eps: float = 1e-7) -> float:
    """Competition score: mean over images of the class-weighted mean log loss. ``y_*``: [N, 6]."""
    ll = elementwise_log_loss(y_true, y_prob, eps)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (ll.shape[1],):
        raise ValueError(f"metric: {len(w)} class weights for {ll.shape[1]} classes")
    return float(((ll * w).sum(axis=1) / w.sum()).mean())


def per_class_log_loss(y_true: Any, y_prob: Any, eps: float = 1e-7) -> np.ndarray:
    """Mean log loss of each class over images: [C]."""
    return elementwise_log_loss(y_true, y_prob, eps).mean(axis=0)


def per_class_auc(y_true: Any, y_prob: Any) -> np.ndarray:
    """ROC-AUC per class (sklearn ``roc_auc_score``); NaN where a class has a single label value. [C]."""
    from sklearn.metrics import roc_auc_score

    y, p = _check(y_true, y_prob)
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        yc = y[:, c] > 0.5
        if yc.any() and not yc.all():
            out[c] = roc_auc_score(yc, p[:, c])
    return out


def prior_probabilities(train_labels: Any) -> np.ndarray:
    """Each class's positive rate on the training labels [N, C] (NaN rows ignored): the constant-prior model."""
    y = np.asarray(train_labels, dtype=np.float64)
    return np.nanmean(y, axis=0)


def compute_metrics(y_true: Any, y_prob: Any, weights: Sequence[float] = LABEL_WEIGHTS, eps: float = 1e-7,
                    labels: Sequence[str] = LABELS) -> Dict[str, Any]:
    """``{"weighted_log_loss", "log_loss": {label: v}, "auc": {label: v or None}, "mean_auc", "n_images"}``."""
    wll = weighted_log_loss(y_true, y_prob, weights, eps)
    pcl = per_class_log_loss(y_true, y_prob, eps)
    auc = per_class_auc(y_true, y_prob)
    finite = auc[np.isfinite(auc)]
    return {
        "weighted_log_loss": wll,
        "log_loss": {n: float(v) for n, v in zip(labels, pcl)},
        "auc": {n: (None if math.isnan(v) else float(v)) for n, v in zip(labels, auc)},
        "mean_auc": float(finite.mean()) if finite.size else None,
        "n_images": int(np.asarray(y_true).shape[0]),
        "eps": float(eps),
    }


