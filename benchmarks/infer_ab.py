#!/usr/bin/env python
"""Interleaved A/B of deployed-path variants (Paddle Inference + oneDNN fp32) in ONE process.

The machine is shared, so paths timed minutes apart are not comparable (docs/benchmarks.md). Here every
variant is exported once, loaded as a :class:`ppihd.engine.backends.PaddleInferenceBackend`, and the variants
and the matmul peak (``benchmarks/peak.py``: the best of paddle, numpy's BLAS, a one-matmul Paddle Inference +
oneDNN program and PyTorch if at hand, fp32 and bf16, ``--peak-sizes``, same threads) run in turn for
``--rounds`` rounds; the best round of each is reported, with the peak measured in the same rounds (a bf16
variant's "% peak" is against the bf16 peak).

    python benchmarks/infer_ab.py --variants fp32 --slices 8 --rounds 5    # the deployed fp32 program, Swin-B
    python benchmarks/infer_ab.py --streams 1,2 --variants fp32     # throughput: 1 x 2 threads vs 2 x 1 thread
    python benchmarks/infer_ab.py --quick                           # micro model, 2 slices (smoke run)
    python benchmarks/infer_ab.py --variants fp32,bf16,bf16-plain --slices 32 --rounds 15  # bf16 vs fp32

A variant is ``fp32`` (the deployed fp32 program), or ``bf16`` /
``bf16-plain``: the two programs of ``--precision bf16`` traced with / without
``Export.bf16_kernels``, run by ``PaddleInferenceBackend(precision="bf16")``. All are exported from the same
seeded weights with ``Arch.backbone.post_norm_init=one`` (with the default zero res-post-norm init every block
is the identity at init, and "same outputs" would not test the attention). ``--streams 1,2``
times, per variant, one predictor with all threads on one series (``1``) against N predictors with one thread
each working on N different series at once (``N``, :class:`StreamPool`);
s/slice = wall time / all slices done. Results: printed table and ``<workdir>/infer_ab.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import load_average, machine_info, machine_lines, save_json, set_threads, table  # noqa: E402


#: variants that are the bf16 deployment (value: Export.bf16_kernels) instead of the fp32 program; with
#: --model-dirs, any name starting with "bf16" runs with precision bf16
BF16_VARIANTS = {"bf16": True, "bf16-plain": False}


class StreamPool:
    """Throughput mode: ``streams`` Paddle Inference predictors (``predictor.clone()``: one copy of the weights)
    with ``threads_per_stream`` math threads each, predicting different series at the same time from Python
    threads. Latency per series is longer than one predictor with all
    threads; slices per second can be higher (docs/benchmarks.md, "CPU inference": measured, not
    better on this machine, so not in deploy/python/predict.py)."""

    def __init__(self, model_dir: str, streams: int = 2, threads_per_stream: int = 1, mkldnn: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        from ppihd.engine.backends import PaddleInferenceBackend

        first = PaddleInferenceBackend(model_dir, "cpu", threads_per_stream, mkldnn)
        self.backends: list = [first]
        for _ in range(max(1, int(streams)) - 1):
            b = object.__new__(PaddleInferenceBackend)
            b.__dict__.update(first.__dict__)
            b.predictor = first.predictor.clone()
            self.backends.append(b)
        self._pool = ThreadPoolExecutor(max_workers=len(self.backends))

    def predict_series_list(self, series):
        """Probabilities of every series, in order; series i runs on stream ``i % streams``."""
        n = len(self.backends)
        groups = [list(range(i, len(series), n)) for i in range(n)]

        def work(i: int):
            return [(j, self.backends[i].predict_series(series[j])) for j in groups[i]]

        out = [None] * len(series)
        for res in self._pool.map(work, range(n)):
            for j, p in res:
                out[j] = p
        return out

    def close(self) -> None:
        self._pool.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default="configs/swin_b_seq.yaml")
    p.add_argument("-o", "--override", action="append", default=[], help="config override for every variant")
    p.add_argument("--variants", default="fp32", help="variants to compare (comma list)")
    p.add_argument("--model-dirs", default="", help="NAME=DIR,... already exported models to compare instead "
                   "of exporting --variants (e.g. an earlier run's <workdir>/<variant>)")
    p.add_argument("--streams", default="1", help="comma list of stream counts (1 = one predictor, all threads)")
    p.add_argument("--slices", type=int, default=8, help="slices per series (default 8)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--peak-sizes", default="2048,4096", help="matmul sides of the peak (benchmarks/peak.py)")
    p.add_argument("--torch-python", default=None, help="an interpreter with torch for the peak (optional)")
    p.add_argument("--workdir", default="output/bench/infer_ab")
    p.add_argument("--quick", action="store_true", help="micro model, 2 slices, 2 rounds")
    a = p.parse_args(argv)
    # plain LayerNorm init: with the default zero res-post-norm init every block is the identity and the
    # outputs would not show a difference in attention
    a.override = ["Arch.backbone.post_norm_init=one"] + a.override
    threads = set_threads(a.threads or os.cpu_count() or 1)
    if a.quick:
        a.override = ["Arch.backbone.variant=micro"] + a.override
        a.slices, a.rounds, a.peak_sizes = min(a.slices, 2), min(a.rounds, 2), "256,512"

    import numpy as np
    import paddle

    from ppihd.arch import build_model
    from ppihd.arch.summary import backbone_macs
    from ppihd.engine.exporter import export_paddle, export_paddle_bf16
    from ppihd.engine.backends import PaddleInferenceBackend
    from ppihd.utils.config import load_config

    paddle.set_device("cpu")
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    streams = [int(s) for s in a.streams.split(",") if s.strip()]
    wd = os.path.abspath(a.workdir)
    size = gflop = None
    dirs = {}
    if a.model_dirs:
        dirs = dict(kv.split("=", 1) for kv in a.model_dirs.split(","))
        variants = list(dirs)
        cfg = load_config(a.config, a.override)
        size = int(cfg["Data"]["image_size"])
        model = build_model(cfg["Arch"])
        gflop = 2.0 * backbone_macs(model.backbone, size, size)["total"] / 1e9
        del model
    bad = [v for v in variants if v.startswith("bf16") and streams != [1]]
    if bad:
        p.error(f"--variants {bad} (bf16: two programs per model) run with --streams 1 only")
    for v in ([] if a.model_dirs else variants):
        cfg = load_config(a.config, a.override)
        size = int(cfg["Data"]["image_size"])
        paddle.seed(0)  # same weights for every variant
        model = build_model(cfg["Arch"])
        model.eval()
        gflop = 2.0 * backbone_macs(model.backbone, size, size)["total"] / 1e9
        dirs[v] = os.path.join(wd, v)
        t0 = time.time()
        if v in BF16_VARIANTS:
            export_paddle_bf16(model, dirs[v], size, bf16_kernels=BF16_VARIANTS[v])
        else:
            export_paddle(model, dirs[v], size)
        print(f"exported {v} in {time.time() - t0:.0f} s", flush=True)
        del model

    rng = np.random.default_rng(0)
    nmax = max(streams)
    one = rng.random((a.slices, 3, size, size), dtype=np.float32)
    series = [one.copy() for _ in range(nmax)]  # different arrays, same numbers: outputs comparable
    runners, outs = {}, {}
    for v in variants:
        for s in streams:
            if s == 1:
                be = PaddleInferenceBackend(dirs[v], "cpu", threads,
                                            precision="bf16" if v.startswith("bf16") else "fp32")
                runners[(v, s)] = (lambda be=be: [be.predict_series(series[0])])
            else:
                pool = StreamPool(dirs[v], s, threads_per_stream=max(1, threads // s))
                runners[(v, s)] = (lambda pool=pool, s=s: pool.predict_series_list(series[:s]))
            outs[(v, s)] = runners[(v, s)]()  # warm-up (oneDNN primitive creation)
    ref = outs[(variants[0], streams[0])][0]
    max_dp = {k: max(float(np.abs(p - ref).max()) for p in o)
              for k, o in outs.items()}  # streams: every series against the same input on the first path
    for k in outs:
        print(f"  {k}: max |dp| vs {variants[0]}/{streams[0]} = {max_dp[k]:.2e}", flush=True)

    from benchmarks.peak import PeakRunners

    peaks = PeakRunners(threads, [int(x) for x in a.peak_sizes.split(",")], torch_python=a.torch_python,
                        workdir=os.path.join(wd, "peak"))
    best = {k: float("inf") for k in runners}
    every = {k: [] for k in runners}
    per_round = []
    for r in range(a.rounds):
        row = {"round": r, "load": load_average()}
        peaks.round()
        row.update({f"peak_{dt}": round(b["gflops"], 1) for dt, b in peaks.best().items()})
        for k, run in runners.items():
            t = time.perf_counter()
            res = run()
            dt = (time.perf_counter() - t) / (a.slices * len(res))
            best[k] = min(best[k], dt)
            every[k].append(dt)
            row[f"{k[0]}/{k[1]}"] = round(dt, 4)
        per_round.append(row)
        print("  round", row, flush=True)
    peaks.close()
    peak_best = peaks.best()
    rows = []
    base = best[(variants[0], streams[0])]
    for (v, s), t in best.items():
        g = gflop / t
        ref = peak_best.get("bf16" if v.startswith("bf16") else "fp32", {}).get("gflops")
        rows.append({"variant": v, "streams": s, "s_per_slice": t, "gflops": g,
                     "pct_peak": 100 * g / ref if ref else None,
                     "x_first": base / t, "median_s_per_slice": float(np.median(every[(v, s)])),
                     "max_dp": max_dp[(v, s)]})
    print(f"\n{len(variants)} variant(s), {a.slices} slices of {size}², {threads} threads, {gflop:.2f} GFLOP/slice; "
          f"best of {a.rounds} interleaved rounds; load {per_round[0]['load']} -> {load_average()}")
    print(peaks.describe() + "  (measured in the same rounds)")
    print(table(rows, ["variant", "streams", "s_per_slice", "gflops", "pct_peak", "x_first", "median_s_per_slice",
                       "max_dp"],
                ["variant", "streams", "s/slice (best)", "GFLOP/s", "% peak (own precision, same rounds)",
                 f"x {variants[0]}/{streams[0]}", "median s/slice", "max |dp|"]))
    print("check the best against the median and the per-round lines: a lone round far below the others is a "
          "timing outlier, not a speed")
    save_json(os.path.join(wd, "infer_ab.json"), {"machine": info, "threads": threads, "peak": peaks.summary(),
                                                  "gflop_per_slice": gflop, "rounds": per_round, "rows": rows,
                                                  "args": vars(a)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
