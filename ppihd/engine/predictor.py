"""DICOM in -> per-slice probabilities out, with three interchangeable back-ends.

- :class:`DygraphBackend`: the model object (``tools/infer.py``), eval mode + sigmoid;
- :class:`PaddleInferenceBackend`: an exported model (``inference.json``/``.pdmodel`` + ``.pdiparams``) through
  ``paddle.inference`` (oneDNN on CPU, GPU when present) — needs neither the training config nor the model code;
- :class:`OnnxBackend`: ``inference.onnx`` through onnxruntime.

:func:`run_inference` drives them: scan + group + order the inputs (``ppihd.data.series``), preprocess every
series, predict (whole series in one pass, or overlapping chunks when ``Infer.chunk_slices`` is set), and
write ``predictions.csv`` / ``submission.csv`` / ``skipped.csv`` / per-series PNG + JSON
(:mod:`ppihd.engine.outputs`, :mod:`ppihd.engine.report`). One bad file or series never stops the run.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import traceback
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ppihd import LABELS
from ppihd.engine.outputs import EXIT_BUSY, EXIT_OUTPUT, EXIT_USAGE, OutputWriter, series_rows, unaccounted
from ppihd.engine.studies import AGGREGATIONS
from ppihd.engine import report

_log = logging.getLogger("ppihd")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# chunking
# ---------------------------------------------------------------------------------------------------
def chunk_bounds(num_slices: int, chunk_slices: Optional[int], overlap: int) -> List[Tuple[int, int]]:
    """``[(start, end), ...]`` windows covering ``range(num_slices)``.

    ``chunk_slices`` None (or >= S) gives one window (the whole series). Otherwise windows of
    ``chunk_slices`` slices advance by ``chunk_slices - overlap``; the last window is aligned to the end.
    """
    s = int(num_slices)
    if s <= 0:
        return []
    if not chunk_slices or chunk_slices >= s:
        return [(0, s)]
    c = int(chunk_slices)
    ov = int(overlap)
    if c < 1 or ov < 0 or ov >= c:
        raise ValueError(f"Infer.chunk_slices={chunk_slices} / Infer.chunk_overlap={overlap}: expected "
                         "chunk_slices >= 1 and 0 <= chunk_overlap < chunk_slices")
    step = c - ov
    starts = list(range(0, s - c + 1, step))
    if starts[-1] + c < s:
        starts.append(s - c)
    return [(b, b + c) for b in starts]


def merge_chunks(num_slices: int, bounds: Sequence[Tuple[int, int]], chunk_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Average overlapping chunk probabilities per slice. Returns float32 ``[S, 6]``."""
    acc = np.zeros((num_slices, len(LABELS)), dtype=np.float64)
    cnt = np.zeros((num_slices, 1), dtype=np.float64)
    for (b, e), p in zip(bounds, chunk_probs):
        acc[b:e] += np.asarray(p, dtype=np.float64).reshape(e - b, -1)
        cnt[b:e] += 1
    if (cnt == 0).any():
        raise ValueError("chunks do not cover every slice")
    return (acc / cnt).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# back-ends
