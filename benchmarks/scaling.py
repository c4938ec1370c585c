#!/usr/bin/env python
"""Does the work scale linearly? Inference time vs slices per series, preprocessing time vs files.

    python benchmarks/scaling.py            # micro model S = 1..300, Swin-B S = 1, 8, 32, 64; 8..128 files
    python benchmarks/scaling.py --quick    # micro model S = 1..16, 8..24 files (smoke run)

Inference: the deployed path (Paddle Inference + oneDNN, ``ppihd.engine.backends.PaddleInferenceBackend``)
on one exported model with a dynamic slice count; one series of S random slices per point, best of
``--repeats`` after a warm-up. The long sweep (up to 300 slices) uses the ``micro`` backbone at 224² (same
Swin blocks and the same sequence transformer, d = 256), Swin-B is measured at a few lengths. The analytic
share of the sequence transformer (the only part quadratic in S) is printed next to each point.
Preprocessing: the predictor's path (header scan, grouping, HU -> windows -> black-edge crop -> 224² resize)
over the first N files of a synthetic 512² data set, one process.
Plots: ``docs/figures/bench_scaling_inference.png``, ``docs/figures/bench_scaling_preprocess.png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (REPO, load_average, machine_info, machine_lines, save_json, set_threads,  # noqa: E402
                                table, time_best)


def fit_line(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1e-30
    return a, b, 1.0 - ss_res / ss_tot


def inference_sweep(variant: str, lengths, repeats: int, threads: int, workdir: str, config: str) -> list:
    import numpy as np
    import paddle

    from ppihd.arch import build_model
    from ppihd.arch.summary import backbone_macs, sequence_macs
    from ppihd.engine.exporter import export_paddle
    from ppihd.engine.backends import PaddleInferenceBackend
    from ppihd.utils.config import load_config

    cfg = load_config(config, [f"Arch.backbone.variant={variant}"])
    size = int(cfg["Data"]["image_size"])
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    model.eval()
    d = os.path.join(workdir, f"model_{variant}")
    export_paddle(model, d, size)
    bb = backbone_macs(model.backbone, size, size)["total"]
    sq = cfg["Arch"]["sequence"]
    backend = PaddleInferenceBackend(d, "cpu", threads, mkldnn=True)
    rng = np.random.default_rng(0)
    rows = []
    for s in lengths:
        x = rng.random((s, 3, size, size), dtype=np.float32)
        t = time_best(lambda: backend.predict_series(x), repeats=repeats, warmup=1)
        seq = sequence_macs(model.num_features, sq["dim_feedforward"], sq["num_layers"], s)
        rows.append({"model": variant, "slices": s, "seconds": t["best"], "s_per_slice": t["best"] / s,
                     "seq_share_pct": 100.0 * seq / (seq + s * bb), "load_avg_1m": load_average()})
        print(f"  {variant} S={s}: {t['best']:.3f} s ({t['best'] / s:.4f} s/slice, load {rows[-1]['load_avg_1m']})",
              flush=True)
    return rows


def preprocess_sweep(counts, workdir: str, config: str) -> list:
    from ppihd.data.series import group_series, list_files, load_series, scan
    from ppihd.synthetic import generate_dataset
    from ppihd.utils.config import load_config

    data_cfg = load_config(config)["Data"]
    root = os.path.join(workdir, "dicom")
    need = max(counts)
    if not os.path.isfile(os.path.join(root, "stage_2_train.csv")):
        n_series = -(-need // 24)
        generate_dataset(root, n_series, 0, seed=1, size=512, slices_min=24, slices_max=40,
                         workers=os.cpu_count() or 1, progress=False, overwrite=True)
    files, _ = list_files(os.path.join(root, "stage_2_train"))
    files = sorted(files)
    if len(files) < need:
        raise RuntimeError(f"{root}: {len(files)} files, need {need}")
    rows = []
    for n in counts:
        def run():
            headers, _ = scan(files[:n], num_workers=1, progress=False)
            for series in group_series(headers, order=data_cfg["slice_order"]):
                load_series(series, data_cfg)

        t = time_best(run, repeats=2, warmup=0)
        rows.append({"files": n, "seconds": t["best"], "ms_per_file": 1000 * t["best"] / n,
                     "load_avg_1m": load_average()})
        print(f"  preprocess {n} files: {t['best']:.2f} s ({rows[-1]['ms_per_file']:.1f} ms/file)", flush=True)
    return rows


def _plot_linear_fit(ax, xs, ys, unit: str) -> None:
    """Measured points and, with two or more, their least-squares line labelled in ms per ``unit``."""
    ax.plot(xs, ys, "o", label="measured")
    if len(xs) >= 2:
        a, b, r2 = fit_line(xs, ys)
        ax.plot([0, max(xs)], [a, a + b * max(xs)], "-", label=f"linear fit: {b * 1000:.1f} ms/{unit}, R²={r2:.4f}")


def plot(inf_rows, pre_rows, fig_dir: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(fig_dir, exist_ok=True)
    out = []
    models = sorted({r["model"] for r in inf_rows}, key=lambda m: m != "micro")
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        pts = [r for r in inf_rows if r["model"] == model]
        xs, ys = [r["slices"] for r in pts], [r["seconds"] for r in pts]
        _plot_linear_fit(ax, xs, ys, "slice")
        ax.set_xlabel("slices in the series")
        ax.set_ylabel("seconds per series")
        ax.set_title(f"{model}: Paddle Inference + oneDNN, 224²")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = os.path.join(fig_dir, "bench_scaling_inference.png")
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    out.append(p1)
    if pre_rows:
        fig, ax = plt.subplots(figsize=(5, 4))
        xs, ys = [r["files"] for r in pre_rows], [r["seconds"] for r in pre_rows]
        _plot_linear_fit(ax, xs, ys, "file")
        ax.set_xlabel("DICOM files (512², synthetic)")
        ax.set_ylabel("seconds (scan + group + preprocess, 1 process)")
        ax.set_title("preprocessing time vs files")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p2 = os.path.join(fig_dir, "bench_scaling_preprocess.png")
        fig.savefig(p2, dpi=110)
        plt.close(fig)
        out.append(p2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="configs/swin_b_seq.yaml")
    p.add_argument("--lengths", default="1,2,4,8,16,32,64,128,200,300", help="slice counts for the micro sweep")
    p.add_argument("--base-lengths", default="1,8,32,64", help="slice counts for Swin-B ('' = skip)")
    p.add_argument("--files", default="8,16,32,64,128", help="file counts for the preprocessing sweep")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="output/bench/scaling")
    p.add_argument("--fig-dir", default=os.path.join(REPO, "docs", "figures"))
    p.add_argument("--quick", action="store_true", help="micro S = 1..16, no Swin-B, 8..24 files")
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    if a.quick:
        a.lengths, a.base_lengths, a.files, a.repeats = "1,4,16", "", "8,16,24", 1
    wd = os.path.abspath(a.workdir)
    os.makedirs(wd, exist_ok=True)
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    inf = inference_sweep("micro", ints(a.lengths), a.repeats, threads, wd, a.config)
    if ints(a.base_lengths):
        inf += inference_sweep("base", ints(a.base_lengths), a.repeats, threads, wd, a.config)
    pre = preprocess_sweep(ints(a.files), wd, a.config) if ints(a.files) else []
    fits = {}
    for model in sorted({r["model"] for r in inf}):
        pts = [r for r in inf if r["model"] == model]
        if len(pts) >= 2:
            fits[model] = dict(zip(("intercept_s", "s_per_slice", "r2"),
                                   fit_line([r["slices"] for r in pts], [r["seconds"] for r in pts])))
    if len(pre) >= 2:
        fits["preprocess"] = dict(zip(("intercept_s", "s_per_file", "r2"),
                                      fit_line([r["files"] for r in pre], [r["seconds"] for r in pre])))
    print(f"\nthreads {threads}")
    print(table(inf, ["model", "slices", "seconds", "s_per_slice", "seq_share_pct", "load_avg_1m"],
                ["model", "S", "s/series", "s/slice", "sequence model % of MACs", "load"]))
    if pre:
        print(table(pre, ["files", "seconds", "ms_per_file", "load_avg_1m"], ["files", "seconds", "ms/file", "load"]))
    for k, f in fits.items():
        print(f"  linear fit {k}: " + ", ".join(f"{kk} {vv:.4g}" for kk, vv in f.items()))
    figs = plot(inf, pre, a.fig_dir)
    print("figures: " + ", ".join(figs))
    out = save_json(os.path.join(wd, "scaling.json"), {"machine": info, "inference": inf, "preprocess": pre,
                                                       "fits": fits, "args": vars(a)})
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
