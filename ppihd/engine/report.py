"""Per-series report: ``series/<series_id>.json`` (summary) and ``series/<series_id>.png`` (picture).

The picture is meant to be read at a glance by a radiologist: the six probabilities along the slice axis
(slice 0 = first slice in the series order, i.e. lowest position along the slice normal), the decision
threshold as a dashed line, and a row of key slices in the brain window (WL 40 / WW 80) whose positions
are marked on the curves.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ppihd import LABELS
from ppihd.utils.fileio import atomic_path, save_figure

#: One colour per label (colour-blind-friendly palette; ``any`` is black and drawn thicker).
LABEL_COLORS = ("#E69F00", "#D55E00", "#0072B2", "#009E73", "#CC79A7", "#000000")


def series_summary(meta: Dict[str, Any], probs: np.ndarray, threshold: float,
                   positions: Optional[Sequence[Optional[float]]] = None,
                   sop_uids: Optional[Sequence[str]] = None,
                   warnings: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """JSON-ready summary of one series.

    Args:
        meta: ``patient_id, study_uid, series_uid, series_id`` (+ anything else to record).
        probs: float ``[S, 6]`` probabilities in ``ppihd.LABELS`` order.
        threshold: slices whose probability is above it (per class) are listed.
    Returns:
        ``{..meta, num_slices, threshold, max: {label: p}, argmax_slice: {label: i},
        positive: {label: bool}, slices_above_threshold: {label: [slice_idx, ...]},
        slices: [{slice_idx, sop_uid, position, labels: [labels above threshold]}] (only flagged slices)}``.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(LABELS))
    s = probs.shape[0]
    out: Dict[str, Any] = dict(meta)
    out["num_slices"] = int(s)
    out["threshold"] = float(threshold)
    out["max"] = {lab: (round(float(probs[:, c].max()), 6) if s else None) for c, lab in enumerate(LABELS)}
    out["argmax_slice"] = {lab: (int(probs[:, c].argmax()) if s else None) for c, lab in enumerate(LABELS)}
    above = probs > threshold
    out["positive"] = {lab: bool(above[:, c].any()) for c, lab in enumerate(LABELS)}
    out["slices_above_threshold"] = {lab: [int(i) for i in np.nonzero(above[:, c])[0]]
                                     for c, lab in enumerate(LABELS)}
    flagged = []
    for i in np.nonzero(above.any(axis=1))[0]:
        item: Dict[str, Any] = {"slice_idx": int(i),
                                "labels": [lab for c, lab in enumerate(LABELS) if above[i, c]],
                                "max_prob": round(float(probs[i].max()), 6)}
        if sop_uids is not None:
            item["sop_uid"] = str(sop_uids[i])
        if positions is not None and positions[i] is not None:
            item["position"] = round(float(positions[i]), 4)
        flagged.append(item)
    out["slices"] = flagged
    if warnings:
        out["warnings"] = [str(w) for w in warnings]
    return out


