#!/usr/bin/env python
"""Rank-weighted ensemble of submissions / predictions.csv files (paper eq. 3) + tau_h / tau_l binarisation.

    python tools/ensemble.py --inputs a.csv b.csv c.csv --ranks 1 2 33 --groups pseudo pseudo plain \
        --tau-h 0.998 --out submission.csv
    python tools/ensemble.py --inputs a.csv b.csv c.csv --weights 0.85 0.05 0.10 --mode reference --out sub.csv
    python tools/ensemble.py -c configs/swin_b_seq.yaml -o Ensemble.tau_l=0.001 --inputs ... --out sub.csv

The settings are the config's ``Ensemble`` section (-c, default the schema's; -o); --mode, --tau-h and --tau-l
set Ensemble.mode, Ensemble.tau_h and Ensemble.tau_l. Exit status: 0 written, 2 bad command line, config or inputs.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppihd.postprocess.ensemble import (REFERENCE_WEIGHTS, EnsembleInputError, ensemble_files,  # noqa: E402
                                        normalise_weights, rank_weights)
from ppihd.utils.cli import run_tool  # noqa: E402
from ppihd.utils.fileio import atomic_path  # noqa: E402


def _flags(ap) -> None:
    ap.add_argument("--inputs", nargs="+", required=True, help="submission.csv (ID,Label) or predictions.csv files")
    ap.add_argument("--ranks", nargs="+", type=float, help="leaderboard rank of each input (1 = best): eq. 3")
    ap.add_argument("--groups", nargs="+", help="group of each input, e.g. pseudo pseudo plain (default: one group)")
    ap.add_argument("--weights", nargs="+", type=float, help="explicit weights instead of ranks (normalised to sum 1)")
    ap.add_argument("--mode", choices=["paper", "reference"], default=None,
                    help="paper: threshold the average; reference: 0.85/0.05/0.10 and tau_h only where all "
                         "models exceed it (Ensemble.mode)")
    ap.add_argument("--tau-h", type=float, default=None, help="p > tau_h -> 1 (Ensemble.tau_h)")
    ap.add_argument("--tau-l", type=float, default=None, help="p < tau_l -> 0 (Ensemble.tau_l)")
    ap.add_argument("--no-binarise", action="store_true", help="plain weighted average, no tau_h / tau_l")
    ap.add_argument("--out", required=True, help="output submission.csv (ID,Label)")


def main(argv=None) -> int:
    return run_tool(_ensemble, argv, description=__doc__, config="optional", flags=_flags,
                    flag_keys={"mode": "Ensemble.mode", "tau_h": "Ensemble.tau_h", "tau_l": "Ensemble.tau_l"})


def _ensemble(a, cfg, log) -> int:
    ens = cfg["Ensemble"]
    mode = ens["mode"]
    try:
        if mode not in ("paper", "reference"):
            raise EnsembleInputError(f"Ensemble.mode must be paper | reference, got {mode!r}")
        n = len(a.inputs)
        if a.weights is not None:
            if a.ranks is not None:
                raise EnsembleInputError("give either --ranks (eq. 3) or --weights, not both")
            w = normalise_weights(a.weights)
        elif a.ranks is not None:
            w = rank_weights(a.ranks, a.groups)
        elif mode == "reference" and n == len(REFERENCE_WEIGHTS):
            w = normalise_weights(REFERENCE_WEIGHTS)
        else:
            raise EnsembleInputError("give --ranks (with --groups) or --weights; "
                                     "--mode reference alone needs exactly 3 inputs (best, second, plain)")
        if len(w) != n:
            raise EnsembleInputError(f"{n} inputs but {len(w)} ranks/weights")
        tau_h, tau_l = ens["tau_h"], ens["tau_l"]
        if a.no_binarise:
            tau_h = tau_l = None
        if tau_h is not None and tau_l is not None and tau_l >= tau_h:
            raise EnsembleInputError(f"--tau-l ({tau_l}) must be below --tau-h ({tau_h})")
        sub, summary = ensemble_files(a.inputs, w, tau_h, tau_l, mode)
    except EnsembleInputError as e:
        print(f"ensemble: error: {e}", file=sys.stderr)
        return 2
    for p, wi in zip(a.inputs, w):
        print(f"  weight {wi:.6f}  {p}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with atomic_path(a.out) as tmp:
        sub.to_csv(tmp, index=False, float_format="%.8g")
    print(f"wrote {a.out}: {int(summary['rows'])} rows; tau_h={tau_h} set {int(summary['set_to_1'])} to 1, "
          f"tau_l={tau_l} set {int(summary['set_to_0'])} to 0 (mode {mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
