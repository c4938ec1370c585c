"""Export a trained checkpoint for Paddle Inference (and optionally ONNX).

    python tools/export_model.py -c configs/swin_b_seq.yaml -o Global.pretrained_model=best.pdparams \
        -o Global.save_inference_dir=output/inference [-o Export.onnx=True]

Writes inference.json (Paddle 3) or inference.pdmodel (Paddle 2.6) + inference.pdiparams, inference.yml
(preprocessing, labels, input/output spec, versions) and, with Export.onnx, inference.onnx.
Input: float32 images [1, S, 3, H, W] in [0, 1], S dynamic; output: sigmoid probabilities [1, S, 6].
Exit status: 0 done, 2 bad command line / config / checkpoint, 6 another export holds the folder.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from ppihd.utils.config import ConfigError, add_config_args, load_config
    from ppihd.utils.env import get_logger

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    args = p.parse_args(argv)
    log = get_logger()
    try:
        cfg = load_config(args.config, args.override)
        if not cfg["Global"]["pretrained_model"]:
            raise ConfigError("Global.pretrained_model is not set: pass -o Global.pretrained_model=PATH.pdparams")
        from ppihd.arch import build_model
        from ppihd.engine.exporter import export_model
        from ppihd.utils.checkpoint import load_weights
        from ppihd.utils.env import setup_runtime

        setup_runtime(cfg)
        model = build_model(cfg["Arch"])
        load_weights(model, cfg["Global"]["pretrained_model"])
        model.eval()
        from ppihd.utils.runlock import LockError, RunLock

        with RunLock(cfg["Global"]["save_inference_dir"], "tools/export_model.py"):   # one exporter per folder
            files = export_model(model, cfg)
    except LockError as e:
        log.error("%s", e)
        return 6
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        log.error("%s", e)
        return 2
    for k, v in files.items():
        log.info("%s: %s", k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
