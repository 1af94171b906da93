"""Argument checks shared by the public ops. Every message names the argument."""

import torch
from torch._subclasses.fake_tensor import is_fake

__all__ = ["BoxesShapeError", "InputError", "check_box_pair", "check_boxes", "check_reduction"]


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


def _has_data(t: torch.Tensor) -> bool:
    # Meta and fake tensors (shape propagation, torch.export) carry no values to check.
    if t.device.type == "meta":
        return False
    return type(t) in (torch.Tensor, torch.nn.Parameter) or not is_fake(t)  # cheap test first


def _check_finite(name: str, t: torch.Tensor) -> None:
    # Skipped while torch.compile traces: the check would be a data-dependent branch.
    if t.is_floating_point() and t.numel() and not torch.compiler.is_compiling() and _has_data(t):
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{name} contains NaN or infinite coordinates")


def check_boxes(name: str, boxes, *, pairwise: bool) -> torch.Tensor:
    """Checks one box tensor and returns it upcast as torchvision does (integers to float32).

    Pairwise ops take ``[N, 4]``; aligned ops and losses take ``[..., 4]``.
    """
    _check_tensor(name, boxes)
    if boxes.dim() == 0 or boxes.shape[-1] != 4 or (pairwise and boxes.dim() != 2):
        want = "[N, 4]" if pairwise else "[..., 4]"
        raise InputError(f"{name} must have shape {want}, got {list(boxes.shape)}")
    if boxes.dtype in _BOX_FLOATS:
        _check_finite(name, boxes)
        return boxes
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"{name} must be a floating point or integer tensor, got {boxes.dtype}")
    return boxes.float()


def check_box_pair(boxes1, boxes2, *, pairwise: bool) -> tuple:
    """Checks boxes1 and boxes2 together: shapes, one dtype, one device."""
    for name, t in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check_tensor(name, t)
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(f"boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} and {boxes2.dtype}")
    if boxes1.device != boxes2.device:
        raise InputError(
            f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}"
        )
    return check_boxes("boxes1", boxes1, pairwise=pairwise), check_boxes("boxes2", boxes2, pairwise=pairwise)


def check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise InputError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
