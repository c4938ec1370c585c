"""Export a trained model for Paddle Inference (and optionally ONNX).

The exported graph takes float32 ``images [1, S, 3, H, W]`` in [0, 1] with a dynamic slice count S and returns
sigmoid probabilities ``[1, S, 6]`` (``ppihd.LABELS`` order). ``paddle.jit.save`` writes
``inference.json`` + ``inference.pdiparams`` on Paddle 3 (PIR) and ``inference.pdmodel`` + ``inference.pdiparams``
on Paddle 2.6. :func:`write_inference_yml` records everything the predictor needs instead of the training
config: preprocessing (windows, black-edge crop, image size, slice order), labels, input/output spec, versions.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any, Dict, Mapping, Optional

import yaml

import ppihd
from ppihd import LABELS
from ppihd.utils.provenance import provenance_of_weights
from ppihd.utils.fileio import atomic_path

#: Keys of the ``Data`` section that define preprocessing (copied to ``inference.yml``).
PREPROCESS_KEYS = ("windows", "fix_intercept", "remove_black_edges", "opening_kernel", "opening_iterations",
                   "crop_inclusive", "empty_opening", "image_size", "slice_order")
INFERENCE_YML = "inference.yml"
#: ``Infer`` keys that belong to the machine a model is deployed on, not to the model: left out of ``inference.yml``
#: (and ignored there when an older export has them), so deploy/python/predict.py takes them from its flags or the
#: schema defaults — an export made with TensorRT or fp16 on a GPU still runs on a CPU or with onnxruntime
DEPLOYMENT_KEYS = ("precision", "trt", "trt_max_slices", "trt_opt_slices", "trt_workspace_mb", "trt_cache_dir")


def _paddle_wrapper(model: Any):
    import paddle

    class SigmoidWrapper(paddle.nn.Layer):
        """eval-mode model + sigmoid: ``images [B, S, 3, H, W]`` -> probabilities ``[B, S, 6]``."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images):
            out = self.net(images, None)
            if isinstance(out, dict):
                out = out["logits"]
            return paddle.nn.functional.sigmoid(out)

    return SigmoidWrapper(model)


def export_paddle(model: Any, save_dir: str, image_size: int, prefix: str = "inference") -> Dict[str, str]:
    """``paddle.jit.to_static`` + ``paddle.jit.save`` of :func:`~ppihd.engine.export_kernels.prepare_for_cpu`'s
    fp32 form of ``model``, with ``InputSpec([1, None, 3, H, W], float32)``.

    Returns ``{"model_file", "params_file"}`` (``.json`` on Paddle 3, ``.pdmodel`` on Paddle 2.6).
    """
    from paddle.static import InputSpec

    from .export_kernels import prepare_for_cpu

    spec = [InputSpec(shape=[1, None, 3, int(image_size), int(image_size)], dtype="float32", name="images")]
    return _jit_save(_paddle_wrapper(prepare_for_cpu(model, "fp32")), spec, save_dir, prefix)


#: file prefixes of the two programs of the bf16 deployment (:func:`export_paddle_bf16`)
BF16_STEM, BF16_BODY = "inference_stem", "inference_body"


