"""Benchmark cases for the IoU family: pairwise IoU/GIoU/DIoU/CIoU and the aligned IoU losses.

Providers, fastmtl first: ``torchvision`` (torchvision.ops, when importable), ``eager`` (a
plain broadcast implementation written as a user would write it, below) and ``compile``
(torch.compile of eager; for the losses, of torchvision's loss).
"""

import functools
import math
from typing import Optional

import torch

import fastmtl.ops
from fastmtl.bench.harness import Case, fwd_bwd, mark_full_only, peak_bandwidth_gbs

try:
    import torchvision.ops as tv_ops
except ImportError:  # torchvision is optional: its column is left out
    tv_ops = None

__all__ = [
    "cases",
    "eager_pairwise",
    "loss_case",
    "make_boxes",
    "pairwise_backward_case",
    "pairwise_case",
    "sizes",
    "write_bandwidth",
]

PAIRWISE = {
    "box_iou": "iou",
    "generalized_box_iou": "giou",
    "distance_box_iou": "diou",
    "complete_box_iou": "ciou",
}
BACKWARD_OPS = ("box_iou", "generalized_box_iou")
LOSSES = {  # fastmtl name -> torchvision name
    "giou_loss": "generalized_box_iou_loss",
    "diou_loss": "distance_box_iou_loss",
    "ciou_loss": "complete_box_iou_loss",
}

# atol = rtol. For half input torchvision takes some coordinate differences in half where
# fastmtl upcasts first: up to ~6e-4 apart on these boxes.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3}


def make_boxes(n: int, *, seed: int, dtype=torch.float32, device="cpu", requires_grad=False) -> torch.Tensor:
    """``n`` random ``(x1, y1, x2, y2)`` boxes: corner in [0, 1000), width and height in [1, 100).

    Boxes of this size on a 1000-pixel image overlap a few of their neighbours, as detections do.
    """
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = 1 + torch.rand(n, 2, generator=g) * 99
    boxes = torch.cat([xy, xy + wh], dim=1).to(device=device, dtype=dtype)
    return boxes.requires_grad_(requires_grad)


