"""Augmentation tests: shapes, exact flips, zero padding for scale > 1, determinism, per-series draws."""
import numpy as np
import pytest

from ppihd.data.augment import TrainAugment, build_train_augment
from ppihd.utils.config import load_config


def series(s=3, h=20, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(s, h, w, 3), dtype=np.uint8)


def test_output_shape_dtype():
    aug = TrainAugment(size=12, rotate=180.0)
    out = aug(series(), np.random.default_rng(0))
    assert out.shape == (3, 12, 12, 3) and out.dtype == np.uint8
    out = TrainAugment(size=12, per_slice=False, rotate=30.0)(series(s=70), np.random.default_rng(0))
    assert out.shape == (70, 12, 12, 3)
    assert TrainAugment(size=12)(series(s=0), np.random.default_rng(0)).shape == (0, 12, 12, 3)


@pytest.mark.parametrize("per_slice", [True, False])
def test_flips_are_exact(per_slice):
    x = series(h=16, w=16)
    rng = np.random.default_rng(0)
    h = TrainAugment(size=16, random_resized_crop=False, hflip=1.0, vflip=0.0, per_slice=per_slice)
    np.testing.assert_array_equal(h(x, rng), x[:, :, ::-1])
    v = TrainAugment(size=16, random_resized_crop=False, hflip=0.0, vflip=1.0, per_slice=per_slice)
    np.testing.assert_array_equal(v(x, rng), x[:, ::-1])
    hv = TrainAugment(size=16, random_resized_crop=False, hflip=1.0, vflip=1.0, per_slice=per_slice)
    np.testing.assert_array_equal(hv(x, rng), x[:, ::-1, ::-1])
    ident = TrainAugment(size=16, random_resized_crop=False, hflip=0.0, vflip=0.0, per_slice=per_slice)
    np.testing.assert_array_equal(ident(x, rng), x)


def test_flip_probability_about_half():
    aug = TrainAugment(size=8, random_resized_crop=False, hflip=0.5, vflip=0.0)
    rng = np.random.default_rng(1)
    flips = sum(aug.draw(rng, 8, 8)["hflip"] for _ in range(2000))
    assert 900 < flips < 1100  # binomial(2000, 0.5): mean 1000, sd 22


def test_scale_above_one_pads_with_zeros():
    # scale 1.44, ratio 1: a 12x12 box over a 10x10 image of 7s; output size 12 keeps pixels 1:1
    x = np.full((1, 10, 10, 3), 7, dtype=np.uint8)
    aug = TrainAugment(size=12, scale=(1.44, 1.44), ratio=(1.0, 1.0), hflip=0, vflip=0, crop_oversize="pad")
    for seed in range(5):
        out = aug(x, np.random.default_rng(seed))
        assert (out == 7).sum() == 100 * 3 and (out == 0).sum() == 44 * 3
    clamp = TrainAugment(size=10, scale=(1.44, 1.44), ratio=(1.0, 1.0), hflip=0, vflip=0, crop_oversize="clamp")
    np.testing.assert_array_equal(clamp(x, np.random.default_rng(0)), x)


def test_crop_box_statistics_match_scale_and_ratio():
    aug = TrainAugment(size=8, scale=(0.8, 1.2), ratio=(0.75, 4 / 3))
    rng = np.random.default_rng(2)
    for _ in range(200):
        y0, x0, ch, cw = aug.draw(rng, 100, 100)["box"]
        assert 0.8 * 1e4 * 0.97 <= ch * cw <= 1.2 * 1e4 * 1.03
        assert 0.75 * 0.97 <= cw / ch <= 4 / 3 * 1.03
        # the box always covers the image on an oversize side and sits inside it otherwise
        assert (x0 <= 0 and x0 + cw >= 100) if cw > 100 else (0 <= x0 and x0 + cw <= 100)
        assert (y0 <= 0 and y0 + ch >= 100) if ch > 100 else (0 <= y0 and y0 + ch <= 100)


def test_deterministic_per_seed():
    x = series(s=4, h=24, w=24)
    aug = TrainAugment(size=16, rotate=180.0)
    a = aug(x, np.random.default_rng(123))
    b = aug(x, np.random.default_rng(123))
    c = aug(x, np.random.default_rng(124))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_per_series_draw_is_identical_across_slices():
    one = series(s=1, h=24, w=24)
    x = np.repeat(one, 5, axis=0)  # five identical slices
    out = TrainAugment(size=16, rotate=90.0, per_slice=False)(x, np.random.default_rng(5))
    for i in range(1, 5):
        np.testing.assert_array_equal(out[i], out[0])
    # and equal to the per-slice path applied with the same single draw
    aug = TrainAugment(size=16, rotate=90.0)
    p = aug.draw(np.random.default_rng(5), 24, 24)
    np.testing.assert_array_equal(out[0], aug.apply(one[0], p))
    # per-slice draws differ between identical slices
    outs = TrainAugment(size=16, rotate=90.0, per_slice=True)(x, np.random.default_rng(5))
    assert any(not np.array_equal(outs[i], outs[0]) for i in range(1, 5))


