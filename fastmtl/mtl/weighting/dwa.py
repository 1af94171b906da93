"""Dynamic Weight Averaging: Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019.

For epoch t, ``w_k(t) = K exp(r_k(t-1) / T) / sum_n exp(r_n(t-1) / T)`` with the rate
``r_n(t-1) = L_n(t-1) / L_n(t-2)`` of each task's mean training loss over the two previous
epochs; the first two epochs use ``w_k = 1``. A task whose loss falls slowly gets more weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastmtl.mtl.weighting.base import Weighting


class DWA(Weighting):
    """``DWA(tasks, temperature=2.0)``: call ``epoch_end()`` after each epoch; the losses seen in
    ``forward`` (detached, summed on their device: no sync) give the epoch means."""

    def __init__(self, tasks, temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.history: list = []  # epoch mean losses, [T] tensors, oldest first (the last two kept)
        self._sum: Tensor | None = None
        self._count = 0

    def current_weights(self, like: Tensor) -> Tensor:
        if len(self.history) < 2:
            return torch.ones(len(self.tasks), dtype=like.dtype, device=like.device)
        rate = self.history[-1] / self.history[-2]
        return len(self.tasks) * torch.softmax(rate / self.temperature, 0).to(like)

    def forward(self, losses: dict) -> Tensor:
        stacked = self.stack(losses)
        d = stacked.detach()
        self._sum = d.clone() if self._sum is None else self._sum + d
        self._count += 1
        return self.combine(stacked, self.current_weights(stacked))

    def epoch_end(self) -> None:
        """Closes an epoch: its mean losses become the newest history entry."""
        if self._count == 0:
            raise RuntimeError("DWA.epoch_end: no losses were seen in this epoch")
        self.history = (self.history + [self._sum / self._count])[-2:]
        self._sum, self._count = None, 0

    def get_extra_state(self) -> dict:
        # tensors, lists and numbers only (no None): state_dict loads with weights_only=True
        partial = [] if self._sum is None else [self._sum]
        return {"history": list(self.history), "sum": partial, "count": self._count}

    def set_extra_state(self, state: dict) -> None:
        self.history = list(state["history"])
        self._sum = state["sum"][0] if state["sum"] else None
        self._count = int(state["count"])
