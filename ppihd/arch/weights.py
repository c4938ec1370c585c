"""Pretrained-weight loading: PaddleClas Swin ``.pdparams``, converted timm / official Swin, our checkpoints.

Users download ImageNet weights themselves (the package never downloads), e.g. PaddleClas's
``SwinTransformer_base_patch4_window7_224_pretrained.pdparams`` (see docs/model.md), and point
``Arch.pretrained`` at the file. Torch checkpoints are converted once with ``tools/convert_weights.py``
(:func:`convert_torch_swin` does the name/layout mapping on numpy arrays; torch is needed only to read
``.pth`` files).

Every load returns a :class:`LoadReport` (loaded / missing / unexpected / reshaped / ignored keys) and
fails with :class:`WeightLoadError` naming the keys when a weight the model needs is missing or has an
incompatible shape.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F



def _log(report: "LoadReport") -> None:
    from ppihd.utils.env import get_logger  # a stream handler, so the report is shown without set-up
    get_logger("ppihd").info("%s", report)

#: Buffers other Swin implementations save in their state dicts; ours rebuilds them, so they are ignored.
BUFFER_SUFFIXES = ("relative_position_index", "attn_mask", "relative_coords_table")
#: Keys of the ImageNet classifier (PaddleClas ``head``, timm >= 0.9 ``head.fc``).
CLASSIFIER_PREFIXES = ("head.",)

StateLike = Union[str, os.PathLike, Mapping[str, Any]]


class WeightLoadError(RuntimeError):
    """A weight file that does not fit the model (names the file and the keys)."""


@dataclass
class LoadReport:
    """What happened to every key of a load."""

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)        # model keys absent from the file
    unexpected: List[str] = field(default_factory=list)     # file keys the model does not have
    reshaped: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)        # buffers, classifier, other parts of a checkpoint

    def __str__(self) -> str:
        lines = [f"weights {self.source}: {len(self.loaded)} loaded, {len(self.reshaped)} reshaped, "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.ignored)} ignored"]
        for k, old, new in self.reshaped:
            lines.append(f"  reshaped   {k}: {list(old)} -> {list(new)}")
        for k in self.missing:
            lines.append(f"  missing    {k}")
        for k in self.unexpected:
            lines.append(f"  unexpected {k}")
        if self.ignored:
            shown = ", ".join(self.ignored[:6]) + (" ..." if len(self.ignored) > 6 else "")
            lines.append(f"  ignored    {shown}")
        return "\n".join(lines)


def _to_numpy(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, paddle.Tensor):
        return v.numpy()
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor
        return v.detach().cpu().numpy()
    return v


def read_state_dict(src: StateLike) -> Tuple[Dict[str, np.ndarray], str]:
    """Read a ``.pdparams`` (or take a mapping) and return (flat ``{key: ndarray}``, source name).

    A training checkpoint ``{"model": state_dict, ...}`` (or ``"state_dict"``) is unwrapped.
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise WeightLoadError(f"weight file not found: {path} (download it yourself; see docs/model.md)")
        try:
            state = paddle.load(path)
        except Exception as e:  # noqa: BLE001 - report any unreadable file clearly
            raise WeightLoadError(f"{path}: cannot be read by paddle.load ({type(e).__name__}: {e}); "
                                  "torch checkpoints must be converted with tools/convert_weights.py") from e
        name = path
    else:
        state, name = src, "<state dict>"
    if not isinstance(state, Mapping):
        raise WeightLoadError(f"{name}: expected a dict of weights, got {type(state).__name__}")
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    out: Dict[str, np.ndarray] = {}
    for k, v in state.items():
        a = _to_numpy(v)
        if isinstance(a, np.ndarray):
            out[str(k)] = a
    if not out:
        raise WeightLoadError(f"{name}: no array entries found")
    return out, name


def resize_relative_position_table(table: np.ndarray, window: int) -> np.ndarray:
    """``[(2w0-1)^2, heads]`` -> ``[(2w-1)^2, heads]``, bicubic on the ``(2w-1) x (2w-1)`` offset grid."""
    n_old, heads = table.shape
    s_old = int(round(np.sqrt(n_old)))
    if s_old * s_old != n_old:
        raise WeightLoadError(f"relative-position table with {n_old} rows is not a square grid")
    s_new = 2 * window - 1
    if s_new == s_old:
        return table
    grid = paddle.to_tensor(table.T.reshape(1, heads, s_old, s_old).astype("float32"))
    res = F.interpolate(grid, size=[s_new, s_new], mode="bicubic", align_corners=False)
    return res.numpy().reshape(heads, s_new * s_new).T.astype(table.dtype)


def _is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in BUFFER_SUFFIXES


def _assign(model: nn.Layer, src: Dict[str, np.ndarray], report: LoadReport,
            window_of: Optional[Dict[str, int]] = None) -> None:
    """Copy arrays into the model's parameters by name, resizing relative-position tables."""
    target = model.state_dict()
    bad: List[str] = []
    for k, p in target.items():
        if k not in src:
            report.missing.append(k)
            continue
        a = src.pop(k)
        want = tuple(p.shape)
        if tuple(a.shape) != want:
            if k.endswith("relative_position_bias_table") and a.ndim == 2 and a.shape[1] == want[1]:
                w = int(round((np.sqrt(want[0]) + 1) / 2))
                report.reshaped.append((k, tuple(a.shape), want))
                a = resize_relative_position_table(a, w)
            else:
                bad.append(f"{k}: file {list(a.shape)} vs model {list(want)}")
                continue
        t = paddle.to_tensor(a)
        p.set_value(t if t.dtype == p.dtype else t.astype(p.dtype))
        report.loaded.append(k)
    if bad:
        raise WeightLoadError(f"{report.source}: shape mismatch for {len(bad)} key(s): " + "; ".join(bad[:10]))


