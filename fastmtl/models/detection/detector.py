"""A two-stage detector: backbone -> region proposals -> ROI align -> classification + box regression.

``proposals="rpn"`` is Faster R-CNN (a region proposal network on the backbone's features, trained
jointly, proposals detached); ``proposals="fixed"`` is Fast R-CNN with regions from outside the
network (:func:`~fastmtl.models.detection.proposals.sliding_window_proposals`).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from fastmtl.models.detection.head import (
    HeadConfig,
    ROIHead,
    head_losses,
    head_targets,
    postprocess_detections,
)
from fastmtl.models.detection.proposals import FixedProposalConfig, sliding_window_proposals
from fastmtl.models.detection.rpn import RegionProposalNetwork, RPNConfig

__all__ = ["DetectorConfig", "SmallBackbone", "TwoStageDetector"]


@dataclass
class DetectorConfig:
    """Architecture of :class:`TwoStageDetector`."""

    num_classes: int = 3  # foreground classes; label 0 is background
    proposals: str = "rpn"  # "rpn" (Faster R-CNN) or "fixed" (Fast R-CNN, sliding windows)
    widths: tuple = (32, 64, 96)  # backbone channels per stage
    stride: int = 8  # of the feature map: the first log2(stride) stages halve the resolution
    rpn: RPNConfig = field(default_factory=RPNConfig)
    fixed: FixedProposalConfig = field(default_factory=FixedProposalConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self):
        if self.proposals not in ("rpn", "fixed"):
            raise ValueError(f"proposals must be 'rpn' or 'fixed', got {self.proposals!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.stride not in [2**i for i in range(1, len(self.widths) + 1)]:
            raise ValueError(f"stride must be a power of 2 up to 2 ** len(widths), got {self.stride}")


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallBackbone(nn.Module):
    """Stages of two 3x3 convs with batch norm; the first conv of each of the first
    ``log2(stride)`` stages has stride 2."""

    def __init__(self, widths: tuple = (32, 64, 96), *, stride: int = 8, in_channels: int = 3):
        super().__init__()
        layers, cin, s = [], in_channels, 1
        for w in widths:
            step = 2 if s < stride else 1
            s *= step
            layers += [_conv(cin, w, step), _conv(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin
        self.stride = s

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images - 0.5)  # images in [0, 1]


class TwoStageDetector(nn.Module):
    """Fast / Faster R-CNN on one feature map.

    ``forward(images [B, 3, H, W] in [0, 1], targets=None)``: in training, ``targets`` is a list
    of ``{"boxes": [K, 4] (x1, y1, x2, y2), "labels": [K] int64 in 1..C}`` and the result is a
    dict of named losses (``rpn_objectness``, ``rpn_box`` with the RPN; ``roi_cls``,
    ``roi_box``); in eval mode, a list of ``{"boxes", "scores", "labels"}`` per image.
    """

    def __init__(self, config: Optional[DetectorConfig] = None):
        super().__init__()
        self.config = config or DetectorConfig()
        self.backbone = SmallBackbone(self.config.widths, stride=self.config.stride)
        channels, stride = self.backbone.out_channels, self.backbone.stride
        self.rpn = (
            RegionProposalNetwork(channels, stride, self.config.rpn)
            if self.config.proposals == "rpn"
            else None
        )
        self.head = ROIHead(channels, self.config.num_classes, stride, self.config.head)

    def proposals(self, features: Tensor, image_size: tuple, targets: Optional[list] = None) -> tuple:
        """``(proposals: B x [K_b, 4], RPN losses)`` of a batch."""
        if self.rpn is not None:
            gt = None if targets is None else [t["boxes"] for t in targets]
            return self.rpn(features, image_size, gt)
        grid = sliding_window_proposals(
            image_size, self.config.fixed, dtype=features.dtype, device=features.device
        )
        return [grid] * features.shape[0], {}

    def forward(self, images: Tensor, targets: Optional[list] = None):
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        image_size = tuple(images.shape[-2:])
        features = self.backbone(images)
        proposals, losses = self.proposals(features, image_size, targets if self.training else None)
        if self.training:
            hc = self.head.config
            sampled, labels, box_targets = head_targets(
                proposals, [t["boxes"] for t in targets], [t["labels"] for t in targets], hc
            )
            logits, deltas = self.head(features, sampled)
            return {**losses, **head_losses(logits, deltas, labels, box_targets)}
        logits, deltas = self.head(features, proposals)
        return postprocess_detections(logits, deltas, proposals, image_size, self.head.config)

    @torch.no_grad()
    def predict(self, images: Tensor) -> list:
        """Detections of a batch, in eval mode, without gradients (restores the training mode)."""
        was_training = self.training
        self.eval()
        try:
            return self(images)
        finally:
            self.train(was_training)
