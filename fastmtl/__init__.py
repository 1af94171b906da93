"""fastmtl: fast C++/CUDA kernels and pipelines for detection, Siamese, style-transfer and
multi-task learning in PyTorch, with a pure-PyTorch fallback for every op."""

__version__ = "0.1.0"

from fastmtl import losses, ops
from fastmtl._ext import debug_checks, empty_grad_cache, has_compiled_ops, has_cuda_ops, set_debug_checks

__all__ = [
    "__version__",
    "debug_checks",
    "empty_grad_cache",
    "has_compiled_ops",
    "has_cuda_ops",
    "losses",
    "ops",
    "set_debug_checks",
]
