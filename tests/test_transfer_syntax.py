"""Every transfer syntax a CT study arrives in decodes with the default install (requirements.txt) to the same HU.

Four slices of the real GE fixture (signed int16, Explicit VR LE) are re-encoded with every encoder at hand:
pydicom's own (RLE, deflate), pydicom through pylibjpeg-openjpeg (JPEG 2000) and pyjpegls (JPEG-LS; a
requirements-dev.txt package, used here only to *encode*), and dcmtk (``dcmcjpeg`` JPEG Lossless process 14 with
every predictor 1-7 and SV1, ``dcmcjpls``, ``dcmcrle``, ``dcmconv`` for implicit / big-endian / deflated), and
HTJ2K Lossless from codestreams OpenJPH wrote once (tests/data/htj2k: no HTJ2K encoder installs with the tests). The
file meta of every output is checked to be the intended transfer syntax. For the lossless syntaxes the decoded
values are compared with the *uncompressed original* (an independent decode: pydicom / numpy on the native file):
HU (``ppihd.data.series.read_hu``), uint8 images (default ``Data`` config) and ``tools/infer.py`` probabilities
in ``predictions.csv`` (by SOP UID) must be identical. Lossy syntaxes (JPEG baseline / extended, JPEG-LS
near-lossless, JPEG 2000 lossy) cannot equal the original: there the HU are compared with a decoder that ppihd does
not use (dcmtk's ``dcmdjpeg``; Pillow's OpenJPEG) or with the format's error bound (JPEG-LS NEAR).

While this module runs, pydicom's decoders keep only the plug-ins that ppihd's requirements install (pydicom's
own, pylibjpeg and its plug-ins, Pillow via matplotlib): pyjpegls, a dev-only package, is hidden so the tests
prove what the default install decodes.
"""
import csv
import importlib.util
import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom import uid as U
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder, pixel_array

from ppihd import LABELS
from ppihd.data import dicom as D
from ppihd.utils.schema import DEFAULTS

from conftest import require_tool
from dicom_utils import load_slice, slice_hu
from infer_utils import infer_args, load_tool, save_tiny_checkpoint

SLICES = ("12.dcm", "13.dcm", "14.dcm", "15.dcm")
HTJ2K_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "htj2k")
DEV_ONLY_PLUGINS = {"pyjpegls"}          # in requirements-dev.txt only; not what a default install decodes with
DATA = dict(DEFAULTS["Data"])


def _dcmtk(prog, *flags):
    def enc(src, dst):
        require_tool(prog, package="dcmtk")
        subprocess.run([prog, *flags, src, dst], check=True, capture_output=True)
    return enc


def _pydicom(ts, **kw):
    def enc(src, dst):
        ds = pydicom.dcmread(src)
        if ts == U.DeflatedExplicitVRLittleEndian:   # pixels stay native, the whole data set is deflated
            ds.file_meta.TransferSyntaxUID = ts
        else:
            ds.compress(ts, generate_instance_uid=False, **kw)   # keep the SOP UIDs to compare by
        ds.save_as(dst)
    return enc


def _openjph_htj2k(src, dst):
    """No HTJ2K encoder installs with the tests: the stored values of these slices were encoded once by OpenJPH
    (tests/data/htj2k/make_htj2k.py); here the codestream replaces the native pixel data of the same slice."""
    ds = pydicom.dcmread(src)
    with open(os.path.join(HTJ2K_DIR, "ge_" + os.path.basename(src) + ".j2c"), "rb") as f:
        frame = f.read()
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = U.HTJ2KLossless
    ds.save_as(dst)


