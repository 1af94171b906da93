"""The YOLOv1 loss (Redmon et al., "You Only Look Once", 2016), fused: one pass over the grid
computes the loss and its gradient; the backward scales the saved gradient.

Layout and rules (public implementations disagree on each; these are chosen and tested):

- ``pred[n, i, j]`` is cell row ``i`` (y), column ``j`` (x) of an ``H x W`` grid (``S x S`` in the
  paper), holding ``num_boxes`` boxes of ``(x, y, w, h, conf)`` then ``num_classes`` class scores
  (the per-cell layout of the PyTorch tutorials, boxes first).
- ``targets[n, k] = (class, cx, cy, w, h)``, the YOLO label format: centre and size as fractions
  of the image; the first ``counts[n]`` rows are real, the rest padding.
- An object belongs to the cell ``floor(cx * W), floor(cy * H)`` holding its centre, clamped to
  the grid (``cx = 1`` falls in the last column). When several centres fall in one cell, the
  first in target order is the cell's object; the others are ignored (Darknet keeps the first
  after a shuffle, so shuffle the targets to reproduce it).
- ``x, y`` are the centre's offsets in the cell (targets ``cx * W - j``, ``cy * H - i``).
  ``w, h`` are image fractions and the size term compares square roots:
  ``wh="sqrt"`` (default, Darknet): the network outputs ``sqrt(w)`` itself; the term is
  ``(out - sqrt(w^))^2`` and the box is ``out^2`` wide (a negative output is a valid box, no NaN).
  ``wh="signed_sqrt"`` (the tutorials): the network outputs ``w``; the term uses
  ``sign(w) * sqrt(|w| + 1e-6)`` and the box is ``max(w, 0)`` wide.
- The responsible predictor of a cell with an object has the highest IoU with it (ties: the lowest
  index). When every IoU is 0, it is the one nearest to the object (smallest squared distance
  of ``(cx, cy, w, h)``; Darknet's rule), not blindly predictor 0.
- Confidence target: ``conf_target="iou"`` (default, the paper and Darknet) is that IoU, held
  constant (no gradient flows through it); ``"one"`` is 1.
- The no-object term is paid by every predictor that is not responsible, including the other
  predictors of a cell with an object (the paper and Darknet).
- Class scores are compared with the one-hot class in cells with an object only.

The five terms, per image: ``coord = lambda_coord * sum [(x - x^)^2 + (y - y^)^2]``,
``size = lambda_coord * sum [(s(w) - sqrt(w^))^2 + (s(h) - sqrt(h^))^2]``, ``obj = sum (conf -
t)^2`` over responsible predictors; ``noobj = lambda_noobj * sum conf^2`` over the others;
``class = sum_c (p_c - onehot_c)^2`` over cells with an object. ``total`` is their sum.
``reduction``: over images, ``"sum"`` (default, the paper), ``"mean"`` or ``"none"`` (``[N]``).
"""

import math

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _checks
from fastmtl.ops._checks import InputError, check_choice, check_reduction
from fastmtl.ops._reference import compute_dtype
from fastmtl.ops._yolo_v1_reference import yolo_v1_terms

__all__ = ["CONF_TARGETS", "TERMS", "WH_MODES", "yolo_v1_loss"]

TERMS = ("coord", "size", "obj", "noobj", "class")
WH_MODES = ("sqrt", "signed_sqrt")
CONF_TARGETS = ("iou", "one")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_BOXES = 127  # the responsible predictor is saved as an int8


