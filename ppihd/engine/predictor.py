"""DICOM in -> per-slice and per-study outputs: the inference driver shared by ``tools/infer.py`` and
``deploy/python/predict.py``.

:func:`run_inference` scans + groups + orders the inputs (``ppihd.data.series``), plans each study's series
(``ppihd.data.study``), preprocesses every series, predicts it with a back-end (:mod:`ppihd.engine.backends`:
whole series in one pass, or overlapping chunks when ``Infer.chunk_slices`` is set), and writes
``predictions.csv`` / ``submission.csv`` / ``skipped.csv`` / per-series PNG + JSON (:mod:`ppihd.engine.outputs`,
:mod:`ppihd.engine.report`) and the study answer (:mod:`ppihd.engine.studies`). One bad file or series never
stops the run.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import traceback
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ppihd.engine.backends import Backend, chunk_bounds, chunk_length, merge_chunks
from ppihd.engine.outputs import EXIT_BUSY, EXIT_OUTPUT, EXIT_USAGE, OutputWriter, series_rows, unaccounted
from ppihd.engine.studies import AGGREGATIONS
from ppihd.engine import report
from ppihd.postprocess.arrays import to_model_input

_log = logging.getLogger("ppihd")


def _title(plan: Any) -> str:
    patient, study, suid = (list(plan.key) + ["", "", ""])[:3]
    short = (lambda u: u if len(u) <= 28 else "…" + u[-27:])
    role = "PRIMARY series" if plan.primary else "series"
    slabs = f" | read as {len(plan.slabs)} slabs of {len(plan.slabs[0])} ({plan.spacing_mm:.3g} mm slices)" \
        if plan.slabs else ""
    return f"patient {patient or '?'} | study {short(study)} | {role} {short(suid)}{slabs}"


def _log_inputs(inputs: Sequence[str], headers: Sequence[Any], log: logging.Logger) -> None:
    """An ERROR naming each input that does not exist or holds no readable CT image."""
    dirs = {os.path.dirname(os.path.abspath(h.path)) for h in headers}
    files = {os.path.abspath(h.path) for h in headers}
    for inp in inputs:
        root = os.path.abspath(inp)
        if not os.path.exists(inp):
            log.error("input %s: no such file or folder", inp)
        elif os.path.isdir(inp) and not any(d == root or d.startswith(root.rstrip(os.sep) + os.sep) for d in dirs):
            log.error("input %s: no readable DICOM CT image found in this folder (each file's reason is in "
                      "skipped.csv)", inp)
        elif os.path.isfile(inp) and root not in files:
            log.error("input %s: not a readable DICOM CT image (the reason is in skipped.csv)", inp)


#: errno values of a write that cannot succeed however often it is tried (-> EXIT_OUTPUT)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, getattr(errno, "EDQUOT", -1)}


def run_inference(inputs: Sequence[str], out_dir: str, backend: Backend, data_cfg: Mapping[str, Any],
                  infer_cfg: Mapping[str, Any], num_workers: int = 0, progress: bool = True,
                  logger: Optional[logging.Logger] = None, tool: str = "ppihd inference",
                  provenance: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Predict the CT studies found under ``inputs`` and write the outputs to ``out_dir``, holding its lock
    (:class:`ppihd.utils.runlock.RunLock`) and keeping its ``run.json`` (running → complete | failed).

    A second run into the same folder returns :data:`~ppihd.engine.outputs.EXIT_BUSY` naming the first; a disk
    that is full or read-only returns :data:`~ppihd.engine.outputs.EXIT_OUTPUT` with one ERROR line naming the
    path and the free space, the previous run's CSVs left as they were. The rest: :func:`_predict_studies`.
    ``provenance``: what the model was trained on (:mod:`ppihd.utils.provenance`), logged first and written into
    ``provenance.json``, ``run.json``, every JSON and picture, the SRs and ``report.html``.
    """
    from ppihd.utils.provenance import describe, is_synthetic
    from ppihd.utils.runlock import LockError, RunLock, write_marker

    log = logger or _log
    out = os.path.abspath(out_dir)
    failed = {"num_series": 0, "num_studies": 0, "num_predicted": 0, "num_skipped": 0, "out_dir": out}
    try:  # settings that are checked only deep inside the run: before any output exists
        overlap = int(infer_cfg["chunk_overlap"])
        chunk_bounds(1000, chunk_length(infer_cfg["chunk_slices"], overlap, backend.max_slices), overlap)
        for key, allowed in (("predict_series", ("usable", "primary")), ("study_aggregation", AGGREGATIONS)):
            if str(infer_cfg[key]) not in allowed:
                raise ValueError(f"Infer.{key} must be one of {' | '.join(allowed)}, got {infer_cfg[key]!r}")
    except ValueError as e:
        log.error("%s", e)
        return dict(failed, exit_code=EXIT_USAGE)
    model = describe(provenance)
    (log.warning if is_synthetic(provenance) or not provenance else log.info)("MODEL: %s", model)
    try:
        lock = RunLock(out, tool).acquire()
    except LockError as e:
        log.error("%s", e)
        return dict(failed, exit_code=EXIT_BUSY)
    except OSError as e:
        log.error("cannot write to the output folder %s: %s", out, e.strerror or e)
        return dict(failed, exit_code=EXIT_OUTPUT)
    try:
        write_marker(out, "running", tool=tool, inputs=[str(i) for i in inputs], model=model, provenance=provenance)
        report.write_summary(os.path.join(out, "provenance.json"), {"model": model, "provenance": provenance})
        result = _predict_studies(inputs, out, backend, data_cfg, infer_cfg, num_workers, progress, log, model)
        from ppihd.engine.publish import write_study_reports   # SR + report.html read the finished CSVs

        write_study_reports(out, infer_cfg, provenance=model, logger=log)
        write_marker(out, "complete", tool=tool, model=model, provenance=provenance,
                     **{k: v for k, v in result.items() if k != "out_dir"})
        return result
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        where = e.filename or out
        try:
            free = f"{shutil.disk_usage(out).free / 2 ** 20:.1f} MB free"
        except OSError:  # pragma: no cover
            free = "free space unknown"
        log.error("cannot write %s: %s (%s); the previous outputs in %s are unchanged", where,
                  e.strerror or e, free, out)
        try:
            write_marker(out, "failed", tool=tool, error=f"{where}: {e.strerror or e}")
        except OSError:
            pass
        return dict(failed, exit_code=EXIT_OUTPUT)
    finally:
        lock.release()


