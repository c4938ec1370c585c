#!/usr/bin/env python
"""PyTorch side of the benchmarks, run in a separate interpreter (a venv with torch, e.g. /work/torchvenv).

ppihd never depends on torch: ``benchmarks/peak.py`` and ``benchmarks/peer_torch.py`` start this script with
``--torch-python`` (or the current interpreter when it can import torch) and talk to it over stdin/stdout, so
the torch timings are interleaved with Paddle's in the same sitting. This file imports nothing of ppihd or
paddle (it must run where neither is installed).

Protocol: ``python _torch_worker.py --threads N --tasks JSON`` builds and warms up every task, prints one line
``READY {json}`` (versions, per-task setup seconds, per-task errors), then for every stdin line ``round`` runs each
ready task once and prints ``ROUND {json: task -> seconds}``; ``quit`` (or end of input) exits.

Tasks (JSON list of strings):
- ``mm:fp32:N`` / ``mm:bf16:N``: ``torch.matmul`` of two N x N tensors (bf16 = torch.bfloat16 tensors).
- ``swin:fp32:S`` / ``swin:bf16:S``: timm ``--timm-model`` (default ``swin_base_patch4_window7_224``; ``pretrained=False``, random init,
  no download; ``num_classes=0``: the backbone's pooled features, no head), eval, ``torch.inference_mode``, a
  batch of S random 224² images; bf16 = ``torch.autocast("cpu", torch.bfloat16)``.
- ``swin-compile:fp32:S`` / ``swin-compile:bf16:S``: the same through ``torch.compile`` (warm-up compiles;
  an error is reported per task, the others still run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def build(task: str, torch, timm_model: str = "swin_base_patch4_window7_224"):
    """A zero-argument callable running ``task`` once (returns after the result is computed)."""
    kind, dtype, arg = task.split(":")
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"task {task}: dtype must be fp32 or bf16")
    if kind == "mm":
        n = int(arg)
        dt = torch.float32 if dtype == "fp32" else torch.bfloat16
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)

        def run():
            with torch.inference_mode():
                torch.matmul(a, b)
        return run
    if kind in ("swin", "swin-compile"):
        import timm

        torch.manual_seed(0)
        model = timm.create_model(timm_model, pretrained=False, num_classes=0).eval()
        if kind == "swin-compile":
            model = torch.compile(model)
        x = torch.rand(int(arg), 3, 224, 224)

        def run():
            with torch.inference_mode():
                if dtype == "bf16":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        model(x)
                else:
                    model(x)
        return run
    raise ValueError(f"unknown task {task!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--tasks", required=True, help="JSON list of task names")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timm-model", default="swin_base_patch4_window7_224", help="timm model of the swin tasks")
    a = p.parse_args(argv)
    _set_threads(a.threads)
    try:
        import torch
    except ImportError as e:
        print("READY " + json.dumps({"error": f"torch not importable in {sys.executable}: {e}"}), flush=True)
        return 0
    torch.set_num_threads(a.threads)
    info = {"torch": torch.__version__, "python": sys.executable, "threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()), "setup_s": {}, "errors": {}}
    try:
        import timm
        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    runs = {}
    for task in json.loads(a.tasks):
        t0 = time.perf_counter()
        try:
            fn = build(task, torch, a.timm_model)
            for _ in range(a.warmup):
                fn()
            runs[task] = fn
        except Exception as e:  # one failed task (no timm, torch.compile without a compiler) never stops the rest
            info["errors"][task] = f"{type(e).__name__}: {e}"[-400:]
        info["setup_s"][task] = round(time.perf_counter() - t0, 2)
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        out = {}
        for task, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            out[task] = time.perf_counter() - t0
        print("ROUND " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
