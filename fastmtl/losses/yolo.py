"""YOLO losses as modules: the fused YOLOv1 loss (:func:`fastmtl.ops.yolo_v1_loss`) and the
anchor-based YOLOv2/v3 loss with its yolov5-equal mode (:func:`yolo_anchor_loss`: plain PyTorch
for now, vectorized; its fused kernel is not written yet)."""

import torch
from torch import Tensor, nn

from fastmtl.ops import yolo_v1 as F
from fastmtl.ops._checks import check_choice, check_reduction
from fastmtl.ops._yolo_anchor_reference import YOLOV5_ANCHORS, YOLOV5_STRIDES
from fastmtl.ops._yolo_anchor_reference import yolo_anchor_loss_reference as yolo_anchor_loss

__all__ = ["YOLOV5_ANCHORS", "YOLOV5_STRIDES", "YOLOAnchorLoss", "YOLOv1Loss", "yolo_anchor_loss"]


class YOLOv1Loss(nn.Module):
    """YOLOv1 loss over an ``S x S`` grid of ``num_boxes`` boxes and ``num_classes`` classes.

    ``forward(pred, targets, counts)`` returns the dict of :func:`fastmtl.ops.yolo_v1_loss`
    (``"total"`` and the five named terms); every rule is documented there.
    """

    def __init__(
        self,
        num_boxes: int = 2,
        num_classes: int = 20,
        *,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        wh: str = "sqrt",
        conf_target: str = "iou",
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        check_choice("wh", wh, F.WH_MODES)
        check_choice("conf_target", conf_target, F.CONF_TARGETS)
        check_reduction(reduction)
        self.num_boxes, self.num_classes = num_boxes, num_classes
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.wh, self.conf_target, self.reduction = wh, conf_target, reduction

    def forward(self, pred: Tensor, targets: Tensor, counts: Tensor) -> dict[str, Tensor]:
        return F.yolo_v1_loss(
            pred,
            targets,
            counts,
            self.num_boxes,
            self.num_classes,
            self.lambda_coord,
            self.lambda_noobj,
            self.wh,
            self.conf_target,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"num_boxes={self.num_boxes}, num_classes={self.num_classes}, lambda_coord={self.lambda_coord}, "
            f"lambda_noobj={self.lambda_noobj}, wh={self.wh!r}, conf_target={self.conf_target!r}, "
            f"reduction={self.reduction!r}"
        )


class YOLOAnchorLoss(nn.Module):
    """Anchor-based YOLO loss over several scales (see :func:`yolo_anchor_loss` for every rule).

    ``anchors`` ``[L, A, 2]`` in pixels and ``strides`` (pixels per cell of each scale) default
    to yolov5's; ``options`` are :func:`yolo_anchor_loss`'s keywords (``mode="v3"`` or
    ``"yolov5"``, ``box_loss``, ``ignore_threshold``, ``lambda_*``, ``reduction``...).
    ``forward(preds, targets, counts)`` returns the dict of named terms and ``"total"``.
    """

    def __init__(self, anchors=YOLOV5_ANCHORS, strides=YOLOV5_STRIDES, **options) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32), persistent=False)
        self.strides = tuple(strides)
        self.options = options

    def forward(self, preds: "list[Tensor]", targets: Tensor, counts: Tensor) -> "dict[str, Tensor]":
        return yolo_anchor_loss(preds, targets, counts, self.anchors, self.strides, **self.options)
