"""Independent float64 reference of greedy non-maximum suppression, written for the tests.

It imports neither fastmtl nor torchvision. The definition it implements (torchvision's):

* visit the boxes in decreasing order of score, ties broken by the lower index first (a stable
  order, made explicit here with the sort key ``(-score, index)``);
* keep a box unless an already kept box suppresses it; a kept box ``a`` suppresses ``b`` when
  ``inter(a, b) / (area(a) + area(b) - inter(a, b)) > iou_threshold``, with no eps anywhere, so
  two zero-area boxes give ``0 / 0 = NaN``, which suppresses nothing at any threshold;
* class-aware (``idxs`` given): only boxes of the same class suppress each other.

Everything is computed in float64 on the boxes as given (half types upcast exactly).

Also batched multiclass NMS with fixed-size outputs (:func:`multiclass_nms_ref`) and Soft-NMS
(:func:`soft_nms_ref`), each a plain Python loop over the definition.
"""

import math

import torch

__all__ = [
    "iou_row_ref",
    "multiclass_nms_ref",
    "nms_per_class_ref",
    "nms_ref",
    "score_order_ref",
    "soft_nms_ref",
]


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


# --------------------------------------------------------------------------- multiclass / soft NMS
#
# Plain Python loops over Python floats (IEEE float64): slow, but each step is the definition.


def _iou_scalar(a, b) -> float:
    """IoU of two boxes given as 4-sequences of Python floats, with no eps: NaN for two empty
    boxes (0 / 0) and for any NaN coordinate."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = (iw if iw > 0.0 else 0.0) * (ih if ih > 0.0 else 0.0)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    union = area_a + area_b - inter
    if union != union or union == 0.0:  # NaN coordinates, or 0 / 0 (Python would raise)
        return math.nan
    return inter / union


def multiclass_nms_ref(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    score_threshold: float = 0.05,
    max_detections: int = 100,
) -> tuple:
    """Batched class-aware greedy NMS with fixed-size outputs, written from its definition.

    ``boxes``: ``[B, N, 4]`` (shared by the classes) or ``[B, N, C, 4]``; ``scores``: ``[B, N]`` (one
    class, 0) or ``[B, N, C]``. Per image the candidates are the pairs ``(n, c)`` with
    ``scores[b, n, c] > score_threshold`` (NaN never is), visited by decreasing score, ties by the
    lower flat index ``n * C + c``; a candidate is kept unless a kept candidate of its class has an
    IoU greater than ``iou_threshold`` with it; the first ``max_detections`` kept are returned.

    Returns ``(boxes [B, K, 4] float64, scores [B, K] float64, classes [B, K] int64,
    indices [B, K] int64, counts [B] int64)`` on the CPU, ``K = max_detections``; the slots from
    ``counts[b]`` on hold boxes 0, scores 0, classes -1 and indices -1.
    """
    s = scores.detach().cpu().to(torch.float64)
    if s.dim() == 2:
        s = s[:, :, None]
    num_images, n, num_classes = s.shape
    b = boxes.detach().cpu().to(torch.float64)
    per_class = b.dim() == 4
    assert b.shape == ((num_images, n, num_classes, 4) if per_class else (num_images, n, 4)), b.shape
    k = max_detections
    out_boxes = torch.zeros(num_images, k, 4, dtype=torch.float64)
    out_scores = torch.zeros(num_images, k, dtype=torch.float64)
    out_classes = torch.full((num_images, k), -1, dtype=torch.int64)
    out_indices = torch.full((num_images, k), -1, dtype=torch.int64)
    counts = torch.zeros(num_images, dtype=torch.int64)
    for img in range(num_images):
        values = s[img].reshape(-1).tolist()  # flat index n * C + c
        image_boxes = b[img].tolist()
        candidates = [f for f, v in enumerate(values) if v > score_threshold]  # NaN > t is False
        candidates.sort(key=lambda f: (-values[f], f))
        kept = {}  # class -> boxes kept so far
        count = 0
        for f in candidates:
            if count == k:
                break
            i, c = divmod(f, num_classes)
            box = image_boxes[i][c] if per_class else image_boxes[i]
            # NaN > t is False: a NaN IoU suppresses nothing
            if any(_iou_scalar(other, box) > iou_threshold for other in kept.get(c, ())):
                continue
            kept.setdefault(c, []).append(box)
            out_boxes[img, count] = torch.tensor(box, dtype=torch.float64)
            out_scores[img, count] = values[f]
            out_classes[img, count] = c
            out_indices[img, count] = i
            count += 1
        counts[img] = count
    return out_boxes, out_scores, out_classes, out_indices, counts


def soft_nms_ref(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "linear",
    idxs=None,
) -> tuple:
    """Soft-NMS (Bodla et al. 2017), written from its definition in float64.

    The active boxes are first those with ``score >= score_threshold``. While any is active, the
    one with the highest current score (ties: lowest index) is selected, leaves the active set and
    is output with its current score; then every active box of the same class (all of them when
    ``idxs`` is None) has its score multiplied by ``1 - iou`` when ``iou > iou_threshold`` (else 1)
    for ``method="linear"``, or by ``exp(-iou**2 / sigma)`` for ``"gaussian"`` (a NaN IoU gives 1),
    and leaves the active set when the score falls below ``score_threshold``.

    Returns ``(keep int64 [K], new_scores float64 [K])`` on the CPU, in selection order.
    """
    assert method in ("linear", "gaussian"), method
    n = boxes.shape[0]
    assert boxes.shape == (n, 4) and scores.shape == (n,)
    b = boxes.detach().cpu().to(torch.float64).tolist()
    s = scores.detach().cpu().to(torch.float64).tolist()
    cls = None if idxs is None else idxs.detach().cpu().to(torch.int64).tolist()
    active = [i for i in range(n) if s[i] >= score_threshold]
    keep, new_scores = [], []
    while active:
        best = max(active, key=lambda j: (s[j], -j))
        active.remove(best)
        keep.append(best)
        new_scores.append(s[best])
        still = []
        for j in active:
            if cls is None or cls[j] == cls[best]:
                iou = _iou_scalar(b[best], b[j])
                if iou != iou:
                    weight = 1.0
                elif method == "linear":
                    weight = 1.0 - iou if iou > iou_threshold else 1.0
                else:
                    weight = math.exp(-iou * iou / sigma)
                s[j] *= weight
            if s[j] >= score_threshold:
                still.append(j)
        active = still
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(new_scores, dtype=torch.float64)
