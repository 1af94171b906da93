"""Independent float64 reference of the box IoU family, written for the tests.

It imports neither fastmtl nor torchvision. Every function takes boxes ``(x1, y1, x2, y2)``
and is written out per pair, as the papers state the formulas; inputs are promoted to float64.
The functions are differentiable by autograd (with CIoU's ``alpha`` held constant, as
torchvision does), so the tests also use them as the gradient reference.

Two conventions:

* pairwise (``torchvision.ops.box_iou`` and friends): ``iou = inter / union``,
  ``giou = iou - (C - union) / C``, no eps in the union or the enclosing area;
* aligned (the ``*_box_iou_loss`` functions): ``iou = inter / (union + eps)``,
  ``giou = iou - (C - union) / (C + eps)``.

In both, ``diou = iou - rho^2 / (c^2 + eps)`` and ``ciou = diou - alpha * v`` with
``v = 4 / pi^2 * (atan(w1 / h1) - atan(w2 / h2))^2`` and ``alpha = v / (1 - iou + v + eps)``.
"""

import math

import torch

__all__ = [
    "KINDS",
    "aligned_ref",
    "area_ref",
    "ciou_alpha_v_ref",
    "pair_ref",
    "pairwise_ref",
    "scalar_pair_ref",
]

KINDS = ("iou", "giou", "diou", "ciou")


def _corners(boxes: torch.Tensor):
    boxes = boxes.to(torch.float64)
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def area_ref(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = _corners(boxes)
    return (x2 - x1) * (y2 - y1)


def _overlap(lo1, hi1, lo2, hi2):
    """Length of the overlap of the intervals [lo1, hi1] and [lo2, hi2], 0 when disjoint."""
    # minimum/maximum split a tie's gradient in half (torch's convention, as the kernels do)
    length = torch.minimum(hi1, hi2) - torch.maximum(lo1, lo2)
    return torch.where(length > 0, length, torch.zeros_like(length))


def _span(lo1, hi1, lo2, hi2):
    """Length of the smallest interval holding [lo1, hi1] and [lo2, hi2]."""
    return torch.maximum(hi1, hi2) - torch.minimum(lo1, lo2)


def pair_ref(a: torch.Tensor, b: torch.Tensor, kind: str, *, eps: float, union_eps: float) -> torch.Tensor:
    """``kind`` of corresponding boxes ``a[..., 4]`` and ``b[..., 4]`` (broadcast), in float64."""
    if kind not in KINDS:
        raise ValueError(kind)
    ax1, ay1, ax2, ay2 = _corners(a)
    bx1, by1, bx2, by2 = _corners(b)
    wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    inter = _overlap(ax1, ax2, bx1, bx2) * _overlap(ay1, ay2, by1, by2)
    union = wa * ha + wb * hb - inter
    iou = inter / (union + union_eps)
    if kind == "iou":
        return iou
    cw = _span(ax1, ax2, bx1, bx2)
    ch = _span(ay1, ay2, by1, by2)
    if kind == "giou":
        enclosing = cw * ch
        return iou - (enclosing - union) / (enclosing + union_eps)
    rho2 = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2) ** 2 + ((ay1 + ay2) / 2 - (by1 + by2) / 2) ** 2
    diou = iou - rho2 / (cw**2 + ch**2 + eps)
    if kind == "diou":
        return diou
    v = (4 / math.pi**2) * (torch.atan(wa / ha) - torch.atan(wb / hb)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def ciou_alpha_v_ref(a: torch.Tensor, b: torch.Tensor, *, eps: float, union_eps: float):
    """CIoU's ``alpha`` and ``v`` of corresponding boxes, both differentiable (nothing detached)."""
    ax1, ay1, ax2, ay2 = _corners(a)
    bx1, by1, bx2, by2 = _corners(b)
    iou = pair_ref(a, b, "iou", eps=eps, union_eps=union_eps)
    v = (4 / math.pi**2) * (
        torch.atan((ax2 - ax1) / (ay2 - ay1)) - torch.atan((bx2 - bx1) / (by2 - by1))
    ) ** 2
    return v / (1 - iou + v + eps), v


def pairwise_ref(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float = 1e-7) -> torch.Tensor:
    """``[N, 4] x [M, 4] -> [N, M]`` float64, torchvision.ops.*box_iou semantics (union without eps)."""
    return pair_ref(boxes1[:, None, :], boxes2[None, :, :], kind, eps=eps, union_eps=0.0)


def aligned_ref(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float = 1e-7) -> torch.Tensor:
    """``[..., 4] x [..., 4] -> [...]`` float64, loss semantics (eps in every denominator)."""
    return pair_ref(boxes1, boxes2, kind, eps=eps, union_eps=eps)


def scalar_pair_ref(a, b, kind: str, *, eps: float = 1e-7, union_eps: float = 0.0) -> float:
    """The same formulas on plain Python floats, for hand-checked cases (no torch at all)."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / (union + union_eps)
    if kind == "iou":
        return iou
    cw = max(ax2, bx2) - min(ax1, bx1)
    ch = max(ay2, by2) - min(ay1, by1)
    if kind == "giou":
        return iou - (cw * ch - union) / (cw * ch + union_eps)
    rho2 = ((ax1 + ax2 - bx1 - bx2) / 2) ** 2 + ((ay1 + ay2 - by1 - by2) / 2) ** 2
    diou = iou - rho2 / (cw * cw + ch * ch + eps)
    if kind == "diou":
        return diou
    v = 4 / math.pi**2 * (math.atan((ax2 - ax1) / (ay2 - ay1)) - math.atan((bx2 - bx1) / (by2 - by1))) ** 2
    return diou - v / (1 - iou + v + eps) * v
