#!/usr/bin/env python
"""Train and evaluate every row of the paper's ablation (Table 3) on one data set; write the table.

    python tools/run_ablation.py --data data/demo [--base-config configs/demo/swin_micro_seq.yaml] \
        [--out output/ablation_run] [--rows 01_intra 02_inter ...] [-o Global.iters=300 ...] [--ci]

Each row is ``configs/ablation/<row>.yaml``: its component switches (Arch.inter_slice, Data.remove_black_edges,
Arch.deep_supervision, Arch.backbone.post_norm, Loss.dynamic_weight, Loss.static_weight, FixMatch) are applied on
top of ``--base-config`` (the row files themselves inherit the paper config; only their switches are taken here,
so the same rows run with a tiny backbone on CPU or with Swin-B on a GPU), then ``-o`` overrides.

Per row: preprocess (once per preprocessing setting: rows without RBE use their own cache,
``<cache>_norbe``), ``tools/train.py`` in a subprocess, then the row's ``best_model`` predicts the cached test
split; the weighted log loss is computed against ``--test-labels`` (default ``<data>/synthetic_test_labels.csv``
when it exists, the synthetic set's hidden labels; the real RSNA test labels are not public) and on the validation
split (from the training run). The FM row pseudo-labels the test split with the previous row's (+SW) predictions
(``--tau-s``, ``PseudoLabel.tau_p``) and trains with them.

Writes ``<out>/ablation.csv``, ``<out>/ablation.md`` (paper numbers beside ours) and one folder per row.
A finished row (same resolved config, ``history.json`` present) is not retrained: re-running resumes the table.
``--stage1`` runs the two-stage recipe of ``make demo``: stage 1 (``tools/pretrain_slices.py``, the slice-level
backbone pre-training that stands in for ImageNet weights on CPU) once per cache and ``post_norm`` setting
(``<out>/stage1_<rbe|norbe>_<postnorm|prenorm>``), and each row starts from it (``Arch.pretrained``).
``--ci`` shrinks everything (32-px micro model, 2 iterations) to check the pipeline end to end in about a minute.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from ppihd import LABELS  # noqa: E402
from ppihd.utils.config import ConfigError, load_config, save_config  # noqa: E402

ABLATION_DIR = os.path.join(ROOT, "configs", "ablation")
COMPONENTS = ("Inter", "RBE", "DS", "PN", "DW", "SW", "FM")
#: (row config name, Table 3 label, paper private-LB log loss, components on)
ROWS = [
    ("01_intra", "Intra-Ext only", 0.09495, ()),
    ("02_inter", "+ Inter-Ext", 0.06582, ("Inter",)),
    ("03_rbe", "+ RBE", 0.06490, ("Inter", "RBE")),
    ("04_ds", "+ DS", 0.06117, ("Inter", "RBE", "DS")),
    ("05_pn", "+ PN", 0.05808, ("Inter", "RBE", "DS", "PN")),
    ("06_dw", "+ DW", 0.05409, ("Inter", "RBE", "DS", "PN", "DW")),
    ("07_sw", "+ SW", 0.05117, ("Inter", "RBE", "DS", "PN", "DW", "SW")),
    ("08_fm", "+ FM", 0.04368, ("Inter", "RBE", "DS", "PN", "DW", "SW", "FM")),
]
CI_OVERRIDES = [
    "Global.iters=2", "Global.log_interval=1", "Global.eval_interval=0", "Global.save_interval=0",
    "Global.progress_bar=false", "Global.num_threads=2", "Data.image_size=32", "Data.num_workers=1",
    "Arch.backbone.variant=micro", "Arch.backbone.drop_path_rate=0.0",
    "DataLoader.Train.num_workers=0", "DataLoader.Eval.batch_series=2", "Optimizer.lr.warmup_steps=1",
]


CI_STAGE1 = ["SlicePretrain.iters=2", "SlicePretrain.batch_slices=4", "SlicePretrain.eval_interval=0"]


def _flatten(node: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flatten(v, key + "."))
        else:
            out.append(f"{key}={json.dumps(v) if not isinstance(v, str) else v}")
    return out


def row_switches(name: str) -> List[str]:
    """The row's own settings from ``configs/ablation/<name>.yaml`` as ``-o`` overrides (no ``_base_``, no
    ``Global.output_dir``, no ``Data.pseudo_label_csv`` — the runner sets those)."""
    path = os.path.join(ABLATION_DIR, f"{name}.yaml")
    with open(path, "r", encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    raw.pop("_base_", None)
    raw.get("Global", {}).pop("output_dir", None)
    raw.get("Data", {}).pop("pseudo_label_csv", None)
    return _flatten(raw)


def resolve_row(name: str, base_config: str, data: str, out: str, user: Sequence[str],
                pseudo_csv: Optional[str] = None) -> Dict[str, Any]:
    """The full config of one row: base config + row switches + data/cache/output + user overrides."""
    probe = load_config(base_config, [f"Data.root={data}", *user])
    sw = row_switches(name)
    cfg = load_config(base_config, [f"Data.root={data}", *sw, *user])
    cache = probe["Data"]["cache_dir"] or os.path.join(data, f"cache_{int(probe['Data']['image_size'])}")
    if not cfg["Data"]["remove_black_edges"]:
        cache = cache.rstrip("/") + "_norbe"  # a cache is keyed by its preprocessing settings (RBE changes pixels)
    extra = [f"Data.cache_dir={cache}", f"Global.output_dir={os.path.join(out, name)}"]
    if pseudo_csv:
        extra.append(f"Data.pseudo_label_csv={pseudo_csv}")
    return load_config(base_config, [f"Data.root={data}", *sw, *user, *extra])


def ensure_cache(cfg: Mapping[str, Any], done: set, progress: bool) -> None:
    """Build (or resume) the row's cache once per cache folder."""
    from ppihd.data.cache import build_cache

    key = cfg["Data"]["cache_dir"]
    if key in done:
        return
    print(f"[ablation] preprocessing {cfg['Data']['root']} -> {key} "
          f"(remove_black_edges={cfg['Data']['remove_black_edges']})", flush=True)
    build_cache(cfg, progress=progress)
    done.add(key)


