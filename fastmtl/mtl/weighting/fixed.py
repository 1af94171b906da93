"""Fixed weights: ``L = sum_t w_t L_t`` (the baseline every learned weighting is compared with)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastmtl.mtl.weighting.base import Weighting


class FixedWeighting(Weighting):
    """``FixedWeighting({"seg": 1.0, "depth": 0.5})``: constant weights (finite, >= 0)."""

    def __init__(self, weights: dict) -> None:
        super().__init__(list(weights))
        bad = {
            t: w
            for t, w in weights.items()
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)
        }
        if bad:
            raise ValueError(f"weights must be finite numbers >= 0, got {bad}")
        self.register_buffer(
            "fixed",
            torch.tensor([float(weights[t]) for t in self.tasks], dtype=torch.float64),
            persistent=False,
        )

    def forward(self, losses: dict) -> Tensor:
        stacked = self.stack(losses)
        return self.combine(stacked, self.fixed.to(stacked.device))
