"""Read one DICOM file: a fast header (:func:`read_header`) and the stored pixels (:func:`read_raw_pixels`).

Everything that makes a file unusable raises :class:`DicomError` ``(path, reason)`` with a short human
reason ("not DICOM", "not CT (Modality MR)", "truncated pixel data (8130 of 8192 bytes)",
"JPEG-LS Lossless Image Compression needs a decoder plug-in: pip install pylibjpeg pylibjpeg-libjpeg
(or pyjpegls, or python-gdcm)", ...). Callers record the reason and go on with the other files.

Messy headers as found in RSNA: multi-valued / zero-padded WindowCenter strings, UIDs that are not valid
UI VRs (pydicom's warnings are silenced here), missing RescaleSlope/Intercept (defaults 1 / 0),
missing Modality (accepted, with a warning in ``SliceHeader.warnings``).
"""
from __future__ import annotations

import logging
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

log = logging.getLogger("ppihd")

try:  # pydicom >= 3
    from pydicom.pixels import get_decoder as _get_decoder  # type: ignore
except Exception:  # pragma: no cover - pydicom 2.x: no up-front decoder check (decode errors are still caught)
    _get_decoder = None

# pydicom.config: do not raise on invalid VRs (RSNA's "ID_xxx" UIDs), just read them.
try:
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
except AttributeError:  # pragma: no cover - very old pydicom
    pass

PIXEL_DATA_TAG = 0x7FE00010
#: Bounds beyond which RescaleSlope / RescaleIntercept cannot describe CT (HU span about -1024 .. 30000):
#: such a header is rejected instead of turned into a blank image with a confident prediction.
MAX_ABS_SLOPE = 100.0
MAX_ABS_INTERCEPT = 65536.0
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
UNCOMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian (pixels uncompressed once inflated)
    "1.2.840.10008.1.2.2",     # Explicit VR Big Endian
}
# pip packages that decode each family of compressed transfer syntaxes. requirements.txt / setup.py install them
# all, so a missing one means a broken install: the message names the package and the requirements to reinstall.
_PLUGIN_HINTS = (
    ("JPEG 2000", "pylibjpeg pylibjpeg-openjpeg"),
    ("High-Throughput JPEG 2000", "pylibjpeg pylibjpeg-openjpeg"),
    ("JPEG-LS", "python-gdcm"),
    ("JPEG", "python-gdcm"),
    ("RLE", "pylibjpeg pylibjpeg-rle"),
)


class DicomError(Exception):
    """A file that cannot be used. ``path`` names the file, ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str, identity: Optional[Dict[str, str]] = None):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        #: for a DICOM object that is not a usable CT image (an SR, an MR slice, a colour screen capture):
        #: the series it belongs to (:func:`series_identity`), so a study can list it with its role
        self.identity = identity

    def __reduce__(self):  # picklable across worker processes
        return (DicomError, (self.path, self.reason, self.identity))


@dataclass
class SliceHeader:
    """What ppihd needs from one slice's header (no pixels). Positions in mm (patient LPS)."""

    path: str
    sop_uid: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: Optional[str]
    position: Optional[Tuple[float, float, float]]      # ImagePositionPatient
    orientation: Optional[Tuple[float, ...]]            # ImageOrientationPatient (row cosines, column cosines)
    instance_number: Optional[int]
    rows: int
    cols: int
    slope: float = 1.0                                  # RescaleSlope (default 1)
    intercept: float = 0.0                              # RescaleIntercept (default 0), HU offset
    bits_stored: Optional[int] = None
    pixel_representation: Optional[int] = None          # 0 unsigned, 1 signed
    window_center: Optional[float] = None               # first value of a multi-valued WindowCenter
    window_width: Optional[float] = None
    slice_thickness: Optional[float] = None
    pixel_spacing: Optional[Tuple[float, float]] = None
    transfer_syntax: str = ""
    bits_allocated: int = 16
    pixel_offset: Optional[int] = None                  # byte offset of native (uncompressed) pixel values
    # what the series roles of ppihd.data.study are decided from ("" / () / None where absent, as in RSNA files)
    sop_class: str = ""                                 # SOPClassUID
    image_type: Tuple[str, ...] = ()                    # ImageType values, upper case
    series_number: Optional[int] = None
    series_description: str = ""
    kernel: str = ""                                    # ConvolutionKernel (first value)
    contrast_agent: str = ""                            # ContrastBolusAgent ("" = none recorded)
    warnings: List[str] = field(default_factory=list)
    frame: Optional[int] = None                         # 0-based frame of a multi-frame file (None: single-frame)

    @property
    def key(self) -> Tuple[str, str, str]:
        """The series key (PatientID, StudyInstanceUID, SeriesInstanceUID)."""
        return (self.patient_id, self.study_uid, self.series_uid)


