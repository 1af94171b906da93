"""Multi-task architectures that work with any encoder.

- :class:`HardSharing`: one shared encoder, one head per task (the slides' ``MTLNet``).
- :class:`CrossStitch`: Misra, Shrivastava, Gupta and Hebert, "Cross-stitch Networks for
  Multi-task Learning", CVPR 2016. One copy of the encoder per task, cut into stages; after each
  stage every task's activation becomes a learned linear combination of all the tasks'
  activations at that stage (``x_i <- sum_j alpha_ij x_j``, one alpha matrix per stage,
  initialized to ``self_weight`` on the diagonal and the rest shared evenly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["CrossStitch", "HardSharing"]


def _check_heads(heads: dict) -> None:
    if not heads or not all(isinstance(k, str) for k in heads):
        raise ValueError(f"heads must map task names to modules, at least one, got {list(heads)!r}")


class HardSharing(nn.Module):
    """``HardSharing(encoder, {"seg": head, "depth": head})(x)`` -> ``{task: head(encoder(x))}``.

    ``shared(x)`` and ``heads_forward(z)`` split the two halves, for
    :func:`fastmtl.mtl.representation_backward`; ``forward(x, representation=True)`` returns
    ``(outputs, z, zd)`` with the heads run on ``zd``, a detached leaf copy of the representation
    ``z`` (what :class:`fastmtl.mtl.MTLTrainer` asks for when it balances gradients: through
    ``forward``, so that DistributedDataParallel sees the call).
    """

    def __init__(self, encoder: nn.Module, heads: dict) -> None:
        super().__init__()
        _check_heads(heads)
        self.encoder, self.heads = encoder, nn.ModuleDict(heads)

    def shared(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def heads_forward(self, z: Tensor) -> dict:
        return {task: head(z) for task, head in self.heads.items()}

    def shared_parameters(self) -> list:
        """The encoder's trainable parameters (parameter-space gradient balancing's)."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def forward(self, x: Tensor, representation: bool = False):
        z = self.shared(x)
        if not representation:
            return self.heads_forward(z)
        zd = z.detach().requires_grad_()
        return self.heads_forward(zd), z, zd


class CrossStitch(nn.Module):
    """``CrossStitch(make_stages, heads, self_weight=0.9)``: ``make_stages()`` returns a fresh list
    of encoder stages (called once per task, so each task has its own weights); ``heads`` maps
    each task to its head on the last stage's output. ``forward(x)`` -> ``{task: output}``."""

    def __init__(
        self, make_stages: Callable[[], Sequence[nn.Module]], heads: dict, self_weight: float = 0.9
    ) -> None:
        super().__init__()
        _check_heads(heads)
        self.tasks = list(heads)
        t = len(self.tasks)
        if not 0 <= self_weight <= 1:
            raise ValueError(f"self_weight must be in [0, 1], got {self_weight}")
        columns = [nn.ModuleList(make_stages()) for _ in self.tasks]
        depth = len(columns[0])
        if depth < 1 or any(len(c) != depth for c in columns):
            raise ValueError("make_stages must return the same number of stages (at least one) every call")
        self.columns = nn.ModuleList(columns)
        other = (1 - self_weight) / (t - 1) if t > 1 else 0.0
        init = torch.full((t, t), other) + torch.eye(t) * (self_weight - other)
        self.stitches = nn.ParameterList(nn.Parameter(init.clone()) for _ in range(depth))
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: Tensor) -> dict:
        acts = [x] * len(self.tasks)
        for k, alpha in enumerate(self.stitches):
            outs = torch.stack([column[k](a) for column, a in zip(self.columns, acts)])  # [T, N, ...]
            mixed = torch.einsum("ij,j...->i...", alpha.to(outs.dtype), outs)
            acts = list(mixed.unbind(0))
        return {task: self.heads[task](a) for task, a in zip(self.tasks, acts)}
