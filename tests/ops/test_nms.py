"""Non-maximum suppression: fastmtl.ops.nms and batched_nms.

Against the independent float64 reference in tests/ops/reference_nms.py and against torchvision
on fresh random sets (sparse, heavy overlap, score ties, grid and zero-area boxes), edge cases,
every box dtype, non-contiguous inputs, class ids, the dispatcher (opcheck, fake impl),
torch.compile, the pure-PyTorch fallback, CUDA and bad input.

Exactness: NMS compares IoU with the threshold, so a rounding error can flip a decision. The random
boxes here lie on a power-of-two grid (:func:`grid_random_boxes`) small enough that areas,
intersections and unions are exact in float32 (and the coordinates exact in float16), and the
quotient is far from every threshold tried unless it equals it. So every dtype must give exactly
the kept indices of the float64 reference evaluated on the same boxes.
"""

import importlib
import math

import pytest
import torch

from fastmtl import ops
from fastmtl.ops._checks import InputError
from tests.ops.reference_nms import nms_per_class_ref, nms_ref, score_order_ref
from tests.utils import (
    DEVICES,
    DISPATCH_DEVICES,
    HALF_DTYPES,
    compiled_only,
    cuda,
    degenerate_boxes,
    grid_boxes,
)

# The attribute fastmtl.ops.nms is the function; this is the module (where use_compiled is looked up).
nms_module = importlib.import_module("fastmtl.ops.nms")


# 0: any overlap suppresses; 1: nothing does; negative: everything but NaN IoU (two empty boxes).
THRESHOLDS = (-0.1, 0.0, 0.5, 0.7, 1.0)
BOX_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


# --------------------------------------------------------------------------- helpers


def grid_random_boxes(n, *, gen, scale=100.0, min_size=0.05, max_size=0.6, units=2048, offset=0.0):
    """``n`` random float64 boxes in ``[offset, offset + scale]``, corners on a grid of step
    ``2**k >= scale / units``. With ``units <= 2048`` every coordinate is exact in float16 (and
    stays on the grid when rounded to bfloat16), and areas and unions are integers times
    ``step**2`` below 2**24, exact in float32."""
    step = 2.0 ** math.ceil(math.log2(scale / units))
    lo = torch.rand(n, 2, generator=gen, dtype=torch.float64) * scale * (1 - max_size)
    size = (min_size + (max_size - min_size) * torch.rand(n, 2, generator=gen, dtype=torch.float64)) * scale
    boxes = torch.cat((lo, lo + size), dim=1)
    return (boxes / step).round() * step + offset


def make_set(kind, n, gen):
    """(float64 boxes, float32 scores) of one kind of random set."""
    if kind == "sparse":  # few overlaps: most boxes are kept
        boxes = grid_random_boxes(n, gen=gen, scale=1000.0, min_size=0.005, max_size=0.03)
    elif kind in ("heavy", "int-scores"):  # many overlaps: few boxes are kept
        boxes = grid_random_boxes(n, gen=gen, scale=100.0, min_size=0.05, max_size=0.6)
    elif kind == "grid":  # identical, nested and touching boxes
        boxes = grid_boxes(n, gen=gen, dtype=torch.float64, cells=12)
    elif kind == "degenerate":  # points, lines and small boxes: 0 / 0 IoU
        boxes = degenerate_boxes(n, gen=gen, dtype=torch.float64)
    else:
        raise ValueError(kind)
    if kind in ("sparse", "heavy"):
        scores = torch.rand(n, generator=gen)
    else:  # many exact score ties: the order falls back to the index
        scores = torch.randint(0, 5, (n,), generator=gen).float()
    return boxes, scores


SETS = ("sparse", "heavy", "int-scores", "grid", "degenerate")


def assert_keep(got, want, *, device="cpu", msg=""):
    """Same kept indices in the same order, as an int64 vector on ``device``."""
    assert isinstance(got, torch.Tensor), type(got)
    assert got.dtype == torch.int64 and got.dim() == 1, (got.dtype, got.shape)
    assert got.device.type == torch.device(device).type, got.device
    got = got.cpu()
    want = want.cpu()
    if torch.equal(got, want):
        return
    k = min(got.numel(), want.numel())
    diff = (got[:k] != want[:k]).nonzero()
    first = diff[0].item() if diff.numel() else k
    raise AssertionError(
        f"kept {got.numel()} boxes, expected {want.numel()}; first difference at position {first}: "
        f"got {got[first : first + 5].tolist()}, expected {want[first : first + 5].tolist()}. {msg}"
    )


def assert_keep_as_torchvision_batched(got, want, scores, *, msg=""):
    """torchvision's batched_nms above 1000 boxes (CPU) merges its per-class results with an unstable
    sort, so the order of kept boxes of equal score is its own: the same kept set, and the same
    sequence of scores. (The exact order is checked against the reference elsewhere.)"""
    assert_keep(got.sort().values, want.sort().values, msg=msg)
    assert torch.equal(scores[got], scores[want]), msg


def tv_nms():
    tv = pytest.importorskip("torchvision")
    return tv.ops.nms, tv.ops.batched_nms


def classes_for(n, num_classes, gen):
    return torch.randint(0, num_classes, (n,), generator=gen)


