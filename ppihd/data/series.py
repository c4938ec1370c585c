"""Find DICOM files, group them into series and order the slices (docs/data.md).

    headers, skipped = scan(["data/rsna/stage_2_test", "my_study/"], num_workers=2)
    series = group_series(headers, order="normal")
    slices, dropped = load_series(series[0], cfg["Data"])     # uint8 [S, H, W, 3]

Inputs may be files and/or folders of any nesting (an RSNA flat folder of ``ID_*.dcm`` or one patient's
export with several series). Anything unusable is returned in ``skipped`` as ``(path, reason)``.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .dicom import (DicomError, SliceHeader, header_from_dataset, read_dataset, read_frame_pixels, read_headers,
                    read_native_pixels, read_raw_pixels)
from .transforms import crop_slice, native_canvas, preprocess_slice, to_hu

Skipped = List[Tuple[str, str]]

#: Slices closer than this along the ordering axis (mm) count as duplicate positions.
DUPLICATE_TOL_MM = 1e-3


@dataclass
class Series:
    """One series: slices ordered along the slice normal. ``positions`` are mm along the ordering axis
    (NaN where unknown); ``order_method`` says which rule ordered them."""

    key: Tuple[str, str, str]            # (PatientID, StudyInstanceUID, SeriesInstanceUID)
    series_id: str                       # filesystem-safe, deterministic
    slices: List[SliceHeader]
    positions: List[float]
    order_method: str = "normal"         # normal | z | instance | filename | reference
    warnings: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.slices)


# ------------------------------------------------------------------------------------------------- scan
def _kind(mode: int) -> str:
    """Name of a non-regular file type (for the skip reason)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def list_files(inputs: Union[str, Sequence[str]]) -> Tuple[List[str], Skipped]:
    """All regular files under ``inputs`` (files and/or folders, any nesting), sorted per folder; hidden files
    and folders (``.name``) are ignored.

    Symlinked folders are followed, each real folder once (a link back up the tree is recorded as a loop);
    FIFOs, sockets and devices are recorded without being opened (opening a FIFO would wait forever), as are
    broken links, missing inputs, folders that cannot be read and empty folders. Returns ``(files, skipped)``."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: List[str] = []
    skipped: Skipped = []
    seen_dirs: set = set()

    def add_file(path: str, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode):
            files.append(path)
        else:
            skipped.append((path, f"{_kind(st.st_mode)}, not a file: not opened"))

    def walk(folder: str) -> None:
        try:
            st = os.stat(folder)
        except OSError as e:
            skipped.append((folder, f"cannot read folder ({e.strerror or e})"))
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            skipped.append((folder, "symlink loop or second link to a folder already read: not read again"))
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as e:
            skipped.append((folder, f"cannot read folder ({e.strerror or e})"))
            return
        if not entries:
            skipped.append((folder, "empty folder (no files)"))
        subdirs = []
        for e in entries:
            try:
                est = os.stat(e.path)   # follows links
            except OSError:
                skipped.append((e.path, "broken symbolic link" if e.is_symlink() else "cannot stat file"))
                continue
            if stat.S_ISDIR(est.st_mode):
                subdirs.append(e.path)
            else:
                add_file(e.path, est)
        for d in subdirs:
            walk(d)

    for inp in inputs:
        inp = os.fspath(inp)
        try:
            st = os.stat(inp)
        except OSError:
            skipped.append((inp, "broken symbolic link" if os.path.islink(inp) else "no such file or folder"))
            continue
        if stat.S_ISDIR(st.st_mode):
            walk(inp)
        else:
            add_file(inp, st)
    return files, skipped


def _scan_one(path: str) -> Union[List[SliceHeader], Tuple[str, str, Optional[Dict[str, str]]]]:
    """The headers of one file (one per frame of a multi-frame CT), or ``(path, reason, identity)``."""
    try:
        return read_headers(path)
    except DicomError as e:
        return (e.path, e.reason, e.identity)
    except Exception as e:  # never let one odd file stop a scan
        return (path, f"unreadable ({type(e).__name__}: {str(e)[:120]})", None)


def _pool(num_workers: int):
    """A process pool: ``fork`` (fast start) unless paddle is already imported in this process, whose threads
    make forking unsafe; then ``forkserver`` (or the platform default)."""
    methods = mp.get_all_start_methods()
    if "paddle" in sys.modules:
        ctx = mp.get_context("forkserver") if "forkserver" in methods else mp.get_context()
    else:
        ctx = mp.get_context("fork") if "fork" in methods else mp.get_context()
    return ctx.Pool(num_workers)


#: :func:`scan` reads headers serially below this many files: a header takes ~1.3 ms, starting a 2-process pool
#: ~1.4 s once paddle is imported (forkserver), so the pool only pays from ~2,000 files (benchmarks/study.py,
#: docs/benchmarks.md "A study end to end").
POOL_MIN_FILES = 2000


def scan(inputs: Union[str, Sequence[str]], num_workers: int = 1, progress: bool = True,
         desc: str = "scan headers", rejected: Optional[list] = None,
         pool_min_files: int = POOL_MIN_FILES) -> Tuple[List[SliceHeader], Skipped]:
    """Read the header of every file under ``inputs`` with ``num_workers`` processes (tqdm progress) when there
    are at least ``pool_min_files`` files, serially otherwise (same result).

    Returns ``(headers, skipped)``: one header per slice (a multi-frame CT file gives one per frame, with its
    ``frame``); ``skipped`` lists ``(path, reason)`` for missing inputs, empty folders,
    non-DICOM files, non-CT, truncated or undecodable files. Order of ``headers`` follows the file list.
    ``rejected``: a list to which every skipped DICOM object that names its series (an SR, a dose report, an MR
    slice, ...) is appended as ``(path, reason, identity)`` (:func:`ppihd.data.dicom.series_identity`).
    """
    from tqdm import tqdm

    files, skipped = list_files(inputs)
    headers: List[SliceHeader] = []
    if not files:
        return headers, skipped
    bar = dict(total=len(files), desc=desc, unit="file", disable=not progress, leave=False)
    if num_workers and num_workers > 1 and len(files) >= max(4 * num_workers, pool_min_files):
        chunk = max(1, min(256, len(files) // (8 * num_workers)))
        with _pool(num_workers) as pool:
            results = list(tqdm(pool.imap(_scan_one, files, chunksize=chunk), **bar))
    else:
        results = [_scan_one(f) for f in tqdm(files, **bar)]
    for r in results:
        if isinstance(r, list):
            headers.extend(r)
        else:
            skipped.append(r[:2])
            if r[2] is not None and rejected is not None:
                rejected.append(r)
    return headers, skipped


# ------------------------------------------------------------------------------------------- grouping
def make_series_id(key: Sequence[str]) -> str:
    """Filesystem-safe deterministic id: the SeriesInstanceUID tail (≤ 16 safe chars) + a 10-hex hash of
    the whole (patient, study, series) key, e.g. ``"ID_5c8b5d701-3f2a9c1b0d"``."""
    digest = hashlib.sha1("\x1f".join(key).encode("utf-8")).hexdigest()[:10]
    tail = re.sub(r"[^A-Za-z0-9_]+", "_", key[2])[-16:].strip("_") or "series"
    return f"{tail}-{digest}"


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal n = row_cos × col_cos of an ImageOrientationPatient (6 floats)."""
    o = np.asarray(orientation, dtype=np.float64)
    n = np.cross(o[:3], o[3:])
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"degenerate ImageOrientationPatient {list(orientation)}")
    return n / norm


