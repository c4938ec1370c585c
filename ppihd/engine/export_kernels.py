"""The CPU deployment's formulation of the model: exact reformulations swapped in at export time.

:func:`prepare_for_cpu` returns an eval-mode copy of a trained model whose Swin submodules compute the same
function in the form Paddle Inference's oneDNN runs fastest; the training model is never changed.

- every precision, **split qkv**: q, k and v as three products with column blocks of the one ``qkv`` Linear
  instead of one product + reshape + transpose + unbind, so that oneDNN fuses each reshape/transpose into the
  attention matmul (``reshape_transpose_matmul_fuse_pass``);
- ``precision="bf16"`` also **key-major scores** (``k·qᵀ``, softmax over axis -2: the same dot products,
  bit-identical in fp32; oneDNN's bf16 softmax over the short last axis is slow) and **one-hot permutations**:
  token gathers of grids with at most :data:`ONEHOT_MAX_TOKENS` tokens as a product with a one-hot matrix (exact:
  one non-zero term per output; a bf16 matmul instead of an fp32 gather between a dequantize and a quantize).

Measured in docs/benchmarks.md ("CPU inference", "Closing the bf16 gap").
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import paddle
import paddle.nn.functional as F

from ppihd.arch.backbone.swin import BasicLayer, WindowAttention, add_bias_and_mask
from ppihd.arch.backbone.window_order import WindowOrder

#: bf16: token permutations of grids with at most this many tokens run as a one-hot product (cost 2*L FLOPs per
#: element; at 224², stage 3's 196 tokens are faster this way in oneDNN bf16, stage 2's 784 are not).
ONEHOT_MAX_TOKENS = 256
PRECISIONS = ("fp32", "bf16")


class SplitQkvAttention(WindowAttention):
    """:class:`WindowAttention` with q, k, v from column blocks of ``qkv`` and, with ``key_major``, the scores
    as ``[keys, queries]`` (softmax over axis -2). Eval only (no dropout)."""

    key_major = False

    def _project(self, x: paddle.Tensor, i: int) -> paddle.Tensor:
        """q (i=0), k (1) or v (2) ``[B*nW, h, N, d]``: x times the i-th column block of ``qkv``."""
        c, h, n = self.dim, self.num_heads, self.window_size * self.window_size
        y = paddle.matmul(x, self.qkv.weight[:, i * c:(i + 1) * c])
        if self.qkv.bias is not None:
            y = y + self.qkv.bias[i * c:(i + 1) * c]
        return y.reshape([-1, n, h, c // h]).transpose([0, 2, 1, 3])

    def forward(self, x: paddle.Tensor, mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        tokens, c, km = x.shape[1], self.dim, self.key_major
        q, k, v = (self._project(x, i) for i in range(3))
        attn = paddle.matmul(k, q * self.scale, transpose_y=True) if km else \
            paddle.matmul(q * self.scale, k, transpose_y=True)
        bias = self.relative_bias()
        if km:  # [keys, queries]: each score the same dot product
            bias = bias.transpose([0, 2, 1])
            mask = None if mask is None else mask.transpose([0, 2, 1])
        attn = F.softmax(add_bias_and_mask(attn, bias, mask), axis=-2 if km else -1)
        out = paddle.matmul(attn, v, transpose_x=km).transpose([0, 2, 1, 3]).reshape([-1, tokens, c])
        return self.proj(out)


class OneHotWindowOrder(WindowOrder):
    """:class:`WindowOrder` whose permutations of at most :data:`ONEHOT_MAX_TOKENS` tokens are one-hot products."""

    def gather(self, x: paddle.Tensor, index: paddle.Tensor) -> paddle.Tensor:
        n = int(index.shape[0])
        if n == x.shape[1] and n <= ONEHOT_MAX_TOKENS:
            return paddle.matmul(F.one_hot(index, n).astype(x.dtype), x)
        return super().gather(x, index)


class OneHotLayer(BasicLayer):
    order_type = OneHotWindowOrder


def prepare_for_cpu(model: Any, precision: str = "fp32") -> Any:
    """An eval-mode copy of ``model`` (an IHDNet or a SwinTransformer) with the reformulations of the module
    docstring for ``precision`` (``fp32`` | ``bf16``). Same parameter values; ``model`` itself is unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"prepare_for_cpu: precision '{precision}' unknown; expected one of {' | '.join(PRECISIONS)}")
    cpu = copy.deepcopy(model)
    cpu.eval()
    for m in cpu.sublayers(include_self=True):
        if isinstance(m, WindowAttention):
            m.__class__ = SplitQkvAttention
            m.key_major = precision == "bf16"
        elif isinstance(m, BasicLayer):
            m._orders = {}
            if precision == "bf16":
                m.__class__ = OneHotLayer
    return cpu
