"""One backward step for gradient-level balancing in representation space: the per-task gradients
are taken with respect to the shared representation ``z`` (through the task heads only), combined
there (PCGrad, MGDA, GradNorm), and the encoder is backpropagated once with the combination.

Usage::

    z = encoder(x)
    zd = z.detach().requires_grad_()            # the heads see a leaf copy of z
    losses = {t: loss_fn[t](heads[t](zd), y[t]) for t in tasks}
    info = representation_backward(losses, z, zd, "pcgrad")

The heads' parameters get each task's own (unweighted) gradient, as task-specific parameters do in
PCGrad and MGDA; the encoder's get the combined one. Cost: the heads' backward T + 1 times, the
encoder's once (parameter-space PCGrad and MGDA backpropagate the encoder T times).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmtl.mtl.gradients import METHODS, combination_weights, gram_matrix


def representation_grads(values: list, zd: Tensor) -> Tensor:
    """Each loss's gradient at the leaf ``zd``, through its head only, flattened: ``[T, N]``."""
    return torch.stack([torch.autograd.grad(v, zd, retain_graph=True)[0].flatten() for v in values])


def representation_backward(
    losses: dict, z: Tensor, zd: Tensor, method: str = "pcgrad", generator: torch.Generator | None = None
) -> dict:
    """Backpropagates ``losses`` (computed from ``zd``, a detached leaf copy of ``z``) with the
    per-task gradients at ``zd`` combined by ``method``. Returns ``{"grads": [T, N] per-task
    gradients at z, "weights": [T] coefficients with the combination ``weights @ grads`` (ones,
    MGDA's, or PCGrad's from :func:`combination_weights`)}``, on the device."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not zd.requires_grad or zd.grad_fn is not None or zd.shape != z.shape:
        raise ValueError("zd must be z.detach().requires_grad_(): a leaf of z's shape")
    if not losses:
        raise ValueError("losses must name at least one task")
    values = list(losses.values())
    grads = representation_grads(values, zd)
    weights = combination_weights(gram_matrix(grads, method), method, generator).to(grads.dtype)
    combined = weights @ grads
    torch.stack(values).sum().backward()  # the heads' own gradients (zd's, a throwaway leaf, too)
    z.backward(combined.view_as(z))
    return {"grads": grads, "weights": weights}
