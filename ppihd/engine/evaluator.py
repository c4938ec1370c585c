"""Validation: run the model over a labelled series dataset and score it with the competition metric
(docs/training.md "Validation").

    result = evaluate(model, dataset, cfg)          # {"head2": metrics, "head1": metrics | None, ...}
    preds = result["predictions"]                    # per-slice rows (series_id, slice_idx, labels, probabilities)

Slices whose six labels are not all known (``label_mask``) are predicted but not scored.

``DataLoader.Eval.pad_to`` (``None`` = off, the default) reproduces the reference evaluation: every series is
padded with black (all-zero) slices to that many slices (the reference: 60) and run through the backbone and the
sequence transformer **without a mask**, so the real slices attend to the black ones; only the real slices are
scored. A series already longer is run as it is (the reference cannot take it at all).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .. import LABELS
from ..data.dataset import images_to_tensor
from ..postprocess.arrays import sigmoid
from ..metric import compute_metrics, prior_probabilities, weighted_log_loss
from ..utils.fileio import atomic_path


def _unwrap(model: Any) -> Any:
    return getattr(model, "_layers", model)  # paddle.DataParallel keeps the layer in _layers




def pad_series_batch(images: np.ndarray, pad_to: int) -> np.ndarray:
    """``images [B, S, ...]`` -> ``[B, max(S, pad_to), ...]``, the extra slices all zero (black)."""
    b, s = images.shape[:2]
    if s >= pad_to:
        return images
    out = np.zeros((b, int(pad_to)) + images.shape[2:], dtype=images.dtype)
    out[:, :s] = images
    return out


def eval_batches(n: int, batch_series: int, rank: int = 0, world_size: int = 1) -> List[range]:
    """Series indices of the evaluation batches this process runs: the 1-process batches ``[0, b), [b, 2b), ...``
    (``b = batch_series``), and with ``world_size`` processes rank ``r`` takes batches ``r, r + world_size, ...``.
    Every series is in exactly one batch of one rank (no padding duplicates) and each batch holds the series it
    holds in a 1-process run, so a sharded evaluation computes the same numbers."""
    b = max(1, int(batch_series))
    every = [range(s, min(s + b, n)) for s in range(0, n, b)]
    return every[int(rank)::max(1, int(world_size))]


def gather_series(records: List[tuple], world_size: int, error: Optional[BaseException] = None) -> List[tuple]:
    """All ranks' per-series records (``(series index, ...)`` tuples of numpy arrays of any length), in series
    order, on every rank: ``paddle.distributed.all_gather_object`` (pickled, padded to the longest rank's bytes by
    Paddle; gloo on CPU, NCCL on GPU, Paddle 2.6 and 3.x).

    ``error``: this rank's evaluation failed with it (its records are incomplete). It is gathered with the records,
    so EVERY rank raises (RuntimeError naming the first failing rank and its message) instead of the others waiting
    in the gather for a rank that has stopped."""
    if int(world_size) <= 1:
        if error is not None:
            raise error
        return sorted(records, key=lambda r: r[0])
    import paddle.distributed as dist

    parts: List[Any] = []
    dist.all_gather_object(parts, (None if error is None else f"{type(error).__name__}: {error}", records))
    failed = [(r, msg) for r, (msg, _) in enumerate(parts) if msg is not None]
    if failed:
        rank, msg = failed[0]
        raise RuntimeError(f"evaluation failed on rank {rank} of {len(parts)} (ranks failed: "
                           f"{', '.join(str(r) for r, _ in failed)}): {msg}") from error
    return sorted((r for _, part in parts for r in part), key=lambda r: r[0])


def predict_dataset(model: Any, dataset: Any, batch_series: int = 1, max_series: Optional[int] = None,
                    collate_fn: Optional[Callable] = None, progress: bool = True, desc: str = "eval",
                    pad_to: Optional[int] = None, rank: int = 0, world_size: int = 1) -> Dict[str, Any]:
    """Per-slice probabilities of every real slice. ``pad_to``: see the module docstring (None = the
    series as they are, padded slices of a batch masked). With ``world_size`` > 1 (every rank calls it) each rank
    predicts its share of the batches (:func:`eval_batches`) and the per-series results are gathered
    (:func:`gather_series`): every rank returns the 1-process result.

    Returns ``{"series_id": [N], "slice_idx": int [N], "labels": [N, 6], "label_mask": [N, 6],
    "prob2": [N, 6], "prob1": [N, 6] | None}`` (numpy, float64 probabilities), series in dataset order.
    """
    import paddle
    from tqdm import tqdm

    if collate_fn is None:
        from ..data.dataset import collate_series as collate_fn
    n = len(dataset) if max_series is None else min(len(dataset), int(max_series))
    m = _unwrap(model)
    was_training = m.training
    m.eval()
    records: List[tuple] = []   # one per series: (index, series_id, slice_idx, labels, label_mask, prob2, prob1)
    error: Optional[Exception] = None
    try:
        with paddle.no_grad():
            for rows in tqdm(eval_batches(n, batch_series, rank, world_size), desc=desc, disable=not progress,
                             leave=False):
                batch = collate_fn([dataset[i] for i in rows])
                mask_np = np.asarray(batch["mask"], dtype=bool)
                if pad_to:  # the reference: black slices up to pad_to, no mask
                    images = images_to_tensor(pad_series_batch(np.asarray(batch["images"]), int(pad_to)))
                    l2, l1 = m.heads(images, None)
                else:
                    images = images_to_tensor(batch["images"])
                    l2, l1 = m.heads(images, paddle.to_tensor(mask_np))
                l2 = l2.astype("float32").numpy()
                l1 = l1.astype("float32").numpy() if l1 is not None else None
                si, lm = batch.get("slice_idx"), batch.get("label_mask")
                for b, index in enumerate(rows):
                    real = np.nonzero(mask_np[b])[0]
                    records.append((index, batch["series_id"][b], np.asarray(si)[b, real] if si is not None else real,
                                    np.asarray(batch["labels"])[b, real],
                                    np.asarray(lm)[b, real] if lm is not None else np.ones((len(real), 6)),
                                    sigmoid(l2[b, real]), sigmoid(l1[b, real]) if l1 is not None else None))
    except Exception as e:   # several ranks: every rank raises after the gather (gather_series)
        if int(world_size) <= 1:
            raise
        error = e
    finally:
        if was_training:
            m.train()
    records = gather_series(records, world_size, error)
    cat = (lambda xs, w: np.concatenate(xs, axis=0) if xs else np.zeros((0, w)))
    has_head1 = bool(records) and all(r[6] is not None for r in records)
    return {"series_id": [r[1] for r in records for _ in range(len(r[2]))],
            "slice_idx": np.concatenate([r[2] for r in records]) if records else np.zeros(0, int),
            "labels": cat([r[3] for r in records], 6), "label_mask": cat([r[4] for r in records], 6),
            "prob2": cat([r[5] for r in records], 6),
            "prob1": cat([r[6] for r in records], 6) if has_head1 else None}


def score_predictions(preds: Mapping[str, Any], weights: Sequence[float], eps: float,
                      prior: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Metrics of head 2 / head 1 on the fully labelled slices, plus the constant-prior baseline if ``prior``."""
    keep = np.asarray(preds["label_mask"]).min(axis=1) > 0 if len(preds["label_mask"]) else np.zeros(0, bool)
    y = np.asarray(preds["labels"])[keep]
    out: Dict[str, Any] = {"n_slices": int(keep.sum()), "n_series": len(set(np.asarray(preds["series_id"])[keep]))
                           if keep.any() else 0, "labels": list(LABELS)}
    if not keep.any():
        out.update(head2=None, head1=None, baseline=None)
        return out
    out["head2"] = compute_metrics(y, np.asarray(preds["prob2"])[keep], weights, eps)
    out["head1"] = (compute_metrics(y, np.asarray(preds["prob1"])[keep], weights, eps)
                    if preds.get("prob1") is not None else None)
    if prior is not None:
        pr = np.clip(np.asarray(prior, dtype=np.float64), 0.0, 1.0)
        out["baseline"] = {"prior": [float(v) for v in pr],
                           "weighted_log_loss": weighted_log_loss(y, np.tile(pr, (len(y), 1)), weights, eps)}
    else:
        out["baseline"] = None
    return out