@torch.fx.wrap
def yolo_v1_loss(
    pred: Tensor,
    targets: Tensor,
    counts: Tensor,
    num_boxes: int = 2,
    num_classes: int = 20,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    wh: str = "sqrt",
    conf_target: str = "iou",
    reduction: str = "sum",
) -> dict[str, Tensor]:
    """YOLOv1 loss of a grid of predictions (see the module for every rule).

    Args:
        pred: ``Tensor[N, H, W, 5 * num_boxes + num_classes]``, float32/float64/float16/bfloat16,
            any layout (copied once when not contiguous).
        targets: ``Tensor[N, M, 5]`` of ``(class, cx, cy, w, h)``, image fractions, any float
            dtype, same device; not differentiated.
        counts: ``Tensor[N]`` int64/int32: the real rows of each image's ``targets``.
        num_boxes, num_classes: ``B`` (1 to 127) and ``C``.
        lambda_coord, lambda_noobj: the paper's 5 and 0.5 by default.
        wh: ``"sqrt"`` or ``"signed_sqrt"``.  conf_target: ``"iou"`` or ``"one"``.
        reduction: ``"sum"``, ``"mean"`` or ``"none"``, over images.

    Returns:
        ``{"total", "coord", "size", "obj", "noobj", "class"}``: scalars, or ``Tensor[N]`` with
        ``"none"``; float32 for half ``pred``, else its dtype.
    """
    if not torch.jit.is_scripting():
        _check(pred, targets, counts, num_boxes, num_classes, lambda_coord, lambda_noobj, wh, conf_target)
        check_reduction(reduction)
        compiled = use_compiled(pred, "yolo_v1_loss")
        # The CPU kernel checks the values itself; CUDA ones are read only with debug checks on.
        if not (compiled and pred.device.type == "cpu") and _checks.values_readable(counts):
            _check_values(targets, counts, num_classes)
        if not compiled:
            terms = yolo_v1_terms(
                pred, targets, counts, num_boxes, num_classes, lambda_coord, lambda_noobj, wh, conf_target
            )
            return _named(terms, reduction)
    compute_grad = pred.requires_grad and torch.is_grad_enabled()
    terms, _, _ = torch.ops.fastmtl.yolo_v1_loss(
        pred,
        targets,
        counts,
        num_boxes,
        num_classes,
        lambda_coord,
        lambda_noobj,
        wh,
        conf_target,
        compute_grad,
    )
    return _named(terms, reduction)


def _named(terms: Tensor, reduction: str) -> dict[str, Tensor]:
    if reduction == "sum":
        reduced = terms.sum(0)
    elif reduction == "mean":
        reduced = terms.mean(0) if terms.shape[0] > 0 else terms.sum(0)
    elif reduction == "none":
        reduced = terms.t()
    else:  # the scripted path: no Python checks ran
        raise ValueError("Invalid value for reduction: expected 'none', 'mean' or 'sum'")
    coord, size, obj, noobj, cls = reduced.unbind(0)  # one op for the five views
    total = reduced.sum(0) if reduction != "sum" else terms.sum()  # "sum": one backward node fewer
    return {"total": total, "coord": coord, "size": size, "obj": obj, "noobj": noobj, "class": cls}


