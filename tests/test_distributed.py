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
from test_distributed import _data_parallel
from ppihd.engine.trainer import Trainer
from ppihd.loss import build_loss

dist.init_parallel_env()
rank, world = dist.get_rank(), dist.get_world_size()
cfg = micro_cfg({out!r}, iters=2, recompute=True, **{{"Global.grad_accum": 2}})
net, init, model, sched, opt = _data_parallel(cfg)
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


def _data_parallel(cfg):
    """Worker side: the model of ``cfg`` (paddle seed 0), its initial weights, its ``paddle.DataParallel`` wrapper,
    the schedule and the optimizer."""
    import paddle

    from ppihd.arch import build_model
    from ppihd.optimizer import build_lr_scheduler, build_optimizer

    paddle.seed(0)
    net = build_model(cfg["Arch"])
    init = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    model = paddle.DataParallel(net)
    sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
    return net, init, model, sched, build_optimizer(cfg["Optimizer"], model.parameters(), sched)


def _launch(tmp_path, worker_src, python=sys.executable, **fields):
    out = str(tmp_path / "out")
    os.makedirs(out, exist_ok=True)
    worker = tmp_path / "worker.py"
    worker.write_text(worker_src.format(tests=TESTS, root=ROOT, out=out, **fields))
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


# -- randomness keyed by the global micro-batch position (issue 15) -------------------------------------------------
def _todays_seed(*parts):
    """The global-RNG seed of commit d5b3888 (before the keying by position): SeedSequence of (seed, it, rank)."""
    return int(np.random.SeedSequence([int(p) % (2 ** 32) for p in parts]).generate_state(1)[0])


class _RngRecorder:
    """A dataset of ``n`` one-slice series that records, per index fetched, the first draw of the rng it got."""

    def __init__(self, n):
        self.n, self.draws = n, []

    def __len__(self):
        return self.n

    def get(self, i, rng):
        self.draws.append((int(i), float(rng.random())))
        return {"images": np.zeros((1, 3, 4, 4), "float32"), "labels": np.zeros((1, 6), "float32"),
                "label_mask": np.ones((1, 6), "float32"), "series_id": f"s{i}"}


def _stream(n, b, rank, world, micro):
    from ppihd.engine.trainer import SeriesBatches

    ds = _RngRecorder(n)
    sb = SeriesBatches(ds, b, seed=7, rank=rank, world_size=world, collate_fn=list)
    out = []
    for m in range(micro):
        ds.draws = []
        sb.batch(m)
        out.append(list(ds.draws))
    return out


def test_one_rank_augmentation_keys_are_todays():
    """1 process: micro-batch m's item in slot s draws from default_rng([seed, m, 0, s]), the formula of d5b3888
    (rank 0), across an epoch boundary: the demo and paper runs (1 GPU) keep their augmentation bit for bit."""
    got = _stream(5, 2, 0, 1, 7)   # 5 series, batch 2: 3 micro-batches per epoch (the last holds one)
    for m, draws in enumerate(got):
        assert [d for _, d in draws] == [np.random.default_rng([7, m, 0, s]).random() for s in range(len(draws))]
    assert [len(d) for d in got] == [2, 2, 1, 2, 2, 1, 2]


def test_rank_micro_batch_is_the_global_block_of_one_rank():
    """Paddle's DistributedBatchSampler gives rank r's micro-batch m the block g = m * world + r of the 1-process
    order when len(dataset) is a multiple of world * batch: same series and same augmentation draws, over 2
    epochs. With a remainder the epoch's last micro-batches are cut differently (docs/training.md)."""
    one = _stream(8, 2, 0, 1, 8)                          # 8 series, batch 2: 4 micro-batches per epoch
    ranks = [_stream(8, 2, r, 2, 4) for r in range(2)]    # 2 per epoch and rank
    for r in range(2):
        for m in range(4):
            assert ranks[r][m] == one[m * 2 + r], (r, m)
    one = _stream(10, 2, 0, 1, 5)                         # 10 = 2 * 2 * 2 + 2: the last 2 series of the epoch
    ranks = [_stream(10, 2, r, 2, 3) for r in range(2)]
    assert [ranks[r][m] for m in range(2) for r in range(2)] == one[:4]
    assert [len(ranks[r][2]) for r in range(2)] == [1, 1] and len(one[4]) == 2   # 1 + 1 on 2 ranks, 2 on one
    assert [i for r in range(2) for i, _ in ranks[r][2]] == [i for i, _ in one[4]]   # the same 2 series


