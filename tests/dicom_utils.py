"""Test helpers over the package's own DICOM reading path (``ppihd.data.series.read_hu``, what the cache and
inference read): one file's HU and one slice's model image."""
from ppihd.data.dicom import read_header
from ppihd.data.series import read_hu
from ppihd.data.transforms import preprocess_slice


def slice_hu(path, fix_intercept=True):
    """HU float32 [rows, cols] of one single-frame DICOM file (``fix_intercept``: the RSNA corrupt-intercept fix)."""
    return read_hu(read_header(path), {"fix_intercept": fix_intercept})


def load_slice(header, data_cfg):
    """One slice's model image uint8 [H, W, 3]: its HU through ``preprocess_slice`` (a slab of one slice)."""
    return preprocess_slice(read_hu(header, data_cfg), data_cfg)
