"""A PNG grid of detection samples with their boxes and class names, to look at a dataset."""

from pathlib import Path

import torch

__all__ = ["save_preview"]

_PALETTE = ((255, 64, 64), (64, 220, 64), (80, 140, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230))


def save_preview(path, dataset, n: int = 8, *, columns: int = 4, scale: int = 2, class_names=None) -> Path:
    """Writes items ``0..n-1`` of ``dataset`` (``(image, {"boxes", "labels"})``) as a PNG grid.

    Images are enlarged ``scale`` times (nearest) so small ones stay readable; class names come from
    ``class_names`` or ``dataset.class_names`` (else the label numbers). Needs Pillow.
    """
    from PIL import Image, ImageDraw

    names = class_names if class_names is not None else getattr(dataset, "class_names", None)
    n = min(n, len(dataset))
    if n < 1:
        raise ValueError("need at least one image to preview")
    size = dataset[0][0].shape[-1] * scale
    rows = -(-n // columns)
    grid = Image.new("RGB", (min(n, columns) * size, rows * size))
    for i in range(n):
        image, target = dataset[i]
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
        draw = ImageDraw.Draw(tile)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            colour = _PALETTE[label % len(_PALETTE)]
            x1, y1, x2, y2 = (round(v * scale) for v in box)
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour)  # PIL's corner is inclusive
            draw.text((x1 + 2, y1 + 1), names[label] if names else str(label), fill=colour)
        grid.paste(tile, ((i % columns) * size, (i // columns) * size))
    path = Path(path)
    grid.save(path)
    return path
