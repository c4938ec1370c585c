"""GPU readiness checked on CPU (issue 19): device errors, AMP capability rules, the fp16 scaler's bad-step
budget and checkpointed state, host syncs per training step. The device queries are simulated (monkeypatch)."""
import logging
import os
import re

import numpy as np
import paddle
import pytest

from gpu_utils import DEMO_CFG
from infer_utils import infer_args, load_tool, save_tiny_checkpoint
from ppihd.utils import env


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n, cuda=True)``: paddle reports a CUDA build (or not) with ``n`` visible GPUs; ``paddle.set_device``
    with a GPU fails the test (on a real CUDA build without a GPU it ends the process with status 255)."""
    def setup(n, cuda=True):
        monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: cuda)
        monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: n)
        real = paddle.set_device

        def guarded(d):
            assert not str(d).startswith("gpu"), f"paddle.set_device({d!r}) reached"
            return real(d)
        monkeypatch.setattr(paddle, "set_device", guarded)
    monkeypatch.delenv("FLAGS_selected_gpus", raising=False)
    return setup


def test_resolve_device_rules(fake_gpus, monkeypatch):
    fake_gpus(0, cuda=False)
    with pytest.raises(env.DeviceError, match=r"^Global\.device=gpu but this paddle build \(.*\) is CPU-only \(no CUDA\): "
                                             r"install paddlepaddle-gpu"):
        env.resolve_device("gpu")
    assert env.resolve_device("auto") == "cpu" and env.resolve_device("CPU") == "cpu"
    fake_gpus(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(env.DeviceError, match="no GPU is visible.*CUDA_VISIBLE_DEVICES=''"):
        env.resolve_device("gpu:0")
    assert env.resolve_device("auto") == "cpu"
    fake_gpus(2)
    assert env.resolve_device("gpu") == "gpu:0" and env.resolve_device("auto") == "gpu:0"
    assert env.resolve_device("gpu:1") == "gpu:1"
    with pytest.raises(env.DeviceError, match=r"GPU index 2 does not exist, 2 GPU\(s\) visible \(gpu:0 .. gpu:1"):
        env.resolve_device("gpu:2")
    monkeypatch.setenv("FLAGS_selected_gpus", "1")  # set per rank by paddle.distributed.launch
    assert env.resolve_device("gpu") == "gpu:1"
    for bad in ("cuda", "gpu:x", "npu:0"):
        with pytest.raises(env.DeviceError, match=rf"^Global\.device={re.escape(repr(bad))}: expected cpu \| gpu \| gpu:N "
                                                  r"\| auto$"):
            env.resolve_device(bad)


class _Grab(logging.Handler):
    def __init__(self):
        super().__init__()
        self.text = []

    def emit(self, record):
        self.text.append(record.getMessage())


@pytest.mark.parametrize("tool,n,cuda,expect", [
    ("tools/train.py", 0, True, "no GPU is visible"),
    ("tools/eval.py", 1, True, "GPU index 3 does not exist, 1 GPU"),
    ("tools/train.py", 0, False, "CPU-only"),
])
def test_tools_exit_2_with_the_device_message(tmp_path, fake_gpus, tool, n, cuda, expect, ppihd_log):
    fake_gpus(n, cuda)
    dev = "gpu:3" if "index" in expect else "gpu"
    rc = load_tool(tool).main(["-c", DEMO_CFG, "-o", f"Global.device={dev}", "-o",
                               f"Global.output_dir={tmp_path}", "-o", f"Global.pretrained_model={tmp_path}/m"])
    assert rc == 2
    assert any(expect in t and "Global.device" in t for t in ppihd_log.messages), ppihd_log.messages


def test_infer_device_auto_runs_on_cpu(tmp_path, fixture_series_dir, fake_gpus):
    fake_gpus(0)  # a CUDA build that sees no GPU: auto is the CPU
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    files = [os.path.join(fixture_series_dir, n) for n in ("01.dcm", "02.dcm", "03.dcm")]
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--device", "auto", "--input", *files, "--output",
                                                              str(tmp_path / "o"), "-o", "Infer.save_plots=False"])
    assert rc == 0 and os.path.isfile(tmp_path / "o" / "predictions.csv")
    assert str(paddle.device.get_device()) == "cpu"


# ------------------------------------------------------------------------------------------------ AMP
@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu(name, (major, minor), cuda="12.0")``: paddle reports that GPU as the current device."""
    def setup(name, cap, cuda="12.0"):
        monkeypatch.setattr(paddle.device, "get_device", lambda: "gpu:0")
        monkeypatch.setattr(paddle, "is_compiled_with_rocm", lambda: False)
        monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda *a: cap)
        monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda *a: name)
        monkeypatch.setattr(paddle.version, "cuda", lambda: cuda)
    return setup


