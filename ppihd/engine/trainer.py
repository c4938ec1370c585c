"""Iteration-based training loop (SPEC §5): SGD + warm-up cosine, periodic validation, atomic checkpoints.

    trainer = Trainer(cfg, model, loss_fn, optimizer, scheduler, train_set, val_set)
    trainer.resume("output/demo/latest")      # optional: exact resume (Global.checkpoints)
    history = trainer.train()

Determinism (what makes ``resume`` exact): the series order of every epoch comes from
``paddle.io.DistributedBatchSampler`` seeded by (Global.seed, epoch); micro-step ``m`` maps to (epoch, batch) by
arithmetic, so a resumed run reads the same batches. Each item's augmentation draws from
``numpy.random.default_rng([seed, m, rank, slot])`` (``dataset.get(index, rng)``) and the global RNGs (dropout,
drop-path) are reseeded from (seed, iteration, rank) before every iteration.

An iteration = one optimizer step = ``Global.grad_accum`` micro-batches of ``DataLoader.Train.batch_series``
series per process. Rank 0 alone logs, evaluates and saves.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np

from ..data.dataset import images_to_tensor, set_uint8_images
from ..utils.checkpoint import load_checkpoint, load_weights, read_manifest, save_checkpoint
from ..utils.env import get_logger
from .evaluator import dataset_prior, evaluate, format_metrics


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % (2 ** 32) for p in parts]).generate_state(1)[0])


class SeriesBatches:
    """Deterministic, endless stream of collated training batches for one process.

    ``batch(m)`` is micro-batch ``m`` (0-based, counted from the start of training) as the collated dict of the
    dataset contract; ``iterate(start)`` yields ``batch(start), batch(start + 1), ...`` and prefetches with
    ``num_workers`` threads (0 = in line).
    """

    def __init__(self, dataset: Any, batch_series: int = 1, seed: int = 42, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, num_workers: int = 0, collate_fn: Optional[Callable] = None) -> None:
        import paddle

        if len(dataset) == 0:
            raise ValueError("training set is empty: check Data.root / the cache index split column")
        if collate_fn is None:
            from ..data.dataset import collate_series as collate_fn
        self.dataset, self.collate = dataset, collate_fn
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=int(batch_series),
                                                         num_replicas=self.world, rank=self.rank,
                                                         shuffle=bool(shuffle), drop_last=False)
        self._epoch = None
        self._batches: List[List[int]] = []
        self._fetch = dataset.get if hasattr(dataset, "get") else (lambda i, rng: dataset[i])

    def __len__(self) -> int:
        """Micro-batches per epoch for this process."""
        return len(self.sampler)

    def indices(self, m: int) -> List[int]:
        epoch, k = divmod(int(m), len(self.sampler))
        if epoch != self._epoch:
            self.sampler.set_epoch(_seed_for(self.seed, epoch) % (2 ** 31))
            self._batches = [list(b) for b in self.sampler]
            self._epoch = epoch
        return self._batches[k]

    def _items(self, m: int) -> List[Any]:
        return [self._fetch(i, np.random.default_rng([self.seed, int(m), self.rank, slot]))
                for slot, i in enumerate(self.indices(m))]

    def batch(self, m: int) -> Dict[str, Any]:
        return self.collate(self._items(m))

    def iterate(self, start: int) -> Iterator[Dict[str, Any]]:
        if self.num_workers <= 0:
            m = start
            while True:
                yield self.batch(m)
                m += 1
        with ThreadPoolExecutor(self.num_workers) as pool:
            ahead = max(2, self.num_workers)
            futures = {m: pool.submit(self.batch, m) for m in range(start, start + ahead)}
            m = start
            while True:
                b = futures.pop(m).result()
                futures[m + ahead] = pool.submit(self.batch, m + ahead)
                yield b
                m += 1


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
        self.grad_accum = max(1, int(g.get("grad_accum") or 1))
        self.eval_max_series = g.get("eval_max_series")
        self.keep_best = bool(g.get("keep_best", True))
        self.progress = bool(g.get("progress_bar", True)) and self.is_main
        self.amp = g.get("amp")
        tl = cfg["DataLoader"]["Train"]
        if tl.get("uint8", True):  # uint8 until _forward_loss (images_to_tensor): same numbers, less loader work
            set_uint8_images(train_set)
        self.batches = SeriesBatches(train_set, int(tl["batch_series"]), self.seed, self.rank, self.world,
                                     bool(tl.get("shuffle", True)), int(tl.get("num_workers", 0)), collate_fn)
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
        self._vdl = None

    # -- set-up ------------------------------------------------------------------------------------------------
    def _setup_amp(self) -> Any:
        import paddle

        if not self.amp:
            return None
        if self.amp not in ("fp16", "bf16"):
            raise ValueError(f"Global.amp must be null, fp16 or bf16, got {self.amp!r}")
        if not str(paddle.device.get_device()).startswith("gpu"):
            raise ValueError(f"Global.amp={self.amp} needs a GPU (Global.device=gpu); this run is on "
                             f"{paddle.device.get_device()}. Use -o Global.amp=null on CPU.")
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
        self.best_metric, self.best_iter = state.get("best_metric"), state.get("best_iter")
        self.history = state.get("extra", {}).get("history", self.history)
        self.log.info("resumed from %s at iteration %d (best %s at %s)", prefix, self.start_iter,
                      self.best_metric, self.best_iter)

    # -- one iteration -----------------------------------------------------------------------------------------
    def _reseed(self, it: int) -> None:
        import paddle

        s = _seed_for(self.seed, it, self.rank)
        random.seed(s)
        np.random.seed(s)
        paddle.seed(s)

    def _forward_loss(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        import paddle

        images = images_to_tensor(batch["images"])
        mask = paddle.to_tensor(np.asarray(batch["mask"], dtype=bool))
        labels = paddle.to_tensor(np.asarray(batch["labels"], dtype="float32"))
        lm = batch.get("label_mask")
        lm = paddle.to_tensor(np.asarray(lm, dtype="float32")) if lm is not None else None
        pseudo = batch.get("is_pseudo")
        pseudo = paddle.to_tensor(np.asarray(pseudo, dtype="float32")) if pseudo is not None else None
        if self.amp:
            with paddle.amp.auto_cast(level="O1", dtype="float16" if self.amp == "fp16" else "bfloat16"):
                out = self.model(images, mask)
        else:
            out = self.model(images, mask)
        kw = {"is_pseudo": pseudo} if pseudo is not None else {}
        return self.loss_fn(out, labels, mask, lm, **kw)

    def train_step(self, it: int, stream: Iterator[Dict[str, Any]]) -> Dict[str, float]:
        """One optimizer step from ``grad_accum`` micro-batches. Returns the loss terms (averaged) and slices."""
        self._reseed(it)
        self.model.train()
        sums: Dict[str, float] = {}
        n_slices = 0
        for _ in range(self.grad_accum):
            batch = next(stream)
            n_slices += int(np.asarray(batch["mask"]).sum())
            terms = self._forward_loss(batch)
            loss = terms["loss"] / self.grad_accum
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.item()) / self.grad_accum
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"iteration {it}: loss is {sums['loss']} (terms {sums}); lower "
                                     "Optimizer.lr.learning_rate or set Global.grad_clip")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()
        sums["slices"] = n_slices
        return sums

    # -- evaluation / saving -----------------------------------------------------------------------------------
    def evaluate(self, max_series: Optional[int] = None) -> Optional[Dict[str, Any]]:
        if self.val_set is None or len(self.val_set) == 0:
            return None
        if self.prior is None:
            self.prior = dataset_prior(self.train_set)
        return evaluate(self.net, self.val_set, self.cfg, max_series=max_series, prior=self.prior,
                        collate_fn=self.collate_fn, progress=self.progress)

    def save(self, name: str, it: int) -> None:
        if not self.is_main:
            return
        cfg = {k: v for k, v in self.cfg.items()}
        save_checkpoint(os.path.join(self.out_dir, name), self.net, self.optimizer, self.scheduler, it,
                        self.best_metric, self.best_iter, cfg, {"history": self.history})

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
        self.log.info("iter %d\n%s", it, format_metrics(res))
        self._scalar("eval/head2_wll", wll, it)
        if row["head1"] is not None:
            self._scalar("eval/head1_wll", row["head1"], it)
        if self.best_metric is None or wll < self.best_metric:
            self.best_metric, self.best_iter = wll, it
            if self.keep_best:
                self.save("best_model", it)
                self.log.info("new best head-2 weighted log loss %.5f at iteration %d -> %s", wll, it,
                              os.path.join(self.out_dir, "best_model"))

    def _scalar(self, tag: str, value: float, it: int) -> None:
        if self._vdl is not None:
            self._vdl.add_scalar(tag, float(value), int(it))

    def _open_visualdl(self) -> None:
        if not (self.is_main and self.cfg["Global"].get("use_visualdl")):
            return
        try:
            from visualdl import LogWriter  # optional dependency
        except ImportError:
            self.log.warning("Global.use_visualdl is set but visualdl is not installed (pip install visualdl); "
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
        acc: Dict[str, float] = {}
        n_acc, slices_acc, t_window, t_start, it_start = 0, 0, time.time(), time.time(), it
        evaluated_at = None
        stop = self.iters if until is None else min(int(until), self.iters)
        while it < stop:
            lr = float(self.scheduler.get_lr())
            terms = self.train_step(it, stream)
            it += 1
            slices_acc += terms.pop("slices")
            for k, v in terms.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            bar.update(1)
            if it % self.log_interval == 0 or it == self.iters:
                now = time.time()
                means = {k: v / n_acc for k, v in acc.items()}
                sps = slices_acc * self.world / max(now - t_window, 1e-9)
                eta = (now - t_start) / max(it - it_start, 1) * (self.iters - it)
                row = {"iter": it, "lr": lr, "slices_per_s": sps, **means}
                self.history["train"].append(row)
                if self.is_main:
                    terms_s = " ".join(f"{k} {v:.4f}" for k, v in means.items())
                    self.log.info("iter %d/%d %s lr %.3g %.1f slices/s eta %s", it, self.iters, terms_s, lr, sps,
                                  time.strftime("%H:%M:%S", time.gmtime(eta)))
                    bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2g}")
                    for k, v in means.items():
                        self._scalar(f"train/{k}", v, it)
                    self._scalar("train/lr", lr, it)
                acc, n_acc, slices_acc, t_window = {}, 0, 0, time.time()
            if self.is_main and self.eval_interval and it % self.eval_interval == 0 and it < self.iters:
                self._eval_and_maybe_best(it)
                evaluated_at = it
            if self.is_main and self.save_interval and it % self.save_interval == 0 and it < self.iters:
                self.save("latest", it)
        bar.close()
        if it < self.iters:  # stopped early
            self.save("latest", it)
            return {**self.history, "best_metric": self.best_metric, "best_iter": self.best_iter}
        return self._finish(it, evaluated=evaluated_at == it)

    def _finish(self, it: int, evaluated: bool) -> Dict[str, Any]:
        if self.is_main:
            if not evaluated:
                self._eval_and_maybe_best(it, final=True)
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
