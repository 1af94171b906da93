"""The ops, their valid calls and the bad-input mutations of the property suite (issue 10).

Each entry of ``SPECS`` is one public op through one route: ``"py"`` (the function of
``fastmtl.ops``) or ``"op"`` (``torch.ops.fastmtl.*`` directly). A valid call is a dict of
named arguments; a mutation changes one argument (or all tensors, for ``meta``) and records
which argument names an error about it may use. :func:`check_case` is the property:

* the call returns a result equal to the reference (the plain-PyTorch fallback: the same
  Python function with ``use_compiled`` off, for the ``"py"`` route; ``fastmtl.ops._reference``
  for the ``"op"`` route; torchvision for ``box_area``/``box_convert``), NaN where it has NaN, or
* it raises TypeError / ValueError / RuntimeError / NotImplementedError whose message names
  an argument the mutation touched (or an argument tied to it by shape, dtype or length).

A crash (segfault, abort) or a hang is caught by the parent test, which runs each group in a
subprocess with a timeout.
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional
from unittest import mock

import torch
import torchvision.ops as tv

import fastmtl.ops as F
from fastmtl.losses.segmentation import dice_loss
from fastmtl.metrics._coco_reference import coco_evaluate as coco_reference
from fastmtl.ops import _reference as R
from fastmtl.ops._triplet_reference import triplet_terms_reference
from fastmtl.ops._yolo_anchor_reference import yolo_anchor_loss_reference
from fastmtl.ops._yolo_v1_reference import yolo_v1_terms
from fastmtl.ops.yolo_v5 import yolov5_means

ERRORS = (TypeError, ValueError, RuntimeError, NotImplementedError)

# Mutations that change values only: a meta kernel cannot see them (values are unreadable).
VALUE_MUTATIONS = {"nan", "huge", "swap", "batch_index", "expand"}
# Errors of the value checks (CPU only): a meta call may return where these raise (a shorter
# input batch, say, leaves a roi's batch index out of range).
VALUE_ERRORS = (
    "batch ind",
    "NaN",
    "infinite",
    "class ind",
    "image fractions",
    "rows of targets",
    "the size",
    "has a value outside",
    "has values out of order",
)


def _boxes(g, n, *lead):
    xy = torch.rand(*lead, n, 2, generator=g) * 100
    wh = 1 + torch.rand(*lead, n, 2, generator=g) * 39
    return torch.cat([xy, xy + wh], -1)


def _rois(g, k, images=2):
    idx = torch.randint(0, images, (k, 1), generator=g).float()
    return torch.cat([idx, _boxes(g, k) * 0.3], 1)


def _features(g, n=2, c=3, h=12, w=10):
    return torch.randn(n, c, h, w, generator=g)


@dataclass
class Spec:
    name: str  # op name, with the route: "box_iou[py]"
    route: str  # "py" or "op"
    call: Callable  # (**kwargs) -> result
    make: Callable  # generator -> dict of arguments
    reference: Optional[Callable]  # (**kwargs) -> result; None: the route's own fallback
    tensors: tuple  # names of tensor arguments
    boxes: tuple = ()  # tensor arguments holding boxes in the last dim (x1, y1, x2, y2)
    rois: tuple = ()  # tensor arguments holding (batch index, x1, y1, x2, y2)
    ints: tuple = ()  # integer parameters (sizes, sampling_ratio, max_detections)
    floats: tuple = ()  # float parameters (thresholds, eps, sigma, scale)
    strings: tuple = ()  # option strings
    # names that a message may use for an argument: tied by shape / dtype / length, or the
    # name the other route gives it
    related: dict = field(default_factory=dict)
    # outputs whose first dimension depends on the data (meta kernels give a symbolic size)
    dynamic: bool = False
    # an element non-finite in both is equal (RoI align: a bin reading an infinite pixel is inf,
    # or NaN when a sample reads it with weight 0; the reference sums the weights first)
    nonfinite_equal: bool = False


def _pair_make(aligned):
    return lambda g: {"boxes1": _boxes(g, 5), "boxes2": _boxes(g, 5 if aligned else 3)}


# The C++ checks of the RoI ops name pooled_height / pooled_width as torchvision's Python
# argument, output_size, with the value (e.g. "output_size must be positive, got (-1, 2)").
POOLED = {k: (k, "output_size") for k in ("pooled_height", "pooled_width")}
PAIR = {"boxes1": ("boxes1", "boxes2"), "boxes2": ("boxes1", "boxes2")}


def _py(fn):
    return lambda **kw: fn(**kw)


def _specs():
    out = []

    def add(name, route, call, make, reference=None, **kw):
        out.append(Spec(f"{name}[{route}]", route, call, make, reference, **kw))

    # IoU family -------------------------------------------------------------------------
    for name, extra in [
        ("box_iou", {"fmt": "xyxy"}),
        ("generalized_box_iou", {}),
        ("distance_box_iou", {"eps": 1e-7}),
        ("complete_box_iou", {"eps": 1e-7}),
    ]:
        make = _pair_make(False)
        add(
            name,
            "py",
            _py(getattr(F, name)),
            lambda g, make=make, extra=extra: {**make(g), **extra},
            tensors=("boxes1", "boxes2"),
            boxes=("boxes1", "boxes2"),
            floats=tuple(k for k in extra if k == "eps"),
            strings=tuple(k for k in extra if k == "fmt"),
            related=PAIR,
        )
    add(
        "aligned_box_iou",
        "py",
        _py(F.aligned_box_iou),
        lambda g: {**_pair_make(True)(g), "kind": "ciou", "eps": 1e-7},
        tensors=("boxes1", "boxes2"),
        boxes=("boxes1", "boxes2"),
        floats=("eps",),
        strings=("kind",),
        related=PAIR,
    )
    for name in ("iou_loss", "giou_loss", "diou_loss", "ciou_loss"):
        add(
            name,
            "py",
            _py(getattr(F, name)),
            lambda g: {**_pair_make(True)(g), "reduction": "none", "eps": 1e-7},
            tensors=("boxes1", "boxes2"),
            boxes=("boxes1", "boxes2"),
            floats=("eps",),
            strings=("reduction",),
            related=PAIR,
        )
    for opname, aligned in (("pairwise_box_iou", False), ("aligned_box_iou", True)):
        add(
            opname,
            "op",
            getattr(torch.ops.fastmtl, opname),
            lambda g, aligned=aligned: {**_pair_make(aligned)(g), "kind": "diou", "eps": 1e-7},
            getattr(R, opname),
            tensors=("boxes1", "boxes2"),
            boxes=("boxes1", "boxes2"),
            floats=("eps",),
            strings=("kind",),
            related=PAIR,
        )

    # box_area / box_convert: plain PyTorch, torchvision is the reference ----------------------
    add(
        "box_area",
        "py",
        _py(F.box_area),
        lambda g: {"boxes": _boxes(g, 5)},
        lambda boxes: tv.box_area(boxes),
        tensors=("boxes",),
        boxes=("boxes",),
    )
    add(
        "box_convert",
        "py",
        _py(F.box_convert),
        lambda g: {"boxes": _boxes(g, 5), "in_fmt": "xyxy", "out_fmt": "cxcywh"},
        lambda boxes, in_fmt, out_fmt: tv.box_convert(boxes, in_fmt, out_fmt),
        tensors=("boxes",),
        boxes=("boxes",),
        strings=("in_fmt", "out_fmt"),
    )

    # NMS family -----------------------------------------------------------------------------
    nms_rel = {"boxes": ("boxes", "scores"), "scores": ("boxes", "scores")}
    bnms_rel = {k: ("boxes", "scores", "idxs") for k in ("boxes", "scores", "idxs")}

    def nms_make(g):
        return {"boxes": _boxes(g, 20), "scores": torch.rand(20, generator=g), "iou_threshold": 0.3}

    def bnms_make(g):
        return {**nms_make(g), "idxs": torch.randint(0, 3, (20,), generator=g)}

    common = dict(boxes=("boxes",), floats=("iou_threshold",), dynamic=True)
    add("nms", "py", _py(F.nms), nms_make, tensors=("boxes", "scores"), related=nms_rel, **common)
    add(
        "nms",
        "op",
        torch.ops.fastmtl.nms,
        nms_make,
        lambda boxes, scores, iou_threshold: R.nms(boxes, scores, None, iou_threshold),
        tensors=("boxes", "scores"),
        related=nms_rel,
        **common,
    )
    add(
        "batched_nms",
        "py",
        _py(F.batched_nms),
        bnms_make,
        tensors=("boxes", "scores", "idxs"),
        related=bnms_rel,
        **common,
    )
    add(
        "batched_nms",
        "op",
        torch.ops.fastmtl.batched_nms,
        bnms_make,
        R.nms,
        tensors=("boxes", "scores", "idxs"),
        related=bnms_rel,
        **common,
    )

    def soft_make(g):
        return {
            **bnms_make(g),
            "sigma": 0.5,
            "score_threshold": 0.001,
            "method": "gaussian" if torch.rand(1, generator=g).item() < 0.5 else "linear",
        }

    soft = dict(
        tensors=("boxes", "scores", "idxs"),
        boxes=("boxes",),
        floats=("iou_threshold", "sigma", "score_threshold"),
        strings=("method",),
        related=bnms_rel,
        dynamic=True,
    )
    add("soft_nms", "py", _py(F.soft_nms), soft_make, **soft)
    add("soft_nms", "op", torch.ops.fastmtl.soft_nms, soft_make, R.soft_nms, **soft)

    def mc_make(g):
        return {
            "boxes": _boxes(g, 12, 2),
            "scores": torch.rand(2, 12, 3, generator=g),
            "iou_threshold": 0.5,
            "score_threshold": 0.1,
            "max_detections": 7,
        }

    mc = dict(
        tensors=("boxes", "scores"),
        boxes=("boxes",),
        floats=("iou_threshold", "score_threshold"),
        ints=("max_detections",),
        related=nms_rel,
    )
    add("multiclass_nms", "py", _py(F.multiclass_nms), mc_make, **mc)
    add("multiclass_nms", "op", torch.ops.fastmtl.multiclass_nms, mc_make, R.multiclass_nms, **mc)

    # RoI ops --------------------------------------------------------------------------------
    roi_py_rel = {"input": ("input", "boxes"), "boxes": ("input", "boxes", "rois")}
    roi_op_rel = {"input": ("input", "rois"), "rois": ("input", "rois")}

    def ra_make(g):
        return {
            "input": _features(g),
            "boxes": _rois(g, 5),
            "output_size": (3, 2),
            "spatial_scale": 0.5,
            "sampling_ratio": 2,
            "aligned": True,
        }

    add(
        "roi_align",
        "py",
        _py(F.roi_align),
        ra_make,
        tensors=("input", "boxes"),
        rois=("boxes",),
        ints=("output_size", "sampling_ratio"),
        floats=("spatial_scale",),
        related={**roi_py_rel, "output_size": ("output_size",)},
        nonfinite_equal=True,
    )

    def ra_op_make(g):
        return {
            "input": _features(g),
            "rois": _rois(g, 5),
            "spatial_scale": 0.5,
            "pooled_height": 3,
            "pooled_width": 2,
            "sampling_ratio": 2,
            "aligned": False,
        }

    add(
        "roi_align",
        "op",
        torch.ops.fastmtl.roi_align,
        ra_op_make,
        R.roi_align,
        tensors=("input", "rois"),
        rois=("rois",),
        ints=("pooled_height", "pooled_width", "sampling_ratio"),
        floats=("spatial_scale",),
        related={**roi_op_rel, **POOLED},
        nonfinite_equal=True,
    )

    def rp_make(g):
        d = ra_make(g)
        return {k: d[k] for k in ("input", "boxes", "output_size", "spatial_scale")}

    add(
        "roi_pool",
        "py",
        _py(F.roi_pool),
        rp_make,
        tensors=("input", "boxes"),
        rois=("boxes",),
        ints=("output_size",),
        floats=("spatial_scale",),
        related=roi_py_rel,
    )

    def rp_op_make(g):
        d = ra_op_make(g)
        return {k: d[k] for k in ("input", "rois", "spatial_scale", "pooled_height", "pooled_width")}

    add(
        "roi_pool",
        "op",
        lambda **kw: torch.ops.fastmtl.roi_pool(**kw)[0],
        rp_op_make,
        R.roi_pool,
        tensors=("input", "rois"),
        rois=("rois",),
        ints=("pooled_height", "pooled_width"),
        floats=("spatial_scale",),
        related={**roi_op_rel, **POOLED},
    )

    # Gram / style / content -----------------------------------------------------------------
    add(
        "gram_matrix",
        "py",
        _py(F.gram_matrix),
        lambda g: {"features": _features(g), "normalize": True},
        tensors=("features",),
    )
    add(
        "gram_matrix",
        "op",
        torch.ops.fastmtl.gram_matrix,
        lambda g: {"features": _features(g), "normalize": False},
        R.gram_matrix,
        tensors=("features",),
    )
    style_rel = {"features": ("features", "target_gram"), "target_gram": ("features", "target_gram")}
    add(
        "style_loss",
        "py",
        _py(F.style_loss),
        lambda g: {
            "features": _features(g),
            "target_gram": torch.randn(3, 3, generator=g),
            "normalization": "gatys",
            "reduction": "none",
        },
        tensors=("features", "target_gram"),
        strings=("normalization", "reduction"),
        related=style_rel,
    )
    add(
        "style_loss",
        "op",
        lambda **kw: torch.ops.fastmtl.style_loss(**kw)[0],
        lambda g: {
            "features": _features(g),
            "target_gram": torch.randn(2, 3, 3, generator=g),
            "normalization": "mse",
        },
        R.style_loss,
        tensors=("features", "target_gram"),
        strings=("normalization",),
        related=style_rel,
    )
    add(
        "content_loss",
        "py",
        _py(F.content_loss),
        lambda g: {
            "features": _features(g),
            "target": _features(g, n=1)[0],
            "normalization": "mse",
            "reduction": "none",
        },
        tensors=("features", "target"),
        strings=("normalization", "reduction"),
        related={"features": ("features", "target"), "target": ("features", "target")},
    )

    # YOLO losses ----------------------------------------------------------------------------
    yolo_rel = {k: ("pred", "targets", "counts") for k in ("pred", "targets", "counts")}
    yolo_rel["num_boxes"] = yolo_rel["num_classes"] = ("num_boxes", "num_classes", "pred")
    yolo_options = {"num_boxes": 2, "num_classes": 3, "lambda_coord": 5.0, "lambda_noobj": 0.5}
    yolo_options_kw = dict(
        tensors=("pred", "targets", "counts"),
        ints=("num_boxes", "num_classes"),
        floats=("lambda_coord", "lambda_noobj"),
        related=yolo_rel,
    )
    add(
        "yolo_v1_loss",
        "py",
        _py(F.yolo_v1_loss),
        lambda g: {**_yolo_v1(g), **yolo_options, "wh": "signed_sqrt", "reduction": "none"},
        strings=("wh", "conf_target", "reduction"),
        **yolo_options_kw,
    )
    add(
        "yolo_v1_loss",
        "op",
        lambda **kw: torch.ops.fastmtl.yolo_v1_loss(**kw)[0],
        lambda g: {**_yolo_v1(g), **yolo_options, "wh": "sqrt", "conf_target": "iou", "compute_grad": False},
        lambda compute_grad, **kw: yolo_v1_terms(**kw),
        strings=("wh", "conf_target"),
        **yolo_options_kw,
    )
    # The fused anchor loss (fastmtl.losses.yolo_anchor_loss calls it; the op route only), two scales
    v3_tensors = ("preds0", "preds1", "targets", "counts", "anchors")
    add(
        "yolo_v3_loss",
        "op",
        lambda preds0, preds1, **kw: torch.ops.fastmtl.yolo_v3_loss([preds0, preds1], **kw)[0],
        _yolo_v3,
        _yolo_v3_reference,
        tensors=v3_tensors,
        floats=("ignore_threshold",),
        related={k: ("preds", "targets", "counts", "anchors") for k in v3_tensors},
    )
    # its yolov5 mode, through the means that fastmtl.losses.yolo_anchor_loss takes of the op
    add(
        "yolov5_loss",
        "op",
        lambda preds0, preds1, **kw: torch.stack(yolov5_means([preds0, preds1], **kw)),
        _yolov5,
        _yolov5_reference,
        tensors=v3_tensors,
        floats=("anchor_t",),
        related={k: ("preds", "targets", "counts", "anchors") for k in v3_tensors},
    )
    # Triplet loss ---------------------------------------------------------------------------
    triplet_kw = dict(
        tensors=("embeddings", "labels"),
        floats=("margin",),
        related={k: ("embeddings", "labels") for k in ("embeddings", "labels")},
    )
    add(
        "triplet_margin_loss",
        "py",
        _py(F.triplet_margin_loss),
        lambda g: {**_triplet(g), "mining": "semihard", "distance": "euclidean", "reduction": "none"},
        strings=("mining", "distance", "reduction"),
        **triplet_kw,
    )
    add(
        "triplet_margin_loss",
        "op",
        lambda **kw: torch.ops.fastmtl.triplet_margin_loss(**kw)[0],
        lambda g: {**_triplet(g), "mining": "all", "distance": "cosine", "compute_grad": False},
        lambda compute_grad, **kw: triplet_terms_reference(**kw)[0],
        strings=("mining", "distance"),
        **triplet_kw,
    )
    add(  # batch-hard's compact path (no B x B weights)
        "triplet_margin_loss_hard",
        "op",
        lambda **kw: torch.ops.fastmtl.triplet_margin_loss(**kw)[0],
        lambda g: {**_triplet(g), "mining": "hard", "distance": "euclidean", "compute_grad": True},
        lambda compute_grad, **kw: triplet_terms_reference(**kw)[0],
        strings=("mining", "distance"),
        **triplet_kw,
    )
    classic_kw = dict(
        tensors=("anchor", "positive", "negative"),
        floats=("margin", "p", "eps"),
        related={k: ("anchor", "positive", "negative") for k in ("anchor", "positive", "negative")},
    )
    add(
        "triplet_loss",
        "py",
        _py(F.triplet_loss),
        lambda g: {**_triplet_rows(g), "swap": True, "reduction": "none"},
        strings=("reduction",),
        **classic_kw,
    )
    add(
        "triplet_loss",
        "op",
        lambda **kw: torch.ops.fastmtl.triplet_loss(**kw)[0],
        lambda g: {**_triplet_rows(g), "swap": True, "compute_grad": False},
        lambda anchor, positive, negative, margin, p, eps, swap, compute_grad: (
            torch.nn.functional.triplet_margin_loss(
                anchor, positive, negative, margin, p, eps, swap, reduction="none"
            ).to(R.compute_dtype(anchor.dtype))
        ),
        **classic_kw,
    )
    # Segmentation loss ------------------------------------------------------------------------
    add(
        "dice_loss",
        "py",
        _py(dice_loss),
        _dice_make,
        _dice_reference,
        tensors=("logits", "target"),
        floats=("smooth",),
        related={k: ("logits", "target") for k in ("logits", "target")},
    )
    # COCO evaluation (fastmtl.metrics.coco_evaluate calls it; the op route only) --------------
    add(
        "coco_evaluate",
        "op",
        torch.ops.fastmtl.coco_evaluate,
        _coco_make,
        coco_reference,
        tensors=tuple(
            k for k in _coco_make(torch.Generator()) if k.startswith(("det_", "gt_", "iou_", "rec", "area"))
        ),
        ints=("max_dets", "num_images", "num_classes"),
        related={
            **{k: COCO_DETS for k in COCO_DETS},
            **{k: COCO_GTS for k in COCO_GTS},
            "num_images": ("num_images", "num_classes", "det_images", "gt_images"),
            "num_classes": ("num_images", "num_classes", "det_labels", "gt_labels"),
        },
    )
    return {s.name: s for s in out}


def _yolo_v1(g, n=2, grid=3, boxes=2, classes=3, max_boxes=3) -> dict:
    pred = torch.randn(n, grid, grid, 5 * boxes + classes, generator=g)
    targets = torch.rand(n, max_boxes, 5, generator=g)
    targets[..., 0] = torch.randint(0, classes, (n, max_boxes), generator=g).float()
    return {"pred": pred, "targets": targets, "counts": torch.tensor([max_boxes, 1])[:n]}


def _yolo_v3(g, n=2, classes=3) -> dict:
    out = _yolo_v1(g, n=n, classes=classes)
    out["targets"][..., 3:] = out["targets"][..., 3:].clamp(min=0.05)  # sides > 0: tw = log(w / anchor)
    return {
        "preds0": torch.randn(n, 2, 4, 4, 5 + classes, generator=g),
        "preds1": torch.randn(n, 2, 2, 2, 5 + classes, generator=g),
        "targets": out["targets"],
        "counts": out["counts"],
        "anchors": torch.tensor([[[6.0, 8.0], [12.0, 9.0]], [[20.0, 24.0], [40.0, 30.0]]]),
        "strides": [8.0, 16.0],
        "ignore_threshold": 0.5,
        "compute_grad": False,
    }


def _yolo_v3_reference(preds0, preds1, targets, counts, anchors, strides, ignore_threshold, compute_grad):
    """Per-image [N, 4] terms of the plain-PyTorch loss (one image at a time: a test reference)."""
    rows = []
    for i in range(preds0.shape[0]):
        out = yolo_anchor_loss_reference(
            [preds0[i : i + 1], preds1[i : i + 1]], targets[i : i + 1], counts[i : i + 1], anchors, strides,
            ignore_threshold=ignore_threshold,
        )  # fmt: skip
        rows.append(torch.stack([out[k] for k in ("box", "obj", "noobj", "cls")]))
    dt = R.compute_dtype(preds0.dtype)
    return torch.stack(rows).to(dt) if rows else torch.zeros(0, 4, dtype=dt)


def _triplet(g, b=7, dim=4) -> dict:
    labels = torch.randint(0, 3, (b,), generator=g)
    return {"embeddings": torch.randn(b, dim, generator=g), "labels": labels, "margin": 0.3}


def _dice_make(g) -> dict:
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[0, 0, 0] = -100  # an ignored pixel
    return {"logits": torch.randn(2, 3, 4, 5, generator=g), "target": target, "smooth": 1.0}


def _dice_reference(logits, target, smooth, ignore_index=-100):
    """Soft Dice in float64, written independently of the loss: per-class sums over kept pixels."""
    p = logits.double().softmax(1)
    keep = target != ignore_index
    dice = []
    for c in range(logits.shape[1]):
        pc, yc = p[:, c][keep], (target[keep] == c).double()
        dice.append((2 * (pc * yc).sum() + smooth) / (pc.sum() + yc.sum() + smooth))
    return (1 - torch.stack(dice).mean()).to(R.compute_dtype(logits.dtype))


def _triplet_rows(g, b=5, dim=3) -> dict:
    t = {k: torch.randn(b, dim, generator=g) for k in ("anchor", "positive", "negative")}
    return {**t, "margin": 1.0, "p": 2.0, "eps": 1e-6}


def _yolov5(g) -> dict:
    out = _yolo_v3(g)
    del out["ignore_threshold"], out["compute_grad"]
    return {**out, "anchor_t": 4.0, "balance": (4.0, 1.0)}


def _yolov5_reference(preds0, preds1, targets, counts, anchors, strides, anchor_t, balance):
    """yolov5's three means before the gains (the plain-PyTorch loss with unit gains)."""
    out = yolo_anchor_loss_reference(
        [preds0, preds1], targets, counts, anchors, strides, mode="yolov5", anchor_t=anchor_t,
        balance=balance, lambda_box=1.0, lambda_obj=1.0, lambda_cls=1.0, reduction="mean",
    )  # fmt: skip
    return torch.stack([out[k] for k in ("box", "obj", "cls")]).to(R.compute_dtype(preds0.dtype))


