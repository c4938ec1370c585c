#!/usr/bin/env python
"""``config.enable_memory_optim()`` on CPU: does it change the outputs, the time, the peak memory?

Paddle Inference's memory optimisation lets activation buffers whose lifetimes do not overlap share memory. It is
on for GPU runs of ``.pdmodel`` programs (``ppihd.engine.backends.PaddleInferenceBackend``, the MEMORY_OPTIM note
there); this measurement is why it is off on CPU. A PIR ``.json`` program (Paddle 3) cannot use it: the on-process
fails, and the script says so. One process per setting (peak RSS is per process), the same seeded inputs in
both, interleaved ``--rounds`` times:

    python benchmarks/memory_optim.py --model_dir /path/to/exported/micro/model --slices 1,7,32 --rounds 3

Prints, per slice count, max |Δp| between off and on (0 = bit-identical), the best time per series of each and the
peak RSS of each process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(model_dir: str, optim: bool, slices, reps: int, threads: int, out: str) -> None:
    from ppihd.utils.env import setup_threads

    setup_threads(threads)
    import numpy as np

    from ppihd.engine.backends import PaddleInferenceBackend
    from ppihd.engine.exporter import read_inference_yml

    size = int(read_inference_yml(model_dir)["Preprocess"]["image_size"])
    be = PaddleInferenceBackend(model_dir, "cpu", threads, memory_optim=optim)
    res = {}
    for s in slices:
        x = np.random.default_rng(s).random((s, 3, size, size), dtype=np.float32)
        p = be.predict_series(x)   # warm-up (oneDNN kernels per shape)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            p = be.predict_series(x)
            best = min(best, time.perf_counter() - t)
        res[str(s)] = {"probs": p.tolist(), "seconds": best}
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with open(out, "w", encoding="utf-8") as f:
        json.dump(res, f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--slices", default="1,7,32")
    ap.add_argument("--rounds", type=int, default=3, help="off/on process pairs, interleaved")
    ap.add_argument("--reps", type=int, default=3, help="timed series per slice count and process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--optim", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    slices = [int(s) for s in a.slices.split(",")]
    if a.worker:
        worker(a.model_dir, bool(a.optim), slices, a.reps, a.threads, a.worker)
        return 0
    import tempfile

    import numpy as np

    runs = {0: [], 1: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for optim in (0, 1):
                out = os.path.join(tmp, f"{r}_{optim}.json")
                p = subprocess.run([sys.executable, os.path.abspath(__file__), "--model_dir", a.model_dir, "--slices",
                                    a.slices, "--reps", str(a.reps), "--threads", str(a.threads), "--worker", out,
                                    "--optim", str(optim)], capture_output=True, text=True)
                if p.returncode != 0:
                    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
                    print(f"memory_optim={bool(optim)}: the worker failed: {lines[-1] if lines else p.returncode}")
                    return 1
                with open(out, encoding="utf-8") as f:
                    runs[optim].append(json.load(f))
    import paddle

    print(f"paddle {paddle.__version__}, {a.model_dir}, {a.threads} threads, {a.rounds} rounds x {a.reps} reps")
    print(f"{'slices':>6}  {'max |dp| off-on':>15}  {'s/series off':>12}  {'s/series on':>11}")
    for s in slices:
        dp = max(float(np.abs(np.array(x[str(s)]["probs"]) - np.array(y[str(s)]["probs"])).max())
                 for x in runs[0] for y in runs[1])
        t0, t1 = (min(x[str(s)]["seconds"] for x in runs[k]) for k in (0, 1))
        print(f"{s:>6}  {dp:>15.3e}  {t0:>12.4f}  {t1:>11.4f}")
    print(f"peak RSS MB: off {max(x['peak_rss_mb'] for x in runs[0]):.0f}, on "
          f"{max(x['peak_rss_mb'] for x in runs[1]):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
