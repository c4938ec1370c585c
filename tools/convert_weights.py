"""Convert an official (Microsoft) or timm Swin v1 checkpoint to a PaddleClas-named ``.pdparams``.

    python tools/convert_weights.py swin_base_patch4_window7_224.pth -o swin_b_paddle.pdparams
    python tools/convert_weights.py timm_swin_base.safetensors -o swin_b_paddle.pdparams

Reading ``.pth`` / ``.bin`` needs torch (``pip install torch --index-url https://download.pytorch.org/whl/cpu``);
``.safetensors`` needs the ``safetensors`` package; ``.npz`` and ``.pkl`` (a pickled dict of numpy arrays)
need neither. Nothing is downloaded. The output loads with ``-o Arch.pretrained=swin_b_paddle.pdparams``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Any, Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_checkpoint(path: str) -> Dict[str, Any]:
    """A dict of arrays from .pth/.pt/.bin (torch), .safetensors, .npz or .pkl."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise SystemExit(f"checkpoint not found: {path}")
    if ext in (".npz",):
        import numpy as np
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if ext in (".pkl", ".pickle"):
        with open(path, "rb") as f:
            return pickle.load(f)
    if ext == ".safetensors":
        try:
            from safetensors.numpy import load_file  # type: ignore
        except ImportError as e:
            raise SystemExit(f"{path}: reading .safetensors needs `pip install safetensors`") from e
        return load_file(path)
    try:
        import torch  # type: ignore
    except ImportError as e:
        raise SystemExit(f"{path}: reading torch checkpoints needs torch (CPU build is enough); "
                         "or export the state dict to .npz first") from e
    return torch.load(path, map_location="cpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="official / timm Swin v1 checkpoint")
    ap.add_argument("-o", "--output", required=True, help="output .pdparams (PaddleClas names)")
    ap.add_argument("--keep-head", action="store_true", help="keep the ImageNet classifier (dropped by default)")
    args = ap.parse_args(argv)

    import paddle

    from ppihd.arch.weights import convert_torch_swin

    state = read_checkpoint(args.checkpoint)
    out, notes = convert_torch_swin(state)
    if not args.keep_head:
        dropped = [k for k in out if k.startswith("head.")]
        for k in dropped:
            out.pop(k)
        if dropped:
            notes.append(f"dropped classifier ({', '.join(dropped)})")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    from ppihd.utils.fileio import atomic_path

    with atomic_path(args.output) as tmp:
        paddle.save({k: paddle.to_tensor(v) for k, v in out.items()}, tmp)
    for n in notes:
        print(f"  {n}")
    print(f"wrote {args.output}: {len(out)} arrays, {sum(int(v.size) for v in out.values()) / 1e6:.2f} M values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
