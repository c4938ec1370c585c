"""The study-level answer: ``studies.csv``, ``series.csv`` and ``studies/<study_id>.json`` (docs/inference.md).

Written once at the end of a run (atomically) from the plans of :func:`ppihd.data.study.plan_studies` and the
per-slice probabilities of the predicted series. A study's probability of each class is, by
``Infer.study_aggregation``:

- ``primary_max`` (default): the maximum over the slices of the primary series — the series a radiologist
  would read, so the answer and its key slices come from one coherent volume;
- ``all_max``: the maximum over the slices of every predicted series of the study (more sensitive, and every
  class's key slice names the series it came from).

A class is flagged when its study probability is above ``Infer.threshold`` (``p > threshold``, as
everywhere in ppihd). Its key slice is the slice of the highest probability; when several neighbouring
slices share it (one slab of a thin series), the middle one of that run.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ppihd import LABELS
from ppihd.utils.fileio import atomic_path

AGGREGATIONS = ("primary_max", "all_max")

STUDY_COLUMNS: Tuple[str, ...] = (
    "patient_id", "study_uid", "study_folder", "study_id", "primary_series_id", "primary_series_uid",
    "primary_series_number", "primary_description", "primary_reason", "num_series", "num_predicted_series",
    "num_slices", *LABELS, "flagged", "key_slices", "aggregation", "warnings")
SERIES_COLUMNS: Tuple[str, ...] = (
    "patient_id", "study_uid", "series_uid", "series_id", "series_number", "description", "modality", "role",
    "reason", "primary", "predicted", "num_files", "num_slices", "spacing_mm", "thickness_mm", "axis_angle_deg",
    "kernel", "slab_slices", *(f"max_{lab}" for lab in LABELS), "warnings")


@dataclass
class SeriesResult:
    """The predictions of one series: one entry per predicted slice, in series order."""

    sop_uids: List[str]
    slice_idx: List[int]
    probs: np.ndarray            # [S, 6]
    frames: Optional[List[Optional[int]]] = None   # 0-based frame of a multi-frame file's slice, else None


def key_slice(p: np.ndarray) -> int:
    """Index of the highest value of ``p`` [S]; of a run of equal neighbours holding it, the middle one
    (the lower middle for an even run)."""
    p = np.asarray(p)
    i = int(np.argmax(p))
    j = i
    while j + 1 < len(p) and p[j + 1] == p[i]:
        j += 1
    return (i + j) // 2


def _fmt(v: Optional[float], digits: int = 7) -> str:
    return "" if v is None or not np.isfinite(v) else f"{float(v):.{digits}g}"


def study_answer(study: Any, results: Mapping[str, SeriesResult], threshold: float,
                 aggregation: str = "primary_max") -> Dict[str, Any]:
    """The answer for one :class:`~ppihd.data.study.StudyPlan`: ``{probabilities: {label: p | None},
    flagged: [labels], key_slices: {label: {series_id, slice_idx, sop_uid, frame, probability}}, answer_series,
    warnings}`` (``frame``: the 1-based frame number of a multi-frame file's slice, else None). ``results``: series_id → :class:`SeriesResult` of the series that were predicted."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"Infer.study_aggregation must be one of {' | '.join(AGGREGATIONS)}, got {aggregation!r}")
    warnings: List[str] = []
    predicted = [m for m in study.series if m.series_id in results]
    ranked = [m for m in study.ranked if m.series_id in results]
    answer = None
    if not study.ranked:
        roles = ", ".join(sorted({f"{m.role}" for m in study.series})) or "no series"
        warnings.append(f"no usable axial CT series (roles: {roles})")
    elif not ranked:
        warnings.append(f"the primary series {study.primary.series_id} could not be predicted (see skipped.csv)")
    else:
        answer = ranked[0]
        if answer is not study.primary:
            warnings.append(f"the primary series {study.primary.series_id} could not be predicted; "
                            f"answered from {answer.series_id}")
    sources = ([answer] if aggregation == "primary_max" else ranked) if answer is not None else []
    probs: Dict[str, Optional[float]] = {lab: None for lab in LABELS}
    keys: Dict[str, Dict[str, Any]] = {}
    for c, lab in enumerate(LABELS):
        best = None
        for m in sources:
            r = results[m.series_id]
            i = key_slice(r.probs[:, c])
            if best is None or r.probs[i, c] > best[2]:
                best = (m, i, float(r.probs[i, c]))
        if best is not None:
            m, i, p = best
            r = results[m.series_id]
            probs[lab] = p
            frame = r.frames[i] if r.frames else None
            keys[lab] = {"series_id": m.series_id, "slice_idx": int(r.slice_idx[i]), "sop_uid": r.sop_uids[i],
                         "frame": None if frame is None else int(frame) + 1, "probability": round(p, 6)}
    flagged = [lab for lab in LABELS if probs[lab] is not None and probs[lab] > threshold]
    if answer is not None:
        if answer.slabs:
            warnings.append(f"{answer.series_id}: {answer.spacing_mm:.3g} mm slices averaged into "
                            f"{len(answer.slabs)} slabs of {len(answer.slabs[0])} (Infer.slab_mm)")
        warnings.extend(f"{answer.series_id}: {w}" for w in getattr(answer.series, "warnings", []) or [])
        for m in predicted:  # another series that sees what the answer does not
            if m is answer or aggregation == "all_max":
                continue
            mx = results[m.series_id].probs.max(axis=0)
            for c, lab in enumerate(LABELS):
                if mx[c] > threshold and lab not in flagged:
                    warnings.append(f"series {m.series_id} ({m.role}) has {lab} {mx[c]:.2f} > {threshold:g}; "
                                    f"the answer series has {probs[lab]:.2f}")
    return {"probabilities": probs, "flagged": flagged, "key_slices": keys,
            "answer_series": answer.series_id if answer is not None else None, "warnings": warnings}


def _series_row(m: Any, result: Optional[SeriesResult]) -> Dict[str, Any]:
    mx = result.probs.max(axis=0) if result is not None and len(result.probs) else [None] * len(LABELS)
    return {
        "patient_id": m.key[0], "study_uid": m.key[1], "series_uid": m.key[2], "series_id": m.series_id,
        "series_number": "" if m.series_number is None else m.series_number, "description": m.description,
        "modality": m.modality, "role": m.role, "reason": m.reason, "primary": int(m.primary),
        "predicted": int(result is not None), "num_files": m.num_files,
        "num_slices": len(result.probs) if result is not None else len(m.series or ()),
        "spacing_mm": _fmt(m.spacing_mm, 4), "thickness_mm": _fmt(m.thickness_mm, 4),
        "axis_angle_deg": _fmt(m.axis_angle_deg, 4), "kernel": m.kernel,
        "slab_slices": (len(m.slabs[0]) if m.slabs else 1) if result is not None else "",
        **{f"max_{lab}": _fmt(v) for lab, v in zip(LABELS, mx)},
        "warnings": "; ".join(getattr(m.series, "warnings", []) or []),
    }


def _study_row(study: Any, ans: Dict[str, Any], results: Mapping[str, SeriesResult], aggregation: str
               ) -> Dict[str, Any]:
    p = study.primary
    answer = next((m for m in study.series if m.series_id == ans["answer_series"]), None)
    keys = "; ".join(f"{lab}: {k['sop_uid']}{'' if k.get('frame') is None else ' frame %d' % k['frame']} "
                     f"({k['series_id']} slice {k['slice_idx']})"
                     for lab, k in ans["key_slices"].items() if lab in ans["flagged"])
    return {
        "patient_id": study.key[0], "study_uid": study.key[1], "study_folder": study.folder,
        "study_id": study.study_id,
        "primary_series_id": p.series_id if p else "", "primary_series_uid": p.key[2] if p else "",
        "primary_series_number": "" if p is None or p.series_number is None else p.series_number,
        "primary_description": p.description if p else "", "primary_reason": study.primary_reason,
        "num_series": len(study.series),
        "num_predicted_series": sum(m.series_id in results for m in study.series),
        "num_slices": len(results[answer.series_id].probs) if answer is not None else 0,
        **{lab: _fmt(ans["probabilities"][lab]) for lab in LABELS},
        "flagged": ";".join(ans["flagged"]), "key_slices": keys, "aggregation": aggregation,
        "warnings": "; ".join(ans["warnings"]),
    }


def _write_csv(path: str, columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({k: " ".join(str(v).split()) if isinstance(v, str) else v for k, v in r.items()})


def write_studies(out_dir: str, studies: Sequence[Any], results: Mapping[str, SeriesResult],
                  infer_cfg: Mapping[str, Any], model: str = "") -> List[Dict[str, Any]]:
    """Write ``series.csv`` (every series of every study), ``studies.csv`` (one row per study) and
    ``studies/<study_id>.json`` (with ``model``: what the model was trained on). Returns the study rows."""
    threshold = float(infer_cfg["threshold"])
    aggregation = str(infer_cfg["study_aggregation"])
    study_rows, series_rows = [], []
    os.makedirs(os.path.join(out_dir, "studies"), exist_ok=True)
    for st in studies:
        ans = study_answer(st, results, threshold, aggregation)
        row = _study_row(st, ans, results, aggregation)
        study_rows.append(row)
        srows = [_series_row(m, results.get(m.series_id)) for m in st.series]
        series_rows.extend(srows)
        doc = {**{k: row[k] for k in ("patient_id", "study_uid", "study_folder", "study_id", "primary_series_id",
                                      "primary_reason")},
               "threshold": threshold, "aggregation": aggregation, "model": model, **ans, "series": srows}
        with atomic_path(os.path.join(out_dir, "studies", f"{st.study_id}.json")) as tmp, \
                open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
    _write_csv(os.path.join(out_dir, "series.csv"), SERIES_COLUMNS, series_rows)
    _write_csv(os.path.join(out_dir, "studies.csv"), STUDY_COLUMNS, study_rows)
    return study_rows
