"""Pictures of a validation run (``tools/eval.py``, docs/training.md "Validation"), from the per-slice
predictions of :func:`ppihd.engine.evaluator.evaluate` (head 2, the fully labelled slices that are scored):

- ``roc_pr.png``: per class ROC curve (AUC in the legend) and precision-recall curve (average precision, and
  the class's prevalence as the chance level);
- ``calibration.png``: reliability diagram: per class the fraction of positive slices against the mean
  predicted probability in ``n_bins`` equal-width bins (only non-empty bins drawn), the diagonal, and the
  number of slices per bin;
- ``per_class.png``: the per-class table (slices, positives, log loss, AUC, AP, ECE, sensitivity and
  specificity at p > 0.5);
- ``curves.json``: the numbers drawn, per class ``roc`` (``fpr``, ``tpr``, ``thresholds``: the points of
  ``sklearn.metrics.roc_curve(drop_intermediate=False)``, the first threshold +inf stored as null), ``pr``
  (``precision``, ``recall``, ``thresholds`` in the order of ``sklearn.metrics.precision_recall_curve``),
  ``average_precision``, ``calibration`` (every bin: ``lower``, ``upper``, ``count``, ``mean_predicted``,
  ``fraction_positive``; bin k holds ``lower < p <= upper``, the first bin also p = 0 — the binning of
  ``sklearn.calibration.calibration_curve(strategy="uniform")``) and ``ece`` (count-weighted mean of
  |fraction positive - mean predicted| over the bins).

A class whose scored slices are all positive or all negative has no ROC / PR curve (``null`` and a reason).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ppihd import LABELS
from ppihd.engine.report import LABEL_COLORS
from ppihd.metric import roc_auc, roc_points
from ppihd.utils.fileio import atomic_path, save_figure


def pr_points(y: Any, p: Any) -> Dict[str, List[float]]:
    """Precision and recall of calling ``p >= t`` positive for every distinct score ``t``, in the order of
    ``sklearn.metrics.precision_recall_curve``: thresholds ascending, then the point (recall 0, precision 1)."""
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.nonzero(np.diff(ps))[0], ps.size - 1]
    tp = np.cumsum(ys)[last].astype(np.float64)
    called = (last + 1).astype(np.float64)
    precision = tp / called
    recall = tp / y.sum()
    return {"precision": np.r_[precision[::-1], 1.0].tolist(), "recall": np.r_[recall[::-1], 0.0].tolist(),
            "thresholds": ps[last][::-1].tolist()}


def average_precision(pr: Mapping[str, List[float]]) -> float:
    """Sum over the thresholds of (recall step) x precision (sklearn's ``average_precision_score``)."""
    r = np.asarray(pr["recall"])
    pre = np.asarray(pr["precision"])
    return float(-np.sum(np.diff(r) * pre[:-1]))


def calibration_bins(y: Any, p: Any, n_bins: int = 10) -> List[Dict[str, Any]]:
    """Equal-width bins on [0, 1]; bin k holds ``edge_k < p <= edge_(k+1)`` (bin 0 also p = 0)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    k = (p[:, None] > edges[None, 1:-1]).sum(axis=1)  # interior edges strictly below p
    out = []
    for b in range(int(n_bins)):
        sel = k == b
        n = int(sel.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                    "mean_predicted": float(p[sel].mean()) if n else None,
                    "fraction_positive": float(y[sel].mean()) if n else None})
    return out


def _scored(preds: Mapping[str, Any], key: str = "prob2"):
    mask = np.asarray(preds["label_mask"])
    keep = mask.min(axis=1) > 0 if len(mask) else np.zeros(0, bool)
    return np.asarray(preds["labels"])[keep], np.asarray(preds[key], dtype=np.float64)[keep]


def eval_curves(preds: Mapping[str, Any], n_bins: int = 10, threshold: float = 0.5) -> Dict[str, Any]:
    """The numbers of ``curves.json`` (module docstring) for head 2 of ``preds``."""
    y_all, p_all = _scored(preds)
    classes: Dict[str, Any] = {}
    for c, lab in enumerate(LABELS):
        y, p = y_all[:, c] > 0.5, p_all[:, c]
        n_pos = int(y.sum())
        res: Dict[str, Any] = {"n": int(len(y)), "positives": n_pos, "roc": None, "auc": None, "pr": None,
                               "average_precision": None, "reason": None}
        if 0 < n_pos < len(y):
            fpr, tpr, thr = roc_points(y, p)
            res["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                          "thresholds": [None if not np.isfinite(t) else float(t) for t in thr]}
            res["auc"] = float(roc_auc(y, p))
            res["pr"] = pr_points(y, p)
            res["average_precision"] = average_precision(res["pr"])
        else:
            res["reason"] = "only one label value among the scored slices" if len(y) else "no scored slices"
        bins = calibration_bins(y, p, n_bins)
        res["calibration"] = bins
        res["ece"] = (float(sum(b["count"] * abs(b["fraction_positive"] - b["mean_predicted"])
                                for b in bins if b["count"]) / len(y)) if len(y) else None)
        call = p > threshold
        res["sensitivity"] = float(call[y].mean()) if n_pos else None
        res["specificity"] = float((~call[~y]).mean()) if n_pos < len(y) else None
        classes[lab] = res
    return {"head": "head2", "n_slices": int(len(y_all)), "n_bins": int(n_bins), "threshold": float(threshold),
            "classes": classes}


def _fig():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def write_eval_plots(preds: Mapping[str, Any], out_dir: str, metrics: Optional[Mapping[str, Any]] = None,
                     n_bins: int = 10, threshold: float = 0.5) -> List[str]:
    """Write ``curves.json``, ``roc_pr.png``, ``calibration.png`` and ``per_class.png`` to ``out_dir``
    (``metrics``: the ``metrics.json`` dict, for the log loss column). Returns the paths."""
    plt = _fig()
    cur = eval_curves(preds, n_bins, threshold)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    p = os.path.join(out_dir, "curves.json")
    with atomic_path(p) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(cur, f, indent=1)
    paths.append(p)
    title = f"{cur['n_slices']} scored slices (head 2)"
    if metrics and metrics.get("model"):   # what the model was trained on, on every picture
        title = f"{metrics['model']}\n{title}"

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5.6), dpi=100)
    for c, lab in enumerate(LABELS):
        r = cur["classes"][lab]
        kw = dict(color=LABEL_COLORS[c], lw=2.6 if lab == "any" else 1.5)
        if r["roc"] is None:
            continue
        a1.plot(r["roc"]["fpr"], r["roc"]["tpr"], label=f"{lab}: AUC {r['auc']:.3f} (n+ {r['positives']})", **kw)
        a2.step(r["pr"]["recall"], r["pr"]["precision"], where="post",
                label=f"{lab}: AP {r['average_precision']:.3f}", **kw)
        a2.axhline(r["positives"] / r["n"], color=LABEL_COLORS[c], ls=":", lw=0.8)
    a1.plot([0, 1], [0, 1], color="#999999", ls="--", lw=1)
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(-0.01, 1.01),
           ylim=(-0.01, 1.01))
    a2.set(xlabel="recall", ylabel="precision", title="precision-recall (dotted: prevalence)", xlim=(-0.01, 1.01),
           ylim=(-0.01, 1.01))
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="lower right" if a is a1 else "lower left")
    fig.suptitle(title)
    paths.append(save_figure(fig, os.path.join(out_dir, "roc_pr.png")))

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 8.5), dpi=100, height_ratios=[3, 1.2], sharex=True)
    centers = [(b["lower"] + b["upper"]) / 2 for b in cur["classes"][LABELS[0]]["calibration"]]
    width = 1.0 / n_bins / (len(LABELS) + 1)
    for c, lab in enumerate(LABELS):
        bins = [b for b in cur["classes"][lab]["calibration"] if b["count"]]
        a1.plot([b["mean_predicted"] for b in bins], [b["fraction_positive"] for b in bins], marker="o", ms=4,
                color=LABEL_COLORS[c], lw=2.6 if lab == "any" else 1.4,
                label=f"{lab} (ECE {cur['classes'][lab]['ece']:.3f})" if cur["classes"][lab]["ece"] is not None
                else lab)
        a2.bar(np.asarray(centers) + (c - len(LABELS) / 2) * width,
               [b["count"] for b in cur["classes"][lab]["calibration"]], width=width, color=LABEL_COLORS[c])
    a1.plot([0, 1], [0, 1], color="#999999", ls="--", lw=1, label="perfect calibration")
    a1.set(ylabel="fraction of positive slices", title=f"reliability ({n_bins} bins) - {title}", xlim=(0, 1),
           ylim=(-0.01, 1.01))
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8, loc="upper left")
    a2.set(xlabel="mean predicted probability", ylabel="slices per bin")
    a2.set_yscale("symlog")
    a2.grid(alpha=0.3)
    paths.append(save_figure(fig, os.path.join(out_dir, "calibration.png")))

    ll = ((metrics or {}).get("head2") or {}).get("log_loss") or {}
    fmt = (lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}")
    cols = ["class", "slices", "positives", "log loss", "AUC", "AP", "ECE", f"sens @ >{threshold:g}",
            f"spec @ >{threshold:g}"]
    cells = [[lab, str(r["n"]), str(r["positives"]), fmt(ll.get(lab), 4), fmt(r["auc"]), fmt(r["average_precision"]),
              fmt(r["ece"]), fmt(r["sensitivity"]), fmt(r["specificity"])]
             for lab, r in cur["classes"].items()]
    fig, ax = plt.subplots(figsize=(10.5, 0.45 * (len(cells) + 2)), dpi=100)
    ax.axis("off")
    t = ax.table(cellText=cells, colLabels=cols, loc="center", cellLoc="center",
                 colWidths=[0.17] + [0.105] * (len(cols) - 1))
    t.auto_set_font_size(False)
    t.set_fontsize(9.5)
    t.scale(1, 1.35)
    wll = ((metrics or {}).get("head2") or {}).get("weighted_log_loss")
    ax.set_title(title + (f" | weighted log loss {wll:.5f}" if wll is not None else ""), fontsize=10)
    paths.append(save_figure(fig, os.path.join(out_dir, "per_class.png")))
    return paths
