"""Per-slice preprocessing as small pure functions (docs/data.md §2): HU → windows → black-edge crop → resize.

    hu = to_hu(raw, slope, intercept, bits_stored, pixel_representation)   # float32 [h, w], HU
    img = apply_windows(hu, [[40, 80], [80, 200], [40, 380]])              # uint8 [h, w, 3]
    img = remove_black_edges(img)                                          # uint8 [h', w', 3]
    img = resize(img, 224)                                                 # uint8 [224, 224, 3]

:func:`preprocess_slice` chains them from a config's ``Data`` section (:func:`crop_slice` = the same without
the resize, for a ``Data.cache_size`` cache, which keeps the native crop in a canvas: :func:`native_canvas`). The windows are in-place float32
numpy ops: measured faster than a per-slice look-up table (raw value → 3 packed window bytes, one
``np.take``) on 512² int16 slices (1.3 vs 1.7 ms for the whole slice), so there is no LUT path.

Window rounding (exact): ``v = (clip(hu, c - w/2, c + w/2) - (c - w/2)) * float32(255 / w)`` in float32,
then truncated toward zero (``astype(uint8)``, as the reference code does), so HU ``c + w/2`` → 255,
``c - w/2`` → 0, and HU 40 in the (40, 80) brain window → 127 (127.5 truncated).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

#: docs/numbers.md: (center, width) of the brain, blood/subdural and soft-tissue windows, in HU.
DEFAULT_WINDOWS = ((40.0, 80.0), (80.0, 200.0), (40.0, 380.0))


# ------------------------------------------------------------------------------------------------- HU
def needs_intercept_fix(bits_stored: Optional[int], pixel_representation: Optional[int], intercept: float) -> bool:
    """docs/data.md §2 condition of the corrupt RSNA files: BitsStored 12, unsigned pixels, intercept > -100."""
    return bits_stored == 12 and pixel_representation == 0 and float(intercept) > -100.0


def to_hu(raw: np.ndarray, slope: float = 1.0, intercept: float = 0.0, bits_stored: Optional[int] = None,
          pixel_representation: Optional[int] = None, fix_intercept: bool = True) -> np.ndarray:
    """Stored values → HU, float32, same shape: ``raw × slope + intercept``.

    With ``fix_intercept`` and :func:`needs_intercept_fix` true (the corrupt RSNA files), first
    ``raw + 1000``, values ≥ 4096 lose 4096, and the intercept becomes -1000 (docs/data.md §2).
    """
    if fix_intercept and needs_intercept_fix(bits_stored, pixel_representation, intercept):
        x = raw.astype(np.int32) + 1000
        x[x >= 4096] -= 4096
        raw, intercept = x, -1000.0
    hu = raw.astype(np.float32)
    if float(slope) != 1.0:
        hu *= np.float32(slope)
    if float(intercept) != 0.0:
        hu += np.float32(intercept)
    return hu


# --------------------------------------------------------------------------------------------- windows
def apply_windows(hu: np.ndarray, windows: Sequence[Sequence[float]] = DEFAULT_WINDOWS) -> np.ndarray:
    """HU [...] → uint8 [..., len(windows)]: each (center, width) window clipped and scaled to 0..255.

    Rounding as stated in the module docstring (float32, truncation).
    """
    hu = np.asarray(hu, dtype=np.float32)
    out = np.empty(hu.shape + (len(windows),), dtype=np.uint8)
    for k, (c, w) in enumerate(windows):
        if w <= 0:
            raise ValueError(f"Data.windows[{k}] = ({c}, {w}): width must be > 0")
        lo, hi = np.float32(c - w / 2.0), np.float32(c + w / 2.0)
        v = np.clip(hu, lo, hi)
        v -= lo
        v *= np.float32(255.0 / w)
        out[..., k] = v  # float → uint8 assignment truncates
    return out



# ------------------------------------------------------------------------------------------ black edges
def black_edge_box(channel: np.ndarray, kernel: int = 5, iterations: int = 3,
                   inclusive: bool = True) -> Optional[Tuple[int, int, int, int]]:
    """Bounding box ``(y0, y1, x0, x1)`` (half-open, for ``img[y0:y1, x0:x1]``) of the non-zero pixels of
    ``channel`` (uint8 [h, w], the brain window) after a morphological opening with a ``kernel``×``kernel``
    ellipse, ``iterations`` times (docs/data.md §2).

    ``inclusive=False`` reproduces the reference code, whose box ends one row/column early
    (``y1 = last non-zero row``). Returns None when nothing survives the opening (or the box is empty).
    """
    ch = np.ascontiguousarray(channel)
    if iterations > 0 and kernel > 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(kernel), int(kernel)))
        ch = cv2.morphologyEx(ch, cv2.MORPH_OPEN, k, iterations=int(iterations))
    rows = np.flatnonzero(ch.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(ch.any(axis=0))
    extra = 1 if inclusive else 0
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + extra, int(cols[0]), int(cols[-1]) + extra
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


EMPTY_OPENING = ("keep", "zero")


def remove_black_edges(img: np.ndarray, kernel: int = 5, iterations: int = 3, inclusive: bool = True,
                       channel: int = 0, empty: str = "keep") -> np.ndarray:
    """Crop uint8 [h, w, C] to :func:`black_edge_box` of ``img[..., channel]``. When the opening leaves nothing
    (no box), ``empty`` (``Data.empty_opening``) decides: ``keep`` returns the slice whole (an all-zero slice
    stays all-zero; a slice with only small specks keeps them), ``zero`` returns zeros of the same shape, as the
    reference code does."""
    if empty not in EMPTY_OPENING:
        raise ValueError(f"Data.empty_opening must be one of {EMPTY_OPENING}, got {empty!r}")
    box = black_edge_box(img[..., channel], kernel, iterations, inclusive)
    if box is None:
        return img if empty == "keep" else np.zeros_like(img)
    y0, y1, x0, x1 = box
    return img[y0:y1, x0:x1]


def resize(img: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize uint8 [h, w, C] to [size, size, C] (aspect ratio not kept; bilinear by default)."""
    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    out = cv2.resize(np.ascontiguousarray(img), (int(size), int(size)), interpolation=interpolation)
    return out.reshape(size, size, img.shape[2]) if out.ndim == 2 else out