# --------------------------------------------------------------------------- nms: values


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("kind", SETS)
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_nms_matches_reference(device, dtype, kind, threshold, gen, seed):
    boxes, scores = make_set(kind, 200, gen)
    boxes = boxes.to(device=device, dtype=dtype)
    keep = ops.nms(boxes, scores.to(device), threshold)
    # on the (rounded) boxes as the op saw them
    assert_keep(keep, nms_ref(boxes, scores, threshold), device=device, msg=f"seed={seed}")


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("kind", SETS)
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
def test_nms_matches_torchvision(dtype, kind, threshold, gen, seed):
    tv_op, _ = tv_nms()
    boxes, scores = make_set(kind, 300, gen)
    boxes = boxes.to(dtype)
    # torchvision's CPU kernel takes neither half type: run it on the exactly upcast boxes
    tv_boxes = boxes.float() if dtype in HALF_DTYPES else boxes
    want = tv_op(tv_boxes, scores.to(tv_boxes.dtype), threshold)
    assert_keep(ops.nms(boxes, scores, threshold), want, msg=f"seed={seed}")


@pytest.mark.parametrize("kind", ["sparse", "heavy", "int-scores"])
def test_nms_5k_boxes(kind, gen, seed):
    tv = pytest.importorskip("torchvision")
    boxes, scores = make_set(kind, 5000, gen)
    boxes = boxes.float()
    for threshold in (0.5, 0.0) if kind != "sparse" else (0.5,):
        keep = ops.nms(boxes, scores, threshold)
        assert_keep(
            keep, tv.ops.nms(boxes, scores, threshold), msg=f"torchvision thr={threshold} seed={seed}"
        )
        assert_keep(keep, nms_ref(boxes, scores, threshold), msg=f"reference thr={threshold} seed={seed}")


def test_nms_50k_boxes(gen, seed):
    """One large heavy-overlap set: the early kept boxes have more than 32768 boxes after them, so
    their suppression pass is split across threads. The result does not depend on the threads."""
    tv = pytest.importorskip("torchvision")
    n = 50_000
    boxes = grid_random_boxes(n, gen=gen, scale=1000.0, min_size=0.1, max_size=0.5).float()
    scores = torch.randint(0, 1000, (n,), generator=gen).float()  # ties too
    keep = ops.nms(boxes, scores, 0.5)
    assert 0 < keep.numel() < n // 10
    assert_keep(keep, tv.ops.nms(boxes, scores, 0.5), msg=f"torchvision seed={seed}")
    assert_keep(keep, nms_ref(boxes, scores, 0.5), msg=f"reference seed={seed}")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = ops.nms(boxes, scores, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, keep)


@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
def test_empty_input(dtype):
    boxes = torch.empty(0, 4, dtype=dtype)
    scores = torch.empty(0)
    for threshold in (-1.0, 0.5):
        assert_keep(ops.nms(boxes, scores, threshold), torch.empty(0, dtype=torch.int64))
        idxs = torch.empty(0, dtype=torch.int64)
        assert_keep(ops.batched_nms(boxes, scores, idxs, threshold), torch.empty(0, dtype=torch.int64))
    assert_keep(ops.nms(torch.empty(0, 4, dtype=torch.int32), scores, 0.5), torch.empty(0, dtype=torch.int64))


@pytest.mark.parametrize("box", [(1.0, 2.0, 5.0, 7.0), (3.0, 3.0, 3.0, 3.0), (0.0, 0.0, 0.0, 4.0)])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_single_box(box, threshold):
    boxes = torch.tensor([box])
    for scores in (torch.tensor([0.3]), torch.tensor([-float("inf")]), torch.tensor([float("inf")])):
        assert_keep(ops.nms(boxes, scores, threshold), torch.tensor([0]))
        assert_keep(ops.batched_nms(boxes, scores, torch.tensor([7]), threshold), torch.tensor([0]))


@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
def test_identical_boxes(dtype, gen, seed):
    """n copies of one box (IoU exactly 1): all suppressed by the best one, below threshold 1."""
    n = 37
    boxes = torch.tensor([[3.0, 4.0, 10.5, 9.25]], dtype=dtype).expand(n, 4)
    scores = torch.rand(n, generator=gen)
    best = torch.argmax(scores).reshape(1)
    for threshold in (-0.1, 0.0, 0.5, 0.999):
        assert_keep(ops.nms(boxes, scores, threshold), best, msg=f"thr={threshold} seed={seed}")
    # IoU 1 is not greater than 1: nothing is suppressed
    assert_keep(ops.nms(boxes, scores, 1.0), torch.argsort(scores, descending=True, stable=True))
    # equal scores too: the lowest index wins
    assert_keep(ops.nms(boxes, torch.ones(n), 0.5), torch.tensor([0]))
    assert_keep(ops.nms(boxes, torch.ones(n), 1.0), torch.arange(n))


