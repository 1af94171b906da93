"""Benchmark cases for RoI align and RoI pool: forward, and forward + backward to the features.

Providers, fastmtl first: ``torchvision`` (torchvision.ops, when importable). Features
``[2, 256, 64, 64]`` float32 (stride 8 of two 512 x 512 images), 7 x 7 bins, rois of 8 to 128
image pixels; roi_align with ``sampling_ratio`` 2 and -1 (adaptive).
"""

import functools

import torch

import fastmtl.ops
from fastmtl.bench.harness import Case, fwd_bwd, mark_full_only

try:
    import torchvision.ops as tv_ops
except ImportError:  # torchvision is optional: its column is left out
    tv_ops = None

__all__ = ["align_cases", "make_features", "make_rois", "pool_cases", "roi_case", "sizes"]

IMAGE = 512
STRIDE = 8
OUTPUT_SIZE = 7
SAMPLING_RATIOS = (2, -1)


def make_features(n: int, c: int, size: int, *, seed: int, device="cpu", requires_grad=False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g).to(device).requires_grad_(requires_grad)


def make_rois(k: int, n: int, *, seed: int, device="cpu") -> torch.Tensor:
    """``k`` rois ``(b, x1, y1, x2, y2)`` over ``n`` images of IMAGE pixels, sides in [8, 128)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * (IMAGE - 128)
    wh = 8 + torch.rand(k, 2, generator=g) * 120
    b = torch.randint(0, n, (k, 1), generator=g).float()
    return torch.cat([b, xy, xy + wh], dim=1).to(device)


def sizes(device: str, quick: bool) -> dict:
    """Feature shape ``(n, c, size)`` and roi counts."""
    if quick:
        return {"features": (2, 32, 32), "rois": (32,)}
    return {"features": (2, 256, 64), "rois": (256, 1024)}


def roi_case(
    op: str, k: int, device: str, *, pass_: str, quick: bool = False, sampling_ratio: int = 2
) -> Case:
    """One case of ``op`` ("roi_align" or "roi_pool") on ``k`` rois."""
    n, c, size = sizes(device, quick)["features"]
    scale = size / IMAGE
    if op == "roi_align":
        kwargs = {"output_size": OUTPUT_SIZE, "spatial_scale": scale, "sampling_ratio": sampling_ratio}
        label = f"{k}rois-sr{sampling_ratio}"
    else:
        kwargs = {"output_size": OUTPUT_SIZE, "spatial_scale": scale}
        label = f"{k}rois"
    providers = {"fastmtl": functools.partial(getattr(fastmtl.ops, op), **kwargs)}
    if tv_ops is not None:
        providers["torchvision"] = functools.partial(getattr(tv_ops, op), **kwargs)
    grad = torch.randn(k, c, OUTPUT_SIZE, OUTPUT_SIZE, generator=torch.Generator().manual_seed(5)).to(device)
    if pass_ == "fwd+bwd":
        providers = {name: fwd_bwd(fn, grad) for name, fn in providers.items()}
    features = make_features(n, c, size, seed=1, device=device, requires_grad=pass_ == "fwd+bwd")
    return Case(
        op=op,
        size=f"{n}x{c}x{size}x{size}-{label}",
        dtype=torch.float32,
        inputs=(features, make_rois(k, n, seed=2, device=device)),
        providers=providers,
        pass_=pass_,
        atol=1e-4,
        rtol=1e-4,
    )


def _in_default(case: Case, rois: tuple) -> bool:
    """The default run's rows: forward on the fewest rois, forward + backward on the most,
    sampling ratio 2 (not ``--full``)."""
    k = min(rois) if case.pass_ == "fwd" else max(rois)
    return f"-{k}rois" in case.size and not case.size.endswith("-sr-1")


def align_cases(device: str = "cpu", quick: bool = False) -> list:
    """roi_align: forward and forward + backward, each sampling ratio and roi count."""
    rois = sizes(device, quick)["rois"]
    out = [
        roi_case("roi_align", k, device, pass_=p, quick=quick, sampling_ratio=sr)
        for p in ("fwd", "fwd+bwd")
        for sr in SAMPLING_RATIOS
        for k in rois
    ]
    return out if quick else mark_full_only(out, lambda c: _in_default(c, rois))


def pool_cases(device: str = "cpu", quick: bool = False) -> list:
    """roi_pool: forward and forward + backward, each roi count."""
    rois = sizes(device, quick)["rois"]
    out = [roi_case("roi_pool", k, device, pass_=p, quick=quick) for p in ("fwd", "fwd+bwd") for k in rois]
    return out if quick else mark_full_only(out, lambda c: _in_default(c, rois))
