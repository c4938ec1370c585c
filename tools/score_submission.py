#!/usr/bin/env python
"""Score submission(s) with the competition's weighted log loss, per class (docs/reproduce.md).

    python tools/score_submission.py --submission submission.csv --labels labels.csv \
        [--sample data/rsna/stage_2_sample_submission.csv] [--prior data/rsna/stage_2_train.csv] [--json out.json]
    python tools/score_submission.py --submission a.csv b.csv --names single ensemble \
        --labels data/demo/synthetic_test_labels.csv --prior data/demo/stage_2_train.csv

--submission: Kaggle's long format ``ID,Label`` (``ID_<sop>_<label>``) or a predictions.csv (sop_uid + six columns).
--labels: the same long format (Kaggle's labels, or the synthetic set's synthetic_test_labels.csv); exact
duplicate rows are dropped. Every submission ID must have a label; labelled images absent from the submission are
ignored (their count is printed). --sample: the submission must hold exactly the sample submission's IDs, once each.
--prior: also score the constant-prior model (each class's positive rate in that training label file) on the same
IDs. Metric: mean over images of sum_c w_c ll_c / sum_c w_c, w = (1, 1, 1, 1, 1, 2), p clipped to [eps, 1 - eps]
(eps = Metric.eps of -c CONFIG, default the schema's; --eps sets it).
Exit status: 0 scored; 2 bad command line, unreadable file, or IDs that do not match (the IDs are named).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppihd.metric.submission import (SubmissionError, check_against_sample, constant_submission,  # noqa: E402
                                     format_table, names_for, prior_rates, read_ids, read_labels, read_submission,
                                     score)
from ppihd.utils.cli import run_tool  # noqa: E402
from ppihd.utils.fileio import atomic_path  # noqa: E402


def _flags(ap) -> None:
    ap.add_argument("--submission", nargs="+", required=True, help="submission.csv file(s) to score")
    ap.add_argument("--names", nargs="+", default=None, help="a row name per --submission (default: the paths)")
    ap.add_argument("--labels", required=True, help="ID,Label truth (Kaggle long format)")
    ap.add_argument("--sample", default=None, help="stage_2_sample_submission.csv: the IDs a submission must hold")
    ap.add_argument("--prior", default=None, metavar="TRAIN_LABELS",
                    help="also score the constant prior (class rates of this ID,Label training file)")
    ap.add_argument("--eps", type=float, default=None, help="probability clip (Metric.eps)")
    ap.add_argument("--json", default=None, help="also write the scores to this JSON file")


def main(argv=None) -> int:
    return run_tool(_score, argv, description=__doc__, config="optional", flags=_flags,
                    flag_keys={"eps": "Metric.eps"})


def _score(a, cfg, log) -> int:
    eps = float(cfg["Metric"]["eps"])
    rows = []
    try:
        names = names_for(a.submission, a.names)
        labels = read_labels(a.labels)
        for path, name in zip(a.submission, names):
            if a.sample:
                check_against_sample(read_ids(path), a.sample, path)
            sub = read_submission(path)
            rows.append({"name": name, "path": path, **score(sub, labels, eps)})
        if a.prior:
            rates = prior_rates(a.prior)
            prior = constant_submission(read_submission(a.submission[0]).index, rates)
            rows.append({"name": "constant prior", "path": a.prior, "rates": rates, **score(prior, labels, eps)})
    except SubmissionError as e:
        print(f"score_submission: error: {e}", file=sys.stderr)
        return 2
    n_lab_images = len({i.rsplit("_", 1)[0] for i in labels.index})
    print(f"weighted log loss (w = 1,1,1,1,1,2; eps {eps:g}) on {rows[0]['n_images']} images "
          f"({n_lab_images} images in {a.labels})")
    print(format_table(rows))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with atomic_path(a.json) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({"labels": a.labels, "sample": a.sample, "rows": rows}, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
