"""Per-slice feature extractors (intra-slice models)."""
from .swin import BACKBONES, VARIANTS, SwinTransformer

__all__ = ["BACKBONES", "VARIANTS", "SwinTransformer"]