def write_summary(path: str, summary: Dict[str, Any]) -> str:
    """Write the summary JSON atomically. Returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return path


def pick_key_slices(probs: np.ndarray, k: int, min_gap: Optional[int] = None, threshold: float = 0.5) -> List[int]:
    """Indices of up to ``k`` key slices, sorted: the most suspicious slices (highest max probability over
    the six classes, only those above ``threshold``), at least ``min_gap`` apart (default ``S // (2k)``) so
    they show different levels; the remaining places are filled with evenly spaced slices. ``probs``: ``[S, 6]``."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(LABELS))
    s = probs.shape[0]
    k = max(0, min(int(k), s))
    if k == 0:
        return []
    gap = max(1, s // (2 * k)) if min_gap is None else max(1, int(min_gap))
    score = probs.max(axis=1)
    chosen: List[int] = []
    for i in np.argsort(-score, kind="stable"):
        if len(chosen) >= k or score[i] <= threshold:
            break
        if all(abs(int(i) - j) >= gap for j in chosen):
            chosen.append(int(i))
    for i in np.linspace(0, s - 1, num=k + 2)[1:-1].round().astype(int):
        if len(chosen) >= k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return sorted(chosen[:k])


def plot_series(path: str, probs: np.ndarray, brain: Optional[np.ndarray] = None, title: str = "",
                threshold: float = 0.5, key_slices: int = 4,
                positions: Optional[Sequence[Optional[float]]] = None, note: str = "") -> str:
    """Save the per-series PNG.

    Args:
        path: output ``.png``.
        probs: float ``[S, 6]`` probabilities in ``ppihd.LABELS`` order.
        brain: uint8 ``[S, H, W]`` brain-window images (channel 0 of the model input), or None.
        title: first title line (patient / series).
        threshold: drawn as a dashed line; flagged slices are shaded.
        key_slices: number of thumbnails shown under the curves.
        positions: mm along the slice normal per slice (used in thumbnail captions).
        note: a line in red above the title (what the model was trained on).
    Returns:
        ``path``.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(LABELS))
    s = probs.shape[0]
    keys = pick_key_slices(probs, key_slices, threshold=threshold) if brain is not None else []
    ncols = max(1, len(keys))
    fig = plt.figure(figsize=(max(10.0, 2.6 * ncols), 7.2 if keys else 4.2), dpi=100)
    gs = fig.add_gridspec(2 if keys else 1, ncols, height_ratios=[1.15, 1.0] if keys else [1.0],
                          hspace=0.35, wspace=0.06)
    ax = fig.add_subplot(gs[0, :])
    x = np.arange(s)
    above_any = (probs > threshold).any(axis=1)
    for i in np.nonzero(above_any)[0]:
        ax.axvspan(i - 0.5, i + 0.5, color="#ffd6d6", zorder=0, lw=0)
    for c, lab in enumerate(LABELS):
        is_any = lab == "any"
        ax.plot(x, probs[:, c], color=LABEL_COLORS[c], lw=2.6 if is_any else 1.6,
                ls="-" if is_any else "-", marker="o" if s <= 80 else None, ms=3,
                label=f"{lab} (max {probs[:, c].max():.2f})" if s else lab, zorder=3 if is_any else 2)
    ax.axhline(threshold, color="#cc0000", ls="--", lw=1.2, label=f"threshold {threshold:g}", zorder=1)
    for j, i in enumerate(keys):
        ax.axvline(i, color="#555555", ls=":", lw=1.0, zorder=1)
        ax.annotate(chr(ord("A") + j), (i, 1.02), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=10, fontweight="bold", color="#333333")
    ax.set_xlim(-0.5, max(s - 0.5, 0.5))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("slice (0 = lowest position along the slice normal)")
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.005, 0.5), fontsize=8.5, frameon=False)
    verdict = ", ".join(lab for c, lab in enumerate(LABELS) if lab != "any" and (probs[:, c] > threshold).any())
    any_max = probs[:, -1].max() if s else 0.0
    line2 = (f"{s} slices | max P(any) = {any_max:.2f} | "
             + (f"above threshold: {verdict}" if verdict else
                ("any above threshold" if any_max > threshold else "no class above threshold")))
    fig.suptitle(f"{title}\n{line2}", fontsize=11, y=0.995, ha="center")
    if note:
        fig.text(0.5, 1.04, note, ha="center", va="bottom", fontsize=11, color="#b00000", fontweight="bold")
    for j, i in enumerate(keys):
        axi = fig.add_subplot(gs[1, j])
        axi.imshow(brain[i], cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        axi.set_xticks([])
        axi.set_yticks([])
        flagged = bool(above_any[i])
        for sp in axi.spines.values():
            sp.set_edgecolor("#cc0000" if flagged else "#888888")
            sp.set_linewidth(3 if flagged else 1)
        pos = ""
        if positions is not None and i < len(positions) and positions[i] is not None:
            pos = f" @ {float(positions[i]):.1f} mm"
        top = int(np.argmax(probs[i, :-1]))
        axi.set_title(f"{chr(ord('A') + j)}: slice {i}{pos}\nany {probs[i, -1]:.2f} | "
                      f"{LABELS[top][:8]} {probs[i, top]:.2f}", fontsize=9,
                      color="#cc0000" if flagged else "black")
    return save_figure(fig, path)
