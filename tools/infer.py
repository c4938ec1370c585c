"""Predict DICOM series with a trained checkpoint (dygraph).

    python tools/infer.py -c configs/swin_b_seq.yaml -o Global.pretrained_model=output/swin_b_seq/best.pdparams \
        --input /data/stage_2_test --output output/infer [--batch-series 2 --threads 4 --device cpu --precision fp16]

Writes OUT/studies.csv (one answer per study), OUT/series.csv (every series with its role), OUT/predictions.csv,
OUT/submission.csv, OUT/skipped.csv, OUT/studies/<study_id>.json and OUT/series/<series_id>.{png,json}.
Exit status: 0 all input files predicted, 3 some skipped (see skipped.csv), 4 nothing predicted, 5 outputs could
not be written (disk full, read-only), 6 another run holds the output folder,
2 bad command line / config / checkpoint. See docs/inference.md.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flags(p) -> None:
    p.add_argument("--input", "-i", nargs="+", required=True, help="DICOM files and/or folders (any nesting)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--batch-series", type=int, default=None, help="series per forward pass (Infer.batch_series)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (Global.num_threads)")
    p.add_argument("--device", default=None, help="cpu | gpu | gpu:N | auto (GPU when one is visible, else CPU; Global.device)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                   help="fp16 = the forward under paddle.amp.auto_cast O1 on a GPU with compute capability >= 7.0 "
                        "(Infer.precision; not bit-equal to fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    return run_tool(_infer, argv, description=__doc__.split("\n\n")[0], flags=_flags, runtime=True,
                    needs_weights=True, flag_keys={"batch_series": "Infer.batch_series", "threads": "Global.num_threads",
                                                   "device": "Global.device", "precision": "Infer.precision"})


def _infer(args, cfg, log) -> int:
    try:
        from ppihd.arch import build_model
        from ppihd.engine.backends import DygraphBackend
        from ppihd.utils.checkpoint import load_weights

        if cfg["Infer"]["trt"]:
            raise ValueError("Infer.trt (TensorRT) runs an exported model: tools/export_model.py, then "
                             "deploy/python/predict.py --trt")
        model = build_model(cfg["Arch"])
        load_weights(model, cfg["Global"]["pretrained_model"])
        backend = DygraphBackend(model, cfg["Infer"]["batch_series"], cfg["Infer"]["precision"])
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        log.error("%s", e)
        return 2
    from ppihd.engine.predictor import run_inference
    from ppihd.utils.env import show_progress
    from ppihd.utils.provenance import provenance_of_weights

    res = run_inference(args.input, args.output, backend,
                        cfg["Data"], cfg["Infer"], num_workers=int(cfg["Data"]["num_workers"]),
                        progress=show_progress(cfg["Global"]["progress_bar"] and not args.no_progress), logger=log,
                        tool="tools/infer.py", provenance=provenance_of_weights(cfg["Global"]["pretrained_model"]))
    return int(res["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
