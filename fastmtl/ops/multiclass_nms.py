"""Class-aware NMS of a whole batch of images in one call, with fixed-size outputs.

For detection heads that score ``N`` boxes for ``C`` classes in each of ``B`` images. The
outputs have the same shapes whatever the data, and on CUDA nothing is copied to the host or
waited for, so the call can sit inside a CUDA graph or a ``torch.compile(fullgraph=True)``
region.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _reference
from fastmtl.ops._checks import InputError, check_multiclass_nms_op_args

__all__ = ["Detections", "multiclass_nms"]


class Detections(NamedTuple):
    """Padded detections of ``B`` images, ``K = max_detections`` slots each.

    Slot ``k < counts[b]`` of image ``b`` holds its ``k``-th detection by decreasing score; the
    other slots are padding: boxes and scores 0, classes and indices -1.
    """

    boxes: Tensor  # [B, K, 4], dtype of the boxes
    scores: Tensor  # [B, K], dtype of the scores
    classes: Tensor  # [B, K] int64
    indices: Tensor  # [B, K] int64: which of the N boxes
    counts: Tensor  # [B] int64


def _number(name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:  # NaN != NaN
        raise InputError(f"{name} must be a number, got {value!r}")
    return float(value)


def _check(boxes, scores, max_detections) -> Tensor:
    for name, t in (("boxes", boxes), ("scores", scores)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if boxes.dim() not in (3, 4) or boxes.shape[-1] != 4:
        raise InputError(f"boxes must have shape [B, N, 4] or [B, N, C, 4], got {list(boxes.shape)}")
    if scores.dim() not in (2, 3):
        raise InputError(f"scores must have shape [B, N] or [B, N, C], got {list(scores.shape)}")
    if boxes.shape[:2] != scores.shape[:2]:
        raise InputError(
            f"scores must have the B and N of boxes, got {list(scores.shape)} for boxes {list(boxes.shape)}"
        )
    if boxes.dim() == 4 and (scores.dim() != 3 or scores.shape[2] != boxes.shape[2]):
        raise InputError(
            f"scores must have shape [B, N, C] = {list(boxes.shape[:3])} for class-specific boxes, "
            f"got {list(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating point tensor, got {scores.dtype}")
    if boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be a floating point or integer tensor, got {boxes.dtype}")
    if scores.device != boxes.device:
        raise InputError(f"scores must be on the device of boxes, got {scores.device} and {boxes.device}")
    if not isinstance(max_detections, int) or isinstance(max_detections, bool) or max_detections < 0:
        raise InputError(f"max_detections must be an int >= 0, got {max_detections!r}")
    if max_detections > 2**31 - 1:
        raise InputError(f"max_detections must be at most 2^31 - 1, got {max_detections}")
    return boxes if boxes.is_floating_point() else boxes.float()


@torch.fx.wrap
def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    score_threshold: float = 0.05,
    max_detections: int = 100,
) -> Detections:
    """Per-image, class-aware greedy NMS of a batch, padded to ``max_detections`` per image.

    In each image, the candidates are the (box ``n``, class ``c``) pairs with
    ``scores[b, n, c] > score_threshold`` (NaN never passes). They are visited by decreasing
    score (ties: lower ``n * C + c`` first), and each is kept unless a kept candidate of the same
    class overlaps it with IoU greater than ``iou_threshold`` (as :func:`fastmtl.ops.nms`). The
    first ``max_detections`` kept are returned. The result equals ``torchvision.ops.batched_nms``
    over the candidates, classes as ``idxs``, cut to ``max_detections``, for each image.

    Args:
        boxes: ``[B, N, 4]`` ``(x1, y1, x2, y2)`` shared by the classes, or ``[B, N, C, 4]`` one
            box per class (class-specific regression). Float (IoU of half types in float32) or
            integer (taken as float32).
        scores: ``[B, N]`` (one class, numbered 0) or ``[B, N, C]``, floating point.
        iou_threshold: suppression threshold.
        score_threshold: candidates need a score strictly above it.
        max_detections: ``K``, the detections kept per image at most.

    Returns:
        :class:`Detections` of fixed shapes. The values are not checked (NaN scores never pass,
        NaN coordinates suppress nothing): a check would synchronize with the GPU.
    """
    if not torch.jit.is_scripting():
        boxes = _check(boxes, scores, max_detections)
        iou_threshold = _number("iou_threshold", iou_threshold)
        score_threshold = _number("score_threshold", score_threshold)
        if not use_compiled(boxes, "multiclass_nms"):
            out = _reference.multiclass_nms(boxes, scores, iou_threshold, score_threshold, max_detections)
            return Detections(out[0], out[1], out[2], out[3], out[4])
    if not boxes.is_floating_point():
        boxes = boxes.float()
    b, s, c, i, n = torch.ops.fastmtl.multiclass_nms(
        boxes, scores, iou_threshold, score_threshold, max_detections
    )
    return Detections(b, s, c, i, n)


def _register() -> None:
    @torch.library.register_fake("fastmtl::multiclass_nms")
    def _(boxes, scores, iou_threshold, score_threshold, max_detections):
        check_multiclass_nms_op_args(boxes, scores, iou_threshold, score_threshold, max_detections)
        if max_detections > 2**31 - 1:
            raise InputError(f"max_detections must be at most 2^31 - 1, got {max_detections}")
        b, k = boxes.shape[0], max_detections
        return (
            boxes.new_empty((b, k, 4)),
            scores.new_empty((b, k)),
            boxes.new_empty((b, k), dtype=torch.int64),
            boxes.new_empty((b, k), dtype=torch.int64),
            boxes.new_empty((b,), dtype=torch.int64),
        )


if has_compiled_ops():
    _register()
