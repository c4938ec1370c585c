"""GPU smoke test: the first thing to run on a new GPU machine (about 10 minutes on one GPU with the defaults).

    python tools/gpu_smoke.py                      # on a GPU: configs/swin_b_seq.yaml at 224², 30-60-slice series
    python tools/gpu_smoke.py --allow-cpu          # CI: the same path on CPU at tiny scale (micro Swin, 32²)
    make gpu-smoke

Steps: synthetic phantom series (``ppihd.synthetic``, in memory) -> fp32 training steps through the Trainer
(slices/s, peak memory) -> fp16 / bf16 steps where the device supports them (``ppihd.utils.env.amp_support``,
otherwise the row says why) -> a 2-rank launch with recompute (``python -m paddle.distributed.launch --devices 0,1``
running this script's ``--dp-worker``: DataParallel training steps with ``Arch.backbone.recompute=True``, when 2 GPUs
are visible; skipped with the reason on one GPU; with ``--allow-cpu`` on CPU as 2 gloo ranks, ``--nproc_per_node
2``) -> export (``ppihd.engine.exporter``) -> Paddle Inference predictions diffed against the dygraph model (on a
GPU also ``precision fp16`` and TensorRT, each skipped with the reason where the GPU or the build lacks it). Prints
one table. Exit status: 0 every step passed, 1 a step failed, 2 no GPU visible (without ``--allow-cpu``) or a bad
command line. ``--work-dir DIR`` keeps the files (the launcher's workerlogs in DIR/dp_log).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PhantomSeries:
    """``n`` synthetic series of ``slices_min..slices_max`` slices (windowed, resized to ``size``), in memory."""

    def __init__(self, n: int, size: int, slices_min: int, slices_max: int, seed: int = 0) -> None:
        import cv2
        import numpy as np

        from ppihd.synthetic import make_series
        from ppihd.data.transforms import apply_windows

        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            s = int(rng.integers(slices_min, slices_max + 1))
            ph = make_series(seed * 1000 + i, size=max(64, size), n_slices=s, hemorrhage=i % 2 == 0)
            ims, labs = [], []
            for k in range(s):
                r = ph.render(k)
                win = apply_windows(r.hu)
                ims.append(cv2.resize(win, (size, size), interpolation=cv2.INTER_AREA))
                labs.append(r.labels.astype("float32"))
            img = np.stack(ims).transpose(0, 3, 1, 2).astype("float32") / 255.0
            lab = np.stack(labs)
            self.items.append({"images": img, "labels": lab, "label_mask": np.ones_like(lab),
                               "series_id": f"phantom{i}"})

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i, rng=None):
        return dict(self.items[i])

    def __getitem__(self, i):
        return self.get(i)


def peak_memory_mb(device: str) -> float:
    import paddle

    if device.startswith("gpu"):
        return paddle.device.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def train_steps(cfg, data, steps: int, amp, out: str, rank: int = 0, world: int = 1):
    """``steps`` Trainer iterations (one series each per rank; ``world`` > 1: ``paddle.DataParallel`` over the
    launcher's ranks); returns (this rank's slices/s after the first step, peak MB, bare model, last loss)."""
    import paddle

    from ppihd.arch import build_model
    from ppihd.engine.trainer import Trainer
    from ppihd.loss import build_loss
    from ppihd.optimizer import build_lr_scheduler, build_optimizer
    from ppihd.utils.config import deep_merge
    from ppihd.utils.env import get_logger

    cfg = deep_merge(cfg, {"Global": {"iters": steps, "amp": amp, "output_dir": out, "log_interval": steps,
                                      "eval_interval": 0, "save_interval": 0, "progress_bar": False}})
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    if world > 1:
        model = paddle.DataParallel(model)
    sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
    opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched, cfg["Global"]["grad_clip"])
    log = get_logger("ppihd.smoke", None)
    tr = Trainer(cfg, model, build_loss(cfg["Loss"], bool(cfg["Arch"]["deep_supervision"])), opt, sched, data, None,
                 logger=log, rank=rank, world_size=world)
    tr.train_step(0, tr.batches.iterate(0))  # warm-up step, not timed (kernel selection, caches)
    s0 = sum(len(data.items[i]["images"]) for m in range(steps) for i in tr.batches.indices(m))
    if str(paddle.device.get_device()).startswith("gpu"):
        paddle.device.cuda.synchronize()
    t0 = time.time()
    hist = tr.train()
    if str(paddle.device.get_device()).startswith("gpu"):
        paddle.device.cuda.synchronize()
    dt = time.time() - t0
    loss = hist["train"][-1]["loss"] if hist["train"] else float("nan")
    return s0 / max(dt, 1e-9), peak_memory_mb(str(paddle.device.get_device())), tr.net, loss


def smoke_config(args, on_gpu: bool, device: str, extra=()):
    """The config of every step: ``args.config`` (default by device) at the smoke scale, and the data sizes."""
    from ppihd.utils.config import load_config

    cfg_path = args.config or os.path.join(ROOT, "configs", "swin_b_seq.yaml" if on_gpu else
                                           os.path.join("demo", "swin_micro_seq.yaml"))
    over = ["Global.device=" + device, "DataLoader.Train.batch_series=1", "DataLoader.Train.num_workers=0",
            "Arch.pretrained=null"]
    size = args.size
    if not on_gpu:
        size = size or 32
        over += ["Arch.backbone.patch_size=4", "Arch.backbone.window_size=4", "Arch.backbone.stem=patch",
                 "Arch.backbone.stem_channels=null", "Global.num_threads=2"]
    if size:
        over += [f"Data.image_size={size}"]
    cfg = load_config(cfg_path, over + list(extra))
    steps = args.steps or (20 if on_gpu else 2)
    n_series = args.series or (6 if on_gpu else 2)
    lo, hi = (int(v) for v in (args.slices or ("30-60" if on_gpu else "3-4")).split("-"))
    return cfg, steps, n_series, lo, hi


#: what the 2-rank step sets on top of the smoke config: Swin activation recompute (docs/benchmarks.md recommends
#: it for 16 GB cards; inside DataParallel it needs the non-reentrant recompute, issue 19) and 2 prefetch threads
#: (on a GPU they pin the batches on the rank's device: the threaded path of a real multi-GPU run)
DP_OVERRIDES = ("Arch.backbone.recompute=True", "DataLoader.Train.num_workers=2")


def dp_worker(args) -> int:
    """One rank of the 2-rank step (run by ``paddle.distributed.launch``): recompute on, DataParallel training
    steps on this rank's shard of the phantom series; writes ``<dp_worker>/rank<r>.json``."""
    import json

    import paddle
    import paddle.distributed as dist

    from ppihd.utils.env import set_device, visible_gpus

    on_gpu = visible_gpus() > 0
    device = set_device("gpu" if on_gpu else "cpu")   # gpu: the launcher's FLAGS_selected_gpus
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg, steps, n_series, lo, hi = smoke_config(args, on_gpu, device, DP_OVERRIDES)
    data = PhantomSeries(max(n_series, 2 * world), int(cfg["Data"]["image_size"]), lo, hi)
    sps, mem, _, loss = train_steps(cfg, data, steps, None, os.path.join(args.dp_worker, f"out{rank}"), rank, world)
    with open(os.path.join(args.dp_worker, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump({"rank": rank, "world": world, "device": device, "steps": steps, "slices_per_s": sps,
                   "peak_mb": mem, "loss": loss, "recompute": bool(cfg["Arch"]["backbone"]["recompute"]),
                   "num_workers": int(cfg["DataLoader"]["Train"]["num_workers"]),
                   "paddle": paddle.__version__}, f)
    return 0


def two_rank_launch(args, on_gpu: bool, work: str, timeout: float):
    """Run :func:`dp_worker` as 2 ranks under ``python -m paddle.distributed.launch`` (GPUs 0,1; on CPU with
    ``--allow-cpu`` 2 gloo ranks, ``--nproc_per_node 2``). Returns (status, detail)."""
    import json
    import subprocess

    out, logs = os.path.join(work, "dp"), os.path.join(work, "dp_log")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    if on_gpu:
        where = ["--devices", "0,1"]
    else:
        where = ["--nproc_per_node", "2"]
        env.pop("CUDA_VISIBLE_DEVICES", None)  # an empty value makes the launcher pick the GPU device type
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "paddle.distributed.launch"] + where + ["--log_dir", logs, os.path.abspath(__file__),
                                                                        "--dp-worker", out]
    for flag, val in (("--config", args.config), ("--steps", args.steps), ("--series", args.series),
                      ("--size", args.size), ("--slices", args.slices)):
        if val is not None:
            cmd += [flag, str(val)]
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    reports = [os.path.join(out, f"rank{r}.json") for r in (0, 1)]
    if proc.returncode != 0 or not all(os.path.isfile(r) for r in reports):
        tail = ""
        log0 = os.path.join(logs, "workerlog.0")
        if os.path.isfile(log0):
            with open(log0, encoding="utf-8", errors="replace") as f:
                tail = " | ".join(ln.strip() for ln in f.read().splitlines()[-3:])
        return "FAIL", f"launcher exit {proc.returncode}: {tail or proc.stderr[-300:]} (logs: {logs})"
    ranks = []
    for r in reports:
        with open(r, encoding="utf-8") as f:
            ranks.append(json.load(f))
    if sorted(x["rank"] for x in ranks) != [0, 1] or any(x["world"] != 2 for x in ranks):
        return "FAIL", f"expected ranks 0 and 1 of world size 2, got {[(x['rank'], x['world']) for x in ranks]}"
    what = "2 GPUs (--devices 0,1)" if on_gpu else "2 gloo CPU ranks (--nproc_per_node 2)"
    return "ok", (f"{what}, recompute on, {ranks[0]['num_workers']} prefetch threads, {ranks[0]['steps']} steps, {sum(x['slices_per_s'] for x in ranks):.1f} "
                  f"slices/s, peak memory {max(x['peak_mb'] for x in ranks):.0f} MB per rank, loss "
                  f"{ranks[0]['loss']:.4f} ({time.time() - t:.0f} s with start-up)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU when no GPU is visible (CI, tiny scale)")
    p.add_argument("-c", "--config", default=None, help="config (default: configs/swin_b_seq.yaml on a GPU, "
                                                        "configs/demo/swin_micro_seq.yaml with --allow-cpu on CPU)")
    p.add_argument("--steps", type=int, default=None, help="training steps per precision (GPU 20, CPU 2)")
    p.add_argument("--series", type=int, default=None, help="synthetic series (GPU 6, CPU 2)")
    p.add_argument("--size", type=int, default=None, help="image side (GPU: the config's, CPU 32)")
    p.add_argument("--slices", default=None, help="slices per series MIN-MAX (GPU 30-60, CPU 3-4)")
    p.add_argument("--work-dir", default=None, help="keep every step's files here (default: a temporary folder, "
                                                    "removed at the end)")
    p.add_argument("--dp-worker", default=None, help=argparse.SUPPRESS)  # one rank of the 2-rank step
    args = p.parse_args(argv)

    from ppihd.utils.env import setup_threads, visible_gpus

    if args.dp_worker:
        setup_threads(1)
        return dp_worker(args)
    setup_threads(2)
    import numpy as np
    import paddle

    from ppihd.utils.env import amp_support, set_device

    n_gpu = visible_gpus()
    if n_gpu == 0 and not args.allow_cpu:
        why = "this paddle build is CPU-only" if not paddle.device.is_compiled_with_cuda() else "no GPU is visible"
        print(f"gpu_smoke: {why} (paddle {paddle.__version__}, CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}): nothing to test here. "
              "Run on a GPU machine, or pass --allow-cpu for the CPU path.", file=sys.stderr)
        return 2
    on_gpu = n_gpu > 0
    device = set_device("gpu" if on_gpu else "cpu")
    cfg, steps, n_series, lo, hi = smoke_config(args, on_gpu, device)
    size = int(cfg["Data"]["image_size"])
    rows, failed = [], False

    def row(step, status, detail):
        rows.append((step, status, detail))

    work = os.path.abspath(args.work_dir) if args.work_dir else tempfile.mkdtemp(prefix="ppihd_gpu_smoke_")
    os.makedirs(work, exist_ok=True)
    name = paddle.device.cuda.get_device_name() if on_gpu else "CPU (--allow-cpu)"
    row("device", "ok", f"{device}: {name}; paddle {paddle.__version__}; {n_gpu} GPU(s) visible")
    model = None
    try:
        t = time.time()
        data = PhantomSeries(n_series, size, lo, hi)
        row("data", "ok", f"{n_series} phantom series, {lo}-{hi} slices, {size}² ({time.time() - t:.1f} s)")
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        row("data", "FAIL", f"{type(e).__name__}: {e}")
        data, failed = None, True
    if data is not None:
        for amp in (None, "fp16", "bf16"):
            label = f"train {amp or 'fp32'}"
            if amp:
                ok, why = amp_support(amp)
                if not ok:
                    row(label, "skipped", why.split(". ")[0])
                    continue
            try:
                sps, mem, net, loss = train_steps(cfg, data, steps, amp, os.path.join(work, amp or "fp32"))
                if not np.isfinite(loss):
                    raise FloatingPointError(f"loss {loss}")
                row(label, "ok", f"{steps} steps, {sps:.1f} slices/s, peak memory {mem:.0f} MB, loss {loss:.4f}")
                if amp is None:
                    model = net
            except Exception as e:  # noqa: BLE001
                row(label, "FAIL", f"{type(e).__name__}: {e}")
                traceback.print_exc()
                failed = True
    if on_gpu and n_gpu < 2:
        row("train 2-rank", "skipped", f"{n_gpu} GPU visible (CUDA_VISIBLE_DEVICES="
                                       f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}): the 2-GPU recompute launch "
                                       "needs 2")
    else:
        try:
            status, detail = two_rank_launch(args, on_gpu, work, 600 if on_gpu else 300)
        except Exception as e:  # noqa: BLE001 - a timeout too
            status, detail = "FAIL", f"{type(e).__name__}: {e}"
        row("train 2-rank", status, detail)
        failed |= status != "ok"
    if model is not None:
        failed |= predict_rows(model, cfg, data, work, on_gpu, row)
    else:
        row("export / predict", "FAIL", "no trained fp32 model")
        failed = True
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"{'step':<{w0}}  {'status':<{w1}}  detail")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}")
    print("gpu_smoke: " + ("FAILED" if failed else "all steps passed"))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def predict_rows(model, cfg, data, work: str, on_gpu: bool, row) -> bool:
    """Export, then Paddle Inference (fp32; on a GPU also fp16 and TensorRT where the GPU / the build has them)
    diffed against the dygraph fp32 model. Returns True when a step failed."""
    import numpy as np

    from ppihd.engine.backends import (DygraphBackend, PaddleInferenceBackend, check_gpu_fp16, find_model_files,
                                       trt_plan, trt_unavailable)
    from ppihd.engine.exporter import export_model
    from ppihd.utils.config import deep_merge

    d = os.path.join(work, "inference")
    try:
        t = time.time()
        export_model(model, cfg, d)
        row("export", "ok", f"{d} ({time.time() - t:.1f} s)")
        x = data.items[0]["images"]
        ref = DygraphBackend(model).predict_series(x)
    except Exception as e:  # noqa: BLE001
        row("export / predict", "FAIL", f"{type(e).__name__}: {e}")
        traceback.print_exc()
        return True

    def has_trt() -> None:
        why = trt_unavailable(find_model_files(d)[0])
        if why:
            raise RuntimeError(why)

    runs = [("predict vs dygraph", {}, None, 1e-3 if on_gpu else 1e-4)]
    if on_gpu:   # fp16 and TensorRT are GPU paths; on CPU they are refused (tests/test_gpu_infer.py)
        # one whole series through predict_series: no chunks, so no overlap to keep below the profile max
        plan = trt_plan(deep_merge(cfg["Infer"], {"trt": True, "trt_max_slices": x.shape[0], "chunk_overlap": 0}),
                        int(cfg["Data"]["image_size"]), d)
        runs += [("predict fp16", {"precision": "fp16"}, lambda: check_gpu_fp16(0), 0.02),
                 ("predict TensorRT", {"trt": plan}, has_trt, 1e-3)]
    failed = False
    for label, kw, available, tol in runs:
        try:
            if available is not None:
                available()
        except RuntimeError as e:   # the GPU or the paddle build lacks it: the row says why, not a failure
            row(label, "skipped", str(e).split(": install")[0])
            continue
        try:
            got = PaddleInferenceBackend(d, device="gpu" if on_gpu else "cpu", threads=2, **kw).predict_series(x)
        except Exception as e:  # noqa: BLE001
            row(label, "FAIL", f"{type(e).__name__}: {e}")
            traceback.print_exc()
            failed = True
            continue
        diff = float(np.abs(got - ref).max())
        row(label, "ok" if diff <= tol else "FAIL",
            f"Paddle Inference ({'GPU' if on_gpu else 'CPU'}{', ' + label.split()[-1] if kw else ''}) max |Δp| "
            f"{diff:.2e} over {x.shape[0]} slices (tolerance {tol:g})")
        failed |= diff > tol
    return failed


if __name__ == "__main__":
    sys.exit(main())