COCO_DETS = ("det_boxes", "det_scores", "det_labels", "det_images")
COCO_GTS = ("gt_boxes", "gt_labels", "gt_images", "gt_iscrowd", "gt_areas")


def _coco_make(g):
    """A small COCO evaluation: 3 images, 3 classes, xywh float64 boxes, some detections near
    ground truths, a crowd one, two IoU thresholds, two area ranges, max_dets (1, 5)."""
    gt = torch.cat([torch.rand(6, 2, generator=g) * 40, 1 + torch.rand(6, 2, generator=g) * 30], 1).double()
    src = torch.randint(0, 6, (12,), generator=g)
    det = (gt[src] + torch.randn(12, 4, generator=g).double() * 3).clamp(min=0)
    f64 = torch.float64
    return {
        "det_boxes": det,
        "det_scores": (torch.rand(12, generator=g) * 5).floor().double() / 5,
        "det_labels": torch.randint(0, 3, (12,), generator=g),
        "det_images": torch.randint(0, 3, (12,), generator=g),
        "gt_boxes": gt,
        "gt_labels": torch.randint(0, 3, (6,), generator=g),
        "gt_images": torch.randint(0, 3, (6,), generator=g),
        "gt_iscrowd": torch.rand(6, generator=g) < 0.2,
        "gt_areas": gt[:, 2] * gt[:, 3],
        "iou_thresholds": torch.tensor([0.5, 0.75], dtype=f64),
        "recall_thresholds": torch.linspace(0, 1, 11, dtype=f64),
        "area_ranges": torch.tensor([[0.0, 1e10], [0.0, 400.0]], dtype=f64),
        "max_dets": (1, 5),
        "num_images": 3,
        "num_classes": 3,
    }


