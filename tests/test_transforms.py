"""Per-slice preprocessing: HU, the RSNA intercept fix, windows, black-edge box, resize (hand-worked values)."""
import numpy as np
import pytest

from config_utils import schema_section
from ppihd.data import transforms as T

CFG = schema_section("Data", windows=[[40, 80], [80, 200], [40, 380]], remove_black_edges=True, opening_kernel=5,
                     opening_iterations=3, crop_inclusive=True, image_size=16, fix_intercept=True)


# ------------------------------------------------------------------------------------------------- HU
def test_to_hu_slope_intercept():
    raw = np.array([[0, 100], [1024, 2000]], dtype=np.int16)
    np.testing.assert_array_equal(T.to_hu(raw, 1.0, -1024.0), [[-1024, -924], [0, 976]])
    assert T.to_hu(raw, 1.0, -1024.0).dtype == np.float32
    # 600 * 2 - 1000 = 200; 0 * 2 - 1000 = -1000
    np.testing.assert_array_equal(T.to_hu(np.array([600, 0], np.uint16), 2.0, -1000.0), [200, -1000])


def test_intercept_fix_hand_values():
    # BitsStored 12, unsigned, intercept 0 (> -100): raw + 1000, >= 4096 minus 4096, intercept -1000
    raw = np.array([0, 3095, 3096, 4000], dtype=np.uint16)
    # 0 -> 1000 -> 0 HU; 3095 -> 4095 -> 3095 HU; 3096 -> 4096 -> 0 -> -1000 HU; 4000 -> 5000 -> 904 -> -96 HU
    np.testing.assert_array_equal(T.to_hu(raw, 1.0, 0.0, bits_stored=12, pixel_representation=0),
                                  [0, 3095, -1000, -96])
    # intercept -99 still counts as corrupt (> -100): the fix replaces it by -1000
    np.testing.assert_array_equal(T.to_hu(raw[:1], 1.0, -99.0, 12, 0), [0])


@pytest.mark.parametrize("bits,rep,icpt", [(16, 0, 0.0), (12, 1, 0.0), (12, 0, -1024.0), (12, 0, -100.0)])
def test_intercept_fix_not_triggered(bits, rep, icpt):
    raw = np.array([3096, 4000], dtype=np.uint16)
    assert not T.needs_intercept_fix(bits, rep, icpt)
    np.testing.assert_array_equal(T.to_hu(raw, 1.0, icpt, bits, rep), raw.astype(np.float32) + icpt)


def test_intercept_fix_can_be_disabled():
    raw = np.array([3096], dtype=np.uint16)
    assert T.needs_intercept_fix(12, 0, 0.0)
    np.testing.assert_array_equal(T.to_hu(raw, 1.0, 0.0, 12, 0, fix_intercept=False), [3096])


# ---------------------------------------------------------------------------------------------- windows
def test_windows_hand_values():
    hu = np.array([-1000, -150, -20, 0, 20, 40, 80, 180, 230, 1000], dtype=np.float32)
    out = T.apply_windows(hu, [[40, 80], [80, 200], [40, 380]])
    assert out.shape == (10, 3) and out.dtype == np.uint8
    # brain [0, 80]: (hu - 0) * 255 / 80, truncated; 40 -> 127.5 -> 127, 20 -> 63.75 -> 63
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 0, 63, 127, 255, 255, 255, 255])
    # blood [-20, 180]: (hu + 20) * 1.275; 0 -> 25.5 -> 25, 20 -> 51, 40 -> 76.5 -> 76, 80 -> 127.5 -> 127
    np.testing.assert_array_equal(out[:, 1], [0, 0, 0, 25, 51, 76, 127, 255, 255, 255])
    # soft tissue [-150, 230]: (hu + 150) * 255 / 380; -20 -> 87.2 -> 87, 0 -> 100.66 -> 100, 20 -> 114.08,
    # 40 -> 127.5 -> 127, 80 -> 154.3, 180 -> 221.4
    np.testing.assert_array_equal(out[:, 2], [0, 0, 87, 100, 114, 127, 154, 221, 255, 255])


def test_windows_order_follows_config():
    hu = np.full((2, 2), 40.0, np.float32)
    a = T.apply_windows(hu, [[40, 80], [40, 380]])
    b = T.apply_windows(hu, [[40, 380], [40, 80]])
    np.testing.assert_array_equal(a[..., ::-1], b)
    with pytest.raises(ValueError, match=r"^Data\.windows\[0\] = \(40, 0\): width must be > 0$"):
        T.apply_windows(hu, [[40, 0]])


