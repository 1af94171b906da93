"""Batched class-aware NMS with fixed-size outputs: fastmtl.ops.multiclass_nms.

Against the independent float64 reference ``multiclass_nms_ref`` (tests/ops/reference_nms.py),
itself checked against torchvision's batched_nms here; on shared and class-specific boxes, one
class and many, sparse and heavy overlap, score ties across boxes and classes, zero-area and NaN
boxes, every dtype, truncation and padding, empty batches, non-contiguous inputs, bad input, the
dispatcher (opcheck, fake impl), torch.compile, the pure-PyTorch fallback and CUDA (no host sync,
CUDA graphs).

Exactness: as in test_nms.py the random boxes lie on a power-of-two grid, so areas and unions are
exact in float32 and the IoU is far from every threshold tried unless it equals it. The outputs are
copies of input values, so every dtype must give exactly the detections of the reference evaluated
on the same (rounded) boxes and scores: counts, classes, indices, box and score values.
"""

import importlib
import math

import pytest
import torch

from fastmtl import ops
from fastmtl.ops._checks import InputError
from tests.ops.reference_nms import multiclass_nms_ref, nms_ref
from tests.ops.test_nms import grid_random_boxes
from tests.utils import (
    DEVICES,
    DISPATCH_DEVICES,
    compiled_only,
    cuda,
    degenerate_boxes,
    grid_boxes,
)

# The attribute fastmtl.ops.multiclass_nms is the function; this is the module (where use_compiled is
# looked up).
op_module = importlib.import_module("fastmtl.ops.multiclass_nms")

BOX_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# 0: any overlap suppresses; 1: nothing does; negative: every same-class box but NaN IoU.
THRESHOLDS = (-0.1, 0.0, 0.5, 0.7, 1.0)
FIELDS = ("boxes", "scores", "classes", "indices", "counts")
SETS = ("sparse", "heavy", "grid", "degenerate")
LAYOUTS = ("shared", "per-class", "one-class")


# --------------------------------------------------------------------------- helpers


def make_batch(kind, shape, gen, *, per_class_boxes=False):
    """(float64 boxes, float32 scores) of ``B`` images, ``N`` boxes and ``C`` classes, ``shape =
    (B, N, C)``: boxes ``[B, N, 4]`` (``[B, N, C, 4]`` with ``per_class_boxes``), scores ``[B, N, C]``.

    "sparse" and "heavy" have distinct scores in (0, 1) (about 5% below the default threshold);
    "grid" and "degenerate" (zero-area boxes) have scores in {0, 0.25, 0.5, 0.75, 1}: many exact
    ties across boxes and classes, and 0 is below the default threshold."""
    num_images, n, num_classes = shape
    box_shape = (num_images, n, num_classes) if per_class_boxes else (num_images, n)
    count = math.prod(box_shape)
    if kind == "sparse":  # few overlaps: most candidates are kept
        boxes = grid_random_boxes(count, gen=gen, scale=1000.0, min_size=0.005, max_size=0.03)
    elif kind == "heavy":  # many overlaps: few are kept
        boxes = grid_random_boxes(count, gen=gen, scale=100.0, min_size=0.05, max_size=0.6)
    elif kind == "grid":  # identical, nested and touching boxes
        boxes = grid_boxes(count, gen=gen, dtype=torch.float64, cells=12)
    elif kind == "degenerate":  # points, lines and small boxes: 0 / 0 IoU
        boxes = degenerate_boxes(count, gen=gen, dtype=torch.float64)
    else:
        raise ValueError(kind)
    total = num_images * n * num_classes
    if kind in ("sparse", "heavy"):
        scores = (torch.randperm(total, generator=gen).float() + 0.5) / total
    else:
        scores = torch.randint(0, 5, (total,), generator=gen).float() / 4
    return boxes.reshape(*box_shape, 4), scores.reshape(num_images, n, num_classes)


def make_layout(kind, layout, gen, *, num_images=2, n=60, num_classes=3):
    """A batch of one of the LAYOUTS: shared boxes, class-specific boxes, or one class ([B, N] scores)."""
    boxes, scores = make_batch(
        kind,
        (num_images, n, 1 if layout == "one-class" else num_classes),
        gen,
        per_class_boxes=layout == "per-class",
    )
    return boxes, (scores[..., 0] if layout == "one-class" else scores)


def _first_difference(got, want):
    diff = (got != want).nonzero()
    return tuple(diff[0].tolist()) if diff.numel() else None


def assert_outputs(got, want, *, device="cpu", box_dtype=torch.float32, score_dtype=torch.float32, msg=""):
    """The 5 output tensors ``got`` equal the reference's ``want`` exactly (padding included), with
    the documented shapes, dtypes and device."""
    assert isinstance(got, tuple) and len(got) == 5, type(got)
    num_images, k = want[2].shape
    expected = {
        "boxes": ((num_images, k, 4), box_dtype),
        "scores": ((num_images, k), score_dtype),
        "classes": ((num_images, k), torch.int64),
        "indices": ((num_images, k), torch.int64),
        "counts": ((num_images,), torch.int64),
    }
    for name, t in zip(FIELDS, got):
        assert isinstance(t, torch.Tensor), f"{name}: {type(t)}"
        shape, dtype = expected[name]
        assert tuple(t.shape) == shape and t.dtype == dtype, (
            f"{name}: got {t.dtype} {list(t.shape)}, expected {dtype} {list(shape)}. {msg}"
        )
        assert t.device.type == torch.device(device).type, f"{name} on {t.device}. {msg}"
    boxes, scores, classes, indices, counts = (t.cpu() for t in got)
    want_boxes, want_scores, want_classes, want_indices, want_counts = want
    assert torch.equal(counts, want_counts), f"counts {counts.tolist()}, want {want_counts.tolist()}. {msg}"
    for name, g, w in (("indices", indices, want_indices), ("classes", classes, want_classes)):
        where = _first_difference(g, w)
        if where is not None:
            img, slot = where
            raise AssertionError(
                f"{name} differ first at image {img}, slot {slot}: got {g[img, slot : slot + 5].tolist()}, "
                f"expected {w[img, slot : slot + 5].tolist()} (counts {want_counts.tolist()}). {msg}"
            )
    # copies of the inputs: exact (NaN coordinates of kept NaN boxes compare equal)
    for name, g, w in (("boxes", boxes, want_boxes), ("scores", scores, want_scores)):
        torch.testing.assert_close(
            g.double(), w, rtol=0, atol=0, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}\n{msg}"
        )


