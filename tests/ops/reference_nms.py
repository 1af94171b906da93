"""Independent float64 reference of greedy non-maximum suppression, written for the tests.

It imports neither fastmtl nor torchvision. The definition it implements (torchvision's):

* visit the boxes in decreasing order of score, ties broken by the lower index first (a stable
  order, made explicit here with the sort key ``(-score, index)``);
* keep a box unless an already kept box suppresses it; a kept box ``a`` suppresses ``b`` when
  ``inter(a, b) / (area(a) + area(b) - inter(a, b)) > iou_threshold``, with no eps anywhere, so
  two zero-area boxes give ``0 / 0 = NaN``, which suppresses nothing at any threshold;
* class-aware (``idxs`` given): only boxes of the same class suppress each other.

Everything is computed in float64 on the boxes as given (half types upcast exactly).
"""

import torch

__all__ = ["iou_row_ref", "nms_per_class_ref", "nms_ref", "score_order_ref"]


def score_order_ref(scores: torch.Tensor) -> list:
    """Indices by decreasing score, equal scores by increasing index (plain Python sort)."""
    values = scores.detach().cpu().to(torch.float64).tolist()
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def iou_row_ref(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """IoU of one float64 box ``[4]`` with each of ``others`` ``[M, 4]``, as written in the papers."""
    ax1, ay1, ax2, ay2 = box.unbind(-1)
    bx1, by1, bx2, by2 = others.unbind(-1)
    iw = torch.clamp(torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1), min=0.0)
    ih = torch.clamp(torch.minimum(ay2, by2) - torch.maximum(ay1, by1), min=0.0)
    inter = iw * ih
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    return inter / (area_a + area_b - inter)  # 0 / 0 -> NaN for two empty boxes


def nms_ref(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, idxs=None) -> torch.Tensor:
    """Kept indices (int64, CPU) of greedy NMS, class-aware when ``idxs`` is given."""
    n = boxes.shape[0]
    assert boxes.shape == (n, 4) and scores.shape == (n,)
    order = score_order_ref(scores)
    b = boxes.detach().cpu().to(torch.float64)[order]
    cls = None if idxs is None else idxs.detach().cpu().to(torch.int64)[order]
    removed = [False] * n
    kept = []
    for p in range(n):
        if removed[p]:
            continue
        kept.append(order[p])
        if p + 1 == n:
            break
        hit = iou_row_ref(b[p], b[p + 1 :]) > iou_threshold  # NaN > t is False
        if cls is not None:
            hit &= cls[p + 1 :] == cls[p]
        for q in torch.nonzero(hit).flatten().tolist():
            removed[p + 1 + q] = True
    return torch.tensor(kept, dtype=torch.int64)


def nms_per_class_ref(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float):
    """Class-aware NMS as a Python loop over classes of the single-class reference, merged back
    into one list by decreasing score (ties: lower index first)."""
    kept = []
    for c in sorted(set(idxs.detach().cpu().to(torch.int64).tolist())):
        members = torch.nonzero(idxs.detach().cpu() == c).flatten()
        kept += members[
            nms_ref(boxes[members.to(boxes.device)], scores[members.to(scores.device)], iou_threshold)
        ].tolist()
    values = scores.detach().cpu().to(torch.float64).tolist()
    kept.sort(key=lambda i: (-values[i], i))
    return torch.tensor(kept, dtype=torch.int64)