@pytest.mark.parametrize("kind", ["heavy", "grid"])
def test_threshold_extremes(kind, gen, seed):
    """Positive-area boxes: threshold 1 keeps everything in score order; a negative one keeps only
    the best; 0 keeps a box exactly when no better kept box overlaps it with positive area."""
    boxes, scores = make_set(kind, 150, gen)
    order = torch.tensor(score_order_ref(scores))
    assert_keep(ops.nms(boxes, scores, 1.0), order, msg=f"seed={seed}")
    assert_keep(ops.nms(boxes, scores, -0.1), order[:1], msg=f"seed={seed}")
    assert_keep(ops.nms(boxes, scores, -1e30), order[:1], msg=f"seed={seed}")
    keep = ops.nms(boxes, scores, 0.0)
    b = boxes[keep]
    iw = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(
        min=0
    )
    ih = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(
        min=0
    )
    overlap = (iw * ih > 0) & ~torch.eye(len(keep), dtype=torch.bool)
    assert not overlap.any(), f"two kept boxes overlap, seed={seed}"
    assert_keep(keep, nms_ref(boxes, scores, 0.0), msg=f"seed={seed}")


def test_zero_area_boxes():
    """Two empty boxes give IoU 0 / 0 = NaN, which suppresses nothing; an empty box against a real
    one gives IoU 0, suppressed only by a negative threshold."""
    point = [2.0, 2.0, 2.0, 2.0]
    line = [1.0, 2.0, 1.0, 3.0]
    box = [0.0, 0.0, 4.0, 4.0]
    boxes = torch.tensor([point, point, line, box, point])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    for threshold in (0.0, 0.5, 1.0):
        assert_keep(ops.nms(boxes, scores, threshold), torch.arange(5), msg=f"thr={threshold}")
    # the real box is suppressed by the first point (IoU 0 > -0.1); the empty ones never are
    assert_keep(ops.nms(boxes, scores, -0.1), torch.tensor([0, 1, 2, 4]))
    # the real box first: it suppresses every empty box at a negative threshold
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.4])
    assert_keep(ops.nms(boxes, scores, -0.1), torch.tensor([3]))
    assert_keep(ops.nms(boxes, scores, 0.0), torch.tensor([3, 4, 2, 1, 0]))
    tv_op, _ = tv_nms()
    for threshold in (-0.1, 0.0, 0.5):
        assert_keep(ops.nms(boxes, scores, threshold), tv_op(boxes, scores, threshold))


def test_score_ties_keep_the_lower_index_first(gen, seed):
    n = 64
    boxes = grid_random_boxes(n, gen=gen, scale=1000.0, min_size=0.001, max_size=0.002)  # disjoint-ish
    assert_keep(ops.nms(boxes, torch.zeros(n), 0.5), nms_ref(boxes, torch.zeros(n), 0.5), msg=f"seed={seed}")
    scores = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 1.0, float("inf"), -float("inf"), 1.0])
    scores = scores.repeat(n // 8)
    want = nms_ref(boxes, scores, 1.0)
    assert want.tolist()[:16] == [0, 5, 8, 13, 16, 21, 24, 29, 32, 37, 40, 45, 48, 53, 56, 61]
    assert_keep(ops.nms(boxes, scores, 1.0), want)
    assert_keep(ops.nms(boxes, scores, 0.5), nms_ref(boxes, scores, 0.5), msg=f"seed={seed}")
    tv_op, _ = tv_nms()
    assert_keep(ops.nms(boxes.float(), scores, 1.0), tv_op(boxes.float(), scores, 1.0))


@pytest.mark.parametrize("score_dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("box_dtype", [torch.float32, torch.float16], ids=str)
def test_score_dtypes(box_dtype, score_dtype, gen, seed):
    """Scores of any float dtype, rounded ones included (more ties), with boxes of another dtype."""
    boxes, scores = make_set("heavy", 200, gen)
    boxes, scores = boxes.to(box_dtype), scores.to(score_dtype)
    assert_keep(ops.nms(boxes, scores, 0.5), nms_ref(boxes, scores, 0.5), msg=f"seed={seed}")


@pytest.mark.parametrize("int_dtype", INT_DTYPES, ids=str)
def test_integer_boxes(int_dtype, gen, seed):
    boxes = grid_boxes(150, gen=gen, dtype=int_dtype, cells=40)
    scores = torch.randint(0, 6, (150,), generator=gen).float()
    idxs = classes_for(150, 3, gen)
    results = {}
    for threshold in (0.0, 0.5):
        keep = ops.nms(boxes, scores, threshold)
        assert_keep(keep, ops.nms(boxes.float(), scores, threshold))
        assert_keep(keep, nms_ref(boxes, scores, threshold), msg=f"seed={seed}")
        got = ops.batched_nms(boxes, scores, idxs, threshold)
        assert_keep(got, nms_ref(boxes, scores, threshold, idxs), msg=f"seed={seed}")
        results[threshold] = keep, got
    tv_op, tv_batched = tv_nms()  # torchvision's CPU kernel takes float boxes only
    for threshold, (keep, got) in results.items():
        assert_keep(keep, tv_op(boxes.float(), scores, threshold), msg=f"seed={seed}")
        assert_keep(got, tv_batched(boxes.float(), scores, idxs, threshold), msg=f"seed={seed}")


def test_inputs_requiring_grad():
    """Detection code calls NMS on boxes and scores that require grad; the indices carry none."""
    boxes = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 2, 2.1]], requires_grad=True)
    scores = torch.tensor([0.3, 0.9, 0.5], requires_grad=True)
    for keep in (ops.nms(boxes, scores, 0.5), ops.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5)):
        assert_keep(keep, torch.tensor([1, 2]))
        assert not keep.requires_grad


