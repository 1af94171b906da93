"""The fused yolov5-mode anchor loss (yolov5 7.0.14's ``ComputeLoss`` rules): one pass over every
scale computes the sums of its terms and their gradient; the backward scales the saved gradient.
The saved gradient is compact: the objectness value of every prediction, and one row per
candidate (a target's cell, neighbour cell and anchor), since every other value is zero.

The public entry is :func:`fastmtl.losses.yolo_anchor_loss` with ``mode="yolov5"``; the rules
are in :mod:`fastmtl.ops._yolo_anchor_reference` (the test oracle and the fallback).
:func:`yolov5_means` returns yolov5's three unweighted terms, differentiable in the predictions
(not twice: double backward raises).
"""

import math

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops
from fastmtl.ops._checks import InputError
from fastmtl.ops._reference import compute_dtype
from fastmtl.ops.yolo_v3 import check_op_args as check_v3_args

__all__ = ["SUMS", "check_op_args", "yolov5_means"]

SUMS = ("box", "obj", "cls")
_OFFSETS = 5  # yolov5's own cell and four neighbours


def yolov5_means(
    preds: "list[Tensor]", targets: Tensor, counts: Tensor, anchors: Tensor, strides, anchor_t: float, balance
) -> "tuple[Tensor, Tensor, Tensor]":
    """yolov5's ``lbox, lobj, lcls`` before the gains: per scale, the mean of ``1 - CIoU`` over
    its candidates, ``balance[l]`` times the objectness BCE mean over its predictions, the class
    BCE mean over its candidates' one-hots; summed over the scales. Float32 for half predictions."""
    if isinstance(anchor_t, bool) or not isinstance(anchor_t, (int, float)):
        raise InputError(f"anchor_t must be a number, got {type(anchor_t).__name__}")
    compute_grad = torch.is_grad_enabled() and any(p.requires_grad for p in preds)
    sums, candidates, *_ = torch.ops.fastmtl.yolov5_loss(
        list(preds), targets, counts, anchors, [float(s) for s in strides], float(anchor_t), compute_grad
    )
    per_scale = sums.sum(0)  # [L, 3], in a fixed order
    found = candidates.sum(0).to(per_scale.dtype)  # [L]; no host sync
    n, na, classes = preds[0].shape[0], preds[0].shape[1], preds[0].shape[4] - 5
    box = (per_scale[:, 0] / found.clamp(min=1)).sum()
    cls = (per_scale[:, 2] / (found * classes).clamp(min=1)).sum()  # the kernel sums 0 for C = 1
    obj = per_scale.new_zeros(())
    for level, p in enumerate(preds):  # Python numbers: no host-to-device copy
        obj = obj + per_scale[level, 1] * (float(balance[level]) / max(n * na * p.shape[2] * p.shape[3], 1))
    return box, obj, cls


def check_op_args(preds, targets, counts, anchors, strides, anchor_t) -> None:
    """The C++ check_yolov5_args (csrc/ops/yolo/yolo_v5.cpp), for the fake kernel."""
    check_v3_args(preds, targets, counts, anchors, strides, 0.0)
    if not (math.isfinite(anchor_t) and anchor_t > 0):
        raise InputError(f"anchor_t must be finite and > 0, got {anchor_t}")
    rows, na = targets.shape[1], preds[0].shape[1]
    if _OFFSETS * na * rows >= 2**31:
        raise InputError(
            f"targets: {rows} rows per image make 5 x {na} x {rows} candidate slots; "
            "at most 2^31 - 1 are supported"
        )


def _register() -> None:
    """Fake (meta) kernels for torch.compile and the autograd formula of the fused op."""
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "yolov5_loss")
    def _(preds, targets, counts, anchors, strides, anchor_t, compute_grad):
        check_op_args(preds, targets, counts, anchors, strides, anchor_t)
        p0 = preds[0]
        n, levels, slots = p0.shape[0], len(preds), _OFFSETS * p0.shape[1] * targets.shape[1]
        sums = p0.new_empty((n, levels, len(SUMS)), dtype=compute_dtype(p0.dtype))
        candidates = p0.new_empty((n, levels), dtype=torch.int64)
        obj_grads = [p.new_empty(p.shape[:4]) for p in preds] if compute_grad else []
        rows = p0.new_empty((n, levels, slots, p0.shape[4]) if compute_grad else (0,))
        row_slots = p0.new_empty((n, levels, slots), dtype=torch.int64)
        return sums, candidates, obj_grads, rows, row_slots

    @torch.library.register_fake(lib + "_yolov5_loss_backward")
    def _(grad_sums, obj_grads, rows, row_slots):
        return [g.new_empty((*g.shape, rows.shape[3])) for g in obj_grads]

    def setup_context(ctx, inputs, output):
        compute_grad = inputs[6]
        _, candidates, obj_grads, rows, row_slots = output
        ctx.mark_non_differentiable(candidates, *obj_grads, rows, row_slots)
        ctx.set_materialize_grads(False)  # no zeros for the saved tensors' gradients
        ctx.compute_grad = compute_grad
        ctx.save_for_backward(*obj_grads, rows, row_slots)

    def backward(ctx, grad_sums, *_unused):
        if grad_sums is None or not ctx.needs_input_grad[0]:
            return (None,) * 7
        if torch.is_grad_enabled():
            raise RuntimeError(
                "yolov5_loss: double backward is not supported (the saved gradient is constant)"
            )
        if not ctx.compute_grad:
            raise RuntimeError("yolov5_loss was called with compute_grad=False: it saved no gradient")
        *obj_grads, rows, row_slots = ctx.saved_tensors
        grads = torch.ops.fastmtl._yolov5_loss_backward(grad_sums.contiguous(), obj_grads, rows, row_slots)
        return (grads,) + (None,) * 6

    torch.library.register_autograd(lib + "yolov5_loss", backward, setup_context=setup_context)


if has_compiled_ops():
    _register()
