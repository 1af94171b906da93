"""A deterministic detection dataset of real cut-out objects composited onto real backgrounds.

Each image is a crop of a real texture or photo (:mod:`fastmtl.data.backgrounds`) with
``min_objects`` to ``max_objects`` real objects pasted on it (:mod:`fastmtl.data.cutouts`:
handwritten digits, coins and a horse silhouette by default; Fashion-MNIST or OpenCV's digits
when installed). Each object gets a random class (uniform), item of that class, scale (its longer
side ``min_scale`` to ``max_scale`` of the image side, log-uniform), position and colour, and is
mirrored where that keeps its class.

Occlusion rule: objects are drawn in order, later ones over earlier ones. An object's pixels are
those where its alpha is at least 0.5 (the softer fringe outside them is blended in but belongs to
no object). A new object is placed only where, afterwards, every object (earlier ones included)
still shows at least ``min_visible`` of its own pixels; it tries ``tries`` positions and is skipped
(another one is drawn) if none fits. So every object in the image is labelled and none is hidden
beyond ``min_visible``. A box is the tight ``(x1, y1, x2, y2)`` pixel box of the object's visible
pixels (pixel ``j`` covers ``[j, j + 1)``): a partly covered object's box shrinks to what is seen.

Counts: after twice the wanted number of draws a scene stops short. Fewer than ``min_objects``
happens only in crowded settings (no image in 500 with the defaults and ``min_objects=
max_objects=6``; 1 in 500 with 4 objects and ``min_visible=1``); the first object fits wherever
it lands (there is nothing to hide), so there is always at least one.

Image ``i`` of seed ``s`` comes from its own generator, seeded from ``(s, i)``: any image can be
made on its own, in any order, and is the same every time.
"""

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from fastmtl.data.backgrounds import BACKGROUNDS, load_background, random_background
from fastmtl.data.cutouts import SOURCES, cutout, load_cutouts

__all__ = [
    "CompositeConfig",
    "CompositeDataset",
    "class_mask",
    "composite_class_names",
    "make_composite_image",
]


@dataclass(frozen=True)
class CompositeConfig:
    """How the composite scenes are drawn."""

    image_size: int = 128
    sources: tuple = ("digits", "coins", "horse")  # object sources, see fastmtl.data.cutouts
    split: str = "train"  # "test" draws objects disjoint from "train" (see cutouts)
    backgrounds: tuple = BACKGROUNDS
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.15  # an object's longer side, as a fraction of the image side
    max_scale: float = 0.5
    min_visible: float = 0.5  # fraction of each object's pixels that must stay visible
    tries: int = 10  # positions tried per object before it is skipped
    min_crop: float = 0.5  # background crop side, as a fraction of the photo's shorter side
    noise: float = 0.02  # std of the Gaussian noise over the whole image
    # return the [S, S] int64 instance map (8 bytes a pixel through DataLoader workers: a detector
    # that needs only boxes can leave it out)
    instances: bool = True

    def __post_init__(self):
        if not 1 <= self.min_objects <= self.max_objects <= 255:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 255, got {self.min_objects}, {self.max_objects}"
            )
        if not 0 < self.min_scale <= self.max_scale <= 1 or self.min_scale * self.image_size < 4:
            raise ValueError(
                f"need 4 / image_size <= min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale} "
                f"at image_size {self.image_size}"
            )
        if not 0 <= self.min_visible <= 1 or self.tries < 1 or not 0 < self.min_crop <= 1:
            raise ValueError("need 0 <= min_visible <= 1, tries >= 1 and 0 < min_crop <= 1")
        unknown = [s for s in self.sources if s not in SOURCES] + [
            b for b in self.backgrounds if b not in BACKGROUNDS
        ]
        if not self.sources or not self.backgrounds or unknown:
            raise ValueError(f"need known, non-empty sources and backgrounds; unknown: {unknown}")


@functools.cache
def _catalog(sources: tuple, split: str) -> tuple:
    """``(names, [(bank, item indices), ...])``, one entry per class, in the order of ``sources``."""
    names, classes = [], []
    for source in sources:
        bank = load_cutouts(source, split)
        names += bank.names
        classes += [(bank, items) for items in bank.by_class()]
    return tuple(names), classes


def composite_class_names(config: CompositeConfig = CompositeConfig()) -> tuple:
    """``("background", <class 1>, ...)``: label ``k`` of the dataset is ``names[k]``."""
    return ("background",) + _catalog(config.sources, config.split)[0]


def _rand(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, high: int) -> int:
    """An int in [0, high)."""
    return int(torch.randint(high, (1,), generator=gen))


