"""The interface every task-balancing strategy implements."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Weighting(nn.Module):
    """Combines named per-task losses into the one loss to backpropagate.

    ``forward(losses)`` takes ``{task: scalar loss}`` for exactly the tasks given at construction
    and returns the total; ``weights`` then holds the weight each task's loss got (a detached
    float tensor ``[T]`` in task order, on the losses' device: logging it does not sync).
    Strategies with state update it through ``epoch_end()`` (loss history) or ``update_kpis()``
    (task metrics); learned ones (uncertainty) are modules whose parameters go to the optimizer.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        tasks = list(tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks must be distinct names, at least one, got {tasks!r}")
        self.tasks = tasks
        self.weights: Tensor | None = None

    def stack(self, losses: dict) -> Tensor:
        """The losses as a ``[T]`` tensor in task order, after checking the names and shapes."""
        if set(losses) != set(self.tasks):
            raise ValueError(f"losses must have the tasks {self.tasks}, got {sorted(losses)}")
        values = [losses[t] for t in self.tasks]
        for t, v in zip(self.tasks, values):
            if not isinstance(v, Tensor) or v.dim() != 0 or not v.is_floating_point():
                raise ValueError(f"losses[{t!r}] must be a floating scalar tensor, got {v!r}")
        return torch.stack(values)

    def combine(self, stacked: Tensor, weights: Tensor) -> Tensor:
        """``sum_t weights[t] * losses[t]``, remembering the (detached) weights."""
        self.weights = weights.detach().to(stacked.dtype)
        return (weights.to(stacked.dtype) * stacked).sum()

    def forward(self, losses: dict) -> Tensor:  # pragma: no cover - each strategy defines it
        raise NotImplementedError
