"""Benchmark cases for COCO box evaluation: ``fastmtl.metrics.coco_evaluate`` against pycocotools'
``COCOeval`` and faster-coco-eval's ``COCOeval_faster``.

Each provider starts from its own native input and returns ``COCOeval.stats`` (float64 ``[12]``):
fastmtl from per-image tensors; ``fastmtl-json`` (``coco_evaluate_json``), pycocotools and
faster-coco-eval from the same COCO json content (a ground-truth dict and a results list), so
their times include building their indexes and loading the results, as a user's call does.
pycocotools runs only up to :data:`PYCOCOTOOLS_MAX_IMAGES` images (it takes minutes beyond).
The inputs look like a detector's output on COCO: about 7 ground truths per image (1% crowd,
mask-like areas below the box's), each image's detections jittered around them or anywhere.
"""

import contextlib
import io

import torch

from fastmtl.bench.harness import Case, mark_full_only
from fastmtl.metrics import coco_evaluate, coco_evaluate_json

try:
    from pycocotools.coco import COCO as PyCOCO
    from pycocotools.cocoeval import COCOeval
except ImportError:  # optional: its column is left out
    PyCOCO = COCOeval = None
try:
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster
except ImportError:
    FastCOCO = COCOeval_faster = None

__all__ = ["cases", "coco_case", "make_images", "pycocotools_stats", "faster_coco_eval_stats", "to_coco_json"]

PYCOCOTOOLS_MAX_IMAGES = 1000
IMAGE_SIDE = 640.0


def _gt_image(g: torch.Generator, classes: int) -> dict:
    count = int(torch.randint(0, 15, (1,), generator=g))
    xy = torch.rand(count, 2, generator=g) * IMAGE_SIDE * 0.8
    wh = 4 + torch.rand(count, 2, generator=g).pow(2) * IMAGE_SIDE * 0.4  # many small, few large
    boxes = torch.cat([xy, wh], 1)
    return {
        "boxes": boxes,
        "labels": torch.randint(0, classes, (count,), generator=g),
        "iscrowd": (torch.rand(count, generator=g) < 0.01).long(),
        "area": boxes[:, 2] * boxes[:, 3] * (0.4 + 0.6 * torch.rand(count, generator=g)),
    }


def _det_image(g: torch.Generator, gt: dict, dets: int, classes: int) -> dict:
    near = torch.rand(dets, generator=g) < (0.5 if gt["boxes"].shape[0] else 0.0)
    src = torch.randint(0, max(gt["boxes"].shape[0], 1), (dets,), generator=g)
    xy = torch.rand(dets, 2, generator=g) * IMAGE_SIDE * 0.8
    wh = 4 + torch.rand(dets, 2, generator=g).pow(2) * IMAGE_SIDE * 0.4
    boxes = torch.cat([xy, wh], 1)
    labels = torch.randint(0, classes, (dets,), generator=g)
    if gt["boxes"].shape[0]:
        jitter = torch.randn(dets, 4, generator=g) * 0.1 * gt["boxes"][src, 2:].repeat(1, 2)
        boxes = torch.where(near[:, None], gt["boxes"][src] + jitter, boxes)
        labels = torch.where(near & (torch.rand(dets, generator=g) < 0.8), gt["labels"][src], labels)
    boxes[:, 2:] = boxes[:, 2:].clamp(min=1.0)
    return {"boxes": boxes, "scores": torch.rand(dets, generator=g), "labels": labels}


def make_images(images: int, dets: int, classes: int, *, seed: int) -> tuple:
    """``(detections, ground_truths)``: per image dicts of float32 xywh boxes, as coco_evaluate takes."""
    g = torch.Generator().manual_seed(seed)
    gts = [_gt_image(g, classes) for _ in range(images)]
    return [_det_image(g, gt, dets, classes) for gt in gts], gts


def to_coco_json(detections: list, ground_truths: list, classes: int) -> tuple:
    """``(dataset, results)``: COCO json content (image ids from 1, annotation ids from 1)."""
    anns, results = [], []
    for i, (det, gt) in enumerate(zip(detections, ground_truths)):
        crowd = gt.get("iscrowd", torch.zeros(gt["labels"].shape)).tolist()
        area = gt["area"].tolist() if "area" in gt else [w * h for _, _, w, h in gt["boxes"].tolist()]
        for box, label, c, a in zip(gt["boxes"].tolist(), gt["labels"].tolist(), crowd, area):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label, "bbox": box})
            anns[-1].update(area=a, iscrowd=int(c))
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            results.append({"image_id": i + 1, "category_id": label, "bbox": box, "score": score})
    images = [{"id": i + 1} for i in range(len(ground_truths))]
    return {"images": images, "annotations": anns, "categories": [{"id": k} for k in range(classes)]}, results


def _run_cocoeval(coco_cls, eval_cls, dataset: dict, results: list, **kw) -> torch.Tensor:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls()
        gt.dataset = dataset
        gt.createIndex()
        evaluator = eval_cls(gt, gt.loadRes(results), "bbox", **kw)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return torch.tensor(evaluator.stats, dtype=torch.float64)


def pycocotools_stats(dataset: dict, results: list) -> torch.Tensor:
    """pycocotools' ``COCOeval.stats`` (``loadRes`` adds fields to the results in place)."""
    return _run_cocoeval(PyCOCO, COCOeval, dataset, results)


def faster_coco_eval_stats(dataset: dict, results: list) -> torch.Tensor:
    """faster-coco-eval's ``COCOeval_faster.stats``."""
    return _run_cocoeval(FastCOCO, COCOeval_faster, dataset, results, print_function=lambda *a, **k: None)


def coco_case(images: int, dets: int, classes: int) -> Case:
    """One evaluation of ``images`` x ``dets`` detections over ``classes`` classes."""
    detections, ground_truths = make_images(images, dets, classes, seed=images + dets + classes)
    dataset, results = to_coco_json(detections, ground_truths, classes)
    anchor = torch.zeros(0)  # the harness reads the device from the first input
    providers = {
        "fastmtl": lambda _, d, t, *__: coco_evaluate(d, t)["stats"],
        "fastmtl-json": lambda *a: coco_evaluate_json(a[3], a[4])["stats"],
    }
    if FastCOCO is not None:
        providers["faster-coco-eval"] = lambda *a: faster_coco_eval_stats(a[3], a[4])
    if PyCOCO is not None and images <= PYCOCOTOOLS_MAX_IMAGES:
        providers["pycocotools"] = lambda *a: pycocotools_stats(a[3], a[4])
    return Case(
        op="coco_evaluate",
        size=f"{images}img-{dets}det-{classes}cls",
        dtype=torch.float64,
        inputs=(anchor, detections, ground_truths, dataset, results),
        providers=providers,
        atol=1e-6,
        rtol=0.0,
    )


def cases(device: str = "cpu", quick: bool = False) -> list:
    """COCO evaluation cases (CPU only: the metric has no CUDA kernel); ``quick``: 50 images.

    The default run keeps 500 images (pycocotools included) and 5000 images x 100 detections x
    80 classes (COCO val2017's size) without pycocotools; ``--full`` adds 1000 images.
    """
    if torch.device(device).type != "cpu":
        return []
    if quick:
        return [coco_case(50, 20, 10)]
    out = [coco_case(500, 100, 80), coco_case(1000, 100, 80), coco_case(5000, 100, 80)]
    return mark_full_only(out, lambda c: not c.size.startswith("1000img"))