def assert_detections(got, want, **kwargs):
    """A ``Detections`` NamedTuple equal to the reference's outputs (see :func:`assert_outputs`)."""
    assert type(got).__name__ == "Detections" and getattr(got, "_fields", None) == FIELDS, type(got)
    assert_outputs(tuple(got), want, **kwargs)


def tv_detections(tv, boxes, scores, iou_threshold, score_threshold, max_detections, min_score=None):
    """torchvision.ops.batched_nms over the qualifying candidates of one image (flat order ``n * C + c``,
    ``idxs`` = class), truncated: (indices, classes) of the kept detections. ``boxes``: ``[N, 4]`` or
    ``[N, C, 4]``; ``scores``: ``[N, C]``. ``min_score``: only the candidates scoring at least that."""
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)
    qualify = flat.double() > score_threshold  # compared in float64, as the threshold is a double
    if min_score is not None:
        qualify &= flat >= min_score
    cand = torch.nonzero(qualify).flatten()
    cand_boxes = boxes.reshape(-1, 4)[cand] if boxes.dim() == 3 else boxes[cand // num_classes]
    keep = tv.ops.batched_nms(cand_boxes, flat[cand], cand % num_classes, iou_threshold)[:max_detections]
    return cand[keep] // num_classes, cand[keep] % num_classes


def assert_like_torchvision(
    tv, det, boxes, scores, iou_threshold, score_threshold, max_detections, *, cut=False, msg=""
):
    """``det`` as :func:`tv_detections` image by image. ``cut``: where an image has all its
    ``max_detections`` slots filled, run torchvision only on the candidates scoring at least the
    last one kept (the greedy pass never looks further, so the kept prefix is the same): fast."""
    for img in range(scores.shape[0]):
        count = int(det.counts[img])
        last = det.scores[img, count - 1].cpu() if cut and count == max_detections and count else None
        indices, classes = tv_detections(
            tv, boxes[img], scores[img], iou_threshold, score_threshold, max_detections, min_score=last
        )
        assert count == indices.numel(), f"image {img}: {count} kept, torchvision {indices.numel()}. {msg}"
        assert torch.equal(det.indices[img, :count].cpu(), indices), f"image {img} indices. {msg}"
        assert torch.equal(det.classes[img, :count].cpu(), classes), f"image {img} classes. {msg}"


def assert_padding(det):
    """Every slot from counts[b] on holds boxes 0, scores 0, classes -1 and indices -1."""
    k = det.classes.shape[1]
    pad = torch.arange(k, device=det.counts.device)[None, :] >= det.counts[:, None]
    assert (det.boxes[pad] == 0).all() and (det.scores[pad] == 0).all()
    assert (det.classes[pad] == -1).all() and (det.indices[pad] == -1).all()
    assert (det.classes[~pad] >= 0).all() and (det.indices[~pad] >= 0).all()


def _strided_boxes(boxes):
    """Non-contiguous views equal to ``boxes`` ``[..., 4]``."""
    cols = torch.zeros(*boxes.shape[:-1], 7, dtype=boxes.dtype, device=boxes.device)
    cols[..., 2:6] = boxes
    rows = torch.zeros(boxes.shape[0], 2 * boxes.shape[1], *boxes.shape[2:], dtype=boxes.dtype)
    rows = rows.to(boxes.device)
    rows[:, ::2] = boxes
    views = {
        "transposed": boxes.transpose(-1, -2).contiguous().transpose(-1, -2),
        "column-slice": cols[..., 2:6],
        "row-strided": rows[:, ::2],
    }
    for v in views.values():
        assert not v.is_contiguous() and torch.equal(v, boxes)
    return views


# --------------------------------------------------------------------------- the reference itself


def test_reference_hand_worked():
    """One image, 4 boxes, 2 classes, worked by hand."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5], [5, 0, 15, 10], [20, 20, 30, 30]]])
    # IoU(0, 1) = 0.5, IoU(0, 2) = 1/3, IoU(1, 2) = 0.2; box 3 overlaps none
    scores = torch.tensor([[[0.9, 0.2], [0.8, 0.85], [0.7, 0.01], [0.6, 0.3]]])
    # candidates by score: (0,0) .9, (1,1) .85, (1,0) .8, (2,0) .7, (3,0) .6, (3,1) .3, (0,1) .2;
    # (2,1) .01 is below the score threshold
    out_boxes, out_scores, classes, indices, counts = multiclass_nms_ref(boxes, scores, 0.4, 0.05, 4)
    # (1,0) goes (IoU .5 with (0,0)); the 4th kept fills the slots
    assert counts.tolist() == [4]
    assert indices.tolist() == [[0, 1, 2, 3]]
    assert classes.tolist() == [[0, 1, 0, 0]]
    assert out_scores[0].tolist() == pytest.approx([0.9, 0.85, 0.7, 0.6])
    assert torch.equal(out_boxes[0], boxes[0, [0, 1, 2, 3]].double())
    # threshold 0.3: (2,0) goes too (IoU 1/3 with (0,0)), and (0,1) (IoU .5 with (1,1)): padding
    out_boxes, out_scores, classes, indices, counts = multiclass_nms_ref(boxes, scores, 0.3, 0.05, 7)
    assert counts.tolist() == [4]
    assert indices.tolist() == [[0, 1, 3, 3, -1, -1, -1]]
    assert classes.tolist() == [[0, 1, 0, 1, -1, -1, -1]]
    assert out_scores[0, 4:].tolist() == [0.0] * 3 and (out_boxes[0, 4:] == 0).all()
    # threshold 0.6: all 7 candidates are kept
    _, out_scores, classes, indices, counts = multiclass_nms_ref(boxes, scores, 0.6, 0.05, 7)
    assert indices.tolist() == [[0, 1, 1, 2, 3, 3, 0]]
    assert classes.tolist() == [[0, 1, 0, 0, 0, 1, 1]]
    assert out_scores[0].tolist() == pytest.approx([0.9, 0.85, 0.8, 0.7, 0.6, 0.3, 0.2])


@pytest.mark.parametrize("per_class_boxes", [False, True], ids=["shared", "per-class"])
@pytest.mark.parametrize("kind", ["sparse", "heavy"])
def test_reference_matches_torchvision(kind, per_class_boxes, gen, seed):
    """The reference against torchvision's batched_nms on the qualifying candidates (distinct scores)."""
    tv = pytest.importorskip("torchvision")
    boxes, scores = make_batch(kind, (2, 80, 4), gen, per_class_boxes=per_class_boxes)
    boxes = boxes.float()
    for threshold in (0.0, 0.3, 0.5, 0.7):
        for max_detections in (30, 400):
            *_, classes, indices, counts = multiclass_nms_ref(boxes, scores, threshold, 0.05, max_detections)
            for img in range(2):
                want_indices, want_classes = tv_detections(
                    tv, boxes[img], scores[img], threshold, 0.05, max_detections
                )
                count = int(counts[img])
                msg = f"thr={threshold} max={max_detections} image {img} seed={seed}"
                assert count == want_indices.numel(), msg
                assert torch.equal(indices[img, :count], want_indices), msg
                assert torch.equal(classes[img, :count], want_classes), msg


def test_reference_one_class_is_nms(gen, seed):
    boxes, scores = make_batch("grid", (2, 70, 1), gen)
    _, _, classes, indices, counts = multiclass_nms_ref(boxes, scores[..., 0], 0.5, 0.3, 1000)
    for img in range(2):
        above = torch.nonzero(scores[img, :, 0] > 0.3).flatten()
        want = above[nms_ref(boxes[img, above], scores[img, above, 0], 0.5)]
        assert indices[img, : int(counts[img])].tolist() == want.tolist(), f"seed={seed}"
        assert (classes[img, : int(counts[img])] == 0).all()


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", SETS)
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, dtype, kind, layout, gen, seed):
    boxes, scores = make_layout(kind, layout, gen, n=45)
    boxes, scores = boxes.to(device, dtype), scores.to(device, dtype)
    for threshold in THRESHOLDS:
        got = ops.multiclass_nms(boxes, scores, threshold, max_detections=30)
        # on the (rounded) boxes and scores as the op saw them
        want = multiclass_nms_ref(boxes, scores, threshold, 0.05, 30)
        assert_detections(
            got, want, device=device, box_dtype=dtype, score_dtype=dtype, msg=f"thr={threshold} seed={seed}"
        )
        assert_padding(got)


