"""Preprocess once, train many times: the per-series uint8 cache and the slice index (docs/data.md).

Layout of ``<cache_dir>`` (default ``<Data.root>/cache_<Data.image_size>``)::

    settings.json          preprocessing settings the cache was built with (a mismatch is refused)
    config.yaml            the resolved config of the last run
    series/<series_id>.npy uint8 [S, H, W, 3] per series, memory-mappable (np.load(..., mmap_mode="r"))
    series/<series_id>.json per-series record: slice SOP UIDs in order, each slice's status, the array's CRC-32
                           (with Data.cache_size: also crop_hw, each slice's crop height and width)
    index.csv              one row per slice (INDEX_COLUMNS)
    errors.csv             path, reason for every file or slice left out
    summary.json           counts of the last run

Each slice costs ``H × W × 3`` bytes (224² → 150,528 B). With ``Data.cache_size`` = N the arrays are
``[S, N, N, 3]`` instead: each slice's native-resolution black-edge crop, not resampled, in the top-left corner
of a zero canvas (a crop larger than N is downscaled once, aspect kept, and counted), its (h, w) in the record's
``crop_hw`` (covered by the CRC-32); N = 512 → 786,432 B per slice. Crash safety: every file is written to a temporary
name and ``os.replace``d, the ``.json`` record last; a series counts as finished only when its record exists
and its ``.npy`` opens with the recorded shape. So a re-run skips finished series, a ``kill -9`` loses at
most the series in flight, and a stray temporary or truncated ``.npy`` is redone, never read.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import time
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .. import LABELS
from .labels import read_labels, split_series
from .series import Series, Skipped, _pool, group_series, load_series, load_series_native, scan
from ..utils.runlock import LockError, RunLock
from ..utils.fileio import atomic_path

log = logging.getLogger("ppihd")

CACHE_VERSION = 1
#: Data keys that change the cached pixels or the slice order: the cache is keyed by them.
SETTINGS_KEYS = ("windows", "fix_intercept", "remove_black_edges", "opening_kernel", "opening_iterations",
                 "crop_inclusive", "image_size", "slice_order")
INDEX_COLUMNS = ["path", "sop_uid", "patient_id", "study_uid", "series_uid", "series_id", "slice_idx",
                 "position", *LABELS, "status", "split"]


class CacheError(RuntimeError):
    """The cache cannot be used as asked (settings mismatch, missing inputs)."""


# ------------------------------------------------------------------------------------------------ paths
def bytes_per_slice(image_size: int = 224, channels: int = 3) -> int:
    """Bytes of one cached slice: ``image_size² × channels`` (uint8). 224 → 150,528."""
    return int(image_size) * int(image_size) * int(channels)


def resolve_cache_dir(cfg: Mapping[str, Any]) -> str:
    """``Data.cache_dir`` or ``<Data.root>/cache_<Data.image_size>``."""
    d = cfg["Data"]
    return d["cache_dir"] or os.path.join(d["root"], f"cache_{int(d['image_size'])}")


def resolve_index_file(cfg: Mapping[str, Any]) -> str:
    """``Data.index_file`` or ``<cache_dir>/index.csv``."""
    return cfg["Data"]["index_file"] or os.path.join(resolve_cache_dir(cfg), "index.csv")


def series_file(cache_dir: str, series_id: str) -> str:
    return os.path.join(cache_dir, "series", f"{series_id}.npy")


def _record_file(cache_dir: str, series_id: str) -> str:
    return os.path.join(cache_dir, "series", f"{series_id}.json")


def cache_size(data_cfg: Mapping[str, Any]) -> Optional[int]:
    """``Data.cache_size``: None (the cache holds ``Data.image_size`` slices) or N > 0 (native crops in N × N
    canvases). Anything else raises ValueError naming the key."""
    n = data_cfg["cache_size"]
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"Data.cache_size must be null or a positive int (the canvas side, e.g. 512), got {n!r}")
    return n


def cache_side(data_cfg: Mapping[str, Any]) -> int:
    """Side of the cached arrays: ``Data.cache_size`` when set, else ``Data.image_size``."""
    n = cache_size(data_cfg)
    return int(data_cfg["image_size"]) if n is None else n


def cache_settings(data_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings that key a cache (JSON-normalised)."""
    s = {k: data_cfg[k] for k in SETTINGS_KEYS}
    s["windows"] = [[float(c), float(w)] for c, w in s["windows"]]
    if data_cfg["empty_opening"] != "keep":  # keyed only when not the default: older caches stay valid
        s["empty_opening"] = data_cfg["empty_opening"]
    if cache_size(data_cfg) is not None:               # keyed only when set: null-mode caches stay valid
        s["cache_size"] = cache_size(data_cfg)
    s["cache_version"] = CACHE_VERSION
    return json.loads(json.dumps(s))


