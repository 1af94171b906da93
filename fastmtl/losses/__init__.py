"""The fastmtl losses: nn.Module forms of the fused ops, and the losses that live here only."""

from fastmtl.losses.box_iou_loss import CIoULoss, DIoULoss, GIoULoss, IoULoss
from fastmtl.losses.localization import landmark_loss, localization_loss, multilabel_localization_loss
from fastmtl.losses.segmentation import SegmentationLoss, dice_loss
from fastmtl.losses.style import ContentLoss, StyleLoss
from fastmtl.losses.yolo import YOLOAnchorLoss, YOLOv1Loss, yolo_anchor_loss

__all__ = [
    "CIoULoss",
    "ContentLoss",
    "DIoULoss",
    "GIoULoss",
    "IoULoss",
    "SegmentationLoss",
    "StyleLoss",
    "YOLOAnchorLoss",
    "YOLOv1Loss",
    "dice_loss",
    "landmark_loss",
    "localization_loss",
    "multilabel_localization_loss",
    "yolo_anchor_loss",
]