SPECS = _specs()

# Groups run in one subprocess each (a crash fails that group's parent test only).
GROUPS = {
    "iou": [n for n in SPECS if "iou" in n or n.startswith("box_")],
    "nms": [n for n in SPECS if "nms" in n],
    "roi": [n for n in SPECS if n.startswith("roi_")],
    "gram": [n for n in SPECS if n.startswith(("gram", "style", "content"))],
    "yolo": [n for n in SPECS if n.startswith("yolo")],
    "triplet": [n for n in SPECS if n.startswith("triplet")],
    "coco": [n for n in SPECS if n.startswith("coco")],
    "segmentation": [n for n in SPECS if n.startswith("dice")],
}
assert sorted(sum(GROUPS.values(), [])) == sorted(SPECS)


# The reference of the "py" route: the same function with the compiled kernels off ------------
_MODULES = ("box_iou", "gram", "multiclass_nms", "nms", "roi", "soft_nms", "style", "triplet", "yolo_v1")


@contextlib.contextmanager
def fallback():
    with contextlib.ExitStack() as stack:
        for m in _MODULES:
            stack.enter_context(mock.patch(f"fastmtl.ops.{m}.use_compiled", lambda *a, **k: False))
        yield


# Outcome checks -------------------------------------------------------------------------------