# ----------------------------------------------------------------------------------------------- parsing
def _first_number(value: Any) -> Optional[float]:
    """First number of a DS/IS/str value that may be multi-valued ("00040\\00080") or padded; None if none."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("ascii", "ignore")
    try:
        return float(str(value).strip().split("\\")[0])
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> Optional[Tuple[float, ...]]:
    if value is None:
        return None
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        try:  # a single backslash-separated string
            vals = [float(v) for v in str(value).split("\\")]
        except (TypeError, ValueError):
            return None
    if len(vals) != n or not all(np.isfinite(vals)):
        return None
    return tuple(vals)


def _strings(value: Any) -> Tuple[str, ...]:
    """A CS/SH/LO value (single, multi-valued or backslash-joined) as a tuple of stripped upper-case strings."""
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" \
        else str(value).split("\\")
    return tuple(str(v).strip().upper() for v in items)


def _str(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword, None)
    return "" if v is None else str(v).strip()


def _open_dataset(path: str, fp, stop_before_pixels: bool) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            pass
        except Exception as e:  # corrupt header
            raise DicomError(path, f"not DICOM (unreadable header: {type(e).__name__})") from None
        # No 128-byte preamble + "DICM": some valid files omit it. Accept only if it parses as an image.
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
        except Exception:
            raise DicomError(path, "not DICOM") from None
        if "SOPInstanceUID" not in ds or "Rows" not in ds:
            raise DicomError(path, "not DICOM")
        return ds


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID", None) if meta is not None else None
    if ts is None:  # no meta: infer from how pydicom read it
        enc = getattr(ds, "original_encoding", None) or (True, True)
        implicit, little = enc
        return "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    return str(ts)


def _syntax_name(ts: str) -> str:
    try:
        return pydicom.uid.UID(ts).name
    except Exception:  # pragma: no cover
        return ts


def check_decoder(path: str, ts: str) -> None:
    """Raise :class:`DicomError` naming the plug-in to install if pixels in syntax ``ts`` cannot be decoded."""
    if ts in UNCOMPRESSED_SYNTAXES or _get_decoder is None:
        return
    name = _syntax_name(ts)
    try:
        dec = _get_decoder(ts)
    except NotImplementedError:
        raise DicomError(path, f"unsupported transfer syntax {name} ({ts})") from None
    if dec.is_available:
        return
    pkgs = next((h for prefix, h in _PLUGIN_HINTS if name.startswith(prefix)), None)
    if pkgs is None:
        hint = "install one of: " + "; ".join(dec.missing_dependencies)
    else:
        hint = (f"{pkgs.split()[-1]} ships with ppihd's requirements but is missing here; reinstall them: "
                f"pip install -r requirements.txt (or pip install {pkgs})")
    raise DicomError(path, f"{name} needs a decoder plug-in: {hint}")


def _pixel_element_check(path: str, fp, ds: Dataset, ts: str, file_size: int) -> Optional[int]:
    """After a ``stop_before_pixels`` read, ``fp`` sits at the PixelData element: check it is present and whole.
    Returns the byte offset of the pixel values for native data, None for encapsulated (compressed) data."""
    start = fp.tell()
    head = fp.read(12)
    implicit, little = getattr(ds, "original_encoding", None) or (ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2")
    if implicit is None:  # pragma: no cover - defensive
        implicit = ts == "1.2.840.10008.1.2"
    end = "<" if little is not False else ">"
    if len(head) < 8:
        raise DicomError(path, "missing pixel data")
    group, elem = struct.unpack(end + "HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA_TAG:
        if group == 0x7FE0:  # Float/Double Float Pixel Data: not a CT image
            raise DicomError(path, "float pixel data is not supported")
        raise DicomError(path, "missing pixel data")
    if implicit:
        (length,) = struct.unpack(end + "I", head[4:8])
        value_start = start + 8
    else:
        if len(head) < 12:
            raise DicomError(path, "truncated pixel data")
        (length,) = struct.unpack(end + "I", head[8:12])
        value_start = start + 12
    if length == 0xFFFFFFFF:  # encapsulated (compressed): no cheap length check
        return None
    available = file_size - value_start
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(_first_number(ds.get("NumberOfFrames", 1)) or 1)
    expected = (rows * cols * spp * frames * bits + 7) // 8
    have = min(length, available)
    if have < expected:
        raise DicomError(path, f"truncated pixel data ({have} of {expected} bytes)")
    if length > expected + 1:  # + 1: the pad byte of an odd length
        raise DicomError(path, f"pixel data holds {length} bytes but Rows x Columns x BitsAllocated = {rows} x {cols} "
                               f"x {bits} needs {expected}: the header does not describe the pixels")
    return value_start


NATIVE_FAST = {"1.2.840.10008.1.2": "<", "1.2.840.10008.1.2.1": "<", "1.2.840.10008.1.2.2": ">"}


def read_native_pixels(header: SliceHeader) -> Optional[np.ndarray]:
    """Stored values [rows, cols] read straight from the file at ``header.pixel_offset`` (+ ``header.frame`` frames
    of a multi-frame file; native syntaxes only; None otherwise, then use :func:`read_raw_pixels` or, for a frame,
    :func:`read_frame_pixels`). Unused high bits are corrected exactly as
    pydicom 3 does (shift left then right by BitsAllocated - BitsStored). Raises :class:`DicomError`."""
    end = NATIVE_FAST.get(header.transfer_syntax)
    if end is None or header.pixel_offset is None or header.bits_allocated not in (8, 16):
        return None
    signed = header.pixel_representation == 1
    dtype = np.dtype(f"{end}{'i' if signed else 'u'}{header.bits_allocated // 8}")
    count = header.rows * header.cols
    try:
        with open(header.path, "rb") as f:
            want = struct.pack(end + "HH", 0x7FE0, 0x0010)
            back = 8 if header.transfer_syntax == "1.2.840.10008.1.2" else 12   # implicit / explicit VR header
            f.seek(max(0, header.pixel_offset - back))
            if f.read(4) != want:
                raise DicomError(header.path, "file changed since it was scanned (pixel data moved)")
            f.seek(header.pixel_offset + (header.frame or 0) * count * dtype.itemsize)   # frame of a multi-frame
            arr = np.fromfile(f, dtype=dtype, count=count)
    except OSError as e:
        raise DicomError(header.path, f"cannot open file ({e.strerror or e})") from None
    if arr.size < count:
        raise DicomError(header.path, "truncated pixel data")
    if not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    bits = header.bits_stored or header.bits_allocated
    shift = header.bits_allocated - bits
    if 0 < shift < header.bits_allocated:
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr.reshape(header.rows, header.cols)


def _sop_class(ds: Dataset) -> str:
    return _str(ds, "SOPClassUID") or str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))


def series_identity(ds: Dataset, path: str) -> Dict[str, str]:
    """The series a file belongs to and what it is, for any DICOM object (image or not): ``patient_id,
    study_uid, series_uid`` (the :class:`SliceHeader` key; a missing SeriesInstanceUID groups by folder),
    ``modality, sop_class, series_number, series_description``."""
    series_uid = _str(ds, "SeriesInstanceUID") or "dir:" + os.path.dirname(os.path.abspath(path))
    return {"patient_id": _str(ds, "PatientID"), "study_uid": _str(ds, "StudyInstanceUID"),
            "series_uid": series_uid, "modality": _str(ds, "Modality"), "sop_class": _sop_class(ds),
            "series_number": _str(ds, "SeriesNumber"), "series_description": _str(ds, "SeriesDescription")}


#: SOP classes of multi-frame CT read frame by frame: Enhanced CT, Legacy Converted Enhanced CT
MULTIFRAME_CT_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Optional[Dataset]:
    """The first item of functional group ``sequence`` (e.g. ``PlanePositionSequence``) for ``frame``: from the
    frame's PerFrameFunctionalGroupsSequence item, else from SharedFunctionalGroupsSequence; None if neither."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups, None)
        if seq is not None and len(seq) > i:
            inner = seq[i].get(sequence, None)
            if inner is not None and len(inner):
                return inner[0]
    return None


