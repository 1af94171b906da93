"""IoU of boxes: pairwise (N x M, as torchvision.ops) and aligned (elementwise pairs).

Boxes are corners ``(x1, y1, x2, y2)`` with ``0 <= x1 <= x2`` and ``0 <= y1 <= y2`` (the pairwise
ops also take ``fmt="xywh"`` or ``"cxcywh"``, as torchvision 0.29's ``box_iou``). float16 and
bfloat16 boxes are computed in float32; integer boxes are converted to float32.

Drop-in details: every function scripts with ``torch.jit.script`` (with the compiled extension)
and is a ``torch.fx`` leaf. Under autocast, boxes of two dtypes are computed in the wider one
(float32 at least). Double backward (``create_graph=True``) works: the backward is then the
differentiable plain-PyTorch formula. Batched pairwise input ``[..., N, 4]`` is computed by the
broadcast plain-PyTorch formula (the kernels take ``[N, 4]``).
"""

import math

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _reference
from fastmtl.ops._checks import InputError, check_box_pair, check_choice
from fastmtl.ops.boxes import box_convert

__all__ = [
    "aligned_box_iou",
    "box_iou",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
]

KINDS = ["iou", "giou", "diou", "ciou"]  # the values of the schemas' `kind` argument


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise InputError(f"Invalid eps {eps!r}: must be a finite number >= 0")
    return float(eps)


def _check_fmt(fmt) -> None:
    if fmt not in ("xyxy", "xywh", "cxcywh"):
        raise InputError(f"Invalid fmt {fmt!r}: expected 'xyxy', 'xywh' or 'cxcywh'")


def _pairwise_eager(boxes1, boxes2, kind: str, eps, fmt) -> Tensor:
    _check_fmt(fmt)
    boxes1, boxes2 = check_box_pair(boxes1, boxes2, pairwise=True)
    eps = _check_eps(eps)
    if fmt != "xyxy":
        boxes1, boxes2 = box_convert(boxes1, fmt, "xyxy"), box_convert(boxes2, fmt, "xyxy")
    if boxes1.dim() == 2 and boxes2.dim() == 2 and use_compiled(boxes1, kind):
        return torch.ops.fastmtl.pairwise_box_iou(boxes1, boxes2, kind, eps)
    return _reference.pairwise_box_iou(boxes1, boxes2, kind, eps)


def _pairwise(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float, fmt: str) -> Tensor:
    if not torch.jit.is_scripting():
        return _pairwise_eager(boxes1, boxes2, kind, eps, fmt)
    # TorchScript: the extension's kernel, its schema checks; batched boxes take the reference.
    if not boxes1.is_floating_point():
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point():
        boxes2 = boxes2.float()
    if fmt != "xyxy":
        boxes1, boxes2 = box_convert(boxes1, fmt, "xyxy"), box_convert(boxes2, fmt, "xyxy")
    if boxes1.dim() == 2 and boxes2.dim() == 2:
        return torch.ops.fastmtl.pairwise_box_iou(boxes1, boxes2, kind, eps)
    return _reference.pairwise_box_iou(boxes1, boxes2, kind, eps)


@torch.fx.wrap
def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise intersection over union, as ``torchvision.ops.box_iou``.

    Args:
        boxes1: ``Tensor[..., N, 4]``, in ``fmt``.
        boxes2: ``Tensor[..., M, 4]``, same dtype (unless under autocast) and device; the leading
            dimensions broadcast with those of ``boxes1``.
        fmt: ``"xyxy"`` (corners, default), ``"xywh"`` or ``"cxcywh"``.

    Returns:
        ``Tensor[..., N, M]``: IoU of every pair, float32 for float16/bfloat16/integer input,
        else the input dtype. Two zero-area boxes give NaN (0 / 0), as in torchvision.
    """
    return _pairwise(boxes1, boxes2, "iou", 0.0, fmt)


@torch.fx.wrap
def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019), as ``torchvision.ops.generalized_box_iou``.

    ``GIoU = IoU - (C - union) / C`` with ``C`` the area of the smallest enclosing box.
    Shapes (``[..., N, 4]``) and dtypes as :func:`box_iou`; values in ``[-1, 1]``.
    """
    return _pairwise(boxes1, boxes2, "giou", 0.0, "xyxy")


@torch.fx.wrap
def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU (Zheng et al. 2020), as ``torchvision.ops.distance_box_iou``.

    ``DIoU = IoU - rho^2 / (c^2 + eps)`` with ``rho`` the distance between the box centres
    and ``c`` the diagonal of the enclosing box. Shapes and dtypes as :func:`box_iou`.
    """
    return _pairwise(boxes1, boxes2, "diou", eps, "xyxy")


@torch.fx.wrap
def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU (Zheng et al. 2020), as ``torchvision.ops.complete_box_iou``.

    ``CIoU = DIoU - alpha * v`` with ``v = 4 / pi^2 (atan(w1/h1) - atan(w2/h2))^2`` and
    ``alpha = v / (1 - IoU + v + eps)`` (a constant in the gradient). Shapes as :func:`box_iou`.
    """
    return _pairwise(boxes1, boxes2, "ciou", eps, "xyxy")