def eager_pairwise(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU/GIoU/DIoU/CIoU by broadcasting ``[N, 1, 4]`` against ``[1, M, 4]``."""
    if boxes1.dtype in (torch.float16, torch.bfloat16):
        # In half the enclosing areas (up to 1100^2) overflow; compute in float32 as torchvision does.
        boxes1, boxes2 = boxes1.float(), boxes2.float()
    a, b = boxes1[:, None, :], boxes2[None, :, :]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    iou = inter / union
    if kind == "iou":
        return iou
    cwh = torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])
    if kind == "giou":
        enclose = cwh[..., 0] * cwh[..., 1]
        return iou - (enclose - union) / enclose
    diag2 = (cwh**2).sum(-1) + eps
    centre2 = (((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) / 2).pow(2).sum(-1)
    diou = iou - centre2 / diag2
    if kind == "diou":
        return diou
    w_a, h_a = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    w_b, h_b = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    v = (4 / math.pi**2) * (torch.atan(w_a / h_a) - torch.atan(w_b / h_b)) ** 2
    alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def _compiled(fn):
    # dynamic=False: a graph specialised to each size, the best torch.compile does here.
    # Compilation happens on the first call, the harness's agreement check, so it is not timed.
    return torch.compile(fn, dynamic=False)


def write_bandwidth(out: torch.Tensor, median_ms: float, info: dict) -> dict:
    """Achieved rate of writing the ``[N, M]`` output, against the device's nominal peak.

    The pairwise output dwarfs the N + M input boxes, so the write is the memory traffic.
    """
    gbs = out.numel() * out.element_size() / (median_ms * 1e-3) / 1e9
    peak = peak_bandwidth_gbs(info["device_name"])
    pct = round(100 * gbs / peak, 1) if peak else "unknown"
    return {"write_gbs": round(gbs, 1), "peak_gbs": peak or "unknown", "pct_of_peak": pct}


def pairwise_case(op: str, n: int, dtype: torch.dtype, device: str, *, use_compile: bool = True) -> Case:
    """Forward of a pairwise op on ``n x n`` boxes."""
    eager = functools.partial(eager_pairwise, kind=PAIRWISE[op])
    providers = {"fastmtl": getattr(fastmtl.ops, op)}
    if tv_ops is not None:
        providers["torchvision"] = getattr(tv_ops, op)
    providers["eager"] = eager
    if use_compile:
        providers["compile"] = _compiled(eager)
    bandwidth = op == "box_iou" and torch.device(device).type == "cuda"
    return Case(
        op=op,
        size=f"{n}x{n}",
        dtype=dtype,
        providers=providers,
        pass_="fwd",
        inputs=tuple(make_boxes(n, seed=s, dtype=dtype, device=device) for s in (1, 2)),
        atol=TOLERANCE[dtype],
        rtol=TOLERANCE[dtype],
        optional=frozenset({"compile"}),
        extra_fn=write_bandwidth if bandwidth else None,
    )


def pairwise_backward_case(op: str, n: int, device: str) -> Optional[Case]:
    """Forward + backward of a pairwise op with a random incoming gradient, vs torchvision."""
    if tv_ops is None:
        return None
    grad = torch.randn(n, n, generator=torch.Generator().manual_seed(5)).to(device)
    providers = {
        "fastmtl": fwd_bwd(getattr(fastmtl.ops, op), grad),
        "torchvision": fwd_bwd(getattr(tv_ops, op), grad),
    }
    inputs = tuple(make_boxes(n, seed=s, device=device, requires_grad=True) for s in (1, 2))
    return Case(
        op=op,
        size=f"{n}x{n}",
        dtype=torch.float32,
        inputs=inputs,
        providers=providers,
        pass_="fwd+bwd",
        atol=1e-4,
        rtol=1e-4,
    )


def loss_case(op: str, n: int, device: str, *, use_compile: bool = True) -> Case:
    """Forward + backward of an aligned loss on ``n`` pairs, ``reduction="sum"``.

    Only the predictions need a gradient, as in training.
    """
    loss = functools.partial(getattr(fastmtl.ops, op), reduction="sum")
    providers = {"fastmtl": fwd_bwd(loss)}
    if tv_ops is not None:
        tv_loss = getattr(tv_ops, LOSSES[op])
        providers["torchvision"] = fwd_bwd(functools.partial(tv_loss, reduction="sum"))
        if use_compile:
            providers["compile"] = fwd_bwd(functools.partial(_compiled(tv_loss), reduction="sum"))
    inputs = (make_boxes(n, seed=3, device=device, requires_grad=True), make_boxes(n, seed=4, device=device))
    return Case(
        op=op,
        size=str(n),
        dtype=torch.float32,
        inputs=inputs,
        providers=providers,
        pass_="fwd+bwd",
        atol=1e-4,
        rtol=1e-4,
        optional=frozenset({"compile"}),
    )


def sizes(device: str, quick: bool) -> dict:
    """Sizes per kind of case: pairwise forward (n x n), pairwise fwd+bwd, loss pairs."""
    cuda = torch.device(device).type == "cuda"
    if quick:
        return {"fwd": (1024 if cuda else 128,), "bwd": (128,), "loss": (1000,)}
    return {"fwd": (8192,) if cuda else (1024, 4096), "bwd": (1024, 2048), "loss": (100_000,)}


def cases(device: str = "cpu", quick: bool = False, *, use_compile: Optional[bool] = None) -> list:
    """All IoU-family cases on ``device``; ``quick``: small sizes and no torch.compile.

    torch.compile is left out of ``quick`` because it compiles a graph per case (seconds each).
    The default run (not ``--full``) keeps ``box_iou`` forward at each size, the GIoU forward +
    backward at the smaller size and the CIoU loss.
    """
    use_compile = not quick if use_compile is None else use_compile
    n_by_kind = sizes(device, quick)
    dtypes = (torch.float32, torch.float16) if torch.device(device).type == "cuda" else (torch.float32,)
    out = [
        pairwise_case(op, n, dtype, device, use_compile=use_compile)
        for op in PAIRWISE
        for dtype in dtypes
        for n in n_by_kind["fwd"]
    ]
    out += [pairwise_backward_case(op, n, device) for op in BACKWARD_OPS for n in n_by_kind["bwd"]]
    out += [loss_case(op, n, device, use_compile=use_compile) for op in LOSSES for n in n_by_kind["loss"]]
    out = [c for c in out if c is not None]
    if quick:
        return out
    small_bwd = f"{min(n_by_kind['bwd'])}x{min(n_by_kind['bwd'])}"
    return mark_full_only(
        out,
        lambda c: (
            (c.op == "box_iou" and c.pass_ == "fwd")
            or (c.op == "generalized_box_iou" and c.pass_ == "fwd+bwd" and c.size == small_bwd)
            or c.op == "ciou_loss"
        ),
    )
