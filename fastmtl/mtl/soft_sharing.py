"""Soft parameter sharing: one network per task, tied through their *parameters*.

Every task keeps its own copy of the encoder (built by ``make_stages()``, so all copies have the
same stages and parameter shapes) and its own head. The copies are tied in one of two ways:

- ``tie="combination"`` (the slides' "linear combination in every layer of the task-specific
  networks"; Ruder, "An Overview of Multi-Task Learning in Deep Neural Networks", arXiv 2017;
  Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021):
  task ``i`` runs stage ``k`` with the effective parameters ``theta_i^eff = sum_j A_ij theta_j``,
  a learned ``[T, T]`` matrix ``A`` per stage (``per="stage"``) or per parameter tensor
  (``per="tensor"``), initialized to ``self_weight`` on the diagonal and the rest shared evenly
  (``self_weight=1``: the identity, i.e. independent networks at the start).
- ``tie="l2"`` (Duong, Cohn, Bird and Cook, "Low Resource Dependency Parsing: Cross-lingual
  Parameter Sharing in a Neural Network Parser", ACL 2015): the networks run independently and
  :meth:`SoftSharing.penalty` ``= l2_weight * sum_t ||theta_t - mean_t theta||^2`` (over every
  stage parameter) is added to the loss by the user.

Unlike :class:`fastmtl.mtl.CrossStitch` (Misra et al., CVPR 2016), which mixes the tasks'
*activations* after each stage, this mixes (or pulls together) the *weights*: each task's
forward pass sees only its own input path, with weights that borrow from the other tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastmtl.mtl.architectures import _check_heads

__all__ = ["SoftSharing"]

TIES = ("combination", "l2")
PER = ("stage", "tensor")


def _stage_names(columns: nn.ModuleList) -> list:
    """Each stage's parameter names, checked to be the same (with the same shapes) in every column."""
    depth = len(columns[0])
    if depth < 1 or any(len(c) != depth for c in columns):
        raise ValueError("make_stages must return the same number of stages (at least one) every call")
    names = []
    for k in range(depth):
        shapes = [[(n, p.shape) for n, p in column[k].named_parameters()] for column in columns]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"make_stages must build the same parameters every call; stage {k} differs")
        names.append([n for n, _ in shapes[0]])
    return names


class SoftSharing(nn.Module):
    """``SoftSharing(make_stages, heads, tie="combination", per="stage", self_weight=1.0,
    l2_weight=1e-3)``: ``make_stages()`` returns a fresh list of encoder stages (called once per
    task); ``heads`` maps each task to its head on the last stage's output.
    ``forward(x)`` -> ``{task: output}``; add :meth:`penalty` to the loss (0 unless ``tie="l2"``).

    BatchNorm running statistics (buffers) stay each task's own in both modes.
    """

    def __init__(
        self,
        make_stages: Callable[[], Sequence[nn.Module]],
        heads: dict,
        *,
        tie: str = "combination",
        per: str = "stage",
        self_weight: float = 1.0,
        l2_weight: float = 1e-3,
    ) -> None:
        super().__init__()
        _check_heads(heads)
        if tie not in TIES:
            raise ValueError(f"tie must be one of {TIES}, got {tie!r}")
        if per not in PER:
            raise ValueError(f"per must be one of {PER}, got {per!r}")
        if not 0 <= self_weight <= 1:
            raise ValueError(f"self_weight must be in [0, 1], got {self_weight}")
        if not l2_weight >= 0:  # also rejects NaN
            raise ValueError(f"l2_weight must be >= 0, got {l2_weight}")
        self.tasks, self.tie, self.per, self.l2_weight = list(heads), tie, per, float(l2_weight)
        self.columns = nn.ModuleList(nn.ModuleList(make_stages()) for _ in self.tasks)
        self._names = _stage_names(self.columns)
        if tie == "combination":
            t = len(self.tasks)
            other = (1 - self_weight) / (t - 1) if t > 1 else 0.0
            init = torch.full((t, t), other) + torch.eye(t) * (self_weight - other)
            # one matrix per stage or per tensor; none for a stage without parameters (never unused)
            counts = [len(names) if per == "tensor" else min(len(names), 1) for names in self._names]
            self.combinations = nn.ModuleList(
                nn.ParameterList(nn.Parameter(init.clone()) for _ in range(n)) for n in counts
            )
        self.heads = nn.ModuleDict(heads)

    def _stacked(self, k: int) -> dict:
        """Stage ``k``'s parameters of every task, stacked: ``{name: [T, ...]}``."""
        per_task = [dict(column[k].named_parameters()) for column in self.columns]
        return {name: torch.stack([p[name] for p in per_task]) for name in self._names[k]}

    def effective_parameters(self, k: int) -> list:
        """Stage ``k``'s parameters each task runs with: ``[{name: sum_j A_ij theta_j}]`` per task
        (the tasks' own parameters with ``tie="l2"``)."""
        stacked = self._stacked(k)
        if self.tie == "l2":
            return [{n: s[i] for n, s in stacked.items()} for i in range(len(self.tasks))]
        mixed = {}
        for n, (name, s) in enumerate(stacked.items()):
            alpha = self.combinations[k][n if self.per == "tensor" else 0]
            mixed[name] = torch.einsum("ij,j...->i...", alpha.to(s.dtype), s)
        return [{name: m[i] for name, m in mixed.items()} for i in range(len(self.tasks))]

    def forward(self, x: Tensor) -> dict:
        acts = [x] * len(self.tasks)
        for k, names in enumerate(self._names):
            if self.tie == "l2" or not names:
                acts = [column[k](a) for column, a in zip(self.columns, acts)]
                continue
            # task i's own module (so its own buffers) run with the mixed parameters
            params = self.effective_parameters(k)
            acts = [functional_call(c[k], p, (a,)) for c, p, a in zip(self.columns, params, acts)]
        return {task: self.heads[task](a) for task, a in zip(self.tasks, acts)}

    def penalty(self) -> Tensor:
        """``l2_weight * sum_t ||theta_t - mean_t theta||^2`` over every stage parameter with
        ``tie="l2"``; a zero with ``tie="combination"`` (so a training loop may always add it)."""
        ref = next(iter(self.columns.parameters()), None)
        total = torch.zeros(
            (), device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype
        )
        if self.tie != "l2":
            return total
        for k in range(len(self._names)):
            for s in self._stacked(k).values():
                total = total + (s - s.mean(0)).square().sum()
        return self.l2_weight * total
