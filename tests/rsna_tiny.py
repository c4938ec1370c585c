"""A tiny RSNA-layout data set built from pydicom's CT_small.dcm (128×128), for cache / dataset tests.

Each series has ``slices`` slices with tilted ImagePositionPatient; files get random ``ID_<hex>.dcm`` names
(file order says nothing about anatomy). Slice ``k`` (anatomical order) has an 8×8 corner patch of HU
``8 k`` so its brain-window byte there is ``floor(8 k × 255 / 80) = floor(25.5 k)``.
"""
import copy
import os
import shutil
import warnings

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from ppihd import LABELS

TILT = (1.0, 0.0, 0.0, 0.0, 0.9483237, -0.3173047)


def corner_value(k: int) -> int:
    return int(np.floor(8 * k * 255 / 80))


def make_tiny_rsna(root, n_train=3, n_test=1, slices=4, seed=0, extras=True):
    """Write ``root/stage_2_train``, ``root/stage_2_test``, ``root/stage_2_train.csv``. Returns info dict:
    ``{"train": {series_uid: [sop in anatomical order]}, "test": {...}, "labels": {sop: [6]}}``."""
    rng = np.random.default_rng(seed)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    px = base.pixel_array.copy()
    info = {"train": {}, "test": {}, "labels": {}}
    used = set()
    for part, n in (("train", n_train), ("test", n_test)):
        folder = os.path.join(root, f"stage_2_{part}")
        os.makedirs(folder, exist_ok=True)
        for s in range(n):
            series_uid = f"ID_{part[:2]}{s:08x}"
            study_uid, patient = f"ID_st{part[:2]}{s:06x}", f"ID_pat{s // 2:05x}"
            sops = []
            for k in range(slices):
                while True:
                    sop = "ID_" + "".join(rng.choice(list("0123456789abcdef"), 9))
                    if sop not in used:
                        used.add(sop)
                        break
                ds = copy.deepcopy(base)
                arr = px.copy()
                arr[:8, :8] = 1024 + 8 * k            # HU 8k (intercept -1024)
                ds.PixelData = arr.astype(np.int16).tobytes()
                with warnings.catch_warnings():  # RSNA-style UIDs are not valid UI values
                    warnings.simplefilter("ignore")
                    ds.SOPInstanceUID, ds.SeriesInstanceUID = sop, series_uid
                    ds.StudyInstanceUID, ds.PatientID = study_uid, patient
                    ds.file_meta.MediaStorageSOPInstanceUID = sop
                    ds.ImageOrientationPatient = list(TILT)
                    ds.ImagePositionPatient = [-125.0, -123.54, 5.0 + 5.0 * k]
                    del ds.InstanceNumber             # RSNA files have none
                    ds.save_as(os.path.join(folder, f"{sop}.dcm"))
                sops.append(sop)
                lab = [0, 0, 0, 0, 0, 0]
                if part == "train" and s % 2 == 1 and k >= 1:
                    lab = [0, 1, 0, 0, 0, 1]
                info["labels"][sop] = lab
            info[part][series_uid] = sops
    if extras:
        tr = os.path.join(root, "stage_2_train")
        with open(os.path.join(tr, "notes.txt"), "w") as f:
            f.write("not an image\n" * 20)
        shutil.copy(get_testdata_file("MR_small.dcm"), os.path.join(tr, "ID_mr0000000.dcm"))
    with open(os.path.join(root, "stage_2_train.csv"), "w") as f:
        f.write("ID,Label\n")
        for sops in info["train"].values():
            for sop in sops:
                for lab, v in zip(LABELS, info["labels"][sop]):
                    f.write(f"{sop}_{lab},{v}\n")
    return info


def tiny_cfg(root, **data):
    from ppihd.utils.config import load_config

    ov = [f"Data.root={root}", "Data.image_size=128", "Data.remove_black_edges=false", "Data.num_workers=1",
          "Data.val_fraction=0.34", "Global.progress_bar=false"]
    ov += [f"Data.{k}={v}" for k, v in data.items()]
    return load_config(None, ov)
