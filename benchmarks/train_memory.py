#!/usr/bin/env python
"""Peak memory of one end-to-end training step (forward + backward + SGD-momentum step) with and without
recompute, measured as the peak RSS of a fresh CPU process, as the proxy for GPU memory.

    python benchmarks/train_memory.py             # Swin-B IHDNet, 224², S = 2, 4, 8 (and 16 with recompute)
    python benchmarks/train_memory.py --direct 60 # also measure the 60-slice recompute step directly
    python benchmarks/train_memory.py --quick     # micro model, 96², S = 2, 4 (smoke run)

Each (recompute, S) runs in its own process: build the model (``configs/swin_b_seq.yaml``, train mode), the
paper's optimizer (SGD momentum 0.9, coupled weight decay), record the RSS, then one step on a random
``[1, S, 3, 224, 224]`` series with the paper's loss (weighted BCE on both heads), and report ``ru_maxrss``.
Activation memory is linear in S (the sequence model is negligible), so a least-squares line through the
measured points gives the 60-slice value without needing a 60-slice step without recompute (which would
need more memory than this 24 GB machine has).

GPU estimate for a 60-slice step = weights + gradients + momentum (3 x 4 bytes x parameters) + activations
(the measured peak minus the RSS after building the model and the optimizer, minus gradients and momentum)
+ ``--gpu-overhead-gb`` (CUDA context, cuBLAS/cuDNN workspaces and allocator slack; 1.0 GB assumed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (current_rss_mb, emit, machine_info, machine_lines, run_child, save_json,  # noqa: E402
                                set_threads, table)

SCRIPT = os.path.abspath(__file__)


def child_step(config: str, overrides, slices: int, recompute: bool, threads: int) -> None:
    set_threads(threads)
    import numpy as np
    import paddle

    from ppihd.arch import build_model
    from ppihd.arch.summary import count_params
    from ppihd.loss import build_loss
    from ppihd.utils.config import load_config

    cfg = load_config(config, list(overrides) + [f"Arch.backbone.recompute={recompute}"])
    size = int(cfg["Data"]["image_size"])
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    model.train()
    oc = cfg["Optimizer"]
    opt = paddle.optimizer.Momentum(learning_rate=1e-3, momentum=oc["momentum"], parameters=model.parameters(),
                                    use_nesterov=oc["nesterov"], weight_decay=oc["weight_decay"])
    loss_fn = build_loss(cfg["Loss"], cfg["Arch"]["deep_supervision"])
    rss_model = current_rss_mb()
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.random((1, slices, 3, size, size), dtype=np.float32))
    y = paddle.to_tensor((rng.random((1, slices, 6)) < 0.2).astype("float32"))
    mask = paddle.ones([1, slices], dtype="bool")
    t0 = time.time()
    out = model(x, mask)
    loss = loss_fn(out, y, mask)["loss"]
    loss.backward()
    opt.step()
    opt.clear_grad()
    float(loss)
    emit({"slices": slices, "recompute": recompute, "rss_model_mb": round(rss_model, 1), "step_s": time.time() - t0,
          "params": count_params(model), "image_size": size, "threads": threads})


def fit_line(xs, ys):
    """Least-squares a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("-c", "--config", default="configs/swin_b_seq.yaml")
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("--slices", default="2,4,8", help="S values without recompute (default 2,4,8)")
    p.add_argument("--slices-recompute", default="2,4,8,16", help="S values with recompute (default 2,4,8,16)")
    p.add_argument("--direct", type=int, default=0, help="also run this S directly with recompute (e.g. 60)")
    p.add_argument("--target", type=int, default=60, help="series length to estimate (default 60)")
    p.add_argument("--gpu-overhead-gb", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="output/bench")
    p.add_argument("--quick", action="store_true", help="micro model at 96², S = 2, 4")
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args(argv)
    if a.child is not None:
        cfgp, ov, s, rc, th = a.child[0], json.loads(a.child[1]), int(a.child[2]), a.child[3] == "1", int(a.child[4])
        child_step(cfgp, ov, s, rc, th)
        return 0
    threads = a.threads or os.cpu_count() or 1
    if a.quick:
        a.override = ["Arch.backbone.variant=micro", "Data.image_size=96"] + a.override
        a.slices, a.slices_recompute, a.direct, a.timeout = "2,4", "2,4", 0, min(a.timeout, 300)
    info = machine_info()
    print("\n".join(machine_lines(info)), flush=True)
    runs = [(False, int(s)) for s in a.slices.split(",") if s] + [(True, int(s)) for s in a.slices_recompute.split(",") if s]
    if a.direct:
        runs.append((True, a.direct))
    rows = []
    for rc, s in runs:
        r = run_child(SCRIPT, [a.config, json.dumps(a.override), s, int(rc), threads], timeout=a.timeout)
        r.update(recompute=rc, slices=s)
        if "peak_rss_mb" in r and "rss_model_mb" in r:
            r["step_mem_mb"] = r["peak_rss_mb"] - r["rss_model_mb"]
        rows.append(r)
        print(f"  recompute={rc} S={s}: " + (r.get("error") or f"peak {r['peak_rss_mb']:.0f} MB, "
              f"after build {r['rss_model_mb']:.0f} MB, step {r['step_s']:.1f} s (load {r['load_avg_1m']})"),
              flush=True)
    print(table(rows, ["recompute", "slices", "peak_rss_mb", "rss_model_mb", "step_mem_mb", "step_s", "load_avg_1m"],
                ["recompute", "S", "peak RSS MB", "RSS after build MB", "step MB", "step s", "load"]))
    est = []
    for rc in (False, True):
        pts = [(r["slices"], r["step_mem_mb"]) for r in rows if r["recompute"] == rc and "step_mem_mb" in r
               and r["slices"] != a.direct]
        if len(pts) < 2:
            continue
        params = next(r["params"] for r in rows if "params" in r)
        a0, b = fit_line([x for x, _ in pts], [y for _, y in pts])
        state_gb = 3 * 4 * params / 2 ** 30  # weights + grads + momentum
        grads_mom_mb = 2 * 4 * params / 2 ** 20
        act_mb = a0 + b * a.target - grads_mom_mb
        gpu_gb = state_gb + act_mb / 1024 + a.gpu_overhead_gb
        est.append({"recompute": rc, "mb_per_slice": b, "intercept_mb": a0, "target": a.target,
                    "activations_gb": act_mb / 1024, "state_gb": state_gb, "gpu_estimate_gb": gpu_gb,
                    "fits_16gb": gpu_gb <= 16.0, "fits_24gb": gpu_gb <= 24.0})
    if est:
        print(f"\nestimate for a {a.target}-slice step (weights+grads+momentum + activations + "
              f"{a.gpu_overhead_gb} GB CUDA overhead):")
        print(table(est, ["recompute", "mb_per_slice", "activations_gb", "state_gb", "gpu_estimate_gb", "fits_16gb",
                          "fits_24gb"], ["recompute", "MB per slice", f"activations {a.target} GB", "state GB",
                                         "GPU estimate GB", "fits 16 GB", "fits 24 GB"]))
    out = save_json(os.path.join(a.workdir, "train_memory.json"),
                    {"machine": info, "rows": rows, "estimate": est, "args": vars(a)})
    print(f"results: {out}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
