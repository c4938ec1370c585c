"""Scanning folders, grouping series and tilt-aware slice ordering."""
import hashlib
import os
import re
import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from config_utils import schema_section
from ppihd.data.dicom import SliceHeader, read_header
from ppihd.data.series import group_series, load_series, make_series_id, order_slices, scan, slice_normal

DATA = schema_section("Data", windows=[[40, 80], [80, 200], [40, 380]], fix_intercept=True, remove_black_edges=True,
                      opening_kernel=5, opening_iterations=3, crop_inclusive=True, image_size=64)


def _h(name, pos=None, ori=(1, 0, 0, 0, 1, 0), inst=None, key=("p", "st", "se"), rows=512, cols=512):
    return SliceHeader(path=f"/x/{name}", sop_uid=name, patient_id=key[0], study_uid=key[1], series_uid=key[2],
                       modality="CT", position=None if pos is None else tuple(map(float, pos)),
                       orientation=None if ori is None else tuple(map(float, ori)), instance_number=inst,
                       rows=rows, cols=cols)


@pytest.fixture(scope="module")
def shuffled_fixture(tmp_path_factory, fixture_series_dir):
    """The 28 real slices under nested folders with hashed names (file order says nothing about anatomy)."""
    root = tmp_path_factory.mktemp("study")
    for i, name in enumerate(sorted(f for f in os.listdir(fixture_series_dir) if f.endswith(".dcm"))):
        sub = root / ("a" if i % 2 else "b") / ("c" if i % 3 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(fixture_series_dir, name), sub / (hashlib.md5(name.encode()).hexdigest() + ".dcm"))
    (root / "README.txt").write_text("export notes\n")
    (root / "empty").mkdir()
    return str(root)


# ---------------------------------------------------------------------------------------------- normals
def test_slice_normal_hand_values():
    np.testing.assert_allclose(slice_normal((1, 0, 0, 0, 1, 0)), (0, 0, 1))
    # fixture tilt: row (1,0,0) x col (0, c, s) = (0, -s, c) with c = 0.9483237, s = -0.3173047
    np.testing.assert_allclose(slice_normal((1, 0, 0, 0, 0.9483237, -0.3173047)), (0, 0.3173047, 0.9483237),
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"^degenerate ImageOrientationPatient \[1, 0, 0, 1, 0, 0\]$"):
        slice_normal((1, 0, 0, 1, 0, 0))


def test_tilt_orders_along_normal_not_z():
    ori = (1, 0, 0, 0, np.cos(np.pi / 6), -np.sin(np.pi / 6))   # 30 degree tilt: n = (0, 0.5, 0.866)
    a = _h("a.dcm", (0, 0, 0), ori)                              # along n: 0
    b = _h("b.dcm", (0, 10, -2), ori)                            # along n: 5 - 1.732 = 3.268; lower z!
    idx, pos, method, _ = order_slices([b, a], "normal")
    assert method == "normal" and idx == [1, 0]
    assert pos == pytest.approx([0.0, 10 * 0.5 - 2 * np.cos(np.pi / 6)])
    # z alone (no orientation) puts b first
    idx, pos, method, notes = order_slices([_h("b", (0, 10, -2), None), _h("a", (0, 0, 0), None)])
    assert method == "z" and idx == [0, 1] and pos == [-2.0, 0.0] and "missing" in notes[0]


def test_sagittal_normal_and_reference_order():
    ori = (0, 1, 0, 0, 0, -1)   # n = row x col = (-1, 0, 0)
    hs = [_h("s10", (10, 0, 0), ori), _h("s0", (0, 0, 0), ori), _h("s20", (20, 0, 0), ori)]
    idx, pos, _, _ = order_slices(hs, "normal")
    assert [hs[i].sop_uid for i in idx] == ["s20", "s10", "s0"] and pos == [-20.0, -10.0, 0.0]
    idx, _, method, _ = order_slices(hs, "reference")             # lexicographic (x, y, z)
    assert method == "reference" and [hs[i].sop_uid for i in idx] == ["s0", "s10", "s20"]


