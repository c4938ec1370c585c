"""Swin Transformer (v1) with a res-post-norm switch, for any input size.

Shaped like the official code (microsoft/Swin-Transformer ``models/swin_transformer_v2.py`` for the res-post-norm
blocks). Parameter names follow PaddleClas ``ppcls/arch/backbone/model_zoo/swin_transformer.py`` (2.5/2.6) so that
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

* a stage's tokens are kept in window-partitioned order where its grid is a multiple of the window
  (:class:`~ppihd.arch.backbone.window_order.WindowOrder`): the same function with fewer copies.

The CPU deployment's further exact reformulations (split qkv products, key-major scores, one-hot permutations)
are swapped in at export time by :mod:`ppihd.engine.export_kernels`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ppihd.utils.registry import Registry

from .window_order import WindowOrder, pad_zeros

BACKBONES = Registry("backbone")

#: Model sizes as small argument sets. ``micro`` is ours, for CPU tests and demos (2.3 M parameters, 256-d features).
VARIANTS: Dict[str, Dict[str, Any]] = {
    "micro": dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]),
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}

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


def add_bias_and_mask(attn: paddle.Tensor, bias: paddle.Tensor, mask: Optional[paddle.Tensor]) -> paddle.Tensor:
    """Scores ``[B*nW, h, N, N]`` + relative bias ``[h, N, N]`` (+ additive mask ``[nW, N, N]``).

    Bias and mask are combined first (``[nW, h, N, N]``), then added in ONE broadcast over the leading dimension:
    oneDNN's add broadcasting a middle dimension was slow (docs/benchmarks.md). Masked scores differ from the
    official ``(attn + bias) + mask`` only in the rounding of ~MASK_VALUE, whose softmax weight is ~exp(-100)."""
    if mask is None:
        return attn + bias.unsqueeze(0)
    nw, h, n = mask.shape[0], bias.shape[0], bias.shape[1]
    bias = bias.unsqueeze(0) + mask.unsqueeze(1)
    return (attn.reshape([-1, nw, h, n, n]) + bias.unsqueeze(0)).reshape([-1, h, n, n])


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

    def relative_bias(self) -> paddle.Tensor:
        """``[heads, N, N]`` bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = paddle.index_select(self.relative_position_bias_table, self.relative_position_index)
        return bias.reshape([n, n, self.num_heads]).transpose([2, 0, 1])

    def forward(self, x: paddle.Tensor, mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """x ``[B', M, C]``: windows of N = w*w consecutive tokens (``[B*nW, N, C]``, or a stage's tokens in
        window order); mask additive ``[nW, N, N]`` or None. Returns the same shape."""
        tokens, n, c, h = x.shape[1], self.window_size * self.window_size, self.dim, self.num_heads
        qkv = self.qkv(x).reshape([-1, n, 3, h, c // h]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv.unbind(0)  # each [B*nW, h, N, d]
        attn = add_bias_and_mask(paddle.matmul(q * self.scale, k, transpose_y=True), self.relative_bias(), mask)
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([-1, tokens, c])
        return self.proj_drop(self.proj(x))

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
                 drop_path: float = 0.0, *, post_norm: bool, post_norm_init: str = "zero") -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        if post_norm_init not in ("zero", "one"):
            raise ValueError(f"Arch.backbone.post_norm_init '{post_norm_init}' unknown; expected zero | one")
        self.dim = dim
        self.window_size = window_size
        self.shift_size = shift_size
        self.post_norm = post_norm
        self.post_norm_init = post_norm_init
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _attn(self, x: paddle.Tensor, order: WindowOrder) -> paddle.Tensor:
        """(Shifted-)window attention of the stage's tokens ``[B, H*W, C]`` stored in ``order``. The shift is 0
        where the feature map is not larger than the window."""
        shift = 0 if min(order.height, order.width) <= self.window_size else self.shift_size
        return order.reverse(self.attn(order.partition(x, shift), mask=order.attn_mask(shift)), shift)

    def forward(self, x: paddle.Tensor, order: WindowOrder) -> paddle.Tensor:
        """x ``[B, H*W, C]`` -> ``[B, H*W, C]``, tokens in ``order``."""
        if self.post_norm:
            x = x + self.drop_path(self.norm1(self._attn(x, order)))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        x = x + self.drop_path(self._attn(self.norm1(x), order))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}, "
                f"post_norm={self.post_norm}")


