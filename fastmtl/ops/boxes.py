"""Box formats and areas.

Formats: ``"xyxy"`` corners (torchvision's), ``"cxcywh"`` centre and size (the YOLO slides'),
``"xywh"`` top-left corner and size (COCO's). Elementwise and memory-bound, so plain PyTorch.
"""

import torch
from torch import Tensor

from fastmtl.ops._checks import check_boxes

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


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Converts ``Tensor[..., 4]`` boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    Same call and results as ``torchvision.ops.box_convert``; returns the input itself when
    the formats are equal, a new tensor of the same shape and dtype otherwise.
    """
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in _FORMATS:
            raise ValueError(f"{name} must be one of {_FORMATS}, got {fmt!r}")
    if not isinstance(boxes, Tensor) or boxes.dim() == 0 or boxes.shape[-1] != 4:
        shape = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a Tensor[..., 4], got {shape}")
    if in_fmt == out_fmt:
        return boxes.clone()
    xyxy = boxes if in_fmt == "xyxy" else _to_xyxy(boxes, in_fmt)
    return xyxy if out_fmt == "xyxy" else _from_xyxy(xyxy, out_fmt)


def box_area(boxes: Tensor) -> Tensor:
    """Area ``(x2 - x1) * (y2 - y1)`` of ``Tensor[..., 4]`` corner boxes, as ``torchvision.ops.box_area``.

    float16/bfloat16 stay in their dtype; integer boxes give integer areas (int32 and int64 kept,
    smaller integer types widened to int32), as torchvision does.
    """
    if isinstance(boxes, Tensor) and not boxes.is_floating_point() and boxes.dtype != torch.bool:
        if boxes.dim() == 0 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must have shape [..., 4], got {list(boxes.shape)}")
        boxes = boxes if boxes.dtype in (torch.int32, torch.int64) else boxes.int()
    else:
        boxes = check_boxes("boxes", boxes, pairwise=False)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
