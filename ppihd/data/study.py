"""Studies: what each series of a study is, which ones the model reads, and which one answers for the study.

A hospital study holds more than the axial brain series the model was trained on: a scout, thin and thick
axial reconstructions, a bone kernel, coronal/sagittal reformats, a dose screen, a dose-report SR. From the
headers alone (:class:`~ppihd.data.dicom.SliceHeader`), every series gets one **role** with the **rule** that
decided it (the first rule that matches, in this order; docs/inference.md, "Studies"):

============== =====================================================================================
role           rule
============== =====================================================================================
non_image      a DICOM object without pixels (SR, dose report, presentation state, DICOMDIR, ...)
other          an image that is not a greyscale CT (MR, colour, multi-frame without functional groups)
derived        Secondary Capture SOP class, or an ImageType naming a projection / rendering / screen
localizer      ImageType LOCALIZER / SCOUT / TOPOGRAM / SURVIEW
non_axial      slice normal more than ``Infer.axial_max_angle_deg`` from the patient's z axis (coronal,
               sagittal, oblique), for some or all of the series' slices
too_few_slices fewer than ``Infer.min_slices`` slices
axial          everything else: an axial CT series the model can read (gantry tilt included)
============== =====================================================================================

Of the ``axial`` series of a study one is **primary** (:func:`primary_key`): a soft-tissue kernel before a
bone kernel, no contrast before contrast, then the slice spacing closest to the training spacing
(``Infer.train_spacing_mm``), then the most slices. Thin series are averaged into **slabs** of ``Infer.slab_mm`` before the model (:func:`slab_groups`).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .series import Series, make_series_id, slice_normal

#: Series roles, in the order of the rules that decide them (the last, ``axial``, is the usable one).
ROLES = ("non_image", "other", "derived", "localizer", "non_axial", "too_few_slices", "axial")
USABLE_ROLE = "axial"

#: SOP classes of Secondary Capture images (screen captures: dose sheets, key images, photos of screens).
SECONDARY_CAPTURE_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                             "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
#: ImageType values of scout images (GE LOCALIZER, Siemens TOPOGRAM, Philips SURVIEW, SCOUT elsewhere).
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW"}
#: ImageType values of images that are not reconstructed slices (projections, renderings, screens).
DERIVED_TYPES = {"MIP", "MINIP", "MIN IP", "MAX IP", "MPR THICK MIP", "VOLUME", "VOLUME RENDERING", "VRT", "VR",
                 "SSD", "3D", "CURVED", "CPR", "PROJECTION IMAGE", "SCREEN SAVE", "SCREENSHOT", "DOSE INFO",
                 "DOSE REPORT", "CAPTURE"}
#: Modalities of DICOM objects that carry no image (structured reports, presentation states, ...).
NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "REG", "SEG", "RTSTRUCT", "RTPLAN", "DOC", "RAW", "FID"}
#: Words in ConvolutionKernel / SeriesDescription of a sharp (bone or lung) reconstruction.
SHARP_WORDS = ("BONE", "LUNG", "SHARP", "EDGE")
#: Siemens-style kernel names (H, J, B, Q with an optional r, then two digits): 60 and above are sharp.
_SIEMENS_KERNEL = re.compile(r"^(?:[HJBQ]R?)(\d{2})")


@dataclass
class SeriesPlan:
    """What a study does with one series. ``series`` is None for a group of non-image objects."""

    key: Tuple[str, str, str]
    series_id: str
    role: str
    reason: str
    series: Optional[Series] = None
    objects: List[Tuple[str, str]] = field(default_factory=list)   # (path, reason) of rejected objects
    modality: str = ""
    sop_class: str = ""
    series_number: Optional[int] = None
    description: str = ""
    kernel: str = ""
    image_type: Tuple[str, ...] = ()
    spacing_mm: float = float("nan")
    thickness_mm: float = float("nan")
    axis_angle_deg: float = float("nan")     # slice normal vs the patient's z axis (gantry tilt for axial)
    sharp_kernel: bool = False
    contrast: bool = False                   # ContrastBolusAgent recorded (a post-contrast series)
    primary: bool = False
    predict: bool = False
    slabs: Optional[List[List[int]]] = None  # slice indices averaged into each model input (None = one each)

    @property
    def usable(self) -> bool:
        return self.role == USABLE_ROLE

    @property
    def num_files(self) -> int:
        files = len({h.path for h in self.series.slices}) if self.series is not None else 0  # frames share a file
        return files + len(self.objects)


@dataclass
class StudyPlan:
    key: Tuple[str, str]                     # (PatientID, StudyInstanceUID)
    study_id: str                            # filesystem-safe
    series: List[SeriesPlan]
    ranked: List[SeriesPlan] = field(default_factory=list)   # the usable series, best first (primary_key)
    primary_reason: str = ""
    folder: str = ""                         # the study's folder name (see :func:`study_folder`)

    @property
    def primary(self) -> Optional[SeriesPlan]:
        return self.ranked[0] if self.ranked else None


# ----------------------------------------------------------------------------------------- measures
def series_spacing(series: Series) -> float:
    """Median distance (mm) between neighbouring slice positions along the ordering axis, ignoring
    duplicate positions; NaN when positions are unknown or there is one slice."""
    pos = np.asarray(series.positions, dtype=np.float64)
    if len(pos) < 2 or not np.isfinite(pos).all():
        return float("nan")
    d = np.abs(np.diff(pos))
    d = d[d > 1e-3]
    return float(np.median(d)) if len(d) else float("nan")


def axis_angle_deg(orientation: Sequence[float]) -> float:
    """Angle (degrees, 0-90) between the slice normal of an ImageOrientationPatient and the patient's z axis:
    0 for a plain axial slice, the gantry tilt for a tilted one, 90 for coronal and sagittal."""
    n = slice_normal(orientation)
    return float(math.degrees(math.acos(min(1.0, abs(float(n[2]))))))


def plane_name(orientation: Sequence[float]) -> str:
    """``axial`` / ``coronal`` / ``sagittal`` by the largest component of the slice normal, or ``oblique``
    when none exceeds cos 30°."""
    n = np.abs(slice_normal(orientation))
    i = int(np.argmax(n))
    if n[i] < math.cos(math.radians(30)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[i]


def is_sharp_kernel(kernel: str, description: str = "") -> bool:
    """A bone / lung reconstruction, from ConvolutionKernel or SeriesDescription: a word of
    :data:`SHARP_WORDS`, or a Siemens-style kernel name numbered 60 or above (H60s, Hr64, J70h, Br64)."""
    k, d = str(kernel).strip().upper(), str(description).strip().upper()
    if any(w in k or w in d for w in SHARP_WORDS):
        return True
    m = _SIEMENS_KERNEL.match(k)
    return bool(m) and int(m.group(1)) >= 60


# ------------------------------------------------------------------------------------------ the rules
def classify_series(series: Series, min_slices: int = 3, axial_max_angle_deg: float = 40.0) -> Tuple[str, str]:
    """``(role, reason)`` of an image series of CT slices (the rules of this module's docstring, in order)."""
    first = series.slices[0]
    sop_classes = {h.sop_class for h in series.slices if h.sop_class}
    sc = sorted(sop_classes & SECONDARY_CAPTURE_CLASSES)
    if sc:
        return "derived", f"Secondary Capture SOP class ({sc[0]}): a screen capture, not reconstructed slices"
    types = set().union(*(set(h.image_type) for h in series.slices))
    shown = "\\".join(first.image_type)
    loc = sorted(types & LOCALIZER_TYPES)
    if loc:
        return "localizer", f"ImageType {loc[0]} ({shown})"
    der = sorted(types & DERIVED_TYPES)
    if der:
        return "derived", f"ImageType {der[0]} ({shown}): a projection or rendering"
    oris = [h.orientation for h in series.slices if h.orientation is not None]
    if oris:
        try:
            angles = [axis_angle_deg(o) for o in oris]
        except ValueError as e:
            return "other", str(e)
        steep = [a > axial_max_angle_deg for a in angles]
        if any(steep) and not all(steep):
            return "non_axial", (f"axial and non-axial slices in one series (normals {min(angles):.1f}° to "
                                 f"{max(angles):.1f}° from z)")
        if all(steep):
            return "non_axial", (f"{plane_name(oris[0])} slices: normal {angles[0]:.1f}° from the patient's z axis "
                                 f"(> Infer.axial_max_angle_deg {axial_max_angle_deg:g})")
    n = len(series)
    if n < min_slices:
        return "too_few_slices", f"{n} slice{'s' if n != 1 else ''} (< Infer.min_slices {min_slices})"
    if not oris:
        return "axial", f"{n} slices; ImageOrientationPatient missing: taken as axial"
    if max(angles) - min(angles) > 0.5:  # e.g. two gantry tilts in one acquisition: still axial
        return "axial", f"{n} axial slices, normals {min(angles):.1f}° to {max(angles):.1f}° from z"
    return "axial", f"{n} axial slices, normal {angles[0]:.1f}° from z"


def classify_objects(objects: Sequence[Tuple[str, str, Mapping[str, str]]]) -> Tuple[str, str]:
    """``(role, reason)`` of a group of rejected DICOM objects of one series (``(path, reason, identity)``)."""
    from .dicom import _syntax_name

    ident = objects[0][2]
    modality = str(ident.get("modality", "")).upper()
    sop = str(ident.get("sop_class", ""))
    what = f"Modality {modality or '?'}, {_syntax_name(sop) if sop else 'no SOPClassUID'}"
    reason = objects[0][1]
    if modality in NON_IMAGE_MODALITIES or sop.startswith("1.2.840.10008.5.1.4.1.1.88.") \
            or reason.startswith(("missing Rows/Columns", "missing pixel data")):
        return "non_image", f"not an image ({what})"
    return "other", f"{reason}; {what}"


# ------------------------------------------------------------------------------------------ choosing
def has_contrast(agent: str) -> bool:
    """A ContrastBolusAgent value that names an agent (not empty, NONE, NO or N/A)."""
    return str(agent).strip().upper() not in ("", "NONE", "NO", "N/A", "NA", "0")


def primary_key(plan: SeriesPlan, train_spacing_mm: float) -> Tuple:
    """Sort key of the primary-series choice (smallest wins): soft-tissue kernel first, then a series without
    contrast (the model learnt non-contrast CT, where fresh blood is bright), then |spacing − training
    spacing| (unknown spacing last; SliceThickness stands in when positions are unknown), then the most
    slices, then SeriesNumber and series_id (a stable tie-break)."""
    spacing = plan.spacing_mm if np.isfinite(plan.spacing_mm) else plan.thickness_mm
    gap = abs(spacing - float(train_spacing_mm)) if np.isfinite(spacing) else float("inf")
    number = plan.series_number if plan.series_number is not None else 1 << 30
    return (plan.sharp_kernel, plan.contrast, round(gap, 3), -len(plan.series or ()), number, plan.series_id)


def slab_groups(num_slices: int, spacing_mm: float, slab_mm: Optional[float]) -> Optional[List[List[int]]]:
    """Contiguous groups of ``n = round(slab_mm / spacing_mm)`` slices (the last group takes what is left),
    or None when no averaging applies (``slab_mm`` off, spacing unknown, or n < 2, i.e. spacing above
    ``slab_mm / 1.5``). ``[0..7], [8..15], ...`` for a 0.625 mm series and slab_mm 5."""
    if not slab_mm or not np.isfinite(spacing_mm) or spacing_mm <= 0:
        return None
    n = int(math.floor(float(slab_mm) / float(spacing_mm) + 0.5))
    if n < 2:
        return None
    return [list(range(b, min(b + n, num_slices))) for b in range(0, num_slices, n)]


def study_folder(paths: Sequence[str], inputs: Sequence[str]) -> str:
    """The folder name that names a study: the common folder of its files; when that lies below an input
    folder, the first folder below the input (``data/cq500/CQ500-CT-1/...`` → ``CQ500-CT-1``); when it is
    an input itself (one study given as its folder) or a file was given, that folder's own name."""
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    for inp in inputs:
        root = os.path.abspath(inp)
        if common != root and common.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(common, root).split(os.sep)[0]
    return os.path.basename(common)


def _plan_image_series(series: Series, infer_cfg: Mapping[str, Any]) -> SeriesPlan:
    first = series.slices[0]
    role, reason = classify_series(series, int(infer_cfg["min_slices"]),
                                   float(infer_cfg["axial_max_angle_deg"]))
    thick = [h.slice_thickness for h in series.slices if h.slice_thickness is not None]
    plan = SeriesPlan(key=series.key, series_id=series.series_id, role=role, reason=reason, series=series,
                      modality=first.modality or "", sop_class=first.sop_class, series_number=first.series_number,
                      description=first.series_description, kernel=first.kernel, image_type=first.image_type,
                      spacing_mm=series_spacing(series),
                      thickness_mm=float(np.median(thick)) if thick else float("nan"),
                      sharp_kernel=is_sharp_kernel(first.kernel, first.series_description),
                      contrast=has_contrast(first.contrast_agent))
    if first.orientation is not None:
        try:
            plan.axis_angle_deg = axis_angle_deg(first.orientation)
        except ValueError:
            pass
    return plan


def plan_studies(series_list: Sequence[Series], rejected: Sequence[Tuple[str, str, Mapping[str, str]]],
                 infer_cfg: Mapping[str, Any], inputs: Sequence[str] = ()) -> List[StudyPlan]:
    """Group series (and rejected DICOM objects) into studies, give every series its role, choose each
    study's primary series, and mark what the model reads: every usable series (``Infer.predict_series:
    usable``) or only the primary ones (``primary``); thin usable series get their slabs (``Infer.slab_mm``).
    Studies and their series come out sorted by key."""
    mode = str(infer_cfg["predict_series"])
    if mode not in ("usable", "primary"):
        raise ValueError(f"Infer.predict_series must be 'usable' or 'primary', got {mode!r}")
    plans: Dict[Tuple[str, str, str], SeriesPlan] = {}
    for s in series_list:
        plans[s.key] = _plan_image_series(s, infer_cfg)
    groups: Dict[Tuple[str, str, str], list] = {}
    for obj in rejected:
        ident = obj[2]
        groups.setdefault((ident["patient_id"], ident["study_uid"], ident["series_uid"]), []).append(obj)
    for key, objs in groups.items():
        if key in plans:   # a CT series with some unusable files: they are counted with it
            plans[key].objects.extend((p, r) for p, r, _ in objs)
            continue
        role, reason = classify_objects(objs)
        ident = objs[0][2]
        number = ident.get("series_number") or ""
        plans[key] = SeriesPlan(key=key, series_id=make_series_id(key), role=role, reason=reason,
                                objects=[(p, r) for p, r, _ in objs], modality=ident.get("modality", ""),
                                sop_class=ident.get("sop_class", ""),
                                series_number=int(float(number)) if re.fullmatch(r"-?\d+(\.0*)?", number) else None,
                                description=ident.get("series_description", ""))
    studies: Dict[Tuple[str, str], List[SeriesPlan]] = {}
    for key in sorted(plans):
        studies.setdefault(key[:2], []).append(plans[key])
    train_mm = float(infer_cfg["train_spacing_mm"])
    slab_mm = infer_cfg["slab_mm"]
    out = []
    for skey, members in studies.items():
        study = StudyPlan(key=skey, study_id=make_series_id(skey + skey[1:]), series=members)
        paths = [h.path for m in members if m.series is not None for h in m.series.slices] + \
            [p for m in members for p, _ in m.objects]
        study.folder = study_folder(paths, inputs) if paths else ""
        usable = [m for m in members if m.usable]
        study.ranked = sorted(usable, key=lambda m: primary_key(m, train_mm))
        if usable:
            study.primary.primary = True
            study.primary_reason = _primary_reason(study.ranked, train_mm)
        for m in usable:
            m.predict = mode == "usable" or m.primary
            if m.predict:
                m.slabs = slab_groups(len(m.series), m.spacing_mm, slab_mm)
        out.append(study)
    return out


def _primary_reason(ranked: Sequence[SeriesPlan], train_mm: float) -> str:
    p = ranked[0]
    spacing = f"{p.spacing_mm:.2f} mm spacing" if np.isfinite(p.spacing_mm) else "spacing unknown"
    text = f"{len(p.series)} slices, {spacing}"
    if p.sharp_kernel:
        text += f", sharp kernel {p.kernel or p.description} (no soft-tissue series)"
    if p.contrast:
        text += " (with contrast: no usable series without)"
    if len(ranked) == 1:
        return f"the only usable series ({text})"
    return (f"best of {len(ranked)} usable series: soft-tissue kernel first, then no contrast, then spacing "
            f"closest to {train_mm:g} mm, then most slices ({text})")
