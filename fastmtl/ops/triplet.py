"""Batch triplet loss with online mining, fused: one pass per anchor row of the B x B distances
mines its triplets, sums their losses and writes the row's gradient weights; the backward is
two matrix products. The B x B x B triplet tensor is never built: memory is O(B^2).

Rules (every one is in :mod:`fastmtl.ops._triplet_reference`, the tests' oracle and the
fallback): a triplet ``(a, p, n)`` has ``p != a`` with ``a``'s label and ``n`` with another;
its loss is ``max(d(a, p) - d(a, n) + margin, 0)`` (cosine: ``max(s(a, n) - s(a, p) + margin,
0)``, the slides' form). ``mining``:

* ``"all"``: every valid triplet (pytorch-metric-learning's ``TripletMarginLoss`` without a miner);
* ``"hard"``: batch-hard, per anchor its farthest positive and closest negative
  (``BatchHardMiner``), first index on ties;
* ``"semihard"``: FaceNet's, per ``(a, p)`` the closest negative with
  ``0 < d(a, n) - d(a, p) <= margin``;
* ``"semihard_all"``: every triplet in that band (``TripletMarginMiner("semihard")``).

``distance``: ``"euclidean"`` (gradient 0 between equal embeddings, as ``torch.cdist``),
``"squared_euclidean"``, ``"cosine"`` (similarity of the L2-normalized embeddings).
``reduction``: ``"mean_nonzero"`` (the mean over triplets with a loss > 0, 0 when there are
none: pytorch-metric-learning's default), ``"mean"`` (over the mined triplets), ``"sum"``,
``"none"`` (per anchor, the sum of its triplets' losses, ``[B]``).

:func:`triplet_loss` is the classic form on explicit ``(anchor, positive, negative)`` rows, equal
to ``torch.nn.functional.triplet_margin_loss`` (``p``, ``eps``, ``swap``, ``reduction``), fused:
one pass per row computes the loss and its gradient for the three rows.
"""

import math

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops._checks import InputError, check_choice
from fastmtl.ops._reference import compute_dtype
from fastmtl.ops._triplet_reference import DISTANCES, MINING, REDUCTIONS, triplet_terms_reference

__all__ = ["triplet_loss", "triplet_margin_loss"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_ROWS = 2**20


@torch.fx.wrap
def triplet_margin_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    mining: str = "all",
    distance: str = "euclidean",
    reduction: str = "mean_nonzero",
) -> dict[str, Tensor]:
    """Triplet loss of a batch, mined online (see the module for every rule).

    Args:
        embeddings: ``Tensor[B, D]``, float32/float64/float16/bfloat16 (half accumulated in float32).
        labels: ``Tensor[B]`` int64/int32 identities, on the device of ``embeddings``.
        margin: finite.
        mining, distance, reduction: as in the module docstring (positional too: TorchScript has
            no keyword-only arguments).

    Returns:
        ``{"loss", "active_fraction", "pos_mean", "neg_mean", "active", "triplets"}``: the reduced
        loss (``[B]`` with ``"none"``); the fraction of mined triplets with a loss > 0; the mean
        ``d(a, p)`` and ``d(a, n)`` over the mined triplets (similarities for cosine; 0 when
        none); the counts of active and mined triplets (float64). Float32 for half embeddings.
    """
    if not torch.jit.is_scripting():
        check_args(embeddings, labels, margin, mining, distance)
        check_choice("reduction", reduction, REDUCTIONS)
        if not use_compiled(embeddings, "triplet_margin_loss"):
            x = embeddings.to(compute_dtype(embeddings.dtype))
            loss, active, mined, pos_sum, neg_sum = triplet_terms_reference(
                x, labels, margin, mining, distance
            )
            return _reduce(loss, active.sum(), mined.sum(), pos_sum.sum(), neg_sum.sum(), reduction)
    compute_grad = embeddings.requires_grad and torch.is_grad_enabled()
    loss, stats, _, _ = torch.ops.fastmtl.triplet_margin_loss(
        embeddings, labels, float(margin), mining, distance, compute_grad
    )
    sums = stats.sum(0)  # active, mined, sum of d(a, p), of d(a, n)
    return _reduce(loss, sums[0], sums[1], sums[2], sums[3], reduction)


