"""Synthetic RSNA-style data (ppihd.synthetic, tools/make_demo_data.py).

Values are checked against what the files must contain by construction, computed here independently:
the RSNA ID formats, the SPEC §2.1 corrupt-intercept fix written out by hand, slice positions from the
tilt angle, and the ground-truth blood masks of the phantoms.
"""
import csv
import glob
import math
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest

from ppihd import LABELS
from ppihd.synthetic import generate_dataset, make_series, plan, plan_dataset, task_phantom
from ppihd.synthetic.dicom_writer import encode_hu, write_slice
from ppihd.synthetic.lesions import BLOOD_HU, SUBTYPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
ARGS = dict(n_train=8, n_test=2, seed=3, size=96, slices_min=6, slices_max=10)


def _files(d):
    out = {}
    for p in sorted(glob.glob(os.path.join(d, "**", "*"), recursive=True)):
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth") / "demo")
    summary = generate_dataset(out, progress=False, **ARGS)
    assert summary["skipped"] is False
    return out


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _manifest(d):
    with open(os.path.join(d, "synthetic_manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------- determinism
def test_same_bytes_for_same_args_and_any_worker_count(dataset, tmp_path):
    other = str(tmp_path / "again")
    generate_dataset(other, progress=False, workers=2, **ARGS)
    a, b = _files(dataset), _files(other)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a)
    third = str(tmp_path / "seed4")
    generate_dataset(third, progress=False, **dict(ARGS, seed=4))
    assert set(_files(third)) != set(a)            # another seed, other ids


def test_rerun_is_a_noop_and_other_args_need_overwrite(dataset):
    before = os.path.getmtime(os.path.join(dataset, "stage_2_train.csv"))
    assert generate_dataset(dataset, progress=False, **ARGS)["skipped"] is True
    assert os.path.getmtime(os.path.join(dataset, "stage_2_train.csv")) == before
    with pytest.raises(FileExistsError, match=rf"^{re.escape(dataset)} already holds a synthetic data set made with "
                                              r"different arguments \(\{.*'seed': 3.*\}\); pass --overwrite to "
                                              r"replace it or choose another --out$"):
        generate_dataset(dataset, progress=False, **dict(ARGS, seed=9))


def test_refuses_foreign_folder(tmp_path):
    d = tmp_path / "x" / "stage_2_train"
    d.mkdir(parents=True)
    (d / "mine.dcm").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not written by make_demo_data"):
        generate_dataset(str(tmp_path / "x"), 1, 0, size=64, slices_min=2, slices_max=2, progress=False)
    assert (d / "mine.dcm").read_bytes() == b"user data"


# ----------------------------------------------------------------------------------------- label files
def test_train_csv_six_rows_per_image_in_spec_order_with_rsna_duplicates(dataset):
    header, rows = _read_csv(os.path.join(dataset, "stage_2_train.csv"))
    assert header == ["ID", "Label"]
    files = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(dataset, "stage_2_train", "*.dcm"))}
    # RSNA quirk: a few images are listed twice (identical six-row blocks)
    assert len(rows) == 6 * len(files) + 12
    seen, blocks = set(), []
    for i in range(0, len(rows), 6):
        block = rows[i:i + 6]
        sop = block[0][0].rsplit("_", 1)[0]
        assert [r[0] for r in block] == [f"{sop}_{lab}" for lab in LABELS]
        y = [int(r[1]) for r in block]
        assert y[5] == int(any(y[:5]))                             # any = OR of the five
        if sop in seen:
            assert block == next(b for b in blocks if b[0][0] == block[0][0])
        seen.add(sop)
        blocks.append(block)
    assert seen == files
    man = {r["sop"]: r for r in _manifest(dataset) if r["split"] == "train"}
    for b in blocks:
        sop = b[0][0].rsplit("_", 1)[0]
        assert [int(r[1]) for r in b] == [int(man[sop][lab]) for lab in LABELS]
    pos = sum(int(man[s]["any"]) for s in man)
    assert 0 < pos < len(man)