# (id, encoder, transfer syntax the output must have)
LOSSLESS = [
    ("pydicom-rle", _pydicom(U.RLELossless, encoding_plugin="pydicom"), U.RLELossless),
    ("pydicom-deflated", _pydicom(U.DeflatedExplicitVRLittleEndian), U.DeflatedExplicitVRLittleEndian),
    ("pydicom-j2k-lossless", _pydicom(U.JPEG2000Lossless), U.JPEG2000Lossless),
    ("pyjpegls-jls-lossless", _pydicom(U.JPEGLSLossless, encoding_plugin="pyjpegls"), U.JPEGLSLossless),
    ("openjph-htj2k-lossless", _openjph_htj2k, U.HTJ2KLossless),
    ("dcmtk-jpeg-sv1", _dcmtk("dcmcjpeg", "+e1"), U.JPEGLosslessSV1),
] + [
    (f"dcmtk-jpeg-p14-sv{sv}", _dcmtk("dcmcjpeg", "+el", "+sv", str(sv)), U.JPEGLossless) for sv in range(1, 8)
] + [
    ("dcmtk-jls-lossless", _dcmtk("dcmcjpls", "+el"), U.JPEGLSLossless),
    ("dcmtk-rle", _dcmtk("dcmcrle"), U.RLELossless),
    ("dcmtk-implicit", _dcmtk("dcmconv", "+ti"), U.ImplicitVRLittleEndian),
    ("dcmtk-big-endian", _dcmtk("dcmconv", "+tb"), U.ExplicitVRBigEndian),
    ("dcmtk-deflated", _dcmtk("dcmconv", "+td"), U.DeflatedExplicitVRLittleEndian),
]
DEFLATED = [c for c in LOSSLESS if c[2] == U.DeflatedExplicitVRLittleEndian]


CASES = [pytest.param(*c, id=c[0]) for c in LOSSLESS]


@pytest.fixture(scope="module", autouse=True)
def default_install_decoders():
    """Hide dev-only decoder plug-ins from pydicom for this module (restored afterwards)."""
    from pydicom.pixels.decoders import base

    saved = {}
    for dec in base._PIXEL_DATA_DECODERS.values():
        dec = dec[0]
        saved[dec] = dict(dec._available)
        for label in DEV_ONLY_PLUGINS & set(dec._available):
            del dec._available[label]
    yield
    for dec, avail in saved.items():
        dec._available.clear()
        dec._available.update(avail)


@pytest.fixture(scope="module")
def work(tmp_path_factory, fixture_series_dir):
    """``{"orig": folder}`` plus a lazily filled cache ``encode(case) -> folder`` of the four re-encoded slices."""
    root = tmp_path_factory.mktemp("ts")
    orig = root / "orig"
    orig.mkdir()
    for n in SLICES:
        shutil.copy(os.path.join(fixture_series_dir, n), orig / n)
    cache = {}

    def encode(case_id, enc, ts):
        if case_id not in cache:
            out = root / case_id
            out.mkdir()
            for n in SLICES:
                enc(str(orig / n), str(out / n))
                got = pydicom.dcmread(str(out / n), stop_before_pixels=True).file_meta.TransferSyntaxUID
                assert got == ts, f"{case_id}: {n} was written as {got.name}, not {ts.name}"
            cache[case_id] = out
        return cache[case_id]

    return {"orig": orig, "root": root, "encode": encode}


