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