class PatchMerging(nn.Layer):
    """2x2 neighbourhood concat (order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]; odd sizes
    zero-padded to even first: :meth:`WindowOrder.merge`) -> LN(4C) -> Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias_attr=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: paddle.Tensor, order: WindowOrder) -> paddle.Tensor:
        """x ``[B, H*W, C]`` in ``order`` -> ``[B, ceil(H/2)*ceil(W/2), 2C]`` in ``order.next()``."""
        return self.reduction(self.norm(order.merge(x)))


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

    order_type = WindowOrder  #: the class of :meth:`token_order`

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: Sequence[float],
                 downsample: bool, *, post_norm: bool, post_norm_init: str = "zero", recompute: bool = False) -> None:
        super().__init__()
        self.recompute = recompute
        self.window_size = window_size
        self.blocks = nn.LayerList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 qkv_bias, drop, attn_drop, drop_path[i], post_norm=post_norm,
                                 post_norm_init=post_norm_init)
            for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None
        self._orders: Dict[Tuple[int, int], WindowOrder] = {}

    def token_order(self, height: int, width: int) -> WindowOrder:
        """The order of this stage's tokens on a ``height x width`` grid (cached per grid in dygraph)."""
        if not paddle.in_dynamic_mode():
            return self.order_type(height, width, self.window_size)
        if (height, width) not in self._orders:
            self._orders[(height, width)] = self.order_type(height, width, self.window_size)
        return self._orders[(height, width)]

    def forward(self, x: paddle.Tensor, height: int, width: int) -> Tuple[paddle.Tensor, int, int]:
        """x ``[B, H*W, C]`` in :meth:`token_order` -> (x, H, W) after the blocks and the optional merge, in the
        next stage's order."""
        order = self.token_order(height, width)
        use_rc = self.recompute and self.training and not x.stop_gradient
        for blk in self.blocks:
            x = recompute_block(blk, x, order) if use_rc else blk(x, order)
        if self.downsample is None:
            return x, height, width
        nxt = order.next()
        return self.downsample(x, order), nxt.height, nxt.width


@BACKBONES.register
class SwinTransformer(nn.Layer):
    """Swin Transformer v1 with a post-norm switch.

    Args:
        variant: ``micro | tiny | small | base``; ``embed_dim`` / ``depths`` / ``num_heads`` override it.
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
        num_classes: ImageNet classifier size (0 = no ``head``; PaddleClas ``class_num``).
    """

    def __init__(self, variant: str = "base", patch_size: int = 4, in_chans: int = 3,
                 embed_dim: Optional[int] = None, depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None, window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.5, post_norm: bool = True, recompute: bool = False,
                 num_classes: int = 0, post_norm_init: str = "zero", stem: str = "patch",
                 stem_channels: Optional[Sequence[int]] = None, pool: str = "avg") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise KeyError(f"Arch.backbone.variant '{variant}' unknown; expected one of {sorted(VARIANTS)}")
        if pool not in ("avg", "max"):
            raise ValueError(f"Arch.backbone.pool '{pool}' unknown; expected avg | max")
        if stem_channels is not None and stem != "conv":
            raise ValueError("Arch.backbone.stem_channels needs Arch.backbone.stem: conv")
        v = VARIANTS[variant]
        embed_dim = int(embed_dim if embed_dim is not None else v["embed_dim"])
        depths = list(depths if depths is not None else v["depths"])
        num_heads = list(num_heads if num_heads is not None else v["num_heads"])
        if len(depths) != len(num_heads):
            raise ValueError(f"Arch.backbone: depths {depths} and num_heads {num_heads} differ in length")
        self.variant = variant
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
        self.stem = stem
        self.pool = pool

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, stem, stem_channels)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.LayerList([BasicLayer(
            dim=embed_dim * 2 ** i, depth=depths[i], num_heads=num_heads[i], window_size=window_size,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
            drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < self.num_layers - 1,
            post_norm=post_norm, post_norm_init=post_norm_init, recompute=recompute)
            for i in range(self.num_layers)])
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
        """x ``[N, 3, H, W]`` (any H, W) -> pooled features ``[N, num_features]`` (final LN, then pool)."""
        return self.forward_tokens(*self.patch_embed(x))

    def forward_tokens(self, x: paddle.Tensor, height: int, width: int) -> paddle.Tensor:
        """Patch-embedding tokens ``[N, H*W, C]`` on a ``height x width`` grid -> pooled features."""
        x = self.layers[0].token_order(height, width).from_rows(self.pos_drop(x))  # row-major -> stage order
        for layer in self.layers:
            x, height, width = layer(x, height, width)
        x = self.norm(x)  # pooling does not depend on the order of the tokens
        return x.max(axis=1) if self.pool == "max" else x.mean(axis=1)

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
