"""Config sections for tests that call a library function with one section: built from the schema (through
``load_config``, so every key is present and each replaced value is checked against the schema)."""
from __future__ import annotations

import json
from typing import Any, Dict

from ppihd.utils.config import load_config


def schema_section(section: str, /, **values: Any) -> Dict[str, Any]:
    """The resolved section ``section`` (dotted, e.g. ``"Data"``, ``"DataLoader.Train"``) of the schema defaults with
    ``values`` replaced, e.g. ``schema_section("Data", image_size=64)``."""
    node: Any = load_config(None, [f"{section}.{k}={json.dumps(v)}" for k, v in values.items()])
    for part in section.split("."):
        node = node[part]
    return node