def test_amp_support_follows_paddles_rule(fake_gpu):
    # Paddle: fp16 needs compute capability >= 7.0; bf16 >= 8.0 and CUDA >= 11 (paddle/amp/auto_cast.py)
    fake_gpu("Tesla P40", (6, 1))
    for amp in ("fp16", "bf16"):
        ok, why = env.amp_support(amp)
        assert not ok and "Tesla P40" in why and "6.1" in why and "supports no AMP" in why and "amp=null" in why
    fake_gpu("Tesla V100-SXM2-16GB", (7, 0))
    assert env.amp_support("fp16")[0]
    ok, why = env.amp_support("bf16")
    assert not ok and "V100" in why and "supports fp16" in why and "-o Global.amp=fp16" in why
    fake_gpu("NVIDIA A100-SXM4-40GB", (8, 0))
    assert env.amp_support("fp16")[0] and env.amp_support("bf16")[0]
    fake_gpu("NVIDIA A100-SXM4-40GB", (8, 0), cuda="10.2")
    assert not env.amp_support("bf16")[0] and env.amp_support("fp16")[0]


def test_amp_refused_on_an_old_gpu_before_training(tmp_path, fake_gpu):
    from test_trainer import ToyDataset, build, make_cfg

    fake_gpu("Tesla P40", (6, 1))
    with pytest.raises(ValueError, match=r"^Global\.amp=fp16 is not supported by Tesla P40 on .* \(compute capability 6\.1"
                                        r".*fp16 needs compute capability >= 7\.0 .*use -o Global\.amp=null \(fp32\)$"):
        build(make_cfg(str(tmp_path), **{"Global.amp": "fp16"}), ToyDataset(4, 0), None)


class FakeScaler:
    """The GradScaler interface the trainer uses, on CPU (Paddle's scaler is disabled there): skips a step whose
    gradients are not finite, halves the scale on a skip, doubles it every 3 good steps; a state dict like
    Paddle's (``scale`` as a numpy array)."""

    def __init__(self, scale=1024.0):
        self.loss_scale, self.good, self.skipped = float(scale), 0, 0
        self._found_inf = paddle.to_tensor(False)

    def scale(self, loss):
        return loss  # unscaled: the numbers of a plain fp32 run

    def step(self, opt):
        bad = any(not np.isfinite(p.grad.numpy()).all() for p in opt._parameter_list if p.grad is not None)
        self._found_inf = paddle.to_tensor(bad)
        if bad:
            self.skipped += 1
        else:
            opt.step()

    def update(self):
        if bool(self._found_inf.numpy()):
            self.loss_scale, self.good = self.loss_scale / 2, 0
        else:
            self.good += 1
            if self.good == 3:
                self.loss_scale, self.good = self.loss_scale * 2, 0

    def state_dict(self):
        return {"scale": np.array([self.loss_scale], np.float32), "incr_count": self.good}

    def load_state_dict(self, st):
        self.loss_scale, self.good = float(st["scale"][0]), int(st["incr_count"])


def _nan_on(loss_fn, calls):
    """The loss, times NaN on the given (0-based) calls: those steps' gradients are not finite."""
    n = [0]

    def f(*a, **kw):
        out = loss_fn(*a, **kw)
        if n[0] in calls:
            out = {k: v * float("nan") for k, v in out.items()}
        n[0] += 1
        return out
    return f


def _fp16_trainer(tmp, iters, bad_calls=(), max_bad=3, scale=1024.0):
    from test_trainer import ToyDataset, build, make_cfg

    cfg = make_cfg(tmp, iters=iters, **{"Global.amp_max_bad_steps": max_bad, "Global.eval_interval": 0,
                                        "Global.save_interval": 0})
    tr = build(cfg, ToyDataset(10, 0), None)
    tr.scaler = FakeScaler(scale)
    tr.loss_fn = _nan_on(tr.loss_fn, set(bad_calls))
    return tr


