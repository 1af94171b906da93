"""A region proposal network (Faster R-CNN) over the anchors of one feature map.

A 3x3 conv reads each cell; two 1x1 convs give, per anchor, an objectness logit and box deltas
(:mod:`~fastmtl.models.detection.box_coder`, weights ``(1, 1, 1, 1)`` as in Faster R-CNN).
Proposals are the top-scoring decoded anchors, clipped to the image, after NMS. Training
targets: an anchor is an object when its IoU with a ground truth is ``>= 0.7`` (or it is that
ground truth's best anchor), background below ``0.3``; a loss batch samples both.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.models.detection.anchors import anchors_per_cell, grid_anchors
from fastmtl.models.detection.box_coder import decode_boxes, encode_boxes
from fastmtl.models.detection.matching import match_boxes, sample_fg_bg
from fastmtl.ops import nms

__all__ = ["RPNConfig", "RPNHead", "RegionProposalNetwork", "clip_boxes", "rpn_losses", "select_proposals"]

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


@dataclass
class RPNConfig:
    """Anchors, target assignment and proposal selection of the RPN."""

    sizes: tuple = (16, 32, 64)
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    samples_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n: dict = field(default_factory=lambda: {"train": 600, "eval": 300})
    post_nms_top_n: dict = field(default_factory=lambda: {"train": 150, "eval": 100})
    nms_iou: float = 0.7
    min_size: float = 2.0


class RPNHead(nn.Module):
    """``features [B, C, H, W]`` -> ``(objectness [B, H*W*A], deltas [B, H*W*A, 4])``."""

    def __init__(self, in_channels: int, num_anchors: int, *, hidden: Optional[int] = None):
        super().__init__()
        hidden = hidden or in_channels
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.objectness = nn.Conv2d(hidden, num_anchors, 1)
        self.deltas = nn.Conv2d(hidden, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple:
        x = F.relu(self.conv(features))
        b, a, h, w = x.shape[0], self.objectness.out_channels, x.shape[2], x.shape[3]
        objectness = self.objectness(x).permute(0, 2, 3, 1).reshape(b, h * w * a)
        deltas = self.deltas(x).view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 4)
        return objectness, deltas


def clip_boxes(boxes: Tensor, image_size: tuple) -> Tensor:
    """Clamps ``[..., 4]`` boxes into a ``(height, width)`` image."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def select_proposals(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    image_size: tuple,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_iou: float,
    min_size: float,
) -> list:
    """The RPN's proposals of each image (no gradient flows through them).

    Args:
        objectness: ``[B, N]`` logits; deltas: ``[B, N, 4]``; anchors: ``[N, 4]``.
        image_size: ``(height, width)`` to clip to.

    Returns:
        ``B`` tensors ``[K_b, 4]``, ``K_b <= post_nms_top_n``, by decreasing objectness.
    """
    objectness, deltas = objectness.detach(), deltas.detach()
    k = min(pre_nms_top_n, objectness.shape[1])
    scores, idx = objectness.topk(k, dim=1)
    proposals = []
    for b in range(objectness.shape[0]):
        boxes = clip_boxes(decode_boxes(deltas[b, idx[b]], anchors[idx[b]], weights=RPN_WEIGHTS), image_size)
        wide = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        boxes, s = boxes[wide], scores[b, wide]
        keep = nms(boxes, s, nms_iou)[:post_nms_top_n]
        proposals.append(boxes[keep])
    return proposals


def rpn_losses(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes: list,
    config: RPNConfig,
    *,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Objectness (binary cross-entropy) and box (smooth L1 on objects) losses of the RPN.

    Both are averaged over the sampled anchors of the batch, as in Faster R-CNN.

    Returns:
        ``{"rpn_objectness": Tensor[], "rpn_box": Tensor[]}``.
    """
    fg_all, bg_all, matched_boxes = [], [], []
    n = anchors.shape[0]
    for b, gt in enumerate(gt_boxes):
        matched = match_boxes(gt, anchors, fg_iou=config.fg_iou, bg_iou=config.bg_iou, allow_low_quality=True)
        fg, bg = sample_fg_bg(
            matched,
            num_samples=config.samples_per_image,
            positive_fraction=config.positive_fraction,
            generator=generator,
        )
        fg_all.append(fg + b * n)
        bg_all.append(bg + b * n)
        matched_boxes.append(gt[matched[fg]])
    fg, bg = torch.cat(fg_all), torch.cat(bg_all)
    flat_obj, flat_deltas = objectness.reshape(-1), deltas.reshape(-1, 4)
    sampled = torch.cat((fg, bg))
    target = torch.cat((torch.ones_like(fg), torch.zeros_like(bg))).to(flat_obj.dtype)
    num = max(sampled.numel(), 1)
    obj_loss = F.binary_cross_entropy_with_logits(flat_obj[sampled], target, reduction="sum") / num
    box_targets = encode_boxes(
        torch.cat(matched_boxes), anchors.repeat(len(gt_boxes), 1)[fg], weights=RPN_WEIGHTS
    )
    box_loss = F.smooth_l1_loss(flat_deltas[fg], box_targets, beta=1 / 9, reduction="sum") / num
    return {"rpn_objectness": obj_loss, "rpn_box": box_loss}


class RegionProposalNetwork(nn.Module):
    """:class:`RPNHead` + anchors + :func:`select_proposals` (+ :func:`rpn_losses` in training)."""

    def __init__(self, in_channels: int, stride: int, config: Optional[RPNConfig] = None):
        super().__init__()
        self.config = config or RPNConfig()
        self.stride = stride
        self.head = RPNHead(in_channels, anchors_per_cell(self.config.sizes, self.config.aspect_ratios))

    def anchors(self, features: Tensor) -> Tensor:
        return grid_anchors(
            tuple(features.shape[-2:]),
            self.stride,
            self.config.sizes,
            self.config.aspect_ratios,
            dtype=features.dtype,
            device=features.device,
        )

    def forward(self, features: Tensor, image_size: tuple, gt_boxes: Optional[list] = None) -> tuple:
        """Returns ``(proposals: list of [K_b, 4], losses: dict)``; losses only when ``gt_boxes`` is given."""
        cfg = self.config
        objectness, deltas = self.head(features)
        anchors = self.anchors(features)
        mode = "train" if self.training else "eval"
        proposals = select_proposals(
            objectness,
            deltas,
            anchors,
            image_size,
            pre_nms_top_n=cfg.pre_nms_top_n[mode],
            post_nms_top_n=cfg.post_nms_top_n[mode],
            nms_iou=cfg.nms_iou,
            min_size=cfg.min_size,
        )
        losses = {} if gt_boxes is None else rpn_losses(objectness, deltas, anchors, gt_boxes, cfg)
        return proposals, losses
