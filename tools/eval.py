"""Score a checkpoint on the validation split with the competition metric (docs/training.md "Validation").

    python tools/eval.py -c CONFIG -o Global.pretrained_model=output/x/best_model [--output DIR] [--split val]
                         [--pad-to 60]

``--pad-to 60`` (= ``-o DataLoader.Eval.pad_to=60``) evaluates as the reference code does: each series padded
with black slices to 60 and run without a mask (docs/deviations.md "Evaluation padding").

Writes DIR/metrics.json (weighted log loss, per-class log loss and ROC-AUC for head 2 and head 1, the constant-prior
baseline), DIR/predictions.csv (one row per slice, with its sop_uid) and the plots of head 2: DIR/roc_pr.png
(per-class ROC and precision-recall curves), DIR/calibration.png (reliability diagram), DIR/per_class.png (the
per-class table) with their numbers in DIR/curves.json; DIR defaults to <Global.output_dir>/eval.
Prints the metric next to the constant-prior baseline (each class's training-set positive rate).
Exit status: 0 done, 2 bad command line / config / data / checkpoint, or a split without labels (e.g. ``--split
test`` on RSNA data, whose test labels are not public: score a test submission with tools/score_submission.py),
6 another evaluation holds the output folder.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flags(p) -> None:
    p.add_argument("--output", default=None, help="output folder (default <Global.output_dir>/eval)")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--pad-to", type=int, default=None, metavar="N",
                   help="pad every series with black slices to N and run it without a mask, as the reference "
                        "(N = 60); default: DataLoader.Eval.pad_to (null = no padding)")


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    return run_tool(_eval, argv, description=__doc__.split("\n\n")[0], flags=_flags,
                    flag_keys={"pad_to": "DataLoader.Eval.pad_to"}, runtime=True, needs_weights=True)


def _eval(args, cfg, log) -> int:
    pad_to = cfg["DataLoader"]["Eval"]["pad_to"]
    if pad_to is not None and pad_to < 1:
        log.error("--pad-to (DataLoader.Eval.pad_to) must be a positive slice count, got %d", pad_to)
        return 2

    from ppihd.arch import build_model
    from ppihd.data.dataset import SeriesDataset
    from ppihd.engine.evaluator import dataset_prior, evaluate
    from ppihd.utils.checkpoint import load_weights
    from ppihd.utils.config import ConfigError

    try:
        model = build_model(cfg["Arch"])
        load_weights(model, cfg["Global"]["pretrained_model"])
        data = SeriesDataset(cfg, args.split)
        if len(data) == 0:
            raise ValueError(f"split '{args.split}' of the cache index is empty (Data.root={cfg['Data']['root']})")
        if not any(float(it["label_mask"].sum()) > 0 for it in data.items):
            raise ValueError(
                f"split '{args.split}' has no labels ({len(data)} series, {data.num_slices} slices, every label "
                f"unknown): nothing to score. The test split of RSNA-style data is unlabelled; predict it with "
                f"tools/infer.py and score the submission with tools/score_submission.py --labels LABELS.csv")
        prior = dataset_prior(SeriesDataset(cfg, "train"))
    except (ConfigError, FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        log.error("%s", e)
        return 2
    res = evaluate(model, data, cfg, prior=prior)
    res["split"] = args.split
    out = args.output or os.path.join(cfg["Global"]["output_dir"], "eval")
    from ppihd.utils.runlock import RunLock

    lock = RunLock(out, "tools/eval.py").acquire()   # one evaluation per output folder (taken: exit 6, run_tool)
    try:
        return _write_results(res, out, cfg, data, args, log)
    finally:
        lock.release()


def _write_results(res, out, cfg, data, args, log) -> int:
    from ppihd.engine.evaluator import format_metrics, slice_sop_uids, write_predictions_csv
    from ppihd.utils.fileio import atomic_path

    preds = res.pop("predictions")
    preds["sop_uid"] = slice_sop_uids(preds, data)
    write_predictions_csv(preds, os.path.join(out, "predictions.csv"))
    from ppihd.utils.provenance import describe, provenance_of_weights

    prov = provenance_of_weights(cfg["Global"]["pretrained_model"])
    res.update(split=args.split, checkpoint=cfg["Global"]["pretrained_model"], config=cfg.get("_source_"),
               pad_to=cfg["DataLoader"]["Eval"]["pad_to"], model=describe(prov), provenance=prov)
    with atomic_path(os.path.join(out, "metrics.json")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    print(format_metrics(res))
    print(f"wrote {os.path.join(out, 'metrics.json')} and {os.path.join(out, 'predictions.csv')}")
    try:  # ROC / PR, reliability, per-class table (ppihd.engine.eval_plots); metrics.json is written already
        from ppihd.engine.eval_plots import write_eval_plots
        print("wrote " + ", ".join(os.path.basename(q) for q in write_eval_plots(preds, out, res)))
    except Exception as e:
        log.error("eval plots could not be written: %s", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
