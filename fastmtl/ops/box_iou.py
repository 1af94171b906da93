"""IoU of boxes: pairwise (N x M, as torchvision.ops) and aligned (elementwise pairs).

Boxes are corners ``(x1, y1, x2, y2)`` with ``0 <= x1 <= x2`` and ``0 <= y1 <= y2``;
convert other formats with :func:`fastmtl.ops.box_convert`. float16 and bfloat16 boxes
are computed in float32; integer boxes are converted to float32.
"""

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _reference
from fastmtl.ops._checks import InputError, check_box_pair

__all__ = [
    "aligned_box_iou",
    "box_iou",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
]

VARIANTS = {"iou": 0, "giou": 1, "diou": 2, "ciou": 3}


def _variant(kind: str) -> int:
    if kind not in VARIANTS:
        raise InputError(f"kind must be one of {sorted(VARIANTS)}, got {kind!r}")
    return VARIANTS[kind]


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise InputError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _pairwise(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
    boxes1, boxes2 = check_box_pair(boxes1, boxes2, pairwise=True)
    eps = _check_eps(eps)
    if use_compiled(boxes1):
        return torch.ops.fastmtl.pairwise_box_iou(boxes1, boxes2, VARIANTS[kind], eps)
    return _reference.pairwise_box_iou(boxes1, boxes2, kind, eps)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union, as ``torchvision.ops.box_iou``.

    Args:
        boxes1: ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]``, same dtype and device.

    Returns:
        ``Tensor[N, M]``: IoU of every pair, float32 for float16/bfloat16/integer input,
        else the input dtype. Two zero-area boxes give NaN (0 / 0), as in torchvision.
    """
    return _pairwise(boxes1, boxes2, "iou", 0.0)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019), as ``torchvision.ops.generalized_box_iou``.

    ``GIoU = IoU - (C - union) / C`` with ``C`` the area of the smallest enclosing box.
    Shapes and dtypes as :func:`box_iou`; values in ``[-1, 1]``.
    """
    return _pairwise(boxes1, boxes2, "giou", 0.0)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU (Zheng et al. 2020), as ``torchvision.ops.distance_box_iou``.

    ``DIoU = IoU - rho^2 / (c^2 + eps)`` with ``rho`` the distance between the box centres
    and ``c`` the diagonal of the enclosing box. Shapes and dtypes as :func:`box_iou`.
    """
    return _pairwise(boxes1, boxes2, "diou", eps)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU (Zheng et al. 2020), as ``torchvision.ops.complete_box_iou``.

    ``CIoU = DIoU - alpha * v`` with ``v = 4 / pi^2 (atan(w1/h1) - atan(w2/h2))^2`` and
    ``alpha = v / (1 - IoU + v + eps)`` (a constant in the gradient). Shapes as :func:`box_iou`.
    """
    return _pairwise(boxes1, boxes2, "ciou", eps)


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor, *, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """IoU, GIoU, DIoU or CIoU of corresponding boxes (the diagonal of the pairwise op).

    Args:
        boxes1: ``Tensor[..., 4]`` in ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]``, broadcastable with ``boxes1``, same dtype and device.
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        eps: added to every denominator (union, enclosing area, squared diagonal), as in
            torchvision's IoU losses.

    Returns:
        ``Tensor[...]``, differentiable: float32 for float16/bfloat16/integer input (as
        torchvision's losses), else the input dtype.
    """
    variant = _variant(kind)
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
    if use_compiled(flat1):
        out = torch.ops.fastmtl.aligned_box_iou(flat1, flat2, variant, eps)
    else:
        out = _reference.aligned_box_iou(flat1, flat2, kind, eps)
    return out.reshape(shape)


def _register() -> None:
    """Fake (meta) kernels for torch.compile and autograd formulas for the compiled ops."""
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "pairwise_box_iou")
    def _(boxes1, boxes2, variant, eps):
        return boxes1.new_empty(
            (boxes1.shape[0], boxes2.shape[0]), dtype=_reference.compute_dtype(boxes1.dtype)
        )

    @torch.library.register_fake(lib + "aligned_box_iou")
    def _(boxes1, boxes2, variant, eps):
        return boxes1.new_empty((boxes1.shape[0],), dtype=_reference.compute_dtype(boxes1.dtype))

    for name in ("_pairwise_box_iou_backward", "_aligned_box_iou_backward"):
        torch.library.register_fake(lib + name)(
            lambda grad, boxes1, boxes2, variant, eps: (torch.empty_like(boxes1), torch.empty_like(boxes2))
        )

    def setup_context(ctx, inputs, output):
        boxes1, boxes2, ctx.variant, ctx.eps = inputs
        ctx.save_for_backward(boxes1, boxes2)

    def backward_of(backward_op):
        def backward(ctx, grad):
            boxes1, boxes2 = ctx.saved_tensors
            g1, g2 = backward_op(grad, boxes1, boxes2, ctx.variant, ctx.eps)
            return g1, g2, None, None

        return backward

    torch.library.register_autograd(
        lib + "pairwise_box_iou",
        backward_of(torch.ops.fastmtl._pairwise_box_iou_backward),
        setup_context=setup_context,
    )
    torch.library.register_autograd(
        lib + "aligned_box_iou",
        backward_of(torch.ops.fastmtl._aligned_box_iou_backward),
        setup_context=setup_context,
    )


if has_compiled_ops():
    _register()
