"""Data.cache_size: the cache keeps each slice's native black-edge crop (no resampling) in an N x N canvas, training
RandomResizedCrop cuts the real crop and resizes once (bicubic), eval resizes the real crop (bilinear), as the
authors' code (easymia rsna_ihd.py __getitem__: remove_black_edge at native resolution, then the transforms)."""
import json
import math
import os

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from ppihd.data.augment import TrainAugment
from ppihd.data.cache import CacheError, build_cache, resolve_cache_dir, series_file
from ppihd.data.dataset import SeriesDataset
from ppihd.data.transforms import apply_windows, black_edge_box, crop_slice, native_canvas, preprocess_slice
from ppihd.utils.config import load_config
from rsna_tiny import corner_value, make_tiny_rsna, tiny_cfg


def _bordered_slice():
    """40 x 50 HU slice: air (-1000 HU) around a 20 x 30 block of tissue at rows 7..26, cols 9..38, HU 5..75."""
    rng = np.random.default_rng(0)
    hu = np.full((40, 50), -1000.0, np.float32)
    hu[7:27, 9:39] = rng.integers(5, 76, size=(20, 30))
    return hu


def test_crop_slice_is_the_native_crop_and_the_canvas_keeps_it_unresampled():
    data = load_config(None, [])["Data"]
    hu = _bordered_slice()
    crop = crop_slice(hu, data)
    # the block is 20 x 30, far wider than the opening (5x5 ellipse, 3 iterations): the box is the block itself
    np.testing.assert_array_equal(crop, apply_windows(hu[7:27, 9:39]))
    canvas, hw, small = native_canvas(crop, 64)
    assert hw == (20, 30) and not small and canvas.shape == (64, 64, 3)
    np.testing.assert_array_equal(canvas[:20, :30], crop)
    assert not canvas[20:].any() and not canvas[:, 30:].any()
    # the null-mode pipeline is this crop resized once, bilinear, to Data.image_size
    np.testing.assert_array_equal(preprocess_slice(hu, {**data, "image_size": 32}),
                                  cv2.resize(crop, (32, 32), interpolation=cv2.INTER_LINEAR))


def test_a_crop_larger_than_the_canvas_is_downscaled_once_keeping_its_aspect():
    crop = np.random.default_rng(1).integers(0, 256, size=(30, 60, 3), dtype=np.uint8)
    canvas, hw, small = native_canvas(crop, 40)
    assert small and hw == (20, 40)                                 # 60 -> 40, 30 * 40 / 60 = 20
    np.testing.assert_array_equal(canvas[:20, :40], cv2.resize(crop, (40, 20), interpolation=cv2.INTER_AREA))
    assert not canvas[20:].any()


def _reference_rrc(crop, rng, size, scale, ratio):
    """The authors' RandomResizedCrop (easymia transforms.py get_params + functional.resized_crop), its `random`
    draws taken from a numpy generator in the same order, then the two flip draws TrainAugment makes."""
    h, w = crop.shape[:2]
    box = None
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        r = rng.uniform(*ratio)
        cw, ch = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if rng.random() < 0.5:
            cw, ch = ch, cw
        if cw <= w and ch <= h:
            box = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
            break
    if box is None:
        side = min(h, w)
        box = (h - side) // 2, (w - side) // 2, side, side
    rng.random(), rng.random()                                      # hflip, vflip draws (p = 0 here)
    i, j, ch, cw = box
    return cv2.resize(np.ascontiguousarray(crop[i:i + ch, j:j + cw]), (size, size), interpolation=cv2.INTER_CUBIC)