def test_defaults(gen, seed):
    """score_threshold=0.05 and max_detections=100 by default."""
    boxes, scores = make_batch("sparse", (2, 60, 3), gen)
    boxes = boxes.float()
    want = multiclass_nms_ref(boxes, scores, 0.5, 0.05, 100)
    assert (want[4] == 100).all()  # truncated
    assert_detections(ops.multiclass_nms(boxes, scores, 0.5), want, msg=f"seed={seed}")
    assert_detections(
        ops.multiclass_nms(boxes, scores, iou_threshold=0.5, score_threshold=0.05, max_detections=100),
        want,
        msg=f"seed={seed}",
    )


@pytest.mark.parametrize("per_class_boxes", [False, True], ids=["shared", "per-class"])
@pytest.mark.parametrize("kind", ["sparse", "heavy"])
def test_matches_torchvision(kind, per_class_boxes, gen, seed):
    """float32, distinct scores: torchvision.ops.batched_nms over the qualifying candidates, truncated."""
    tv = pytest.importorskip("torchvision")
    boxes, scores = make_batch(kind, (3, 150, 4), gen, per_class_boxes=per_class_boxes)
    boxes = boxes.float()
    for threshold in (0.0, 0.3, 0.5, 0.7):
        for max_detections in (50, 1000):
            det = ops.multiclass_nms(boxes, scores, threshold, 0.05, max_detections)
            msg = f"thr={threshold} max={max_detections} seed={seed}"
            assert_like_torchvision(tv, det, boxes, scores, threshold, 0.05, max_detections, msg=msg)


def test_16_images_5000_boxes(gen, seed):
    """A realistic batch (16 x 5000 boxes, 3 classes), against torchvision, and independent of the
    number of threads."""
    tv = pytest.importorskip("torchvision")
    boxes, scores = make_batch("sparse", (16, 5000, 3), gen)
    boxes = (boxes / 4).float()  # 5000 boxes of 1.25% to 7.5% of 250: a fair amount of overlap
    det = ops.multiclass_nms(boxes, scores, 0.5, 0.3, 100)
    assert (det.counts == 100).all()
    assert_like_torchvision(tv, det, boxes, scores, 0.5, 0.3, 100, cut=True, msg=f"seed={seed}")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = ops.multiclass_nms(boxes, scores, 0.5, 0.3, 100)
    finally:
        torch.set_num_threads(threads)
    for name, a, b in zip(FIELDS, det, serial):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("device", DEVICES)
def test_one_class_scores(device, gen, seed):
    """[B, N] scores: one class, numbered 0; the same as [B, N, 1] scores, and as nms on the boxes
    above the score threshold."""
    boxes, scores = make_batch("heavy", (3, 80, 1), gen)
    boxes, scores = boxes.float().to(device), scores.to(device)
    for threshold in (0.0, 0.5):
        det = ops.multiclass_nms(boxes, scores[..., 0], threshold, 0.2, 1000)
        assert (det.classes[det.indices >= 0] == 0).all()
        same = ops.multiclass_nms(boxes, scores, threshold, 0.2, 1000)
        for name, a, b in zip(FIELDS, det, same):
            assert torch.equal(a, b), name
        for img in range(3):
            above = torch.nonzero(scores[img, :, 0] > 0.2).flatten()
            want = above[ops.nms(boxes[img, above], scores[img, above, 0], threshold)]
            assert det.indices[img, : int(det.counts[img])].tolist() == want.tolist(), f"seed={seed}"


