"""Reading one DICOM file: headers, HU, and a clear reason for every unusable file."""
import glob
import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ppihd.data import dicom as D
from ppihd.data.transforms import needs_intercept_fix

from dicom_utils import slice_hu


def _copy_test_file(name, tmp_path, **changes):
    ds = pydicom.dcmread(get_testdata_file(name))
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    out = tmp_path / f"{name}.mod.dcm"
    ds.save_as(out)
    return str(out)


# ------------------------------------------------------------------------------------------ real fixture
def test_fixture_header(fixture_series_dir):
    h = D.read_header(os.path.join(fixture_series_dir, "01.dcm"))
    assert h.modality == "CT" and h.instance_number == 1 and (h.rows, h.cols) == (512, 512)
    assert h.position == pytest.approx((-125.0, -123.5404569, 5.8360586))
    assert h.orientation == pytest.approx((1.0, 0.0, 0.0, 0.0, 0.9483237, -0.3173047))
    assert (h.slope, h.intercept, h.bits_stored, h.pixel_representation) == (1.0, 0.0, 16, 1)
    assert h.transfer_syntax == "1.2.840.10008.1.2.1"
    assert h.warnings == []


def test_fixture_hu_without_intercept_fix(fixture_series_dir):
    p = os.path.join(fixture_series_dir, "01.dcm")
    h = D.read_header(p)
    assert not needs_intercept_fix(h.bits_stored, h.pixel_representation, h.intercept)
    hu = slice_hu(p)
    assert hu.shape == (512, 512) and hu.dtype == np.float32
    assert hu.min() == -1500.0                       # README: pixels are HU already, minimum -1500
    ref = pydicom.dcmread(p).pixel_array.astype(np.float32)  # intercept 0, slope 1
    np.testing.assert_array_equal(hu, ref)
    # brain tissue exists: a good share of pixels between 0 and 80 HU
    assert ((hu > 0) & (hu < 80)).mean() > 0.05


# ------------------------------------------------------------------------------------ pydicom test files
def test_ct_small_hu():
    p = get_testdata_file("CT_small.dcm")
    h = D.read_header(p)
    assert h.modality == "CT" and h.intercept == -1024.0 and h.window_center is None
    hu = slice_hu(p)
    np.testing.assert_array_equal(hu, pydicom.dcmread(p).pixel_array.astype(np.float32) - 1024.0)


def test_mr_is_not_ct():
    with pytest.raises(D.DicomError) as e:
        D.read_header(get_testdata_file("MR_small.dcm"))
    assert e.value.reason == "not CT (Modality MR)"
    assert e.value.path.endswith("MR_small.dcm")


def test_mr_truncated_reason(tmp_path):
    with pytest.raises(D.DicomError, match=r"MR_truncated\.dcm: not CT \(Modality MR\)$"):
        D.read_header(get_testdata_file("MR_truncated.dcm"))
    # the same file claimed as CT: the pixel data is 8130 of 8192 bytes
    p = _copy_test_file("MR_truncated.dcm", tmp_path, Modality="CT")
    with pytest.raises(D.DicomError) as e:
        D.read_header(p)
    assert e.value.reason == "truncated pixel data (8130 of 8192 bytes)"


