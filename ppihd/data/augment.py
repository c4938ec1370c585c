"""Training augmentation of labelled series (docs/training.md, docs/numbers.md): RandomResizedCrop, flips, optional rotation.

Acts on uint8 ``[S, H, W, 3]`` with a ``numpy.random.Generator`` (the dataset transform contract:
``transform(slices, rng) -> slices``) and returns uint8 ``[S, out, out, 3]``.

RandomResizedCrop(out, scale=(0.8, 1.2), ratio=(3/4, 4/3), bicubic): a box of area ``scale * H * W`` and aspect
``w / h = ratio`` (log-uniform) is cut out and resized to ``out x out``. With scale > 1 the box is larger than the
image. ``crop_oversize`` says what happens then:

- ``pad`` (default): the box keeps its size and is placed so that it covers the image (offset uniform in
  ``[W - w, 0]``); the part outside the image is zeros (the background after windowing / black-edge removal),
  i.e. scale > 1 zooms out. A box dimension smaller than the image is placed inside it as usual.
- ``clamp``: each box side is clipped to the image side, i.e. scale > 1 degenerates to (at most) the full image.

``crop_sampler: reference`` replaces this box sampling by the authors' (their ``easymia`` RandomResizedCrop,
the torchvision rule; ``crop_oversize`` is then unused): up to 10 attempts of area ``U(scale) * H * W``, aspect
``w / h = U(ratio)`` (uniform, not log-uniform), ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``,
then w and h swapped with probability 0.5; the first box with ``w <= W`` and ``h <= H`` is placed uniformly
inside the image; if none fits, the centred ``min(H, W)`` square. For a large square slice and scale
(0.8, 1.2), ratio (3/4, 4/3) an attempt fits with probability 0.185, so (1 - 0.185)^10 = 13 % of the crops are
the whole slice; at 224^2 rounding lets more boxes fit: 11.7 % (``clamp``: 17.1 %, and a side is the full
slice side in 82 % of its boxes; 10^5 draws each).
Then horizontal flip (p = ``hflip``), vertical flip (p = ``vflip``) and, if ``rotate`` > 0, a rotation by
an angle uniform in ``[-rotate, rotate]`` degrees about the centre (bilinear, zero fill).
``per_slice=True`` (reference) draws every parameter per slice; ``False`` draws once per series.

:meth:`TrainAugment.crops` is the same on a list of native-resolution black-edge crops of their own sizes
(a ``Data.cache_size`` cache): the box is drawn inside each real ``h x w`` crop, with its aspect ratio, and
resized straight to ``out x out`` (one resampling), as the reference's RandomResizedCrop. There,
``per_slice=False`` replays one set of random numbers on every slice (same scale, ratio, flips and angle;
the box follows each crop's size).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
                  "area": cv2.INTER_AREA}


_CHUNK = 3  # channels per OpenCV call: one slice, so a per-series draw computes exactly what per-slice does


def _per_chunk(img: np.ndarray, fn) -> np.ndarray:
    """Apply an OpenCV [h, w, c] -> [h', w', c] function to [h, w, C] in 3-channel chunks (OpenCV caps C)."""
    parts = [np.atleast_3d(fn(np.ascontiguousarray(img[:, :, i:i + _CHUNK]))) for i in range(0, img.shape[2], _CHUNK)]
    return np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]


def _resize(img: np.ndarray, size: int, interp: int) -> np.ndarray:
    """Resize [h, w, C] to [size, size, C]."""
    if img.shape[0] == size and img.shape[1] == size:
        return img.copy()
    return _per_chunk(img, lambda x: cv2.resize(x, (size, size), interpolation=interp))


class TrainAugment:
    """Callable ``(slices uint8 [S, H, W, 3], rng) -> uint8 [S, size, size, 3]``."""

    def __init__(self, size: int = 224, random_resized_crop: bool = True, scale: Sequence[float] = (0.8, 1.2),
                 ratio: Sequence[float] = (0.75, 4 / 3), interpolation: str = "bicubic", hflip: float = 0.5,
                 vflip: float = 0.5, rotate: float = 0.0, per_slice: bool = True,
                 crop_oversize: str = "pad", crop_sampler: str = "ppihd") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"DataLoader.Train.augment.interpolation must be one of {sorted(INTERPOLATIONS)}, "
                             f"got {interpolation!r}")
        if crop_oversize not in ("pad", "clamp"):
            raise ValueError(f"DataLoader.Train.augment.crop_oversize must be 'pad' or 'clamp', got {crop_oversize!r}")
        if crop_sampler not in ("ppihd", "reference"):
            raise ValueError(f"DataLoader.Train.augment.crop_sampler must be 'ppihd' or 'reference', "
                             f"got {crop_sampler!r}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"DataLoader.Train.augment.scale must be [lo, hi] with 0 < lo <= hi, got {scale}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"DataLoader.Train.augment.ratio must be [lo, hi] with 0 < lo <= hi, got {ratio}")
        self.size = int(size)
        self.rrc = bool(random_resized_crop)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.interp = INTERPOLATIONS[interpolation]
        self.hflip, self.vflip, self.rotate = float(hflip), float(vflip), float(rotate)
        self.per_slice = bool(per_slice)
        self.oversize = crop_oversize
        self.sampler = crop_sampler

    # -- parameter drawing -------------------------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, h: int, w: int) -> Dict[str, Any]:
        """Draw one set of parameters for an ``h x w`` slice: crop box (y0, x0, ch, cw), flips, angle."""
        p: Dict[str, Any] = {"box": (0, 0, h, w)}
        if self.rrc and self.sampler == "reference":
            p["box"] = self.reference_box(rng, h, w)
        elif self.rrc:
            area = h * w * rng.uniform(*self.scale)
            r = math.exp(rng.uniform(*self.log_ratio))
            cw = max(1, int(round(math.sqrt(area * r))))
            ch = max(1, int(round(math.sqrt(area / r))))
            if self.oversize == "clamp":
                cw, ch = min(cw, w), min(ch, h)
            y0 = int(rng.integers(min(0, h - ch), max(0, h - ch) + 1))
            x0 = int(rng.integers(min(0, w - cw), max(0, w - cw) + 1))
            p["box"] = (y0, x0, ch, cw)
        p["hflip"] = bool(rng.random() < self.hflip)
        p["vflip"] = bool(rng.random() < self.vflip)
        p["angle"] = float(rng.uniform(-self.rotate, self.rotate)) if self.rotate > 0 else 0.0
        return p

    def reference_box(self, rng: np.random.Generator, h: int, w: int, attempts: int = 10
                      ) -> Tuple[int, int, int, int]:
        """The authors' box rule (module docstring) with numpy draws: ``(y0, x0, ch, cw)`` inside the image."""
        for _ in range(attempts):
            area = h * w * rng.uniform(*self.scale)
            r = rng.uniform(*self.ratio)
            cw = int(round(math.sqrt(area * r)))   # Python round (half to even), as the reference
            ch = int(round(math.sqrt(area / r)))
            if rng.random() < 0.5:
                cw, ch = ch, cw
            if cw <= w and ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        side = min(h, w)
        return (h - side) // 2, (w - side) // 2, side, side

    # -- application --------------------------------------------------------------------------------------------
    @staticmethod
    def crop(img: np.ndarray, box: Tuple[int, int, int, int]) -> np.ndarray:
        """Cut ``box = (y0, x0, h, w)`` out of [H, W, C]; parts outside the image are zeros."""
        y0, x0, ch, cw = box
        H, W = img.shape[:2]
        if y0 >= 0 and x0 >= 0 and y0 + ch <= H and x0 + cw <= W:
            return img[y0:y0 + ch, x0:x0 + cw]
        out = np.zeros((ch, cw) + img.shape[2:], dtype=img.dtype)
        sy0, sx0 = max(y0, 0), max(x0, 0)
        sy1, sx1 = min(y0 + ch, H), min(x0 + cw, W)
        if sy1 > sy0 and sx1 > sx0:
            out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
        return out

    def apply(self, img: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
        """Apply drawn parameters to [H, W, C] (C may be 3 * S for a per-series draw)."""
        out = _resize(self.crop(img, p["box"]), self.size, self.interp)
        if p["hflip"]:
            out = out[:, ::-1]
        if p["vflip"]:
            out = out[::-1]
        if p["angle"]:
            m = cv2.getRotationMatrix2D(((self.size - 1) / 2.0, (self.size - 1) / 2.0), p["angle"], 1.0)
            out = _per_chunk(out, lambda x: cv2.warpAffine(x, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0))
        return np.ascontiguousarray(out)

    def __call__(self, slices: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        if slices.ndim != 4:
            raise ValueError(f"augment expects uint8 [S, H, W, C], got shape {slices.shape}")
        rng = rng if rng is not None else np.random.default_rng()
        s, h, w, c = slices.shape
        if s == 0:
            return np.zeros((0, self.size, self.size, c), dtype=slices.dtype)
        if self.per_slice:
            return np.stack([self.apply(slices[i], self.draw(rng, h, w)) for i in range(s)])
        p = self.draw(rng, h, w)
        stacked = slices.transpose(1, 2, 0, 3).reshape(h, w, s * c)
        out = self.apply(stacked, p)
        return out.reshape(self.size, self.size, s, c).transpose(2, 0, 1, 3).copy()

    def crops(self, crops: Sequence[np.ndarray], rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """Native crops uint8 ``[h_i, w_i, C]`` (sizes may differ) → uint8 ``[S, size, size, C]``: parameters
        drawn for each crop's own ``h_i x w_i`` (module docstring), box cut from the crop and resized once."""
        rng = rng if rng is not None else np.random.default_rng()
        if len(crops) == 0:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        if self.per_slice:
            return np.stack([self.apply(c, self.draw(rng, *c.shape[:2])) for c in crops])
        seed = int(rng.integers(0, 2 ** 63))
        return np.stack([self.apply(c, self.draw(np.random.default_rng(seed), *c.shape[:2])) for c in crops])


def build_train_augment(cfg: Mapping[str, Any]) -> TrainAugment:
    """From a full config: ``DataLoader.Train.augment`` with output side ``Data.image_size``."""
    a = dict(cfg["DataLoader"]["Train"]["augment"])
    return TrainAugment(size=int(cfg["Data"]["image_size"]), **a)
