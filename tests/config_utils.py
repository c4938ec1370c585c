"""Config sections for tests that call a library function with one section: built from the schema (through
``load_config``, so every key is present and each replaced value is checked against the schema)."""
from __future__ import annotations

import json
from typing import Any, Dict

from ppihd.utils.config import load_config


def schema_section(name: str, **values: Any) -> Dict[str, Any]:
    """The resolved section ``name`` (dotted, e.g. ``"Data"``, ``"DataLoader.Train"``) of the schema defaults with
    ``values`` replaced, e.g. ``schema_section("Data", image_size=64)``."""
    node: Any = load_config(None, [f"{name}.{k}={json.dumps(v)}" for k, v in values.items()])
    for part in name.split("."):
        node = node[part]
    return node
