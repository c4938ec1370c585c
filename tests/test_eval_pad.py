"""DataLoader.Eval.pad_to: the reference evaluation (black slices up to N, no mask) on a micro IHDNet."""
import os

import numpy as np
import paddle
import pytest

from ppihd.data.dataset import collate_series
from ppihd.arch import build_model
from ppihd.engine.evaluator import evaluate, predict_dataset
from ppihd.utils.config import load_config

IMG = 32
CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "swin_b_seq.yaml")


def _cfg(*ov):
    return load_config(CFG, ["Arch.backbone.variant=micro", "Arch.backbone.drop_path_rate=0.0",
                             "Global.progress_bar=false", *ov])


class Series:
    def __init__(self, lengths, seed=0):
        rng = np.random.default_rng(seed)
        self.items = []
        for i, s in enumerate(lengths):
            lab = (rng.random((s, 6)) < 0.3).astype("float32")
            self.items.append({"images": rng.random((s, 3, IMG, IMG)).astype("float32"), "labels": lab,
                               "label_mask": np.ones_like(lab), "series_id": f"s{i}"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def model():
    paddle.seed(0)
    m = build_model(_cfg()["Arch"])
    m.eval()
    return m


def _by_hand(model, images, pad_to):
    """The reference's val/test item: np.pad with zeros to pad_to slices, one series, the model without a mask."""
    s = len(images)
    x = np.zeros((1, max(s, pad_to), 3, IMG, IMG), "float32")
    x[0, :s] = images
    with paddle.no_grad():
        logits = model(paddle.to_tensor(x)).numpy()[0, :s].astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))


def test_pad_to_equals_zero_padded_unmasked_forward(model):
    ds = Series([3, 5])
    for batch in (1, 2):
        got = predict_dataset(model, ds, batch_series=batch, collate_fn=collate_series, progress=False, pad_to=6)
        want = np.concatenate([_by_hand(model, it["images"], 6) for it in ds.items])
        np.testing.assert_allclose(got["prob2"], want, rtol=1e-5, atol=1e-6)
        assert got["prob2"].shape == (8, 6) and got["series_id"] == ["s0"] * 3 + ["s1"] * 5
    # without the switch: each series as it is (no black slices) -- a different prediction
    plain = predict_dataset(model, ds, batch_series=1, collate_fn=collate_series, progress=False)
    want_plain = np.concatenate([_by_hand(model, it["images"], 0) for it in ds.items])
    np.testing.assert_allclose(plain["prob2"], want_plain, rtol=1e-5, atol=1e-6)
    assert np.abs(plain["prob2"] - want).max() > 1e-4
    # head 1 is per slice: black slices do not change it
    np.testing.assert_allclose(got["prob1"], plain["prob1"], rtol=1e-5, atol=1e-6)
    # a series longer than pad_to is run as it is
    longer = predict_dataset(model, ds, batch_series=1, collate_fn=collate_series, progress=False, pad_to=4)
    np.testing.assert_allclose(longer["prob2"][3:], want_plain[3:], rtol=1e-5, atol=1e-6)


def test_evaluate_reads_the_config_key(model):
    ds = Series([2, 4], seed=1)
    cfg = _cfg("DataLoader.Eval.pad_to=6")
    res = evaluate(model, ds, cfg, collate_fn=collate_series, progress=False)
    want = np.concatenate([_by_hand(model, it["images"], 6) for it in ds.items])
    np.testing.assert_allclose(res["predictions"]["prob2"], want, rtol=1e-5, atol=1e-6)
    assert _cfg()["DataLoader"]["Eval"]["pad_to"] is None
