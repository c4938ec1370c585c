"""Iteration-based training loop (docs/training.md): SGD + warm-up cosine, periodic validation, atomic checkpoints.

    trainer = Trainer(cfg, model, loss_fn, optimizer, scheduler, train_set, val_set)
    trainer.resume("output/demo/latest")      # optional: exact resume (Global.checkpoints)
    history = trainer.train()

Determinism (what makes ``resume`` exact): the series order of every epoch comes from
``paddle.io.DistributedBatchSampler`` seeded by (Global.seed, epoch); micro-step ``m`` maps to (epoch, batch) by
arithmetic, so a resumed run reads the same batches. The randomness is keyed by the micro-batch's *global*
position ``g = m * world_size + rank`` (:meth:`SeriesBatches.position`: where Paddle's sampler takes rank ``r``'s
micro-batch ``m`` from the one-process order), not by rank: each item's augmentation draws from
``numpy.random.default_rng([seed, g, 0, slot])`` (``dataset.get(index, rng)``) and the global RNGs (dropout,
drop-path) are reseeded from (seed, g, 0) before every micro-batch. So W ranks x grad_accum A draw what 1 rank x
grad_accum W*A draws (same batches when the training set size is a multiple of W * batch_series), and with one
process and grad_accum 1 (g = iteration) the keys are those of the earlier per-rank, per-iteration scheme.

An iteration = one optimizer step = ``Global.grad_accum`` micro-batches of ``DataLoader.Train.batch_series``
series per process. Every rank evaluates its shard of the validation series (the predictions gathered, so all
ranks hold the metric); rank 0 alone logs and saves.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ..data.dataset import images_to_tensor, pin_batch, set_uint8_images, to_device
from ..utils.checkpoint import load_checkpoint, load_weights, read_manifest, save_checkpoint
from ..utils.provenance import training_provenance
from ..utils.env import amp_support, get_logger, gpu_device, pinned_place, set_thread_device, show_progress
from .evaluator import dataset_prior, evaluate, format_metrics


#: Settings that may change on resume without changing what the remaining iterations compute (logging, I/O,
#: threads, the data's location, inference-only sections, an ablation row's label). ``Global.iters`` is here because
#: continuing a run to more iterations is the documented use of resume (the schedule is stretched). Anything else
#: that changed is a warning.
RESUME_FREE = ("Global.iters", "Global.checkpoints", "Global.pretrained_model", "Global.output_dir",
               "Global.log_interval", "Global.eval_interval", "Global.save_interval", "Global.progress_bar",
               "Global.use_visualdl", "Global.num_threads", "Global.device", "Global.eval_max_series",
               "Global.keep_best", "Global.start_over", "Global.save_inference_dir", "Data.num_workers", "Data.root",
               "Data.cache_dir", "Data.index_file", "DataLoader.Train.num_workers", "DataLoader.Train.pin_memory",
               "DataLoader.Eval", "Infer",
               "Export", "PseudoLabel", "Ensemble", "SlicePretrain", "Ablation")
#: checkpoint prefixes whose presence means an output folder holds a run
RUN_CHECKPOINTS = ("latest", "best_model")


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in (tree or {}).items():
        if str(k).startswith("_"):
            continue
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(old: Optional[Mapping[str, Any]], new: Mapping[str, Any]) -> List[str]:
    """Dotted keys whose value differs between a checkpoint's config and this run's, outside :data:`RESUME_FREE`."""
    if not old:
        return []
    a, b = _flat(old), _flat(new)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in RESUME_FREE)  # noqa: E731
    return sorted(k for k in set(a) | set(b) if not free(k) and a.get(k) != b.get(k))


def claim_output_dir(cfg: Mapping[str, Any]) -> Any:
    """Rank 0 of ``tools/train.py``: the output folder's :class:`~ppihd.utils.runlock.RunLock` (a second run into it
    raises ``LockError`` naming the first); a folder that already holds checkpoints is refused (``RuntimeError``)
    unless this run resumes one (``Global.checkpoints``) or ``Global.start_over`` says to replace them."""
    from ..utils.runlock import RunLock

    g = cfg["Global"]
    out = str(g["output_dir"])
    lock = RunLock(out, "tools/train.py").acquire()
    held = [n for n in RUN_CHECKPOINTS if os.path.isfile(os.path.join(out, f"{n}.json"))]
    if held and not g["checkpoints"] and not g["start_over"]:
        lock.release()
        raise RuntimeError(f"{out} already holds a training run ({', '.join(held)}); resume it with -o "
                           f"Global.checkpoints={os.path.join(out, 'latest')}, choose another Global.output_dir, or "
                           "-o Global.start_over=true to train from scratch and replace its checkpoints")
    return lock


def window_reads(it: int, iters: int, log_interval: int, eval_interval: int, save_interval: int
                 ) -> Tuple[bool, bool, bool]:
    """After iteration ``it``: (log line due, evaluation due, save point). The trainer reads the loss window (and
    checks it is finite) when any is due. The same on every rank: only rank 0 saves, but every rank checks at a
    save point, since the check is agreed by an all_reduce (a rank-0-only check would leave the others waiting)."""
    log_due = it % log_interval == 0 or it == iters
    eval_due = bool(eval_interval) and it % eval_interval == 0 and it < iters
    save_point = bool(save_interval) and it % save_interval == 0 and it < iters
    return log_due, eval_due, save_point


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (2 ** 32) for p in parts]).generate_state(1)[0])


def length_bucket_batches(lengths: Any, batch_series: int, world_size: int, grad_accum: int, seed: int,
                          shuffle: bool = True) -> List[List[List[int]]]:
    """One epoch of length-bucketed micro-batches (``DataLoader.Train.length_buckets``): ``out[rank]`` lists that
    rank's micro-batches (series indices) in order; micro-batches ``s * grad_accum ... (s + 1) * grad_accum - 1``
    of every rank form optimizer step ``s``.

    The series, in a random order from ``default_rng(seed)`` (ties between equal lengths), are sorted by length and
    cut into groups of ``world_size * grad_accum * batch_series`` neighbours: one group per optimizer step, so the
    ranks of a step wait for series of similar length. The groups' order is then shuffled (same generator). Each
    series is in exactly one micro-batch; a last group with fewer series than the step's ``world_size * grad_accum``
    micro-batches repeats its own series to fill them (as ``DistributedBatchSampler`` pads an epoch), and a short
    last group gives smaller micro-batches. ``shuffle`` False: sorted order, groups in length order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n, world, accum = len(lengths), max(1, int(world_size)), max(1, int(grad_accum))
    per_step = world * accum                            # micro-batches of one optimizer step, all ranks
    group = per_step * max(1, int(batch_series))        # series of one optimizer step
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(n) if shuffle else np.arange(n)
    order = order[np.argsort(lengths[order], kind="stable")]
    steps = -(-n // group)
    groups = [order[s * group:(s + 1) * group] for s in range(steps)]
    if steps and len(groups[-1]) < per_step:
        groups[-1] = np.resize(groups[-1], per_step)    # cyclic repeat of the group's own series
    if shuffle:
        groups = [groups[i] for i in rng.permutation(steps)]
    out: List[List[List[int]]] = [[] for _ in range(world)]
    for g in groups:
        for j, mb in enumerate(np.array_split(g, per_step)):   # micro-batch j of the step: rank j % world
            out[j % world].append([int(i) for i in mb])
    return out


class SeriesBatches:
    """Deterministic, endless stream of collated training batches for one process.

    ``batch(m)`` is micro-batch ``m`` (0-based, counted from the start of training) as the collated dict of the
    dataset contract; ``iterate(start)`` yields ``batch(start), batch(start + 1), ...`` and prefetches with
    ``num_workers`` threads (0 = in line).

    ``length_buckets`` (``DataLoader.Train.length_buckets``): each epoch's micro-batches come from
    :func:`length_bucket_batches` over ``dataset.series_lengths()`` (the ``grad_accum`` micro-batches of all ranks
    in an optimizer step hold series of similar length) instead of ``DistributedBatchSampler``'s uniform shards.
    ``pin_memory`` (``DataLoader.Train.pin_memory``): on a GPU the prefetch threads copy each batch's device-bound
    arrays into page-locked memory (``ppihd.data.dataset.pin_batch``), so the step's host -> device copies are
    asynchronous; on CPU nothing changes.
    """

    def __init__(self, dataset: Any, batch_series: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, num_workers: int = 0, collate_fn: Optional[Callable] = None,
                 grad_accum: int = 1, length_buckets: bool = False, pin_memory: bool = False) -> None:
        import paddle

        if len(dataset) == 0:
            raise ValueError("training set is empty: check Data.root / the cache index split column")
        if collate_fn is None:
            from ..data.dataset import collate_series as collate_fn
        self.dataset, self.collate = dataset, collate_fn
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.batch_series, self.grad_accum, self.shuffle = int(batch_series), max(1, int(grad_accum)), bool(shuffle)
        self.sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=int(batch_series),
                                                         num_replicas=self.world, rank=self.rank,
                                                         shuffle=bool(shuffle), drop_last=False)
        self.lengths: Optional[np.ndarray] = None
        if length_buckets:
            if not hasattr(dataset, "series_lengths"):
                raise ValueError(f"DataLoader.Train.length_buckets needs the slice count of every series, and the "
                                 f"training set ({type(dataset).__name__}) has no series_lengths(); use a "
                                 "SeriesDataset / MixedDataset or set DataLoader.Train.length_buckets=false")
            self.lengths = np.asarray(dataset.series_lengths(), dtype=np.int64)
        self.pin_place = pinned_place() if pin_memory else None   # None on CPU
        self.thread_device = gpu_device()   # the prefetch threads' CUDA device: this rank's GPU, not GPU 0
        self._epoch = None
        self._batches: List[List[int]] = []
        self._lock = threading.Lock()  # prefetch threads ask for batches of two epochs at an epoch boundary
        self._fetch = dataset.get if hasattr(dataset, "get") else (lambda i, rng: dataset[i])

    def __len__(self) -> int:
        """Micro-batches per epoch for this process (with ``length_buckets`` a multiple of ``grad_accum``: epochs
        end on an optimizer step)."""
        if self.lengths is None:
            return len(self.sampler)
        group = self.world * self.grad_accum * max(1, self.batch_series)
        return -(-len(self.lengths) // group) * self.grad_accum

    def _epoch_batches(self, epoch: int) -> List[List[int]]:
        seed = _seed_for(self.seed, epoch) % (2 ** 31)
        if self.lengths is not None:
            return length_bucket_batches(self.lengths, self.batch_series, self.world, self.grad_accum, seed,
                                         self.shuffle)[self.rank]
        self.sampler.set_epoch(seed)
        return [list(b) for b in self.sampler]

    def indices(self, m: int) -> List[int]:
        """Series indices of micro-batch ``m``. Thread-safe: the sampler's epoch and the cached batch list are read
        and replaced together under a lock (the prefetch threads straddle epoch boundaries)."""
        epoch, k = divmod(int(m), len(self))
        with self._lock:
            if epoch != self._epoch:
                self._batches = self._epoch_batches(epoch)
                self._epoch = epoch
            return list(self._batches[k])

    def position(self, m: int) -> int:
        """Global position ``g`` of this process's micro-batch ``m``: ``m * world_size + rank``.

        ``paddle.io.DistributedBatchSampler`` (Paddle 2.6 and 3.x) shuffles the padded index list with the epoch's
        seed, then gives rank ``r`` the blocks that start at ``r * B, (r + W) * B, ...``: rank ``r``'s ``k``-th
        micro-batch of an epoch is block ``k * W + r`` of the one-process order. With ``len(dataset)`` a multiple of
        ``W * B`` every epoch has ``len / (W B)`` micro-batches per rank, so ``g`` is also the one-process micro-batch
        index across epochs. Otherwise the last micro-batches of an epoch are cut differently (the remainder is split
        evenly over the ranks; with ``len % W != 0`` the sampler also pads with repeated series, which changes the
        shuffle): the keys stay distinct, the batches are not the one-process ones."""
        return int(m) * self.world + self.rank

    def _items(self, m: int) -> List[Any]:
        g = self.position(m)
        return [self._fetch(i, np.random.default_rng([self.seed, g, 0, slot]))
                for slot, i in enumerate(self.indices(m))]

    def batch(self, m: int) -> Dict[str, Any]:
        return self.collate(self._items(m))

    def host_batch(self, m: int) -> Dict[str, Any]:
        """:meth:`batch`, its device-bound arrays in page-locked memory on a GPU run (``pin_memory``)."""
        b = self.batch(m)
        return b if self.pin_place is None else pin_batch(b, self.pin_place)

    def iterate(self, start: int) -> Iterator[Dict[str, Any]]:
        # pinned batches stay referenced for a few steps after they are yielded: their asynchronous copies to the
        # device may still be queued when the step returns (the host runs ahead of the GPU)
        keep: Any = collections.deque(maxlen=max(2, self.num_workers) + 2) if self.pin_place is not None else None
        if self.num_workers <= 0:
            m = start
            while True:
                b = self.host_batch(m)
                if keep is not None:
                    keep.append(b)
                yield b
                m += 1
        on_gpu = {"initializer": set_thread_device, "initargs": (self.thread_device,)} if self.thread_device else {}
        with ThreadPoolExecutor(self.num_workers, **on_gpu) as pool:
            ahead = max(2, self.num_workers)
            futures = {m: pool.submit(self.host_batch, m) for m in range(start, start + ahead)}
            m = start
            while True:
                b = futures.pop(m).result()
                futures[m + ahead] = pool.submit(self.host_batch, m + ahead)
                if keep is not None:
                    keep.append(b)
                yield b
                m += 1


class RankNormStats:
    """BatchNorm running statistics under ``W`` ranks equal to those of one process running all ranks' micro-batches.

    ``paddle.DataParallel`` averages the gradients but not the running mean / variance each BatchNorm layer updates
    in its forward (only the start values are broadcast), so rank ``r``'s would follow its own micro-batches alone.
    One process updates ``s <- mu s + c_g`` (``c_g = (1 - mu) x_g``, ``x_g`` micro-batch ``g``'s statistic) in the
    order of :meth:`SeriesBatches.position`; over an iteration of ``n = W * A`` micro-batches that is
    ``s_new = mu^n s_old + sum_j mu^(n-1-j) c_j``. Each rank reads its terms ``c_j = s_after - mu s_before`` around
    its own forwards, weights them by their place ``j = k * W + rank`` in the iteration, and one all-reduce (per
    iteration, all layers in one tensor) sums them. Equal up to float rounding; the conv stem
    (``Arch.backbone.stem: conv``, the demo) is where ppihd has BatchNorm."""

    def __init__(self, net: Any, rank: int, world_size: int, grad_accum: int) -> None:
        self.rank, self.world, self.n = int(rank), int(world_size), int(world_size) * int(grad_accum)
        self.layers = [l for l in net.sublayers(include_self=True)
                       if all(hasattr(l, a) for a in ("_mean", "_variance", "_momentum"))]
        self.active: List[Any] = []

    def begin(self) -> None:
        """Start of an iteration (the model in train mode): remember the statistics."""
        self.active = [l for l in self.layers if l.training and not getattr(l, "_use_global_stats", False)]
        self.start = [(l._mean.clone(), l._variance.clone()) for l in self.active]
        self.acc = [(l._mean * 0.0, l._variance * 0.0) for l in self.active]

    def before(self) -> None:
        self.prev = [(l._mean.clone(), l._variance.clone()) for l in self.active]

    def after(self, k: int) -> None:
        """After the forward of this process's ``k``-th micro-batch of the iteration."""
        j = int(k) * self.world + self.rank
        for i, l in enumerate(self.active):
            mu = float(l._momentum)
            w = mu ** (self.n - 1 - j)
            (pm, pv), (am, av) = self.prev[i], self.acc[i]
            self.acc[i] = (am + (l._mean - mu * pm) * w, av + (l._variance - mu * pv) * w)

    def end(self) -> None:
        """End of the iteration: every rank's statistics = the one-process ones."""
        import paddle
        import paddle.distributed as dist

        if not self.active:
            return
        parts = [t.reshape([-1]) for pair in self.acc for t in pair]
        flat = paddle.concat(parts)
        dist.all_reduce(flat)
        at = 0
        for l, (sm, sv) in zip(self.active, self.start):
            mu_n = float(l._momentum) ** self.n
            for buf, s0 in ((l._mean, sm), (l._variance, sv)):
                size = int(np.prod(buf.shape))
                buf.set_value(s0 * mu_n + flat[at:at + size].reshape(buf.shape))
                at += size


class Trainer:
    """Runs the loop; owns nothing it did not receive (model, loss, optimizer, scheduler, datasets).

    Args:
        cfg: the resolved config (``Global`` training keys, ``DataLoader``, ``Metric``).
        model: the network (already wrapped in ``paddle.DataParallel`` when ``world_size > 1``).
        loss_fn: ``(outputs, labels, mask, label_mask, is_pseudo=None) -> {"loss", ...}``.
        optimizer, scheduler: built by :mod:`ppihd.optimizer`; the scheduler is stepped once per iteration.
        train_set, val_set: series datasets (contract in docs/architecture.md); ``val_set`` may be None.
        collate_fn: defaults to ``ppihd.data.dataset.collate_series``.
    """

    def __init__(self, cfg: Mapping[str, Any], model: Any, loss_fn: Callable, optimizer: Any, scheduler: Any,
                 train_set: Any, val_set: Any = None, collate_fn: Optional[Callable] = None, rank: int = 0,
                 world_size: int = 1, logger: Any = None) -> None:
        g = cfg["Global"]
        self.cfg = cfg
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.train_set, self.val_set, self.collate_fn = train_set, val_set, collate_fn
        self.rank, self.world = int(rank), int(world_size)
        self.is_main = self.rank == 0
        self.iters = int(g["iters"])
        self.seed = int(g["seed"])
        self.out_dir = str(g["output_dir"])
        self.log_interval = max(1, int(g["log_interval"]))
        self.eval_interval = int(g["eval_interval"] or 0)
        self.save_interval = int(g["save_interval"] or 0)
        self.grad_accum = max(1, int(g["grad_accum"]))
        self.eval_max_series = g["eval_max_series"]
        self.keep_best = bool(g["keep_best"])
        self.progress = show_progress(g["progress_bar"]) and self.is_main
        self.amp = g["amp"]
        self.amp_max_bad_steps = max(1, int(g["amp_max_bad_steps"]))
        self._provenance: Optional[Dict[str, Any]] = None   # what the checkpoints record (made at the first save)
        self._reader_s = 0.0                                 # seconds spent waiting for batches (log window)
        tl = cfg["DataLoader"]["Train"]
        if tl["uint8"]:  # uint8 until _forward_loss (images_to_tensor): same numbers, less loader work
            set_uint8_images(train_set)
        self.batches = SeriesBatches(train_set, int(tl["batch_series"]), self.seed, self.rank, self.world,
                                     bool(tl["shuffle"]), int(tl["num_workers"]), collate_fn, self.grad_accum,
                                     bool(tl["length_buckets"]), bool(tl["pin_memory"]))
        self.start_iter = 0
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None
        self.history: Dict[str, List[Any]] = {"train": [], "eval": []}
        self.prior: Optional[np.ndarray] = None
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
        self.log = logger or get_logger("ppihd.train", os.path.join(self.out_dir, "train.log") if self.is_main
                                        else None)
        self.scaler = self._setup_amp()
        norm = RankNormStats(self.net, self.rank, self.world, self.grad_accum) if self.world > 1 else None
        self._norm_stats = norm if norm is not None and norm.layers else None
        self._vdl = None
        self._reset_window()

    # -- set-up ------------------------------------------------------------------------------------------------
    def _setup_amp(self) -> Any:
        import paddle

        if not self.amp:
            return None
        if self.amp not in ("fp16", "bf16"):
            raise ValueError(f"Global.amp must be null, fp16 or bf16, got {self.amp!r}")
        ok, why = amp_support(self.amp)
        if not ok:  # Paddle itself would only warn and run fp32
            raise ValueError(why)
        self.log.info("AMP %s: %s", self.amp, why)
        return paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if self.amp == "fp16" else None

    @property
    def net(self) -> Any:
        """The bare model (inside ``paddle.DataParallel``)."""
        return getattr(self.model, "_layers", self.model)

    def load_pretrained(self, path: str) -> None:
        """Weights only (``Global.pretrained_model``): iteration, optimizer and schedule start fresh."""
        rep = load_weights(self.net, path)
        self.log.info("loaded weights from %s (unexpected keys: %d)", path, len(rep["unexpected"]))

    def resume(self, prefix: str) -> None:
        """Exact resume from a checkpoint prefix (``Global.checkpoints``): weights, optimizer, schedule, RNGs,
        iteration, best metric and history."""
        read_manifest(prefix)  # clear error before touching the model
        state = load_checkpoint(prefix, self.net, self.optimizer, self.scheduler)
        self.start_iter = int(state["iteration"])
        changed = changed_settings(state.get("config"), self.cfg)
        if changed:
            old, new = _flat(state.get("config")), _flat(self.cfg)
            self.log.warning("resuming %s with settings that differ from the checkpoint's, so the run is no longer "
                             "the one that was interrupted: %s", prefix,
                             "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed))
        saved = state.get("extra", {}).get("scaler")
        if self.scaler is not None and saved:
            self.scaler.load_state_dict(saved)  # loss scale and its counters: an fp16 resume continues exactly
        elif self.scaler is not None:
            self.log.warning("%s has no GradScaler state (saved without fp16 AMP): the loss scale starts afresh",
                             prefix)
        self.best_metric, self.best_iter = state.get("best_metric"), state.get("best_iter")
        self.history = state.get("extra", {}).get("history", self.history)
        self.log.info("resumed from %s at iteration %d (best %s at %s)", prefix, self.start_iter,
                      self.best_metric, self.best_iter)

    # -- one iteration -----------------------------------------------------------------------------------------
    def _reseed(self, g: int) -> None:
        """Seed Python's, NumPy's and Paddle's global RNGs (dropout, drop-path) for global micro-batch ``g``
        (:meth:`SeriesBatches.position`); the trailing 0 keeps the seeds of 1 process x grad_accum 1 (``g`` = the
        iteration) those of the earlier ``(seed, iteration, rank)`` keying."""
        import paddle

        s = _seed_for(self.seed, g, 0)
        random.seed(s)
        np.random.seed(s)
        paddle.seed(s)

    def _forward_loss(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        import paddle

        images = images_to_tensor(batch["images"])
        host_mask = np.asarray(batch["mask"], dtype=bool)
        mask = paddle.to_tensor(host_mask)
        # no padding (always with batch_series 1, the paper's setting): the model needs no mask, which saves its
        # nonzero() (a device -> host sync); a full key-padding mask and none give the same numbers (tested)
        model_mask = None if host_mask.all() else mask
        labels = to_device(batch["labels"])   # pinned tensors (GPU prefetch): asynchronous copies
        lm = batch.get("label_mask")
        lm = to_device(lm) if lm is not None else None
        pseudo = batch.get("is_pseudo")
        pseudo = paddle.to_tensor(np.asarray(pseudo, dtype="float32")) if pseudo is not None else None
        if self.amp:
            with paddle.amp.auto_cast(level="O1", dtype="float16" if self.amp == "fp16" else "bfloat16"):
                out = self.model(images, model_mask)
        else:
            out = self.model(images, model_mask)
        kw = {"is_pseudo": pseudo} if pseudo is not None else {}
        return self.loss_fn(out, labels, mask, lm, **kw)

    def _sync_context(self, last: bool) -> Any:
        """``no_sync`` for all but the last micro-batch of an accumulated step under ``paddle.DataParallel``: the
        gradients add up locally and are all-reduced once (with the last backward) instead of every micro-batch."""
        if last or self.world <= 1 or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def train_step(self, it: int, stream: Iterator[Dict[str, Any]]) -> Dict[str, Any]:
        """One optimizer step from ``grad_accum`` micro-batches. Returns the loss terms (averaged over the micro-
        batches) as device tensors -- nothing here waits for the device -- and ``slices`` (a host int).

        With fp16 the GradScaler skips a step whose gradients are not finite (and lowers the scale); whether it did
        is also kept on the device (``found_inf``), counted by :meth:`_account`."""
        self.model.train()
        norm = self._norm_stats
        if norm is not None:
            norm.begin()
        terms_sum: Dict[str, Any] = {}
        n_slices = 0
        for k in range(self.grad_accum):
            self._reseed(self.batches.position(it * self.grad_accum + k))
            t_read = time.perf_counter()
            batch = next(stream)
            self._reader_s += time.perf_counter() - t_read   # reader_cost: waiting for the loader
            n_slices += int(np.asarray(batch["mask"]).sum())
            with self._sync_context(k == self.grad_accum - 1):
                if norm is not None:
                    norm.before()
                terms = self._forward_loss(batch)
                if norm is not None:
                    norm.after(k)
                loss = terms["loss"] / self.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            for name, v in terms.items():
                v = v.detach() / self.grad_accum
                terms_sum[name] = terms_sum[name] + v if name in terms_sum else v
        if norm is not None:
            norm.end()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()
        terms_sum["slices"] = n_slices
        if self.scaler is not None:
            found = getattr(self.scaler, "_found_inf", None)  # set by the scaler's unscale, both Paddle 2.6 and 3.x
            terms_sum["found_inf"] = found
        return terms_sum

    # -- device-side accounting of the logged values ----------------------------------------------------------
    def _reset_window(self) -> None:
        self._acc: Dict[str, Any] = {}   # loss term -> device sum over the window's (finite) steps
        self._acc_n: Any = 0             # steps summed: host int (fp32 / bf16) or device count of finite steps (fp16)
        self._win_steps = 0
        self._win_first = None

    def _account(self, it: int, terms: Dict[str, Any]) -> None:
        """Add one step's terms to the window on the device; with fp16 also the bad-step run (device counters)."""
        import paddle

        found = terms.pop("found_inf", None)
        if self._win_first is None:
            self._win_first = it
        self._win_steps += 1
        if self.scaler is None or found is None:
            for k, v in terms.items():
                self._acc[k] = self._acc[k] + v if k in self._acc else v
            self._acc_n += 1
            return
        bad = found.astype("float32").reshape([])
        good = 1.0 - bad
        for k, v in terms.items():  # a skipped step's loss is inf / nan: it is not averaged into the log line
            v = paddle.where(bad > 0, paddle.zeros_like(v), v)
            self._acc[k] = self._acc[k] + v if k in self._acc else v
        self._acc_n = self._acc_n + good
        if not hasattr(self, "_bad_run"):
            self._bad_run = paddle.zeros([], "float32")
            self._bad_max = paddle.zeros([], "float32")
            self._bad_total = paddle.zeros([], "float32")
        self._bad_run = (self._bad_run + 1.0) * bad   # consecutive skipped steps, 0 after a good one
        self._bad_max = paddle.maximum(self._bad_max, self._bad_run)
        self._bad_total = self._bad_total + bad

    def _read_window(self, it: int) -> Dict[str, float]:
        """The window's mean loss terms: ONE device -> host read for all of them (at log / eval / save points).

        fp32 / bf16: a non-finite mean stops the run (FloatingPointError) before anything is saved or evaluated.
        fp16: skipped steps are logged; ``Global.amp_max_bad_steps`` skipped in a row stop the run."""
        import paddle

        names = sorted(self._acc)
        parts = [self._acc[k].astype("float32").reshape([1]) for k in names]
        fp16 = self.scaler is not None and hasattr(self, "_bad_run")
        if fp16:
            parts += [paddle.to_tensor(self._acc_n).astype("float32").reshape([1]), self._bad_max.reshape([1]),
                      self._bad_total.reshape([1]), self._bad_run.reshape([1])]
        vals = paddle.concat(parts).numpy() if parts else np.zeros([0], "float32")
        error: Optional[str] = None
        span = f"iterations {self._win_first}-{it - 1}" if self._win_first is not None else f"iteration {it}"
        if fp16:
            n_ok, bad_max, bad_total, bad_run = (float(v) for v in vals[len(names):])
            vals = vals[:len(names)]
            if bad_total:
                st = self.scaler.state_dict() or {}
                scale = float(np.asarray(st["scale"]).reshape(-1)[0]) if "scale" in st else None
                self.log.warning("%s: fp16 GradScaler skipped %d step(s) with non-finite gradients (longest run %d, "
                                 "loss scale now %s)", span, int(bad_total), int(bad_max), scale)
            if bad_max >= self.amp_max_bad_steps:
                error = (f"{span}: {int(bad_max)} fp16 steps in a row had non-finite gradients (Global."
                         f"amp_max_bad_steps={self.amp_max_bad_steps}); the loss scale could not recover. Lower "
                         "Optimizer.lr.learning_rate, set Global.grad_clip, or train with -o Global.amp=bf16 / null")
            self._bad_max = self._bad_run  # the current run carries over into the next window
            self._bad_total = paddle.zeros([], "float32")
            n = max(n_ok, 1.0)
        else:
            n = max(float(self._acc_n), 1.0)
        means = {k: float(v) / n for k, v in zip(names, vals)}
        if not fp16 and not all(math.isfinite(v) for v in means.values()):
            error = (f"{span}: loss is not finite (means {means}); lower Optimizer.lr.learning_rate or set "
                     "Global.grad_clip")
        self._agree_finite(error)
        return means

    def _agree_finite(self, error: Optional[str]) -> None:
        """Raise FloatingPointError on EVERY rank when any rank's window check failed (``error``: this rank's).

        Several ranks: one small all_reduce of the per-rank failure flags (the checks run at the same iterations on
        every rank, :func:`window_reads`), so no rank raises while the others wait in a collective. One rank: no
        sync."""
        if self.world > 1:
            import paddle
            import paddle.distributed as dist

            flags = np.zeros([self.world], "float32")
            flags[self.rank] = error is not None
            t = paddle.to_tensor(flags)
            dist.all_reduce(t)
            failed = [r for r, f in enumerate(t.numpy()) if f > 0]
            if failed and error is None:
                error = (f"rank(s) {', '.join(map(str, failed))} of {self.world} stopped: their loss window check "
                         "failed (non-finite loss or fp16 bad steps; see those ranks' worker logs)")
            elif failed:
                error = f"rank {self.rank} of {self.world}: {error}"
        if error is not None:
            raise FloatingPointError(error)

    # -- evaluation / saving -----------------------------------------------------------------------------------
    def evaluate(self, max_series: Optional[int] = None) -> Optional[Dict[str, Any]]:
        if self.val_set is None or len(self.val_set) == 0:
            return None
        if self.prior is None:
            self.prior = dataset_prior(self.train_set)
        return evaluate(self.net, self.val_set, self.cfg, max_series=max_series, prior=self.prior,
                        collate_fn=self.collate_fn, progress=self.progress, rank=self.rank, world_size=self.world)

    def save(self, name: str, it: int) -> None:
        if not self.is_main:
            return
        cfg = {k: v for k, v in self.cfg.items()}
        extra = {"history": self.history}
        if self.scaler is not None:
            extra["scaler"] = self.scaler.state_dict()
        if self._provenance is None:
            self._provenance = training_provenance(self.cfg, {"train": len(self.train_set),
                                                              "val": len(self.val_set) if self.val_set else 0})
        save_checkpoint(os.path.join(self.out_dir, name), self.net, self.optimizer, self.scheduler, it,
                        self.best_metric, self.best_iter, cfg, extra, provenance=self._provenance)

    def _eval_and_maybe_best(self, it: int, final: bool = False) -> None:
        res = self.evaluate(None if final else self.eval_max_series)
        if res is None or res.get("head2") is None:
            return
        wll = res["head2"]["weighted_log_loss"]
        row = {"iter": it, "head2": wll,
               "head1": res["head1"]["weighted_log_loss"] if res.get("head1") else None,
               "baseline": res["baseline"]["weighted_log_loss"] if res.get("baseline") else None,
               "mean_auc": res["head2"]["mean_auc"]}
        self.history["eval"].append(row)
        if self.is_main:
            self.log.info("iter %d\n%s", it, format_metrics(res))
        self._scalar("eval/head2_wll", wll, it)
        for cls, v in (res["head2"].get("log_loss") or {}).items():   # per class, as the competition weighs them
            self._scalar(f"eval/head2_log_loss/{cls}", v, it)
        for cls, v in (res["head2"].get("auc") or {}).items():
            if v is not None:
                self._scalar(f"eval/head2_auc/{cls}", v, it)
        if row["head1"] is not None:
            self._scalar("eval/head1_wll", row["head1"], it)
        if self.best_metric is None or wll < self.best_metric:
            self.best_metric, self.best_iter = wll, it
            if self.keep_best:
                self.save("best_model", it)
                if self.is_main:
                    self.log.info("new best head-2 weighted log loss %.5f at iteration %d -> %s", wll, it,
                                  os.path.join(self.out_dir, "best_model"))

    def _scalar(self, tag: str, value: float, it: int) -> None:
        if self._vdl is not None:
            self._vdl.add_scalar(tag, float(value), int(it))

    def _open_visualdl(self) -> None:
        if not (self.is_main and self.cfg["Global"]["use_visualdl"]):
            return
        try:
            from visualdl import LogWriter  # optional dependency
        except ImportError:
            self.log.warning("Global.use_visualdl is on but visualdl is not installed (pip install visualdl, part of "
                             "ppihd's requirements); "
                             "continuing without it")
            return
        self._vdl = LogWriter(logdir=os.path.join(self.out_dir, "vdl"))

    # -- the loop ----------------------------------------------------------------------------------------------
    def train(self, until: Optional[int] = None) -> Dict[str, Any]:
        """Train from ``start_iter`` to ``Global.iters``; returns the history (train rows, eval rows, best).

        ``until`` stops early after that iteration (saving ``latest``; the schedule still spans Global.iters), as
        if the job had been stopped there.
        """
        from tqdm import tqdm

        self._open_visualdl()
        it = self.start_iter
        if it >= self.iters:
            self.log.info("nothing to do: checkpoint iteration %d >= Global.iters %d", it, self.iters)
            return self._finish(it, evaluated=True)
        if self.is_main:
            self.log.info("training iterations %d -> %d: %d train series, %s val series, %d process(es), "
                          "%d micro-batch(es) per iteration", it, self.iters, len(self.train_set),
                          len(self.val_set) if self.val_set is not None else 0, self.world, self.grad_accum)
        stream = self.batches.iterate(it * self.grad_accum)
        bar = tqdm(total=self.iters, initial=it, desc="train", disable=not self.progress, dynamic_ncols=True)
        self._reset_window()
        slices_acc, t_window, t_start, it_start, it_window = 0, time.time(), time.time(), it, it
        self._reader_s = 0.0
        evaluated_at = None
        stop = self.iters if until is None else min(int(until), self.iters)
        while it < stop:
            lr = float(self.scheduler.get_lr())
            terms = self.train_step(it, stream)
            slices_acc += terms.pop("slices")
            self._account(it, terms)
            it += 1
            bar.update(1)
            # every rank evaluates (its shard of the validation series, gathered): no rank idles in a collective
            log_due, eval_due, save_point = window_reads(it, self.iters, self.log_interval, self.eval_interval,
                                                         self.save_interval)
            save_due = self.is_main and save_point   # the checks below are every rank's (the same iterations)
            if log_due:
                now = time.time()
                means = self._read_window(it)
                sps = slices_acc * self.world / max(now - t_window, 1e-9)
                eta = (now - t_start) / max(it - it_start, 1) * (self.iters - it)
                steps = max(it - it_window, 1)
                batch_cost, reader_cost = (now - t_window) / steps, self._reader_s / steps
                row = {"iter": it, "lr": lr, "slices_per_s": sps, "batch_cost": batch_cost, "reader_cost": reader_cost,
                       **means}
                self.history["train"].append(row)
                if self.is_main:   # PaddleClas-style timing: is the loader keeping up (reader_cost << batch_cost)?
                    terms_s = " ".join(f"{k} {v:.4f}" for k, v in means.items())
                    self.log.info("iter %d/%d %s lr %.3g batch_cost %.4f s reader_cost %.4f s ips %.1f slices/s "
                                  "eta %s", it, self.iters, terms_s, lr, batch_cost, reader_cost, sps,
                                  time.strftime("%H:%M:%S", time.gmtime(eta)))
                    self._scalar("train/batch_cost", batch_cost, it)
                    self._scalar("train/reader_cost", reader_cost, it)
                    self._scalar("train/ips", sps, it)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2g}")
                    for k, v in means.items():
                        self._scalar(f"train/{k}", v, it)
                    self._scalar("train/lr", lr, it)
                self._reset_window()
                slices_acc, t_window, it_window, self._reader_s = 0, time.time(), it, 0.0
            elif eval_due or save_point:
                self._read_window(it)  # the finiteness / bad-step checks before anything is evaluated or saved
            if eval_due:
                self._eval_and_maybe_best(it)
                evaluated_at = it
            if save_due:
                self.save("latest", it)
        bar.close()
        if it < self.iters:  # stopped early
            if self._win_steps:
                self._read_window(it)  # finiteness / bad-step checks before the save
            self.save("latest", it)
            if self._vdl is not None:
                self._vdl.close()
                self._vdl = None
            return {**self.history, "best_metric": self.best_metric, "best_iter": self.best_iter}
        return self._finish(it, evaluated=evaluated_at == it)

    def _finish(self, it: int, evaluated: bool) -> Dict[str, Any]:
        if not evaluated:  # every rank: the evaluation is sharded over the ranks
            self._eval_and_maybe_best(it, final=True)
        if self.is_main:
            self.save("latest", it)
            with open(os.path.join(self.out_dir, "history.json"), "w", encoding="utf-8") as f:
                json.dump({**self.history, "best_metric": self.best_metric, "best_iter": self.best_iter}, f,
                          indent=1)
            self.plot_curves()
            if self.best_metric is not None:
                self.log.info("best head-2 weighted log loss %.5f at iteration %s", self.best_metric, self.best_iter)
        if self._vdl is not None:
            self._vdl.close()
        return {**self.history, "best_metric": self.best_metric, "best_iter": self.best_iter}

    def plot_curves(self) -> Optional[str]:
        """``<output_dir>/curves.png``: training loss terms and validation weighted log loss vs iteration."""
        if not self.history["train"]:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        tr = self.history["train"]
        for k in [k for k in tr[-1] if k not in ("iter", "lr", "slices_per_s")]:
            axes[0].plot([r["iter"] for r in tr], [r.get(k) for r in tr], label=k)
        axes[0].set_xlabel("iteration"); axes[0].set_ylabel("training loss"); axes[0].legend()
        ev = self.history["eval"]
        if ev:
            axes[1].plot([r["iter"] for r in ev], [r["head2"] for r in ev], "o-", label="head 2")
            if any(r.get("head1") is not None for r in ev):
                axes[1].plot([r["iter"] for r in ev], [r["head1"] for r in ev], "s--", label="head 1")
            if ev[-1].get("baseline") is not None:
                axes[1].axhline(ev[-1]["baseline"], color="gray", ls=":", label="constant prior")
            axes[1].legend()
        axes[1].set_xlabel("iteration"); axes[1].set_ylabel("val weighted log loss")
        fig.tight_layout()
        path = os.path.join(self.out_dir, "curves.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path
