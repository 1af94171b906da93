"""Per-pixel segmentation losses: cross-entropy with an ignore index and class weights, the soft
Dice loss, and their weighted sum (``SegmentationLoss``).

Dice (Milletari et al., 2016, soft form): with p the softmax probabilities and y the one-hot
targets over the batch's pixels that are not ``ignore_index``, per class c
``dice_c = (2 sum p_c y_c + smooth) / (sum p_c + sum y_c + smooth)`` and the loss is
``1 - mean_c dice_c`` (class weights, when given, weight that mean). A class absent from both
the targets and the predictions scores 1 through ``smooth``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.ops import _checks

__all__ = ["SegmentationLoss", "dice_loss"]


def _float(logits: Tensor) -> Tensor:
    """float32 or float64 logits as they are, half ones in float32."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _check_smooth(smooth) -> None:
    ok = isinstance(smooth, (int, float)) and not isinstance(smooth, bool)
    try:
        ok = ok and math.isfinite(smooth) and smooth >= 0
    except OverflowError:  # an int beyond float range
        ok = False
    if not ok:
        raise ValueError(f"smooth must be a finite number >= 0, got {smooth!r}")


def _check(logits: Tensor, target: Tensor, ignore_index: int, weight: Tensor | None) -> None:
    if logits.dim() < 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be floating [N, C, ...], got {logits.dtype} {list(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target must have shape {list(logits.shape[:1] + logits.shape[2:])} (logits without C), "
            f"got {list(target.shape)}"
        )
    if target.dtype != torch.int64:
        raise ValueError(f"target must hold int64 class indices, got {target.dtype}")
    if target.device != logits.device:
        raise ValueError(f"target must be on the device of logits, got {target.device} and {logits.device}")
    c = logits.shape[1]
    if weight is not None and (weight.shape != (c,) or not weight.is_floating_point()):
        raise ValueError(
            f"class weights must be a float tensor of shape [{c}], got {weight.dtype} {list(weight.shape)}"
        )
    if _checks.values_readable(target):  # no sync on a device
        t = target[target != ignore_index]
        if bool(((t < 0) | (t >= c)).any()):
            raise ValueError(f"target must hold class indices in [0, {c}) or ignore_index ({ignore_index})")


def dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = -100,
    smooth: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Soft Dice loss of logits ``[N, C, ...]`` against class indices ``[N, ...]`` (module
    docstring); half logits are computed in float32."""
    _check(logits, target, ignore_index, weight)
    _check_smooth(smooth)
    smooth = float(smooth)  # an int past int64 would not mix with a tensor
    c = logits.shape[1]
    probs = _float(logits).softmax(1).movedim(1, -1).reshape(-1, c)
    t = target.reshape(-1)
    keep = (t != ignore_index).unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(t.clamp(0, c - 1) * (t != ignore_index), c).to(probs.dtype) * keep
    probs = probs * keep
    # the per-class ratio in float64: C values, and a large smooth does not overflow float32
    inter, total = (probs * onehot).sum(0).double(), (probs.sum(0) + onehot.sum(0)).double()
    dice = (2 * inter + smooth) / (total + smooth).clamp(min=torch.finfo(torch.float64).tiny)
    loss = 1 - (dice.mean() if weight is None else (weight.double() * dice).sum() / weight.double().sum())
    return loss.to(probs.dtype)


class SegmentationLoss(nn.Module):
    """``ce_weight * cross_entropy + dice_weight * dice``, both with ``ignore_index`` and the
    optional ``class_weights`` [C]. Returns ``{"loss", "ce", "dice"}``."""

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int = -100,
        class_weights: Tensor | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0:
            raise ValueError(f"ce_weight and dice_weight must be >= 0, got {ce_weight}, {dice_weight}")
        self.ce_weight, self.dice_weight, self.ignore_index, self.smooth = (
            ce_weight,
            dice_weight,
            ignore_index,
            smooth,
        )
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> dict:
        w = self.class_weights
        dice = dice_loss(logits, target, self.ignore_index, self.smooth, w)
        ce = F.cross_entropy(
            _float(logits), target, weight=None if w is None else w.float(), ignore_index=self.ignore_index
        )
        return {"loss": self.ce_weight * ce + self.dice_weight * dice, "ce": ce, "dice": dice}