def test_one_rank_global_rng_keys(tmp_path):
    """The global RNGs (dropout, drop-path) at each micro-batch's forward: with grad_accum 1 seeded from
    SeedSequence([seed, iteration, 0]) (d5b3888's formula for rank 0); with grad_accum 2 from (seed, g, 0) with
    g = the micro-batch's position (2 * iteration + k), which is where 1 x grad_accum 2 differs from before."""
    import random

    import paddle
    from test_trainer import ToyDataset, ToyNet, collate, make_cfg

    from ppihd.engine.trainer import Trainer
    from ppihd.loss import build_loss
    from ppihd.optimizer import build_lr_scheduler, build_optimizer

    class Recording(ToyNet):
        def forward(self, images, mask=None):
            if self.training:
                self.seen.append((random.random(), float(np.random.random()), float(paddle.rand([1])[0])))
            return super().forward(images, mask)

    def draws(s):
        random.seed(s), np.random.seed(s), paddle.seed(s)
        return random.random(), float(np.random.random()), float(paddle.rand([1])[0])

    for accum in (1, 2):
        cfg = make_cfg(str(tmp_path / f"a{accum}"), iters=3, **{"Global.grad_accum": accum, "Global.seed": 11,
                                                                   "Global.eval_interval": 0})
        paddle.seed(0)
        net = Recording()
        net.seen = []
        sched = build_lr_scheduler(cfg["Optimizer"], 3)
        tr = Trainer(cfg, net, build_loss(cfg["Loss"], True), build_optimizer(cfg["Optimizer"], net.parameters(),
                                                                              sched), sched,
                     ToyDataset(6, 0), None, collate_fn=collate)
        tr.train()
        expect = [draws(_todays_seed(11, g, 0)) for g in range(3 * accum)]
        assert net.seen == expect, accum


def _augment_cache(root, n_train=4, size=32):
    """``n_train`` labelled train series of 3 uint8 slices (a bright square on the positive slice) in the cache
    layout of tools/preprocess.py, for the real SeriesDataset + demo augmentation."""
    import pandas as pd

    from ppihd import LABELS

    cache = os.path.join(root, "cache")
    os.makedirs(os.path.join(cache, "series"))
    rng = np.random.default_rng(3)
    rows = []
    for k in range(n_train):
        sid = f"R{k}"
        arr = rng.integers(0, 80, size=(3, size, size, 3), dtype=np.uint8)
        pos = k % 2 == 0
        if pos:
            arr[1, 8 + k:20 + k, 6:18] = 240
        np.save(os.path.join(cache, "series", f"{sid}.npy"), arr)
        for j in range(3):
            lab = [0, 0, 0, 0, 1, 1] if (pos and j == 1) else [0] * 6
            rows.append({"path": f"/x/{sid}_{j}.dcm", "sop_uid": f"ID_{sid.lower()}{j}", "patient_id": f"P{k}",
                         "study_uid": f"S{k}", "series_uid": f"U{sid}", "series_id": sid, "slice_idx": j,
                         "position": 5.0 * j, "status": "ok", "split": "train",
                         **{c: float(v) for c, v in zip(LABELS, lab)}})
    pd.DataFrame(rows).to_csv(os.path.join(cache, "index.csv"), index=False)
    return cache


def _augment_cfg(out, root, cache, accum, recompute):
    """tests/gpu_utils.micro_cfg with the demo's augmentation (random resized crop, flips, per slice: inherited
    from configs/swin_b_seq.yaml), drop-path / dropout 0.1 and the demo's conv stem (BatchNorm: its running
    statistics are in the compared state); 3 iterations cross an epoch of 4 series."""
    from gpu_utils import micro_cfg

    return micro_cfg(out, iters=3, recompute=recompute, drop=0.1, **{
        "Data.root": root, "Data.cache_dir": cache, "Global.grad_accum": accum, "Global.seed": 5,
        "Arch.backbone.stem": "conv"})


