"""Assigning ground truth to anchors or proposals by IoU, and sampling them for a loss."""

from typing import Optional

import torch
from torch import Tensor

from fastmtl.ops import box_iou

__all__ = ["BACKGROUND", "IGNORE", "match_boxes", "sample_fg_bg"]

BACKGROUND = -1  # matched index of a box below the background threshold
IGNORE = -2  # matched index of a box between the thresholds


def match_boxes(
    gt_boxes: Tensor,
    boxes: Tensor,
    *,
    fg_iou: float,
    bg_iou: float,
    allow_low_quality: bool = False,
) -> Tensor:
    """Matches each box to the ground truth it overlaps most.

    Args:
        gt_boxes: ``[G, 4]``; boxes: ``[N, 4]``, both ``(x1, y1, x2, y2)``.
        fg_iou: a box whose best IoU is ``>= fg_iou`` is matched to that ground truth.
        bg_iou: below ``bg_iou`` it is :data:`BACKGROUND`; in between, :data:`IGNORE`.
        allow_low_quality: also match each ground truth to the boxes that overlap it most (with
            IoU > 0), even below ``fg_iou`` (the RPN's rule, so that every object has an anchor).

    Returns:
        ``[N]`` int64: the matched ground-truth index, :data:`BACKGROUND` or :data:`IGNORE`.
    """
    n = boxes.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.full((n,), BACKGROUND, dtype=torch.int64, device=boxes.device)
    iou = box_iou(gt_boxes, boxes)  # [G, N]
    best, best_gt = iou.max(dim=0)
    matched = best_gt.clone()
    matched[best < fg_iou] = IGNORE
    matched[best < bg_iou] = BACKGROUND
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
        matched[is_best] = best_gt[is_best]
    return matched


def sample_fg_bg(
    matched: Tensor,
    *,
    num_samples: int,
    positive_fraction: float,
    generator: Optional[torch.Generator] = None,
) -> tuple:
    """Samples up to ``num_samples`` boxes, at most ``positive_fraction`` of them foreground.

    Args:
        matched: ``[N]`` from :func:`match_boxes` (``>= 0`` foreground).
        generator: for the random choice (the global generator when ``None``).

    Returns:
        ``(fg_idx, bg_idx)``: int64 indices of the sampled foreground and background boxes.
    """
    fg = (matched >= 0).nonzero()[:, 0]
    bg = (matched == BACKGROUND).nonzero()[:, 0]
    num_fg = min(fg.numel(), int(num_samples * positive_fraction))
    num_bg = min(bg.numel(), num_samples - num_fg)
    device = matched.device
    fg = fg[torch.randperm(fg.numel(), generator=generator, device="cpu").to(device)[:num_fg]]
    bg = bg[torch.randperm(bg.numel(), generator=generator, device="cpu").to(device)[:num_bg]]
    return fg, bg
