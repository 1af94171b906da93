"""nn.Module forms of the fastmtl losses."""

from fastmtl.losses.box_iou_loss import CIoULoss, DIoULoss, GIoULoss, IoULoss

__all__ = ["CIoULoss", "DIoULoss", "GIoULoss", "IoULoss"]