def export_paddle_bf16(model: Any, save_dir: str, image_size: int, bf16_kernels: bool = True) -> Dict[str, str]:
    """The model as two programs for ``PaddleInferenceBackend(precision="bf16")`` (``--precision bf16``):

    - ``inference_stem``: ``images [1, S, 3, H, W]`` -> patch-embedding tokens ``[S, L, C]``, run in fp32;
    - ``inference_body``: tokens ``[S, L, C]`` -> probabilities ``[1, S, 6]``, run in oneDNN bf16.

    Why two: Paddle Inference's bf16 passes put every eligible op in bf16 and take no per-op exclusions, and
    bf16 on the raw [0, 1] image and the first convolution moved a trained model's probabilities by up to 0.49;
    with the stem in fp32 the same model stays within 0.01 (docs/benchmarks.md, "Below fp32"). The stem is
    < 1 % of the FLOPs. ``bf16_kernels`` (``Export.bf16_kernels``): trace the body in ``prepare_for_cpu``'s
    ``bf16`` form (key-major attention scores, one-hot permutations of small grids: exact, ~12 % faster in bf16);
    False traces its ``fp32`` form (for A/B). Returns ``{"stem_model_file", "stem_params_file",
    "body_model_file", "body_params_file"}``.
    """
    import paddle
    from paddle.static import InputSpec

    from .export_kernels import prepare_for_cpu

    net = prepare_for_cpu(model, "bf16" if bf16_kernels else "fp32")
    size = int(image_size)
    h, w = net.backbone.stage_shapes(size, size)[0]
    dim, feats = int(net.backbone.embed_dim), int(net.num_features)

    class Stem(paddle.nn.Layer):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images):  # [1, S, 3, H, W] -> tokens [S, L, C]
            return self.net.backbone.patch_embed(images.reshape([-1] + list(images.shape[2:])))[0]

    class Body(paddle.nn.Layer):
        def __init__(self, net, grid_h: int, grid_w: int, feats: int):
            super().__init__()
            # attributes: Paddle 2.6's dy2static does not see a closure's variables
            self.net, self.grid_h, self.grid_w, self.feats = net, grid_h, grid_w, feats

        def forward(self, tokens):  # tokens [S, L, C] of one series -> probabilities [1, S, 6]
            f = self.net.backbone.forward_tokens(tokens, self.grid_h, self.grid_w).reshape([1, -1, self.feats])
            return paddle.nn.functional.sigmoid(self.net.series_logits(f))

    files = {}
    for key, prefix, layer, spec in (
            ("stem", BF16_STEM, Stem(net), InputSpec([1, None, 3, size, size], "float32", name="images")),
            ("body", BF16_BODY, Body(net, h, w, feats), InputSpec([None, h * w, dim], "float32", name="tokens"))):
        out = _jit_save(layer, [spec], save_dir, prefix)
        files[f"{key}_model_file"], files[f"{key}_params_file"] = out["model_file"], out["params_file"]
    return files


def _jit_save(layer: Any, spec: list, save_dir: str, prefix: str) -> Dict[str, str]:
    import paddle

    layer.eval()
    try:  # Paddle 3: full_graph=True (AST) honours input_spec; SOT (the 3.x default) ignores it
        static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
    except TypeError:  # pragma: no cover - Paddle 2.6 without the keyword
        static = paddle.jit.to_static(layer, input_spec=spec)
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, prefix)
    for ext in (".json", ".pdmodel", ".pdiparams", ".pdiparams.info", ".onnx"):  # no stale other-format files
        if os.path.isfile(path + ext):
            os.remove(path + ext)
    paddle.jit.save(static, path)
    for ext in (".json", ".pdmodel"):
        if os.path.isfile(path + ext):
            return {"model_file": path + ext, "params_file": path + ".pdiparams"}
    raise RuntimeError(f"paddle.jit.save wrote neither {path}.json nor {path}.pdmodel")


def export_onnx(model_file: str, params_file: str, save_file: str, opset_version: int = 13) -> str:
    """Convert the exported Paddle model with the ``paddle2onnx`` CLI (``--optimize_tool None`` so it never
    pip-installs anything at run time). Returns ``save_file``."""
    exe = os.path.join(os.path.dirname(sys.executable), "paddle2onnx")
    cmd = [exe if os.path.isfile(exe) else "paddle2onnx",
           "--model_dir", os.path.dirname(model_file) or ".",
           "--model_filename", os.path.basename(model_file),
           "--params_filename", os.path.basename(params_file),
           "--save_file", save_file,
           "--opset_version", str(int(opset_version)),
           "--optimize_tool", "None"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError("Export.onnx=True needs paddle2onnx (pip install paddle2onnx onnxruntime)") from e
    if res.returncode != 0 or not os.path.isfile(save_file):
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"paddle2onnx failed (exit {res.returncode}):\n{tail}")
    return save_file


