"""The synthetic head-CT phantom: one series drawn from a seeded ``numpy.random.Generator``, rendered in HU.

Each slice holds air and an out-of-field circle around the head, scalp, a skull ring of varying thickness, brain
with grey/white texture, sulci, fissure, falx, ventricles whose shape changes with the slice height, skull-base bone
and sinus air in the lowest slices, normal calcifications (pineal, choroid plexus), a thin headrest and the series'
hemorrhages (:mod:`ppihd.synthetic.lesions`). A slice's label for a subtype is 1 exactly when that subtype's blood
mask on the slice has at least ``min_lesion_pixels`` pixels; smaller remnants are not drawn at all, so labels and
pixels always agree (``any`` = OR of the five). :func:`make_series` + :meth:`SeriesPhantom.render` are the debug
API: they return the HU image together with the ground-truth lesion and anatomy masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .anatomy import smooth_field, ventricles
from .dicom_writer import ENCODINGS, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from .lesions import (BLOOD_HU, MIN_LESION_MM2, SLICE_STEP_MM, SUBTYPES, Lesion, draw_lesions, iph_mask,
                      lesion_mask, profile)


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
            self.lesions = draw_lesions(self, r, list(subtypes) if subtypes else None)
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
        self.fA = smooth_field(r, h, w, ps, 9.0)                  # cortex / grey-white texture
        self.fB = smooth_field(r, h, w, ps, 9.0)
        self.sA = smooth_field(r, h, w, ps, 6.0)                  # sulci (level sets)
        self.sB = smooth_field(r, h, w, ps, 6.0)
        self.bone_tex = 80.0 * smooth_field(r, h, w, ps, 4.0)

    def _full(self, m: np.ndarray) -> np.ndarray:
        """A crop-sized mask placed in a full-size bool [rows, cols] array."""
        out = np.zeros((self.rows, self.cols), dtype=bool)
        out[self.crop] = m
        return out

    def sector(self, theta0: float, half_width: float) -> np.ndarray:
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

    def slices_with_brain(self, lo: float = 0.2, hi: float = 0.85) -> Tuple[int, int]:
        ks = [k for k in range(self.n_slices) if lo <= self.height(k) <= hi]
        if not ks:
            return 0, self.n_slices - 1
        return ks[0], ks[-1]

    # ---------------------------------------------------------------------------------------------------
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
            f = profile(h, 0.4, 0.12)
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
        vent = ventricles(self, h, depth)
        hu[vent] = self.csf
        # skull base (lowest slices): petrous bone and sinus air with a bony rim
        skull_base = np.zeros(U.shape, dtype=bool)
        if h < 0.24:
            f = profile(h, 0.08, 0.16)
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
            headrest = (np.abs(r - rr) < 1.3) & self.sector(np.pi / 2, 0.9) & (dout > scalp_out)
            hu[headrest] = 250.0
        else:
            headrest = np.zeros(U.shape, dtype=bool)
        # lesions: drawn only where blood can be, and only if large enough to be labelled
        allowed = intracranial & ~skull_base & ~calc
        brain = allowed & ~csf_mask & ~vent
        drawn: Dict[str, np.ndarray] = {}
        blood = np.zeros(U.shape, dtype=bool)
        for les in self.lesions:
            m = lesion_mask(self, les, k, s, depth, sulci | rim, fissure, vent)
            if m is None:
                continue
            m &= allowed
            if int(np.count_nonzero(m)) < self.min_lesion_pixels:
                continue                                            # too small: neither drawn nor labelled
            hu[m] = np.clip(les.hu + 3.0 * fk[m], BLOOD_HU[0], BLOOD_HU[1])
            if les.subtype == "intraparenchymal" and les.params.get("edema", 0.0) > 0:
                ring = iph_mask(self, les, k, s, grow=les.params["edema"]) & brain & ~m & ~blood
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
