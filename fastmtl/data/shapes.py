"""A deterministic synthetic detection dataset: coloured shapes on a noisy background.

Each image holds 1 to ``max_shapes`` filled shapes (label 1 rectangle, 2 ellipse, 3 triangle; 0
is background), in random colours, on a dark background with Gaussian noise. Its boxes are the
tight ``(x1, y1, x2, y2)`` pixel bounds of each shape (pixel ``j`` covers ``[j, j + 1)``), so a
box is exactly where its shape is. Image ``i`` of seed ``s`` comes from its own generator, seeded
from ``(s, i)``: any image can be made on its own, in any order, and is the same every time.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SHAPE_NAMES", "ShapesConfig", "ShapesDataset", "detection_collate", "make_shapes_image"]

SHAPE_NAMES = ("background", "rectangle", "ellipse", "triangle")


@dataclass(frozen=True)
class ShapesConfig:
    """How the shapes images are drawn."""

    image_size: int = 128
    min_shapes: int = 1
    max_shapes: int = 4
    min_size: int = 14  # side of a shape's box, in pixels
    max_size: int = 48
    max_overlap: float = 0.1  # IoU allowed between two shapes' boxes
    noise: float = 0.05  # std of the background noise

    def __post_init__(self):
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {self.min_shapes}, {self.max_shapes}")
        if not 4 <= self.min_size <= self.max_size <= self.image_size:
            raise ValueError(
                f"need 4 <= min_size <= max_size <= image_size, got "
                f"{self.min_size}, {self.max_size}, {self.image_size}"
            )


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _iou(a: tuple, b: tuple) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _shape_mask(label: int, box: tuple, gen: torch.Generator, xs: Tensor, ys: Tensor) -> Tensor:
    """Boolean [H, W] mask of one shape drawn inside ``box`` (pixel centres at j + 0.5)."""
    x1, y1, x2, y2 = box
    if label == 1:  # rectangle
        return (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    if label == 2:  # ellipse inscribed in the box
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    # triangle: a base along one side of the box, the apex somewhere on the opposite side
    t = float(torch.rand((), generator=gen))
    u, v = xs - x1, ys - y1  # box coordinates
    w, h = x2 - x1, y2 - y1
    side = _randint(gen, 0, 3)
    if side in (2, 3):  # base on the left or right side: transpose the problem
        u, v, w, h = v, u, h, w
    if side in (1, 3):  # base on top instead of bottom
        v = h - v
    a = t * w  # apex at (a, 0), base from (0, h) to (w, h)
    left = u * h >= a * (h - v)  # right of the edge apex -> (0, h)
    right = (w - u) * h >= (w - a) * (h - v)  # left of the edge apex -> (w, h)
    return left & right & (v >= 0) & (v < h) & (u >= 0) & (u < w)


def make_shapes_image(gen: torch.Generator, config: ShapesConfig = ShapesConfig()) -> tuple:
    """Draws one image with ``gen``.

    Returns:
        ``(image, boxes, labels)``: ``image`` ``[3, S, S]`` float32 in [0, 1], ``boxes``
        ``[K, 4]`` float32 ``(x1, y1, x2, y2)`` inside the image, ``labels`` ``[K]`` int64 in 1..3.
    """
    s = config.image_size
    background = torch.rand(3, 1, 1, generator=gen) * 0.3
    image = background + config.noise * torch.randn(3, s, s, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    n = _randint(gen, config.min_shapes, config.max_shapes)
    placed, boxes, labels = [], [], []
    for _ in range(n):
        for _attempt in range(20):
            w = _randint(gen, config.min_size, config.max_size)
            h = _randint(gen, max(config.min_size, w // 2), min(config.max_size, 2 * w))
            x1, y1 = _randint(gen, 0, s - w), _randint(gen, 0, s - h)
            box = (x1, y1, x1 + w, y1 + h)
            if all(_iou(box, other) <= config.max_overlap for other in placed):
                break
        else:
            continue  # no room for this one
        label = _randint(gen, 1, 3)
        colour = 0.35 + 0.65 * torch.rand(3, 1, generator=gen)
        mask = _shape_mask(label, box, gen, xs, ys)
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        image[:, mask] = colour
        placed.append(box)
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        labels.append(label)
    boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return image.clamp_(0.0, 1.0), boxes_t, torch.tensor(labels, dtype=torch.int64)


class ShapesDataset(Dataset):
    """``num_images`` shapes images: item ``i`` is image ``start + i`` of the stream of ``seed``.

    Items are ``(image [3, S, S] float32, {"boxes": [K, 4] float32, "labels": [K] int64})``. A
    held-out split is the same seed with another ``start`` (e.g. ``start=num_train``).
    Images are drawn once and cached (``cache=False`` draws them at each access).
    """

    num_classes = 3  # foreground classes; label 0 is background

    def __init__(
        self,
        num_images: int,
        *,
        seed: int = 0,
        start: int = 0,
        config: ShapesConfig = ShapesConfig(),
        cache: bool = True,
    ):
        if num_images < 0 or start < 0:
            raise ValueError(f"num_images and start must be >= 0, got {num_images} and {start}")
        self.num_images, self.seed, self.start, self.config = num_images, seed, start, config
        self._cache: Optional[list] = [self._draw(i) for i in range(num_images)] if cache else None

    def _draw(self, index: int) -> tuple:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.start + index) % 2**63)
        image, boxes, labels = make_shapes_image(gen, self.config)
        return image, {"boxes": boxes, "labels": labels}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index %= self.num_images
        return self._cache[index] if self._cache is not None else self._draw(index)


def detection_collate(batch: list) -> tuple:
    """``[(image, target), ...]`` -> ``(images [B, 3, S, S], [target, ...])``."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
