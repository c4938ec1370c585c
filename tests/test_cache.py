"""The per-series cache and slice index: contents, labels, splits, errors, resume and crash safety."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from ppihd import LABELS
from ppihd.data.cache import (INDEX_COLUMNS, CacheError, build_cache, bytes_per_slice, resolve_cache_dir,
                              series_file)
from rsna_tiny import corner_value, make_tiny_rsna, tiny_cfg


@pytest.fixture()
def tiny(tmp_path):
    info = make_tiny_rsna(str(tmp_path), n_train=3, n_test=1, slices=4)
    return str(tmp_path), info


def test_bytes_per_slice():
    assert bytes_per_slice(224) == 150528 == 224 * 224 * 3
    # full RSNA stage 2: 752,803 train + 121,232 test images
    assert bytes_per_slice(224) * (752803 + 121232) == 131_566_740_480   # 131.6 GB (122.5 GiB)


def test_build_cache_contents(tiny):
    root, info = tiny
    cfg = tiny_cfg(root)
    summary = build_cache(cfg, progress=False)
    cache = resolve_cache_dir(cfg)
    assert cache == os.path.join(root, "cache_128")
    idx = pd.read_csv(summary["index_file"], dtype={"sop_uid": str, "series_id": str})
    assert list(idx.columns) == INDEX_COLUMNS and len(idx) == 16
    # splits: 3 train series -> round(0.34 * 3) = 1 val; the test folder -> test
    per_split = idx.groupby("split")["series_id"].nunique().to_dict()
    assert per_split == {"train": 2, "val": 1, "test": 1}
    assert summary["series"] == per_split and summary["slices"] == {"train": 8, "val": 4, "test": 4}
    # every series: slices in anatomical order (written with z = 5 + 5k), labels from the CSV
    for part in ("train", "test"):
        for series_uid, sops in info[part].items():
            rows = idx[idx["series_uid"] == series_uid].sort_values("slice_idx")
            assert rows["sop_uid"].tolist() == sops and rows["slice_idx"].tolist() == [0, 1, 2, 3]
            assert np.all(np.diff(rows["position"]) > 0)
            arr = np.load(series_file(cache, rows["series_id"].iloc[0]), mmap_mode="r")
            assert arr.shape == (4, 128, 128, 3) and arr.dtype == np.uint8
            # corner patch of slice k is HU 8k -> brain window floor(25.5 k), no crop, no resize
            assert [int(arr[k, 2, 2, 0]) for k in range(4)] == [corner_value(k) for k in range(4)] == [0, 25, 51, 76]
            lab = rows[list(LABELS)].to_numpy()
            if part == "test":
                assert np.isnan(lab).all()
            else:
                np.testing.assert_array_equal(lab, [info["labels"][s] for s in sops])
    errors = pd.read_csv(summary["errors_file"])
    got = {os.path.basename(p): r for p, r in zip(errors["path"], errors["reason"])}
    assert got == {"notes.txt": "not DICOM", "ID_mr0000000.dcm": "not CT (Modality MR)"}
    with open(os.path.join(cache, "settings.json")) as f:
        settings = json.load(f)
    assert settings["image_size"] == 128 and settings["windows"] == [[40.0, 80.0], [80.0, 200.0], [40.0, 380.0]]
    with open(os.path.join(cache, "config.yaml")) as f:
        assert yaml.safe_load(f)["Data"]["root"] == root


def test_resume_skips_finished_and_redoes_broken(tiny):
    root, _ = tiny
    cfg = tiny_cfg(root)
    first = build_cache(cfg, progress=False)
    cache = resolve_cache_dir(cfg)
    idx = pd.read_csv(first["index_file"], dtype={"series_id": str})
    sids = sorted(idx["series_id"].unique())
    good = np.load(series_file(cache, sids[0])).copy()
    again = build_cache(cfg, progress=False)
    assert again["series_processed_now"] == 0 and again["series_reused"] == 4
    # a kill -9 leaves a temp file; a broken disk copy leaves a truncated .npy: both are handled
    stray = series_file(cache, sids[1]) + ".tmp99999"
    with open(stray, "wb") as f:
        f.write(b"\x93NUMPY half written")
    path0 = series_file(cache, sids[0])
    data = open(path0, "rb").read()
    with open(path0, "wb") as f:
        f.write(data[: len(data) // 2])
    os.remove(series_file(cache, sids[2]).replace(".npy", ".json"))   # killed between .npy and its record
    third = build_cache(cfg, progress=False)
    assert third["series_processed_now"] == 2 and third["series_reused"] == 2
    assert not os.path.exists(stray)
    np.testing.assert_array_equal(np.load(path0), good)
    pd.testing.assert_frame_equal(pd.read_csv(third["index_file"], dtype={"series_id": str}), idx)


def test_unreadable_slice_recorded_and_series_continues(tiny):
    root, info = tiny
    uid = sorted(info["train"])[0]
    bad_sop = info["train"][uid][2]
    p = os.path.join(root, "stage_2_train", f"{bad_sop}.dcm")
    data = open(p, "rb").read()
    cfg = tiny_cfg(root)
    with open(p, "wb") as f:   # truncated: the header scan records it, the series goes on with 3 slices
        f.write(data[:-5000])
    summary = build_cache(cfg, progress=False)
    idx = pd.read_csv(summary["index_file"], dtype={"sop_uid": str})
    rows = idx[idx["series_uid"] == uid].sort_values("slice_idx")
    assert len(rows) == 3 and bad_sop not in rows["sop_uid"].tolist() and rows["slice_idx"].tolist() == [0, 1, 2]
    errors = pd.read_csv(summary["errors_file"])
    assert errors.loc[errors["path"] == p, "reason"].str.startswith("truncated pixel data").all()
    assert (errors["path"] == p).sum() == 1


def test_settings_mismatch_refused_then_rebuilt(tiny):
    root, _ = tiny
    build_cache(tiny_cfg(root), progress=False)
    other = tiny_cfg(root, crop_inclusive="false")
    with pytest.raises(CacheError, match="crop_inclusive: cache True vs config False"):
        build_cache(other, progress=False)
    s = build_cache(other, progress=False, rebuild=True)
    assert s["series_processed_now"] == 4
    with open(os.path.join(resolve_cache_dir(other), "settings.json")) as f:
        assert json.load(f)["crop_inclusive"] is False


def test_parallel_build_matches_serial(tmp_path):
    make_tiny_rsna(str(tmp_path / "a"), n_train=3, n_test=1, slices=3)
    make_tiny_rsna(str(tmp_path / "b"), n_train=3, n_test=1, slices=3)
    s1 = build_cache(tiny_cfg(str(tmp_path / "a")), num_workers=1, progress=False)
    s2 = build_cache(tiny_cfg(str(tmp_path / "b")), num_workers=2, progress=False)
    i1 = pd.read_csv(s1["index_file"]).drop(columns=["path"])
    i2 = pd.read_csv(s2["index_file"]).drop(columns=["path"])
    pd.testing.assert_frame_equal(i1, i2)
    for sid in i1["series_id"].unique():
        a = np.load(series_file(s1["cache_dir"], sid))
        b = np.load(series_file(s2["cache_dir"], sid))
        np.testing.assert_array_equal(a, b)


def test_missing_inputs_error(tmp_path):
    with pytest.raises(CacheError, match="neither Data.train_dir"):
        build_cache(tiny_cfg(str(tmp_path / "nowhere")), progress=False)


def test_preprocess_cli(tiny, ppihd_log):
    import importlib.util

    root, _ = tiny
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("preprocess_tool", os.path.join(repo, "tools", "preprocess.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    paper = os.path.join(repo, "configs", "swin_b_seq.yaml")
    rc = tool.main(["-c", paper, "-o", f"Data.root={root}", "-o", "Data.image_size=32", "-o", "Data.num_workers=1",
                    "--no-progress"])
    assert rc == 0
    idx = pd.read_csv(os.path.join(root, "cache_32", "index.csv"))
    assert len(idx) == 16 and (idx["status"] == "ok").all()
    ppihd_log.clear()
    assert tool.main(["-c", paper, "-o", "Data.nope=1"]) == 2
    errors = [r.getMessage() for r in ppihd_log.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("override -o Data.nope=1: unknown key 'Data.nope'"), errors


def test_synthetic_rsna_end_to_end(tmp_path):
    """The synthetic generator's manifest is an independent truth: slice order, labels, corrupt intercepts."""
    from dicom_utils import slice_hu
    from ppihd.data.dicom import read_header
    from ppihd.synthetic import generate_dataset
    from ppihd.data.transforms import needs_intercept_fix

    root = str(tmp_path / "synth")
    generate_dataset(root, n_train=5, n_test=2, seed=3, size=64, slices_min=8, slices_max=12, progress=False)
    man = pd.read_csv(os.path.join(root, "synthetic_manifest.csv"), dtype={"sop": str, "series": str})
    summary = build_cache(tiny_cfg(root, image_size=32, remove_black_edges="true"), progress=False)
    idx = pd.read_csv(summary["index_file"], dtype={"sop_uid": str, "series_uid": str})
    assert summary["errors"] == 0 and len(idx) == len(man) and (idx["status"] == "ok").all()
    assert summary["series"]["test"] == 2 and summary["series"]["train"] + summary["series"]["val"] == 5
    for uid, rows in idx.groupby("series_uid"):
        truth = man[man["series"] == uid].sort_values("slice_index")["sop"].tolist()
        assert rows.sort_values("slice_idx")["sop_uid"].tolist() == truth        # tilt-aware order = true order
    train = idx[idx["split"] != "test"].set_index("sop_uid")[list(LABELS)]
    truth = man[man["split"] == "train"].set_index("sop")[list(LABELS)].astype(float)
    pd.testing.assert_frame_equal(train.sort_index(), truth.sort_index(), check_names=False)
    # the corrupt-intercept files decode to real HU after the fix: air at -1000, no wrapped 3000+ HU
    corrupt = man[man["encoding"] == "corrupt"]
    assert len(corrupt) >= 3   # the three checked below
    split_dir = {"train": "stage_2_train", "test": "stage_2_test"}
    for _, r in corrupt.head(3).iterrows():
        p = os.path.join(root, split_dir[r["split"]], f"{r['sop']}.dcm")
        h = read_header(p)
        assert needs_intercept_fix(h.bits_stored, h.pixel_representation, h.intercept)
        hu = slice_hu(p)
        assert hu.min() == -1000.0 and (hu > 2000).mean() < 0.01
        assert (slice_hu(p, fix_intercept=False) > 2000).mean() > 0.3   # unfixed: air reads as ~3000 HU


