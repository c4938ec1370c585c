"""Export a trained checkpoint for Paddle Inference (and optionally ONNX).

    python tools/export_model.py -c configs/swin_b_seq.yaml -o Global.pretrained_model=best.pdparams \
        -o Global.save_inference_dir=output/inference [-o Export.onnx=True]

Writes inference.json (Paddle 3) or inference.pdmodel (Paddle 2.6) + inference.pdiparams, inference.yml
(preprocessing, labels, input/output spec, versions) and, with Export.onnx, inference.onnx.
Input: float32 images [1, S, 3, H, W] in [0, 1], S dynamic; output: sigmoid probabilities [1, S, 6].
Exit status: 0 done, 2 bad command line / config / checkpoint, 6 another export holds the folder.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    return run_tool(_export, argv, description=__doc__.split("\n\n")[0], runtime=True, needs_weights=True)


def _export(args, cfg, log) -> int:
    from ppihd.utils.runlock import LockError, RunLock

    try:
        from ppihd.arch import build_model
        from ppihd.engine.exporter import export_model
        from ppihd.utils.checkpoint import load_weights

        model = build_model(cfg["Arch"])
        load_weights(model, cfg["Global"]["pretrained_model"])
        model.eval()
        with RunLock(cfg["Global"]["save_inference_dir"], "tools/export_model.py"):   # one exporter per folder
            files = export_model(model, cfg)
    except LockError:
        raise   # exit 6 (run_tool); a LockError is a RuntimeError, which the next clause maps to 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        log.error("%s", e)
        return 2
    for k, v in files.items():
        log.info("%s: %s", k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
