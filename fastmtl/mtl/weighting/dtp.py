"""Dynamic Task Prioritization: Guo, Haque, Huang, Yeung and Fei-Fei, "Dynamic Task
Prioritization for Multitask Learning", ECCV 2018.

Each task has a key performance indicator kappa_t in [0, 1] (accuracy, mIoU, ...; higher is
better), smoothed as ``kbar_t = alpha kappa_t + (1 - alpha) kbar_t``; its weight is the focal
form ``w_t = -(1 - kbar_t)^gamma log(kbar_t)``: the tasks doing worst get the most weight. Before
any KPI is reported every weight is 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmtl.mtl.weighting.base import Weighting

_EPS = 1e-6  # kappa is clamped into [eps, 1 - eps]: log(0) and a zero weight at 1 are avoided


class DTP(Weighting):
    """``DTP(tasks, gamma=2.0, alpha=0.9)``; report KPIs with ``update_kpis({task: kpi})``."""

    def __init__(self, tasks, gamma: float = 2.0, alpha: float = 0.9) -> None:
        super().__init__(tasks)
        if not gamma >= 0 or not 0 < alpha <= 1:
            raise ValueError(f"need gamma >= 0 and 0 < alpha <= 1, got {gamma}, {alpha}")
        self.gamma, self.alpha = gamma, alpha
        self.kpis: Tensor | None = None  # the smoothed KPIs [T]

    def update_kpis(self, kpis: dict) -> None:
        if set(kpis) != set(self.tasks):
            raise ValueError(f"kpis must have the tasks {self.tasks}, got {sorted(kpis)}")
        k = torch.stack([torch.as_tensor(kpis[t], dtype=torch.float64) for t in self.tasks])
        self.kpis = k if self.kpis is None else self.alpha * k.to(self.kpis) + (1 - self.alpha) * self.kpis

    def current_weights(self, like: Tensor) -> Tensor:
        if self.kpis is None:
            return torch.ones(len(self.tasks), dtype=like.dtype, device=like.device)
        k = self.kpis.clamp(_EPS, 1 - _EPS)
        return (-((1 - k) ** self.gamma) * torch.log(k)).to(like)

    def forward(self, losses: dict) -> Tensor:
        stacked = self.stack(losses)
        return self.combine(stacked, self.current_weights(stacked))

    def get_extra_state(self) -> dict:
        # the smoothed KPIs as a list of zero or one tensor (no None): loads with weights_only=True
        return {"kpis": [] if self.kpis is None else [self.kpis]}

    def set_extra_state(self, state: dict) -> None:
        self.kpis = state["kpis"][0] if state["kpis"] else None
