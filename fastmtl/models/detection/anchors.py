"""Anchor boxes on a feature map: ``A = len(sizes) * len(aspect_ratios)`` boxes per cell."""

import math

import torch
from torch import Tensor

__all__ = ["anchors_per_cell", "cell_anchors", "grid_anchors"]


def anchors_per_cell(sizes: tuple, aspect_ratios: tuple) -> int:
    return len(sizes) * len(aspect_ratios)


def cell_anchors(sizes: tuple, aspect_ratios: tuple, *, dtype=torch.float32, device=None) -> Tensor:
    """``[A, 4]`` anchors centred on the origin: for each size ``s`` and ratio ``r = h / w``, a box of
    area ``s^2`` with ``w = s / sqrt(r)`` and ``h = s * sqrt(r)``; sizes vary fastest."""
    rows = []
    for r in aspect_ratios:
        for s in sizes:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(rows, dtype=dtype, device=device)


def grid_anchors(
    feature_size: tuple,
    stride: float,
    sizes: tuple,
    aspect_ratios: tuple,
    *,
    dtype=torch.float32,
    device=None,
) -> Tensor:
    """Anchors of a ``(H, W)`` feature map of the given stride, centred on the cells' centres.

    Returns:
        ``[H * W * A, 4]`` ``(x1, y1, x2, y2)`` in image pixels, ordered by row ``y``, column
        ``x``, then anchor ``a``: the order of a head output ``[B, A, H, W]`` permuted to
        ``[B, H, W, A]`` and flattened.
    """
    h, w = feature_size
    base = cell_anchors(sizes, aspect_ratios, dtype=dtype, device=device)
    ys = (torch.arange(h, dtype=dtype, device=device) + 0.5) * stride
    xs = (torch.arange(w, dtype=dtype, device=device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
    return (centres + base).reshape(-1, 4)
