"""Plain-PyTorch versions of the compiled ops: the fallback when fastmtl._C is missing.

They follow the same formulas as csrc/kernels/box_math.h and are differentiable by autograd.
"""

import math

import torch

__all__ = ["aligned_box_iou", "compute_dtype", "pairwise_box_iou"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half and bfloat16 (as the kernels accumulate), else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _iou_terms(a: torch.Tensor, b: torch.Tensor, kind: str, eps: float, union_eps: float) -> torch.Tensor:
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / (union + union_eps)
    if kind == "iou":
        return iou
    cw = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    ch = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    if kind == "giou":
        c = cw * ch
        return iou - (c - union) / (c + union_eps)
    dx = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    dy = (ay1 + ay2) / 2 - (by1 + by2) / 2
    diou = iou - (dx * dx + dy * dy) / (cw * cw + ch * ch + eps)
    if kind == "diou":
        return diou
    t = torch.atan((ax2 - ax1) / (ay2 - ay1)) - torch.atan((bx2 - bx1) / (by2 - by1))
    v = (4 / math.pi**2) * t * t
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """[N, 4] x [M, 4] -> [N, M] in the compute dtype; the union has no eps (torchvision.ops)."""
    dt = compute_dtype(boxes1.dtype)
    return _iou_terms(boxes1.to(dt)[:, None, :], boxes2.to(dt)[None, :, :], kind, eps, 0.0)


def aligned_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """[N, 4] x [N, 4] -> [N] in the compute dtype; eps in every denominator (the IoU losses)."""
    dt = compute_dtype(boxes1.dtype)
    return _iou_terms(boxes1.to(dt), boxes2.to(dt), kind, eps, eps)


def nms(boxes: torch.Tensor, scores: torch.Tensor, idxs, iou_threshold: float) -> torch.Tensor:
    """Greedy (class-aware when idxs is given) NMS in plain PyTorch; kept indices by decreasing score."""
    order = torch.sort(scores, descending=True, stable=True).indices
    if order.numel() == 0:
        return order
    b = boxes.to(compute_dtype(boxes.dtype))[order]
    # Compared in float64, as torchvision's CPU kernel compares with a double threshold.
    iou = _iou_terms(b[:, None, :], b[None, :, :], "iou", 0.0, 0.0).double() > iou_threshold
    if idxs is not None:
        cls = idxs[order]
        iou &= cls[:, None] == cls[None, :]
    removed = torch.zeros(order.numel(), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(order.numel()):  # the greedy pass is sequential by nature
        if not removed[i]:
            keep.append(i)
            removed |= iou[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]
