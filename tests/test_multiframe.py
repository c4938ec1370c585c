"""Multi-frame CT (Enhanced / Legacy Converted Enhanced CT) is read as a series of slices, one per frame.

A Legacy Converted Enhanced CT is built with highdicom from 8 slices of the real GE fixture; tools/infer.py with
the tiny random model reads the single-frame series and the multi-frame file (in separate runs) and must give
identical per-slice probabilities (matched by position), the same study answer, the role ``axial``, a 1-based
``frame`` column, the file in predictions.csv only, and an SR that references the key slices' frames. A
compressed (RLE) multi-frame decodes to the same HU per frame."""
import csv
import json
import os
import re

import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless, generate_uid

from ppihd import LABELS
from ppihd.data.dicom import DicomError, headers_from_dataset, read_headers
from ppihd.data.series import read_hu

from config_utils import schema_section
from infer_utils import infer_args, load_tool, save_tiny_checkpoint
from study_utils import PATIENT, copy_series, fixture_files

N = 8

DATA = schema_section("Data")


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _legacy(files, path):
    import highdicom as hd

    dss = [pydicom.dcmread(f) for f in files]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(dss, series_instance_uid=generate_uid(), series_number=7,
                                                  sop_instance_uid=generate_uid(), instance_number=1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mf.save_as(path)
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory, fixture_series_dir):
    root = tmp_path_factory.mktemp("mf")
    study = generate_uid(prefix=None)
    sf = copy_series(fixture_files(fixture_series_dir)[10:10 + N], str(root / "sf" / "CASE-MF" / "plain"), study,
                     f"{study}.2", 2, attrs=dict(PATIENT, AccessionNumber="ACC-MF"))
    mf = _legacy(sf[::-1], str(root / "mf" / "CASE-MF" / "enhanced.dcm"))
    ckpt = save_tiny_checkpoint(str(root / "m.pdparams"))
    infer = load_tool("tools/infer.py")
    rc_sf = infer.main(infer_args(ckpt) + ["--input", str(root / "sf"), "--output", str(root / "o_sf")])
    # the folder and the file in it: each frame is still predicted once
    rc_mf = infer.main(infer_args(ckpt) + ["--input", str(root / "mf"), mf, "--output", str(root / "o_mf")])
    return root, sf, mf, rc_sf, rc_mf


def _sources(mf, sf):
    """The single-frame file each frame of ``mf`` was converted from (ConversionSourceAttributesSequence)."""
    by_sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in sf}
    ds = pydicom.dcmread(mf, stop_before_pixels=True)
    return [by_sop[g.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID]
            for g in ds.PerFrameFunctionalGroupsSequence]


def test_headers_one_per_frame(studies):
    _, sf, mf, *_ = studies
    hs = read_headers(mf)
    assert [h.frame for h in hs] == list(range(N)) and {h.path for h in hs} == {mf}
    assert len({h.sop_uid for h in hs}) == 1 and hs[0].sop_class == "1.2.840.10008.5.1.4.1.1.2.2"
    singles = [read_headers(f)[0] for f in _sources(mf, sf)]
    for h, s in zip(hs, singles):
        assert s.frame is None
        assert h.position == s.position and h.orientation == s.orientation
        assert (h.slope, h.intercept, h.slice_thickness, h.pixel_spacing, h.kernel) == \
            (s.slope, s.intercept, s.slice_thickness, s.pixel_spacing, s.kernel)
        assert np.array_equal(read_hu(h, DATA), read_hu(s, DATA))


def test_per_frame_groups_before_shared(studies):
    mf = studies[2]
    ds = pydicom.dcmread(mf, stop_before_pixels=True)
    item = pydicom.Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = 1, -1000, "HU"
    ds.PerFrameFunctionalGroupsSequence[2].PixelValueTransformationSequence = Sequence([item])
    hs = headers_from_dataset(ds, mf)
    assert hs[2].intercept == -1000 and {h.intercept for i, h in enumerate(hs) if i != 2} == {0.0}
    ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient = [1, 2, 3]
    assert headers_from_dataset(ds, mf)[2].position == (1.0, 2.0, 3.0)
    # a multi-frame image without functional groups is still refused, with its reason
    plain = pydicom.dcmread(studies[1][0], stop_before_pixels=True)
    plain.NumberOfFrames = 2
    with pytest.raises(DicomError, match=r"^x\.dcm: multi-frame image \(2 frames\) without functional groups \(not an "
                                        r"Enhanced CT\) is not supported"):
        headers_from_dataset(plain, "x.dcm")


def test_compressed_multiframe_same_hu(studies, tmp_path):
    _, _, mf, *_ = studies
    ds = pydicom.dcmread(mf)
    ds.compress(RLELossless)
    rle = str(tmp_path / "rle.dcm")
    ds.save_as(rle)
    a, b = read_headers(mf), read_headers(rle)
    assert b[0].transfer_syntax == RLELossless and b[0].pixel_offset is None
    for ha, hb in zip(a, b):
        assert np.array_equal(read_hu(ha, DATA), read_hu(hb, DATA)), hb.frame