@pytest.mark.parametrize(
    "dtype,offset",
    [(torch.float64, 1e6), (torch.float64, 1e9), (torch.float32, 1e4)],
    ids=["float64-1e6", "float64-1e9", "float32-1e4"],
)
def test_large_coordinates(dtype, offset, gen, seed):
    # far from the origin; the grid keeps every coordinate exact in dtype
    units = 256 if dtype == torch.float32 else 2048
    boxes = grid_random_boxes(300, gen=gen, scale=50.0, units=units, offset=offset).to(dtype)
    scores = torch.rand(300, generator=gen)
    for threshold in (0.0, 0.5):
        assert_keep(ops.nms(boxes, scores, threshold), nms_ref(boxes, scores, threshold), msg=f"seed={seed}")


def _non_contiguous_boxes(boxes):
    n = boxes.shape[0]
    rows = torch.zeros(2 * n, 4, dtype=boxes.dtype, device=boxes.device)
    rows[::2] = boxes
    cols = torch.zeros(n, 7, dtype=boxes.dtype, device=boxes.device)
    cols[:, 2:6] = boxes
    views = {"transposed": boxes.t().contiguous().t(), "row-strided": rows[::2], "column-slice": cols[:, 2:6]}
    for v in views.values():
        assert not v.is_contiguous() and torch.equal(v, boxes)
    return views


def _strided(vector):
    out = torch.zeros(2 * vector.numel(), dtype=vector.dtype, device=vector.device)
    out[1::2] = vector
    view = out[1::2]
    assert not view.is_contiguous() and torch.equal(view, vector)
    return view


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(dtype, device, gen, seed):
    boxes, scores = make_set("int-scores", 200, gen)
    boxes, scores = boxes.to(device, dtype), scores.to(device)
    idxs = classes_for(200, 4, gen).to(device)
    want = nms_ref(boxes, scores, 0.5)
    want_batched = nms_ref(boxes, scores, 0.5, idxs)
    for name, view in _non_contiguous_boxes(boxes).items():
        assert_keep(ops.nms(view, scores, 0.5), want, device=device, msg=f"{name} seed={seed}")
        assert_keep(ops.nms(view, _strided(scores), 0.5), want, device=device, msg=f"{name} seed={seed}")
        got = ops.batched_nms(view, _strided(scores), _strided(idxs), 0.5)
        assert_keep(got, want_batched, device=device, msg=f"{name} seed={seed}")
    # an expanded (stride 0) score vector: all tied
    flat = torch.tensor(1.0, device=device).expand(200)
    assert_keep(ops.nms(boxes, flat, 0.5), nms_ref(boxes, flat, 0.5), device=device, msg=f"seed={seed}")


def test_inputs_are_not_modified(gen):
    boxes, scores = make_set("heavy", 100, gen)
    idxs = classes_for(100, 3, gen)
    copies = [t.clone() for t in (boxes, scores, idxs)]
    ops.nms(boxes, scores, 0.5)
    ops.batched_nms(boxes, scores, idxs, 0.5)
    for t, c in zip((boxes, scores, idxs), copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize("threshold", [0.1, 0.3])
def test_threshold_compared_like_torchvision(threshold):
    """torchvision's CPU kernel compares the float32 IoU with the threshold as a double. Here the
    IoU is 1/10 (3/10), computed in float32 as float32(0.1) (float32(0.3)), which is greater than
    the double 0.1 (0.3): torchvision suppresses the second box."""
    tv_op, tv_batched = tv_nms()
    width = round(threshold * 10)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, float(width), 1.0]])
    scores = torch.tensor([1.0, 0.5])
    want = tv_op(boxes, scores, threshold)
    assert want.tolist() == [0]
    assert_keep(ops.nms(boxes, scores, threshold), want)
    assert_keep(ops.batched_nms(boxes, scores, torch.zeros(2, dtype=torch.int64), threshold), want)


# --------------------------------------------------------------------------- batched_nms


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("kind", ["heavy", "int-scores", "degenerate"])
@pytest.mark.parametrize("num_classes", [1, 3, 80])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_matches_reference(device, dtype, num_classes, kind, threshold, gen, seed):
    boxes, scores = make_set(kind, 400, gen)
    boxes, scores = boxes.to(device, dtype), scores.to(device)
    idxs = classes_for(400, num_classes, gen).to(device)
    got = ops.batched_nms(boxes, scores, idxs, threshold)
    want = nms_ref(boxes, scores, threshold, idxs)
    assert_keep(got, want, device=device, msg=f"seed={seed}")
    if threshold in (0.5, -0.1):
        assert_keep(got, nms_per_class_ref(boxes, scores, idxs, threshold), device=device, msg=f"seed={seed}")


