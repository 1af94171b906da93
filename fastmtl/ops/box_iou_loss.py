"""Box regression losses 1 - IoU, 1 - GIoU, 1 - DIoU and 1 - CIoU on aligned pairs.

Same call and results as torchvision's ``generalized_box_iou_loss``, ``distance_box_iou_loss``
and ``complete_box_iou_loss`` (also exported under those names), computed by one fused
kernel forward and one backward.
"""

import torch
from torch import Tensor

from fastmtl.ops._checks import check_reduction
from fastmtl.ops._reduction import reduce_loss
from fastmtl.ops.box_iou import aligned_box_iou

__all__ = [
    "ciou_loss",
    "complete_box_iou_loss",
    "diou_loss",
    "distance_box_iou_loss",
    "generalized_box_iou_loss",
    "giou_loss",
    "iou_loss",
]


def _loss(kind: str, boxes1: Tensor, boxes2: Tensor, reduction: str, eps: float) -> Tensor:
    if not torch.jit.is_scripting():
        check_reduction(reduction)
    return reduce_loss(1 - aligned_box_iou(boxes1, boxes2, kind, eps), reduction)


@torch.fx.wrap
def iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - IoU`` of corresponding boxes ``[..., 4]``; ``reduction`` is none, mean or sum."""
    return _loss("iou", boxes1, boxes2, reduction, eps)


@torch.fx.wrap
def giou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` of corresponding boxes ``[..., 4]``, as ``torchvision.ops.generalized_box_iou_loss``.

    Args:
        boxes1: predicted boxes ``Tensor[..., 4]`` in ``(x1, y1, x2, y2)``.
        boxes2: target boxes, broadcastable with ``boxes1``.
        reduction: ``"none"`` (``Tensor[...]``), ``"mean"`` or ``"sum"`` (scalars).
        eps: added to the union and the enclosing area.
    """
    return _loss("giou", boxes1, boxes2, reduction, eps)


@torch.fx.wrap
def diou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - DIoU`` of corresponding boxes, as ``torchvision.ops.distance_box_iou_loss``."""
    return _loss("diou", boxes1, boxes2, reduction, eps)


@torch.fx.wrap
def ciou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - CIoU`` of corresponding boxes, as ``torchvision.ops.complete_box_iou_loss``.

    ``eps`` enters every denominator. torchvision passes its ``eps`` to the alpha term only and
    keeps 1e-7 in the DIoU part, so the two agree at the default ``eps`` and differ by O(eps)
    otherwise.
    """
    return _loss("ciou", boxes1, boxes2, reduction, eps)


generalized_box_iou_loss = giou_loss
distance_box_iou_loss = diou_loss
complete_box_iou_loss = ciou_loss
