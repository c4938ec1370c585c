"""Losses (docs/model.md, loss): masked weighted BCE (SW, DW), deep-supervision sum, FixMatch L_u.

    loss_fn = build_loss(cfg["Loss"], deep_supervision=cfg["Arch"]["deep_supervision"])
    terms = loss_fn(outputs, labels, mask, label_mask)   # {"loss", "l2", "l1", ...}
"""
from __future__ import annotations

from typing import Any, Mapping

from ..utils.registry import Registry
from .bce import IHDLoss, dynamic_pos_weight, valid_weights, weighted_bce_with_logits

LOSSES = Registry("loss")
LOSSES.register(IHDLoss)


def build_loss(loss_cfg: Mapping[str, Any], deep_supervision: bool = True) -> IHDLoss:
    """Build the loss named by ``Loss.name`` (default ``IHDLoss``) from the ``Loss`` config section."""
    cfg = dict(loss_cfg)
    cfg.setdefault("name", "IHDLoss")
    return LOSSES.build(cfg, deep_supervision=deep_supervision)


__all__ = ["LOSSES", "IHDLoss", "build_loss", "dynamic_pos_weight", "valid_weights", "weighted_bce_with_logits"]
