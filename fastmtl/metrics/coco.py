"""COCO box evaluation with the numbers of pycocotools' ``COCOeval`` (``iouType="bbox"``).

The rules are COCO's: detections ranked per image and class by decreasing score (stable: ties
keep the order given) and cut to the largest ``max_dets``; each is matched greedily, at every
IoU threshold and area range, to the ground truth it overlaps most among those not yet taken,
ground truths outside the area range and crowd ones visited last and only when no other
matches; a detection matched to such a ground truth, or unmatched with its own area outside
the range, is ignored. Crowd ground truths can be taken many times and their IoU divides by
the detection's area. Precision is made non-increasing from the right and sampled at 101
recall points; AP and AR average over the classes that have ground truth (the classes are the
labels found in either input; one without ground truth is -1 and left out, as COCOeval leaves
out a category without annotations). The matching and the accumulation run in C++
(``torch.ops.fastmtl.coco_evaluate``: CPU only, inputs on another device are copied; there is
no CUDA kernel, see csrc/kernels/coco.h); without the extension a plain-Python version runs
(slow, with a warning).

Not replicated: pycocotools treats a ground truth whose annotation id is 0 as unmatched (its
ids double as match flags); here every ground truth is a real one.

Boxes are COCO's ``(x, y, width, height)``, as in COCO json files and pycocotools; they are
evaluated in float64 as pycocotools does, so its 12 ``stats`` come out equal (to rounding).
"""

from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.metrics._coco_reference import coco_evaluate as _reference
from fastmtl.ops._checks import InputError

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_EVAL_IOU_THRESHOLDS",
    "COCO_MAX_DETS",
    "COCO_RECALL_THRESHOLDS",
    "COCO_STAT_NAMES",
    "coco_evaluate",
    "coco_evaluate_json",
    "coco_evaluate_packed",
]


def _linspace(start: float, stop: float, num: int) -> tuple:
    # numpy.linspace's arithmetic (k * step + start, the last one exact): pycocotools'
    # thresholds to the bit (its 0.9 is 0.8999999999999999).
    step = (stop - start) / (num - 1)
    return tuple(k * step + start for k in range(num - 1)) + (stop,)


COCO_EVAL_IOU_THRESHOLDS = _linspace(0.5, 0.95, 10)
COCO_RECALL_THRESHOLDS = _linspace(0.0, 1.0, 101)
COCO_MAX_DETS = (1, 10, 100)
COCO_AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
# COCOeval.stats, in its order.
COCO_STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip


def _field(entry: Mapping, key: str, where: str, required: bool = True) -> Optional[Tensor]:
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a dict of tensors, got {type(entry).__name__}")
    if key not in entry or entry[key] is None:
        if required:
            raise InputError(f"{where} has no {key!r}")
        return None
    return torch.as_tensor(entry[key])


def _image_rows(entries: Sequence, name: str, keys: tuple) -> list:
    """Per image, the tensors of ``keys`` (boxes first), their row counts checked."""
    rows = []
    for i, entry in enumerate(entries):
        where = f"{name}[{i}]"
        boxes = _field(entry, "boxes", where)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            if boxes.numel() != 0:
                raise InputError(
                    f"{where}['boxes'] must have shape [N, 4] (x, y, w, h), got {list(boxes.shape)}"
                )
            boxes = boxes.reshape(0, 4)
        fields = [boxes]
        for key in keys:
            t = _field(entry, key, where, required=key not in ("iscrowd", "area"))
            if t is not None and (t.dim() != 1 or t.shape[0] != boxes.shape[0]):
                raise InputError(
                    f"{where}[{key!r}] must have shape [{boxes.shape[0]}] like its boxes, got {list(t.shape)}"
                )
            fields.append(t)
        rows.append(fields)
    return rows


