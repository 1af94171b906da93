"""Semantic segmentation metrics from a confusion matrix accumulated over a whole dataset on the
predictions' device: per-class IoU, mIoU, pixel accuracy and per-class accuracy. ``update`` is a
``bincount`` on the device (no host sync per batch); ``compute`` reads the figures once.

Conventions (torchmetrics' ``MulticlassJaccardIndex`` / ``MulticlassAccuracy`` with
``average=None``, which the tests compare against): rows are the true class, columns the
predicted one; pixels whose target is ``ignore_index`` are left out; a class that appears in
neither the targets nor the predictions has an IoU of NaN and is left out of the mean.
"""

from typing import Optional

import torch
from torch import Tensor

from fastmtl.ops import _checks

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """A ``[C, C]`` int64 confusion matrix, accumulated by :meth:`update` over batches."""

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None, device="cpu") -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: class indices ``[N, H, W]`` (any shape like ``target``) or scores
        ``[N, C, H, W]`` (the class axis second, argmax taken); ``target``: class indices."""
        c = self.num_classes
        if preds.is_floating_point():
            if preds.dim() != target.dim() + 1 or preds.shape[1] != c:
                shapes = f"{tuple(preds.shape)} for target {tuple(target.shape)}"
                raise ValueError(f"score preds must be [N, {c}, ...], got {shapes}")
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(
                f"preds and target must have one shape, got {tuple(preds.shape)}, {tuple(target.shape)}"
            )
        if target.is_floating_point():
            raise ValueError(f"target must hold integer class indices, got {target.dtype}")
        keep = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target).bool()
        )
        t, p = target[keep].long(), preds[keep].long()
        if _checks.values_readable(t) and bool(((t < 0) | (t >= c) | (p < 0) | (p >= c)).any()):
            raise ValueError(f"preds and target must hold class indices in [0, {c}) (or ignore_index)")
        self.matrix += torch.bincount(t * c + p, minlength=c * c).reshape(c, c).to(self.matrix.device)

    def compute(self) -> dict:
        """``{"iou" [C], "miou", "pixel_accuracy", "class_accuracy" [C]}`` as float64 tensors."""
        m = self.matrix.double()
        tp, truth, predicted = m.diagonal(), m.sum(1), m.sum(0)
        union = truth + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        return {
            "iou": iou,
            "miou": iou.nanmean(),
            "pixel_accuracy": tp.sum() / m.sum().clamp(min=1),
            "class_accuracy": torch.where(
                truth > 0, tp / truth.clamp(min=1), torch.full_like(tp, float("nan"))
            ),
        }
