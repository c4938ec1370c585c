"""Model size: parameters per part and multiply-accumulates (MACs) per slice, counted analytically.

MACs count every multiply-add of the conv patch embedding, the Linear layers (qkv, proj, MLP, patch
merging, heads) and the two attention products (q @ k^T and attn @ v), on the token grids actually
computed (windows include padding for sizes that are not multiples of the window). Norms, softmax, GELU
and additions are not counted (they are < 0.5 % of Swin-B). :func:`measure_linear_macs` measures the
conv + Linear part with forward hooks as an independent check.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import paddle
import paddle.nn as nn


def count_params(layer: Optional[nn.Layer]) -> int:
    """Number of parameter values of a layer (0 for None)."""
    if layer is None:
        return 0
    return int(sum(int(np.prod(p.shape)) for p in layer.parameters()))


def parameters_per_part(model: nn.Layer) -> Dict[str, int]:
    """``{"backbone", "head1", "sequence", "head2", "total"}`` parameter counts of an IHDNet."""
    parts = {name: count_params(getattr(model, name, None)) for name in ("backbone", "head1", "sequence", "head2")}
    parts["total"] = count_params(model)
    return parts


def swin_macs(embed_dim: int, depths, num_heads, window: int, height: int, width: int, patch: int = 4,
              mlp_ratio: float = 4.0, in_chans: int = 3, num_classes: int = 0) -> Dict[str, int]:
    """MACs of one Swin forward for an ``height x width`` image, by component (see module docstring)."""
    del num_heads  # the attention products do not depend on the head split
    h, w = math.ceil(height / patch), math.ceil(width / patch)
    out = {"patch_embed": h * w * embed_dim * in_chans * patch * patch,
           "qkv": 0, "attn_qk": 0, "attn_v": 0, "proj": 0, "mlp": 0, "merge": 0, "head": 0}
    c = embed_dim
    for i, depth in enumerate(depths):
        hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
        n_pad, n = hp * wp, h * w
        hidden = int(c * mlp_ratio)
        out["qkv"] += depth * n_pad * c * 3 * c
        out["attn_qk"] += depth * n_pad * window * window * c
        out["attn_v"] += depth * n_pad * window * window * c
        out["proj"] += depth * n_pad * c * c
        out["mlp"] += depth * 2 * n * c * hidden
        if i < len(depths) - 1:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            out["merge"] += h * w * 4 * c * 2 * c
            c *= 2
    out["head"] = c * num_classes
    out["total"] = sum(out.values())
    return out


def backbone_macs(backbone: nn.Layer, height: int, width: int, with_head: bool = False) -> Dict[str, int]:
    """:func:`swin_macs` for a built :class:`SwinTransformer`."""
    return swin_macs(backbone.embed_dim, backbone.depths, backbone.num_heads, backbone.window_size, height, width,
                     backbone.patch_size, backbone.mlp_ratio,
                     num_classes=backbone.num_classes if with_head else 0)


def sequence_macs(d_model: int, dim_feedforward: int, num_layers: int, length: int) -> int:
    """MACs of the sequence transformer on one series of ``length`` slices (q, k, v, out projections,
    the two attention products and the feed-forward)."""
    per_layer = 4 * length * d_model * d_model + 2 * length * length * d_model + 2 * length * d_model * dim_feedforward
    return num_layers * per_layer


def measure_linear_macs(layer: nn.Layer, x: paddle.Tensor, call: str = "forward_features") -> int:
    """Conv2D + Linear MACs of one forward, measured with forward hooks (no attention products)."""
    total = [0]
    hooks = []

    def on_linear(m, inp, out):
        total[0] += int(np.prod(out.shape)) * int(m.weight.shape[0])

    def on_conv(m, inp, out):
        k = m.weight.shape  # [out, in/groups, kh, kw]
        total[0] += int(np.prod(out.shape)) * int(k[1] * k[2] * k[3])

    for m in layer.sublayers():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_post_hook(on_linear))
        elif isinstance(m, nn.Conv2D):
            hooks.append(m.register_forward_post_hook(on_conv))
    try:
        with paddle.no_grad():
            getattr(layer, call)(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def model_summary(model: nn.Layer, height: int, width: int, series_length: int = 60) -> Dict[str, Any]:
    """Parameters per part and MACs per slice of an IHDNet (sequence MACs averaged over ``series_length``)."""
    bb = model.backbone
    d = model.num_features
    seq_macs = 0
    if model.sequence is not None:
        layer0 = model.sequence.encoder.layers[0]
        ff = int(layer0.linear1.weight.shape[1])
        seq_macs = sequence_macs(d, ff, len(model.sequence.encoder.layers), series_length) // series_length
    heads = d * model.num_classes * (2 if model.head1 is not None else 1)
    bmacs = backbone_macs(bb, height, width)
    return {
        "params": parameters_per_part(model),
        "backbone_params_with_imagenet_head": count_params(bb) + d * 1000 + 1000,
        "macs_per_slice": {"backbone": bmacs["total"], "heads": heads, "sequence": seq_macs,
                           "total": bmacs["total"] + heads + seq_macs},
        "backbone_macs": bmacs,
        "image_size": [height, width],
        "series_length": series_length,
    }
