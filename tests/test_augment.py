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
    assert aug.size == 32 and aug.scale == (0.8, 1.2) and aug.interp is not None
    with pytest.raises(ValueError, match="crop_oversize"):
        TrainAugment(crop_oversize="mirror")
    with pytest.raises(ValueError, match="interpolation"):
        TrainAugment(interpolation="lanczos9")
