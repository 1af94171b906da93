"""Random image augmentations on batches, in torch (no extra package): the views that make an
identity of one photo for the Siamese demos, and training-time jitter."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_views"]


def random_views(
    images: Tensor,
    generator: torch.Generator,
    *,
    degrees: float = 10.0,
    scale: float = 0.1,
    shift: float = 0.08,
    brightness: float = 0.15,
    contrast: float = 0.2,
    noise: float = 0.02,
    flip: bool = False,
) -> Tensor:
    """One random view of each image of ``images [N, C, H, W]`` (values in [0, 1]): a rotation
    within ``degrees``, a scale within ``1 +- scale``, a shift within ``shift`` of the side, an
    optional horizontal flip, then brightness, contrast and Gaussian noise; clipped to [0, 1]."""
    n = images.shape[0]

    def uniform(*shape):
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(n) * math.radians(degrees)
    zoom = 1 + uniform(n) * scale
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / zoom * mirror
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom * mirror
    theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, :, 2] = uniform(n, 2) * 2 * shift
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False, padding_mode="border")
    mean = out.mean((1, 2, 3), keepdim=True)
    gain = (1 + uniform(n, 1, 1, 1) * contrast).to(images)
    out = (out - mean) * gain + mean + (uniform(n, 1, 1, 1) * brightness).to(images)
    out = out + noise * torch.randn(out.shape, generator=generator).to(images)
    return out.clamp(0, 1)