# --------------------------------------------------------------------------------------------- pipeline
def crop_slice(hu: np.ndarray, data_cfg: Mapping[str, Any]) -> np.ndarray:
    """float32 HU [h, w] → uint8 [h', w', 3] at native resolution (channels in ``Data.windows`` order): windows
    and black-edge crop (if ``Data.remove_black_edges``; box from the first window, the brain window in the
    paper's order; when the opening leaves nothing, ``Data.empty_opening``: ``keep`` = the whole slice,
    ``zero`` = zeros of the slice's shape, the reference's ``np.zeros_like``). No resampling.

    The windows being pointwise, only the first one is computed on the whole slice and the others inside the
    crop (faster; the same bytes as ``remove_black_edges(apply_windows(hu))``)."""
    windows = data_cfg["windows"]
    if data_cfg["empty_opening"] not in EMPTY_OPENING:
        raise ValueError(f"Data.empty_opening must be one of {EMPTY_OPENING}, got {data_cfg['empty_opening']!r}")
    if not data_cfg["remove_black_edges"]:
        return apply_windows(hu, windows)
    first = apply_windows(hu, windows[:1])[..., 0]
    box = black_edge_box(first, int(data_cfg["opening_kernel"]), int(data_cfg["opening_iterations"]),
                         bool(data_cfg["crop_inclusive"]))
    if box is None and data_cfg["empty_opening"] == "zero":
        return np.zeros(hu.shape + (len(windows),), dtype=np.uint8)   # the reference: np.zeros_like
    y0, y1, x0, x1 = box if box is not None else (0, hu.shape[0], 0, hu.shape[1])
    img = np.empty((y1 - y0, x1 - x0, len(windows)), dtype=np.uint8)
    img[..., 0] = first[y0:y1, x0:x1]
    if len(windows) > 1:
        img[..., 1:] = apply_windows(hu[y0:y1, x0:x1], windows[1:])
    return img


def preprocess_slice(hu: np.ndarray, data_cfg: Mapping[str, Any]) -> np.ndarray:
    """float32 HU [h, w] → uint8 [H, W, 3] (channels in ``Data.windows`` order), H = W = ``Data.image_size``:
    :func:`crop_slice` (windows, black-edge crop), then one bilinear resize, aspect ratio not kept.

    This is also the reference's evaluation path (its val/test ``Resize(224)``: ``cv2.resize`` to 224 × 224,
    ``INTER_LINEAR``, of the native black-edge crop), so inference and a ``Data.cache_size`` cache's eval
    items (:func:`resize` of the native crop) give the same bytes when the crop fits the canvas."""
    return resize(crop_slice(hu, data_cfg), int(data_cfg["image_size"]))


def native_canvas(crop: np.ndarray, size: int) -> Tuple[np.ndarray, Tuple[int, int], bool]:
    """Place a native-resolution crop uint8 [h, w, C] in the top-left corner of a ``size`` × ``size`` zero
    canvas (``Data.cache_size``) without resampling. Returns ``(canvas, (h, w), downscaled)``: a crop larger
    than the canvas is first downscaled once, aspect ratio kept (``max(h, w) → size``, each side
    ``max(1, round(side × size / max(h, w)))``, ``cv2.INTER_AREA``), and ``downscaled`` is True."""
    size = int(size)
    h, w = crop.shape[:2]
    downscaled = max(h, w) > size
    if downscaled:
        f = size / max(h, w)
        h, w = min(size, max(1, int(round(h * f)))), min(size, max(1, int(round(w * f))))
        out = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA)
        crop = out.reshape(h, w, crop.shape[2]) if out.ndim == 2 else out
    canvas = np.zeros((size, size, crop.shape[2]), dtype=np.uint8)
    canvas[:h, :w] = crop
    return canvas, (h, w), downscaled