@torch.fx.wrap
def aligned_box_iou(boxes1: Tensor, boxes2: Tensor, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """IoU, GIoU, DIoU or CIoU of corresponding boxes (the diagonal of the pairwise op).

    Args:
        boxes1: ``Tensor[..., 4]`` in ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]``, broadcastable with ``boxes1``, same dtype (unless under
            autocast) and device.
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        eps: added to every denominator (union, enclosing area, squared diagonal), as in
            torchvision's IoU losses.

    Returns:
        ``Tensor[...]``, differentiable: float32 for float16/bfloat16/integer input (as
        torchvision's losses), else the input dtype.
    """
    if not torch.jit.is_scripting():
        return _aligned_eager(boxes1, boxes2, kind, eps)
    if not boxes1.is_floating_point():
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point():
        boxes2 = boxes2.float()
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    out = torch.ops.fastmtl.aligned_box_iou(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), kind, eps)
    return out.reshape(boxes1.shape[:-1])


def _aligned_eager(boxes1, boxes2, kind, eps) -> Tensor:
    check_choice("kind", kind, KINDS)
    boxes1, boxes2 = check_box_pair(boxes1, boxes2, pairwise=False)
    eps = _check_eps(eps)
    try:
        boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    except RuntimeError:
        raise InputError(
            f"boxes1 {list(boxes1.shape)} and boxes2 {list(boxes2.shape)} are not broadcastable"
        ) from None
    shape = boxes1.shape[:-1]
    flat1, flat2 = boxes1.reshape(-1, 4), boxes2.reshape(-1, 4)
    if use_compiled(flat1, "aligned_box_iou"):
        out = torch.ops.fastmtl.aligned_box_iou(flat1, flat2, kind, eps)
    else:
        out = _reference.aligned_box_iou(flat1, flat2, kind, eps)
    return out.reshape(shape)


def _differentiable_backward(reference, kind: str, eps: float, boxes1: Tensor, boxes2: Tensor, grad: Tensor):
    """The backward as plain-PyTorch ops (a vector-Jacobian product of the reference), so that
    a graph of it can be built: used only for double backward (create_graph=True)."""
    _, vjp = torch.func.vjp(lambda a, b: reference(a, b, kind, eps), boxes1, boxes2)
    return vjp(grad)


def check_op_args(boxes1, boxes2, kind, eps, aligned: bool) -> None:
    """The C++ check_box_iou_args (csrc/ops/box_iou/box_iou.cpp), for the fake kernels."""
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if b.dim() != 2 or b.shape[1] != 4:
            raise InputError(f"{name} must have shape [N, 4], got {list(b.shape)}")
        if b.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise InputError(f"{name} must be float32, float64, float16 or bfloat16, got {b.dtype}")
    if boxes1.dtype != boxes2.dtype:
        raise InputError(f"boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} and {boxes2.dtype}")
    if boxes1.device != boxes2.device:
        raise InputError(
            f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}"
        )
    if aligned and boxes1.shape[0] != boxes2.shape[0]:
        raise InputError(
            "boxes1 and boxes2 must hold the same number of boxes, got "
            f"{boxes1.shape[0]} and {boxes2.shape[0]}"
        )
    check_choice("kind", kind, KINDS)
    if not (math.isfinite(eps) and eps >= 0):
        raise InputError(f"eps must be finite and >= 0, got {eps}")


def _register() -> None:
    """Fake (meta) kernels for torch.compile and autograd formulas for the compiled ops."""
    lib = "fastmtl::"

    def result_dtype(boxes1, boxes2):
        return _reference.pair_compute_dtype(boxes1.dtype, boxes2.dtype)

    @torch.library.register_fake(lib + "pairwise_box_iou")
    def _(boxes1, boxes2, kind, eps):
        check_op_args(boxes1, boxes2, kind, eps, aligned=False)
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]), dtype=result_dtype(boxes1, boxes2))

    @torch.library.register_fake(lib + "aligned_box_iou")
    def _(boxes1, boxes2, kind, eps):
        check_op_args(boxes1, boxes2, kind, eps, aligned=True)
        return boxes1.new_empty((boxes1.shape[0],), dtype=result_dtype(boxes1, boxes2))

    def backward_fake(grad, boxes1, boxes2, kind, eps):
        check_choice("kind", kind, KINDS)
        return torch.empty_like(boxes1), torch.empty_like(boxes2)

    for name in ("_pairwise_box_iou_backward", "_aligned_box_iou_backward"):
        torch.library.register_fake(lib + name)(backward_fake)

    def setup_context(ctx, inputs, output):
        boxes1, boxes2, ctx.kind, ctx.eps = inputs
        ctx.save_for_backward(boxes1, boxes2)

    def backward_of(backward_op, reference):
        def backward(ctx, grad):
            boxes1, boxes2 = ctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable
                g1, g2 = _differentiable_backward(reference, ctx.kind, ctx.eps, boxes1, boxes2, grad)
            else:
                g1, g2 = backward_op(grad, boxes1, boxes2, ctx.kind, ctx.eps)
            return g1, g2, None, None

        return backward

    torch.library.register_autograd(
        lib + "pairwise_box_iou",
        backward_of(torch.ops.fastmtl._pairwise_box_iou_backward, _reference.pairwise_box_iou),
        setup_context=setup_context,
    )
    torch.library.register_autograd(
        lib + "aligned_box_iou",
        backward_of(torch.ops.fastmtl._aligned_box_iou_backward, _reference.aligned_box_iou),
        setup_context=setup_context,
    )


if has_compiled_ops():
    _register()