def _independent_hu(path):
    """HU of a file straight from pydicom (no ppihd code): stored values x slope + intercept."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def test_default_install_decoders_available():
    """pydicom 3 reports a decoder for every CT transfer syntax with only the default-install plug-ins."""
    need = [U.JPEGBaseline8Bit, U.JPEGExtended12Bit, U.JPEGLossless, U.JPEGLosslessSV1, U.JPEGLSLossless,
            U.JPEGLSNearLossless, U.JPEG2000Lossless, U.JPEG2000, U.HTJ2KLossless, U.HTJ2KLosslessRPCL, U.HTJ2K,
            U.RLELossless, U.DeflatedExplicitVRLittleEndian, U.ExplicitVRBigEndian, U.ImplicitVRLittleEndian]
    missing = [ts.name for ts in need if not get_decoder(ts).is_available]
    assert missing == []
    assert "gdcm" in get_decoder(U.JPEGLossless).available_plugins
    assert "pyjpegls" not in get_decoder(U.JPEGLSLossless).available_plugins   # hidden: proves the default install
    for ts in need:
        D.check_decoder("x.dcm", ts)   # raises DicomError if ppihd thinks a plug-in is missing


@pytest.mark.parametrize("case_id,enc,ts", CASES)
def test_lossless_hu_identical(work, case_id, enc, ts):
    folder = work["encode"](case_id, enc, ts)
    for n in SLICES:
        o, c = str(work["orig"] / n), str(folder / n)
        ref = slice_hu(o)
        np.testing.assert_array_equal(ref, _independent_hu(o).astype(np.float32))   # the reference itself
        hu = slice_hu(c)
        assert hu.dtype == ref.dtype and hu.shape == (512, 512)
        np.testing.assert_array_equal(hu, ref, err_msg=f"{case_id} {n}")
        ho, hc = D.read_header(o), D.read_header(c)
        assert hc.transfer_syntax == ts and hc.pixel_representation == ho.pixel_representation == 1
        np.testing.assert_array_equal(load_slice(hc, DATA), load_slice(ho, DATA), err_msg=f"{case_id} {n}")
        # every default-install plug-in that claims the syntax gives the original stored values
        raw = pydicom.dcmread(o).pixel_array
        for plugin in get_decoder(ts).available_plugins:
            np.testing.assert_array_equal(pixel_array(c, decoding_plugin=plugin), raw, err_msg=f"{case_id} {plugin}")


@pytest.mark.parametrize("case_id,enc,ts", DEFLATED, ids=[c[0] for c in DEFLATED])
def test_deflated_hu_identical(work, case_id, enc, ts):
    folder = work["encode"](case_id, enc, ts)
    for n in SLICES:
        np.testing.assert_array_equal(slice_hu(str(folder / n)), slice_hu(str(work["orig"] / n)))
        h = D.read_header(str(folder / n))   # the scan once read the still-deflated bytes: "missing pixel data"
        assert h.transfer_syntax == ts and h.pixel_offset is None


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def infer_ref(work):
    ckpt = save_tiny_checkpoint(str(work["root"] / "micro.pdparams"))
    tool = load_tool("tools/infer.py")

    def run(folder, name):
        out = work["root"] / f"infer-{name}"
        rc = tool.main(infer_args(ckpt) + ["--input", str(folder), "--output", str(out)])
        return rc, out

    rc, out = run(work["orig"], "orig")
    assert rc == 0
    ref = {r["sop_uid"]: r for r in _read(out / "predictions.csv")}
    assert len(ref) == len(SLICES)
    return run, ref


@pytest.mark.parametrize("case_id,enc,ts", CASES)
def test_lossless_infer_probabilities_identical(work, infer_ref, case_id, enc, ts):
    run, ref = infer_ref
    rc, out = run(work["encode"](case_id, enc, ts), case_id)
    assert rc == 0 and _read(out / "skipped.csv") == []
    rows = {r["sop_uid"]: r for r in _read(out / "predictions.csv")}
    assert rows.keys() == ref.keys()
    for sop, r in rows.items():
        assert r["slice_idx"] == ref[sop]["slice_idx"]
        assert [r[k] for k in LABELS] == [ref[sop][k] for k in LABELS], f"{case_id} {sop}"


# ---------------------------------------------------------------- lossy syntaxes: an independent decoder or the bound
@pytest.mark.parametrize("flag,ts", [("+eb", U.JPEGBaseline8Bit), ("+ee", U.JPEGExtended12Bit)])
def test_lossy_jpeg_matches_dcmtk_decode(work, flag, ts):
    """dcmcjpeg's lossy JPEG rescales the int16 CT to 8 / 12 bits (new slope / intercept); ppihd's HU equal dcmtk's
    own decode (``dcmdjpeg``) up to IDCT rounding, which differs between JPEG libraries: measured on these slices,
    about 5 % of the pixels differ by one stored unit and one pixel in 262144 by two."""
    folder = work["encode"](f"dcmtk-lossy{flag}", _dcmtk("dcmcjpeg", flag), ts)
    if ts == U.JPEGExtended12Bit and importlib.util.find_spec("libjpeg") is None:
        # GDCM and Pillow decode 8-bit JPEG only; 12-bit needs the GPL-3.0 pylibjpeg-libjpeg, not a default
        # dependency: a clear error naming it
        with pytest.raises(D.DicomError, match=r"12-bit lossy JPEG needs pylibjpeg-libjpeg .*pip install "
                                               r"pylibjpeg-libjpeg"):
            slice_hu(str(folder / SLICES[0]))
        return
    for n in SLICES:
        c = str(folder / n)
        d = str(folder / (n + ".dcmdjpeg"))
        subprocess.run([require_tool("dcmdjpeg", package="dcmtk"), c, d], check=True, capture_output=True)
        assert pydicom.dcmread(d, stop_before_pixels=True).file_meta.TransferSyntaxUID == U.ExplicitVRLittleEndian
        slope = float(pydicom.dcmread(c, stop_before_pixels=True).RescaleSlope)
        hu = slice_hu(c)
        units = np.abs(hu - _independent_hu(d)) / slope
        assert units.max() <= 2 + 1e-3 and (units > 1 + 1e-3).mean() < 1e-4 and (units > 1e-3).mean() < 0.1
        # and still the same head: lossy, but close to the original HU on average
        assert np.abs(hu - slice_hu(str(work["orig"] / n))).mean() < 2 * slope


def test_jpegls_near_lossless_within_near(work):
    """JPEG-LS near-lossless guarantees |decoded - original| <= NEAR for every pixel (here NEAR = 2)."""
    enc = _pydicom(U.JPEGLSNearLossless, encoding_plugin="pyjpegls", jls_error=2)
    folder = work["encode"]("pyjpegls-jls-near2", enc, U.JPEGLSNearLossless)
    for n in SLICES:
        diff = np.abs(slice_hu(str(folder / n)) - slice_hu(str(work["orig"] / n)))
        assert diff.max() <= 2 and diff.max() > 0


def test_j2k_lossy_matches_pillow(work):
    """Lossy JPEG 2000 (.91): ppihd's HU (pylibjpeg-openjpeg, pydicom's first choice) equal Pillow's OpenJPEG."""
    folder = work["encode"]("pydicom-j2k-lossy", _pydicom(U.JPEG2000, j2k_cr=[20]), U.JPEG2000)
    for n in SLICES:
        c = str(folder / n)
        pil = pixel_array(c, decoding_plugin="pillow").astype(np.float32)   # slope 1, intercept 0 (fixture)
        np.testing.assert_array_equal(slice_hu(c), pil)
        assert np.abs(slice_hu(c) - slice_hu(str(work["orig"] / n))).mean() < 10


