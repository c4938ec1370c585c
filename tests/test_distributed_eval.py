"""Evaluation sharded over ranks (``ppihd.engine.evaluator.eval_batches`` / ``gather_series``): each rank predicts
its share of the validation batches, the per-series predictions are gathered with
``paddle.distributed.all_gather_object``, and every rank gets the 1-process predictions and metric.

The 2-rank test launches ``python -m paddle.distributed.launch --nproc_per_node 2`` (gloo, CPU) with
tests/test_distributed.py's ``_launch``; ``run_sharded_eval`` is shared with tests/paddle26/test_distributed_eval26.py."""
import os
import sys

import numpy as np
import pytest

from ppihd.engine.evaluator import eval_batches
from test_distributed import _launch

WORKER = r'''
import os, sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import numpy as np
import paddle
import paddle.distributed as dist
from gpu_utils import FixedSeries, micro_cfg
from ppihd.arch import build_model
from ppihd.engine.evaluator import evaluate
from ppihd.engine.trainer import Trainer
from ppihd.loss import build_loss
from ppihd.optimizer import build_lr_scheduler, build_optimizer


class Counted(FixedSeries):
    """FixedSeries that records which series this process read (the evaluator reads ``dataset[i]``)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.read = []

    def __getitem__(self, i):
        self.read.append(int(i))
        return super().__getitem__(i)


dist.init_parallel_env()
rank, world = dist.get_rank(), dist.get_world_size()
cfg = micro_cfg({out!r}, iters=1, recompute=False, **{{"DataLoader.Eval.batch_series": 2}})
paddle.seed(0)
net = build_model(cfg["Arch"])
val = Counted(7, 1)                       # 7 series of 2-4 slices: 4 batches of 2, 2, 2, 1
full = evaluate(net, val, cfg, progress=False)                                 # the 1-process path
val.read.clear()
shard = evaluate(net, val, cfg, progress=False, rank=rank, world_size=world)   # this rank's share, gathered
read = list(val.read)
model = paddle.DataParallel(net)          # and through the Trainer: one step, then its final evaluation
sched = build_lr_scheduler(cfg["Optimizer"], 1)
opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched)
tr = Trainer(cfg, model, build_loss(cfg["Loss"], True), opt, sched, FixedSeries(4, 0), val, rank=rank,
             world_size=world)
hist = tr.train()
after = evaluate(net, val, cfg, progress=False)                                # 1-process, trained weights
out = {{"world": world, "read": np.array(read), "tr_wll": hist["eval"][-1]["head2"],
        "after_wll": after["head2"]["weighted_log_loss"], "after_p2": after["predictions"]["prob2"]}}
for name, res in (("full", full), ("shard", shard)):
    p = res["predictions"]
    out.update({{f"{{name}}_p2": p["prob2"], f"{{name}}_p1": p["prob1"], f"{{name}}_sidx": p["slice_idx"],
                f"{{name}}_sids": np.array(p["series_id"]), f"{{name}}_labels": p["labels"],
                f"{{name}}_wll": res["head2"]["weighted_log_loss"], f"{{name}}_wll1": res["head1"]["weighted_log_loss"],
                f"{{name}}_n": res["n_slices"]}})
np.savez(os.path.join({out!r}, f"rank{{rank}}.npz"), **out)
'''


def run_sharded_eval(tmp_path, python=sys.executable):
    """Launch WORKER on 2 gloo ranks with ``python`` (tests/test_distributed.py's launcher); returns the two ranks'
    npz results."""
    out = _launch(tmp_path, WORKER, python)
    return [np.load(os.path.join(out, f"rank{r}.npz")) for r in (0, 1)]


def check_sharded_eval(r0, r1):
    """The assertions shared by the Paddle 3 and 2.6 runs."""
    assert int(r0["world"]) == int(r1["world"]) == 2
    # rank 0 ran batches 0 and 2 (series 0, 1, 4, 5), rank 1 batches 1 and 3 (series 2, 3, 6): each series once
    assert r0["read"].tolist() == [0, 1, 4, 5] and r1["read"].tolist() == [2, 3, 6]
    for r in (r0, r1):
        np.testing.assert_array_equal(r["shard_sids"], r["full_sids"])          # series order restored
        for k in ("p2", "p1", "sidx", "labels"):
            np.testing.assert_array_equal(r[f"shard_{k}"], r[f"full_{k}"], err_msg=k)   # the same predictions
        assert float(r["shard_wll"]) == float(r["full_wll"]) and float(r["shard_wll1"]) == float(r["full_wll1"])
        assert int(r["shard_n"]) == int(r["full_n"]) == len(r["full_sids"])
        # the Trainer's sharded final evaluation = a 1-process evaluation of the trained weights
        assert float(r["tr_wll"]) == float(r["after_wll"])
    series = r0["full_sids"].tolist()
    assert sorted(set(series), key=lambda s: int(s[1:])) == [f"s{i}" for i in range(7)]
    for k in ("full_p2", "after_p2"):
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)                # the ranks agree


