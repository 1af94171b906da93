"""Mean average precision on hand-built cases with known answers."""

import math

import pytest
import torch

from fastmtl.metrics.detection_map import (
    COCO_IOU_THRESHOLDS,
    average_precision,
    class_average_precisions,
    mean_average_precision,
)
from tests.utils import random_boxes

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
C = [40.0, 0.0, 60.0, 20.0]
FAR = [100.0, 100.0, 110.0, 110.0]


def det(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def gt(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def test_perfect_detections():
    targets = [gt([A, B], [1, 2]), gt([C], [1])]
    dets = [det([A, B], [0.9, 0.8], [1, 2]), det([C], [0.7], [1])]
    assert mean_average_precision(dets, targets) == 1.0
    assert mean_average_precision(dets, targets, iou_thresholds=COCO_IOU_THRESHOLDS) == 1.0


def test_false_positive_ranked_first_halves_ap():
    targets = [gt([A], [1])]
    assert mean_average_precision([det([FAR, A], [0.9, 0.5], [1, 1])], targets) == pytest.approx(0.5)
    # ranked last it costs nothing: the envelope is 1 up to full recall
    assert mean_average_precision([det([A, FAR], [0.9, 0.5], [1, 1])], targets) == pytest.approx(1.0)


def test_false_positive_between_true_positives():
    targets = [gt([A, B], [1, 1])]
    # TP, FP, TP: precisions 1, 1/2, 2/3; recall 1/2 at p=1 then 1 at p=2/3
    ap = mean_average_precision([det([A, FAR, B], [0.9, 0.8, 0.7], [1, 1, 1])], targets)
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_missing_detections():
    targets = [gt([A, B], [1, 1]), gt([C], [1])]
    assert mean_average_precision([det([A], [0.9], [1]), det([], [], [])], targets) == pytest.approx(1 / 3)


def test_no_detections():
    targets = [gt([A], [1]), gt([B], [2])]
    assert mean_average_precision([det([], [], []), det([], [], [])], targets) == 0.0


def test_class_without_ground_truth_is_excluded():
    targets = [gt([A], [1])]
    dets = [det([A, B, C], [0.9, 0.95, 0.99], [1, 3, 3])]  # class 3 has no ground truth
    assert class_average_precisions(dets, targets) == {1: 1.0}
    assert mean_average_precision(dets, targets) == 1.0


def test_wrong_class_is_a_miss():
    targets = [gt([A, B], [1, 2])]
    aps = class_average_precisions([det([A, B], [0.9, 0.8], [2, 2])], targets)
    assert aps == {1: 0.0, 2: pytest.approx(0.5)}  # class 2: its FP (box A) ranks above its TP


def test_duplicate_detection_is_a_false_positive():
    targets = [gt([A], [1])]
    dets = [det([A, [0.0, 0.0, 10.0, 9.0]], [0.9, 0.8], [1, 1])]
    assert mean_average_precision(dets, targets) == 1.0  # FP after full recall
    dets = [det([[0.0, 0.0, 10.0, 9.0], A], [0.9, 0.8], [1, 1])]
    assert mean_average_precision(dets, targets) == 1.0  # the first takes the GT, the second is FP, after


def test_greedy_match_takes_an_unmatched_ground_truth():
    # two overlapping GTs; the top detection overlaps both, best with the first
    g1, g2 = [0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]
    targets = [gt([g1, g2], [1, 1])]
    dets = [det([[1.0, 0.0, 11.0, 10.0], g1], [0.9, 0.8], [1, 1])]
    # det 1 -> g1 (IoU 9/11 each: ties go to the lower index), det 2 = g1 is taken -> g2 at IoU 8/12 >= 0.5
    assert mean_average_precision(dets, targets) == 1.0
    assert mean_average_precision(dets, targets, iou_thresholds=(0.7,)) == pytest.approx(0.5)


def test_iou_threshold_is_inclusive_and_range_averages():
    targets = [gt([[0.0, 0.0, 10.0, 10.0]], [1])]
    half = det([[0.0, 0.0, 10.0, 5.0]], [0.9], [1])  # IoU exactly 0.5
    assert mean_average_precision([half], targets) == 1.0
    assert mean_average_precision([half], targets, iou_thresholds=(0.55,)) == 0.0
    iou_07 = det([[0.0, 0.0, 10.0, 7.0]], [0.9], [1])  # IoU 0.7: matches at 0.5..0.7, 5 of 10 thresholds
    assert mean_average_precision([iou_07], targets, iou_thresholds=COCO_IOU_THRESHOLDS) == pytest.approx(0.5)


def test_no_ground_truth_at_all_is_nan():
    assert math.isnan(mean_average_precision([det([A], [0.9], [1])], [gt([], [])]))


def test_average_precision_edge_cases():
    assert average_precision(torch.tensor([], dtype=torch.bool), 3) == 0.0
    assert average_precision(torch.tensor([True, True]), 4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="num_gt"):
        average_precision(torch.tensor([True]), 0)
    with pytest.raises(ValueError, match="one entry per image"):
        mean_average_precision([], [gt([A], [1])])


def test_ground_truth_scores_one_and_misplaced_or_mislabelled_zero(gen):
    targets = []
    for _ in range(10):
        boxes = random_boxes(3, gen=gen)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 4, (3,), generator=gen)})
    perfect = [{**t, "scores": torch.rand(3, generator=gen)} for t in targets]
    assert mean_average_precision(perfect, targets) == 1.0
    moved = [{**p, "boxes": p["boxes"] + 1000} for p in perfect]
    assert mean_average_precision(moved, targets) == 0.0
    relabelled = [{**p, "labels": p["labels"] + 3} for p in perfect]  # classes without ground truth
    assert mean_average_precision(relabelled, targets) == 0.0
