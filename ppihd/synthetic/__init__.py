"""Synthetic RSNA-style head-CT data: phantom series with the five hemorrhage subtypes, written as DICOM.

``phantom`` (one series rendered in HU, with ``anatomy`` and ``lesions``), ``dicom_writer`` (HU -> RSNA-style
files), ``plan`` (the data set: ids, splits, quirks, CSVs; :func:`generate_dataset`), ``montage`` (a figure).
Layer: imports ``ppihd.utils`` only; nothing else in ``ppihd`` imports it (tools, tests and benchmarks do).
See docs/synthetic_data.md.
"""
from .phantom import SeriesPhantom, SliceRender, make_series
from .plan import generate_dataset, plan_dataset, task_phantom

__all__ = ["SeriesPhantom", "SliceRender", "generate_dataset", "make_series", "plan_dataset", "task_phantom"]