@pytest.mark.parametrize("num_classes", [1, 3, 80])
def test_batched_nms_is_a_per_class_loop(num_classes, gen, seed):
    """The class-aware result is NMS run on each class alone, merged by score."""
    boxes, scores = make_set("int-scores", 500, gen)
    idxs = classes_for(500, num_classes, gen)
    for threshold in (0.0, 0.5):
        got = ops.batched_nms(boxes, scores, idxs, threshold)
        assert_keep(got, nms_per_class_ref(boxes, scores, idxs, threshold), msg=f"seed={seed}")
        loop = []
        for c in idxs.unique():
            members = (idxs == c).nonzero().flatten()
            loop.append(members[ops.nms(boxes[members], scores[members], threshold)])
        # merged by decreasing score, then by index within ties
        merged = torch.tensor(sorted(torch.cat(loop).tolist(), key=lambda i: (-scores[i].item(), i)))
        assert_keep(got, merged, msg=f"seed={seed}")
    if num_classes == 1:
        assert_keep(ops.batched_nms(boxes, scores, idxs, 0.5), ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("n", [300, 2000], ids=["coordinate-trick", "per-class-loop"])
@pytest.mark.parametrize("num_classes", [1, 3, 80])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_batched_nms_matches_torchvision(dtype, num_classes, n, gen, seed):
    """torchvision offsets the boxes per class below 1000 boxes (CPU) and loops over classes above.
    (Not for negative thresholds: its offset boxes of different classes have IoU 0 > threshold.)"""
    _, tv_batched = tv_nms()
    boxes, scores = make_set("int-scores", n, gen)
    boxes = boxes.to(dtype)
    idxs = classes_for(n, num_classes, gen)
    tv_boxes = boxes.float() if dtype in HALF_DTYPES else boxes
    for threshold in (0.0, 0.5):
        want = tv_batched(tv_boxes, scores.to(tv_boxes.dtype), idxs, threshold)
        got = ops.batched_nms(boxes, scores, idxs, threshold)
        if n <= 1000:
            assert_keep(got, want, msg=f"thr={threshold} seed={seed}")
        else:
            assert_keep_as_torchvision_batched(got, want, scores, msg=f"thr={threshold} seed={seed}")


def test_batched_nms_5k_boxes_80_classes(gen, seed):
    _, tv_batched = tv_nms()
    n = 5000
    boxes = grid_random_boxes(n, gen=gen, scale=200.0, min_size=0.05, max_size=0.4).float()
    scores = torch.randint(0, 50, (n,), generator=gen).float()
    idxs = classes_for(n, 80, gen)
    got = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert_keep(got, nms_ref(boxes, scores, 0.5, idxs), msg=f"reference seed={seed}")
    want = tv_batched(boxes, scores, idxs, 0.5)
    assert_keep_as_torchvision_batched(got, want, scores, msg=f"torchvision seed={seed}")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = ops.batched_nms(boxes, scores, idxs, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, got)


@pytest.mark.parametrize(
    "ids",
    ["negative", "huge", "huge-negative", "sparse-values"],
)
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32, torch.int16], ids=str)
def test_batched_nms_class_ids(ids, idx_dtype, gen, seed):
    """Only equality of class ids counts: any int64 values, any integer dtype."""
    n = 300
    boxes, scores = make_set("int-scores", n, gen)
    dense = classes_for(n, 5, gen)  # 0..4
    limit = torch.iinfo(idx_dtype).max
    values = {
        "negative": torch.tensor([-3, -2, -1, 0, 1]),
        "huge": torch.tensor([limit, limit - 1, 2**14, 0, limit // 2]),
        "huge-negative": torch.tensor([-limit - 1, -limit, limit, -(2**14), 1]),
        "sparse-values": torch.tensor([1000, 7, 99, 12345, 3]),
    }[ids]
    idxs = values[dense].to(idx_dtype)
    assert idxs.long().unique().numel() == 5
    want = ops.batched_nms(boxes, scores, dense, 0.5)
    assert_keep(want, nms_ref(boxes, scores, 0.5, dense), msg=f"seed={seed}")
    assert_keep(ops.batched_nms(boxes, scores, idxs, 0.5), want, msg=f"seed={seed}")
    assert_keep(ops.batched_nms(boxes, scores, idxs, -0.1), nms_ref(boxes, scores, -0.1, dense))
    # torchvision on the same classes renumbered 0..4 (its offsets would overflow float32 otherwise)
    _, tv_batched = tv_nms()
    assert_keep(want, tv_batched(boxes, scores.double(), dense, 0.5), msg=f"seed={seed}")


def test_batched_nms_int64_extremes(gen, seed):
    n = 200
    boxes, scores = make_set("heavy", n, gen)
    dense = classes_for(n, 4, gen)
    big = torch.tensor([torch.iinfo(torch.int64).min, -1, 2**62, torch.iinfo(torch.int64).max])[dense]
    assert_keep(
        ops.batched_nms(boxes, scores, big, 0.5), nms_ref(boxes, scores, 0.5, dense), msg=f"seed={seed}"
    )
    assert_keep(
        ops.batched_nms(boxes, scores, dense.to(torch.uint8), 0.5), nms_ref(boxes, scores, 0.5, dense)
    )


def test_batched_nms_classes_do_not_interact():
    # two identical boxes of different classes are both kept; same class: one
    boxes = torch.tensor([[0.0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 4, 4]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert_keep(ops.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5), torch.tensor([1, 2]))
    assert_keep(ops.batched_nms(boxes, scores, torch.tensor([0, 1, 2]), -0.1), torch.tensor([1, 2, 0]))
    assert_keep(ops.batched_nms(boxes, scores, torch.tensor([5, 5, 5]), 0.5), torch.tensor([1]))


# --------------------------------------------------------------------------- bad input


def _good():
    boxes = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]])
    return boxes, torch.tensor([0.3, 0.9, 0.5]), torch.tensor([0, 1, 0])


