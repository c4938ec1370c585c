"""Slice-level backbone pre-training: the CPU demo's stand-in for ImageNet weights (not in the paper).

The paper fine-tunes an ImageNet-pretrained Swin-B end to end. Nothing may be downloaded here, and a Swin trained
from scratch on one series per step did not learn lesion features within the demo's budget (docs/training.md
"Demo"). This stage trains the backbone alone, as the Kaggle solutions' first stage does, on batches of
``SlicePretrain.batch_slices`` slices drawn at random across all training series, with a linear slice head and the
static class-weighted BCE; it writes the backbone's weights, which ``tools/train.py`` then loads through
``Arch.pretrained`` exactly like ImageNet weights before the paper's end-to-end training.

    pre = SlicePretrainer(cfg)          # reads the cache (train + val split of Data)
    result = pre.run()                  # -> {"best": {...}, "history": [...], "backbone": path}
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..arch import build_model
from ..data.augment import TrainAugment, build_train_augment
from ..data.dataset import SeriesDataset
from ..metric.log_loss import per_class_auc, prior_probabilities, weighted_log_loss
from ..optimizer import build_lr_scheduler, build_optimizer
from ..postprocess.arrays import to_model_input
from ..utils.env import get_logger, show_progress
from ..utils.fileio import atomic_path


class SliceSampler:
    """Labelled slices of a :class:`SeriesDataset` as ``(series index, cache row)`` pairs, read on demand."""

    def __init__(self, ds: SeriesDataset) -> None:
        self.ds = ds
        refs: List[Tuple[int, int]] = []
        labels: List[np.ndarray] = []
        for i, it in enumerate(ds.items):
            keep = it["label_mask"].min(axis=1) > 0           # slices with all six labels known
            refs += [(i, int(r)) for r in it["slice_idx"][keep]]
            labels.append(it["labels"][keep])
        if not refs:
            raise ValueError(f"{ds.cache_dir}: no labelled slices in split {ds.split!r}; run tools/preprocess.py "
                             "on a labelled data set first")
        self.refs = refs
        self.labels = np.concatenate(labels).astype(np.float32)
        self._arrays: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def _array(self, i: int) -> np.ndarray:
        if i not in self._arrays:
            self._arrays[i] = self.ds.cache_array(i)
        return self._arrays[i]

    def images(self, idx: np.ndarray) -> np.ndarray:
        """uint8 ``[len(idx), H, W, 3]`` of the slices ``idx`` (indices into this sampler)."""
        return np.concatenate([self.ds.slice_images(self.refs[k][0], [self.refs[k][1]], self._array(self.refs[k][0]))
                               for k in idx])


def _to_input(u8: np.ndarray) -> paddle.Tensor:
    return paddle.to_tensor(to_model_input(u8))


class SlicePretrainer:
    """Train ``Arch.backbone`` + a linear slice head on random slices; keep the backbone with the best val loss.

    Args:
        cfg: resolved config; uses ``SlicePretrain``, ``Arch.backbone``, ``Data``, ``Loss.class_weights``,
            ``Metric`` and ``Global`` (seed, output_dir).
        out_dir: where ``backbone.pdparams``, ``metrics.json`` and ``history.json`` go
            (default ``SlicePretrain.output_dir`` or ``<Global.output_dir>/slice_pretrain``).
    """

    def __init__(self, cfg: Mapping[str, Any], out_dir: Optional[str] = None, log: Any = None) -> None:
        self.cfg = cfg
        sp = cfg["SlicePretrain"]
        self.sp = sp
        self.out_dir = out_dir or sp["output_dir"] or os.path.join(cfg["Global"]["output_dir"], "slice_pretrain")
        self.log = log or get_logger()
        self.rng = np.random.default_rng(int(cfg["Global"]["seed"]))
        self.train = SliceSampler(SeriesDataset(cfg, "train"))
        try:
            val_ds = SeriesDataset(cfg, "val")
            self.val: Optional[SliceSampler] = SliceSampler(val_ds) if len(val_ds) else None
        except ValueError:
            self.val = None
        aug = sp["augment"]
        if aug not in ("none", "flip", "train"):
            raise ValueError(f"SlicePretrain.augment '{aug}' unknown; expected none | flip | train")
        if aug == "train":                                     # DataLoader.Train.augment, drawn per slice
            self.augment: Optional[TrainAugment] = build_train_augment(cfg)
        elif aug == "flip":                                    # h- and v-flip at 0.5 each, per slice
            self.augment = TrainAugment(size=int(cfg["Data"]["image_size"]), random_resized_crop=False,
                                        hflip=0.5, vflip=0.5, per_slice=True)
        else:
            self.augment = None
        self.prior = prior_probabilities(self.train.labels)
        model = build_model(cfg["Arch"])
        self.backbone = model.backbone
        self.head = self._prior_head(int(self.backbone.num_features))
        # optional auxiliary slice head on the conv stem's last feature map (max-pooled), a direct path for the
        # stem's gradient while the transformer blocks are still near the identity
        self.stem_weight = float(sp["stem_head_weight"])
        self.stem_head: Optional[nn.Linear] = None
        self._stem_out: List[paddle.Tensor] = []
        if self.stem_weight > 0:
            proj = self.backbone.patch_embed.proj
            relus = [m for m in proj.sublayers() if isinstance(m, nn.ReLU)] if isinstance(proj, nn.Sequential) else []
            if not relus:
                raise ValueError("SlicePretrain.stem_head_weight > 0 needs Arch.backbone.stem: conv")
            convs = [m for m in proj.sublayers() if isinstance(m, nn.Conv2D)]
            relus[-1].register_forward_post_hook(lambda layer, inp, out: self._stem_out.append(out) and None)
            self.stem_head = self._prior_head(int(convs[-2].weight.shape[0]))
        self.class_weights = paddle.to_tensor(np.asarray(cfg["Loss"]["class_weights"], dtype=np.float32))
        self.metric_weights = list(cfg["Metric"]["class_weights"])
        self.eps = float(cfg["Metric"]["eps"])
        iters = int(sp["iters"])
        if iters < 1 or int(sp["batch_slices"]) < 1:
            raise ValueError(f"SlicePretrain.iters ({iters}) and SlicePretrain.batch_slices "
                             f"({sp['batch_slices']}) must be >= 1")
        self.scheduler = build_lr_scheduler(sp["Optimizer"], total_steps=iters)
        params = self.backbone.parameters() + self.head.parameters()
        if self.stem_head is not None:
            params += self.stem_head.parameters()
        self.optimizer = build_optimizer(sp["Optimizer"], params,
                                         self.scheduler, grad_clip=cfg["Global"]["grad_clip"])

    def _prior_head(self, in_features: int) -> nn.Linear:
        """A linear slice head that starts at the constant prior: weights 0, bias = the training prevalences' logits."""
        head = nn.Linear(in_features, self.train.labels.shape[1])
        nn.initializer.Constant(0.0)(head.weight)
        p = np.clip(self.prior, 1e-4, 1 - 1e-4)
        head.bias.set_value(np.log(p / (1 - p)).astype(np.float32))
        return head

    # ------------------------------------------------------------------------------------------------------
    def loss(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        """Static class-weighted BCE, normalised like the metric: sum_c w_c * bce_c / sum_c w_c, mean over slices.

        Not :func:`ppihd.loss.bce.weighted_bce_with_logits` rescaled: that is the same value mathematically, but
        its different float rounding alone stopped the demo's stage 1 (seed 42) from leaving the prior in 600
        iterations (docs/training.md "Demo"), so the formula the demo was measured with is kept."""
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (bce * self.class_weights).sum(axis=1).mean() / self.class_weights.sum()

    def batch_loss(self, u8: np.ndarray, labels: np.ndarray) -> paddle.Tensor:
        """Loss of one batch (uint8 ``[N, H, W, 3]``, labels ``[N, C]``): slice head, plus
        ``stem_head_weight`` x the stem head's loss when that head is on."""
        self._stem_out.clear()
        y = paddle.to_tensor(labels)
        loss = self.loss(self.head(self.backbone.forward_features(_to_input(u8))), y)
        if self.stem_head is not None:
            stem = F.adaptive_max_pool2d(self._stem_out[-1], 1).flatten(1)   # (reduce-max over 2 axes: slow grad)
            loss = loss + self.stem_weight * self.loss(self.stem_head(stem), y)
        self._stem_out.clear()
        return loss

    def predict(self, sampler: SliceSampler, batch: int = 64) -> np.ndarray:
        self.backbone.eval()
        out = []
        with paddle.no_grad():
            for s in range(0, len(sampler), batch):
                x = _to_input(sampler.images(np.arange(s, min(s + batch, len(sampler)))))
                out.append(F.sigmoid(self.head(self.backbone.forward_features(x))).numpy())
                self._stem_out.clear()
        self.backbone.train()
        return np.concatenate(out)

    def evaluate(self) -> Dict[str, float]:
        if self.val is None:
            return {}
        y = self.val.labels
        p = self.predict(self.val)
        wll = weighted_log_loss(y, p, self.metric_weights, eps=self.eps)
        base = weighted_log_loss(y, np.tile(self.prior, (len(y), 1)), self.metric_weights, eps=self.eps)
        auc = per_class_auc(y, p)
        return {"val_wll": float(wll), "baseline": float(base), "ratio": float(wll / base),
                "auc_any": float(auc[-1]) if np.isfinite(auc[-1]) else float("nan")}

    def save_backbone(self, name: str) -> str:
        path = os.path.join(self.out_dir, name)
        with atomic_path(path) as tmp:
            paddle.save(self.backbone.state_dict(), tmp)
        return path

    def plot(self, history: List[Dict[str, Any]]) -> Optional[str]:
        """``<out_dir>/curves.png``: training loss and val weighted log loss (with the prior baseline) vs iteration."""
        if not history:
            return None
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        it = [h["iter"] for h in history]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        ax[0].plot(it, [h["loss"] for h in history], marker="o")
        ax[0].set(xlabel="iteration", ylabel="training batch loss", title="slice pre-training")
        if "val_wll" in history[0]:
            ax[1].plot(it, [h["val_wll"] for h in history], marker="o", label="slice head")
            ax[1].axhline(history[0]["baseline"], color="gray", ls=":", label="constant prior")
            ax[1].set(xlabel="iteration", ylabel="val weighted log loss")
            ax[1].legend()
        else:
            ax[1].axis("off")
        fig.tight_layout()
        path = os.path.join(self.out_dir, "curves.png")
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return path

    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        os.makedirs(self.out_dir, exist_ok=True)
        sp = self.sp
        iters, bs = int(sp["iters"]), int(sp["batch_slices"])
        every = int(sp["eval_interval"] or iters)
        n = len(self.train)
        self.log.info("slice pre-training: %d iterations x %d slices from %d labelled training slices "
                      "(%d series); val %s", iters, bs, n, len(self.train.ds),
                      f"{len(self.val)} slices" if self.val else "none")
        self.backbone.train()
        history: List[Dict[str, Any]] = []
        best: Dict[str, Any] = {}
        t0 = time.time()
        bar = tqdm(range(1, iters + 1), desc="slice pre-train", dynamic_ncols=True,
                   disable=not show_progress(self.cfg["Global"]["progress_bar"]))
        for it in bar:
            idx = self.rng.choice(n, size=min(bs, n), replace=False)
            u8 = self.train.images(idx)
            if self.augment is not None:
                u8 = self.augment(u8, self.rng)
            loss = self.batch_loss(u8, self.train.labels[idx])
            loss.backward()
            self.optimizer.step()
            self.optimizer.clear_grad()
            self.scheduler.step()
            lv = float(loss)
            if not math.isfinite(lv):
                raise FloatingPointError(f"slice pre-training: loss became {lv} at iteration {it}; lower "
                                         "SlicePretrain.Optimizer.lr.learning_rate")
            bar.set_postfix(loss=f"{lv:.4f}")
            if it % every == 0 or it == iters:
                rec: Dict[str, Any] = {"iter": it, "loss": lv, "lr": float(self.optimizer.get_lr()),
                                       "seconds": round(time.time() - t0, 1)}
                rec.update(self.evaluate())
                history.append(rec)
                msg = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items())
                self.log.info("slice pre-train %s", msg)
                if not best or ("val_wll" in rec and rec["val_wll"] < best["val_wll"]) or "val_wll" not in rec:
                    best = rec
                    self.save_backbone("backbone.pdparams")
        bar.close()
        last = self.save_backbone("last.pdparams")
        result = {"backbone": os.path.join(self.out_dir, "backbone.pdparams"), "last": last, "best": best,
                  "history": history, "train_slices": n, "val_slices": len(self.val) if self.val else 0,
                  "prior": self.prior.tolist()}
        with atomic_path(os.path.join(self.out_dir, "metrics.json")) as tmp:
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
        self.plot(history)
        self.log.info("slice pre-training done in %.0f s; backbone (best val) -> %s", time.time() - t0,
                      result["backbone"])
        return result