def test_rotation_180_is_double_flip():
    x = series(s=1, h=16, w=16)
    aug = TrainAugment(size=16, random_resized_crop=False, hflip=0, vflip=0, rotate=180.0)
    p = {"box": (0, 0, 16, 16), "hflip": False, "vflip": False, "angle": 180.0}
    np.testing.assert_array_equal(aug.apply(x[0], p), x[0, ::-1, ::-1])


def test_build_from_paper_config_and_errors():
    cfg = load_config(None, ["Data.image_size=32"])
    aug = build_train_augment(cfg)
    import cv2

    assert aug.size == 32 and aug.scale == (0.8, 1.2) and aug.interp == cv2.INTER_CUBIC   # the paper's bicubic
    with pytest.raises(ValueError, match=r"^DataLoader\.Train\.augment\.crop_oversize must be 'pad' or 'clamp', "
                                        r"got 'mirror'$"):
        TrainAugment(crop_oversize="mirror")
    with pytest.raises(ValueError, match=r"^DataLoader\.Train\.augment\.interpolation must be one of \[.*'bicubic'.*\], "
                                        r"got 'lanczos9'$"):
        TrainAugment(interpolation="lanczos9")


# --- crop_sampler: reference -----------------------------------------------------------------------------------
def _reference_get_params(rnd, H, W, scale=(0.8, 1.2), ratio=(3 / 4, 4 / 3)):
    """The authors' RandomResizedCrop.get_params (easymia/transforms/transforms.py), restated with Python's
    ``random`` module: an independent implementation to compare the distribution of ppihd's boxes against."""
    import math
    for _ in range(10):
        target = rnd.uniform(*scale) * H * W
        ar = rnd.uniform(*ratio)
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if rnd.random() < 0.5:
            w, h = h, w
        if w <= W and h <= H:
            return rnd.randint(0, H - h), rnd.randint(0, W - w), h, w
    side = min(H, W)
    return (H - side) // 2, (W - side) // 2, side, side


def _boxes(draw, n):
    return np.array([draw() for _ in range(n)], dtype=np.float64)  # rows (y0, x0, h, w)


@pytest.mark.parametrize("H,W", [(1000, 1000), (300, 200)])
def test_reference_sampler_matches_reference_distribution(H, W):
    import random

    from scipy.stats import ks_2samp

    n = 20000
    aug = TrainAugment(size=8, crop_sampler="reference", crop_oversize="pad")
    rng = np.random.default_rng(11)
    ours = _boxes(lambda: aug.draw(rng, H, W)["box"], n)
    rnd = random.Random(5)
    ref = _boxes(lambda: _reference_get_params(rnd, H, W), n)
    side = min(H, W)
    fb = lambda b: np.mean((b[:, 2] == side) & (b[:, 3] == side) & (b[:, 0] == (H - side) // 2)
                           & (b[:, 1] == (W - side) // 2))
    # every box lies inside the slice (no zero padding in the reference)
    assert (ours[:, 0] >= 0).all() and (ours[:, 1] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= H).all() and (ours[:, 1] + ours[:, 3] <= W).all()
    # fraction of centred-square fallbacks: two binomial(20000, ~0.13) samples, sd of the difference ~0.0034
    assert abs(fb(ours) - fb(ref)) < 0.015
    if H == W:
        # closed form (no rounding): an attempt fits iff s <= min(r, 1/r), s ~ U(0.8, 1.2), r ~ U(3/4, 4/3):
        # p = [0.2^2 / 2 + ln 1.25 - 0.2] / 0.4 / (4/3 - 3/4) = 0.18490; fallback = (1 - p)^10 = 0.1296
        p = (0.02 + np.log(1.25) - 0.2) / 0.4 / (4 / 3 - 3 / 4)
        assert abs(fb(ours) - (1 - p) ** 10) < 0.01
    # ratio and area histograms, and the offsets: same distributions (two-sample KS)
    stats = {"ratio": (ours[:, 3] / ours[:, 2], ref[:, 3] / ref[:, 2]),
             "area": (ours[:, 2] * ours[:, 3], ref[:, 2] * ref[:, 3]),
             "y0": (ours[:, 0], ref[:, 0]), "x0": (ours[:, 1], ref[:, 1])}
    for name, (a, b) in stats.items():
        assert ks_2samp(a, b).pvalue > 1e-3, name
    if H == W:  # on a square slice the swap makes the ratio histogram symmetric in log, unlike U(3/4, 4/3)
        lr = np.log(ours[:, 3] / ours[:, 2])
        assert abs(np.mean(lr > 0) - np.mean(lr < 0)) < 0.03


def test_reference_sampler_differs_from_clamp():
    # clamp, the old approximation, gives more whole-slice crops at 224^2 than the reference rule
    import random
    rng, rnd = np.random.default_rng(0), random.Random(0)
    clamp = TrainAugment(size=8, crop_oversize="clamp")
    full_ref = np.mean([_reference_get_params(rnd, 224, 224)[2:] == (224, 224) for _ in range(10000)])
    full_clamp = np.mean([clamp.draw(rng, 224, 224)["box"][2:] == (224, 224) for _ in range(10000)])
    assert 0.10 < full_ref < 0.135 and full_clamp > full_ref + 0.03
    with pytest.raises(ValueError, match=r"^DataLoader\.Train\.augment\.crop_sampler must be 'ppihd' or 'reference', "
                                        r"got 'torch'$"):
        TrainAugment(crop_sampler="torch")
