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


def _out_of_range(t: Tensor, p: Tensor, c: int) -> bool:
    if t.numel() == 0:
        return False
    (t_lo, t_hi), (p_lo, p_hi) = torch.aminmax(t), torch.aminmax(p)
    return bool(t_lo < 0) or bool(t_hi >= c) or bool(p_lo < 0) or bool(p_hi >= c)


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
            preds = preds.max(1).indices  # argmax, the first on ties: 8x faster than argmax(1) on the CPU
        if preds.shape != target.shape:
            raise ValueError(
                f"preds and target must have one shape, got {tuple(preds.shape)}, {tuple(target.shape)}"
            )
        if target.is_floating_point():
            raise ValueError(f"target must hold integer class indices, got {target.dtype}")
        t, p = target.long(), preds.long()
        ignored = t == self.ignore_index if self.ignore_index is not None else None
        if ignored is not None:  # counted in an extra bin, dropped below: no boolean indexing, no sync
            t, p = t.masked_fill(ignored, 0), p.masked_fill(ignored, 0)
        if _checks.values_readable(t) and _out_of_range(t, p, c):
            raise ValueError(f"preds and target must hold class indices in [0, {c}) (or ignore_index)")
        idx = t * c + p
        if ignored is not None:
            idx = idx.masked_fill(ignored, c * c)
        counts = torch.bincount(idx.flatten(), minlength=c * c + 1)[: c * c]
        self.matrix += counts.reshape(c, c).to(self.matrix.device)

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
