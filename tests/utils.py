"""Shared test helpers: devices, dtype tolerances, random box generators.

Randomness: tests take the ``gen`` fixture (tests/conftest.py), a ``torch.Generator`` seeded
afresh for every test from ``FASTMTL_SEED`` when set, else at random. A failing test prints
its seed in the report ("rerun with FASTMTL_SEED=..."), so any failure can be replayed.
"""

import math
import os

import pytest
import torch

import fastmtl

__all__ = [
    "DEVICES",
    "DISPATCH_DEVICES",
    "FLOAT_DTYPES",
    "HALF_DTYPES",
    "assert_close",
    "compiled_only",
    "boxes_like_pairs",
    "cuda",
    "degenerate_boxes",
    "distinct_boxes",
    "env_flag",
    "grid_boxes",
    "has_cuda",
    "random_boxes",
    "tie_free_boxes",
    "tol",
]

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def has_cuda() -> bool:
    return torch.cuda.is_available()


cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")

# "cpu" always; "cuda" as a parameter that skips cleanly without a GPU, so that the
# test ids are the same on every machine.
DEVICES = ("cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda]))

# (rtol, atol) against the float64 reference evaluated on the same (rounded) boxes.
# Values lie in [-1, 1]; half types compute in float32 and round the output (aligned ops)
# or return float32 (pairwise ops).
_TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


def tol(dtype: torch.dtype, *, output_dtype: torch.dtype = None) -> dict:
    """``rtol``/``atol`` for results computed from ``dtype`` boxes and returned in ``output_dtype``.

    Pairwise ops return float32 for half inputs: the boxes are exact in float32, so only the
    float32 arithmetic counts. Aligned ops round the result back to the input dtype.
    """
    out = output_dtype if output_dtype is not None else dtype
    worst = max(_TOL.get(dtype, _TOL[torch.float32]), _TOL.get(out, _TOL[torch.float32]))
    if dtype in HALF_DTYPES and out == torch.float32:
        worst = _TOL[torch.float32]
    rtol, atol = worst
    return {"rtol": rtol, "atol": atol}


def assert_close(actual, expected, *, msg="", equal_nan=False, **tolerances):
    """torch.testing.assert_close comparing values only (expected is upcast/cast to actual)."""
    torch.testing.assert_close(
        actual.to(expected.dtype) if actual.dtype != expected.dtype else actual,
        expected,
        equal_nan=equal_nan,
        msg=(lambda m: f"{m}\n{msg}") if msg else None,
        **tolerances,
    )


def random_boxes(
    n,
    *,
    gen: torch.Generator,
    dtype=torch.float32,
    device="cpu",
    scale: float = 100.0,
    min_size: float = 0.05,
    max_size: float = 0.6,
) -> torch.Tensor:
    """``n`` random corner boxes (``n`` may be a shape tuple), coordinates in ``[0, scale]``.

    Corners are continuous uniform draws, so ties (equal coordinates across boxes) and
    touching edges have probability 0: safe for ``gradcheck``. Sizes are
    ``[min_size, max_size] * scale``, so a fair share of pairs overlap and a fair share do not.
    """
    shape = (n,) if isinstance(n, int) else tuple(n)
    lo = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * scale * (1 - max_size)
    size = (
        min_size + (max_size - min_size) * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    ) * scale
    boxes = torch.cat((lo, lo + size), dim=-1)
    return boxes.to(device=device, dtype=dtype)


def tie_free_boxes(*shapes, gen: torch.Generator, dtype=torch.float32, device="cpu", levels: int = 256):
    """One box tensor per shape, with every x coordinate distinct across all of them, and every
    y coordinate too: no ties, no touching edges, whatever the dtype. Coordinates are integers
    below ``levels`` (exact in bfloat16 for ``levels <= 256``), so the boxes are what the reference
    sees. For gradients in float16/bfloat16, where random boxes round into ties."""
    shapes = [(s,) if isinstance(s, int) else tuple(s) for s in shapes]
    counts = [math.prod(s) for s in shapes]
    total = sum(counts)
    if 2 * total > levels:
        raise ValueError(f"{total} boxes need more than {levels} levels")
    xs = torch.randperm(levels, generator=gen)[: 2 * total].view(total, 2).sort(dim=1).values
    ys = torch.randperm(levels, generator=gen)[: 2 * total].view(total, 2).sort(dim=1).values
    boxes = torch.stack((xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]), dim=-1).to(device=device, dtype=dtype)
    return tuple(part.reshape(*s, 4) for part, s in zip(boxes.split(counts), shapes))


