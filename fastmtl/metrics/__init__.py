"""Evaluation metrics of the fastmtl pipelines."""

from fastmtl.metrics.coco import (
    COCO_AREA_RANGES,
    COCO_EVAL_IOU_THRESHOLDS,
    COCO_MAX_DETS,
    COCO_RECALL_THRESHOLDS,
    COCO_STAT_NAMES,
    coco_evaluate,
    coco_evaluate_json,
    coco_evaluate_packed,
)
from fastmtl.metrics.detection_map import (
    COCO_IOU_THRESHOLDS,
    average_precision,
    class_average_precisions,
    mean_average_precision,
)
from fastmtl.metrics.segmentation import ConfusionMatrix
from fastmtl.metrics.verification import Verification, roc_curve, verification_report

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_EVAL_IOU_THRESHOLDS",
    "COCO_IOU_THRESHOLDS",
    "COCO_MAX_DETS",
    "COCO_RECALL_THRESHOLDS",
    "COCO_STAT_NAMES",
    "ConfusionMatrix",
    "Verification",
    "average_precision",
    "class_average_precisions",
    "coco_evaluate",
    "coco_evaluate_json",
    "coco_evaluate_packed",
    "mean_average_precision",
    "roc_curve",
    "verification_report",
]