def test_eval_batches_cover_every_series_once():
    # hand-worked: 7 series in batches of 2 -> [0,1] [2,3] [4,5] [6]; 2 ranks take batches alternately
    assert [list(b) for b in eval_batches(7, 2, 0, 2)] == [[0, 1], [4, 5]]
    assert [list(b) for b in eval_batches(7, 2, 1, 2)] == [[2, 3], [6]]
    assert [list(b) for b in eval_batches(3, 1, 2, 4)] == [[2]] and eval_batches(3, 1, 3, 4) == []
    for n, bs, world in ((0, 1, 2), (1, 1, 3), (10, 3, 2), (11, 2, 4), (5, 7, 2)):
        one = [list(b) for b in eval_batches(n, bs)]
        parts = [[list(b) for b in eval_batches(n, bs, r, world)] for r in range(world)]
        assert sorted(b for p in parts for b in p) == one                    # the 1-process batches, each once
        assert sorted(i for p in parts for b in p for i in b) == list(range(n))


def test_one_rank_gather_only_sorts():
    from ppihd.engine.evaluator import gather_series

    assert gather_series([(2, "c"), (0, "a"), (1, "b")], 1) == [(0, "a"), (1, "b"), (2, "c")]


def test_a_rank_that_fails_mid_evaluation_stops_every_rank(monkeypatch):
    """The error is gathered with the records (all_gather_object simulated: this is rank 0 of 2, rank 1's series
    failed to load): rank 0, whose own series went fine, raises with rank 1's message; a failing rank raises with
    its own message, chained to its exception."""
    import paddle
    import paddle.distributed as dist

    from gpu_utils import FixedSeries, micro_cfg
    from ppihd.arch import build_model
    from ppihd.engine.evaluator import gather_series, predict_dataset

    other = []   # what the simulated other rank contributes
    monkeypatch.setattr(dist, "all_gather_object", lambda parts, obj: parts.extend([obj, other[0]]))
    other.append(("OSError: cannot read /data/ID_x.dcm", []))
    cfg = micro_cfg("unused", iters=1, recompute=False)
    paddle.seed(0)
    model = build_model(cfg["Arch"])
    with pytest.raises(RuntimeError, match=r"evaluation failed on rank 1 of 2 \(ranks failed: 1\): OSError: cannot "
                                           r"read /data/ID_x\.dcm"):
        predict_dataset(model, FixedSeries(3, 1), progress=False, rank=0, world_size=2)
    assert model.training   # restored

    class Broken(FixedSeries):
        def __getitem__(self, i):
            raise ValueError(f"series {i} is broken")

    other[0] = (None, [(1, "b")])   # rank 1 went fine; this rank (0) fails on its first series, 0
    with pytest.raises(RuntimeError, match=r"rank 0 of 2 \(ranks failed: 0\): ValueError: series 0 is broken") as e:
        predict_dataset(model, Broken(3, 1), progress=False, rank=0, world_size=2)
    assert isinstance(e.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="series 0 is broken"):   # one process: the exception itself
        predict_dataset(model, Broken(3, 1), progress=False)
    other[0] = (None, [(1, "b")])
    assert gather_series([(2, "c"), (0, "a")], 2) == [(0, "a"), (1, "b"), (2, "c")]


@pytest.mark.slow
def test_two_rank_sharded_eval_equals_one_rank(tmp_path):
    """2 gloo ranks: the sharded predictions and metric equal the 1-process ones computed in each worker (bit for
    bit) and, to float tolerance, a 1-process evaluation here (another process, other thread counts)."""
    import paddle

    from gpu_utils import FixedSeries, micro_cfg
    from ppihd.arch import build_model
    from ppihd.engine.evaluator import evaluate

    r0, r1 = run_sharded_eval(tmp_path)
    check_sharded_eval(r0, r1)
    cfg = micro_cfg(str(tmp_path / "ref"), iters=1, recompute=False, **{"DataLoader.Eval.batch_series": 2})
    paddle.seed(0)
    ref = evaluate(build_model(cfg["Arch"]), FixedSeries(7, 1), cfg, progress=False)
    assert ref["predictions"]["series_id"] == r0["shard_sids"].tolist()
    np.testing.assert_allclose(r0["shard_p2"], ref["predictions"]["prob2"], rtol=1e-5, atol=1e-6)
    assert abs(float(r0["shard_wll"]) - ref["head2"]["weighted_log_loss"]) < 1e-5
