"""What the multi-task trainer exchanges between data-parallel ranks, beyond DistributedDataParallel's
gradient all-reduce. All of it is a no-op in a single process.

- The per-task loss values (``[T]``, one all-reduce per step): every rank's weighting then sees the
  global mean losses, so loss-based strategies (DWA's epoch means, GradNorm's training rates, FAMO's
  log-loss changes, uncertainty weighting's ``log_vars`` gradients) take identical steps on every
  rank, while each loss keeps its local gradient for DDP to average.
- The per-task Gram matrix (``[T, T]``) of the gradients at the shared representation: each rank's
  representation gradients are a disjoint block of the global ones, so the global Gram is the sum
  of the local ones (scaled by ``1 / world^2`` for the mean loss). PCGrad's and MGDA's coefficients
  depend on the Gram only, and come out the same on every rank.
- Parameter-space per-task gradients (``[T, P]``): the global ones are the mean of the local ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from fastmtl.mtl.gradients import gram_matrix


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over ranks (a new tensor; ``x`` itself in a single process)."""
    if not active():
        return x
    out = x.clone()
    dist.all_reduce(out)
    return out / world_size()


def global_losses(losses: dict) -> dict:
    """Each loss with the value of its mean over ranks and the gradient of the local one."""
    if not active():
        return losses
    names = list(losses)
    means = mean(torch.stack([losses[t].detach() for t in names]))
    return {t: losses[t] + (means[i] - losses[t].detach()) for i, t in enumerate(names)}


def representation_gram(grads: Tensor) -> Tensor:
    """The Gram matrix ``[T, T]`` (float64) of the global per-task representation gradients, from
    this rank's block ``grads`` ``[T, N]`` of the local mean loss."""
    gram = gram_matrix(grads).double()
    if active():
        dist.all_reduce(gram)
        gram = gram / world_size() ** 2
    return gram


def shard(indices: Tensor) -> Tensor:
    """This rank's contiguous share of a global batch's indices (the batch must divide evenly)."""
    w = world_size()
    if len(indices) % w:
        raise ValueError(f"batch_size ({len(indices)}) must be a multiple of the world size ({w})")
    size = len(indices) // w
    return indices[rank() * size : (rank() + 1) * size]
