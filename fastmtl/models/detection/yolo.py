"""A YOLOv1-style detector: the sliding window as one convolutional pass over the image.

A backbone (:class:`~fastmtl.models.detection.SmallBackbone` trained from scratch, or an ImageNet
:class:`~fastmtl.models.detection.mobilenet.MobileNetV2Backbone`) maps ``[N, 3, H, W]`` to a
feature map at ``stride``; a conv head turns each feature cell into one grid cell's prediction,
so ``forward`` returns ``[N, S, S, B * 5 + C]`` (``S = H / stride``) in the layout of
:func:`fastmtl.ops.yolo_v1_loss`: ``(x, y, w, h, conf)`` per box, then the class scores.

Output activations, applied inside the model because the loss is a squared error on what it is
given (the paper's net is linear; bounded outputs train steadier on small data):

- ``x, y``: sigmoid, the centre's offset in its cell, in (0, 1) like their targets;
- ``w, h``: raw, they are ``sqrt(w)``, ``sqrt(h)`` of the image fraction (the loss's ``wh="sqrt"``;
  the box is ``out ** 2``);
- ``conf``: sigmoid, in (0, 1) like its IoU target;
- classes: softmax over the ``C`` classes, ``P(class | object)``, so that ``conf * P`` is the
  paper's class-specific confidence.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from fastmtl.models.detection.detector import SmallBackbone
from fastmtl.models.detection.mobilenet import MobileNetV2Backbone

__all__ = ["BACKBONES", "YOLODetector", "YOLODetectorConfig", "yolo_activations"]

BACKBONES = ("small", "mobilenet_v2")


@dataclass
class YOLODetectorConfig:
    """Architecture of :class:`YOLODetector`."""

    num_classes: int = 12
    num_boxes: int = 2  # B predictors per cell
    backbone: str = "small"  # "small" (from scratch) or "mobilenet_v2" (ImageNet weights)
    widths: tuple = (16, 32, 64, 128)  # channels per stage of the small backbone
    stride: int = 16  # the grid cell's side in pixels: S = image_size / stride
    head_hidden: int = 128
    freeze_backbone: bool = False  # pretrained backbone as a fixed feature extractor
    pretrained: bool = True  # load the ImageNet weights (mobilenet_v2 only)
    # initial sqrt sizes of the B predictors (biases), spread so they start out different
    prior_sqrt_sizes: tuple = (0.35, 0.6)

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.num_classes < 1 or self.num_boxes < 1:
            raise ValueError(f"need num_classes, num_boxes >= 1, got {self.num_classes}, {self.num_boxes}")
        if self.backbone == "small" and self.stride not in [2**i for i in range(1, len(self.widths) + 1)]:
            raise ValueError(f"stride must be a power of 2 up to 2 ** len(widths), got {self.stride}")


def yolo_activations(raw: Tensor, num_boxes: int) -> Tensor:
    """``[N, S, S, B * 5 + C]`` raw head outputs -> the activated prediction (see the module)."""
    boxes = raw[..., : 5 * num_boxes].unflatten(-1, (num_boxes, 5))
    xy, wh, conf = boxes[..., :2], boxes[..., 2:4], boxes[..., 4:]
    boxes = torch.cat((xy.sigmoid(), wh, conf.sigmoid()), dim=-1).flatten(-2)
    return torch.cat((boxes, raw[..., 5 * num_boxes :].softmax(-1)), dim=-1)


def _backbone(config: YOLODetectorConfig) -> nn.Module:
    if config.backbone == "mobilenet_v2":
        return MobileNetV2Backbone(stride=config.stride, pretrained=config.pretrained)
    return SmallBackbone(config.widths, stride=config.stride)


class YOLODetector(nn.Module):
    """Backbone + grid head; ``forward(images [N, 3, H, W] in [0, 1])`` -> ``[N, S, S, B * 5 + C]``
    (H and W multiples of ``stride``), activated as the module says.

    With ``freeze_backbone`` the backbone has no gradients and stays in eval mode (its batch-norm
    statistics are ImageNet's) even while the model trains.
    """

    def __init__(self, config: Optional[YOLODetectorConfig] = None):
        super().__init__()
        self.config = config = config or YOLODetectorConfig()
        self.backbone = _backbone(config)
        out = 5 * config.num_boxes + config.num_classes
        hidden = config.head_hidden
        self.head = nn.Sequential(
            nn.Conv2d(self.backbone.out_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out, 1),
        )
        self._init_head()
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)

    def _init_head(self) -> None:
        b = self.config.num_boxes
        last = self.head[-1]
        nn.init.normal_(last.weight, std=0.01)
        bias = last.bias.detach().view(-1)
        bias.zero_()
        boxes = bias[: 5 * b].view(b, 5)
        priors = self.config.prior_sqrt_sizes
        boxes[:, 2:4] = torch.tensor([priors[j % len(priors)] for j in range(b)])[:, None]
        boxes[:, 4] = -2.0  # conf starts near 0.12: most predictors are background

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        raw = self.head(self.backbone(images)).permute(0, 2, 3, 1)
        return yolo_activations(raw, self.config.num_boxes)

    def param_groups(self, lr: float, backbone_lr: float) -> list:
        """Optimizer groups: the head at ``lr``, the backbone at ``backbone_lr`` (none when frozen)."""
        head = {"params": list(self.head.parameters()), "lr": lr, "name": "head"}
        if self.config.freeze_backbone:
            return [head]
        return [{"params": list(self.backbone.parameters()), "lr": backbone_lr, "name": "backbone"}, head]
