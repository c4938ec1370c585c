"""Metric tests: hand-computed weighted log loss, clipping, sklearn log_loss with sample weights, AUC."""
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ppihd.metric import (compute_metrics, per_class_auc, per_class_log_loss, prior_probabilities,
                          weighted_log_loss)

W = [1, 1, 1, 1, 1, 2]


def test_hand_computed_two_images():
    # image 1: all labels 0, all p = 0.5 -> every ll = log 2 -> L1 = log 2
    # image 2: any = 1 with p = 0.8 (ll = -log 0.8), others 0 with p = 0.1 (ll = -log 0.9)
    #          L2 = (5 * -log 0.9 + 2 * -log 0.8) / 7
    y = np.array([[0] * 6, [0, 0, 0, 0, 0, 1]])
    p = np.array([[0.5] * 6, [0.1] * 5 + [0.8]])
    l1 = math.log(2)
    l2 = (5 * -math.log(0.9) + 2 * -math.log(0.8)) / 7
    assert weighted_log_loss(y, p, W) == pytest.approx((l1 + l2) / 2, rel=1e-12)
    np.testing.assert_allclose(per_class_log_loss(y, p),
                               [(math.log(2) - math.log(0.9)) / 2] * 5 + [(math.log(2) - math.log(0.8)) / 2])


def test_clipping_at_eps():
    # a confident mistake p = 0 for y = 1 is clipped to eps: ll = -log(eps); with eps 1e-7 = 16.118...
    y = np.array([[1, 0, 0, 0, 0, 0]])
    p = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # class 0 ll = -log(1e-7); the others -log(1 - 1e-7) ~ 1e-7
    expected = (-math.log(1e-7) + 6 * -math.log1p(-1e-7)) / 7
    assert weighted_log_loss(y, p, W, eps=1e-7) == pytest.approx(expected, rel=1e-9)
    assert weighted_log_loss(y, p, W, eps=1e-15) == pytest.approx((-math.log(1e-15) + 6 * -math.log1p(-1e-15)) / 7,
                                                                  rel=1e-9)
    assert np.isfinite(weighted_log_loss(np.ones((1, 6)), np.zeros((1, 6)), W))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_log_loss_with_sample_weights(seed):
    rng = np.random.default_rng(seed)
    n = 50
    y = (rng.random((n, 6)) < 0.3).astype(int)
    p = rng.random((n, 6))
    p[0, 0] = 0.0  # exercises the clip (both sides clip at the same eps)
    p[1, 1] = 1.0
    eps = 1e-7
    # flatten to N*6 binary rows; sample weight of a row = its class weight
    rows_y = y.reshape(-1)
    rows_p = np.clip(p.reshape(-1), eps, 1 - eps)
    rows_w = np.tile(W, n)
    ref = log_loss(rows_y, np.stack([1 - rows_p, rows_p], axis=1), sample_weight=rows_w, labels=[0, 1])
    assert weighted_log_loss(y, p, W, eps=eps) == pytest.approx(ref, rel=1e-9)


def test_per_class_auc_vs_sklearn_and_nan_for_single_value():
    rng = np.random.default_rng(3)
    y = (rng.random((40, 6)) < 0.4).astype(int)
    y[:, 0] = 0  # class 0 never positive -> NaN
    p = rng.random((40, 6))
    auc = per_class_auc(y, p)
    assert math.isnan(auc[0])
    for c in range(1, 6):
        assert auc[c] == pytest.approx(roc_auc_score(y[:, c], p[:, c]))
    # perfect ranking -> 1
    yy = np.array([[0] * 6, [1] * 6])
    np.testing.assert_allclose(per_class_auc(yy, np.array([[0.2] * 6, [0.9] * 6])), 1.0)
    m = compute_metrics(y, p)
    assert m["auc"]["epidural"] is None and m["n_images"] == 40
    assert m["mean_auc"] == pytest.approx(np.mean(auc[1:]))


def test_constant_prior_baseline_is_entropy():
    # predicting the positive rate r of a class scores its binary entropy H(r) on the same labels
    y = np.zeros((10, 6)); y[:2, :] = 1  # rate 0.2 for every class
    prior = prior_probabilities(y)
    np.testing.assert_allclose(prior, 0.2)
    h = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert weighted_log_loss(y, np.tile(prior, (10, 1)), W) == pytest.approx(h, rel=1e-9)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"^metric: y_true and y_prob must both be \[N, C\], got \(3, 6\) and \(3, 5\)$"):
        weighted_log_loss(np.zeros((3, 6)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"^metric: y_prob contains NaN or inf$"):
        weighted_log_loss(np.zeros((1, 6)), np.full((1, 6), np.nan))
