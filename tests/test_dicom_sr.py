"""DICOM SR per study (ppihd.engine.dicom_sr) on real studies built from the GE fixture, through tools/infer.py:
every value and UID read back with highdicom and pydicom is checked against predictions.csv and the input files
(computed here, not taken from the SR writer), and dciodvfy (dicom3tools) reports no error.

dciodvfy prints, for each SR (all warnings, no error):
  ``Warning - Unrecognized defined term <99PPIHD> for value 1 of attribute <Coding Scheme Designator>`` (18×: the
  local coding scheme of the six classes and their probabilities — DICOM reserves ``99*`` for local schemes, which
  dciodvfy does not know). With the fixture's own patient/study attributes (not filled in as here) it also warns
  that Study Date / Time / ID are empty (needed for a DICOMDIR) and that PatientName ``REMOVED`` is a dubious PN.
"""
import csv
import os
import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest

import ppihd
from ppihd import LABELS

from conftest import require_tool
from config_utils import schema_section
from infer_utils import infer_args, load_tool, save_tiny_checkpoint
from study_utils import PATIENT, build_studies

# independent of the writer: the codes the SR must carry
CODES = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH", "subarachnoid": "SAH",
         "subdural": "SDH", "any": "ICH"}
PRESENT, ABSENT = ("52101004", "SCT"), ("2667000", "SCT")
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def run(tmp_path_factory, fixture_series_dir):
    root = tmp_path_factory.mktemp("sr")
    cases = build_studies(str(root), fixture_series_dir)
    ckpt = save_tiny_checkpoint(str(root / "m.pdparams"))
    out = root / "out"
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", str(root / "in"), "--output", str(out),
                                                              "-o", "Infer.save_plots=False"])
    assert rc == 3  # the coronal series of CASE-D is skipped
    return out, cases


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _walk(items):
    for it in items:
        yield it
        yield from _walk(it.get("ContentSequence", []))


def _text_items(ds):
    return {(it.ConceptNameCodeSequence[0].CodeValue, it.TextValue) for it in _walk(ds.ContentSequence)
            if it.ValueType == "TEXT"}


def test_one_sr_per_study_with_an_answer(run):
    out, cases = run
    studies = {r["study_folder"]: r for r in _csv(out / "studies.csv")}
    assert set(os.listdir(out / "sr")) == {f"{studies[c]['study_id']}.dcm" for c in ("CASE-A", "CASE-B", "CASE-C")}
    assert studies["CASE-D"]["any"] == ""  # no usable series: no SR


def test_sr_values_and_uids(run):
    out, cases = run
    pred = _csv(out / "predictions.csv")
    for case in ("CASE-A", "CASE-B", "CASE-C"):
        st = cases[case]
        primary_uid, files = st["series"]["plain"]
        rows = [p for p in pred if p["series_uid"] == primary_uid]
        assert len(rows) == len(files)
        srow = next(r for r in _csv(out / "studies.csv") if r["study_folder"] == case)
        path = out / "sr" / f"{srow['study_id']}.dcm"
        # pydicom: the SOP, the new series, the copied patient / study attributes
        ds = pydicom.dcmread(path)
        src = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_3D_SR and ds.Modality == "SR"
        assert ds.StudyInstanceUID == st["study_uid"] == src.StudyInstanceUID
        assert ds.SeriesInstanceUID not in {u for u, _ in st["series"].values()}
        for k in (*PATIENT, "PatientID", "AccessionNumber"):
            assert str(ds.get(k)) == str(src.get(k)), k
        assert str(ds.PatientName) == "Doe^Jane" and ds.AccessionNumber == f"ACC-{case[-1]}"
        assert ds.Manufacturer == "ppihd" and ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
        # highdicom: one measurement group per class, in LABELS order
        sr = hd.sr.srread(str(path))
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) == len(LABELS)
        evidence = set()
        for lab, g in zip(LABELS, groups):
            p_max = max(float(r[lab]) for r in rows)        # primary_max, from predictions.csv
            key_rows = [r for r in rows if float(r[lab]) == p_max]
            assert g.finding_type.value == CODES[lab] and g.finding_type.scheme_designator == "99PPIHD"
            assert g.tracking_identifier == f"ppihd {lab}"
            (qe,) = g.get_qualitative_evaluations()
            assert qe.name.value == CODES[lab]
            assert (qe.value.value, qe.value.scheme_designator) == (PRESENT if p_max > 0.5 else ABSENT), lab
            (m,) = g.get_measurements()
            assert m.name.value == f"P-{CODES[lab]}" and m.unit.value == "1" and m.unit.scheme_designator == "UCUM"
            assert m.value == pytest.approx(p_max, abs=1e-6)
            (ref,) = m.referenced_images
            (grp_src,) = g.source_images
            for r in (ref, grp_src):
                assert r.referenced_sop_instance_uid in {k["sop_uid"] for k in key_rows}, lab
                assert r.referenced_sop_class_uid == CT_IMAGE
            key_file = next(k["path"] for k in key_rows if k["sop_uid"] == ref.referenced_sop_instance_uid)
            assert pydicom.dcmread(key_file, stop_before_pixels=True).SOPInstanceUID == ref.referenced_sop_instance_uid
            evidence.add(ref.referenced_sop_instance_uid)
        # the evidence list names exactly the key slices, in the primary series of this study
        ev = ds.CurrentRequestedProcedureEvidenceSequence
        assert [e.StudyInstanceUID for e in ev] == [st["study_uid"]]
        (ser,) = ev[0].ReferencedSeriesSequence
        assert ser.SeriesInstanceUID == primary_uid
        assert {i.ReferencedSOPInstanceUID for i in ser.ReferencedSOPSequence} == evidence
        # the algorithm: TID 4019 name and version
        texts = _text_items(ds)
        assert ("111001", "ppihd") in texts and ("111003", ppihd.__version__) in texts
        # what the model was trained on: the tiny test checkpoint has no training record beside it
        assert [t for t in texts if t[0] == "121106"] == [
            ("121106", "model of unknown provenance (no training record beside the weights)")]