def _reduce(
    loss: Tensor, active: Tensor, mined: Tensor, pos_sum: Tensor, neg_sum: Tensor, reduction: str
) -> dict[str, Tensor]:
    """The reduced loss and the statistics, from per-anchor sums and batch counts (no host sync)."""
    active, mined = active.to(torch.float64), mined.to(torch.float64)  # the kernel's count dtype
    total = loss.sum()
    if reduction == "mean_nonzero":
        out = total / active.clamp(min=1).to(total.dtype)
    elif reduction == "mean":
        out = total / mined.clamp(min=1).to(total.dtype)
    elif reduction == "sum":
        out = total
    elif reduction == "none":
        out = loss
    else:  # the scripted path: no Python checks ran
        raise ValueError("Invalid reduction: expected 'mean_nonzero', 'mean', 'sum' or 'none'")
    some = mined.clamp(min=1)
    return {
        "loss": out,
        "active_fraction": (active / some).to(total.dtype),
        "pos_mean": (pos_sum / some).to(total.dtype),
        "neg_mean": (neg_sum / some).to(total.dtype),
        "active": active,
        "triplets": mined,
    }


@torch.fx.wrap
def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.triplet_margin_loss``, fused: ``max(d(a, p) - d(a, n) + margin, 0)``
    per row with ``d(x, y) = |x - y + eps|_p``, and with ``swap`` ``d(a, n)`` replaced by
    ``min(d(a, n), d(p, n))``. ``anchor``, ``positive``, ``negative``: ``[B, D]`` or ``[D]``, one
    shape and float dtype (half computed in float32; the loss is float32 then). ``reduction``:
    ``"mean"``, ``"sum"`` or ``"none"``."""
    if not torch.jit.is_scripting():
        check_explicit_args(anchor, positive, negative, margin, p, eps)
        check_choice("reduction", reduction, ("none", "mean", "sum"))
        if not use_compiled(anchor, "triplet_loss"):
            loss = torch.nn.functional.triplet_margin_loss(
                anchor, positive, negative, margin, p, eps, swap, reduction="none"
            )
            return _reduce_rows(loss, reduction)
    unbatched = anchor.dim() == 1
    if unbatched:
        anchor, positive, negative = anchor[None], positive[None], negative[None]
    compute_grad = torch.is_grad_enabled() and (
        anchor.requires_grad or positive.requires_grad or negative.requires_grad
    )
    loss, _ = torch.ops.fastmtl.triplet_loss(
        anchor, positive, negative, float(margin), float(p), float(eps), swap, compute_grad
    )
    return _reduce_rows(loss[0] if unbatched else loss, reduction)


def _reduce_rows(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError("Invalid reduction: expected 'mean', 'sum' or 'none'")  # the scripted path


def check_explicit_args(anchor, positive, negative, margin, p, eps) -> None:
    """The C++ checks of the classic form (csrc/ops/triplet/triplet.cpp), for every route."""
    for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if anchor.dim() not in (1, 2):
        raise InputError(f"anchor must have shape [B, D] or [D], got {list(anchor.shape)}")
    if anchor.dtype not in _FLOATS:
        raise InputError(f"anchor must be float32, float64, float16 or bfloat16, got {anchor.dtype}")
    for name, t in (("positive", positive), ("negative", negative)):
        if t.shape != anchor.shape:
            raise InputError(
                f"{name} must have the shape of anchor {list(anchor.shape)}, got {list(t.shape)}"
            )
        if t.dtype != anchor.dtype or t.device != anchor.device:
            raise InputError(f"{name} must have the dtype and device of anchor, got {t.dtype} on {t.device}")
    for name, v in (("margin", margin), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{name} must be a finite number, got {v!r}")
    if margin <= 0:
        raise InputError(f"margin must be finite and > 0 (as torch's), got {margin}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p > 0):
        raise InputError(f"p must be finite and > 0, got {p!r}")


def check_args(embeddings, labels, margin, mining, distance) -> None:
    """The C++ checks (csrc/ops/triplet/triplet.cpp), for every route and the fake kernel."""
    for name, t in (("embeddings", embeddings), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if embeddings.dim() != 2 or embeddings.shape[1] < 1:
        raise InputError(f"embeddings must have shape [B, D] with D >= 1, got {list(embeddings.shape)}")
    if embeddings.dtype not in _FLOATS:
        raise InputError(f"embeddings must be float32, float64, float16 or bfloat16, got {embeddings.dtype}")
    if embeddings.shape[0] >= _MAX_ROWS:
        raise InputError(
            f"embeddings: B = {embeddings.shape[0]} rows; at most 2^20 - 1 (the loss keeps B x B distances)"
        )
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise InputError(f"labels must have shape [{embeddings.shape[0]}], got {list(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise InputError(f"labels must be int64 or int32, got {labels.dtype}")
    if labels.device != embeddings.device:
        raise InputError(
            f"labels must be on the device of embeddings, got {labels.device} and {embeddings.device}"
        )
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise InputError(f"margin must be a finite number, got {margin!r}")
    check_choice("mining", mining, MINING)
    check_choice("distance", distance, DISTANCES)


def _register() -> None:
    """Fake (meta) kernels for torch.compile and the autograd formula of the fused op."""
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "triplet_margin_loss")
    def _(embeddings, labels, margin, mining, distance, compute_grad):
        check_args(embeddings, labels, margin, mining, distance)
        b, dt = embeddings.shape[0], compute_dtype(embeddings.dtype)
        loss = embeddings.new_empty((b,), dtype=dt)
        stats = embeddings.new_empty((b, 4), dtype=torch.float64)
        hard = mining == "hard"  # compact: each anchor's positive and negative
        shape = ((b, 2) if hard else (b, b)) if compute_grad else (0,)
        weights = embeddings.new_empty(shape, dtype=dt)
        pairs = embeddings.new_empty(shape if hard else (0,), dtype=torch.int64)
        return loss, stats, weights, pairs

    @torch.library.register_fake(lib + "_triplet_margin_loss_backward")
    def _(grad_loss, weights, pairs, embeddings, distance):
        return embeddings.new_empty(embeddings.shape)

    def setup_context(ctx, inputs, output):
        embeddings, labels, margin, mining, distance, compute_grad = inputs
        _, stats, weights, pairs = output
        ctx.mark_non_differentiable(stats, weights, pairs)
        ctx.set_materialize_grads(False)  # no B x B zeros for the weights' gradient
        ctx.options, ctx.compute_grad = (margin, mining, distance), compute_grad
        ctx.save_for_backward(embeddings, weights, pairs, labels)

    def backward(ctx, grad_loss, _grad_stats, _grad_weights, _grad_pairs):
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return (None,) * 6
        embeddings, weights, pairs, labels = ctx.saved_tensors
        margin, mining, distance = ctx.options
        if torch.is_grad_enabled():  # double backward: the reference's vector-Jacobian product
            x = embeddings.to(compute_dtype(embeddings.dtype))
            _, vjp = torch.func.vjp(
                lambda e: triplet_terms_reference(e, labels, margin, mining, distance)[0], x
            )
            return (vjp(grad_loss.to(x.dtype))[0].to(embeddings.dtype),) + (None,) * 5
        if not ctx.compute_grad:
            raise RuntimeError("triplet_margin_loss was called with compute_grad=False: it saved no gradient")
        grad = torch.ops.fastmtl._triplet_margin_loss_backward(
            grad_loss.contiguous(), weights, pairs, embeddings, distance
        )
        return (grad,) + (None,) * 5

    torch.library.register_autograd(lib + "triplet_margin_loss", backward, setup_context=setup_context)

    @torch.library.register_fake(lib + "triplet_loss")
    def _(anchor, positive, negative, margin, p, eps, swap, compute_grad):
        if anchor.dim() != 2:
            raise InputError(f"anchor must have shape [B, D], got {list(anchor.shape)}")
        check_explicit_args(anchor, positive, negative, margin, p, eps)
        dt = compute_dtype(anchor.dtype)
        b, d = anchor.shape
        return anchor.new_empty((b,), dtype=dt), anchor.new_empty(
            (3, b, d) if compute_grad else (0,), dtype=dt
        )

    def explicit_setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.options, ctx.compute_grad = inputs[3:7], inputs[-1]
        ctx.dtype = inputs[0].dtype
        ctx.save_for_backward(output[1], *inputs[:3])

    def explicit_backward(ctx, grad_loss, _grad_grads):
        if grad_loss is None or not any(ctx.needs_input_grad[:3]):
            return (None,) * 8
        grads, *rows = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: torch's own formula, differentiated again
            dt = compute_dtype(ctx.dtype)

            def loss(a, p, n):
                return torch.nn.functional.triplet_margin_loss(a, p, n, *ctx.options, reduction="none")

            _, vjp = torch.func.vjp(loss, *(r.to(dt) for r in rows))
            return tuple(g.to(ctx.dtype) for g in vjp(grad_loss.to(dt))) + (None,) * 5
        if not ctx.compute_grad:
            raise RuntimeError("triplet_loss was called with compute_grad=False: it saved no gradient")
        g = (grads * grad_loss.to(grads.dtype)[None, :, None]).to(ctx.dtype)
        return (g[0], g[1], g[2]) + (None,) * 5

    torch.library.register_autograd(lib + "triplet_loss", explicit_backward, setup_context=explicit_setup)


if has_compiled_ops():
    _register()
