"""SeriesDataset items over the cache, collate_series padding, deterministic rng, the DataLoader helper."""
import numpy as np
import pytest

from ppihd import LABELS
from ppihd.data.cache import build_cache
from ppihd.data.dataset import SeededBatchSampler, SeriesDataset, build_dataloader, collate_series
from rsna_tiny import corner_value, make_tiny_rsna, tiny_cfg


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rsna"))
    info = make_tiny_rsna(root, n_train=3, n_test=1, slices=4)
    cfg = tiny_cfg(root)
    build_cache(cfg, progress=False)
    return cfg, info


def _sops_labels(info, ds, i):
    return np.array([info["labels"][s] for s in ds.sop_uids(ds.items[i]["series_id"])], np.float32)


def test_train_item_contract(cached):
    cfg, info = cached
    ds = SeriesDataset(cfg, "train")
    assert len(ds) == 2 and ds.num_slices == 8
    it = ds[0]
    assert set(it) == {"images", "labels", "label_mask", "series_id", "slice_idx"}
    assert it["images"].shape == (4, 3, 128, 128) and it["images"].dtype == np.float32
    assert 0.0 <= it["images"].min() and it["images"].max() <= 1.0
    # slice k's corner = brain-window byte floor(25.5 k) / 255, in anatomical order
    np.testing.assert_allclose(it["images"][:, 0, 2, 2], [corner_value(k) / 255 for k in range(4)], rtol=1e-6)
    np.testing.assert_array_equal(it["labels"], _sops_labels(info, ds, 0))
    assert it["labels"].dtype == np.float32 and (it["label_mask"] == 1).all()
    np.testing.assert_array_equal(it["slice_idx"], [0, 1, 2, 3])
    assert any(_sops_labels(info, ds, i).any() for i in range(len(ds)))   # a positive series is there


def test_test_split_has_no_labels(cached):
    cfg, _ = cached
    ds = SeriesDataset(cfg, "test")
    assert len(ds) == 1
    it = ds[0]
    assert (it["label_mask"] == 0).all() and (it["labels"] == 0).all()
    assert len(SeriesDataset(cfg, "all")) == 4 and len(SeriesDataset(cfg, ["train", "val"])) == 3
    with pytest.raises(ValueError, match=r"^unknown split\(s\) \['holdout'\]; expected one of .*'train'.* or 'all'$"):
        SeriesDataset(cfg, "holdout")


def test_max_slices_windows(cached):
    cfg, _ = cached
    cfg = {**cfg, "Data": {**cfg["Data"], "max_slices": 2}}
    val = SeriesDataset(cfg, "val")
    it = val[0]
    np.testing.assert_array_equal(it["slice_idx"], [1, 2])                # centred: start (4 - 2) // 2
    np.testing.assert_allclose(it["images"][:, 0, 2, 2], [corner_value(1) / 255, corner_value(2) / 255], rtol=1e-6)
    tr = SeriesDataset(cfg, "train")
    starts = {int(tr.get(0, np.random.default_rng(s))["slice_idx"][0]) for s in range(30)}
    assert starts == {0, 1, 2}                                            # random contiguous window


def test_transform_and_determinism(cached):
    cfg, _ = cached
    seen = {}

    def flip_some(slices, rng):
        seen["shape"], seen["dtype"] = slices.shape, slices.dtype
        flip = rng.random(len(slices)) < 0.5
        out = slices.copy()
        out[flip] = out[flip, :, ::-1]
        return out

    ds = SeriesDataset(cfg, "train", transform=flip_some)
    a, b = ds[1], ds[1]
    assert seen["shape"] == (4, 128, 128, 3) and seen["dtype"] == np.uint8
    np.testing.assert_array_equal(a["images"], b["images"])                # same seed, epoch, index
    draws = {ds.get(1, ds.rng_for(1))["images"].tobytes() == a["images"].tobytes() for _ in range(2)}
    assert draws == {True}
    ds.set_epoch(1)
    assert any(not np.array_equal(ds[i]["images"], SeriesDataset(cfg, "train", flip_some)[i]["images"])
               for i in range(len(ds)))                                    # another epoch, other flips


