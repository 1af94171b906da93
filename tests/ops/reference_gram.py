"""Independent float64 references of the Gram matrix and the style and content losses, written
from the formulas (einsum and sums), not from fastmtl's code."""

import torch

__all__ = ["content_ref", "gram_ref", "style_ref"]


def gram_ref(x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """G[n, k, k'] = sum_hw x[n, k, h, w] x[n, k', h, w] in float64, / (C H W) when normalize."""
    x = x.cpu().double()
    g = torch.einsum("nkhw,nlhw->nkl", x, x)
    n, c, h, w = x.shape
    return g / (c * h * w) if normalize and c * h * w else g


def style_ref(x: torch.Tensor, target: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-sample style loss [N] in float64.

    seed: 1 / (2 H W C)^2 * sum_kk' (G - T)^2 (G unnormalized);
    mse: mean_kk' (G / (C H W) - T)^2.
    Empty features (the documented convention): C and H W count as at least 1 in the scales.
    """
    n, c, h, w = x.shape
    c, p = max(c, 1), max(h * w, 1)
    t = target.cpu().double()
    if normalization == "gatys":
        d = gram_ref(x) - t
        return (d * d).sum((1, 2)) / (2.0 * p * c) ** 2
    d = gram_ref(x) / (c * p) - t
    return (d * d).sum((1, 2)) / (c * c)


def content_ref(x: torch.Tensor, target: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-sample content loss [N] in float64: 1/2 sum (x - t)^2 (seed) or mean (x - t)^2 (mse)."""
    d = (x.cpu().double() - target.cpu().double()).reshape(x.shape[0], -1)
    return 0.5 * (d * d).sum(1) if normalization == "gatys" else (d * d).mean(1)
