"""Score study-level predictions (inference studies.csv) against a labels CSV.

    python tools/eval_studies.py --pred output/infer/studies.csv --labels labels.csv \
        --output output/infer/study_eval [--threshold 0.5] [--bootstrap 2000] [--seed 0]

labels.csv: one row per study; an id column (study_uid, StudyInstanceUID, study_folder, study, name or folder)
matched to studies.csv study_uid, else study_folder; 0/1 columns for any of the six classes (names or ICH, IPH,
IVH, SAH, SDH, EDH; reader columns R1:ICH, R2:ICH, R3:ICH... are combined by majority vote, e.g. CQ500 reads.csv).
Writes OUTPUT/study_eval.json (per class: n, positives, AUC, sensitivity / specificity at p > threshold, the
Youden point, bootstrap 95 % intervals; unmatched / missing studies) and OUTPUT/roc.png; prints a table.
Exit status: 0 done, 2 bad command line or input file (the message names the file and the problem).
See docs/inference.md, "Scoring studies against labels".
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plot_roc(res: dict, path: str) -> str:
    """One ROC curve per labelled class; AUC [CI] in the legend; the threshold and Youden points marked."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ppihd import LABELS
    from ppihd.engine.report import LABEL_COLORS
    from ppihd.utils.fileio import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    ax.plot([0, 1], [0, 1], color="#999999", ls="--", lw=1, label="chance (AUC 0.5)")
    for cls, r in res["classes"].items():
        color = LABEL_COLORS[LABELS.index(cls)]
        if r["roc"] is None:
            ax.plot([], [], color=color, label=f"{cls}: no AUC, {r['auc_reason']}")
            continue
        ci = (r["ci"] or {}).get("auc")
        label = f"{cls}: AUC {r['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], color=color, lw=2.4 if cls == "any" else 1.6,
                label=f"{label}  (n={r['n']}, {r['positives']} pos.)")
        ax.plot(1 - r["specificity"], r["sensitivity"], "o", ms=8, mfc=color, mec="black", zorder=5)
        y = r["youden"]
        ax.plot(1 - y["specificity"], y["sensitivity"], "*", ms=13, mfc="white", mec=color, mew=1.6, zorder=5)
    ax.plot([], [], "o", ms=8, mfc="#bbbbbb", mec="black", ls="", label=f"p > {res['threshold']:g}")
    ax.plot([], [], "*", ms=13, mfc="white", mec="#444444", ls="", label="Youden point (max sens+spec-1)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Study-level ROC: {res['n_evaluated']} studies, 95% CI from {res['bootstrap']['resamples']} "
                 f"bootstrap resamples\n{os.path.basename(res['predictions_file'])} vs "
                 f"{os.path.basename(res['labels_file'])}", fontsize=10)
    return save_figure(fig, path)


def main(argv=None) -> int:
    from ppihd.metric.study_eval import StudyEvalError, evaluate_studies, format_table
    from ppihd.utils.env import get_logger
    from ppihd.utils.fileio import atomic_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="studies.csv written by tools/infer.py")
    p.add_argument("--labels", required=True, help="labels CSV, one row per study")
    p.add_argument("--output", required=True, help="output folder (study_eval.json, roc.png)")
    p.add_argument("--threshold", type=float, default=0.5, help="a study is positive when p > threshold (0.5)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CIs (2000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    args = p.parse_args(argv)
    log = get_logger()
    if args.bootstrap < 0:
        log.error("--bootstrap must be >= 0, got %d", args.bootstrap)
        return 2
    try:
        res = evaluate_studies(args.pred, args.labels, args.threshold, args.bootstrap, args.seed)
    except StudyEvalError as e:
        log.error("%s", e)
        return 2
    for cls, r in res["classes"].items():
        if "majority" in r["label_source"]:
            log.info("%s labels: %s", cls, r["label_source"])
        if r["auc_reason"]:
            log.warning("%s: no AUC, %s", cls, r["auc_reason"])
    for key, what in (("unmatched_labels", "labelled studies have no row in the predictions"),
                      ("missing_prediction", "labelled studies have no probability (no usable series)")):
        if res[key]["count"]:
            ids = res[key]["ids"]
            log.warning("%d of %d %s; scored without them: %s%s", res[key]["count"], res["n_labels"], what,
                        ", ".join(ids[:5]), " ..." if len(ids) > 5 else "")
    os.makedirs(args.output, exist_ok=True)
    out_json = os.path.join(args.output, "study_eval.json")
    with atomic_path(out_json) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    out_png = plot_roc(res, os.path.join(args.output, "roc.png"))
    print(format_table(res))
    print(f"wrote {out_json} and {out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