def evaluate(model: Any, dataset: Any, cfg: Mapping[str, Any], max_series: Optional[int] = None,
             prior: Optional[Sequence[float]] = None, collate_fn: Optional[Callable] = None,
             progress: Optional[bool] = None, rank: int = 0, world_size: int = 1) -> Dict[str, Any]:
    """Predict ``dataset`` and score it; ``result["predictions"]`` holds the per-slice rows. With ``world_size``
    > 1 every rank calls it, predicts its shard and gets the whole result (:func:`predict_dataset`)."""
    g = cfg["Global"]
    ev = cfg["DataLoader"]["Eval"]
    preds = predict_dataset(model, dataset, int(ev["batch_series"]), max_series, collate_fn,
                            bool(g["progress_bar"]) if progress is None else progress, pad_to=ev["pad_to"],
                            rank=rank, world_size=world_size)
    res = score_predictions(preds, cfg["Metric"]["class_weights"], float(cfg["Metric"]["eps"]), prior)
    res["predictions"] = preds
    return res


def dataset_prior(dataset: Any) -> Optional[np.ndarray]:
    """Positive rate of each class over a dataset's known labels (the constant-prior model), or None.

    Uses ``dataset.items[i]["labels" / "label_mask"]`` (SeriesDataset, no image I/O) if available, else reads
    every item.
    """
    if hasattr(dataset, "labelled") and hasattr(dataset, "pseudo"):  # FixMatch MixedDataset: labelled part only
        dataset = dataset.labelled
    items = getattr(dataset, "items", None)
    if isinstance(items, list) and items and isinstance(items[0], dict) and "labels" in items[0]:
        rows = []
        for it in items:
            lab = np.asarray(it["labels"], dtype=np.float64).copy()
            lab[np.asarray(it.get("label_mask", np.ones_like(lab))) <= 0] = np.nan
            rows.append(lab)
        y = np.concatenate(rows) if rows else np.zeros((0, 6))
    else:
        rows = []
        for i in range(len(dataset)):
            it = dataset[i]
            lab = np.asarray(it["labels"], dtype=np.float64).copy()
            lab[np.asarray(it.get("label_mask", np.ones_like(lab))) <= 0] = np.nan
            rows.append(lab)
        y = np.concatenate(rows) if rows else np.zeros((0, 6))
    if y.size == 0:
        return None
    p = prior_probabilities(y)
    return None if np.any(~np.isfinite(p)) else p


