"""The multi-task benchmark model and data: a ResNet-18 trunk at output stride 8 shared by three
NYUv2-style dense heads (13-class segmentation, depth, surface normals), on random NYUv2-shaped
batches. Both are built deterministically from a seed without touching the global RNG.

- trunk: torchvision's ``resnet18(weights=None)``, conv1 .. layer4 (no pooling, no fc). torchvision's
  ``BasicBlock`` refuses ``replace_stride_with_dilation``, so layer3 and layer4 are dilated after
  construction the DeepLab way: the strided convolutions get stride 1 and the 3x3 convolutions
  dilation 2 (layer3) and 4 (layer4), the first one of each layer half that. A 3x128x128 image
  gives a 512x16x16 representation.
- heads: 3x3 conv 512 -> ``head_width`` + ReLU + 1x1 conv to the task's channels, then bilinear
  upsampling by the output stride back to the input size.
- losses: cross-entropy (segmentation), L1 (depth), 1 - cosine similarity (normals), each a mean.

``blocks=(1, 1, 1, 1)`` (a ResNet-10 trunk), a small ``head_width`` and a small ``side`` make a
cheap model for tests; the benchmark's size is the default (ResNet-18, 128 px, batch 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.mtl.architectures import HardSharing

__all__ = ["OUTPUT_STRIDE", "TASK_CHANNELS", "TASKS", "MTLBenchModel", "make_batch", "make_model"]

TASK_CHANNELS = {"segmentation": 13, "depth": 1, "normal": 3}
TASKS = tuple(TASK_CHANNELS)
OUTPUT_STRIDE = 8


def segmentation_loss(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of ``[B, 13, H, W]`` scores against ``[B, H, W]`` class indices."""
    return F.cross_entropy(output, target)


def depth_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error of ``[B, 1, H, W]`` depths."""
    return (output - target).abs().mean()


def normal_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean ``1 - cos`` between predicted and true ``[B, 3, H, W]`` normals (over channels)."""
    return 1 - F.cosine_similarity(output, target, dim=1).mean()


LOSS_FNS = {"segmentation": segmentation_loss, "depth": depth_loss, "normal": normal_loss}


def _dilate(layer: nn.Module, dilation: int) -> None:
    """Turns a stride-2 ResNet layer into a stride-1 one with dilated 3x3 convolutions."""
    for conv in layer.modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        strided = conv.stride == (2, 2)
        if strided:
            conv.stride = (1, 1)
        if conv.kernel_size == (3, 3):
            d = dilation // 2 if strided else dilation
            conv.dilation, conv.padding = (d, d), (d, d)


def _trunk(blocks: Sequence[int]) -> nn.Sequential:
    from torchvision.models import resnet

    if tuple(blocks) == (2, 2, 2, 2):
        net = resnet.resnet18(weights=None)
    else:
        net = resnet.ResNet(resnet.BasicBlock, list(blocks))
    _dilate(net.layer3, 2)
    _dilate(net.layer4, 4)
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )


def _head(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, out_channels, 1),
        nn.Upsample(scale_factor=OUTPUT_STRIDE, mode="bilinear", align_corners=False),
    )


class MTLBenchModel(HardSharing):
    """:class:`fastmtl.mtl.HardSharing` with the trunk as ``encoder``, the three heads as
    ``heads`` (an ``nn.ModuleDict`` in :data:`TASKS` order) and ``loss_fns``
    ``{task: fn(output, target) -> scalar}``.

    ``shared(x)`` -> the representation; ``heads_forward(z)`` -> ``{task: output}``;
    ``forward(x)`` -> ``heads_forward(shared(x))``; ``forward(x, representation=True)`` ->
    ``(outputs, z, zd)`` with ``zd = z.detach().requires_grad_()`` and the heads run on ``zd``.
    ``losses(outputs, targets)`` -> ``{task: loss}``.
    """

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), head_width: int = 128) -> None:
        heads = {task: _head(512, head_width, c) for task, c in TASK_CHANNELS.items()}
        super().__init__(_trunk(blocks), heads)
        self.loss_fns = dict(LOSS_FNS)

    def losses(self, outputs: dict, targets: dict) -> dict:
        return {task: fn(outputs[task], targets[task]) for task, fn in self.loss_fns.items()}


def make_model(
    seed: int = 0, blocks: Sequence[int] = (2, 2, 2, 2), head_width: int = 128, device="cpu"
) -> MTLBenchModel:
    """The model with weights drawn from ``seed`` (the global RNG is left as it was), in train mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MTLBenchModel(blocks, head_width)
    return model.to(device).train()


def make_batch(batch: int = 8, side: int = 128, seed: int = 0, device="cpu") -> tuple:
    """Random NYUv2-shaped ``(images, targets)``: images ``[B, 3, side, side]`` in [0, 1);
    targets ``{"segmentation": int64 [B, side, side] in [0, 13), "depth": [B, 1, side, side] in
    (0.5, 10) m, "normal": unit vectors [B, 3, side, side]}``. ``side`` must be a multiple of 8."""
    if side % OUTPUT_STRIDE:
        raise ValueError(f"side must be a multiple of {OUTPUT_STRIDE}, got {side}")
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, side, side, generator=g)
    targets = {
        "segmentation": torch.randint(0, TASK_CHANNELS["segmentation"], (batch, side, side), generator=g),
        "depth": 0.5 + 9.5 * torch.rand(batch, 1, side, side, generator=g),
        "normal": F.normalize(torch.randn(batch, 3, side, side, generator=g), dim=1),
    }
    return images.to(device), {task: t.to(device) for task, t in targets.items()}
