"""Helpers for the inference / export / bad-input tests: synthetic CT slices written with pydicom and a tiny
random model (micro Swin) with its checkpoint. Nothing is downloaded."""
from __future__ import annotations

import copy
import os
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml")
_TEMPLATE = None


def write_ct(path: str, patient: str, study: str, series: str, sop: str, z: float, size=(32, 32),
             seed: int = 0, orientation: Sequence[float] = (1, 0, 0, 0, 1, 0)) -> str:
    """A small CT slice (int16 HU + 1024 stored, intercept -1024) at ImagePositionPatient (0, 0, z)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds = copy.deepcopy(_TEMPLATE)
    rows, cols = size
    rng = np.random.default_rng(seed)
    hu = np.full((rows, cols), -1000, np.int16)
    hu[rows // 8: rows - rows // 8, cols // 8: cols - cols // 8] = 30
    hu += rng.integers(-20, 20, size=hu.shape).astype(np.int16)
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.int16).tobytes()
    for tag in ("InstanceNumber", "SliceLocation"):
        if tag in ds:
            delattr(ds, tag)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ds.save_as(path)
    return path


def write_series(folder: str, n: int, patient: str = "P1", study: str = "1.2.3", series: str = "1.2.3.1",
                 size=(32, 32), spacing: float = 5.0, zs: Optional[Sequence[float]] = None) -> list:
    """``n`` slices in random file-name order; returns the paths in anatomical (z) order."""
    zs = list(zs) if zs is not None else [i * spacing for i in range(n)]
    rng = np.random.default_rng(len(zs))
    names = rng.permutation(len(zs))
    paths = []
    for k, z in enumerate(zs):
        sz = size[k] if isinstance(size, list) else size
        paths.append(write_ct(os.path.join(folder, f"f{names[k]:04d}.dcm"), patient, study, series,
                              f"{series}.{k + 1}", z, size=sz, seed=k))
    return paths


def tiny_model(image_size: int = 64, seed: int = 0):
    """``(cfg, model)``: the demo config with the micro backbone at ``image_size``, random weights, eval mode."""
    import paddle
    from ppihd.arch import build_model
    from ppihd.utils.config import load_config

    cfg = load_config(DEMO_CFG, [f"Data.image_size={image_size}",
                                 "Global.num_threads=2", "Global.progress_bar=False", "Data.num_workers=0"])
    paddle.seed(seed)
    model = build_model(cfg["Arch"])
    model.eval()
    return cfg, model


def save_tiny_checkpoint(path: str, image_size: int = 64, seed: int = 0) -> str:
    import paddle

    _, model = tiny_model(image_size, seed)
    paddle.save(model.state_dict(), path)
    return path


def infer_args(ckpt: str, image_size: int = 64) -> list:
    return ["-c", DEMO_CFG, "-o", f"Global.pretrained_model={ckpt}", "-o", f"Data.image_size={image_size}",
            "-o", "Data.num_workers=0", "--threads", "2",
            "--no-progress"]


def load_tool(relpath: str):
    """Import a script (``tools/infer.py``, ``deploy/python/predict.py``) as a module to call its ``main``."""
    import importlib.util

    path = os.path.join(ROOT, relpath)
    spec = importlib.util.spec_from_file_location("tool_" + relpath.replace("/", "_")[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