@pytest.mark.parametrize("device", DEVICES)
def test_score_ties_break_by_flat_index(device):
    """Equal scores are visited by increasing flat index n * C + c (box first, then class)."""
    boxes = torch.tensor([[[0.0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]]], device=device)
    scores = torch.full((1, 4, 3), 0.5, device=device)
    det = ops.multiclass_nms(boxes, scores, 0.5, max_detections=12)
    assert det.counts.tolist() == [12]
    assert det.indices[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert det.classes[0].tolist() == [0, 1, 2] * 4
    # a lower box index wins over a lower class: (0, 2) before (1, 0)
    scores[0, 0, 2] = scores[0, 1, 0] = 0.75
    det = ops.multiclass_nms(boxes, scores, 0.5, max_detections=3)
    assert det.indices[0].tolist() == [0, 1, 0] and det.classes[0].tolist() == [2, 0, 0]
    # identical boxes, all tied: per class the lowest index is kept, and classes do not interact
    same = boxes[:, :1].expand(1, 4, 4)
    det = ops.multiclass_nms(same, torch.full((1, 4, 3), 0.5, device=device), 0.5, max_detections=5)
    assert det.counts.tolist() == [3]
    assert det.indices[0].tolist() == [0, 0, 0, -1, -1] and det.classes[0].tolist() == [0, 1, 2, -1, -1]
    # 0.0 and -0.0 tie too
    zeros = torch.tensor([[[0.0, -0.0], [-0.0, 0.0]]], device=device)
    det = ops.multiclass_nms(same[:, :2], zeros, 0.5, score_threshold=-1.0, max_detections=4)
    assert det.indices[0].tolist() == [0, 0, -1, -1] and det.classes[0].tolist() == [0, 1, -1, -1]
    # the same with class-specific boxes: the box of (n, c) is boxes[b, n, c]
    per_class = same[:, :, None].expand(1, 4, 3, 4)
    det = ops.multiclass_nms(per_class, torch.full((1, 4, 3), 0.5, device=device), 0.5, max_detections=5)
    assert det.indices[0].tolist() == [0, 0, 0, -1, -1] and det.classes[0].tolist() == [0, 1, 2, -1, -1]


def test_class_specific_boxes():
    """With [B, N, C, 4] boxes a class is suppressed by its own box of another index."""
    boxes = torch.tensor(
        [[[[0.0, 0, 4, 4], [10, 10, 14, 14]], [[0, 0, 4, 4.5], [20, 20, 24, 24]]]]
    )  # box 1 of class 0 nearly equals box 0 of class 0; the class-1 boxes are apart
    scores = torch.tensor([[[0.9, 0.8], [0.7, 0.6]]])
    det = ops.multiclass_nms(boxes, scores, 0.5, max_detections=4)
    assert det.counts.tolist() == [3]
    assert det.indices[0].tolist() == [0, 0, 1, -1] and det.classes[0].tolist() == [0, 1, 1, -1]
    assert det.boxes[0, :3].tolist() == [[0, 0, 4, 4], [10, 10, 14, 14], [20, 20, 24, 24]]
    # shared boxes: boxes[:, :, 0] for both classes; now class 1 also loses its box 1
    det = ops.multiclass_nms(boxes[:, :, 0], scores, 0.5, max_detections=4)
    assert det.indices[0].tolist() == [0, 0, -1, -1] and det.classes[0].tolist() == [0, 1, -1, -1]


@pytest.mark.parametrize("device", DEVICES)
def test_nothing_above_the_score_threshold(device, gen):
    boxes, scores = make_batch("heavy", (3, 50, 4), gen)
    boxes = boxes.float().to(device)
    nan = torch.full_like(scores, float("nan"))
    for s, threshold in (
        (scores * 0.05, 0.05),  # all below
        (torch.full_like(scores, 0.25), 0.25),  # equal is not greater
        (nan, 0.05),  # NaN never qualifies
        (nan, -float("inf")),
        (torch.full_like(scores, -float("inf")), -float("inf")),
    ):
        for max_detections in (0, 10):
            det = ops.multiclass_nms(boxes, s.to(device), 0.5, threshold, max_detections)
            assert det.counts.tolist() == [0, 0, 0]
            assert det.boxes.shape == (3, max_detections, 4)
            assert_padding(det)


@pytest.mark.parametrize("device", DEVICES)
def test_max_detections_truncates_and_pads(device, gen, seed):
    """The first k kept detections, then padding: the same as the first k slots of a larger k."""
    boxes, scores = make_batch("sparse", (2, 80, 3), gen)
    boxes, scores = boxes.float().to(device), scores.to(device)
    full = ops.multiclass_nms(boxes, scores, 0.5, 0.05, 500)
    counts = full.counts.cpu()
    assert (counts < 500).all() and (counts > 50).all()
    assert_padding(full)
    for k in (0, 1, 7, int(counts.min()), int(counts.max()), 300):
        det = ops.multiclass_nms(boxes, scores, 0.5, 0.05, k)
        assert det.classes.shape == (2, k)
        assert torch.equal(det.counts.cpu(), counts.clamp(max=k)), f"k={k} seed={seed}"
        for name, a, b in zip(FIELDS[:4], det, full):
            assert torch.equal(a, b[:, :k]), f"{name} k={k} seed={seed}"


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    for boxes, scores in (
        (torch.empty(2, 0, 4), torch.empty(2, 0, 3)),  # N = 0
        (torch.empty(2, 0, 3, 4), torch.empty(2, 0, 3)),
        (torch.empty(2, 0, 4), torch.empty(2, 0)),
        (torch.empty(0, 5, 4), torch.empty(0, 5, 3)),  # B = 0
        (torch.empty(0, 5, 3, 4), torch.empty(0, 5, 3)),
        (torch.empty(0, 0, 4), torch.empty(0, 0)),
        (torch.zeros(2, 5, 4), torch.zeros(2, 5, 0)),  # C = 0: nothing to detect
        (torch.zeros(2, 5, 0, 4), torch.zeros(2, 5, 0)),
    ):
        num_images = boxes.shape[0]
        for k in (0, 4):
            det = ops.multiclass_nms(boxes.to(device), scores.to(device), 0.5, 0.05, k)
            assert_outputs(tuple(det), multiclass_nms_ref(boxes, scores, 0.5, 0.05, k), device=device)
            assert det.counts.shape == (num_images,) and det.boxes.shape == (num_images, k, 4)
    # detections possible, but no room for any
    boxes = torch.tensor([[[0.0, 0, 1, 1]]], device=device)
    det = ops.multiclass_nms(boxes, torch.ones(1, 1, 2, device=device), 0.5, 0.05, 0)
    assert det.counts.tolist() == [0] and det.boxes.shape == (1, 0, 4) and det.indices.shape == (1, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_score_thresholds(device, gen, seed):
    """Negative and -inf score thresholds, negative and infinite scores."""
    boxes, scores = make_batch("heavy", (2, 60, 3), gen)
    scores = scores * 2 - 1  # distinct, in (-1, 1)
    scores[0, :5, 0] = -float("inf")
    scores[0, 5:10, 1] = float("inf")
    scores[1, :5] = float("nan")
    boxes, scores = boxes.float().to(device), scores.to(device)
    for threshold in (-0.5, -1.0, -float("inf"), 0.0):
        for iou_threshold in (0.5, 1.0):
            got = ops.multiclass_nms(boxes, scores, iou_threshold, threshold, 1000)
            want = multiclass_nms_ref(boxes, scores, iou_threshold, threshold, 1000)
            assert_detections(got, want, device=device, msg=f"thr={threshold} seed={seed}")
    # -inf: every finite or +inf score qualifies; with iou_threshold 1 (positive areas) all are kept
    det = ops.multiclass_nms(boxes, scores, 1.0, -float("inf"), 1000)
    assert det.counts.tolist() == [180 - 5, 180 - 15]


def test_nan_boxes():
    """A NaN coordinate gives NaN IoUs: that box suppresses nothing and nothing suppresses it."""
    nan = float("nan")
    boxes = torch.tensor([[[0.0, 0, 4, 4], [0, 0, 4, nan], [0, 0, 4, 4], [nan, nan, nan, nan], [0, 0, 4, 4]]])
    scores = torch.tensor([[0.5, 0.9, 0.8, 0.7, 0.3]])
    for threshold in (0.5, 0.0, -0.1):
        det = ops.multiclass_nms(boxes, scores, threshold, 0.05, 6)
        # 1 and 3 are kept; 2 (the best real box) suppresses 0 and 4
        assert det.indices[0].tolist() == [1, 2, 3, -1, -1, -1], threshold
        assert_outputs(tuple(det), multiclass_nms_ref(boxes, scores, threshold, 0.05, 6))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_area_boxes(device):
    """Two empty boxes: 0 / 0 = NaN, no suppression; an empty box against a real one: IoU 0."""
    point = [2.0, 2.0, 2.0, 2.0]
    line = [1.0, 2.0, 1.0, 3.0]
    box = [0.0, 0.0, 4.0, 4.0]
    boxes = torch.tensor([[point, point, line, box, point]], device=device)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]], device=device)
    for threshold, want in ((0.0, [0, 1, 2, 3, 4]), (1.0, [0, 1, 2, 3, 4]), (-0.1, [0, 1, 2, 4])):
        det = ops.multiclass_nms(boxes, scores, threshold, 0.05, 5)
        assert det.indices[0, : int(det.counts[0])].tolist() == want, threshold


