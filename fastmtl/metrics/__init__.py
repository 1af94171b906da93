"""Evaluation metrics of the fastmtl pipelines."""

from fastmtl.metrics.detection_map import (
    COCO_IOU_THRESHOLDS,
    average_precision,
    class_average_precisions,
    mean_average_precision,
)

__all__ = ["COCO_IOU_THRESHOLDS", "average_precision", "class_average_precisions", "mean_average_precision"]
