"""FixMatch data: pseudo-labelled test series from the cache, mixed with the labelled training series.

``PseudoLabelDataset(cfg)`` reads the test split of the cache index (``split == "test"``, ``status == "ok"``)
and the pseudo-label file ``Data.pseudo_label_csv`` (written by ``tools/pseudo_label.py``, format in
:mod:`ppihd.postprocess.pseudo_label`), keeps the series that have pseudo-labels and serves them like
``SeriesDataset`` items, with the strong augmentation A(.) and ``is_pseudo: True``::

    {"images": float32 [S, 3, H, W] in [0, 1], "labels": float32 [S, 6] (0/1 pseudo-labels),
     "label_mask": float32 [S, 6] (0 for a cached slice without a pseudo-label), "series_id": str,
     "slice_idx": int64 [S], "is_pseudo": True}

``MixedDataset(labelled, pseudo)`` concatenates the two (labelled first) and forwards ``get(index, rng)``,
adding ``is_pseudo: False`` to labelled items. The loss turns ``is_pseudo`` series into ``L_u``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np
import pandas as pd

from .. import LABELS
from ..postprocess.pseudo_label import PseudoLabelError, read_pseudo_csv
from .cache import resolve_index_file
from .dataset import SeriesDataset, _Base, read_index
from .strong_augment import StrongAugment

log = logging.getLogger("ppihd")

class PseudoLabelDataset(SeriesDataset):
    """Pseudo-labelled test series: a :class:`SeriesDataset` over the cached ``test`` split whose labels come
    from ``Data.pseudo_label_csv``; only series with pseudo-labels are kept (see the module docstring).

    Args:
        cfg: full config; uses ``Data.pseudo_label_csv``, the cache location, ``Data.max_slices`` (random window,
            as for training) and ``DataLoader.Train.strong_augment``.
        transform: uint8 ``[S, H, W, 3]`` transform; default ``StrongAugment`` from the config; ``False`` = none.
        index: an already loaded cache index (default: read it).
    """

    def __init__(self, cfg: Mapping[str, Any], transform: Any = None, index: Optional[pd.DataFrame] = None) -> None:
        path = cfg["Data"]["pseudo_label_csv"]
        if not path:
            raise PseudoLabelError("Data.pseudo_label_csv is not set (make one with tools/pseudo_label.py)")
        index_file = resolve_index_file(cfg)
        if index is None:
            if not os.path.isfile(index_file):
                raise PseudoLabelError(f"{index_file}: cache index not found; run tools/preprocess.py on Data.root "
                                       f"(FixMatch needs the test series cached, split 'test')")
            index = read_index(index_file)
        pseudo = read_pseudo_csv(path).drop_duplicates("sop_uid").set_index("sop_uid")
        test = index[(index["split"] == "test") & (index["status"] == "ok")].copy()
        has = test["sop_uid"].isin(pseudo.index)
        test = test[test["series_id"].isin(test.loc[has, "series_id"])]
        unmatched = int((~pseudo.index.isin(test["sop_uid"])).sum())
        if len(test) == 0:
            raise PseudoLabelError(
                f"{path}: none of its {len(pseudo)} slices is a cached test slice in {index_file} "
                f"(were the predictions made on Data.test_dir of this Data.root?)")
        if unmatched:
            log.warning("%s: %d pseudo-labelled slices are not cached test slices; ignored", path, unmatched)
        # labels from pseudo.csv; a cached slice without a pseudo-label stays unknown (label_mask 0)
        test[list(LABELS)] = pseudo.reindex(test["sop_uid"])[list(LABELS)].to_numpy(dtype=np.float64)
        if transform is None:
            transform = StrongAugment(cfg["DataLoader"]["Train"]["strong_augment"])
        super().__init__(cfg, "test", transform=transform or None, index=test)
        self.train = True  # random max_slices window, like the labelled training series

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, Any]:
        """Item ``index`` (strong augmentation drawing from ``rng``) with ``is_pseudo: True``."""
        item = super().get(index, rng)
        item["is_pseudo"] = True
        return item


class MixedDataset(_Base):
    """Labelled series followed by pseudo-labelled ones; items carry ``is_pseudo``."""

    def __init__(self, labelled: Any, pseudo: PseudoLabelDataset) -> None:
        self.labelled, self.pseudo = labelled, pseudo

    def __len__(self) -> int:
        return len(self.labelled) + len(self.pseudo)

    def set_epoch(self, epoch: int) -> None:
        for ds in (self.labelled, self.pseudo):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    @property
    def uint8_images(self) -> bool:
        """Whether both parts hand out uint8 images (``ppihd.data.dataset.set_uint8_images``)."""
        return all(getattr(ds, "uint8_images", False) for ds in (self.labelled, self.pseudo))

    @uint8_images.setter
    def uint8_images(self, on: bool) -> None:
        for ds in (self.labelled, self.pseudo):
            if hasattr(ds, "uint8_images"):
                ds.uint8_images = bool(on)

    @property
    def num_slices(self) -> int:
        return int(getattr(self.labelled, "num_slices", 0)) + self.pseudo.num_slices

    def series_lengths(self) -> np.ndarray:
        """Slices of each item: the labelled series' then the pseudo-labelled ones' (``SeriesDataset``)."""
        return np.concatenate([self.labelled.series_lengths(), self.pseudo.series_lengths()])

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, Any]:
        n = len(self.labelled)
        if index < n:
            item = self.labelled.get(index, rng) if hasattr(self.labelled, "get") else self.labelled[index]
            item = dict(item)
            item["is_pseudo"] = False
            return item
        return self.pseudo.get(index - n, rng)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        n = len(self.labelled)
        if index < n:
            item = dict(self.labelled[index])
            item["is_pseudo"] = False
            return item
        return self.pseudo[index - n]


def with_pseudo_labels(cfg: Mapping[str, Any], labelled: Any) -> Any:
    """``labelled`` unchanged if ``Data.pseudo_label_csv`` is unset, else ``MixedDataset(labelled, pseudo)``."""
    if not cfg["Data"]["pseudo_label_csv"]:
        return labelled
    pseudo = PseudoLabelDataset(cfg)
    log.info("FixMatch: %d labelled + %d pseudo-labelled series (%d slices) from %s", len(labelled), len(pseudo),
             pseudo.num_slices, cfg["Data"]["pseudo_label_csv"])
    return MixedDataset(labelled, pseudo)
