#!/usr/bin/env python
"""Write a synthetic RSNA-style head-CT data set (phantoms with the five hemorrhage subtypes).

    python tools/make_demo_data.py --out data/demo --series 48 --test-series 8 --seed 0
    python tools/make_demo_data.py --montage docs/figures/synthetic_montage.png

Layout: OUT/stage_2_train/ID_*.dcm, OUT/stage_2_test/ID_*.dcm, OUT/stage_2_train.csv,
OUT/stage_2_sample_submission.csv, plus OUT/synthetic_test_labels.csv (test truth, not in RSNA),
OUT/synthetic_manifest.csv (one row per slice: true order, UIDs, encoding, labels) and OUT/synthetic.json.
See docs/synthetic_data.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (RSNA layout)")
    p.add_argument("--series", type=int, default=48, help="training series (labelled)")
    p.add_argument("--test-series", type=int, default=8, help="test series (sample submission)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices-min", type=int, default=20)
    p.add_argument("--slices-max", type=int, default=40)
    p.add_argument("--size", type=int, default=512, help="nominal image side (RSNA: 512)")
    p.add_argument("--patients", type=int, default=None,
                   help="distinct PatientIDs shared by the training series (default: one per series)")
    p.add_argument("--hemorrhage-fraction", type=float, default=0.4, help="fraction of series with bleeds")
    p.add_argument("--workers", type=int, default=1, help="processes (output is identical for any value)")
    p.add_argument("--overwrite", action="store_true", help="replace a data set made with other arguments")
    p.add_argument("--montage", default=None, help="also write a brain-window PNG montage of the phantoms")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.out is None and a.montage is None:
        p.error("give --out DIR (and/or --montage PNG)")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ppihd.synthetic import generate_dataset
    from ppihd.synthetic.montage import save_montage

    if a.out:
        t0 = time.time()
        try:
            summary = generate_dataset(a.out, a.series, a.test_series, seed=a.seed, size=a.size,
                                       slices_min=a.slices_min, slices_max=a.slices_max, patients=a.patients,
                                       hemorrhage_fraction=a.hemorrhage_fraction, workers=a.workers,
                                       progress=not a.no_progress, overwrite=a.overwrite)
        except (ValueError, FileExistsError) as e:
            print(f"make_demo_data: error: {e}", file=sys.stderr)
            return 2
        if summary.get("skipped"):
            print(f"make_demo_data: {a.out} already holds this data set (same arguments); nothing to do")
        else:
            print(f"make_demo_data: wrote {summary['train_series']} train series / {summary['train_slices']} "
                  f"slices and {summary['test_series']} test series / {summary['test_slices']} slices to "
                  f"{a.out} in {time.time() - t0:.1f} s")
            print("  positive train slices: " + json.dumps(summary["train_positive_slices"]))
    if a.montage:
        save_montage(a.montage, seed=a.seed)
        print(f"make_demo_data: montage written to {a.montage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
