"""Soft-NMS (Bodla et al., 2017): overlapping boxes have their scores decayed instead of being
discarded, with mmcv's ``soft_nms`` linear and Gaussian decays."""

from typing import Optional

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _reference
from fastmtl.ops._checks import InputError, check_choice, check_nms_op_args
from fastmtl.ops.nms import _check, _check_fallback_scores, _check_idxs, _check_not_meta

__all__ = ["soft_nms"]

METHODS = ("linear", "gaussian")  # the values of the schema's `method` argument


@torch.fx.wrap
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "linear",
    idxs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS with the defaults of mmcv's ``soft_nms``.

    The boxes with ``score >= score_threshold`` start active. Each round selects the active box
    with the highest current score (ties: the lowest index) and multiplies the score of every
    other active box (of the same class, when ``idxs`` is given) by a weight of its IoU with the
    selected one: ``1 - iou`` when ``iou > iou_threshold`` else 1 (``"linear"``), or
    ``exp(-iou**2 / sigma)`` (``"gaussian"``). Boxes whose score falls below ``score_threshold``
    leave. The scores are decayed in the compute type of the boxes (float32 for half types).

    Args:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``; scores: ``Tensor[N]``, no NaN.
        idxs: optional ``Tensor[N]`` integer classes: boxes of different classes do not interact.

    Returns:
        ``(keep, new_scores)``: ``Tensor[K]`` int64 indices in selection order and their scores
        at selection (dtype of ``scores``).
    """
    if not torch.jit.is_scripting():
        return _soft_nms_eager(boxes, scores, iou_threshold, sigma, score_threshold, method, idxs)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    keep, new_scores = torch.ops.fastmtl.soft_nms(
        boxes, scores, idxs, float(iou_threshold), float(sigma), float(score_threshold), method
    )
    return keep, new_scores


def _check_sigma(sigma: float, boxes_dtype: torch.dtype) -> None:
    # In the compute type: a tiny double rounds to 0 in float32, and exp(-iou^2 / 0) is NaN.
    wide = boxes_dtype == torch.float64
    if not (sigma > 0 if wide else float(torch.tensor(float(sigma), dtype=torch.float32)) > 0):
        where = "float64" if wide else "float32 (the compute type of these boxes)"
        raise InputError(f"sigma must be > 0 in {where}, got {sigma!r}")


def _soft_nms_eager(boxes, scores, iou_threshold, sigma, score_threshold, method, idxs):
    boxes, scores, iou_threshold = _check(boxes, scores, iou_threshold)
    # The kernels do not check for NaN; the output size is read back on CUDA anyway.
    _check_fallback_scores(scores)
    check_choice("method", method, METHODS)
    for name, value in (("sigma", sigma), ("score_threshold", score_threshold)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise InputError(f"{name} must be a number, got {value!r}")
    _check_sigma(sigma, boxes.dtype)
    if idxs is not None:
        idxs = _check_idxs(idxs, boxes)
    _check_not_meta(boxes)
    args = (boxes, scores, idxs, iou_threshold, float(sigma), float(score_threshold), method)
    if not use_compiled(boxes, "soft_nms"):
        return _reference.soft_nms(*args)
    keep, new_scores = torch.ops.fastmtl.soft_nms(*args)
    return keep, new_scores


def _register() -> None:
    @torch.library.register_fake("fastmtl::soft_nms")
    def _(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
        check_nms_op_args(boxes, scores, idxs, iou_threshold)
        check_choice("method", method, METHODS)
        _check_sigma(sigma, boxes.dtype)
        if score_threshold != score_threshold:
            raise InputError("score_threshold must not be NaN")
        k = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((k,), dtype=torch.int64), scores.new_empty((k,))


if has_compiled_ops():
    _register()
