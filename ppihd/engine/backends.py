"""The three interchangeable inference back-ends: float32 ``[S, 3, H, W]`` images in [0, 1] -> float32 ``[S, 6]``
probabilities, a long series in overlapping chunks (:func:`chunk_bounds`, :func:`merge_chunks`).

- :class:`DygraphBackend`: the model object (``tools/infer.py``), eval mode + sigmoid;
- :class:`PaddleInferenceBackend`: an exported model (``inference.json``/``.pdmodel`` + ``.pdiparams``) through
  ``paddle.inference`` (oneDNN on CPU, GPU when present) — needs neither the training config nor the model code;
- :class:`OnnxBackend`: ``inference.onnx`` through onnxruntime.

:func:`ppihd.engine.predictor.run_inference` drives them.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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


def chunk_length(chunk_slices: Optional[int], overlap: int, max_slices: Optional[int] = None) -> Optional[int]:
    """The chunk length a back-end is fed: ``Infer.chunk_slices`` (None / 0 = the whole series), capped at
    ``max_slices``, the largest input the back-end accepts (a TensorRT engine's profile: ``Infer.trt_max_slices``;
    None = no limit). A ValueError when the capped chunk is not longer than ``overlap``."""
    if not max_slices:
        return chunk_slices or None
    chunk = min(int(chunk_slices), int(max_slices)) if chunk_slices else int(max_slices)
    if int(overlap) >= chunk:
        raise ValueError(f"Infer.chunk_slices={chunk_slices} / Infer.trt_max_slices={max_slices}: TensorRT takes "
                         f"series in chunks of at most {chunk} slices, which must be longer than "
                         f"Infer.chunk_overlap={overlap}; lower --chunk-overlap or raise --trt-max-slices")
    return chunk


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
    #: the largest slice count one input may have (None = any): :func:`chunk_length` caps the chunks at it
    max_slices: Optional[int] = None

    def predict_series(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def predict_many(self, batch: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Several sequences (possibly of different lengths); default: one at a time."""
        return [self.predict_series(x) for x in batch]

    def predict(self, images: np.ndarray, chunk_slices: Optional[int] = None, overlap: int = 0) -> np.ndarray:
        """One series ``[S, 3, H, W]`` -> ``[S, 6]``, in overlapping chunks when ``chunk_slices`` (capped at
        :attr:`max_slices`) < S."""
        bounds = chunk_bounds(images.shape[0], chunk_length(chunk_slices, overlap, self.max_slices), overlap)
        outs = self.predict_many([images[b:e] for b, e in bounds])
        return merge_chunks(images.shape[0], bounds, outs)


