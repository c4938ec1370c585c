"""One DICOM Structured Report per study, ``sr/<study_id>.dcm`` (docs/inference.md "DICOM SR").

Written after a run from the output folder alone (``studies/<study_id>.json`` for the answer,
``predictions.csv`` for the files of the key slices, which are read with pydicom for their UIDs and the
patient / study attributes), so the SR says exactly what the CSVs and the JSON say.

The document is a Comprehensive 3D SR (highdicom) holding a TID 1500 Measurement Report:

- observer: a device, ``ppihd`` (the algorithm), with the TID 1500 image library of the key slices;
- one TID 1501 measurement group per class (``ppihd.LABELS`` order), each with
  - tracking identifier ``ppihd <class>`` (and a UID),
  - finding type: the class, coded in the local scheme ``99PPIHD`` (EDH, IPH, IVH, SAH, SDH, ICH = any);
  - algorithm identification: name ``ppihd``, version, parameters (threshold, aggregation);
  - qualitative evaluation: the class ``Present`` (SCT 52101004) when the study probability is above
    ``Infer.threshold`` (``p > threshold``, as in ``studies.csv``), else ``Absent`` (SCT 2667000);
  - measurement: the study probability (``P-EDH`` ...), unit UCUM ``1`` (no units), referencing its key slice;
  - source image: the class's key slice, by SOP Class / SOP Instance UID (and its ReferencedFrameNumber when the
    key slice is a frame of a multi-frame image);
- when ``provenance`` is given, a TEXT item "Comment" (DCM 121106) in the root container.

Patient and study attributes (PatientName, PatientID, PatientBirthDate, PatientSex, StudyInstanceUID,
StudyDate, StudyTime, StudyID, AccessionNumber, ReferringPhysicianName) are copied from the key slices' files
by highdicom; the SR is a new series of the input study, so a PACS files it with the images.

A study gets no SR (an INFO line says why) when it has no usable series (no probabilities), when the key
slices' files cannot be read, or when its UIDs are not DICOM UIDs (RSNA's anonymised ``ID_<hex>``).
"""
from __future__ import annotations

import copy
import csv
import glob
import json
import logging
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional

from ppihd import LABELS
from ppihd.utils.fileio import atomic_path

_log = logging.getLogger("ppihd")
if logging.getLogger("highdicom").level == logging.NOTSET:  # its INFO lines ("copy attributes of module ...")
    logging.getLogger("highdicom").setLevel(logging.WARNING)

#: Local coding scheme of the classes (no standard code is asserted for them); code values are the usual
#: abbreviations (<= 16 characters, so a plain Code Value), the probabilities ``P-<abbreviation>``.
SCHEME = "99PPIHD"
CLASS_CODES = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH", "subarachnoid": "SAH",
               "subdural": "SDH", "any": "ICH"}
CLASS_MEANINGS = {
    "epidural": "Epidural hemorrhage", "intraparenchymal": "Intraparenchymal hemorrhage",
    "intraventricular": "Intraventricular hemorrhage", "subarachnoid": "Subarachnoid hemorrhage",
    "subdural": "Subdural hemorrhage", "any": "Intracranial hemorrhage (any type)",
}
#: DeidentificationMethod of an SR whose images say PatientIdentityRemoved YES but not how (an error otherwise).
DEID_UNSTATED = "not stated in the source images"
#: Series number of the SR series (a high number, after the images, like scanner dose reports).
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "ppihd hemorrhage detection (research software)"
#: Type 2 patient / study attributes the SR copies from the images: present (empty) when an image lacks them.
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")


def class_code(label: str):
    from highdicom.sr import CodedConcept
    return CodedConcept(value=CLASS_CODES[label], scheme_designator=SCHEME, meaning=CLASS_MEANINGS[label])


def probability_code(label: str):
    from highdicom.sr import CodedConcept
    return CodedConcept(value=f"P-{CLASS_CODES[label]}", scheme_designator=SCHEME,
                        meaning=f"Probability of {CLASS_MEANINGS[label][0].lower()}{CLASS_MEANINGS[label][1:]}")


def _read_sop_paths(out_dir: str) -> Dict[str, str]:
    """sop_uid -> input file, from ``predictions.csv``."""
    path = os.path.join(out_dir, "predictions.csv")
    paths: Dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            paths.setdefault(row["sop_uid"], row["path"])
    return paths


def _valid_uid(uid: Any) -> bool:
    from pydicom.uid import UID
    return bool(uid) and UID(str(uid)).is_valid


def _describe_frame(ds, frame: int) -> None:
    """Give a multi-frame image's header the top-level geometry of its ``frame`` (1-based): highdicom's image
    library entry (TID 1604) reads PixelSpacing, ImageOrientationPatient, ImagePositionPatient and SliceThickness
    there, where an Enhanced CT has them in its functional groups. So the SR's image library describes the
    image by its first key frame."""
    from pydicom.valuerep import DS

    from ppihd.data.dicom import headers_from_dataset

    h = headers_from_dataset(ds)[frame - 1]
    for keyword, value in (("PixelSpacing", h.pixel_spacing), ("ImageOrientationPatient", h.orientation),
                           ("ImagePositionPatient", h.position), ("SliceThickness", h.slice_thickness)):
        if value is not None and keyword not in ds:
            setattr(ds, keyword, [DS(v, auto_format=True) for v in value] if isinstance(value, tuple)
                    else DS(value, auto_format=True))


