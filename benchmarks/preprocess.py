"""Slices/s of the whole DICOM → cache path (tools/preprocess.py) vs a naive per-slice loop, same files.

    python benchmarks/preprocess.py                    # the real 512² fixture, copied into --repeat series
    python benchmarks/preprocess.py --input data/demo/stage_2_train --repeat 1

The naive loop is what a first script does per file: ``pydicom.dcmread`` → ``pixel_array`` → float64 HU →
three ``np.clip`` windows → ``cv2`` opening + crop + resize → one ``np.save`` per slice. The ppihd path is
``build_cache`` end to end (header scan, grouping, ordering, preprocessing, one ``.npy`` per series, index),
with 1 and with 2 worker processes. Files are read once beforehand so both see a warm page cache. Methods run
round-robin (best of ``--rounds``); besides wall time the CPU time (this process + worker processes) per slice
is reported, which a shared, loaded machine disturbs much less than wall time.
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURE = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "ge_head_ct_tilt")


def make_input(src: str, repeat: int, out: str) -> list:
    """Copy the DICOM files of ``src`` ``repeat`` times into ``out/train`` as distinct series (new UIDs)."""
    import pydicom

    files = sorted(f for f in glob.glob(os.path.join(src, "**", "*"), recursive=True) if os.path.isfile(f))
    dst = os.path.join(out, "stage_2_train")
    os.makedirs(dst, exist_ok=True)
    written = []
    for r in range(repeat):
        for i, f in enumerate(files):
            try:
                ds = pydicom.dcmread(f)
            except Exception:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if r:
                    ds.SeriesInstanceUID = f"{ds.get('SeriesInstanceUID', 'x')}.{r}"
                    ds.SOPInstanceUID = f"{ds.get('SOPInstanceUID', 'x')}.{r}"
                p = os.path.join(dst, f"r{r}_{i:05d}.dcm")
                ds.save_as(p)
            written.append(p)
    return written


def naive_loop(files: list, out_dir: str, size: int = 224) -> int:
    """The per-slice baseline. Returns slices written."""
    import cv2
    import numpy as np
    import pydicom

    os.makedirs(out_dir, exist_ok=True)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    n = 0
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        chans = []
        for c, w in ((40, 80), (80, 200), (40, 380)):
            lo, hi = c - w / 2, c + w / 2
            chans.append(((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8))
        img = np.stack(chans, axis=-1)
        opened = cv2.morphologyEx(img[..., 0], cv2.MORPH_OPEN, kernel, iterations=3)
        ys, xs = np.nonzero(opened)
        if len(ys):
            img = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        np.save(os.path.join(out_dir, f"{i:06d}.npy"), img)
        n += 1
    return n


def ppihd_path(root: str, workers: int, size: int = 224) -> int:
    from ppihd.data.cache import build_cache
    from ppihd.utils.config import load_config

    cfg = load_config(None, [f"Data.root={root}", f"Data.image_size={size}", f"Data.num_workers={workers}",
                             f"Data.cache_dir={os.path.join(root, f'cache_w{workers}')}", "Data.label_csv=none.csv"])
    s = build_cache(cfg, num_workers=workers, progress=False)
    return sum(s["slices"].values())


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (pool workers)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except Exception:
        model = platform.processor() or "?"
    return f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def main(argv=None) -> int:
    import logging

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=FIXTURE, help="folder of DICOM files (default: the real 512² fixture)")
    ap.add_argument("--repeat", type=int, default=4, help="copies of the input, as distinct series")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3, help="best of N interleaved rounds per method")
    args = ap.parse_args(argv)
    logging.getLogger("ppihd").setLevel(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    tmp = tempfile.mkdtemp(prefix="ppihd_bench_")
    try:
        files = make_input(args.input, args.repeat, tmp)
        for f in files:  # warm the page cache
            with open(f, "rb") as fh:
                fh.read()
        methods = {
            "naive per-slice loop (1 process)": lambda r: naive_loop(files, os.path.join(tmp, f"naive{r}"), args.size),
            "ppihd build_cache, 1 worker": lambda r: ppihd_path(tmp, 1, args.size),
            "ppihd build_cache, 2 workers": lambda r: ppihd_path(tmp, 2, args.size),
        }
        wall = {k: [] for k in methods}
        cpu = {k: [] for k in methods}
        count = {}
        for r in range(args.rounds):  # round-robin, so that all methods see the same background load
            for name, fn in methods.items():
                for d in glob.glob(os.path.join(tmp, "cache_w*")) + glob.glob(os.path.join(tmp, "naive*")):
                    shutil.rmtree(d)
                c0 = _cpu_seconds()
                t0 = time.perf_counter()
                count[name] = fn(r)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(_cpu_seconds() - c0)
        base = "naive per-slice loop (1 process)"
        base_rate = count[base] / min(wall[base])
        base_cpu = min(cpu[base]) / count[base]
        print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
        print(f"input: {len(files)} slices ({args.repeat} x {os.path.basename(os.path.normpath(args.input))}), "
              f"output {args.size}², best of {args.rounds} interleaved rounds")
        print("| method | slices | wall s | slices/s | vs naive (wall) | CPU ms/slice | vs naive per core (CPU) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in methods:
            n, dt = count[name], min(wall[name])
            c = min(cpu[name]) / n
            print(f"| {name} | {n} | {dt:.2f} | {n / dt:.0f} | {n / dt / base_rate:.2f}x | {c * 1e3:.2f} | "
                  f"{base_cpu / c:.2f}x |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
