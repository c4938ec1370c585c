"""Rank-weighted ensemble of submissions and the tau_h / tau_l binarisation (paper eq. 3; docs/reproduce.md).

Paper rule (eq. 3): models are split into groups (trained with / without pseudo-labels). Between groups,
``w_g = 1 - R_g / sum(R)`` with ``R_g`` the sum of the ranks of the group's members; inside a group the
same formula on the members' own ranks. With the paper's example (ranks 1, 2 pseudo; 33 plain)::

    w1 = 1 - 3/36, w2 = 1 - 33/36, w11 = (1 - 1/3) * w1, w12 = (1 - 2/3) * w1   ->  22/36, 11/36, 3/36

``1 - r_i / sum(r)`` summed over ``n`` items gives ``n - 1``, so with exactly two items (the paper's case) the
weights already sum to 1. For other counts we divide by ``n - 1`` (so a weighted AVERAGE stays an average),
and a group with a single member keeps its whole group weight (eq. 3 would give it 0). See docs/reproduce.md.

Reference rule (``mode="reference"``): fixed weights 0.85 / 0.05 / 0.10 and only ``tau_h`` (0.998), applied
where ALL models exceed it.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ppihd import LABELS
from ppihd.postprocess.tables import PostprocessError, id_label_table

#: The reference code's fixed weights (best model, second, plain model) and its upper threshold.
REFERENCE_WEIGHTS = (0.85, 0.05, 0.10)
REFERENCE_TAU_H = 0.998


class EnsembleInputError(PostprocessError):
    """Ensemble inputs that cannot be combined (IDs differ, bad values, bad arguments)."""


def _eq3(ranks: Sequence[float]) -> np.ndarray:
    """``1 - r_i / sum(r)`` normalised to sum 1 (divide by n - 1); a single item gets 1."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1 or len(r) == 0:
        raise EnsembleInputError("ranks must be a non-empty list")
    if np.any(r <= 0):
        raise EnsembleInputError(f"ranks must be positive (leaderboard positions), got {list(ranks)}")
    if len(r) == 1:
        return np.ones(1)
    return (1.0 - r / r.sum()) / (len(r) - 1)


def rank_weights(ranks: Sequence[float], groups: Optional[Sequence[str]] = None) -> np.ndarray:
    """Paper eq. 3: weights from leaderboard ranks, first between groups, then inside each group.

    Args:
        ranks: one rank per model (1 = best).
        groups: one group name per model (e.g. ``pseudo`` / ``plain``); ``None`` = one group.
    Returns:
        float64 ``[M]`` weights summing to 1, in the order of ``ranks``.
    """
    ranks = [float(r) for r in ranks]
    if groups is None:
        groups = ["all"] * len(ranks)
    if len(groups) != len(ranks):
        raise EnsembleInputError(f"--groups has {len(groups)} entries but --ranks has {len(ranks)}")
    names: List[str] = []
    for g in groups:
        if g not in names:
            names.append(g)
    members = {g: [i for i, gg in enumerate(groups) if gg == g] for g in names}
    group_w = _eq3([sum(ranks[i] for i in members[g]) for g in names])
    w = np.zeros(len(ranks))
    for gw, g in zip(group_w, names):
        inner = _eq3([ranks[i] for i in members[g]])
        for iw, i in zip(inner, members[g]):
            w[i] = gw * iw
    return w


def normalise_weights(weights: Sequence[float]) -> np.ndarray:
    """Explicit weights divided by their sum (a weighted average). Must be non-negative, sum > 0."""
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise EnsembleInputError(f"--weights must be non-negative with a positive sum, got {list(weights)}")
    return w / w.sum()


def binarise(p: np.ndarray, tau_h: Optional[float] = None, tau_l: Optional[float] = None) -> np.ndarray:
    """``p > tau_h`` -> 1, ``p < tau_l`` -> 0, others unchanged (``None`` disables a side). Any shape."""
    out = np.array(p, dtype=np.float64, copy=True)
    if tau_h is not None:
        out[p > tau_h] = 1.0
    if tau_l is not None:
        out[p < tau_l] = 0.0
    return out


