"""Loads the compiled extension fastmtl._C and says which compiled ops are there.

Importing ``fastmtl._C`` runs its static registrations, which put the kernels under
``torch.ops.fastmtl``. Without it every op falls back to plain PyTorch (with a one-time
warning), so ``import fastmtl`` always works.
"""

import warnings

import torch

try:
    from fastmtl import _C  # noqa: F401

    _LOAD_ERROR = None
except ImportError as e:  # not built, or built against another torch
    _LOAD_ERROR = e

_warned = False

__all__ = ["has_compiled_ops", "has_cuda_ops", "use_compiled"]


def has_compiled_ops() -> bool:
    """True when the C++ extension loaded and its CPU kernels are registered."""
    return _LOAD_ERROR is None


def has_cuda_ops() -> bool:
    """True when the extension was built with CUDA kernels (whether or not a GPU is present)."""
    return has_compiled_ops() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fastmtl::pairwise_box_iou", "CUDA"
    )


def use_compiled(*tensors: torch.Tensor) -> bool:
    """Whether the compiled kernel can run on these tensors; warns once when the extension is missing."""
    global _warned
    if not has_compiled_ops():
        if not _warned:
            warnings.warn(
                f"fastmtl: compiled ops unavailable ({_LOAD_ERROR}); using the pure-PyTorch fallback",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned = True
        return False
    dev = tensors[0].device.type
    return dev == "cpu" or (dev == "cuda" and has_cuda_ops())
