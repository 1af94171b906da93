"""Image descriptors from a pretrained CNN's last feature map, with no training (the transfer-
learning slides' baseline for retrieval and verification): MAC, the max of each channel, and
R-MAC (Tolias et al., "Particular object retrieval with integral max-pooling of CNN
activations", ICLR 2016), the sum of the L2-normalized maxima of square regions at several
scales, its regions max-pooled with :func:`fastmtl.ops.roi_pool`. (The paper's PCA whitening,
learned on a separate image set, is left out.)"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fastmtl.ops import roi_pool

__all__ = ["mac", "rmac", "rmac_regions"]


def mac(features: Tensor) -> Tensor:
    """``[N, C, H, W] -> [N, C]``: each channel's maximum, L2-normalized."""
    return F.normalize(features.amax((2, 3)), dim=1)


def rmac_regions(height: int, width: int, levels: int = 3) -> Tensor:
    """R-MAC's square regions of an ``height x width`` map, ``[R, 4]`` as ``(x1, y1, x2, y2)``
    inclusive cell corners: at level ``l`` (1 to ``levels``) squares of side ``2 min(H, W) /
    (l + 1)`` (at least 1 cell), placed uniformly with at least 40% overlap to cover the map."""
    if height < 1 or width < 1 or levels < 1:
        raise ValueError(f"height, width and levels must be >= 1, got {height}, {width}, {levels}")
    out = []
    for level in range(1, levels + 1):
        side = max(1, math.floor(2 * min(height, width) / (level + 1)))
        ys, xs = (_starts(n, side) for n in (height, width))
        out += [(x, y, x + side - 1, y + side - 1) for y in ys for x in xs]
    return torch.tensor(sorted(set(out)), dtype=torch.float32)


def _starts(n: int, side: int) -> list:
    """Start cells of squares of ``side`` covering ``n`` cells, neighbours overlapping >= 40%."""
    if side >= n:
        return [0]
    count = math.ceil((n - side) / (0.6 * side)) + 1
    return sorted({round(i * (n - side) / (count - 1)) for i in range(count)})


def rmac(features: Tensor, levels: int = 3) -> Tensor:
    """``[N, C, H, W] -> [N, C]``: R-MAC, each region's channel maxima (``roi_pool`` to 1 x 1),
    L2-normalized, summed over the regions, L2-normalized."""
    n, c, h, w = features.shape
    regions = rmac_regions(h, w, levels).to(features)
    r = len(regions)
    images = torch.arange(n, device=features.device, dtype=features.dtype).repeat_interleave(r)
    rois = torch.cat((images[:, None], regions.repeat(n, 1)), 1)
    pooled = roi_pool(features, rois, 1, 1.0).reshape(n, r, c)
    return F.normalize(F.normalize(pooled, dim=2).sum(1), dim=1)
