"""FixMatch strong augmentation A(.) for pseudo-labelled series (paper §Enhanced modeling; docs/reproduce.md).

The paper lists "random crop, flip and rotation, gaussian blur, distortion, etc." without parameters; ours
are ``DataLoader.Train.strong_augment`` (schema defaults, see docs/reproduce.md). Applied in this order, each
drawn independently per slice (``per_slice: true``) or once per series:

1. random resized crop (area fraction ``crop_scale``, aspect ratio ``crop_ratio``) back to the input size;
2. horizontal / vertical flip with probabilities ``hflip`` / ``vflip``;
3. rotation by an angle uniform in ``[-rotate, +rotate]`` degrees about the centre (zero fill);
4. Gaussian blur with probability ``blur_prob``, sigma uniform in ``blur_sigma`` (pixels);
5. distortion with probability ``distortion_prob``: ``grid`` (control points on a ``grid_steps`` grid moved
   uniformly by up to ``distortion_strength`` of a cell, border points fixed, piecewise-linear map) or
   ``elastic`` (a smooth random field with the same maximum displacement).

Labels are untouched: every operation is spatial or intensity-only and keeps the slice's content class.
Transform contract: ``transform(slices uint8 [S, H, W, 3], rng: numpy.random.Generator) -> uint8 [S, H, W, 3]``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import cv2
import numpy as np

from ppihd.utils.schema import DEFAULTS

_KNOWN = set(DEFAULTS["DataLoader"]["Train"]["strong_augment"])


def _hat_weights(size: int, n: int) -> np.ndarray:
    """``[size, n + 1]`` linear interpolation weights from ``n + 1`` equally spaced knots (ends included)."""
    t = np.linspace(0.0, float(n), size)
    return np.clip(1.0 - np.abs(t[:, None] - np.arange(n + 1)[None, :]), 0.0, None)


class StrongAugment:
    """Callable FixMatch strong augmentation; see the module docstring for the operations.

    Args:
        cfg: ``DataLoader.Train.strong_augment`` (missing keys take the schema defaults).
    """

    def __init__(self, cfg: Optional[Mapping[str, Any]] = None) -> None:
        c: Dict[str, Any] = dict(DEFAULTS["DataLoader"]["Train"]["strong_augment"])
        unknown = set(cfg or {}) - _KNOWN
        if unknown:
            raise KeyError(f"DataLoader.Train.strong_augment: unknown keys {sorted(unknown)}; known {sorted(_KNOWN)}")
        c.update(cfg or {})
        if c["distortion"] not in ("grid", "elastic"):
            raise ValueError(f"DataLoader.Train.strong_augment.distortion must be grid or elastic, "
                             f"got {c['distortion']!r}")
        for k in ("hflip", "vflip", "blur_prob", "distortion_prob"):
            if not 0.0 <= float(c[k]) <= 1.0:
                raise ValueError(f"DataLoader.Train.strong_augment.{k} is a probability in [0, 1], got {c[k]}")
        if c["crop_scale"] is not None and not 0.0 < c["crop_scale"][0] <= c["crop_scale"][1] <= 1.0:
            raise ValueError(f"DataLoader.Train.strong_augment.crop_scale must satisfy 0 < lo <= hi <= 1, "
                             f"got {c['crop_scale']}")
        self.cfg = c

    # ------------------------------------------------------------------ parameter draws (one slice / series)
    def _draw(self, rng: np.random.Generator, h: int, w: int) -> Dict[str, Any]:
        c = self.cfg
        p: Dict[str, Any] = {}
        if c["crop_scale"] is not None:
            area = h * w
            p["crop"] = (0, 0, h, w)
            for _ in range(10):  # torchvision-style: try a few boxes that fit, else the whole slice
                a = area * rng.uniform(*c["crop_scale"])
                lo, hi = np.log(c["crop_ratio"][0]), np.log(c["crop_ratio"][1])
                r = float(np.exp(rng.uniform(lo, hi)))
                cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
                if 0 < cw <= w and 0 < ch <= h:
                    y0 = int(rng.integers(0, h - ch + 1))
                    x0 = int(rng.integers(0, w - cw + 1))
                    p["crop"] = (y0, x0, ch, cw)
                    break
        p["hflip"] = bool(rng.random() < c["hflip"])
        p["vflip"] = bool(rng.random() < c["vflip"])
        p["angle"] = float(rng.uniform(-c["rotate"], c["rotate"])) if c["rotate"] else 0.0
        p["sigma"] = float(rng.uniform(*c["blur_sigma"])) if rng.random() < c["blur_prob"] else 0.0
        p["distort"] = self._distortion_map(rng, h, w) if rng.random() < c["distortion_prob"] else None
        return p

    def _distortion_map(self, rng: np.random.Generator, h: int, w: int):
        c = self.cfg
        n = max(int(c["grid_steps"]), 1)
        cell_y, cell_x = h / n, w / n
        s = float(c["distortion_strength"])
        if c["distortion"] == "grid":
            dy = rng.uniform(-s, s, size=(n + 1, n + 1)) * cell_y
            dx = rng.uniform(-s, s, size=(n + 1, n + 1)) * cell_x
            for d in (dy, dx):  # border control points stay on the border
                d[0, :] = d[-1, :] = 0.0
                d[:, 0] = d[:, -1] = 0.0
            # piecewise-linear interpolation of the control-point displacements to every pixel:
            # map = Wy @ d @ Wx^T with Wy [h, n+1], Wx [w, n+1] the linear "hat" weights
            wy, wx = _hat_weights(h, n), _hat_weights(w, n)
            map_dy, map_dx = wy @ dy @ wx.T, wy @ dx @ wx.T
        else:
            fields = []
            for cell in (cell_y, cell_x):
                f = rng.uniform(-1.0, 1.0, size=(h, w)).astype(np.float32)
                f = cv2.GaussianBlur(f, (0, 0), sigmaX=max(cell / 2.0, 0.5))
                m = float(np.abs(f).max())
                fields.append((f / m if m > 0 else f) * s * cell)
            map_dy, map_dx = fields
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        return (xx + map_dx).astype(np.float32), (yy + map_dy).astype(np.float32)

    # ------------------------------------------------------------------ application
    @staticmethod
    def _apply(img: np.ndarray, p: Dict[str, Any]) -> np.ndarray:
        h, w = img.shape[:2]
        out = img
        if "crop" in p:
            y0, x0, ch, cw = p["crop"]
            if (ch, cw) != (h, w):
                out = cv2.resize(np.ascontiguousarray(out[y0:y0 + ch, x0:x0 + cw]), (w, h),
                                 interpolation=cv2.INTER_LINEAR)
        if p["hflip"]:
            out = out[:, ::-1]
        if p["vflip"]:
            out = out[::-1]
        out = np.ascontiguousarray(out)
        if p["angle"]:
            m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), p["angle"], 1.0)
            out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
        if p["sigma"] > 0:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=p["sigma"], borderType=cv2.BORDER_REFLECT_101)
        if p["distort"] is not None:
            mx, my = p["distort"]
            out = cv2.remap(out, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
        return out

    def __call__(self, slices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``slices`` uint8 ``[S, H, W, C]`` -> augmented uint8 ``[S, H, W, C]`` (same shape)."""
        if slices.ndim != 4 or slices.dtype != np.uint8:
            raise ValueError(f"StrongAugment expects uint8 [S, H, W, C], got {slices.dtype} {slices.shape}")
        s, h, w, _ = slices.shape
        out = np.empty_like(slices)
        shared = None if self.cfg["per_slice"] else self._draw(rng, h, w)
        for i in range(s):
            p = shared if shared is not None else self._draw(rng, h, w)
            res = self._apply(slices[i], p)
            out[i] = res.reshape(h, w, -1)
        return out

