"""Shared test helpers: devices, dtype tolerances, random box generators.

Randomness: tests take the ``gen`` fixture (tests/conftest.py), a ``torch.Generator`` seeded
afresh for every test from ``FASTMTL_SEED`` when set, else at random. A failing test prints
its seed in the report ("rerun with FASTMTL_SEED=..."), so any failure can be replayed.
"""

import os

import pytest
import torch

__all__ = [
    "DEVICES",
    "FLOAT_DTYPES",
    "HALF_DTYPES",
    "assert_close",
    "boxes_like_pairs",
    "cuda",
    "env_flag",
    "grid_boxes",
    "has_cuda",
    "random_boxes",
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
    size = (min_size + (max_size - min_size) * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)) * scale
    boxes = torch.cat((lo, lo + size), dim=-1)
    return boxes.to(device=device, dtype=dtype)


def grid_boxes(n, *, gen: torch.Generator, dtype=torch.float32, device="cpu", cells: int = 6) -> torch.Tensor:
    """Boxes with corners on a small integer grid: many exact ties, identical, touching and nested
    boxes (values only: the gradient is not defined at ties). Every box has positive area."""
    lo = torch.randint(0, cells, (n, 2), generator=gen)
    size = torch.randint(1, cells, (n, 2), generator=gen)
    return torch.cat((lo, lo + size), dim=-1).to(device=device, dtype=dtype)


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
