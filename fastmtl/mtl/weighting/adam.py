"""torch.optim.Adam's update (no weight decay) written on tensors, for the weightings that step their
own weights (FAMO's logits, GradNorm's w): the bias corrections come from a step-count tensor, so
nothing is read back to the host, and the update is out of place, so an earlier ``state_dict()``
stays a snapshot."""

from __future__ import annotations

from torch import Tensor

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


def adam_update(value: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, steps: Tensor, lr: float):
    """One Adam step: ``(value, exp_avg, exp_avg_sq, steps)`` after it."""
    b1, b2 = BETAS
    steps = steps + 1
    exp_avg = exp_avg.lerp(grad, 1 - b1)
    exp_avg_sq = exp_avg_sq.mul(b2).addcmul(grad, grad, value=1 - b2)
    denom = exp_avg_sq.sqrt() / (1 - b2**steps).sqrt() + EPS
    return value - lr / (1 - b1**steps) * exp_avg / denom, exp_avg, exp_avg_sq, steps
