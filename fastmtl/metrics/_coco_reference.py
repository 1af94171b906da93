"""Plain-Python COCO box evaluation with the call of ``torch.ops.fastmtl.coco_evaluate``: the
fallback when the extension is not built, and the property suite's reference.

Written apart from the C++ kernel and the other way round where that is cheap: every detection
stays in the ranked list (ignored ones count in neither sum), the precision envelope covers all
of them and the recall points are found by bisection, as COCOeval's accumulate does. Slow: a
Python loop per image, class, area range and threshold.
"""

import bisect
from collections import defaultdict

import torch

__all__ = ["coco_evaluate"]

_EPS = 2.220446049250313e-16  # np.spacing(1), added to the detection count


def _iou(d: list, g: list, crowd: bool) -> float:
    w = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    h = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter
    # IEEE division, as in C++ (an underflowed union of 0 gives inf or NaN, not an exception)
    return inter / union if union != 0 else float(torch.tensor(inter, dtype=torch.float64) / union)


def _match(ious, crowd, ignored, outside, threshold) -> list:
    """Per detection: "tp", "fp" or "ignore", matching in order with gts sorted ignored-last."""
    visit = sorted(range(len(crowd)), key=lambda g: ignored[g])  # stable
    taken, out = set(), []
    for d, row in enumerate(ious):
        best, m = min(threshold, 1 - 1e-10), None
        for g in visit:
            if g in taken and not crowd[g]:
                continue
            if m is not None and not ignored[m] and ignored[g]:
                break
            if row[g] < best:
                continue
            best, m = row[g], g
        if m is None:
            out.append("ignore" if outside[d] else "fp")
        else:
            taken.add(m)
            out.append("ignore" if ignored[m] else "tp")
    return out


def _evaluate_group(dets, gts, ranges, thresholds) -> tuple:
    """One image and class: per area range, (ground truths counted, [per threshold statuses])."""
    ious = [[_iou(d["box"], g["box"], g["crowd"]) for g in gts] for d in dets]
    crowd = [g["crowd"] for g in gts]
    results = []
    for lo, hi in ranges:
        # `a < lo or a > hi`, not `not lo <= a <= hi`: a NaN area (inf * 0) is inside, as in C++
        ignored = [g["crowd"] or g["area"] < lo or g["area"] > hi for g in gts]
        outside = [d["box"][2] * d["box"][3] < lo or d["box"][2] * d["box"][3] > hi for d in dets]
        statuses = [_match(ious, crowd, ignored, outside, t) for t in thresholds]
        results.append((ignored.count(False), statuses))
    return results


def _curve(statuses: list, npig: int, recall_points: list) -> tuple:
    """(sampled precision, recall) of one ranked list of statuses."""
    tp = fp = 0
    rc, pr = [], []
    for s in statuses:
        tp += s == "tp"
        fp += s == "fp"
        rc.append(tp / npig)
        pr.append(tp / ((fp + tp) + _EPS))
    for i in range(len(pr) - 1, 0, -1):
        pr[i - 1] = max(pr[i - 1], pr[i])
    q = [0.0] * len(recall_points)
    for r, point in enumerate(recall_points):
        i = bisect.bisect_left(rc, point)
        if i >= len(pr):
            break
        q[r] = pr[i]
    return q, rc[-1] if rc else 0.0


def _groups(
    det_boxes, det_scores, det_labels, det_images, gt_boxes, gt_labels, gt_images, gt_iscrowd, gt_areas
):
    groups = defaultdict(lambda: ([], []))
    for box, score, k, i in zip(
        det_boxes.tolist(), det_scores.tolist(), det_labels.tolist(), det_images.tolist()
    ):
        groups[(k, i)][0].append({"box": box, "score": score})
    gt_rows = zip(
        gt_boxes.tolist(), gt_labels.tolist(), gt_images.tolist(), gt_iscrowd.tolist(), gt_areas.tolist()
    )
    for box, k, i, crowd, area in gt_rows:
        groups[(k, i)][1].append({"box": box, "crowd": bool(crowd), "area": area})
    return groups


def coco_evaluate(
    det_boxes, det_scores, det_labels, det_images, gt_boxes, gt_labels, gt_images, gt_iscrowd, gt_areas,
    iou_thresholds, recall_thresholds, area_ranges, max_dets, num_images, num_classes,
) -> tuple:  # fmt: skip
    """``(precision [T, R, K, A, M], recall [T, K, A, M])``, float64, -1 without ground truth."""
    thresholds, points, ranges = iou_thresholds.tolist(), recall_thresholds.tolist(), area_ranges.tolist()
    max_dets = [int(m) for m in max_dets]
    T, R, A, M = len(thresholds), len(points), len(ranges), len(max_dets)
    precision = torch.full((T, R, num_classes, A, M), -1.0, dtype=torch.float64)
    recall = torch.full((T, num_classes, A, M), -1.0, dtype=torch.float64)
    groups = _groups(
        det_boxes, det_scores, det_labels, det_images, gt_boxes, gt_labels, gt_images, gt_iscrowd, gt_areas
    )
    per_class = defaultdict(list)  # k -> [(dets, per range results)], one per image in order
    for (k, _image), (dets, gts) in sorted(groups.items()):
        dets = sorted(dets, key=lambda d: -d["score"])[: max_dets[-1]]
        per_class[k].append((dets, _evaluate_group(dets, gts, ranges, thresholds)))
    for k, images in per_class.items():
        for a in range(A):
            npig = sum(results[a][0] for _, results in images)
            if npig == 0:
                continue
            for mi, m in enumerate(max_dets):
                rows = [(d["score"], res[a][1], j) for dets, res in images for j, d in enumerate(dets[:m])]
                rows.sort(key=lambda row: -row[0])  # stable: image order, then rank
                for t in range(T):
                    q, rc = _curve([statuses[t][j] for _, statuses, j in rows], npig, points)
                    precision[t, :, k, a, mi] = torch.tensor(q, dtype=torch.float64)
                    recall[t, k, a, mi] = rc
    return precision, recall