_KILLER = r'''
import os, signal, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import numpy as np
from ppihd.data import cache as C
from ppihd.utils.fileio import tmp_name
from rsna_tiny import tiny_cfg
mode, calls = {mode!r}, [0]
real_save = C.atomic_save_npy
def dying_save(path, arr):
    calls[0] += 1
    if calls[0] == 2 and mode == "mid-write":       # die half-way through writing the temp file
        tmp = tmp_name(path)   # the name atomic_save_npy writes first
        with open(tmp, "wb") as f:
            np.save(f, arr[: max(1, len(arr) // 2)])
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(path, arr)
    if calls[0] == 2 and mode == "after-npy":       # die between the .npy and its record
        os.kill(os.getpid(), signal.SIGKILL)
C.atomic_save_npy = dying_save
C.build_cache(tiny_cfg({data!r}), num_workers=1, progress=False)
'''


@pytest.mark.parametrize("mode", ["mid-write", "after-npy"])
def test_kill_9_then_resume(tmp_path, mode):
    """A real SIGKILL during the cache build loses at most the series in flight; the re-run completes it."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    data = str(tmp_path / "killed")
    make_tiny_rsna(data, n_train=3, n_test=1, slices=3)
    script = _KILLER.format(root=os.path.dirname(here), tests=here, mode=mode, data=data)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    cache = os.path.join(data, "cache_128")
    assert not os.path.exists(os.path.join(cache, "index.csv"))            # index only at the very end
    if mode == "mid-write":
        assert any(".tmp" in f for f in os.listdir(os.path.join(cache, "series")))
    resumed = build_cache(tiny_cfg(data), progress=False)
    assert resumed["series_reused"] == 1 and resumed["series_processed_now"] == 3
    assert not any(".tmp" in f for f in os.listdir(os.path.join(cache, "series")))
    clean_root = str(tmp_path / "clean")
    make_tiny_rsna(clean_root, n_train=3, n_test=1, slices=3)
    clean = build_cache(tiny_cfg(clean_root), progress=False)
    a = pd.read_csv(resumed["index_file"]).drop(columns=["path"])
    b = pd.read_csv(clean["index_file"]).drop(columns=["path"])
    pd.testing.assert_frame_equal(a, b)
    for sid in a["series_id"].unique():
        np.testing.assert_array_equal(np.load(series_file(cache, sid)), np.load(series_file(clean["cache_dir"], sid)))


def test_build_cache_reference_split(tiny):
    from sklearn.model_selection import train_test_split

    root, info = tiny
    summary = build_cache(tiny_cfg(root, split="reference"), progress=False)
    idx = pd.read_csv(summary["index_file"], dtype={"series_uid": str})
    _, want = train_test_split(np.array(sorted(info["train"])), test_size=0.34, random_state=42)
    assert set(idx.loc[idx["split"] == "val", "series_uid"]) == set(want)    # ceil(0.34 * 3) = 2 series
    assert idx.loc[idx["split"] == "val", "series_uid"].nunique() == 2


def test_empty_opening_keys_the_cache_only_when_not_default():
    from ppihd.data.cache import cache_settings
    from ppihd.utils.config import load_config

    data = load_config(None, [])["Data"]
    assert "empty_opening" not in cache_settings(data)            # caches built before the switch stay valid
    assert cache_settings({**data, "empty_opening": "zero"})["empty_opening"] == "zero"


# --------------------------------------------------------------------------- the cache verifies itself
def test_rebuild_redoes_every_series_even_with_the_same_settings(tiny):
    root, _ = tiny
    cfg = tiny_cfg(root)
    assert build_cache(cfg, progress=False)["series_processed_now"] == 4
    assert build_cache(cfg, progress=False)["series_processed_now"] == 0       # finished series are reused
    assert build_cache(cfg, progress=False, rebuild=True)["series_processed_now"] == 4


def test_corrupt_settings_json_says_so(tiny):
    root, _ = tiny
    cfg = tiny_cfg(root)
    build_cache(cfg, progress=False)
    path = os.path.join(resolve_cache_dir(cfg), "settings.json")
    with open(path, "w") as f:
        f.write('{"image_size": 12')        # cut mid-write by hand
    with pytest.raises(CacheError, match=r"settings.json is corrupt .*--rebuild"):
        build_cache(cfg, progress=False)
    assert build_cache(cfg, progress=False, rebuild=True)["series_processed_now"] == 4


def _flip_one_byte(path):
    """Change one pixel byte in place, keeping the file's size (what bit rot or a bad copy does)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size - 7)
        b = f.read(1)
        f.seek(size - 7)
        f.write(bytes([b[0] ^ 0x5A]))
    assert os.path.getsize(path) == size


