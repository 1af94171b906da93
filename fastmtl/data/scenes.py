"""A multi-task scenes dataset: the composite scenes of :mod:`fastmtl.data.composite` (real
cut-out objects on real textures and photos) with every label the multi-task pipelines train on,
from the same images, as the slides' NYUD-v2 experiment has (seeds/001, seeds/002):

- ``mask`` ``[S, S]`` int64: the class of each pixel (0: background), for segmentation;
- ``depth`` ``[S, S]`` float32 metres: the background is a receding plane (far at the top of the
  image, nearer at the bottom, its tilt and distance drawn per image); each object is a flat
  cut-out facing the camera at its own depth, nearer than every background pixel, and an object
  pasted later (so drawn over the earlier ones) is nearer than each earlier one: the depth order
  agrees with the occlusions by construction;
- ``boxes`` ``[K, 4]``, ``labels`` ``[K]``, ``instances`` ``[S, S]``: detection and instances, as
  the composite scenes give them;
- ``present`` ``[C]`` float32: which foreground classes show in the image (multi-label
  classification of the image).

``coarse=True`` makes each object source one class (digit, coin, horse: 3 classes and background
instead of 12 and background) in ``labels``, ``mask`` and ``present``.

The depths come from a generator of their own, seeded from the image's, so the images are those
of :class:`~fastmtl.data.composite.CompositeDataset` with the same seed. The pixels are real; the
layout, the depths and the geometry are synthetic: a depth network can learn "objects are nearer
than the background, later ones nearer still" and the background ramp, not real 3-D shape.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fastmtl.data.composite import CompositeConfig, CompositeDataset, class_mask
from fastmtl.data.cutouts import load_cutouts

__all__ = ["SceneDataset", "scene_depth"]

BACKGROUND_DEPTH = (4.0, 10.0)  # metres: the background plane's nearest and farthest values
OBJECT_DEPTH = (1.0, 3.5)  # metres: the range object depths are drawn from


def scene_depth(instances: Tensor, gen: torch.Generator) -> tuple:
    """``(depth [S, S] float32, object depths [K] float32)`` for an instance map whose object
    ``k`` (pixels ``k + 1``) was pasted k-th: object depths strictly decreasing with k."""
    s = instances.shape[-1]
    k = int(instances.max()) if instances.numel() else 0
    near, far = BACKGROUND_DEPTH
    top = far - torch.rand((), generator=gen) * 2.0  # the plane's depth at the top row
    bottom = near + torch.rand((), generator=gen) * 1.0
    rows = torch.linspace(0.0, 1.0, s).unsqueeze(1).expand(s, s)
    depth = top + (bottom - top) * rows
    lo, hi = OBJECT_DEPTH
    objects = (lo + (hi - lo) * torch.rand(k, generator=gen)).sort(descending=True).values
    if k:
        # strictly decreasing even when two draws tie
        objects = objects - torch.arange(k, dtype=objects.dtype) * 1e-3
    shown = instances > 0
    depth = depth.clone()
    depth[shown] = objects[instances[shown] - 1]
    return depth.float(), objects.float()


class SceneDataset(Dataset):
    """``num_images`` multi-task scenes: item ``i`` is ``(image [3, S, S], target)`` with the
    target keys of the module docstring. Arguments as :class:`CompositeDataset`'s."""

    def __init__(
        self,
        num_images: int,
        *,
        seed: int = 0,
        start: int = 0,
        config: CompositeConfig | None = None,
        cache: bool = False,
        coarse: bool = False,
    ) -> None:
        config = config or CompositeConfig()
        if not config.instances:
            raise ValueError("SceneDataset needs config.instances=True (the masks and depths come from it)")
        self.scenes = CompositeDataset(num_images, seed=seed, start=start, config=config)
        self.class_names, self.num_classes = self.scenes.class_names, self.scenes.num_classes
        self._group = None  # fine label -> coarse label, when coarse
        if coarse:
            counts = [len(load_cutouts(src, config.split).names) for src in config.sources]
            self._group = torch.cat(
                [torch.zeros(1, dtype=torch.int64)] + [torch.full((n,), i + 1) for i, n in enumerate(counts)]
            )
            self.class_names, self.num_classes = ("background", *config.sources), len(config.sources)
        self._cache = [self._draw(i) for i in range(num_images)] if cache else None

    def _draw(self, index: int) -> tuple:
        image, target = self.scenes[index]
        s = self.scenes
        gen = torch.Generator().manual_seed((s.seed * 1_000_003 + s.start + index) % 2**63 ^ 0x5EED)
        depth, objects = scene_depth(target["instances"], gen)
        if self._group is not None:
            target = {**target, "labels": self._group[target["labels"]]}
        present = torch.zeros(self.num_classes)
        present[target["labels"] - 1] = 1.0
        return image, {
            **target,
            "mask": class_mask(target),
            "depth": depth,
            "object_depth": objects,
            "present": present,
        }

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        return self._cache[index] if self._cache is not None else self._draw(index)