class Mismatch(AssertionError):
    pass


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def _tol(dtype):
    return {
        torch.float16: (1e-2, 1e-2),
        torch.bfloat16: (5e-2, 5e-2),
        torch.float32: (1e-4, 1e-5),
        torch.float64: (1e-7, 1e-9),
    }.get(dtype, (0, 0))


def assert_equal_results(got, want, what, nonfinite_equal=False):
    got, want = _flat(got), _flat(want)
    if len(got) != len(want):
        raise Mismatch(f"{what}: {len(got)} outputs, reference {len(want)}")
    for i, (a, b) in enumerate(zip(got, want)):
        if not isinstance(a, torch.Tensor):
            if a != b:
                raise Mismatch(f"{what}: output {i} is {a!r}, reference {b!r}")
            continue
        rtol, atol = _tol(a.dtype)
        if nonfinite_equal and a.is_floating_point() and a.shape == b.shape and a.dtype == b.dtype:
            both = ~torch.isfinite(a) & ~torch.isfinite(b)
            a, b = a.detach().masked_fill(both, math.nan), b.detach().masked_fill(both, math.nan)
        try:
            torch.testing.assert_close(
                a.detach(), b.detach(), rtol=rtol, atol=atol, equal_nan=True, check_device=True
            )
        except AssertionError as e:
            raise Mismatch(f"{what}: output {i} differs from the reference:\n{e}") from None


