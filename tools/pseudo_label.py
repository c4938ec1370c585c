#!/usr/bin/env python
"""Select confident test series and write FixMatch pseudo-labels (paper eq. 2; docs/reproduce.md).

    python tools/pseudo_label.py --pred out/a/predictions.csv out/b/predictions.csv \
        --tau-s 0.95 --tau-p 0.5 --out pseudo.csv --train-labels data/rsna/stage_2_train.csv
    python tools/pseudo_label.py --pred a.csv b.csv c.csv --ranks 1 2 33 --groups pseudo pseudo plain --out pseudo.csv

Several prediction files are averaged (they must cover the same slices): equally by default, with the paper's
eq. 3 weights given --ranks (and --groups), as tools/ensemble.py, or with explicit --weights. A series is kept only if
max(p, 1-p) > tau_s for every slice and all six classes; labels are p > tau_p. Point a training config's
``Data.pseudo_label_csv`` at the output (see configs/fixmatch/). The thresholds are the config's ``PseudoLabel``
section (-c, default the schema's; -o); --tau-s and --tau-p set PseudoLabel.tau_s and PseudoLabel.tau_p.

Exit status: 0 written; 2 bad command line, config or prediction files; 4 no series passed tau_s (the empty output is
still written, but a FixMatch round on it would be the single model again: lower --tau-s or improve the model).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppihd.postprocess.ensemble import EnsembleInputError, normalise_weights, rank_weights  # noqa: E402
from ppihd.postprocess.pseudo_label import (PseudoLabelError, average_predictions,  # noqa: E402
                                            label_distribution_table, read_for_pseudo_labels,
                                            select_confident_series, train_label_rates, write_pseudo_csv)
from ppihd.postprocess.tables import PostprocessError  # noqa: E402
from ppihd.utils.cli import run_tool  # noqa: E402


NOTHING_KEPT = 4  # exit status when no series is kept


def _flags(ap) -> None:
    ap.add_argument("--pred", nargs="+", required=True, help="predictions.csv file(s) from tools/infer.py")
    ap.add_argument("--tau-s", type=float, default=None, help="confidence threshold (PseudoLabel.tau_s)")
    ap.add_argument("--tau-p", type=float, default=None, help="binarisation threshold (PseudoLabel.tau_p)")
    ap.add_argument("--ranks", nargs="+", type=float,
                    help="leaderboard rank of each --pred file (1 = best): eq. 3 weights, as tools/ensemble.py")
    ap.add_argument("--groups", nargs="+", help="group of each --pred file for eq. 3, e.g. pseudo pseudo plain")
    ap.add_argument("--weights", nargs="+", type=float, help="explicit weights instead of ranks (normalised)")
    ap.add_argument("--out", required=True, help="pseudo-label CSV to write (Data.pseudo_label_csv)")
    ap.add_argument("--train-labels", default=None, help="stage_2_train.csv, to compare label distributions")


def main(argv=None) -> int:
    return run_tool(_pseudo_label, argv, description=__doc__, config="optional", flags=_flags,
                    flag_keys={"tau_s": "PseudoLabel.tau_s", "tau_p": "PseudoLabel.tau_p"})


def _pseudo_label(a, cfg, log) -> int:
    tau_s, tau_p = cfg["PseudoLabel"]["tau_s"], cfg["PseudoLabel"]["tau_p"]
    try:
        if a.ranks is not None and a.weights is not None:
            raise PseudoLabelError("give either --ranks (eq. 3) or --weights, not both")
        if a.groups is not None and a.ranks is None:
            raise PseudoLabelError("--groups needs --ranks")
        try:
            w = (rank_weights(a.ranks, a.groups) if a.ranks is not None
                 else normalise_weights(a.weights) if a.weights is not None else None)
        except EnsembleInputError as e:
            raise PseudoLabelError(str(e)) from None
        if w is not None and len(w) != len(a.pred):
            raise PseudoLabelError(f"{len(a.pred)} --pred files but {len(w)} ranks/weights")
        frames = [read_for_pseudo_labels(p) for p in a.pred]
        pred = average_predictions(frames, a.pred, w) if len(frames) > 1 else frames[0]
        sel = select_confident_series(pred, tau_s, tau_p)
        rates = None
        if a.train_labels:
            n_img, rates = train_label_rates(a.train_labels)
    except PostprocessError as e:
        print(f"pseudo_label: error: {e}", file=sys.stderr)
        return 2
    write_pseudo_csv(sel.pseudo, a.out)
    if len(a.pred) == 1:
        src = a.pred[0]
    elif w is None:
        src = f"mean of {len(a.pred)} prediction files"
    else:
        src = f"weighted mean of {len(a.pred)} prediction files (weights {', '.join(f'{x:.6f}' for x in w)})"
    print(f"pseudo-labels from {src}: tau_s={tau_s}, tau_p={tau_p}")
    print(f"kept {sel.kept_series}/{sel.n_series} series ({100 * sel.kept_series / max(sel.n_series, 1):.1f} %), "
          f"{sel.kept_slices}/{sel.n_slices} slices")
    if sel.dropped_examples:
        ex = ", ".join(f"{s} (min s={c:.4f})" for s, c in sel.dropped_examples[:3])
        print(f"most confident dropped series: {ex}")
    if rates is not None:
        print(f"label distribution (train: {n_img} images from {a.train_labels}):")
    print(label_distribution_table(sel.pseudo, rates))
    if sel.kept_slices and int(sel.pseudo["any"].sum()) == 0:
        print("WARNING: every kept pseudo-label is negative (no slice has p(any) > tau_p); FixMatch would only add "
              "negative series. Is the model trained beyond the class prior?")
    print(f"wrote {a.out}")
    if sel.kept_series == 0:
        print(f"pseudo_label: error: no series passed tau_s={tau_s} (0/{sel.n_series} kept); {a.out} is empty "
              f"and a FixMatch round on it would add nothing. Lower --tau-s or improve the model (exit {NOTHING_KEPT})",
              file=sys.stderr)
        return NOTHING_KEPT
    return 0


if __name__ == "__main__":
    sys.exit(main())
