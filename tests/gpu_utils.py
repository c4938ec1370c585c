"""Helpers for the GPU-readiness tests (tests/test_gpu_ready.py, the 2-rank recompute test in
tests/test_distributed.py): a micro Swin IHDNet config without any randomness in the forward (drop-path and
dropout 0, so a run on 2 ranks and a run on 1 rank draw nothing that could differ) and a dataset whose items do
not depend on the augmentation rng."""
from __future__ import annotations

import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml")
SIZE = 32


def micro_cfg(out: str, iters: int = 2, recompute: bool = True, drop: float = 0.0, **over):
    """The demo config at 32², patch 4 / window 4 (8-4-2-1 token grids), no ImageNet weights, SGD momentum."""
    from ppihd.utils.config import load_config

    o = [f"Global.output_dir={out}", f"Global.iters={iters}", "Global.log_interval=1", "Global.eval_interval=0",
         "Global.save_interval=0", "Global.progress_bar=false", "Global.device=cpu", "Global.num_threads=1",
         f"Data.image_size={SIZE}", "Arch.backbone.patch_size=4",
         "Arch.backbone.window_size=4", "Arch.backbone.stem=patch", "Arch.backbone.stem_channels=null",
         f"Arch.backbone.recompute={recompute}", f"Arch.backbone.drop_path_rate={drop}",
         f"Arch.sequence.dropout={drop}", f"Arch.sequence.pos_dropout={drop}",
         "DataLoader.Train.batch_series=1", "DataLoader.Train.num_workers=0",
         "Optimizer.name=Momentum", "Optimizer.weight_decay=0.0001", "Optimizer.lr.learning_rate=0.05",
         "Optimizer.lr.warmup_steps=0"]
    o += [f"{k}={v}" for k, v in over.items()]
    return load_config(DEMO_CFG, o)


class FixedSeries:
    """``n`` series of 2-4 slices (float32 [S, 3, 32, 32]); ``get`` ignores the rng (no augmentation)."""

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            s = int(rng.integers(2, 5))
            lab = (rng.random((s, 6)) < 0.3).astype("float32")
            lab[:, 5] = lab[:, :5].max(axis=1)
            img = rng.random((s, 3, SIZE, SIZE)).astype("float32") * 0.3
            img[:, 0, :8, :8] += lab[:, 0, None, None] * 0.6
            self.items.append({"images": img, "labels": lab, "label_mask": np.ones_like(lab),
                               "series_id": f"s{i}"})

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i, rng=None):
        return dict(self.items[i])

    def __getitem__(self, i):
        return self.get(i)
