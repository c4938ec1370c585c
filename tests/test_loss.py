"""Loss tests: hand-worked values for plain/SW/DW BCE (incl. the all-positive DW case), masking and 2*L2 + L1."""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ppihd.loss import build_loss, dynamic_pos_weight

LOG2 = math.log(2.0)
SW = [1.0, 1.0, 1.0, 1.0, 1.0, 2.0]


def make(static=False, dynamic=False, ds=False, **kw):
    cfg = {"static_weight": static, "class_weights": SW, "dynamic_weight": dynamic, "head2_weight": 2.0,
           "head1_weight": 1.0, "unlabeled_weight": 1.0, "dynamic_weight_eps": 1e-7}
    cfg.update(kw)
    return build_loss(cfg, deep_supervision=ds)


def t(x):
    return paddle.to_tensor(np.asarray(x, dtype="float32"))


def test_plain_bce_zero_logits_is_log2():
    labels = np.random.default_rng(0).integers(0, 2, size=(2, 3, 6))
    out = make()({"logits": t(np.zeros((2, 3, 6)))}, t(labels), None)
    assert out["loss"].item() == pytest.approx(2 * LOG2, rel=1e-6)  # head2_weight 2, no DS
    assert out["l2"].item() == pytest.approx(LOG2, rel=1e-6)
    assert "l1" not in out


def test_plain_bce_matches_paddle_reference_on_random_values():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 5, 6)) * 3, rng.integers(0, 2, size=(2, 5, 6))
    ref = F.binary_cross_entropy_with_logits(t(x), t(y), reduction="mean").item()
    assert make()(t(x), t(y))["l2"].item() == pytest.approx(ref, rel=1e-5)


def test_static_weights_any_counts_twice():
    # every element log 2, weights (1,1,1,1,1,2) averaged over the 6 classes: 7/6 log 2
    out = make(static=True)(t(np.zeros((1, 2, 6))), t(np.ones((1, 2, 6))))
    assert out["l2"].item() == pytest.approx(7 / 6 * LOG2, rel=1e-6)
    # logits log 3: sigmoid 3/4; positive any -> 2*log(4/3), negatives elsewhere -> log 4
    y = np.zeros((1, 1, 6)); y[..., 5] = 1
    out = make(static=True)(t(np.full((1, 1, 6), math.log(3))), t(y))
    assert out["l2"].item() == pytest.approx((5 * math.log(4) + 2 * math.log(4 / 3)) / 6, rel=1e-6)


def test_dynamic_weight_hand_case():
    # 4 valid slices, one positive per class: p = 2*3/(1+3) = 1.5; zero logits:
    # per class (1.5 + 3) log2 / 4 = 1.125 log 2
    y = np.zeros((1, 4, 6)); y[0, 0] = 1
    x = np.zeros((1, 4, 6))
    pw = dynamic_pos_weight(t(y), t(np.ones((1, 4, 6))))
    np.testing.assert_allclose(pw.numpy(), np.full(6, 6 / (4 + 1e-7)), rtol=1e-6)
    assert make(dynamic=True)(t(x), t(y))["l2"].item() == pytest.approx(1.125 * LOG2, rel=1e-6)
    # with SW on top: any x2 -> 1.125 log2 * 7/6
    assert make(static=True, dynamic=True)(t(x), t(y))["l2"].item() == pytest.approx(1.125 * LOG2 * 7 / 6,
                                                                                          rel=1e-6)


def test_dynamic_weight_matches_paddle_pos_weight():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(1, 7, 6)), rng.integers(0, 2, size=(1, 7, 6)).astype(float)
    n_pos = y.reshape(-1, 6).sum(0)
    p = 2 * (7 - n_pos) / (7 + 1e-7)
    ref = F.binary_cross_entropy_with_logits(t(x), t(y), weight=t(SW), pos_weight=t(p), reduction="mean").item()
    assert make(static=True, dynamic=True)(t(x), t(y))["l2"].item() == pytest.approx(ref, rel=1e-5)


def test_dynamic_weight_all_positive_class_contributes_nothing():
    # class 0 positive on both slices: p_0 = 2*0/(2+0+1e-7) = 0 -> its elements give 0 (still counted);
    # classes 1..5 all negative: log 2 each -> mean = 10 log2 / 12
    y = np.zeros((1, 2, 6)); y[..., 0] = 1
    x = np.zeros((1, 2, 6))
    pw = dynamic_pos_weight(t(y), t(np.ones_like(y)))
    assert pw.numpy()[0] == 0.0
    np.testing.assert_allclose(pw.numpy()[1:], 2 * 2 / (2 + 1e-7), rtol=1e-7)
    assert make(dynamic=True)(t(x), t(y))["l2"].item() == pytest.approx(10 / 12 * LOG2, rel=1e-6)
    # every label positive -> the whole loss is exactly 0, whatever the logits
    out = make(dynamic=True)(t(np.random.default_rng(3).normal(size=(1, 3, 6))), t(np.ones((1, 3, 6))))
    assert out["l2"].item() == 0.0