def build_study_sr(doc: Mapping[str, Any], images: Mapping[str, Any], algorithm_version: str,
                   provenance: Optional[str] = None):
    """The :class:`highdicom.sr.Comprehensive3DSR` of one study.

    Args:
        doc: the study's ``studies/<study_id>.json``.
        images: sop_uid -> pydicom header (no pixels) of every key slice in ``doc["key_slices"]``.
    """
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.uid import generate_uid

    threshold = float(doc["threshold"])
    algo = hd.sr.AlgorithmIdentification(
        name="ppihd", version=str(algorithm_version),
        parameters=[f"threshold={threshold:g}", f"aggregation={doc.get('aggregation', '')}"])
    present = CodedConcept("52101004", "SCT", "Present")
    absent = CodedConcept("2667000", "SCT", "Absent")
    unit = CodedConcept("1", "UCUM", "no units")
    groups = []
    for lab in LABELS:
        p = doc["probabilities"][lab]
        key = doc["key_slices"][lab]
        ds = images[key["sop_uid"]]
        frames = [int(key["frame"])] if key.get("frame") else None   # a frame of a multi-frame image
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"ppihd {lab}"),
            finding_type=class_code(lab),
            algorithm_id=algo,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=class_code(lab), value=present if lab in doc["flagged"] else absent)],
            measurements=[hd.sr.Measurement(
                name=probability_code(lab), value=float(p), unit=unit, algorithm_id=algo,
                referenced_images=[hd.sr.SourceImageForMeasurement(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                                   referenced_frame_numbers=frames)])],
            source_images=[hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                                referenced_frame_numbers=frames)],
        ))
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="ppihd", manufacturer_name="ppihd",
                                                       model_name=f"ppihd {algorithm_version}")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))
    first_frame = {}   # sop_uid -> the 1-based frame of its first key slice (multi-frame images)
    for lab in LABELS:
        first_frame.setdefault(doc["key_slices"][lab]["sop_uid"], doc["key_slices"][lab].get("frame"))
    evidence = [copy.deepcopy(images[s]) for s in first_frame]
    for ds in evidence:
        if first_frame[str(ds.SOPInstanceUID)] and "PixelSpacing" not in ds:
            _describe_frame(ds, int(first_frame[str(ds.SOPInstanceUID)]))
    for ds in evidence:  # highdicom copies them from the first image and needs them present
        for k in COPIED:
            if k not in ds:
                setattr(ds, k, "")
        if (str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and not ds.get("DeidentificationMethod")
                and not ds.get("DeidentificationMethodCodeSequence")):  # required then (type 1C)
            ds.DeidentificationMethod = DEID_UNSTATED
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=CodedConcept("24725-4", "LN", "CT Head"),
        imaging_measurements=groups,
        referenced_images=evidence)
    if provenance:
        report[0].ContentSequence.append(hd.sr.TextContentItem(
            name=CodedConcept("121106", "DCM", "Comment"), value=str(provenance),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="ppihd", series_description=SR_SERIES_DESCRIPTION, is_complete=True,
        manufacturer_model_name="ppihd", software_versions=str(algorithm_version))
    # UTF-8: the provenance (an em dash) and names decoded from any source character set encode as they are
    sr.SpecificCharacterSet = "ISO_IR 192"
    return sr


def write_study_srs(out_dir: str, infer_cfg: Mapping[str, Any], algorithm_version: str,
                    provenance: Optional[str] = None, logger: Optional[logging.Logger] = None) -> List[str]:
    """Write ``sr/<study_id>.dcm`` for every study of the run in ``out_dir`` that has an answer. Returns
    the paths written. ``infer_cfg`` is the ``Infer`` section (the threshold recorded in the study JSON is
    the one used; the section is taken for future keys)."""
    import pydicom

    log = logger or _log
    docs = sorted(glob.glob(os.path.join(out_dir, "studies", "*.json")))
    if not docs:
        return []
    sop_paths = _read_sop_paths(out_dir)
    written: List[str] = []
    for jpath in docs:
        with open(jpath, encoding="utf-8") as f:
            doc = json.load(f)
        sid = doc["study_id"]
        if doc.get("answer_series") is None or any(doc["probabilities"].get(lab) is None for lab in LABELS):
            why = "; ".join(doc.get("warnings") or []) or "no series was predicted"
            log.info("study %s: no DICOM SR (no study answer: %s)", doc.get("study_folder") or sid, why)
            continue
        images: Dict[str, Any] = {}
        problem = None
        for lab in LABELS:
            sop = doc["key_slices"][lab]["sop_uid"]
            if sop in images:
                continue
            path = sop_paths.get(sop)
            if path is None:
                problem = f"key slice {sop} is not in predictions.csv"
                break
            try:
                images[sop] = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as e:  # moved or unreadable input
                problem = f"key slice file {path} cannot be read ({e})"
                break
            ds = images[sop]
            bad = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
                   if not _valid_uid(ds.get(k))]
            if bad:
                v = str(ds.get(bad[0]) or "")
                what = "longer than 64 characters" if len(v) > 64 else "not digits and dots (RSNA's ID_<hex>?)"
                problem = f"{' '.join(bad)} of {path} not a valid DICOM UID ({v!r}: {what})"
                break
        if problem:
            log.warning("study %s: no DICOM SR: %s", doc.get("study_folder") or sid, problem)
            continue
        path = os.path.join(out_dir, "sr", f"{sid}.dcm")
        try:
            with warnings.catch_warnings(record=True) as caught:  # e.g. a one-component PatientName
                warnings.simplefilter("always")
                sr = build_study_sr(doc, images, algorithm_version, provenance)
            for w in caught:
                log.debug("study %s: SR: %s", sid, w.message)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_path(path, ".dcm") as tmp:
                sr.save_as(tmp, enforce_file_format=True)
        except Exception as e:  # one study's odd headers never cost the others their SR
            log.warning("study %s: DICOM SR failed: %s: %s", sid, type(e).__name__, e)
            continue
        written.append(path)
    log.info("wrote %d DICOM SR file(s) to %s", len(written), os.path.join(out_dir, "sr"))
    return written
