"""Gradient-level task balancing on a ``[T, N]`` matrix of per-task gradients (one row per task,
flattened over shared parameters or, cheaper, over the shared representation), on the device
with no host sync.

- :func:`pcgrad`: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020. Each
  task's gradient is projected onto the normal plane of every other task's gradient it conflicts
  with (negative dot product), the others taken in a random order; the projected gradients are
  summed.
- :func:`mgda_weights`: Sener and Koltun, "Multi-Task Learning as Multi-Objective
  Optimization", NeurIPS 2018. The weights alpha on the simplex minimizing ``|sum_t alpha_t
  g_t|``: closed form for two tasks; exact for up to 8 tasks (the minimizer over every face of
  the simplex at once, one batched solve of each face's KKT system, the feasible one with the
  smallest norm kept); Frank-Wolfe on the Gram matrix (a fixed number of steps with the exact
  line search: approximate) beyond.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mgda_weights", "pcgrad"]


def _check(grads: Tensor) -> None:
    if grads.dim() != 2 or grads.shape[0] < 1 or not grads.is_floating_point():
        raise ValueError(
            f"grads must be a floating [T, N] matrix with T >= 1, got {grads.dtype} {list(grads.shape)}"
        )


def pcgrad(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The PCGrad update ``[N]`` from per-task gradients ``[T, N]``."""
    _check(grads)
    t = grads.shape[0]
    projected = grads.clone()
    norms2 = (grads * grads).sum(1)
    for i in range(t):
        order = torch.randperm(t, generator=generator).tolist()  # on the CPU: no device sync
        for j in order:
            if j == i:
                continue
            dot = projected[i] @ grads[j]
            # subtract only where conflicting; a zero gradient is never projected onto
            coef = torch.where(
                (dot < 0) & (norms2[j] > 0), dot / norms2[j].clamp(min=1e-30), dot.new_zeros(())
            )
            projected[i] = projected[i] - coef * grads[j]
    return projected.sum(0)


def _two_task_weights(gram: Tensor) -> Tensor:
    # min over a in [0, 1] of |a g1 + (1 - a) g2|^2: a = (g2.g2 - g1.g2) / |g1 - g2|^2, clipped
    denom = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
    a = torch.where(denom > 0, (gram[1, 1] - gram[0, 1]) / denom.clamp(min=1e-30), gram.new_tensor(0.5))
    a = a.clamp(0, 1)
    return torch.stack((a, 1 - a))


_EXACT_MAX_TASKS = 8


def _exact_weights(gram: Tensor) -> Tensor:
    """Min-norm weights by faces: for each support S, ``[[G_S, 1], [1^T, 0]] [alpha; -lambda] =
    [0; 1]`` (alpha 0 off S), solved for all 2^T - 1 supports in one batch (pinv: a singular face
    gives its least-norm solution, and a smaller face then holds the minimum)."""
    t = gram.shape[0]
    ids = torch.arange(1, 2**t, device=gram.device)
    on = ((ids[:, None] >> torch.arange(t, device=gram.device)) & 1).bool()  # [M, T]
    m = on.to(gram.dtype)
    kkt = gram.new_zeros(len(ids), t + 1, t + 1)
    kkt[:, :t, :t] = gram * m[:, :, None] * m[:, None, :] + torch.diag_embed(1 - m)
    kkt[:, :t, t], kkt[:, t, :t] = m, m
    rhs = gram.new_zeros(len(ids), t + 1, 1)
    rhs[:, t] = 1
    alpha = (torch.linalg.pinv(kkt) @ rhs)[:, :t, 0] * m
    feasible = (alpha >= -1e-9).all(1) & ((alpha.sum(1) - 1).abs() < 1e-6)
    norm2 = torch.einsum("mi,ij,mj->m", alpha, gram, alpha)
    best = torch.where(feasible, norm2, torch.full_like(norm2, float("inf"))).argmin()
    w = alpha[best].clamp(min=0)
    return w / w.sum()


def mgda_weights(grads: Tensor, steps: int = 200) -> Tensor:
    """The min-norm weights ``[T]`` (on the simplex) of per-task gradients ``[T, N]``;
    ``steps``: Frank-Wolfe's, beyond 8 tasks."""
    _check(grads)
    t = grads.shape[0]
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gram = grads.double() @ grads.double().T
    if t == 1:
        return grads.new_ones(1)
    if t == 2:
        return _two_task_weights(gram).to(grads.dtype)
    if t <= _EXACT_MAX_TASKS:
        return _exact_weights(gram).to(grads.dtype)
    alpha = torch.full((t,), 1.0 / t, dtype=gram.dtype, device=gram.device)
    for _ in range(steps):  # Frank-Wolfe: move toward the vertex of the smallest gradient
        grad = gram @ alpha
        vertex = torch.nn.functional.one_hot(grad.argmin(), t).to(gram.dtype)
        # exact line search on [alpha, vertex]: the two-point problem between the two combinations
        a_gram = alpha @ gram @ alpha
        v_gram = vertex @ gram @ vertex
        cross = alpha @ gram @ vertex
        pair = torch.stack((torch.stack((v_gram, cross)), torch.stack((cross, a_gram))))
        gamma = _two_task_weights(pair)[0]
        alpha = (1 - gamma) * alpha + gamma * vertex
    return alpha.to(grads.dtype)