# ---------------------------------------------------------------------------------------------------
class Backend:
    """Maps float32 ``[S, 3, H, W]`` images in [0, 1] to float32 ``[S, 6]`` probabilities."""

    name = "base"

    def predict_series(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def predict_many(self, batch: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Several sequences (possibly of different lengths); default: one at a time."""
        return [self.predict_series(x) for x in batch]

    def predict(self, images: np.ndarray, chunk_slices: Optional[int] = None, overlap: int = 0) -> np.ndarray:
        """One series ``[S, 3, H, W]`` -> ``[S, 6]``, in overlapping chunks when ``chunk_slices`` < S."""
        bounds = chunk_bounds(images.shape[0], chunk_slices, overlap)
        outs = self.predict_many([images[b:e] for b, e in bounds])
        return merge_chunks(images.shape[0], bounds, outs)


class DygraphBackend(Backend):
    """The dygraph model (``ppihd.arch.build_model``): eval mode, ``sigmoid(model(images, mask))``.

    ``predict_many`` pads sequences to the longest and passes the key-padding mask ``[B, S]``
    (True = real slice), so ``batch_series`` > 1 gives the same numbers as one series at a time.
    """

    name = "dygraph"

    def __init__(self, model: Any, batch_series: int = 1):
        self.model = model
        self.model.eval()
        self.batch_series = max(1, int(batch_series))

    def _forward(self, images: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
        import paddle

        with paddle.no_grad():
            x = paddle.to_tensor(images, dtype="float32")
            m = None if mask is None else paddle.to_tensor(mask)
            out = self.model(x, m)
            if isinstance(out, dict):  # a model left in train mode by its caller
                out = out["logits"]
            return _sigmoid(out.numpy())

    def predict_series(self, images: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(images, np.float32)[None], None)[0]

    def predict_many(self, batch: Sequence[np.ndarray]) -> List[np.ndarray]:
        out: List[np.ndarray] = []
        for i in range(0, len(batch), self.batch_series):
            group = batch[i:i + self.batch_series]
            if len(group) == 1:
                out.append(self.predict_series(group[0]))
                continue
            smax = max(g.shape[0] for g in group)
            x = np.zeros((len(group), smax) + tuple(group[0].shape[1:]), dtype=np.float32)
            mask = np.zeros((len(group), smax), dtype=bool)
            for j, g in enumerate(group):
                x[j, :g.shape[0]] = g
                mask[j, :g.shape[0]] = True
            p = self._forward(x, mask)
            out.extend(p[j, :g.shape[0]] for j, g in enumerate(group))
        return out


def find_model_files(model_dir: str, prefix: str = "inference") -> Tuple[str, str]:
    """``(model_file, params_file)`` of an exported model: ``<prefix>.json`` (Paddle 3, PIR) or
    ``<prefix>.pdmodel`` (Paddle 2.x) + ``<prefix>.pdiparams``."""
    import paddle

    params = os.path.join(model_dir, prefix + ".pdiparams")
    # Paddle 2.x cannot read the 3.x PIR .json (it crashes), so it only looks for .pdmodel
    names = (prefix + ".pdmodel",) if paddle.__version__.split(".")[0] in ("2", "1") else (
        prefix + ".json", prefix + ".pdmodel")
    for name in names:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            if not os.path.isfile(params):
                raise FileNotFoundError(f"{model_dir}: {name} found but {prefix}.pdiparams is missing")
            return path, params
    how = ("run tools/export_model.py with this paddle version: 3.x writes .json, 2.6 writes .pdmodel"
           if prefix == "inference" else
           "the bf16 programs are written by tools/export_model.py -o Export.bf16=True")
    raise FileNotFoundError(f"{model_dir}: no exported {prefix} program for paddle {paddle.__version__} (expected "
                            f"{' or '.join(names)} + {prefix}.pdiparams; {how})")


_KEPT_MEMORY: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory in the process (Linux/glibc only; once per process; True if set).

    Paddle Inference frees a forward's activations when it ends; glibc serves every block above 32 MB with its
    own ``mmap`` and unmaps it on free, so every run of a 32-slice Swin-B series page-faulted ~4 GB back in
    (~1 M faults, ~1.5 s of kernel time per series: 0.26-0.29 s/slice instead of 0.22-0.23). With
    ``M_MMAP_MAX = 0`` (no per-block mmap) and ``M_TRIM_THRESHOLD = 2 GB`` (freed heap stays mapped) the pages
    are reused: no faults after the first run, the same peak RSS (docs/benchmarks.md, "CPU inference").
    Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in the environment."""
    global _KEPT_MEMORY
    if _KEPT_MEMORY is None:
        _KEPT_MEMORY = False
        try:
            import ctypes
            import platform

            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
                ok = libc.mallopt(m_mmap_max, 0) == 1
                _KEPT_MEMORY = ok and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            _KEPT_MEMORY = False
    return _KEPT_MEMORY


#: numeric precisions of :class:`PaddleInferenceBackend` (``--precision`` of deploy/python/predict.py)
PRECISIONS = ("fp32", "bf16")


def cpu_supports_bf16() -> bool:
    """True when paddle reports native bfloat16 on this CPU (AVX512-BF16 or AMX: oneDNN runs bf16 fast)."""
    try:
        from paddle.base import core
    except ImportError:  # pragma: no cover - Paddle 2.x
        from paddle.fluid import core
    fast = getattr(core, "supports_bfloat16_fast_performance", None)
    return bool(fast()) if fast is not None else False


class PaddleInferenceBackend(Backend):
    """An exported model through ``paddle.inference`` (input ``[1, S, 3, H, W]``, output ``[1, S, 6]``
    probabilities). On CPU oneDNN is enabled with ``config.enable_mkldnn()`` unless ``mkldnn=False``;
    ``threads`` sets the math-library threads; ``keep_memory`` (default) calls :func:`keep_freed_memory` so
    the activations' pages are reused from one series to the next. ``device='gpu'`` uses GPU 0 when paddle
    has CUDA.

    ``precision``: ``fp32`` (default) | ``bf16`` — oneDNN bfloat16 on CPUs with AVX512-BF16 / AMX
    (``config.enable_mkldnn_bfloat16()``) on the two programs of ``export_paddle_bf16`` (fp32 patch embedding,
    bf16 rest): 3.06-3.42x the fp32 speed for Swin-B, probabilities within 0.006 of fp32 on the trained demo
    model, not bit-equal (docs/benchmarks.md, "Below fp32"); check a trained model with ``benchmarks/lowprec.py``
    before deploying it."""

    name = "paddle"

    def __init__(self, model_dir: str, device: str = "cpu", threads: Optional[int] = None, mkldnn: bool = True,
                 keep_memory: bool = True, precision: str = "fp32"):
        import paddle
        from paddle import inference as pinf

        precision = str(precision).lower()
        if precision not in PRECISIONS:
            raise ValueError(f"precision '{precision}' unknown; expected one of {' | '.join(PRECISIONS)}")
        dev = str(device).lower()
        if precision == "bf16":
            if dev.startswith("gpu"):
                raise ValueError("precision bf16 is the CPU path (oneDNN on AVX512-BF16/AMX); use --device cpu, "
                                 "or fp32 on GPU")
            if not mkldnn:
                raise ValueError("precision bf16 runs through oneDNN; it cannot be combined with --no-mkldnn")
            if paddle.__version__.split(".")[0] in ("1", "2"):
                raise RuntimeError(f"precision bf16 needs paddlepaddle 3.x (this is {paddle.__version__}: its CPU "
                                   "build has no kernel for the dequantize op its bf16 passes insert); use fp32")
            if not cpu_supports_bf16():
                raise RuntimeError("precision bf16: this CPU has no native bfloat16 (needs the avx512_bf16 or "
                                   "amx_bf16 flag in lscpu); use fp32")
        if dev.startswith("gpu") and not paddle.device.is_compiled_with_cuda():
            raise RuntimeError("--device gpu but this paddle build has no CUDA; install paddlepaddle-gpu "
                               "or use --device cpu")
        if keep_memory and not dev.startswith("gpu"):
            keep_freed_memory()
        self.stem = None
        if precision == "bf16":  # two programs: fp32 stem, bf16 body (ppihd.engine.exporter.export_paddle_bf16)
            from ppihd.engine.exporter import BF16_BODY, BF16_STEM

            stem_files, files = find_model_files(model_dir, BF16_STEM), find_model_files(model_dir, BF16_BODY)
            self.stem = pinf.create_predictor(self._config(pinf, stem_files, dev, threads, True, False))
        else:
            files = find_model_files(model_dir)
        self.config = self._config(pinf, files, dev, threads, mkldnn, precision == "bf16")
        self.predictor = pinf.create_predictor(self.config)
        self.device, self.threads, self.precision = dev, threads, precision
        self.mkldnn = bool(self.config.mkldnn_enabled()) if hasattr(self.config, "mkldnn_enabled") else bool(mkldnn)

    @staticmethod
    def _config(pinf, files: Tuple[str, str], dev: str, threads: Optional[int], mkldnn: bool, bf16: bool):
        cfg = pinf.Config(*files)
        if dev.startswith("gpu"):
            gpu_id = int(dev.split(":")[1]) if ":" in dev else 0
            cfg.enable_use_gpu(256, gpu_id)
        else:
            cfg.disable_gpu()
            if mkldnn:
                cfg.enable_mkldnn()
                # Paddle 3.3 PIR bug: this layout fusion mis-infers the shape of a constant-shape reshape after
                # a transpose (Swin's window partition: "input's shape is -8, 50176") -> create_predictor fails.
                # Skipping it only skips a fusion; numerics unchanged (docs/benchmarks.md).
                cfg.delete_pass("operator_reshape_onednn_fuse_pass")
                if bf16:
                    cfg.enable_mkldnn_bfloat16()
            elif hasattr(cfg, "disable_mkldnn"):  # Paddle 3.x enables oneDNN by default on CPU
                cfg.disable_mkldnn()
            if threads:
                cfg.set_cpu_math_library_num_threads(int(threads))
        try:
            cfg.disable_glog_info()
        except AttributeError:  # pragma: no cover
            pass
        return cfg

    @staticmethod
    def _run(predictor, x: np.ndarray) -> np.ndarray:
        h = predictor.get_input_handle(predictor.get_input_names()[0])
        h.reshape(list(x.shape))
        h.copy_from_cpu(x)
        predictor.run()
        return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    def predict_series(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(images, np.float32)[None])
        slices = x.shape[1]
        if self.stem is not None:  # bf16: fp32 patch embedding, whose tokens the bf16 body takes
            x = self._run(self.stem, x)
        out = self._run(self.predictor, x)
        return np.asarray(out, dtype=np.float32).reshape(slices, -1)


class OnnxBackend(Backend):
    """``inference.onnx`` through onnxruntime (CPU, or CUDA when ``device='gpu'`` and available)."""

    name = "onnxruntime"

    def __init__(self, model_dir: str, device: str = "cpu", threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeError("--backend onnxruntime needs the onnxruntime package "
                               "(pip install onnxruntime)") from e
        path = model_dir if model_dir.endswith(".onnx") else os.path.join(model_dir, "inference.onnx")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found; export with tools/export_model.py -o Export.onnx=True")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if str(device).lower().startswith("gpu") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, sess_options=so, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def predict_series(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(images, np.float32)[None])
        out = self.session.run(None, {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(x.shape[1], -1)


# ---------------------------------------------------------------------------------------------------
# checkpoint loading (dygraph)
# ---------------------------------------------------------------------------------------------------
def load_weights(model: Any, path: str) -> Any:
    """Load ``Global.pretrained_model`` into ``model`` (strict; see :func:`ppihd.utils.checkpoint.load_weights`).

    Returns the model. Kept here so deployment code can import it next to the back-ends.
    """
    from ..utils.checkpoint import load_weights as _load

    _load(model, path, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------
def _to_model_input(slices_u8: np.ndarray) -> np.ndarray:
    """uint8 ``[S, H, W, 3]`` -> float32 ``[S, 3, H, W]`` in [0, 1] (docs/data.md: no mean/std)."""
    return np.ascontiguousarray(np.asarray(slices_u8).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


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
        chunk_bounds(1000, infer_cfg.get("chunk_slices"), int(infer_cfg.get("chunk_overlap", 0) or 0))
        for key, allowed in (("predict_series", ("usable", "primary")), ("study_aggregation", AGGREGATIONS)):
            if str(infer_cfg.get(key, allowed[0])) not in allowed:
                raise ValueError(f"Infer.{key} must be one of {' | '.join(allowed)}, got {infer_cfg.get(key)!r}")
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
        backend: one of the back-ends above.
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
    threshold = float(infer_cfg.get("threshold", 0.5))
    chunk = infer_cfg.get("chunk_slices")
    overlap = int(infer_cfg.get("chunk_overlap", 0) or 0)
    nbatch = max(1, int(infer_cfg.get("batch_series", 1) or 1))
    save_plots = bool(infer_cfg.get("save_plots", True))
    n_keys = int(infer_cfg.get("key_slices", 4))

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
            series_list = group_series(headers, order=data_cfg.get("slice_order", "normal"))
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
            images = [_to_model_input(arr) for *_, arr in loaded]
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