def _drop_keys(state: Dict[str, Any], report: "LoadReport", drop) -> None:
    """Remove the keys for which ``drop(key)`` is true from ``state``, listing them as ignored."""
    for k in [k for k in state if drop(k)]:
        report.ignored.append(k)
        state.pop(k)


def load_backbone_pretrained(backbone: nn.Layer, src: StateLike, log: bool = True) -> LoadReport:
    """Load ImageNet weights into a :class:`SwinTransformer` backbone.

    Accepts PaddleClas names (``patch_embed.proj.weight``, ``layers.0.blocks.0.attn.qkv.weight`` ...) or our
    IHDNet names (``backbone.`` prefix; the other parts are ignored). Buffers are ignored, the classifier
    ``head.*`` is ignored unless the backbone has one of the same shape, relative-position tables are
    resized when the window differs. Raises :class:`WeightLoadError` listing missing backbone weights.
    """
    state, name = read_state_dict(src)
    report = LoadReport(source=name)
    if any(k.startswith("backbone.") for k in state):
        picked = {}
        for k, v in state.items():
            if k.startswith("backbone."):
                picked[k[len("backbone."):]] = v
            else:
                report.ignored.append(k)
        state = picked
    drop_head = getattr(backbone, "head", None) is None
    _drop_keys(state, report, lambda k: _is_buffer(k) or (drop_head and k.startswith(CLASSIFIER_PREFIXES)))
    _assign(backbone, state, report)
    report.unexpected.extend(sorted(state))
    if log:
        _log(report)
    if report.missing:
        raise WeightLoadError(f"{name}: {len(report.missing)} backbone weight(s) missing, e.g. "
                              f"{', '.join(report.missing[:8])}. Is this a Swin checkpoint with PaddleClas names "
                              f"of the same variant? (torch checkpoints: tools/convert_weights.py)\n{report}")
    return report


def load_model_weights(model: nn.Layer, src: StateLike, strict: bool = True, log: bool = True) -> LoadReport:
    """Load our own checkpoint (an IHDNet state dict or a training checkpoint with a ``model`` entry).

    A file with only backbone keys (PaddleClas names) is loaded into ``model.backbone`` instead.
    ``strict``: raise on missing or unexpected keys (relative-position tables may still be resized).
    """
    state, name = read_state_dict(src)
    own = set(model.state_dict())
    if hasattr(model, "backbone") and not (own & set(state)) and any(k.startswith("layers.") for k in state):
        return load_backbone_pretrained(model.backbone, state, log=log)
    report = LoadReport(source=name)
    _drop_keys(state, report, _is_buffer)
    _assign(model, state, report)
    report.unexpected.extend(sorted(state))
    if log:
        _log(report)
    if strict and (report.missing or report.unexpected):
        raise WeightLoadError(f"{name} does not match the model (Arch config differs?): "
                              f"missing {report.missing[:8]}, unexpected {report.unexpected[:8]}\n{report}")
    return report


# ---------------------------------------------------------------------------------------------- torch / timm
_LINEAR_RE = re.compile(r"(\.qkv|\.proj|\.fc1|\.fc2|\.reduction|^head|^head\.fc)\.weight$")


def convert_torch_swin(state: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Map an official (Microsoft) or timm Swin v1 state dict (numpy or torch arrays) to PaddleClas names.

    * Linear weights are transposed (torch ``[out, in]`` -> paddle ``[in, out]``); conv / norm / tables kept.
    * timm >= 0.9 puts PatchMerging at the start of stages 1..3 (``layers.{i}.downsample``): moved to the
      end of the previous stage (``layers.{i-1}.downsample``), as PaddleClas and the official code have it.
      (Both use the same 2x2 channel order, so the reduction weights need no permutation.)
    * ``head.fc.*`` (timm >= 0.9) -> ``head.*``; buffers (``relative_position_index``, ``attn_mask``) dropped.

    Returns (converted dict, notes describing what was done).
    """
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    arrays = {str(k): _to_numpy(v) for k, v in state.items()}
    arrays = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
    if any("cpb_mlp" in k or "logit_scale" in k for k in arrays):
        raise WeightLoadError("this is a Swin V2 checkpoint (cpb_mlp / logit_scale); only Swin v1 weights fit")
    notes: List[str] = []
    stages = sorted({int(m.group(1)) for k in arrays for m in [re.match(r"layers\.(\d+)\.", k)] if m})
    timm_new = bool(stages) and any(k.startswith("layers.0.downsample.") for k in arrays) is False and any(
        k.startswith(f"layers.{stages[-1]}.downsample.") for k in arrays)
    if timm_new:
        notes.append("timm>=0.9 layout: layers.{i}.downsample -> layers.{i-1}.downsample")
    out: Dict[str, np.ndarray] = {}
    dropped = 0
    for k, a in arrays.items():
        if _is_buffer(k):
            dropped += 1
            continue
        nk = k
        if timm_new:
            m = re.match(r"layers\.(\d+)\.downsample\.(.*)$", k)
            if m:
                nk = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        if nk.startswith("head.fc."):
            nk = "head." + nk[len("head.fc."):]
        if a.ndim == 2 and _LINEAR_RE.search(k):
            a = np.ascontiguousarray(a.T)
        out[nk] = a.astype(np.float32) if a.dtype in (np.float16, np.float64) else a
    notes.append(f"transposed linear weights; dropped {dropped} buffer(s)")
    return out, notes