def _frame_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    item = _frame_item(ds, frame, sequence)
    return None if item is None else item.get(keyword, None)


def header_from_dataset(ds: Dataset, path: str = "<dataset>") -> SliceHeader:
    """Build the :class:`SliceHeader` of a single-frame image from an already read dataset (the first frame's
    of a multi-frame CT: :func:`headers_from_dataset` gives them all); raises :class:`DicomError` if unusable."""
    return headers_from_dataset(ds, path)[0]


def headers_from_dataset(ds: Dataset, path: str = "<dataset>") -> List[SliceHeader]:
    """The :class:`SliceHeader` of each frame of an already read dataset: one for a single-frame image, one per
    frame of a multi-frame CT (Enhanced / Legacy Converted Enhanced CT: position, orientation, rescale,
    thickness, spacing and FrameType from the per-frame functional groups, else the shared ones); raises
    :class:`DicomError` if unusable. A DICOM object that is not a usable CT image (SR, MR, colour, a multi-frame
    image without functional groups) raises with its :func:`series_identity`, so the study it belongs to can
    list it."""
    notes: List[str] = []
    sop_class = _sop_class(ds)
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise DicomError(path, "DICOMDIR (a directory index, not an image)")
    ident = series_identity(ds, path)
    modality = _str(ds, "Modality") or None
    if modality is None:
        notes.append("Modality missing: assumed CT")
    elif modality.upper() != "CT":
        raise DicomError(path, f"not CT (Modality {modality})", ident)
    rows, cols = ds.get("Rows", None), ds.get("Columns", None)
    if not rows or not cols:
        raise DicomError(path, "missing Rows/Columns (not an image)", ident)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise DicomError(path, f"colour image (SamplesPerPixel {spp}); CT must be greyscale", ident)
    frames = int(_first_number(ds.get("NumberOfFrames", 1)) or 1)
    multi = frames != 1 or sop_class in MULTIFRAME_CT_CLASSES
    if multi and not (sop_class in MULTIFRAME_CT_CLASSES or "PerFrameFunctionalGroupsSequence" in ds
                      or "SharedFunctionalGroupsSequence" in ds):
        raise DicomError(path, f"multi-frame image ({frames} frames) without functional groups (not an Enhanced "
                               f"CT) is not supported; export single slices", ident)
    if frames < 1:
        raise DicomError(path, f"NumberOfFrames {frames}: no image", ident)
    if not multi:
        return [_single_header(ds, path, ident, sop_class, modality, rows, cols, notes, None)]
    return [_single_header(ds, path, ident, sop_class, modality, rows, cols, list(notes), i) for i in range(frames)]


