"""Print the model's parameters per part and MACs per slice.

    python tools/model_summary.py -c configs/swin_b_seq.yaml
    python tools/model_summary.py -c configs/swin_b_seq.yaml -o Data.image_size=256 --series-length 40 --json out.json

MACs are counted analytically (conv, Linear, attention products); ``--verify`` also measures the
conv + Linear part with forward hooks on one image.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flags(ap) -> None:
    ap.add_argument("--series-length", type=int, default=60, help="slices per series for the sequence MACs")
    ap.add_argument("--verify", action="store_true", help="measure conv + Linear MACs with hooks (slow for base)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")


def main(argv=None) -> int:
    from ppihd.utils.cli import run_tool

    return run_tool(_summary, argv, description=__doc__.splitlines()[0], flags=_flags)


def _summary(args, cfg, log) -> int:
    import paddle

    from ppihd.arch import build_model
    from ppihd.arch.summary import measure_linear_macs, model_summary

    arch = dict(cfg["Arch"])
    arch["pretrained"] = None  # sizes do not depend on weights
    model = build_model(arch)
    model.eval()
    size = int(cfg["Data"]["image_size"])
    s = model_summary(model, size, size, args.series_length)
    p, m = s["params"], s["macs_per_slice"]
    bb = model.backbone
    print(f"config {args.config}: {type(model).__name__}, backbone Swin-{bb.variant} embed {bb.embed_dim} "
          f"depths {bb.depths} heads {bb.num_heads} window {bb.window_size} post_norm {bb.post_norm}")
    print("parameters")
    for k in ("backbone", "head1", "sequence", "head2", "total"):
        print(f"  {k:<10} {p[k]:>14,d}  ({p[k] / 1e6:.2f} M)")
    print(f"  backbone + ImageNet 1000-class head (PaddleClas count): "
          f"{s['backbone_params_with_imagenet_head'] / 1e6:.2f} M")
    print(f"MACs per {size}x{size} slice (sequence averaged over {args.series_length} slices)")
    for k in ("backbone", "heads", "sequence", "total"):
        print(f"  {k:<10} {m[k]:>16,d}  ({m[k] / 1e9:.3f} G)")
    print("  backbone by component: " + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in s["backbone_macs"].items()
                                                  if k != "total"))
    if args.verify:
        measured = measure_linear_macs(bb, paddle.zeros([1, 3, size, size]))
        bm = s["backbone_macs"]
        analytic = bm["total"] - bm["attn_qk"] - bm["attn_v"]
        print(f"verify: conv + Linear MACs measured with hooks {measured:,d}, analytic {analytic:,d} "
              f"({'match' if measured == analytic else 'MISMATCH'})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(s, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
