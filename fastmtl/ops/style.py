"""Style and content losses of neural style transfer (Gatys et al.), the style loss fused.

Style loss of one layer, per sample, with ``G(F)`` the Gram matrix of the generated image's
features ``F`` ``[C, H, W]`` and ``T`` the target (style) Gram matrix:

- ``normalization="gatys"`` (Gatys et al.'s ``E_l = 1/(4 N^2 M^2) sum (G - A)^2``, the lecture's
  ``J_style``)::

      J = 1 / (2 * H * W * C)^2 * sum_kk' (G(F)[k,k'] - T[k,k'])^2,    G unnormalized

  so ``T`` must be the unnormalized Gram matrix of the style features:
  ``gram_matrix(style_features, normalize=False)``.
- ``normalization="mse"`` (the PyTorch neural-style tutorial)::

      J = mean_kk' (G(F)[k,k'] / (C * H * W) - T[k,k'])^2

  with ``T = gram_matrix(style_features, normalize=True)``.

:class:`fastmtl.losses.StyleLoss` builds ``T`` with the matching normalization. The batch:
each sample has its own loss; ``reduction`` takes their mean (default), sum, or keeps them
(``"none"``, ``[N]``). With ``"mse"`` and ``"mean"`` that is ``F.mse_loss`` over all of
``[N, C, C]``, the tutorial's value for one image.

Fused: the forward computes the Gram matrix (each symmetric pair once), the difference ``D`` to
the target and the loss, and keeps only ``D`` ``[N, C, C]`` for the backward, which is one
product per sample, ``dJ/dF = 2 s a (D + D^T) F``. No ``[N, C, C]`` Gram matrix reaches Python
and no extra ``[N, C, H, W]`` tensor is made.
"""

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _reference
from fastmtl.ops._checks import InputError, check_choice, check_reduction
from fastmtl.ops._reduction import reduce_loss
from fastmtl.ops.gram import (
    FLOAT_DTYPES,
    check_features,
    check_no_double_backward,
    check_op_features,
    grad_like,
)

__all__ = ["NORMALIZATIONS", "content_loss", "style_loss"]

NORMALIZATIONS = ("gatys", "mse")  # the values of the schemas' `normalization` argument


def _check_normalization(normalization: str) -> None:
    check_choice("normalization", normalization, NORMALIZATIONS)


def _check_target_gram(target_gram, features: Tensor) -> Tensor:
    if not isinstance(target_gram, torch.Tensor):
        raise TypeError(f"target_gram must be a torch.Tensor, got {type(target_gram).__name__}")
    n, c = features.shape[:2]
    if tuple(target_gram.shape) not in ((c, c), (n, c, c)):
        raise InputError(
            f"target_gram must have shape [{c}, {c}] or [{n}, {c}, {c}] for features "
            f"{list(features.shape)}, got {list(target_gram.shape)}"
        )
    allowed = (features.dtype, _reference.compute_dtype(features.dtype))
    if target_gram.dtype not in allowed:
        names = " or ".join(dict.fromkeys(str(d) for d in allowed))
        raise InputError(
            f"target_gram must be {names} for {features.dtype} features, got {target_gram.dtype}"
        )
    if target_gram.device != features.device:
        raise InputError(
            f"target_gram must be on the device of features, got {target_gram.device} and {features.device}"
        )
    return target_gram


@torch.fx.wrap
def style_loss(
    features: Tensor, target_gram: Tensor, normalization: str = "gatys", reduction: str = "mean"
) -> Tensor:
    """Style loss of one layer between ``features`` and a target Gram matrix (see the module).

    Args:
        features: ``Tensor[N, C, H, W]`` of the generated image(s), float32/float64/float16/
            bfloat16, contiguous or channels_last (other layouts are copied once).
        target_gram: ``Tensor[C, C]`` (the same target for every sample) or ``Tensor[N, C, C]``,
            the dtype of ``features`` or float32 for half features, same device. Unnormalized
            (``gram_matrix(style, normalize=False)``) for ``"gatys"``, normalized for ``"mse"``.
            Differentiable too, though style transfer keeps it fixed.
        normalization: ``"gatys"`` (lecture) or ``"mse"`` (PyTorch tutorial).
        reduction: over the batch: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``Tensor[N]``).

    Returns:
        The loss in float32 for half/bfloat16 features, else their dtype.
    """
    if not torch.jit.is_scripting():
        features = check_features("features", features)
        target_gram = _check_target_gram(target_gram, features)
        _check_normalization(normalization)
        check_reduction(reduction)
        if not use_compiled(features, "style_loss"):
            return reduce_loss(_reference.style_loss(features, target_gram, normalization), reduction)
    per_sample, _ = torch.ops.fastmtl.style_loss(features, target_gram, normalization)
    return reduce_loss(per_sample, reduction)