def grid_boxes(n, *, gen: torch.Generator, dtype=torch.float32, device="cpu", cells: int = 6) -> torch.Tensor:
    """Boxes with corners on a small integer grid: many exact ties, identical, touching and nested
    boxes (values only: the gradient is not defined at ties). Every box has positive area."""
    lo = torch.randint(0, cells, (n, 2), generator=gen)
    size = torch.randint(1, cells, (n, 2), generator=gen)
    return torch.cat((lo, lo + size), dim=-1).to(device=device, dtype=dtype)


def degenerate_boxes(n, *, gen: torch.Generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Boxes on a 6 x 6 integer grid with widths and heights 0, 1 or 2: points, lines and small
    boxes, with many exact ties. Zero-area pairs give 0 / 0 in the pairwise ops."""
    lo = torch.randint(0, 5, (n, 2), generator=gen)
    size = torch.randint(0, 3, (n, 2), generator=gen)
    return torch.cat((lo, lo + size), dim=-1).to(device=device, dtype=dtype)


def distinct_boxes(
    *shapes, gen: torch.Generator, dtype=torch.float32, device="cpu", cells: int = 256
) -> list:
    """Random boxes of each of ``shapes`` (one tensor ``[*shape, 4]`` per shape) on an integer grid,
    with all x coordinates different across every box of every tensor, and all y coordinates too.

    So no ties and no touching or shared edges, even in float16/bfloat16 (integers up to 256 are
    exact in both): the gradient is defined everywhere. For gradient tests in half precision,
    where continuous draws from :func:`random_boxes` round onto a coarse grid and can tie.
    """
    counts = [math.prod(s) for s in shapes]
    total = sum(counts)
    if 2 * total > cells:
        raise ValueError(f"{total} boxes need {2 * total} distinct coordinates, more than cells={cells}")
    xs = torch.randperm(cells, generator=gen)[: 2 * total].view(total, 2).sort(dim=-1).values
    ys = torch.randperm(cells, generator=gen)[: 2 * total].view(total, 2).sort(dim=-1).values
    boxes = torch.stack((xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]), dim=-1).to(device=device, dtype=dtype)
    return [part.reshape(*shape, 4) for part, shape in zip(boxes.split(counts), shapes)]


def boxes_like_pairs(boxes: torch.Tensor, *, gen: torch.Generator, jitter: float = 0.2) -> torch.Tensor:
    """Targets near ``boxes`` (for losses): each corner moved by up to ``jitter`` of the box size,
    kept well formed. Continuous, so no ties with ``boxes``."""
    b = boxes.to(torch.float64)
    wh = torch.cat((b[..., 2:] - b[..., :2], b[..., 2:] - b[..., :2]), dim=-1)
    noise = (torch.rand(b.shape, generator=gen, dtype=torch.float64) * 2 - 1) * jitter * wh
    out = b + noise
    x1 = torch.minimum(out[..., 0], out[..., 2])
    x2 = torch.maximum(out[..., 0], out[..., 2]) + 1e-3 * wh[..., 0]
    y1 = torch.minimum(out[..., 1], out[..., 3])
    y2 = torch.maximum(out[..., 1], out[..., 3]) + 1e-3 * wh[..., 1]
    return torch.stack((x1, y1, x2, y2), dim=-1).to(boxes.dtype)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"


compiled_only = pytest.mark.skipif(not fastmtl.has_compiled_ops(), reason="fastmtl._C not built")
# Dispatcher ops on "cuda" need a GPU and the CUDA kernels built in.
DISPATCH_DEVICES = (
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.skipif(
                not (torch.cuda.is_available() and fastmtl.has_cuda_ops()),
                reason="needs a CUDA device and fastmtl built with CUDA",
            ),
            pytest.mark.cuda,
        ],
    ),
)


def yolo_v1_inputs(
    gen: torch.Generator, n=3, grid=(7, 7), boxes=2, classes=4, max_boxes=5, dtype=torch.float32, device="cpu"
) -> tuple:
    """(pred [N, H, W, 5B + C], targets [N, M, 5], counts [N]) with counts 0, 1, ..., M cycling;
    sizes in (0, 0.6), padding rows random (they must be ignored)."""
    pred = torch.randn(n, *grid, 5 * boxes + classes, generator=gen, dtype=torch.float64) * 0.5
    pred[..., : 5 * boxes].view(n, *grid, boxes, 5)[..., 2:4] += 0.4  # sqrt sizes around 0.4
    t = torch.rand(n, max_boxes, 5, generator=gen, dtype=torch.float64)
    t[..., 0] = torch.randint(0, classes, (n, max_boxes), generator=gen).double()
    t[..., 3:] *= 0.6
    counts = torch.arange(n) % (max_boxes + 1)
    return pred.to(dtype).to(device), t.to(device), counts.to(device)