def test_provenance_item_and_no_answer(run, tmp_path, caplog):
    from ppihd.engine.dicom_sr import write_study_srs

    out, cases = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "sr")
    prov = "model trained on synthetic phantoms — not for clinical use; <config sha 1234>"
    with caplog.at_level("INFO", logger="ppihd"):
        paths = write_study_srs(str(copy), schema_section("Infer", threshold=0.5), "9.9", provenance=prov)
    assert len(paths) == 3
    msgs = [r.getMessage() for r in caplog.records]
    assert any("CASE-D: no DICOM SR" in m and "no usable axial CT series" in m for m in msgs), msgs
    for p in paths:
        ds = pydicom.dcmread(p)
        texts = _text_items(ds)
        assert ("121106", prov) in texts and ("111003", "9.9") in texts


def test_invalid_uids_are_skipped_with_a_reason(run, tmp_path, caplog):
    """RSNA's ID_<hex> UIDs are not DICOM UIDs: the study gets no SR and a WARNING naming the attribute."""
    from ppihd.engine.dicom_sr import write_study_srs

    out, cases = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "sr")
    a = cases["CASE-A"]["series"]["plain"][1]
    for f in a:  # rewrite CASE-A's key slices' copies with an RSNA-style SOP UID
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = "ID_" + ds.SOPInstanceUID[-6:].replace(".", "a")
        ds.save_as(str(tmp_path / os.path.basename(f)))
    rows = _csv(copy / "predictions.csv")
    for r in rows:
        if r["path"] in a:
            r["path"] = str(tmp_path / os.path.basename(r["path"]))
    with open(copy / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with caplog.at_level("INFO", logger="ppihd"):
        paths = write_study_srs(str(copy), {}, ppihd.__version__)
    assert len(paths) == 2
    assert any(r.levelname == "WARNING" and "CASE-A: no DICOM SR: SOPInstanceUID" in r.getMessage()
               and "not a valid DICOM UID" in r.getMessage() for r in caplog.records)


def test_dciodvfy_reports_no_error(run, tmp_path):
    """The SRs of tools/infer.py and ones with a non-ASCII provenance text (UTF-8, ISO_IR 192)."""
    from ppihd.engine.dicom_sr import write_study_srs

    exe = require_tool("dciodvfy", package="dicom3tools")
    out, _ = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "sr")
    paths = [str(out / "sr" / n) for n in sorted(os.listdir(out / "sr"))]
    paths += write_study_srs(str(copy), {}, ppihd.__version__, provenance="synthetic phantoms — not for clinical use")
    assert len(paths) == 6
    for path in paths:
        r = subprocess.run([exe, path], capture_output=True, text=True, timeout=60)
        lines = (r.stdout + r.stderr).splitlines()
        assert not [ln for ln in lines if ln.startswith("Error")], "\n".join(lines)
        assert "Comprehensive3DSR" in lines
        warnings = {ln for ln in lines if ln.startswith("Warning")}
        assert warnings <= {"Warning - Unrecognized defined term <99PPIHD> for value 1 of attribute "
                            "<Coding Scheme Designator>"}, warnings


def test_switches_and_a_failing_sr_never_costs_the_csvs(run, tmp_path, monkeypatch, caplog):
    """Infer.dicom_sr / report_html off: neither is written; an SR writer that raises is an ERROR line, and
    the CSVs, the JSON and report.html are still written."""
    import ppihd.engine.dicom_sr as dicom_sr

    out, cases = run
    inp = os.path.dirname(cases["CASE-C"]["series"]["plain"][1][0])
    ckpt = save_tiny_checkpoint(str(tmp_path / "m.pdparams"))
    infer = load_tool("tools/infer.py")
    off = tmp_path / "off"
    assert infer.main(infer_args(ckpt) + ["--input", inp, "--output", str(off), "-o", "Infer.save_plots=False",
                                          "-o", "Infer.dicom_sr=False", "-o", "Infer.report_html=False"]) == 0
    assert (off / "studies.csv").is_file() and not (off / "sr").exists() and not (off / "report.html").exists()

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(dicom_sr, "write_study_srs", boom)
    bad = tmp_path / "bad"
    with caplog.at_level("INFO", logger="ppihd"):
        assert infer.main(infer_args(ckpt) + ["--input", inp, "--output", str(bad), "-o", "Infer.save_plots=False"]) == 0
    assert any(r.levelname == "ERROR" and "DICOM SR could not be written: disk full" in r.getMessage()
               for r in caplog.records)
    assert len(_csv(bad / "predictions.csv")) == 8 and len(_csv(bad / "studies.csv")) == 1
    assert (bad / "report.html").is_file() and not (bad / "sr").exists()
