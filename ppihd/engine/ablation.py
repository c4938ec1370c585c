"""The paper's ablation (Table 3): train and score every row on one data set; write the table.

The rows are data: ``configs/ablation/<name>.yaml``, each its previous row (``_base_``) plus the component it adds,
with an ``Ablation`` section (the row's Table-3 label, the component, its description, the paper's private-LB log
loss). :func:`load_rows` reads them; :func:`run_ablation` applies each row's switches (the keys its chain of row files
sets) on top of a base config, so the same rows run with Swin-B on a GPU or with the micro backbone on a CPU.

Per row: build/resume the row's cache (rows without RBE use ``<cache>_norbe``), train with ``tools/train.py`` in a
subprocess, predict the cached test split with the row's ``best_model`` (:func:`ppihd.engine.evaluator.predict_dataset`)
and score it and the constant prior with :func:`ppihd.engine.evaluator.score_predictions`; the validation numbers
come from the training run's ``history.json``. A row whose config sets ``Data.pseudo_label_csv`` (FM) is trained on
pseudo-labels of the previous row's test predictions (:mod:`ppihd.postprocess.pseudo_label`). CLI: tools/run_ablation.py.
"""
from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import yaml

from .. import LABELS
from ..utils.config import ConfigError, config_files, deep_merge, load_config, save_config

#: the run-specific keys of a row file the runner sets itself instead of taking them from the row
RUNNER_KEYS = (("Global", "output_dir"), ("Data", "pseudo_label_csv"))


@dataclass
class Row:
    """One row of Table 3, read from its config file."""

    name: str                    # file stem, e.g. "05_pn"
    path: str
    label: str                   # Ablation.row, e.g. "+ PN"
    adds: Optional[str]          # Ablation.adds, e.g. "PN" (None: the first row)
    description: str
    paper: float                 # Ablation.paper_log_loss
    components: Tuple[str, ...]  # the components on: this row's and its base rows'
    switches: Dict[str, Any]     # what the row files of its chain set (without _base_ and RUNNER_KEYS)
    pseudo: bool                 # the row trains on pseudo-labels (it sets Data.pseudo_label_csv)


