"""IHDNet: Swin per slice + deep-supervision head 1 + sequence transformer + head 2 (Shang et al. 2022, Fig. 1)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn

from ppihd.utils.registry import Registry

from .backbone import BACKBONES
from .sequence import SequenceTransformer

ARCHS = Registry("arch")


@ARCHS.register
class IHDNet(nn.Layer):
    """The whole model.

    Args:
        backbone: ``Arch.backbone`` (``name`` selects a registered backbone; the rest are its kwargs).
        sequence: ``Arch.sequence`` kwargs of :class:`SequenceTransformer` (d_model = backbone features).
        inter_slice: sequence transformer on (paper's InterExt); off = head 2 directly on slice features.
        deep_supervision: auxiliary head 1 on every slice's features (paper's DS).
        num_classes: 6 (RSNA labels, ``ppihd.LABELS`` order).
        pretrained: ImageNet backbone weights loaded at build time (see :mod:`ppihd.arch.weights`).
        head_init: ``default`` (Paddle's Linear init, as the reference code) | ``zero`` (head 1 and head 2
            weights 0, so both heads start at the constant ``head_bias`` whatever the features).
        head_bias: initial head 1 / head 2 bias: ``None`` (0) or ``num_classes`` logits, e.g. the training
            prevalences' logits so that training starts from the constant prior.
        init: ``paddle`` (Paddle's layer defaults: Xavier-uniform ``Linear`` weights, zero biases) |
            ``reference`` (the authors' code: every ``Linear`` of the sequence encoder -- q/k/v/out projections
            and both feed-forward layers, in both layers -- weights Uniform(-0.1, 0.1) and biases 0, LayerNorms
            left at 1 / 0; head 1 weights TruncatedNormal(std 0.02) cut at +-2 std, bias 0; head 2 keeps Paddle's
            ``Linear`` default as there). Applied before ``head_init`` / ``head_bias``, which override it.

    ``forward(images [B, S, 3, H, W] float in [0, 1], mask bool [B, S] | None)``: in ``train()`` mode
    ``{"logits": head 2 [B, S, 6], "aux_logits": head 1 [B, S, 6]}`` (no ``aux_logits`` without deep
    supervision); in ``eval()`` mode head-2 logits ``[B, S, 6]``. Padded slices (mask False) are not run
    through the backbone; their features are zero.
    """

    def __init__(self, backbone: Mapping[str, Any], sequence: Optional[Mapping[str, Any]] = None,
                 inter_slice: bool = True, deep_supervision: bool = True, num_classes: int = 6,
                 pretrained: Optional[str] = None, head_init: str = "default",
                 head_bias: Optional[Sequence[float]] = None, init: str = "paddle") -> None:
        super().__init__()
        self.backbone = BACKBONES.build(dict(backbone))
        d = int(self.backbone.num_features)
        self.num_features = d
        self.inter_slice = bool(inter_slice)
        self.deep_supervision = bool(deep_supervision)
        self.num_classes = int(num_classes)
        self.head1 = nn.Linear(d, num_classes) if self.deep_supervision else None
        self.sequence = SequenceTransformer(d_model=d, **dict(sequence or {})) if self.inter_slice else None
        self.head2 = nn.Linear(d, num_classes)
        if init not in ("paddle", "reference"):
            raise ValueError(f"Arch.init '{init}' unknown; expected paddle | reference")
        if init == "reference":
            self._reference_init()
        if head_init not in ("default", "zero"):
            raise ValueError(f"Arch.head_init '{head_init}' unknown; expected default | zero")
        if head_bias is not None and len(head_bias) != self.num_classes:
            raise ValueError(f"Arch.head_bias has {len(head_bias)} values, expected num_classes = {num_classes}")
        for head in (self.head1, self.head2):
            if head is None:
                continue
            if head_init == "zero":
                nn.initializer.Constant(0.0)(head.weight)
            if head_bias is not None:
                head.bias.set_value(np.asarray(head_bias, dtype="float32"))
        self.load_report = None
        if pretrained:
            from .weights import load_backbone_pretrained
            self.load_report = load_backbone_pretrained(self.backbone, pretrained)

    def _reference_init(self) -> None:
        """``Arch.init: reference`` (see the class docstring). Paddle 2.x's ``TruncatedNormal`` (the paper's
        Paddle 2.2) cut at mean +- 2 std; Paddle 3 takes absolute bounds (default +-2), so they are given."""
        uniform, zero = nn.initializer.Uniform(-0.1, 0.1), nn.initializer.Constant(0.0)
        if self.sequence is not None:
            for layer in self.sequence.encoder.sublayers():
                if isinstance(layer, nn.Linear):
                    uniform(layer.weight)
                    if layer.bias is not None:
                        zero(layer.bias)
        if self.head1 is not None:
            try:
                trunc = nn.initializer.TruncatedNormal(mean=0.0, std=0.02, a=-0.04, b=0.04)
            except TypeError:  # Paddle 2.x: no bounds argument, cut at +-2 std
                trunc = nn.initializer.TruncatedNormal(mean=0.0, std=0.02)
            trunc(self.head1.weight)
            zero(self.head1.bias)

    def slice_features(self, images: paddle.Tensor, mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """images ``[B, S, 3, H, W]`` -> backbone features ``[B, S, D]`` (zeros for padded slices)."""
        b, s = images.shape[0], images.shape[1]
        flat = images.reshape([-1] + list(images.shape[2:]))
        if s is not None and s >= 0:
            out_shape = [-1, s, self.num_features]
        elif b is not None and b >= 0:
            out_shape = [b, -1, self.num_features]
        else:  # both dynamic (static graph): take them from the tensor
            shp = paddle.shape(images)
            out_shape = [shp[0], shp[1], self.num_features]
        if mask is None:
            return self.backbone.forward_features(flat).reshape(out_shape)
        m = mask.reshape([-1]).astype("int64")
        idx = paddle.nonzero(m).reshape([-1])  # real slices
        n_real = idx.shape[0]
        if n_real == 0:
            return paddle.zeros([b, s, self.num_features], dtype=flat.dtype)  # (dygraph only: all padding)
        feats = self.backbone.forward_features(paddle.gather(flat, idx))  # [n_real, D]
        feats = paddle.concat([feats, paddle.zeros([1, self.num_features], dtype=feats.dtype)], axis=0)
        # position of each slot among the real slices; padded slots point at the zero row
        rank = paddle.cumsum(m, axis=0) - 1
        where = paddle.where(m > 0, rank, paddle.full_like(rank, n_real))
        return paddle.gather(feats, where).reshape(out_shape)

    def series_logits(self, feats: paddle.Tensor, mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """Slice features ``[B, S, D]`` -> head-2 logits ``[B, S, 6]`` (sequence transformer, then head 2)."""
        seq = self.sequence(feats, mask) if self.sequence is not None else feats
        return self.head2(seq)

    def _check_inputs(self, images: paddle.Tensor, mask: Optional[paddle.Tensor]) -> Optional[paddle.Tensor]:
        if len(images.shape) != 5:
            raise ValueError(f"IHDNet expects images [B, S, 3, H, W], got shape {list(images.shape)}")
        if mask is None:
            return None
        if list(mask.shape) != list(images.shape[:2]) and -1 not in list(images.shape[:2]):
            raise ValueError(f"IHDNet: mask shape {list(mask.shape)} does not match images [B, S] = "
                             f"{list(images.shape[:2])}")
        return mask if mask.dtype == paddle.bool else mask.astype("bool")

    def heads(self, images: paddle.Tensor, mask: Optional[paddle.Tensor] = None
              ) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
        """Head-2 and head-1 logits ``[B, S, 6]`` (head 1 None without deep supervision), one backbone pass."""
        mask = self._check_inputs(images, mask)
        feats = self.slice_features(images, mask)
        return self.series_logits(feats, mask), (self.head1(feats) if self.head1 is not None else None)

    def forward(self, images: paddle.Tensor, mask: Optional[paddle.Tensor] = None
                ) -> Union[paddle.Tensor, Dict[str, paddle.Tensor]]:
        """See the class docstring."""
        if not self.training:
            mask = self._check_inputs(images, mask)
            return self.series_logits(self.slice_features(images, mask), mask)
        logits, aux = self.heads(images, mask)
        return {"logits": logits} if aux is None else {"logits": logits, "aux_logits": aux}


def build_model(arch_cfg: Mapping[str, Any]) -> nn.Layer:
    """Build the model from the ``Arch`` config section (``name`` selects the registered architecture)."""
    cfg = copy.deepcopy(dict(arch_cfg))
    return ARCHS.build(cfg)