def _predict_studies(inputs: Sequence[str], out_dir: str, backend: Backend, data_cfg: Mapping[str, Any],
                     infer_cfg: Mapping[str, Any], num_workers: int, progress: bool,
                     log: logging.Logger, model: str = "") -> Dict[str, Any]:
    """Predict the CT studies found under ``inputs`` and write the outputs to ``out_dir``.

    Every series is given its role (:func:`ppihd.data.study.plan_studies`); the usable ones (or only each
    study's primary series, ``Infer.predict_series``) are predicted, thin ones in slabs (``Infer.slab_mm``);
    the study answer goes to ``studies.csv`` / ``series.csv`` / ``studies/*.json`` (:mod:`ppihd.engine.studies`).

    Args:
        inputs: DICOM files and/or folders (any nesting, several studies / series).
        backend: a :class:`ppihd.engine.backends.Backend`.
        data_cfg: the ``Data`` section (windows, crop, image size, slice order).
        infer_cfg: the ``Infer`` section (threshold, chunking, batch_series, key_slices, save_plots, the
            study keys).
    Returns:
        ``{"exit_code", "num_series", "num_studies", "num_predicted", "num_skipped", "out_dir"}``; exit codes in
        :mod:`ppihd.engine.outputs` (0 all predicted, 3 some files skipped, 4 nothing predicted).
    """
    from tqdm import tqdm
    from ppihd.data.series import group_series, load_slabs, scan
    from ppihd.data.study import plan_studies
    from ppihd.engine.studies import SeriesResult, write_studies

    inputs = [str(i) for i in inputs]
    threshold = float(infer_cfg["threshold"])
    overlap = int(infer_cfg["chunk_overlap"])
    chunk = chunk_length(infer_cfg["chunk_slices"], overlap, backend.max_slices)   # TensorRT: <= its profile max
    if chunk != (infer_cfg["chunk_slices"] or None):
        log.info("series longer than %d slices go in chunks of %d (the largest input of the %s back-end; "
                 "Infer.chunk_slices %s)", chunk, chunk, backend.name, infer_cfg["chunk_slices"])
    nbatch = max(1, int(infer_cfg["batch_series"]))
    save_plots = bool(infer_cfg["save_plots"])
    n_keys = int(infer_cfg["key_slices"])

    with OutputWriter(out_dir) as writer:
        rejected: list = []
        headers, skipped = scan(inputs, num_workers, progress=progress, rejected=rejected)
        objects = {p for p, _, _ in rejected}  # DICOM objects of a series: recorded with their series' role below
        writer.add_skipped_many((str(p), str(r)) for p, r in skipped if p not in objects)  # + missing inputs etc.
        _log_inputs(inputs, headers, log)
        uniq, seen = [], set()
        for h in headers:  # the same file given twice (a folder and a file in it) is predicted once
            if (os.path.abspath(h.path), h.frame) not in seen:
                seen.add((os.path.abspath(h.path), h.frame))
                uniq.append(h)
        headers = uniq
        try:
            series_list = group_series(headers, order=data_cfg["slice_order"])
            studies = plan_studies(series_list, rejected, infer_cfg, inputs)
        except ValueError:
            raise  # a bad Infer setting
        except Exception as e:  # pragma: no cover - defensive: grouping must not lose the skipped list
            log.error("grouping series failed: %s", e)
            studies = []
            writer.add_skipped_many((h.path, f"series grouping failed: {e}") for h in headers)
            writer.add_skipped_many((p, r) for p, r, _ in rejected)
        plans = [m for st in studies for m in st.series]
        for m in plans:
            writer.add_skipped_many((p, r if m.series is not None else f"series role {m.role}: {m.reason}")
                                    for p, r in m.objects)
            if m.series is not None and not m.predict:
                why = (f"series role {m.role}: {m.reason}" if not m.usable else
                       "not the primary series of its study (Infer.predict_series=primary)")
                writer.add_skipped_many((h.path, f"not predicted: {why}") for h in m.series.slices)
        todo = [m for m in plans if m.predict]
        counts = Counter(m.role for m in plans)
        log.info("%d studies, %d series (%s; %d to predict), %d files skipped while scanning", len(studies),
                 len(plans), ", ".join(f"{n} {r}" for r, n in counts.most_common()), len(todo), len(skipped))
        several = [st for st in studies if len(st.series) > 1]
        for st in several[:20]:   # what was chosen where there was a choice (all of it is in series.csv)
            roles = ", ".join(f"#{m.series_number if m.series_number is not None else '?'} {m.role}"
                              f"{' (primary)' if m.primary else ''}" for m in st.series)
            log.info("study %s: %s", st.folder or st.key[1], roles)
        if len(several) > 20:
            log.info("... %d more studies with several series (series.csv)", len(several) - 20)

        results: Dict[str, SeriesResult] = {}
        bar = tqdm(total=len(todo), desc="series", unit="series", disable=not progress)
        for b0 in range(0, len(todo), nbatch):
            loaded = []  # (plan, kept slice indices, image index of each kept slice, uint8 images)
            for m in todo[b0:b0 + nbatch]:
                series = m.series
                try:
                    groups = m.slabs or [[i] for i in range(len(series))]
                    arr, bad, members = load_slabs(series, groups, data_cfg, reject_constant=True)
                    writer.add_skipped_many((str(p), str(r)) for p, r in bad)
                    keep = [i for g in members for i in g]
                    image_of = np.repeat(np.arange(len(members)), [len(g) for g in members])
                    if bad:  # the readable frames of a multi-frame file with an unreadable frame: skipped with it
                        gone = {os.path.abspath(str(p)) for p, _ in bad}
                        ok = [os.path.abspath(series.slices[i].path) not in gone for i in keep]
                        keep, image_of = [i for i, o in zip(keep, ok) if o], image_of[np.asarray(ok, dtype=bool)]
                    if len(keep):
                        loaded.append((m, keep, image_of, arr))
                except Exception as e:
                    log.warning("series %s: could not be loaded: %s", m.series_id, e)
                    writer.add_skipped_many((h.path, f"series could not be loaded: {e}") for h in series.slices)
            # predict: flatten (series, chunk) pieces so batch_series also batches chunks
            images = [to_model_input(arr) for *_, arr in loaded]
            probs_list: List[Optional[np.ndarray]] = []
            try:
                pieces, owners = [], []
                for j, x in enumerate(images):
                    for (b, e) in chunk_bounds(x.shape[0], chunk, overlap):
                        pieces.append(x[b:e])
                        owners.append((j, b, e))
                outs = backend.predict_many(pieces)
                for j, x in enumerate(images):
                    bounds = [(b, e) for (o, b, e) in owners if o == j]
                    parts = [p for (o, _, _), p in zip(owners, outs) if o == j]
                    probs_list.append(merge_chunks(x.shape[0], bounds, parts))
            except Exception as e:
                if len(images) > 1:  # retry one at a time so one series cannot sink the batch
                    probs_list = []
                    for (m, *_), x in zip(loaded, images):
                        try:
                            probs_list.append(backend.predict(x, chunk, overlap))
                        except Exception as e1:
                            log.warning("series %s: prediction failed: %s", m.series_id, e1)
                            probs_list.append(None)
                else:
                    log.warning("prediction failed: %s\n%s", e, traceback.format_exc(limit=3))
                    probs_list = [None] * len(images)
            for (m, keep, image_of, arr), probs in zip(loaded, probs_list):
                if probs is None or not np.all(np.isfinite(probs)):
                    writer.add_skipped_many((m.series.slices[i].path, "model prediction failed (see log)")
                                            for i in keep)
                    continue
                slice_probs = probs[image_of]           # every slice of a slab gets the slab's probabilities
                rows = series_rows(m.series, keep)
                writer.add_series(rows, slice_probs)
                results[m.series_id] = SeriesResult([r["sop_uid"] for r in rows], [r["slice_idx"] for r in rows],
                                                    slice_probs, [r["frame"] for r in rows])
                _write_report(writer.series_dir, m, rows, slice_probs, np.asarray(arr)[..., 0][image_of], image_of,
                              threshold, n_keys, save_plots, log, model)
            bar.update(min(nbatch, len(todo) - b0))
        bar.close()
        # safety net: every input file is in exactly one of predictions / skipped
        for path in unaccounted(inputs, writer):
            writer.add_skipped(path, "not a readable DICOM file (ignored by the scan)")
        try:
            write_studies(writer.out_dir, studies, results, infer_cfg, model=model)
        except OSError as e:
            if e.errno in _WRITE_ERRNOS:   # a full disk stops the run (run_inference)
                raise
            log.error("studies.csv / series.csv could not be written: %s\n%s", e, traceback.format_exc(limit=3))
        except Exception as e:  # the per-slice CSVs are complete either way
            log.error("studies.csv / series.csv could not be written: %s\n%s", e, traceback.format_exc(limit=3))
        result = {"exit_code": writer.exit_code(), "num_series": writer.n_series, "num_studies": len(studies),
                  "num_predicted": writer.n_predicted, "num_skipped": writer.n_skipped,
                  "out_dir": writer.out_dir}
    if result["num_predicted"] == 0:
        log.error("nothing was predicted: no usable CT series under %s (reasons in %s)", " ".join(inputs),
                  os.path.join(result["out_dir"], "skipped.csv"))
    log.info("predicted %d slices in %d series of %d studies, skipped %d files -> %s", result["num_predicted"],
             result["num_series"], result["num_studies"], result["num_skipped"], result["out_dir"])
    return result