def test_sample_submission_lists_test_images(dataset):
    header, rows = _read_csv(os.path.join(dataset, "stage_2_sample_submission.csv"))
    assert header == ["ID", "Label"]
    test_ids = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(dataset, "stage_2_test", "*.dcm"))}
    assert len(rows) == 6 * len(test_ids)
    assert {r[0].rsplit("_", 1)[0] for r in rows} == test_ids
    assert {r[1] for r in rows} == {"0.5"}
    assert [r[0].rsplit("_", 1)[1] for r in rows[:6]] == list(LABELS)


# ------------------------------------------------------------------------------------------ headers
def test_headers_have_rsna_quirks(dataset):
    paths = sorted(glob.glob(os.path.join(dataset, "stage_2_*", "*.dcm")))
    man = {r["sop"]: r for r in _manifest(dataset)}
    bits, syntaxes, shapes, tilts, multi_wc, vm2 = set(), set(), set(), [], 0, 0
    for p in paths:
        ds = pydicom.dcmread(p)
        sop = str(ds.SOPInstanceUID)
        assert os.path.basename(p) == sop + ".dcm"
        assert re.fullmatch(r"ID_[0-9a-f]{9}", sop)
        assert re.fullmatch(r"ID_[0-9a-f]{10}", str(ds.StudyInstanceUID))
        assert re.fullmatch(r"ID_[0-9a-f]{10}", str(ds.SeriesInstanceUID))
        assert re.fullmatch(r"ID_[0-9a-f]{9}", str(ds.PatientID))
        assert ds.Modality == "CT"
        assert "InstanceNumber" not in ds
        o = [float(v) for v in ds.ImageOrientationPatient]
        t = math.degrees(math.atan2(-o[5], o[4]))
        assert o[:4] == [1.0, 0.0, 0.0, 0.0] and 0.0 <= t <= 25.0 + 1e-6
        assert abs(t - float(man[sop]["tilt_deg"])) < 1e-3
        tilts.append(t)
        bits.add((int(ds.BitsStored), int(ds.PixelRepresentation), int(ds.HighBit)))
        icpt = float(ds.RescaleIntercept)
        if int(ds.BitsStored) == 12 and int(ds.PixelRepresentation) == 0 and icpt > -100:
            assert man[sop]["encoding"] == "corrupt"
        else:
            assert icpt == -1024.0
        assert float(ds.RescaleSlope) == 1.0
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        shapes.add((int(ds.Rows), int(ds.Columns)))
        with open(p, "rb") as f:
            raw = f.read()
        multi_wc += b"00036\\00036" in raw or b"00040\\00040" in raw
        vm2 += ds["WindowCenter"].VM == 2 and ds["WindowWidth"].VM == 2  # pydicom's parse of the same files
    assert {(12, 0, 11), (16, 1, 15)} <= bits
    assert syntaxes == {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
    assert (96, 96) in shapes and (120, 96) in shapes and (96, 120) in shapes
    assert max(tilts) > 3.0
    assert multi_wc == vm2 and 0 < vm2 < len(paths)  # RSNA's two-valued windows, only written as 36/40 twice
    assert sum(r["encoding"] == "corrupt" for r in man.values()) >= 2


def test_positions_step_5mm_along_tilted_normal(dataset):
    man = _manifest(dataset)
    by_series = {}
    for r in man:
        by_series.setdefault(r["series"], []).append(r)
    for rows in by_series.values():
        rows.sort(key=lambda r: int(r["slice_index"]))
        d = os.path.join(dataset, "stage_2_train" if rows[0]["split"] == "train" else "stage_2_test")
        pos = []
        for r in rows:
            ds = pydicom.dcmread(os.path.join(d, r["sop"] + ".dcm"), stop_before_pixels=True)
            pos.append([float(v) for v in ds.ImagePositionPatient])
            o = [float(v) for v in ds.ImageOrientationPatient]
        normal = np.cross(o[:3], o[3:])                              # row x column direction
        t = math.radians(float(rows[0]["tilt_deg"]))
        np.testing.assert_allclose(normal, [0.0, math.sin(t), math.cos(t)], atol=1e-5)
        step = np.diff(np.array(pos), axis=0)
        np.testing.assert_allclose(step, np.tile(5.0 * normal, (len(step), 1)), atol=2e-5)


def test_patients_option_shares_patient_ids(tmp_path):
    out = str(tmp_path / "p")
    generate_dataset(out, 6, 1, seed=1, size=48, slices_min=2, slices_max=3, patients=2, progress=False)
    man = _manifest(out)
    train = {r["series"]: r["patient"] for r in man if r["split"] == "train"}
    test = {r["series"]: r["patient"] for r in man if r["split"] == "test"}
    assert len(train) == 6 and len(set(train.values())) == 2
    assert not set(test.values()) & set(train.values())


# --------------------------------------------------------------------------------------- pixel values
def _spec_fix_hu(ds):
    """SPEC §2.1, written out independently: corrupt files get raw+1000, -4096 where >= 4096, intercept -1000."""
    raw = ds.pixel_array.astype(np.int64)
    slope, icpt = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if int(ds.BitsStored) == 12 and int(ds.PixelRepresentation) == 0 and icpt > -100:
        raw = raw + 1000
        raw[raw >= 4096] -= 4096
        icpt = -1000.0
    return raw * slope + icpt


@pytest.mark.parametrize("encoding,low", [("u12", -1024), ("s16", -3024), ("u16", -1024), ("corrupt", -1000)])
def test_file_hu_equals_phantom_hu(tmp_path, encoding, low):
    ph = make_series(11, size=64, n_slices=6, subtypes=["subdural"], encoding=encoding)
    sl = ph.render(3)
    p = str(tmp_path / "x.dcm")
    write_slice(p, ph, sl.hu, 3, dict(sop="ID_0123456789"[:12], patient="ID_a", study="ID_b", series="ID_c"))
    ds = pydicom.dcmread(p)
    hu = _spec_fix_hu(ds)
    want = np.clip(np.rint(sl.hu), low, 3071 if encoding != "corrupt" else 3095)
    np.testing.assert_array_equal(hu, want)
    assert hu[ph.out_of_field].max() == low                 # out of field maps to the minimum
    assert hu.max() > 700                                    # skull survived the round trip
    if encoding == "corrupt":
        naive = ds.pixel_array.astype(np.int64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert naive[ph.out_of_field].min() > 3000           # without the fix, air reads as dense bone


def test_dataset_files_match_phantoms_through_the_fix(dataset):
    tasks, _ = plan_dataset(dataset, **{k: v for k, v in ARGS.items()})
    corrupt = [t for t in tasks if t.encoding == "corrupt"]
    assert corrupt
    for t in corrupt[:1] + [t for t in tasks if t.encoding == "s16"][:1]:
        ph = task_phantom(t)
        for k in (0, t.n_slices - 1):
            ds = pydicom.dcmread(os.path.join(t.out_dir, t.sops[k] + ".dcm"))
            assert int(ds.BitsStored) == (12 if t.encoding == "corrupt" else 16)
            want = np.rint(ph.render(k).hu)
            want = np.clip(want, -1000, 3095) if t.encoding == "corrupt" else np.clip(want, -3024, 3071)
            np.testing.assert_array_equal(_spec_fix_hu(ds), want)


# ------------------------------------------------------------------------------ blood masks vs labels
def _dist_to(mask):
    """Euclidean distance (pixels) of every pixel to the nearest True pixel of ``mask``."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)


def _runs(flags):
    runs, cur = [], 0
    for f in list(flags) + [0]:
        if f:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    return runs


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_labels_agree_with_drawn_blood(subtype):
    runs = []
    positives = 0
    for seed in range(3):
        ph = make_series(100 + seed, size=128, n_slices=24, subtypes=[subtype], noise=0.0)
        flags = []
        for k in range(ph.n_slices):
            sl = ph.render(k)
            y = sl.labels
            assert y[5] == int(y[:5].any())
            a = sl.anatomy
            assert set(sl.lesions) <= {subtype}
            pos = subtype in sl.lesions
            flags.append(pos)
            assert y[LABELS.index(subtype)] == int(pos)
            # blood-range pixels away from dense normal anatomy (partial volume: 3 px margin) are lesion pixels
            dense = a["bone"] | a["skull_base"] | a["calcification"] | a["headrest"] | a["scalp"]
            far = (_dist_to(dense) > 3) & ~a["out_of_field"]
            bloodlike = (sl.hu >= BLOOD_HU[0] - 0.5) & far
            if not pos:
                assert not bloodlike.any(), f"blood-range HU on a negative slice k={k}"
                continue
            m = sl.lesions[subtype]
            positives += 1
            assert m.sum() >= ph.min_lesion_pixels
            assert not (bloodlike & (_dist_to(m) > 2)).any()
            core = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if core.any():
                v = sl.hu[core & far]
                assert v.size == 0 or (v.min() >= BLOOD_HU[0] - 3 and v.max() <= BLOOD_HU[1] + 1)
            d_bone = _dist_to(a["bone"])[m] * ph.ps                 # mm from the skull
            if subtype in ("epidural", "subdural"):
                assert d_bone.min() <= ph.ps * 1.5                  # against the inner table
                assert d_bone.max() <= 20.0
            elif subtype == "intraparenchymal":
                assert d_bone.min() > 3.0                            # inside the brain, off the skull
            elif subtype == "intraventricular":
                assert (m & ~a["ventricles"]).sum() == 0
            else:
                assert (m & ~a["csf"]).sum() == 0                     # sulci / fissure / rim only
        runs += _runs(flags)
    assert positives >= 3
    assert max(runs) >= 3                                            # lesions span consecutive slices


def test_windows_show_the_blood():
    """In the blood window (80/200) the lesion is brighter than the brain around it."""
    ph = make_series(7, size=128, n_slices=24, subtypes=["intraparenchymal"], noise=0.0)
    renders = [ph.render(k) for k in range(ph.n_slices)]
    sl = max(renders, key=lambda r: r.lesions["intraparenchymal"].sum() if r.lesions else 0)
    win = np.clip((sl.hu - (80 - 100)) / 200.0 * 255, 0, 255)
    m = sl.lesions["intraparenchymal"]
    core = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~m & sl.anatomy["brain"]
    assert win[core].mean() - win[ring].mean() > 15                # > 12 HU of contrast


# ---------------------------------------------------------------------------------------------- tool
def test_cli_writes_layout(tmp_path):
    out = str(tmp_path / "cli")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_demo_data.py"), "--out", out,
                        "--series", "2", "--test-series", "1", "--seed", "0", "--size", "48",
                        "--slices-min", "2", "--slices-max", "3", "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("stage_2_train.csv", "stage_2_sample_submission.csv", "synthetic.json"):
        assert os.path.isfile(os.path.join(out, name))
    assert 4 <= len(os.listdir(os.path.join(out, "stage_2_train"))) <= 6
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_demo_data.py"), "--out", out,
                        "--series", "0", "--test-series", "0", "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "at least one series" in r.stderr


# ------------------------------------------------------------- the package's own reader on this data
def test_reader_groups_and_orders_the_synthetic_series(dataset):
    from ppihd.data.series import group_series, scan

    headers, skipped = scan([os.path.join(dataset, "stage_2_train"), os.path.join(dataset, "stage_2_test")],
                            num_workers=1, progress=False)
    assert skipped == []
    man = _manifest(dataset)
    assert len(headers) == len(man)
    series = group_series(headers)
    truth = {}
    for r in man:
        truth.setdefault((r["patient"], r["study"], r["series"]), []).append(r)
    assert {s.key for s in series} == set(truth)
    for s in series:
        want = [r["sop"] for r in sorted(truth[s.key], key=lambda r: int(r["slice_index"]))]
        assert [h.sop_uid for h in s.slices] == want               # files were written in shuffled order
        assert s.order_method == "normal"
        np.testing.assert_allclose(np.diff(s.positions), 5.0, atol=1e-4)
        assert s.warnings == []


def test_reader_hu_with_intercept_fix_matches_phantom(dataset):
    from dicom_utils import slice_hu

    tasks, _ = plan_dataset(dataset, **ARGS)
    t = next(t for t in tasks if t.encoding == "corrupt")
    ph = task_phantom(t)
    k = t.n_slices // 2
    path = os.path.join(t.out_dir, t.sops[k] + ".dcm")
    want = np.clip(np.rint(ph.render(k).hu), -1000, 3095)
    np.testing.assert_array_equal(slice_hu(path, fix_intercept=True), want)
    assert not np.array_equal(slice_hu(path, fix_intercept=False), want)
    t = next(t for t in tasks if t.encoding == "s16")
    ph = task_phantom(t)
    np.testing.assert_array_equal(slice_hu(os.path.join(t.out_dir, t.sops[0] + ".dcm")),
                                  np.clip(np.rint(ph.render(0).hu), -3024, 3071))


def test_label_parser_reads_the_synthetic_csv(dataset):
    from ppihd.data.labels import read_labels

    wide, rep = read_labels(os.path.join(dataset, "stage_2_train.csv"))
    man = [r for r in _manifest(dataset) if r["split"] == "train"]
    assert rep.duplicate_rows_dropped == 12
    assert rep.images == len(man) and rep.conflicting_ids == [] and rep.inconsistent_any == []
    assert rep.incomplete_images == []
    for r in man:
        assert wide.loc[r["sop"]].tolist() == [float(r[lab]) for lab in LABELS]


def test_patient_grouped_split_keeps_patients_together(tmp_path):
    import pandas as pd

    from ppihd.data.labels import split_series
    from ppihd.data.series import group_series, scan

    out = str(tmp_path / "pg")
    generate_dataset(out, 10, 0, seed=2, size=48, slices_min=2, slices_max=2, patients=4, progress=False)
    headers, _ = scan(os.path.join(out, "stage_2_train"), progress=False)
    series = group_series(headers)
    tab = pd.DataFrame({"series_id": [s.series_id for s in series], "patient_id": [s.key[0] for s in series]})
    assert tab["patient_id"].nunique() == 4
    split = split_series(tab, val_fraction=0.3, seed=0, group_by_patient=True)
    per_patient = tab.assign(split=tab["series_id"].map(split)).groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all() and set(split) == {"train", "val"}


def test_overwrite_replaces_data_and_derived_caches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                    # relative --out, as in the Makefile
    kw = dict(size=48, slices_min=2, slices_max=2, progress=False)
    generate_dataset("d", 2, 0, seed=0, **kw)
    old = set(os.listdir("d/stage_2_train"))
    os.makedirs("d/cache_32/series")
    generate_dataset("d", 2, 0, seed=1, overwrite=True, **kw)
    new = set(os.listdir("d/stage_2_train"))
    assert len(new) == 4 and not old & new and not os.path.exists("d/cache_32")


def test_set_from_an_older_generator_version_is_redone(tmp_path, monkeypatch):
    kw = dict(size=48, slices_min=2, slices_max=2, progress=False)
    out = str(tmp_path / "v")
    generate_dataset(out, 2, 0, seed=0, **kw)
    os.makedirs(os.path.join(out, "cache_32"))
    monkeypatch.setattr(plan, "MANIFEST_VERSION", plan.MANIFEST_VERSION + 1)
    assert generate_dataset(out, 2, 0, seed=0, **kw)["skipped"] is False
    assert not os.path.exists(os.path.join(out, "cache_32"))
    assert generate_dataset(out, 2, 0, seed=0, **kw)["skipped"] is True
