"""Real backgrounds for the composite scenes: textures and photos that scikit-image ships.

A background is a random square crop of one of them (a random fraction of its shorter side, so the
scale varies), resized to the image, maybe mirrored, with its colour and brightness jittered. The
photos have things in them (a cat, an astronaut, a rocket): unlabelled clutter, as in real scenes.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fastmtl.data.cutouts import SourceUnavailableError

__all__ = ["BACKGROUNDS", "load_background", "random_background"]

# skimage.data names: three grey textures, six colour photos (all small enough to keep in memory)
BACKGROUNDS = (
    "brick", "grass", "gravel", "coffee", "chelsea",
    "astronaut", "rocket", "immunohistochemistry", "camera",
)  # fmt: skip


@functools.cache
def load_background(name: str) -> Tensor:
    """``[3, H, W]`` float32 in [0, 1] of ``skimage.data.<name>()`` (grey ones repeated)."""
    try:
        import skimage.data
    except ImportError as e:
        raise SourceUnavailableError("backgrounds need scikit-image: pip install scikit-image") from e
    if name not in BACKGROUNDS:
        raise ValueError(f"unknown background {name!r}; choose from {BACKGROUNDS}")
    pixels = torch.from_numpy(getattr(skimage.data, name)()).float() / 255
    if pixels.dim() == 2:
        pixels = pixels[None].expand(3, -1, -1)
    else:
        pixels = pixels[..., :3].permute(2, 0, 1)
    return pixels.contiguous()


@functools.cache
def _halved(name: str, times: int) -> Tensor:
    """The photo shrunk 2**times times, so a big crop is not antialiased down from full size."""
    if times == 0:
        return load_background(name)
    return F.avg_pool2d(_halved(name, times - 1)[None], 2, ceil_mode=True)[0]


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def random_background(gen: torch.Generator, names: tuple, size: int, *, min_crop: float = 0.3) -> Tensor:
    """A ``[3, size, size]`` float32 background drawn with ``gen`` from the images ``names``.

    The crop's side is a fraction in ``[min_crop, 1]`` of the image's shorter side.
    """
    name = names[int(torch.randint(len(names), (1,), generator=gen))]
    _, h, w = load_background(name).shape
    side = max(2, round(_uniform(gen, min_crop, 1.0) * min(h, w)))
    y = int(torch.randint(h - side + 1, (1,), generator=gen))
    x = int(torch.randint(w - side + 1, (1,), generator=gen))
    times = max(0, int(math.log2(side / size)))  # the crop still has at least `size` pixels a side
    photo, side, y, x = _halved(name, times), side >> times, y >> times, x >> times
    crop = photo[None, :, y : y + side, x : x + side]
    image = F.interpolate(
        crop, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size
    )[0]
    if bool(torch.rand((), generator=gen) < 0.5):
        image = image.flip(-1)
    gain = 0.75 + 0.5 * torch.rand(3, 1, 1, generator=gen)  # colour cast: tints the grey textures too
    contrast = _uniform(gen, 0.6, 1.1)
    mean = image.mean()
    return ((image - mean) * contrast + mean) * gain