def test_fallbacks_instance_then_filename():
    hs = [_h("c", None, None, inst=3), _h("a", None, None, inst=1), _h("b", None, None, inst=2)]
    idx, pos, method, _ = order_slices(hs)
    assert method == "instance" and [hs[i].sop_uid for i in idx] == ["a", "b", "c"] and np.isnan(pos).all()
    hs = [_h("f2.dcm"), _h("f1.dcm"), _h("f3.dcm")]
    idx, _, method, _ = order_slices(hs)
    assert method == "filename" and idx == [1, 0, 2]
    with pytest.raises(ValueError, match=r"^Data\.slice_order must be 'normal' or 'reference', got 'sideways'$"):
        order_slices(hs, "sideways")


def test_group_duplicates_mixed_sizes_and_ids():
    k1, k2 = ("pat", "study", "1.2.3.4"), ("pat", "study", "ID_5c8b5d701")
    hs = [_h("x1", (0, 0, 5), key=k1, inst=2), _h("x0", (0, 0, 5), key=k1, inst=1),
          _h("x2", (0, 0, 10), key=k1, rows=638),
          _h("y0", (0, 0, 0), key=k2)]
    ser = group_series(hs)
    assert [s.key for s in ser] == [k1, k2]
    s1 = ser[0]
    assert [h.sop_uid for h in s1.slices] == ["x0", "x1", "x2"]        # tie broken by InstanceNumber
    assert any(w.startswith("duplicate position 5.000 mm: x0 and x1") for w in s1.warnings)
    assert any("mixed image sizes [(512, 512), (638, 512)]" in w for w in s1.warnings)
    for s in ser:
        assert re.fullmatch(r"[A-Za-z0-9_]+-[0-9a-f]{10}", s.series_id)
    assert ser[1].series_id.startswith("ID_5c8b5d701-")
    assert make_series_id(k1) == make_series_id(list(k1)) != make_series_id(("pat2",) + k1[1:])


# ------------------------------------------------------------------------------------- real data scans
def test_fixture_one_series_in_anatomical_order(shuffled_fixture):
    headers, skipped = scan(shuffled_fixture, num_workers=1, progress=False)
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert set(reasons) == {"README.txt", "empty"}
    assert reasons["README.txt"].startswith("not DICOM") and reasons["empty"] == "empty folder (no files)"
    ser = group_series(headers)
    assert len(ser) == 1 and len(ser[0]) == 28 and ser[0].order_method == "normal" and ser[0].warnings == []
    s = ser[0]
    # independent check: InstanceNumber 1..28 and ImagePositionPatient z increase together in this series
    assert [h.instance_number for h in s.slices] == list(range(1, 29))
    assert np.all(np.diff([h.position[2] for h in s.slices]) > 0)
    assert np.all(np.diff(s.positions) > 0)
    # first slice along n = (0, 0.3173047, 0.9483237): -123.5404569*0.3173047 + 5.8360586*0.9483237
    assert s.positions[0] == pytest.approx(-123.5404569 * 0.3173047 + 5.8360586 * 0.9483237, abs=1e-4)
    # slice spacing along the normal: 4.22 mm in z * 0.9483 = 4.0 mm (the 4 mm part), 7.38 * 0.9483 = 7.0 mm
    gaps = np.diff(s.positions)
    assert gaps[0] == pytest.approx(4.0, abs=0.01) and gaps[-1] == pytest.approx(7.0, abs=0.01)


def test_parallel_scan_matches_serial(shuffled_fixture):
    h1, s1 = scan(shuffled_fixture, num_workers=1, progress=False)
    h2, s2 = scan(shuffled_fixture, num_workers=2, progress=False, pool_min_files=0)
    assert [h.path for h in h1] == [h.path for h in h2] and sorted(s1) == sorted(s2)


def test_pydicom_files_series_or_reason(tmp_path):
    names = ["CT_small.dcm", "MR_small.dcm", "MR_truncated.dcm", "J2K_pixelrep_mismatch.dcm"]
    files = [get_testdata_file(n) for n in names]
    headers, skipped = scan(files + [str(tmp_path / "nope")], progress=False)
    got = {os.path.basename(p): r for p, r in skipped}
    assert got["MR_small.dcm"] == "not CT (Modality MR)" and got["MR_truncated.dcm"] == "not CT (Modality MR)"
    assert got["nope"] == "no such file or folder"
    ser = group_series(headers)
    names_ok = {os.path.basename(s.slices[0].path) for s in ser}
    assert "CT_small.dcm" in names_ok
    # the JPEG 2000 CT is a series when a decoder is installed, else a reason naming the plug-in
    assert ("J2K_pixelrep_mismatch.dcm" in names_ok) != ("J2K_pixelrep_mismatch.dcm" in got)
    for s in ser:
        arr, dropped = load_series(s, DATA)
        assert arr.shape == (1, 64, 64, 3) and arr.dtype == np.uint8 and dropped == []


