"""A loader of real RGB-D segmentation data in the NYUD-v2 layout, for users who have it (no such
data ships offline; the tests write a tiny folder and one from scikit-image's real stereo pair).

Layout under ``root`` (folder names configurable), files matched by name stem:

- ``images/<stem>.(png|jpg|...)``: RGB images;
- ``labels/<stem>.png``: single-channel class labels, ``void_label`` (NYUD-v2: 0) where no class
  is annotated; returned with void as ``ignore_index`` and the classes after it shifted down by
  one (NYUD-v2's 1..40 become 0..39), or as they are with ``void_label=None``;
- ``depth/<stem>.npy`` (float metres) or ``depth/<stem>.png`` (16-bit, ``depth_scale`` units per
  metre: 1000 for millimetres); 0 marks a missing measurement (as the Kinect's holes);
- optionally ``<split>.txt`` in ``root``: the stems of a split, one per line.

Items are ``(image [3, H, W] float32 in [0, 1], {"mask": [H, W] int64, "depth": [H, W] float32})``;
a missing label or depth folder leaves that key out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["NYUDFolder"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")


class NYUDFolder(Dataset):
    """``NYUDFolder(root, split=None)``: the layout of the module docstring."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        images: str = "images",
        labels: str = "labels",
        depth: str = "depth",
        void_label: int | None = 0,
        ignore_index: int = 255,
        depth_scale: float = 1000.0,
    ) -> None:
        self.root = Path(root)
        if not (self.root / images).is_dir():
            raise FileNotFoundError(f"root: no {images}/ folder under {self.root}")
        if depth_scale <= 0:
            raise ValueError(f"depth_scale must be > 0, got {depth_scale}")
        found = {
            p.stem: p for p in sorted((self.root / images).iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES
        }
        if split is not None:
            listed = (self.root / f"{split}.txt").read_text().split()
            missing = [s for s in listed if s not in found]
            if missing:
                raise FileNotFoundError(f"split {split!r}: no image for {missing[:5]}")
            found = {s: found[s] for s in listed}
        self.stems, self._images = list(found), found
        self._labels = self.root / labels if (self.root / labels).is_dir() else None
        self._depth = self.root / depth if (self.root / depth).is_dir() else None
        self.void_label, self.ignore_index, self.depth_scale = void_label, ignore_index, depth_scale

    def __len__(self) -> int:
        return len(self.stems)

    def _mask(self, stem: str) -> torch.Tensor:
        from PIL import Image

        raw = torch.from_numpy(np.asarray(Image.open(self._labels / f"{stem}.png")).astype(np.int64))
        if raw.dim() != 2:
            raise ValueError(
                f"labels/{stem}.png: a single-channel label image expected, got shape {list(raw.shape)}"
            )
        if self.void_label is None:
            return raw
        mask = torch.where(raw > self.void_label, raw - 1, raw)
        return mask.masked_fill(raw == self.void_label, self.ignore_index)

    def _depth_map(self, stem: str) -> torch.Tensor:
        from PIL import Image

        npy, png = self._depth / f"{stem}.npy", self._depth / f"{stem}.png"
        if npy.is_file():
            return torch.from_numpy(np.load(npy).astype(np.float32))
        if png.is_file():
            return torch.from_numpy(np.asarray(Image.open(png)).astype(np.float32) / self.depth_scale)
        raise FileNotFoundError(f"depth: neither {npy.name} nor {png.name} in {self._depth}")

    def __getitem__(self, index: int) -> tuple:
        from PIL import Image

        stem = self.stems[index]
        rgb = np.asarray(Image.open(self._images[stem]).convert("RGB"), dtype=np.float32) / 255.0
        image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        target = {}
        if self._labels is not None:
            target["mask"] = self._mask(stem)
        if self._depth is not None:
            target["depth"] = self._depth_map(stem)
        for key, value in target.items():
            if value.shape != image.shape[1:]:
                raise ValueError(
                    f"{stem}: {key} {list(value.shape)} does not match the image {list(image.shape[1:])}"
                )
        return image, target