def order_slices(slices: Sequence[SliceHeader], method: str = "normal") -> Tuple[List[int], List[float], str, List[str]]:
    """Order of ``slices``: returns ``(indices, positions_mm, method_used, warnings)``.

    ``normal`` (default, tilt-aware): ascending ``ImagePositionPatient · n`` with n from the first slice's
    ImageOrientationPatient; falls back to ascending z, then InstanceNumber, then file name when the
    needed tags are missing. ``reference``: lexicographic (x, y, z) as the authors' code. Ties keep a
    stable order (InstanceNumber, then file name).
    """
    notes: List[str] = []
    n = len(slices)
    names = [os.path.basename(s.path) for s in slices]
    inst = [s.instance_number if s.instance_number is not None else 0 for s in slices]
    has_pos = all(s.position is not None for s in slices)
    has_ori = all(s.orientation is not None for s in slices)
    pos = np.array([s.position for s in slices], dtype=np.float64) if has_pos else None
    if method not in ("normal", "reference"):
        raise ValueError(f"Data.slice_order must be 'normal' or 'reference', got {method!r}")
    if method == "reference" and has_pos:
        idx = sorted(range(n), key=lambda i: (pos[i, 0], pos[i, 1], pos[i, 2], inst[i], names[i]))
        return idx, [float(pos[i, 2]) for i in idx], "reference", notes
    if has_pos and has_ori:
        try:
            normal = slice_normal(slices[0].orientation)
            oris = np.array([s.orientation for s in slices], dtype=np.float64)
            if np.abs(oris - oris[0]).max() > 1e-3:
                notes.append("ImageOrientationPatient differs between slices; ordered along the first slice's normal")
            d = pos @ normal
            idx = sorted(range(n), key=lambda i: (d[i], inst[i], names[i]))
            return idx, [float(d[i]) for i in idx], "normal", notes
        except ValueError as e:
            notes.append(f"{e}; ordered by z")
    if has_pos:
        if not has_ori:
            notes.append("ImageOrientationPatient missing; ordered by ImagePositionPatient z")
        idx = sorted(range(n), key=lambda i: (pos[i, 2], inst[i], names[i]))
        return idx, [float(pos[i, 2]) for i in idx], "z", notes
    if all(s.instance_number is not None for s in slices):
        notes.append("ImagePositionPatient missing; ordered by InstanceNumber")
        idx = sorted(range(n), key=lambda i: (inst[i], names[i]))
        return idx, [float("nan")] * n, "instance", notes
    notes.append("ImagePositionPatient and InstanceNumber missing; ordered by file name")
    idx = sorted(range(n), key=lambda i: names[i])
    return idx, [float("nan")] * n, "filename", notes


