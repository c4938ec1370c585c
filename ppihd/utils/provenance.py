"""What a model was trained on, carried from training to every output (docs/inference.md, "Provenance").

A checkpoint's manifest (``<prefix>.json``, plain JSON beside the weights) holds ``provenance``:
:func:`training_provenance` at training time. The exporter copies it into ``inference.yml``; ``tools/infer.py``
and ``deploy/python/predict.py`` read it back (:func:`provenance_of_weights`), log it first, and write it into
``provenance.json``, every JSON, every picture's title, the SR and ``report.html``. A model trained on the
synthetic demo set says :data:`SYNTHETIC_LABEL` everywhere.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional

SYNTHETIC_LABEL = "synthetic phantoms — not for clinical use"
#: The file tools/make_demo_data.py writes into the root of a synthetic data set.
SYNTHETIC_MARKER = "synthetic.json"


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha1 (12 hex digits) of the resolved config, keys sorted, ``_source_`` left out."""
    body = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def training_provenance(cfg: Mapping[str, Any], num_series: Mapping[str, int]) -> Dict[str, Any]:
    """The record of a training run: data set (name, root, synthetic or not, series per split, pseudo-labels),
    the initial weights, the config hash, ppihd and Paddle versions, the date."""
    import paddle

    import ppihd

    data = cfg["Data"]
    root = os.path.abspath(str(data["root"]))
    synthetic = os.path.isfile(os.path.join(root, SYNTHETIC_MARKER))
    return {
        "dataset": os.path.basename(root.rstrip(os.sep)) or root, "data_root": root, "synthetic": synthetic,
        "num_series": {k: int(v) for k, v in num_series.items()},
        "pseudo_label_csv": data["pseudo_label_csv"],
        "initial_weights": cfg["Arch"]["pretrained"],
        "config_sha1": config_hash(cfg), "ppihd": ppihd.__version__, "paddle": paddle.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def provenance_of_weights(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The provenance in the manifest beside a weights file or checkpoint prefix (``best_model``,
    ``best_model.pdparams``, ``latest.json``), or None when there is none."""
    if not path:
        return None
    p = str(path)
    for suffix in (".pdparams", ".json", ".npz"):
        if p.endswith(suffix):
            p = p[: -len(suffix)]
    try:
        with open(p + ".json", encoding="utf-8") as f:
            return json.load(f).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None


def is_synthetic(prov: Optional[Mapping[str, Any]]) -> bool:
    return bool(prov and prov.get("synthetic"))


def describe(prov: Optional[Mapping[str, Any]]) -> str:
    """One line for logs, titles and reports."""
    if not prov:
        return "model of unknown provenance (no training record beside the weights)"
    n = prov.get("num_series") or {}
    counts = ", ".join(f"{v} {k}" for k, v in n.items())
    what = SYNTHETIC_LABEL if prov.get("synthetic") else f"data set {prov.get('dataset')}"
    return (f"trained on {what} ({counts} series; config {prov.get('config_sha1')}, ppihd {prov.get('ppihd')}, "
            f"paddle {prov.get('paddle')}, {str(prov.get('date', ''))[:10]})")
