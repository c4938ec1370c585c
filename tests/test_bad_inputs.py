"""Bad input never loses good output: a zoo of broken / odd inputs next to good series, run through
tools/infer.py; every input file ends up in exactly one of predictions.csv / skipped.csv."""
import csv
import os
import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from ppihd.engine.outputs import EXIT_NOTHING, EXIT_SKIPPED

from infer_utils import infer_args, load_tool, save_tiny_checkpoint, write_series

IMG = 32  # tiny images: the 300-slice series stays fast


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    inp = root / "in"
    good, bad = {}, {}
    # good series (nested folders, several studies / series)
    good["ok"] = write_series(str(inp / "studyA" / "s1"), 6, patient="PA", study="1.9.1", series="1.9.1.1")
    one = write_series(str(inp / "studyA" / "s2"), 1, patient="PA", study="1.9.1", series="1.9.1.2")
    good["long"] = write_series(str(inp / "studyB" / "deep" / "er"), 300, patient="PB", study="1.9.2",
                                series="1.9.2.1", size=(16, 16), spacing=0.625)
    good["mixed"] = write_series(str(inp / "mixed"), 4, patient="PC", study="1.9.3", series="1.9.3.1",
                                 size=[(32, 32), (40, 48), (32, 32), (24, 24)])
    good["dup"] = write_series(str(inp / "dup"), 4, patient="PD", study="1.9.4", series="1.9.4.1",
                               zs=[0.0, 5.0, 5.0, 10.0])
    # bad files
    junk = inp / "junk"
    junk.mkdir(parents=True)
    (junk / "corrupt.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (junk / "notes.txt").write_text("not an image\n")
    shutil.copy(get_testdata_file("MR_small.dcm"), junk / "mr_small.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), junk / "mr_truncated.dcm")
    shutil.copy(get_testdata_file("J2K_pixelrep_mismatch.dcm"), junk / "ct_j2k.dcm")
    (inp / "empty_folder").mkdir()
    # a series of one slice (and the one-file JPEG 2000 series) is recorded as too short (Infer.min_slices 3)
    bad = {"corrupt.dcm": "", "notes.txt": "", "mr_small.dcm": "not CT", "mr_truncated.dcm": "",
           "empty_folder": "empty", os.path.basename(one[0]): "too_few_slices: 1 slice (< Infer.min_slices 3)",
           "ct_j2k.dcm": "too_few_slices"}  # JPEG 2000 decodes (requirements.txt): one slice
    ckpt = save_tiny_checkpoint(str(root / "m.pdparams"), image_size=IMG)
    out = root / "out"
    rc = load_tool("tools/infer.py").main(infer_args(ckpt, IMG) + ["--input", str(inp), "--output", str(out)])
    return rc, out, good, bad, inp


def test_exit_status_says_something_was_skipped(zoo):
    assert zoo[0] == EXIT_SKIPPED


def test_exactly_the_expected_rows(zoo):
    _, out, good, bad, inp = zoo
    pred = _rows(out / "predictions.csv")
    skipped = _rows(out / "skipped.csv")
    expect_pred = sorted(p for paths in good.values() for p in paths)
    assert sorted(r["path"] for r in pred) == expect_pred
    assert sorted(os.path.basename(r["path"]) for r in skipped) == sorted(bad)
    for r in skipped:
        assert bad[os.path.basename(r["path"])].lower() in r["reason"].lower(), r
        assert r["reason"].strip()
    # every file under the input is in exactly one of the two
    all_files = sorted(os.path.join(d, n) for d, _, ns in os.walk(inp) for n in ns)
    listed = [r["path"] for r in pred] + [r["path"] for r in skipped if os.path.isfile(r["path"])]
    assert sorted(listed) == all_files


def test_series_are_complete_and_ordered(zoo):
    _, out, good, _, _ = zoo
    pred = _rows(out / "predictions.csv")
    by_series = {}
    for r in pred:
        by_series.setdefault(r["series_uid"], []).append(r)
    sizes = {uid: len(rs) for uid, rs in by_series.items()}
    assert sizes == {"1.9.2.1": 300, "1.9.1.1": 6, "1.9.3.1": 4, "1.9.4.1": 4}
    for key in ("ok", "long", "mixed", "dup"):  # write_series returns the paths in z order
        uid = {"ok": "1.9.1.1", "long": "1.9.2.1", "mixed": "1.9.3.1", "dup": "1.9.4.1"}[key]
        rs = by_series[uid]
        assert [int(r["slice_idx"]) for r in rs] == list(range(len(rs)))
        if key != "dup":
            assert [r["path"] for r in rs] == good[key]
    long_pos = [float(r["position"]) for r in by_series["1.9.2.1"]]
    np.testing.assert_allclose(np.diff(long_pos), 0.625, atol=1e-4)
    assert [float(r["position"]) for r in by_series["1.9.4.1"]] == [0.0, 5.0, 5.0, 10.0]


def test_reports_for_every_series(zoo):
    import json

    _, out, good, _, _ = zoo
    pred = _rows(out / "predictions.csv")
    sids = {r["series_id"] for r in pred}
    assert len(sids) == len(good)
    for sid in sids:
        s = json.load(open(out / "series" / f"{sid}.json"))
        assert s["num_slices"] == sum(r["series_id"] == sid for r in pred)
        assert os.path.isfile(out / "series" / f"{sid}.png")
    dup = [json.load(open(out / "series" / f"{sid}.json")) for sid in sids]
    assert any("duplicate position" in " ".join(s.get("warnings", [])) for s in dup)


def test_nothing_predictable(tmp_path):
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"), image_size=IMG)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    rc = load_tool("tools/infer.py").main(infer_args(ckpt, IMG) + [
        "--input", str(tmp_path / "in"), str(tmp_path / "does_not_exist"), "--output", str(tmp_path / "o")])
    assert rc == EXIT_NOTHING
    skipped = _rows(tmp_path / "o" / "skipped.csv")
    assert sorted(os.path.basename(r["path"]) for r in skipped) == ["a.txt", "does_not_exist"]
    assert _rows(tmp_path / "o" / "predictions.csv") == []
