"""Trainer tests on a tiny fake model/dataset: learning, exact resume, checkpoint atomicity, evaluator numbers."""
import json
import math
import os
import re

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from independent import CLASSES, sklearn_weighted_log_loss
from ppihd.engine.evaluator import (dataset_prior, evaluate, score_predictions,
                                    write_predictions_csv)
from ppihd.engine.trainer import Trainer
from ppihd.loss import build_loss
from ppihd.optimizer import build_lr_scheduler, build_optimizer
from ppihd.utils.checkpoint import load_checkpoint, load_weights, read_manifest, save_checkpoint
from ppihd.utils.config import load_config

H = 4


class ToyDataset:
    """Series of 2-4 slices [S, 3, 4, 4]; class c positive when row c // 3 of channel c % 3 is bright."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            s = int(rng.integers(2, 5))
            lab = (rng.random((s, 6)) < 0.3).astype("float32")
            lab[:, 5] = lab[:, :5].max(axis=1)
            img = rng.random((s, 3, H, H)).astype("float32") * 0.2
            for c in range(6):  # class c lights up row c // 3 of channel c % 3
                img[:, c % 3, c // 3, :] += lab[:, c, None] * 0.7
            self.items.append((img, lab))

    def __len__(self):
        return len(self.items)

    def get(self, i, rng):
        img, lab = self.items[i]
        noisy = np.clip(img + rng.normal(0, 0.02, img.shape).astype("float32"), 0, 1)
        return {"images": noisy, "labels": lab, "label_mask": np.ones_like(lab), "series_id": f"s{i}"}

    def __getitem__(self, i):
        img, lab = self.items[i]
        return {"images": img, "labels": lab, "label_mask": np.ones_like(lab), "series_id": f"s{i}"}


def collate(items):
    b, smax = len(items), max(len(it["images"]) for it in items)
    out = {"images": np.zeros((b, smax, 3, H, H), "float32"), "labels": np.zeros((b, smax, 6), "float32"),
           "label_mask": np.zeros((b, smax, 6), "float32"), "mask": np.zeros((b, smax), bool),
           "series_id": [it["series_id"] for it in items]}
    for k, it in enumerate(items):
        s = len(it["images"])
        out["images"][k, :s] = it["images"]; out["labels"][k, :s] = it["labels"]
        out["label_mask"][k, :s] = it["label_mask"]; out["mask"][k, :s] = True
    return out


class ToyNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.feat = nn.Linear(3 * H * H, 16)
        self.drop = nn.Dropout(0.3)
        self.head1 = nn.Linear(16, 6)
        self.head2 = nn.Linear(16, 6)

    def slice_features(self, images, mask=None):
        b, s = images.shape[0], images.shape[1]
        return self.drop(paddle.nn.functional.relu(self.feat(images.reshape([b, s, -1]))))

    def heads(self, images, mask=None):  # IHDNet.heads: head-2 and head-1 logits from one feature pass
        f = self.slice_features(images, mask)
        return self.head2(f), self.head1(f)

    def forward(self, images, mask=None):
        if not self.training:
            return self.head2(self.slice_features(images, mask))
        logits, aux = self.heads(images, mask)
        return {"logits": logits, "aux_logits": aux}


def make_cfg(tmp, iters=12, **over):
    o = [f"Global.output_dir={tmp}", f"Global.iters={iters}", "Global.log_interval=2", "Global.eval_interval=4",
         "Global.save_interval=4", "Global.progress_bar=false", "Global.device=cpu",
         "DataLoader.Train.batch_series=2", "DataLoader.Eval.batch_series=3",
         "Optimizer.lr.warmup_steps=2", "Optimizer.lr.learning_rate=0.05"]
    o += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, o)


def build(cfg, train, val):
    paddle.seed(0)
    model = ToyNet()
    sched = build_lr_scheduler(cfg["Optimizer"], cfg["Global"]["iters"])
    opt = build_optimizer(cfg["Optimizer"], model.parameters(), sched, cfg["Global"]["grad_clip"])
    loss = build_loss(cfg["Loss"], deep_supervision=True)
    return Trainer(cfg, model, loss, opt, sched, train, val, collate_fn=collate)


def params(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def data():
    return ToyDataset(10, 0), ToyDataset(6, 1)


def test_training_learns_and_writes_outputs(tmp_path, data):
    cfg = make_cfg(str(tmp_path), iters=60, **{"Global.eval_interval": 20, "Global.save_interval": 20,
                                               "Optimizer.lr.learning_rate": 0.3})
    tr = build(cfg, *data)
    hist = tr.train()
    assert hist["train"][0]["loss"] > hist["train"][-1]["loss"]
    ev = hist["eval"]
    assert [r["iter"] for r in ev] == [20, 40, 60]
    assert ev[-1]["head2"] < ev[-1]["baseline"]  # beats the constant prior on the toy task
    assert hist["best_metric"] == min(r["head2"] for r in ev)
    for f in ("latest.json", "latest.pdparams", "best_model.json", "best_model.pdparams", "curves.png",
              "history.json", "train.log"):
        assert os.path.isfile(tmp_path / f), f
    m = read_manifest(str(tmp_path / "latest"))
    assert m["iteration"] == 60 and m["best_iter"] == hist["best_iter"]
    # only the newest payload set is kept
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("latest.0")) == [
        "latest.00000060.pdopt", "latest.00000060.pdparams", "latest.00000060.pdstate"]
    # best_model weights reproduce the best metric through the evaluator
    net = ToyNet()
    load_weights(net, str(tmp_path / "best_model"))
    res = evaluate(net, data[1], cfg, prior=dataset_prior(data[0]), collate_fn=collate, progress=False)
    assert res["head2"]["weighted_log_loss"] == pytest.approx(hist["best_metric"], rel=1e-6)
    # VisualDL (on by default): the curves read back with visualdl's own reader equal the history
    from visualdl import LogReader

    (rec,) = os.listdir(tmp_path / "vdl")
    reader = LogReader(file_path=str(tmp_path / "vdl" / rec))
    tags = reader.get_tags()["scalar"]
    assert {"train/loss", "train/batch_cost", "train/ips", "eval/head2_wll", "eval/head2_log_loss/any"} <= set(tags)
    got = [(p.id, p.value) for p in reader.get_data("scalar", "eval/head2_wll")]
    assert [i for i, _ in got] == [20, 40, 60]
    np.testing.assert_allclose([v for _, v in got], [r["head2"] for r in ev], rtol=1e-6)


def test_resume_is_exact(tmp_path, data):
    a = build(make_cfg(str(tmp_path / "a")), *data)
    a.train()
    ref = params(a.net)
    b = build(make_cfg(str(tmp_path / "b")), *data)
    b.train(until=5)
    lr_at_5 = b.scheduler.get_lr()
    evals = b.history["eval"]
    del b
    c = build(make_cfg(str(tmp_path / "b")), *data)  # fresh objects, different runtime parameter names
    c.resume(str(tmp_path / "b" / "latest"))
    assert c.start_iter == 5 and c.scheduler.get_lr() == lr_at_5 and c.scheduler.last_epoch == 5
    assert [r["iter"] for r in evals] == [4]  # evaluated once, at iteration 4, before the stop
    assert c.best_metric == evals[0]["head2"] and c.best_iter == 4
    c.train()
    got = params(c.net)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_resume_without_optimizer_state_differs(tmp_path, data):
    a = build(make_cfg(str(tmp_path / "a"), iters=8), *data)
    a.train(); ref = params(a.net)
    b = build(make_cfg(str(tmp_path / "b"), iters=8), *data)
    b.train(until=4)
    c = build(make_cfg(str(tmp_path / "b"), iters=8), *data)
    # weights + schedule but NOT the optimizer's velocities: the result must change, so the exact-resume test
    # above really checks that the momentum state is carried over
    state = load_checkpoint(str(tmp_path / "b" / "latest"), c.net, None, c.scheduler)
    c.start_iter = state["iteration"]
    c.train()
    assert any(not np.allclose(params(c.net)[k], ref[k], atol=1e-6) for k in ref)


def test_grad_accum_equals_bigger_batch_without_dropout(tmp_path, data):
    # 2 micro-batches of 1 series (mean of their losses) == ... same update as loss averaged over the pair
    cfg1 = make_cfg(str(tmp_path / "x"), iters=3, **{"DataLoader.Train.batch_series": 1, "Global.grad_accum": 2})
    t1 = build(cfg1, *data)
    t1.model.drop.p = 0.0
    t1.train(until=1)
    # by hand: same first two series, each loss / 2, one SGD step from the same init
    t2 = build(make_cfg(str(tmp_path / "y"), iters=3, **{"DataLoader.Train.batch_series": 1}), *data)
    t2.model.drop.p = 0.0
    stream = t2.batches.iterate(0)
    t2.model.train()
    for _ in range(2):  # the forward and the loss by hand through the public model and loss_fn
        b = next(stream)
        mask = paddle.to_tensor(np.asarray(b["mask"], dtype=bool))
        out = t2.model(paddle.to_tensor(np.asarray(b["images"], dtype="float32")), mask)
        lm = b.get("label_mask")
        lm = paddle.to_tensor(np.asarray(lm, dtype="float32")) if lm is not None else None
        (t2.loss_fn(out, paddle.to_tensor(np.asarray(b["labels"], dtype="float32")), mask, lm)["loss"] / 2).backward()
    t2.optimizer.step()
    p1, p2 = params(t1.net), params(t2.net)
    for k in p1:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-5, atol=1e-7)


def test_half_written_checkpoint_is_never_loaded(tmp_path, data):
    tr = build(make_cfg(str(tmp_path)), *data)
    prefix = str(tmp_path / "latest")
    save_checkpoint(prefix, tr.net, tr.optimizer, tr.scheduler, iteration=3)
    good = read_manifest(prefix)
    # a crash mid-way through the next save: payload of iteration 7 partly written, manifest not yet replaced
    with open(str(tmp_path / "latest.00000007.pdparams"), "wb") as f:
        f.write(b"\x00garbage")
    with open(prefix + ".json.tmp999", "w") as f:
        f.write("{")
    assert read_manifest(prefix)["iteration"] == 3 == good["iteration"]
    tr2 = build(make_cfg(str(tmp_path)), *data)
    tr2.resume(prefix)
    assert tr2.start_iter == 3
    # a truncated payload that the manifest points at is detected with the file named
    path = os.path.join(str(tmp_path), good["files"]["optimizer"])
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=rf"^{re.escape(prefix)}\.json: optimizer file {re.escape(path)} is missing "
                                         r"or has the wrong size$"):
        read_manifest(prefix)
    nope = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=rf"^Global\.checkpoints={re.escape(nope)}: no manifest "
                                                rf"{re.escape(nope)}\.json \(expected a checkpoint written by "
                                                r"tools/train\.py, e\.g\. <output_dir>/latest\)$"):
        read_manifest(nope)


def test_evaluator_numbers_by_hand():
    # two labelled slices + one with an unknown label (not scored)
    preds = {"series_id": ["a", "a", "b"], "slice_idx": np.array([0, 1, 0]),
             "labels": np.array([[0] * 6, [0, 0, 0, 0, 0, 1], [1] * 6], float),
             "label_mask": np.array([[1] * 6, [1] * 6, [1, 1, 1, 1, 1, 0]], float),
             "prob2": np.array([[0.5] * 6, [0.1] * 5 + [0.8], [0.3] * 6]), "prob1": None}
    res = score_predictions(preds, [1, 1, 1, 1, 1, 2], 1e-7, prior=[0.5] * 6)
    l2 = (5 * -math.log(0.9) + 2 * -math.log(0.8)) / 7
    assert res["n_slices"] == 2 and res["n_series"] == 1
    assert res["head2"]["weighted_log_loss"] == pytest.approx((math.log(2) + l2) / 2)
    assert res["baseline"]["weighted_log_loss"] == pytest.approx(math.log(2))
    assert res["head1"] is None


def test_eval_head1_matches_manual_forward(tmp_path, data):
    net = ToyNet(); net.eval()
    x = paddle.to_tensor(np.stack([data[1].items[0][0][:2]]))
    l2, l1 = net.heads(x, paddle.to_tensor([[True, True]]))
    f = paddle.nn.functional.relu(net.feat(x.reshape([1, 2, -1])))
    np.testing.assert_allclose(l1.numpy(), net.head1(f).numpy(), rtol=1e-6)
    np.testing.assert_allclose(l2.numpy(), net.head2(f).numpy(), rtol=1e-6)
    res = evaluate(net, data[1], make_cfg(str(tmp_path)), collate_fn=collate, progress=False)
    assert res["n_slices"] == sum(len(i[0]) for i in data[1].items)
    p = write_predictions_csv(res["predictions"], str(tmp_path / "p.csv"))
    import pandas as pd
    df = pd.read_csv(p)
    assert len(df) == res["n_slices"]
    y = df[[f"label_{c}" for c in CLASSES]].to_numpy()
    for head, col in (("head2", "prob_"), ("head1", "prob1_")):  # the written probabilities, scored by sklearn
        want = sklearn_weighted_log_loss(y, df[[col + c for c in CLASSES]].to_numpy())
        assert res[head]["weighted_log_loss"] == pytest.approx(want, abs=1e-5), head


def test_amp_on_cpu_is_refused(tmp_path, data):
    with pytest.raises(ValueError, match=r"Global\.amp=fp16 needs a GPU: Paddle's auto_cast is a no-op on cpu \(it "
                                         r"would run fp32 with a warning\)\. Use -o Global\.amp=null on CPU"):
        build(make_cfg(str(tmp_path), **{"Global.amp": "fp16"}), *data)


@pytest.mark.slow
def test_tools_train_resume_eval_end_to_end(tmp_path):
    """tools/train.py on a tiny synthetic cache with the real IHDNet (micro), resume, then tools/eval.py."""
    import subprocess
    import sys

    import pandas as pd

    from ppihd.synthetic import generate_dataset

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    generate_dataset(data, n_train=10, n_test=1, size=64, slices_min=3, slices_max=5, progress=False)
    cfg = os.path.join(root, "configs", "demo", "swin_micro_seq.yaml")
    common = ["-o", f"Data.root={data}", "-o", "Data.image_size=32",
              "-o", f"Global.output_dir={out}", "-o", "Global.progress_bar=false", "-o", "Global.log_interval=1",
              "-o", "Global.eval_interval=2", "-o", "Global.save_interval=2", "-o", "Data.num_workers=1"]

    def run(tool, *args):
        r = subprocess.run([sys.executable, os.path.join(root, "tools", tool), "-c", cfg, *common, *args],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r

    run("preprocess.py", "--no-progress")
    run("train.py", "-o", "Global.iters=2")
    assert read_manifest(os.path.join(out, "latest"))["iteration"] == 2
    # continue the same run to 4 iterations from latest (the schedule length changes, the state carries over)
    run("train.py", "-o", "Global.iters=4", "-o", f"Global.checkpoints={out}/latest")
    log = open(os.path.join(out, "train.log")).read()
    assert "resumed from" in log and "at iteration 2" in log and "iter 3/4" in log and "iter 1/4" not in log
    assert read_manifest(os.path.join(out, "latest"))["iteration"] == 4
    assert os.path.isfile(os.path.join(out, "config.yaml")) and os.path.isfile(os.path.join(out, "curves.png"))
    r = run("eval.py", "-o", f"Global.pretrained_model={out}/best_model", "--output", str(tmp_path / "ev"))
    assert "constant-prior baseline" in r.stdout
    m = json.load(open(tmp_path / "ev" / "metrics.json"))
    assert m["model"].startswith("trained on synthetic phantoms — not for clinical use") and m["provenance"]["synthetic"]
    assert set(m["head2"]["log_loss"]) == {"epidural", "intraparenchymal", "intraventricular", "subarachnoid",
                                           "subdural", "any"}
    df = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    idx = pd.read_csv(os.path.join(data, "cache_32", "index.csv"))
    assert len(df) == m["n_slices"] == int((idx["split"] == "val").sum())
    y = df[[f"label_{c}" for c in CLASSES]].to_numpy()
    for head, col in (("head2", "prob_"), ("head1", "prob1_")):  # the written probabilities, scored by sklearn
        want = sklearn_weighted_log_loss(y, df[[col + c for c in CLASSES]].to_numpy())
        assert m[head]["weighted_log_loss"] == pytest.approx(want, abs=1e-5), head
    # provenance: the checkpoint says it was trained on the synthetic set (10 series generated above), and
    # inference on a series says so first in its log, in provenance.json and in every series JSON
    prov = read_manifest(os.path.join(out, "best_model"))["provenance"]
    assert prov["synthetic"] is True and prov["data_root"] == os.path.abspath(data)
    assert sum(prov["num_series"].values()) == 10 and prov["paddle"] == paddle.__version__
    r = subprocess.run([sys.executable, os.path.join(root, "tools", "infer.py"), "-c", cfg, *common,
                        "-o", f"Global.pretrained_model={out}/best_model", "--input", os.path.join(data, "stage_2_test"),
                        "--output", str(tmp_path / "inf"), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 3), r.stderr[-3000:]
    first = [ln for ln in r.stderr.splitlines() if "MODEL:" in ln][0]
    assert "WARNING MODEL: trained on synthetic phantoms — not for clinical use" in first
    assert json.load(open(tmp_path / "inf" / "provenance.json"))["provenance"] == prov
    (sj,) = [f for f in os.listdir(tmp_path / "inf" / "series") if f.endswith(".json")]
    assert "synthetic phantoms" in json.load(open(tmp_path / "inf" / "series" / sj))["model"]
    # a missing checkpoint is a clear error, exit status 2
    r = subprocess.run([sys.executable, os.path.join(root, "tools", "eval.py"), "-c", cfg, *common],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Global.pretrained_model" in r.stderr


def test_log_line_has_batch_cost_reader_cost_and_ips(tmp_path, data):
    """PaddleClas-style timing: a loader that sleeps 30 ms per series (2 series per step) must show a reader_cost
    of at least 60 ms per step, inside a batch_cost that includes it; both in the log and the history."""
    import time as _time

    class Slow(ToyDataset):
        def get(self, i, rng):
            _time.sleep(0.03)
            return super().get(i, rng)

    slow = Slow(10, 0)
    cfg = make_cfg(str(tmp_path), iters=4, **{"Global.log_interval": 2, "Global.eval_interval": 0,
                                              "Global.save_interval": 0})
    hist = build(cfg, slow, data[1]).train()
    rows = hist["train"]
    assert [r["iter"] for r in rows] == [2, 4]
    for r in rows:
        assert r["reader_cost"] >= 0.06 and r["batch_cost"] >= r["reader_cost"]
    log = open(tmp_path / "train.log").read()
    assert re.search(r"iter 2/4 .* batch_cost \d+\.\d{4} s reader_cost \d+\.\d{4} s ips \d+\.\d slices/s eta ", log)


def test_changed_settings_on_resume_hand_worked():
    from ppihd.engine.trainer import changed_settings

    old = {"Global": {"seed": 42, "iters": 10, "log_interval": 2}, "Optimizer": {"lr": {"learning_rate": 0.1}},
           "DataLoader": {"Train": {"batch_series": 1, "num_workers": 0}}}
    new = {"Global": {"seed": 7, "iters": 20, "log_interval": 5}, "Optimizer": {"lr": {"learning_rate": 0.2}},
           "DataLoader": {"Train": {"batch_series": 2, "num_workers": 4}}}
    # iters, log_interval and num_workers may change; seed, lr and batch may not
    assert changed_settings(old, new) == ["DataLoader.Train.batch_series", "Global.seed",
                                          "Optimizer.lr.learning_rate"]
    assert changed_settings(old, old) == [] and changed_settings(None, new) == []


def test_output_folder_with_a_run_is_refused_then_resumed_or_started_over(tmp_path, data):
    """Training into a folder that holds checkpoints: refused naming the way out; resuming with a changed seed
    warns with the key; Global.start_over replaces the run; a second live run is refused naming the first."""
    import logging

    from ppihd.engine.trainer import claim_output_dir
    from ppihd.utils.runlock import LockError

    cfg = make_cfg(str(tmp_path), iters=4, **{"Global.eval_interval": 0})
    build(cfg, *data).train()
    with pytest.raises(RuntimeError, match=r"already holds a training run \(latest, best_model\).*start_over"):
        claim_output_dir(cfg)
    lock = claim_output_dir(make_cfg(str(tmp_path), iters=4, **{"Global.start_over": "true"}))
    with pytest.raises(LockError, match=rf"in use by tools/train.py \(pid {os.getpid()}"):
        claim_output_dir(make_cfg(str(tmp_path), iters=4, **{"Global.checkpoints": str(tmp_path / "latest")}))
    lock.release()
    claim_output_dir(make_cfg(str(tmp_path), iters=4, **{"Global.checkpoints": str(tmp_path / "latest")})).release()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tr = build(make_cfg(str(tmp_path), iters=8, **{"Global.seed": 7, "Global.eval_interval": 0}), *data)
    tr.log.addHandler(handler)
    tr.resume(str(tmp_path / "latest"))
    msg = [r.getMessage() for r in records if r.levelname == "WARNING"]
    assert any("Global.seed: 42 -> 7" in m for m in msg) and not any("Global.iters" in m for m in msg), msg


def test_window_checks_at_the_same_iterations_on_every_rank(tmp_path, data):
    """The loss window (and its finiteness check) is read after the same iterations on rank 0 (which saves) and on
    the other ranks (which do not): iters 12, log every 5, save every 3, no eval -> 3, 5, 6, 9, 10, 12."""
    from ppihd.engine.trainer import window_reads

    want = [3, 5, 6, 9, 10, 12]
    assert [it for it in range(1, 13) if any(window_reads(it, 12, 5, 0, 3))] == want
    reads = {}
    for rank in (0, 1):
        cfg = make_cfg(str(tmp_path / f"rank{rank}"), iters=12, **{"Global.log_interval": 5,
                                                                    "Global.eval_interval": 0,
                                                                    "Global.save_interval": 3})
        tr = build(cfg, *data)
        tr.is_main = rank == 0   # rank 1's schedule: no saving (one process: no collective to agree with)
        calls, orig = [], tr._read_window
        tr._read_window = lambda it, calls=calls, orig=orig: (calls.append(it), orig(it))[1]
        tr.train()
        reads[rank] = calls
    assert reads[0] == reads[1] == want
    assert (tmp_path / "rank0" / "latest.json").is_file() and not (tmp_path / "rank1" / "latest.json").exists()


def test_a_non_finite_window_on_one_rank_stops_every_rank(monkeypatch):
    """The failure flags are all-reduced (summed) over the ranks: a rank whose own window is finite raises too,
    naming the failing rank; the failing rank raises its own message. The all_reduce is simulated here (rank 1 of
    2 failed); tests/test_distributed.py runs it under the launcher."""
    import types

    import paddle.distributed as dist

    from ppihd.engine.trainer import Trainer

    def all_reduce(t, *a, **k):   # rank 1's flag added to this rank's
        t.set_value(t.numpy() + np.array([0.0, 1.0], "float32"))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    with pytest.raises(FloatingPointError, match=r"rank\(s\) 1 of 2 stopped: their loss window check failed"):
        Trainer._agree_finite(types.SimpleNamespace(rank=0, world=2), None)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: None)   # rank 1's own flag is already set
    with pytest.raises(FloatingPointError, match="rank 1 of 2: iterations 3-4: loss is not finite"):
        Trainer._agree_finite(types.SimpleNamespace(rank=1, world=2), "iterations 3-4: loss is not finite")
    Trainer._agree_finite(types.SimpleNamespace(rank=0, world=1), None)   # one rank, finite: nothing
    with pytest.raises(FloatingPointError, match="^x$"):
        Trainer._agree_finite(types.SimpleNamespace(rank=0, world=1), "x")