@pytest.mark.parametrize("op", ["nms", "batched_nms"])
def test_bad_shapes_raise_runtime_error(op):
    """torchvision's tests expect a RuntimeError for these; fastmtl's InputError is one (and a
    ValueError), and the message names the argument."""
    boxes, scores, idxs = _good()

    def call(b, s, i=idxs):
        return ops.nms(b, s, 0.5) if op == "nms" else ops.batched_nms(b, s, i, 0.5)

    cases = [
        ("boxes", lambda: call(torch.rand(4), torch.rand(3))),
        ("boxes", lambda: call(torch.rand(3, 5), scores)),
        ("boxes", lambda: call(torch.rand(3, 3), scores)),
        ("boxes", lambda: call(torch.rand(1, 3, 4), scores)),
        ("boxes", lambda: call(torch.tensor(1.0), scores)),
        ("scores", lambda: call(boxes, torch.rand(3, 2))),
        ("scores", lambda: call(boxes, torch.rand(3, 1))),
        ("scores", lambda: call(boxes, torch.tensor(0.5))),
        ("scores", lambda: call(boxes, torch.rand(4))),
        ("scores", lambda: call(boxes, torch.rand(2))),
    ]
    if op == "nms":  # batched_nms returns [] for empty boxes before any check, as torchvision's
        cases.append(("scores", lambda: call(torch.empty(0, 4), torch.rand(1))))
    if op == "batched_nms":
        cases += [
            ("idxs", lambda: call(boxes, scores, idxs[:2])),
            ("idxs", lambda: call(boxes, scores, torch.zeros(4, dtype=torch.int64))),
            ("idxs", lambda: call(boxes, scores, idxs[:, None])),
            ("idxs", lambda: call(boxes, scores, torch.tensor(0))),
        ]
    for name, fn in cases:
        with pytest.raises(RuntimeError, match=name) as info:
            fn()
        assert isinstance(info.value, (InputError, ValueError)), info.value


def test_bad_values():
    boxes, scores, idxs = _good()
    nan_scores = scores.clone()
    nan_scores[1] = float("nan")
    with pytest.raises(ValueError, match="scores"):
        ops.nms(boxes, nan_scores, 0.5)
    with pytest.raises(ValueError, match="scores"):
        ops.batched_nms(boxes, nan_scores, idxs, 0.5)
    with pytest.raises(ValueError, match="scores"):
        ops.nms(boxes, nan_scores.half(), 0.5)
    for threshold in (float("nan"), None, "0.5", torch.tensor(0.5), True, [0.5]):
        with pytest.raises(ValueError, match="iou_threshold"):
            ops.nms(boxes, scores, threshold)
        with pytest.raises(ValueError, match="iou_threshold"):
            ops.batched_nms(boxes, scores, idxs, threshold)
    for bad in (float("nan"), float("inf")):
        b = boxes.clone()
        b[2, 3] = bad
        with pytest.raises(ValueError, match="boxes"):
            ops.nms(b, scores, 0.5)
        with pytest.raises(ValueError, match="boxes"):
            ops.batched_nms(b, scores, idxs, 0.5)
    # infinite scores and thresholds are fine (as in torchvision)
    assert_keep(
        ops.nms(boxes, torch.tensor([0.3, float("inf"), -float("inf")]), 0.5), torch.tensor([1, 0, 2])
    )
    assert_keep(ops.nms(boxes, scores, float("inf")), torch.tensor([1, 2, 0]))
    assert_keep(ops.nms(boxes, scores, 1), torch.tensor([1, 2, 0]))  # an int threshold


def test_bad_types():
    boxes, scores, idxs = _good()
    with pytest.raises(TypeError, match="boxes"):
        ops.nms(boxes.tolist(), scores, 0.5)
    with pytest.raises(TypeError, match="scores"):
        ops.nms(boxes, scores.tolist(), 0.5)
    with pytest.raises(TypeError, match="scores"):
        ops.nms(boxes, None, 0.5)
    with pytest.raises(TypeError, match="boxes"):
        ops.nms(boxes.numpy(), scores, 0.5)
    with pytest.raises(TypeError, match="idxs"):
        ops.batched_nms(boxes, scores, [0, 1, 0], 0.5)
    with pytest.raises(TypeError, match="idxs"):
        ops.batched_nms(boxes, scores, idxs.float(), 0.5)
    with pytest.raises(TypeError, match="idxs"):
        ops.batched_nms(boxes, scores, idxs.double(), 0.5)
    with pytest.raises(TypeError, match="idxs"):
        ops.batched_nms(boxes, scores, idxs.bool(), 0.5)
    with pytest.raises(TypeError, match="scores"):
        ops.nms(boxes, torch.tensor([3, 1, 2]), 0.5)
    with pytest.raises(TypeError, match="boxes"):
        ops.nms(boxes.bool(), scores, 0.5)
    with pytest.raises(TypeError, match="boxes"):
        ops.nms(boxes.to(torch.complex64), scores, 0.5)
    with pytest.raises(TypeError):
        ops.nms(boxes, scores)  # iou_threshold is required, as in torchvision