@pytest.mark.parametrize("int_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
def test_integer_boxes(int_dtype, gen, seed):
    """Integer boxes are upcast to float32 (the output boxes too)."""
    boxes, scores = make_batch("grid", (2, 60, 3), gen)
    boxes = boxes.to(int_dtype)
    for threshold in (0.0, 0.5):
        got = ops.multiclass_nms(boxes, scores, threshold, 0.05, 50)
        assert_detections(got, multiclass_nms_ref(boxes, scores, threshold, 0.05, 50), msg=f"seed={seed}")
        same = ops.multiclass_nms(boxes.float(), scores, threshold, 0.05, 50)
        for name, a, b in zip(FIELDS, got, same):
            assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "box_dtype,score_dtype",
    [
        (torch.float16, torch.float32),
        (torch.float32, torch.float16),
        (torch.float64, torch.bfloat16),
        (torch.bfloat16, torch.float64),
    ],
    ids=str,
)
def test_mixed_dtypes(box_dtype, score_dtype, gen, seed):
    """Output boxes in the box dtype, output scores in the score dtype."""
    boxes, scores = make_batch("heavy", (2, 60, 3), gen, per_class_boxes=True)
    boxes, scores = boxes.to(box_dtype), scores.to(score_dtype)
    got = ops.multiclass_nms(boxes, scores, 0.5, 0.05, 60)
    want = multiclass_nms_ref(boxes, scores, 0.5, 0.05, 60)
    assert_detections(got, want, box_dtype=box_dtype, score_dtype=score_dtype, msg=f"seed={seed}")


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, gen, seed):
    boxes, scores = make_batch("grid", (3, 70, 3), gen)
    boxes, scores = boxes.float().to(device), scores.to(device)
    want = multiclass_nms_ref(boxes, scores, 0.5, 0.05, 50)
    score_views = {
        "contiguous": scores,
        "transposed": scores.transpose(1, 2).contiguous().transpose(1, 2),
        "strided": torch.stack((scores, scores), dim=-1)[..., 1],
    }
    for bname, bview in _strided_boxes(boxes).items():
        for sname, sview in score_views.items():
            got = ops.multiclass_nms(bview, sview, 0.5, 0.05, 50)
            assert_detections(got, want, device=device, msg=f"{bname} {sname} seed={seed}")
    # every other image
    got = ops.multiclass_nms(boxes[::2], score_views["transposed"][::2], 0.5, 0.05, 50)
    assert_detections(got, tuple(t[::2] for t in want), device=device, msg=f"seed={seed}")
    # class-specific boxes expanded from shared ones (stride 0): the shared result
    expanded = boxes[:, :, None].expand(3, 70, 3, 4)
    assert_detections(ops.multiclass_nms(expanded, scores, 0.5, 0.05, 50), want, device=device)
    for name, view in _strided_boxes(boxes[:, :, None].repeat(1, 1, 3, 1)).items():
        assert_detections(ops.multiclass_nms(view, scores, 0.5, 0.05, 50), want, device=device, msg=name)
    # scores expanded over the classes (stride 0): ties across classes
    tied = scores[..., :1].expand(3, 70, 3)
    assert_detections(
        ops.multiclass_nms(boxes, tied, 0.5, 0.05, 50),
        multiclass_nms_ref(boxes, tied, 0.5, 0.05, 50),
        device=device,
        msg=f"seed={seed}",
    )


def test_inputs_are_not_modified(gen):
    boxes, scores = make_batch("heavy", (2, 50, 3), gen)
    copies = (boxes.clone(), scores.clone())
    ops.multiclass_nms(boxes, scores, 0.5)
    ops.multiclass_nms(boxes[:, :, None].expand(2, 50, 3, 4), scores, 0.5)
    assert torch.equal(boxes, copies[0]) and torch.equal(scores, copies[1])


