"""The synthetic data set's DICOM writer: HU -> stored pixels (the inverse of the reader's transform) and one
RSNA-style file per slice, with RSNA's header quirks (docs/synthetic_data.md)."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Tuple

import numpy as np

#: Pixel encodings written to DICOM. HU = raw * 1 + intercept, except ``corrupt`` (see :func:`encode_hu`).
ENCODINGS: Tuple[str, ...] = ("u12", "s16", "u16", "corrupt")

#: Transfer syntaxes used (uncompressed little endian).
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Fixed implementation UID (pydicom's documented example root) so the bytes do not depend on pydicom's version.
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"


def encode_hu(hu: np.ndarray, encoding: str, corrupt_intercept: str = "1.0") -> Tuple[np.ndarray, Dict[str, object]]:
    """Stored pixel values and header fields for HU float [rows, cols].

    * ``u12``: BitsStored 12, PixelRepresentation 0, intercept -1024: raw = HU + 1024 in [0, 4095]
      (out-of-field and anything below -1024 HU -> raw 0).
    * ``s16``: BitsStored 16, PixelRepresentation 1, intercept -1024: raw = HU + 1024, out-of-field raw -2000
      (-3024 HU, like RSNA's padding).
    * ``u16``: BitsStored 16, PixelRepresentation 0, intercept -1024: raw = HU + 1024 >= 0.
    * ``corrupt``: RSNA's corrupt-intercept pattern: BitsStored 12, PixelRepresentation 0, intercept > -100.
      The RSNA intercept fix (docs/data.md) reads raw' = raw + 1000, raw' -= 4096 where raw' >= 4096, HU = raw' - 1000, so we
      write the inverse raw = HU mod 4096 for HU in [-1000, 3095] (HU below -1000, incl. out of field,
      becomes -1000 = air: these files have no distinct padding value).
    """
    v = np.rint(hu).astype(np.int32)
    if encoding == "u12":
        raw = np.clip(v + 1024, 0, 4095).astype(np.uint16)
        hdr = dict(BitsStored=12, PixelRepresentation=0, RescaleIntercept="-1024.0")
    elif encoding == "s16":
        raw = np.clip(v + 1024, -2000, 32767).astype(np.int16)
        hdr = dict(BitsStored=16, PixelRepresentation=1, RescaleIntercept="-1024.0")
    elif encoding == "u16":
        raw = np.clip(v + 1024, 0, 65535).astype(np.uint16)
        hdr = dict(BitsStored=16, PixelRepresentation=0, RescaleIntercept="-1024.0")
    elif encoding == "corrupt":
        raw = np.mod(np.clip(v, -1000, 3095), 4096).astype(np.uint16)
        hdr = dict(BitsStored=12, PixelRepresentation=0, RescaleIntercept=corrupt_intercept)
    else:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return raw, hdr


_WINDOW_STYLES = (
    (["40"], ["80"]),
    (["00036"], ["00080"]),
    (["00036", "00036"], ["00080", "00080"]),
    (["00040", "00040"], ["00080", "00080"]),
)


def write_slice(path: str, phantom: Any, hu: np.ndarray, k: int, uids: Dict[str, str]) -> None:
    """Write slice ``k`` of ``phantom`` (a :class:`~ppihd.synthetic.phantom.SeriesPhantom`) as an RSNA-style
    DICOM file (only RSNA's header elements; no InstanceNumber)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    raw, enc = encode_hu(hu, phantom.encoding, phantom.corrupt_intercept)
    pos, orient = phantom.geometry(k)
    wc, ww = _WINDOW_STYLES[phantom.window_style]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Invalid value for VR UI")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = uids["sop"]
        meta.TransferSyntaxUID = phantom.transfer_syntax
        meta.ImplementationClassUID = IMPLEMENTATION_UID
        meta.ImplementationVersionName = "PPIHD_SYNTH_1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPInstanceUID = uids["sop"]
        ds.Modality = "CT"
        ds.PatientID = uids["patient"]
        ds.StudyInstanceUID = uids["study"]
        ds.SeriesInstanceUID = uids["series"]
        ds.StudyID = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orient]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(raw.shape[0]), int(raw.shape[1])
        ds.PixelSpacing = [f"{phantom.ps:.6f}", f"{phantom.ps:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = enc["BitsStored"]
        ds.HighBit = enc["BitsStored"] - 1
        ds.PixelRepresentation = enc["PixelRepresentation"]
        ds.WindowCenter = wc if len(wc) > 1 else wc[0]
        ds.WindowWidth = ww if len(ww) > 1 else ww[0]
        ds.RescaleIntercept = enc["RescaleIntercept"]
        ds.RescaleSlope = "1.0"
        ds.PixelData = raw.astype(raw.dtype.newbyteorder("<")).tobytes()
        if int(pydicom.__version__.split(".")[0]) >= 3:
            ds.save_as(path, enforce_file_format=True)              # encoding from TransferSyntaxUID
        else:  # pragma: no cover - pydicom 2.x
            ds.is_little_endian = True
            ds.is_implicit_VR = phantom.transfer_syntax == IMPLICIT_VR_LE
            ds.save_as(path, write_like_original=False)


# ---------------------------------------------------------------------------------------------------------