def combine(probs: np.ndarray, weights: Sequence[float], tau_h: Optional[float] = None,
            tau_l: Optional[float] = None, mode: str = "paper") -> np.ndarray:
    """Weighted average of model probabilities, then binarisation.

    Args:
        probs: ``[M, N]`` probabilities of M models for the same N rows.
        weights: ``[M]`` weights (already normalised; see :func:`rank_weights`).
        mode: ``paper`` thresholds the averaged probability; ``reference`` sets 1 only where every
            model exceeds ``tau_h`` (``tau_l`` likewise: 0 only where every model is below it).
    Returns:
        float64 ``[N]``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(w):
        raise EnsembleInputError(f"probs must be [M, N] with M = {len(w)} weights, got {probs.shape}")
    avg = np.tensordot(w, probs, axes=1)
    if mode == "paper":
        return binarise(avg, tau_h, tau_l)
    if mode == "reference":
        out = avg.copy()
        if tau_h is not None:
            out[np.all(probs > tau_h, axis=0)] = 1.0
        if tau_l is not None:
            out[np.all(probs < tau_l, axis=0)] = 0.0
        return out
    raise EnsembleInputError(f"unknown ensemble mode '{mode}'; expected paper or reference")


# ----------------------------------------------------------------------------------------------- I/O


def read_probabilities(path: str) -> pd.Series:
    """Read a submission (``ID,Label``) or a ``predictions.csv`` (``sop_uid`` + six label columns).

    Returns a float Series indexed by submission ID (``ID_<sop>_<label>``) in file order.
    """
    if not os.path.isfile(path):
        raise EnsembleInputError(f"{path}: file not found")
    df = pd.read_csv(path, dtype={"ID": str, "sop_uid": str})
    table = id_label_table(df)
    if table is None:
        raise EnsembleInputError(
            f"{path}: expected columns ID,Label (submission) or sop_uid + {', '.join(LABELS)} "
            f"(predictions.csv); found {', '.join(map(str, df.columns))}")
    s = pd.Series(pd.to_numeric(table["Label"], errors="coerce").to_numpy(dtype=np.float64),
                  index=table["ID"].to_numpy())
    dup = s.index[s.index.duplicated()]
    if len(dup):
        raise EnsembleInputError(f"{path}: {len(dup)} duplicate IDs, e.g. {', '.join(map(str, dup[:3]))}")
    bad = s.index[~np.isfinite(s.to_numpy()) | (s.to_numpy() < 0) | (s.to_numpy() > 1)]
    if len(bad):
        raise EnsembleInputError(f"{path}: {len(bad)} probabilities missing or outside [0, 1], "
                                 f"e.g. {', '.join(map(str, bad[:3]))}")
    return s


def check_same_ids(series: Sequence[pd.Series], paths: Sequence[str], n_examples: int = 3) -> None:
    """Raise :class:`EnsembleInputError` naming each file whose ID set differs from the first file's."""
    ref = pd.Index(series[0].index)
    problems = []
    for s, p in zip(series[1:], paths[1:]):
        idx = pd.Index(s.index)
        missing = ref.difference(idx, sort=False)
        extra = idx.difference(ref, sort=False)
        if len(missing) or len(extra):
            msg = f"{p}: {len(idx)} IDs vs {len(ref)} in {paths[0]}"
            if len(missing):
                msg += f"; {len(missing)} missing (e.g. {', '.join(map(str, missing[:n_examples]))})"
            if len(extra):
                msg += f"; {len(extra)} not in {paths[0]} (e.g. {', '.join(map(str, extra[:n_examples]))})"
            problems.append(msg)
    if problems:
        raise EnsembleInputError("ensemble inputs do not cover the same IDs:\n  " + "\n  ".join(problems))


def ensemble_files(paths: Sequence[str], weights: Sequence[float], tau_h: Optional[float] = None,
                   tau_l: Optional[float] = None, mode: str = "paper") -> Tuple[pd.DataFrame, Dict[str, float]]:
    """Read, check and combine M files. Returns the submission (``ID,Label`` in the first file's order)
    and a summary (``rows``, ``set_to_1``, ``set_to_0``)."""
    if len(paths) != len(weights):
        raise EnsembleInputError(f"{len(paths)} inputs but {len(weights)} weights")
    series = [read_probabilities(p) for p in paths]
    check_same_ids(series, paths)
    ids = series[0].index
    probs = np.stack([s.reindex(ids).to_numpy() for s in series])
    avg = np.tensordot(np.asarray(weights, dtype=np.float64), probs, axes=1)
    out = combine(probs, weights, tau_h, tau_l, mode)
    summary = {"rows": float(len(ids)),
               "set_to_1": float(np.sum((out == 1.0) & (avg != 1.0))),
               "set_to_0": float(np.sum((out == 0.0) & (avg != 0.0)))}
    return pd.DataFrame({"ID": ids, "Label": out}), summary
