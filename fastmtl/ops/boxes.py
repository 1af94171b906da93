"""Box formats and areas.

Formats: ``"xyxy"`` corners (torchvision's), ``"cxcywh"`` centre and size (the YOLO slides'),
``"xywh"`` top-left corner and size (COCO's). Elementwise and memory-bound, so plain PyTorch.
"""

import torch
from torch import Tensor

from fastmtl.ops._checks import InputError, check_boxes
from fastmtl.ops._reference import compute_dtype

__all__ = ["box_area", "box_convert"]

_FORMATS = ("xyxy", "xywh", "cxcywh")


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + c, b + d), dim=-1)
    return torch.stack((a - c / 2, b - d / 2, a + c / 2, b + d / 2), dim=-1)  # cxcywh


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)  # cxcywh


def _check_convert(boxes, in_fmt, out_fmt) -> None:
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in _FORMATS:
            raise InputError(f"Invalid {name} {fmt!r}: expected one of {_FORMATS}")
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise InputError(f"boxes must have shape [..., 4], got {list(boxes.shape)}")
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"boxes must be a floating point or integer tensor, got {boxes.dtype}")


def _check_area(boxes, fmt) -> Tensor:
    if fmt not in _FORMATS:
        raise InputError(f"Invalid fmt {fmt!r}: expected one of {_FORMATS}")
    if isinstance(boxes, Tensor) and not boxes.is_floating_point() and boxes.dtype != torch.bool:
        if boxes.dim() == 0 or boxes.shape[-1] != 4:
            raise InputError(f"boxes must have shape [..., 4], got {list(boxes.shape)}")
        return boxes
    return check_boxes("boxes", boxes, pairwise=False)


@torch.fx.wrap
def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Converts ``Tensor[..., 4]`` boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    Same call and results as ``torchvision.ops.box_convert``: a new tensor of the same shape
    and dtype (a copy when the formats are equal).
    """
    if not torch.jit.is_scripting():
        _check_convert(boxes, in_fmt, out_fmt)
    if in_fmt == out_fmt:
        return boxes.clone()
    xyxy = boxes if in_fmt == "xyxy" else _to_xyxy(boxes, in_fmt)
    return xyxy if out_fmt == "xyxy" else _from_xyxy(xyxy, out_fmt)


@torch.fx.wrap
def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of ``Tensor[..., 4]`` boxes, as ``torchvision.ops.box_area``: ``(x2 - x1) * (y2 - y1)``
    for ``fmt="xyxy"``, ``w * h`` for ``"xywh"`` and ``"cxcywh"``.

    Returns ``Tensor[...]``: float32 for float16/bfloat16 boxes, int32/int64 kept for integer
    boxes (smaller integer types widened to int32), else the input dtype, as torchvision does.
    """
    if not torch.jit.is_scripting():
        boxes = _check_area(boxes, fmt)
    if boxes.is_floating_point():
        boxes = boxes.to(compute_dtype(boxes.dtype))
    elif boxes.dtype not in (torch.int32, torch.int64):
        boxes = boxes.int()
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]