def inference_meta(cfg: Mapping[str, Any], files: Mapping[str, str]) -> Dict[str, Any]:
    """The content of ``inference.yml``."""
    import numpy as np
    import paddle

    data = cfg["Data"]
    size = int(data["image_size"])
    return {
        "ppihd_version": ppihd.__version__,
        "paddle_version": paddle.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "model_format": "pir-json" if files["model_file"].endswith(".json") else "pdmodel",
        "files": {k: os.path.basename(v) for k, v in files.items()},
        "arch": {"name": cfg["Arch"]["name"], "backbone": cfg["Arch"]["backbone"]["name"],
                 "variant": cfg["Arch"]["backbone"]["variant"], "post_norm": cfg["Arch"]["backbone"]["post_norm"],
                 "inter_slice": cfg["Arch"]["inter_slice"], "deep_supervision": cfg["Arch"]["deep_supervision"]},
        "pretrained_model": cfg["Global"]["pretrained_model"],
        # what the weights were trained on (their checkpoint manifest; None = no record beside them)
        "Provenance": provenance_of_weights(cfg["Global"]["pretrained_model"]),
        "Preprocess": {k: data[k] for k in PREPROCESS_KEYS if k in data},
        "input": {"name": "images", "shape": [1, -1, 3, size, size], "dtype": "float32",
                  "layout": "[1, S, 3, H, W]: one series, S slices in Preprocess.slice_order, channels in "
                            "Preprocess.windows order, uint8 / 255 (no mean/std)", "range": [0.0, 1.0]},
        "output": {"shape": [1, -1, len(LABELS)], "dtype": "float32", "activation": "sigmoid",
                   "meaning": "per-slice probabilities in label order"},
        "labels": list(LABELS),
        "Infer": model_infer_settings(cfg["Infer"]),
    }


def model_infer_settings(infer: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``Infer`` settings that travel with an exported model: all but :data:`DEPLOYMENT_KEYS`."""
    return {k: v for k, v in infer.items() if k not in DEPLOYMENT_KEYS}


def write_inference_yml(save_dir: str, meta: Mapping[str, Any]) -> str:
    path = os.path.join(save_dir, INFERENCE_YML)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("# Written by tools/export_model.py: everything deploy/python/predict.py needs besides the model.\n")
        yaml.safe_dump(dict(meta), f, sort_keys=False, default_flow_style=None)
    return path


def read_inference_yml(model_dir: str) -> Dict[str, Any]:
    """Load ``inference.yml`` and check it has what the predictor needs."""
    path = os.path.join(model_dir, INFERENCE_YML)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: --model_dir must be a folder written by tools/export_model.py")
    with open(path, "r", encoding="utf-8") as f:
        meta = yaml.safe_load(f) or {}
    for key in ("Preprocess", "labels", "input"):
        if key not in meta:
            raise ValueError(f"{path}: key '{key}' missing; re-export with tools/export_model.py")
    if list(meta["labels"]) != list(LABELS):
        raise ValueError(f"{path}: labels {meta['labels']} differ from ppihd.LABELS {list(LABELS)}")
    return meta


def export_model(model: Any, cfg: Mapping[str, Any], save_dir: Optional[str] = None,
                 onnx: Optional[bool] = None) -> Dict[str, str]:
    """Export ``model`` (already holding its weights) with the settings of ``cfg``.

    Returns the written files: ``model_file``, ``params_file``, ``inference_yml`` and ``onnx_file`` (if asked).
    """
    save_dir = save_dir or cfg["Global"]["save_inference_dir"]
    size = int(cfg["Data"]["image_size"])
    files = export_paddle(model, save_dir, size)
    if cfg["Export"]["bf16"]:
        files.update(export_paddle_bf16(model, save_dir, size, bool(cfg["Export"]["bf16_kernels"])))
    if cfg["Export"]["npz"]:   # the dygraph weights in a format that is not a pickle (safe to share)
        from ppihd.utils.checkpoint import save_weights_npz

        files["npz_file"] = save_weights_npz(model, os.path.join(save_dir, "weights.npz"))
    want_onnx = cfg["Export"]["onnx"] if onnx is None else onnx
    if want_onnx:
        files["onnx_file"] = export_onnx(files["model_file"], files["params_file"],
                                         os.path.join(save_dir, "inference.onnx"),
                                         cfg["Export"]["opset_version"])
    files["inference_yml"] = write_inference_yml(save_dir, inference_meta(cfg, files))
    return files
