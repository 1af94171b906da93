"""A non-learned proposal source for the Fast R-CNN case: a multi-scale sliding-window box grid.

Fast R-CNN takes its regions from outside the network (selective search in the paper). Here the
stand-in is a dense grid: for each box size ``s`` and aspect ratio ``r = h / w``, boxes of area
``s^2`` slid over the image with a step of ``overlap_step * s`` (half a box by default), so that
every object of a size in ``sizes`` has a window with a good IoU and the head's box regression
refines it. The same boxes serve every image. While training, the ground-truth boxes are added
to them (as Fast and Faster R-CNN do) so that the head sees well-placed positives from step one.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["FixedProposalConfig", "sliding_window_proposals"]


@dataclass
class FixedProposalConfig:
    """The grid of :func:`sliding_window_proposals`."""

    sizes: tuple = (16, 24, 32, 48, 64)
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    overlap_step: float = 0.5


def _starts(extent: float, box: float, step: float) -> Tensor:
    """Start coordinates of windows of side ``box`` along ``[0, extent]``, the last flush with the end."""
    if box >= extent:
        return torch.zeros(1, dtype=torch.float64)
    n = math.ceil((extent - box) / step) + 1
    return torch.linspace(0.0, extent - box, n, dtype=torch.float64)


def sliding_window_proposals(
    image_size: tuple,
    config: Optional[FixedProposalConfig] = None,
    *,
    dtype=torch.float32,
    device=None,
) -> Tensor:
    """The grid of windows in a ``(height, width)`` image.

    Returns:
        ``[N, 4]`` ``(x1, y1, x2, y2)`` inside the image, by ratio, then size, then row, then column.
    """
    config = config or FixedProposalConfig()
    height, width = image_size
    boxes = []
    for r in config.aspect_ratios:
        for s in config.sizes:
            w, h = min(s / math.sqrt(r), width), min(s * math.sqrt(r), height)
            ys = _starts(height, h, config.overlap_step * s)
            xs = _starts(width, w, config.overlap_step * s)
            y1, x1 = torch.meshgrid(ys, xs, indexing="ij")
            boxes.append(torch.stack((x1, y1, x1 + w, y1 + h), dim=-1).reshape(-1, 4))
    return torch.cat(boxes).to(dtype=dtype, device=device)