class DygraphBackend(Backend):
    """The dygraph model (``ppihd.arch.build_model``): eval mode, ``sigmoid(model(images, mask))``.

    ``predict_many`` pads sequences to the longest and passes the key-padding mask ``[B, S]``
    (True = real slice), so ``batch_series`` > 1 gives the same numbers as one series at a time.
    ``precision`` ``fp16`` (GPU, compute capability >= 7.0) runs the forward under ``paddle.amp.auto_cast``
    (O1: matmuls and convolutions in fp16, normalisations and softmax in fp32); ``fp32`` (default) as is.
    """

    name = "dygraph"

    def __init__(self, model: Any, batch_series: int = 1, precision: str = "fp32"):
        precision = str(precision).lower()
        if precision == "fp16":
            import paddle

            dev = str(paddle.device.get_device())
            if not dev.startswith("gpu"):
                raise ValueError(fp16_needs_gpu(dev))
            check_gpu_fp16(gpu_index(dev))
        elif precision != "fp32":
            raise ValueError(f"precision '{precision}' of the dygraph model (tools/infer.py): expected fp32 | fp16 "
                             "(bf16 is the exported-model CPU path: tools/export_model.py -o Export.bf16=True, then "
                             "deploy/python/predict.py --precision bf16)")
        self.model = model
        self.model.eval()
        self.batch_series = max(1, int(batch_series))
        self.precision = precision

    def _forward(self, images: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
        import contextlib

        import paddle

        half = self.precision == "fp16"
        with paddle.no_grad(), (paddle.amp.auto_cast(True, level="O1", dtype="float16") if half
                                else contextlib.nullcontext()):
            x = paddle.to_tensor(images, dtype="float32")
            m = None if mask is None else paddle.to_tensor(mask)
            out = self.model(x, m)
            if isinstance(out, dict):  # a model left in train mode by its caller
                out = out["logits"]
            return sigmoid((out.astype("float32") if half else out).numpy()).astype(np.float32)

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


#: numeric precisions of :class:`PaddleInferenceBackend` (``Infer.precision``, ``--precision``): fp32 everywhere,
#: fp16 on an NVIDIA GPU only, bf16 on a CPU with native bfloat16 only
PRECISIONS = ("fp32", "fp16", "bf16")
#: GPU memory pool Paddle Inference reserves when the predictor starts (MB; it grows on demand)
GPU_POOL_MB = 256
# MEMORY_OPTIM: ``config.enable_memory_optim()`` (activation buffers with disjoint lifetimes share memory) is on by
# default for a GPU run of a ``.pdmodel`` program, and off
# - for a PIR program (``inference.json``, Paddle 3) on any device: Paddle 3.3.1's create_predictor raises
#   "Not find predictor_id 0 and pass_name memory_optimize_pass" (the pass belongs to the old IR; PrepareExecutor
#   asks for its result on every device), and PIR's executor frees each tensor after its last use anyway;
# - on CPU: bit-identical probabilities but slower (demo micro model, Paddle 2.6.2 + oneDNN, 2 threads, best of
#   3x3 interleaved: 0.30 -> 0.40 s for 32 slices, 0.074 -> 0.085 s for 7; peak RSS 546 -> 460 MB;
#   ``benchmarks/memory_optim.py``, docs/inference.md "GPU").


def gpu_index(dev: str) -> int:
    """``gpu`` -> 0, ``gpu:N`` -> N."""
    return int(dev.split(":")[1]) if ":" in dev else 0


def check_gpu_fp16(gpu_id: int) -> None:
    """Raise a RuntimeError naming the GPU below compute capability 7.0: the rule of Paddle's AMP
    (``paddle/amp/auto_cast.py``, which turns fp16 off there: no tensor cores; a P40 runs fp16 at 1/64 of its fp32
    rate), applied to inference too so that ``fp16`` never quietly means something else. ROCm builds pass."""
    import paddle

    if paddle.is_compiled_with_rocm():
        return
    major, minor = paddle.device.cuda.get_device_capability(gpu_id)
    if major < 7:
        name = paddle.device.cuda.get_device_name(gpu_id)
        raise RuntimeError(f"precision fp16: {name} (gpu:{gpu_id}, compute capability {major}.{minor}) is below "
                           "Paddle's fp16 rule (compute capability >= 7.0: V100, T4, A100, H100, ...); use fp32")


def fp16_needs_gpu(dev: str) -> str:
    """The error for precision fp16 on a device that is not a GPU."""
    return (f"precision fp16 runs on an NVIDIA GPU (--device gpu); this run is on {dev}: use fp32 on CPU (or bf16 "
            "on a CPU with AVX512-BF16/AMX, deploy/python/predict.py)")


@dataclass(frozen=True)
class TrtPlan:
    """TensorRT for the exported program: the slice range of its input ``images`` ``[1, S, 3, H, W]`` (S from
    ``min_slices`` to ``max_slices``, kernels tuned for ``opt_slices``), the builder workspace and the folder that
    keeps what is built once (Paddle 3: the converted program; Paddle 2.6: the shape ranges and the engines)."""

    image_size: int
    max_slices: int
    opt_slices: int
    workspace_mb: int
    cache_dir: str
    min_slices: int = 1

    def shape(self, slices: int) -> List[int]:
        return [1, int(slices), 3, self.image_size, self.image_size]

    def shapes(self) -> Dict[str, List[List[int]]]:
        """``{"images": [min shape, opt shape, max shape]}``."""
        return {"images": [self.shape(self.min_slices), self.shape(self.opt_slices), self.shape(self.max_slices)]}

    @property
    def tag(self) -> str:
        return f"s{self.min_slices}-{self.opt_slices}-{self.max_slices}_{self.image_size}"


def trt_plan(infer_cfg: Mapping[str, Any], image_size: int, model_dir: str) -> Optional[TrtPlan]:
    """The :class:`TrtPlan` of the ``Infer`` section (None when ``Infer.trt`` is off). The largest input is
    ``Infer.trt_max_slices``, else ``Infer.chunk_slices``; series longer than it are fed in chunks of at most that
    length (:func:`chunk_length`; a ValueError when ``Infer.chunk_overlap`` is not shorter)."""
    if not infer_cfg["trt"]:
        return None
    most = infer_cfg["trt_max_slices"] or infer_cfg["chunk_slices"]
    if not most:
        raise ValueError("Infer.trt needs the largest slice count the engine accepts: set Infer.trt_max_slices "
                         "(--trt-max-slices) or Infer.chunk_slices (--chunk-slices; longer series go in chunks)")
    chunk_length(infer_cfg["chunk_slices"], int(infer_cfg["chunk_overlap"]), int(most))
    opt = min(int(infer_cfg["trt_opt_slices"]), int(most))
    if opt < 1:
        raise ValueError(f"Infer.trt_opt_slices={infer_cfg['trt_opt_slices']}: expected >= 1")
    return TrtPlan(int(image_size), int(most), opt, int(infer_cfg["trt_workspace_mb"]),
                   str(infer_cfg["trt_cache_dir"] or os.path.join(model_dir, "trt")))


def trt_unavailable(model_file: str) -> str:
    """Why this paddle cannot run ``model_file`` with TensorRT ("" when it can): a Paddle 3 ``.json`` program needs
    ``paddle.tensorrt`` (paddlepaddle-gpu built with TensorRT + the tensorrt Python package), a ``.pdmodel`` a
    Paddle Inference compiled with TensorRT (``paddle.inference.get_trt_compile_version()`` not 0.0.0)."""
    import paddle

    if model_file.endswith(".json"):
        try:
            import paddle.tensorrt  # noqa: F401
        except ImportError as e:
            return (f"--trt on a Paddle 3 export (inference.json) needs paddle.tensorrt, which paddle "
                    f"{paddle.__version__} cannot import ({e}): install paddlepaddle-gpu built with TensorRT and "
                    "the tensorrt Python package, or drop --trt")
        return ""
    version = getattr(paddle.inference, "get_trt_compile_version", lambda: (0, 0, 0))()
    return "" if tuple(version) != (0, 0, 0) else (f"--trt: paddle {paddle.__version__} was built without TensorRT "
                                                   "(get_trt_compile_version() is 0.0.0): install paddlepaddle-gpu "
                                                   "with TensorRT, or drop --trt")


def model_fingerprint(files: Sequence[str], sample: int = 1 << 20) -> str:
    """sha1 (hex) of what an exported model is: every byte of the program (``files[0]``, a few MB at most) and, of
    each further file (``.pdiparams``, hundreds of MB), its size, its first and last ``sample`` bytes and 16
    ``sample // 16``-byte blocks spread between them (retrained weights change all of these; reading every byte
    of a Swin-B ``.pdiparams`` would cost seconds on each start). Content only: copies (``cp -p``, ``rsync -a``)
    and timestamps do not matter."""
    h = hashlib.sha1()
    with open(files[0], "rb") as f:
        h.update(f.read())
    for path in files[1:]:
        size = os.path.getsize(path)
        h.update(str(size).encode())
        block = max(1, sample // 16)
        spots = [0, max(0, size - sample)] + [size * i // 17 for i in range(1, 17)]
        with open(path, "rb") as f:
            for at, n in zip(spots, [sample, sample] + [block] * 16):
                f.seek(at)
                h.update(f.read(n))
    return h.hexdigest()


def trt_cache_folder(plan: TrtPlan, files: Sequence[str], fp16: bool) -> str:
    """``<plan.cache_dir>/<precision>_<slice range>_w<workspace MB>_<model fingerprint>``: the TensorRT artefacts
    of exactly this model (:func:`model_fingerprint`), precision, slice range and workspace. Paddle's own engine
    key (``trt_serialized_<key>`` of ``use_static``) hashes tensor names, predictor id, batch and precision only,
    so a re-exported model or new ranges in the same folder would silently reuse stale engines."""
    return os.path.join(plan.cache_dir, f"{'fp16' if fp16 else 'fp32'}_{plan.tag}_w{int(plan.workspace_mb)}_"
                                        f"{model_fingerprint(files)[:16]}")


class PaddleInferenceBackend(Backend):
    """An exported model through ``paddle.inference`` (input ``[1, S, 3, H, W]``, output ``[1, S, 6]``
    probabilities). On CPU oneDNN is enabled with ``config.enable_mkldnn()`` unless ``mkldnn=False``;
    ``threads`` sets the math-library threads; ``keep_memory`` (default) calls :func:`keep_freed_memory` so
    the activations' pages are reused from one series to the next. ``device='gpu'`` / ``'gpu:N'`` runs on that
    GPU when paddle has CUDA. ``memory_optim`` calls ``config.enable_memory_optim()``; None (default) = on for a GPU
    run of a ``.pdmodel`` program, off on CPU and for PIR ``.json`` programs (why: the MEMORY_OPTIM note above;
    True with a PIR program is an error).

    ``precision``: ``fp32`` (default) | ``fp16`` | ``bf16``.

    - ``bf16`` — oneDNN bfloat16 on CPUs with AVX512-BF16 / AMX (``config.enable_mkldnn_bfloat16()``) on the two
      programs of ``export_paddle_bf16`` (fp32 patch embedding, bf16 rest): 3.06-3.42x the fp32 speed for Swin-B,
      probabilities within 0.006 of fp32 on the trained demo model, not bit-equal (docs/benchmarks.md, "Below
      fp32"); check a trained model with ``benchmarks/lowprec.py`` before deploying it.
    - ``fp16`` — GPU only (compute capability >= 7.0): Paddle Inference's mixed precision
      (``config.enable_use_gpu(pool, id, PrecisionType.Half)``), or TensorRT fp16 with ``trt``.

    ``trt``: a :class:`TrtPlan` (GPU only, off by default): TensorRT subgraphs for the slice range of the plan.
    Paddle 3 (``inference.json``, PIR) converts the program once with ``paddle.tensorrt.convert`` (min / opt / max
    shapes of the plan) into its :func:`trt_cache_folder` and runs the converted program; Paddle 2.x (``inference.pdmodel``)
    records every tensor's shape range on runs of min / opt / max slices (``collect_shape_range_info``), then
    enables ``enable_tensorrt_engine`` with those ranges (``enable_tuned_tensorrt_dynamic_shape``) and keeps the
    built engines in the :func:`trt_cache_folder` (``use_static``). With ``trt`` :attr:`max_slices` is the plan's
    max, so :meth:`predict` and :func:`ppihd.engine.predictor.run_inference` feed chunks of at most that length."""

    name = "paddle"

    def __init__(self, model_dir: str, device: str = "cpu", threads: Optional[int] = None, mkldnn: bool = True,
                 keep_memory: bool = True, precision: str = "fp32", trt: Optional[TrtPlan] = None,
                 memory_optim: Optional[bool] = None):
        import paddle
        from paddle import inference as pinf

        precision = str(precision).lower()
        if precision not in PRECISIONS:
            raise ValueError(f"precision '{precision}' unknown; expected one of {' | '.join(PRECISIONS)}")
        dev = str(device).lower()
        gpu = dev.startswith("gpu")
        if precision == "bf16":
            if gpu:
                raise ValueError("precision bf16 is the CPU path (oneDNN on AVX512-BF16/AMX); use --device cpu, "
                                 "or fp32 / fp16 on GPU")
            if not mkldnn:
                raise ValueError("precision bf16 runs through oneDNN; it cannot be combined with --no-mkldnn")
            if paddle.__version__.split(".")[0] in ("1", "2"):
                raise RuntimeError(f"precision bf16 needs paddlepaddle 3.x (this is {paddle.__version__}: its CPU "
                                   "build has no kernel for the dequantize op its bf16 passes insert); use fp32")
            if not cpu_supports_bf16():
                raise RuntimeError("precision bf16: this CPU has no native bfloat16 (needs the avx512_bf16 or "
                                   "amx_bf16 flag in lscpu); use fp32")
        if precision == "fp16" and not gpu:
            raise ValueError(fp16_needs_gpu(dev))
        if trt is not None and not gpu:
            raise ValueError(f"--trt (TensorRT) runs on an NVIDIA GPU (--device gpu); this run is on {dev}: drop "
                             "--trt on CPU")
        if gpu and not paddle.device.is_compiled_with_cuda():
            raise RuntimeError("--device gpu but this paddle build has no CUDA; install paddlepaddle-gpu "
                               "or use --device cpu")
        if precision == "fp16":
            check_gpu_fp16(gpu_index(dev))
        if keep_memory and not gpu:
            keep_freed_memory()
        self.stem = None
        stem_files = None
        if precision == "bf16":  # two programs: fp32 stem, bf16 body (ppihd.engine.exporter.export_paddle_bf16)
            from ppihd.engine.exporter import BF16_BODY, BF16_STEM

            stem_files, files = find_model_files(model_dir, BF16_STEM), find_model_files(model_dir, BF16_BODY)
        else:
            files = find_model_files(model_dir)
        pir = files[0].endswith(".json")
        if memory_optim and pir:
            raise ValueError(f"memory optimisation cannot be combined with a PIR program ({files[0]}): paddle "
                             f"{paddle.__version__}'s create_predictor then fails (\"Not find predictor_id ... "
                             "memory_optimize_pass\"); its executor frees each tensor after its last use instead")
        optim = (gpu and not pir) if memory_optim is None else bool(memory_optim)   # see MEMORY_OPTIM
        if stem_files is not None:
            self.stem = pinf.create_predictor(self.make_config(pinf, stem_files, dev, threads, True, False,
                                                               memory_optim=optim))
        fp16 = precision == "fp16"
        why = trt_unavailable(files[0]) if trt is not None else ""
        if why:
            raise RuntimeError(why)
        if trt is not None and pir:                          # PIR: run the TensorRT-converted program (PIR too)
            files = self.convert_pir_trt(files, trt, fp16, gpu_index(dev))
            self.config = self.make_config(pinf, files, dev, threads, mkldnn, False)
        elif trt is not None:                                # .pdmodel: TensorRT subgraphs with tuned shapes
            shape_file = self.collect_trt_shapes(pinf, files, dev, trt, trt_cache_folder(trt, files, fp16))
            self.config = self.make_config(pinf, files, dev, threads, mkldnn, False, memory_optim=optim)
            self.enable_trt(pinf, self.config, trt, fp16, shape_file)
        else:
            self.config = self.make_config(pinf, files, dev, threads, mkldnn, precision == "bf16",
                                           memory_optim=optim, fp16=fp16)
        self.predictor = pinf.create_predictor(self.config)
        self.device, self.threads, self.precision, self.trt, self.memory_optim = dev, threads, precision, trt, optim
        self.max_slices = trt.max_slices if trt is not None else None   # the engines' profile max
        self.mkldnn = bool(self.config.mkldnn_enabled()) if hasattr(self.config, "mkldnn_enabled") else bool(mkldnn)

    @staticmethod
    def make_config(pinf, files: Tuple[str, str], dev: str, threads: Optional[int], mkldnn: bool, bf16: bool,
                    memory_optim: bool = False, fp16: bool = False):
        """The ``paddle.inference.Config`` this back-end uses for one program (``files`` = model, params): device
        (GPU with the fp16 mixed precision when ``fp16``), oneDNN (with the Paddle 3.3 pass work-around), bf16 and
        memory optimisation as given. For a predictor on a single program."""
        cfg = pinf.Config(*files)
        if dev.startswith("gpu"):
            cfg.enable_use_gpu(GPU_POOL_MB, gpu_index(dev),
                               pinf.PrecisionType.Half if fp16 else pinf.PrecisionType.Float32)
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
        if memory_optim:
            cfg.enable_memory_optim()
        try:
            cfg.disable_glog_info()
        except AttributeError:  # pragma: no cover
            pass
        return cfg

    @staticmethod
    def convert_pir_trt(files: Tuple[str, str], plan: TrtPlan, fp16: bool, gpu_id: int = 0) -> Tuple[str, str]:
        """Paddle 3 (PIR ``.json``): the program with TensorRT engines for the plan's slice range, converted once by
        ``paddle.tensorrt.convert`` into :func:`trt_cache_folder` (again for another model, precision or plan).
        ``convert`` builds on the first visible GPU whatever ``gpu_id`` the predictor then runs on (logged as a
        warning; ``CUDA_VISIBLE_DEVICES=N --device gpu`` converts and runs on GPU N)."""
        from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert

        folder = trt_cache_folder(plan, files, fp16)
        prefix = os.path.join(folder, "inference_trt")
        out = (prefix + ".json", prefix + ".pdiparams")
        if not all(os.path.isfile(o) for o in out):
            log = logging.getLogger("ppihd")
            log.info("TensorRT: converting %s into %s (once for this model, precision and slice range)", files[0],
                     folder)
            if gpu_id != 0:
                log.warning("TensorRT: paddle.tensorrt.convert builds on the first visible GPU, not gpu:%d; to "
                            "convert and run on GPU %d use CUDA_VISIBLE_DEVICES=%d with --device gpu", gpu_id,
                            gpu_id, gpu_id)
            os.makedirs(folder, exist_ok=True)
            lo, opt, hi = plan.shapes()["images"]
            tc = TensorRTConfig(inputs=[Input(min_input_shape=tuple(lo), optim_input_shape=tuple(opt),
                                              max_input_shape=tuple(hi))])
            tc.precision_mode = PrecisionMode.FP16 if fp16 else PrecisionMode.FP32
            tc.workspace_size = int(plan.workspace_mb) << 20
            tc.save_model_dir = prefix
            convert(os.path.splitext(files[0])[0], tc)
        return out

    @classmethod
    def collect_trt_shapes(cls, pinf, files: Tuple[str, str], dev: str, plan: TrtPlan, folder: str) -> str:
        """Paddle 2.x (``.pdmodel``): the shape range of every tensor, recorded once (``collect_shape_range_info``)
        on GPU runs of the plan's min / opt / max slices into ``folder``; returns the ``.pbtxt`` file."""
        path = os.path.join(folder, "shape_range.pbtxt")
        if not os.path.isfile(path):
            os.makedirs(folder, exist_ok=True)
            cfg = cls.make_config(pinf, files, dev, None, False, False)
            cfg.collect_shape_range_info(path)
            predictor = pinf.create_predictor(cfg)
            for shape in plan.shapes()["images"]:
                cls.run(predictor, np.full(shape, 0.5, dtype=np.float32))
            del predictor  # the ranges are written when the predictor is destroyed
        return path

    @staticmethod
    def enable_trt(pinf, cfg, plan: TrtPlan, fp16: bool, shape_file: str) -> None:
        """Paddle 2.x: TensorRT subgraphs (fp16 or fp32) with the recorded shape ranges; engines kept beside
        ``shape_file`` (its :func:`trt_cache_folder`)."""
        cfg.enable_tensorrt_engine(workspace_size=int(plan.workspace_mb) << 20, max_batch_size=1, min_subgraph_size=3,
                                   precision_mode=pinf.PrecisionType.Half if fp16 else pinf.PrecisionType.Float32,
                                   use_static=True, use_calib_mode=False)
        cfg.enable_tuned_tensorrt_dynamic_shape(shape_file, True)
        cfg.set_optim_cache_dir(os.path.dirname(shape_file))

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
