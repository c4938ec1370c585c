"""FixMatch strong augmentation: shapes, dtype, pixel changes, closed-form identities."""
import numpy as np
import pytest

from ppihd.data.strong_augment import StrongAugment, _hat_weights

OFF = {"crop_scale": None, "hflip": 0.0, "vflip": 0.0, "rotate": 0.0, "blur_prob": 0.0, "distortion_prob": 0.0}


def _slices(s=3, h=32, w=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(s, h, w, 3), dtype=np.uint8)
    x[:, 8:20, 10:30] = 255  # a bright block so geometry is visible
    return x


def test_default_keeps_shape_dtype_and_changes_pixels():
    x = _slices()
    y = StrongAugment()(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.uint8
    assert not np.array_equal(y, x)
    # each slice gets its own draw: the three outputs differ from one another in how they moved
    d = [np.abs(y[i].astype(int) - x[i].astype(int)).mean() for i in range(3)]
    assert len(set(np.round(d, 6))) == 3


def test_deterministic_given_the_generator():
    x = _slices()
    a = StrongAugment()(x, np.random.default_rng(7))
    b = StrongAugment()(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_all_off_is_identity():
    x = _slices()
    np.testing.assert_array_equal(StrongAugment(OFF)(x, np.random.default_rng(0)), x)


def test_flips_are_exact():
    x = _slices()
    y = StrongAugment({**OFF, "hflip": 1.0})(x, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x[:, :, ::-1])
    y = StrongAugment({**OFF, "hflip": 1.0, "vflip": 1.0})(x, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x[:, ::-1, ::-1])


def test_blur_of_constant_is_constant_and_blur_smooths():
    c = np.full((2, 24, 24, 3), 77, np.uint8)
    y = StrongAugment({**OFF, "blur_prob": 1.0, "blur_sigma": [1.5, 2.0]})(c, np.random.default_rng(0))
    np.testing.assert_array_equal(y, c)
    x = _slices(1)
    y = StrongAugment({**OFF, "blur_prob": 1.0, "blur_sigma": [1.5, 2.0]})(x, np.random.default_rng(0))
    # blur lowers the neighbour-difference energy of white noise
    assert np.abs(np.diff(y.astype(int), axis=2)).mean() < 0.5 * np.abs(np.diff(x.astype(int), axis=2)).mean()


def test_per_series_draw_applies_the_same_geometry_to_every_slice():
    x = np.repeat(_slices(1), 4, axis=0)
    y = StrongAugment({"per_slice": False})(x, np.random.default_rng(3))
    for i in range(1, 4):
        np.testing.assert_array_equal(y[i], y[0])
    y = StrongAugment({"per_slice": True})(x, np.random.default_rng(3))
    assert any(not np.array_equal(y[i], y[0]) for i in range(1, 4))


@pytest.mark.parametrize("kind", ["grid", "elastic"])
def test_distortion_zero_strength_is_identity_and_nonzero_moves(kind):
    x = _slices(2)
    y = StrongAugment({**OFF, "distortion_prob": 1.0, "distortion": kind, "distortion_strength": 0.0})(
        x, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x)
    y = StrongAugment({**OFF, "distortion_prob": 1.0, "distortion": kind, "distortion_strength": 0.4})(
        x, np.random.default_rng(0))
    assert y.shape == x.shape and not np.array_equal(y, x)


def test_hat_weights_interpolate_linearly():
    w = _hat_weights(5, 2)  # knots at pixel 0, 2, 4
    np.testing.assert_allclose(w @ np.array([0.0, 10.0, 0.0]), [0, 5, 10, 5, 0])
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_rejects_bad_config():
    with pytest.raises(KeyError, match=r"DataLoader\.Train\.strong_augment: unknown keys \['rotation'\]; known \["):
        StrongAugment({"rotation": 10})
    with pytest.raises(ValueError, match=r"^DataLoader\.Train\.strong_augment\.distortion must be grid or elastic, "
                                        r"got 'wave'$"):
        StrongAugment({"distortion": "wave"})
    with pytest.raises(ValueError, match=r"^StrongAugment expects uint8 \[S, H, W, C\], got float32 \(2, 8, 8, 3\)$"):
        StrongAugment()(np.zeros((2, 8, 8, 3), np.float32), np.random.default_rng(0))
