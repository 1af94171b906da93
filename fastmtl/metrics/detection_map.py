"""Mean average precision of detections (VOC 2010+ / COCO style, at one or several IoU thresholds).

For each class, the detections of all images are ranked by decreasing score (ties: image order,
then the order given). Each is a true positive when some ground truth of its class in its image,
not yet matched, overlaps it with IoU ``>= iou_threshold`` (it takes the one it overlaps most),
else a false positive. AP is the area under the precision envelope (precision made non-increasing
from the right) against recall, summed at every point where recall changes ("all-point"
interpolation). mAP is the mean AP over the classes with at least one ground truth; detections of
other classes are ignored. With several thresholds, it is also averaged over them (COCO's
mAP@[.5:.95] with :data:`COCO_IOU_THRESHOLDS`, without COCO's 101-point recall sampling, area
ranges or crowd boxes).
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fastmtl.ops import box_iou

__all__ = ["COCO_IOU_THRESHOLDS", "average_precision", "class_average_precisions", "mean_average_precision"]

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def average_precision(true_positive: Tensor, num_gt: int) -> float:
    """All-point interpolated AP of a ranked list.

    Args:
        true_positive: ``[D]`` bool, the detections by decreasing score, True for a match.
        num_gt: ground truths of the class (> 0).

    Returns:
        AP in [0, 1].
    """
    if num_gt <= 0:
        raise ValueError(f"num_gt must be > 0, got {num_gt}")
    if true_positive.numel() == 0:
        return 0.0
    tp = true_positive.double().cumsum(0)
    precision = tp / torch.arange(1, tp.numel() + 1, dtype=torch.float64)
    envelope = precision.flip(0).cummax(0).values.flip(0)
    # Recall rises by exactly 1/num_gt at each true positive: summing the envelope there and
    # dividing once keeps a perfect ranking at exactly 1.0 (differences of k/num_gt do not).
    return float(envelope[true_positive.bool()].sum() / num_gt)


def _match_class(dets: list, gts: list, thresholds: Sequence) -> Tensor:
    """``[T, D]`` true-positive flags of one class's detections ranked by score, for each threshold.

    ``dets[i] = (boxes [D_i, 4], scores [D_i])`` and ``gts[i] = boxes [G_i, 4]`` of image ``i``.
    """
    rows = []  # (score, image, index in image)
    ious = []
    for i, ((boxes, scores), gt) in enumerate(zip(dets, gts)):
        ious.append(box_iou(boxes.double(), gt.double()) if boxes.numel() and gt.numel() else None)
        rows += [(-float(s), i, j) for j, s in enumerate(scores.tolist())]
    rows.sort()  # stable: ties keep image order, then detection order
    flags = torch.zeros(len(thresholds), len(rows), dtype=torch.bool)
    for t, threshold in enumerate(thresholds):
        used = [torch.zeros(gt.shape[0], dtype=torch.bool) for gt in gts]
        for d, (_, i, j) in enumerate(rows):
            if ious[i] is None:
                continue
            iou = ious[i][j].masked_fill(used[i], -1.0)
            best, g = iou.max(0)
            if best >= threshold:
                used[i][g] = True
                flags[t, d] = True
    return flags


def class_average_precisions(
    detections: Sequence, targets: Sequence, *, iou_thresholds: Sequence = (0.5,)
) -> dict:
    """AP of each class that has ground truth, averaged over ``iou_thresholds``.

    Args:
        detections: per image, ``{"boxes": [D, 4], "scores": [D], "labels": [D]}``.
        targets: per image, ``{"boxes": [G, 4], "labels": [G]}``; boxes ``(x1, y1, x2, y2)``.
        iou_thresholds: a detection matches at IoU ``>=`` each of these.

    Returns:
        ``{class: AP}`` for the classes with at least one ground-truth box.
    """
    if len(detections) != len(targets):
        raise ValueError(
            f"detections and targets must have one entry per image, got {len(detections)} and {len(targets)}"
        )
    thresholds = tuple(float(t) for t in iou_thresholds)
    if not thresholds:
        raise ValueError("iou_thresholds must not be empty")
    dets = [{k: v.detach().cpu() for k, v in d.items()} for d in detections]
    gts = [{k: v.detach().cpu() for k, v in t.items()} for t in targets]
    classes = sorted({int(c) for t in gts for c in t["labels"].tolist()})
    result = {}
    for c in classes:
        class_dets = []
        for d in dets:
            keep = d["labels"] == c
            class_dets.append((d["boxes"][keep].reshape(-1, 4), d["scores"][keep]))
        class_gts = [t["boxes"][t["labels"] == c].reshape(-1, 4) for t in gts]
        num_gt = sum(g.shape[0] for g in class_gts)
        flags = _match_class(class_dets, class_gts, thresholds)
        result[c] = sum(average_precision(f, num_gt) for f in flags) / len(thresholds)
    return result


def mean_average_precision(
    detections: Sequence, targets: Sequence, *, iou_thresholds: Sequence = (0.5,)
) -> float:
    """mAP: the mean of :func:`class_average_precisions` (``nan`` when there is no ground truth).

    ``iou_thresholds=(0.5,)`` gives mAP@0.5 (VOC); :data:`COCO_IOU_THRESHOLDS` gives mAP@[.5:.95].
    """
    aps = class_average_precisions(detections, targets, iou_thresholds=iou_thresholds)
    return sum(aps.values()) / len(aps) if aps else float("nan")
