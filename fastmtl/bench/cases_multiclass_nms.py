"""Benchmark cases for the batch NMS forms: padded ``multiclass_nms`` and ``soft_nms``.

``multiclass_nms`` of B images x N boxes (one class, or C classes) against what a user writes
with torchvision to get the same padded output: ``loop``, torchvision.ops.batched_nms on each
image in a Python loop, and ``torchvision``, one batched_nms call over the whole batch with
``image * C + class`` as ``idxs``, then vectorized padding. ``soft_nms`` against ``eager``,
the plain-PyTorch version in fastmtl.ops._reference (one round of tensor ops per selection).
"""

import functools

import torch

import fastmtl.ops
from fastmtl.bench.cases_nms import make_boxes
from fastmtl.bench.harness import Case, mark_full_only
from fastmtl.ops import _reference

try:
    import torchvision.ops as tv_ops
except ImportError:
    tv_ops = None

__all__ = ["cases", "loop_multiclass_nms", "multiclass_case", "soft_nms_case", "torchvision_multiclass_nms"]

IOU_THRESHOLD = 0.5
SCORE_THRESHOLD = 0.05
MAX_DETECTIONS = 100


def _candidates(boxes, scores, score_threshold):
    """Flat (image-major) candidates above the threshold: image, flat index n * C + c, box, score."""
    b, n = scores.shape[:2]
    flat = scores.reshape(b, -1)
    classes = flat.shape[1] // n
    image, f = torch.nonzero(flat > score_threshold, as_tuple=True)
    box = boxes.reshape(b, -1, 4)[image, f] if boxes.dim() == 4 else boxes[image, f // classes]
    return image, f, box, flat[image, f], classes


def _pad(image, f, keep, boxes, scores, classes, b, k):
    """Padded Detections from kept candidates listed by image, then decreasing score."""
    out = fastmtl.ops.Detections(
        boxes.new_zeros((b, k, 4)),
        scores.new_zeros((b, k)),
        torch.full((b, k), -1, dtype=torch.int64, device=scores.device),
        torch.full((b, k), -1, dtype=torch.int64, device=scores.device),
        torch.bincount(image[keep], minlength=b).clamp(max=k),
    )
    img = image[keep]
    # Rank of each kept candidate within its image: position minus the image's first position.
    starts = torch.cumsum(torch.bincount(img, minlength=b), 0) - torch.bincount(img, minlength=b)
    rank = torch.arange(img.numel(), device=img.device) - starts[img]
    sel = rank < k
    img, rank, keep = img[sel], rank[sel], keep[sel]
    flat_boxes = boxes.reshape(b, -1, 4) if boxes.dim() == 4 else boxes
    ff = f[keep]
    out.boxes[img, rank] = flat_boxes[img, ff if boxes.dim() == 4 else ff // classes]
    out.scores[img, rank] = scores.reshape(b, -1)[img, ff]
    out.classes[img, rank] = ff % classes
    out.indices[img, rank] = ff // classes
    return out


def torchvision_multiclass_nms(boxes, scores, iou_threshold, score_threshold, max_detections):
    """One torchvision batched_nms over all images (``idxs = image * C + class``), then padding."""
    image, f, box, score, classes = _candidates(boxes, scores, score_threshold)
    keep = tv_ops.batched_nms(box, score, image * classes + f % classes, iou_threshold)
    keep = keep[torch.sort(image[keep], stable=True).indices]  # by image, scores still decreasing
    return _pad(image, f, keep, boxes, scores, classes, scores.shape[0], max_detections)


def loop_multiclass_nms(boxes, scores, iou_threshold, score_threshold, max_detections):
    """torchvision batched_nms on each image in a Python loop, then padding."""
    image, f, box, score, classes = _candidates(boxes, scores, score_threshold)
    keep = []
    for i in range(scores.shape[0]):
        members = torch.nonzero(image == i).squeeze(1)
        kept = tv_ops.batched_nms(box[members], score[members], f[members] % classes, iou_threshold)
        keep.append(members[kept[:max_detections]])
    keep = torch.cat(keep) if keep else image.new_empty(0)
    return _pad(image, f, keep, boxes, scores, classes, scores.shape[0], max_detections)


def _distinct_scores(shape, *, seed, device):
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    return ((torch.randperm(n, generator=g).float() + 0.5) / n).reshape(shape).to(device)


def multiclass_case(
    images: int, n: int, classes: int, layout: str, device: str, max_detections: int = MAX_DETECTIONS
) -> Case:
    """multiclass_nms of ``images`` x ``n`` boxes with ``classes`` classes (1: scores [B, N]).

    With the default ``max_detections`` (100) fastmtl stops once 100 are kept while torchvision
    runs NMS to the end; ``max_detections = n`` compares full NMS with full NMS.
    """
    boxes = torch.stack([make_boxes(n, layout, seed=10 + i) for i in range(images)]).to(device)
    shape = (images, n) if classes == 1 else (images, n, classes)
    scores = _distinct_scores(shape, seed=5, device=device)
    providers = {"fastmtl": fastmtl.ops.multiclass_nms}
    if tv_ops is not None:
        providers.update(torchvision=torchvision_multiclass_nms, loop=loop_multiclass_nms)
    fixed = {
        "iou_threshold": IOU_THRESHOLD,
        "score_threshold": SCORE_THRESHOLD,
        "max_detections": max_detections,
    }
    return Case(
        op="multiclass_nms",
        size=f"{images}x{n}-{classes}cls-{layout}-top{max_detections}",
        dtype=torch.float32,
        inputs=(boxes, scores),
        providers={name: functools.partial(fn, **fixed) for name, fn in providers.items()},
        extra_fn=lambda out, ms, info: {"kept": int(out.counts.sum())},
    )


def soft_nms_case(n: int, method: str, device: str) -> Case:
    """soft_nms of ``n`` dense boxes with mmcv's defaults and ``method``."""
    boxes = make_boxes(n, "dense", seed=1, device=device)
    scores = _distinct_scores((n,), seed=2, device=device)
    return Case(
        op="soft_nms",
        size=f"{n}-{method}",
        dtype=torch.float32,
        inputs=(boxes, scores),
        providers={
            "fastmtl": functools.partial(fastmtl.ops.soft_nms, method=method),
            "eager": lambda b, s: _reference.soft_nms(b, s, None, 0.3, 0.5, 0.001, method),
        },
        extra_fn=lambda out, ms, info: {"kept": out[0].numel()},
    )


def cases(device: str = "cpu", quick: bool = False) -> list:
    """16 x 5000 boxes with 1 class (top 100 and all) and 16 x 1000 boxes with 80 classes (top
    100); Soft-NMS of 1000 boxes.

    The default run (not ``--full``) keeps 16 x 5000 dense boxes, top 100, and the Gaussian
    Soft-NMS (the 80-class case alone takes about a minute on a 2-core CPU).
    """
    if quick:
        return [multiclass_case(2, 300, 1, "dense", device), soft_nms_case(200, "linear", device)]
    out = [
        multiclass_case(16, 5000, 1, layout, device, k) for layout in ("sparse", "dense") for k in (100, 5000)
    ]
    out.append(multiclass_case(16, 1000, 80, "dense", device))
    out += [soft_nms_case(1000, method, device) for method in ("linear", "gaussian")]
    default = {"16x5000-1cls-dense-top100", "1000-gaussian"}
    return mark_full_only(out, lambda c: c.size in default)
