"""Atomic training checkpoints: a kill -9 at any moment leaves the previous or the new one loadable.

A checkpoint named by a prefix ``<dir>/<name>`` (``latest``, ``best_model``) consists of::

    <name>.json                 manifest, written LAST (tmp + os.replace): iteration, best metric, file names
    <name>.<iter>.pdparams      model weights                     \\
    <name>.<iter>.pdopt         optimizer state (incl. LR scheduler) } versioned payload, each tmp + os.replace
    <name>.<iter>.pdstate       iteration, best metric, RNG states, } before the manifest points at it
                                resolved config, history (pickle)  /
    <name>.pdparams             the same weights under a stable name (atomic hard link / copy), for
                                ``-o Global.pretrained_model=<dir>/<name>`` in infer / export / eval

Payload files of older iterations are deleted only after the new manifest is in place. Loading reads the
manifest, so it never sees a half-written payload; a prefix without a manifest is an error naming the files.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import random
import shutil
import time
from typing import Any, Dict, Mapping, Optional

import numpy as np

from .fileio import atomic_path

MANIFEST_VERSION = 1


def _atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_paddle_save(obj: Any, path: str) -> None:
    import paddle

    with atomic_path(path) as tmp:
        paddle.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def _atomic_link(src: str, dst: str) -> None:
    with atomic_path(dst) as tmp:
        if os.path.lexists(tmp):
            os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(src, tmp)


def strip_prefix(path: str) -> str:
    """``out/latest``, ``out/latest.json`` and ``out/latest.pdparams`` all name the prefix ``out/latest``."""
    for ext in (".json", ".pdparams", ".pdopt", ".pdstate"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def rng_states() -> Dict[str, Any]:
    """Python, numpy and paddle global RNG states (picklable)."""
    import paddle

    return {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}


def set_rng_states(states: Mapping[str, Any]) -> None:
    import paddle

    if "python" in states:
        random.setstate(states["python"])
    if "numpy" in states:
        np.random.set_state(states["numpy"])
    if "paddle" in states:
        try:
            paddle.set_rng_state(states["paddle"])
        except Exception:  # a different device (GPU checkpoint on CPU): keep going, per-iteration reseed rules
            pass


def _param_names(model: Any) -> Dict[str, str]:
    """Runtime parameter name (``linear_3.w_0``, differs between processes) -> structured name (``head2.weight``)."""
    return {prm.name: k for k, prm in model.named_parameters()}


def portable_optimizer_state(opt_state: Mapping[str, Any], model: Any) -> Dict[str, Any]:
    """Re-key optimizer accumulators (``<param.name>_velocity_0``) by structured parameter names, so a new
    model instance (whose runtime names differ) can load them."""
    names = sorted(_param_names(model).items(), key=lambda kv: -len(kv[0]))
    out: Dict[str, Any] = {}
    for key, val in opt_state.items():
        new = key
        for rt, st in names:
            if key.startswith(rt + "_"):
                new = "@param:" + st + "@" + key[len(rt):]
                break
        out[new] = val
    return out


def restore_optimizer_state(state: Mapping[str, Any], model: Any) -> Dict[str, Any]:
    """Inverse of :func:`portable_optimizer_state` for this model instance."""
    back = {st: rt for rt, st in _param_names(model).items()}
    out: Dict[str, Any] = {}
    for key, val in state.items():
        if key.startswith("@param:"):
            st, rest = key[len("@param:"):].split("@", 1)
            if st not in back:
                raise ValueError(f"optimizer state names parameter '{st}' that the model does not have")
            key = back[st] + rest
        out[key] = val
    return out


def save_checkpoint(prefix: str, model: Any, optimizer: Any = None, scheduler: Any = None,
                    iteration: int = 0, best_metric: Optional[float] = None, best_iter: Optional[int] = None,
                    config: Optional[Mapping[str, Any]] = None, extra: Optional[Mapping[str, Any]] = None,
                    provenance: Optional[Mapping[str, Any]] = None) -> str:
    """Save model / optimizer / scheduler / state under ``prefix`` atomically. Returns the manifest path.
    ``provenance`` (:func:`ppihd.utils.provenance.training_provenance`) goes into the JSON manifest, readable
    without unpickling anything. A save that fails part-way (a full disk) removes what it had written, so the
    previous checkpoint stays the one in use and no orphan payload keeps the disk full."""
    d, name = os.path.split(os.path.abspath(prefix))
    os.makedirs(d, exist_ok=True)
    tag = f"{name}.{int(iteration):08d}"
    files = {"model": f"{tag}.pdparams", "state": f"{tag}.pdstate"}
    if optimizer is not None:
        files["optimizer"] = f"{tag}.pdopt"
    previous = _manifest_files(d, name)
    try:
        _atomic_paddle_save(model.state_dict(), os.path.join(d, files["model"]))
        if optimizer is not None:
            _atomic_paddle_save(portable_optimizer_state(optimizer.state_dict(), model),
                                os.path.join(d, files["optimizer"]))
        state = {"iteration": int(iteration), "best_metric": best_metric, "best_iter": best_iter,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "rng": rng_states(), "config": dict(config) if config is not None else None,
                 "extra": dict(extra or {})}
        _atomic_write_bytes(os.path.join(d, files["state"]), pickle.dumps(state, protocol=4))
        sizes = {k: os.path.getsize(os.path.join(d, v)) for k, v in files.items()}
        manifest = {"version": MANIFEST_VERSION, "iteration": int(iteration), "best_metric": best_metric,
                    "best_iter": best_iter, "files": files, "sizes": sizes, "time": time.time(),
                    "provenance": dict(provenance) if provenance else None}
        mpath = os.path.join(d, f"{name}.json")
        _atomic_write_bytes(mpath, json.dumps(manifest, indent=1).encode())
    except BaseException:
        for f in set(files.values()) - previous:   # this save's payloads; the previous manifest's stay
            try:
                os.remove(os.path.join(d, f))
            except OSError:
                pass
        raise
    _atomic_link(os.path.join(d, files["model"]), os.path.join(d, f"{name}.pdparams"))
    keep = set(files.values())
    for f in glob.glob(os.path.join(d, f"{name}.[0-9]*.*")):
        if os.path.basename(f) not in keep:
            try:
                os.remove(f)
            except OSError:
                pass
    return mpath


def _manifest_files(d: str, name: str) -> set:
    """The payload files the current manifest of ``<d>/<name>`` names (empty when there is none)."""
    try:
        with open(os.path.join(d, f"{name}.json"), encoding="utf-8") as f:
            return set(json.load(f).get("files", {}).values())
    except (OSError, ValueError, AttributeError):
        return set()


def read_manifest(prefix: str) -> Dict[str, Any]:
    """The manifest of checkpoint ``prefix``; raises with what was expected if it is absent or broken."""
    prefix = strip_prefix(prefix)
    mpath = prefix + ".json"
    if not os.path.isfile(mpath):
        raise FileNotFoundError(f"Global.checkpoints={prefix}: no manifest {mpath} (expected a checkpoint written by "
                                "tools/train.py, e.g. <output_dir>/latest)")
    with open(mpath, "r", encoding="utf-8") as f:
        try:
            m = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath}: corrupt checkpoint manifest: {e}") from e
    d = os.path.dirname(os.path.abspath(mpath))
    for k, v in m.get("files", {}).items():
        p = os.path.join(d, v)
        if not os.path.isfile(p) or os.path.getsize(p) != m["sizes"][k]:
            raise ValueError(f"{mpath}: {k} file {p} is missing or has the wrong size")
    m["dir"] = d
    return m


def load_checkpoint(prefix: str, model: Any, optimizer: Any = None, scheduler: Any = None,
                    restore_rng: bool = True) -> Dict[str, Any]:
    """Restore a checkpoint in place; returns its state dict (``iteration``, ``best_metric``, ``config``, ...)."""
    import paddle

    m = read_manifest(prefix)
    d, files = m["dir"], m["files"]
    load_weights(model, os.path.join(d, files["model"]))
    if optimizer is not None and "optimizer" in files:
        optimizer.set_state_dict(restore_optimizer_state(paddle.load(os.path.join(d, files["optimizer"])), model))
    with open(os.path.join(d, files["state"]), "rb") as f:
        state = pickle.load(f)
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.set_state_dict(state["scheduler"])
    if restore_rng and state.get("rng"):
        set_rng_states(state["rng"])
    return state


def save_weights_npz(model: Any, path: str) -> str:
    """The model's weights as a numpy ``.npz`` (one float array per state-dict key): a format that loads with
    ``allow_pickle=False``, so it can come from anyone (a ``.pdparams`` is a pickle: docs/inference.md)."""
    arrays = {k: np.asarray(v.numpy()) for k, v in model.state_dict().items()}
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def load_weights(model: Any, path: str, strict: bool = True) -> Dict[str, Any]:
    """Load model weights from a ``.pdparams`` file, its prefix, a checkpoint prefix / manifest, or a ``.npz``
    of :func:`save_weights_npz`.

    A ``.pdparams`` (and a checkpoint) is a Python pickle: loading it can run code, so load only files from a
    source you trust; a ``.npz`` is read with ``allow_pickle=False`` (plain arrays only).
    Accepts a plain state dict or one nested under ``model`` / ``state_dict``. ``strict`` raises on missing keys
    (naming the file and a few keys); unexpected keys are reported in the returned ``{"missing", "unexpected"}``.
    """
    import paddle

    p = str(path)
    if p.endswith(".npz"):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{path}: weights not found")
        try:
            with np.load(p, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(f"{p}: not a plain-array .npz ({e})") from None
        return _set_weights(model, state, p, strict)
    if not os.path.isfile(p) and os.path.isfile(p + ".pdparams"):
        p = p + ".pdparams"
    elif p.endswith(".json") and os.path.isfile(p):
        m = read_manifest(p)
        p = os.path.join(m["dir"], m["files"]["model"])
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{path}: weights not found (expected a .pdparams file or a checkpoint prefix "
                                "written by tools/train.py, e.g. output/demo/best_model)")
    state = paddle.load(p)
    for k in ("model", "state_dict"):
        if isinstance(state, dict) and k in state and isinstance(state[k], dict):
            state = state[k]
    return _set_weights(model, state, p, strict)


def _set_weights(model: Any, state: Mapping[str, Any], p: str, strict: bool) -> Dict[str, Any]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and list(state[k].shape) != list(own[k].shape)]
    if strict and (missing or shape_bad):
        raise ValueError(f"{p}: weights do not fit the model (missing {len(missing)} keys, e.g. {missing[:4]}; "
                         f"shape mismatch {shape_bad[:4]}); check Arch (e.g. Arch.backbone.variant)")
    model.set_state_dict({k: v for k, v in state.items() if k in own and k not in shape_bad})
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": shape_bad}