def names_in(message: str, names) -> bool:
    return any(n in message for n in names)


@dataclass
class Outcome:
    result: object = None
    error: Optional[BaseException] = None


def run(fn, kwargs) -> Outcome:
    try:
        return Outcome(result=fn(**kwargs))
    except BaseException as e:  # noqa: BLE001 - judged by the caller
        return Outcome(error=e)


def _check_error(e: BaseException, names, what):
    if not isinstance(e, ERRORS):
        raise Mismatch(
            f"{what}: raised {type(e).__name__} (not a Type/Value/Runtime/NotImplemented error): {e}"
        )
    msg = str(e)
    if not names_in(msg, names):
        raise Mismatch(f"{what}: {type(e).__name__} does not name any of {sorted(names)}: {msg[:400]}")


def _on_cpu(kwargs, originals):
    return {
        k: originals[k] if isinstance(v, torch.Tensor) and v.device.type == "meta" else v
        for k, v in kwargs.items()
    }


def _absurd(spec: Spec, kwargs: dict) -> bool:
    for a in spec.ints:
        v = kwargs.get(a)
        for x in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) > ABSURD:
                return True
    return False


def _as_schema(spec: Spec, kwargs: dict) -> dict:
    """The op route's numbers as the dispatcher passes them to the kernel: a 0-dim tensor for an
    ``int`` becomes int(t) (truncated), for a ``float`` float(t); an int for a ``float`` a double."""
    out = dict(kwargs)
    for a in (*spec.ints, *spec.floats):
        v = out.get(a)
        if isinstance(v, torch.Tensor) and v.dim() == 0:
            out[a] = int(v) if a in spec.ints else float(v)
        elif a in spec.floats and isinstance(v, int):
            out[a] = float(v)
    return out