def test_load_series_fixture_and_unreadable_slice(shuffled_fixture, tmp_path):
    headers, _ = scan(shuffled_fixture, progress=False)
    s = group_series(headers)[0]
    arr, dropped = load_series(s, DATA)
    assert arr.shape == (28, 64, 64, 3) and dropped == []
    # brain window: a real head has both dark (air/bone-clipped) and mid-grey brain pixels on a middle slice
    mid = arr[14, ..., 0]
    assert (mid == 0).mean() > 0.05 and ((mid > 50) & (mid < 200)).mean() > 0.2
    # one slice becomes unreadable after the scan: it is dropped and recorded, the series goes on
    bad = tmp_path / "bad.dcm"
    data = open(s.slices[5].path, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    s.slices[5].path = str(bad)
    arr2, dropped2 = load_series(s, DATA)
    assert arr2.shape[0] == 27 and dropped2 == [(str(bad), "truncated pixel data")]
    np.testing.assert_array_equal(arr2[:5], arr[:5])
    np.testing.assert_array_equal(arr2[5:], arr[6:])


def test_native_fast_read_equals_pydicom(tmp_path, fixture_series_dir):
    """The direct numpy read of native pixel data gives pydicom's values (incl. unused-bit correction)."""
    import pydicom
    from ppihd.data.dicom import read_native_pixels

    files = [os.path.join(fixture_series_dir, "01.dcm"), get_testdata_file("CT_small.dcm")]
    # 12 bits stored in 16: garbage in the unused high bits must be masked (unsigned) / sign-extended (signed)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = ds.pixel_array.astype(np.int16)
    for rep, name in ((0, "u12.dcm"), (1, "s12.dcm")):
        d = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        d.BitsStored, d.HighBit, d.PixelRepresentation = 12, 11, rep
        vals = (raw.astype(np.int32) & 0x0FFF) | 0xF000   # high nibble set on purpose
        d.PixelData = vals.astype(np.uint16).tobytes()
        d.save_as(tmp_path / name)
        files.append(str(tmp_path / name))
    d = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    d.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    d.save_as(tmp_path / "implicit.dcm", implicit_vr=True, little_endian=True)
    files.append(str(tmp_path / "implicit.dcm"))
    for f in files:
        h = read_header(f)
        fast = read_native_pixels(h)
        ref = pydicom.dcmread(f).pixel_array
        assert fast is not None and fast.dtype == ref.dtype, f
        np.testing.assert_array_equal(fast, ref, err_msg=f)
    u12 = read_native_pixels(read_header(files[2]))
    assert u12.max() <= 4095 and u12.min() >= 0


def test_parallel_scan_after_paddle_import(shuffled_fixture):
    """With paddle imported (its threads make fork unsafe) the pool uses forkserver; results are the same."""
    import paddle  # noqa: F401

    h1, _ = scan(shuffled_fixture, num_workers=1, progress=False)
    h2, _ = scan(shuffled_fixture, num_workers=2, progress=False, pool_min_files=0)
    assert [h.sop_uid for h in h1] == [h.sop_uid for h in h2] and len(h2) == 28


def test_small_scan_starts_no_pool(shuffled_fixture, monkeypatch):
    """A study-sized scan (28 files < POOL_MIN_FILES) reads serially even with workers: a pool start costs more
    than the headers; with pool_min_files=0 the pool is used."""
    import ppihd.data.series as S

    def no_pool(n):
        raise AssertionError(f"a {n}-process pool was started")

    monkeypatch.setattr(S, "_pool", no_pool)
    headers, _ = S.scan(shuffled_fixture, num_workers=2, progress=False)
    assert len(headers) == 28 and S.POOL_MIN_FILES > 28
    with pytest.raises(AssertionError, match="a 2-process pool was started"):
        S.scan(shuffled_fixture, num_workers=2, progress=False, pool_min_files=0)
