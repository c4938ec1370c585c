"""Studies for the study-output tests (DICOM SR, report.html), written from the real GE fixture with short
valid UIDs (``2.25.<n>``) and filled patient / study attributes; nothing is downloaded."""
from __future__ import annotations

import os

import pydicom
from pydicom.uid import generate_uid

PATIENT = {"PatientName": "Doe^Jane", "PatientBirthDate": "19600101", "PatientSex": "F", "StudyDate": "20240105",
           "StudyTime": "101500", "StudyID": "77", "ReferringPhysicianName": "Ref^Doc"}
# a header an attacker controls: it must show as text in report.html, never as markup
EVIL = '<img src=x onerror="document.body.setAttribute(\'data-pwned\',\'1\')"><script>document.title="pwned"</script>'


def fixture_files(fixture_dir):
    return sorted(os.path.join(fixture_dir, n) for n in os.listdir(fixture_dir) if n.endswith(".dcm"))


def copy_series(src_files, folder, study_uid, series_uid, number, attrs=None, edit=None):
    """Write ``src_files`` as one series of ``study_uid`` (SOP UIDs ``<series_uid>.<k>``)."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for k, src in enumerate(src_files):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study_uid, series_uid, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{k + 1}"
        ds.InstanceNumber = k + 1
        for key, v in (attrs or {}).items():
            setattr(ds, key, v)
        if edit:
            edit(ds, k)
        path = os.path.join(folder, f"{k:04d}.dcm")
        ds.save_as(path)
        out.append(path)
    return out


def build_studies(root, fixture_dir):
    """Four studies under ``root/in``: CASE-A (all 28 slices + a bone series), CASE-B (slices 0-7, an
    untrusted SeriesDescription), CASE-C (slices 12-19), CASE-D (only a coronal reformat: no usable series).
    Returns ``{case: {"study_uid", "series": {name: (series_uid, [files])}}}``."""
    src = fixture_files(fixture_dir)
    cases = {}

    def study(name, accession):
        uid = generate_uid(prefix=None)
        cases[name] = {"study_uid": uid, "series": {}, "attrs": dict(PATIENT, AccessionNumber=accession)}
        return uid

    def series(name, key, files, number, **kw):
        st = cases[name]["study_uid"]
        uid = f"{st}.{number}"
        cases[name]["series"][key] = (uid, copy_series(files, os.path.join(root, "in", name, key), st, uid,
                                                       number, attrs=cases[name]["attrs"], **kw))

    study("CASE-A", "ACC-A")
    series("CASE-A", "plain", src, 2)
    series("CASE-A", "bone", src, 3, edit=lambda ds, k: setattr(ds, "ConvolutionKernel", "BONE"))
    study("CASE-B", "ACC-B")
    series("CASE-B", "plain", src[:8], 2, edit=lambda ds, k: setattr(ds, "SeriesDescription", EVIL))
    study("CASE-C", "ACC-C")
    series("CASE-C", "plain", src[12:20], 2)
    study("CASE-D", "ACC-D")
    series("CASE-D", "cor", src[:6], 5, edit=lambda ds, k: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    return cases
