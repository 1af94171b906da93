"""The YOLOv1 loss as a module: a thin wrapper over :func:`fastmtl.ops.yolo_v1_loss`."""

from torch import Tensor, nn

from fastmtl.ops import yolo_v1 as F
from fastmtl.ops._checks import check_choice, check_reduction

__all__ = ["YOLOv1Loss"]


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
