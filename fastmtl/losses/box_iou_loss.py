"""Box regression losses as modules: thin wrappers over fastmtl.ops.*_loss."""

from torch import Tensor, nn

from fastmtl.ops import box_iou_loss as F
from fastmtl.ops._checks import check_reduction

__all__ = ["CIoULoss", "DIoULoss", "GIoULoss", "IoULoss"]


class _BoxIoULoss(nn.Module):
    _fn = staticmethod(F.iou_loss)

    def __init__(self, *, reduction: str = "mean", eps: float = 1e-7) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target: ``Tensor[..., 4]`` corner boxes."""
        return self._fn(pred, target, reduction=self.reduction, eps=self.eps)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, eps={self.eps}"


class IoULoss(_BoxIoULoss):
    """``1 - IoU``."""

    _fn = staticmethod(F.iou_loss)


class GIoULoss(_BoxIoULoss):
    """``1 - GIoU`` (torchvision.ops.generalized_box_iou_loss)."""

    _fn = staticmethod(F.giou_loss)


class DIoULoss(_BoxIoULoss):
    """``1 - DIoU`` (torchvision.ops.distance_box_iou_loss)."""

    _fn = staticmethod(F.diou_loss)


class CIoULoss(_BoxIoULoss):
    """``1 - CIoU`` (torchvision.ops.complete_box_iou_loss)."""

    _fn = staticmethod(F.ciou_loss)