# ---------------------------------------------------------------- pydicom's own compressed test files
@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_pydicom_compressed_twins(name):
    """pydicom ships no compressed CT with an uncompressed twin (its compressed CTs, ``J2K_pixelrep_mismatch.dcm``
    and ``693_J2KI.dcm``, have none), so its MR pairs are compared: raw stored values via ``read_raw_pixels``
    against ``MR_small.dcm`` (Explicit VR LE)."""
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    ds = pydicom.dcmread(get_testdata_file(name))
    assert ds.file_meta.TransferSyntaxUID != U.ExplicitVRLittleEndian
    np.testing.assert_array_equal(D.read_raw_pixels(ds, name), ref)


def test_pydicom_compressed_ct_files_decode():
    """The two compressed CTs pydicom ships (no twins): plausible HU, and both default-install J2K plug-ins agree."""
    for name in ("J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm"):
        p = get_testdata_file(name)
        hu = slice_hu(p)
        assert hu.shape == (512, 512) and hu.min() < -900 and hu.max() > 500
        np.testing.assert_array_equal(pixel_array(p, decoding_plugin="pylibjpeg"),
                                      pixel_array(p, decoding_plugin="pillow"))


def test_missing_decoder_hint_points_at_requirements(monkeypatch):
    """If a decoder plug-in is gone anyway (a broken install), the reason names the package and ppihd's
    requirements file."""
    for ts, pkg in [(U.JPEGLossless, "python-gdcm"), (U.JPEGLSLossless, "python-gdcm"),
                    (U.JPEG2000Lossless, "pylibjpeg-openjpeg"), (U.HTJ2KLossless, "pylibjpeg-openjpeg"),
                    (U.RLELossless, "pylibjpeg-rle")]:
        dec = get_decoder(ts)
        monkeypatch.setattr(dec, "_available", {})
        with pytest.raises(D.DicomError) as e:
            D.check_decoder("x.dcm", ts)
        assert e.value.reason.startswith(f"{ts.name} needs a decoder plug-in")
        assert pkg in e.value.reason and "pip install -r requirements.txt" in e.value.reason
