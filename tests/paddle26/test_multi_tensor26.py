"""Paddle's multi-tensor Momentum (``use_multi_tensor``, Optimizer.multi_tensor) exists in 2.6 and 3.x and gives
the per-parameter update's numbers and state keys (coupled L2, Nesterov and global-norm clipping included)."""
import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config_utils import schema_section  # noqa: E402


def _run(multi):
    from ppihd.optimizer import build_optimizer

    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.ReLU(), paddle.nn.Linear(8, 2))
    opt = build_optimizer(schema_section("Optimizer", name="Momentum", momentum=0.9, nesterov=True, weight_decay=1e-2,
                                         multi_tensor=multi), net.parameters(), 0.1, grad_clip=0.5)
    assert bool(opt._use_multi_tensor) == multi
    for i in range(4):
        x = paddle.to_tensor(np.random.default_rng(i).random((5, 4), dtype=np.float32))
        net(x).square().mean().backward()
        opt.step()
        opt.clear_grad()
    names = {p.name: k for k, p in net.named_parameters()}
    keys = sorted(next(names[n] + k[len(n):] for n in names if k.startswith(n + "_")) for k in opt.state_dict()
                  if k != "LR_Scheduler")
    return {k: p.numpy() for k, p in net.named_parameters()}, keys


def test_multi_tensor_momentum_equals_per_parameter():
    a, ka = _run(False)
    b, kb = _run(True)
    assert ka == kb and len(ka) == 4
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert not str(paddle.device.get_device()).startswith("gpu")
    from ppihd.optimizer import build_optimizer
    opt = build_optimizer(schema_section("Optimizer", name="Momentum"), paddle.nn.Linear(2, 2).parameters(), 0.1)
    assert not opt._use_multi_tensor  # None = off on CPU: the CPU numbers stay as they were
