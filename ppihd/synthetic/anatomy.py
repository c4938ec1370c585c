"""Normal structures of the synthetic phantom that are more than a ring or a disc: smooth random textures and
the ventricles (frontal horns, bodies, atria, third and fourth ventricle), whose shape changes with slice height."""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .lesions import profile


def smooth_field(rng: np.random.Generator, rows: int, cols: int, ps: float, scale_mm: float) -> np.ndarray:
    """Smooth random field with unit std and features of about ``scale_mm``: float32 [rows, cols]."""
    lr = max(4, int(round(rows * ps / scale_mm))), max(4, int(round(cols * ps / scale_mm)))
    low = rng.standard_normal(lr).astype(np.float32)
    low = cv2.GaussianBlur(low, (0, 0), 0.8, borderType=cv2.BORDER_REFLECT)
    f = cv2.resize(low, (cols, rows), interpolation=cv2.INTER_CUBIC)
    f -= f.mean()
    f /= f.std() + 1e-6
    return f


def ventricles(ph: Any, h: float, depth: np.ndarray) -> np.ndarray:
    """bool (crop) ventricle (CSF) mask of phantom ``ph`` at height ``h``, kept >= 8 mm inside the inner table."""
    U, V, b = ph.U, ph.V, ph.b
    big = 1.0 + 0.9 * ph.atrophy
    mask = np.zeros(U.shape, dtype=bool)
    comps = []
    for side, sgn in ((0, -1.0), (1, 1.0)):
        f = ph.vent_side[side] * big
        comps.append((sgn * 9.0, -0.3 * b, 3.0 * f, 12.0 + 3 * f, sgn * 0.35, 0.52, 0.13))  # frontal horn
        comps.append((sgn * 12.0, 0.05 * b, 3.5 * f, 16.0 + 2 * f, sgn * -0.15, 0.6, 0.12))  # body
        comps.append((sgn * 15.0, 0.35 * b, 4.0 * f, 10.0 + 2 * f, sgn * -0.45, 0.47, 0.1))  # atrium/occipital
    comps.append((0.0, -0.08 * b, 1.2 + 1.5 * ph.atrophy, 9.0, 0.0, 0.4, 0.08))             # third
    comps.append((0.0, 0.42 * b, 5.0 + 2 * ph.atrophy, 3.5, 0.0, 0.2, 0.07))                # fourth
    for cu, cv, au, av, ang, hc, hw in comps:
        f = profile(h, hc, hw)
        if f <= 0.15:
            continue
        ca, sa = math.cos(ang), math.sin(ang)
        du, dv = U - cu, V - cv
        uu = (ca * du + sa * dv) / (au * f)
        vv = (-sa * du + ca * dv) / (av * f)
        mask |= (uu * uu + vv * vv) < 1.0
    return mask & (depth > 8.0)
