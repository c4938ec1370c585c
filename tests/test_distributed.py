"""Two-process CPU data-parallel training (Paddle's launcher, gloo backend): the ranks agree on parameters.

Runs ``python -m paddle.distributed.launch --nproc_per_node 2 WORKER`` where WORKER builds the same Trainer as
tools/train.py does for several processes (paddle.DataParallel, per-rank DistributedBatchSampler shards,
rank-0-only saving) around the toy model of test_trainer.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

WORKER = r'''
import os, sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import numpy as np
import paddle
import paddle.distributed as dist
from test_trainer import ToyDataset, ToyNet, collate, make_cfg
from ppihd.engine.trainer import Trainer
from ppihd.loss import build_loss
from ppihd.optimizer import build_lr_scheduler, build_optimizer

dist.init_parallel_env()
rank, world = dist.get_rank(), dist.get_world_size()
cfg = make_cfg({out!r}, iters=4, **{{"Global.eval_interval": 0, "Global.save_interval": 0}})
paddle.seed(0)
net = ToyNet()
init = {{k: v.numpy().copy() for k, v in net.state_dict().items()}}
model = paddle.DataParallel(net)
sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched)
tr = Trainer(cfg, model, build_loss(cfg["Loss"], True), opt, sched, ToyDataset(10, 0), ToyDataset(4, 1),
             collate_fn=collate, rank=rank, world_size=world)
seen = [tr.batches.indices(m) for m in range(len(tr.batches))]
tr.train()
np.savez(os.path.join({out!r}, f"rank{{rank}}.npz"), world=world, seen=np.concatenate(seen),
         **{{"p_" + k: v.numpy() for k, v in net.state_dict().items()}},
         **{{"i_" + k: v for k, v in init.items()}})
'''


@pytest.mark.slow
def test_two_process_cpu_data_parallel(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests=TESTS, root=ROOT, out=out))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)  # an empty value makes the launcher pick the GPU device type
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "log"), str(worker)]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    logs = ""
    for f in sorted(os.listdir(tmp_path / "log")) if os.path.isdir(tmp_path / "log") else []:
        logs += f"\n--- {f}\n" + (tmp_path / "log" / f).read_text(errors="replace")[-3000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    r0, r1 = np.load(os.path.join(out, "rank0.npz")), np.load(os.path.join(out, "rank1.npz"))
    assert int(r0["world"]) == 2 and int(r1["world"]) == 2
    # each rank read its own half of the series (DistributedBatchSampler shards)
    assert set(r0["seen"]).isdisjoint(set(r1["seen"])) and len(set(r0["seen"]) | set(r1["seen"])) == 10
    keys = [k for k in r0.files if k.startswith("p_")]
    assert keys
    moved = False
    for k in keys:
        np.testing.assert_allclose(r0[k], r1[k], rtol=1e-6, atol=1e-7, err_msg=k)  # ranks agree
        moved |= not np.allclose(r0[k], r0["i_" + k[2:]])
    assert moved  # and training changed them
    # only rank 0 saved
    assert os.path.isfile(os.path.join(out, "latest.json"))


RECOMPUTE_WORKER = r'''
import os, sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import numpy as np
import paddle
import paddle.distributed as dist
from gpu_utils import FixedSeries, micro_cfg
from ppihd.arch import build_model
from ppihd.engine.trainer import Trainer
from ppihd.loss import build_loss
from ppihd.optimizer import build_lr_scheduler, build_optimizer

dist.init_parallel_env()
rank, world = dist.get_rank(), dist.get_world_size()
cfg = micro_cfg({out!r}, iters=2, recompute=True, **{{"Global.grad_accum": 2}})
paddle.seed(0)
net = build_model(cfg["Arch"])
init = {{k: v.numpy().copy() for k, v in net.state_dict().items()}}
model = paddle.DataParallel(net)
sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched)
tr = Trainer(cfg, model, build_loss(cfg["Loss"], True), opt, sched, FixedSeries(8, 0), None,
             rank=rank, world_size=world)
seen = np.array([tr.batches.indices(m) for m in range(4)])  # micro-batches of iterations 0 and 1
no_sync_calls = []
real_no_sync = model.no_sync
model.no_sync = lambda: (no_sync_calls.append(1), real_no_sync())[1]
tr.train()
np.savez(os.path.join({out!r}, f"rank{{rank}}.npz"), world=world, seen=seen, no_sync=len(no_sync_calls),
         **{{"p_" + k: v.numpy() for k, v in net.state_dict().items()}},
         **{{"i_" + k: v for k, v in init.items()}})
'''


def _launch(tmp_path, worker_src, python=sys.executable):
    out = str(tmp_path / "out")
    os.makedirs(out, exist_ok=True)
    worker = tmp_path / "worker.py"
    worker.write_text(worker_src.format(tests=TESTS, root=ROOT, out=out))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [python, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
           str(worker)]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    logs = ""
    for f in sorted(os.listdir(tmp_path / "log")) if os.path.isdir(tmp_path / "log") else []:
        logs += f"\n--- {f}\n" + (tmp_path / "log" / f).read_text(errors="replace")[-3000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    return out


@pytest.mark.slow
def test_two_ranks_recompute_grad_accum_equal_one_rank(tmp_path):
    """DataParallel + Swin recompute + Global.grad_accum 2 on 2 gloo ranks (4 series per step) gives the weights
    of a plain 1-process loop over the same 4 series per step (loss / 4 each, recompute off, no Trainer).

    Before the fix (reentrant recompute) the first backward failed with "(PreconditionNotMet) ... parameter[..]
    [layer_norm_..] has been ready before" (issue 19)."""
    import paddle

    from gpu_utils import FixedSeries, micro_cfg
    from ppihd.arch import build_model
    from ppihd.data.dataset import collate_series
    from ppihd.loss import build_loss
    from ppihd.optimizer import build_lr_scheduler, build_optimizer

    out = _launch(tmp_path, RECOMPUTE_WORKER)
    r0, r1 = np.load(os.path.join(out, "rank0.npz")), np.load(os.path.join(out, "rank1.npz"))
    assert int(r0["world"]) == 2
    assert int(r0["no_sync"]) == int(r1["no_sync"]) == 2  # 2 iterations x (grad_accum - 1) local-only backwards
    # the reference: one process, recompute off, every iteration's 4 series (both ranks' 2 micro-batches)
    cfg = micro_cfg(str(tmp_path / "ref"), iters=2, recompute=False)
    net = build_model(cfg["Arch"])
    net.set_state_dict({k[2:]: paddle.to_tensor(r0[k]) for k in r0.files if k.startswith("i_")})
    sched = build_lr_scheduler(cfg["Optimizer"], 2)
    opt = build_optimizer(cfg["Optimizer"], net.parameters(), sched)
    loss_fn = build_loss(cfg["Loss"], True)
    data = FixedSeries(8, 0)
    net.train()
    for it in range(2):
        for seen in (r0["seen"], r1["seen"]):
            for m in (2 * it, 2 * it + 1):
                b = collate_series([data.get(int(i)) for i in seen[m]])
                mask = paddle.to_tensor(b["mask"])
                outs = net(paddle.to_tensor(b["images"]), mask)
                (loss_fn(outs, paddle.to_tensor(b["labels"]), mask, paddle.to_tensor(b["label_mask"]))["loss"]
                 / 4).backward()
        opt.step()
        opt.clear_grad()
        sched.step()
    ref = {k: v.numpy() for k, v in net.state_dict().items()}
    moved = 0
    for k, v in ref.items():
        np.testing.assert_allclose(r0["p_" + k], r1["p_" + k], rtol=1e-6, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(r0["p_" + k], v, rtol=1e-4, atol=2e-6, err_msg=k)
        moved += not np.allclose(v, r0["i_" + k])
    assert moved > len(ref) // 2
