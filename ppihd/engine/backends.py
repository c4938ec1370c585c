"""The three interchangeable inference back-ends: float32 ``[S, 3, H, W]`` images in [0, 1] -> float32 ``[S, 6]``
probabilities, a long series in overlapping chunks (:func:`chunk_bounds`, :func:`merge_chunks`).

- :class:`DygraphBackend`: the model object (``tools/infer.py``), eval mode + sigmoid;
- :class:`PaddleInferenceBackend`: an exported model (``inference.json``/``.pdmodel`` + ``.pdiparams``) through
  ``paddle.inference`` (oneDNN on CPU, GPU when present) — needs neither the training config nor the model code;
- :class:`OnnxBackend`: ``inference.onnx`` through onnxruntime.

:func:`ppihd.engine.predictor.run_inference` drives them.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ppihd import LABELS
from ppihd.engine.runtime import cpu_supports_bf16, keep_freed_memory
from ppihd.postprocess.arrays import sigmoid


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
            return sigmoid(out.numpy()).astype(np.float32)

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


#: numeric precisions of :class:`PaddleInferenceBackend` (``--precision`` of deploy/python/predict.py)
PRECISIONS = ("fp32", "bf16")


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
            self.stem = pinf.create_predictor(self.make_config(pinf, stem_files, dev, threads, True, False))
        else:
            files = find_model_files(model_dir)
        self.config = self.make_config(pinf, files, dev, threads, mkldnn, precision == "bf16")
        self.predictor = pinf.create_predictor(self.config)
        self.device, self.threads, self.precision = dev, threads, precision
        self.mkldnn = bool(self.config.mkldnn_enabled()) if hasattr(self.config, "mkldnn_enabled") else bool(mkldnn)

    @staticmethod
    def make_config(pinf, files: Tuple[str, str], dev: str, threads: Optional[int], mkldnn: bool, bf16: bool):
        """The ``paddle.inference.Config`` this back-end uses for one program (``files`` = model, params): device,
        oneDNN (with the Paddle 3.3 pass work-around) and bf16 as given. For a predictor on a single program."""
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
    def run(predictor, x: np.ndarray) -> np.ndarray:
        """One forward of a single-input, single-output ``predictor`` on ``x``; its first output as numpy."""
        h = predictor.get_input_handle(predictor.get_input_names()[0])
        h.reshape(list(x.shape))
        h.copy_from_cpu(x)
        predictor.run()
        return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    def predict_series(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(images, np.float32)[None])
        slices = x.shape[1]
        if self.stem is not None:  # bf16: fp32 patch embedding, whose tokens the bf16 body takes
            x = self.run(self.stem, x)
        out = self.run(self.predictor, x)
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
