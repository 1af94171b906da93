"""MultiScaleRoIAlign: RoI align over a feature pyramid, as ``torchvision.ops.MultiScaleRoIAlign``.

Each box is pooled from one level, chosen by the FPN rule (Lin et al. 2017, eq. 1)
``k = floor(k0 + log2(sqrt(area) / s0) + 1e-6)`` clamped to the levels present, with
``s0 = canonical_scale`` and ``k0 = canonical_level``. The scale of each level is inferred from
its size against the largest image, as a power of two.
"""

import math

import torch
from torch import Tensor, nn

from fastmtl.ops._checks import InputError
from fastmtl.ops.roi import roi_align

__all__ = ["MultiScaleRoIAlign", "infer_scale", "map_levels"]


def infer_scale(feature: Tensor, image_size) -> float:
    """The power of two nearest ``feature height / image height`` (the height decides, as in
    torchvision)."""
    return 2.0 ** round(math.log2(feature.shape[-2] / image_size[0]))


def map_levels(
    boxes: list,
    k_min: int,
    k_max: int,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """The pyramid level of every box (concatenated over the list), as an index from ``k_min``."""
    b = torch.cat(list(boxes))
    if b.dtype in (torch.float16, torch.bfloat16):
        b = b.float()  # the area of a large box overflows float16
    side = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    level = torch.floor(
        canonical_level + torch.log2(side / canonical_scale) + torch.tensor(eps, dtype=side.dtype)
    )
    return (level.clamp(min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """RoI align from the pyramid level that suits each box's size.

    Args:
        featmap_names: the keys of the feature dict to pool from, finest first.
        output_size: ``int`` or ``(height, width)``.
        sampling_ratio: as in :func:`fastmtl.ops.roi_align`.
        canonical_scale, canonical_level: ``s0`` and ``k0`` of the level rule (keyword-only).

    ``forward(x, boxes, image_shapes)``: ``x`` a dict of ``Tensor[N, C, H_l, W_l]``; ``boxes`` a
    list of ``N`` ``Tensor[L, 4]`` in image coordinates; ``image_shapes`` the ``(height, width)``
    of each image before the backbone. Returns ``Tensor[sum L, C, *output_size]``.

    Unlike torchvision's, the scales are inferred on every call (torchvision keeps the first
    call's), so the module holds no state.
    """

    def __init__(self, featmap_names: list, output_size, sampling_ratio: int, *, canonical_scale: int = 224,
                 canonical_level: int = 4):  # fmt: skip
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: dict, boxes: list, image_shapes: list) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise InputError(f"x holds none of featmap_names {self.featmap_names}, got keys {list(x)}")
        if not image_shapes:
            raise InputError("image_shapes must not be empty")
        if not isinstance(boxes, (list, tuple)):
            raise InputError(f"boxes must be a list of Tensor[L, 4], got {type(boxes).__name__}")
        largest = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [infer_scale(f, largest) for f in features]
        if len(features) == 1:
            return roi_align(features[0], boxes, self.output_size, scales[0], self.sampling_ratio)
        k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
        levels = map_levels(boxes, k_min, k_max, self.canonical_scale, self.canonical_level)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, scales)):
            idx = torch.nonzero(levels == level).flatten()
            pooled = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio)
            result = result.index_put((idx,), pooled.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
