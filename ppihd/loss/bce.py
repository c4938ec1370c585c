"""Masked, weighted BCE-with-logits (docs/model.md, loss) and the deep-supervision / FixMatch total.

Per element (series b, slice s, class c) with logit x, label y in [0, 1]::

    l = w_c * ( p_c * y * softplus(-x) + (1 - y) * softplus(x) )

``softplus(-x) = -log sigmoid(x)`` and ``softplus(x) = -log(1 - sigmoid(x))`` (numerically stable).
``w_c`` are the static class weights (SW, any = 2) or 1; ``p_c`` is the dynamic positive weight (DW, the
reference formula) or 1::

    p_c = 2 * n-_c / (n+_c + n-_c + 1e-7)

with n+_c / n-_c the positive / negative labels of class c over the batch's VALID elements. Only positives
are scaled. A class whose valid labels are all positive gets p_c = 0, i.e. it contributes nothing (the
reference's behaviour, kept); all negative gives p_c = 2 but there is no positive to scale.
The loss is the sum over valid elements divided by their count (``mask`` [B, S] x ``label_mask`` [B, S, 6]);
with no valid element it is 0 (no NaN).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import paddle
import paddle.nn.functional as F

Tensor = paddle.Tensor


def _as_tensor(x: Any, dtype: str = "float32") -> Tensor:
    if isinstance(x, paddle.Tensor):
        return x.astype(dtype) if x.dtype != getattr(paddle, dtype) else x
    return paddle.to_tensor(x, dtype=dtype)


def valid_weights(labels: Tensor, mask: Optional[Any] = None, label_mask: Optional[Any] = None) -> Tensor:
    """Float [B, S, C] weights: 1 where the slice is real (``mask`` [B, S]) and the label is known."""
    v = paddle.ones_like(labels)
    if mask is not None:
        v = v * _as_tensor(mask).unsqueeze(-1)
    if label_mask is not None:
        v = v * _as_tensor(label_mask)
    return v


def dynamic_pos_weight(labels: Tensor, valid: Tensor, eps: float = 1e-7) -> Tensor:
    """Reference DW: ``p_c = 2 n-_c / (n+_c + n-_c + eps)`` over valid elements. Returns [C] (no gradient)."""
    c = labels.shape[-1]
    y = labels.reshape([-1, c])
    v = valid.reshape([-1, c])
    n_pos = (y * v).sum(axis=0)
    n_neg = ((1.0 - y) * v).sum(axis=0)
    return (2.0 * n_neg / (n_pos + n_neg + eps)).detach()


def weighted_bce_with_logits(logits: Tensor, labels: Tensor, valid: Tensor,
                             class_weights: Optional[Union[Sequence[float], Tensor]] = None,
                             pos_weight: Optional[Tensor] = None) -> Tensor:
    """Mean weighted BCE over valid elements. ``logits``, ``labels``, ``valid``: [..., C]. Returns a scalar."""
    logits = logits.astype("float32")
    pos_term = F.softplus(-logits)
    neg_term = F.softplus(logits)
    if pos_weight is not None:
        pos_term = pos_term * pos_weight
    elem = labels * pos_term + (1.0 - labels) * neg_term
    if class_weights is not None:
        cw = class_weights if isinstance(class_weights, paddle.Tensor) else paddle.to_tensor(
            list(class_weights), dtype="float32")
        elem = elem * cw
    total = (elem * valid).sum()
    count = valid.sum()
    return total / paddle.clip(count, min=1.0)


class IHDLoss:
    """The paper's training loss: ``head2_weight * L2 + head1_weight * L1 (+ unlabeled_weight * L_u)``.

    Call ``loss(outputs, labels, mask, label_mask=None, is_pseudo=None)``:

    - ``outputs``: the model's training output ``{"logits": [B, S, 6], "aux_logits": [B, S, 6]}`` (or a bare
      head-2 logits tensor); ``aux_logits`` is ignored when deep supervision is off.
    - ``labels`` float [B, S, 6]; ``mask`` bool/float [B, S] (True = real slice); ``label_mask`` [B, S, 6].
    - ``is_pseudo`` bool [B] (optional, FixMatch): series carrying pseudo-labels. Their slices are removed from
      L2 / L1 and form ``L_u`` = the same weighted BCE on head 2 (the prediction head) against the pseudo-labels.

    Returns ``{"loss", "l2", "l1" (if DS), "lu" (if is_pseudo given)}``; every value is a scalar tensor.
    DW is computed separately for the labelled and the pseudo-labelled elements.
    """

    def __init__(self, static_weight: bool = True, class_weights: Sequence[float] = (1, 1, 1, 1, 1, 2),
                 dynamic_weight: bool = True, head2_weight: float = 2.0, head1_weight: float = 1.0,
                 unlabeled_weight: float = 1.0, dynamic_weight_eps: float = 1e-7,
                 deep_supervision: bool = True) -> None:
        if static_weight and len(class_weights) != 6:
            raise ValueError(f"Loss.class_weights must have 6 values (LABELS order), got {list(class_weights)}")
        self.class_weights = [float(w) for w in class_weights] if static_weight else None
        self.dynamic_weight = bool(dynamic_weight)
        self.head2_weight = float(head2_weight)
        self.head1_weight = float(head1_weight)
        self.unlabeled_weight = float(unlabeled_weight)
        self.eps = float(dynamic_weight_eps)
        self.deep_supervision = bool(deep_supervision)
        self._cw: Dict[str, Tensor] = {}

    def _class_weights(self) -> Optional[Tensor]:
        """The static weights as a float32 tensor, built once per device (not a host -> device copy per term and
        step)."""
        if self.class_weights is None:
            return None
        dev = str(paddle.device.get_device())
        if dev not in self._cw:
            self._cw[dev] = paddle.to_tensor(self.class_weights, dtype="float32")
        return self._cw[dev]

    def _term(self, logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
        pw = dynamic_pos_weight(labels, valid, self.eps) if self.dynamic_weight else None
        return weighted_bce_with_logits(logits, labels, valid, self._class_weights(), pw)

    def __call__(self, outputs: Union[Mapping[str, Tensor], Tensor], labels: Any, mask: Any = None,
                 label_mask: Any = None, is_pseudo: Any = None) -> Dict[str, Tensor]:
        if isinstance(outputs, Mapping):
            logits = outputs["logits"]
            aux = outputs.get("aux_logits")
        else:
            logits, aux = outputs, None
        labels = _as_tensor(labels)
        valid = valid_weights(labels, mask, label_mask)
        out: Dict[str, Tensor] = {}
        if is_pseudo is not None:
            pseudo = _as_tensor(is_pseudo).reshape([-1, 1, 1])
            v_lab, v_pse = valid * (1.0 - pseudo), valid * pseudo
        else:
            v_lab, v_pse = valid, None
        l2 = self._term(logits, labels, v_lab)
        out["l2"] = l2
        total = self.head2_weight * l2
        if self.deep_supervision:
            if aux is None:
                raise KeyError("Loss: deep supervision is on (Arch.deep_supervision) but the model output has no "
                               "'aux_logits'")
            l1 = self._term(aux, labels, v_lab)
            out["l1"] = l1
            total = total + self.head1_weight * l1
        if v_pse is not None:
            lu = self._term(logits, labels, v_pse)
            out["lu"] = lu
            total = total + self.unlabeled_weight * lu
        out["loss"] = total
        return out