# ---------------------------------------------------------------------------------------- atomic writes
def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_save_npy(path: str, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))


def atomic_write_csv(path: str, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def clean_stray_temps(cache_dir: str) -> List[str]:
    """Delete temporary files left by a killed run (``*.tmp<pid>``). Returns what was deleted."""
    gone = []
    for p in glob.glob(os.path.join(cache_dir, "series", "*.tmp*")) + glob.glob(os.path.join(cache_dir, "*.tmp*")):
        try:
            os.remove(p)
            gone.append(p)
        except OSError:  # pragma: no cover
            pass
    return gone


def check_settings(cache_dir: str, settings: Mapping[str, Any], rebuild: bool = False) -> None:
    """Write ``settings.json`` into a new cache; refuse a cache built with other settings (:class:`CacheError`
    naming the differing keys) or whose ``settings.json`` is corrupt, unless ``rebuild``, which always empties
    ``series/`` (every series is preprocessed again)."""
    os.makedirs(os.path.join(cache_dir, "series"), exist_ok=True)
    path = os.path.join(cache_dir, "settings.json")
    if os.path.isfile(path) and not rebuild:
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if not isinstance(old, dict):
                raise ValueError(f"a JSON {type(old).__name__}, not an object")
        except (OSError, ValueError) as e:
            raise CacheError(f"{path} is corrupt ({e}), so what this cache holds is unknown: --rebuild to delete "
                             "and redo it, or use another Data.cache_dir") from None
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            detail = "; ".join(f"{k}: cache {old.get(k)!r} vs config {settings.get(k)!r}" for k in diff)
            raise CacheError(f"{cache_dir} was built with other preprocessing settings ({detail}). "
                             "Use another Data.cache_dir, or --rebuild to delete and redo this cache.")
        return
    if rebuild:
        gone = glob.glob(os.path.join(cache_dir, "series", "*"))
        for p in gone:
            os.remove(p)
        log.warning("rebuilding %s (--rebuild): %d cached files deleted", cache_dir, len(gone))
    atomic_write_text(path, json.dumps(dict(settings), indent=2))


def array_checksum(arr: np.ndarray, crop_hw: Optional[Any] = None) -> str:
    """CRC-32 of an array's bytes (C order), 8 hex digits: recorded per series, checked when it is read. With
    ``crop_hw`` (a ``Data.cache_size`` cache) the CRC continues over its int32 bytes."""
    crc = zlib.crc32(np.ascontiguousarray(arr).data)
    if crop_hw is not None:
        crc = zlib.crc32(np.ascontiguousarray(crop_hw, dtype=np.int32).data, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def read_record(cache_dir: str, series_id: str) -> Optional[Dict[str, Any]]:
    """The series' ``.json`` record, or None when there is none; :class:`CacheError` when it is unreadable."""
    rec = _record_file(cache_dir, series_id)
    if not os.path.exists(rec):
        return None
    try:
        with open(rec, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CacheError(f"{rec}: record unreadable ({e}); re-run tools/preprocess.py, which redoes it") from None


def verify_series(cache_dir: str, series_id: str, arr: np.ndarray) -> None:
    """Raise :class:`CacheError` when ``arr`` (the series' cached array) does not match the checksum its record
    holds: a ``.npy`` changed on disk (bit rot, a partial copy, an edit). Records of caches built before
    checksums existed carry none and are not checked, nor are arrays without a record (written by other tools)."""
    rec = read_record(cache_dir, series_id)
    if rec is None:
        return
    want, got = rec.get("crc32"), array_checksum(arr, rec.get("crop_hw"))
    if want is not None and got != want:
        raise CacheError(f"{series_file(cache_dir, series_id)} is corrupt (checksum {got}, recorded "
                         f"{want}); re-run tools/preprocess.py, which redoes corrupt series")


# -------------------------------------------------------------------------------------------- one series
def _slice_uids(series: Series) -> List[str]:
    return [s.sop_uid for s in series.slices]


def finished_record(cache_dir: str, series: Series, image_size: int, native: bool = False
                    ) -> Optional[Dict[str, Any]]:
    """The record of a finished series whose ``.npy`` is intact and matches, else None (to be redone).
    ``image_size`` is the side of the cached arrays; ``native``: a ``Data.cache_size`` cache, whose records
    must hold one ``crop_hw`` pair per cached slice."""
    rec_path = _record_file(cache_dir, series.series_id)
    npy = series_file(cache_dir, series.series_id)
    if not (os.path.isfile(rec_path) and os.path.isfile(npy)):
        return None
    try:
        with open(rec_path, encoding="utf-8") as f:
            rec = json.load(f)
        if rec.get("sop_uids") != _slice_uids(series):
            return None
        n_ok = sum(1 for st in rec["status"] if st == "ok")
        arr = np.load(npy, mmap_mode="r")
        if arr.dtype != np.uint8 or tuple(arr.shape[:3]) != (n_ok, image_size, image_size):
            return None
        if native and np.asarray(rec.get("crop_hw"), dtype=np.int32).shape != (n_ok, 2):
            return None
        if rec.get("crc32") is not None and array_checksum(arr, rec.get("crop_hw")) != rec["crc32"]:
            log.warning("%s is corrupt (checksum mismatch): preprocessed again", npy)
            return None
        return rec
    except Exception:  # truncated / corrupt .npy or record
        return None


def process_series(series: Series, data_cfg: Mapping[str, Any], cache_dir: str) -> Dict[str, Any]:
    """Preprocess one series into ``series/<series_id>.npy`` (+ its ``.json`` record, written last)."""
    hw = None
    if cache_size(data_cfg) is None:
        arr, skipped = load_series(series, data_cfg)
    else:
        arr, hw, downscaled, skipped = load_series_native(series, data_cfg)
    reasons = dict(skipped)
    status = ["ok" if s.path not in reasons else reasons[s.path] for s in series.slices]
    if arr.shape[0] != sum(st == "ok" for st in status):  # pragma: no cover - defensive
        raise RuntimeError(f"{series.series_id}: slice count mismatch")
    rec = {"series_id": series.series_id, "sop_uids": _slice_uids(series), "status": status,
           "shape": list(arr.shape), "crc32": array_checksum(arr, hw), "warnings": list(series.warnings)}
    if hw is not None:
        rec["crop_hw"], rec["downscaled"] = hw.tolist(), downscaled
    if arr.shape[0] > 0:
        atomic_save_npy(series_file(cache_dir, series.series_id), arr)
        atomic_write_text(_record_file(cache_dir, series.series_id), json.dumps(rec))
    return rec


def _process_job(job: Tuple[Series, Mapping[str, Any], str]) -> Dict[str, Any]:
    series, data_cfg, cache_dir = job
    try:
        return process_series(series, data_cfg, cache_dir)
    except Exception as e:  # one bad series never stops the run
        reason = f"series failed ({type(e).__name__}: {str(e)[:160]})"
        return {"series_id": series.series_id, "sop_uids": _slice_uids(series),
                "status": [reason] * len(series.slices), "shape": [0], "warnings": list(series.warnings)}


# ------------------------------------------------------------------------------------------------ build
def _index_rows(series: Series, rec: Mapping[str, Any], split: str) -> List[Dict[str, Any]]:
    rows, k = [], 0
    for h, pos, st in zip(series.slices, series.positions, rec["status"]):
        ok = st == "ok"
        rows.append({"path": h.path, "sop_uid": h.sop_uid, "patient_id": h.patient_id, "study_uid": h.study_uid,
                     "series_uid": h.series_uid, "series_id": series.series_id, "slice_idx": k if ok else -1,
                     "position": pos, "status": st, "split": split})
        k += int(ok)
    return rows


def build_cache(cfg: Mapping[str, Any], num_workers: Optional[int] = None, progress: bool = True,
                rebuild: bool = False) -> Dict[str, Any]:
    """DICOM folders → cache + index for ``Data.root`` (``train_dir`` with ``label_csv``, ``test_dir``).

    Header scan and series preprocessing run in ``num_workers`` processes (default ``Data.num_workers``).
    Returns the summary written to ``summary.json`` (counts, paths). Raises :class:`CacheError` when no
    input folder exists, the cache was built with other settings, or another run holds the cache (its lock).
    """
    t0 = time.time()
    data = cfg["Data"]
    workers = int(num_workers if num_workers is not None else data["num_workers"])
    root = data["root"]
    train_dir, test_dir = os.path.join(root, data["train_dir"]), os.path.join(root, data["test_dir"])
    if not os.path.isdir(train_dir) and not os.path.isdir(test_dir):
        raise CacheError(f"neither Data.train_dir ({train_dir}) nor Data.test_dir ({test_dir}) exists; "
                         "set Data.root (e.g. -o Data.root=data/demo)")
    cache_dir = resolve_cache_dir(cfg)
    try:
        lock = RunLock(cache_dir, "tools/preprocess.py").acquire()   # one writer per cache
    except LockError as e:
        raise CacheError(str(e)) from None
    try:
        return _build_cache(cfg, cache_dir, workers, progress, rebuild, t0)
    finally:
        lock.release()


def _build_cache(cfg: Mapping[str, Any], cache_dir: str, workers: int, progress: bool, rebuild: bool,
                 t0: float) -> Dict[str, Any]:
    from tqdm import tqdm

    from ..utils.config import save_config

    data = cfg["Data"]
    root = data["root"]
    train_dir, test_dir = os.path.join(root, data["train_dir"]), os.path.join(root, data["test_dir"])
    check_settings(cache_dir, cache_settings(data), rebuild=rebuild)
    stray = clean_stray_temps(cache_dir)
    if stray:
        log.info("removed %d temporary file(s) left by an interrupted run", len(stray))
    save_config({k: v for k, v in cfg.items() if k != "_source_"}, os.path.join(cache_dir, "config.yaml"))

    errors: Skipped = []
    parts: List[Tuple[str, List[Series]]] = []
    for name, folder in (("train", train_dir), ("test", test_dir)):
        if not os.path.isdir(folder):
            log.warning("%s folder %s not found: skipped", name, folder)
            continue
        headers, skipped = scan(folder, workers, progress=progress, desc=f"scan {name}")
        errors.extend(skipped)
        parts.append((name, group_series(headers, order=data["slice_order"])))
        log.info("%s: %d usable files in %d series, %d files skipped", name, len(headers), len(parts[-1][1]),
                 len(skipped))

    # split: train series -> train/val (series- or patient-consistent), test series -> test
    split_of: Dict[str, str] = {}
    for name, ser in parts:
        if name == "test":
            for s in ser:
                if s.series_id in split_of:
                    log.warning("series %s is in both %s and %s; kept in train", s.series_id, train_dir, test_dir)
                else:
                    split_of[s.series_id] = "test"
        else:
            tab = pd.DataFrame({"series_id": [s.series_id for s in ser], "patient_id": [s.key[0] for s in ser],
                                "series_uid": [s.key[2] for s in ser]})
            split_of.update(split_series(tab, float(data["val_fraction"]), int(data["split_seed"]),
                                         bool(data["group_by_patient"]), method=str(data["split"])).to_dict())
    all_series = [s for name, ser in parts for s in ser if not (name == "test" and split_of[s.series_id] != "test")]
    seen = set()
    all_series = [s for s in all_series if not (s.series_id in seen or seen.add(s.series_id))]

    # preprocess the series not finished yet
    size = cache_side(data)
    native = cache_size(data) is not None
    records: Dict[str, Dict[str, Any]] = {}
    todo: List[Series] = []
    for s in all_series:
        rec = finished_record(cache_dir, s, size, native)
        if rec is None:
            todo.append(s)
        else:
            records[s.series_id] = rec
    log.info("cache %s: %d series finished earlier, %d to do", cache_dir, len(records), len(todo))
    data_plain = dict(data)
    jobs = [(s, data_plain, cache_dir) for s in sorted(todo, key=len, reverse=True)]
    bar = dict(total=len(jobs), desc="preprocess series", unit="series", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with _pool(workers) as pool:
            for rec in tqdm(pool.imap_unordered(_process_job, jobs), **bar):
                records[rec["series_id"]] = rec
    else:
        for job in tqdm(jobs, **bar):
            rec = _process_job(job)
            records[rec["series_id"]] = rec

    # index + errors
    rows: List[Dict[str, Any]] = []
    for s in all_series:
        rec = records[s.series_id]
        rows.extend(_index_rows(s, rec, split_of[s.series_id]))
        errors.extend((h.path, st) for h, st in zip(s.slices, rec["status"]) if st != "ok")
    index = pd.DataFrame(rows, columns=[c for c in INDEX_COLUMNS if c not in LABELS])
    label_csv = os.path.join(root, data["label_csv"]) if data["label_csv"] else None
    label_report = None
    if label_csv and os.path.isfile(label_csv):
        labels, label_report = read_labels(label_csv)
        log.info("labels %s: %s", label_csv, label_report.summary())
        index = index.merge(labels, how="left", left_on="sop_uid", right_index=True)
        index.loc[index["split"] == "test", list(LABELS)] = np.nan
    else:
        if any(n == "train" for n, _ in parts):
            log.warning("label file %s not found: train slices have unknown labels", label_csv)
        for c in LABELS:
            index[c] = np.nan
    index = index[INDEX_COLUMNS]
    index_file = resolve_index_file(cfg)
    os.makedirs(os.path.dirname(os.path.abspath(index_file)), exist_ok=True)
    atomic_write_csv(index_file, index)
    errors_file = os.path.join(cache_dir, "errors.csv")
    atomic_write_csv(errors_file, pd.DataFrame(errors, columns=["path", "reason"]))

    ok = index["status"] == "ok"
    summary = {
        "cache_dir": os.path.abspath(cache_dir), "index_file": os.path.abspath(index_file),
        "errors_file": os.path.abspath(errors_file),
        "series": {sp: int(index.loc[ok & (index["split"] == sp), "series_id"].nunique())
                   for sp in ("train", "val", "test")},
        "slices": {sp: int((ok & (index["split"] == sp)).sum()) for sp in ("train", "val", "test")},
        "slices_with_labels": int((ok & index["any"].notna()).sum()),
        "errors": len(errors), "series_processed_now": len(todo), "series_reused": len(all_series) - len(todo),
        "bytes_per_slice": bytes_per_slice(size, len(data["windows"])),
        "cache_bytes": int(ok.sum()) * bytes_per_slice(size, len(data["windows"])),
        "series_warnings": {s.series_id: s.warnings for s in all_series if s.warnings},
        "label_report": None if label_report is None else label_report.summary(),
        "seconds": round(time.time() - t0, 2),
    }
    if native:   # crops larger than the canvas, each downscaled once (aspect kept)
        summary["slices_downscaled"] = int(sum(records[s.series_id].get("downscaled", 0) for s in all_series))
    if summary.get("slices_downscaled"):
        log.warning("%d black-edge crop(s) larger than Data.cache_size = %d were downscaled once (aspect kept) to "
                    "fit the canvas: those slices are resampled twice in training", summary["slices_downscaled"],
                    size)
    atomic_write_text(os.path.join(cache_dir, "summary.json"), json.dumps(summary, indent=2))
    return summary