def _convert(t, dtype: torch.dtype, name: str) -> Tensor:
    """``t`` on the CPU in ``dtype`` (float64 for boxes, scores and areas; int64 for indices)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or (dtype == torch.int64 and t.is_floating_point()):
        raise TypeError(
            f"{name} must be {'an integer' if dtype == torch.int64 else 'a real'} tensor, got {t.dtype}"
        )
    return t.detach().to("cpu", dtype)


def _cat(parts: list, dtype: torch.dtype, name: str) -> Tensor:
    return _convert(torch.cat(parts), dtype, name) if parts else torch.empty(0, dtype=dtype)


def _pack(detections: Sequence, ground_truths: Sequence) -> dict:
    """The per-image dicts as flat rows with an image index."""
    if len(detections) != len(ground_truths):
        raise InputError(
            f"detections and ground_truths must have one entry per image, got {len(detections)} and "
            f"{len(ground_truths)}"
        )
    dets = _image_rows(detections, "detections", ("scores", "labels"))
    gts = _image_rows(ground_truths, "ground_truths", ("labels", "iscrowd", "area"))
    images = torch.arange(len(detections))
    packed = {
        "det_boxes": _cat([d[0] for d in dets], torch.float64, "detections boxes").reshape(-1, 4),
        "det_scores": _cat([d[1] for d in dets], torch.float64, "detections scores"),
        "det_labels": _cat([d[2] for d in dets], torch.int64, "detections labels"),
        "det_images": images.repeat_interleave(torch.tensor([d[0].shape[0] for d in dets], dtype=torch.long)),
        "gt_boxes": _cat([g[0] for g in gts], torch.float64, "ground_truths boxes").reshape(-1, 4),
        "gt_labels": _cat([g[1] for g in gts], torch.int64, "ground_truths labels"),
        "gt_images": images.repeat_interleave(torch.tensor([g[0].shape[0] for g in gts], dtype=torch.long)),
    }
    packed["gt_iscrowd"] = _optional_column([g[2] for g in gts], [g[0] for g in gts], torch.bool, "iscrowd")
    packed["gt_areas"] = _optional_column([g[3] for g in gts], [g[0] for g in gts], torch.float64, "area")
    return packed


def _optional_column(parts: list, boxes: list, dtype: torch.dtype, key: str) -> Optional[Tensor]:
    """The images' ``key`` tensors concatenated; None when no image gives one (the default then
    applies to all), else images without one get the default (not crowd; ``w * h``)."""
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        default = (
            (lambda b: torch.zeros(b.shape[0], dtype=dtype))
            if key == "iscrowd"
            else (lambda b: b[:, 2] * b[:, 3])
        )
        parts = [default(b.detach().cpu().double()) if p is None else p for p, b in zip(parts, boxes)]
    return _cat(parts, dtype, f"ground_truths {key}")


def coco_evaluate(
    detections: Sequence,
    ground_truths: Sequence,
    *,
    iou_thresholds: Sequence = COCO_EVAL_IOU_THRESHOLDS,
    max_dets: Sequence = COCO_MAX_DETS,
    area_ranges: Mapping = COCO_AREA_RANGES,
    recall_thresholds: Sequence = COCO_RECALL_THRESHOLDS,
) -> dict:
    """COCO mAP@[.5:.95], mAP@0.5 and the rest of ``COCOeval.stats``, per image lists in.

    Args:
        detections: per image, ``{"boxes": [D, 4], "scores": [D], "labels": [D]}``.
        ground_truths: per image, ``{"boxes": [G, 4], "labels": [G]}`` and optionally
            ``"iscrowd": [G]`` (nonzero: a crowd region; default 0) and ``"area": [G]`` (the
            area that picks the area range, e.g. the mask's; default ``w * h``).
            Boxes are ``(x, y, w, h)`` (COCO's format), any real dtype (evaluated in float64);
            labels are integer category ids.
        iou_thresholds: a detection matches at IoU ``>=`` each (pycocotools' 10 by default).
        max_dets: detections kept per image and class, non-decreasing (AP uses the last).
        area_ranges: name -> ``(min, max)`` of areas, both inclusive; ``stats`` reads "all",
            "small", "medium" and "large".
        recall_thresholds: recall points precision is sampled at (COCO's 101).

    Returns:
        A dict: ``"stats"`` (float64 ``[12]``, ``COCOeval.stats``: -1 where undefined), each
        stat as a float under :data:`COCO_STAT_NAMES`, ``"precision"`` ``[T, R, K, A, M]`` and
        ``"recall"`` ``[T, K, A, M]`` (``COCOeval.eval``'s arrays, -1 where a class has no
        ground truth), ``"classes"`` (the K category ids, sorted), ``"ap_per_class"`` (``[K]``,
        AP@[.5:.95] on all areas at the last ``max_dets``, -1 without ground truth), and the
        thresholds, area names and max_dets used.
    """
    packed = _pack(detections, ground_truths)
    return coco_evaluate_packed(
        **packed,
        num_images=len(detections),
        iou_thresholds=iou_thresholds,
        max_dets=max_dets,
        area_ranges=area_ranges,
        recall_thresholds=recall_thresholds,
    )


def coco_evaluate_packed(
    det_boxes: Tensor,
    det_scores: Tensor,
    det_labels: Tensor,
    det_images: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_images: Tensor,
    gt_iscrowd: Optional[Tensor] = None,
    gt_areas: Optional[Tensor] = None,
    *,
    num_images: Optional[int] = None,
    iou_thresholds: Sequence = COCO_EVAL_IOU_THRESHOLDS,
    max_dets: Sequence = COCO_MAX_DETS,
    area_ranges: Mapping = COCO_AREA_RANGES,
    recall_thresholds: Sequence = COCO_RECALL_THRESHOLDS,
) -> dict:
    """:func:`coco_evaluate` on flat rows: every detection and ground truth with the index of
    its image (``det_images``, ``gt_images``: int64 in ``[0, num_images)``; ties between
    images rank the lower index first). ``num_images`` defaults to the largest index + 1.
    """
    det_boxes = _convert(det_boxes, torch.float64, "det_boxes")
    gt_boxes = _convert(gt_boxes, torch.float64, "gt_boxes")
    det_scores = _convert(det_scores, torch.float64, "det_scores")
    det_labels, det_images = (
        _convert(det_labels, torch.int64, "det_labels"),
        _convert(det_images, torch.int64, "det_images"),
    )
    gt_labels, gt_images = (
        _convert(gt_labels, torch.int64, "gt_labels"),
        _convert(gt_images, torch.int64, "gt_images"),
    )
    if gt_iscrowd is None:
        gt_iscrowd = torch.zeros(gt_labels.shape, dtype=torch.bool)
    gt_iscrowd = _convert(gt_iscrowd, torch.bool, "gt_iscrowd")  # nonzero: crowd
    if gt_areas is None:  # loadRes's w * h; the C++ check names gt_boxes when it is not [G, 4]
        gt_areas = (
            gt_boxes[:, 2] * gt_boxes[:, 3]
            if gt_boxes.dim() == 2 and gt_boxes.shape[1] == 4
            else gt_labels.double()
        )
    gt_areas = _convert(gt_areas, torch.float64, "gt_areas")
    classes, labels = _class_index(torch.cat([gt_labels.reshape(-1), det_labels.reshape(-1)]))
    if num_images is None:
        images = torch.cat([det_images.reshape(-1), gt_images.reshape(-1), torch.tensor([-1])])
        num_images = int(images.max()) + 1
    names = list(area_ranges)
    ranges = torch.tensor([list(map(float, area_ranges[n])) for n in names], dtype=torch.float64).reshape(
        -1, 2
    )
    iou_t = torch.tensor([float(t) for t in iou_thresholds], dtype=torch.float64)
    rec_t = torch.tensor([float(r) for r in recall_thresholds], dtype=torch.float64)
    evaluate = torch.ops.fastmtl.coco_evaluate if use_compiled(det_boxes, "coco_evaluate") else _reference
    precision, recall = evaluate(
        det_boxes, det_scores, labels[gt_labels.numel() :].reshape(det_labels.shape), det_images,
        gt_boxes, labels[: gt_labels.numel()].reshape(gt_labels.shape), gt_images, gt_iscrowd, gt_areas,
        iou_t, rec_t, ranges, [int(m) for m in max_dets], num_images, classes.numel(),
    )  # fmt: skip
    return _results(precision, recall, classes, iou_t, rec_t, names, tuple(int(m) for m in max_dets))


def _class_index(labels: Tensor) -> tuple:
    """(sorted distinct labels, each label's index among them). A lookup table when the labels
    span a short range (category ids do): torch.unique's sort is slower, and much slower on a
    busy machine where its threads wait on each other."""
    if labels.numel() == 0:
        return labels, labels
    low, high = int(labels.min()), int(labels.max())
    if high - low > 4 * labels.numel() + 4096:
        return torch.unique(labels, return_inverse=True)
    present = torch.zeros(high - low + 1, dtype=torch.bool)
    present[labels - low] = True
    classes = present.nonzero().reshape(-1) + low
    return classes, (present.cumsum(0) - 1)[labels - low]


def _mean_valid(s: np.ndarray) -> float:
    """COCOeval.summarize's mean of the defined entries (-1 when none is)."""
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _stats(precision: np.ndarray, recall: np.ndarray, iou_t: list, names: list, max_dets: tuple) -> list:
    """COCOeval.summarize's 12 numbers; -1 where a threshold, area name or max_dets is missing.
    In numpy, as COCOeval (the same sums): a dozen small reductions, where torch's intra-op
    threads cost more than they save."""

    def ap(iou=None, area="all", m=max_dets[-1]):
        if area not in names or m not in max_dets or (iou is not None and iou not in iou_t):
            return -1.0
        s = precision[..., names.index(area), max_dets.index(m)]
        return _mean_valid(s if iou is None else s[iou_t.index(iou)])

    def ar(area="all", m=max_dets[-1]):
        if area not in names or m not in max_dets:
            return -1.0
        return _mean_valid(recall[..., names.index(area), max_dets.index(m)])

    ar_dets = [max_dets[min(i, len(max_dets) - 1)] for i in range(3)]
    return [
        ap(), ap(0.5), ap(0.75), ap(area="small"), ap(area="medium"), ap(area="large"),
        *(ar(m=m) for m in ar_dets), ar("small"), ar("medium"), ar("large"),
    ]  # fmt: skip


def _per_class_ap(precision: np.ndarray, names: list) -> np.ndarray:
    """AP@[.5:.95] of each class on all areas at the last max_dets; -1 without ground truth."""
    out = np.full(precision.shape[2], -1.0)
    if "all" in names:
        s = precision[..., names.index("all"), -1]  # [T, R, K]
        valid = (s > -1).all(axis=(0, 1))
        out[valid] = s[:, :, valid].mean(axis=(0, 1))
    return out


def _results(precision, recall, classes, iou_t, rec_t, names, max_dets) -> dict:
    stats = _stats(precision.numpy(), recall.numpy(), iou_t.tolist(), names, max_dets)
    return {
        "stats": torch.tensor(stats, dtype=torch.float64),
        **dict(zip(COCO_STAT_NAMES, stats)),
        "precision": precision,
        "recall": recall,
        "classes": classes,
        "ap_per_class": torch.from_numpy(_per_class_ap(precision.numpy(), names)),
        "iou_thresholds": iou_t,
        "recall_thresholds": rec_t,
        "area_names": tuple(names),
        "max_dets": max_dets,
    }


def coco_evaluate_json(ground_truth: Mapping, results: Sequence, **options) -> dict:
    """:func:`coco_evaluate` on COCO json content: a ground-truth dataset dict (``images``,
    ``annotations``, ``categories``) and a results list (``image_id``, ``category_id``,
    ``bbox``, ``score``), as ``COCO(...)`` / ``loadRes`` take them. Images are ordered by id as
    pycocotools orders them; only the dataset's categories are evaluated."""
    image_ids = sorted({img["id"] for img in ground_truth["images"]})
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    cats = {c["id"] for c in ground_truth.get("categories", [])}
    anns = [a for a in ground_truth["annotations"] if a["category_id"] in cats and a["image_id"] in index]
    dets = [r for r in results if r["category_id"] in cats]
    missing = [r["image_id"] for r in dets if r["image_id"] not in index]
    if missing:
        raise InputError(f"results name image_id {missing[0]!r}, which is not in the ground truth's images")

    def column(rows, key, dtype):
        return torch.tensor([r[key] for r in rows], dtype=dtype)

    return coco_evaluate_packed(
        column(dets, "bbox", torch.float64).reshape(-1, 4),
        column(dets, "score", torch.float64),
        column(dets, "category_id", torch.int64),
        torch.tensor([index[r["image_id"]] for r in dets], dtype=torch.int64),
        column(anns, "bbox", torch.float64).reshape(-1, 4),
        column(anns, "category_id", torch.int64),
        torch.tensor([index[a["image_id"]] for a in anns], dtype=torch.int64),
        torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
        column(anns, "area", torch.float64),
        num_images=len(image_ids),
        **options,
    )


def check_op_args(
    db, ds, dl, di, gb, gl, gi, gc, ga, iou_t, rec_t, ranges, max_dets, num_images, num_classes
):
    """The shape, dtype and size checks of ``torch.ops.fastmtl.coco_evaluate`` (its fake kernel's)."""
    n, m = _check_rows(db, "det_boxes"), _check_rows(gb, "gt_boxes")
    for t, name, rows, of, dtype in (
        (ds, "det_scores", n, "det_boxes", torch.float64), (dl, "det_labels", n, "det_boxes", torch.int64),
        (di, "det_images", n, "det_boxes", torch.int64), (gl, "gt_labels", m, "gt_boxes", torch.int64),
        (gi, "gt_images", m, "gt_boxes", torch.int64), (gc, "gt_iscrowd", m, "gt_boxes", torch.bool),
        (ga, "gt_areas", m, "gt_boxes", torch.float64),
    ):  # fmt: skip
        if t.dim() != 1 or t.shape[0] != rows:
            raise InputError(f"{name} must have shape [{rows}] like {of}, got {list(t.shape)}")
        _check_dtype(t, name, dtype)
    for t, name in ((iou_t, "iou_thresholds"), (rec_t, "recall_thresholds")):
        if t.dim() != 1 or t.shape[0] == 0:
            raise InputError(f"{name} must have shape [T] with T > 0, got {list(t.shape)}")
    if ranges.dim() != 2 or ranges.shape[1] != 2 or ranges.shape[0] == 0:
        raise InputError(f"area_ranges must have shape [A, 2] with A > 0, got {list(ranges.shape)}")
    for t, name in ((iou_t, "iou_thresholds"), (rec_t, "recall_thresholds"), (ranges, "area_ranges")):
        _check_dtype(t, name, torch.float64)
    _check_sizes(iou_t.shape[0] * rec_t.shape[0] * ranges.shape[0], max_dets, num_images, num_classes)


def _check_rows(boxes: Tensor, name: str) -> int:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise InputError(f"{name} must have shape [N, 4] (x, y, w, h), got {list(boxes.shape)}")
    _check_dtype(boxes, name, torch.float64)
    return boxes.shape[0]


def _check_dtype(t: Tensor, name: str, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")


def _check_sizes(cells: int, max_dets, num_images: int, num_classes: int) -> None:
    if not max_dets:
        raise InputError("max_dets must not be empty")
    if any(m <= 0 for m in max_dets) or list(max_dets) != sorted(max_dets):
        raise InputError(f"max_dets must be positive and non-decreasing, got {list(max_dets)}")
    if num_images < 0 or num_classes < 0:
        raise InputError(f"num_images and num_classes must be >= 0, got {num_images} and {num_classes}")
    if num_images * num_classes >= 2**63:
        raise InputError(f"num_images * num_classes must fit in 64 bits, got {num_images} and {num_classes}")
    if cells * num_classes * len(max_dets) > 2**31:
        raise InputError(f"num_classes = {num_classes}: the precision array is past 2^31 elements")


def _register() -> None:
    @torch.library.register_fake("fastmtl::coco_evaluate")
    def _(*args):
        check_op_args(*args)
        iou_t, rec_t, ranges, max_dets, num_classes = args[9], args[10], args[11], args[12], args[14]
        t, r, a, m = iou_t.shape[0], rec_t.shape[0], ranges.shape[0], len(max_dets)
        precision = args[0].new_empty((t, r, num_classes, a, m), dtype=torch.float64)
        return precision, args[0].new_empty((t, num_classes, a, m), dtype=torch.float64)


if has_compiled_ops():
    _register()
