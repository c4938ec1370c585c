"""Cost of ``Data.cache_size`` (native black-edge crops in an N x N canvas, RandomResizedCrop from them) against the
null cache (crops resized to ``Data.image_size``): disk per slice, preprocessing time and loader time per series,
plus the crop sizes of a real 512² series (how much of the canvas a crop fills). Prints JSON lines and a table.

    python benchmarks/cache_size.py --root /work/demo-data --sizes null 512 256 [--series 40] [--repeats 3]

Config: ``configs/swin_b_seq.yaml`` (the paper's recipe: 224², RandomResizedCrop bicubic + flips) with
``Data.root`` = ``--root``. The loader time is ``SeriesDataset(cfg, "train", transform=build_train_augment(cfg))
.get(i, rng)`` (cache read, crop, resize, flips; uint8 items as the trainer uses them) and, for eval, ``ds[i]``
without a transform, per series, the median over ``--series`` series of the best of ``--repeats`` passes.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import load_average  # noqa: E402

RSNA_SLICES = 752_803 + 121_232   # stage-2 train + test images (docs/data.md §5)
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "fixtures",
                       "ge_head_ct_tilt")


def _per_series(ds, fn, n, repeats):
    best = []
    for i in range(min(n, len(ds))):
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(i)
            t.append(time.perf_counter() - t0)
        best.append(min(t))
    return float(np.median(best))


def measure(config: str, root: str, size, workdir: str, n_series: int, repeats: int):
    import cv2

    from ppihd.data.augment import build_train_augment
    from ppihd.data.cache import build_cache, resolve_cache_dir
    from ppihd.data.dataset import SeriesDataset
    from ppihd.utils.config import load_config

    cv2.setNumThreads(1)
    cfg = load_config(config, [f"Data.root={root}", "Data.num_workers=1", "Global.progress_bar=false",
                               f"Data.cache_dir={os.path.join(workdir, f'cache_{size}')}",
                               f"Data.cache_size={size}"])
    summary = build_cache(cfg, num_workers=1, progress=False)
    n_ok = sum(summary["slices"].values())
    n_series_all = sum(summary["series"].values())
    files = glob.glob(os.path.join(resolve_cache_dir(cfg), "series", "*.npy"))
    disk = sum(os.path.getsize(p) for p in files)
    ds = SeriesDataset(cfg, "train", transform=build_train_augment(cfg))
    ds.uint8_images = True
    rng = np.random.default_rng(0)
    train = _per_series(ds, lambda i: ds.get(i, rng), n_series, repeats)
    ev = SeriesDataset(cfg, "val")
    val = _per_series(ev, lambda i: ev[i], n_series, repeats)
    slices = float(np.mean([len(it["slice_idx"]) for it in ds.items[:n_series]]))
    out = {"cache_size": size, "slices": n_ok, "series": n_series_all, "disk_bytes": disk,
           "disk_bytes_per_slice": disk / n_ok, "preprocess_s": summary["seconds"],
           "preprocess_ms_per_slice": 1e3 * summary["seconds"] / n_ok,
           "train_item_ms_per_series": 1e3 * train, "train_slices_per_series": slices,
           "eval_item_ms_per_series": 1e3 * val, "slices_downscaled": summary.get("slices_downscaled", 0),
           "rsna_gb": RSNA_SLICES * summary["bytes_per_slice"] / 1e9, "load_avg_1m": load_average()}
    print("RESULT " + json.dumps(out), flush=True)
    return out


def fixture_crops(data_cfg):
    """Crop h x w of the real GE 512² series (black-edge removal on)."""
    from ppihd.data.series import group_series, read_hu, scan
    from ppihd.data.transforms import crop_slice

    if not os.path.isdir(FIXTURE):
        return None
    headers, _ = scan(FIXTURE, 1, progress=False)
    (series,) = group_series(headers)
    hw = np.array([crop_slice(read_hu(h, data_cfg), data_cfg).shape[:2] for h in series.slices])
    return {"slices": len(hw), "rows_cols": [int(series.slices[0].rows), int(series.slices[0].cols)],
            "h_median": float(np.median(hw[:, 0])), "w_median": float(np.median(hw[:, 1])),
            "h_max": int(hw[:, 0].max()), "w_max": int(hw[:, 1].max()),
            "area_fraction_of_512_canvas": float(np.mean(hw[:, 0] * hw[:, 1]) / 512 ** 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/work/demo-data")
    p.add_argument("--config", default="configs/swin_b_seq.yaml")
    p.add_argument("--sizes", nargs="+", default=["null", "512"])
    p.add_argument("--series", type=int, default=40, help="series timed in the loader")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    from ppihd.utils.config import load_config

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for s in a.sizes:
            rows.append(measure(a.config, a.root, s, work, a.series, a.repeats))
    fx = fixture_crops(load_config(a.config, [])["Data"])
    print("RESULT " + json.dumps({"fixture_crops": fx}), flush=True)
    print(f"\n{'cache_size':>10} {'B/slice':>9} {'RSNA GB':>8} {'prep ms/slice':>13} {'train ms/series':>15} "
          f"{'eval ms/series':>14} {'downscaled':>10}")
    for r in rows:
        print(f"{str(r['cache_size']):>10} {r['disk_bytes_per_slice']:9.0f} {r['rsna_gb']:8.1f} "
              f"{r['preprocess_ms_per_slice']:13.2f} {r['train_item_ms_per_series']:15.1f} "
              f"{r['eval_item_ms_per_series']:14.1f} {r['slices_downscaled']:10d}")
    print(f"(series of {rows[0]['train_slices_per_series']:.1f} slices on average; load {rows[-1]['load_avg_1m']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
