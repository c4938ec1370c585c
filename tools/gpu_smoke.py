"""GPU smoke test: the first thing to run on a new GPU machine (about 10 minutes on one GPU with the defaults).

    python tools/gpu_smoke.py                      # on a GPU: configs/swin_b_seq.yaml at 224², 30-60-slice series
    python tools/gpu_smoke.py --allow-cpu          # CI: the same path on CPU at tiny scale (micro Swin, 32²)
    make gpu-smoke

Steps: synthetic phantom series (``ppihd.synthetic``, in memory) -> fp32 training steps through the Trainer
(slices/s, peak memory) -> fp16 / bf16 steps where the device supports them (``ppihd.utils.env.amp_support``,
otherwise the row says why) -> export (``ppihd.engine.exporter``) -> Paddle Inference predictions diffed against
the dygraph model. Prints one table. Exit status: 0 every step passed, 1 a step failed, 2 no GPU visible (without
``--allow-cpu``) or a bad command line. The 2-GPU recompute path is tested on CPU by tests/test_distributed.py.
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


def train_steps(cfg, data, steps: int, amp, out: str):
    """``steps`` Trainer iterations (one series each); returns (slices/s after the first step, peak MB, model)."""
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
    sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
    opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched, cfg["Global"]["grad_clip"])
    log = get_logger("ppihd.smoke", None)
    tr = Trainer(cfg, model, build_loss(cfg["Loss"], bool(cfg["Arch"]["deep_supervision"])), opt, sched, data, None,
                 logger=log)
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
    args = p.parse_args(argv)

    from ppihd.utils.env import setup_threads, visible_gpus

    setup_threads(2)
    import numpy as np
    import paddle

    from ppihd.utils.config import load_config
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
    cfg_path = args.config or os.path.join(ROOT, "configs", "swin_b_seq.yaml" if on_gpu else
                                           os.path.join("demo", "swin_micro_seq.yaml"))
    steps = args.steps or (20 if on_gpu else 2)
    n_series = args.series or (6 if on_gpu else 2)
    lo, hi = (int(v) for v in (args.slices or ("30-60" if on_gpu else "3-4")).split("-"))
    over = ["Global.device=" + device, "DataLoader.Train.batch_series=1", "DataLoader.Train.num_workers=0",
            "Arch.pretrained=null"]
    if not on_gpu:
        size = args.size or 32
        over += ["Arch.backbone.patch_size=4", "Arch.backbone.window_size=4", "Arch.backbone.stem=patch",
                 "Arch.backbone.stem_channels=null", "Global.num_threads=2"]
    else:
        size = args.size
    if size:
        over += [f"Data.image_size={size}"]
    cfg = load_config(cfg_path, over)
    size = int(cfg["Data"]["image_size"])
    rows, failed = [], False

    def row(step, status, detail):
        rows.append((step, status, detail))

    work = tempfile.mkdtemp(prefix="ppihd_gpu_smoke_")
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
    if model is not None:
        try:
            from ppihd.engine.exporter import export_model
            from ppihd.engine.backends import DygraphBackend, PaddleInferenceBackend

            t = time.time()
            export_model(model, cfg, os.path.join(work, "inference"))
            row("export", "ok", f"{os.path.join(work, 'inference')} ({time.time() - t:.1f} s)")
            x = data.items[0]["images"]
            ref = DygraphBackend(model).predict_series(x)
            got = PaddleInferenceBackend(os.path.join(work, "inference"), device="gpu" if on_gpu else "cpu",
                                         threads=2).predict_series(x)
            diff = float(np.abs(got - ref).max())
            tol = 1e-3 if on_gpu else 1e-4
            row("predict vs dygraph", "ok" if diff <= tol else "FAIL",
                f"Paddle Inference ({'GPU' if on_gpu else 'CPU'}) max |Δp| {diff:.2e} over {x.shape[0]} slices "
                f"(tolerance {tol:g})")
            failed |= diff > tol
        except Exception as e:  # noqa: BLE001
            row("export / predict", "FAIL", f"{type(e).__name__}: {e}")
            traceback.print_exc()
            failed = True
    else:
        row("export / predict", "FAIL", "no trained fp32 model")
        failed = True
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"{'step':<{w0}}  {'status':<{w1}}  detail")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}")
    print("gpu_smoke: " + ("FAILED" if failed else "all steps passed"))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
