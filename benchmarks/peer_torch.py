#!/usr/bin/env python
"""ppihd's deployed Swin-B against the peer a user would pick: timm's Swin-B in PyTorch, in one sitting.

    python benchmarks/peer_torch.py --torch-python /work/torchvenv/bin/python            # 32 slices, 7 rounds
    python benchmarks/peer_torch.py --torch-python /work/torchvenv/bin/python --compile  # + torch.compile
    python benchmarks/peer_torch.py --quick --torch-python ...                           # micro / swin_tiny, 2 slices

torch is never a dependency of ppihd: the torch side runs in ``--torch-python`` (an interpreter of a separate
venv, e.g. ``python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch timm``) through
``benchmarks/_torch_worker.py`` over a pipe; without ``--torch-python`` this interpreter is used if it can import
torch. When no interpreter with torch is at hand the script says so and exits 0 without measuring.

What is compared, on the same input shape (S random 224² slices, float32 in [0, 1]), 2 threads each (``--threads``):
- **ppihd fp32 / bf16**: the deployed programs (``deploy/python/predict.py`` default and ``--precision bf16``)
  of a seeded random-init Swin-B IHDNet (``configs/swin_b_seq.yaml``, ``Arch.backbone.post_norm_init=one``),
  exported with the package's exporter (``export_paddle`` / ``export_paddle_bf16``), run by
  ``PaddleInferenceBackend`` on one ``[1, S, 3, 224, 224]`` series: backbone + the 2-layer sequence
  transformer + both heads + sigmoid. The sequence model and heads are 0.06 % of the MACs
  (docs/benchmarks.md, "Scaling"), so this is the backbone's work plus a hair: ppihd does slightly *more*.
- **timm fp32 / bf16**: ``timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=0)``
  (random init, no download; the pooled backbone features, no classifier), eval, ``torch.inference_mode``, a
  batch of S images; bf16 = ``torch.autocast("cpu", dtype=torch.bfloat16)``; ``--compile``: the same through
  ``torch.compile`` in a second worker (its compile has ``--compile-timeout``; a failure is reported, the
  rest still runs).

Every path is warmed up, then the paths run in turn for ``--rounds`` rounds (interleaved: a slow moment of the
shared machine hits all of them); per path the median s/slice; ratio = timm median / ppihd median of the same
precision, and the median of the per-round ratios. Results: printed table and ``<workdir>/peer_torch.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (load_average, machine_info, machine_lines, median, save_json,  # noqa: E402
                                set_threads, table)
from benchmarks.peak import TorchWorker, cpu_has_bf16, default_torch_python  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", default=None, help="interpreter with torch + timm (default: this one if it has torch)")
    p.add_argument("-c", "--config", default="configs/swin_b_seq.yaml")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also torch.compile (fp32 and bf16)")
    p.add_argument("--compile-timeout", type=float, default=1200, help="seconds for torch.compile's warm-up")
    p.add_argument("--workdir", default="output/bench/peer_torch")
    p.add_argument("--quick", action="store_true", help="ppihd micro vs timm swin_tiny, 2 slices, 2 rounds (smoke run)")
    a = p.parse_args(argv)
    torch_python = a.torch_python or default_torch_python()
    if not torch_python:
        print("peer_torch: torch is not importable in this interpreter and no --torch-python was given: the PyTorch "
              "peer is not measured (torch is never a dependency of ppihd; install it in a separate venv, e.g. "
              "python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch timm, and pass "
              "--torch-python /work/torchvenv/bin/python)")
        return 0
    threads = set_threads(a.threads)  # before paddle is imported
    overrides = ["Arch.backbone.post_norm_init=one"]
    timm_model = "swin_base_patch4_window7_224"
    if a.quick:
        overrides.append("Arch.backbone.variant=micro")
        a.slices, a.rounds, timm_model = min(a.slices, 2), min(a.rounds, 2), "swin_tiny_patch4_window7_224"
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    bf16 = cpu_has_bf16(info)
    precisions = ["fp32"] + (["bf16"] if bf16 else [])
    if not bf16:
        print("this CPU has no avx512_bf16 / amx_bf16: fp32 only", flush=True)

    # torch first (it only needs the interpreter): say so early if it is not usable
    tasks = [f"swin:{pr}:{a.slices}" for pr in precisions]
    t0 = time.time()
    eager = TorchWorker(torch_python, threads, tasks, extra_args=["--timm-model", timm_model])
    if not eager.ok:
        print(f"peer_torch: the PyTorch side cannot run ({eager.info.get('error')}); nothing measured", flush=True)
        return 0
    print(f"torch {eager.info.get('torch')}, timm {eager.info.get('timm')} ({torch_python}, "
          f"{eager.info.get('threads')} threads): {timm_model} ready in {time.time() - t0:.0f} s; "
          f"errors: {eager.info.get('errors') or 'none'}", flush=True)
    workers, compile_info = [eager], None
    if a.compile:
        t0 = time.time()
        comp = TorchWorker(torch_python, threads, [f"swin-compile:{pr}:{a.slices}" for pr in precisions],
                           timeout=a.compile_timeout, extra_args=["--timm-model", timm_model])
        print(f"torch.compile worker: {'ready' if comp.ok else comp.info.get('error')} in {time.time() - t0:.0f} s; "
              f"errors: {comp.info.get('errors') or 'none'}", flush=True)
        compile_info = comp.info
        if comp.ok:
            workers.append(comp)

    import numpy as np
    import paddle

    from ppihd.arch import build_model
    from ppihd.engine.exporter import export_paddle, export_paddle_bf16
    from ppihd.engine.backends import PaddleInferenceBackend
    from ppihd.utils.config import load_config

    paddle.set_device("cpu")
    cfg = load_config(a.config, overrides)
    size = int(cfg["Data"]["image_size"])
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    model.eval()
    wd = os.path.abspath(a.workdir)
    t0 = time.time()
    export_paddle(model, os.path.join(wd, "model"), size)
    if bf16:
        export_paddle_bf16(model, os.path.join(wd, "model"), size)
    print(f"exported ppihd {cfg['Arch']['backbone']['variant']} IHDNet in {time.time() - t0:.0f} s", flush=True)
    del model
    x = np.random.default_rng(0).random((a.slices, 3, size, size), dtype=np.float32)
    ppihd = {}
    for pr in precisions:
        be = PaddleInferenceBackend(os.path.join(wd, "model"), "cpu", threads, precision=pr)
        be.predict_series(x)  # warm-up (oneDNN primitive creation)
        ppihd[f"ppihd:{pr}"] = be

    times = {}
    uptime = [load_average()]
    for r in range(a.rounds):
        row = {}
        for name, be in ppihd.items():
            t = time.perf_counter()
            be.predict_series(x)
            row[name] = (time.perf_counter() - t) / a.slices
        for w in workers:
            for task, s in w.round().items():
                kind, pr, _ = task.split(":")
                row[f"timm{'-compile' if kind == 'swin-compile' else ''}:{pr}"] = s / a.slices
        for k, v in row.items():
            times.setdefault(k, []).append(v)
        print(f"  round {r + 1}/{a.rounds} (load {load_average()}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    uptime.append(load_average())
    for w in workers:
        w.close()

    rows = []
    for name, ts in times.items():
        pr = name.split(":")[1]
        ref = times.get(f"ppihd:{pr}")
        r = {"path": name, "precision": pr, "median_s_per_slice": median(ts), "best_s_per_slice": min(ts),
             "rounds": len(ts)}
        if ref and not name.startswith("ppihd"):
            n = min(len(ts), len(ref))
            r["x_ppihd"] = median(ts) / median(ref)  # > 1: ppihd is faster
            r["x_ppihd_per_round"] = median([ts[i] / ref[i] for i in range(n)])
        rows.append(r)
    print(f"\n{a.slices} slices of {size}², {threads} threads, {a.rounds} interleaved rounds, load {uptime[0]} -> "
          f"{uptime[1]}; CPU flags: {' '.join(info['flags'])}")
    print("ppihd = the deployed programs (backbone + sequence model + heads, 0.06 % more MACs); timm = "
          f"{timm_model} backbone (num_classes=0), PyTorch eager / torch.compile; x ppihd = timm / ppihd (> 1: ppihd faster)")
    print(table(rows, ["path", "median_s_per_slice", "best_s_per_slice", "x_ppihd", "x_ppihd_per_round"],
                ["path", "median s/slice", "best s/slice", "x ppihd (medians)", "x ppihd (median per-round ratio)"]))
    save_json(os.path.join(wd, "peer_torch.json"),
              {"machine": info, "threads": threads, "torch": eager.info, "torch_compile": compile_info, "timm_model": timm_model, "rows": rows,
               "times": times, "load": uptime, "args": vars(a)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
