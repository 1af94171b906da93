"""GradNorm: Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

Learned weights w_t (summing to T) make each task's weighted gradient norm ``G_t = w_t |g_t|``
track ``mean(G) * r_t^alpha``, where ``r_t`` is the task's relative inverse training rate
``(L_t / L_t(0)) / mean_n(L_n / L_n(0))``: a task that trains slower gets a larger gradient.
The weights step on ``L_grad = sum_t |G_t - target_t|`` with the target held constant, whose
gradient is ``sign(G_t - target_t) |g_t|``, by Adam (as the paper steps them with the network's
optimizer: the step then does not shrink with the gradient norms' scale, which at a shared
representation can be 1e-4), then are renormalized to sum to T. Here ``g_t`` is
the task's gradient at the shared representation (:func:`fastmtl.mtl.representation_backward`)
or, in the paper's form, at the last shared layer's weights: pass whichever norms you take.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastmtl.mtl.weighting.adam import adam_update
from fastmtl.mtl.weighting.base import Weighting


class GradNorm(Weighting):
    """``GradNorm(tasks, alpha=1.5, lr=0.025)``: ``forward(losses)`` weights them with the
    current w (detached; the first call records L(0)); ``step(grad_norms, losses)`` updates w."""

    def __init__(self, tasks, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks)
        if not alpha >= 0 or not lr > 0:
            raise ValueError(f"need alpha >= 0 and lr > 0, got {alpha}, {lr}")
        self.alpha, self.lr = alpha, lr
        self.w = nn.Parameter(torch.ones(len(self.tasks)), requires_grad=False)  # stepped by step()
        self.register_buffer("exp_avg", torch.zeros(len(self.tasks)))  # Adam's moments of w's gradient
        self.register_buffer("exp_avg_sq", torch.zeros(len(self.tasks)))
        self.register_buffer("steps", torch.zeros(()))
        self.initial: Tensor | None = None

    def forward(self, losses: dict) -> Tensor:
        stacked = self.stack(losses)
        if self.initial is None:
            self.initial = stacked.detach().clone()
        return self.combine(stacked, self.w.detach().clone().to(stacked))  # step() changes w in place

    @torch.no_grad()
    def step(self, grad_norms: Tensor, losses: dict) -> Tensor:
        """One update of w from the unweighted per-task gradient norms ``[T]``; returns L_grad."""
        stacked = self.stack(losses).detach()
        if self.initial is None:
            self.initial = stacked.clone()
        n = grad_norms.detach().to(self.w)
        if n.shape != self.w.shape:
            raise ValueError(f"grad_norms must have shape [{len(self.tasks)}], got {list(grad_norms.shape)}")
        ratio = stacked.to(self.w) / self.initial.to(self.w).clamp(min=1e-12)
        rate = ratio / ratio.mean()
        g = self.w * n
        target = g.mean() * rate**self.alpha
        l_grad = (g - target).abs().sum()
        w, self.exp_avg, self.exp_avg_sq, self.steps = adam_update(
            self.w, torch.sign(g - target) * n, self.exp_avg, self.exp_avg_sq, self.steps, self.lr
        )
        self.w.copy_(w)
        self.w.clamp_(min=1e-6)
        self.w.mul_(len(self.tasks) / self.w.sum())
        return l_grad

    def get_extra_state(self) -> dict:
        # L(0) as a list of zero or one tensor (no None): state_dict loads with weights_only=True
        return {"initial": [] if self.initial is None else [self.initial]}

    def set_extra_state(self, state: dict) -> None:
        self.initial = state["initial"][0] if state["initial"] else None