# --------------------------------------------------------------------------- bad input


def _good():
    boxes = torch.tensor([[[0.0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]]]).repeat(2, 1, 1)
    return boxes, torch.arange(1.0, 25.0).reshape(2, 3, 4) / 25


def test_bad_shapes():
    boxes, scores = _good()
    per_class = boxes[:, :, None].expand(2, 3, 4, 4)
    cases = [
        ("boxes", boxes[0], scores),  # [N, 4]
        ("boxes", torch.rand(2, 3, 5), scores),
        ("boxes", torch.rand(2, 3, 4, 3), scores),
        ("boxes", torch.rand(2, 3, 4, 4, 1), scores),
        ("boxes", torch.rand(4), scores),
        ("boxes", torch.tensor(1.0), scores),
        ("scores", boxes, torch.rand(2, 3, 4, 1)),
        ("scores", boxes, torch.rand(6)),
        ("scores", boxes, torch.tensor(0.5)),
        ("boxes|scores", boxes, torch.rand(3, 3, 4)),  # B
        ("boxes|scores", boxes, torch.rand(2, 4, 4)),  # N
        ("boxes|scores", boxes, torch.rand(2, 4)),
        ("boxes|scores", boxes, torch.rand(1, 3)),
        ("boxes|scores", per_class, torch.rand(2, 3, 5)),  # C
        ("boxes|scores", per_class, torch.rand(2, 3, 1)),
        ("boxes|scores", per_class, torch.rand(2, 3)),
        ("boxes|scores", per_class[:1], scores),
    ]
    for name, b, s in cases:
        with pytest.raises(RuntimeError, match=name) as info:
            ops.multiclass_nms(b, s, 0.5)
        assert isinstance(info.value, InputError), (name, list(b.shape), list(s.shape), info.value)


def test_bad_values():
    boxes, scores = _good()
    for bad in (-1, -100):
        with pytest.raises(ValueError, match="max_detections"):
            ops.multiclass_nms(boxes, scores, 0.5, 0.05, bad)
    for bad in (2.5, 10.0, "10", None):
        with pytest.raises((TypeError, ValueError), match="max_detections"):
            ops.multiclass_nms(boxes, scores, 0.5, 0.05, bad)
    with pytest.raises(ValueError, match="iou_threshold"):
        ops.multiclass_nms(boxes, scores, float("nan"))
    with pytest.raises(ValueError, match="score_threshold"):
        ops.multiclass_nms(boxes, scores, 0.5, float("nan"))
    for bad in (None, "0.5", [0.5]):
        with pytest.raises((TypeError, ValueError), match="iou_threshold"):
            ops.multiclass_nms(boxes, scores, bad)
        with pytest.raises((TypeError, ValueError), match="score_threshold"):
            ops.multiclass_nms(boxes, scores, 0.5, bad)
    # no value checks: NaN and infinite scores and boxes are data; int thresholds are numbers
    nan_scores = scores.clone()
    nan_scores[0, 1, 2] = float("nan")
    nan_boxes = boxes.clone()
    nan_boxes[1, 2, 3] = float("inf")
    nan_boxes[0, 0, 0] = float("nan")
    ops.multiclass_nms(nan_boxes, nan_scores, 0.5)
    assert ops.multiclass_nms(boxes, scores, 1, 0, 3).counts.tolist() == [3, 3]
    assert ops.multiclass_nms(boxes, scores, float("inf"), 0.05).boxes.shape == (2, 100, 4)


def test_bad_types():
    boxes, scores = _good()
    with pytest.raises(TypeError, match="boxes"):
        ops.multiclass_nms(boxes.tolist(), scores, 0.5)
    with pytest.raises(TypeError, match="boxes"):
        ops.multiclass_nms(boxes.bool(), scores, 0.5)
    with pytest.raises(TypeError, match="boxes"):
        ops.multiclass_nms(boxes.to(torch.complex64), scores, 0.5)
    with pytest.raises(TypeError, match="scores"):
        ops.multiclass_nms(boxes, None, 0.5)
    with pytest.raises(TypeError, match="scores"):
        ops.multiclass_nms(boxes, (scores * 10).long(), 0.5)
    with pytest.raises(TypeError, match="scores"):
        ops.multiclass_nms(boxes, scores > 0.5, 0.5)
    with pytest.raises(TypeError):
        ops.multiclass_nms(boxes, scores)  # iou_threshold is required


def test_mixed_devices():
    boxes, scores = _good()
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(RuntimeError, match="device") as info:
        ops.multiclass_nms(boxes, scores.to(other), 0.5)
    assert isinstance(info.value, ValueError)
    with pytest.raises(RuntimeError, match="device"):
        ops.multiclass_nms(boxes.to(other), scores, 0.5)


# --------------------------------------------------------------------------- dispatcher


@compiled_only
@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((2, 30, 3, False), torch.float32),
        ((2, 30, 3, True), torch.float16),
        ((2, 20, 1, False), torch.bfloat16),
        ((2, 25, 4, True), torch.float64),
        ((3, 0, 2, False), torch.float64),
        ((0, 4, 2, True), torch.float32),
    ],
    ids=["shared-float32", "per-class-float16", "one-class-bfloat16", "per-class-float64", "N=0", "B=0"],
)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck(device, shape, dtype, gen):
    """All four default opcheck tests: schema, autograd registration, fake tensor, AOT dispatch with
    dynamic shapes (the output shapes depend on the input shapes and max_detections only)."""
    num_images, n, num_classes, per_class_boxes = shape
    boxes, scores = make_batch("grid", (num_images, n, num_classes), gen, per_class_boxes=per_class_boxes)
    boxes, scores = boxes.to(device, dtype), scores.to(device, dtype)
    op = torch.ops.fastmtl.multiclass_nms.default
    torch.library.opcheck(op, (boxes, scores, 0.5, 0.05, 10))
    if shape == (2, 30, 3, False):
        torch.library.opcheck(op, (boxes, scores, -0.1, -1.0, 0))
        torch.library.opcheck(op, (boxes, scores[..., 0], 0.5, 0.05, 100))


