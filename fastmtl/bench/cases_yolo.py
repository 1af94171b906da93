"""Benchmark cases for the YOLO losses (forward + backward to the predictions).

``yolo_v1_loss``: the paper's setting, ``S = 7, B = 2, C = 20``, at batch 64 (and 8), with 1 to 8
objects per image. ``yolo_anchor_loss``: YOLOv3's three scales of a 416-pixel image (13, 26, 52),
3 anchors each (yolov5's), 80 classes, batch 16, about 10 objects per image. Providers, fastmtl
first:

- ``fastmtl``: the fused loss (one pass for the loss and the gradient);
- ``uncached``: the fused anchor loss with its CPU gradient cache off (``fastmtl.empty_grad_cache``):
  every backward pays for the page faults of a fresh dense gradient, as the other providers do;
- ``eager``: the plain-PyTorch loss of the same rules (``fastmtl.ops._yolo_v1_reference`` and
  ``_yolo_anchor_reference``, vectorized: no Python loop over images or boxes), as a user would
  write it carefully; autograd builds its backward;
- ``compile``: ``torch.compile`` of ``eager`` (optional: skipped with a note where it fails);
- ``yolov5``: yolov5's ``ComputeLoss`` (``make peers``), against fastmtl's fused
  ``mode="yolov5"``, which equals it (and the plain-PyTorch reference of that mode as ``eager``).
"""

from typing import Optional

import torch

import fastmtl.ops
from fastmtl.bench.harness import Case, fwd_bwd, mark_full_only
from fastmtl.bench.yolov5_peer import fake_model, load_compute_loss
from fastmtl.losses import yolo_anchor_loss
from fastmtl.ops._yolo_anchor_reference import YOLOV5_ANCHORS, YOLOV5_STRIDES, yolo_anchor_loss_reference
from fastmtl.ops._yolo_v1_reference import yolo_v1_terms

__all__ = ["anchor_case", "cases", "make_anchor_inputs", "make_inputs", "yolov5_case", "yolo_v1_case"]

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


IMAGE = 416  # YOLOv3's input: grids of 13, 26 and 52 cells at strides 32, 16 and 8


def make_anchor_inputs(batch: int, classes: int = 80, *, seed: int = 0, dtype=torch.float32, device="cpu"):
    """Per-scale predictions [N, 3, S, S, 5 + C] (requiring grad), 8 to 12 objects per image."""
    g = torch.Generator().manual_seed(seed)
    preds = [
        torch.randn(batch, 3, IMAGE // s, IMAGE // s, 5 + classes, generator=g).to(device=device, dtype=dtype)
        for s in YOLOV5_STRIDES
    ]
    targets = torch.rand(batch, 12, 5, generator=g) * 0.8 + 0.1
    targets[..., 3:] *= 0.5
    targets[..., 0] = torch.randint(0, classes, (batch, 12), generator=g).float()
    counts = torch.randint(8, 13, (batch,), generator=g)
    return [p.requires_grad_() for p in preds], targets.to(device), counts.to(device)


def _uncached(fn):
    """fn with the fused losses' CPU gradient cache off (and emptied) during each call."""
    if not fastmtl.has_compiled_ops():
        return fn

    def run(*args):
        previous = torch.ops.fastmtl._set_grad_cache_limit(0)
        try:
            return fn(*args)
        finally:
            torch.ops.fastmtl._set_grad_cache_limit(previous)

    return run


def _anchor_fn(fn, **options):
    anchors = torch.tensor(YOLOV5_ANCHORS, dtype=torch.float32)

    def total(targets, counts, *preds):
        return fn(list(preds), targets, counts, anchors.to(preds[0].device), YOLOV5_STRIDES, **options)[
            "total"
        ]

    return total


def anchor_case(batch: int, device: str, *, use_compile: bool = True) -> Case:
    preds, targets, counts = make_anchor_inputs(batch, device=device)
    eager = _anchor_fn(yolo_anchor_loss_reference)
    fused = fwd_bwd(_anchor_fn(yolo_anchor_loss))
    providers = {"fastmtl": fused, "uncached": _uncached(fused), "eager": fwd_bwd(eager)}
    if use_compile:
        providers["compile"] = fwd_bwd(torch.compile(eager, dynamic=False))
    return Case(
        op="yolo_anchor_loss",
        size=f"N{batch}-416px-A3-C80",
        dtype=torch.float32,
        inputs=(targets, counts, *preds),
        providers=providers,
        pass_="fwd+bwd",
        atol=1e-3,
        rtol=1e-4,
        optional=frozenset({"compile"}),
    )


def yolov5_case(batch: int, device: str) -> Optional[Case]:
    """fastmtl's mode="yolov5" against yolov5's ComputeLoss; None without yolov5."""
    compute_loss = load_compute_loss()
    if compute_loss is None:
        return None
    preds, targets, counts = make_anchor_inputs(batch, device=device, seed=1)
    anchors = torch.tensor(YOLOV5_ANCHORS, dtype=torch.float32)
    loss = compute_loss(fake_model(anchors, YOLOV5_STRIDES, 80).to(device))
    valid = torch.arange(targets.shape[1], device=device)[None, :] < counts[:, None]
    image = torch.arange(batch, device=device)[:, None].expand_as(valid)[valid]
    rows = torch.cat((image[:, None].float(), targets[valid]), 1)  # yolov5's [M, 6] targets

    def yolov5(targets, counts, *preds):
        return loss(list(preds), rows)[0][0]

    return Case(
        op="yolo_anchor_loss",
        size=f"N{batch}-416px-A3-C80-yolov5",
        dtype=torch.float32,
        inputs=(targets, counts, *preds),
        providers={
            "fastmtl": fwd_bwd(_anchor_fn(yolo_anchor_loss, mode="yolov5")),
            "uncached": _uncached(fwd_bwd(_anchor_fn(yolo_anchor_loss, mode="yolov5"))),
            "eager": fwd_bwd(_anchor_fn(yolo_anchor_loss_reference, mode="yolov5")),
            "yolov5": fwd_bwd(yolov5),
        },
        pass_="fwd+bwd",
        atol=1e-3,
        rtol=1e-4,
    )


def cases(device: str = "cpu", quick: bool = False, *, use_compile: Optional[bool] = None) -> list:
    """YOLOv1 at batch 64 and 8 (the default run keeps 64); the anchor loss at batch 16 (quick: 2),
    and against yolov5 where it is installed. quick leaves torch.compile out."""
    use_compile = not quick if use_compile is None else use_compile
    dtypes = (torch.float32, torch.bfloat16) if torch.device(device).type == "cuda" else (torch.float32,)
    out = [
        yolo_v1_case(batch, device, dtype, use_compile=use_compile) for dtype in dtypes for batch in (64, 8)
    ]
    batch = 2 if quick else 16
    out.append(anchor_case(batch, device, use_compile=use_compile))
    out += [c for c in (yolov5_case(batch, device),) if c is not None]
    return out if quick else mark_full_only(out, lambda c: not c.size.startswith("N8-"))
