"""The study outputs written after ``studies.csv``: ``sr/<study_id>.dcm`` (``Infer.dicom_sr``,
:mod:`ppihd.engine.dicom_sr`) and ``report.html`` (``Infer.report_html``, :mod:`ppihd.engine.report_html`).

Both read only the output folder. Each is tried on its own: a failure is an ERROR line in the log and never
touches the CSVs, the JSON or the other output.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Dict, Mapping, Optional

import ppihd

_log = logging.getLogger("ppihd")


def write_study_reports(out_dir: str, infer_cfg: Mapping[str, Any], provenance: Optional[str] = None,
                        logger: Optional[logging.Logger] = None) -> Dict[str, Any]:
    """Returns ``{"sr": [paths], "html": path | None}``."""
    log = logger or _log
    out: Dict[str, Any] = {"sr": [], "html": None}
    if infer_cfg["dicom_sr"]:
        try:
            from ppihd.engine.dicom_sr import write_study_srs
            out["sr"] = write_study_srs(out_dir, infer_cfg, ppihd.__version__, provenance=provenance, logger=log)
        except Exception as e:
            log.error("DICOM SR could not be written: %s\n%s", e, traceback.format_exc(limit=3))
    if infer_cfg["report_html"]:
        try:
            from ppihd.engine.report_html import write_report_html
            out["html"] = write_report_html(out_dir, infer_cfg, provenance=provenance)
            log.info("wrote %s", out["html"])
        except Exception as e:
            log.error("report.html could not be written: %s\n%s", e, traceback.format_exc(limit=3))
    return out