def test_fp16_skips_bad_steps_and_stops_only_after_n_in_a_row(tmp_path):
    grab = _Grab()
    tr = _fp16_trainer(str(tmp_path / "a"), 8, bad_calls=(1, 2, 5), max_bad=3)  # runs of 2 and 1: < 3
    tr.log.addHandler(grab)
    hist = tr.train()
    assert tr.scaler.skipped == 3
    assert all(np.isfinite(r["loss"]) for r in hist["train"])  # skipped steps are not averaged in
    assert all(np.isfinite(p.numpy()).all() for p in tr.net.parameters())
    # log windows of 2 iterations: calls 1 | 2 | 5 fall in windows 0-1, 2-3, 4-5; the run 1-2 spans two windows
    warn = [t for t in grab.text if "skipped" in t]
    assert [t.split(":")[0] for t in warn] == ["iterations 0-1", "iterations 2-3", "iterations 4-5"]
    assert all("skipped 1 step(s)" in t for t in warn) and "longest run 2" in warn[1] and "longest run 1" in warn[2]
    tr = _fp16_trainer(str(tmp_path / "b"), 8, bad_calls=(2, 3, 4), max_bad=3)
    with pytest.raises(FloatingPointError, match="3 fp16 steps in a row.*amp_max_bad_steps=3"):
        tr.train()
    # fp32: a non-finite loss still stops the run (at the log line, before anything is saved)
    from test_trainer import ToyDataset, build, make_cfg
    tr = build(make_cfg(str(tmp_path / "c"), iters=4), ToyDataset(10, 0), None)
    tr.loss_fn = _nan_on(tr.loss_fn, {2})
    with pytest.raises(FloatingPointError, match="iterations 2-3: loss is not finite"):
        tr.train()


