"""Benchmark cases for non-maximum suppression: ``nms`` and class-aware ``batched_nms``.

Providers, fastmtl first: ``torchvision`` (torchvision.ops, when importable); for ``nms``,
``eager`` (a plain-PyTorch NMS written as a user would write it, below: the IoU matrix by
broadcasting, then a greedy Python loop), only up to :data:`EAGER_MAX_N` boxes as it is slow
and holds several ``N x N`` temporaries; for ``batched_nms``, ``loop`` (torchvision.ops.nms
on each class in a Python loop). The kept indices are integers: the harness compares them
exactly.
"""

import functools
from typing import Optional

import torch

import fastmtl.ops
from fastmtl.bench.harness import Case, mark_full_only

try:
    import torchvision.ops as tv_ops
except ImportError:  # torchvision is optional: its column (and the per-class loop) is left out
    tv_ops = None

__all__ = [
    "batched_nms_case",
    "cases",
    "eager_nms",
    "kept_count",
    "loop_batched_nms",
    "make_boxes",
    "make_scores",
    "nms_case",
    "sizes",
]

IOU_THRESHOLD = 0.5
NUM_CLASSES = 80
EAGER_MAX_N = 10_000
# Range of the top-left corners. Sides are in [1, 100) in both: "sparse" boxes rarely overlap
# (few are suppressed), "dense" ones overlap many neighbours, as raw detector output does.
LAYOUTS = {"sparse": 10_000.0, "dense": 1000.0}


def make_boxes(n: int, layout: str, *, seed: int, device="cpu") -> torch.Tensor:
    """``n`` random float32 ``(x1, y1, x2, y2)`` boxes: corner in [0, LAYOUTS[layout]), sides in [1, 100)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * LAYOUTS[layout]
    wh = 1 + torch.rand(n, 2, generator=g) * 99
    return torch.cat([xy, xy + wh], dim=1).to(device)


def make_scores(n: int, *, seed: int, device="cpu") -> torch.Tensor:
    """``n`` distinct float32 scores in (0, 1), in random order.

    Distinct so that the visiting order is unique: torch.rand gives float32 multiples of
    2^-24, tying a few dozen pairs at 30k boxes, and torchvision's CPU kernel sorts unstably.
    """
    g = torch.Generator().manual_seed(seed)
    return ((torch.randperm(n, generator=g).float() + 0.5) / n).to(device)


def eager_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS in plain PyTorch: pairwise IoU of the sorted boxes, then a loop over them."""
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(b[:, None, :2], b[None, :, :2])
    rb = torch.min(b[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = torch.zeros(len(b), dtype=torch.bool, device=b.device)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=b.device)]


def loop_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware NMS as a Python loop over the classes, torchvision.ops.nms on each."""
    keep = []
    for c in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == c).squeeze(1)
        keep.append(members[tv_ops.nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(keep) if keep else idxs.new_empty(0, dtype=torch.long)
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def kept_count(out: torch.Tensor, median_ms: float, info: dict) -> dict:
    """How many boxes survive: with N, how much suppression the case does."""
    return {"kept": out.numel()}


def nms_case(n: int, layout: str, device: str) -> Case:
    """``nms`` of ``n`` boxes in ``layout`` at IoU 0.5."""
    providers = {"fastmtl": fastmtl.ops.nms}
    if tv_ops is not None:
        providers["torchvision"] = tv_ops.nms
    if n <= EAGER_MAX_N:
        providers["eager"] = eager_nms
    return Case(
        op="nms",
        size=f"{n}-{layout}",
        dtype=torch.float32,
        inputs=(make_boxes(n, layout, seed=1, device=device), make_scores(n, seed=2, device=device)),
        providers=_with_threshold(providers),
        pass_="fwd",
        extra_fn=kept_count,
    )


def batched_nms_case(n: int, device: str, layout: str = "dense") -> Optional[Case]:
    """``batched_nms`` of ``n`` boxes in ``layout`` with NUM_CLASSES random classes at IoU 0.5."""
    if tv_ops is None:
        return None
    providers = {
        "fastmtl": fastmtl.ops.batched_nms,
        "torchvision": tv_ops.batched_nms,
        "loop": loop_batched_nms,
    }
    idxs = torch.randint(0, NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(3))
    inputs = (
        make_boxes(n, layout, seed=1, device=device),
        make_scores(n, seed=2, device=device),
        idxs.to(device),
    )
    return Case(
        op="batched_nms",
        size=f"{n}-{layout}-{NUM_CLASSES}cls",
        dtype=torch.float32,
        inputs=inputs,
        providers=_with_threshold(providers),
        pass_="fwd",
        extra_fn=kept_count,
    )


def _with_threshold(providers: dict) -> dict:
    return {name: functools.partial(fn, iou_threshold=IOU_THRESHOLD) for name, fn in providers.items()}


def sizes(device: str, quick: bool) -> dict:
    """Box counts per kind of case: ``nms`` (each in every layout) and ``batched_nms``."""
    cuda = torch.device(device).type == "cuda"
    if quick:
        return {"nms": (500,), "batched": (500,)}
    return {"nms": (1000, 10_000, 30_000) + ((100_000,) if cuda else ()), "batched": (10_000, 30_000)}


def cases(device: str = "cpu", quick: bool = False) -> list:
    """All NMS cases on ``device``; ``quick``: 500 boxes.

    The default run (not ``--full``) keeps ``nms`` of the fewest and the most dense boxes and
    ``batched_nms`` of the most.
    """
    n_by_kind = sizes(device, quick)
    out = [nms_case(n, layout, device) for layout in LAYOUTS for n in n_by_kind["nms"]]
    out += [batched_nms_case(n, device) for n in n_by_kind["batched"]]
    out = [c for c in out if c is not None]
    if quick:
        return out
    nms_sizes = {f"{n}-dense" for n in (min(n_by_kind["nms"]), max(n_by_kind["nms"]))}
    batched_size = f"{max(n_by_kind['batched'])}-dense-{NUM_CLASSES}cls"
    return mark_full_only(out, lambda c: c.size in (nms_sizes if c.op == "nms" else {batched_size}))
