"""Studies: series roles, the primary series, slabs and the study answer — hand-worked cases, then a real
multi-series study built from the GE fixture through tools/infer.py."""
import csv
import json
import math
import os

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ppihd import LABELS
from ppihd.data.dicom import SliceHeader
from ppihd.data.series import group_series, load_series, load_slabs, scan
from ppihd.data.study import (axis_angle_deg, classify_series, is_sharp_kernel, plan_studies, slab_groups,
                              study_folder)
from ppihd.engine.studies import SeriesResult, key_slice, study_answer
from ppihd.utils.schema import DEFAULTS

from infer_utils import infer_args, load_tool, save_tiny_checkpoint, write_ct
from study_utils import copy_series

INFER = DEFAULTS["Infer"]


def _h(i, key=("p", "st", "se"), z=None, ori=(1, 0, 0, 0, 1, 0), image_type=(), sop_class="1.2.840.10008.5.1.4.1.1.2",
       kernel="", number=None, thick=None):
    return SliceHeader(path=f"/d/{key[2]}/{i}.dcm", sop_uid=f"{key[2]}.{i}", patient_id=key[0], study_uid=key[1],
                       series_uid=key[2], modality="CT", position=(0.0, 0.0, float(5 * i if z is None else z[i])),
                       orientation=tuple(map(float, ori)), instance_number=i + 1, rows=8, cols=8,
                       image_type=tuple(image_type), sop_class=sop_class, kernel=kernel, series_number=number,
                       slice_thickness=thick)


def _series(n, **kw):
    return group_series([_h(i, **kw) for i in range(n)])[0]


# ------------------------------------------------------------------------------------------------ roles
def test_roles_hand_worked():
    assert classify_series(_series(20))[0] == "axial"
    assert classify_series(_series(2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))) == \
        ("localizer", "ImageType LOCALIZER (ORIGINAL\\PRIMARY\\LOCALIZER)")
    assert classify_series(_series(3, image_type=("ORIGINAL", "PRIMARY", "TOPOGRAM")))[0] == "localizer"
    role, why = classify_series(_series(1, sop_class="1.2.840.10008.5.1.4.1.1.7"))
    assert role == "derived" and "Secondary Capture" in why
    assert classify_series(_series(30, image_type=("DERIVED", "SECONDARY", "MIP")))[0] == "derived"
    # coronal: row (1,0,0), column (0,0,-1) -> normal (0,1,0): 90 degrees from z
    role, why = classify_series(_series(30, ori=(1, 0, 0, 0, 0, -1)))
    assert role == "non_axial" and why.startswith("coronal slices: normal 90.0°")
    assert classify_series(_series(30, ori=(0, 1, 0, 0, 0, -1)))[1].startswith("sagittal")
    # gantry tilt 30 degrees about x: column (0, cos30, -sin30) -> normal 30 degrees from z: still axial
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    assert classify_series(_series(30, ori=(1, 0, 0, 0, c, -s))) == ("axial", "30 axial slices, normal 30.0° from z")
    c, s = math.cos(math.radians(45)), math.sin(math.radians(45))
    assert classify_series(_series(30, ori=(1, 0, 0, 0, c, -s)))[0] == "non_axial"      # 45 > 40
    assert classify_series(_series(30, ori=(1, 0, 0, 0, c, -s)), axial_max_angle_deg=50)[0] == "axial"
    assert classify_series(_series(2)) == ("too_few_slices", "2 slices (< Infer.min_slices 3)")
    assert classify_series(_series(2), min_slices=2)[0] == "axial"
    # axial and sagittal slices in one series (a scout pair without LOCALIZER in ImageType)
    hs = [_h(0), _h(1), _h(2, ori=(0, 1, 0, 0, 0, -1))]
    assert classify_series(group_series(hs)[0]) == \
        ("non_axial", "axial and non-axial slices in one series (normals 0.0° to 90.0° from z)")
    # two gantry tilts in one acquisition (0 and 30 degrees): still axial
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    hs = [_h(i) for i in range(3)] + [_h(i, ori=(1, 0, 0, 0, c, -s)) for i in range(3, 6)]
    assert classify_series(group_series(hs)[0]) == ("axial", "6 axial slices, normals 0.0° to 30.0° from z")