def test_masked_slices_contribute_nothing():
    y = np.zeros((1, 4, 6)); y[0, 0] = 1
    x = np.zeros((1, 4, 6))
    # append two padded slices with wild logits and all-positive labels (would change DW counts too)
    y_pad = np.concatenate([y, np.ones((1, 2, 6))], axis=1)
    x_pad = np.concatenate([x, np.full((1, 2, 6), 50.0)], axis=1)
    mask = np.array([[True] * 4 + [False] * 2])
    for static, dynamic in [(False, False), (True, False), (False, True), (True, True)]:
        ref = make(static, dynamic)(t(x), t(y))["l2"].item()
        got = make(static, dynamic)(t(x_pad), t(y_pad), paddle.to_tensor(mask))["l2"].item()
        assert got == pytest.approx(ref, rel=1e-6)
    # label_mask removes single unknown labels; gradient of masked logits is exactly zero
    xl = paddle.to_tensor(x_pad.astype("float32"), stop_gradient=False)
    lm = np.ones_like(y_pad); lm[0, 1, 2] = 0
    make(True, True)(xl, t(y_pad), paddle.to_tensor(mask), t(lm))["loss"].backward()
    g = xl.grad.numpy()
    assert np.all(g[0, 4:] == 0) and g[0, 1, 2] == 0 and np.all(g[0, 0] != 0)


def test_no_valid_element_gives_zero_not_nan():
    out = make(True, True)(t(np.ones((1, 2, 6))), t(np.ones((1, 2, 6))), paddle.to_tensor([[False, False]]))
    assert out["loss"].item() == 0.0


def test_deep_supervision_total_is_2_l2_plus_l1():
    y = np.zeros((1, 3, 6))
    outs = {"logits": t(np.zeros((1, 3, 6))), "aux_logits": t(np.full((1, 3, 6), math.log(3)))}
    out = make(ds=True)(outs, t(y))
    assert out["l2"].item() == pytest.approx(LOG2, rel=1e-6)
    assert out["l1"].item() == pytest.approx(math.log(4), rel=1e-6)
    assert out["loss"].item() == pytest.approx(2 * LOG2 + math.log(4), rel=1e-6)
    # coefficients come from the config
    out = make(ds=True, head2_weight=0.5, head1_weight=3.0)(outs, t(y))
    assert out["loss"].item() == pytest.approx(0.5 * LOG2 + 3 * math.log(4), rel=1e-6)
    # DS off: aux ignored, no l1
    out = make(ds=False)(outs, t(y))
    assert "l1" not in out and out["loss"].item() == pytest.approx(2 * LOG2, rel=1e-6)
    with pytest.raises(KeyError, match=r"Loss: deep supervision is on \(Arch\.deep_supervision\) but the model output "
                                      r"has no 'aux_logits'"):
        make(ds=True)({"logits": outs["logits"]}, t(y))


def test_pseudo_labelled_series_go_to_lu():
    # series 0 labelled (logits 0 -> log 2), series 1 pseudo (logits log 3, labels 0 -> log 4)
    x = np.zeros((2, 2, 6)); x[1] = math.log(3)
    aux = np.zeros((2, 2, 6)); aux[1] = 100.0  # head 1 on the pseudo series must be ignored
    y = np.zeros((2, 2, 6))
    out = make(ds=True, unlabeled_weight=0.5)({"logits": t(x), "aux_logits": t(aux)}, t(y),
                                             is_pseudo=paddle.to_tensor([False, True]))
    assert out["l2"].item() == pytest.approx(LOG2, rel=1e-6)
    assert out["l1"].item() == pytest.approx(LOG2, rel=1e-6)
    assert out["lu"].item() == pytest.approx(math.log(4), rel=1e-6)
    assert out["loss"].item() == pytest.approx(2 * LOG2 + LOG2 + 0.5 * math.log(4), rel=1e-6)


def test_unknown_loss_name_lists_known():
    with pytest.raises(KeyError, match=r"unknown loss 'Nope'; known losss?: .*IHDLoss"):
        build_loss({"name": "Nope"})
