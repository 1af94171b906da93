"""FAMO: Liu, Liu, Jin, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

Task logits xi give ``z = softmax(xi)``. With ``D_t = L_t - b_t`` (b_t a lower bound of task t's
loss, default 0) the step direction is

    d = sum_t c z_t / D_t grad L_t,   c = (sum_t z_t / D_t)^-1,

the gradient of ``c sum_t z_t log D_t`` with c and z held constant, which ``forward`` returns;
the effective weights ``w_t = c z_t / D_t`` sum to 1. After the optimizer step, ``update`` takes
the losses re-evaluated on the same batch, the log-loss decreases
``delta_t = log D_t(before) - log D_t(after)``, and steps xi with Adam (lr beta) on

    grad_xi = J^T delta + gamma xi,   J = diag(z) - z z^T (softmax's Jacobian, symmetric),

so ``grad_xi = z * (delta - z . delta) + gamma xi``: weight moves away from the tasks whose loss
fell more than the z-weighted average, toward those that fell less; gamma (weight decay) pulls xi
toward uniform weights. The paper's defaults: beta = 0.025, gamma = 1e-3.

D_t is floored at 1e-8 (a loss at or below its bound would make log D_t infinite); the floor
passes the gradient straight through, so such a task still gets its own (large) weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastmtl.mtl.weighting.adam import adam_update
from fastmtl.mtl.weighting.base import Weighting

_EPS = 1e-8  # the floor of D_t = L_t - b_t


class FAMO(Weighting):
    """``FAMO(tasks, min_losses=None, lr=0.025, weight_decay=1e-3)``: ``loss = famo(losses)``,
    backward, optimizer step, then ``famo.update(new_losses)`` with the losses re-evaluated on the
    same batch. ``min_losses``: ``{task: b_t}`` (tasks left out get 0). The logits and their Adam
    state are buffers: keep the module on the losses' device (``famo.to(device)``) for no host
    sync; they round-trip through ``state_dict`` (tensors only: ``weights_only=True`` loads)."""

    def __init__(self, tasks, min_losses: dict | None = None, lr: float = 0.025, weight_decay: float = 1e-3):
        super().__init__(tasks)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        t = len(self.tasks)
        bounds = self._bounds({} if min_losses is None else min_losses)
        self.register_buffer("min_losses", torch.tensor(bounds))
        self.register_buffer("logits", torch.zeros(t))
        self.register_buffer("exp_avg", torch.zeros(t))  # Adam's moments of the logits' gradient
        self.register_buffer("exp_avg_sq", torch.zeros(t))
        self.register_buffer("steps", torch.zeros(()))  # Adam's step count, a tensor: no host sync
        self.register_buffer("prev_log_gap", torch.zeros(t))  # log D_t seen by the last forward
        self._pending = False  # a forward awaits its update

    def _bounds(self, min_losses: dict) -> list:
        if not isinstance(min_losses, dict):
            raise ValueError(f"min_losses must be a dict {{task: lower bound}}, got {min_losses!r}")
        bad = {
            k: v
            for k, v in min_losses.items()
            if k not in self.tasks or not (isinstance(v, (int, float)) and math.isfinite(v))
        }
        if bad:
            raise ValueError(f"min_losses must map tasks of {self.tasks} to finite numbers, got {bad}")
        return [float(min_losses.get(t, 0.0)) for t in self.tasks]

    @property
    def z(self) -> Tensor:
        """The task distribution softmax(xi) (detached)."""
        return torch.softmax(self.logits, 0)

    def _gap(self, stacked: Tensor) -> Tensor:
        """``D_t = max(L_t - b_t, eps)``, the floor's gradient passed straight through."""
        gap = stacked - self.min_losses.to(stacked)
        return gap + (gap.detach().clamp(min=_EPS) - gap.detach())

    def forward(self, losses: dict) -> Tensor:
        stacked = self.stack(losses)
        gap = self._gap(stacked.to(torch.promote_types(stacked.dtype, self.logits.dtype)))
        z = torch.softmax(self.logits.to(gap), 0)
        ratio = z / gap.detach()  # z_t / D_t
        c = 1 / ratio.sum()
        self.weights = (c * ratio).to(stacked.dtype)
        log_gap = gap.log()
        self.prev_log_gap = log_gap.detach().to(self.prev_log_gap)
        self._pending = True
        return c * (z * log_gap).sum()

    @torch.no_grad()
    def update(self, new_losses: dict) -> None:
        """Steps the logits from the losses after the optimizer step (same batch as ``forward``)."""
        if not self._pending:
            raise RuntimeError("FAMO.update: call forward(losses) before each update")
        delta = self.prev_log_gap - self._gap(self.stack(new_losses).detach().to(self.logits)).log()
        z = self.z
        self._adam_step(z * (delta - (z * delta).sum()) + self.weight_decay * self.logits)
        self._pending = False

    def _adam_step(self, grad: Tensor) -> None:
        self.logits, self.exp_avg, self.exp_avg_sq, self.steps = adam_update(
            self.logits, grad, self.exp_avg, self.exp_avg_sq, self.steps, self.lr
        )

    def get_extra_state(self) -> dict:
        return {"pending": self._pending}

    def set_extra_state(self, state: dict) -> None:
        self._pending = bool(state["pending"])
