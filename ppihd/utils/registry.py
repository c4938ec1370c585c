"""A tiny component registry in PaddleSeg's spirit.

    BACKBONES = Registry("backbone")

    @BACKBONES.register
    class SwinTransformer(nn.Layer): ...

    model = BACKBONES.build({"name": "SwinTransformer", "embed_dim": 96})
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional


class Registry:
    """Maps names to classes or factory functions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}

    def register(self, obj: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None):
        """Decorator (bare or with ``name=``) adding a class or function to the registry."""

        def _add(o: Callable[..., Any]) -> Callable[..., Any]:
            key = name or o.__name__
            if key in self._items and self._items[key] is not o:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            self._items[key] = o
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} '{name}'; known {self.kind}s: {known}")
        return self._items[name]

    def build(self, cfg: Mapping[str, Any], **extra: Any) -> Any:
        """Build from a dict whose ``name`` selects the component; other keys are kwargs."""
        if "name" not in cfg:
            raise KeyError(f"{self.kind} config needs a 'name' key, got keys {sorted(cfg)}")
        kwargs = {k: v for k, v in cfg.items() if k != "name"}
        kwargs.update(extra)
        return self.get(cfg["name"])(**kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self):
        return sorted(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {self.names()})"
