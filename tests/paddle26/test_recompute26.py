"""Swin recompute is the hook-based (non-reentrant) form on Paddle 2.6 and 3.x, and it recomputes with the same
random numbers (drop-path, dropout) as the forward: gradients equal those without recompute. Paddle 2.6 cannot
preserve the RNG in its hook recompute on CPU, so there ppihd replays the state itself (swin._ReplayRng)."""
import os
import sys

import numpy as np
import paddle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpu_utils import micro_cfg  # noqa: E402


def _grads(recompute, tmp):
    from ppihd.arch import build_model

    cfg = micro_cfg(tmp, recompute=recompute, drop=0.3)
    paddle.seed(3)
    net = build_model(cfg["Arch"])
    net.train()
    x = paddle.to_tensor(np.random.default_rng(0).random((2, 3, 3, 32, 32), dtype=np.float32))
    paddle.seed(11)  # the same drop-path / dropout masks in both runs
    out = net(x, paddle.to_tensor(np.array([[1, 1, 1], [1, 1, 0]], bool)))
    (out["logits"].square().mean() + out["aux_logits"].mean()).backward()
    return {k: p.grad.numpy() for k, p in net.named_parameters() if p.grad is not None}


def test_recompute_gradients_equal_plain(tmp_path):
    from ppihd.arch.backbone import swin

    calls = []
    real = swin._get_recompute()

    def spy(fn, *a, **kw):
        calls.append(kw.get("use_reentrant", True))
        return real(fn, *a, **kw)

    swin._get_recompute, orig = (lambda: spy), swin._get_recompute
    try:
        with_rc = _grads(True, str(tmp_path))
    finally:
        swin._get_recompute = orig
    plain = _grads(False, str(tmp_path))
    assert calls and not any(calls)  # every block went through recompute(..., use_reentrant=False)
    assert sorted(with_rc) == sorted(plain) and len(plain) > 50
    for k in plain:
        np.testing.assert_allclose(with_rc[k], plain[k], rtol=1e-4, atol=1e-6, err_msg=k)