def test_corrupt_npy_of_the_same_size_is_caught(tiny):
    """The record's CRC-32 equals zlib's over the array bytes (computed here independently); a byte changed in
    place is refused by the training dataset naming the file, and preprocessing redoes that series only."""
    import zlib

    from ppihd.data.dataset import SeriesDataset

    root, _ = tiny
    cfg = tiny_cfg(root)
    build_cache(cfg, progress=False)
    cache = resolve_cache_dir(cfg)
    ds = SeriesDataset(cfg, "train")
    sid = ds.items[0]["series_id"]
    npy = series_file(cache, sid)
    with open(os.path.join(cache, "series", f"{sid}.json")) as f:
        rec = json.load(f)
    assert rec["crc32"] == f"{zlib.crc32(np.load(npy).tobytes()) & 0xFFFFFFFF:08x}"
    ds[0]                                          # intact: loads
    _flip_one_byte(npy)
    with pytest.raises(CacheError, match=rf"{sid}\.npy is corrupt .*re-run tools/preprocess.py"):
        SeriesDataset(cfg, "train")[0]
    assert build_cache(cfg, progress=False)["series_processed_now"] == 1
    SeriesDataset(cfg, "train")[0]


def test_second_preprocess_of_a_busy_cache_is_refused(tiny):
    from ppihd.utils.runlock import RunLock

    root, _ = tiny
    cfg = tiny_cfg(root)
    with RunLock(resolve_cache_dir(cfg), "another preprocess"):
        with pytest.raises(CacheError, match=rf"in use by another preprocess \(pid {os.getpid()}"):
            build_cache(cfg, progress=False)
    assert build_cache(cfg, progress=False)["series_processed_now"] == 4
