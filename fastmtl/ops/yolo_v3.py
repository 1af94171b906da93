"""The fused anchor-based YOLO loss (YOLOv3 rules, box term "mse" or "ciou"): one pass over
every scale computes the loss terms and their gradient; the backward scales the saved gradient.
The saved gradient is compact: the objectness value of every prediction and whole rows only for
the assigned ones (at most one per target), since every other value of the gradient is zero.

The public entry is :func:`fastmtl.losses.yolo_anchor_loss`, which takes this path for
``mode="v3"`` when the extension is built, and the plain-PyTorch reference
(:mod:`fastmtl.ops._yolo_anchor_reference`, whose docstring states every rule) otherwise.
:func:`yolo_v3_terms` returns the unweighted per-image terms ``[N, 4]`` (box, obj, noobj, cls),
differentiable in the predictions (not twice: double backward raises).
"""

import math

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops
from fastmtl.ops._checks import InputError
from fastmtl.ops._reference import compute_dtype
from fastmtl.ops.yolo_v1 import check_padded_targets

__all__ = ["TERMS", "check_op_args", "yolo_v3_terms"]

TERMS = ("box", "obj", "noobj", "cls")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_LEVELS = 8


def yolo_v3_terms(
    preds: "list[Tensor]",
    targets: Tensor,
    counts: Tensor,
    anchors: Tensor,
    strides,
    ignore_threshold: float,
    ciou: bool = False,
) -> Tensor:
    """Per-image ``[N, 4]`` terms of the fused op (float32 for half predictions); ``ciou``: the
    box term is ``1 - CIoU`` of the decoded box, not the squared errors."""
    compute_grad = torch.is_grad_enabled() and any(p.requires_grad for p in preds)
    terms, *_ = torch.ops.fastmtl.yolo_v3_loss(
        list(preds),
        targets,
        counts,
        anchors,
        [float(s) for s in strides],
        float(ignore_threshold),
        compute_grad,
        bool(ciou),
    )
    return terms


def check_op_args(preds, targets, counts, anchors, strides, ignore_threshold) -> None:
    """The C++ check_yolo_v3_args (csrc/ops/yolo/yolo_v3.cpp), for the fake kernel."""
    if not 1 <= len(preds) <= _MAX_LEVELS:
        raise InputError(f"preds must hold 1 to {_MAX_LEVELS} scales, got {len(preds)}")
    p0 = preds[0]
    if p0.dim() != 5 or p0.shape[4] < 5:
        raise InputError(f"preds[0] must have shape [N, A, H, W, 5 + C], got {list(p0.shape)}")
    if p0.dtype not in _FLOATS:
        raise InputError(f"preds[0] must be float32, float64, float16 or bfloat16, got {p0.dtype}")
    if not 1 <= p0.shape[1] < 1024:
        raise InputError(f"preds: 1 to 1023 anchors per scale, got {p0.shape[1]}")
    for i, p in enumerate(preds):
        if (
            p.dim() != 5
            or p.shape[0] != p0.shape[0]
            or p.shape[1] != p0.shape[1]
            or p.shape[4] != p0.shape[4]
        ):
            raise InputError(
                f"preds[{i}] must have shape [{p0.shape[0]}, {p0.shape[1]}, H, W, {p0.shape[4]}] "
                f"like preds[0], got {list(p.shape)}"
            )
        if p.dtype != p0.dtype or p.device != p0.device:
            raise InputError(
                f"preds[{i}] must have the dtype and device of preds[0], got {p.dtype} on {p.device}"
            )
        if not (1 <= p.shape[2] < 2**30 and 1 <= p.shape[3] < 2**30):
            raise InputError(
                f"preds[{i}]: a grid of {p.shape[2]} x {p.shape[3]} cells: sides from 1 to 2^30 - 1 "
                "(a target may be assigned to any scale)"
            )
    n, levels = p0.shape[0], len(preds)
    check_padded_targets(targets, counts, n)
    if anchors.dim() != 3 or tuple(anchors.shape) != (levels, p0.shape[1], 2):
        raise InputError(f"anchors must have shape [{levels}, {p0.shape[1]}, 2], got {list(anchors.shape)}")
    if not anchors.is_floating_point():
        raise InputError(f"anchors must be a floating-point tensor, got {anchors.dtype}")
    if any(t.device != p0.device for t in (targets, counts, anchors)):
        raise InputError(
            f"targets, counts and anchors must be on the device of preds, got {targets.device}, "
            f"{counts.device}, {anchors.device} and {p0.device}"
        )
    if len(strides) != levels:
        raise InputError(f"strides must have {levels} entries (one per scale), got {len(strides)}")
    for i, s in enumerate(strides):
        if not (math.isfinite(s) and s > 0):
            raise InputError(f"strides[{i}] must be finite and > 0, got {s}")
    if math.isnan(ignore_threshold):
        raise InputError("ignore_threshold must not be NaN")


def _register() -> None:
    """Fake (meta) kernels for torch.compile and the autograd formula of the fused op."""
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "yolo_v3_loss")
    def _(preds, targets, counts, anchors, strides, ignore_threshold, compute_grad, ciou=False):
        check_op_args(preds, targets, counts, anchors, strides, ignore_threshold)
        p0 = preds[0]
        terms = p0.new_empty((p0.shape[0], len(TERMS)), dtype=compute_dtype(p0.dtype))
        obj_grads = [p.new_empty(p.shape[:4]) for p in preds] if compute_grad else []
        assigned = [p.new_empty(p.shape[:4], dtype=torch.int8) for p in preds]
        rows = p0.new_empty((p0.shape[0], targets.shape[1], p0.shape[4]) if compute_grad else (0,))
        row_slots = p0.new_empty((p0.shape[0], targets.shape[1], 2), dtype=torch.int64)
        return terms, obj_grads, assigned, rows, row_slots

    @torch.library.register_fake(lib + "_yolo_v3_loss_backward")
    def _(grad_terms, obj_grads, assigned, rows, row_slots):
        return [g.new_empty((*g.shape, rows.shape[2])) for g in obj_grads]

    def setup_context(ctx, inputs, output):
        compute_grad = inputs[6]
        _, obj_grads, assigned, rows, row_slots = output
        ctx.mark_non_differentiable(*obj_grads, *assigned, rows, row_slots)
        ctx.set_materialize_grads(False)  # no zeros for the saved tensors' gradients
        ctx.compute_grad, ctx.levels = compute_grad, len(assigned)
        ctx.save_for_backward(*obj_grads, *assigned, rows, row_slots)

    def backward(ctx, grad_terms, *_unused):
        if grad_terms is None or not ctx.needs_input_grad[0]:
            return (None,) * 8
        if torch.is_grad_enabled():
            raise RuntimeError(
                "yolo_v3_loss: double backward is not supported (the saved gradient is constant)"
            )
        if not ctx.compute_grad:
            raise RuntimeError("yolo_v3_loss was called with compute_grad=False: it saved no gradient")
        saved, k = ctx.saved_tensors, ctx.levels
        obj_grads, assigned, (rows, row_slots) = list(saved[:k]), list(saved[k : 2 * k]), saved[2 * k :]
        grads = torch.ops.fastmtl._yolo_v3_loss_backward(
            grad_terms.contiguous(), obj_grads, assigned, rows, row_slots
        )
        return (grads,) + (None,) * 7

    torch.library.register_autograd(lib + "yolo_v3_loss", backward, setup_context=setup_context)


if has_compiled_ops():
    _register()