# ------------------------------------------------------------------------------------------- black edges
def _square_with_noise():
    img = np.zeros((40, 40), np.uint8)
    img[10:30, 5:25] = 255          # 20x20 object: survives the opening whole (its box is exact)
    img[2, 35] = 255                # isolated pixel: removed by the opening
    img[34:36, 28:39] = 255         # 2-pixel-thin line: thinner than the 5x5 ellipse, removed
    return img


def test_black_edge_box_inclusive_and_reference():
    img = _square_with_noise()
    assert T.black_edge_box(img, 5, 3, inclusive=True) == (10, 30, 5, 25)
    assert T.black_edge_box(img, 5, 3, inclusive=False) == (10, 29, 5, 24)   # reference drops last row/col
    # without the opening the noise widens the box to rows 2..35, cols 5..38
    assert T.black_edge_box(img, 5, 0, inclusive=True) == (2, 36, 5, 39)


def test_black_edge_all_zero_stays_whole():
    img = np.zeros((12, 20, 3), np.uint8)
    img[..., 1] = 7  # only the non-brain channels are non-zero: the box is taken on channel 0
    assert T.black_edge_box(img[..., 0]) is None
    out = T.remove_black_edges(img)
    assert out.shape == (12, 20, 3)
    res = T.resize(np.zeros((12, 20, 3), np.uint8), 8)
    assert res.shape == (8, 8, 3) and not res.any()


def test_resize_shape_and_constant():
    img = np.full((30, 60, 3), (10, 20, 30), np.uint8)
    out = T.resize(img, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert (out == np.array([10, 20, 30], np.uint8)).all()


def test_preprocess_slice_end_to_end():
    hu = np.full((32, 40), -1000.0, np.float32)    # air
    hu[8:24, 4:36] = 40.0                          # "brain" at 40 HU
    out = T.preprocess_slice(hu, CFG)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # crop keeps exactly the 40 HU block: every output pixel = windows of 40 HU = (127, 76, 127)
    assert (out == np.array([127, 76, 127], np.uint8)).all()
    # without black-edge removal the air border (0, 0, 0) is still there
    raw = T.preprocess_slice(hu, dict(CFG, remove_black_edges=False))
    assert raw.shape == (16, 16, 3) and (raw[0, 0] == 0).all() and (raw[8, 8] == [127, 76, 127]).all()


def test_preprocess_slice_equals_plain_composition():
    # crop-first windowing must equal windows -> crop -> resize on a random-ish head-like slice
    rng = np.random.default_rng(0)
    hu = np.full((60, 50), -2000.0, np.float32)
    hu[5:55, 8:45] = rng.normal(30, 40, (50, 37)).astype(np.float32)
    hu[20:22, 10:40] = 1500.0
    for inclusive in (True, False):
        cfg = dict(CFG, image_size=24, crop_inclusive=inclusive)
        ref = T.resize(T.remove_black_edges(T.apply_windows(hu, cfg["windows"]), 5, 3, inclusive), 24)
        np.testing.assert_array_equal(T.preprocess_slice(hu, cfg), ref)


def test_empty_opening_keep_or_zero():
    # a 64x64 slice of air (-1000 HU) with a 2x2 speck of 100 HU: brain window (40, 80) -> 255 there, 0 elsewhere;
    # a 5x5 ellipse opening (x3) removes anything narrower than the kernel, so no box survives
    hu = np.full((64, 64), -1000.0, dtype=np.float32)
    hu[30:32, 40:42] = 100.0
    win = T.apply_windows(hu)
    assert T.black_edge_box(win[..., 0]) is None
    keep = T.preprocess_slice(hu, schema_section("Data", image_size=64, empty_opening="keep"))
    np.testing.assert_array_equal(keep, win)                       # same size: the uncropped slice, unchanged
    assert keep[30, 40, 0] == 255
    zero = T.preprocess_slice(hu, schema_section("Data", image_size=32, empty_opening="zero"))
    assert zero.shape == (32, 32, 3) and zero.dtype == np.uint8 and not zero.any()
    np.testing.assert_array_equal(T.remove_black_edges(win, empty="keep"), win)
    z = T.remove_black_edges(win, empty="zero")
    assert z.shape == win.shape and not z.any()                    # the reference: np.zeros_like(img)
    # a slice with a box is unaffected by the switch
    hu[10:50, 10:50] = 40.0
    np.testing.assert_array_equal(T.preprocess_slice(hu, schema_section("Data", image_size=32, empty_opening="zero")),
                                  T.preprocess_slice(hu, schema_section("Data", image_size=32)))
    with pytest.raises(ValueError, match=r"^Data\.empty_opening must be one of .*'zero'.*, got 'drop'$"):
        T.preprocess_slice(hu, schema_section("Data", empty_opening="drop"))
