"""Swin Transformer (v1) with a res-post-norm switch, for any input size.

Parameter names follow PaddleClas ``ppcls/arch/backbone/model_zoo/swin_transformer.py`` (2.5/2.6) so that
``SwinTransformer_base_patch4_window7_224_pretrained.pdparams`` loads by key:
``patch_embed.proj/norm``, ``layers.{i}.blocks.{j}.{norm1, attn.qkv, attn.proj,
attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}``, ``layers.{i}.downsample.{norm, reduction}``,
``norm``, ``head``. PaddleClas also saves the buffers ``relative_position_index`` and ``attn_mask``; here they
are not part of the state dict (the index is a non-persistable buffer, the masks are built per input size),
and :mod:`ppihd.arch.weights` ignores them when loading.

Differences from PaddleClas that do not change the 224² result:

* nothing is tied to one resolution: the image is zero-padded to a multiple of the patch, every feature map
  to a multiple of the window (and to an even size before patch merging); padded tokens are masked out as
  attention keys, so the real tokens' outputs do not depend on the padding. Masks are cached per size.
* the shift is 0 wherever the feature map is not larger than the window (``min(H, W) <= window``); the
  window itself stays ``window_size`` (padding + key mask), which equals PaddleClas's shrunken window for
  square maps but keeps the relative-position table shape fixed.
* ``token_layout="window"`` (the default) keeps a stage's tokens in window-partitioned order instead of
  row-major order wherever the stage's grid is a multiple of the window (all stages at 224²; padded grids stay
  row-major, :func:`uses_window_order`): LayerNorm, MLP and the residual adds are per token, so unshifted blocks need no
  partition/reverse at all, a shifted block does one precomputed gather (roll + partition composed) before
  attention and its inverse after, and PatchMerging is one gather straight into the next stage's window order
  (on grids without padding, the patch-embedding tokens enter window order by one transpose and PatchMerging
  is two transposes: the same permutations).
  Same parameters, same outputs (to float rounding) as ``"spatial"``; it only removes memory-bound copies
  (docs/benchmarks.md, "CPU inference").
* :meth:`SwinTransformer.bf16_kernels` (used only while exporting the oneDNN bf16 program) switches two exact
  reformulations on: attention scores computed key-major (softmax over axis -2) and small token permutations
  as products with a one-hot matrix. Same outputs in fp32 (the first is bit-identical); faster in bf16.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppihd.utils.registry import Registry

BACKBONES = Registry("backbone")

#: Model sizes as small argument sets. ``micro`` is ours, for CPU tests and demos (2.3 M parameters, 256-d features).
VARIANTS: Dict[str, Dict[str, Any]] = {
    "micro": dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]),
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}

#: :meth:`SwinTransformer.bf16_kernels`: token permutations (shift, merge) of grids with at most this many tokens run
#: as a one-hot matrix product. Cost 2*L FLOPs per element, so only small grids: at 224², stage 3 (196 tokens) is
#: faster this way in oneDNN bf16, stage 2 (784) is not (docs/benchmarks.md, "Closing the bf16 gap").
ONEHOT_MAX_TOKENS = 256

#: Additive attention-mask value for forbidden pairs (the official Swin value; finite, so no NaN).
MASK_VALUE = -100.0

_trunc_normal = nn.initializer.TruncatedNormal(std=0.02)


def _get_recompute():
    """``recompute`` from ``paddle.distributed.fleet.utils`` (Paddle 2.4+, 3.x) or the older location."""
    try:
        from paddle.distributed.fleet.utils import recompute  # type: ignore
        return recompute
    except ImportError:  # pragma: no cover - very old paddle
        from paddle.distributed.fleet.recompute import recompute  # type: ignore
        return recompute


class _ReplayRng:
    """Wraps a block so that its re-run (the recomputation in backward) draws the same random numbers as its
    first run (dropout, drop-path): the first call records paddle's global RNG state, later calls run from it
    and put the current state back. Used where Paddle's own ``preserve_rng_state`` is not available (the
    hook-based recompute of Paddle 2.6 on CPU)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.state = fn, None

    def __call__(self, *args: Any) -> Any:
        if self.state is None:
            self.state = paddle.get_rng_state()
            return self.fn(*args)
        now = paddle.get_rng_state()
        paddle.set_rng_state(self.state)
        try:
            return self.fn(*args)
        finally:
            paddle.set_rng_state(now)


#: Per device type: whether ``recompute(..., use_reentrant=False)`` preserves the RNG on this device.
_HOOK_RNG_OK: Dict[str, bool] = {}


def recompute_block(blk: Any, *args: Any) -> Any:
    """Activation checkpointing of one block with Paddle's hook-based (non-reentrant) recompute.

    The default PyLayer (reentrant) recompute runs a nested backward, which ``paddle.DataParallel``'s reducer sees
    as a parameter becoming ready twice ("parameter ... has been ready before", reproduced with 2 gloo ranks in
    tests/test_distributed.py); Paddle's docs name ``use_reentrant=False`` as the DataParallel-safe form.
    Paddle 2.6's hook recompute cannot preserve the RNG state on CPU (it raises), so there the block is wrapped in
    :class:`_ReplayRng` and Paddle's preservation is switched off: the same masks either way (tested)."""
    rc = _get_recompute()
    dev = str(paddle.get_device()).split(":")[0]
    if _HOOK_RNG_OK.get(dev, True):
        try:
            return rc(blk, *args, use_reentrant=False)
        except RuntimeError as e:  # Paddle 2.6 on CPU: "Recompute with RNG perserve is not support current device"
            if "not support current device" not in str(e):
                raise
            _HOOK_RNG_OK[dev] = False
    return rc(_ReplayRng(blk), *args, use_reentrant=False, preserve_rng_state=False)


