"""Reduction of per-element losses, shared by every loss."""

import torch
from torch import Tensor

from fastmtl.ops._checks import check_reduction

__all__ = ["reduce_loss"]


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """``"none"``, ``"sum"`` or ``"mean"``; the mean of no elements is 0 (not NaN), as in torchvision."""
    if not torch.jit.is_scripting():
        check_reduction(reduction)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction != "none":  # the scripted path: no Python checks ran
        raise ValueError("Invalid value for reduction: expected 'none', 'mean' or 'sum'")
    return loss
