"""Iteration-based learning-rate schedules (docs/training.md).

``CosineWarmup``: linear warm-up from ``warmup_start_lr`` to ``learning_rate`` over ``warmup_steps`` iterations,
then cosine decay to ``end_lr`` at ``total_steps`` (= ``Global.iters``); constant ``end_lr`` afterwards::

    t < W:      lr = s + (L - s) * t / W
    W <= t <= T: lr = e + (L - e) * (1 + cos(pi * (t - W) / (T - W))) / 2

``t`` is the optimizer step (iteration) about to run; the scheduler is stepped once per optimizer step.
"""
from __future__ import annotations

import math

from paddle.optimizer.lr import LRScheduler


def cosine_warmup_lr(t: int, learning_rate: float, warmup_steps: int, total_steps: int,
                     warmup_start_lr: float = 0.0, end_lr: float = 0.0) -> float:
    """The closed form above at iteration ``t`` (pure Python, for tests and plots)."""
    if warmup_steps > 0 and t < warmup_steps:
        return warmup_start_lr + (learning_rate - warmup_start_lr) * t / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    frac = min(max(t - warmup_steps, 0), span) / span
    return end_lr + (learning_rate - end_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


class CosineWarmup(LRScheduler):
    """Paddle scheduler for :func:`cosine_warmup_lr`. ``state_dict()`` holds ``last_epoch`` (= iteration)."""

    def __init__(self, learning_rate: float = 1e-3, total_steps: int = 80000, warmup_steps: int = 300,
                 warmup_start_lr: float = 0.0, end_lr: float = 0.0, last_epoch: int = -1,
                 verbose: bool = False) -> None:
        if total_steps <= 0:
            raise ValueError(f"Global.iters must be > 0 for the CosineWarmup schedule, got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"Optimizer.lr.warmup_steps must be >= 0, got {warmup_steps}")
        self.peak_lr = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.end_lr = float(end_lr)
        super().__init__(learning_rate=float(learning_rate), last_epoch=last_epoch, verbose=verbose)

    def get_lr(self) -> float:
        return cosine_warmup_lr(self.last_epoch, self.peak_lr, self.warmup_steps, self.total_steps,
                                self.warmup_start_lr, self.end_lr)