def test_collate_pads_and_masks():
    def item(s, sid, val):
        return {"images": np.full((s, 3, 4, 4), val, np.float32), "labels": np.ones((s, 6), np.float32),
                "label_mask": np.ones((s, 6), np.float32), "series_id": sid, "slice_idx": np.arange(s) + 10,
                "is_pseudo": sid == "b"}

    out = collate_series([item(3, "a", 0.5), item(5, "b", 0.25)])
    assert out["images"].shape == (2, 5, 3, 4, 4) and out["labels"].shape == (2, 5, 6)
    np.testing.assert_array_equal(out["mask"], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert out["mask"].dtype == bool
    assert (out["images"][0, 3:] == 0).all() and (out["images"][0, :3] == 0.5).all()
    assert (out["label_mask"][0, 3:] == 0).all() and (out["labels"][0, 3:] == 0).all()
    np.testing.assert_array_equal(out["slice_idx"], [[10, 11, 12, -1, -1], [10, 11, 12, 13, 14]])
    assert out["series_id"] == ["a", "b"] and out["is_pseudo"].tolist() == [False, True]


def test_seeded_sampler():
    data = list(range(7))
    s = SeededBatchSampler(data, batch_size=3, shuffle=True, seed=5)
    e0 = list(s)
    assert len(s) == 3 and [len(b) for b in e0] == [3, 3, 1] and sorted(sum(e0, [])) == data
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0 and sorted(sum(list(s), [])) == data
    assert list(SeededBatchSampler(data, 3, shuffle=False)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_build_dataloader(cached):
    cfg, _ = cached
    cfg = {**cfg, "DataLoader": {**cfg["DataLoader"], "Train": {**cfg["DataLoader"]["Train"], "batch_series": 2}}}
    ds = SeriesDataset(cfg, "train")
    loader = build_dataloader(cfg, ds, train=True)
    batches = list(loader)
    assert len(batches) == 1
    b = batches[0]
    assert list(b["images"].shape) == [2, 4, 3, 128, 128] and list(b["mask"].shape) == [2, 4]
    assert sorted(b["series_id"]) == sorted(ds.series_ids())
    ev = build_dataloader(cfg, SeriesDataset(cfg, "val"), train=False)
    assert [len(x["series_id"]) for x in ev] == [1]


def test_uint8_images_become_the_same_floats():
    """images_to_tensor(uint8) == the dataset's numpy float32(x) * float32(1/255), for every byte value."""
    from ppihd.data.dataset import images_to_tensor

    u8 = np.arange(256, dtype=np.uint8).reshape(1, 4, 1, 8, 8)
    expect = u8.astype(np.float32) * np.float32(1.0 / 255.0)
    got = images_to_tensor(u8).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expect)
    assert got[0, 3, 0, 7, 7] == 1.0 and got[0, 0, 0, 0, 0] == 0.0
    f = np.random.default_rng(0).random((1, 2, 3, 4, 4), dtype=np.float32)
    np.testing.assert_array_equal(images_to_tensor(f).numpy(), f)  # float batches pass through


def test_uint8_items_collate_and_match_float_items(cached):
    from ppihd.data.dataset import images_to_tensor, set_uint8_images

    cfg, _ = cached
    flt, u8 = SeriesDataset(cfg, "train"), SeriesDataset(cfg, "train")
    assert set_uint8_images(u8) and u8.uint8_images and not flt.uint8_images
    a, b = flt[1], u8[1]
    assert b["images"].dtype == np.uint8 and b["images"].shape == a["images"].shape == (4, 3, 128, 128)
    np.testing.assert_array_equal(images_to_tensor(b["images"]).numpy(), a["images"])
    batch = collate_series([u8[0], u8[1]])
    assert batch["images"].dtype == np.uint8
    mixed = collate_series([u8[0], flt[1]])  # a mix (never made by the package) becomes float32 in [0, 1]
    assert mixed["images"].dtype == np.float32
    np.testing.assert_array_equal(mixed["images"][0], flt[0]["images"])
    np.testing.assert_array_equal(mixed["images"][1], a["images"])


def test_set_uint8_images_reaches_both_parts_of_a_mix():
    from ppihd.data.dataset import set_uint8_images
    from ppihd.data.pseudo import MixedDataset

    class Part:
        uint8_images = False

    m = MixedDataset(Part(), Part())
    assert set_uint8_images(m) and m.labelled.uint8_images and m.pseudo.uint8_images
    assert not set_uint8_images(object())  # nothing to switch: says so


def test_build_dataloader_train_sends_uint8(cached):
    cfg, _ = cached
    ds = SeriesDataset(cfg, "train")
    b = next(iter(build_dataloader(cfg, ds, train=True)))
    assert "uint8" in str(b["images"].dtype) and ds.uint8_images
    off = {**cfg, "DataLoader": {**cfg["DataLoader"], "Train": {**cfg["DataLoader"]["Train"], "uint8": False}}}
    ds2 = SeriesDataset(off, "train")
    assert "float32" in str(next(iter(build_dataloader(off, ds2, train=True)))["images"].dtype)
    ev = SeriesDataset(cfg, "val")
    build_dataloader(cfg, ev, train=False)
    assert not ev.uint8_images  # evaluation data is left as it is
