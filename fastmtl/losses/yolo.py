"""YOLO losses: the fused YOLOv1 loss as a module (:func:`fastmtl.ops.yolo_v1_loss`) and the
anchor-based YOLOv2/v3 loss with its yolov5-equal mode (:func:`yolo_anchor_loss`), fused in both
modes, with a plain-PyTorch fallback."""

import torch
from torch import Tensor, nn

from fastmtl._ext import use_compiled
from fastmtl.ops import yolo_v1 as F
from fastmtl.ops._checks import check_choice, check_reduction
from fastmtl.ops._reference import compute_dtype
from fastmtl.ops._yolo_anchor_reference import (
    YOLOV5_ANCHORS,
    YOLOV5_GAINS,
    YOLOV5_STRIDES,
    yolo_anchor_loss_reference,
    yolov5_balance,
)
from fastmtl.ops.yolo_v3 import TERMS, yolo_v3_terms
from fastmtl.ops.yolo_v5 import yolov5_means

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


def yolo_anchor_loss(
    preds: "list[Tensor]",
    targets: Tensor,
    counts: Tensor,
    anchors,
    strides,
    *,
    mode: str = "v3",
    box_loss: "str | None" = None,
    ignore_threshold: float = 0.5,
    lambda_box: "float | None" = None,
    lambda_obj: "float | None" = None,
    lambda_noobj: "float | None" = None,
    lambda_cls: "float | None" = None,
    reduction: str = "sum",
    **yolov5_options,
) -> "dict[str, Tensor]":
    """Anchor-based YOLO loss: ``{"total", "box", "obj", "noobj", "cls"}``.

    The arguments and every rule are those of
    :func:`fastmtl.ops._yolo_anchor_reference.yolo_anchor_loss_reference` (``anchors [L, A, 2]``
    in pixels, ``strides`` per scale; ``anchor_t`` and ``balance`` for ``mode="yolov5"``).
    Both modes and both box terms run fused kernels (CPU and CUDA, one pass for the terms and the
    gradient) when the extension is built, the plain-PyTorch reference otherwise. Results are
    float32 for half predictions on the fused path.
    """
    fused = _fusable(mode, box_loss, yolov5_options) and bool(preds)
    if not (fused and use_compiled(preds[0], "yolo_anchor_loss")):
        return yolo_anchor_loss_reference(
            preds, targets, counts, torch.as_tensor(anchors), strides, mode=mode, box_loss=box_loss,
            ignore_threshold=ignore_threshold, lambda_box=lambda_box, lambda_obj=lambda_obj,
            lambda_noobj=lambda_noobj, lambda_cls=lambda_cls, reduction=reduction, **yolov5_options,
        )  # fmt: skip
    check_reduction(reduction)
    if reduction == "none":
        raise ValueError("Invalid value for reduction: expected 'mean' or 'sum'")
    anchors = torch.as_tensor(anchors, device=preds[0].device)
    if not anchors.is_floating_point():  # pixels as ints (yolov5's yaml), as the reference takes them
        anchors = anchors.to(compute_dtype(preds[0].dtype))
    n = preds[0].shape[0]
    if mode == "v3":
        ciou = box_loss == "ciou"
        terms = yolo_v3_terms(preds, targets, counts, anchors, strides, ignore_threshold, ciou).sum(0)
        terms = dict(zip(TERMS, terms.unbind()))
        gains, scale = {}, 1.0
    else:
        if lambda_noobj is not None:
            raise ValueError("lambda_noobj: yolov5 mode has no no-object term (obj covers it)")
        anchor_t, balance = yolov5_options.get("anchor_t", 4.0), yolov5_balance(len(preds), yolov5_options)
        box, obj, cls = yolov5_means(preds, targets, counts, anchors, strides, anchor_t, balance)
        terms = {"box": box, "obj": obj, "noobj": obj.new_zeros(()), "cls": cls}
        gains, scale = YOLOV5_GAINS, float(n)  # yolov5 returns its means times the batch size
    if reduction == "mean":
        scale /= max(n, 1)
    weights = {"box": lambda_box, "obj": lambda_obj, "noobj": lambda_noobj, "cls": lambda_cls}
    out = {k: terms[k] * (gains.get(k, 1.0) if w is None else float(w)) * scale for k, w in weights.items()}
    out["total"] = out["box"] + out["obj"] + out["noobj"] + out["cls"]
    return out


def _fusable(mode: str, box_loss, yolov5_options) -> bool:
    """Whether the fused kernels take these options (the reference raises on the others)."""
    if mode == "v3":
        return box_loss in (None, "mse", "ciou") and not yolov5_options
    return mode == "yolov5" and box_loss in (None, "ciou") and set(yolov5_options) <= {"anchor_t", "balance"}


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