def _check(
    pred, targets, counts, num_boxes, num_classes, lambda_coord, lambda_noobj, wh, conf_target
) -> None:
    for name, t in (("pred", pred), ("targets", targets), ("counts", counts)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, v in (("num_boxes", num_boxes), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{name} must be an int, got {v!r}")
    for name, v in (("lambda_coord", lambda_coord), ("lambda_noobj", lambda_noobj)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{name} must be a number, got {v!r}")
    check_op_args(pred, targets, counts, num_boxes, num_classes, lambda_coord, lambda_noobj, wh, conf_target)


def _check_values(targets: Tensor, counts: Tensor, num_classes: int) -> None:
    """The CPU kernel's value checks (csrc/ops/yolo/yolo_v1_cpu.cpp), for every route."""
    m = targets.shape[1]
    if bool(((counts < 0) | (counts > m)).any()):
        raise InputError(f"counts must be in [0, {m}] (the rows of targets), got {counts.tolist()}")
    real = targets[torch.arange(m, device=targets.device) < counts[:, None]].double()
    if not bool(torch.isfinite(real).all()):
        raise InputError("targets contains NaN or infinite values")
    cls, cx, cy, w, h = real.unbind(-1)
    if bool(((cls < 0) | (cls >= num_classes) | (cls != cls.floor())).any()):
        raise InputError(f"targets[..., 0] must be class indices in [0, {num_classes}), got {cls.tolist()}")
    if bool(((cx < 0) | (cx > 1) | (cy < 0) | (cy > 1)).any()):
        raise InputError("targets: the centres (cx, cy) must be in [0, 1] (image fractions)")
    if bool(((w < 0) | (h < 0)).any()):
        raise InputError("targets: the sizes (w, h) must be >= 0")


def check_op_args(pred, targets, counts, num_boxes, num_classes, lambda_coord, lambda_noobj, wh, conf_target):
    """The C++ check_yolo_v1_args (csrc/ops/yolo/yolo_v1.cpp), for the wrapper and the fake kernel."""
    if pred.dim() != 4:
        raise InputError(
            f"pred must have shape [N, S, S, 5 * num_boxes + num_classes], got {list(pred.shape)}"
        )
    if pred.dtype not in _FLOATS:
        raise InputError(f"pred must be float32, float64, float16 or bfloat16, got {pred.dtype}")
    if not 1 <= num_boxes <= _MAX_BOXES:
        raise InputError(f"num_boxes must be in [1, {_MAX_BOXES}], got {num_boxes}")
    if not 0 <= num_classes < 2**30:
        raise InputError(f"num_classes must be in [0, 2^30), got {num_classes}")
    if pred.shape[3] != 5 * num_boxes + num_classes:
        raise InputError(
            f"pred must have 5 * num_boxes + num_classes = {5 * num_boxes + num_classes} values per cell, "
            f"got shape {list(pred.shape)}"
        )
    if pred.shape[1] >= 2**30 or pred.shape[2] >= 2**30:
        raise InputError(
            f"pred: a grid of {pred.shape[1]} x {pred.shape[2]} cells is too large: sides below 2^30"
        )
    n = pred.shape[0]
    check_padded_targets(targets, counts, n)
    if targets.device != pred.device or counts.device != pred.device:
        raise InputError(
            f"targets and counts must be on the device of pred, got {targets.device}, {counts.device} "
            f"and {pred.device}"
        )
    for name, v in (("lambda_coord", lambda_coord), ("lambda_noobj", lambda_noobj)):
        if not (math.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be finite and >= 0, got {v}")
    check_choice("wh", wh, WH_MODES)
    check_choice("conf_target", conf_target, CONF_TARGETS)


def check_padded_targets(targets, counts, n: int) -> None:
    """Shapes and dtypes of padded YOLO targets ``[N, M, 5]`` and their ``counts [N]`` (the YOLO
    losses' shared form; the C++ checks say the same)."""
    if targets.dim() != 3 or targets.shape[0] != n or targets.shape[2] != 5:
        raise InputError(
            f"targets must have shape [{n}, max_boxes, 5] (class, cx, cy, w, h), got {list(targets.shape)}"
        )
    if not targets.is_floating_point():
        raise InputError(f"targets must be a floating-point tensor, got {targets.dtype}")
    if counts.dim() != 1 or counts.shape[0] != n:
        raise InputError(f"counts must have shape [{n}], got {list(counts.shape)}")
    if counts.dtype not in (torch.int64, torch.int32):
        raise InputError(f"counts must be int64 or int32, got {counts.dtype}")


_LIB = None  # the torch.library.Library that holds _yolo_v1_loss_vjp (kept alive)


def _register() -> None:
    """Fake (meta) kernels for torch.compile, and the double backward of the fused op. Its
    autograd kernel is C++ (csrc/ops/yolo/yolo_v1_autograd.cpp): the backward scales the saved
    gradient; under create_graph it calls _yolo_v1_loss_vjp, the reference's vector-Jacobian
    product defined here, which autograd differentiates again."""
    global _LIB
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "yolo_v1_loss")
    def _(pred, targets, counts, *options):
        *options, compute_grad = options
        check_op_args(pred, targets, counts, *options)
        n, gh, gw, _ = pred.shape
        grad = pred.new_empty(pred.shape) if compute_grad else pred.new_empty((0,))
        terms = pred.new_empty((n, len(TERMS)), dtype=compute_dtype(pred.dtype))
        return terms, grad, pred.new_empty((n, gh, gw), dtype=torch.int8)

    @torch.library.register_fake(lib + "_yolo_v1_loss_backward")
    def _(grad_terms, grad, responsible, num_boxes):
        return grad.new_empty(grad.shape)

    def vjp(pred, targets, counts, grad_terms, *options):
        _, pullback = torch.func.vjp(lambda p: yolo_v1_terms(p, targets, counts, *options), pred)
        return pullback(grad_terms)[0]

    _LIB = torch.library.Library("fastmtl", "FRAGMENT")
    _LIB.define(
        "_yolo_v1_loss_vjp(Tensor pred, Tensor targets, Tensor counts, Tensor grad_terms, int num_boxes, "
        "int num_classes, float lambda_coord, float lambda_noobj, str wh, str conf_target) -> Tensor"
    )
    _LIB.impl("_yolo_v1_loss_vjp", vjp, "CompositeImplicitAutograd")


if has_compiled_ops():
    _register()
