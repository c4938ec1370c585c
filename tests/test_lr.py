"""LR schedule vs the closed form; SGD momentum with coupled L2, Nesterov and global-norm clipping by hand."""
import math
import os

import numpy as np
import paddle
import pytest

from ppihd.optimizer import build_lr_scheduler, build_optimizer
from ppihd.utils.config import load_config

PAPER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "swin_b_seq.yaml")


def lrs_at(sched, steps):
    out, want = {}, set(steps)
    for t in range(max(steps) + 1):
        if t in want:
            out[t] = sched.get_lr()
        sched.step()
    return out


def test_paper_schedule_closed_form(monkeypatch):
    cfg = load_config(PAPER)
    assert cfg["Global"]["iters"] == 80000
    sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
    mid = 300 + (80000 - 300) // 2          # 40150: half way through the cosine
    quarter = 300 + (80000 - 300) // 4      # 20225
    got = lrs_at(sched, [0, 150, 300, quarter, mid, 80000])
    assert got[0] == 0.0
    assert got[150] == pytest.approx(0.5e-3, rel=1e-12)        # linear warm-up half way
    assert got[300] == pytest.approx(1e-3, rel=1e-12)          # warmed LR
    assert got[quarter] == pytest.approx(1e-3 * (1 + math.cos(math.pi * (quarter - 300) / 79700)) / 2, rel=1e-9)
    assert got[quarter] == pytest.approx(1e-3 * (0.5 + math.sqrt(2) / 4), rel=1e-4)
    assert got[mid] == pytest.approx(0.5e-3, rel=1e-9)
    assert got[80000] == pytest.approx(0.0, abs=1e-15)


def test_warmup_start_and_end_lr_and_clamp():
    opt_cfg = {"lr": {"name": "CosineWarmup", "learning_rate": 0.1, "warmup_steps": 10, "warmup_start_lr": 0.01,
                      "end_lr": 0.001}}
    got = lrs_at(build_lr_scheduler(opt_cfg, 110), [0, 5, 10, 60, 110, 150])
    assert got[0] == pytest.approx(0.01)
    assert got[5] == pytest.approx(0.055)
    assert got[10] == pytest.approx(0.1)
    assert got[60] == pytest.approx(0.001 + 0.099 / 2)
    assert got[110] == pytest.approx(0.001)
    assert got[150] == pytest.approx(0.001)  # past the end: stays at end_lr


def test_scheduler_state_roundtrip():
    opt_cfg = load_config(PAPER)["Optimizer"]
    a = build_lr_scheduler(opt_cfg, 1000)
    for _ in range(437):
        a.step()
    b = build_lr_scheduler(opt_cfg, 1000)
    b.set_state_dict(a.state_dict())
    assert b.last_epoch == 437 and b.get_lr() == a.get_lr() == pytest.approx(
        1e-3 * (1 + math.cos(math.pi * 137 / 700)) / 2)


def _one_param_opt(nesterov, weight_decay, clip=None, lr=0.1):
    p = paddle.create_parameter([2], "float32", default_initializer=paddle.nn.initializer.Assign(
        np.array([1.0, -2.0], dtype="float32")))
    opt_cfg = load_config(None, ["Optimizer.name=Momentum", "Optimizer.momentum=0.9", f"Optimizer.nesterov={nesterov}",
                                 f"Optimizer.weight_decay={float(weight_decay)}", f"Optimizer.lr.learning_rate={lr}",
                                 "Optimizer.lr.warmup_steps=0", f"Optimizer.lr.end_lr={lr}"])["Optimizer"]
    sched = build_lr_scheduler(opt_cfg, 100)  # constant lr (end_lr = lr)
    return p, build_optimizer(opt_cfg, [p], sched, grad_clip=clip)


def _step(p, opt, g):
    loss = (p * paddle.to_tensor(np.asarray(g, dtype="float32"))).sum()
    loss.backward()
    opt.step()
    opt.clear_grad()


def test_momentum_with_coupled_l2_by_hand():
    p, opt = _one_param_opt(False, 1e-4)
    g = np.array([0.5, 1.0])
    x = np.array([1.0, -2.0]); v = np.zeros(2)
    for _ in range(3):
        _step(p, opt, g)
        v = 0.9 * v + (g + 1e-4 * x)    # coupled L2: decay added to the gradient
        x = x - 0.1 * v
    np.testing.assert_allclose(p.numpy(), x, rtol=1e-5)


def test_nesterov_by_hand():
    p, opt = _one_param_opt(True, 0.0)
    g = np.array([0.5, 1.0])
    x = np.array([1.0, -2.0]); v = np.zeros(2)
    for _ in range(3):
        _step(p, opt, g)
        v = 0.9 * v + g
        x = x - 0.1 * (g + 0.9 * v)
    np.testing.assert_allclose(p.numpy(), x, rtol=1e-5)


def test_global_norm_clip():
    p, opt = _one_param_opt(False, 0.0, clip=1.0)
    _step(p, opt, [3.0, 4.0])  # |g| = 5 -> clipped to (0.6, 0.8)
    np.testing.assert_allclose(p.numpy(), [1.0 - 0.06, -2.0 - 0.08], rtol=1e-5)


def test_adamw_option_first_step_by_hand():
    # not the paper's optimizer (demo option): first Adam step moves each weight by lr * sign(g), decoupled decay
    p = paddle.create_parameter([2], "float32", default_initializer=paddle.nn.initializer.Assign(
        np.array([1.0, -2.0], dtype="float32")))
    opt_cfg = load_config(None, ["Optimizer.name=AdamW", "Optimizer.beta1=0.9", "Optimizer.weight_decay=0.1",
                                 "Optimizer.lr.learning_rate=0.01", "Optimizer.lr.warmup_steps=0",
                                 "Optimizer.lr.end_lr=0.01"])["Optimizer"]
    opt = build_optimizer(opt_cfg, [p], build_lr_scheduler(opt_cfg, 10))
    _step(p, opt, [0.5, -3.0])
    x = np.array([1.0, -2.0]) * (1 - 0.01 * 0.1) - 0.01 * np.sign([0.5, -3.0])
    np.testing.assert_allclose(p.numpy(), x, rtol=1e-4)


def test_adamw_reads_beta1_and_momentum_reads_momentum():
    # Optimizer.beta1 is AdamW's; Optimizer.momentum is SGD's: each optimizer reads its own key
    p = paddle.create_parameter([2], "float32")
    adamw = build_optimizer(load_config(None, ["Optimizer.name=AdamW", "Optimizer.beta1=0.7",
                                               "Optimizer.momentum=0.3"])["Optimizer"], [p], 0.1)
    assert float(adamw._beta1) == pytest.approx(0.7)
    sgd = build_optimizer(load_config(None, ["Optimizer.name=Momentum", "Optimizer.beta1=0.7",
                                             "Optimizer.momentum=0.3"])["Optimizer"], [p], 0.1)
    assert float(sgd._momentum) == pytest.approx(0.3)