def write_row_config(cfg: Mapping[str, Any], path: str) -> str:
    clean = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return save_config(clean, path)


def run_tool(tool: str, cfg_path: str, log_path: str, what: str, expect: Optional[str] = None) -> None:
    """``tools/<tool> -c <config>`` in a subprocess (isolated logs and memory), output to ``log_path``; raises
    with the log's tail when it fails or does not write ``expect``."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", tool), "-c", cfg_path]
    with open(log_path, "w", encoding="utf-8") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0 or (expect is not None and not os.path.isfile(expect)):
        with open(log_path, encoding="utf-8") as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}")


def stage1_backbone(cfg: Mapping[str, Any], out: str, done: Dict[tuple, str]) -> str:
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
    clean = {k: v for k, v in cfg.items() if not k.startswith("_")}
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
        run_tool("pretrain_slices.py", cfg_path, os.path.join(s1, "stage1_stdout.log"), "stage 1", expect=weights)
        with open(sig_path, "w", encoding="utf-8") as f:
            f.write(new_sig)
    done[key] = weights
    return weights


def predict_test(cfg: Mapping[str, Any], weights: str, progress: bool) -> pd.DataFrame:
    """Head-2 probabilities of every cached test slice, as a ``predictions.csv`` table (tools/infer.py columns)."""
    from ppihd.arch import build_model
    from ppihd.data.dataset import SeriesDataset, read_index
    from ppihd.data.cache import resolve_index_file
    from ppihd.engine.evaluator import predict_dataset
    from ppihd.utils.checkpoint import load_weights

    model = build_model(cfg["Arch"])
    load_weights(model, weights)
    ds = SeriesDataset(cfg, "test")
    preds = predict_dataset(model, ds, batch_series=int(cfg["DataLoader"]["Eval"]["batch_series"]),
                            progress=progress, desc="test")
    idx = read_index(resolve_index_file(cfg))
    idx = idx[(idx["split"] == "test") & (idx["status"] == "ok")].set_index(["series_id", "slice_idx"])
    keys = list(zip(preds["series_id"], preds["slice_idx"].astype(int)))
    meta = idx.loc[keys, ["patient_id", "study_uid", "series_uid", "sop_uid", "position"]].reset_index()
    df = meta[["patient_id", "study_uid", "series_uid", "sop_uid", "slice_idx", "position"]].copy()
    df[list(LABELS)] = preds["prob2"]
    return df


def score(pred: pd.DataFrame, labels: Optional[pd.DataFrame], cfg: Mapping[str, Any]) -> float:
    """Competition weighted log loss of ``pred`` against the labels (NaN when there are none)."""
    from ppihd.metric import weighted_log_loss

    if labels is None:
        return float("nan")
    y = labels.reindex(pred["sop_uid"])[list(LABELS)].to_numpy(dtype=np.float64)
    ok = np.isfinite(y).all(axis=1)
    if not ok.any():
        return float("nan")
    return float(weighted_log_loss(y[ok], pred[list(LABELS)].to_numpy()[ok], cfg["Metric"]["class_weights"],
                                   cfg["Metric"]["eps"]))


def val_from_history(path: str) -> float:
    """Head-2 weighted log loss of the last validation in ``history.json`` (NaN if none)."""
    try:
        with open(path, encoding="utf-8") as f:
            h = json.load(f)
        ev = h.get("eval") or []
        v = ev[-1].get("head2") if ev else None
        if isinstance(v, Mapping):
            v = v.get("weighted_log_loss")
        return float(v) if v is not None else float("nan")
    except (OSError, ValueError, IndexError, TypeError):
        return float("nan")


def prior_baseline(cfg: Mapping[str, Any], labels: Optional[pd.DataFrame]) -> Dict[str, float]:
    """Weighted log loss of the constant prior (each class's positive rate on the train split) on test and val:
    the number a model must beat to have learnt anything."""
    from ppihd.data.cache import resolve_index_file
    from ppihd.data.dataset import read_index
    from ppihd.metric import weighted_log_loss

    idx = read_index(resolve_index_file(cfg))
    idx = idx[idx["status"] == "ok"]
    prior = idx.loc[idx["split"] == "train", list(LABELS)].to_numpy(dtype=np.float64)
    prior = np.nanmean(prior, axis=0)
    w, eps = cfg["Metric"]["class_weights"], cfg["Metric"]["eps"]
    out = {"test_wll": float("nan"), "val_wll": float("nan")}
    val = idx.loc[idx["split"] == "val", list(LABELS)].to_numpy(dtype=np.float64)
    val = val[np.isfinite(val).all(axis=1)]
    if len(val):
        out["val_wll"] = float(weighted_log_loss(val, np.tile(prior, (len(val), 1)), w, eps))
    if labels is not None:
        sops = idx.loc[idx["split"] == "test", "sop_uid"]
        y = labels.reindex(sops)[list(LABELS)].to_numpy(dtype=np.float64)
        y = y[np.isfinite(y).all(axis=1)]
        if len(y):
            out["test_wll"] = float(weighted_log_loss(y, np.tile(prior, (len(y), 1)), w, eps))
    return out


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.5f}"


def write_table(rows: List[Dict[str, Any]], out: str, header: str,
                baseline: Optional[Dict[str, float]] = None) -> None:
    df = pd.DataFrame(rows)
    df.to_csv(os.path.join(out, "ablation.csv"), index=False)
    if baseline is not None:
        header += (f"\n\nConstant-prior baseline (train-split positive rates): test {_fmt(baseline['test_wll'])}, "
                   f"val {_fmt(baseline['val_wll'])} — a row above these numbers has not learnt anything yet.")
    lines = [header, "", "| row | " + " | ".join(COMPONENTS) + " | paper (private LB) | ours: test | ours: val | "
             "iters | train min | note |", "|---" * (len(COMPONENTS) + 7) + "|"]
    for r in rows:
        marks = " | ".join("•" if r[c] else "" for c in COMPONENTS)
        lines.append(f"| {r['row']} | {marks} | {r['paper']:.5f} | {_fmt(r['test_wll'])} | {_fmt(r['val_wll'])} | "
                     f"{r['iters']} | {r['train_minutes']:.1f} | {r['note']} |")
    with open(os.path.join(out, "ablation.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data folder in the RSNA layout (e.g. data/demo)")
    ap.add_argument("--base-config", default=os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml"))
    ap.add_argument("--out", default="output/ablation_run", help="output folder")
    ap.add_argument("--rows", nargs="+", default=[r[0] for r in ROWS], help="rows to run (default all)")
    ap.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                    help="override applied to every row, e.g. -o Global.iters=300 (repeatable)")
    ap.add_argument("--test-labels", default=None,
                    help="ID,Label file of the test split (default <data>/synthetic_test_labels.csv if present)")
    ap.add_argument("--tau-s", type=float, default=None, help="FM row: confidence threshold (PseudoLabel.tau_s)")
    ap.add_argument("--stage1", action="store_true",
                    help="two-stage recipe of make demo: stage 1 (tools/pretrain_slices.py) once per cache and "
                         "post_norm setting, loaded by the rows with -o Arch.pretrained")
    ap.add_argument("--ci", action="store_true", help="tiny CI-sized run (32-px micro model, 2 iterations)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)

    known = {r[0]: r for r in ROWS}
    bad = [r for r in a.rows if r not in known]
    if bad:
        print(f"run_ablation: unknown rows {bad}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    if not os.path.isdir(a.data):
        print(f"run_ablation: --data {a.data} is not a folder (make one with tools/make_demo_data.py)", file=sys.stderr)
        return 2
    user = (CI_OVERRIDES + (CI_STAGE1 if a.stage1 else []) if a.ci else []) + list(a.override)
    progress = not a.no_progress and not a.ci
    os.makedirs(a.out, exist_ok=True)
    from ppihd.data.labels import read_labels
    from ppihd.engine.pseudo_label import select_confident_series, write_pseudo_csv
    from ppihd.utils.env import setup_threads

    test_labels_path = a.test_labels or os.path.join(a.data, "synthetic_test_labels.csv")
    labels = read_labels(test_labels_path)[0] if os.path.isfile(test_labels_path) else None
    if labels is None:
        print(f"[ablation] no test labels ({test_labels_path}): only the validation split is scored", flush=True)

    results: List[Dict[str, Any]] = []
    baseline: Optional[Dict[str, float]] = None
    caches: set = set()
    stage1: Dict[tuple, str] = {}
    last_pred: Optional[pd.DataFrame] = None
    pseudo_csv = os.path.join(a.out, "pseudo.csv")
    for name in [r[0] for r in ROWS if r[0] in a.rows]:
        _, title, paper, comps = known[name]
        rec: Dict[str, Any] = {"row": title, "config": f"configs/ablation/{name}.yaml", "paper": paper,
                               **{c: c in comps for c in COMPONENTS}, "test_wll": float("nan"),
                               "val_wll": float("nan"), "iters": 0, "train_minutes": 0.0, "note": ""}
        try:
            use_pseudo = "FM" in comps
            if use_pseudo:
                if last_pred is None:
                    raise RuntimeError("the FM row needs the + SW row's test predictions: run 07_sw in the same call")
                cfg0 = resolve_row(name, a.base_config, a.data, a.out, user)
                tau_s = a.tau_s if a.tau_s is not None else float(cfg0["PseudoLabel"]["tau_s"])
                sel = select_confident_series(last_pred, tau_s, float(cfg0["PseudoLabel"]["tau_p"]))
                rec["note"] = (f"pseudo-labels: {sel.kept_series}/{sel.n_series} test series, {sel.kept_slices} "
                               f"slices (tau_s {tau_s})")
                if sel.kept_series == 0:
                    raise RuntimeError(f"no test series passed tau_s={tau_s}; lower --tau-s")
                write_pseudo_csv(sel.pseudo, pseudo_csv)
            cfg = resolve_row(name, a.base_config, a.data, a.out, user, pseudo_csv if use_pseudo else None)
            setup_threads(cfg["Global"]["num_threads"])
            if a.stage1:
                ensure_cache(cfg, caches, progress)
                backbone = stage1_backbone(cfg, a.out, stage1)
                cfg = resolve_row(name, a.base_config, a.data, a.out, [*user, f"Arch.pretrained={backbone}"],
                                  pseudo_csv if use_pseudo else None)
                rec["note"] = (rec["note"] + "; " if rec["note"] else "") + \
                    f"stage 1: {os.path.relpath(backbone, a.out)}"
            rec["iters"] = int(cfg["Global"]["iters"])
            cfg["Global"]["start_over"] = True   # a row whose config changed is trained afresh in its folder
            row_dir = cfg["Global"]["output_dir"]
            os.makedirs(row_dir, exist_ok=True)
            ensure_cache(cfg, caches, progress)
            if baseline is None:
                baseline = prior_baseline(cfg, labels)
            cfg_path = os.path.join(row_dir, "row_config.yaml")
            new_text = yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=False)
            old_text = open(cfg_path, encoding="utf-8").read() if os.path.isfile(cfg_path) else None
            hist = os.path.join(row_dir, "history.json")
            timing = os.path.join(row_dir, "train_minutes.txt")
            if old_text == new_text and os.path.isfile(hist):
                print(f"[ablation] {name}: finished before, not retrained", flush=True)
                rec["train_minutes"] = float(open(timing).read()) if os.path.isfile(timing) else float("nan")
            else:
                write_row_config(cfg, cfg_path)
                print(f"[ablation] {name} ({title}): training {rec['iters']} iterations -> {row_dir}", flush=True)
                t0 = time.time()
                run_tool("train.py", cfg_path, os.path.join(row_dir, "train_stdout.log"), "training")
                rec["train_minutes"] = (time.time() - t0) / 60.0
                with open(timing, "w") as f:
                    f.write(f"{rec['train_minutes']:.3f}")
            rec["val_wll"] = val_from_history(hist)
            weights = os.path.join(row_dir, "best_model")
            if not os.path.exists(weights + ".json") and not os.path.exists(weights + ".pdparams"):
                weights = os.path.join(row_dir, "latest")
            pred = predict_test(cfg, weights, progress)
            pred.to_csv(os.path.join(row_dir, "test_predictions.csv"), index=False)
            rec["test_wll"] = score(pred, labels, cfg)
            last_pred = pred
            print(f"[ablation] {name}: test wll {_fmt(rec['test_wll'])}, val wll {_fmt(rec['val_wll'])} "
                  f"(paper {paper:.5f})", flush=True)
        except (RuntimeError, ConfigError, ValueError, FileNotFoundError, KeyError) as e:
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + f"FAILED: {str(e).splitlines()[0][:200]}"
            print(f"[ablation] {name}: {e}", file=sys.stderr, flush=True)
        results.append(rec)
        write_table(results, a.out, f"Ablation (paper Table 3) on {a.data} with {os.path.relpath(a.base_config, ROOT)}"
                    f"{' --ci' if a.ci else ''} {' '.join('-o ' + o for o in a.override)}".rstrip(), baseline)
    print(open(os.path.join(a.out, "ablation.md"), encoding="utf-8").read())
    failed = [r["row"] for r in results if "FAILED" in r["note"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
