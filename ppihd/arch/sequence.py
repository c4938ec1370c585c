"""Inter-slice extractor: fixed sinusoidal position encoding + a post-norm Transformer encoder.

The paper's model (docs/model.md): encoding (d = 1024) added to the slice features, dropout 0.2, then a standard
2-layer Transformer encoder (2 heads, feed-forward 200, dropout 0.2, ReLU, post-norm). The encoding is
computed on the fly for any length (the reference kept a 60-row buffer). With ``padding_mask`` a key-padding
mask keeps padded slices from being attended; the reference had no mask (``padding_mask: false``).
"""
from __future__ import annotations

import math
from typing import Optional

import paddle
import paddle.nn as nn


def sinusoidal_encoding(positions: paddle.Tensor, dim: int) -> paddle.Tensor:
    """positions float ``[B, S]`` -> ``[B, S, dim]`` with ``pe[2i] = sin(p / 10000^(2i/dim))``,
    ``pe[2i+1] = cos(p / 10000^(2i/dim))`` (Vaswani et al. 2017)."""
    if dim % 2:
        raise ValueError(f"positional encoding needs an even dimension, got {dim}")
    i = paddle.arange(0, dim, 2, dtype="float32")
    inv = paddle.exp(i * (-math.log(10000.0) / dim))  # [dim/2]
    ang = positions.astype("float32").unsqueeze(-1) * inv  # [B, S, dim/2]
    pe = paddle.stack([paddle.sin(ang), paddle.cos(ang)], axis=-1)  # [B, S, dim/2, 2]
    return pe.reshape([0, 0, dim])  # 0 = keep that dim (works when S is dynamic in a static graph)


def slice_positions(mask: Optional[paddle.Tensor], like: paddle.Tensor) -> paddle.Tensor:
    """Position of each slice within its series: ``0..S-1``, or with a mask the rank among the real
    slices (so a series gets the same encodings however it is padded). ``like``: features ``[B, S, D]``.
    float ``[B, S]``."""
    if mask is None:  # static-graph safe: no Python shape values (S is -1 in an exported graph)
        return paddle.cumsum(paddle.ones_like(like[:, :, 0]), axis=1) - 1.0
    pos = paddle.cumsum(mask.astype("float32"), axis=1) - 1.0
    return paddle.clip(pos, min=0.0)


class SequenceTransformer(nn.Layer):
    """Args:
        d_model: feature size (1024 for Swin-B).
        num_layers, num_heads, dim_feedforward, dropout: the encoder (2, 2, 200, 0.2).
        pos_dropout: dropout after adding the encoding (0.2).
        padding_mask: use the key-padding mask when a mask is given (False = reference behaviour).
    """

    def __init__(self, d_model: int = 1024, num_layers: int = 2, num_heads: int = 2, dim_feedforward: int = 200,
                 dropout: float = 0.2, pos_dropout: float = 0.2, padding_mask: bool = True) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"Arch.sequence.num_heads {num_heads} must divide the feature size {d_model}")
        self.d_model = d_model
        self.padding_mask = padding_mask
        self.pos_drop = nn.Dropout(pos_dropout)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout=dropout,
                                           activation="relu", normalize_before=False)
        self.encoder = nn.TransformerEncoder(layer, num_layers)

    def forward(self, x: paddle.Tensor, mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """x ``[B, S, D]``, mask bool ``[B, S]`` (True = real slice) or None -> ``[B, S, D]``.

        With a mask, padded slices are not attended (when ``padding_mask``) and their outputs are zero.
        """
        x = x + sinusoidal_encoding(slice_positions(mask, x), self.d_model)
        x = self.pos_drop(x)
        attn_mask = None
        if mask is not None and self.padding_mask:
            # paddle bool attention masks: True = may attend; shape [B, 1, 1, S] broadcasts over heads, queries
            attn_mask = mask.astype("bool").unsqueeze(1).unsqueeze(1)
        y = self.encoder(x, src_mask=attn_mask)
        if mask is not None:
            y = y * mask.astype(y.dtype).unsqueeze(-1)
        return y
