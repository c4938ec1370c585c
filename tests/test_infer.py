"""tools/infer.py end to end on the real fixture series, and the output writers / report with hand values."""
import csv
import json
import os

import numpy as np
import pydicom
import pytest

from ppihd import LABELS
from ppihd.engine import report
from ppihd.engine.outputs import EXIT_OK, EXIT_SKIPPED, exit_code
from ppihd.engine.backends import chunk_bounds, merge_chunks
from ppihd.postprocess.tables import submission_id

from infer_utils import infer_args, load_tool, save_tiny_checkpoint


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- small pieces, hand-worked values
def test_submission_id_never_doubles_prefix():
    assert submission_id("ID_000039fa0") == "ID_000039fa0"        # RSNA SOPInstanceUID
    assert submission_id("1.2.840.113619.2.1") == "ID_1.2.840.113619.2.1"
    assert submission_id(" 1.2.3 ") == "ID_1.2.3"


def test_exit_codes():
    assert exit_code(10, 0) == EXIT_OK == 0
    assert exit_code(10, 2) == EXIT_SKIPPED == 3
    assert exit_code(0, 5) == 4
    assert exit_code(0, 0) == 4


def test_chunk_bounds_hand_worked():
    assert chunk_bounds(10, None, 8) == [(0, 10)]
    assert chunk_bounds(10, 10, 2) == [(0, 10)]
    assert chunk_bounds(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert chunk_bounds(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert chunk_bounds(11, 4, 0) == [(0, 4), (4, 8), (7, 11)]
    assert chunk_bounds(0, 4, 1) == []
    with pytest.raises(ValueError, match=r"^Infer\.chunk_slices=4 / Infer\.chunk_overlap=4: expected chunk_slices >= 1 "
                                         r"and 0 <= chunk_overlap < chunk_slices$"):
        chunk_bounds(10, 4, 4)


def test_merge_chunks_averages_overlap():
    bounds = [(0, 3), (2, 5)]
    p = merge_chunks(5, bounds, [np.full((3, 6), 0.2), np.full((3, 6), 0.6)])
    np.testing.assert_allclose(p[:, 0], [0.2, 0.2, 0.4, 0.6, 0.6], atol=1e-7)


def test_series_summary_hand_worked():
    probs = np.zeros((4, 6))
    probs[1, 4], probs[1, 5] = 0.8, 0.9     # subdural + any on slice 1
    probs[3, 5] = 0.55                      # any only on slice 3
    probs[2, 0] = 0.5                       # exactly the threshold: not above
    s = report.series_summary({"series_id": "x"}, probs, 0.5, positions=[0.0, 5.0, 10.0, 15.0],
                              sop_uids=["a", "b", "c", "d"])
    assert s["num_slices"] == 4
    assert s["max"]["any"] == 0.9 and s["max"]["subdural"] == 0.8 and s["max"]["epidural"] == 0.5
    assert s["slices_above_threshold"]["any"] == [1, 3]
    assert s["slices_above_threshold"]["subdural"] == [1]
    assert s["slices_above_threshold"]["epidural"] == []
    assert s["positive"] == {"epidural": False, "intraparenchymal": False, "intraventricular": False,
                             "subarachnoid": False, "subdural": True, "any": True}
    assert [x["slice_idx"] for x in s["slices"]] == [1, 3]
    assert s["slices"][0]["labels"] == ["subdural", "any"] and s["slices"][0]["sop_uid"] == "b"
    assert s["slices"][1]["position"] == 15.0


def test_key_slices_prefer_suspicious_and_spread():
    probs = np.zeros((20, 6))
    probs[10, 5], probs[11, 5], probs[3, 2] = 0.9, 0.85, 0.7
    # gap = 20 // (2*3) = 3: 10 first, 11 is too close, then 3; the last place is filled evenly (index 5)
    assert report.pick_key_slices(probs, 3) == [3, 5, 10]
    assert report.pick_key_slices(probs[:2], 4) == [0, 1]


# ---------------------------------------------------------------- the real fixture end to end
@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory, fixture_series_dir):
    tmp = tmp_path_factory.mktemp("infer")
    ckpt = save_tiny_checkpoint(str(tmp / "micro.pdparams"))
    out = tmp / "out"
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", fixture_series_dir, "--output", str(out)])
    return rc, out


def _normal_positions(folder):
    """Independent of ppihd: IPP . (row x col) for every .dcm in the folder -> {path: mm}."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".dcm"):
            ds = pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True)
            o = np.asarray(ds.ImageOrientationPatient, float)
            out[name] = float(np.dot(np.asarray(ds.ImagePositionPatient, float), np.cross(o[:3], o[3:])))
    return out


def test_fixture_every_slice_one_row(fixture_run, fixture_series_dir):
    rc, out = fixture_run
    rows = _read(out / "predictions.csv")
    names = sorted(n for n in os.listdir(fixture_series_dir) if n.endswith(".dcm"))
    assert len(names) == 28
    assert sorted(os.path.basename(r["path"]) for r in rows) == names       # each slice exactly once
    skipped = _read(out / "skipped.csv")
    assert [os.path.basename(r["path"]) for r in skipped] == ["LICENSE"]   # the only non-DICOM file
    assert rc == EXIT_SKIPPED
    assert [int(r["slice_idx"]) for r in rows] == list(range(28))
    assert len({r["series_uid"] for r in rows}) == 1
    for r in rows:
        p = np.array([float(r[k]) for k in LABELS])
        assert np.all((p >= 0) & (p <= 1))


def test_fixture_order_along_tilted_normal(fixture_run, fixture_series_dir):
    _, out = fixture_run
    rows = _read(out / "predictions.csv")
    pos = _normal_positions(fixture_series_dir)
    expected = sorted(pos, key=pos.get)
    assert [os.path.basename(r["path"]) for r in rows] == expected
    np.testing.assert_allclose([float(r["position"]) for r in rows], [pos[n] for n in expected], atol=1e-3)


def test_fixture_submission_and_report(fixture_run):
    _, out = fixture_run
    rows = _read(out / "predictions.csv")
    sub = _read(out / "submission.csv")
    assert len(sub) == 6 * 28
    for i, r in enumerate(rows):
        for j, lab in enumerate(LABELS):
            s = sub[6 * i + j]
            assert s["ID"] == f"ID_{r['sop_uid']}_{lab}"
            assert float(s["Label"]) == pytest.approx(float(r[lab]), abs=1e-9)
    sid = rows[0]["series_id"]
    summary = json.load(open(out / "series" / f"{sid}.json"))
    assert summary["num_slices"] == 28
    any_p = np.array([float(r["any"]) for r in rows])
    assert summary["max"]["any"] == pytest.approx(any_p.max(), abs=1e-6)
    assert summary["slices_above_threshold"]["any"] == [int(i) for i in np.nonzero(any_p > 0.5)[0]]
    assert os.path.getsize(out / "series" / f"{sid}.png") > 10000


def test_only_good_files_exit_zero(tmp_path, fixture_series_dir):
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    files = [os.path.join(fixture_series_dir, n) for n in ("03.dcm", "01.dcm", "02.dcm")]
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", *files, "--output", str(tmp_path / "o"),
                                                              "-o", "Infer.save_plots=False"])
    assert rc == EXIT_OK
    rows = _read(tmp_path / "o" / "predictions.csv")
    assert [os.path.basename(r["path"]) for r in rows] == ["01.dcm", "02.dcm", "03.dcm"]
    assert _read(tmp_path / "o" / "skipped.csv") == []


def test_missing_checkpoint_is_a_clear_error(tmp_path, fixture_series_dir, caplog):
    rc = load_tool("tools/infer.py").main(infer_args(str(tmp_path / "nope.pdparams")) +
                                          ["--input", fixture_series_dir, "--output", str(tmp_path / "o")])
    assert rc == 2


def test_rsna_layout_submission_ids(tmp_path):
    """RSNA files carry SOPInstanceUID ``ID_<hex>``: the submission keeps it (no ``ID_ID_``) and lists
    six rows per image in label order; the slices come out in anatomical order (positions 5 mm apart)."""
    from rsna_tiny import make_tiny_rsna

    info = make_tiny_rsna(str(tmp_path / "rsna"), n_train=0, n_test=2, slices=5, extras=False)
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + [
        "--input", str(tmp_path / "rsna" / "stage_2_test"), "--output", str(tmp_path / "o"),
        "-o", "Infer.save_plots=False"])
    assert rc == EXIT_OK
    rows = _read(tmp_path / "o" / "predictions.csv")
    by_series = {}
    for r in rows:
        by_series.setdefault(r["series_uid"], []).append(r["sop_uid"])
    assert by_series == info["test"]  # every test slice, in the true anatomical order
    sub = [r["ID"] for r in _read(tmp_path / "o" / "submission.csv")]
    assert len(sub) == 6 * 10 and not any(i.startswith("ID_ID_") for i in sub)
    assert sub[:6] == [f"{rows[0]['sop_uid']}_{lab}" for lab in LABELS]


def test_same_file_given_twice_is_predicted_once(tmp_path, fixture_series_dir):
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    a, b, c = (os.path.join(fixture_series_dir, f"0{i}.dcm") for i in (1, 2, 3))
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", a, b, c, a, "--output", str(tmp_path / "o"),
                                                              "-o", "Infer.save_plots=False"])
    assert rc == EXIT_OK
    rows = _read(tmp_path / "o" / "predictions.csv")
    assert [os.path.basename(r["path"]) for r in rows] == ["01.dcm", "02.dcm", "03.dcm"]
    assert [r["slice_idx"] for r in rows] == ["0", "1", "2"]


def test_console_is_clean_when_not_a_terminal(tmp_path, fixture_series_dir):
    """Run as a pipe (a log file, CI): no progress bars, no Paddle import banner or ccache warning, and the log
    starts with what the model was trained on."""
    import subprocess
    import sys

    from infer_utils import ROOT

    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    files = [os.path.join(fixture_series_dir, n) for n in ("01.dcm", "02.dcm", "03.dcm")]
    args = [a for a in infer_args(ckpt) if a != "--no-progress"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "infer.py"), *args, "--input", *files,
                        "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_OK, r.stderr[-2000:]
    for noise in ("OMP_NUM_THREADS", "ccache", "it/s", "series:"):
        assert noise not in r.stderr, (noise, r.stderr[:2000])
    assert r.stderr.splitlines()[0].endswith("WARNING MODEL: model of unknown provenance (no training record "
                                             "beside the weights)")
