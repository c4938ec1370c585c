"""Synthetic RSNA-style head-CT data: phantom series with the five hemorrhage subtypes, written as DICOM.

The generator draws one *series* at a time from a seeded ``numpy.random.Generator`` and renders each slice
in Hounsfield units (HU): air and an out-of-field circle around the head, scalp, a skull ring of varying
thickness, brain with grey/white texture, sulci, fissure, falx, ventricles whose shape changes with the slice
height, skull-base bone and sinus air in the lowest slices, normal calcifications (pineal, choroid plexus)
and a thin headrest. Hemorrhages are drawn where each subtype lives:

* epidural — biconvex lens against the inner table of the skull,
* subdural — long thin crescent along the inner table,
* intraparenchymal — irregular blob in the brain (optionally with a hypodense oedema rim),
* intraventricular — blood layering in (part of) a ventricle,
* subarachnoid — blood filling sulci of a sector, or the interhemispheric fissure.

Every lesion spans several consecutive slices with a size that varies across them. A slice's label for a
subtype is 1 exactly when that subtype's blood mask on the slice has at least ``min_lesion_pixels`` pixels;
smaller remnants are not drawn at all, so labels and pixels always agree (``any`` = OR of the five).

:func:`generate_dataset` writes the RSNA layout (``stage_2_train/``, ``stage_2_test/``, ``stage_2_train.csv``,
``stage_2_sample_submission.csv``) with RSNA's header quirks (see ``docs/synthetic_data.md``).
:func:`make_series` + :meth:`SeriesPhantom.render` are the debug API: they return the HU image together with
the ground-truth lesion and anatomy masks. Everything is deterministic for a seed; nothing is downloaded.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .. import LABELS

#: The five hemorrhage subtypes (SPEC order, without ``any``).
SUBTYPES: Tuple[str, ...] = LABELS[:5]

#: Pixel encodings written to DICOM. HU = raw * 1 + intercept, except ``corrupt`` (see :func:`encode_hu`).
ENCODINGS: Tuple[str, ...] = ("u12", "s16", "u16", "corrupt")

#: Transfer syntaxes used (uncompressed little endian).
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Fixed implementation UID (pydicom's documented example root) so the bytes do not depend on pydicom's version.
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"

SLICE_STEP_MM = 5.0        # ImagePositionPatient steps 5 mm along the (tilted) slice normal
BLOOD_HU = (50.0, 90.0)    # acute blood drawn in this range (before noise / partial volume)
MIN_LESION_MM2 = 10.0      # smaller blood remnants on a slice are neither drawn nor labelled
MANIFEST_VERSION = 1
_MARKER = "synthetic.json"


# ---------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------
def _wrap(a: np.ndarray) -> np.ndarray:
    """Angle difference wrapped to [-pi, pi)."""
    return (a + np.pi) % (2.0 * np.pi) - np.pi


def _profile(k: float, kc: float, half: float) -> float:
    """Ellipsoidal size factor along the slice axis: sqrt(1 - ((k - kc) / half)^2), 0 outside."""
    if half <= 0:
        return 0.0
    x = (k - kc) / half
    return math.sqrt(1.0 - x * x) if abs(x) < 1.0 else 0.0


def _smooth_field(rng: np.random.Generator, rows: int, cols: int, ps: float, scale_mm: float) -> np.ndarray:
    """Smooth random field with unit std and features of about ``scale_mm``: float32 [rows, cols]."""
    lr = max(4, int(round(rows * ps / scale_mm))), max(4, int(round(cols * ps / scale_mm)))
    low = rng.standard_normal(lr).astype(np.float32)
    low = cv2.GaussianBlur(low, (0, 0), 0.8, borderType=cv2.BORDER_REFLECT)
    f = cv2.resize(low, (cols, rows), interpolation=cv2.INTER_CUBIC)
    f -= f.mean()
    f /= f.std() + 1e-6
    return f


@dataclass
class Lesion:
    """One hemorrhage: subtype, slice centre ``kc`` and half-length ``half`` (slices), geometry parameters."""

    subtype: str
    kc: float
    half: float
    hu: float
    params: Dict[str, float] = field(default_factory=dict)


@dataclass
class SliceRender:
    """One rendered slice. ``hu``: float32 [rows, cols] in HU (the values written, before integer rounding).

    ``lesions``: subtype -> bool mask of the blood actually drawn (empty masks are omitted).
    ``anatomy``: name -> bool mask of normal structures (bone, scalp, calcification, falx, skull_base,
    headrest, ventricles, brain, out_of_field).
    """

    hu: np.ndarray
    lesions: Dict[str, np.ndarray]
    anatomy: Dict[str, np.ndarray]

    @property
    def labels(self) -> np.ndarray:
        """int64 [6] labels in ``ppihd.LABELS`` order."""
        y = np.array([1 if s in self.lesions else 0 for s in SUBTYPES] + [0], dtype=np.int64)
        y[5] = int(y[:5].any())
        return y


# ---------------------------------------------------------------------------------------------------------
# one series
# ---------------------------------------------------------------------------------------------------------
class SeriesPhantom:
    """A head-CT phantom series: random anatomy, acquisition and lesions drawn from ``rng``.

    Args:
        rng: the series' own generator (everything about the series comes from it).
        size: nominal image side in pixels (512 like RSNA); a few series get other / non-square shapes.
        n_slices: slices in the series.
        hemorrhage: whether the series has lesions; ``subtypes`` forces which (a subset of :data:`SUBTYPES`).
        encoding / transfer_syntax / shape: force acquisition properties (None = random).
        noise: scale of the image noise (0 = noiseless, for tests).
    """

    def __init__(self, rng: np.random.Generator, size: int = 512, n_slices: int = 30,
                 hemorrhage: bool = False, subtypes: Optional[Sequence[str]] = None,
                 encoding: Optional[str] = None, transfer_syntax: Optional[str] = None,
                 shape: Optional[Tuple[int, int]] = None, noise: float = 1.0) -> None:
        if n_slices < 1:
            raise ValueError(f"n_slices must be >= 1, got {n_slices}")
        if size < 32:
            raise ValueError(f"image size must be >= 32 pixels, got {size}")
        self.rng = rng
        self.n_slices = int(n_slices)
        self.noise_scale = float(noise)
        r = rng
        # --- acquisition ---------------------------------------------------------------------------------
        if shape is None:
            shape = self._random_shape(r, size)
        self.rows, self.cols = int(shape[0]), int(shape[1])
        self.fov = float(r.uniform(232.0, 262.0))                  # mm across the smaller image side
        self.ps = self.fov / min(self.rows, self.cols)              # mm per pixel
        self.tilt_deg = 0.0 if r.random() < 0.25 else float(r.uniform(3.0, 25.0))
        self.encoding = encoding or str(r.choice(["u12", "s16", "u16"], p=[0.5, 0.4, 0.1]))
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        self.corrupt_intercept = str(r.choice(["1.0", "0.0"]))
        self.transfer_syntax = transfer_syntax or (EXPLICIT_VR_LE if r.random() < 0.75 else IMPLICIT_VR_LE)
        self.window_style = int(r.integers(0, 4))
        self.origin = np.array([-0.5 * self.cols * self.ps, float(r.uniform(-150, -90)), float(r.uniform(-80, -20))])
        self.fov_circle = float(r.uniform(0.97, 1.02)) * 0.5 * min(self.rows, self.cols) * self.ps
        # --- anatomy -------------------------------------------------------------------------------------
        self.a = float(r.uniform(62.0, 72.0))                      # inner-skull half width (mm), widest slice
        self.b = float(r.uniform(78.0, 90.0))                      # inner-skull half length (mm)
        self.phi = math.radians(float(r.uniform(-8, 8)))            # in-plane head rotation
        self.cx, self.cy = float(r.uniform(-6, 6)), float(r.uniform(-8, 4))
        self.h0, self.h1 = float(r.uniform(-0.02, 0.12)), float(r.uniform(0.88, 1.0))
        self.grey = float(r.uniform(35.0, 41.0))
        self.white = float(r.uniform(25.0, 32.0))
        self.csf = float(r.uniform(2.0, 10.0))
        self.atrophy = float(r.beta(1.5, 3.0))
        self.sigma = float(r.uniform(2.5, 7.0))                     # HU noise std
        self.bone_table = float(r.uniform(1100.0, 1500.0))
        self.bone_diploe = float(r.uniform(500.0, 850.0))
        self.scalp_hu = float(r.uniform(20.0, 45.0))
        self.scalp_mm = float(r.uniform(3.0, 6.5))
        self.fat_mm = float(r.uniform(0.5, 2.5))
        self.vent_side = (float(r.uniform(0.8, 1.2)), float(r.uniform(0.8, 1.2)))
        self.pineal = r.random() < 0.45
        self.pineal_hu = float(r.uniform(100, 250))
        self.choroid = r.random() < 0.4
        self.choroid_hu = float(r.uniform(90, 220))
        self.falx_hu = float(r.uniform(40, 58))
        self.headrest = r.random() < 0.7
        self.headrest_gap = float(r.uniform(2.0, 8.0))
        self.psf = float(r.uniform(0.45, 0.8))                      # blur (pixels) of the point-spread function
        self.phase = float(r.uniform(0, 2 * np.pi))
        self._grid(r)
        self._noise_seed = int(r.integers(0, 2 ** 62))             # per-slice noise: default_rng([seed, k])
        # --- lesions -------------------------------------------------------------------------------------
        self.lesions: List[Lesion] = []
        if subtypes:
            unknown = [s for s in subtypes if s not in SUBTYPES]
            if unknown:
                raise ValueError(f"unknown subtypes {unknown}; expected a subset of {SUBTYPES}")
            hemorrhage = True
        if hemorrhage:
            self._draw_lesions(r, list(subtypes) if subtypes else None)
        #: a subtype is drawn / labelled on a slice only if its blood covers >= 10 mm^2 and >= 8 pixels
        self.min_lesion_pixels = max(8, int(math.ceil(MIN_LESION_MM2 / self.ps ** 2)))

    # ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _random_shape(r: np.random.Generator, size: int) -> Tuple[int, int]:
        u = r.random()
        f = size / 512.0
        if u < 0.88:
            return size, size
        options = [(640, 512), (512, 640), (768, 768), (436, 436), (408, 512)]
        rr, cc = options[int(r.integers(len(options)))]
        return max(32, int(round(rr * f))), max(32, int(round(cc * f)))

    def _grid(self, r: np.random.Generator) -> None:
        """Per-series coordinate arrays (mm, head frame) over a crop around the head: float32 [h, w]."""
        rows, cols, ps = self.rows, self.cols, self.ps
        y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0) * ps)[:, None]
        x = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2.0) * ps)[None, :]
        self.out_of_field = (x * x + y * y) > self.fov_circle ** 2
        # the head (+ scalp + headrest) never leaves this radius: render only inside its bounding box
        tb_mean = float(r.uniform(4.5, 7.0))
        reach = max(self.a, self.b) * 1.11 + 1.3 * tb_mean + self.scalp_mm + self.headrest_gap + 8.0
        ys = np.nonzero(np.abs(y[:, 0] - self.cy) < reach)[0]
        xs = np.nonzero(np.abs(x[0, :] - self.cx) < reach)[0]
        self.crop = (slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
        y, x = y[self.crop[0]], x[:, self.crop[1]]
        c, s = math.cos(self.phi), math.sin(self.phi)
        dx, dy = x - self.cx, y - self.cy
        self.U = (c * dx + s * dy).astype(np.float32)               # left-right (mm), head frame
        self.V = (-s * dx + c * dy).astype(np.float32)              # anterior (-) / posterior (+) (mm)
        self.r = np.hypot(self.U, self.V)
        th = np.arctan2(self.V, self.U)
        self.theta = th
        self.cos_t, self.sin_t = np.cos(th), np.sin(th)
        eps = np.zeros_like(th)
        for m in (2, 3, 4, 5):
            eps += float(r.uniform(-0.025, 0.025)) * np.cos(m * th + float(r.uniform(0, 2 * np.pi)))
        self.R = (self.a * self.b / np.sqrt((self.b * self.cos_t) ** 2 + (self.a * self.sin_t) ** 2)
                  * (1.0 + eps)).astype(np.float32)
        self.Tb = (tb_mean * (1.0 + 0.3 * np.cos(th - float(r.uniform(0, 2 * np.pi))))).astype(np.float32)
        h, w = self.U.shape
        self.fA = _smooth_field(r, h, w, ps, 9.0)                  # cortex / grey-white texture
        self.fB = _smooth_field(r, h, w, ps, 9.0)
        self.sA = _smooth_field(r, h, w, ps, 6.0)                  # sulci (level sets)
        self.sB = _smooth_field(r, h, w, ps, 6.0)
        self.bone_tex = 80.0 * _smooth_field(r, h, w, ps, 4.0)

    def _full(self, m: np.ndarray) -> np.ndarray:
        """A crop-sized mask placed in a full-size bool [rows, cols] array."""
        out = np.zeros((self.rows, self.cols), dtype=bool)
        out[self.crop] = m
        return out

    def _sector(self, theta0: float, half_width: float) -> np.ndarray:
        """bool mask |wrap(theta - theta0)| < half_width (half_width < pi), without per-pixel arctan."""
        return self.cos_t * math.cos(theta0) + self.sin_t * math.sin(theta0) > math.cos(min(half_width, np.pi))

    # ---------------------------------------------------------------------------------------------------
    def height(self, k: float) -> float:
        """Normalised height of slice ``k``: 0 = skull base, 1 = vertex."""
        if self.n_slices == 1:
            return 0.5
        return self.h0 + (self.h1 - self.h0) * k / (self.n_slices - 1)

    def head_scale(self, k: float) -> float:
        """Inner-skull size relative to the widest slice (shrinks towards the skull base and the vertex)."""
        h = self.height(k)
        x = (h - 0.42) / (0.62 if h > 0.42 else 0.75)
        return math.sqrt(max(0.04, 1.0 - x * x))

    def _slices_with_brain(self, lo: float = 0.2, hi: float = 0.85) -> Tuple[int, int]:
        ks = [k for k in range(self.n_slices) if lo <= self.height(k) <= hi]
        if not ks:
            return 0, self.n_slices - 1
        return ks[0], ks[-1]

    def _draw_lesions(self, r: np.random.Generator, subtypes: Optional[List[str]]) -> None:
        if subtypes is None:
            probs = {"epidural": 0.22, "intraparenchymal": 0.45, "intraventricular": 0.3,
                     "subarachnoid": 0.45, "subdural": 0.45}
            subtypes = [s for s in SUBTYPES if r.random() < probs[s]]
            if not subtypes:
                subtypes = [str(r.choice(SUBTYPES, p=[0.1, 0.25, 0.15, 0.25, 0.25]))]
        lo, hi = self._slices_with_brain()
        for st in subtypes:
            subtle = r.random() < 0.2
            hu = float(r.uniform(50.0, 60.0) if subtle else r.uniform(58.0, 85.0))
            if st == "epidural":
                half = float(r.uniform(1.5, 4.0))
                p = dict(theta=float(r.uniform(-np.pi, np.pi)), dtheta=float(r.uniform(0.3, 0.6)),
                         thick=float(r.uniform(3.5, 8.0) if subtle else r.uniform(7.0, 18.0)))
            elif st == "subdural":
                half = float(r.uniform(2.5, 7.0))
                p = dict(theta=float(r.uniform(-np.pi, np.pi)), dtheta=float(r.uniform(0.7, 1.5)),
                         thick=float(r.uniform(2.0, 4.0) if subtle else r.uniform(3.5, 11.0)))
            elif st == "intraparenchymal":
                rad = float(r.uniform(3.0, 6.0) if subtle else r.uniform(5.0, 18.0))
                half = max(1.2, rad / (SLICE_STEP_MM * 0.9) * float(r.uniform(0.8, 1.4)))
                ang = float(r.uniform(-np.pi, np.pi))
                p = dict(radius=rad, theta=ang, rho=float(r.uniform(0.15, 0.6)),
                         edema=float(r.uniform(2.0, 5.0)) if r.random() < 0.5 else 0.0)
                for m in (2, 3, 4):
                    p[f"c{m}"] = float(r.uniform(-0.15, 0.15))
                    p[f"p{m}"] = float(r.uniform(0, 2 * np.pi))
            elif st == "intraventricular":
                half = float(r.uniform(2.0, 5.0))
                p = dict(which=float(r.integers(0, 4)), level=float(r.uniform(-0.6, 0.7)))
            else:  # subarachnoid
                half = float(r.uniform(2.0, 5.0))
                p = dict(mode=float(r.random() < 0.7), theta=float(r.uniform(-np.pi, np.pi)),
                         dtheta=float(r.uniform(0.5, 1.2)), fissure_v=float(r.uniform(-0.8, 0.4)))
            if st == "intraventricular":
                # centre on slices where the lateral ventricles are large
                ks = [k for k in range(self.n_slices) if 0.42 <= self.height(k) <= 0.66]
                kc = float(r.choice(ks)) if ks else float(r.uniform(lo, hi))
            else:
                kc = float(r.uniform(lo, hi))
            self.lesions.append(Lesion(st, kc, half, hu, p))

    # ---------------------------------------------------------------------------------------------------
    def _ventricles(self, h: float, depth: np.ndarray) -> np.ndarray:
        """bool (crop) ventricle (CSF) mask at height ``h``, kept >= 8 mm inside the inner table."""
        U, V, b = self.U, self.V, self.b
        big = 1.0 + 0.9 * self.atrophy
        mask = np.zeros(U.shape, dtype=bool)
        comps = []
        for side, sgn in ((0, -1.0), (1, 1.0)):
            f = self.vent_side[side] * big
            comps.append((sgn * 9.0, -0.3 * b, 3.0 * f, 12.0 + 3 * f, sgn * 0.35, 0.52, 0.13))  # frontal horn
            comps.append((sgn * 12.0, 0.05 * b, 3.5 * f, 16.0 + 2 * f, sgn * -0.15, 0.6, 0.12))  # body
            comps.append((sgn * 15.0, 0.35 * b, 4.0 * f, 10.0 + 2 * f, sgn * -0.45, 0.47, 0.1))  # atrium/occipital
        comps.append((0.0, -0.08 * b, 1.2 + 1.5 * self.atrophy, 9.0, 0.0, 0.4, 0.08))             # third
        comps.append((0.0, 0.42 * b, 5.0 + 2 * self.atrophy, 3.5, 0.0, 0.2, 0.07))                # fourth
        for cu, cv, au, av, ang, hc, hw in comps:
            f = _profile(h, hc, hw)
            if f <= 0.15:
                continue
            ca, sa = math.cos(ang), math.sin(ang)
            du, dv = U - cu, V - cv
            uu = (ca * du + sa * dv) / (au * f)
            vv = (-sa * du + ca * dv) / (av * f)
            mask |= (uu * uu + vv * vv) < 1.0
        return mask & (depth > 8.0)

    def _disc(self, cu: float, cv: float, rad: float) -> np.ndarray:
        du, dv = self.U - cu, self.V - cv
        return du * du + dv * dv < rad * rad

    def render(self, k: int, noise: Optional[bool] = None) -> SliceRender:
        """Render slice ``k`` (0 = lowest). Returns HU float32 [rows, cols] with lesion / anatomy masks.

        Noise comes from ``default_rng([series noise seed, k])``, so a slice renders the same whatever the
        order. ``noise=False`` renders the noiseless phantom (blood then lies in :data:`BLOOD_HU` and brain
        tissue below it, apart from partial volume at edges).
        """
        if not 0 <= k < self.n_slices:
            raise IndexError(f"slice {k} out of range [0, {self.n_slices})")
        h = self.height(k)
        s = self.head_scale(k)
        U, V, r = self.U, self.V, self.r
        depth = s * self.R - r                                      # mm below the inner table (>0 = inside)
        intracranial = depth > 0
        dout = -depth
        bone = (dout >= 0) & (dout < self.Tb)
        scalp_out = self.Tb + self.scalp_mm
        scalp = (dout >= self.Tb) & (dout < scalp_out)
        fat = scalp & (dout < self.Tb + self.fat_mm)
        hu = np.full(U.shape, -1000.0, dtype=np.float32)
        hu[scalp] = self.scalp_hu
        hu[fat] = -80.0
        # bone: dense tables within 1.6 mm of either surface, diploe between
        table = np.minimum(dout, self.Tb - dout) < 1.6
        np.copyto(hu, self.bone_diploe + self.bone_tex, where=bone)
        hu[bone & table] += self.bone_table - self.bone_diploe
        # brain: grey/white with a cortical ribbon, deep grey nuclei
        ph = self.phase + 2.2 * h * np.pi
        fk = math.cos(ph) * self.fA + math.sin(ph) * self.fB
        np.clip(fk, -1.5, 1.5, out=fk)
        grey_frac = np.clip(0.5 + (3.5 + 1.6 * fk - depth) * 0.5, 0.0, 1.0)
        tissue = (self.white + fk) + (self.grey - self.white) * grey_frac
        if 0.28 <= h <= 0.52:
            f = _profile(h, 0.4, 0.12)
            for sgn in (-1.0, 1.0):
                du, dv = (U - sgn * 20.0) / (9.0 * f + 1e-3), (V + 0.05 * self.b) / (16.0 * f + 1e-3)
                tissue[du * du + dv * dv < 1.0] = self.grey - 1.0
        np.copyto(hu, tissue, where=intracranial)
        # CSF: rim under the skull, sulci (level sets of a random field), interhemispheric fissure
        sk = math.cos(0.7 * ph) * self.sA + math.sin(0.7 * ph) * self.sB
        sulc_w = 0.10 + 0.12 * self.atrophy
        rim = intracranial & (depth < 0.6 + 1.6 * self.atrophy)
        sulci = intracranial & (np.abs(sk) < sulc_w) & (depth < 6.0 + 14.0 * s)
        fiss_half = 0.7 + 1.0 * self.atrophy
        if h > 0.6:
            fissure = intracranial & (np.abs(U) < fiss_half)
        elif h > 0.3:
            fissure = intracranial & (np.abs(U) < fiss_half) & ((V < -0.25 * self.b * s) | (V > 0.45 * self.b * s))
        else:
            fissure = np.zeros(U.shape, dtype=bool)
        falx = fissure & (np.abs(U) < 0.35 * fiss_half) if h > 0.35 else np.zeros(U.shape, dtype=bool)
        csf_mask = rim | sulci | fissure
        hu[csf_mask] = self.csf
        vent = self._ventricles(h, depth)
        hu[vent] = self.csf
        # skull base (lowest slices): petrous bone and sinus air with a bony rim
        skull_base = np.zeros(U.shape, dtype=bool)
        if h < 0.24:
            f = _profile(h, 0.08, 0.16)
            for sgn in (-1.0, 1.0):
                ang = sgn * 0.9
                ca, sa = math.cos(ang), math.sin(ang)
                du, dv = U - sgn * 0.45 * self.a * s, V - 0.1 * self.b * s
                uu = (ca * du + sa * dv) / (4.5 * f + 1e-3)
                vv = (-sa * du + ca * dv) / (17.0 * f + 1e-3)
                pet = intracranial & (uu * uu + vv * vv < 1.0)
                hu[pet] = self.bone_table
                skull_base |= pet
            du, dv = U / (11.0 * f + 1e-3), (V + 0.62 * self.b * s) / (9.0 * f + 1e-3)
            q = du * du + dv * dv
            sinus_rim = intracranial & (q < 1.0)
            hu[sinus_rim] = self.bone_diploe
            hu[intracranial & (q < 0.6)] = -950.0
            skull_base |= sinus_rim
        # normal calcifications and the falx (hard negatives: dense but not blood)
        calc = falx.copy()
        hu[falx] = self.falx_hu
        if self.pineal and abs(h - 0.42) < 0.05:
            c = self._disc(0.0, 0.14 * self.b, 2.2) & intracranial
            hu[c] = self.pineal_hu
            calc |= c
        if self.choroid and abs(h - 0.55) < 0.05:
            for sgn in (-1.0, 1.0):
                c = self._disc(sgn * 16.0, 0.33 * self.b, 2.0) & vent
                hu[c] = self.choroid_hu
                calc |= c
        # headrest: a thin dense arc behind the head (removed by the black-edge opening)
        if self.headrest:
            rr = self.R + (self.Tb + self.scalp_mm + self.headrest_gap + 2.0)   # fixed with height
            headrest = (np.abs(r - rr) < 1.3) & self._sector(np.pi / 2, 0.9) & (dout > scalp_out)
            hu[headrest] = 250.0
        else:
            headrest = np.zeros(U.shape, dtype=bool)
        # lesions: drawn only where blood can be, and only if large enough to be labelled
        allowed = intracranial & ~skull_base & ~calc
        brain = allowed & ~csf_mask & ~vent
        drawn: Dict[str, np.ndarray] = {}
        blood = np.zeros(U.shape, dtype=bool)
        for les in self.lesions:
            m = self._lesion_mask(les, k, s, depth, sulci | rim, fissure, vent)
            if m is None:
                continue
            m &= allowed
            if int(np.count_nonzero(m)) < self.min_lesion_pixels:
                continue                                            # too small: neither drawn nor labelled
            hu[m] = np.clip(les.hu + 3.0 * fk[m], BLOOD_HU[0], BLOOD_HU[1])
            if les.subtype == "intraparenchymal" and les.params.get("edema", 0.0) > 0:
                ring = self._iph_mask(les, k, s, grow=les.params["edema"]) & brain & ~m & ~blood
                hu[ring] -= 8.0
            blood |= m
            drawn[les.subtype] = m if les.subtype not in drawn else (drawn[les.subtype] | m)
        # point-spread function, correlated noise; then paste into the full image with the out-of-field circle
        hu = cv2.GaussianBlur(hu, (0, 0), self.psf, borderType=cv2.BORDER_REPLICATE)
        use_noise = self.noise_scale > 0 if noise is None else bool(noise)
        if use_noise and self.noise_scale > 0:
            nrng = np.random.default_rng([self._noise_seed, k])
            n = nrng.standard_normal(hu.shape, dtype=np.float32)
            n = cv2.GaussianBlur(n, (0, 0), 0.7, borderType=cv2.BORDER_REFLECT)
            hu += (self.sigma * self.noise_scale / 0.4) * n          # blurred unit noise has std ~0.4
        full = np.full((self.rows, self.cols), -1000.0, dtype=np.float32)
        full[self.crop] = hu
        full[self.out_of_field] = -3024.0
        F = self._full
        anatomy = dict(bone=F(bone), scalp=F(scalp), calcification=F(calc), falx=F(falx),
                       skull_base=F(skull_base), headrest=F(headrest), ventricles=F(vent), csf=F(csf_mask),
                       brain=F(brain), intracranial=F(intracranial), out_of_field=self.out_of_field)
        return SliceRender(hu=full, lesions={kk: F(v) for kk, v in drawn.items()}, anatomy=anatomy)

    def _iph_mask(self, les: Lesion, k: int, s: float, grow: float = 0.0) -> np.ndarray:
        p = les.params
        f = _profile(k, les.kc, les.half)
        rad = p["radius"] * f + grow
        ang = p["theta"]
        # centre inside the brain, at a fraction rho of the inner-skull radius
        ru = p["rho"] * s * self.a * math.cos(ang)
        rv = p["rho"] * s * self.b * math.sin(ang)
        du, dv = self.U - ru, self.V - rv
        rr2 = du * du + dv * dv
        m = np.zeros(rr2.shape, dtype=bool)
        idx = np.nonzero(rr2 < (rad * 1.5) ** 2)                 # the boundary modulation stays below 1.45
        if idx[0].size:
            a = np.arctan2(dv[idx], du[idx])
            mod = 1.0 + sum(p[f"c{j}"] * np.cos(j * a + p[f"p{j}"]) for j in (2, 3, 4))
            keep = rr2[idx] < (rad * mod) ** 2
            m[idx[0][keep], idx[1][keep]] = True
        return m

    def _lesion_mask(self, les: Lesion, k: int, s: float, depth: np.ndarray, sulci: np.ndarray,
                     fissure: np.ndarray, vent: np.ndarray) -> Optional[np.ndarray]:
        f = _profile(k, les.kc, les.half)
        if f <= 0:
            return None
        p = les.params
        st = les.subtype
        if st in ("epidural", "subdural"):
            thick = p["thick"] * (f if st == "epidural" else math.sqrt(f))
            cand = (depth > 0) & (depth < thick) & self._sector(p["theta"], p["dtheta"])
            idx = np.nonzero(cand)
            x = _wrap(self.theta[idx] - p["theta"]) / p["dtheta"]
            x2 = np.clip(1.0 - x * x, 0.0, 1.0)
            d = thick * x2 if st == "epidural" else thick * x2 ** 0.3   # lens / flat crescent
            keep = depth[idx] < d
            m = np.zeros(depth.shape, dtype=bool)
            m[idx[0][keep], idx[1][keep]] = True
            return m
        if st == "intraparenchymal":
            return self._iph_mask(les, k, s) & (depth > 4.0)
        if st == "intraventricular":
            which = int(p["which"])
            side = (self.U < 0) if which == 0 else (self.U >= 0) if which == 1 else True
            # blood layers posteriorly (patient supine): V beyond a level that moves with the lesion extent
            level = p["level"] * 40.0 + (1.0 - f) * 30.0
            return vent & side & (self.V > level)
        # subarachnoid: sulci of a sector, or a stretch of the interhemispheric fissure
        if p["mode"] > 0.5:
            return sulci & self._sector(p["theta"], p["dtheta"] * max(f, 0.3)) & (depth < 25.0)
        v0 = p["fissure_v"] * self.b * s
        return fissure & (np.abs(self.V - v0) < 45.0 * f * s)

    # ---------------------------------------------------------------------------------------------------
    def geometry(self, k: int) -> Tuple[List[float], List[float]]:
        """(ImagePositionPatient, ImageOrientationPatient) of slice ``k``: tilt t about x, 5 mm steps."""
        t = math.radians(self.tilt_deg)
        orient = [1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)]
        normal = np.array([0.0, math.sin(t), math.cos(t)])          # row x col direction
        pos = self.origin + k * SLICE_STEP_MM * normal
        return [float(v) for v in pos], orient


def make_series(seed: int, size: int = 64, n_slices: int = 24, hemorrhage: bool = True,
                subtypes: Optional[Sequence[str]] = None, **kwargs) -> SeriesPhantom:
    """Debug API: a phantom series from an integer seed (see :class:`SeriesPhantom` for the arguments)."""
    return SeriesPhantom(np.random.default_rng(seed), size=size, n_slices=n_slices, hemorrhage=hemorrhage,
                         subtypes=subtypes, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# HU -> stored pixels (the inverse of the reader's transform)
# ---------------------------------------------------------------------------------------------------------
def encode_hu(hu: np.ndarray, encoding: str, corrupt_intercept: str = "1.0") -> Tuple[np.ndarray, Dict[str, object]]:
    """Stored pixel values and header fields for HU float [rows, cols].

    * ``u12``: BitsStored 12, PixelRepresentation 0, intercept -1024: raw = HU + 1024 in [0, 4095]
      (out-of-field and anything below -1024 HU -> raw 0).
    * ``s16``: BitsStored 16, PixelRepresentation 1, intercept -1024: raw = HU + 1024, out-of-field raw -2000
      (-3024 HU, like RSNA's padding).
    * ``u16``: BitsStored 16, PixelRepresentation 0, intercept -1024: raw = HU + 1024 >= 0.
    * ``corrupt``: RSNA's corrupt-intercept pattern: BitsStored 12, PixelRepresentation 0, intercept > -100.
      The SPEC §2.1 fix reads raw' = raw + 1000, raw' -= 4096 where raw' >= 4096, HU = raw' - 1000, so we
      write the inverse raw = HU mod 4096 for HU in [-1000, 3095] (HU below -1000, incl. out of field,
      becomes -1000 = air: these files have no distinct padding value).
    """
    v = np.rint(hu).astype(np.int32)
    if encoding == "u12":
        raw = np.clip(v + 1024, 0, 4095).astype(np.uint16)
        hdr = dict(BitsStored=12, PixelRepresentation=0, RescaleIntercept="-1024.0")
    elif encoding == "s16":
        raw = np.clip(v + 1024, -2000, 32767).astype(np.int16)
        hdr = dict(BitsStored=16, PixelRepresentation=1, RescaleIntercept="-1024.0")
    elif encoding == "u16":
        raw = np.clip(v + 1024, 0, 65535).astype(np.uint16)
        hdr = dict(BitsStored=16, PixelRepresentation=0, RescaleIntercept="-1024.0")
    elif encoding == "corrupt":
        raw = np.mod(np.clip(v, -1000, 3095), 4096).astype(np.uint16)
        hdr = dict(BitsStored=12, PixelRepresentation=0, RescaleIntercept=corrupt_intercept)
    else:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return raw, hdr


_WINDOW_STYLES = (
    (["40"], ["80"]),
    (["00036"], ["00080"]),
    (["00036", "00036"], ["00080", "00080"]),
    (["00040", "00040"], ["00080", "00080"]),
)


def write_slice(path: str, phantom: SeriesPhantom, hu: np.ndarray, k: int, uids: Dict[str, str]) -> None:
    """Write one slice as an RSNA-style DICOM file (only RSNA's header elements; no InstanceNumber)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    raw, enc = encode_hu(hu, phantom.encoding, phantom.corrupt_intercept)
    pos, orient = phantom.geometry(k)
    wc, ww = _WINDOW_STYLES[phantom.window_style]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Invalid value for VR UI")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = uids["sop"]
        meta.TransferSyntaxUID = phantom.transfer_syntax
        meta.ImplementationClassUID = IMPLEMENTATION_UID
        meta.ImplementationVersionName = "PPIHD_SYNTH_1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPInstanceUID = uids["sop"]
        ds.Modality = "CT"
        ds.PatientID = uids["patient"]
        ds.StudyInstanceUID = uids["study"]
        ds.SeriesInstanceUID = uids["series"]
        ds.StudyID = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orient]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(raw.shape[0]), int(raw.shape[1])
        ds.PixelSpacing = [f"{phantom.ps:.6f}", f"{phantom.ps:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = enc["BitsStored"]
        ds.HighBit = enc["BitsStored"] - 1
        ds.PixelRepresentation = enc["PixelRepresentation"]
        ds.WindowCenter = wc if len(wc) > 1 else wc[0]
        ds.WindowWidth = ww if len(ww) > 1 else ww[0]
        ds.RescaleIntercept = enc["RescaleIntercept"]
        ds.RescaleSlope = "1.0"
        ds.PixelData = raw.astype(raw.dtype.newbyteorder("<")).tobytes()
        if int(pydicom.__version__.split(".")[0]) >= 3:
            ds.save_as(path, enforce_file_format=True)              # encoding from TransferSyntaxUID
        else:  # pragma: no cover - pydicom 2.x
            ds.is_little_endian = True
            ds.is_implicit_VR = phantom.transfer_syntax == IMPLICIT_VR_LE
            ds.save_as(path, write_like_original=False)


# ---------------------------------------------------------------------------------------------------------
# the data set
# ---------------------------------------------------------------------------------------------------------
def _hex_ids(rng: np.random.Generator, n: int, digits: int, used: set) -> List[str]:
    out = []
    while len(out) < n:
        v = "ID_" + "".join(rng.choice(list("0123456789abcdef"), size=digits))
        if v not in used:
            used.add(v)
            out.append(v)
    return out


@dataclass
class SeriesTask:
    """Everything needed to render and write series ``index`` of a data set (see :func:`plan_dataset`)."""

    index: int
    split: str
    seed_seq: np.random.SeedSequence
    n_slices: int
    size: int
    hemorrhage: bool
    encoding: Optional[str]
    shape: Optional[Tuple[int, int]]
    transfer_syntax: Optional[str]
    uids: Dict[str, str]
    sops: List[str]
    out_dir: str


def task_phantom(task: SeriesTask) -> SeriesPhantom:
    """The phantom of a planned series (the same object the writer renders)."""
    return SeriesPhantom(np.random.default_rng(task.seed_seq), size=task.size, n_slices=task.n_slices,
                         hemorrhage=task.hemorrhage, encoding=task.encoding, shape=task.shape,
                         transfer_syntax=task.transfer_syntax)


def _run_series(task: SeriesTask) -> List[Dict[str, object]]:
    """Render and write one series; returns one manifest row per slice (true order, labels)."""
    ph = task_phantom(task)
    order = ph.rng.permutation(task.n_slices)                      # files written in shuffled order
    rows: List[Optional[Dict[str, object]]] = [None] * task.n_slices
    for k in order:
        k = int(k)
        sl = ph.render(k)
        sop = task.sops[k]
        uids = dict(task.uids, sop=sop)
        write_slice(os.path.join(task.out_dir, sop + ".dcm"), ph, sl.hu, k, uids)
        pos, _ = ph.geometry(k)
        y = sl.labels
        rows[k] = dict(split=task.split, sop=sop, patient=task.uids["patient"], study=task.uids["study"],
                       series=task.uids["series"], slice_index=k, n_slices=task.n_slices,
                       position_normal=round(k * SLICE_STEP_MM, 6), z=round(pos[2], 6), rows=ph.rows,
                       cols=ph.cols, tilt_deg=round(ph.tilt_deg, 4), encoding=ph.encoding,
                       transfer_syntax=ph.transfer_syntax, **{s: int(v) for s, v in zip(LABELS, y)})
    return rows  # type: ignore[return-value]


def _check_out_dir(out_dir: str, args: Dict[str, object], overwrite: bool) -> bool:
    """True if ``out_dir`` already holds a complete data set made with the same args (nothing to do)."""
    marker = os.path.join(out_dir, _MARKER)
    if os.path.isfile(marker):
        with open(marker, "r", encoding="utf-8") as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError:
                old = {}
        if old.get("status") == "complete" and old.get("args") == args and not overwrite:
            return True
        if old.get("status") == "complete" and old.get("args") != args and not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a synthetic data set made with different arguments "
                f"({old.get('args')}); pass --overwrite to replace it or choose another --out")
        # ours (complete with --overwrite, or an interrupted run): remove what we wrote and caches built from it
        olds = [os.path.join(out_dir, d) for d in ("stage_2_train", "stage_2_test")]
        for d in olds + sorted(glob.glob(os.path.join(out_dir, "cache_*"))):
            shutil.rmtree(d, ignore_errors=True)
        return False
    for d in ("stage_2_train", "stage_2_test"):
        p = os.path.join(out_dir, d)
        if os.path.isdir(p) and os.listdir(p):
            raise FileExistsError(f"{p} is not empty and was not written by make_demo_data "
                                  f"(no {_MARKER}); refusing to mix data sets — choose another --out")
    return False


def plan_dataset(out_dir: str, n_train: int, n_test: int = 0, seed: int = 0, size: int = 512,
                 slices_min: int = 20, slices_max: int = 40, patients: Optional[int] = None,
                 hemorrhage_fraction: float = 0.4) -> Tuple[List[SeriesTask], np.random.Generator]:
    """Draw the data set's plan (ids, sizes, which series bleed, forced quirks) without rendering anything.

    Returns the series tasks (train first, then test) and the meta generator (used afterwards for the CSV
    order). :func:`task_phantom` rebuilds any series' phantom from its task (tests use it).
    """
    root = np.random.SeedSequence(int(seed))
    kids = root.spawn(n_train + n_test + 1)
    meta = np.random.default_rng(kids[-1])                         # ids, series sizes, quirk assignment
    n = n_train + n_test
    used: set = set()
    n_sl = meta.integers(slices_min, slices_max + 1, size=n)
    # exactly round(fraction * n) series with bleeds in each split
    hem = np.zeros(n, dtype=bool)
    for lo, cnt in ((0, n_train), (n_train, n_test)):
        k = int(round(hemorrhage_fraction * cnt))
        hem[lo + meta.permutation(cnt)[:k]] = True
    # guarantee the quirks exist in the training set (tests rely on them) when there are enough series
    encodings: List[Optional[str]] = [None] * n
    shapes: List[Optional[Tuple[int, int]]] = [None] * n
    syntaxes: List[Optional[str]] = [None] * n
    if n_train >= 4:
        idx = meta.permutation(n_train)
        encodings[idx[0]], encodings[idx[1]], encodings[idx[2]] = "u12", "s16", "corrupt"
        syntaxes[idx[0]], syntaxes[idx[1]] = IMPLICIT_VR_LE, EXPLICIT_VR_LE
        if n_train >= 8:
            encodings[idx[3]] = "corrupt"
            shapes[idx[4]] = (max(32, int(round(size * 1.25))), size)
            shapes[idx[5]] = (size, max(32, int(round(size * 1.25))))
    series_ids = _hex_ids(meta, n, 10, used)
    study_ids = _hex_ids(meta, n, 10, used)
    n_pat_train = n_train if patients is None else patients
    pat_ids = _hex_ids(meta, n_pat_train + n_test, 9, used)
    if patients is None:
        pat_of = list(range(n_train))
    else:
        pat_of = list(range(patients)) + [int(v) for v in meta.integers(0, patients, size=n_train - patients)]
        pat_of = [pat_of[i] for i in meta.permutation(n_train)]
    pat_of += [n_pat_train + i for i in range(n_test)]
    sops = [_hex_ids(meta, int(n_sl[i]), 9, used) for i in range(n)]

    tasks = []
    for i in range(n):
        split = "train" if i < n_train else "test"
        d = os.path.join(out_dir, "stage_2_train" if split == "train" else "stage_2_test")
        uids = dict(patient=pat_ids[pat_of[i]], study=study_ids[i], series=series_ids[i])
        tasks.append(SeriesTask(i, split, kids[i], int(n_sl[i]), int(size), bool(hem[i]), encodings[i],
                                shapes[i], syntaxes[i], uids, sops[i], d))
    return tasks, meta


def generate_dataset(out_dir: str, n_train: int, n_test: int = 0, seed: int = 0, size: int = 512,
                     slices_min: int = 20, slices_max: int = 40, patients: Optional[int] = None,
                     hemorrhage_fraction: float = 0.4, workers: int = 1, progress: bool = True,
                     overwrite: bool = False) -> Dict[str, object]:
    """Write a synthetic data set in the RSNA layout under ``out_dir``; returns a summary dict.

    ``patients``: number of distinct PatientIDs shared by the training series (None = one per series);
    test series always get their own patients. Same arguments -> same bytes (also with ``workers`` > 1).
    Re-running with the same arguments on a complete data set does nothing.
    """
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"need at least one series (got --series {n_train} --test-series {n_test})")
    if not 1 <= slices_min <= slices_max:
        raise ValueError(f"need 1 <= --slices-min <= --slices-max (got {slices_min}, {slices_max})")
    if patients is not None and not 1 <= patients <= max(1, n_train):
        raise ValueError(f"--patients must be in [1, --series={n_train}] (got {patients})")
    if not 0.0 <= hemorrhage_fraction <= 1.0:
        raise ValueError(f"hemorrhage_fraction must be in [0, 1], got {hemorrhage_fraction}")
    args = dict(n_train=n_train, n_test=n_test, seed=seed, size=size, slices_min=slices_min,
                slices_max=slices_max, patients=patients, hemorrhage_fraction=hemorrhage_fraction,
                version=MANIFEST_VERSION)
    os.makedirs(out_dir, exist_ok=True)
    if _check_out_dir(out_dir, args, overwrite):
        with open(os.path.join(out_dir, _MARKER), "r", encoding="utf-8") as f:
            summary = json.load(f)
        summary["skipped"] = True
        return summary
    with open(os.path.join(out_dir, _MARKER), "w", encoding="utf-8") as f:
        json.dump(dict(status="in progress", args=args), f, indent=1)

    tasks, meta = plan_dataset(out_dir, n_train, n_test, seed, size, slices_min, slices_max, patients,
                               hemorrhage_fraction)
    for t in tasks:
        os.makedirs(t.out_dir, exist_ok=True)
    n = len(tasks)
    from tqdm import tqdm

    results: List[List[Dict[str, object]]] = []
    bar = tqdm(total=n, desc="synthetic series", unit="series", disable=not progress)
    if workers and workers > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
        with ctx.Pool(int(workers)) as pool:
            for rows in pool.imap(_run_series, tasks):
                results.append(rows)
                bar.update(1)
    else:
        for t in tasks:
            results.append(_run_series(t))
            bar.update(1)
    bar.close()

    all_rows = [r for rows in results for r in rows]
    train_rows = [r for r in all_rows if r["split"] == "train"]
    test_rows = [r for r in all_rows if r["split"] == "test"]
    # stage_2_train.csv: images in random order, six rows each in SPEC order, a few duplicated images (RSNA)
    order = meta.permutation(len(train_rows))
    lines = [[f"{train_rows[i]['sop']}_{lab}", int(train_rows[i][lab])] for i in order for lab in LABELS]
    dups = 0
    if len(train_rows) >= 10:
        n_dup = 2
        for j in meta.choice(len(train_rows), size=n_dup, replace=False):
            img = [[f"{train_rows[j]['sop']}_{lab}", int(train_rows[j][lab])] for lab in LABELS]
            at = int(meta.integers(0, len(lines) // 6 + 1)) * 6
            lines[at:at] = img
            dups += 6
    _write_csv(os.path.join(out_dir, "stage_2_train.csv"), ["ID", "Label"], lines)
    order = meta.permutation(len(test_rows))
    _write_csv(os.path.join(out_dir, "stage_2_sample_submission.csv"), ["ID", "Label"],
               [[f"{test_rows[i]['sop']}_{lab}", "0.5"] for i in order for lab in LABELS])
    _write_csv(os.path.join(out_dir, "synthetic_test_labels.csv"), ["ID", "Label"],
               [[f"{test_rows[i]['sop']}_{lab}", int(test_rows[i][lab])] for i in order for lab in LABELS])
    cols = list(all_rows[0].keys())
    _write_csv(os.path.join(out_dir, "synthetic_manifest.csv"), cols, [[r[c] for c in cols] for r in all_rows])

    def _pos(rows: List[Dict[str, object]]) -> Dict[str, int]:
        return {lab: int(sum(int(r[lab]) for r in rows)) for lab in LABELS}

    summary = dict(status="complete", args=args, train_series=n_train, test_series=n_test,
                   train_slices=len(train_rows), test_slices=len(test_rows),
                   train_positive_slices=_pos(train_rows), test_positive_slices=_pos(test_rows),
                   duplicate_label_rows=dups,
                   encodings={e: int(sum(1 for rows in results if rows[0]["encoding"] == e)) for e in ENCODINGS})
    tmp = os.path.join(out_dir, _MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, _MARKER))
    summary["skipped"] = False
    return summary


def _write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------------------------
def save_montage(path: str, seed: int = 0, size: int = 512, per_subtype: int = 3) -> str:
    """Brain-window (40/80) montage (PNG): one row per subtype with ``per_subtype`` positive slices as
    written (noise included) plus the first one again with the ground-truth blood outlined in red; a last
    row of normal slices at several heights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = per_subtype + 1
    nrow = len(SUBTYPES) + 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 2.3 * nrow))

    def show(ax, sl: SliceRender, title: str, outline: Optional[str] = None) -> None:
        ax.imshow(np.clip(sl.hu / 80.0, 0, 1), cmap="gray", vmin=0, vmax=1)   # brain window 40/80
        if outline is not None:
            cnt, _ = cv2.findContours(sl.lesions[outline].astype(np.uint8), cv2.RETR_EXTERNAL,
                                      cv2.CHAIN_APPROX_NONE)
            for c in cnt:
                c = np.vstack([c[:, 0, :], c[:1, 0, :]])
                ax.plot(c[:, 0], c[:, 1], color="red", lw=0.6)
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    for i, st in enumerate(SUBTYPES):
        picked: List[Tuple[SeriesPhantom, int]] = []
        s = 0
        while len(picked) < per_subtype and s < 200:
            ph = make_series(seed * 1000 + 97 * i + s, size=size, n_slices=30, subtypes=[st])
            ks = [k for k in range(ph.n_slices) if st in ph.render(k, noise=False).lesions]
            if ks:
                picked.append((ph, ks[len(ks) // 2]))
            s += 1
        for j, (ph, k) in enumerate(picked):
            show(axes[i, j], ph.render(k), f"{st} (slice {k}/{ph.n_slices})")
        if picked:
            ph, k = picked[0]
            show(axes[i, ncol - 1], ph.render(k), f"{st}: truth in red", outline=st)
    ph0 = make_series(seed * 1000 + 999, size=size, n_slices=30, hemorrhage=False)
    for j, k in enumerate(np.linspace(2, ph0.n_slices - 3, ncol).astype(int)):
        show(axes[nrow - 1, j], ph0.render(int(k)), f"normal (slice {int(k)}/{ph0.n_slices})")
    fig.suptitle("ppihd synthetic head-CT phantoms, brain window 40/80", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