def test_axis_angle_and_kernels():
    assert axis_angle_deg((1, 0, 0, 0, 1, 0)) == 0.0
    # the GE fixture: IOP column (0, 0.948, -0.317) -> tilt asin(0.317) = 18.5 degrees
    assert axis_angle_deg((1, 0, 0, 0, 0.948323, -0.317305)) == pytest.approx(18.50, abs=0.01)
    for k in ("BONE", "BONEPLUS", "H70h", "Hr64", "J70h", "LUNG"):
        assert is_sharp_kernel(k), k
    for k in ("STD+", "SOFT", "H30s", "Hr40", "J40s", "FC26", ""):
        assert not is_sharp_kernel(k), k
    assert is_sharp_kernel("STANDARD", "Head 2.5mm Bone")


# ------------------------------------------------------------------------------------------------ slabs
def test_slab_groups_hand_worked():
    # 0.625 mm, 5 mm slabs: round(8) = 8 slices per slab; 20 slices -> 8 + 8 + 4
    assert slab_groups(20, 0.625, 5.0) == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    assert slab_groups(5, 2.5, 5.0) == [[0, 1], [2, 3], [4]]
    assert slab_groups(6, 3.0, 5.0) == [[0, 1], [2, 3], [4, 5]]        # round(1.67) = 2
    assert slab_groups(6, 3.4, 5.0) is None                             # round(1.47) = 1: as is
    assert slab_groups(6, 5.0, 5.0) is None and slab_groups(6, 0.625, None) is None
    assert slab_groups(6, float("nan"), 5.0) is None


def test_slabs_average_hu(tmp_path):
    """Two slices of uniform HU 0 and 40 averaged are the slice of uniform HU 20, through the same
    windows and crop (values worked out by the model-independent path load_series)."""
    def series_of(hus, sid):
        paths = []
        for k, hu in enumerate(hus):
            p = write_ct(str(tmp_path / sid / f"{k}.dcm"), "P", "1.2", sid, f"{sid}.{k}", 5.0 * k, size=(32, 32))
            ds = pydicom.dcmread(p)
            ds.PixelData = np.full((32, 32), hu + 1024, np.int16).tobytes()   # stored = HU + 1024
            ds.save_as(p)
            paths.append(p)
        hs, _ = scan(str(tmp_path / sid), progress=False)
        return group_series(hs)[0]

    data = dict(DEFAULTS["Data"], image_size=32, remove_black_edges=False)
    thin = series_of([0, 40, 100], "1.2.1")
    mid = series_of([20, 100], "1.2.2")
    arr, skipped, members = load_slabs(thin, [[0, 1], [2]], data)
    want, _ = load_series(mid, data)
    assert skipped == [] and members == [[0, 1], [2]]
    np.testing.assert_array_equal(arr, want)
    # brain window (40, 80): HU 20 -> (20 - 0) / 80 * 255 = 63.75
    assert abs(int(arr[0, 0, 0, 0]) - 63.75) <= 1


