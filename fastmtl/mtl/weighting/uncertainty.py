"""Uncertainty weighting: Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018.

Each task has a learned homoscedastic noise sigma_t; with ``s_t = log sigma_t^2`` (the paper's
stable parametrization) a regression task contributes ``L_t / (2 sigma_t^2) + log sigma_t =
0.5 exp(-s_t) L_t + 0.5 s_t`` and a classification task ``L_t / sigma_t^2 + log sigma_t =
exp(-s_t) L_t + 0.5 s_t``. A noisier task learns a larger sigma and so a smaller weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastmtl.mtl.weighting.base import Weighting

KINDS = ("regression", "classification")


class UncertaintyWeighting(Weighting):
    """``UncertaintyWeighting({"seg": "classification", "depth": "regression"})``; its
    ``log_vars`` (s_t, initially ``init``) must be given to the optimizer."""

    def __init__(self, kinds: dict, init: float = 0.0) -> None:
        super().__init__(list(kinds))
        bad = {t: k for t, k in kinds.items() if k not in KINDS}
        if bad:
            raise ValueError(f"kinds must be 'regression' or 'classification', got {bad}")
        scale = [0.5 if kinds[t] == "regression" else 1.0 for t in self.tasks]
        self.register_buffer("scale", torch.tensor(scale), persistent=False)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init)))

    @property
    def sigmas(self) -> Tensor:
        """The learned sigma_t (detached)."""
        return (0.5 * self.log_vars.detach()).exp()

    def forward(self, losses: dict) -> Tensor:
        stacked = self.stack(losses)
        s = self.log_vars.to(stacked.dtype)
        weights = self.scale.to(stacked) * torch.exp(-s)
        return self.combine(stacked, weights) + 0.5 * s.sum()