@torch.fx.wrap
def content_loss(
    features: Tensor, target: Tensor, normalization: str = "gatys", reduction: str = "mean"
) -> Tensor:
    """Content loss between ``features`` ``[N, ...]`` and ``target`` (plain PyTorch: elementwise).

    Per sample: ``"gatys"``, the lecture's ``J_content = 1/2 ||a_C - a_G||^2`` (a sum over the
    sample's elements); ``"mse"``, the mean of squares as ``F.mse_loss``. ``target`` has the
    shape of ``features`` or lacks its batch dimension (one target for every sample).
    ``reduction`` over the batch as in :func:`style_loss`. Computed in float32 for half input.
    """
    if not torch.jit.is_scripting():
        _check_content_args(features, target)
        _check_normalization(normalization)
        check_reduction(reduction)
    dt = torch.promote_types(_reference.compute_dtype(features.dtype), _reference.compute_dtype(target.dtype))
    sq = (features.to(dt) - target.to(dt)).square().flatten(1)
    per_sample = sq.mean(1) if normalization == "mse" else 0.5 * sq.sum(1)
    return reduce_loss(per_sample, reduction)


def _check_op_args(features, target_gram) -> None:
    """The C++ check_style_args (csrc/ops/gram/gram.cpp), for the fake kernel."""
    check_op_features(features)
    n, c = features.shape[:2]
    shape = list(target_gram.shape)
    if shape not in ([c, c], [n, c, c]):
        raise InputError(
            f"target_gram must have shape [{c}, {c}] or [{n}, {c}, {c}] for features {list(features.shape)}, "
            f"got {shape}"
        )
    acc = _reference.compute_dtype(features.dtype)
    if target_gram.dtype not in (features.dtype, acc):
        raise InputError(
            f"target_gram must be {features.dtype} (the dtype of features) or {acc}, got {target_gram.dtype}"
        )
    if target_gram.device != features.device:
        raise InputError(
            f"target_gram must be on the device of features, got {target_gram.device} and {features.device}"
        )


def _check_content_args(features, target) -> None:
    for name, t in (("features", features), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if features.dim() < 2 or features.dtype not in FLOAT_DTYPES:
        raise InputError(
            f"features must be a floating-point [N, ...] tensor with at least 2 dimensions, got "
            f"{features.dtype} {list(features.shape)}"
        )
    if target.shape not in (features.shape, features.shape[1:]):
        raise InputError(
            f"target must have shape {list(features.shape)} or {list(features.shape[1:])}, "
            f"got {list(target.shape)}"
        )
    if not target.is_floating_point() or target.device != features.device:
        raise InputError(
            f"target must be a floating-point tensor on the device of features, got {target.dtype} on "
            f"{target.device} and {features.device}"
        )


def _register() -> None:
    """Fake (meta) kernels for torch.compile and the autograd formula of the fused op."""
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "style_loss")
    def _(features, target_gram, normalization):
        _check_op_args(features, target_gram)
        _check_normalization(normalization)
        n, c = features.shape[:2]
        dt = _reference.compute_dtype(features.dtype)
        return features.new_empty((n,), dtype=dt), features.new_empty((n, c, c), dtype=dt)

    @torch.library.register_fake(lib + "_style_loss_backward")
    def _(grad, diff, features, normalization):
        _check_normalization(normalization)
        return grad_like(features)

    def setup_context(ctx, inputs, output):
        features, target_gram, ctx.normalization = inputs
        _, diff = output
        ctx.mark_non_differentiable(diff)
        ctx.set_materialize_grads(False)  # no zeros for diff's gradient
        ctx.target_dim, ctx.target_dtype = target_gram.dim(), target_gram.dtype
        ctx.save_for_backward(features, diff)

    def backward(ctx, grad, _grad_diff):
        if grad is None:
            return None, None, None
        features, diff = ctx.saved_tensors
        check_no_double_backward("style_loss", grad, features)
        grad_features = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.ops.fastmtl._style_loss_backward(grad, diff, features, ctx.normalization)
        if ctx.needs_input_grad[1]:  # dJ/dT = -2 s D, tiny: plain PyTorch
            n, c, h, w = features.shape
            _, s = _reference.style_scales(ctx.normalization, c, h * w)
            grad_target = (-2.0 * s) * grad[:, None, None] * diff
            if ctx.target_dim == 2:
                grad_target = grad_target.sum(0)
            grad_target = grad_target.to(ctx.target_dtype)
        return grad_features, grad_target, None

    torch.library.register_autograd(lib + "style_loss", backward, setup_context=setup_context)


if has_compiled_ops():
    _register()
