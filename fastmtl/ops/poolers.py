"""MultiScaleRoIAlign: RoI align over a feature pyramid, as ``torchvision.ops.MultiScaleRoIAlign``.

Each box is pooled from one level, chosen by the FPN rule (Lin et al. 2017, eq. 1)
``k = floor(k0 + log2(sqrt(area) / s0) + 1e-6)`` clamped to the levels present, with
``s0 = canonical_scale`` and ``k0 = canonical_level``. The scale of each level is inferred from
its size against the largest image, as a power of two.
"""

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from fastmtl.ops._checks import InputError
from fastmtl.ops.roi import _compiled, _list_to_rois, roi_align

__all__ = ["MultiScaleRoIAlign", "infer_scale", "map_levels"]


def _log2(x: float) -> float:
    # (math.log2 does not script; a CPU scalar, no device involved.)
    return float(torch.tensor(x, dtype=torch.float64).log2())


def infer_scale(feature: Tensor, image_size: list[int]) -> float:
    """The power of two nearest ``feature height / image height`` (the height decides, as in
    torchvision)."""
    return 2.0 ** round(_log2(feature.shape[-2] / image_size[0]))


def map_levels(
    boxes: list[Tensor],
    k_min: int,
    k_max: int,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """The pyramid level of every box (concatenated over the list), as an index from ``k_min``."""
    b = torch.cat(boxes)
    if b.dtype == torch.float16 or b.dtype == torch.bfloat16:
        b = b.float()  # the area of a large box overflows float16
    side = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    level = torch.floor(
        canonical_level + torch.log2(side / canonical_scale) + torch.tensor(eps, dtype=side.dtype)
    )
    return level.clamp(min=k_min, max=k_max).to(torch.int64) - k_min


def _check_inputs(features: list[Tensor], x, featmap_names, boxes, image_shapes) -> None:
    if not features:
        raise InputError(f"x holds none of featmap_names {featmap_names}, got keys {list(x)}")
    if not image_shapes:
        raise InputError("image_shapes must not be empty")
    if any(min(s[0], s[1]) <= 0 for s in image_shapes):
        raise InputError(f"image_shapes must hold positive (height, width) pairs, got {list(image_shapes)}")
    if not isinstance(boxes, (list, tuple)):
        raise InputError(f"boxes must be a list of Tensor[L, 4], got {type(boxes).__name__}")


@torch.fx.wrap
def _multiscale_roi_align(
    x: dict[str, Tensor],
    boxes: list[Tensor],
    image_shapes: list[tuple[int, int]],
    featmap_names: list[str],
    output_size: list[int],
    sampling_ratio: int,
    canonical_scale: int,
    canonical_level: int,
) -> Tensor:
    """The whole of MultiScaleRoIAlign.forward, one FX leaf (its dict input cannot be traced)."""
    features: list[Tensor] = []
    for k, v in x.items():
        if k in featmap_names:
            features.append(v)
    if not torch.jit.is_scripting():
        _check_inputs(features, x, featmap_names, boxes, image_shapes)
        boxes = list(boxes)
    largest = [max([s[0] for s in image_shapes]), max([s[1] for s in image_shapes])]
    scales = [infer_scale(f, largest) for f in features]
    if len(features) == 1:
        return roi_align(features[0], boxes, output_size, scales[0], sampling_ratio)
    k_min, k_max = int(-_log2(scales[0])), int(-_log2(scales[-1]))
    levels = map_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
    rois = _list_to_rois(boxes)
    # The rois with batch index -1, which the CUDA kernels skip (zeros): see the loop below.
    skipped = torch.cat([torch.full_like(rois[:, :1], -1.0), rois[:, 1:]], 1)
    first = features[0]
    result = first.new_zeros((rois.shape[0], first.shape[1], output_size[0], output_size[1]))
    for level in range(len(features)):
        feature, scale = features[level], scales[level]
        if rois.device.type == "cpu" or not _compiled(rois, "roi_align"):
            idx = torch.nonzero(levels == level).flatten()
            pooled = roi_align(feature, rois[idx], output_size, scale, sampling_ratio)
            result = result.index_put((idx,), pooled.to(result.dtype))
        else:
            # No host sync: every roi is pooled at every level, those of other levels skipped;
            # each roi is nonzero at one level.
            masked = torch.where((levels == level)[:, None], rois, skipped)
            pooled = torch.ops.fastmtl.roi_align(
                feature, masked, scale, output_size[0], output_size[1], sampling_ratio, False, False
            )
            result = result + pooled.to(result.dtype)
    return result


class MultiScaleRoIAlign(nn.Module):
    """RoI align from the pyramid level that suits each box's size.

    Args:
        featmap_names: the keys of the feature dict to pool from, finest first.
        output_size: ``int`` or ``(height, width)``.
        sampling_ratio: as in :func:`fastmtl.ops.roi_align`.
        canonical_scale, canonical_level: ``s0`` and ``k0`` of the level rule.

    ``forward(x, boxes, image_shapes)``: ``x`` a dict of ``Tensor[N, C, H_l, W_l]``; ``boxes`` a
    list of ``N`` ``Tensor[L, 4]`` in image coordinates; ``image_shapes`` the ``(height, width)``
    of each image before the backbone. Returns ``Tensor[sum L, C, *output_size]``.

    Unlike torchvision's, the scales are inferred on every call (torchvision keeps the first
    call's), so the module holds no state. Scripts with ``torch.jit.script`` and is an FX leaf.
    On CUDA no value is read back to the host: every roi is pooled at every level (those of
    other levels skipped by the kernel) rather than split by level with a sync per level.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: BroadcastingList2[int],
        sampling_ratio: int,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        self.featmap_names = list(featmap_names)
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.output_size = [int(size[0]), int(size[1])]
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        return _multiscale_roi_align(
            x, boxes, image_shapes, self.featmap_names, self.output_size, self.sampling_ratio,
            self.canonical_scale, self.canonical_level,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={tuple(self.output_size)}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
