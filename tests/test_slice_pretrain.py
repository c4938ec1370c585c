"""Slice-level backbone pre-training (tools/pretrain_slices.py, ppihd.engine.slice_pretrain)."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ppihd.arch import build_model
from ppihd.arch.weights import load_backbone_pretrained
from ppihd.data.dataset import SeriesDataset, read_index
from ppihd.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from ppihd.synthetic import generate_dataset

    data = str(tmp_path_factory.mktemp("sp") / "data")
    generate_dataset(data, n_train=10, n_test=0, size=64, slices_min=3, slices_max=5, progress=False)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess.py"), "-c", CFG,
                        "-o", f"Data.root={data}", "-o", "Data.image_size=32", "-o", "Data.val_fraction=0.3",
                        "-o", "Data.num_workers=1", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return data


def _cfg(data, out, *extra):
    return load_config(CFG, [f"Data.root={data}", "Data.image_size=32",
                             f"Global.output_dir={out}", "Global.num_threads=1", *extra])


def test_sampler_reads_exactly_the_cached_labelled_slices(cache, tmp_path):
    from ppihd.data.cache import series_file
    from ppihd.engine.slice_pretrain import SliceSampler

    cfg = _cfg(cache, tmp_path)
    ds = SeriesDataset(cfg, "train")
    s = SliceSampler(ds)
    idx = read_index(os.path.join(cache, "cache_32", "index.csv"))
    rows = idx[(idx["status"] == "ok") & (idx["split"] == "train")]
    assert len(s) == len(rows) == ds.num_slices
    # slice k of the sampler is row refs[k] of its series' cache file, with that row's labels
    rng = np.random.default_rng(1)
    for k in rng.choice(len(s), 5, replace=False):
        i, r = s.refs[k]
        sid = ds.items[i]["series_id"]
        want = np.load(series_file(ds.cache_dir, sid))[r]
        np.testing.assert_array_equal(s.images(np.array([k]))[0], want)
        lab = rows[(rows["series_id"] == sid) & (rows["slice_idx"] == r)][
            ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]].to_numpy()
        np.testing.assert_array_equal(s.labels[k], lab[0].astype(np.float32))


def test_loss_is_the_class_weighted_bce_normalised_by_the_weights(cache, tmp_path):
    from ppihd.engine.slice_pretrain import SlicePretrainer

    pre = SlicePretrainer(_cfg(cache, tmp_path, "SlicePretrain.iters=1"))
    # logits 0: every term is ln 2, whatever the weights
    z = paddle.zeros([3, 6])
    y = paddle.to_tensor(np.eye(6, dtype=np.float32)[:3])
    assert math.isclose(float(pre.loss(z, y)), math.log(2), rel_tol=1e-6)
    # one slice, logit 2 on 'any' (weight 2) with label 1, logit -1 on epidural with label 1, others 0 / label 0
    logits = paddle.to_tensor(np.array([[-1, 0, 0, 0, 0, 2]], dtype=np.float32))
    labels = paddle.to_tensor(np.array([[1, 0, 0, 0, 0, 1]], dtype=np.float32))
    hand = (math.log(1 + math.e) + 4 * math.log(2) + 2 * math.log(1 + math.exp(-2))) / 7
    assert math.isclose(float(pre.loss(logits, labels)), hand, rel_tol=1e-6)


def test_tool_writes_a_backbone_that_train_loads_as_pretrained(cache, tmp_path):
    out = str(tmp_path / "out")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pretrain_slices.py"), "-c", CFG,
                        "-o", f"Data.root={cache}", "-o", "Data.image_size=32",
                        "-o", f"Global.output_dir={out}", "-o", "Global.num_threads=1",
                        "-o", "SlicePretrain.iters=4", "-o", "SlicePretrain.eval_interval=2",
                        "-o", "SlicePretrain.batch_slices=4"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "constant-prior baseline" in r.stdout
    m = json.load(open(os.path.join(out, "slice_pretrain", "metrics.json")))
    assert [h["iter"] for h in m["history"]] == [2, 4]
    idx = read_index(os.path.join(cache, "cache_32", "index.csv"))
    ok = idx[idx["status"] == "ok"]   # the synthetic set labels every slice
    assert (m["train_slices"], m["val_slices"]) == ((ok["split"] == "train").sum(), (ok["split"] == "val").sum())
    assert m["best"]["val_wll"] == min(h["val_wll"] for h in m["history"])
    assert os.path.getsize(os.path.join(out, "slice_pretrain", "curves.png")) > 1000
    # the backbone file is a full backbone state: loading it into a fresh model misses nothing and changes it
    cfg = _cfg(cache, tmp_path)
    net = build_model(cfg["Arch"])
    before = {k: v.numpy().copy() for k, v in net.backbone.state_dict().items()}
    rep = load_backbone_pretrained(net.backbone, os.path.join(out, "slice_pretrain", "last.pdparams"), log=False)
    assert not rep.missing and not rep.unexpected
    after = net.backbone.state_dict()
    assert any(not np.array_equal(before[k], after[k].numpy()) for k in before)


def test_no_labelled_slices_is_a_clear_error(tmp_path):
    from ppihd.engine.slice_pretrain import SliceSampler

    class Empty:
        items = []
        cache_dir = str(tmp_path)
        split = "train"

    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))}: no labelled slices in split 'train'; run "
                                        r"tools/preprocess\.py on a labelled data set first$"):
        SliceSampler(Empty())


def test_augment_modes(cache, tmp_path):
    from ppihd.engine.slice_pretrain import SlicePretrainer

    assert SlicePretrainer(_cfg(cache, tmp_path, "SlicePretrain.augment=none")).augment is None
    pre = SlicePretrainer(_cfg(cache, tmp_path, "SlicePretrain.augment=flip"))
    x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y = pre.augment(x, np.random.default_rng(1))
    # every slice comes back as itself, its h-flip, its v-flip or both (no crop, no resampling)
    kinds = set()
    for a, b in zip(x, y):
        match = [k for k, f in (("id", a), ("h", a[:, ::-1]), ("v", a[::-1]), ("hv", a[::-1, ::-1]))
                 if np.array_equal(b, f)]
        assert match, "a slice was changed by more than flips"
        kinds.add(match[0])
    assert kinds == {"id", "h", "v", "hv"}
    with pytest.raises(ValueError, match="SlicePretrain.augment 'rotate' unknown"):
        SlicePretrainer(_cfg(cache, tmp_path, "SlicePretrain.augment=rotate"))


def test_stem_head_adds_its_weighted_loss(cache, tmp_path):
    from ppihd.engine.slice_pretrain import SlicePretrainer

    extra = ["Arch.backbone.stem=conv", "Arch.backbone.stem_channels=[8,16,24]"]
    pre = SlicePretrainer(_cfg(cache, tmp_path, *extra, "SlicePretrain.stem_head_weight=0.5"))
    assert pre.stem_head is not None and pre.stem_head.weight.shape == [24, 6]
    # at initialisation both heads have zero weights and the prior logits as bias, so each head's loss is the
    # class-weighted BCE of the constant prior, computed here by hand; the total is (1 + 0.5) times that
    y = pre.train.labels[:7]
    p = np.clip(pre.prior, 1e-4, 1 - 1e-4)
    w = np.array([1, 1, 1, 1, 1, 2], dtype=np.float64)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    hand = float(((bce * w).sum(axis=1) / w.sum()).mean())
    got = float(pre.batch_loss(pre.train.images(np.arange(7)), y))
    assert math.isclose(got, 1.5 * hand, rel_tol=1e-5)
    # without the stem head: the slice head's loss alone
    pre0 = SlicePretrainer(_cfg(cache, tmp_path, *extra, "SlicePretrain.stem_head_weight=0"))
    assert pre0.stem_head is None
    assert math.isclose(float(pre0.batch_loss(pre0.train.images(np.arange(7)), y)), hand, rel_tol=1e-5)
    with pytest.raises(ValueError, match="needs Arch.backbone.stem: conv"):
        SlicePretrainer(_cfg(cache, tmp_path, "Arch.backbone.stem=patch", "Arch.backbone.stem_channels=null",
                             "SlicePretrain.stem_head_weight=1.0"))
