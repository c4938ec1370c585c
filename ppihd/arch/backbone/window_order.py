"""The token order of one Swin stage: window order where the grid allows it, row-major elsewhere.

LayerNorm, MLP and the residual adds act per token, so they do not care in which order a stage's tokens are
stored. Stored window by window (windows row-major, tokens row-major inside a window: the order
:func:`window_partition` produces), an unshifted block attends with no partition or reverse copy, a shifted block
needs one gather (roll + partition composed) before attention and its inverse after, and PatchMerging is one
gather (or two transposes) straight into the next stage's order. Same parameters, same outputs to float
rounding, fewer memory-bound copies (faster in dygraph training and in the exported programs; docs/benchmarks.md).

Only grids that are a multiple of the window use window order (:attr:`WindowOrder.active`): on a padded grid it
would carry the padding through every MLP (up to 9x the work on tiny maps), so such a stage keeps row-major
tokens and pads, rolls and partitions at every block as the official code does.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import paddle

#: Additive attention-mask value for forbidden pairs (the official Swin value; finite, so no NaN).
MASK_VALUE = -100.0


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

    Reshapes here write the batch dimension as ``-1`` (never ``x.shape[0]``): in an exported graph the target
    shape is then a constant, which lets oneDNN's bf16 pass keep the Linear layers in bf16."""
    b, h, w, c = x.shape
    x = x.reshape([-1, h // window, window, w // window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, window * window, c])


def window_reverse(windows: paddle.Tensor, window: int, h: int, w: int) -> paddle.Tensor:
    """``[B * nW, window * window, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.reshape([-1, h // window, w // window, window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, h, w, c])


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


def window_slots(height: int, width: int, window: int) -> np.ndarray:
    """int64 ``[H * W]``: for each slot of the window order, its row-major position in the grid."""
    grid = np.arange(height * width, dtype=np.int64).reshape(height // window, window, width // window, window)
    return grid.transpose(0, 2, 1, 3).reshape(-1)


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """int64 ``inv`` with ``inv[perm[i]] = i``."""
    inv = np.empty(perm.size, dtype=np.int64)
    inv[perm] = np.arange(perm.size, dtype=np.int64)
    return inv


class WindowOrder:
    """How the tokens ``[B, H*W, C]`` of one stage's ``height x width`` grid are stored, and the three operations
    that depend on it: :meth:`partition` / :meth:`reverse` around a block's attention, :meth:`merge` (the 2x2
    concat of PatchMerging, into the next stage's order). Index tensors and masks are cached on the object in
    dygraph (:meth:`constant`); under ``to_static`` each program gets its own constants."""

    def __init__(self, height: int, width: int, window: int) -> None:
        self.height, self.width, self.window = int(height), int(width), int(window)
        self.tokens = self.height * self.width
        self.active = self.height % window == 0 and self.width % window == 0  # window order (else row-major)
        self._cache: Dict[Any, Any] = {}

    def next(self) -> "WindowOrder":
        """The next stage's order (after PatchMerging: ``ceil(H/2) x ceil(W/2)``)."""
        return type(self)(-(-self.height // 2), -(-self.width // 2), self.window)

    def constant(self, key: Any, make) -> Any:
        """``make()`` (numpy arrays, a tuple of them, None or bool) as tensors, cached per key in dygraph."""
        def conv(a):
            if a is None or isinstance(a, bool):
                return a
            return tuple(conv(v) for v in a) if isinstance(a, tuple) else paddle.to_tensor(a)
        if not paddle.in_dynamic_mode():
            return conv(make())
        if key not in self._cache:
            self._cache[key] = conv(make())
        return self._cache[key]

    def attn_mask(self, shift: int) -> Optional[paddle.Tensor]:
        """:func:`window_attention_mask` of this grid (the same in either order)."""
        return self.constant(("mask", shift), lambda: window_attention_mask(self.height, self.width,
                                                                           self.window, shift))

    def gather(self, x: paddle.Tensor, index: paddle.Tensor) -> paddle.Tensor:
        """``x[:, index]`` for ``x [B, L, C]``."""
        return paddle.gather(x, index, axis=1)

    # --- index mathematics (numpy) ---
    def slot_of(self) -> np.ndarray:
        """int64 ``[H * W]``: row-major position -> slot in this order."""
        if not self.active:
            return np.arange(self.tokens, dtype=np.int64)
        return inverse_permutation(window_slots(self.height, self.width, self.window))

    def positions(self) -> np.ndarray:
        """int64 ``[H * W]``: slot in this order -> row-major position."""
        if not self.active:
            return np.arange(self.tokens, dtype=np.int64)
        return window_slots(self.height, self.width, self.window)

    def shift_index(self, shift: int) -> Tuple[np.ndarray, np.ndarray]:
        """(forward, inverse) int64 ``[H * W]`` gathers from window order to the window order of the grid rolled
        by ``-shift`` (``paddle.roll`` then partition, composed) and back. Needs :attr:`active`."""
        h, w = self.height, self.width
        pos = self.positions()  # positions in the rolled grid, in its window order
        src = ((pos // w + shift) % h) * w + (pos % w + shift) % w  # where each came from in the unrolled grid
        fwd = self.slot_of()[src]
        return fwd, inverse_permutation(fwd)

    def merge_index(self) -> Tuple[np.ndarray, bool]:
        """PatchMerging as one gather: int64 ``[L2 * 4]`` (next-stage token major, then the quadrants
        x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]) from this order into the next stage's, and
        whether a source lies outside an odd-sized grid (it then points at index ``H * W``, a zero token)."""
        nxt = self.next()
        slot, pos2 = self.slot_of(), nxt.positions()
        r2, c2 = pos2 // nxt.width, pos2 % nxt.width
        cols = []
        for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):
            r, c = 2 * r2 + dr, 2 * c2 + dc
            ok = (r < self.height) & (c < self.width)
            cols.append(np.where(ok, slot[np.where(ok, r * self.width + c, 0)], self.tokens))
        idx = np.stack(cols, axis=1).reshape(-1).astype("int64")
        return idx, bool((idx == self.tokens).any())

    # --- the operations ---
    def from_rows(self, x: paddle.Tensor) -> paddle.Tensor:
        """Row-major tokens ``[B, H*W, C]`` -> this order; for window order one transpose of
        ``[B*H/w, w, W/w, w*C]`` (``[0, 2, 1, 3]``)."""
        if not self.active:
            return x
        c, ws = x.shape[-1], self.window
        return x.reshape([-1, ws, self.width // ws, ws * c]).transpose([0, 2, 1, 3]).reshape([-1, self.tokens, c])

    def to_rows(self, x: paddle.Tensor) -> paddle.Tensor:
        """Inverse of :meth:`from_rows`."""
        if not self.active:
            return x
        c, ws = x.shape[-1], self.window
        return x.reshape([-1, self.width // ws, ws, ws * c]).transpose([0, 2, 1, 3]).reshape([-1, self.tokens, c])

    def partition(self, x: paddle.Tensor, shift: int) -> paddle.Tensor:
        """Tokens ``[B, H*W, C]`` -> windows of ``w*w`` consecutive tokens of the grid rolled by ``-shift``
        (padded to a multiple of the window in row-major order): ``[B, H*W, C]`` in window order (one gather
        with a shift, nothing without), ``[B*nW, w*w, C]`` in row-major order (pad, roll, partition)."""
        if self.active:
            return self.gather(x, self.constant(("shift", shift), lambda: self.shift_index(shift))[0]) if shift else x
        c, w = x.shape[-1], self.window
        x = x.reshape([-1, self.height, self.width, c])
        x = pad_zeros(pad_zeros(x, 1, -self.height % w), 2, -self.width % w)  # oneDNN-safe (see pad_zeros)
        if shift:
            x = paddle.roll(x, shifts=(-shift, -shift), axis=(1, 2))
        return window_partition(x, w)

    def reverse(self, windows: paddle.Tensor, shift: int) -> paddle.Tensor:
        """Inverse of :meth:`partition`: attention outputs in window layout -> tokens ``[B, H*W, C]``."""
        if self.active:
            return self.gather(windows, self.constant(("shift", shift), lambda: self.shift_index(shift))[1]) \
                if shift else windows
        h, w, c = self.height, self.width, windows.shape[-1]
        x = window_reverse(windows, self.window, h + -h % self.window, w + -w % self.window)
        if shift:
            x = paddle.roll(x, shifts=(shift, shift), axis=(1, 2))
        if h % self.window or w % self.window:
            x = x[:, :h, :w, :]
        return x.reshape([-1, self.tokens, c])

    def merge(self, x: paddle.Tensor) -> paddle.Tensor:
        """PatchMerging's 2x2 concat: tokens ``[B, H*W, C]`` -> ``[B, ceil(H/2)*ceil(W/2), 4C]`` in the next
        stage's order (channel blocks x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]; odd sizes
        zero-padded)."""
        nxt, c = self.next(), x.shape[-1]
        if not (self.active or nxt.active):  # row-major to row-major: strided slices
            x = x.reshape([-1, self.height, self.width, c])
            x = pad_zeros(pad_zeros(x, 1, self.height % 2), 2, self.width % 2)  # oneDNN-safe (see pad_zeros)
            x = paddle.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        elif self.active and nxt.active and self.height % 2 == 0 and self.width % 2 == 0:
            # both in window order, no odd size: two transposes. Row-major row i = (wi2 * w + a2) * 2 + di,
            # column j = (wj2 * w + b2) * 2 + dj -> [B, wi2, wj2, a2, b2, dj, di, C] (channel block di + 2 * dj);
            # as a 6-D transpose of [B*wi2, a2, di, wj2, (b2, dj), C] (Paddle 2.6's oneDNN transpose fails on 8-D)
            ws = self.window
            x = self.to_rows(x).reshape([-1, ws, 2, nxt.width // ws, ws * 2, c]).transpose([0, 3, 1, 4, 2, 5])
        else:
            idx, needs_zero = self.constant("merge", self.merge_index)
            x = self.gather(pad_zeros(x, 1, 1) if needs_zero else x, idx)
        return x.reshape([-1, nxt.tokens, 4 * c])