def slice_sop_uids(preds: Mapping[str, Any], dataset: Any) -> Optional[List[str]]:
    """SOPInstanceUID of every prediction row (``series_id``, ``slice_idx`` = row of the series' cache array),
    from the dataset's items (``SeriesDataset``: ``slice_idx`` and ``sop_uids``); None when it has none."""
    items = getattr(dataset, "items", None)
    if not isinstance(items, list) or not items or not isinstance(items[0], dict) or "sop_uids" not in items[0]:
        return None
    by_series = {it["series_id"]: dict(zip((int(i) for i in it["slice_idx"]), it["sop_uids"])) for it in items}
    return [str(by_series.get(sid, {}).get(int(i), "")) for sid, i in zip(preds["series_id"], preds["slice_idx"])]


def write_predictions_csv(preds: Mapping[str, Any], path: str) -> str:
    """One row per slice: series_id, slice_idx, sop_uid (when ``preds["sop_uid"]`` is set), the six labels
    (empty when unknown), the six head-2 (and head-1) probabilities."""
    import pandas as pd

    df = pd.DataFrame({"series_id": preds["series_id"], "slice_idx": preds["slice_idx"]})
    if preds.get("sop_uid") is not None:
        df["sop_uid"] = list(preds["sop_uid"])
    lab = np.asarray(preds["labels"], dtype=np.float64).copy()
    lab[np.asarray(preds["label_mask"]) <= 0] = np.nan
    for c, name in enumerate(LABELS):
        df[f"label_{name}"] = lab[:, c]
    for c, name in enumerate(LABELS):
        df[f"prob_{name}"] = np.asarray(preds["prob2"])[:, c]
    if preds.get("prob1") is not None:
        for c, name in enumerate(LABELS):
            df[f"prob1_{name}"] = np.asarray(preds["prob1"])[:, c]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def format_metrics(res: Mapping[str, Any]) -> str:
    """Human-readable table of the metrics, with the constant-prior baseline next to head 2."""
    lines = [f"{res.get('split', 'validation')}: {res.get('n_series', 0)} series, "
             f"{res.get('n_slices', 0)} labelled slices"]
    base = res.get("baseline")
    for head in ("head2", "head1"):
        m = res.get(head)
        if not m:
            continue
        line = f"  {head}: weighted log loss {m['weighted_log_loss']:.5f}"
        if head == "head2" and base:
            ratio = m["weighted_log_loss"] / base["weighted_log_loss"] if base["weighted_log_loss"] > 0 else math.nan
            line += f"   (constant-prior baseline {base['weighted_log_loss']:.5f}; ratio {ratio:.3f})"
        lines.append(line)
        lines.append("    " + "  ".join(f"{n[:6]}: ll {m['log_loss'][n]:.4f} auc "
                                         f"{'n/a' if m['auc'][n] is None else format(m['auc'][n], '.3f')}"
                                         for n in LABELS))
    return "\n".join(lines)