def test_mixed_devices():
    boxes, scores, idxs = _good()
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="scores.*device"):
        ops.nms(boxes, scores.to(other), 0.5)
    with pytest.raises(RuntimeError, match="scores.*device"):
        ops.nms(boxes.to(other), scores, 0.5)
    with pytest.raises(ValueError, match="scores.*device"):
        ops.batched_nms(boxes, scores.to(other), idxs, 0.5)
    with pytest.raises(ValueError, match="idxs.*device"):
        ops.batched_nms(boxes, scores, idxs.to(other), 0.5)
    with pytest.raises(RuntimeError, match="idxs.*device"):
        ops.batched_nms(boxes.to(other), scores.to(other), idxs, 0.5)


# --------------------------------------------------------------------------- dispatcher


def _op_args(gen, n, dtype, device, classes=3):
    boxes, scores = make_set("int-scores", n, gen)
    boxes, scores = boxes.to(device, dtype), scores.to(device)
    return boxes, scores, classes_for(n, classes, gen).to(device)


@compiled_only
@pytest.mark.parametrize("n", [0, 1, 57])
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck(device, dtype, n, gen):
    """All four default opcheck tests (schema, autograd registration, fake tensor, AOT dispatch
    with dynamic shapes) apply and pass: the fake impl returns a fresh unbacked size."""
    boxes, scores, idxs = _op_args(gen, n, dtype, device)
    for threshold in (0.5, -0.1):
        torch.library.opcheck(torch.ops.fastmtl.nms.default, (boxes, scores, threshold))
        torch.library.opcheck(torch.ops.fastmtl.batched_nms.default, (boxes, scores, idxs, threshold))


@compiled_only
def test_dispatcher_ops_match_public_ops(gen, seed):
    boxes, scores, idxs = _op_args(gen, 200, torch.float32, "cpu")
    for threshold in THRESHOLDS:
        assert_keep(torch.ops.fastmtl.nms(boxes, scores, threshold), ops.nms(boxes, scores, threshold))
        assert_keep(
            torch.ops.fastmtl.batched_nms(boxes, scores, idxs, threshold),
            nms_ref(boxes, scores, threshold, idxs),
            msg=f"seed={seed}",
        )


@compiled_only
def test_fake_impl_gives_an_unbacked_size():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        boxes = mode.from_tensor(torch.rand(10, 4))
        scores = mode.from_tensor(torch.rand(10))
        idxs = mode.from_tensor(torch.zeros(10, dtype=torch.int64))
        for out in (
            torch.ops.fastmtl.nms(boxes, scores, 0.5),
            torch.ops.fastmtl.batched_nms(boxes, scores, idxs, 0.5),
        ):
            assert out.dtype == torch.int64 and out.dim() == 1 and out.device == boxes.device
            assert isinstance(out.shape[0], torch.SymInt)


@compiled_only
def test_dispatcher_ops_check_their_arguments():
    boxes, scores, idxs = _good()
    cases = [
        ("boxes", lambda: torch.ops.fastmtl.nms(torch.rand(3, 5), scores, 0.5)),
        ("boxes", lambda: torch.ops.fastmtl.nms(boxes[None], scores, 0.5)),
        ("boxes", lambda: torch.ops.fastmtl.nms(boxes.int(), scores, 0.5)),
        ("scores", lambda: torch.ops.fastmtl.nms(boxes, scores[:, None], 0.5)),
        ("scores", lambda: torch.ops.fastmtl.nms(boxes, scores[:2], 0.5)),
        ("scores", lambda: torch.ops.fastmtl.nms(boxes, scores.long(), 0.5)),
        ("iou_threshold", lambda: torch.ops.fastmtl.nms(boxes, scores, float("nan"))),
        ("idxs", lambda: torch.ops.fastmtl.batched_nms(boxes, scores, idxs.int(), 0.5)),
        ("idxs", lambda: torch.ops.fastmtl.batched_nms(boxes, scores, idxs[:2], 0.5)),
        ("idxs", lambda: torch.ops.fastmtl.batched_nms(boxes, scores, idxs.float(), 0.5)),
        ("iou_threshold", lambda: torch.ops.fastmtl.batched_nms(boxes, scores, idxs, float("nan"))),
    ]
    for name, fn in cases:
        with pytest.raises(RuntimeError, match=name):
            fn()
    with pytest.raises(ValueError, match="scores"):  # a bad value: ValueError, as from Python
        torch.ops.fastmtl.nms(boxes, torch.tensor([0.0, float("nan"), 1]), 0.5)


@compiled_only
@cuda
@pytest.mark.cuda
def test_cuda_dispatcher_ops_reject_nan_scores():
    """On CUDA the NaN check rides along with the count copy; calling the op directly still raises."""
    boxes, scores, idxs = (t.cuda() for t in _good())
    scores[1] = float("nan")
    with pytest.raises(ValueError, match="scores"):
        torch.ops.fastmtl.nms(boxes, scores, 0.5)
    with pytest.raises(ValueError, match="scores"):
        torch.ops.fastmtl.batched_nms(boxes, scores, idxs, 0.5)


# --------------------------------------------------------------------------- torch.compile


