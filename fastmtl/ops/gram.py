"""Gram matrices of feature maps, the style representation of neural style transfer.

For features ``F`` of shape ``[N, C, H, W]`` (sample ``n`` read as a ``C x HW`` matrix), the Gram
matrix is ``G[n, k, k'] = sum_hw F[n, k, hw] * F[n, k', hw]``: the correlations between channels,
summed over positions. It is symmetric, and the compiled kernels compute each pair ``k <= k'``
once (BLAS products on the block rows of the upper triangle, mirrored).

Normalization: ``normalize=True`` divides by ``C * H * W``, per sample. The PyTorch
neural-style tutorial folds the batch into the rows (``view(N * C, H * W)``) and divides by
``N * C * H * W``; for one image (its use) that is exactly this. For ``N > 1`` the tutorial's
matrix is ``NC x NC`` and mixes samples; its diagonal blocks are this op's matrices divided by
``N``.

Dtypes: float32, float64, float16 and bfloat16; half types accumulate in float32 and the result
is rounded to the input dtype. NaN and infinity are not checked for (that would cost a pass over
the activations): they propagate into the result, as with ``torch.bmm``.
"""

import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _reference
from fastmtl.ops._checks import InputError

__all__ = ["gram_matrix"]

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_features(name: str, features) -> Tensor:
    """A ``[N, C, H, W]`` floating-point tensor; the message names the argument."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 4:
        raise InputError(f"{name} must have shape [N, C, H, W], got {list(features.shape)}")
    if features.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name} must be float32, float64, float16 or bfloat16, got {features.dtype}")
    return features


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be a bool, got {value!r}")
    return value


@torch.fx.wrap
def check_op_features(features) -> None:
    """The C++ check_gram_features (csrc/ops/gram/gram.cpp), for the fake kernels."""
    if features.dim() != 4:
        raise InputError(f"features must have shape [N, C, H, W], got {list(features.shape)}")
    if features.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise InputError(f"features must be float32, float64, float16 or bfloat16, got {features.dtype}")


def gram_matrix(features: Tensor, normalize: bool = True) -> Tensor:
    """Per-sample Gram matrix ``F F^T`` of ``[N, C, H, W]`` features.

    Args:
        features: ``Tensor[N, C, H, W]``, float32/float64/float16/bfloat16, any memory layout
            (contiguous and channels_last are read in place; other strides are copied once).
        normalize: divide by ``C * H * W`` (the tutorial's normalization for one image).

    Returns:
        ``Tensor[N, C, C]`` in the dtype of ``features``, symmetric, differentiable
        (``dL/dF = s (dG + dG^T) F`` with ``s`` the normalization). Empty features give an
        empty or all-zero result. On CUDA the products are cuBLAS calls: float32 uses TF32
        when ``torch.backends.cuda.matmul.allow_tf32`` is set (as ``torch.bmm``), half types use
        tensor cores with float32 accumulation.
    """
    if not torch.jit.is_scripting():
        features = check_features("features", features)
        normalize = _check_flag("normalize", normalize)
        if not use_compiled(features, "gram_matrix"):
            return _reference.gram_matrix(features, normalize)
    return torch.ops.fastmtl.gram_matrix(features, normalize)


def grad_like(features: Tensor) -> Tensor:
    """An empty tensor with the layout the backward kernels give the features' gradient:
    channels_last when the features are (and are not also contiguous), else contiguous."""
    channels_last = not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(features.shape, dtype=features.dtype, device=features.device, memory_format=fmt)


def check_no_double_backward(op: str, *tensors: Tensor) -> None:
    """The backward kernels have no gradient of their own: say so instead of a confusing error
    (or a silently wrong result) when a graph of the backward is asked for (create_graph=True)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise NotImplementedError(
            f"fastmtl.ops.{op}: double backward (create_graph=True) is not supported; use the pure-PyTorch "
            "reference in fastmtl.ops._reference for higher derivatives"
        )


def _register() -> None:
    """Fake (meta) kernels for torch.compile and the autograd formula of the compiled op."""
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "gram_matrix")
    def _(features, normalize):
        check_op_features(features)
        n, c = features.shape[:2]
        return features.new_empty((n, c, c))

    @torch.library.register_fake(lib + "_gram_matrix_backward")
    def _(grad, features, normalize):
        return grad_like(features)

    def setup_context(ctx, inputs, output):
        features, ctx.normalize = inputs
        ctx.save_for_backward(features)

    def backward(ctx, grad):
        (features,) = ctx.saved_tensors
        check_no_double_backward("gram_matrix", grad, features)
        return torch.ops.fastmtl._gram_matrix_backward(grad, features, ctx.normalize), None

    torch.library.register_autograd(lib + "gram_matrix", backward, setup_context=setup_context)


if has_compiled_ops():
    _register()