def test_random_resized_crop_cuts_the_real_crop_and_resizes_once():
    rng0 = np.random.default_rng(5)
    crops = [rng0.integers(0, 256, size=s + (3,), dtype=np.uint8) for s in ((37, 53), (60, 41), (24, 24))]
    aug = TrainAugment(size=24, scale=(0.8, 1.2), ratio=(0.75, 4 / 3), hflip=0.0, vflip=0.0,
                       crop_sampler="reference")
    for seed in range(6):
        got = aug.crops(crops, np.random.default_rng(seed))
        ref_rng = np.random.default_rng(seed)
        want = np.stack([_reference_rrc(c, ref_rng, 24, (0.8, 1.2), (0.75, 4 / 3)) for c in crops])
        np.testing.assert_array_equal(got, want)
    # two resamplings (the null-mode order: bilinear to 24 x 24 first) give other pixels
    twice = aug(np.stack([cv2.resize(crops[0], (24, 24), interpolation=cv2.INTER_LINEAR)]), np.random.default_rng(0))
    assert not np.array_equal(twice[0], aug.crops(crops[:1], np.random.default_rng(0))[0])


def test_per_series_draw_replays_one_set_of_numbers_on_every_crop():
    crop = np.random.default_rng(2).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    aug = TrainAugment(size=16, per_slice=False, crop_sampler="reference")
    out = aug.crops([crop, crop.copy(), crop.copy()], np.random.default_rng(7))
    assert out.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """The same tiny RSNA set cached both ways, black-edge removal on: null (128² slices) and N = 160."""
    root = str(tmp_path_factory.mktemp("rsna"))
    make_tiny_rsna(root, n_train=3, n_test=1, slices=4)
    null = tiny_cfg(root, remove_black_edges="true")
    native = tiny_cfg(root, remove_black_edges="true", cache_size=160, cache_dir=os.path.join(root, "native"))
    return build_cache(null, progress=False), null, build_cache(native, progress=False), native


