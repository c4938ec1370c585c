"""PaddleClas-style YAML configs with ``_base_`` inheritance, strict keys and safe ``-o`` overrides.

    cfg = load_config("configs/swin_b_seq.yaml", overrides=["Global.iters=10", "Arch.backbone.variant=tiny"])
    cfg["Global"]["iters"]  # -> 10

Every key must be declared in :data:`ppihd.utils.schema.DEFAULTS`; unknown keys fail with an error naming
the key and the nearest known keys. Override values are parsed with ``yaml.safe_load`` (never ``eval``).
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import yaml

from .schema import DEFAULTS, NULLABLE_TYPES, OPEN_SECTIONS
from .fileio import atomic_path

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Return ``base`` updated recursively by ``update`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_with_bases(path: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    path = os.path.abspath(path)
    seen = list(_seen or [])
    if path in seen:
        raise ConfigError(f"circular _base_ chain: {' -> '.join(seen + [path])}")
    seen.append(path)
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    merged: Dict[str, Any] = {}
    for b in bases:
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        merged = deep_merge(merged, _load_with_bases(bpath, seen))
    return deep_merge(merged, data)


def config_files(path: str) -> List[str]:
    """The absolute paths of a config and of every file in its ``_base_`` chain (the config first)."""
    path = os.path.abspath(path)
    out = [path]
    bases = _read_yaml(path).get(BASE_KEY) or []
    for b in [bases] if isinstance(bases, str) else bases:
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        out += [f for f in config_files(bpath) if f not in out]
    return out


def is_demo_config(path: Optional[str]) -> bool:
    """True for the CPU demo configs: the file or one of its ``_base_`` files lies in a ``configs/demo`` folder
    (``configs/demo/swin_micro_seq.yaml``, ``configs/fixmatch/demo_micro_fixmatch.yaml``)."""
    if not path:
        return False
    return any(os.path.basename(os.path.dirname(f)) == "demo"
               and os.path.basename(os.path.dirname(os.path.dirname(f))) == "configs" for f in config_files(path))


def _known_paths(tree: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k, v in tree.items():
        p = f"{prefix}{k}"
        out.append(p)
        if isinstance(v, dict):
            out.extend(_known_paths(v, p + "."))
    return out


def _nearest(key: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    if not close:  # fall back to siblings of the deepest known parent
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        close = [c for c in candidates if c.rsplit(".", 1)[0] == parent][:8] if parent else []
    return ", ".join(close) if close else "(none close)"


def _is_open(path: str) -> bool:
    return any(path == s or path.startswith(s + ".") for s in OPEN_SECTIONS)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _scalar_ok(kind: type, value: Any) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _nullable_ok(spec: Any, value: Any) -> bool:
    """``value`` fits a :data:`~ppihd.utils.schema.NULLABLE_TYPES` entry."""
    if isinstance(spec, tuple):
        return isinstance(value, (list, tuple)) and all(_scalar_ok(spec[1], v) for v in value)
    return _scalar_ok(spec, value)


def _describe(spec: Any) -> str:
    return f"a list of {spec[1].__name__}" if isinstance(spec, tuple) else ("a number" if spec is float
                                                                             else spec.__name__)


def validate(cfg: Mapping[str, Any], schema: Mapping[str, Any] = DEFAULTS, source: str = "config") -> None:
    """Raise :class:`ConfigError` for any key not in the schema or any value of the wrong type."""
    known = _known_paths(schema)

    def walk(node: Mapping[str, Any], sch: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            path = f"{prefix}{k}"
            if _is_open(prefix.rstrip(".")) and prefix:
                continue
            if k not in sch:
                raise ConfigError(f"{source}: unknown key '{path}'; nearest known keys: {_nearest(path, known)}")
            d = sch[k]
            if isinstance(d, dict) and not _is_open(path):
                if not isinstance(v, Mapping):
                    raise ConfigError(f"{source}: '{path}' must be a mapping with keys {sorted(d)}, got {v!r}")
                walk(v, d, path + ".")
            elif d is None and v is not None and path in NULLABLE_TYPES and not _nullable_ok(NULLABLE_TYPES[path], v):
                raise ConfigError(f"{source}: '{path}' expects {_describe(NULLABLE_TYPES[path])} or null "
                                  f"(default null), got {type(v).__name__} {v!r}")
            elif not _type_ok(d, v):
                raise ConfigError(
                    f"{source}: '{path}' expects {type(d).__name__} (default {d!r}), got {type(v).__name__} {v!r}")

    walk(cfg, schema, "")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(item: str) -> Dict[str, Any]:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed with ``yaml.safe_load``."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like Section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{item}': empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)   # YAML 1.1 reads "1e-3" (no dot) as a string; a user means the number
    node: Dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return node


def load_config(path: Optional[str] = None, overrides: Optional[Iterable[str]] = None,
                validate_keys: bool = True) -> Dict[str, Any]:
    """Load a config (with its ``_base_`` chain), apply overrides, fill defaults and validate.

    Returns a plain nested dict whose every key is declared in the schema.
    """
    user: Dict[str, Any] = _load_with_bases(path) if path else {}
    if validate_keys:
        validate(user, source=path or "config")
    for item in overrides or []:
        ov = parse_override(item)
        if validate_keys:
            validate(ov, source=f"override -o {item}")
        user = deep_merge(user, ov)
    cfg = deep_merge(DEFAULTS, user)
    cfg["_source_"] = os.path.abspath(path) if path else None
    return cfg


def save_config(cfg: Mapping[str, Any], path: str) -> str:
    """Write the resolved config as YAML (atomically). Returns the path written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(dict(cfg), f, sort_keys=False, default_flow_style=None)
    return path
