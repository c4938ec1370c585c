"""Series datasets over the cache (one item = one whole series) and the padding collate.

    ds = SeriesDataset(cfg, "train", transform=augment)      # reads <cache_dir>/index.csv + series/*.npy
    item = ds.get(0, np.random.default_rng(0))               # or ds[0] (rng from seed, epoch, index)
    batch = collate_series([ds[0], ds[1]])
    loader = build_dataloader(cfg, ds, train=True)          # paddle.io.DataLoader yielding batches

Item: ``{"images": float32 [S, 3, H, W] in [0, 1], "labels": float32 [S, 6], "label_mask": float32 [S, 6]
(0 where a label is unknown, e.g. test series), "series_id": str, "slice_idx": int64 [S]}`` where
``slice_idx`` are the rows of the series' cache array (0..S-1 unless ``Data.max_slices`` cropped it).
Transforms see uint8 [S, H, W, 3] and a ``numpy.random.Generator``: ``transform(slices, rng) -> slices``.
With ``uint8_images`` (set on the training set by the trainer and :func:`build_dataloader` when
``DataLoader.Train.uint8`` is on, the default) ``images`` stay uint8 [S, 3, H, W] (0..255): loader threads skip
the float pass, worker processes send 4x fewer bytes, and :func:`images_to_tensor` divides by 255 in the model's
process (on its device) -- the same float32 numbers.

A ``Data.cache_size`` cache (arrays ``[S, N, N, 3]``: each slice's native black-edge crop in a canvas, its
(h, w) in the series record) is read the reference's way: a transform with a ``crops(list of uint8 [h, w, 3],
rng) -> uint8 [S, H, W, 3]`` method (``TrainAugment``: RandomResizedCrop inside the real crop, one bicubic
resize to ``Data.image_size``) gets the native crops; without a transform each crop is resized to
``Data.image_size`` (bilinear, the reference's val/test ``Resize``), and any other transform (e.g. FixMatch's
``StrongAugment``) gets those resized slices.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .. import LABELS
from ..postprocess.arrays import INV255, to_model_input, to_unit
from .cache import (CacheError, cache_side, cache_size, read_record, resolve_cache_dir, resolve_index_file,
                    series_file, verify_series)
from .transforms import resize

try:  # the datasets are paddle.io.Dataset when paddle is there (it always is at run time)
    from paddle.io import Dataset as _Base  # type: ignore
except Exception:  # pragma: no cover
    _Base = object

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
SPLITS = ("train", "val", "test")


#: the collated batch keys that go to the device and are not read on the host (the step reads ``mask`` there)
PINNED_KEYS = ("images", "labels", "label_mask")


def pin_batch(batch: Dict[str, Any], place: Any = None) -> Dict[str, Any]:
    """``batch`` with its :data:`PINNED_KEYS` arrays copied into page-locked host tensors (``place``, default
    ``paddle.CUDAPinnedPlace()``; Paddle 2.6 and 3.x), so that :func:`to_device` can copy them to the GPU
    asynchronously. Called in the training prefetch threads on GPU runs only (``DataLoader.Train.pin_memory``)."""
    import paddle

    place = paddle.CUDAPinnedPlace() if place is None else place
    out = dict(batch)
    for k in PINNED_KEYS:
        if out.get(k) is not None and not isinstance(out[k], paddle.Tensor):
            a = np.asarray(out[k])
            out[k] = paddle.to_tensor(a if a.dtype == np.uint8 else a.astype(np.float32), place=place)
    return out


def to_device(x: Any, dtype: str = "float32"):
    """A batch array on the current device: a numpy array through ``paddle.to_tensor`` (a synchronous copy from
    pageable memory on a GPU); a page-locked tensor from :func:`pin_batch` with a non-blocking copy
    (``Tensor.cuda(blocking=False)``); any other tensor as it is."""
    import paddle

    if isinstance(x, paddle.Tensor):
        return x.cuda(blocking=False) if x.place.is_cuda_pinned_place() else x
    return paddle.to_tensor(np.asarray(x, dtype=dtype))


def images_to_tensor(images: Any):
    """A batch's ``images`` (float32 in [0, 1], or uint8 0..255 from ``uint8_images`` datasets; numpy or a
    :func:`pin_batch` tensor) -> float32 paddle tensor in [0, 1] on the current device; uint8 is converted there
    (float32(x) * float32(1/255), the same numbers the dataset computes in numpy)."""
    if str(getattr(images, "dtype", "")).endswith("uint8"):
        return to_device(images, "uint8").astype("float32") * float(INV255)
    return to_device(images, "float32")


def set_uint8_images(dataset: Any, on: bool = True) -> bool:
    """Switch ``uint8_images`` on ``dataset`` (a ``MixedDataset`` passes it to its parts); returns whether the
    dataset has the switch."""
    if not hasattr(dataset, "uint8_images"):
        return False
    dataset.uint8_images = bool(on)
    return True


def read_index(path: str) -> pd.DataFrame:
    """Read a slice index written by ``tools/preprocess.py`` (string UIDs, float labels)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cache index not found: {path}; run tools/preprocess.py -c <config> first")
    dtypes = {c: str for c in ("path", "sop_uid", "patient_id", "study_uid", "series_uid", "series_id", "status",
                               "split")}
    idx = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in LABELS})
    missing = [c for c in ("series_id", "slice_idx", "status", "split", *LABELS) if c not in idx.columns]
    if missing:
        raise ValueError(f"{path}: not a ppihd slice index (missing columns {missing})")
    return idx