def _read(path: str) -> Dict[str, Any]:
    with open(path, "r", encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    data.pop("_base_", None)
    return data


def load_rows(folder: str) -> List[Row]:
    """The rows of ``folder`` (``*.yaml``, by file name). A file without ``Ablation.row`` / ``paper_log_loss`` is a
    :class:`ConfigError` naming it."""
    folder = os.path.abspath(folder)
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        ab = load_config(path)["Ablation"]
        if ab["row"] is None or ab["paper_log_loss"] is None:
            raise ConfigError(f"{path}: an ablation row needs Ablation.row and Ablation.paper_log_loss")
        chain = [f for f in config_files(path) if os.path.dirname(f) == folder][::-1]  # first row first
        raw = [_read(f) for f in chain]
        switches: Dict[str, Any] = {}
        for r in raw:
            switches = deep_merge(switches, r)
        pseudo = bool(switches.get("Data", {}).get("pseudo_label_csv"))
        for section, key in RUNNER_KEYS:
            switches.get(section, {}).pop(key, None)
            if switches.get(section) == {}:
                del switches[section]
        comps = tuple(r["Ablation"]["adds"] for r in raw if r.get("Ablation", {}).get("adds"))
        rows.append(Row(os.path.splitext(os.path.basename(path))[0], path, ab["row"], ab["adds"],
                        ab["description"] or "", float(ab["paper_log_loss"]), comps, switches, pseudo))
    if not rows:
        raise ConfigError(f"{folder}: no ablation row configs (*.yaml)")
    return rows


def _flatten(node: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k, v in node.items():
        if isinstance(v, Mapping):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}={json.dumps(v)}")  # JSON is YAML: -o parses it back to the same value
    return out


def resolve_row(row: Row, base_config: str, data: str, out: str, user: Sequence[str],
                pseudo_csv: Optional[str] = None) -> Dict[str, Any]:
    """The full config of one row: base config + row switches + data/cache/output + user overrides."""
    probe = load_config(base_config, [f"Data.root={data}", *user])
    sw = _flatten(row.switches)
    cfg = load_config(base_config, [f"Data.root={data}", *sw, *user])
    cache = probe["Data"]["cache_dir"] or os.path.join(data, f"cache_{int(probe['Data']['image_size'])}")
    if not cfg["Data"]["remove_black_edges"]:
        cache = cache.rstrip("/") + "_norbe"  # a cache is keyed by its preprocessing settings (RBE changes pixels)
    extra = [f"Data.cache_dir={cache}", f"Global.output_dir={os.path.join(out, row.name)}"]
    if pseudo_csv:
        extra.append(f"Data.pseudo_label_csv={pseudo_csv}")
    return load_config(base_config, [f"Data.root={data}", *sw, *user, *extra])


def _clean(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def ensure_cache(cfg: Mapping[str, Any], done: set, progress: bool) -> None:
    """Build (or resume) the row's cache once per cache folder."""
    from ..data.cache import build_cache

    key = cfg["Data"]["cache_dir"]
    if key in done:
        return
    print(f"[ablation] preprocessing {cfg['Data']['root']} -> {key} "
          f"(remove_black_edges={cfg['Data']['remove_black_edges']})", flush=True)
    build_cache(cfg, progress=progress)
    done.add(key)


def run_tool(tool: str, cfg_path: str, log_path: str, what: str, expect: Optional[str] = None) -> None:
    """``tool -c <config>`` (a tools/*.py path) in a subprocess (isolated logs and memory), output to ``log_path``;
    raises with the log's tail when it fails or does not write ``expect``."""
    cmd = [sys.executable, tool, "-c", cfg_path]
    with open(log_path, "w", encoding="utf-8") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0 or (expect is not None and not os.path.isfile(expect)):
        with open(log_path, encoding="utf-8") as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}")


def stage1_backbone(cfg: Mapping[str, Any], out: str, done: Dict[tuple, str], tools_dir: str) -> str:
    """Stage 1 of the two-stage recipe (``tools/pretrain_slices.py``, the CPU stand-in for ImageNet weights) for
    this row's cache and backbone; run once per (cache, post_norm) and shared by the rows with that setting.
    Returns the ``backbone.pdparams`` to pass as ``Arch.pretrained``."""
    key = (cfg["Data"]["cache_dir"], bool(cfg["Arch"]["backbone"]["post_norm"]))
    if key in done:
        return done[key]
    tag = ("rbe" if cfg["Data"]["remove_black_edges"] else "norbe") + ("_postnorm" if key[1] else "_prenorm")
    s1 = os.path.join(out, f"stage1_{tag}")
    weights = os.path.join(s1, "slice_pretrain", "backbone.pdparams")
    os.makedirs(s1, exist_ok=True)
    cfg_path = os.path.join(s1, "stage1_config.yaml")
    sig_path = os.path.join(s1, "stage1_signature.yaml")
    clean = _clean(cfg)
    clean = {**clean, "Global": {**clean["Global"], "output_dir": s1}}
    # what stage 1 depends on (the rows sharing it differ in the rest): rerun only when this changed
    new_sig = yaml.safe_dump({"Data": clean["Data"], "backbone": clean["Arch"]["backbone"],
                              "SlicePretrain": clean["SlicePretrain"], "seed": clean["Global"]["seed"],
                              "threads": clean["Global"]["num_threads"]}, sort_keys=True)
    old_sig = open(sig_path, encoding="utf-8").read() if os.path.isfile(sig_path) else None
    if old_sig == new_sig and os.path.isfile(weights):
        print(f"[ablation] stage 1 {tag}: finished before, not rerun", flush=True)
    else:
        save_config(clean, cfg_path)
        print(f"[ablation] stage 1 {tag}: slice pre-training -> {weights}", flush=True)
        run_tool(os.path.join(tools_dir, "pretrain_slices.py"), cfg_path, os.path.join(s1, "stage1_stdout.log"),
                 "stage 1", expect=weights)
        with open(sig_path, "w", encoding="utf-8") as f:
            f.write(new_sig)
    done[key] = weights
    return weights


def predict_test(cfg: Mapping[str, Any], weights: str, progress: bool) -> pd.DataFrame:
    """Head-2 probabilities of every cached test slice (:func:`~ppihd.engine.evaluator.predict_dataset`) as a
    ``predictions.csv`` table (tools/infer.py's columns, what :mod:`ppihd.postprocess.pseudo_label` reads)."""
    from ..arch import build_model
    from ..data.cache import resolve_index_file
    from ..data.dataset import SeriesDataset, read_index
    from ..utils.checkpoint import load_weights
    from .evaluator import predict_dataset, slice_sop_uids

    model = build_model(cfg["Arch"])
    load_weights(model, weights)
    ds = SeriesDataset(cfg, "test")
    preds = predict_dataset(model, ds, batch_series=int(cfg["DataLoader"]["Eval"]["batch_series"]),
                            progress=progress, desc="test")
    idx = read_index(resolve_index_file(cfg)).set_index("sop_uid")
    df = idx.loc[slice_sop_uids(preds, ds), ["patient_id", "study_uid", "series_uid", "position"]].reset_index()
    df.insert(4, "slice_idx", preds["slice_idx"].astype(int))
    df[list(LABELS)] = preds["prob2"]
    return df[["patient_id", "study_uid", "series_uid", "sop_uid", "slice_idx", "position", *LABELS]]


def score_test(pred: pd.DataFrame, labels: Optional[pd.DataFrame], cfg: Mapping[str, Any],
               prior: Optional[Sequence[float]]) -> Tuple[float, float]:
    """``(model, constant prior)`` weighted log loss of the test predictions against ``labels`` (one row per SOP
    UID, the six label columns), by :func:`~ppihd.engine.evaluator.score_predictions`; NaN without labels."""
    from .evaluator import score_predictions

    if labels is None:
        return math.nan, math.nan
    y = labels.reindex(pred["sop_uid"])[list(LABELS)].to_numpy(dtype=np.float64)
    known = np.isfinite(y)
    res = score_predictions({"series_id": pred["series_uid"].to_numpy(), "labels": np.where(known, y, 0.0),
                             "label_mask": known.astype(np.float64), "prob2": pred[list(LABELS)].to_numpy(),
                             "prob1": None}, cfg["Metric"]["class_weights"], float(cfg["Metric"]["eps"]), prior)
    if res["head2"] is None:
        return math.nan, math.nan
    base = res["baseline"]["weighted_log_loss"] if res["baseline"] else math.nan
    return float(res["head2"]["weighted_log_loss"]), float(base)


def val_from_history(path: str) -> Tuple[float, float]:
    """``(head 2, constant prior)`` weighted log loss of the last validation in ``history.json`` (NaN if none)."""
    try:
        with open(path, encoding="utf-8") as f:
            ev = (json.load(f).get("eval") or [])[-1]
    except (OSError, ValueError, IndexError, AttributeError):
        return math.nan, math.nan
    num = (lambda v: float(v) if isinstance(v, (int, float)) else math.nan)
    return num(ev.get("head2")), num(ev.get("baseline"))


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.5f}"


