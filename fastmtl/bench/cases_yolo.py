"""Benchmark cases for the fused YOLOv1 loss (forward + backward to the predictions).

The paper's setting, ``S = 7, B = 2, C = 20``, at batch 64 (and 8), with 1 to 8 objects per image.
Providers, fastmtl first:

- ``fastmtl``: :func:`fastmtl.ops.yolo_v1_loss` (one pass for the loss and the gradient);
- ``eager``: the plain-PyTorch loss of the same rules (``fastmtl.ops._yolo_v1_reference``, fully
  vectorized: the cell assignment by ``scatter_reduce``, no Python loop), as a user would write
  it carefully; autograd builds its backward;
- ``compile``: ``torch.compile`` of ``eager`` (optional: skipped with a note where it fails).
"""

from typing import Optional

import torch

import fastmtl.ops
from fastmtl.bench.harness import Case, fwd_bwd, mark_full_only
from fastmtl.ops._yolo_v1_reference import yolo_v1_terms

__all__ = ["cases", "make_inputs", "yolo_v1_case"]

OPTIONS = (2, 20, 5.0, 0.5, "sqrt", "iou")  # num_boxes, num_classes, lambdas, wh, conf_target


def make_inputs(batch: int, grid: int = 7, *, seed: int = 0, dtype=torch.float32, device="cpu") -> tuple:
    """Predictions (requiring grad), padded targets of 1 to 8 objects and their counts."""
    g = torch.Generator().manual_seed(seed)
    boxes, classes = OPTIONS[:2]
    pred = torch.randn(batch, grid, grid, 5 * boxes + classes, generator=g) * 0.5
    targets = torch.rand(batch, 8, 5, generator=g)
    targets[..., 0] = torch.randint(0, classes, (batch, 8), generator=g).float()
    targets[..., 3:] *= 0.6
    counts = torch.randint(1, 9, (batch,), generator=g)
    pred = pred.to(device=device, dtype=dtype).requires_grad_()
    return pred, targets.to(device), counts.to(device)


def fastmtl_loss(pred, targets, counts):
    return fastmtl.ops.yolo_v1_loss(pred, targets, counts, *OPTIONS)["total"]


def eager_loss(pred, targets, counts):
    return yolo_v1_terms(pred, targets, counts, *OPTIONS).sum()


def yolo_v1_case(batch: int, device: str, dtype=torch.float32, *, use_compile: bool = True) -> Case:
    providers = {"fastmtl": fwd_bwd(fastmtl_loss), "eager": fwd_bwd(eager_loss)}
    if use_compile:
        providers["compile"] = fwd_bwd(torch.compile(eager_loss, dynamic=False))
    half = dtype in (torch.float16, torch.bfloat16)
    return Case(
        op="yolo_v1_loss",
        size=f"N{batch}-S7-B2-C20",
        dtype=dtype,
        inputs=make_inputs(batch, dtype=dtype, device=device),
        providers=providers,
        pass_="fwd+bwd",
        atol=1e-2 if half else 1e-4,
        rtol=1e-2 if half else 1e-4,
        optional=frozenset({"compile"}),
    )


def cases(device: str = "cpu", quick: bool = False, *, use_compile: Optional[bool] = None) -> list:
    """Batch 64 and 8 (the default run keeps 64); quick leaves torch.compile out."""
    use_compile = not quick if use_compile is None else use_compile
    dtypes = (torch.float32, torch.bfloat16) if torch.device(device).type == "cuda" else (torch.float32,)
    out = [
        yolo_v1_case(batch, device, dtype, use_compile=use_compile) for dtype in dtypes for batch in (64, 8)
    ]
    return out if quick else mark_full_only(out, lambda c: c.size.startswith("N64"))