#: where a multi-frame CT keeps, per frame or shared, what a single-frame image has at the top level
_FUNCTIONAL_GROUP = {
    "ImagePositionPatient": "PlanePositionSequence", "ImageOrientationPatient": "PlaneOrientationSequence",
    "RescaleSlope": "PixelValueTransformationSequence", "RescaleIntercept": "PixelValueTransformationSequence",
    "SliceThickness": "PixelMeasuresSequence", "PixelSpacing": "PixelMeasuresSequence",
    "WindowCenter": "FrameVOILUTSequence", "WindowWidth": "FrameVOILUTSequence",
    "ImageType": "CTImageFrameTypeSequence", "ConvolutionKernel": "CTReconstructionSequence"}
#: Legacy Converted Enhanced images keep the other attributes of their source slices in these functional groups
_UNASSIGNED = ("UnassignedPerFrameConvertedAttributesSequence", "UnassignedSharedConvertedAttributesSequence")


def _single_header(ds: Dataset, path: str, ident: Dict[str, str], sop_class: str, modality: Optional[str],
                   rows: Any, cols: Any, notes: List[str], frame: Optional[int]) -> SliceHeader:
    """The :class:`SliceHeader` of a single-frame image (``frame`` None) or of one frame of a multi-frame CT."""
    if frame is None:
        get = ds.get
    else:  # this frame's functional group, else the top level, else the converted source attributes

        def get(keyword: str, default: Any = None) -> Any:
            seq = _FUNCTIONAL_GROUP.get(keyword)
            v = None if seq is None else _frame_value(ds, frame, seq,
                                                      "FrameType" if keyword == "ImageType" else keyword)
            if v is None:
                v = ds.get(keyword, None)
            for unassigned in _UNASSIGNED if v is None else ():
                v = v if v is not None else _frame_value(ds, frame, unassigned, keyword)
            return default if v is None else v
    slope = _first_number(get("RescaleSlope", None))
    intercept = _first_number(get("RescaleIntercept", None))
    if slope is not None and (not np.isfinite(slope) or abs(slope) > MAX_ABS_SLOPE):
        raise DicomError(path, f"impossible RescaleSlope {get('RescaleSlope')} (expected a finite number, "
                               f"|slope| <= {MAX_ABS_SLOPE:g})")
    if intercept is not None and (not np.isfinite(intercept) or abs(intercept) > MAX_ABS_INTERCEPT):
        raise DicomError(path, f"impossible RescaleIntercept {get('RescaleIntercept')} (expected a finite "
                               f"number, |intercept| <= {MAX_ABS_INTERCEPT:g})")
    if slope is None or slope == 0:
        if slope == 0:
            notes.append("RescaleSlope 0: taken as 1")
        slope = 1.0
    if intercept is None:
        intercept = 0.0
    sop = _str(ds, "SOPInstanceUID") or os.path.splitext(os.path.basename(path))[0]
    if not _str(ds, "SeriesInstanceUID"):  # grouped by folder rather than lump unrelated files together
        notes.append("SeriesInstanceUID missing: grouped by folder")
    inst = _first_number(ds.get("InstanceNumber", None))
    series_no = _first_number(ds.get("SeriesNumber", None))
    spacing = _floats(get("PixelSpacing", None), 2)
    return SliceHeader(
        path=str(path), sop_uid=sop, patient_id=ident["patient_id"], study_uid=ident["study_uid"],
        series_uid=ident["series_uid"], modality=modality,
        position=_floats(get("ImagePositionPatient", None), 3),
        orientation=_floats(get("ImageOrientationPatient", None), 6),
        instance_number=None if inst is None else int(inst), rows=int(rows), cols=int(cols),
        slope=float(slope), intercept=float(intercept),
        bits_stored=None if ds.get("BitsStored", None) is None else int(ds.BitsStored),
        pixel_representation=None if ds.get("PixelRepresentation", None) is None else int(ds.PixelRepresentation),
        window_center=_first_number(get("WindowCenter", None)),
        window_width=_first_number(get("WindowWidth", None)),
        slice_thickness=_first_number(get("SliceThickness", None)),
        pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
        transfer_syntax=_transfer_syntax(ds), bits_allocated=int(ds.get("BitsAllocated", 16) or 16),
        sop_class=sop_class, image_type=_strings(get("ImageType", None)),
        series_number=None if series_no is None else int(series_no), series_description=ident["series_description"],
        kernel=(_strings(get("ConvolutionKernel", None)) or ("",))[0],
        contrast_agent=str(get("ContrastBolusAgent", "") or "").strip(), warnings=notes, frame=frame)


