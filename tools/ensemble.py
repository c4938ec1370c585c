#!/usr/bin/env python
"""Rank-weighted ensemble of submissions / predictions.csv files (paper eq. 3) + tau_h / tau_l binarisation.

    python tools/ensemble.py --inputs a.csv b.csv c.csv --ranks 1 2 33 --groups pseudo pseudo plain \
        --tau-h 0.998 --out submission.csv
    python tools/ensemble.py --inputs a.csv b.csv c.csv --weights 0.85 0.05 0.10 --mode reference --out sub.csv
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppihd.postprocess.ensemble import (REFERENCE_TAU_H, REFERENCE_WEIGHTS, EnsembleInputError,  # noqa: E402
                                        ensemble_files, normalise_weights, rank_weights)
from ppihd.utils.fileio import atomic_path  # noqa: E402
from ppihd.utils.schema import DEFAULTS  # noqa: E402


def main(argv=None) -> int:
    d = DEFAULTS["Ensemble"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", required=True, help="submission.csv (ID,Label) or predictions.csv files")
    ap.add_argument("--ranks", nargs="+", type=float, help="leaderboard rank of each input (1 = best): eq. 3")
    ap.add_argument("--groups", nargs="+", help="group of each input, e.g. pseudo pseudo plain (default: one group)")
    ap.add_argument("--weights", nargs="+", type=float, help="explicit weights instead of ranks (normalised to sum 1)")
    ap.add_argument("--mode", choices=["paper", "reference"], default=d["mode"],
                    help="paper: threshold the average; reference: 0.85/0.05/0.10 and tau_h only where all "
                         "models exceed it")
    ap.add_argument("--tau-h", type=float, default=None, help=f"p > tau_h -> 1 (default {d['tau_h']})")
    ap.add_argument("--tau-l", type=float, default=None, help=f"p < tau_l -> 0 (default {d['tau_l']})")
    ap.add_argument("--no-binarise", action="store_true", help="plain weighted average, no tau_h / tau_l")
    ap.add_argument("--out", required=True, help="output submission.csv (ID,Label)")
    a = ap.parse_args(argv)

    try:
        n = len(a.inputs)
        if a.weights is not None:
            if a.ranks is not None:
                raise EnsembleInputError("give either --ranks (eq. 3) or --weights, not both")
            w = normalise_weights(a.weights)
        elif a.ranks is not None:
            w = rank_weights(a.ranks, a.groups)
        elif a.mode == "reference" and n == len(REFERENCE_WEIGHTS):
            w = normalise_weights(REFERENCE_WEIGHTS)
        else:
            raise EnsembleInputError("give --ranks (with --groups) or --weights; "
                                     "--mode reference alone needs exactly 3 inputs (best, second, plain)")
        if len(w) != n:
            raise EnsembleInputError(f"{n} inputs but {len(w)} ranks/weights")
        tau_h = a.tau_h if a.tau_h is not None else (REFERENCE_TAU_H if a.mode == "reference" else d["tau_h"])
        tau_l = a.tau_l if a.tau_l is not None else d["tau_l"]
        if a.no_binarise:
            tau_h = tau_l = None
        if tau_h is not None and tau_l is not None and tau_l >= tau_h:
            raise EnsembleInputError(f"--tau-l ({tau_l}) must be below --tau-h ({tau_h})")
        sub, summary = ensemble_files(a.inputs, w, tau_h, tau_l, a.mode)
    except EnsembleInputError as e:
        print(f"ensemble: error: {e}", file=sys.stderr)
        return 2
    for p, wi in zip(a.inputs, w):
        print(f"  weight {wi:.6f}  {p}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with atomic_path(a.out) as tmp:
        sub.to_csv(tmp, index=False, float_format="%.8g")
    print(f"wrote {a.out}: {int(summary['rows'])} rows; tau_h={tau_h} set {int(summary['set_to_1'])} to 1, "
          f"tau_l={tau_l} set {int(summary['set_to_0'])} to 0 (mode {a.mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