def _draw_object(gen: torch.Generator, config: CompositeConfig) -> tuple:
    """``(label, rgb [3, h, w], alpha [h, w])`` of one random object at a random scale."""
    classes = _catalog(config.sources, config.split)[1]
    label = _randint(gen, len(classes))
    bank, items = classes[label]
    shade, alpha = cutout(bank, int(items[_randint(gen, len(items))]))
    log_lo, log_hi = math.log(config.min_scale), math.log(config.max_scale)
    side = config.image_size * math.exp(log_lo + (log_hi - log_lo) * _rand(gen))
    h0, w0 = alpha.shape
    h, w = max(1, round(side * h0 / max(h0, w0))), max(1, round(side * w0 / max(h0, w0)))
    both = torch.stack([shade, alpha])[None]
    if h < h0:
        both = F.interpolate(both, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    else:  # bicubic: an 8×8 digit blown up bilinearly shows its grid
        both = F.interpolate(both, size=(h, w), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    if bank.flippable and _rand(gen) < 0.5:
        both = both.flip(-1)
    colour = 0.1 + 0.9 * torch.rand(3, 1, 1, generator=gen)
    # a crisper edge than the resampling's (0.5 stays the object's edge): faint halos look fake
    alpha = ((both[0, 1] - 0.5) * 3 + 0.5).clamp_(0.0, 1.0)
    return label + 1, colour * both[0, 0], alpha


class _Scene:
    """The image being drawn, its instance map and each object's pixel counts."""

    def __init__(self, background: Tensor):
        size = background.shape[-1]
        self.image = background
        self.instances = torch.zeros(size, size, dtype=torch.int64)  # k + 1 where object k shows
        self.area, self.visible, self.rects, self.labels = [], [], [], []

    def try_place(self, label: int, rgb: Tensor, alpha: Tensor, x: int, y: int, min_visible: float) -> bool:
        """Pastes the object at ``(x, y)`` unless that would hide too much of any object."""
        h, w = alpha.shape
        mask = alpha >= 0.5
        area = int(mask.sum())
        region = self.instances[y : y + h, x : x + w]
        hidden = torch.bincount(region[mask], minlength=len(self.area) + 1)[1:].tolist()
        visible = [v - c for v, c in zip(self.visible, hidden)]
        if area == 0 or any(v < min_visible * a for v, a in zip(visible, self.area)):
            return False
        region[mask] = len(self.area) + 1
        patch = self.image[:, y : y + h, x : x + w]
        patch.mul_(1 - alpha).add_(rgb * alpha)
        self.visible = visible + [area]
        self.area.append(area)
        self.rects.append((x, y, w, h))
        self.labels.append(label)
        return True

    def boxes(self) -> Tensor:
        """``[K, 4]`` float32 tight boxes of each object's visible pixels."""
        boxes = []
        for k, (x, y, w, h) in enumerate(self.rects):
            own = self.instances[y : y + h, x : x + w] == k + 1
            rows, cols = own.any(1).nonzero()[:, 0], own.any(0).nonzero()[:, 0]
            boxes.append([x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1])
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def make_composite_image(gen: torch.Generator, config: CompositeConfig = CompositeConfig()) -> tuple:
    """Draws one scene with ``gen``.

    Returns:
        ``(image, target)``: ``image`` ``[3, S, S]`` float32 in [0, 1]; ``target`` a dict of
        ``boxes`` ``[K, 4]`` float32 ``(x1, y1, x2, y2)`` inside the image, ``labels`` ``[K]``
        int64 in ``1..num_classes``, ``visible`` ``[K]`` float32 (fraction of each object's pixels
        seen) and, unless ``config.instances`` is False, ``instances`` ``[S, S]`` int64 (``k + 1``
        where object ``k`` shows, 0 elsewhere).
    """
    s = config.image_size
    scene = _Scene(random_background(gen, config.backgrounds, s, min_crop=config.min_crop))
    wanted = config.min_objects + _randint(gen, config.max_objects - config.min_objects + 1)
    for _ in range(2 * wanted):  # skipped objects are replaced by new draws, up to `wanted` of them
        if len(scene.labels) == wanted:
            break
        label, rgb, alpha = _draw_object(gen, config)
        h, w = alpha.shape
        for _attempt in range(config.tries):
            if scene.try_place(
                label, rgb, alpha, _randint(gen, s - w + 1), _randint(gen, s - h + 1), config.min_visible
            ):
                break
    image = scene.image.add_(config.noise * torch.randn(3, s, s, generator=gen)).clamp_(0.0, 1.0)
    target = {
        "boxes": scene.boxes(),
        "labels": torch.tensor(scene.labels, dtype=torch.int64),
        "visible": torch.tensor(scene.visible, dtype=torch.float32) / torch.tensor(scene.area).clamp(min=1),
    }
    if config.instances:
        target["instances"] = scene.instances
    return image, target


def class_mask(target: dict) -> Tensor:
    """``[S, S]`` int64 class of each pixel (0: background) from a target's ``instances``."""
    lookup = torch.cat([torch.zeros(1, dtype=torch.int64), target["labels"]])
    return lookup[target["instances"]]


class CompositeDataset(Dataset):
    """``num_images`` composite scenes: item ``i`` is image ``start + i`` of the stream of ``seed``.

    Items are ``(image [3, S, S] float32, target)`` with the target of :func:`make_composite_image`.
    A held-out split is another ``start`` (same backgrounds and objects) or
    ``CompositeConfig(split="test")`` (objects never seen in training). Sources are loaded when the
    dataset is made, so a missing one fails here, and DataLoader workers that fork share them.
    Images are drawn at each access (``cache=True`` keeps them: 64 KiB of pixels each at 128²).
    """

    def __init__(
        self,
        num_images: int,
        *,
        seed: int = 0,
        start: int = 0,
        config: CompositeConfig = CompositeConfig(),
        cache: bool = False,
    ):
        if num_images < 0 or start < 0:
            raise ValueError(f"num_images and start must be >= 0, got {num_images} and {start}")
        self.num_images, self.seed, self.start, self.config = num_images, seed, start, config
        self.class_names = composite_class_names(config)
        self.num_classes = len(self.class_names) - 1  # foreground classes; label 0 is background
        for name in config.backgrounds:
            load_background(name)
        self._cache: Optional[list] = [self._draw(i) for i in range(num_images)] if cache else None

    def _draw(self, index: int) -> tuple:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.start + index) % 2**63)
        return make_composite_image(gen, self.config)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index %= self.num_images
        return self._cache[index] if self._cache is not None else self._draw(index)