class SeriesDataset(_Base):
    """Cached series of one or more splits.

    Args:
        cfg: the resolved config (uses ``Data`` and ``Global.seed``).
        split: ``"train"``, ``"val"``, ``"test"``, ``"all"`` or a list of them.
        transform: ``transform(uint8 [S, H, W, 3], rng) -> same`` (training augmentation), or None.
        index: an already loaded index DataFrame (default: read ``Data.index_file`` / ``<cache_dir>/index.csv``).

    ``Data.max_slices`` (None = all) keeps a contiguous window of that many slices: at a random start drawn
    from the item's rng for ``train``, centred otherwise. ``set_epoch(e)`` changes the per-item rng of
    ``ds[i]`` (``default_rng([Global.seed, epoch, i])``), so runs are reproducible whatever the worker count.
    """

    def __init__(self, cfg: Mapping[str, Any], split: Union[str, Sequence[str]] = "train",
                 transform: Optional[Transform] = None, index: Optional[pd.DataFrame] = None) -> None:
        data = cfg["Data"]
        splits = list(SPLITS) if split == "all" else ([split] if isinstance(split, str) else list(split))
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; expected one of {SPLITS} or 'all'")
        self.cache_dir = resolve_cache_dir(cfg)
        index_file = resolve_index_file(cfg)
        idx = read_index(index_file) if index is None else index
        rows = idx[(idx["status"] == "ok") & idx["split"].isin(splits)]
        self.split = split
        self.train = splits == ["train"]
        self.transform = transform
        self.seed = int(cfg["Global"]["seed"])
        self.max_slices = data["max_slices"]
        self.image_size = int(data["image_size"])
        self.cache_size = cache_size(data)      # None, or N: native crops in N x N canvases (module docstring)
        self.side = cache_side(data)
        self._crop_hw: Dict[str, np.ndarray] = {}
        self.epoch = 0
        self.uint8_images = False  # see the module docstring
        self.items: List[Dict[str, Any]] = []
        for sid, g in rows.sort_values(["series_id", "slice_idx"]).groupby("series_id", sort=True):
            lab = g[list(LABELS)].to_numpy(dtype=np.float64)
            known = np.isfinite(lab)
            self.items.append({"series_id": str(sid), "slice_idx": g["slice_idx"].to_numpy(dtype=np.int64),
                               "sop_uids": g["sop_uid"].tolist(),
                               "labels": np.where(known, lab, 0.0).astype(np.float32),
                               "label_mask": known.astype(np.float32)})
        self._by_id = {it["series_id"]: i for i, it in enumerate(self.items)}
        self._verified: set = set()   # series whose cached array matched its checksum in this process

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_slices(self) -> int:
        return int(sum(len(it["slice_idx"]) for it in self.items))

    def series_lengths(self) -> np.ndarray:
        """int64 ``[len(self)]``: slices each item gives (the index's slice count, at most ``Data.max_slices``),
        from the index alone (no image I/O); the trainer's ``DataLoader.Train.length_buckets`` groups by it."""
        m = self.max_slices
        cap = int(m) if m is not None and int(m) > 0 else None
        return np.asarray([len(it["slice_idx"]) if cap is None else min(len(it["slice_idx"]), cap)
                           for it in self.items], dtype=np.int64)

    def series_ids(self) -> List[str]:
        return [it["series_id"] for it in self.items]

    def sop_uids(self, series_id: str) -> List[str]:
        """SOP UIDs of a series' cached slices, in slice order (row ``slice_idx`` of its cache array)."""
        return list(self.items[self._by_id[series_id]]["sop_uids"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator ``ds[index]`` uses: ``default_rng([Global.seed, epoch, index])``."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _window(self, n: int, rng: np.random.Generator) -> slice:
        m = self.max_slices
        if m is None or int(m) <= 0 or n <= int(m):
            return slice(0, n)
        m = int(m)
        start = int(rng.integers(0, n - m + 1)) if self.train else (n - m) // 2
        return slice(start, start + m)

    def cache_array(self, index: int) -> np.ndarray:
        """The cached uint8 ``[S, H, W, 3]`` array of item ``index`` (memory-mapped), checked against the index."""
        it = self.items[index]
        path = series_file(self.cache_dir, it["series_id"])
        arr = np.load(path, mmap_mode="r")
        if it["series_id"] not in self._verified:   # once per series and process: a full read, ~1 GB/s
            verify_series(self.cache_dir, it["series_id"], arr)
            self._verified.add(it["series_id"])
        if (arr.ndim != 4 or arr.shape[1:3] != (self.side, self.side)
                or it["slice_idx"].max(initial=-1) >= arr.shape[0]):
            raise ValueError(f"{path}: cache array of shape {arr.shape} does not match the index "
                             f"({len(it['slice_idx'])} slices of {self.side}²); re-run tools/preprocess.py")
        return arr

    def crop_hw(self, index: int) -> np.ndarray:
        """int32 ``[rows, 2]``: (h, w) of each cached crop of item ``index`` (``Data.cache_size`` caches)."""
        sid = self.items[index]["series_id"]
        if sid not in self._crop_hw:
            rec = read_record(self.cache_dir, sid) or {}
            hw = np.asarray(rec.get("crop_hw", []), dtype=np.int32).reshape(-1, 2)
            if len(hw) <= self.items[index]["slice_idx"].max(initial=-1) or (hw < 1).any() or (hw > self.side).any():
                raise CacheError(f"{series_file(self.cache_dir, sid)}: its record holds no valid crop_hw for every "
                                 f"slice (a Data.cache_size = {self.side} cache needs them); re-run "
                                 "tools/preprocess.py --rebuild")
            self._crop_hw[sid] = hw
        return self._crop_hw[sid]

    def native_crops(self, index: int, rows: np.ndarray, arr: Optional[np.ndarray] = None) -> List[np.ndarray]:
        """The native-resolution crops uint8 [h, w, 3] of rows ``rows`` of item ``index`` (``Data.cache_size``)."""
        arr = self.cache_array(index) if arr is None else arr
        hw = self.crop_hw(index)
        return [np.asarray(arr[r, :hw[r, 0], :hw[r, 1]]) for r in rows]

    def slice_images(self, index: int, rows: np.ndarray, arr: Optional[np.ndarray] = None) -> np.ndarray:
        """uint8 ``[len(rows), H, W, 3]`` at ``Data.image_size``, no augmentation: the cached rows, or for a
        ``Data.cache_size`` cache each native crop resized to H x W (bilinear: the reference's val/test
        ``Resize``)."""
        arr = self.cache_array(index) if arr is None else arr
        if self.cache_size is None:
            return np.array(arr[rows])
        crops = self.native_crops(index, rows, arr)
        out = np.empty((len(rows), self.image_size, self.image_size, arr.shape[3]), dtype=np.uint8)
        for k, c in enumerate(crops):
            out[k] = resize(c, self.image_size)
        return out

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, Any]:
        """Item ``index`` with randomness (window, transform) drawn from ``rng``."""
        it = self.items[index]
        arr = self.cache_array(index)
        sel = self._window(len(it["slice_idx"]), rng)
        rows = it["slice_idx"][sel]
        if self.cache_size is not None:
            native = getattr(self.transform, "crops", None)
            if native is not None:
                slices = native(self.native_crops(index, rows, arr), rng)
            else:
                slices = self.slice_images(index, rows, arr)
                if self.transform is not None:
                    slices = self.transform(slices, rng)
        else:
            contiguous = len(rows) > 0 and rows[-1] - rows[0] == len(rows) - 1
            slices = np.array(arr[rows[0]:rows[-1] + 1] if contiguous else arr[rows])
            if self.transform is not None:
                slices = self.transform(slices, rng)
        if self.uint8_images:
            images = slices.transpose(0, 3, 1, 2)
        else:
            images = to_model_input(slices)
        return {"images": np.ascontiguousarray(images), "labels": it["labels"][sel].copy(),
                "label_mask": it["label_mask"][sel].copy(), "series_id": it["series_id"],
                "slice_idx": rows.copy()}

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.get(index, self.rng_for(index))


def collate_series(items: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Pad B series to the longest: ``images [B, S_max, 3, H, W]``, ``labels``/``label_mask [B, S_max, 6]``,
    ``mask`` bool [B, S_max] (True = real slice), ``series_id`` list [B], ``slice_idx`` int64 [B, S_max]
    (-1 on padding) and any other per-series key (e.g. ``is_pseudo``) as an array [B]. All numpy."""
    if not items:
        raise ValueError("collate_series: empty batch")
    b = len(items)
    ims = [np.asarray(it["images"]) for it in items]
    lens = [int(im.shape[0]) for im in ims]
    s_max = max(lens)
    # all uint8 stays uint8 (uint8_images); any mix becomes float32 [0, 1]
    uint8 = all(im.dtype == np.uint8 for im in ims)
    images = np.zeros((b, s_max) + ims[0].shape[1:], dtype=np.uint8 if uint8 else np.float32)
    n_cls = np.asarray(items[0]["labels"]).shape[-1]
    labels = np.zeros((b, s_max, n_cls), dtype=np.float32)
    label_mask = np.zeros((b, s_max, n_cls), dtype=np.float32)
    mask = np.zeros((b, s_max), dtype=bool)
    slice_idx = np.full((b, s_max), -1, dtype=np.int64)
    for i, (it, im, n) in enumerate(zip(items, ims, lens)):
        images[i, :n] = to_unit(im) if (im.dtype == np.uint8 and not uint8) else im
        labels[i, :n] = it["labels"]
        label_mask[i, :n] = it.get("label_mask", np.ones((n, n_cls), np.float32))
        mask[i, :n] = True
        slice_idx[i, :n] = it["slice_idx"] if "slice_idx" in it else np.arange(n)
    out: Dict[str, Any] = {"images": images, "labels": labels, "label_mask": label_mask, "mask": mask,
                           "series_id": [str(it.get("series_id", "")) for it in items], "slice_idx": slice_idx}
    for key in items[0]:
        if key not in out:
            out[key] = np.asarray([it.get(key) for it in items])
    return out


# ------------------------------------------------------------------------------------------ data loader
class SeededBatchSampler:
    """Batches of series indices; with ``shuffle`` a permutation from ``default_rng([seed, epoch])``.
    Call ``set_epoch(e)`` each epoch (also forwarded to the dataset's per-item rng)."""

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = True, seed: int = 42,
                 drop_last: bool = False) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self.seed, self.drop_last, self.epoch = int(seed), bool(drop_last), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        for s in range(0, n, self.batch_size):
            batch = order[s:s + self.batch_size].tolist()
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy/random in a loader worker from the worker id and the parent's seed (deterministic)."""
    import random

    base = int(os.environ["PPIHD_SEED"])   # set by build_dataloader from Global.seed
    seq = np.random.SeedSequence([base, worker_id])
    np.random.seed(int(seq.generate_state(1)[0]))
    random.seed(int(seq.generate_state(2)[1]))


def build_dataloader(cfg: Mapping[str, Any], dataset: Any, train: bool = True,
                     collate_fn: Optional[Callable] = collate_series):
    """A ``paddle.io.DataLoader`` over ``dataset`` with ``DataLoader.Train`` / ``DataLoader.Eval`` settings
    (``num_workers``, ``batch_series``, ``shuffle``). With more than one process (``paddle.distributed``
    world size > 1) the batches come from ``paddle.io.DistributedBatchSampler``, else from
    :class:`SeededBatchSampler`. Call ``loader.batch_sampler.set_epoch(e)`` every epoch."""
    import paddle

    sect = cfg["DataLoader"]["Train" if train else "Eval"]
    bs = int(sect["batch_series"])
    shuffle = bool(sect["shuffle"]) if train else False
    seed = int(cfg["Global"]["seed"])
    os.environ["PPIHD_SEED"] = str(seed)
    try:
        world = paddle.distributed.get_world_size()
    except Exception:  # pragma: no cover
        world = 1
    if world > 1:
        sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=bs, shuffle=shuffle, drop_last=False)
    else:
        sampler = SeededBatchSampler(dataset, batch_size=bs, shuffle=shuffle, seed=seed)
    workers = int(sect["num_workers"])
    if train and sect["uint8"]:
        set_uint8_images(dataset)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=workers,
                                worker_init_fn=worker_init_fn if workers > 0 else None, return_list=True,
                                use_shared_memory=False)