def relative_position_index(window: int) -> np.ndarray:
    """int64 ``[w*w, w*w]``: row-major index into the ``(2w-1)^2`` bias table of the offset between tokens."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    rel = rel + (window - 1)
    return (rel[0] * (2 * window - 1) + rel[1]).astype("int64")


def window_attention_mask(height: int, width: int, window: int, shift: int) -> Optional[np.ndarray]:
    """Additive mask ``[nW, w*w, w*w]`` (0 or :data:`MASK_VALUE`) for a feature map of ``height x width``.

    The map is padded (bottom/right) to a multiple of ``window`` and, when ``shift > 0``, cyclically
    rolled by ``-shift``. Keys are forbidden when they lie in another region of the rolled map (the
    official three-slice region ids) or when they are padding. ``None`` when nothing is masked.
    """
    hp = int(math.ceil(height / window)) * window
    wp = int(math.ceil(width / window)) * window
    if shift == 0 and hp == height and wp == width:
        return None
    region = np.zeros((hp, wp), dtype=np.float32)
    if shift > 0:
        cnt = 0
        for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                region[hs, ws] = cnt
                cnt += 1
    valid = np.zeros((hp, wp), dtype=np.float32)
    valid[:height, :width] = 1.0
    if shift > 0:
        valid = np.roll(valid, (-shift, -shift), axis=(0, 1))

    def part(a: np.ndarray) -> np.ndarray:
        a = a.reshape(hp // window, window, wp // window, window).transpose(0, 2, 1, 3)
        return a.reshape(-1, window * window)

    rw, vw = part(region), part(valid)
    mask = np.where(rw[:, None, :] != rw[:, :, None], MASK_VALUE, 0.0)
    mask = mask + np.where(vw[:, None, :] == 0, MASK_VALUE, 0.0)
    return mask.astype(np.float32)


def pad_zeros(x: paddle.Tensor, axis: int, amount: int) -> paddle.Tensor:
    """Append ``amount`` zero rows along ``axis`` (concat, not the pad op: Paddle 3.3's oneDNN pad kernel
    reorders a full-rank pad list and its NHWC/NCHW pad3d crashes, so exported models avoid pad entirely)."""
    if amount <= 0:
        return x
    idx = [slice(None)] * len(x.shape)
    idx[axis] = slice(0, 1)
    reps = [1] * len(x.shape)
    reps[axis] = int(amount)
    return paddle.concat([x, paddle.tile(paddle.zeros_like(x[tuple(idx)]), reps)], axis=axis)


def window_partition(x: paddle.Tensor, window: int) -> paddle.Tensor:
    """``[B, H, W, C]`` (H, W multiples of ``window``) -> ``[B * nW, window * window, C]``.

    Reshapes in this file write the batch dimension as ``-1`` (never ``x.shape[0]``): in an exported graph the
    target shape is then a constant, which lets Paddle Inference's oneDNN bf16 pass keep the qkv/proj Linear
    layers in bf16 (a shape computed at run time made it fall back to fp32; docs/benchmarks.md).
    """
    b, h, w, c = x.shape
    x = x.reshape([-1, h // window, window, w // window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, window * window, c])


def window_reverse(windows: paddle.Tensor, window: int, h: int, w: int) -> paddle.Tensor:
    """``[B * nW, window * window, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.reshape([-1, h // window, w // window, window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, h, w, c])


#: Token orders inside a stage (``Arch.backbone.token_layout``).
TOKEN_LAYOUTS = ("spatial", "window")


def _padded(size: int, window: int) -> int:
    return int(math.ceil(size / window)) * window


def window_slots(height: int, width: int, window: int) -> np.ndarray:
    """int64 ``[Hp * Wp]``: for each slot of the window order, its row-major position in the padded
    ``Hp x Wp`` grid (windows row-major, tokens row-major inside a window: :func:`window_partition`'s order)."""
    hp, wp = _padded(height, window), _padded(width, window)
    grid = np.arange(hp * wp, dtype=np.int64).reshape(hp // window, window, wp // window, window)
    return grid.transpose(0, 2, 1, 3).reshape(-1)


def _inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """int64 ``inv`` with ``inv[perm[i]] = i``."""
    inv = np.empty(perm.size, dtype=np.int64)
    inv[perm] = np.arange(perm.size, dtype=np.int64)
    return inv


def _slot_of(height: int, width: int, window: int) -> np.ndarray:
    """Inverse of :func:`window_slots`: padded-grid position -> window-order slot."""
    return _inverse_permutation(window_slots(height, width, window))


def spatial_to_window_index(height: int, width: int, window: int) -> np.ndarray:
    """int64 ``[Hp * Wp]``: gather index from row-major real tokens ``[H * W]`` into window order. Padding slots
    point at token 0 (their values are never used: they are zeroed before attention, see :func:`valid_slots`)."""
    wp = _padded(width, window)
    pos = window_slots(height, width, window)
    r, c = pos // wp, pos % wp
    return np.where((r < height) & (c < width), r * width + c, 0).astype("int64")


def window_to_spatial_index(height: int, width: int, window: int) -> np.ndarray:
    """int64 ``[H * W]``: gather index from window order back to the row-major real tokens."""
    wp = _padded(width, window)
    r, c = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return _slot_of(height, width, window)[(r * wp + c).reshape(-1)].astype("int64")


def valid_slots(height: int, width: int, window: int) -> Optional[np.ndarray]:
    """float32 ``[Hp * Wp]``: 1 for real tokens, 0 for padding, in window order; None without padding."""
    hp, wp = _padded(height, window), _padded(width, window)
    if hp == height and wp == width:
        return None
    pos = window_slots(height, width, window)
    return (((pos // wp) < height) & ((pos % wp) < width)).astype("float32")


def _valid_column(height: int, width: int, window: int) -> Optional[np.ndarray]:
    v = valid_slots(height, width, window)
    return None if v is None else v.reshape(1, -1, 1)


def shift_index(height: int, width: int, window: int, shift: int) -> Tuple[np.ndarray, np.ndarray]:
    """(forward, inverse) int64 ``[Hp * Wp]`` gathers between the window order of the padded grid and the
    window order of that grid rolled by ``-shift`` (``paddle.roll`` + :func:`window_partition` composed)."""
    hp, wp = _padded(height, window), _padded(width, window)
    pos = window_slots(height, width, window)  # positions in the rolled grid, in its window order
    i, j = pos // wp, pos % wp
    src = ((i + shift) % hp) * wp + (j + shift) % wp  # where each came from in the unrolled grid
    fwd = _slot_of(height, width, window)[src].astype("int64")
    return fwd, _inverse_permutation(fwd)


def uses_window_order(token_layout: str, height: int, width: int, window: int) -> bool:
    """Whether a stage on a ``height x width`` grid keeps its tokens in window order: with
    ``token_layout="window"`` and a grid that is a multiple of the window. Grids that need padding stay
    row-major (window order would carry the padded tokens through every MLP: up to 9x the work on tiny maps)."""
    return token_layout == "window" and height % window == 0 and width % window == 0


def merge_index(height: int, width: int, window: int, src_window: bool = True,
                dst_window: bool = True) -> Tuple[np.ndarray, int, int, bool]:
    """PatchMerging as one gather: int64 ``[L2 * 4]`` (target-major, quadrants x[0::2,0::2], x[1::2,0::2],
    x[0::2,1::2], x[1::2,1::2] inner) picking the 2x2 neighbours of every next-stage token.

    The source tokens are in window order of the padded ``height x width`` grid (``src_window``) or row-major
    ``[H * W]``; the targets in window order of the next stage's padded grid (``dst_window``, L2 = Hp2 * Wp2)
    or row-major (L2 = H2 * W2). Returns (index, H2, W2, needs_zero): sources outside the odd-sized map point
    at the source length (an appended zero token, only then ``needs_zero``); next-stage padding slots at 0."""
    h2, w2 = -(-height // 2), -(-width // 2)
    if src_window:
        slot, wp = _slot_of(height, width, window), _padded(width, window)
    else:
        slot, wp = np.arange(height * width, dtype=np.int64), width
    zero = slot.size
    if dst_window:
        wp2 = _padded(w2, window)
        pos2 = window_slots(h2, w2, window)
        r2, c2 = pos2 // wp2, pos2 % wp2
    else:
        r2, c2 = (a.reshape(-1) for a in np.meshgrid(np.arange(h2), np.arange(w2), indexing="ij"))
    real2 = (r2 < h2) & (c2 < w2)
    cols = []
    for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):
        r, c = 2 * r2 + dr, 2 * c2 + dc
        ok = real2 & (r < height) & (c < width)
        src = slot[np.where(ok, r * wp + c, 0)]
        cols.append(np.where(ok, src, np.where(real2, zero, 0)))
    idx = np.stack(cols, axis=1).reshape(-1).astype("int64")
    return idx, h2, w2, bool((idx == zero).any())


def _const(cache: Dict[Any, Any], key: Any, make) -> Any:
    """``make()`` (numpy array, tuple of arrays, or None) as paddle tensors, cached per key in dygraph. Under
    to_static tracing a fresh constant per program, never cached (as the attention masks)."""
    def conv(a):
        if a is None or isinstance(a, (bool, int)):
            return a
        if isinstance(a, tuple):
            return tuple(conv(v) for v in a)
        return paddle.to_tensor(a)
    if not paddle.in_dynamic_mode():
        return conv(make())
    if key not in cache:
        cache[key] = conv(make())
    return cache[key]


def _rows_to_windows(x: paddle.Tensor, height: int, width: int, window: int) -> paddle.Tensor:
    """Row-major tokens ``[B, H*W, C]`` -> window order (:func:`spatial_to_window_index`) for H, W multiples of
    the window: ``[B*H/w, w, W/w, w*C]`` transposed ``[0, 2, 1, 3]`` (row a of window-row wi, window column wj,
    (b, C) -> wj, a); one reorder, no index."""
    c, ws = x.shape[-1], window
    return x.reshape([-1, ws, width // ws, ws * c]).transpose([0, 2, 1, 3]).reshape([-1, height * width, c])


def _windows_to_rows(x: paddle.Tensor, height: int, width: int, window: int) -> paddle.Tensor:
    """Inverse of :func:`_rows_to_windows`: window order -> row-major ``[B, H*W, C]``."""
    c, ws = x.shape[-1], window
    return x.reshape([-1, width // ws, ws, ws * c]).transpose([0, 2, 1, 3]).reshape([-1, height * width, c])


def _gather_tokens(x: paddle.Tensor, index: paddle.Tensor, onehot_max: int = 0) -> paddle.Tensor:
    """``x[:, index]`` for ``x [B, L, C]``.

    With ``0 < L <= onehot_max`` and ``index`` a permutation of the L tokens, computed as ``onehot(index) @ x``
    instead: exact in any precision for finite x (one non-zero term per output; 0/1 are exact in bf16), and in
    a oneDNN bf16 program a bf16 matmul instead of Paddle's fp32 CPU gather with a dequantize before and a
    quantize after it. Used only by :meth:`SwinTransformer.bf16_kernels`."""
    n = int(index.shape[0])
    if n == x.shape[1] and 0 < n <= onehot_max:
        return paddle.matmul(F.one_hot(index, n).astype(x.dtype), x)
    return paddle.gather(x, index, axis=1)


class DropPath(nn.Layer):
    """Stochastic depth: drop the whole residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = [x.shape[0]] + [1] * (len(x.shape) - 1)
        mask = paddle.floor(keep + paddle.rand(shape, dtype=x.dtype))
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Layer):
    """fc1 (C -> hidden) -> GELU -> dropout -> fc2 (hidden -> C) -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Layer):
    """Window multi-head self-attention with the v1 learned relative-position bias.

    Args:
        dim: channels C.
        window_size: window side w (tokens per window N = w*w).
        num_heads: heads; the bias table is ``[(2w-1)^2, num_heads]``.
        qkv_bias: bias on the qkv projection.
        attn_drop, proj_drop: dropout on attention weights / output.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = self.create_parameter(
            shape=[(2 * window_size - 1) ** 2, num_heads], default_initializer=_trunc_normal)
        self.register_buffer("relative_position_index",
                             paddle.to_tensor(relative_position_index(window_size).reshape([-1])),
                             persistable=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        #: scores as ``[keys, queries]`` with the softmax over axis -2 (:meth:`SwinTransformer.bf16_kernels`)
        self.key_major = False

    def relative_bias(self) -> paddle.Tensor:
        """``[heads, N, N]`` bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = paddle.index_select(self.relative_position_bias_table, self.relative_position_index)
        return bias.reshape([n, n, self.num_heads]).transpose([2, 0, 1])

    def _project(self, x: paddle.Tensor, i: int, n: int) -> paddle.Tensor:
        """q (i=0), k (1) or v (2) ``[B*nW, h, N, d]``: x times the i-th column block of the ``qkv`` Linear.

        Three products on column slices of the one ``qkv`` parameter (PaddleClas name and shape kept) instead
        of one product + reshape + transpose + unbind: Paddle Inference's oneDNN passes then fuse each
        reshape/transpose into the attention matmul (``reshape_transpose_matmul_fuse_pass``), which removed
        the qkv reorders and the unbind copy (~10 % of Swin-B's CPU time; docs/benchmarks.md)."""
        c = self.dim
        h = self.num_heads
        y = paddle.matmul(x, self.qkv.weight[:, i * c:(i + 1) * c])
        if self.qkv.bias is not None:
            y = y + self.qkv.bias[i * c:(i + 1) * c]
        return y.reshape([-1, n, h, c // h]).transpose([0, 2, 1, 3])

    def forward(self, x: paddle.Tensor, mask: Optional[paddle.Tensor] = None,
                tokens: Optional[int] = None) -> paddle.Tensor:
        """x ``[B*nW, N, C]`` (or ``[B, nW*N, C]``: windows of N consecutive tokens); mask additive ``[nW, N, N]``
        or None. Returns ``[B*nW, N, C]``, or ``[-1, tokens, C]`` when ``tokens`` is given (the window layout
        passes its stage's ``[B, L, C]`` straight through: no reshape copies before and after)."""
        n, c = self.window_size * self.window_size, x.shape[-1]
        h = self.num_heads
        q, k, v = (self._project(x, i, n) for i in range(3))  # each [B*nW, h, N, d]
        # key_major: the same scores transposed, [keys, queries] (each the same dot product, so bit-identical in
        # fp32), softmax over axis -2. oneDNN's bf16 softmax over the 49-long last axis is ~2x slower than over
        # an outer axis, where it vectorises across the 49 queries (docs/benchmarks.md, "Closing the bf16 gap").
        km = self.key_major
        a, b = (k, q * self.scale) if km else (q * self.scale, k)
        attn = paddle.matmul(a, b, transpose_y=True)
        bias = self.relative_bias()
        if km:
            bias = bias.transpose([0, 2, 1])
            if mask is not None:
                mask = mask.transpose([0, 2, 1])
        bias = bias.unsqueeze(0)  # [1, h, N, N]
        if mask is None:
            attn = attn + bias
        else:
            # bias and mask combined first ([nW, h, N, N]), then ONE add broadcast over the leading dim only:
            # oneDNN's add broadcasting a middle dim ([B, nW, h, N, N] + [1, nW, 1, N, N]) took ~30 % of Swin-B's
            # Paddle Inference time (docs/benchmarks.md). Unmasked logits are bit-identical (mask 0); masked ones
            # differ only in the rounding of ~MASK_VALUE, whose softmax weight is ~exp(-100).
            nw = mask.shape[0]
            bias = bias + mask.unsqueeze(1)
            attn = (attn.reshape([-1, nw, h, n, n]) + bias.unsqueeze(0)).reshape([-1, h, n, n])
        attn = self.attn_drop(F.softmax(attn, axis=-2 if km else -1))
        out = paddle.matmul(attn, v, transpose_x=km).transpose([0, 2, 1, 3]).reshape([-1, tokens or n, c])
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Layer):
    """One Swin block: (shifted-)window attention then MLP, each with a residual.

    ``post_norm=True`` (res-post-norm, Swin v2 / the paper's PN): ``x = x + DropPath(LN(attn(x)))`` and
    ``x = x + DropPath(LN(mlp(x)))``. ``post_norm=False`` (v1 pre-norm): ``x = x + DropPath(attn(LN(x)))``.
    The norms keep the names ``norm1`` / ``norm2`` in both settings.

    ``post_norm_init`` (only with ``post_norm=True``): ``"zero"`` sets norm1/norm2 weight and bias to 0, as
    Swin V2 does for its res-post-norm blocks (official ``_init_respostnorm``, timm), so the block is exactly
    the identity at initialisation and the residual stream is not swamped by unit-norm branches; ``"one"`` is
    the plain LayerNorm init (weight 1, bias 0). Pretrained weights overwrite either.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, post_norm: bool = True, post_norm_init: str = "zero",
                 token_layout: str = "spatial") -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.dim = dim
        self.window_size = window_size
        self.shift_size = shift_size
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if post_norm_init not in ("zero", "one"):
            raise ValueError(f"Arch.backbone.post_norm_init '{post_norm_init}' unknown; expected zero | one")
        self.post_norm_init = post_norm_init
        if token_layout not in TOKEN_LAYOUTS:
            raise ValueError(f"Arch.backbone.token_layout '{token_layout}' unknown; expected spatial | window")
        self.token_layout = token_layout
        self.onehot_max_tokens = 0  # :func:`_gather_tokens`; set by SwinTransformer.bf16_kernels
        self._mask_cache: Dict[Tuple[int, int, int], Optional[paddle.Tensor]] = {}
        self._index_cache: Dict[Any, Any] = {}

    def effective_shift(self, height: int, width: int) -> int:
        """0 where the feature map is not larger than the window, else ``shift_size``."""
        return 0 if min(height, width) <= self.window_size else self.shift_size

    def _mask(self, height: int, width: int, shift: int) -> Optional[paddle.Tensor]:
        return _const(self._mask_cache, (height, width, shift),  # fresh per program under to_static tracing
                      lambda: window_attention_mask(height, width, self.window_size, shift))

    def _attention(self, x: paddle.Tensor, height: int, width: int) -> paddle.Tensor:
        if uses_window_order(self.token_layout, height, width, self.window_size):
            return self._attention_window(x, height, width)
        c = x.shape[-1]
        w = self.window_size
        x = x.reshape([-1, height, width, c])
        pad_b, pad_r = (w - height % w) % w, (w - width % w) % w
        if pad_b or pad_r:
            x = pad_zeros(pad_zeros(x, 1, pad_b), 2, pad_r)  # oneDNN-safe (see pad_zeros)
        hp, wp = height + pad_b, width + pad_r
        shift = self.effective_shift(height, width)
        if shift:
            x = paddle.roll(x, shifts=(-shift, -shift), axis=(1, 2))
        windows = self.attn(window_partition(x, w), mask=self._mask(height, width, shift))
        x = window_reverse(windows, w, hp, wp)
        if shift:
            x = paddle.roll(x, shifts=(shift, shift), axis=(1, 2))
        if pad_b or pad_r:
            x = x[:, :height, :width, :]
        return x.reshape([-1, height * width, c])

    def _attention_window(self, x: paddle.Tensor, height: int, width: int) -> paddle.Tensor:
        """x ``[B, Hp*Wp, C]`` in window order of the padded grid (``token_layout="window"``) -> same layout.

        Padding slots are zeroed first (the spatial path pads with zeros at every attention); with a shift,
        one gather maps the window order to the window order of the rolled grid and one gathers back. The model
        calls this only on grids without padding (:func:`uses_window_order`); padding is handled for
        completeness and tested."""
        w = self.window_size
        lp = _padded(height, w) * _padded(width, w)
        shift = self.effective_shift(height, width)
        valid = _const(self._index_cache, ("valid", height, width), lambda: _valid_column(height, width, w))
        if valid is not None:
            x = x * valid
        if shift:
            fwd, inv = _const(self._index_cache, ("shift", height, width, shift),
                              lambda: shift_index(height, width, w, shift))
            x = _gather_tokens(x, fwd, self.onehot_max_tokens)
        x = self.attn(x, mask=self._mask(height, width, shift), tokens=lp)
        if shift:
            x = _gather_tokens(x, inv, self.onehot_max_tokens)
        return x

    def forward(self, x: paddle.Tensor, height: int, width: int) -> paddle.Tensor:
        """x ``[B, H*W, C]`` -> ``[B, H*W, C]`` (in window order instead when :func:`uses_window_order`)."""
        if self.post_norm:
            x = x + self.drop_path(self.norm1(self._attention(x, height, width)))
            x = x + self.drop_path(self.norm2(self.mlp(x)))
        else:
            x = x + self.drop_path(self._attention(self.norm1(x), height, width))
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}, "
                f"post_norm={self.post_norm}")


class PatchMerging(nn.Layer):
    """2x2 neighbourhood concat (order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]) ->
    LN(4C) -> Linear(4C -> 2C, no bias). Odd sizes are zero-padded to even first."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias_attr=False)
        self.norm = nn.LayerNorm(4 * dim)
        self.onehot_max_tokens = 0  # :func:`_gather_tokens`; set by SwinTransformer.bf16_kernels
        self._index_cache: Dict[Any, Any] = {}

    def forward(self, x: paddle.Tensor, height: int, width: int) -> Tuple[paddle.Tensor, int, int]:
        """x ``[B, H*W, C]`` -> (``[B, ceil(H/2)*ceil(W/2), 2C]``, H', W')."""
        c = x.shape[-1]
        x = x.reshape([-1, height, width, c])
        if height % 2 or width % 2:
            x = pad_zeros(pad_zeros(x, 1, height % 2), 2, width % 2)  # oneDNN-safe (see pad_zeros)
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        h2, w2 = x0.shape[1], x0.shape[2]
        x = paddle.concat([x0, x1, x2, x3], axis=-1).reshape([-1, h2 * w2, 4 * c])
        return self.reduction(self.norm(x)), h2, w2

    def forward_window(self, x: paddle.Tensor, height: int, width: int, window: int, src_window: bool = True,
                       dst_window: bool = True) -> Tuple[paddle.Tensor, int, int]:
        """Gather version (``token_layout="window"``): x ``[B, Hp*Wp, C]`` in window order of the padded
        ``height x width`` grid (or row-major ``[B, H*W, C]`` with ``src_window=False``) -> (``[B, Hp2*Wp2, 2C]``
        in window order of the next stage's padded grid (or row-major with ``dst_window=False``), H', W').
        One gather builds the 2x2 concat (same channel order as :meth:`forward`); see :func:`merge_index`.
        Between window orders of unpadded grids (every merge at 224²) the same permutation is two transposes."""
        c = x.shape[-1]
        if src_window and dst_window and height % (2 * window) == 0 and width % (2 * window) == 0:
            # neither grid padded: the same permutation as two transposes (window order -> row-major, then the
            # 2x2 concat straight into the next window order). One oneDNN reorder each instead of Paddle's CPU
            # gather: 2-5 % faster in bf16, neutral in fp32 at 224² (docs/benchmarks.md, "Closing the bf16 gap")
            h2, w2, ws = height // 2, width // 2, window
            x = _windows_to_rows(x, height, width, ws)
            # row-major row i = (wi2 * ws + a2) * 2 + di, column j = (wj2 * ws + b2) * 2 + dj ->
            # [B, wi2, wj2, a2, b2, dj, di, C] (channel block di + 2 * dj = the order x0 (0,0), x1 (1,0), x2 (0,1),
            # x3 (1,1) of forward()); as a 6-D transpose of [B*wi2, a2, di, wj2, (b2, dj), C] (Paddle 2.6's oneDNN
            # transpose fails on 8-D)
            x = x.reshape([-1, ws, 2, w2 // ws, ws * 2, c]).transpose([0, 3, 1, 4, 2, 5])
            return self.reduction(self.norm(x.reshape([-1, h2 * w2, 4 * c]))), h2, w2
        idx, h2, w2, needs_zero = _const(self._index_cache, (height, width, window, src_window, dst_window),
                                         lambda: merge_index(height, width, window, src_window, dst_window))
        if needs_zero:
            x = pad_zeros(x, 1, 1)
        lp2 = _padded(h2, window) * _padded(w2, window) if dst_window else h2 * w2
        x = _gather_tokens(x, idx, self.onehot_max_tokens).reshape([-1, lp2, 4 * c])
        return self.reduction(self.norm(x)), h2, w2


class ConvStem(nn.Sequential):
    """Convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see better"): log2(patch)
    stride-2 ``Conv3x3 -> BatchNorm -> ReLU`` stages (channels ``C / 2^(k-1)`` ... ``C``, or ``channels``) then a
    1x1 conv to C.
    Same output grid as the patchify conv (``H / patch``); replaces it only with ``stem: conv``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int,
                 channels: Optional[Sequence[int]] = None) -> None:
        k = int(round(math.log2(patch_size)))
        if patch_size < 2 or 2 ** k != patch_size:
            raise ValueError(f"Arch.backbone.stem 'conv' needs a power-of-two patch_size >= 2, got {patch_size}")
        if channels is not None and (len(channels) != k or any(int(c) < 1 for c in channels)):
            raise ValueError(f"Arch.backbone.stem_channels must list {k} positive widths (one per stride-2 stage "
                             f"of patch_size {patch_size}), got {list(channels)}")
        layers: List[nn.Layer] = []
        c_in = in_chans
        for i in range(k):
            c_out = int(channels[i]) if channels is not None else max(embed_dim // 2 ** (k - 1 - i), 8)
            layers += [nn.Conv2D(c_in, c_out, 3, stride=2, padding=1, bias_attr=False), nn.BatchNorm2D(c_out),
                       nn.ReLU()]
            c_in = c_out
        layers.append(nn.Conv2D(c_in, embed_dim, 1))
        super().__init__(*layers)


class PatchEmbed(nn.Layer):
    """Conv2D(3 -> C, kernel = stride = patch) then LN(C); the image is zero-padded to a multiple of patch.

    ``stem="conv"``: :class:`ConvStem` instead of the patchify conv (from-scratch training; not ImageNet-loadable).
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, stem: str = "patch",
                 stem_channels: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.patch_size = patch_size
        if stem == "patch":
            self.proj = nn.Conv2D(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        elif stem == "conv":
            self.proj = ConvStem(patch_size, in_chans, embed_dim, stem_channels)
        else:
            raise ValueError(f"Arch.backbone.stem '{stem}' unknown; expected patch | conv")
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, int, int]:
        """x ``[N, 3, H, W]`` -> (``[N, H/p * W/p, C]``, H/p, W/p)."""
        p = self.patch_size
        h, w = x.shape[2], x.shape[3]
        if h % p or w % p:
            x = pad_zeros(pad_zeros(x, 2, (p - h % p) % p), 3, (p - w % p) % p)  # oneDNN-safe (see pad_zeros)
        x = self.proj(x)
        hh, ww = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose([0, 2, 1])
        return self.norm(x), hh, ww


class BasicLayer(nn.Layer):
    """One stage: ``depth`` blocks (odd ones shifted by window // 2) then optional PatchMerging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: Sequence[float],
                 downsample: bool, post_norm: bool, recompute: bool = False,
                 post_norm_init: str = "zero", token_layout: str = "spatial") -> None:
        super().__init__()
        self.recompute = recompute
        self.window_size = window_size
        self.token_layout = token_layout
        self.blocks = nn.LayerList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, drop, attn_drop, drop_path[i], post_norm, post_norm_init,
                                 token_layout)
            for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: paddle.Tensor, height: int, width: int) -> Tuple[paddle.Tensor, int, int]:
        """x ``[B, H*W, C]`` -> (x, H, W) after the blocks and the optional merge. With ``token_layout="window"``
        each stage's tokens come in and go out in the order :func:`uses_window_order` gives for its grid."""
        use_rc = self.recompute and self.training and not x.stop_gradient
        for blk in self.blocks:
            x = recompute_block(blk, x, height, width) if use_rc else blk(x, height, width)
        if self.downsample is not None:
            ws = self.window_size
            src = uses_window_order(self.token_layout, height, width, ws)
            dst = uses_window_order(self.token_layout, -(-height // 2), -(-width // 2), ws)
            if src or dst:
                x, height, width = self.downsample.forward_window(x, height, width, ws, src, dst)
            else:
                x, height, width = self.downsample(x, height, width)
        return x, height, width


@BACKBONES.register
class SwinTransformer(nn.Layer):
    """Swin Transformer v1 with a post-norm switch.

    Args:
        variant: ``micro | tiny | small | base``; ``embed_dim`` / ``depths`` / ``num_heads`` override it.
        img_size: nominal input side (only for reporting; any size is accepted at run time).
        patch_size: patch side (4).
        window_size: attention window side (7).
        mlp_ratio, qkv_bias, drop_rate, attn_drop_rate: as in Swin.
        drop_path_rate: stochastic depth, linear from 0 to this value over all blocks.
        post_norm: res-post-norm (paper's PN) if True, v1 pre-norm if False.
        post_norm_init: ``zero`` (Swin V2 res-post-norm init: the blocks' norm1/norm2 weight and bias start
            at 0, every block is the identity at init) | ``one`` (plain LayerNorm init). Only with post_norm.
        stem: ``patch`` (Swin's patchify conv) | ``conv`` (:class:`ConvStem`, for training from scratch).
        stem_channels: widths of the conv stem's stride-2 stages (None = ``C / 2^(k-1)`` ... ``C``).
        pool: ``avg`` (Swin: mean of the final-LN tokens) | ``max`` (per-channel max over the tokens; a small
            lesion then is not diluted by the rest of the slice; the CPU demo's option, not in the paper).
        recompute: activation checkpointing per block, active only in training.
        token_layout: ``window`` (tokens kept in window-partitioned order inside a stage: no partition/reverse
            copies, one gather per shift and per merge; faster on CPU) | ``spatial`` (row-major, as PaddleClas).
            Same parameters and outputs.
        num_classes: ImageNet classifier size (0 = no ``head``; PaddleClas ``class_num``).
    """

    def __init__(self, variant: str = "base", img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: Optional[int] = None, depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None, window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.5, post_norm: bool = True, recompute: bool = False,
                 num_classes: int = 0, post_norm_init: str = "zero", stem: str = "patch",
                 stem_channels: Optional[Sequence[int]] = None, pool: str = "avg",
                 token_layout: str = "window") -> None:
        super().__init__()
        if token_layout not in TOKEN_LAYOUTS:
            raise ValueError(f"Arch.backbone.token_layout '{token_layout}' unknown; expected spatial | window")
        self.token_layout = token_layout
        self._index_cache: Dict[Any, Any] = {}
        if variant not in VARIANTS:
            raise KeyError(f"Arch.backbone.variant '{variant}' unknown; expected one of {sorted(VARIANTS)}")
        v = VARIANTS[variant]
        embed_dim = int(embed_dim if embed_dim is not None else v["embed_dim"])
        depths = list(depths if depths is not None else v["depths"])
        num_heads = list(num_heads if num_heads is not None else v["num_heads"])
        if len(depths) != len(num_heads):
            raise ValueError(f"Arch.backbone: depths {depths} and num_heads {num_heads} differ in length")
        self.variant = variant
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.post_norm = post_norm
        self.post_norm_init = post_norm_init
        self.num_layers = len(depths)
        self.num_features = embed_dim * 2 ** (self.num_layers - 1)
        self.num_classes = num_classes

        if pool not in ("avg", "max"):
            raise ValueError(f"Arch.backbone.pool '{pool}' unknown; expected avg | max")
        if stem_channels is not None and stem != "conv":
            raise ValueError("Arch.backbone.stem_channels needs Arch.backbone.stem: conv")
        self.stem = stem
        self.pool = pool
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, stem, stem_channels)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.LayerList()
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                dim=embed_dim * 2 ** i, depth=depths[i], num_heads=num_heads[i], window_size=window_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < self.num_layers - 1,
                post_norm=post_norm, recompute=recompute, post_norm_init=post_norm_init,
                token_layout=token_layout))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.sublayers():
            if isinstance(m, nn.Linear):
                _trunc_normal(m.weight)
                if m.bias is not None:
                    nn.initializer.Constant(0.0)(m.bias)
        if self.post_norm and self.post_norm_init == "zero":
            zero = nn.initializer.Constant(0.0)
            for layer in self.layers:
                for blk in layer.blocks:
                    for norm in (blk.norm1, blk.norm2):
                        zero(norm.weight)
                        zero(norm.bias)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """x ``[N, 3, H, W]`` (any H, W) -> pooled features ``[N, num_features]`` (final LN, mean over tokens)."""
        return self.forward_tokens(*self.embed(x))

    def embed(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, int, int]:
        """The patch embedding: x ``[N, 3, H, W]`` -> (tokens ``[N, H/p * W/p, C]`` row-major after its LayerNorm,
        H/p, W/p). :meth:`forward_features` = :meth:`forward_tokens` of this. The bf16 deployment runs it in
        fp32 (``ppihd.engine.exporter.export_paddle_bf16``): it acts on the raw [0, 1] image, where bf16
        rounding moved a trained model's probabilities by up to 0.49 (docs/benchmarks.md)."""
        return self.patch_embed(x)

    def forward_tokens(self, x: paddle.Tensor, h: int, w: int) -> paddle.Tensor:
        """Tokens from :meth:`embed` on an ``h x w`` grid -> pooled features ``[N, num_features]``."""
        x = self.pos_drop(x)
        if uses_window_order(self.token_layout, h, w, self.window_size):  # row-major -> window order
            # no padding here (uses_window_order), so the permutation of spatial_to_window_index is a reshape /
            # transpose / reshape: one oneDNN reorder instead of Paddle's CPU gather, 2-5 % faster in both
            # fp32 and bf16 at 224² (docs/benchmarks.md, "Closing the bf16 gap"); same numbers
            x = _rows_to_windows(x, h, w, self.window_size)
        for layer in self.layers:
            x, h, w = layer(x, h, w)
        # the last stage's tokens are all real in either order (window order only without padding): pooling
        # over tokens does not depend on their order
        x = self.norm(x)
        return x.max(axis=1) if self.pool == "max" else x.mean(axis=1)

    @contextlib.contextmanager
    def bf16_kernels(self, onehot_max_tokens: int = ONEHOT_MAX_TOKENS):
        """While exporting the oneDNN bf16 program (``export_paddle_bf16``): the formulation Paddle Inference's
        oneDNN bf16 runs fastest, restored on exit. Two exact reformulations:

        - attention scores key-major, softmax over axis -2 (:class:`WindowAttention`; bit-identical in fp32);
        - token permutations (shift, merge) of grids with at most ``onehot_max_tokens`` tokens as one-hot matrix
          products (:func:`_gather_tokens`; exact).

        Measured on Swin-B at 224², 32 slices (docs/benchmarks.md, "Closing the bf16 gap"): together ~12 % less
        time for the bf16 program; neither helps the fp32 program (the one-hot products cost 2 % there), so the
        fp32 export and training keep the plain formulation."""
        settings = [(m, "key_major", True) for m in self.sublayers() if isinstance(m, WindowAttention)] + [
            (m, "onehot_max_tokens", int(onehot_max_tokens)) for m in self.sublayers()
            if isinstance(m, (SwinTransformerBlock, PatchMerging))]
        saved = [(m, name, getattr(m, name)) for m, name, _ in settings]
        try:
            for m, name, value in settings:
                setattr(m, name, value)
            yield self
        finally:
            for m, name, value in saved:
                setattr(m, name, value)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """``[N, 3, H, W]`` -> logits ``[N, num_classes]``, or features when there is no classifier."""
        f = self.forward_features(x)
        return self.head(f) if self.head is not None else f

    def stage_shapes(self, height: int, width: int) -> List[Tuple[int, int]]:
        """Token grid (H, W) entering each stage for an image of ``height x width``."""
        h = -(-height // self.patch_size)
        w = -(-width // self.patch_size)
        out = []
        for _ in range(self.num_layers):
            out.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return out
