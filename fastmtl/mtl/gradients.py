"""Gradient-level task balancing on a ``[T, N]`` matrix of per-task gradients (one row per task,
flattened over shared parameters or, cheaper, over the shared representation), on the device
with no host sync.

Both methods need only the ``[T, T]`` Gram matrix ``G = grads @ grads.T``:
:func:`combination_weights` turns it into coefficients ``c`` with the combined gradient ``c @ grads``.
In data-parallel training only G then needs an all-reduce, and no projected gradient is ever
materialized; :func:`pcgrad` and :func:`mgda_weights` are this on one device.

- PCGrad: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020. Each task's
  gradient is projected onto the normal plane of every other task's gradient it conflicts with
  (negative dot product), the others taken in a random order; the projected gradients are summed.
  A projected gradient stays a linear combination ``C[i] @ grads`` of the originals, so every dot
  product it needs is ``C[i] @ G[:, j]`` and the update's coefficients are the column sums of C.
- MGDA: Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
  The weights alpha on the simplex minimizing ``|sum_t alpha_t g_t|^2 = alpha^T G alpha``: closed
  form for two tasks; exact for up to 8 tasks (the minimizer over every face of the simplex at
  once, one batched solve of each face's KKT system, the feasible one with the smallest norm
  kept); Frank-Wolfe on G (a fixed number of steps with the exact line search: approximate)
  beyond.

Both are invariant to scaling G (``s^2 G``, as a GradScaler's scale s gives): PCGrad's
coefficients are ratios of Gram entries, and MGDA solves with G divided by its largest diagonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["METHODS", "combination_weights", "mgda_weights", "pcgrad"]

METHODS = ("sum", "pcgrad", "mgda")
_EXACT_MAX_TASKS = 8
_FW_STEPS = 200


def _check(grads: Tensor) -> None:
    if grads.dim() != 2 or grads.shape[0] < 1 or not grads.is_floating_point():
        raise ValueError(
            f"grads must be a floating [T, N] matrix with T >= 1, got {grads.dtype} {list(grads.shape)}"
        )


def _check_gram(gram: Tensor) -> None:
    if gram.dim() != 2 or gram.shape[0] < 1 or gram.shape[0] != gram.shape[1] or not gram.is_floating_point():
        raise ValueError(
            f"gram must be a floating square [T, T] matrix with T >= 1, got {gram.dtype} {list(gram.shape)}"
        )


def gram_matrix(grads: Tensor, method: str = "pcgrad") -> Tensor:
    """``grads @ grads.T`` for :func:`combination_weights`: in float64 for MGDA (its KKT solves
    want it), else at least float32 (for "sum", which reads only the shape, zeros)."""
    if method == "sum":  # reads only the shape: skip the products
        return grads.new_zeros(grads.shape[0], grads.shape[0])
    dtype = torch.float64 if method == "mgda" else torch.promote_types(grads.dtype, torch.float32)
    g = grads.to(dtype)
    return g @ g.T


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # num / den where den > 0, else 0; no clamp to a tiny floor, which would break scale invariance
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, 1.0), 0.0)


def _pcgrad_coefficients(gram: Tensor, generator: torch.Generator | None) -> Tensor:
    t = gram.shape[0]
    # task i's order is the i-th randperm, drawn as the paper's loop draws them (on the CPU: no sync)
    orders = torch.stack([torch.randperm(t, generator=generator) for _ in range(t)])
    orders = orders.to(gram.device, non_blocking=True)
    rows = torch.arange(t, device=gram.device)
    coef = torch.eye(t, dtype=gram.dtype, device=gram.device)  # row i: projected g_i = coef[i] @ grads
    norms2 = gram.diagonal()
    for k in range(t):  # rows project independently (onto the original g_j): all rows at once
        j = orders[:, k]
        dot = (coef * gram[j]).sum(1)  # projected g_i . g_j
        step = torch.where((dot < 0) & (j != rows), _safe_div(dot, norms2[j]), torch.zeros_like(dot))
        coef = coef - step[:, None] * (j[:, None] == rows).to(coef.dtype)
    return coef.sum(0)


def _two_task_weights(gram: Tensor) -> Tensor:
    # min over a in [0, 1] of |a g1 + (1 - a) g2|^2: a = (g2.g2 - g1.g2) / |g1 - g2|^2, clipped
    denom = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
    a = torch.where(denom > 0, _safe_div(gram[1, 1] - gram[0, 1], denom), gram.new_tensor(0.5)).clamp(0, 1)
    return torch.stack((a, 1 - a))


def _exact_weights(gram: Tensor) -> Tensor:
    """Min-norm weights by faces: for each support S, ``[[G_S, 1], [1^T, 0]] [alpha; -lambda] =
    [0; 1]`` (alpha 0 off S), solved for all 2^T - 1 supports in one batch. ``solve_ex`` without
    its error check (pinv's SVD syncs to check convergence): a singular face gives non-finite or
    infeasible values and is dropped, and a nonsingular face (affinely independent gradients)
    always holds the minimum."""
    t = gram.shape[0]
    ids = torch.arange(1, 2**t, device=gram.device)
    on = ((ids[:, None] >> torch.arange(t, device=gram.device)) & 1).bool()  # [M, T]
    m = on.to(gram.dtype)
    kkt = gram.new_zeros(len(ids), t + 1, t + 1)
    kkt[:, :t, :t] = gram * m[:, :, None] * m[:, None, :] + torch.diag_embed(1 - m)
    kkt[:, :t, t], kkt[:, t, :t] = m, m
    rhs = gram.new_zeros(len(ids), t + 1, 1)
    rhs[:, t] = 1
    alpha = torch.linalg.solve_ex(kkt, rhs, check_errors=False)[0][:, :t, 0] * m
    feasible = (alpha >= -1e-9).all(1) & ((alpha.sum(1) - 1).abs() < 1e-6)
    norm2 = torch.einsum("mi,ij,mj->m", alpha, gram, alpha)
    best = torch.where(feasible, norm2, torch.full_like(norm2, float("inf"))).argmin()
    w = alpha.index_select(0, best.view(1))[0].clamp(min=0)  # a tensor index: no sync
    return w / w.sum()


def _frank_wolfe_weights(gram: Tensor, steps: int) -> Tensor:
    t = gram.shape[0]
    ids = torch.arange(t, device=gram.device)
    alpha = torch.full((t,), 1.0 / t, dtype=gram.dtype, device=gram.device)
    for _ in range(steps):  # move toward the vertex of the smallest gradient
        vertex = (ids == (gram @ alpha).argmin()).to(gram.dtype)
        # exact line search on [alpha, vertex]: the two-point problem between the two combinations
        a_gram = alpha @ gram @ alpha
        v_gram = vertex @ gram @ vertex
        cross = alpha @ gram @ vertex
        pair = torch.stack((torch.stack((v_gram, cross)), torch.stack((cross, a_gram))))
        gamma = _two_task_weights(pair)[0]
        alpha = (1 - gamma) * alpha + gamma * vertex
    return alpha


def _mgda_from_gram(gram: Tensor, steps: int) -> Tensor:
    """MGDA's weights (float64) from a float64 Gram matrix."""
    t = gram.shape[0]
    if t == 1:
        return gram.new_ones(1)
    scale = gram.diagonal().max()
    # the minimizer is unchanged by scaling G; normalizing keeps the solves' tolerances meaningful
    gram = gram / torch.where(scale > 0, scale, torch.ones_like(scale))
    if t == 2:
        return _two_task_weights(gram)
    if t <= _EXACT_MAX_TASKS:
        return _exact_weights(gram)
    return _frank_wolfe_weights(gram, steps)


def _combination(gram: Tensor, method: str, generator: torch.Generator | None, steps: int) -> Tensor:
    if method == "sum":
        return gram.new_ones(gram.shape[0])
    g = gram.double()
    g = (g + g.T) / 2  # an all-reduced G may be asymmetric by rounding
    c = _pcgrad_coefficients(g, generator) if method == "pcgrad" else _mgda_from_gram(g, steps)
    return c.to(gram.dtype)


def combination_weights(gram: Tensor, method: str, generator: torch.Generator | None = None) -> Tensor:
    """Coefficients ``c`` ``[T]`` (gram's dtype and device) such that ``c @ grads`` is the combined
    gradient of ``method`` ("sum", "pcgrad" or "mgda"), from ``gram = grads @ grads.T`` alone.

    "sum" gives ones; "mgda" the min-norm simplex weights (Frank-Wolfe's 200 steps beyond 8 tasks);
    "pcgrad" the column sums of the projected gradients' coefficients, the random orders drawn
    from ``generator`` exactly as :func:`pcgrad` draws them. The arithmetic is in float64 (it is
    ``[T, T]``); a non-finite G (a GradScaler overflow step) gives values, not an error."""
    _check_gram(gram)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _combination(gram, method, generator, _FW_STEPS)


def pcgrad(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The PCGrad update ``[N]`` from per-task gradients ``[T, N]``."""
    _check(grads)
    return _combination(gram_matrix(grads, "pcgrad"), "pcgrad", generator, _FW_STEPS).to(grads.dtype) @ grads


def mgda_weights(grads: Tensor, steps: int = _FW_STEPS) -> Tensor:
    """The min-norm weights ``[T]`` (on the simplex) of per-task gradients ``[T, N]``;
    ``steps``: Frank-Wolfe's, beyond 8 tasks."""
    _check(grads)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return _combination(gram_matrix(grads, "mgda"), "mgda", None, steps).to(grads.dtype)
