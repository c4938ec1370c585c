"""Slice-level backbone pre-training on the cache (the CPU demo's stand-in for ImageNet weights; not in the paper).

    python tools/pretrain_slices.py -c configs/demo/swin_micro_seq.yaml -o Global.output_dir=output/demo
    python tools/train.py -c configs/demo/swin_micro_seq.yaml \\
        -o Arch.pretrained=output/demo/slice_pretrain/backbone.pdparams        # then the paper's end-to-end training

Trains Arch.backbone + a linear slice head on SlicePretrain.batch_slices random slices per step drawn across all
training series (static class-weighted BCE), evaluates the slice head on the val split every
SlicePretrain.eval_interval iterations, and writes <out>/backbone.pdparams (best val weighted log loss),
<out>/last.pdparams and <out>/metrics.json, out = SlicePretrain.output_dir or <Global.output_dir>/slice_pretrain.
Exit status: 0 done, 2 bad command line / config / data. See docs/training.md "Demo".
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    return run_tool(_pretrain, argv, description=__doc__.split("\n\n")[0], runtime=True)


def _pretrain(args, cfg, log) -> int:
    from ppihd.engine.slice_pretrain import SlicePretrainer
    from ppihd.utils.config import save_config

    try:
        pre = SlicePretrainer(cfg)
    except (FileNotFoundError, ValueError, KeyError) as e:
        log.error("%s", e)
        return 2
    os.makedirs(pre.out_dir, exist_ok=True)
    save_config(cfg, os.path.join(pre.out_dir, "config.yaml"))
    res = pre.run()
    best = res["best"]
    if "val_wll" in best:
        print(f"slice pre-training: best val weighted log loss {best['val_wll']:.5f} at iteration {best['iter']} "
              f"(constant-prior baseline {best['baseline']:.5f}; ratio {best['ratio']:.3f}; AUC any "
              f"{best['auc_any']:.3f}) -> {res['backbone']}")
    else:
        print(f"slice pre-training: no val split; last weights -> {res['backbone']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
