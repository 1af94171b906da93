"""Argument checks shared by the public ops. Every message names the argument.

These run in eager Python only (under ``torch.jit.script`` the C++ schema checks remain).
They never read a CUDA tensor's values: that would be a device-to-host sync on every call.
Value checks (NaN coordinates, out-of-range indices) run on CPU tensors, inside the kernels, or
on CUDA when :func:`fastmtl.set_debug_checks` is on.
"""

import torch
from torch._subclasses.fake_tensor import is_fake

from fastmtl._ext import debug_checks

__all__ = [
    "BoxesShapeError",
    "InputError",
    "autocast_on",
    "check_box_pair",
    "check_boxes",
    "check_choice",
    "check_reduction",
    "values_readable",
]


class InputError(ValueError, RuntimeError):
    """Bad input to a fastmtl op. A ValueError, and a RuntimeError too, as torchvision's C++
    checks raise, so code written against torchvision.ops catches it unchanged."""


class BoxesShapeError(InputError, AssertionError):
    """``boxes`` of a RoI op is neither ``Tensor[K, 5]`` nor a list of ``Tensor[L, 4]``. Also an
    AssertionError, which is what torchvision's RoI ops raise for it (``torch._assert``)."""


_BOX_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def values_readable(t: torch.Tensor) -> bool:
    """Whether a check may read ``t``'s values: a CPU tensor with data (not meta, not fake, not
    while torch.compile traces), or any device when debug checks are on."""
    if t.numel() == 0 or torch.compiler.is_compiling():
        return False
    dev = t.device.type
    if dev == "meta" or (dev != "cpu" and not debug_checks()):
        return False
    return type(t) in (torch.Tensor, torch.nn.Parameter) or not is_fake(t)  # cheap test first


def autocast_on(t: torch.Tensor) -> bool:
    """Whether autocast is on for ``t``'s device: the ops' autocast kernels then reconcile
    mixed dtypes, so the Python checks let them through."""
    dev = t.device.type
    return dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev)


def _check_finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and values_readable(t) and not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains NaN or infinite coordinates")


def check_boxes(name: str, boxes, *, pairwise: bool) -> torch.Tensor:
    """Checks one box tensor and returns it upcast as torchvision does (integers to float32).

    Pairwise ops take ``[..., N, 4]``; aligned ops and losses take ``[..., 4]``.
    """
    _check_tensor(name, boxes)
    if boxes.dim() < (2 if pairwise else 1) or boxes.shape[-1] != 4:
        want = "[..., N, 4]" if pairwise else "[..., 4]"
        raise InputError(f"{name} must have shape {want}, got {list(boxes.shape)}")
    if boxes.dtype in _BOX_FLOATS:
        _check_finite(name, boxes)
        return boxes
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"{name} must be a floating point or integer tensor, got {boxes.dtype}")
    return boxes.float()


def check_box_pair(boxes1, boxes2, *, pairwise: bool) -> tuple:
    """Checks boxes1 and boxes2 together: shapes, one dtype (unless autocast is on), one device."""
    for name, t in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check_tensor(name, t)
    if boxes1.device != boxes2.device:
        raise InputError(
            f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}"
        )
    boxes1 = check_boxes("boxes1", boxes1, pairwise=pairwise)
    boxes2 = check_boxes("boxes2", boxes2, pairwise=pairwise)
    if boxes1.dtype != boxes2.dtype:
        if not autocast_on(boxes1):
            raise TypeError(
                f"boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} and {boxes2.dtype}"
            )
    return boxes1, boxes2


def check_choice(name: str, value, choices) -> None:
    """A string option of an op (the schemas' ``str`` arguments): the message is the C++ check's
    (csrc/ops/checks.h), e.g. ``Invalid kind 'xiou': expected 'iou', 'giou', 'diou' or 'ciou'``."""
    if value not in choices:
        names = [repr(c) for c in choices]
        allowed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise InputError(f"Invalid {name} {value!r}: expected {allowed}")


def check_reduction(reduction: str) -> None:
    # "Invalid", as torchvision's messages: code written against it matches on the word.
    if reduction not in ("none", "mean", "sum"):
        raise InputError(f"Invalid value for reduction: {reduction!r}; expected 'none', 'mean' or 'sum'")


# The C++ argument checks of the NMS ops (csrc/ops/nms/nms.cpp), for their fake kernels: a traced
# program fails where the real call would, with the same message.
_KERNEL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_kernel_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _KERNEL_FLOATS:
        raise InputError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _nan(name: str, value: float) -> None:
    if value != value:
        raise InputError(f"{name} must not be NaN")


def _check_boxes_and_scores(boxes, scores) -> None:
    _check_kernel_float("boxes", boxes)
    _check_kernel_float("scores", scores)
    if boxes.device != scores.device:
        raise InputError(
            f"boxes and scores must be on the same device, got {boxes.device} and {scores.device}"
        )


def check_nms_op_args(boxes, scores, idxs, iou_threshold) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise InputError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    if scores.dim() != 1:
        raise InputError(f"scores must have shape [N], got {list(scores.shape)}")
    if boxes.shape[0] != scores.shape[0]:
        raise InputError(
            f"boxes and scores must hold the same number of boxes, got {boxes.shape[0]} and {scores.shape[0]}"
        )
    _check_boxes_and_scores(boxes, scores)
    if idxs is not None:
        if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
            raise InputError(f"idxs must have shape [{boxes.shape[0]}], got {list(idxs.shape)}")
        if idxs.dtype != torch.int64:
            raise InputError(f"idxs must be int64, got {idxs.dtype}")
        if idxs.device != boxes.device:
            raise InputError(f"idxs must be on the device of boxes, got {idxs.device} and {boxes.device}")
    _nan("iou_threshold", iou_threshold)


def check_multiclass_nms_op_args(boxes, scores, iou_threshold, score_threshold, max_detections) -> None:
    if scores.dim() not in (2, 3):
        raise InputError(f"scores must have shape [B, N] or [B, N, C], got {list(scores.shape)}")
    per_class = boxes.dim() == 4
    if boxes.dim() not in (3, 4) or boxes.shape[-1] != 4:
        raise InputError(f"boxes must have shape [B, N, 4] or [B, N, C, 4], got {list(boxes.shape)}")
    if boxes.shape[0] != scores.shape[0] or boxes.shape[1] != scores.shape[1]:
        raise InputError(
            f"boxes and scores must agree on B and N, got {list(boxes.shape)} and {list(scores.shape)}"
        )
    if per_class and (scores.dim() != 3 or boxes.shape[2] != scores.shape[2]):
        raise InputError(
            f"boxes of shape [B, N, C, 4] need scores of shape [B, N, C], got {list(boxes.shape)} and "
            f"{list(scores.shape)}"
        )
    _check_boxes_and_scores(boxes, scores)
    _nan("iou_threshold", iou_threshold)
    _nan("score_threshold", score_threshold)
    if max_detections < 0:
        raise InputError(f"max_detections must be >= 0, got {max_detections}")
