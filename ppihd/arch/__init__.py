"""Model: Swin backbone, sequence transformer, IHDNet, pretrained-weight loading.

    from ppihd.arch import build_model
    model = build_model(cfg["Arch"])           # IHDNet
    out = model(images, mask)                  # train(): {"logits", "aux_logits"}; eval(): logits [B, S, 6]
"""
from .backbone import BACKBONES, VARIANTS, SwinTransformer
from .ihdnet import ARCHS, IHDNet, build_model
from .sequence import SequenceTransformer, sinusoidal_encoding

__all__ = ["ARCHS", "BACKBONES", "VARIANTS", "IHDNet", "SequenceTransformer", "SwinTransformer",
           "build_model", "sinusoidal_encoding"]
