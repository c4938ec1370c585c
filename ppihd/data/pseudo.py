"""FixMatch data: pseudo-labelled test series from the cache, mixed with the labelled training series.

``PseudoLabelDataset(cfg)`` reads the test split of the cache index (``split == "test"``, ``status == "ok"``)
and the pseudo-label file ``Data.pseudo_label_csv`` (written by ``tools/pseudo_label.py``, format in
:mod:`ppihd.engine.pseudo_label`), keeps the series that have pseudo-labels and serves them like
``SeriesDataset`` items, with the strong augmentation A(.) and ``is_pseudo: True``::

    {"images": float32 [S, 3, H, W] in [0, 1], "labels": float32 [S, 6] (0/1 pseudo-labels),
     "label_mask": float32 [S, 6] (0 for a cached slice without a pseudo-label), "series_id": str,
     "is_pseudo": True}

``MixedDataset(labelled, pseudo)`` concatenates the two (labelled first) and forwards ``get(index, rng)``,
adding ``is_pseudo: False`` to labelled items. The loss turns ``is_pseudo`` series into ``L_u``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import pandas as pd

from .. import LABELS
from ..engine.pseudo_label import PseudoLabelError, read_pseudo_csv
from .strong_augment import StrongAugment

log = logging.getLogger("ppihd")

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _cache_paths(cfg: Mapping[str, Any]):
    d = cfg["Data"]
    cache_dir = d.get("cache_dir") or os.path.join(d["root"], f"cache_{int(d['image_size'])}")
    index_file = d.get("index_file") or os.path.join(cache_dir, "index.csv")
    return cache_dir, index_file


class PseudoLabelDataset:
    """Pseudo-labelled test series (see the module docstring).

    Args:
        cfg: full config; uses ``Data.pseudo_label_csv``, the cache location and ``DataLoader.Train.strong_augment``.
        transform: uint8 ``[S, H, W, 3]`` transform; default ``StrongAugment`` from the config; ``False`` = none.
        seed: seed of the generator used by ``dataset[i]`` (``get(i, rng)`` uses the caller's).
    """

    def __init__(self, cfg: Mapping[str, Any], transform: Any = None, seed: int = 0) -> None:
        path = cfg["Data"].get("pseudo_label_csv")
        if not path:
            raise PseudoLabelError("Data.pseudo_label_csv is not set (make one with tools/pseudo_label.py)")
        cache_dir, index_file = _cache_paths(cfg)
        if not os.path.isfile(index_file):
            raise PseudoLabelError(f"{index_file}: cache index not found; run tools/preprocess.py on Data.root "
                                   f"(FixMatch needs the test series cached, split 'test')")
        pseudo = read_pseudo_csv(path).set_index("sop_uid")
        index = pd.read_csv(index_file, dtype={"sop_uid": str, "series_id": str, "series_uid": str})
        test = index[(index["split"] == "test") & (index["status"] == "ok")]
        test = test[test["series_id"].isin(test.loc[test["sop_uid"].isin(pseudo.index), "series_id"])]
        unmatched = int((~pseudo.index.isin(test["sop_uid"])).sum())
        if len(test) == 0:
            raise PseudoLabelError(
                f"{path}: none of its {len(pseudo)} slices is a cached test slice in {index_file} "
                f"(were the predictions made on Data.test_dir of this Data.root?)")
        if unmatched:
            log.warning("%s: %d pseudo-labelled slices are not cached test slices; ignored", path, unmatched)
        self.cache_dir = cache_dir
        self.items: List[Dict[str, Any]] = []
        for sid, rows in test.sort_values(["series_id", "slice_idx"]).groupby("series_id", sort=True):
            lab = pseudo.reindex(rows["sop_uid"])[list(LABELS)].to_numpy(dtype=np.float64)
            have = np.isfinite(lab)
            self.items.append({"series_id": str(sid), "slice_idx": rows["slice_idx"].to_numpy(dtype=np.int64),
                               "labels": np.nan_to_num(lab).astype(np.float32),
                               "label_mask": have.astype(np.float32)})
        if transform is None:
            transform = StrongAugment(cfg["DataLoader"]["Train"]["strong_augment"])
        self.transform: Optional[Transform] = transform or None
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_slices(self) -> int:
        return int(sum(len(it["slice_idx"]) for it in self.items))

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, Any]:
        """Item ``index`` with the strong augmentation drawing from ``rng``."""
        it = self.items[index]
        arr = np.load(os.path.join(self.cache_dir, "series", f"{it['series_id']}.npy"), mmap_mode="r")
        slices = np.ascontiguousarray(arr[it["slice_idx"]])
        if self.transform is not None:
            slices = self.transform(slices, rng)
        images = slices.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return {"images": images, "labels": it["labels"].copy(), "label_mask": it["label_mask"].copy(),
                "series_id": it["series_id"], "is_pseudo": True}

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.get(index, self._rng)


class MixedDataset:
    """Labelled series followed by pseudo-labelled ones; items carry ``is_pseudo``."""

    def __init__(self, labelled: Any, pseudo: PseudoLabelDataset) -> None:
        self.labelled, self.pseudo = labelled, pseudo
        self._rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.labelled) + len(self.pseudo)

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, Any]:
        n = len(self.labelled)
        if index < n:
            item = self.labelled.get(index, rng) if hasattr(self.labelled, "get") else self.labelled[index]
            item = dict(item)
            item["is_pseudo"] = False
            return item
        return self.pseudo.get(index - n, rng)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.get(index, self._rng)


def with_pseudo_labels(cfg: Mapping[str, Any], labelled: Any) -> Any:
    """``labelled`` unchanged if ``Data.pseudo_label_csv`` is unset, else ``MixedDataset(labelled, pseudo)``."""
    if not cfg["Data"].get("pseudo_label_csv"):
        return labelled
    pseudo = PseudoLabelDataset(cfg, seed=int(cfg["Global"].get("seed", 0)))
    log.info("FixMatch: %d labelled + %d pseudo-labelled series (%d slices) from %s", len(labelled), len(pseudo),
             pseudo.num_slices, cfg["Data"]["pseudo_label_csv"])
    return MixedDataset(labelled, pseudo)