def group_series(headers: Iterable[SliceHeader], order: str = "normal") -> List[Series]:
    """Group headers by (PatientID, StudyInstanceUID, SeriesInstanceUID) and order each series.

    Duplicate positions are kept (both slices, stable order) and reported in ``Series.warnings``, as are
    mixed image sizes (every slice is resized anyway) and repeated SOPInstanceUIDs. Series are returned
    sorted by key.
    """
    groups: Dict[Tuple[str, str, str], List[SliceHeader]] = {}
    for h in headers:
        groups.setdefault(h.key, []).append(h)
    out: List[Series] = []
    for key in sorted(groups):
        hs = groups[key]
        idx, positions, used, notes = order_slices(hs, order)
        slices = [hs[i] for i in idx]
        pos = np.asarray(positions, dtype=np.float64)
        if len(pos) > 1 and np.isfinite(pos).all():
            dup = np.flatnonzero(np.abs(np.diff(pos)) < DUPLICATE_TOL_MM)
            for i in dup[:5]:
                notes.append(f"duplicate position {pos[i]:.3f} mm: {os.path.basename(slices[i].path)} and "
                             f"{os.path.basename(slices[i + 1].path)} (both kept)")
            if len(dup) > 5:
                notes.append(f"... {len(dup) - 5} more duplicate positions")
        sizes = sorted({(s.rows, s.cols) for s in slices})
        if len(sizes) > 1:
            notes.append(f"mixed image sizes {sizes} (each slice is resized)")
        sops = [s.sop_uid for s in slices]
        if len(set(sops)) != len(sops):
            notes.append("repeated SOPInstanceUID within the series (copies of the same file?)")
        out.append(Series(key=key, series_id=make_series_id(key), slices=slices, positions=positions,
                          order_method=used, warnings=notes))
    ids = [s.series_id for s in out]
    if len(set(ids)) != len(ids):  # pragma: no cover - a 40-bit hash collision
        raise RuntimeError("series_id collision; please report")
    return out


# -------------------------------------------------------------------------------------------- loading
def read_hu(header: SliceHeader, data_cfg: Mapping[str, Any]) -> np.ndarray:
    """One slice in HU, float32 [rows, cols] (``Data.fix_intercept`` applied). Raises :class:`DicomError`.

    Native (uncompressed) files whose pixel offset the scan recorded are read straight with numpy
    (:func:`~ppihd.data.dicom.read_native_pixels`, same values as pydicom); others go through pydicom."""
    raw = read_native_pixels(header)
    h = header
    if raw is None and header.frame is not None:   # one frame of a compressed (or deflated) multi-frame file
        raw = read_frame_pixels(header)
    elif raw is None:
        ds = read_dataset(header.path)
        h = header_from_dataset(ds, header.path)
        raw = read_raw_pixels(ds, header.path)
    return to_hu(raw, h.slope, h.intercept, h.bits_stored, h.pixel_representation,
                 bool(data_cfg["fix_intercept"]))


def _frame_prefix(h: SliceHeader) -> str:
    """``"frame 4: "`` for a frame of a multi-frame file (1-based, as DICOM numbers frames), else ``""``."""
    return "" if h.frame is None else f"frame {h.frame + 1}: "


