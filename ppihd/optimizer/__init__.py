"""SGD with momentum + the warm-up cosine schedule (docs/training.md).

    sched = build_lr_scheduler(cfg["Optimizer"], total_steps=cfg["Global"]["iters"])
    opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched, grad_clip=cfg["Global"]["grad_clip"])
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import paddle

from ..utils.registry import Registry
from .lr import CosineWarmup, cosine_warmup_lr

LR_SCHEDULERS = Registry("lr scheduler")
LR_SCHEDULERS.register(CosineWarmup)
OPTIMIZERS = Registry("optimizer")


@OPTIMIZERS.register(name="Momentum")
def _momentum(parameters: Iterable[Any], learning_rate: Any, opt_cfg: Mapping[str, Any],
              grad_clip: Any = None) -> paddle.optimizer.Optimizer:
    """SGD momentum (``Optimizer.momentum``, ``Optimizer.nesterov``); ``Optimizer.weight_decay`` is coupled L2
    (added to the gradient), on all parameters (reference).

    ``Optimizer.multi_tensor``: Paddle's merged-momentum update (``use_multi_tensor``, in Paddle 2.6 and 3.x) -- a
    few kernels for all parameters instead of one per parameter; the same numbers and the same state keys (tested).
    None = on when the current device is a GPU."""
    wd = opt_cfg["weight_decay"]
    reg = paddle.regularizer.L2Decay(float(wd)) if wd else None
    multi_tensor = opt_cfg["multi_tensor"]
    if multi_tensor is None:
        multi_tensor = str(paddle.device.get_device()).startswith("gpu")
    return paddle.optimizer.Momentum(learning_rate=learning_rate, momentum=float(opt_cfg["momentum"]),
                                     parameters=list(parameters), use_nesterov=bool(opt_cfg["nesterov"]),
                                     weight_decay=reg, grad_clip=grad_clip, use_multi_tensor=bool(multi_tensor))


@OPTIMIZERS.register(name="AdamW")
def _adamw(parameters: Iterable[Any], learning_rate: Any, opt_cfg: Mapping[str, Any],
           grad_clip: Any = None) -> paddle.optimizer.Optimizer:
    """Not the paper's: AdamW (``Optimizer.beta1``, beta2 0.999, decoupled decay ``Optimizer.weight_decay``).
    Used by the CPU demo, which trains from scratch in a few hundred steps. ``momentum``, ``nesterov`` and
    ``multi_tensor`` are SGD's and not read."""
    return paddle.optimizer.AdamW(learning_rate=learning_rate, beta1=float(opt_cfg["beta1"]), beta2=0.999,
                                  parameters=list(parameters), weight_decay=float(opt_cfg["weight_decay"] or 0.0),
                                  grad_clip=grad_clip)


def build_lr_scheduler(opt_cfg: Mapping[str, Any], total_steps: int) -> CosineWarmup:
    """The ``Optimizer.lr`` schedule over ``total_steps`` (= ``Global.iters``) optimizer steps."""
    lr_cfg = dict(opt_cfg["lr"])
    return LR_SCHEDULERS.build(lr_cfg, total_steps=int(total_steps))


def build_optimizer(opt_cfg: Mapping[str, Any], parameters: Iterable[Any], lr_scheduler: Any,
                    grad_clip: Optional[float] = None) -> paddle.optimizer.Optimizer:
    """Optimizer named by ``Optimizer.name`` from a complete ``Optimizer`` section (every schema key present:
    ``load_config`` fills them); ``grad_clip`` (Global.grad_clip) = global-norm clip or None."""
    clip = paddle.nn.ClipGradByGlobalNorm(float(grad_clip)) if grad_clip else None
    return OPTIMIZERS.get(opt_cfg["name"])(parameters, lr_scheduler, opt_cfg, grad_clip=clip)


__all__ = ["CosineWarmup", "cosine_warmup_lr", "build_lr_scheduler", "build_optimizer", "LR_SCHEDULERS",
           "OPTIMIZERS"]