# ------------------------------------------------------------------------------------------- planning
def test_primary_choice_and_modes():
    st = ("p", "S1")
    hs = ([_h(i, key=st + ("bone",), kernel="BONE", number=3) for i in range(30)] +
          [_h(i, key=st + ("thin",), z=[0.625 * k for k in range(240)], number=4) for i in range(240)] +
          [_h(i, key=st + ("thick",), number=2) for i in range(30)] +
          [_h(i, key=st + ("scout",), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")) for i in range(2)])
    sr = ("/d/sr.dcm", "missing Rows/Columns (not an image)",
          {"patient_id": "p", "study_uid": "S1", "series_uid": "dose", "modality": "SR",
           "sop_class": "1.2.840.10008.5.1.4.1.1.88.67", "series_number": "999", "series_description": "Dose"})
    (study,) = plan_studies(group_series(hs), [sr], INFER)
    roles = {m.key[2]: m.role for m in study.series}
    assert roles == {"bone": "axial", "thin": "axial", "thick": "axial", "scout": "localizer", "dose": "non_image"}
    # soft kernel before bone; 5 mm (gap 0) before 0.625 mm (gap 4.375)
    assert [m.key[2] for m in study.ranked] == ["thick", "thin", "bone"] and study.primary.key[2] == "thick"
    dose = next(m for m in study.series if m.key[2] == "dose")
    assert dose.reason == "not an image (Modality SR, X-Ray Radiation Dose SR Storage)" and dose.series_number == 999
    predicted = {m.key[2]: m.predict for m in study.series}
    assert predicted == {"bone": True, "thin": True, "thick": True, "scout": False, "dose": False}
    thin = next(m for m in study.series if m.key[2] == "thin")
    assert thin.slabs == [list(range(b, b + 8)) for b in range(0, 240, 8)]
    (study,) = plan_studies(group_series(hs), [sr], dict(INFER, predict_series="primary"))
    assert [m.key[2] for m in study.series if m.predict] == ["thick"]
    # no soft-tissue series: the bone kernel is primary
    (study,) = plan_studies(group_series([h for h in hs if h.series_uid == "bone"]), [], INFER)
    assert study.primary.key[2] == "bone" and "sharp kernel" in study.primary_reason
    # a post-contrast series (ContrastBolusAgent) loses to the plain one, even with the better spacing
    post = [_h(i, key=st + ("post",), number=6) for i in range(30)]
    for h in post:
        h.contrast_agent = "OMNIPAQUE 350"
    plain_thin = [h for h in hs if h.series_uid == "thin"]
    (study,) = plan_studies(group_series(post + plain_thin), [], INFER)
    assert [m.key[2] for m in study.ranked] == ["thin", "post"]
    (study,) = plan_studies(group_series(post), [], INFER)
    assert "with contrast" in study.primary_reason
    with pytest.raises(ValueError, match=r"^Infer\.predict_series must be 'usable' or 'primary', got 'all'$"):
        plan_studies(group_series(hs), [], dict(INFER, predict_series="all"))


def test_study_folder():
    assert study_folder(["/data/cq500/CT-1/a/s1/1.dcm", "/data/cq500/CT-1/a/s2/1.dcm"], ["/data/cq500"]) == "CT-1"
    assert study_folder(["/data/cq500/CT-1/s1/1.dcm", "/data/cq500/CT-1/s2/1.dcm"], ["/data/cq500/CT-1"]) == "CT-1"
    assert study_folder(["/x/flat/ID_1.dcm", "/x/flat/ID_2.dcm"], ["/x/flat"]) == "flat"


# ------------------------------------------------------------------------------------------ answering
def test_key_slice_middle_of_a_tie_run():
    assert key_slice(np.array([0.1, 0.9, 0.9, 0.9, 0.2])) == 2
    assert key_slice(np.array([0.1, 0.9, 0.9, 0.9, 0.9, 0.2])) == 2     # run 1..4: lower middle
    assert key_slice(np.array([0.9, 0.1, 0.9])) == 0                    # the first run of the maximum
    assert key_slice(np.array([0.3])) == 0


def test_study_answer_hand_worked():
    st = ("p", "S1")
    hs = [_h(i, key=st + ("a",), number=2) for i in range(4)] + \
         [_h(i, key=st + ("b",), kernel="BONE", number=3) for i in range(4)]
    (study,) = plan_studies(group_series(hs), [], INFER)
    pa = np.zeros((4, 6))
    pa[1, 4], pa[1, 5], pa[2, 5] = 0.7, 0.8, 0.6        # subdural on slice 1, any on 1 and 2
    pb = np.zeros((4, 6))
    pb[3, 1], pb[3, 5] = 0.9, 0.95                      # the bone series sees intraparenchymal on slice 3
    res = {m.series_id: SeriesResult([f"{m.key[2]}.{i}" for i in range(4)], list(range(4)), p)
           for m, p in zip(study.ranked, (pa, pb))}
    ans = study_answer(study, res, 0.5, "primary_max")
    assert ans["probabilities"]["any"] == 0.8 and ans["probabilities"]["intraparenchymal"] == 0.0
    assert ans["flagged"] == ["subdural", "any"]
    assert ans["key_slices"]["subdural"]["sop_uid"] == "a.1" and ans["key_slices"]["any"]["slice_idx"] == 1
    assert any("intraparenchymal 0.90 > 0.5" in w for w in ans["warnings"])
    ans = study_answer(study, res, 0.5, "all_max")
    assert ans["probabilities"]["any"] == 0.95 and ans["flagged"] == ["intraparenchymal", "subdural", "any"]
    assert ans["key_slices"]["intraparenchymal"]["sop_uid"] == "b.3"
    assert ans["key_slices"]["subdural"]["series_id"] == study.ranked[0].series_id
    # the primary failed: answered from the next usable series, with a warning
    ans = study_answer(study, {study.ranked[1].series_id: res[study.ranked[1].series_id]}, 0.5)
    assert ans["answer_series"] == study.ranked[1].series_id and "could not be predicted" in ans["warnings"][0]
    assert study_answer(study, {}, 0.5)["probabilities"]["any"] is None


# ------------------------------------------------------------------- a real multi-series study end to end
def _copy_series(src_files, folder, study_uid, series_uid, number, edit=None, positions=None):
    """study_utils.copy_series, with ``positions``: the ImagePositionPatient of each output file."""
    def place(ds, k):
        if positions is not None:
            ds.ImagePositionPatient = [float(v) for v in positions[k]]
        if edit:
            edit(ds, k)
    return copy_series(src_files, folder, study_uid, series_uid, number, edit=place)


@pytest.fixture(scope="module")
def real_study(tmp_path_factory, fixture_series_dir):
    root = tmp_path_factory.mktemp("studies")
    src = sorted(os.path.join(fixture_series_dir, n) for n in os.listdir(fixture_series_dir) if n.endswith(".dcm"))
    ds0 = pydicom.dcmread(src[0], stop_before_pixels=True)
    o = np.asarray(ds0.ImageOrientationPatient, float)
    normal, p0 = np.cross(o[:3], o[3:]), np.asarray(ds0.ImagePositionPatient, float)
    rng = np.random.default_rng(7)   # study UIDs short enough for ".N" series suffixes (a UID has <= 64 chars)
    study, s2 = (f"1.2.826.0.1.3680043.8.498.{rng.integers(10 ** 15, 10 ** 16)}" for _ in range(2))
    top = root / "in" / "CASE-1"
    files = {}
    files["plain"] = _copy_series(src, str(top / "plain"), study, study + ".1", 2)
    files["bone"] = _copy_series(src, str(top / "bone"), study, study + ".2", 3,
                                 edit=lambda ds, k: setattr(ds, "ConvolutionKernel", "BONE"))
    # thin: fixture slices 10-13, each written 8 times 0.625 mm apart -> 32 slices, 4 slabs of 8 identical slices
    four = src[10:14]
    files["thin"] = _copy_series([f for f in four for _ in range(8)], str(top / "thin"), study, study + ".3", 4,
                                 positions=[p0 + normal * 0.625 * j for j in range(32)])

    def coronal(ds, k):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    files["coronal"] = _copy_series(src[:6], str(top / "cor"), study, study + ".4", 5, edit=coronal)

    def scout(ds, k):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    files["scout"] = _copy_series(src[:2], str(top / "scout"), study, study + ".5", 1, edit=scout)

    def screen(ds, k):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    files["screen"] = _copy_series(src[:1], str(top / "dose_screen"), study, study + ".6", 997, edit=screen)
    sr = pydicom.Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.Modality, sr.PatientID, sr.StudyInstanceUID, sr.SeriesInstanceUID = "SR", ds0.PatientID, study, study + ".7"
    sr.SeriesNumber = 999
    os.makedirs(top / "dose_sr")
    sr.save_as(str(top / "dose_sr" / "sr.dcm"), enforce_file_format=True)
    files["sr"] = [str(top / "dose_sr" / "sr.dcm")]
    # a second study: the four thick slices the thin series repeats, 5 mm apart
    files["thick4"] = _copy_series(four, str(root / "in" / "CASE-2"), s2, s2 + ".1", 2,
                                   positions=[p0 + normal * 5.0 * j for j in range(4)])
    ckpt = save_tiny_checkpoint(str(root / "m.pdparams"))
    out = root / "out"
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", str(root / "in"), "--output", str(out),
                                                              "-o", "Infer.save_plots=False"])
    return rc, out, files, study, s2


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_real_study_roles_and_files(real_study):
    rc, out, files, study, s2 = real_study
    assert rc == 3  # the scout, screen and SR are skipped with their reasons
    series = {r["series_uid"]: r for r in _csv(out / "series.csv")}
    roles = {uid[len(study) + 1:]: r["role"] for uid, r in series.items() if uid.startswith(study + ".")}
    assert roles == {"1": "axial", "2": "axial", "3": "axial", "4": "non_axial", "5": "localizer", "6": "derived",
                     "7": "non_image"}
    assert {uid for uid, r in series.items() if r["primary"] == "1"} == {study + ".1", s2 + ".1"}
    pred = {r["path"] for r in _csv(out / "predictions.csv")}
    skipped = {r["path"]: r["reason"] for r in _csv(out / "skipped.csv")}
    for k in ("plain", "bone", "thin", "thick4"):
        assert set(files[k]) <= pred, k
    for k, why in (("coronal", "non_axial: coronal"), ("scout", "localizer"), ("screen", "Secondary Capture"),
                   ("sr", "non_image: not an image (Modality SR, X-Ray Radiation Dose SR Storage)")):
        for f in files[k]:
            assert why in skipped[f], (k, skipped[f])
    every = {os.path.join(d, n) for d, _, ns in os.walk(out.parent / "in") for n in ns}
    assert pred | set(skipped) == every and not pred & set(skipped)


def test_real_study_answer(real_study):
    rc, out, files, study, s2 = real_study
    rows = {r["study_uid"]: r for r in _csv(out / "studies.csv")}
    assert set(rows) == {study, s2}
    r = rows[study]
    assert r["study_folder"] == "CASE-1" and r["primary_series_uid"] == study + ".1" and r["num_series"] == "7"
    assert r["num_predicted_series"] == "3" and r["num_slices"] == "28"
    pred = _csv(out / "predictions.csv")
    plain = [p for p in pred if p["series_uid"] == study + ".1"]
    for lab in LABELS:   # primary_max: the maximum over the primary series' slices
        assert float(r[lab]) == pytest.approx(max(float(p[lab]) for p in plain), abs=1e-6)
    flagged = [lab for lab in LABELS if float(r[lab]) > 0.5]
    assert r["flagged"] == ";".join(flagged)
    doc = json.load(open(out / "studies" / f"{r['study_id']}.json"))
    for lab in LABELS:
        k = doc["key_slices"][lab]
        best = max(plain, key=lambda p: float(p[lab]))
        assert k["series_id"] == r["primary_series_id"] and float(best[lab]) == pytest.approx(k["probability"], abs=1e-6)
    assert rows[s2]["study_folder"] == "CASE-2"


def test_thin_series_slabs_equal_the_thick_slices(real_study):
    """The thin series repeats each of four slices 8 times at 0.625 mm: its 5 mm slabs are exactly those four
    slices, so every thin slice has the probability of its thick twin (a separate series and study)."""
    _, out, files, study, s2 = real_study
    pred = _csv(out / "predictions.csv")
    thin = [p for p in pred if p["series_uid"] == study + ".3"]
    thick = [p for p in pred if p["series_uid"] == s2 + ".1"]
    assert len(thin) == 32 and len(thick) == 4
    for j, p in enumerate(thin):
        for lab in LABELS:
            assert float(p[lab]) == float(thick[j // 8][lab]), (j, lab)
    sj = json.load(open(out / "series" / f"{thin[0]['series_id']}.json"))
    assert sj["slabs"] == [[0, 7], [8, 15], [16, 23], [24, 31]] and sj["role"] == "axial"
    srow = next(r for r in _csv(out / "series.csv") if r["series_uid"] == study + ".3")
    assert srow["slab_slices"] == "8" and float(srow["spacing_mm"]) == pytest.approx(0.625, abs=1e-3)


def test_input_errors_are_logged_as_errors(tmp_path, caplog):
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    missing = str(tmp_path / "nowhere")
    with caplog.at_level("INFO", logger="ppihd"):
        rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", str(tmp_path / "in"), missing,
                                                                  "--output", str(tmp_path / "o")])
    assert rc == 4
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(missing in m and "no such file or folder" in m for m in errors), errors
    assert any(str(tmp_path / "in") in m and "no readable DICOM CT image" in m for m in errors), errors
    assert _csv(tmp_path / "o" / "studies.csv") == []


def test_bad_study_setting_is_a_clear_error_before_any_output(tmp_path, ppihd_log):
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    (tmp_path / "in").mkdir()
    for key, bad, allowed in (("predict_series", "all", "usable | primary"),
                              ("study_aggregation", "mean", "primary_max | all_max")):
        out = tmp_path / f"out_{key}"
        rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", str(tmp_path / "in"), "--output", str(out),
                                                                  "-o", f"Infer.{key}={bad}"])
        assert rc == 2
        assert any(f"Infer.{key} must be one of {allowed}, got '{bad}'" in r.getMessage() for r in ppihd_log.records)
        assert not out.exists()