def write_table(results: List[Dict[str, Any]], rows: Sequence[Row], out: str, header: str,
                baseline: Optional[Dict[str, float]] = None) -> None:
    """``<out>/ablation.csv`` (one line per result) and ``<out>/ablation.md`` (paper numbers beside ours, one
    column per component, the components' descriptions below)."""
    comps = [r.adds for r in rows if r.adds]
    pd.DataFrame(results).to_csv(os.path.join(out, "ablation.csv"), index=False)
    if baseline is not None:
        header += (f"\n\nConstant-prior baseline (train-split positive rates): test {_fmt(baseline['test_wll'])}, "
                   f"val {_fmt(baseline['val_wll'])} — a row above these numbers has not learnt anything yet.")
    lines = [header, "", "| row | " + " | ".join(comps) + " | paper (private LB) | ours: test | ours: val | "
             "iters | train min | note |", "|---" * (len(comps) + 7) + "|"]
    for r in results:
        marks = " | ".join("•" if r[c] else "" for c in comps)
        lines.append(f"| {r['row']} | {marks} | {r['paper']:.5f} | {_fmt(r['test_wll'])} | {_fmt(r['val_wll'])} | "
                     f"{r['iters']} | {r['train_minutes']:.1f} | {r['note']} |")
    lines += ["", "Components: " + "; ".join(f"{r.adds} = {r.description}" for r in rows if r.adds) + "."]
    with open(os.path.join(out, "ablation.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def run_ablation(rows: Sequence[Row], base_config: str, data: str, out: str, user: Sequence[str], tools_dir: str,
                 selected: Optional[Sequence[str]] = None, labels: Optional[pd.DataFrame] = None,
                 tau_s: Optional[float] = None, stage1: bool = False, progress: bool = True,
                 header: str = "Ablation (paper Table 3)") -> List[Dict[str, Any]]:
    """Train and score the ``selected`` rows (names; default all) in table order (see the module docstring);
    rewrites the table after every row and returns its records. A failing row is recorded (``note`` starts with
    ``FAILED``) and the next row runs. ``tools_dir``: the folder of train.py and pretrain_slices.py."""
    from ..data.dataset import SeriesDataset
    from ..utils.env import setup_threads
    from .evaluator import dataset_prior
    from ..postprocess.pseudo_label import select_confident_series, write_pseudo_csv

    os.makedirs(out, exist_ok=True)
    all_comps = [r.adds for r in rows if r.adds]
    results: List[Dict[str, Any]] = []
    baseline: Optional[Dict[str, float]] = None
    caches: set = set()
    stage1_done: Dict[tuple, str] = {}
    last: Optional[Tuple[Row, pd.DataFrame]] = None
    pseudo_csv = os.path.join(out, "pseudo.csv")
    for row in [r for r in rows if selected is None or r.name in selected]:
        rec: Dict[str, Any] = {"row": row.label, "config": os.path.relpath(row.path, os.path.dirname(tools_dir)),
                               "paper": row.paper, **{c: c in row.components for c in all_comps},
                               "test_wll": math.nan, "val_wll": math.nan, "iters": 0, "train_minutes": 0.0,
                               "note": ""}
        notes: List[str] = []
        try:
            if row.pseudo:
                if last is None:
                    raise RuntimeError(f"the {row.label} row needs the previous row's test predictions: run it "
                                       f"in the same call")
                pl = resolve_row(row, base_config, data, out, user)["PseudoLabel"]
                ts = float(pl["tau_s"]) if tau_s is None else tau_s
                sel = select_confident_series(last[1], ts, float(pl["tau_p"]))
                notes.append(f"pseudo-labels: {sel.kept_series}/{sel.n_series} test series, {sel.kept_slices} "
                             f"slices (tau_s {ts}, from {last[0].label})")
                if sel.kept_series == 0:
                    raise RuntimeError(f"no test series passed tau_s={ts}; lower --tau-s")
                write_pseudo_csv(sel.pseudo, pseudo_csv)
            pcsv = pseudo_csv if row.pseudo else None
            cfg = resolve_row(row, base_config, data, out, user, pcsv)
            setup_threads(cfg["Global"]["num_threads"])
            if stage1:
                ensure_cache(cfg, caches, progress)
                backbone = stage1_backbone(cfg, out, stage1_done, tools_dir)
                cfg = resolve_row(row, base_config, data, out, [*user, f"Arch.pretrained={backbone}"], pcsv)
                notes.append(f"stage 1: {os.path.relpath(backbone, out)}")
            rec["iters"] = int(cfg["Global"]["iters"])
            cfg["Global"]["start_over"] = True   # a row whose config changed is trained afresh in its folder
            row_dir = cfg["Global"]["output_dir"]
            os.makedirs(row_dir, exist_ok=True)
            ensure_cache(cfg, caches, progress)
            cfg_path = os.path.join(row_dir, "row_config.yaml")
            new_text = yaml.safe_dump(_clean(cfg), sort_keys=False)
            old_text = open(cfg_path, encoding="utf-8").read() if os.path.isfile(cfg_path) else None
            hist = os.path.join(row_dir, "history.json")
            timing = os.path.join(row_dir, "train_minutes.txt")
            if old_text == new_text and os.path.isfile(hist):
                print(f"[ablation] {row.name}: finished before, not retrained", flush=True)
                rec["train_minutes"] = float(open(timing).read()) if os.path.isfile(timing) else math.nan
            else:
                save_config(_clean(cfg), cfg_path)
                print(f"[ablation] {row.name} ({row.label}): training {rec['iters']} iterations -> {row_dir}",
                      flush=True)
                t0 = time.time()
                run_tool(os.path.join(tools_dir, "train.py"), cfg_path, os.path.join(row_dir, "train_stdout.log"),
                         "training")
                rec["train_minutes"] = (time.time() - t0) / 60.0
                with open(timing, "w") as f:
                    f.write(f"{rec['train_minutes']:.3f}")
            rec["val_wll"], val_prior = val_from_history(hist)
            weights = os.path.join(row_dir, "best_model")
            if not os.path.exists(weights + ".json") and not os.path.exists(weights + ".pdparams"):
                weights = os.path.join(row_dir, "latest")
            pred = predict_test(cfg, weights, progress)
            pred.to_csv(os.path.join(row_dir, "test_predictions.csv"), index=False)
            rec["test_wll"], test_prior = score_test(pred, labels, cfg, dataset_prior(SeriesDataset(cfg, "train")))
            if baseline is None:
                baseline = {"test_wll": test_prior, "val_wll": val_prior}
            last = (row, pred)
            print(f"[ablation] {row.name}: test wll {_fmt(rec['test_wll'])}, val wll {_fmt(rec['val_wll'])} "
                  f"(paper {row.paper:.5f})", flush=True)
        except (RuntimeError, ConfigError, ValueError, FileNotFoundError, KeyError) as e:
            notes.append(f"FAILED: {str(e).splitlines()[0][:200]}")
            print(f"[ablation] {row.name}: {e}", file=sys.stderr, flush=True)
        rec["note"] = "; ".join(notes)
        results.append(rec)
        write_table(results, rows, out, header, baseline)
    return results
