"""Non-maximum suppression with the calls and results of torchvision.ops.nms / batched_nms.

Greedy: boxes are visited in decreasing score order (ties: lower index first); each kept box
discards every later box whose IoU with it is greater than ``iou_threshold``.
"""

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _reference
from fastmtl.ops._checks import InputError, check_boxes, check_nms_op_args

__all__ = ["batched_nms", "nms"]


def _check(boxes, scores, iou_threshold) -> tuple:
    boxes = check_boxes("boxes", boxes, pairwise=True)
    if boxes.dim() != 2:
        raise InputError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise InputError(f"scores must have shape [{boxes.shape[0]}] like boxes, got {list(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating point tensor, got {scores.dtype}")
    if scores.device != boxes.device:
        raise InputError(f"scores must be on the device of boxes, got {scores.device} and {boxes.device}")
    # NaN scores are rejected by the kernels (on CUDA with the one copy the op makes anyway).
    is_number = isinstance(iou_threshold, (int, float)) and not isinstance(iou_threshold, bool)
    if not is_number or iou_threshold != iou_threshold:  # NaN != NaN
        raise InputError(f"iou_threshold must be a number, got {iou_threshold!r}")
    return boxes, scores, float(iou_threshold)


def _check_fallback_scores(scores: Tensor) -> None:
    # The plain-PyTorch path reads the scores anyway (it is a host loop).
    if scores.numel() and scores.device.type != "meta" and bool(torch.isnan(scores).any()):
        raise InputError("scores contains NaN")


def _check_tensor_arg(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_idxs(idxs, boxes: Tensor) -> Tensor:
    if not isinstance(idxs, Tensor):
        raise TypeError(f"idxs must be a torch.Tensor, got {type(idxs).__name__}")
    if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        raise InputError(f"idxs must have shape [{boxes.shape[0]}] to match boxes, got {list(idxs.shape)}")
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError(f"idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.device != boxes.device:
        raise InputError(f"idxs must be on the device of boxes, got {idxs.device} and {boxes.device}")
    return idxs.long()


def _check_not_meta(boxes: Tensor) -> None:
    if boxes.device.type == "meta":
        raise InputError("boxes is on the meta device: NMS keeps a data-dependent number of boxes")


def _nms_eager(boxes, scores, idxs, iou_threshold) -> Tensor:
    boxes, scores, iou_threshold = _check(boxes, scores, iou_threshold)
    if idxs is not None:
        idxs = _check_idxs(idxs, boxes)
    _check_not_meta(boxes)
    op = "nms" if idxs is None else "batched_nms"
    if not use_compiled(boxes, op):
        _check_fallback_scores(scores)
        return _reference.nms(boxes, scores, idxs, iou_threshold)
    if idxs is None:
        return torch.ops.fastmtl.nms(boxes, scores, iou_threshold)
    return torch.ops.fastmtl.batched_nms(boxes, scores, idxs, iou_threshold)


@torch.fx.wrap
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``.

    Args:
        boxes: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``, float (half types computed in float32)
            or integer.
        scores: ``Tensor[N]`` floating point, no NaN (a ValueError).
        iou_threshold: discard boxes whose IoU with a kept box is greater than this. The IoU is
            computed in the boxes' compute type (float32 for float32 and half types) and compared
            with the threshold as a double, on every device (torchvision's CPU rule).

    Returns:
        ``Tensor[K]`` int64: indices of the kept boxes in decreasing order of score. On CUDA the
        number of kept boxes is the one device-to-host copy the op makes.
    """
    if not torch.jit.is_scripting():
        return _nms_eager(boxes, scores, None, iou_threshold)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    return torch.ops.fastmtl.nms(boxes, scores, iou_threshold)


@torch.fx.wrap
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS, as ``torchvision.ops.batched_nms``: boxes of different ``idxs`` never
    suppress each other. One call for all classes (no Python loop).

    Args:
        boxes: ``Tensor[N, 4]``; scores: ``Tensor[N]``; idxs: ``Tensor[N]`` integer class of each box.
        iou_threshold: as in :func:`nms`.

    Returns:
        ``Tensor[K]`` int64 indices of the kept boxes in decreasing order of score. Empty input
        (``boxes.numel() == 0``, whatever its shape) gives an empty result, as in torchvision.
    """
    if not torch.jit.is_scripting():
        _check_tensor_arg("boxes", boxes)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if not torch.jit.is_scripting():
        return _nms_eager(boxes, scores, idxs, iou_threshold)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    return torch.ops.fastmtl.batched_nms(boxes, scores, idxs.long(), iou_threshold)


def _register() -> None:
    def fake(boxes, scores, idxs, iou_threshold):
        check_nms_op_args(boxes, scores, idxs, iou_threshold)
        # The number of kept boxes depends on the data.
        k = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((k,), dtype=torch.int64)

    torch.library.register_fake("fastmtl::nms")(
        lambda boxes, scores, iou_threshold: fake(boxes, scores, None, iou_threshold)
    )
    torch.library.register_fake("fastmtl::batched_nms")(fake)


if has_compiled_ops():
    _register()
