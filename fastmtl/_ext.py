"""Loads the compiled extension fastmtl._C and says which compiled ops are there.

Importing ``fastmtl._C`` runs its static registrations, which put the kernels under
``torch.ops.fastmtl``. Without it every op falls back to plain PyTorch (with a one-time
warning), so ``import fastmtl`` always works.
"""

import functools
import os
import warnings

import torch

try:
    from fastmtl import _C  # noqa: F401

    _LOAD_ERROR = None
except ImportError as e:  # not built, or built against another torch
    _LOAD_ERROR = e

_warned = set()
_debug_checks = os.environ.get("FASTMTL_DEBUG_CHECKS", "0").lower() in ("1", "true", "yes", "on")

__all__ = ["debug_checks", "has_compiled_ops", "has_cuda_ops", "set_debug_checks", "use_compiled"]


def has_compiled_ops() -> bool:
    """True when the C++ extension loaded and its CPU kernels are registered."""
    return _LOAD_ERROR is None


@functools.cache
def compiled_op_names() -> tuple:
    """Every op the extension registered under ``torch.ops.fastmtl`` (``"fastmtl::name"``): those
    with a CPU kernel, so not the composites Python defines (``_yolo_v1_loss_vjp``)."""
    if not has_compiled_ops():
        return ()
    return tuple(
        sorted(
            n
            for n in torch._C._dispatch_get_all_op_names()
            if n.startswith("fastmtl::") and torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")
        )
    )


def empty_grad_cache() -> int:
    """Frees the CPU gradient buffers that the fused anchor losses keep for reuse between steps
    (at most ``FASTMTL_GRAD_CACHE_MB``, default 512 MiB; 0 turns the cache off) and returns the
    bytes freed. A fresh buffer of 58 MB costs 13-15 ms of page faults on a 2-core machine; a
    training loop asks for the same sizes every step."""
    return int(torch.ops.fastmtl._empty_grad_cache()) if has_compiled_ops() else 0


def has_cuda_ops() -> bool:
    """True when the extension was built with CUDA kernels for every op (whether or not a GPU is
    present), the CPU-only ones by design (:data:`CPU_ONLY_OPS`) aside."""
    return has_compiled_ops() and _every_op_has_cuda()


# Ops with a CPU kernel only, by design: COCO evaluation is a host-side metric (see
# csrc/kernels/coco.h). has_cuda_ops() leaves them out, or no build would count as a CUDA one.
CPU_ONLY_OPS = frozenset({"fastmtl::coco_evaluate"})


@functools.cache
def _every_op_has_cuda() -> bool:
    names = [n for n in compiled_op_names() if n not in CPU_ONLY_OPS]
    return bool(names) and all(torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA") for n in names)


def _warn_once(key: tuple, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def use_compiled(tensor: torch.Tensor, op: str = "") -> bool:
    """Whether the compiled kernel of ``op`` runs on ``tensor``'s device.

    Warns once when the extension is missing, and once per op and device when a tensor is on a
    device the build has no kernel for (a CUDA tensor with a CPU-only build): the pure-PyTorch
    fallback then runs, which is correct but slow.
    """
    if not has_compiled_ops():
        _warn_once(
            ("load",), f"fastmtl: compiled ops unavailable ({_LOAD_ERROR}); using the pure-PyTorch fallback"
        )
        return False
    dev = tensor.device.type
    if dev in ("cpu", "meta"):
        return True
    if dev == "cuda" and has_cuda_ops():
        return True
    _warn_once(
        (op, dev),
        f"fastmtl.ops.{op}: this build of fastmtl has no {dev} kernels; running the (slow) pure-PyTorch "
        f"fallback on {dev}. Rebuild with CUDA (see README) for the compiled kernels.",
    )
    return False


def debug_checks() -> bool:
    """Whether value checks (NaN coordinates, batch indices...) also run on CUDA tensors."""
    return _debug_checks


def set_debug_checks(enabled: bool) -> None:
    """Turns on the value checks that read CUDA tensors back to the host (a device sync per
    check). Off by default: on CUDA only shapes, dtypes and devices are checked, and values are
    checked inside the kernels where the op already copies something to the host. The
    environment variable ``FASTMTL_DEBUG_CHECKS=1`` turns them on at import."""
    global _debug_checks
    _debug_checks = bool(enabled)
