"""The Fast R-CNN head: ROI align of each proposal, a small MLP, class logits and box deltas.

Training targets: a proposal is of the class of the ground truth it overlaps most when that IoU
is ``>= 0.5``, background otherwise; a loss batch samples a quarter foreground at most. The box
deltas are class-specific (one box per class, background included, as torchvision) and encoded
with :mod:`~fastmtl.models.detection.box_coder` (weights ``(10, 10, 5, 5)``).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.models.detection.box_coder import BoxCoder
from fastmtl.models.detection.matching import match_boxes, sample_fg_bg
from fastmtl.models.detection.rpn import clip_boxes
from fastmtl.ops import multiclass_nms, roi_align

__all__ = ["HeadConfig", "ROIHead", "head_losses", "head_targets", "postprocess_detections"]


@dataclass
class HeadConfig:
    """Pooling, target assignment and post-processing of the ROI head."""

    pool_size: int = 7
    sampling_ratio: int = 2
    hidden: int = 256
    fg_iou: float = 0.5
    bg_iou: float = 0.5
    samples_per_image: int = 128
    positive_fraction: float = 0.25
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100


class ROIHead(nn.Module):
    """``(features [B, C, H, W], proposals: B x [K_b, 4])`` -> ``(logits [K, C+1], deltas [K, 4(C+1)])``,
    ``K = sum K_b``, ``C`` foreground classes."""

    def __init__(self, in_channels: int, num_classes: int, stride: int, config: Optional[HeadConfig] = None):
        super().__init__()
        self.config = config or HeadConfig()
        self.stride = stride
        p, hidden = self.config.pool_size, self.config.hidden
        self.fc1 = nn.Linear(in_channels * p * p, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.cls_logits = nn.Linear(hidden, num_classes + 1)
        self.box_deltas = nn.Linear(hidden, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.normal_(self.box_deltas.weight, std=0.001)
        nn.init.zeros_(self.cls_logits.bias)
        nn.init.zeros_(self.box_deltas.bias)

    def forward(self, features: Tensor, proposals: list) -> tuple:
        pooled = roi_align(
            features,
            proposals,
            self.config.pool_size,
            spatial_scale=1.0 / self.stride,
            sampling_ratio=self.config.sampling_ratio,
            aligned=True,
        )
        x = F.relu(self.fc1(pooled.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls_logits(x), self.box_deltas(x)


def head_targets(
    proposals: list,
    gt_boxes: list,
    gt_labels: list,
    config: HeadConfig,
    *,
    coder: Optional[BoxCoder] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple:
    """Samples proposals for the head's loss and gives their targets.

    The ground-truth boxes are added to the proposals first.

    Returns:
        ``(proposals: B x [S_b, 4], labels [S] int64 (0 background), box targets [S, 4])``.
    """
    coder = coder or BoxCoder()
    sampled, labels, targets = [], [], []
    for props, gt, gt_lab in zip(proposals, gt_boxes, gt_labels):
        props = torch.cat((props, gt.to(props.dtype)))
        matched = match_boxes(gt, props, fg_iou=config.fg_iou, bg_iou=config.bg_iou)
        fg, bg = sample_fg_bg(
            matched,
            num_samples=config.samples_per_image,
            positive_fraction=config.positive_fraction,
            generator=generator,
        )
        idx = torch.cat((fg, bg))
        sampled.append(props[idx])
        labels.append(torch.cat((gt_lab[matched[fg]], gt_lab.new_zeros(bg.numel()))))
        target = props.new_zeros(idx.numel(), 4)
        target[: fg.numel()] = coder.encode(gt[matched[fg]], props[fg])
        targets.append(target)
    return sampled, torch.cat(labels), torch.cat(targets)


def head_losses(logits: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor) -> dict:
    """Cross-entropy over the sampled proposals and smooth L1 of the foreground ones' deltas of
    their class, both averaged over the sampled proposals.

    Returns:
        ``{"roi_cls": Tensor[], "roi_box": Tensor[]}``.
    """
    cls_loss = F.cross_entropy(logits, labels)
    fg = (labels > 0).nonzero()[:, 0]
    deltas = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)[fg, labels[fg]]
    box_loss = F.smooth_l1_loss(deltas, box_targets[fg], beta=1 / 9, reduction="sum") / max(labels.numel(), 1)
    return {"roi_cls": cls_loss, "roi_box": box_loss}


def postprocess_detections(
    logits: Tensor,
    deltas: Tensor,
    proposals: list,
    image_size: tuple,
    config: HeadConfig,
    *,
    coder: Optional[BoxCoder] = None,
) -> list:
    """Detections of each image: class-specific boxes, softmax scores, class-aware NMS.

    Uses :func:`fastmtl.ops.multiclass_nms` on the whole batch at once, proposals padded to the
    longest image with scores of 0 (below any threshold).

    Returns:
        ``B`` dicts ``{"boxes": [D, 4], "scores": [D], "labels": [D] int64 in 1..C}``.
    """
    coder = coder or BoxCoder()
    counts = [p.shape[0] for p in proposals]
    num_classes = logits.shape[1] - 1
    boxes = clip_boxes(coder.decode(deltas, torch.cat(proposals)).reshape(-1, num_classes + 1, 4), image_size)
    scores = F.softmax(logits, dim=-1)
    b, n = len(proposals), max(counts, default=0)
    padded_boxes = boxes.new_zeros(b, n, num_classes, 4)
    padded_scores = scores.new_zeros(b, n, num_classes)
    for i, (bx, sc) in enumerate(zip(boxes.split(counts), scores.split(counts))):
        padded_boxes[i, : bx.shape[0]] = bx[:, 1:]
        padded_scores[i, : sc.shape[0]] = sc[:, 1:]
    det = multiclass_nms(
        padded_boxes,
        padded_scores,
        config.nms_iou,
        score_threshold=config.score_threshold,
        max_detections=config.max_detections,
    )
    out = []
    for i, k in enumerate(det.counts.tolist()):
        out.append({"boxes": det.boxes[i, :k], "scores": det.scores[i, :k], "labels": det.classes[i, :k] + 1})
    return out