def _hu(path):
    ds = pydicom.dcmread(path)
    return (ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def test_native_cache_holds_each_native_crop_and_its_size(two_caches):
    _, _, summary, cfg = two_caches
    cache = resolve_cache_dir(cfg)
    with open(os.path.join(cache, "settings.json")) as f:
        assert json.load(f)["cache_size"] == 160
    assert summary["bytes_per_slice"] == 160 * 160 * 3 and summary["slices_downscaled"] == 0
    idx = pd.read_csv(summary["index_file"], dtype={"series_id": str, "sop_uid": str})
    for sid, rows in idx[idx["status"] == "ok"].groupby("series_id"):
        arr = np.load(series_file(cache, sid))
        with open(os.path.join(cache, "series", f"{sid}.json")) as f:
            rec = json.load(f)
        assert arr.shape == (4, 160, 160, 3) and len(rec["crop_hw"]) == 4
        for _, r in rows.iterrows():
            hu = _hu(r["path"])                                     # CT_small, 128 x 128, read with pydicom
            img = apply_windows(hu)
            y0, y1, x0, x1 = black_edge_box(img[..., 0])
            k = int(r["slice_idx"])
            assert rec["crop_hw"][k] == [y1 - y0, x1 - x0]
            np.testing.assert_array_equal(arr[k, :y1 - y0, :x1 - x0], img[y0:y1, x0:x1])
            assert not arr[k, y1 - y0:].any() and not arr[k, :, x1 - x0:].any()


def test_native_eval_items_are_the_bilinear_resize_of_the_crop_as_the_null_cache(two_caches):
    _, null_cfg, _, cfg = two_caches
    native, null = SeriesDataset(cfg, "all"), SeriesDataset(null_cfg, "all")
    assert native.series_ids() == null.series_ids()
    for i in range(len(native)):
        a, b = native[i], null[i]
        np.testing.assert_array_equal(a["images"], b["images"])     # = inference's preprocess_slice, same bytes
        crop = native.native_crops(i, [0])[0]
        want = cv2.resize(crop, (128, 128), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(np.round(a["images"][0].transpose(1, 2, 0) * 255).astype(np.uint8), want)


def test_native_train_items_augment_the_native_crops(two_caches):
    _, _, _, cfg = two_caches
    aug = TrainAugment(size=128, crop_sampler="reference")
    ds = SeriesDataset(cfg, "train", transform=aug)
    ds.uint8_images = True
    got = ds.get(0, np.random.default_rng(3))["images"]
    rows = ds.items[0]["slice_idx"]
    want = aug.crops(ds.native_crops(0, rows), np.random.default_rng(3)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, want)
    # a transform without crops() (e.g. FixMatch's StrongAugment) gets the eval-resized slices
    seen = {}
    ds2 = SeriesDataset(cfg, "train", transform=lambda s, rng: seen.setdefault("x", s))
    ds2.get(0, np.random.default_rng(0))
    np.testing.assert_array_equal(seen["x"], SeriesDataset(cfg, "train").slice_images(0, rows))


def test_a_cache_built_with_another_cache_size_is_refused(two_caches, tmp_path):
    _, null_cfg, _, cfg = two_caches
    other = load_config(None, [f"Data.{k}={v}" for k, v in (
        ("root", null_cfg["Data"]["root"]), ("image_size", 128), ("remove_black_edges", "true"),
        ("num_workers", 1), ("val_fraction", 0.34))] + ["Data.cache_size=160", "Global.progress_bar=false"])
    with pytest.raises(CacheError, match="cache_size: cache None vs config 160"):
        build_cache(other, progress=False)                          # the null cache's folder
    with pytest.raises(CacheError, match="cache_size: cache 160 vs config 192"):
        build_cache({**cfg, "Data": {**cfg["Data"], "cache_size": 192}}, progress=False)
    with pytest.raises(ValueError, match=r"does not match the index \(4 slices of 160²\)"):
        SeriesDataset(other, "train")[0]                            # a null cache read as a native one
    with pytest.raises(ValueError, match="Data.cache_size must be null or a positive int"):
        SeriesDataset({**cfg, "Data": {**cfg["Data"], "cache_size": 0}}, "train")


def test_crop_sizes_are_covered_by_the_checksum(two_caches):
    _, _, _, cfg = two_caches
    cache = resolve_cache_dir(cfg)
    ds = SeriesDataset(cfg, "val")
    sid = ds.items[0]["series_id"]
    path = os.path.join(cache, "series", f"{sid}.json")
    with open(path) as f:
        rec = json.load(f)
    good = dict(rec)
    rec["crop_hw"][0] = [rec["crop_hw"][0][0] - 1, rec["crop_hw"][0][1]]
    with open(path, "w") as f:
        json.dump(rec, f)
    try:
        with pytest.raises(CacheError, match=rf"{sid}\.npy is corrupt"):
            SeriesDataset(cfg, "val")[0]
    finally:
        with open(path, "w") as f:
            json.dump(good, f)


def test_native_cache_downscales_crops_larger_than_the_canvas(tmp_path):
    root = str(tmp_path)
    make_tiny_rsna(root, n_train=1, n_test=1, slices=2, extras=False)
    cfg = tiny_cfg(root, cache_size=64, val_fraction=0.0)           # no black-edge removal: 128 x 128 crops
    summary = build_cache(cfg, progress=False)
    assert summary["slices_downscaled"] == 4
    ds = SeriesDataset(cfg, "all")
    crop = ds.native_crops(0, [1])[0]
    assert crop.shape == (64, 64, 3)
    # corner patch 8 x 8 of HU 8 -> byte 25, averaged 2:1 by INTER_AREA: rows/cols 0..3 keep it
    assert int(crop[1, 1, 0]) == corner_value(1) == 25


def test_null_cache_size_leaves_the_settings_key_out():
    from ppihd.data.cache import cache_settings

    data = load_config(None, [])["Data"]
    assert data["cache_size"] is None and "cache_size" not in cache_settings(data)   # older caches stay valid
    assert cache_settings({**data, "cache_size": 512})["cache_size"] == 512