@compiled_only
def test_dispatcher_op_matches_public_op(gen, seed):
    for layout in LAYOUTS:
        boxes, scores = make_layout("grid", layout, gen)
        for threshold in THRESHOLDS:
            got = torch.ops.fastmtl.multiclass_nms(boxes, scores, threshold, 0.05, 40)
            want = multiclass_nms_ref(boxes, scores, threshold, 0.05, 40)
            assert_outputs(tuple(got), want, box_dtype=torch.float64, msg=f"{layout} seed={seed}")


@compiled_only
def test_fake_tensors():
    """Fixed output shapes under FakeTensorMode, from the public op and the dispatcher op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        for box_shape, score_shape, dtype in (
            ((3, 10, 4), (3, 10, 5), torch.float32),
            ((3, 10, 5, 4), (3, 10, 5), torch.float16),
            ((3, 10, 4), (3, 10), torch.float64),
        ):
            boxes = mode.from_tensor(torch.rand(box_shape, dtype=dtype))
            scores = mode.from_tensor(torch.rand(score_shape, dtype=dtype))
            for out in (
                tuple(ops.multiclass_nms(boxes, scores, 0.5, 0.05, 7)),
                torch.ops.fastmtl.multiclass_nms(boxes, scores, 0.5, 0.05, 7),
            ):
                assert [tuple(t.shape) for t in out] == [(3, 7, 4), (3, 7), (3, 7), (3, 7), (3,)]
                assert [t.dtype for t in out] == [dtype, dtype, torch.int64, torch.int64, torch.int64]
                assert all(t.device == boxes.device for t in out)


@compiled_only
def test_dispatcher_op_checks_its_arguments():
    boxes, scores = _good()
    op = torch.ops.fastmtl.multiclass_nms
    cases = [
        ("boxes", lambda: op(torch.rand(2, 3, 5), scores, 0.5, 0.05, 10)),
        ("boxes", lambda: op(boxes[0], scores, 0.5, 0.05, 10)),
        ("scores", lambda: op(boxes, scores[..., None], 0.5, 0.05, 10)),
        ("boxes|scores", lambda: op(boxes, scores[:1], 0.5, 0.05, 10)),
        ("boxes|scores", lambda: op(boxes[:, :, None].expand(2, 3, 2, 4), scores, 0.5, 0.05, 10)),
        ("max_detections", lambda: op(boxes, scores, 0.5, 0.05, -1)),
        ("iou_threshold", lambda: op(boxes, scores, float("nan"), 0.05, 10)),
        ("score_threshold", lambda: op(boxes, scores, 0.5, float("nan"), 10)),
    ]
    for name, fn in cases:
        with pytest.raises(RuntimeError, match=name):
            fn()


# --------------------------------------------------------------------------- torch.compile


@compiled_only
@pytest.mark.compile
def test_compile_fullgraph(gen, seed):
    """fullgraph traces through the op (no graph break) and its outputs are used downstream; the
    results are the eager ones."""
    torch._dynamo.reset()

    def detect(boxes, scores):
        det = ops.multiclass_nms(boxes, scores, 0.5, 0.05, 30)
        return det, det.boxes * 2, det.scores.sum(dim=1)

    fn = torch.compile(detect, fullgraph=True)
    for shape in ((2, 60, 3), (3, 40, 3)):  # a second shape: reused or recompiled, never broken
        boxes, scores = make_batch("heavy", shape, gen)
        boxes = boxes.float()
        det, doubled, total = fn(boxes, scores)
        assert_outputs(tuple(det), multiclass_nms_ref(boxes, scores, 0.5, 0.05, 30), msg=f"seed={seed}")
        assert torch.equal(doubled, det.boxes * 2)
        torch.testing.assert_close(total, det.scores.sum(dim=1))


# --------------------------------------------------------------------------- fallback


@pytest.fixture
def fallback(monkeypatch):
    """Forces the pure-PyTorch path, as when fastmtl._C is not built."""
    monkeypatch.setattr(op_module, "use_compiled", lambda *tensors: False)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", SETS)
def test_fallback_matches_reference(kind, layout, fallback, gen, seed):
    boxes, scores = make_layout(kind, layout, gen, n=40)
    for dtype in (torch.float64, torch.float16):
        b, s = boxes.to(dtype), scores.to(dtype)
        for threshold in (-0.1, 0.0, 0.5, 1.0):
            got = ops.multiclass_nms(b, s, threshold, 0.05, 30)
            want = multiclass_nms_ref(b, s, threshold, 0.05, 30)
            assert_detections(got, want, box_dtype=dtype, score_dtype=dtype, msg=f"{dtype} seed={seed}")


def test_fallback_edge_cases(fallback):
    det = ops.multiclass_nms(torch.empty(2, 0, 4), torch.empty(2, 0, 3), 0.5, 0.05, 5)
    assert_outputs(tuple(det), multiclass_nms_ref(torch.empty(2, 0, 4), torch.empty(2, 0, 3), 0.5, 0.05, 5))
    det = ops.multiclass_nms(torch.empty(0, 3, 4), torch.empty(0, 3), 0.5, 0.05, 5)
    assert det.counts.shape == (0,) and det.boxes.shape == (0, 5, 4)
    boxes = torch.tensor([[[0.0, 0, 1, 1]]]).expand(1, 4, 4)
    det = ops.multiclass_nms(boxes, torch.full((1, 4, 2), 0.5), 0.5, 0.05, 0)
    assert det.counts.tolist() == [0] and det.indices.shape == (1, 0)
    det = ops.multiclass_nms(boxes.int(), torch.full((1, 4, 2), 0.5), 0.5, 0.05, 3)
    assert det.boxes.dtype == torch.float32
    assert det.indices.tolist() == [[0, 0, -1]] and det.classes.tolist() == [[0, 1, -1]]
    with pytest.raises(RuntimeError, match="boxes"):
        ops.multiclass_nms(torch.rand(2, 3, 5), torch.rand(2, 3, 2), 0.5)


@compiled_only
@pytest.mark.parametrize("dtype", BOX_DTYPES + (torch.int32,), ids=str)
def test_fallback_matches_compiled(dtype, gen, seed, monkeypatch):
    boxes, scores = make_batch("grid", (3, 50, 4), gen)
    class_boxes, _ = make_batch("grid", (3, 50, 4), gen, per_class_boxes=True)
    boxes, class_boxes = boxes.to(dtype), class_boxes.to(dtype)
    s = scores.to(dtype) if dtype.is_floating_point else scores

    def run():
        return [ops.multiclass_nms(b, s, t, 0.05, 40) for b in (boxes, class_boxes) for t in (-0.1, 0.0, 0.5)]

    compiled = run()
    monkeypatch.setattr(op_module, "use_compiled", lambda *tensors: False)
    for c, r in zip(compiled, run()):
        for name, a, b in zip(FIELDS, r, c):
            assert torch.equal(a, b), f"{name} seed={seed}"


@pytest.mark.parametrize("device", DEVICES)
def test_iou_on_the_threshold_decided_as_on_the_cpu(device):
    """A pair whose float32 IoU (0.534927905) sits just under the threshold: the product-then-add
    rounding keeps the second box; a fused multiply-add would give 0.534927964 and suppress it.
    63 far-away boxes score in between, so on CUDA the pair falls in different chunks of 64."""
    a = [128.625702, 92.7128983, 240.965698, 117.182198]
    b = [122.652596, 92.7870941, 223.770691, 131.466888]
    fillers = [[1000.0 + 20 * i, 0.0, 1010.0 + 20 * i, 10.0] for i in range(63)]
    boxes = torch.tensor([[a, *fillers, b]], dtype=torch.float32, device=device)
    scores = torch.tensor([[0.9, *[0.89 - 1e-3 * i for i in range(63)], 0.8]], device=device)
    threshold = 0.53492793
    iou = float(ops.box_iou(boxes[0, :1].cpu(), boxes[0, -1:].cpu()))
    assert abs(iou - threshold) < 1e-7 and iou <= threshold
    det = ops.multiclass_nms(boxes, scores, threshold, 0.05, 100)
    assert det.counts.tolist() == [65]
    assert det.indices[0, :65].tolist() == list(range(65))


# --------------------------------------------------------------------------- CUDA


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("kind", SETS)
def test_cpu_and_cuda_agree(kind, dtype, gen, seed):
    for per_class_boxes in (False, True):
        boxes, scores = make_batch(kind, (4, 300, 5), gen, per_class_boxes=per_class_boxes)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        for threshold in THRESHOLDS:
            cpu = ops.multiclass_nms(boxes, scores, threshold, 0.05, 200)
            got = ops.multiclass_nms(boxes.cuda(), scores.cuda(), threshold, 0.05, 200)
            assert_detections(
                got,
                tuple(t.double() if t.is_floating_point() else t for t in cpu),
                device="cuda",
                box_dtype=dtype,
                score_dtype=dtype,
                msg=f"thr={threshold} seed={seed}",
            )


@cuda
@pytest.mark.cuda
def test_cuda_large_batch(gen, seed):
    tv = pytest.importorskip("torchvision")
    boxes, scores = make_batch("sparse", (16, 5000, 3), gen)
    boxes = (boxes / 4).float()
    det = ops.multiclass_nms(boxes.cuda(), scores.cuda(), 0.5, 0.3, 100)
    assert_like_torchvision(tv, det, boxes, scores, 0.5, 0.3, 100, cut=True, msg=f"seed={seed}")
    cpu = ops.multiclass_nms(boxes, scores, 0.5, 0.3, 100)
    for name, a, b in zip(FIELDS, det, cpu):
        assert torch.equal(a.cpu(), b), name


@cuda
@pytest.mark.cuda
def test_cuda_no_host_sync(gen):
    """No device-to-host synchronization anywhere in the call (sync debug mode raises on one)."""
    cases = []
    for shape, per_class_boxes in (((4, 500, 5), False), ((4, 500, 5), True), ((2, 0, 3), False)):
        boxes, scores = make_batch("heavy", shape, gen, per_class_boxes=per_class_boxes)
        cases.append((boxes.float().cuda(), scores.cuda()))
    cases.append((cases[0][0].half(), cases[0][1][..., 0].half()))
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    try:
        torch.cuda.set_sync_debug_mode("error")
        results = [ops.multiclass_nms(b, s, 0.5, 0.05, k) for b, s in cases for k in (100, 0)]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    for (boxes, scores), det in zip([c for c in cases for _ in (100, 0)], results):
        want = ops.multiclass_nms(boxes.cpu(), scores.cpu(), 0.5, 0.05, det.classes.shape[1])
        for name, a, b in zip(FIELDS, det, want):
            assert torch.equal(a.cpu(), b), name


@cuda
@pytest.mark.cuda
def test_cuda_graph_capture(gen, seed):
    """Captured in a CUDA graph, replays give the eager results, also on new data copied into the inputs."""
    boxes, scores = make_batch("heavy", (4, 400, 5), gen, per_class_boxes=True)
    static_boxes, static_scores = boxes.float().cuda(), scores.cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs asks
        for _ in range(2):
            ops.multiclass_nms(static_boxes, static_scores, 0.5, 0.05, 100)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.multiclass_nms(static_boxes, static_scores, 0.5, 0.05, 100)
    for step in range(2):
        if step:
            boxes, scores = make_batch("sparse", (4, 400, 5), gen, per_class_boxes=True)
            static_boxes.copy_(boxes.float())
            static_scores.copy_(scores)
        graph.replay()
        torch.cuda.synchronize()
        eager = ops.multiclass_nms(static_boxes, static_scores, 0.5, 0.05, 100)
        for name, a, b in zip(FIELDS, static_out, eager):
            assert torch.equal(a, b), f"{name} replay {step} seed={seed}"


@cuda
@pytest.mark.cuda
@pytest.mark.compile
def test_cuda_compile_fullgraph(gen, seed):
    torch._dynamo.reset()

    def detect(boxes, scores):
        det = ops.multiclass_nms(boxes, scores, 0.5, 0.05, 50)
        return det, det.scores.sum(dim=1)

    fn = torch.compile(detect, fullgraph=True)
    boxes, scores = make_batch("heavy", (3, 200, 4), gen)
    boxes, scores = boxes.float().cuda(), scores.cuda()
    det, total = fn(boxes, scores)
    eager = ops.multiclass_nms(boxes, scores, 0.5, 0.05, 50)
    for name, a, b in zip(FIELDS, det, eager):
        assert torch.equal(a, b), f"{name} seed={seed}"
    torch.testing.assert_close(total, eager.scores.sum(dim=1))