def check_case(spec: Spec, kwargs: dict, mutations: list, names: set, originals: dict) -> str:
    """The property for one mutated call. Returns "equal", "raised" or "meta" (what happened)."""
    what = f"{spec.name} {mutations}"
    got = run(spec.call, kwargs)
    if got.error is not None:
        _check_error(got.error, names | {"meta"} if "meta" in mutations else names, what)
        return "raised"
    if "meta" in mutations:
        # The meta kernel must agree with the real one: the same call on CPU tensors returns
        # outputs of the same shapes and dtypes (data-dependent sizes aside), or raises only
        # for values the meta kernel cannot read.
        cpu = run(spec.call, _on_cpu(kwargs, originals))
        if cpu.error is not None:
            if not (set(mutations) & VALUE_MUTATIONS or names_in(str(cpu.error), VALUE_ERRORS)):
                raise Mismatch(f"{what}: meta call returned, the CPU call raised {cpu.error!r}")
            _check_error(cpu.error, names, what + " on CPU")
            return "meta"
        for i, (m, c) in enumerate(zip(_flat(got.result), _flat(cpu.result))):
            if not isinstance(m, torch.Tensor):
                continue
            if m.device.type != "meta" or m.dtype != c.dtype or m.dim() != c.dim():
                raise Mismatch(
                    f"{what}: meta output {i} {m.dtype} {m.device} {m.dim()}d vs CPU {c.dtype} {c.dim()}d"
                )
            if not spec.dynamic and tuple(m.shape) != tuple(c.shape):
                raise Mismatch(f"{what}: meta output {i} shape {tuple(m.shape)} vs CPU {tuple(c.shape)}")
        return "meta"
    if _absurd(spec, kwargs):
        # An absurd size that the kernel accepted (say, on zero rois): the plain-PyTorch
        # reference would loop or allocate for hours, so only the output size is judged.
        total = sum(t.numel() for t in _flat(got.result) if isinstance(t, torch.Tensor))
        if total > 10**6:
            raise Mismatch(f"{what}: accepted an absurd size and returned {total} elements")
        return "absurd"
    if spec.reference is None:
        with fallback():
            want = run(spec.call, kwargs)
    else:
        want = run(spec.reference, _as_schema(spec, kwargs))
    if want.error is not None:
        if isinstance(want.error, ERRORS) and names_in(str(want.error), names):
            # The reference names the argument; the kernel returned instead of rejecting.
            raise Mismatch(f"{what}: returned, but the reference raised {want.error!r}")
        raise Mismatch(
            f"{what}: returned, but the reference raised {type(want.error).__name__}: {want.error}"
        )
    assert_equal_results(got.result, want.result, what, spec.nonfinite_equal)
    return "equal"


