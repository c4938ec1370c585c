#!/usr/bin/env python
"""Train and evaluate every row of the paper's ablation (Table 3) on one data set; write the table.

    python tools/run_ablation.py --data data/demo [--base-config configs/demo/swin_micro_seq.yaml] \
        [--out output/ablation_run] [--rows 01_intra 02_inter ...] [-o Global.iters=300 ...] [--ci]

The rows are ``configs/ablation/<row>.yaml``, each its previous row plus the component it adds (``Ablation``
section: label, component, description, the paper's number). Their switches are applied on top of ``--base-config``
(only the switches: the same rows run with a tiny backbone on CPU or with Swin-B on a GPU), then ``-o`` overrides.
Per row: preprocess (once per preprocessing setting: rows without RBE use ``<cache>_norbe``), ``tools/train.py`` in a
subprocess, then the row's ``best_model`` predicts the cached test split, scored against ``--test-labels`` (default
``<data>/synthetic_test_labels.csv`` when it exists; the real RSNA test labels are not public) and on the validation
split (from the training run). The FM row pseudo-labels the test split with the previous row's (+SW) predictions
(``--tau-s``, ``PseudoLabel.tau_p``) and trains with them. The logic: ``ppihd.engine.ablation``.

Writes ``<out>/ablation.csv``, ``<out>/ablation.md`` (paper numbers beside ours) and one folder per row.
A finished row (same resolved config, ``history.json`` present) is not retrained: re-running resumes the table.
``--stage1`` runs the two-stage recipe of ``make demo``: stage 1 (``tools/pretrain_slices.py``, the slice-level
backbone pre-training that stands in for ImageNet weights on CPU) once per cache and ``post_norm`` setting
(``<out>/stage1_<rbe|norbe>_<postnorm|prenorm>``), and each row starts from it (``Arch.pretrained``).
``--ci`` shrinks everything (32-px micro model, 2 iterations) to check the pipeline end to end in about a minute.
Exit status: 0 every row ran, 1 a row failed (its note in the table says why), 2 bad command line.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CI_OVERRIDES = [
    "Global.iters=2", "Global.log_interval=1", "Global.eval_interval=0", "Global.save_interval=0",
    "Global.progress_bar=false", "Global.num_threads=2", "Data.image_size=32", "Data.num_workers=1",
    "Arch.backbone.variant=micro", "Arch.backbone.drop_path_rate=0.0",
    "DataLoader.Train.num_workers=0", "DataLoader.Eval.batch_series=2", "Optimizer.lr.warmup_steps=1",
]
CI_STAGE1 = ["SlicePretrain.iters=2", "SlicePretrain.batch_slices=4", "SlicePretrain.eval_interval=0"]


def main(argv=None) -> int:
    from ppihd.engine.ablation import load_rows, run_ablation

    rows = load_rows(os.path.join(ROOT, "configs", "ablation"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data folder in the RSNA layout (e.g. data/demo)")
    ap.add_argument("--base-config", default=os.path.join(ROOT, "configs", "demo", "swin_micro_seq.yaml"))
    ap.add_argument("--out", default="output/ablation_run", help="output folder")
    ap.add_argument("--rows", nargs="+", default=[r.name for r in rows], help="rows to run (default all)")
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

    bad = [r for r in a.rows if r not in {row.name for row in rows}]
    if bad:
        print(f"run_ablation: unknown rows {bad}; known: {', '.join(r.name for r in rows)}", file=sys.stderr)
        return 2
    if not os.path.isdir(a.data):
        print(f"run_ablation: --data {a.data} is not a folder (make one with tools/make_demo_data.py)", file=sys.stderr)
        return 2
    from ppihd.data.labels import read_labels

    test_labels = a.test_labels or os.path.join(a.data, "synthetic_test_labels.csv")
    labels = read_labels(test_labels)[0] if os.path.isfile(test_labels) else None
    if labels is None:
        print(f"[ablation] no test labels ({test_labels}): only the validation split is scored", flush=True)
    header = (f"Ablation (paper Table 3) on {a.data} with {os.path.relpath(a.base_config, ROOT)}"
              f"{' --ci' if a.ci else ''} {' '.join('-o ' + o for o in a.override)}").rstrip()
    results = run_ablation(rows, a.base_config, a.data, a.out,
                           (CI_OVERRIDES + (CI_STAGE1 if a.stage1 else []) if a.ci else []) + list(a.override),
                           os.path.join(ROOT, "tools"), selected=a.rows, labels=labels, tau_s=a.tau_s,
                           stage1=a.stage1, progress=not a.no_progress and not a.ci, header=header)
    print(open(os.path.join(a.out, "ablation.md"), encoding="utf-8").read())
    return 1 if any("FAILED" in r["note"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
