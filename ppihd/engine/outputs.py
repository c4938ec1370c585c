"""Writers for the inference outputs, shared by ``tools/infer.py`` and ``deploy/python/predict.py``.

Files written to the output folder (see docs/inference.md):

- ``predictions.csv``: one row per predicted slice (:data:`PRED_COLUMNS`);
- ``submission.csv``: the Kaggle format ``ID,Label``, six rows per image in :data:`ppihd.LABELS` order;
- ``skipped.csv``: ``path,reason`` for every input file that got no prediction;
- ``series/<series_id>.png`` and ``series/<series_id>.json`` (written by :mod:`ppihd.engine.report`).

Rows are appended and flushed series by series to ``<name>.csv.partial`` (the run's journal); only a run that
finishes moves them onto ``<name>.csv`` (:meth:`OutputWriter.commit`, one ``os.replace`` each). So a CSV is
always complete: a killed run, a full disk or a read-only folder leaves the previous run's files or none, and
the ``.partial`` journal of what it had finished (a failure that the run catches removes it).
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ppihd import LABELS
from ppihd.postprocess.tables import submission_id

#: Columns of ``predictions.csv`` (the six probabilities are in ``ppihd.LABELS`` order). ``frame``: the
#: 1-based frame number (DICOM ReferencedFrameNumber) of a slice that is a frame of a multi-frame file, else empty.
PRED_COLUMNS: Tuple[str, ...] = (
    "patient_id", "study_uid", "series_uid", "series_id", "sop_uid", "slice_idx", "position",
    *LABELS, "path", "frame")
SUBMISSION_COLUMNS: Tuple[str, ...] = ("ID", "Label")
SKIPPED_COLUMNS: Tuple[str, ...] = ("path", "reason")

#: Process exit codes of the inference tools.
EXIT_OK = 0            # every input file was predicted
EXIT_USAGE = 2         # bad command line / config / model (argparse also uses 2)
EXIT_SKIPPED = 3       # some input files were skipped (see skipped.csv); the rest were predicted
EXIT_NOTHING = 4       # no input file could be predicted (no readable CT slice at all)
EXIT_OUTPUT = 5        # the outputs could not be written (disk full, read-only folder, no permission)
EXIT_BUSY = 6          # another run holds the output folder (its lock names the process)

PARTIAL = ".partial"   # suffix of the journal files of a run in progress


def exit_code(n_predicted: int, n_skipped: int) -> int:
    """0 when everything was predicted, 3 when some files were skipped, 4 when nothing was predicted."""
    if n_predicted == 0:
        return EXIT_NOTHING
    return EXIT_SKIPPED if n_skipped else EXIT_OK


def _fmt_prob(p: float) -> str:
    return f"{float(p):.7g}"


class OutputWriter:
    """Appends rows to ``predictions.csv``, ``submission.csv`` and ``skipped.csv`` in ``out_dir``.

    Use as a context manager. Each input path is recorded at most once: a path that was already predicted
    or skipped is ignored when it comes again (the first record wins), so every input file ends up in
    exactly one of predictions/skipped. A multi-frame file has one prediction row per frame (the unit of a
    prediction is ``(path, frame)``), so its frames are all predicted rows; a file skipped before (a frame
    that could not be read) gets no prediction rows.
    """

    def __init__(self, out_dir: str):
        self.out_dir = os.path.abspath(out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self.series_dir = os.path.join(self.out_dir, "series")
        self._files: Dict[str, Any] = {}
        self._writers: Dict[str, Any] = {}
        self._seen: set = set()            # input files recorded (predicted or skipped), absolute paths
        self._predicted: set = set()       # (absolute path, frame) of every prediction row
        self.n_predicted = 0
        self.n_skipped = 0
        self.n_series = 0
        for name, cols in (("predictions", PRED_COLUMNS), ("submission", SUBMISSION_COLUMNS),
                           ("skipped", SKIPPED_COLUMNS)):
            f = open(self.path(name) + PARTIAL, "w", newline="", encoding="utf-8")
            w = csv.writer(f)
            w.writerow(cols)
            self._files[name], self._writers[name] = f, w

    def path(self, name: str) -> str:
        """The final path of one of the CSVs (``predictions``, ``submission``, ``skipped``)."""
        return os.path.join(self.out_dir, f"{name}.csv")

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def close(self) -> None:
        for f in self._files.values():
            if not f.closed:
                f.close()

    def commit(self) -> None:
        """Close the journal and move each ``.partial`` onto its final name (flushed to disk first)."""
        for f in self._files.values():
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
        self.close()
        for name in self._files:
            os.replace(self.path(name) + PARTIAL, self.path(name))

    def abort(self) -> None:
        """Close and delete the journal: the final CSVs stay as they were (a previous run's, or none)."""
        try:
            self.close()
        except OSError:  # a full disk fails the last flush too
            pass
        for name in self._files:
            try:
                os.remove(self.path(name) + PARTIAL)
            except OSError:
                pass

    def _flush(self) -> None:
        for f in self._files.values():
            f.flush()

    # -- records ---------------------------------------------------------------------------------------
    def add_skipped(self, path: str, reason: str) -> bool:
        """Record one skipped input file. Returns False if the path was already recorded."""
        key = os.path.abspath(str(path))
        if key in self._seen:
            return False
        self._seen.add(key)
        self._writers["skipped"].writerow([str(path), " ".join(str(reason).split())])
        self.n_skipped += 1
        self._files["skipped"].flush()
        return True

    def add_skipped_many(self, items: Iterable[Tuple[str, str]]) -> None:
        for path, reason in items:
            self.add_skipped(path, reason)

    def add_series(self, rows: Sequence[Dict[str, Any]], probs: np.ndarray) -> int:
        """Record the slices of one series.

        Args:
            rows: one dict per slice with the keys of :data:`PRED_COLUMNS` except the six labels
                (``patient_id, study_uid, series_uid, series_id, sop_uid, slice_idx, position, path``; ``frame``:
                the 0-based frame of a multi-frame file, absent or None otherwise).
            probs: float ``[S, 6]`` probabilities in ``ppihd.LABELS`` order.
        Returns:
            The number of rows written (slices whose file was already recorded are dropped: skipped, or
            predicted in an earlier series; the frames of one multi-frame file in one call are all written).
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(rows), len(LABELS)):
            raise ValueError(f"probabilities have shape {probs.shape}, expected ({len(rows)}, {len(LABELS)})")
        n = 0
        mine: set = set()   # files first recorded by this call (their other frames follow)
        for row, p in zip(rows, probs):
            key = os.path.abspath(str(row["path"]))
            frame = row.get("frame")
            if (key in self._seen and key not in mine) or (key, frame) in self._predicted:
                continue
            if key not in self._seen:
                mine.add(key)
            self._seen.add(key)
            self._predicted.add((key, frame))
            pos = row.get("position")
            pos_s = "" if pos is None or (isinstance(pos, float) and not np.isfinite(pos)) else f"{float(pos):.4f}"
            self._writers["predictions"].writerow(
                [row.get("patient_id", ""), row.get("study_uid", ""), row.get("series_uid", ""),
                 row.get("series_id", ""), row.get("sop_uid", ""), int(row["slice_idx"]), pos_s,
                 *[_fmt_prob(v) for v in p], str(row["path"]), "" if frame is None else int(frame) + 1])
            sid = submission_id(row.get("sop_uid", ""), None if frame is None else int(frame) + 1)
            for label, v in zip(LABELS, p):
                self._writers["submission"].writerow([f"{sid}_{label}", _fmt_prob(v)])
            n += 1
        self.n_predicted += n
        self.n_series += 1
        self._flush()
        return n

    def exit_code(self) -> int:
        return exit_code(self.n_predicted, self.n_skipped)


def unaccounted(inputs: Sequence[str], writer: OutputWriter) -> List[str]:
    """Input files that are in neither predictions nor skipped. Should be empty; a safety net that lists the
    inputs its own way (``os.walk`` following links, each real folder once; hidden ``.name`` entries ignored as
    by the scanner), independent of the scanner's :func:`ppihd.data.series.list_files`."""
    found: List[str] = []
    for inp in inputs:
        if not os.path.isdir(inp):
            if os.path.lexists(inp):
                found.append(inp)
            continue
        real = set()
        for root, dirs, names in os.walk(inp, followlinks=True):
            key = os.path.realpath(root)
            if key in real:
                dirs[:] = []
                continue
            real.add(key)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(os.path.join(root, n) for n in names if not n.startswith("."))
    return [f for f in found if os.path.abspath(f) not in writer._seen]


def series_rows(series: Any, keep: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """The prediction-row metadata for a :class:`ppihd.data.series.Series` (``keep`` = indices of the slices
    that were loaded, default all). ``slice_idx`` counts the kept slices in order from 0."""
    idx = list(range(len(series.slices))) if keep is None else list(keep)
    patient, study, series_uid = (list(series.key) + ["", "", ""])[:3]
    positions = list(getattr(series, "positions", None) or [None] * len(series.slices))
    rows = []
    for j, i in enumerate(idx):
        h = series.slices[i]
        rows.append({
            "patient_id": getattr(h, "patient_id", patient) or patient,
            "study_uid": getattr(h, "study_uid", study) or study,
            "series_uid": getattr(h, "series_uid", series_uid) or series_uid,
            "series_id": series.series_id,
            "sop_uid": getattr(h, "sop_uid", ""),
            "slice_idx": j,
            "position": positions[i] if i < len(positions) else None,
            "path": h.path,
            "frame": getattr(h, "frame", None),
        })
    return rows