@compiled_only
@pytest.mark.compile
def test_compile_fullgraph(gen, seed):
    """fullgraph traces through the fake impl (no graph break, no dynamo config needed), and the
    data-dependent result can be used downstream in the graph."""
    torch._dynamo.reset()

    def detect(boxes, scores, idxs):
        keep = ops.nms(boxes, scores, 0.5)
        keep_batched = ops.batched_nms(boxes, scores, idxs, 0.5)
        return keep, boxes[keep] * 2, scores[keep_batched].sum()

    fn = torch.compile(detect, fullgraph=True)
    for n in (120, 80):  # a second size: the graph is reused or recompiled, never broken
        boxes, scores, idxs = _op_args(gen, n, torch.float32, "cpu")
        keep, kept, total = fn(boxes, scores, idxs)
        assert_keep(keep, nms_ref(boxes, scores, 0.5), msg=f"seed={seed}")
        want = nms_ref(boxes, scores, 0.5, idxs)
        assert torch.equal(kept, boxes[keep] * 2)
        assert torch.allclose(total, scores[want].sum())


# --------------------------------------------------------------------------- fallback


@pytest.fixture
def fallback(monkeypatch):
    """Forces the pure-PyTorch path, as when fastmtl._C is not built."""
    monkeypatch.setattr(nms_module, "use_compiled", lambda *tensors: False)


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("kind", SETS)
def test_fallback_matches_reference(kind, threshold, fallback, gen, seed):
    boxes, scores = make_set(kind, 120, gen)
    idxs = classes_for(120, 3, gen)
    for dtype in (torch.float64, torch.float32, torch.float16):
        b = boxes.to(dtype)
        assert_keep(ops.nms(b, scores, threshold), nms_ref(b, scores, threshold), msg=f"{dtype} seed={seed}")
        got = ops.batched_nms(b, scores, idxs, threshold)
        assert_keep(got, nms_ref(b, scores, threshold, idxs), msg=f"{dtype} seed={seed}")


@compiled_only
@pytest.mark.parametrize("dtype", BOX_DTYPES + (torch.int32,), ids=str)
def test_fallback_matches_compiled(dtype, gen, seed, monkeypatch):
    boxes, scores = make_set("grid", 150, gen)
    boxes = boxes.to(dtype)
    idxs = classes_for(150, 4, gen).int()

    def run():
        return [ops.nms(boxes, scores, t) for t in THRESHOLDS] + [
            ops.batched_nms(boxes, scores, idxs, t) for t in THRESHOLDS
        ]

    compiled = run()
    monkeypatch.setattr(nms_module, "use_compiled", lambda *tensors: False)
    for c, r in zip(compiled, run()):
        assert_keep(r, c, msg=f"seed={seed}")


def test_fallback_edge_cases(fallback):
    e = torch.empty(0, 4)
    assert_keep(ops.nms(e, torch.empty(0), 0.5), torch.empty(0, dtype=torch.int64))
    assert_keep(
        ops.batched_nms(e, torch.empty(0), torch.empty(0, dtype=torch.int64), 0.5),
        torch.empty(0, dtype=torch.int64),
    )
    one = torch.tensor([[1.0, 1, 2, 2]])
    assert_keep(ops.nms(one, torch.ones(1), 0.5), torch.tensor([0]))
    same = one.expand(5, 4)
    assert_keep(ops.nms(same, torch.ones(5), 0.5), torch.tensor([0]))
    assert_keep(ops.nms(same.int(), torch.ones(5), 1.0), torch.arange(5))
    with pytest.raises(RuntimeError, match="boxes"):
        ops.nms(torch.rand(3, 5), torch.rand(3), 0.5)


# --------------------------------------------------------------------------- CUDA


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("kind", SETS)
def test_cpu_and_cuda_agree(kind, dtype, gen, seed):
    boxes, scores = make_set(kind, 700, gen)  # more than 64 boxes per mask word
    boxes = boxes.to(dtype)
    idxs = classes_for(700, 7, gen)
    for threshold in THRESHOLDS:
        cpu = ops.nms(boxes, scores, threshold)
        assert_keep(ops.nms(boxes.cuda(), scores.cuda(), threshold), cpu, device="cuda", msg=f"seed={seed}")
        cpu = ops.batched_nms(boxes, scores, idxs, threshold)
        got = ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), threshold)
        assert_keep(got, cpu, device="cuda", msg=f"seed={seed}")


@cuda
@pytest.mark.cuda
def test_cuda_large_and_empty(gen, seed):
    e = torch.empty(0, 4, device="cuda")
    assert_keep(
        ops.nms(e, torch.empty(0, device="cuda"), 0.5), torch.empty(0, dtype=torch.int64), device="cuda"
    )
    n = 20_000
    boxes = grid_random_boxes(n, gen=gen, scale=1000.0, min_size=0.01, max_size=0.1).float()
    scores = torch.randint(0, 100, (n,), generator=gen).float()
    idxs = classes_for(n, 80, gen)
    want = ops.nms(boxes, scores, 0.5)
    assert_keep(ops.nms(boxes.cuda(), scores.cuda(), 0.5), want, device="cuda", msg=f"seed={seed}")
    want = ops.batched_nms(boxes, scores, idxs, 0.5)
    got = ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert_keep(got, want, device="cuda", msg=f"seed={seed}")
