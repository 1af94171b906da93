"""nn.Module forms of the fastmtl losses."""

from fastmtl.losses.box_iou_loss import CIoULoss, DIoULoss, GIoULoss, IoULoss
from fastmtl.losses.style import ContentLoss, StyleLoss
from fastmtl.losses.yolo import YOLOv1Loss

__all__ = ["CIoULoss", "ContentLoss", "DIoULoss", "GIoULoss", "IoULoss", "StyleLoss", "YOLOv1Loss"]