AUGMENT_WORKER = r'''
import os, sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import numpy as np
import paddle
import paddle.distributed as dist
from test_distributed import _augment_cfg, _data_parallel
from ppihd.data.augment import build_train_augment
from ppihd.data.dataset import SeriesDataset
from ppihd.engine.trainer import Trainer
from ppihd.loss import build_loss

dist.init_parallel_env()
rank, world = dist.get_rank(), dist.get_world_size()
cfg = _augment_cfg({out!r}, {data!r}, {cache!r}, accum=1, recompute=True)
net, init, model, sched, opt = _data_parallel(cfg)
train = SeriesDataset(cfg, "train", transform=build_train_augment(cfg))
tr = Trainer(cfg, model, build_loss(cfg["Loss"], True), opt, sched, train, None, rank=rank, world_size=world)
tr.train()
np.savez(os.path.join({out!r}, f"rank{{rank}}.npz"), world=world,
         **{{"p_" + k: v.numpy() for k, v in net.state_dict().items()}},
         **{{"i_" + k: v for k, v in init.items()}})
'''


def _one_rank_augmented(tmp_path, init, cache, name, old_keying=False):
    """1 process x grad_accum 2 (recompute off) through the real Trainer from the weights ``init``. With
    ``old_keying`` the streams are those d5b3888 gave rank k = g % 2 at iteration g // 2 (2 ranks x grad_accum 1):
    augmentation default_rng([seed, it, rank, slot]), global RNGs from (seed, it, rank)."""
    import random

    import paddle

    from ppihd.arch import build_model
    from ppihd.data.augment import build_train_augment
    from ppihd.data.dataset import SeriesDataset
    from ppihd.engine.trainer import Trainer
    from ppihd.loss import build_loss
    from ppihd.optimizer import build_lr_scheduler, build_optimizer

    cfg = _augment_cfg(str(tmp_path / name), str(tmp_path), cache, accum=2, recompute=False)
    net = build_model(cfg["Arch"])
    net.set_state_dict({k: paddle.to_tensor(v) for k, v in init.items()})
    sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
    opt = build_optimizer(cfg["Optimizer"], net.parameters(), sched)
    train = SeriesDataset(cfg, "train", transform=build_train_augment(cfg))
    tr = Trainer(cfg, net, build_loss(cfg["Loss"], True), opt, sched, train, None)
    if old_keying:
        seed, sb = tr.seed, tr.batches

        def items(m):
            return [train.get(i, np.random.default_rng([seed, m // 2, m % 2, slot]))
                    for slot, i in enumerate(sb.indices(m))]

        def reseed(g):
            s = _todays_seed(seed, g // 2, g % 2)
            random.seed(s), np.random.seed(s), paddle.seed(s)

        sb._items, tr._reseed = items, reseed
    tr.train()
    return {k: v.numpy() for k, v in net.state_dict().items()}


@pytest.mark.slow
def test_two_ranks_augmented_equal_one_rank_grad_accum_2(tmp_path):
    """Real SeriesDataset + the demo augmentation + drop-path/dropout 0.1 + recompute + a BatchNorm conv stem, 2 gloo
    ranks x grad_accum 1 (3 iterations, 4 series: across an epoch boundary) == 1 process x grad_accum 2, recompute
    off: weights and BatchNorm running statistics (RankNormStats).

    Tolerance rtol 1e-4 / atol 2e-6 (as the recompute test above): both runs draw the same crops, flips and
    drop-path masks, so what is left is float32 summation order -- DataParallel all-reduces (g0 + g1) / 2 where the
    single process adds g0 / 2 + g1 / 2, ~1e-7 relative per step. The control: the same single-process run with
    d5b3888's rank-keyed streams (what 2 ranks drew before) lands far outside it."""
    cache = _augment_cache(str(tmp_path))
    out = _launch(tmp_path, AUGMENT_WORKER, data=str(tmp_path), cache=cache)
    r0, r1 = np.load(os.path.join(out, "rank0.npz")), np.load(os.path.join(out, "rank1.npz"))
    assert int(r0["world"]) == 2
    init = {k[2:]: r0[k] for k in r0.files if k.startswith("i_")}
    ref = _one_rank_augmented(tmp_path, init, cache, "ref")
    old = _one_rank_augmented(tmp_path, init, cache, "old", old_keying=True)
    moved, worst, old_gap = 0, 0.0, 0.0
    for k, v in ref.items():
        np.testing.assert_allclose(r0["p_" + k], r1["p_" + k], rtol=1e-6, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(r0["p_" + k], v, rtol=1e-4, atol=2e-6, err_msg=k)
        worst = max(worst, float(np.abs(r0["p_" + k] - v).max()))
        old_gap = max(old_gap, float(np.abs(old[k] - v).max()))
        moved += not np.allclose(v, init[k])
    assert moved > len(ref) // 2
    print(f"max |2 ranks - 1 rank x accum 2| = {worst:.3g}; with the old keying {old_gap:.3g}")
    assert not all(np.allclose(r0["p_" + k], old[k], rtol=1e-4, atol=2e-6) for k in old)
    assert old_gap > 100 * max(worst, 2e-6)


def test_rank_norm_stats_equal_one_process_batchnorm(monkeypatch):
    """RankNormStats on 2 simulated ranks x grad_accum 2 (the all-reduce summed by hand) leaves each rank's
    BatchNorm running mean / variance where Paddle's BatchNorm2D puts them after the 4 micro-batches in global
    order g = k * 2 + rank, over 2 iterations; without it rank 0 would hold the EMA of its own 2 per iteration."""
    import paddle
    import paddle.distributed as dist

    from ppihd.engine.trainer import RankNormStats

    rng = np.random.default_rng(0)
    xs = [paddle.to_tensor(rng.normal(g, 1.0 + g, (3, 4, 5, 5)).astype("float32")) for g in range(8)]
    paddle.seed(0)
    one = paddle.nn.BatchNorm2D(4, momentum=0.8)
    for x in xs:          # the single process, in global order
        one(x)
    ranks = [paddle.nn.BatchNorm2D(4, momentum=0.8) for _ in range(2)]
    stats = [RankNormStats(bn, r, 2, 2) for r, bn in enumerate(ranks)]
    alone = paddle.nn.BatchNorm2D(4, momentum=0.8)   # what rank 0 held before: its own micro-batches only
    for it in range(2):
        for st in stats:
            st.begin()
        for k in range(2):
            for r in range(2):
                stats[r].before()
                ranks[r](xs[(it * 2 + k) * 2 + r])
                stats[r].after(k)
                if r == 0:
                    alone(xs[(it * 2 + k) * 2])
        flats = [paddle.concat([t.reshape([-1]) for pair in st.acc for t in pair]) for st in stats]
        total = flats[0] + flats[1]
        monkeypatch.setattr(dist, "all_reduce", lambda t: t.set_value(total))
        for st in stats:
            st.end()
    for bn in ranks:
        np.testing.assert_allclose(bn._mean.numpy(), one._mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn._variance.numpy(), one._variance.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(alone._mean.numpy(), one._mean.numpy(), rtol=1e-2)


NAN_WORKER = r'''
import os, sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import paddle
import paddle.distributed as dist
from test_trainer import ToyDataset, ToyNet, collate, make_cfg
from ppihd.engine.trainer import Trainer
from ppihd.loss import build_loss
from ppihd.optimizer import build_lr_scheduler, build_optimizer

dist.init_parallel_env()
rank, world = dist.get_rank(), dist.get_world_size()
cfg = make_cfg({out!r}, iters=4, **{{"Global.log_interval": 4, "Global.eval_interval": 0, "Global.save_interval": 1}})
paddle.seed(0)
model = paddle.DataParallel(ToyNet())
sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched)
tr = Trainer(cfg, model, build_loss(cfg["Loss"], True), opt, sched, ToyDataset(10, 0), None, collate_fn=collate,
             rank=rank, world_size=world)
if rank == 1:   # rank 1's logged loss is NaN (its gradients, all-reduced, stay finite): only rank 1's check fails
    account = tr._account
    tr._account = lambda it, terms: account(it, {{k: v * float("nan") for k, v in terms.items()}})
try:
    tr.train()
    msg = "no error"
except FloatingPointError as e:
    msg = str(e)
dist.barrier()   # both ranks got here: none is left in a collective
open(os.path.join({out!r}, f"rank{{rank}}.txt"), "w").write(msg)
'''


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_both_ranks(tmp_path):
    """Only rank 1's loss window is NaN; the first check is at save point 1 (rank 0 alone saves): both ranks raise
    FloatingPointError there (rank 0 naming rank 1) and reach the barrier after, instead of rank 0 saving and
    waiting in the next step's all-reduce while rank 1 has stopped."""
    out = _launch(tmp_path, NAN_WORKER)
    r0, r1 = (open(os.path.join(out, f"rank{r}.txt")).read() for r in (0, 1))
    assert r0.startswith("rank(s) 1 of 2 stopped: their loss window check failed"), r0
    assert r1.startswith("rank 1 of 2: iteration") and "loss is not finite" in r1, r1
    assert not os.path.exists(os.path.join(out, "latest.json"))   # nothing saved at save point 1
