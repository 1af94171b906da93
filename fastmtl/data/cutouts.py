"""Real objects to paste into scenes: pixels, an alpha mask and a class, from installed packages.

Every source is a :class:`CutoutBank` of real pictures, each cut out by a mask derived from its own
pixels:

* ``"digits"``: scikit-learn's 1,797 handwritten 8×8 digits (``pip install scikit-learn``), 10
  classes; alpha is the ink (value / 16), the colour is flat (ink).
* ``"fashion"``: Fashion-MNIST's 70,000 28×28 clothing photos (Debian ``dataset-fashion-mnist``),
  10 classes; alpha is the item (pixels above a small threshold, holes filled), the grey shading is
  kept.
* ``"coins"``: 23 coins cut from scikit-image's ``coins`` photo by an Otsu threshold.
* ``"horse"``: scikit-image's horse silhouette (one item: its mask, flat colour).
* ``"cv_digits"``: OpenCV's ``digits.png`` (Debian ``opencv-doc``), 5,000 20×20 handwritten
  digits, 10 classes.

``split="train"`` or ``"test"`` picks disjoint items (Fashion-MNIST's own split, every fifth item of
the others), so a held-out set shows objects never seen in training; the one horse is in both.
A source that is not installed raises :class:`SourceUnavailableError` naming what to install.
"""

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SOURCES", "CutoutBank", "SourceUnavailableError", "cutout", "load_cutouts"]

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CV_DIGITS_PNG = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
FASHION_NAMES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


class SourceUnavailableError(RuntimeError):
    """An object or background source whose package is not installed."""


@dataclass(frozen=True)
class CutoutBank:
    """Cut-out objects of one source.

    ``shade[i]`` is ``[h, w]`` float32 grey shading in [0, 1] (multiplied by the object's colour),
    ``alpha[i]`` ``[h, w]`` float32 in [0, 1], ``labels`` ``[N]`` int64 in ``0..len(names) - 1``.
    ``shade`` and ``alpha`` are ``[N, h, w]`` tensors or lists of tensors of varying sizes;
    ``alpha`` is None where it is derived from each item when drawn (:func:`cutout`).
    """

    name: str
    names: tuple
    shade: object
    alpha: object
    labels: Tensor
    flippable: bool  # a mirrored item is still of its class (not so for digits)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def by_class(self) -> list:
        """Item indices of each class, as a list of int64 tensors."""
        return [(self.labels == c).nonzero()[:, 0] for c in range(len(self.names))]


def _split_every_fifth(n: int, split: str) -> Tensor:
    index = torch.arange(n)
    return index[(index % 5 == 4) == (split == "test")]


def _digits(split: str) -> CutoutBank:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SourceUnavailableError(
            "object source 'digits' needs scikit-learn: pip install scikit-learn"
        ) from e
    data = load_digits()
    keep = _split_every_fifth(len(data.target), split)
    ink = torch.from_numpy(data.images).float()[keep] / 16
    names = tuple(f"digit {d}" for d in range(10))
    labels = torch.from_numpy(data.target).long()[keep]
    return CutoutBank("digits", names, torch.ones_like(ink), ink, labels, flippable=False)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion(split: str) -> CutoutBank:
    prefix = "train" if split == "train" else "t10k"
    images, labels = (
        FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz",
        FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz",
    )
    if not (images.is_file() and labels.is_file()):
        raise SourceUnavailableError(
            f"object source 'fashion' needs Fashion-MNIST under {FASHION_DIR}: "
            "apt-get install dataset-fashion-mnist"
        )
    pixels = torch.from_numpy(_read_idx(images).copy())
    # Alpha is computed per item when drawn (see _fashion_alpha): 70,000 masks up front take seconds.
    return CutoutBank(
        "fashion", FASHION_NAMES, pixels, None, torch.from_numpy(_read_idx(labels).astype(np.int64)), True
    )


def _fashion_alpha(pixels: Tensor) -> tuple:
    """Shade and alpha of one 28×28 uint8 item: the item is every pixel above 10, its holes filled."""
    from scipy.ndimage import binary_fill_holes

    mask = binary_fill_holes(pixels.numpy() > 10)
    shade = 0.3 + 0.7 * pixels.float() / 255  # dark parts of the item still take its colour
    return shade, torch.from_numpy(mask).float()


def _skimage_data():
    try:
        import skimage.data
    except ImportError as e:
        raise SourceUnavailableError("scikit-image images need scikit-image: pip install scikit-image") from e
    return skimage.data


def _coins(split: str) -> CutoutBank:
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    photo = _skimage_data().coins().astype(np.float32) / 255
    mask = ndimage.binary_opening(ndimage.binary_fill_holes(photo > threshold_otsu(photo)), iterations=2)
    regions, n = ndimage.label(mask)
    shades, alphas = [], []
    for i, box in enumerate(ndimage.find_objects(regions)):
        own = regions[box] == i + 1
        h, w = own.shape
        # a round coin: not a speck, nor the coins of the dim top row that the threshold merges
        if own.sum() >= 400 and 0.75 <= h / w <= 1.33 and own.mean() >= 0.6:
            shades.append(torch.from_numpy(photo[box].copy()))
            alphas.append(torch.from_numpy(own.astype(np.float32)))
    keep = _split_every_fifth(len(shades), split).tolist()
    labels = torch.zeros(len(keep), dtype=torch.int64)
    return CutoutBank("coins", ("coin",), [shades[i] for i in keep], [alphas[i] for i in keep], labels, True)


def _horse(split: str) -> CutoutBank:
    alpha = torch.from_numpy(~_skimage_data().horse()).float()  # the photo is white around a black horse
    ys, xs = alpha.nonzero().unbind(1)
    alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    # 304×371 pixels: shrunk once to 128 on the longer side, not at each paste
    size = [round(128 * n / max(alpha.shape)) for n in alpha.shape]
    alpha = F.interpolate(alpha[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
    return CutoutBank(
        "horse", ("horse",), [torch.ones_like(alpha)], [alpha], torch.zeros(1, dtype=torch.int64), True
    )


def _cv_digits(split: str) -> CutoutBank:
    if not CV_DIGITS_PNG.is_file():
        raise SourceUnavailableError(
            f"object source 'cv_digits' needs {CV_DIGITS_PNG}: apt-get install opencv-doc"
        )
    from PIL import Image

    sheet = torch.from_numpy(np.asarray(Image.open(CV_DIGITS_PNG).convert("L")).copy()).float() / 255
    # 50 rows × 100 columns of 20×20 digits; every 5 rows hold one digit, 0 to 9
    cells = sheet.reshape(50, 20, 100, 20).permute(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = torch.arange(50).repeat_interleave(100) // 5
    keep = _split_every_fifth(5000, split)
    names = tuple(f"cv digit {d}" for d in range(10))
    return CutoutBank("cv_digits", names, torch.ones_like(cells[keep]), cells[keep], labels[keep], False)


SOURCES = {"digits": _digits, "fashion": _fashion, "coins": _coins, "horse": _horse, "cv_digits": _cv_digits}


@functools.cache
def load_cutouts(name: str, split: str = "train") -> CutoutBank:
    """The bank of source ``name`` (one of :data:`SOURCES`), loaded once per process."""
    if name not in SOURCES:
        raise ValueError(f"unknown object source {name!r}; choose from {sorted(SOURCES)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return SOURCES[name](split)


def cutout(bank: CutoutBank, index: int) -> tuple:
    """``(shade [h, w], alpha [h, w])`` float32 of item ``index``."""
    if bank.alpha is None:
        return _fashion_alpha(bank.shade[index])
    return bank.shade[index], bank.alpha[index]