def test_cut_off_file_is_truncated(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    data = open(src, "rb").read()
    p = tmp_path / "cut.dcm"
    start = data.rindex(b"\xe0\x7f\x10\x00OW")   # PixelData element (explicit VR LE: 12-byte header)
    p.write_bytes(data[:start + 12 + 20000])     # 128x128x2 = 32768 bytes expected, 20000 present
    with pytest.raises(D.DicomError) as e:
        D.read_header(str(p))
    assert e.value.reason == "truncated pixel data (20000 of 32768 bytes)"
    with pytest.raises(D.DicomError, match=r"cut\.dcm: truncated pixel data"):
        slice_hu(str(p))


def test_j2k_decodes_with_the_default_install():
    p = get_testdata_file("J2K_pixelrep_mismatch.dcm")
    h = D.read_header(p)        # pylibjpeg-openjpeg is a requirement: JPEG 2000 must decode
    assert h.modality == "CT" and h.transfer_syntax == "1.2.840.10008.1.2.4.90"
    hu = slice_hu(p)
    assert hu.shape == (512, 512) and hu.min() < -900 and hu.max() > 500


def test_jpeg_ls_decodes_and_a_missing_decoder_names_plugin(tmp_path, monkeypatch):
    # a JPEG-LS file claimed as CT: pydicom has no built-in JPEG-LS decoder; python-gdcm (a requirement) decodes it
    p = _copy_test_file("MR_small_jpeg_ls_lossless.dcm", tmp_path, Modality="CT")
    from pydicom.pixels import get_decoder

    # lossless: the same pixels as the uncompressed twin (no rescale tags: HU = stored values)
    np.testing.assert_array_equal(slice_hu(p),
                                  pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32))
    # a broken install without that plug-in: the reason names the package and the requirements file
    monkeypatch.setattr(get_decoder("1.2.840.10008.1.2.4.80"), "_available", {})
    with pytest.raises(D.DicomError) as e:
        D.read_header(p)
    assert e.value.path == p
    assert e.value.reason.startswith("JPEG-LS Lossless Image Compression needs a decoder plug-in")
    assert "python-gdcm" in e.value.reason and "pip install -r requirements.txt" in e.value.reason


def test_not_dicom(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not an image\n" * 20)
    with pytest.raises(D.DicomError) as e:
        D.read_header(str(txt))
    assert e.value.reason == "not DICOM"
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(D.DicomError, match=r"empty\.dcm: not DICOM \(empty file\)$"):
        D.read_header(str(empty))
    with pytest.raises(D.DicomError, match=r"missing\.dcm: cannot open file \(No such file or directory\)$"):
        D.read_header(str(tmp_path / "missing.dcm"))


def test_dicomdir_reason():
    p = glob.glob(os.path.join(os.path.dirname(get_testdata_file("CT_small.dcm")), "dicomdirtests", "DICOMDIR"))[0]
    with pytest.raises(D.DicomError, match=r"/DICOMDIR: DICOMDIR \(a directory index, not an image\)$"):
        D.read_header(p)


# ---------------------------------------------------------------------------------------- messy headers
def test_missing_modality_accepted_with_warning(tmp_path):
    p = _copy_test_file("CT_small.dcm", tmp_path, Modality=None)
    h = D.read_header(p)
    assert h.modality is None and h.warnings == ["Modality missing: assumed CT"]


def test_missing_rescale_defaults(tmp_path):
    p = _copy_test_file("CT_small.dcm", tmp_path, RescaleSlope=None, RescaleIntercept=None)
    h = D.read_header(p)
    assert (h.slope, h.intercept) == (1.0, 0.0)
    np.testing.assert_array_equal(slice_hu(p), pydicom.dcmread(p).pixel_array.astype(np.float32))


def test_multivalued_window_and_invalid_uid(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00281050, "DS", "00040\\00080")   # WindowCenter as RSNA writes it
    ds.add_new(0x00281051, "DS", "00080\\00200")
    ds.SOPInstanceUID = "ID_000039fa0"             # not a valid UI
    ds.SeriesInstanceUID = "ID_5c8b5d701"
    p = tmp_path / "rsna_like.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(p)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        h = D.read_header(str(p))
    assert not [x for x in w if "pydicom" in str(x.filename) or "UID" in str(x.message)]
    assert (h.window_center, h.window_width) == (40.0, 80.0)
    assert h.sop_uid == "ID_000039fa0" and h.series_uid == "ID_5c8b5d701"


def test_error_is_picklable():
    import pickle
    e = pickle.loads(pickle.dumps(D.DicomError("/a/b.dcm", "not DICOM")))
    assert (e.path, e.reason) == ("/a/b.dcm", "not DICOM")