# Mutations ----------------------------------------------------------------------------------

DTYPES = [
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.float16,
    torch.bfloat16,
    torch.float64,
]
SPECIAL_FLOATS = [
    -1.0,
    0.0,
    -0.0,
    1e-50,
    1e-300,
    5e-324,
    1.5,
    1e10,
    3.5e38,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
]
SPECIAL_INTS = [-(2**63), -(2**31), -2, -1, 0, 2**31 - 1, 2**31, 2**32, 2**32 + 2, 2**62]
BAD_STRINGS = [
    "",
    "XYXY",
    "xyxy ",
    "none\x00",
    "mean",
    "iou",
    "é",
    "gaussian",
    "linear",
    "xywh",
    "cxcywh",
    "mse",
]


def float_dtype_of(t):
    return t.dtype if t.is_floating_point() else torch.float32


ABSURD = 4096  # an int parameter past this: the slow reference is not run (see check_case)


def _names(spec: Spec, arg: str) -> set:
    return {arg, *spec.related.get(arg, ())}


def _noncontig(t):
    return torch.stack([t, t], -1)[..., 0]


def mutate_tensor(draw, st, spec: Spec, kwargs: dict, arg: str) -> tuple:
    """One mutation of tensor argument ``arg``: returns (kind, names an error may use)."""
    t = kwargs[arg]
    kinds = [
        "rank_up",
        "rank_down",
        "shape_last",
        "length",
        "zero_dim",
        "dtype",
        "noncontig",
        "expand",
        "flip",
    ]
    kinds += ["requires_grad", "mixed_half"]
    if t.is_floating_point():
        kinds += ["nan", "nan", "huge"]
    if arg in spec.boxes:
        kinds += ["swap", "huge"]
    if arg in spec.rois:
        kinds += ["batch_index", "batch_index", "swap"]
    if t.dim() == 4:
        kinds += ["channels_last"]
    kind = draw(st.sampled_from(kinds))
    names = _names(spec, arg)
    if kind == "rank_up":
        t = t.unsqueeze(draw(st.integers(0, t.dim())))
    elif kind == "rank_down":
        t = t.reshape(-1) if draw(st.booleans()) or t.dim() == 0 or t.shape[0] == 0 else t[0]
    elif kind == "shape_last":
        d = draw(st.integers(-1, t.dim() - 1)) if t.dim() else 0
        if t.dim():
            n = t.shape[d]
            new = draw(st.sampled_from([1, 2, 3, 4, 5, 6, n + 1, max(n - 1, 0)]))
            idx = torch.arange(new) % max(n, 1)
            t = (
                t.index_select(d, idx)
                if n
                else t.new_zeros(
                    t.shape[:d] + (new,) + t.shape[d + 1 :] if d != -1 else t.shape[:-1] + (new,)
                )
            )
    elif kind == "length":
        if t.dim() and t.shape[0] > 1:
            t = t[: draw(st.integers(1, t.shape[0] - 1))]
        else:
            t = torch.cat([t, t]) if t.dim() else t
    elif kind == "zero_dim":
        if t.dim():
            t = t.narrow(draw(st.integers(0, t.dim() - 1)), 0, 0)
    elif kind == "dtype":
        dt = draw(st.sampled_from(DTYPES))
        t = t.to(dt) if dt != torch.bool else t > t.float().mean()
    elif kind == "mixed_half":
        t = t.to(draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64])))
    elif kind == "noncontig":
        t = _noncontig(t)
    elif kind == "expand":
        if t.dim() and t.shape[0]:
            t = t[:1].expand_as(t)
        else:
            t = t.expand(3, *t.shape) if t.dim() == 0 else t
    elif kind == "flip":
        t = t.flip(draw(st.integers(0, t.dim() - 1))) if t.dim() else t
    elif kind == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif kind == "requires_grad":
        if t.is_floating_point():
            t = t.detach().clone().requires_grad_()
    elif kind == "nan":
        flat = t.detach().clone().reshape(-1)
        if flat.numel():
            k = draw(st.integers(1, min(4, flat.numel())))
            for _ in range(k):
                i = draw(st.integers(0, flat.numel() - 1))
                flat[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        t = flat.reshape(t.shape)
    elif kind == "huge":
        scale = draw(st.sampled_from([1e6, 1e15, 1e30, 1e36, 3e38 / 150, -1e30]))
        t = t.detach().double() * scale
        t = t.to(kwargs[arg].dtype)
        if arg in spec.rois:
            t[:, 0] = kwargs[arg][:, 0]
    elif kind == "swap":
        t = t.detach().clone()
        off = 1 if arg in spec.rois else 0
        if t.dim() and t.shape[-1] >= 4 + off:
            rows = t.reshape(-1, t.shape[-1])
            rows[:, [off, off + 2]] = rows[:, [off + 2, off]]
            if draw(st.booleans()):
                rows[:, [off + 1, off + 3]] = rows[:, [off + 3, off + 1]]
    elif kind == "batch_index":
        t = t.detach().clone()
        if t.dim() == 2 and t.shape[0]:
            value = draw(
                st.sampled_from([-1.0, 2.0, 3.0, 1e10, -1e10, 0.5, 1.7, -0.5, 1.999, math.nan, math.inf])
            )
            i = draw(st.integers(0, t.shape[0] - 1))
            t[i, 0] = value
    kwargs[arg] = t
    return kind, names


def mutate_number(draw, st, spec: Spec, kwargs: dict, arg: str) -> tuple:
    v = kwargs[arg]
    names = _names(spec, arg)
    kind = "bad_type" if draw(st.integers(0, 7)) == 0 else "value"
    if kind == "bad_type":
        kwargs[arg] = draw(st.sampled_from(["0.5", None, [1.0], torch.tensor(0.5), 1j]))
    elif isinstance(v, tuple):  # output_size
        choice = draw(st.integers(0, 3))
        if choice == 0:
            kwargs[arg] = draw(st.sampled_from(SPECIAL_INTS))
        elif choice == 1:
            kwargs[arg] = (
                draw(st.sampled_from(SPECIAL_INTS + [1, 3])),
                draw(st.sampled_from(SPECIAL_INTS + [1, 3])),
            )
        elif choice == 2:
            kwargs[arg] = draw(st.sampled_from([(1, 2, 3), (2,), (), (2.5, 2), (1.0, 1.0)]))
        else:
            kwargs[arg] = [3, 2]
    elif arg in spec.ints:
        kwargs[arg] = draw(st.sampled_from(SPECIAL_INTS + [1, 3, 1.0, 2.5, True]))
    else:
        kwargs[arg] = draw(st.sampled_from(SPECIAL_FLOATS + [1, True, 2**70]))
    return kind, names


def mutate_string(draw, st, spec: Spec, kwargs: dict, arg: str) -> tuple:
    kwargs[arg] = draw(st.sampled_from(BAD_STRINGS + [None, 1]))
    return "string", _names(spec, arg)


def draw_case(draw, st, spec: Spec):
    """A valid call of ``spec`` with one or two mutations: (kwargs, mutations, names, originals)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    kwargs = spec.make(g)
    mutations, names = [], set()
    count = 1 if draw(st.integers(0, 3)) else 2
    params = [a for a in (*spec.ints, *spec.floats, *spec.strings) if a in kwargs]
    for _ in range(count):
        pool = ["tensor"] * 3 + (["param"] * 2 if params else []) + ["meta"]
        where = draw(st.sampled_from(pool))
        if where == "tensor":
            arg = draw(st.sampled_from(spec.tensors))
            if not isinstance(kwargs.get(arg), torch.Tensor):
                continue
            kind, n = mutate_tensor(draw, st, spec, kwargs, arg)
        elif where == "param":
            arg = draw(st.sampled_from(params))
            fn = mutate_string if arg in spec.strings else mutate_number
            kind, n = fn(draw, st, spec, kwargs, arg)
        else:
            if "meta" in mutations:
                continue
            kind, n = "meta", set(spec.tensors)
        mutations.append(kind)
        names |= n
    originals = dict(kwargs)
    if "meta" in mutations:
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                kwargs[k] = v.detach().to("meta").requires_grad_(v.requires_grad)
    return kwargs, mutations, names, originals