def load_slabs(series: Series, slabs: Sequence[Sequence[int]], data_cfg: Mapping[str, Any],
               reject_constant: bool = False) -> Tuple[np.ndarray, Skipped, List[List[int]]]:
    """Preprocessed images of ``series``, one per slab: the mean HU of the slab's slices (indices into
    ``series.slices``), then windows, crop and resize as for one slice. A slab of one slice is that slice.

    Returns ``(images, skipped, members)``: uint8 [K, H, W, 3] for the K slabs that kept at least one
    readable slice, ``(path, reason)`` of every slice that could not be read (dropped, the others continue; the
    reason of a frame of a multi-frame file starts with ``frame <n>:``),
    and for each returned image the indices of the slices averaged into it. Slices of another size than the
    slab's first readable one are resized to it (bilinear) before averaging. ``reject_constant``: a slice whose
    HU are all one value (no anatomy: a blank or corrupt image) is skipped with that reason (inference does
    this; the training cache keeps every labelled slice as the reference does).
    """
    size = int(data_cfg["image_size"])
    out = np.empty((len(slabs), size, size, len(data_cfg["windows"])), dtype=np.uint8)

    def store(k: int, hu: np.ndarray) -> None:
        out[k] = preprocess_slice(hu, data_cfg)

    skipped, members = _prepare_slabs(series, slabs, data_cfg, reject_constant, store)
    return out[:len(members)], skipped, members


def _prepare_slabs(series: Series, slabs: Sequence[Sequence[int]], data_cfg: Mapping[str, Any],
                   reject_constant: bool, store) -> Tuple[Skipped, List[List[int]]]:
    """Read each slab's mean HU (docstring of :func:`load_slabs`) and pass it to ``store(k, hu)``, k = the
    number of slabs kept before it. Returns ``(skipped, members)``."""
    import cv2

    skipped: Skipped = []
    members: List[List[int]] = []
    for slab in slabs:
        total, kept = None, []
        for i in slab:
            h = series.slices[i]
            try:
                hu = read_hu(h, data_cfg)
                if reject_constant and hu.size and hu.min() == hu.max():
                    raise DicomError(h.path, f"constant image: every pixel is {float(hu.flat[0]):g} HU (nothing to "
                                             "read; a blank or corrupt slice)")
            except DicomError as e:
                skipped.append((e.path, _frame_prefix(h) + e.reason))
                continue
            except Exception as e:
                skipped.append((h.path, f"{_frame_prefix(h)}cannot read pixels ({type(e).__name__}: {str(e)[:120]})"))
                continue
            if total is None:
                total = hu.astype(np.float64) if len(slab) > 1 else hu
            else:
                if hu.shape != total.shape:
                    hu = cv2.resize(hu, (total.shape[1], total.shape[0]), interpolation=cv2.INTER_LINEAR)
                total = total + hu
            kept.append(i)
        if not kept:
            continue
        hu = total if len(kept) == 1 and len(slab) == 1 else (total / len(kept)).astype(np.float32)
        try:
            store(len(members), hu)
        except Exception as e:
            skipped.extend((series.slices[i].path, f"cannot preprocess ({type(e).__name__}: {str(e)[:120]})")
                           for i in kept)
            continue
        members.append(kept)
    return skipped, members


def load_series(series: Series, data_cfg: Mapping[str, Any]) -> Tuple[np.ndarray, Skipped]:
    """All slices of ``series`` preprocessed, in order: uint8 [S, H, W, 3] with H = W = ``Data.image_size``.

    A slice that cannot be read is dropped and listed in ``skipped`` as ``(path, reason)``; the others
    continue. All slices unreadable → an array of shape [0, H, W, 3].
    """
    arr, skipped, _ = load_slabs(series, [[i] for i in range(len(series.slices))], data_cfg)
    return arr, skipped


def load_series_native(series: Series, data_cfg: Mapping[str, Any]) -> Tuple[np.ndarray, np.ndarray, int, Skipped]:
    """All slices of ``series`` as native-resolution black-edge crops (``Data.cache_size`` = N): uint8
    [S, N, N, 3] canvases (:func:`~ppihd.data.transforms.native_canvas`: crop in the top-left corner, zeros
    elsewhere), int32 [S, 2] the (h, w) of each crop in its canvas, the number of crops larger than N that were
    downscaled once to fit, and ``skipped`` as in :func:`load_series`."""
    n = int(data_cfg["cache_size"])
    out = np.empty((len(series.slices), n, n, len(data_cfg["windows"])), dtype=np.uint8)
    hw = np.empty((len(series.slices), 2), dtype=np.int32)
    downscaled = [0]

    def store(k: int, hu: np.ndarray) -> None:
        out[k], hw[k], small = native_canvas(crop_slice(hu, data_cfg), n)
        downscaled[0] += int(small)

    skipped, members = _prepare_slabs(series, [[i] for i in range(len(series.slices))], data_cfg, False, store)
    return out[:len(members)], hw[:len(members)], downscaled[0], skipped