def read_header(path: str) -> SliceHeader:
    """Read the header of one file (pixels not decoded) and check it is a usable CT image: its only slice, or
    the first frame of a multi-frame CT (:func:`read_headers` gives every frame).

    Checks done here so that a scan reports them up front: DICOM at all, Modality, presence and length of
    the pixel data (truncated files), and that a decoder for a compressed transfer syntax is installed.
    Raises :class:`DicomError` (path, reason).
    """
    return read_headers(path)[0]


def read_headers(path: str) -> List[SliceHeader]:
    """The :class:`SliceHeader` of every slice of one file: one for a single-frame image, one per frame of a
    multi-frame CT (:func:`headers_from_dataset`); the checks of :func:`read_header`."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        fp = open(path, "rb")
    except OSError as e:
        raise DicomError(path, f"cannot open file ({e.strerror or e})") from None
    with fp:
        if size < 132:
            raise DicomError(path, "not DICOM (file too small)" if size else "not DICOM (empty file)")
        ds = _open_dataset(path, fp, stop_before_pixels=True)
        hdrs = headers_from_dataset(ds, path)
        ts = hdrs[0].transfer_syntax
        check_decoder(path, ts)
        if ts == DEFLATED_SYNTAX:  # the file offset says nothing about the inflated stream
            fp.seek(0)
            _deflated_pixel_check(path, _open_dataset(path, fp, stop_before_pixels=False))
        else:
            offset = _pixel_element_check(path, fp, ds, ts, size)
            for h in hdrs:
                h.pixel_offset = offset
    return hdrs


def _deflated_pixel_check(path: str, ds: Dataset) -> None:
    """The pixel-data checks of :func:`_pixel_element_check` on a whole (inflated) dataset."""
    if "PixelData" not in ds:
        raise DicomError(path, "float pixel data is not supported" if ("FloatPixelData" in ds or
                                                                        "DoubleFloatPixelData" in ds)
                         else "missing pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(_first_number(ds.get("NumberOfFrames", 1)) or 1)
    expected = (rows * cols * frames * int(ds.get("BitsAllocated", 16) or 16) + 7) // 8
    have = len(ds.PixelData)
    if have < expected:
        raise DicomError(path, f"truncated pixel data ({have} of {expected} bytes)")


def read_dataset(path: str) -> Dataset:
    """Read a whole file (header and pixel data). Raises :class:`DicomError`."""
    path = str(path)
    try:
        with open(path, "rb") as fp:
            return _open_dataset(path, fp, stop_before_pixels=False)
    except OSError as e:
        raise DicomError(path, f"cannot open file ({e.strerror or e})") from None


#: 12-bit lossy JPEG: GDCM and Pillow decode 8-bit JPEG only; libjpeg (GPL-3.0, so not a default dependency) does
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
_JPEG_12BIT_HINT = ("; 12-bit lossy JPEG needs pylibjpeg-libjpeg (GPL-3.0, not installed by default): "
                    "pip install pylibjpeg-libjpeg")


def read_raw_pixels(ds: Dataset, path: str = "<dataset>") -> np.ndarray:
    """Stored pixel values [h, w] (int16/uint16/...) of a single-frame image; raises :class:`DicomError`."""
    ts = _transfer_syntax(ds)
    check_decoder(path, ts)
    if "PixelData" not in ds:
        raise DicomError(path, "missing pixel data")
    try:
        return _decode(ds, path, ts)
    except DicomError as e:
        if ts == JPEG_EXTENDED_12BIT and "12-bit" in e.reason:
            raise DicomError(path, e.reason + _JPEG_12BIT_HINT) from None
        raise


def _decode(ds: Dataset, path: str, ts: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = ds.pixel_array
        except ValueError as e:
            msg = str(e)
            if "less than expected" in msg or "truncat" in msg.lower():
                raise DicomError(path, "truncated pixel data") from None
            raise DicomError(path, f"cannot decode pixel data ({msg.splitlines()[0][:120]})") from None
        except (RuntimeError, NotImplementedError, ImportError) as e:
            raise DicomError(path, f"cannot decode {_syntax_name(ts)} pixel data ({' '.join(str(e).split())[:300]})") \
                from None
        except Exception as e:  # decoder plug-ins raise all sorts of things
            raise DicomError(path, f"cannot decode pixel data ({type(e).__name__}: {str(e)[:120]})") from None
    if arr.ndim != 2:
        raise DicomError(path, f"expected a single greyscale frame, got pixel array of shape {arr.shape}")
    return arr


def read_frame_pixels(header: SliceHeader) -> np.ndarray:
    """Stored values [rows, cols] of frame ``header.frame`` of a multi-frame file, decoding only that frame
    (``pydicom.pixels.pixel_array(path, index=frame)``). Raises :class:`DicomError`."""
    from pydicom.pixels import pixel_array

    path, ts = header.path, header.transfer_syntax
    check_decoder(path, ts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = pixel_array(path, index=int(header.frame or 0))
        except OSError as e:
            raise DicomError(path, f"cannot open file ({e.strerror or e})") from None
        except ValueError as e:
            msg = str(e)
            if "less than expected" in msg or "truncat" in msg.lower():
                raise DicomError(path, f"truncated pixel data (frame {int(header.frame or 0) + 1})") from None
            raise DicomError(path, f"cannot decode pixel data ({msg.splitlines()[0][:120]})") from None
        except Exception as e:  # decoder plug-ins raise all sorts of things
            raise DicomError(path, f"cannot decode {_syntax_name(ts)} pixel data, frame {int(header.frame or 0) + 1} "
                                   f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if arr.shape != (header.rows, header.cols):
        raise DicomError(path, f"expected a greyscale frame of {header.rows} x {header.cols}, got pixel array of "
                               f"shape {arr.shape}")
    return arr
