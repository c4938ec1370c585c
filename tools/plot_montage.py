"""PNG montage of a series after the paper's preprocessing (windows as RGB + black-edge crop + resize).

    python tools/plot_montage.py                       # the real fixture -> docs/figures/fixture_montage.png
    python tools/plot_montage.py --input DIR --out x.png -o Data.image_size=224

Each tile is one slice in anatomical order (tilt-aware), channels = the three windows (R brain, G blood,
B soft tissue), titled with its InstanceNumber and position along the slice normal (mm).
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURE = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "ge_head_ct_tilt")


def _flags(ap) -> None:
    ap.add_argument("--input", default=FIXTURE, help="DICOM folder (one series expected; the largest is shown)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "fixture_montage.png"))
    ap.add_argument("--cols", type=int, default=7)


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    return run_tool(_montage, argv, description=__doc__, config="optional", flags=_flags)


def _montage(args, cfg, log) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ppihd.data.series import group_series, load_series, scan

    headers, skipped = scan(args.input, num_workers=1, progress=False)
    series = group_series(headers, order=cfg["Data"]["slice_order"])
    if not series:
        print(f"no usable CT series under {args.input}; skipped: {skipped[:5]}", file=sys.stderr)
        return 1
    s = max(series, key=len)
    arr, dropped = load_series(s, cfg["Data"])
    kept = [h for h in s.slices if h.path not in dict(dropped)]
    pos = [p for h, p in zip(s.slices, s.positions) if h.path not in dict(dropped)]
    n, cols = len(arr), args.cols
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.05), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(arr[k])
            inst = kept[k].instance_number
            ax.set_title(f"#{inst if inst is not None else '?'}  {pos[k]:.1f} mm", fontsize=7)
    d = cfg["Data"]
    fig.suptitle(f"{os.path.basename(os.path.normpath(args.input))}: {n} slices ordered along the slice normal "
                 f"({s.order_method}); RGB = windows {d['windows']}; black-edge crop "
                 f"{'on' if d['remove_black_edges'] else 'off'}; {d['image_size']}²", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out} ({n} slices, {len(dropped)} dropped, {len(skipped)} files skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
