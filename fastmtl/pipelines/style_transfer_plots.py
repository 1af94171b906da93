"""PNG output of the style-transfer pipeline: the image, a content | style | result panel, and
the loss terms over the optimization (matplotlib, Agg backend)."""

from pathlib import Path

import torch
from torch import Tensor

from fastmtl.pipelines._figures import pyplot, save_figure

__all__ = ["save_loss_plot", "save_panel", "save_png"]


def _to_pil(image: Tensor):
    from PIL import Image

    array = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def save_png(image: Tensor, path) -> str:
    """``image`` [3, H, W] in [0, 1] as an 8-bit PNG."""
    _to_pil(image).save(path)
    return str(path)


def save_panel(images: list, path, gap: int = 4) -> str:
    """The images (each [3, H, W], same H) side by side on white."""
    from PIL import Image

    tiles = [_to_pil(im) for im in images]
    height = max(t.height for t in tiles)
    panel = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), height), "white")
    x = 0
    for t in tiles:
        panel.paste(t, (x, 0))
        x += t.width + gap
    panel.save(path)
    return str(path)


def save_loss_plot(history: list, path: Path) -> str:
    """The unweighted terms (content, style, tv) and the weighted total per evaluation, log scale."""
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    for key in ("total", "content", "style", "tv"):
        values = [h[key] for h in history]
        if values and min(values) > 0:
            ax.plot(values, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return str(save_figure(fig, path))
