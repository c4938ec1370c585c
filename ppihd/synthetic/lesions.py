"""Hemorrhages of the synthetic phantom: where each subtype lives and the mask it covers on a slice.

* epidural — biconvex lens against the inner table of the skull,
* subdural — long thin crescent along the inner table,
* intraparenchymal — irregular blob in the brain (optionally with a hypodense oedema rim),
* intraventricular — blood layering in (part of) a ventricle,
* subarachnoid — blood filling sulci of a sector, or the interhemispheric fissure.

Every lesion spans several consecutive slices with a size that varies across them (:func:`profile`). The functions
take the :class:`~ppihd.synthetic.phantom.SeriesPhantom` they belong to (its head-frame grids ``U``, ``V``,
``theta``, inner-skull half axes ``a``, ``b``) as ``ph``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from .. import LABELS

#: The five hemorrhage subtypes (``ppihd.LABELS`` order, without ``any``).
SUBTYPES = LABELS[:5]

SLICE_STEP_MM = 5.0        # ImagePositionPatient steps 5 mm along the (tilted) slice normal
BLOOD_HU = (50.0, 90.0)    # acute blood drawn in this range (before noise / partial volume)
MIN_LESION_MM2 = 10.0      # smaller blood remnants on a slice are neither drawn nor labelled


def wrap(a: np.ndarray) -> np.ndarray:
    """Angle difference wrapped to [-pi, pi)."""
    return (a + np.pi) % (2.0 * np.pi) - np.pi


def profile(k: float, kc: float, half: float) -> float:
    """Ellipsoidal size factor along the slice axis: sqrt(1 - ((k - kc) / half)^2), 0 outside."""
    if half <= 0:
        return 0.0
    x = (k - kc) / half
    return math.sqrt(1.0 - x * x) if abs(x) < 1.0 else 0.0


@dataclass
class Lesion:
    """One hemorrhage: subtype, slice centre ``kc`` and half-length ``half`` (slices), geometry parameters."""

    subtype: str
    kc: float
    half: float
    hu: float
    params: Dict[str, float] = field(default_factory=dict)


def draw_lesions(ph: Any, r: np.random.Generator, subtypes: Optional[List[str]]) -> List[Lesion]:
    """The lesions of phantom ``ph``, drawn from ``r`` (``subtypes`` None: which subtypes is drawn too)."""
    lesions: List[Lesion] = []
    if subtypes is None:
        probs = {"epidural": 0.22, "intraparenchymal": 0.45, "intraventricular": 0.3,
                 "subarachnoid": 0.45, "subdural": 0.45}
        subtypes = [s for s in SUBTYPES if r.random() < probs[s]]
        if not subtypes:
            subtypes = [str(r.choice(SUBTYPES, p=[0.1, 0.25, 0.15, 0.25, 0.25]))]
    lo, hi = ph.slices_with_brain()
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
            ks = [k for k in range(ph.n_slices) if 0.42 <= ph.height(k) <= 0.66]
            kc = float(r.choice(ks)) if ks else float(r.uniform(lo, hi))
        else:
            kc = float(r.uniform(lo, hi))
        lesions.append(Lesion(st, kc, half, hu, p))
    return lesions


def iph_mask(ph: Any, les: Lesion, k: int, s: float, grow: float = 0.0) -> np.ndarray:
    """bool (crop) mask of an intraparenchymal lesion on slice ``k`` (``s``: the slice's head scale), grown by
    ``grow`` mm (the oedema rim)."""
    p = les.params
    f = profile(k, les.kc, les.half)
    rad = p["radius"] * f + grow
    ang = p["theta"]
    # centre inside the brain, at a fraction rho of the inner-skull radius
    ru = p["rho"] * s * ph.a * math.cos(ang)
    rv = p["rho"] * s * ph.b * math.sin(ang)
    du, dv = ph.U - ru, ph.V - rv
    rr2 = du * du + dv * dv
    m = np.zeros(rr2.shape, dtype=bool)
    idx = np.nonzero(rr2 < (rad * 1.5) ** 2)                     # the boundary modulation stays below 1.45
    if idx[0].size:
        a = np.arctan2(dv[idx], du[idx])
        mod = 1.0 + sum(p[f"c{j}"] * np.cos(j * a + p[f"p{j}"]) for j in (2, 3, 4))
        keep = rr2[idx] < (rad * mod) ** 2
        m[idx[0][keep], idx[1][keep]] = True
    return m


def lesion_mask(ph: Any, les: Lesion, k: int, s: float, depth: np.ndarray, sulci: np.ndarray,
                fissure: np.ndarray, vent: np.ndarray) -> Optional[np.ndarray]:
    """bool (crop) mask of lesion ``les`` on slice ``k`` before it is limited to where blood can be (None: the
    lesion does not reach the slice); ``depth`` (mm below the inner table), ``sulci``, ``fissure``, ``vent`` are
    the slice's anatomy."""
    f = profile(k, les.kc, les.half)
    if f <= 0:
        return None
    p = les.params
    st = les.subtype
    if st in ("epidural", "subdural"):
        thick = p["thick"] * (f if st == "epidural" else math.sqrt(f))
        cand = (depth > 0) & (depth < thick) & ph.sector(p["theta"], p["dtheta"])
        idx = np.nonzero(cand)
        x = wrap(ph.theta[idx] - p["theta"]) / p["dtheta"]
        x2 = np.clip(1.0 - x * x, 0.0, 1.0)
        d = thick * x2 if st == "epidural" else thick * x2 ** 0.3   # lens / flat crescent
        keep = depth[idx] < d
        m = np.zeros(depth.shape, dtype=bool)
        m[idx[0][keep], idx[1][keep]] = True
        return m
    if st == "intraparenchymal":
        return iph_mask(ph, les, k, s) & (depth > 4.0)
    if st == "intraventricular":
        which = int(p["which"])
        side = (ph.U < 0) if which == 0 else (ph.U >= 0) if which == 1 else True
        # blood layers posteriorly (patient supine): V beyond a level that moves with the lesion extent
        level = p["level"] * 40.0 + (1.0 - f) * 30.0
        return vent & side & (ph.V > level)
    # subarachnoid: sulci of a sector, or a stretch of the interhemispheric fissure
    if p["mode"] > 0.5:
        return sulci & ph.sector(p["theta"], p["dtheta"] * max(f, 0.3)) & (depth < 25.0)
    v0 = p["fissure_v"] * ph.b * s
    return fissure & (np.abs(ph.V - v0) < 45.0 * f * s)
