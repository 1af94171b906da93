"""Losses of the localization models (:mod:`fastmtl.models.localization`), as the slides write
them (seeds/004):

    Loss = BCE(presence) + gamma * (Y * MSE(box))

``Y`` is 1 where the object is there: an image without the object teaches only "no object", and
its box output gets no gradient. With several classes of which one is present, a cross-entropy
on the class is added where ``Y = 1``. The multi-label form is the same per class (``k`` binary
tasks, each with a box). Each function returns a dict of named terms and ``"total"``, averaged
over the batch (per class too in the multi-label form: ``k`` tasks of equal weight).
"""

import torch.nn.functional as F
from torch import Tensor

__all__ = ["landmark_loss", "localization_loss", "multilabel_localization_loss"]


def _box_mse(pred: Tensor, target: Tensor, present: Tensor) -> Tensor:
    """Mean over the batch of ``Y * ||pred - target||^2 / 4`` (the MSE of the four coordinates)."""
    return (present * (pred - target).square().mean(-1)).mean()


def localization_loss(
    presence: Tensor,
    boxes: Tensor,
    target_presence: Tensor,
    target_boxes: Tensor,
    *,
    gamma: float = 1.0,
    class_logits: "Tensor | None" = None,
    target_classes: "Tensor | None" = None,
) -> "dict[str, Tensor]":
    """Classification + localization of one object at most.

    Args:
        presence: ``[N]`` logits; target_presence: ``[N]`` in {0, 1} (``Y``).
        boxes, target_boxes: ``[N, 4]`` (cx, cy, w, h) image fractions (ignored where ``Y = 0``).
        gamma: the weight of the box term.
        class_logits, target_classes: ``[N, C]`` logits and ``[N]`` class indices, where there
            are several classes (the class term counts only where ``Y = 1``).
    """
    y = target_presence.to(presence.dtype)
    out = {
        "presence": F.binary_cross_entropy_with_logits(presence, y),
        "box": gamma * _box_mse(boxes, target_boxes, y),
    }
    if class_logits is not None:
        ce = F.cross_entropy(class_logits, target_classes, reduction="none")
        out["class"] = (y * ce).mean()
    out["total"] = sum(out.values())
    return out


def multilabel_localization_loss(
    presence: Tensor, boxes: Tensor, targets: Tensor, *, gamma: float = 1.0
) -> "dict[str, Tensor]":
    """``k`` binary tasks + localization: ``presence [N, k]`` logits, ``boxes [N, k, 4]``,
    ``targets [N, k, 5]`` rows ``(Y, cx, cy, w, h)`` as the slides' labels (``(0, 0, 0, 0, 0)``
    for an absent class)."""
    y = targets[..., 0].to(presence.dtype)
    out = {
        "presence": F.binary_cross_entropy_with_logits(presence, y),
        "box": gamma * _box_mse(boxes, targets[..., 1:].to(boxes.dtype), y),
    }
    out["total"] = out["presence"] + out["box"]
    return out


def landmark_loss(points: Tensor, target: Tensor, visible: "Tensor | None" = None) -> "dict[str, Tensor]":
    """MSE of ``K`` points ``[N, K, 2]``, over the visible ones (``visible [N, K]``, default all):
    the mean over the batch of each image's mean squared distance."""
    err = (points - target.to(points.dtype)).square().sum(-1)  # [N, K]
    if visible is None:
        per_image = err.mean(-1)
    else:
        v = visible.to(points.dtype)
        per_image = (v * err).sum(-1) / v.sum(-1).clamp(min=1)
    loss = per_image.mean()
    return {"points": loss, "total": loss}