def _write_report(series_dir: str, plan: Any, rows: List[Dict[str, Any]], probs: np.ndarray, brain: np.ndarray,
                  image_of: np.ndarray, threshold: float, n_keys: int, save_plots: bool, log: logging.Logger,
                  model: str = "") -> None:
    meta = {k: rows[0][k] for k in ("patient_id", "study_uid", "series_uid", "series_id")}
    meta.update(role=plan.role, primary=bool(plan.primary), model=model)
    if plan.slabs:  # [first, last] slice_idx of each slab
        meta["slabs"] = [[int(np.flatnonzero(image_of == j)[0]), int(np.flatnonzero(image_of == j)[-1])]
                         for j in range(int(image_of[-1]) + 1)]
    try:
        summary = report.series_summary(meta, probs, threshold,
                                        positions=[r["position"] for r in rows],
                                        sop_uids=[r["sop_uid"] for r in rows],
                                        warnings=list(getattr(plan.series, "warnings", []) or []))
        report.write_summary(os.path.join(series_dir, f"{plan.series_id}.json"), summary)
        if save_plots:
            report.plot_series(os.path.join(series_dir, f"{plan.series_id}.png"), probs, brain=brain,
                               title=_title(plan), threshold=threshold, key_slices=n_keys, note=model,
                               positions=[r["position"] for r in rows])
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:   # a full disk stops the run (run_inference)
            raise
        log.warning("series %s: report failed: %s", plan.series_id, e)
    except Exception as e:  # a failed picture never loses the predictions
        log.warning("series %s: report failed: %s", plan.series_id, e)
