"""Benchmark cases for the Gram matrix and the style loss of neural style transfer.

``style_loss`` (forward + backward): the style loss summed over the five VGG-19 style layers
(conv1_1 .. conv5_1: C = 64, 128, 256, 512, 512 at H = W = S, S/2, S/4, S/8, S/16) of a
generated image of side S, batch N, against the Gram matrices of one style image, with the
PyTorch tutorial's normalization (normalized Gram, mean of squares) and style weight 1e6.
Providers, fastmtl first:

- ``fastmtl``: :func:`fastmtl.ops.style_loss` with ``normalization="mse"`` (fused);
- ``eager``: the tutorial's ``gram_matrix`` + ``F.mse_loss``, per sample (``bmm``; for N = 1
  this is the tutorial's code, which folds the batch into the rows and so, for N > 1, would
  compare every pair of samples: N times the work and a different loss);
- ``compile``: ``torch.compile`` of ``eager`` (optional: skipped with a note where it fails).

``gram_matrix`` (forward): one layer's Gram matrix, fastmtl (upper triangle only) against
``torch.bmm(F, F^T)`` and its torch.compile.
"""

from typing import Optional

import torch
import torch.nn.functional as F

import fastmtl.ops
from fastmtl.bench.harness import Case, fwd_bwd, mark_full_only

__all__ = [
    "STYLE_WEIGHT",
    "VGG19_STYLE_LAYERS",
    "cases",
    "eager_gram",
    "eager_style_loss",
    "gram_case",
    "layer_shapes",
    "make_layers",
    "sizes",
    "style_case",
]

# (name, channels, downsampling) of the VGG-19 layers the tutorial takes the style from.
VGG19_STYLE_LAYERS = (
    ("conv1_1", 64, 1),
    ("conv2_1", 128, 2),
    ("conv3_1", 256, 4),
    ("conv4_1", 512, 8),
    ("conv5_1", 512, 16),
)
STYLE_WEIGHT = 1e6  # the tutorial's style_weight: puts the gradients in a comparable range


def layer_shapes(side: int, batch: int) -> list:
    """``[N, C, H, W]`` of the five style layers for a ``side x side`` image."""
    return [(batch, c, max(side // d, 1), max(side // d, 1)) for _, c, d in VGG19_STYLE_LAYERS]


def make_layers(side: int, batch: int, *, seed: int, dtype=torch.float32, device="cpu", requires_grad=False):
    """Random post-ReLU-like activations (non-negative, as VGG's) for the five layers."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in layer_shapes(side, batch):
        x = torch.randn(shape, generator=g).clamp_(min=0).to(device=device, dtype=dtype)
        out.append(x.requires_grad_(requires_grad))
    return out


def eager_gram(x: torch.Tensor) -> torch.Tensor:
    """The tutorial's gram_matrix, per sample: ``F F^T / (C H W)``."""
    n, c, h, w = x.size()
    f = x.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)).div(c * h * w)


def eager_style_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """``STYLE_WEIGHT * sum over layers of F.mse_loss(gram(x), target)``; tensors = (*xs, *targets)."""
    k = len(tensors) // 2
    total = 0.0
    for x, t in zip(tensors[:k], tensors[k:]):
        g = eager_gram(x)
        total = total + F.mse_loss(g, t.expand_as(g))
    return STYLE_WEIGHT * total


def fastmtl_style_loss(*tensors: torch.Tensor) -> torch.Tensor:
    k = len(tensors) // 2
    total = 0.0
    for x, t in zip(tensors[:k], tensors[k:]):
        total = total + fastmtl.ops.style_loss(x, t, normalization="mse")
    return STYLE_WEIGHT * total


def style_case(side: int, batch: int, device: str, dtype=torch.float32, *, use_compile: bool = True) -> Case:
    """Forward + backward of the style loss over the five layers, gradients to the features."""
    xs = make_layers(side, batch, seed=1, dtype=dtype, device=device, requires_grad=True)
    with torch.no_grad():
        targets = [
            fastmtl.ops.gram_matrix(s)[0] for s in make_layers(side, 1, seed=2, dtype=dtype, device=device)
        ]
    providers = {"fastmtl": fwd_bwd(fastmtl_style_loss), "eager": fwd_bwd(eager_style_loss)}
    if use_compile:
        providers["compile"] = fwd_bwd(torch.compile(eager_style_loss, dynamic=False))
    half = dtype in (torch.float16, torch.bfloat16)
    return Case(
        op="style_loss",
        size=f"{side}px-x{batch}",
        dtype=dtype,
        inputs=(*xs, *targets),
        providers=providers,
        pass_="fwd+bwd",
        # float32 sums of up to 262144 products in a different order; half gradients are rounded
        atol=1e-2 if half else 1e-4,
        rtol=5e-2 if half else 1e-3,
        optional=frozenset({"compile"}),
    )


def _bmm_gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def gram_case(layer: int, side: int, batch: int, device: str, *, use_compile: bool = True) -> Case:
    """Forward Gram matrix of one style layer against ``torch.bmm``."""
    x = make_layers(side, batch, seed=3, device=device)[layer]
    providers = {"fastmtl": fastmtl.ops.gram_matrix, "bmm": _bmm_gram}
    if use_compile:
        providers["compile"] = torch.compile(_bmm_gram, dynamic=False)
    n, c, h, w = x.shape
    return Case(
        op="gram_matrix",
        size=f"{VGG19_STYLE_LAYERS[layer][0]}-{c}x{h}x{w}-x{n}",
        dtype=torch.float32,
        inputs=(x,),
        providers=providers,
        atol=1e-6,
        rtol=1e-4,
        optional=frozenset({"compile"}),
    )


def sizes(device: str, quick: bool) -> dict:
    """(side, batch) of the style-loss cases and of the Gram forward cases.

    512 x 8 is left out of the CPU quick list: about 2 s per eager call on 2 cores.
    """
    cuda = torch.device(device).type == "cuda"
    full = ((256, 1), (256, 8), (512, 1), (512, 8))
    if quick:
        return {"style": full if cuda else ((256, 1), (256, 8), (512, 1)), "gram": ((256, 1),)}
    return {"style": full, "gram": ((256, 1), (512, 8))}


def cases(device: str = "cpu", quick: bool = False, *, use_compile: Optional[bool] = None) -> list:
    """The style-loss cases (and Gram forward rows) on ``device``; quick leaves torch.compile out.

    The default run (not ``--full``) keeps the style loss of one image at each side and the
    Gram matrix of conv3_1 (256 channels) at the smaller size.
    """
    use_compile = not quick if use_compile is None else use_compile
    by_kind = sizes(device, quick)
    dtypes = (torch.float32, torch.bfloat16) if torch.device(device).type == "cuda" else (torch.float32,)
    out = [
        style_case(side, batch, device, dtype, use_compile=use_compile)
        for dtype in dtypes
        for side, batch in by_kind["style"]
    ]
    out += [
        gram_case(layer, side, batch, device, use_compile=use_compile)
        for side, batch in by_kind["gram"]
        for layer in range(len(VGG19_STYLE_LAYERS))
    ]
    if quick:
        return out
    side, batch = by_kind["gram"][0]
    gram_default = f"conv3_1-256x{side // 4}x{side // 4}-x{batch}"
    return mark_full_only(
        out, lambda c: c.size.endswith("-x1") if c.op == "style_loss" else c.size == gram_default
    )
