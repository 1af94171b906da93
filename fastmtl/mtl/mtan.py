"""Multi-Task Attention Network (MTAN): Liu, Johns and Davison, "End-to-End Multi-Task Learning
with Attention", CVPR 2019.

One shared backbone, given as a list of stages, and per task a soft-attention path alongside it.
At stage ``k`` with shared features ``s_k`` ``[N, C_k, H_k, W_k]``, task ``t``'s mask is

    a_k = sigmoid(BN(conv1x1(ReLU(BN(conv1x1(cat(s_k, resize(f_{k-1}))))))))   (k = 0: s_0 alone)
    f_k = h_k(a_k * s_k)

``a_k * s_k`` (elementwise: each task picks what it uses from the shared features) is the task's
feature at stage k; ``h_k`` = conv3x3-BN-ReLU maps it to stage ``k+1``'s channel count, and
``resize`` brings it to stage ``k+1``'s resolution (average pooling when smaller, bilinear otherwise: the
paper pools, as its SegNet encoder does). The last stage's masked feature goes to the task's head.

The channel counts ``C_k`` come from one dry forward in ``__init__`` (eval mode, no gradients) on
``sample`` (default ``zeros(1, 3, 64, 64)`` on the stages' device: pass one with your input's
channel count, large enough for the backbone's downsampling). Resolutions are matched at run
time, so any input size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.mtl.architectures import _check_heads

__all__ = ["MTAN"]


def attention_module(cin: int, cout: int) -> nn.Sequential:
    """The paper's attention ``g``: conv1x1-BN-ReLU-conv1x1-BN-sigmoid, a mask in (0, 1)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.Sigmoid(),
    )


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """The paper's ``f``: conv3x3-BN-ReLU, from one stage's width to the next's."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def resize_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """``x`` at spatial ``size``: average pooling to shrink (no aliasing), bilinear otherwise."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def _stage_channels(stages: nn.ModuleList, sample: Tensor) -> list:
    """Each stage's output channel count, from one forward in eval mode (BN statistics untouched)."""
    modes = [m.training for m in stages.modules()]
    stages.eval()
    try:
        channels, x = [], sample
        for k, stage in enumerate(stages):
            x = stage(x)
            if x.dim() != 4:
                raise ValueError(
                    f"stages must output [N, C, H, W] feature maps; stage {k} gave {list(x.shape)}"
                )
            channels.append(x.shape[1])
    finally:
        for m, mode in zip(stages.modules(), modes):
            m.training = mode
    return channels


class MTAN(nn.Module):
    """``MTAN(stages, heads, sample=None)``: ``stages`` (a list of modules, run in order) is the
    shared backbone; ``heads`` maps each task to its head on the last stage's channel count
    (``self.channels[-1]``). ``forward(x)`` -> ``{task: head(task feature)}``;
    ``forward(x, return_masks=True)`` -> ``(outputs, {task: [mask per stage]})``."""

    def __init__(self, stages: Sequence[nn.Module], heads: dict, *, sample: Tensor | None = None) -> None:
        super().__init__()
        _check_heads(heads)
        if len(stages) < 1 or not all(isinstance(s, nn.Module) for s in stages):
            raise ValueError("stages must be a non-empty list of modules")
        if sample is not None and (not isinstance(sample, Tensor) or sample.dim() != 4):
            raise ValueError(f"sample must be an [N, C, H, W] tensor, got {getattr(sample, 'shape', sample)}")
        self.tasks = list(heads)
        self.stages = nn.ModuleList(stages)
        if sample is None:
            ref = next(self.stages.parameters(), None)
            sample = torch.zeros(1, 3, 64, 64, device=None if ref is None else ref.device)
        self.channels = c = _stage_channels(self.stages, sample)
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleList(attention_module(c[k] * (1 if k == 0 else 2), c[k]) for k in range(len(c)))
                for t in heads
            }
        )
        self.blocks = nn.ModuleDict(
            {t: nn.ModuleList(_conv_block(c[k], c[k + 1]) for k in range(len(c) - 1)) for t in heads}
        )
        self.heads = nn.ModuleDict(heads)

    def _task_path(self, task: str, shared: list) -> tuple:
        """Task ``task``'s masks over the shared features and its last masked feature."""
        feat, masks = None, []
        for k, s in enumerate(shared):
            inp = s if feat is None else torch.cat((s, resize_to(feat, s.shape[-2:])), 1)
            masks.append(self.attention[task][k](inp))
            feat = masks[-1] * s
            if k < len(shared) - 1:
                feat = self.blocks[task][k](feat)
        return feat, masks

    def forward(self, x: Tensor, return_masks: bool = False):
        shared = []
        for stage in self.stages:
            x = stage(x)
            shared.append(x)
        outputs, masks = {}, {}
        for task in self.tasks:
            feat, masks[task] = self._task_path(task, shared)
            outputs[task] = self.heads[task](feat)
        return (outputs, masks) if return_masks else outputs