def test_infer_multiframe_equals_single_frame(studies):
    root, sf, mf, rc_sf, rc_mf = studies
    assert rc_sf == 0 and rc_mf == 0
    p_sf, p_mf = _csv(root / "o_sf" / "predictions.csv"), _csv(root / "o_mf" / "predictions.csv")
    assert len(p_sf) == len(p_mf) == N
    assert list(p_mf[0])[-2:] == ["path", "frame"]
    assert {r["frame"] for r in p_sf} == {""}
    assert {r["path"] for r in p_mf} == {mf}
    assert sorted(int(r["frame"]) for r in p_mf) == list(range(1, N + 1))
    assert len({r["sop_uid"] for r in p_mf}) == 1
    by_pos = {r["position"]: r for r in p_sf}
    assert set(by_pos) == {r["position"] for r in p_mf}
    src = _sources(mf, sf)
    for r in p_mf:
        s = by_pos[r["position"]]
        assert s["path"] == src[int(r["frame"]) - 1]
        assert s["slice_idx"] == r["slice_idx"]
        assert [s[lab] for lab in LABELS] == [r[lab] for lab in LABELS], r["frame"]
    sub = _csv(root / "o_mf" / "submission.csv")
    assert len(sub) == 6 * N and len({r["ID"] for r in sub}) == 6 * N
    # the file is in predictions.csv only
    assert _csv(root / "o_mf" / "skipped.csv") == []
    series = _csv(root / "o_mf" / "series.csv")
    assert len(series) == 1 and series[0]["role"] == "axial" and series[0]["primary"] == "1"
    assert series[0]["num_files"] == "1" and series[0]["num_slices"] == str(N)
    a, b = _csv(root / "o_sf" / "studies.csv"), _csv(root / "o_mf" / "studies.csv")
    assert len(a) == len(b) == 1
    for k in (*LABELS, "flagged", "study_uid", "study_folder", "num_slices"):
        assert a[0][k] == b[0][k], k


def test_sr_references_key_frames(studies):
    root, *_ = studies
    out = root / "o_mf"
    doc = json.load(open(next((out / "studies").glob("*.json"))))
    frames = {lab: doc["key_slices"][lab]["frame"] for lab in LABELS}
    assert all(isinstance(f, int) and 1 <= f <= N for f in frames.values())
    srs = list((out / "sr").glob("*.dcm"))
    assert len(srs) == 1
    import highdicom as hd

    sr = hd.sr.srread(srs[0])          # highdicom reads it back as an SR
    refs = []

    def walk(items):
        for it in items:
            for ref in it.get("ReferencedSOPSequence", []):
                refs.append(ref)
            walk(it.get("ContentSequence", []))

    walk(sr.ContentSequence)
    with_frame = [r for r in refs if "ReferencedFrameNumber" in r]
    # per class: the measurement's and the group's source image, each with the key slice's frame
    assert len(with_frame) == 2 * len(LABELS)
    assert sorted(int(r.ReferencedFrameNumber) for r in with_frame) == sorted(2 * list(frames.values()))
    # the image library lists the multi-frame instance once, as a whole
    assert len(refs) - len(with_frame) == 1
    assert {r.ReferencedSOPInstanceUID for r in refs} == {doc["key_slices"]["any"]["sop_uid"]}


def test_predictions_readers_keep_frames_apart(studies):
    from ppihd.postprocess.ensemble import read_probabilities
    from ppihd.postprocess.pseudo_label import PseudoLabelError, read_for_pseudo_labels
    from ppihd.postprocess.tables import read_predictions

    out = studies[0] / "o_mf"
    sub = {r["ID"]: float(r["Label"]) for r in _csv(out / "submission.csv")}
    probs = read_probabilities(str(out / "predictions.csv"))
    assert dict(zip(probs.index, probs.to_numpy())) == pytest.approx(sub)
    assert sorted(read_predictions(str(out / "predictions.csv"))["frame"].astype(int)) == list(range(1, N + 1))
    with pytest.raises(PseudoLabelError, match=rf"^{re.escape(str(out / 'predictions.csv'))}: slices that are frames of "
                                              r"multi-frame files \(column frame\)"):
        read_for_pseudo_labels(str(out / "predictions.csv"))


def test_unreadable_frame_skips_the_file(studies):
    """A frame that cannot be used (here: constant, no anatomy) puts the whole file in skipped.csv only."""
    root, sf, mf, *_ = studies
    ds = pydicom.dcmread(mf)
    arr = ds.pixel_array.copy()
    arr[3] = arr.min()
    ds.PixelData = arr.tobytes()
    bad = str(root / "bad" / "enhanced.dcm")
    os.makedirs(os.path.dirname(bad))
    ds.save_as(bad)
    ckpt = save_tiny_checkpoint(str(root / "m2.pdparams"))
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", str(root / "sf"), bad,
                                                              "--output", str(root / "o_bad")])
    assert rc == 3
    pred, skipped = _csv(root / "o_bad" / "predictions.csv"), _csv(root / "o_bad" / "skipped.csv")
    assert sorted(r["path"] for r in pred) == sorted(sf)
    assert len(skipped) == 1 and skipped[0]["path"] == bad and skipped[0]["reason"].startswith("frame 4: constant image")