def test_scaler_state_is_checkpointed_and_resume_is_exact(tmp_path):
    from test_trainer import params

    a = _fp16_trainer(str(tmp_path / "a"), 10, bad_calls=(3,), max_bad=5)
    a.train()
    # by hand: 1024, good 0,1,2 -> 2048 at 3 good; call 3 bad -> 1024, then 6 good -> 4096
    assert a.scaler.loss_scale == 4096.0 and a.scaler.good == 0
    b = _fp16_trainer(str(tmp_path / "b"), 10, bad_calls=(3,), max_bad=5)
    b.train(until=5)
    assert (b.scaler.loss_scale, b.scaler.good) == (1024.0, 1)  # 2048 after 3 good, halved at call 3, 1 good since
    c = _fp16_trainer(str(tmp_path / "b"), 10, bad_calls=(), max_bad=5, scale=1.0)  # a fresh scaler
    c.resume(str(tmp_path / "b" / "latest"))
    assert (c.scaler.loss_scale, c.scaler.good) == (1024.0, 1)
    c.train()
    assert (c.scaler.loss_scale, c.scaler.good) == (a.scaler.loss_scale, a.scaler.good)
    pa, pc = params(a.net), params(c.net)
    for k in pa:
        np.testing.assert_allclose(pc[k], pa[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ------------------------------------------------------------------------------------------------ host syncs
SYNC_POINTS = [(paddle.Tensor, n, "read") for n in ("item", "numpy", "__float__", "__int__", "__bool__", "tolist")]
SYNC_POINTS += [(paddle, "nonzero", "read"), (paddle, "masked_select", "read"), (paddle, "to_tensor", "h2d")]


def _micro_trainer(tmp, **over):
    from gpu_utils import FixedSeries, micro_cfg
    from ppihd.arch import build_model
    from ppihd.engine.trainer import Trainer
    from ppihd.loss import build_loss
    from ppihd.optimizer import build_lr_scheduler, build_optimizer

    cfg = micro_cfg(tmp, iters=4, recompute=False, **over)
    paddle.seed(0)
    net = build_model(cfg["Arch"])
    sched = build_lr_scheduler(cfg["Optimizer"], 4)
    opt = build_optimizer(cfg["Optimizer"], net.parameters(), sched)
    return Trainer(cfg, net, build_loss(cfg["Loss"], True), opt, sched, FixedSeries(8, 0), None)


def test_host_syncs_per_training_step(tmp_path, monkeypatch):
    """Device -> host reads per optimizer step: 0 (before issue 19: 3 ``.item()`` per micro-batch + the model's
    ``nonzero``); host -> device copies: the batch's 4 arrays (images, mask, labels, label_mask) per micro-batch
    (before: + 2 class-weight tensors). One read per log line. Real micro IHDNet, SW + DW + deep supervision.

    Counted through ``Trainer.train``: the calls inside each ``train_step`` and those between two steps (the
    window accounting, and at iteration 2 the log line)."""
    tr = _micro_trainer(str(tmp_path), **{"Loss.dynamic_weight": True, "Global.grad_accum": 2,
                                          "Global.log_interval": 2})
    counts = {}
    for owner, name, kind in SYNC_POINTS:
        real = getattr(owner, name)

        def spy(*a, _real=real, _key=f"{kind}:{name}", **k):
            counts[_key] = counts.get(_key, 0) + 1
            return _real(*a, **k)
        monkeypatch.setattr(owner, name, spy)
    inside, between = {}, {}
    real_step = tr.train_step

    def step(it, stream):
        if it > 0:
            between[it] = dict(counts)  # since the end of step it - 1
        counts.clear()
        terms = real_step(it, stream)
        inside[it] = dict(counts)
        counts.clear()
        return terms
    monkeypatch.setattr(tr, "train_step", step)
    hist = tr.train(until=3)
    # step 0 builds the cached constants (class weights, masks); later steps copy only the batches
    assert inside[1] == inside[2] == {"h2d:to_tensor": 2 * 4}, inside
    assert between == {1: {}, 2: {"read:numpy": 1}}, between  # after iteration 2 (log_interval 2): one read
    assert [r["iter"] for r in hist["train"]] == [2] and {"loss", "l1", "l2"} <= set(hist["train"][0])


def test_no_model_mask_when_nothing_is_padded(tmp_path):
    """The trainer passes mask=None when every slot is a real slice (no nonzero()); same outputs as the full mask."""
    from gpu_utils import micro_cfg
    from ppihd.arch import build_model

    paddle.seed(1)
    net = build_model(micro_cfg(str(tmp_path))["Arch"])
    net.train()  # dropout / drop-path are 0 in micro_cfg
    x = paddle.to_tensor(np.random.default_rng(0).random((2, 3, 3, 32, 32), dtype=np.float32))
    a = net(x, paddle.ones([2, 3], dtype="bool"))
    b = net(x, None)
    for k in ("logits", "aux_logits"):
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ sampler
def test_sampler_batches_are_thread_safe(tmp_path):
    """4 threads asking for micro-batches of several epochs in a scrambled order get exactly what one thread asking
    in order gets (the epoch switch and the cached batch list change together)."""
    import sys
    import threading

    from ppihd.engine.trainer import SeriesBatches

    class Ds:
        def __len__(self):
            return 11

        def get(self, i, rng):
            return i

    ref = SeriesBatches(Ds(), batch_series=2, seed=5, rank=0, world_size=2)
    n = len(ref) * 6  # 6 epochs
    want = [ref.indices(m) for m in range(n)]
    assert want[0] != want[len(ref)]  # epochs really differ
    shared = SeriesBatches(Ds(), batch_series=2, seed=5, rank=0, world_size=2)
    order = np.random.default_rng(0).permutation(np.tile(np.arange(n), 40))
    got, errs = {}, []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def work(part):
            try:
                for m in part:
                    got.setdefault(int(m), []).append(shared.indices(int(m)))
            except Exception as e:  # pragma: no cover - reported below
                errs.append(e)
        ts = [threading.Thread(target=work, args=(order[i::4],)) for i in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    finally:
        sys.setswitchinterval(old)
    assert not errs
    bad = [m for m, seen in got.items() if any(s != want[m] for s in seen)]
    assert not bad, f"{len(bad)} micro-batches got another epoch's indices"


# ------------------------------------------------------------------------------------------------ smoke script
@pytest.mark.slow
def test_gpu_smoke_cpu_path(tmp_path):
    """tools/gpu_smoke.py: exit 2 without a GPU; --allow-cpu runs every step on CPU and passes, the 2-rank step as
    2 gloo CPU ranks under paddle.distributed.launch (one workerlog and one report of world size 2 per rank, with
    recompute on and 2 prefetch threads)."""
    import json
    import subprocess
    import sys

    from gpu_utils import ROOT

    tool = os.path.join(ROOT, "tools", "gpu_smoke.py")
    r = subprocess.run([sys.executable, tool], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--allow-cpu" in r.stderr
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, tool, "--allow-cpu", "--work-dir", str(work)], capture_output=True, text=True,
                       timeout=420)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    status = {ln.split()[0] + (" " + ln.split()[1] if ln.startswith("train") else ""): ln.split()[2]
              if ln.startswith("train") else ln.split()[1] for ln in lines if ln.split() and ln.split()[0] in
              ("device", "data", "train", "export")}
    assert status == {"device": "ok", "data": "ok", "train fp32": "ok", "train fp16": "skipped",
                      "train bf16": "skipped", "train 2-rank": "ok", "export": "ok"}, lines
    assert any(ln.startswith("predict vs dygraph  ok") for ln in lines) and "all steps passed" in r.stdout
    (two,) = [ln for ln in lines if ln.startswith("train 2-rank")]
    assert "2 gloo CPU ranks (--nproc_per_node 2), recompute on, 2 prefetch threads, 2 steps," in two
    assert " slices/s" in two
    assert {"workerlog.0", "workerlog.1"} <= set(os.listdir(work / "dp_log"))
    reports = [json.loads((work / "dp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(x["rank"], x["world"], x["recompute"], x["num_workers"], x["device"]) for x in reports] == [
        (0, 2, True, 2, "cpu"), (1, 2, True, 2, "cpu")]
    assert all(x["slices_per_s"] > 0 and np.isfinite(x["loss"]) for x in reports)
