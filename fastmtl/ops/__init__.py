"""fastmtl.ops: compiled ops with the same calls as their torchvision counterparts."""

import torch

from fastmtl.ops import yolo_v3 as _yolo_v3  # noqa: F401  (registers the fused anchor loss)
from fastmtl.ops import yolo_v5 as _yolo_v5  # noqa: F401  (registers its yolov5 mode)
from fastmtl.ops.box_iou import (
    aligned_box_iou,
    box_iou,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
)
from fastmtl.ops.box_iou_loss import (
    ciou_loss,
    complete_box_iou_loss,
    diou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    giou_loss,
    iou_loss,
)
from fastmtl.ops.boxes import box_area, box_convert
from fastmtl.ops.gram import gram_matrix
from fastmtl.ops.multiclass_nms import Detections, multiclass_nms
from fastmtl.ops.nms import batched_nms, nms
from fastmtl.ops.poolers import MultiScaleRoIAlign
from fastmtl.ops.roi import RoIAlign, RoIPool, roi_align, roi_pool
from fastmtl.ops.soft_nms import soft_nms
from fastmtl.ops.style import content_loss, style_loss
from fastmtl.ops.triplet import triplet_loss, triplet_margin_loss
from fastmtl.ops.yolo_v1 import yolo_v1_loss

__all__ = [
    "Detections",
    "MultiScaleRoIAlign",
    "RoIAlign",
    "RoIPool",
    "roi_align",
    "roi_pool",
    "batched_nms",
    "multiclass_nms",
    "nms",
    "soft_nms",
    "aligned_box_iou",
    "box_area",
    "box_convert",
    "box_iou",
    "ciou_loss",
    "content_loss",
    "complete_box_iou",
    "complete_box_iou_loss",
    "diou_loss",
    "distance_box_iou",
    "distance_box_iou_loss",
    "generalized_box_iou",
    "generalized_box_iou_loss",
    "giou_loss",
    "gram_matrix",
    "iou_loss",
    "style_loss",
    "triplet_loss",
    "triplet_margin_loss",
    "yolo_v1_loss",
]

# Calls through this package (``fastmtl.ops.box_iou(...)``) are FX leaves too, as torchvision's
# ops are: torch.fx patches these names here while it traces.
for _name in __all__:
    if _name[0].islower():
        torch.fx.wrap(_name)
del _name
