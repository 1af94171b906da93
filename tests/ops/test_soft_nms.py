"""Soft-NMS: fastmtl.ops.soft_nms (linear and Gaussian decay, optional classes).

Against the independent float64 reference ``soft_nms_ref`` (tests/ops/reference_nms.py), itself
checked on a hand-worked example here; on sparse, heavy, grid and zero-area boxes, every dtype,
classes, edge cases (empty, one box, identical boxes, threshold extremes, tiny sigma),
non-contiguous inputs, bad input, the dispatcher (opcheck, fake impl), the pure-PyTorch fallback
and CUDA.

Exactness: float64 inputs are decayed in float64, so they must give exactly the reference's
indices, and its scores to rounding. float32 and half inputs are decayed in float32: their scores
match to float32 rounding (then the output rounding), and the selection order too, except where
two current scores (or a score and the threshold) are within that rounding of each other, where
float32 may choose differently. :func:`assert_soft_nms` accepts such a divergence only when it is
such a near tie, and compares up to it. The boxes lie on a power-of-two grid (as in test_nms.py),
so IoUs are exact up to the final quotient, and the scores are distinct multiples of 1/256, exact
in every float dtype.
"""

import importlib
import math

import pytest
import torch

from fastmtl import ops
from fastmtl.ops._checks import InputError
from tests.ops.reference_nms import soft_nms_ref
from tests.ops.test_nms import grid_random_boxes
from tests.utils import DEVICES, DISPATCH_DEVICES, compiled_only, cuda, degenerate_boxes, grid_boxes

# The attribute fastmtl.ops.soft_nms is the function; this is the module (where use_compiled is looked up).
op_module = importlib.import_module("fastmtl.ops.soft_nms")

BOX_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
SETS = ("sparse", "heavy", "grid", "degenerate")
# keyword arguments of soft_nms / soft_nms_ref; thresholds exact in float32
CONFIGS = {
    "linear-0": {"method": "linear", "iou_threshold": 0.0},
    "linear-0.25": {"method": "linear", "iou_threshold": 0.25},
    "linear-0.5": {"method": "linear", "iou_threshold": 0.5},
    "linear-1": {"method": "linear", "iou_threshold": 1.0},
    "gaussian-0.5": {"method": "gaussian", "sigma": 0.5},
    "gaussian-0.0625": {"method": "gaussian", "sigma": 0.0625},
}
# (rtol, atol) of the output scores against the float64 reference
SCORE_TOL = {
    torch.float64: (1e-12, 1e-15),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}


# --------------------------------------------------------------------------- helpers


def make_set(kind, n, gen):
    """(float64 boxes [n, 4], float64 scores [n]) with ``n <= 255`` distinct scores ``k / 256``."""
    if kind == "sparse":  # few overlaps
        boxes = grid_random_boxes(n, gen=gen, scale=1000.0, min_size=0.005, max_size=0.03)
    elif kind == "heavy":  # many overlaps
        boxes = grid_random_boxes(n, gen=gen, scale=100.0, min_size=0.05, max_size=0.6)
    elif kind == "grid":  # identical (IoU 1), nested and touching boxes
        boxes = grid_boxes(n, gen=gen, dtype=torch.float64, cells=12)
    elif kind == "degenerate":  # points, lines and small boxes: 0 / 0 IoU
        boxes = degenerate_boxes(n, gen=gen, dtype=torch.float64)
    else:
        raise ValueError(kind)
    scores = (torch.randperm(255, generator=gen)[:n] + 1).double() / 256
    return boxes, scores


def classes_for(n, num_classes, gen):
    return torch.randint(0, num_classes, (n,), generator=gen)


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    return abs(a - b) <= atol + rtol * abs(b)


def assert_soft_nms(got, want, *, score_dtype, device="cpu", exact=True, score_threshold=0.001, msg=""):
    """``got = (keep, new_scores)`` from the op against the reference's ``want``.

    ``exact``: the same indices, scores within :data:`SCORE_TOL`. Otherwise the two may part at a
    near tie (the two selected scores, or the last score and the threshold, within the tolerance):
    then they are compared up to that point only."""
    assert isinstance(got, tuple) and len(got) == 2, type(got)
    keep, new_scores = got
    assert isinstance(keep, torch.Tensor) and isinstance(new_scores, torch.Tensor)
    assert keep.dtype == torch.int64 and keep.dim() == 1, (keep.dtype, keep.shape)
    assert new_scores.dtype == score_dtype and new_scores.shape == keep.shape, (
        new_scores.dtype,
        new_scores.shape,
    )
    assert keep.device.type == new_scores.device.type == torch.device(device).type, keep.device
    keep, new_scores = keep.cpu(), new_scores.cpu().double()
    want_keep, want_scores = want
    rtol, atol = SCORE_TOL[score_dtype]
    n = min(keep.numel(), want_keep.numel())
    diff = (keep[:n] != want_keep[:n]).nonzero()
    part = diff[0].item() if diff.numel() else n
    detail = (
        f"kept {keep.numel()} boxes, expected {want_keep.numel()}; first difference at position {part}: "
        f"got {keep[part : part + 5].tolist()} scores {new_scores[part : part + 5].tolist()}, "
        f"want {want_keep[part : part + 5].tolist()} scores {want_scores[part : part + 5].tolist()}. {msg}"
    )
    torch.testing.assert_close(
        new_scores[:part], want_scores[:part], rtol=rtol, atol=atol, msg=lambda m: f"{m}\n{detail}"
    )
    if part == keep.numel() == want_keep.numel():
        return
    if exact:
        raise AssertionError(detail)
    if part < n:  # another box selected: only right if the two had (nearly) the same score
        near = _close(new_scores[part].item(), want_scores[part].item(), rtol, atol)
    else:  # one more box selected: only right if its score (nearly) equals the threshold
        longer = new_scores if keep.numel() > want_keep.numel() else want_scores
        near = _close(longer[part].item(), score_threshold, rtol, atol)
    assert near, f"not a near tie: {detail}"


def _hand_set(dtype=torch.float64, device="cpu"):
    """IoU(0, 1) = 1/2, IoU(0, 2) = 1/3, IoU(1, 2) = 1/5; box 3 overlaps none."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [5, 0, 15, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    return boxes.to(device, dtype), scores.to(device, dtype)


# (kwargs, keep, new scores) worked by hand on _hand_set
HAND_CASES = [
    # A decays B to .8 * (1 - 1/2) and C to .7 * (1 - 1/3); D is next, then C; B vs C: 1/5 < .3
    ({}, [0, 3, 2, 1], [0.9, 0.6, 0.7 * 2 / 3, 0.4]),
    # B (.4) falls below .45
    ({"score_threshold": 0.45}, [0, 3, 2], [0.9, 0.6, 0.7 * 2 / 3]),
    # iou_threshold 0: C also decays B by 1 - 1/5
    ({"iou_threshold": 0.0}, [0, 3, 2, 1], [0.9, 0.6, 0.7 * 2 / 3, 0.4 * 0.8]),
    # 1/2 is not greater than 1/2, 1/3 neither: nothing decays
    ({"iou_threshold": 0.5}, [0, 1, 2, 3], [0.9, 0.8, 0.7, 0.6]),
    # classes [0, 1, 0, 0]: A does not decay B, and B not C
    ({"idxs": [0, 1, 0, 0]}, [0, 1, 3, 2], [0.9, 0.8, 0.6, 0.7 * 2 / 3]),
    # all of one class, any ids
    ({"idxs": [7, 7, 7, 7]}, [0, 3, 2, 1], [0.9, 0.6, 0.7 * 2 / 3, 0.4]),
    ({"idxs": [0, 1, 2, 3]}, [0, 1, 2, 3], [0.9, 0.8, 0.7, 0.6]),
    (
        {"method": "gaussian"},
        [0, 3, 2, 1],
        [0.9, 0.6, 0.7 * math.exp(-1 / 9 / 0.5), 0.8 * math.exp(-0.25 / 0.5) * math.exp(-0.04 / 0.5)],
    ),
    # the Gaussian ignores iou_threshold
    (
        {"method": "gaussian", "sigma": 0.25, "iou_threshold": 0.9},
        [0, 3, 2, 1],
        [0.9, 0.6, 0.7 * math.exp(-4 / 9), 0.8 * math.exp(-1.0) * math.exp(-0.16)],
    ),
    # a tiny sigma: any overlap drives the score to 0
    ({"method": "gaussian", "sigma": 1e-6}, [0, 3], [0.9, 0.6]),
]


# --------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("case", range(len(HAND_CASES)))
def test_reference_hand_worked(case):
    kwargs, keep, new_scores = HAND_CASES[case]
    boxes, scores = _hand_set()
    kwargs = dict(kwargs)
    if "idxs" in kwargs:
        kwargs["idxs"] = torch.tensor(kwargs["idxs"])
    got_keep, got_scores = soft_nms_ref(boxes, scores, **kwargs)
    assert got_keep.tolist() == keep
    assert got_scores.tolist() == pytest.approx(new_scores, rel=1e-12)


def test_reference_without_decay_is_a_sort(gen):
    """linear with iou_threshold 1: nothing decays, the boxes above the threshold come out sorted."""
    boxes, scores = make_set("heavy", 100, gen)
    keep, new_scores = soft_nms_ref(boxes, scores, iou_threshold=1.0, score_threshold=0.3)
    want = torch.argsort(scores, descending=True)
    want = want[scores[want] >= 0.3]
    assert keep.tolist() == want.tolist()
    assert torch.equal(new_scores, scores[want])


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("case", range(len(HAND_CASES)))
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_hand_worked(device, dtype, case):
    kwargs, keep, new_scores = HAND_CASES[case]
    boxes, scores = _hand_set(dtype, device)
    kwargs = dict(kwargs)
    if "idxs" in kwargs:
        kwargs["idxs"] = torch.tensor(kwargs["idxs"], device=device)
    got = ops.soft_nms(boxes, scores, **kwargs)
    # against the reference on the rounded scores (0.9 is not exact in half types)
    want = soft_nms_ref(boxes, scores, **kwargs)
    assert want[0].tolist() == keep
    assert_soft_nms(got, want, score_dtype=dtype, device=device)
    if dtype == torch.float64:
        assert got[1].tolist() == pytest.approx(new_scores, rel=1e-12)


@pytest.mark.parametrize("kind", SETS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_float64(device, config, kind, gen, seed):
    """float64: the reference's indices exactly, with and without classes, two score thresholds."""
    boxes, scores = make_set(kind, 100, gen)
    idxs = classes_for(100, 3, gen)
    boxes, scores = boxes.to(device), scores.to(device)
    for classes in (None, idxs.to(device)):
        for score_threshold in (0.001, 0.2):
            kwargs = dict(CONFIGS[config], score_threshold=score_threshold, idxs=classes)
            got = ops.soft_nms(boxes, scores, **kwargs)
            want = soft_nms_ref(boxes, scores, **kwargs)
            assert_soft_nms(
                got,
                want,
                score_dtype=torch.float64,
                device=device,
                msg=f"classes={classes is not None} score_thr={score_threshold} seed={seed}",
            )


@pytest.mark.parametrize("kind", ["sparse", "heavy", "grid"])
@pytest.mark.parametrize("config", ["linear-0.25", "linear-0.5", "gaussian-0.5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_lower_precision(device, dtype, config, kind, gen, seed):
    """float32 and half types: decayed in float32; compared up to a near tie (see assert_soft_nms)."""
    boxes, scores = make_set(kind, 120, gen)
    idxs = classes_for(120, 2, gen)
    boxes, scores = boxes.to(device, dtype), scores.to(device, dtype)
    for classes in (None, idxs.to(device)):
        kwargs = dict(CONFIGS[config], idxs=classes)
        got = ops.soft_nms(boxes, scores, **kwargs)
        want = soft_nms_ref(boxes, scores, **kwargs)
        assert_soft_nms(
            got,
            want,
            score_dtype=dtype,
            device=device,
            exact=False,
            msg=f"classes={classes is not None} seed={seed}",
        )


def test_defaults(gen, seed):
    """iou_threshold=0.3, sigma=0.5, score_threshold=0.001, method="linear", no classes."""
    boxes, scores = make_set("heavy", 100, gen)
    want = soft_nms_ref(boxes, scores, 0.3, 0.5, 0.001, "linear", None)
    assert_soft_nms(ops.soft_nms(boxes, scores), want, score_dtype=torch.float64, msg=f"seed={seed}")
    got = ops.soft_nms(
        boxes, scores, iou_threshold=0.3, sigma=0.5, score_threshold=0.001, method="linear", idxs=None
    )
    assert_soft_nms(got, want, score_dtype=torch.float64, msg=f"seed={seed}")
    got = ops.soft_nms(boxes, scores, 0.3, 0.5, 0.001, "gaussian")
    want = soft_nms_ref(boxes, scores, 0.3, 0.5, 0.001, "gaussian")
    assert_soft_nms(got, want, score_dtype=torch.float64, msg=f"seed={seed}")


@pytest.mark.parametrize("device", DEVICES)
def test_output_properties(device, gen, seed):
    """Distinct indices, scores not increasing, at most the input scores, at least the threshold."""
    boxes, scores = make_set("heavy", 200, gen)
    boxes, scores = boxes.float().to(device), scores.float().to(device)
    for config in CONFIGS.values():
        for score_threshold in (0.001, 0.1):
            keep, new_scores = ops.soft_nms(boxes, scores, score_threshold=score_threshold, **config)
            keep, new_scores = keep.cpu(), new_scores.cpu()
            msg = f"{config} score_thr={score_threshold} seed={seed}"
            assert keep.unique().numel() == keep.numel(), msg
            assert (new_scores[1:] <= new_scores[:-1]).all(), msg
            assert (new_scores <= scores.cpu()[keep]).all(), msg
            assert (new_scores >= score_threshold).all(), msg
            assert keep.numel() == 0 or keep[0] == scores.argmax().cpu(), msg


@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_one_box(device, dtype):
    empty = (torch.empty(0, 4, dtype=dtype, device=device), torch.empty(0, dtype=dtype, device=device))
    for method in ("linear", "gaussian"):
        want = (torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.float64))
        assert_soft_nms(ops.soft_nms(*empty, method=method), want, score_dtype=dtype, device=device)
        idxs = torch.empty(0, dtype=torch.int64, device=device)
        assert_soft_nms(
            ops.soft_nms(*empty, method=method, idxs=idxs), want, score_dtype=dtype, device=device
        )
        one = torch.tensor([[1.0, 2, 5, 7]], dtype=dtype, device=device)
        score = torch.tensor([0.5], dtype=dtype, device=device)
        want = (torch.tensor([0]), torch.tensor([0.5], dtype=torch.float64))
        assert_soft_nms(ops.soft_nms(one, score, method=method), want, score_dtype=dtype, device=device)
        # a point: no other box to decay
        point = torch.tensor([[3.0, 3, 3, 3]], dtype=dtype, device=device)
        assert_soft_nms(ops.soft_nms(point, score, method=method), want, score_dtype=dtype, device=device)
        # below the threshold: nothing; at it: kept (>=)
        nothing = (torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.float64))
        assert_soft_nms(
            ops.soft_nms(one, score, score_threshold=0.75, method=method),
            nothing,
            score_dtype=dtype,
            device=device,
        )
        assert_soft_nms(
            ops.soft_nms(one, score, score_threshold=0.5, method=method),
            want,
            score_dtype=dtype,
            device=device,
        )


@pytest.mark.parametrize("device", DEVICES)
def test_all_below_the_score_threshold(device, gen):
    boxes, scores = make_set("heavy", 50, gen)
    boxes, scores = boxes.float().to(device), scores.float().to(device)
    for method in ("linear", "gaussian"):
        keep, new_scores = ops.soft_nms(boxes, scores, score_threshold=1.5, method=method)
        assert keep.shape == (0,) and keep.dtype == torch.int64
        assert new_scores.shape == (0,) and new_scores.dtype == torch.float32
        keep, _ = ops.soft_nms(boxes, scores * 0.01, score_threshold=0.01, method=method)
        assert keep.numel() == 0


@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_identical_boxes(device, dtype, gen, seed):
    """IoU 1: linear weight 0, so only the best box stays when score_threshold > 0; with 0, the rest
    follow with score 0 by index. Gaussian: each round multiplies the rest by exp(-1 / sigma)."""
    n = 10
    boxes = torch.tensor([[3.0, 4.0, 10.5, 9.25]], dtype=dtype, device=device).expand(n, 4)
    scores = ((torch.randperm(n, generator=gen) + 1).double() / 16).to(device, dtype)
    order = torch.argsort(scores.cpu(), descending=True)
    best = order[:1]
    for threshold in (0.0, 0.3, 0.999):
        keep, new_scores = ops.soft_nms(boxes, scores, iou_threshold=threshold)
        assert keep.tolist() == best.tolist(), f"thr={threshold} seed={seed}"
        assert new_scores.tolist() == scores[best].tolist()
    keep, new_scores = ops.soft_nms(boxes, scores, score_threshold=0.0)
    rest = [i for i in range(n) if i != best.item()]
    assert keep.tolist() == best.tolist() + rest, f"seed={seed}"
    assert new_scores.tolist() == scores[best].tolist() + [0.0] * (n - 1)
    # IoU 1 is not greater than 1: nothing decays
    keep, new_scores = ops.soft_nms(boxes, scores, iou_threshold=1.0)
    assert keep.tolist() == order.tolist() and torch.equal(new_scores, scores[order.to(device)])
    # Gaussian: the order of the scores, each decayed once per box selected before it
    keep, new_scores = ops.soft_nms(boxes, scores, method="gaussian", sigma=2.0, score_threshold=0.0)
    assert keep.tolist() == order.tolist()
    decay = torch.tensor([math.exp(-0.5 * k) for k in range(n)], dtype=torch.float64)
    assert_soft_nms(
        (keep, new_scores),
        (order, scores.cpu().double()[order] * decay),
        score_dtype=dtype,
        device=device,
        exact=False,
        score_threshold=0.0,
    )
    # all of different classes: nothing decays
    keep, new_scores = ops.soft_nms(boxes, scores, idxs=torch.arange(n, device=device))
    assert keep.tolist() == order.tolist()
    # equal scores: the lowest index first
    keep, _ = ops.soft_nms(boxes, torch.ones(n, dtype=dtype, device=device))
    assert keep.tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_score_ties(device):
    """Equal current scores: the lowest index is selected first."""
    corner = torch.arange(40.0, device=device)[:, None] * 3
    boxes = torch.cat((corner, corner, corner + 1, corner + 2), dim=1)  # disjoint: nothing decays
    for method in ("linear", "gaussian"):
        keep, new_scores = ops.soft_nms(boxes, torch.full((40,), 0.5, device=device), method=method)
        assert keep.tolist() == list(range(40)) and (new_scores == 0.5).all()
        scores = torch.tensor([0.25, 0.5, 0.25, 0.5] * 10, device=device)
        keep, _ = ops.soft_nms(boxes, scores, method=method)
        assert keep.tolist() == list(range(1, 40, 2)) + list(range(0, 40, 2))
    # tied after a decay: box 2 (.8, decayed by box 0 to .8 * (1 - 1/2) = .4) ties box 1 (.4)
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 5]], device=device)
    scores = torch.tensor([0.9, 0.4, 0.8], dtype=torch.float64, device=device)
    keep, new_scores = ops.soft_nms(boxes.double(), scores)
    assert keep.tolist() == [0, 1, 2] and new_scores.tolist() == [0.9, 0.4, 0.4]


@pytest.mark.parametrize("device", DEVICES)
def test_zero_area_boxes(device):
    """Two empty boxes: 0 / 0 = NaN, weight 1; an empty box against a real one: IoU 0, weight 1.
    So nothing decays."""
    point = [2.0, 2.0, 2.0, 2.0]
    line = [1.0, 2.0, 1.0, 3.0]
    box = [0.0, 0.0, 4.0, 4.0]
    boxes = torch.tensor([point, point, line, box, point], device=device)
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.4], device=device)
    for kwargs in (
        {"iou_threshold": 0.0},
        {"iou_threshold": 0.3},
        {"method": "gaussian"},
        {"method": "gaussian", "sigma": 1e-6},
    ):
        keep, new_scores = ops.soft_nms(boxes, scores, **kwargs)
        assert keep.tolist() == [3, 4, 2, 1, 0], kwargs
        assert torch.equal(new_scores, scores[keep]), kwargs
        want = soft_nms_ref(boxes, scores, **kwargs)
        assert_soft_nms((keep, new_scores), want, score_dtype=torch.float32, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_threshold_extremes(device, gen, seed):
    """linear iou_threshold 1: nothing decays (a sort of the scores above score_threshold); a huge
    sigma: the Gaussian weights are nearly 1, so the same order."""
    boxes, scores = make_set("heavy", 150, gen)
    boxes, scores = boxes.to(device), scores.to(device)
    order = torch.argsort(scores.cpu(), descending=True)
    for score_threshold in (0.001, 0.49):  # not a score: a slight decay does not cross it
        want = order[scores.cpu()[order] >= score_threshold]
        keep, new_scores = ops.soft_nms(boxes, scores, iou_threshold=1.0, score_threshold=score_threshold)
        assert keep.tolist() == want.tolist(), f"seed={seed}"
        assert torch.equal(new_scores.cpu(), scores.cpu()[want])
        keep, _ = ops.soft_nms(boxes, scores, method="gaussian", sigma=1e9, score_threshold=score_threshold)
        assert keep.tolist() == want.tolist(), f"seed={seed}"
    # tiny sigma: the scores of boxes overlapping a selected one underflow to 0
    got = ops.soft_nms(boxes, scores, method="gaussian", sigma=1e-6)
    want = soft_nms_ref(boxes, scores, method="gaussian", sigma=1e-6)
    assert_soft_nms(got, want, score_dtype=torch.float64, device=device, msg=f"seed={seed}")


@pytest.mark.parametrize("num_classes", [1, 4, 40])
@pytest.mark.parametrize("device", DEVICES)
def test_classes(device, num_classes, gen, seed):
    """Class-aware Soft-NMS is Soft-NMS run on each class alone, merged by decreasing score."""
    n = 150
    boxes, scores = make_set("heavy", n, gen)
    idxs = classes_for(n, num_classes, gen)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    for config in ("linear-0", "linear-0.5", "gaussian-0.5"):
        got = ops.soft_nms(boxes, scores, idxs=idxs, **CONFIGS[config])
        assert_soft_nms(
            got,
            soft_nms_ref(boxes, scores, idxs=idxs, **CONFIGS[config]),
            score_dtype=torch.float64,
            device=device,
            msg=f"{config} seed={seed}",
        )
        merged = []
        for c in idxs.unique():
            members = (idxs == c).nonzero().flatten()
            keep, new_scores = ops.soft_nms(boxes[members], scores[members], **CONFIGS[config])
            merged += zip(new_scores.tolist(), members[keep].tolist())
        merged.sort(key=lambda pair: (-pair[0], pair[1]))
        assert got[0].tolist() == [i for _, i in merged], f"{config} seed={seed}"
        assert got[1].tolist() == [s for s, _ in merged], f"{config} seed={seed}"
    if num_classes == 1:
        for a, b in zip(ops.soft_nms(boxes, scores, idxs=idxs), ops.soft_nms(boxes, scores)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8], ids=str)
def test_class_ids(idx_dtype, gen, seed):
    """Only equality of class ids counts: any values, any integer dtype."""
    n = 120
    boxes, scores = make_set("heavy", n, gen)
    dense = classes_for(n, 4, gen)
    want = soft_nms_ref(boxes, scores, idxs=dense)
    high = torch.iinfo(idx_dtype).max
    low = torch.iinfo(idx_dtype).min
    for values in ([0, 1, 2, 3], [high, low, 7, high - 1], [3, 2, 1, 0]):
        idxs = torch.tensor(values, dtype=idx_dtype)[dense]
        assert_soft_nms(
            ops.soft_nms(boxes, scores, idxs=idxs), want, score_dtype=torch.float64, msg=f"seed={seed}"
        )


@pytest.mark.parametrize("int_dtype", [torch.int64, torch.int32], ids=str)
def test_integer_boxes(int_dtype, gen, seed):
    """Integer boxes are taken as float32, as in nms."""
    boxes, scores = make_set("grid", 100, gen)
    scores = scores.float()
    for config in ("linear-0.5", "gaussian-0.5"):
        got = ops.soft_nms(boxes.to(int_dtype), scores, **CONFIGS[config])
        for a, b in zip(got, ops.soft_nms(boxes.float(), scores, **CONFIGS[config])):
            assert torch.equal(a, b), f"{config} seed={seed}"


def _strided(vector):
    out = torch.zeros(2 * vector.numel(), dtype=vector.dtype, device=vector.device)
    out[1::2] = vector
    view = out[1::2]
    assert not view.is_contiguous() and torch.equal(view, vector)
    return view


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, gen, seed):
    boxes, scores = make_set("grid", 100, gen)
    idxs = classes_for(100, 3, gen)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    cols = torch.zeros(100, 7, dtype=boxes.dtype, device=device)
    cols[:, 2:6] = boxes
    views = {"transposed": boxes.t().contiguous().t(), "column-slice": cols[:, 2:6]}
    for name, view in views.items():
        assert not view.is_contiguous()
        for classes in (None, idxs):
            want = soft_nms_ref(boxes, scores, idxs=classes)
            got = ops.soft_nms(view, _strided(scores), idxs=None if classes is None else _strided(classes))
            assert_soft_nms(got, want, score_dtype=torch.float64, device=device, msg=f"{name} seed={seed}")
    # an expanded (stride 0) score vector: all tied
    flat = torch.tensor(0.5, dtype=torch.float64, device=device).expand(100)
    assert_soft_nms(
        ops.soft_nms(boxes, flat), soft_nms_ref(boxes, flat), score_dtype=torch.float64, device=device
    )


def test_inputs_are_not_modified(gen):
    boxes, scores = make_set("heavy", 100, gen)
    idxs = classes_for(100, 3, gen)
    for dtype in (torch.float64, torch.float32, torch.float16):
        b, s = boxes.to(dtype), scores.to(dtype)
        copies = [t.clone() for t in (b, s, idxs)]
        ops.soft_nms(b, s)
        ops.soft_nms(b, s, method="gaussian", idxs=idxs)
        for t, c in zip((b, s, idxs), copies):
            assert torch.equal(t, c)


def test_inputs_requiring_grad():
    boxes, scores = _hand_set(torch.float32)
    boxes.requires_grad_(True)
    scores.requires_grad_(True)
    keep, _ = ops.soft_nms(boxes, scores)
    assert keep.tolist() == [0, 3, 2, 1] and not keep.requires_grad


# --------------------------------------------------------------------------- bad input


def _good():
    boxes = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]])
    return boxes, torch.tensor([0.3, 0.9, 0.5]), torch.tensor([0, 1, 0])


def test_bad_shapes():
    boxes, scores, idxs = _good()
    cases = [
        ("boxes", torch.rand(3, 5), scores, None),
        ("boxes", boxes[None], scores, None),
        ("boxes", torch.rand(4), scores, None),
        ("boxes", torch.tensor(1.0), scores, None),
        ("scores", boxes, scores[:, None], None),
        ("scores", boxes, scores[:2], None),
        ("scores", boxes, torch.rand(4), None),
        ("scores", boxes, torch.tensor(0.5), None),
        ("idxs", boxes, scores, idxs[:2]),
        ("idxs", boxes, scores, idxs[:, None]),
        ("idxs", boxes, scores, torch.tensor(0)),
    ]
    for name, b, s, i in cases:
        with pytest.raises(RuntimeError, match=name) as info:
            ops.soft_nms(b, s, idxs=i)
        assert isinstance(info.value, InputError), info.value


def test_bad_values():
    boxes, scores, idxs = _good()
    for method in ("hard", "Linear", "", None, 0, 1):
        with pytest.raises(ValueError, match="method"):
            ops.soft_nms(boxes, scores, method=method)
    for sigma in (0.0, -1.0, float("nan"), -float("inf")):
        for method in ("linear", "gaussian"):
            with pytest.raises(ValueError, match="sigma"):
                ops.soft_nms(boxes, scores, sigma=sigma, method=method)
    nan_scores = scores.clone()
    nan_scores[1] = float("nan")
    for s in (nan_scores, nan_scores.double(), nan_scores.half()):
        with pytest.raises(ValueError, match="scores"):
            ops.soft_nms(boxes, s)
        with pytest.raises(ValueError, match="scores"):
            ops.soft_nms(boxes, s, idxs=idxs, method="gaussian")
    with pytest.raises(ValueError, match="iou_threshold"):
        ops.soft_nms(boxes, scores, iou_threshold=float("nan"))
    with pytest.raises(ValueError, match="score_threshold"):
        ops.soft_nms(boxes, scores, score_threshold=float("nan"))
    # infinite scores and thresholds are numbers
    keep, new_scores = ops.soft_nms(boxes, torch.tensor([0.3, float("inf"), 0.5]), iou_threshold=float("inf"))
    assert keep.tolist() == [1, 2, 0] and new_scores[0] == float("inf")
    assert ops.soft_nms(boxes, scores, score_threshold=-float("inf"))[0].tolist() == [1, 2, 0]
    assert ops.soft_nms(boxes, scores, iou_threshold=1, sigma=1, score_threshold=0)[0].tolist() == [1, 2, 0]


def test_bad_types():
    boxes, scores, idxs = _good()
    with pytest.raises(TypeError, match="boxes"):
        ops.soft_nms(boxes.tolist(), scores)
    with pytest.raises(TypeError, match="boxes"):
        ops.soft_nms(boxes.bool(), scores)
    with pytest.raises(TypeError, match="scores"):
        ops.soft_nms(boxes, scores.tolist())
    with pytest.raises(TypeError, match="scores"):
        ops.soft_nms(boxes, torch.tensor([3, 1, 2]))
    with pytest.raises(TypeError, match="idxs"):
        ops.soft_nms(boxes, scores, idxs=[0, 1, 0])
    for bad in (idxs.float(), idxs.double(), idxs.bool()):
        with pytest.raises(TypeError, match="idxs"):
            ops.soft_nms(boxes, scores, idxs=bad)


def test_mixed_devices():
    boxes, scores, idxs = _good()
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="scores.*device"):
        ops.soft_nms(boxes, scores.to(other))
    with pytest.raises(ValueError, match="idxs.*device"):
        ops.soft_nms(boxes, scores, idxs=idxs.to(other))
    with pytest.raises(RuntimeError, match="device"):
        ops.soft_nms(boxes.to(other), scores)


# --------------------------------------------------------------------------- dispatcher


@compiled_only
@pytest.mark.parametrize(
    "n,dtype,method,classes",
    [
        (60, torch.float64, "linear", True),
        (60, torch.float32, "gaussian", False),
        (60, torch.float16, "linear", False),
        (60, torch.bfloat16, "gaussian", True),
        (1, torch.float32, "linear", True),
        (0, torch.float32, "gaussian", False),
    ],
    ids=["float64-linear", "float32-gaussian", "float16-linear", "bfloat16-gaussian", "n=1", "n=0"],
)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck(device, n, dtype, method, classes, gen):
    """All four default opcheck tests (the fake impl returns a fresh unbacked size, as for nms)."""
    boxes, scores = make_set("grid", n, gen)
    boxes, scores = boxes.to(device, dtype), scores.to(device, dtype)
    idxs = classes_for(n, 3, gen).to(device) if classes else None
    torch.library.opcheck(torch.ops.fastmtl.soft_nms.default, (boxes, scores, idxs, 0.25, 0.5, 0.001, method))


@compiled_only
def test_dispatcher_op_matches_public_op(gen, seed):
    boxes, scores = make_set("heavy", 100, gen)
    idxs = classes_for(100, 3, gen)
    for classes in (None, idxs):
        for method in ("linear", "gaussian"):
            got = torch.ops.fastmtl.soft_nms(boxes, scores, classes, 0.25, 0.5, 0.001, method)
            want = soft_nms_ref(boxes, scores, 0.25, 0.5, 0.001, method, classes)
            assert_soft_nms(tuple(got), want, score_dtype=torch.float64, msg=f"{method} seed={seed}")


@compiled_only
def test_fake_impl_gives_an_unbacked_size():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        boxes = mode.from_tensor(torch.rand(10, 4))
        scores = mode.from_tensor(torch.rand(10, dtype=torch.float16))
        idxs = mode.from_tensor(torch.zeros(10, dtype=torch.int64))
        for classes in (None, idxs):
            keep, new_scores = torch.ops.fastmtl.soft_nms(boxes, scores, classes, 0.3, 0.5, 0.001, "linear")
            assert keep.dtype == torch.int64 and keep.dim() == 1 and keep.device == boxes.device
            assert new_scores.dtype == torch.float16 and new_scores.dim() == 1
            assert isinstance(keep.shape[0], torch.SymInt)
            assert keep.shape[0] == new_scores.shape[0]


@compiled_only
def test_dispatcher_op_checks_its_arguments():
    boxes, scores, idxs = _good()
    op = torch.ops.fastmtl.soft_nms
    cases = [
        ("boxes", lambda: op(torch.rand(3, 5), scores, None, 0.3, 0.5, 0.001, "linear")),
        ("scores", lambda: op(boxes, scores[:2], None, 0.3, 0.5, 0.001, "linear")),
        ("idxs", lambda: op(boxes, scores, idxs[:2], 0.3, 0.5, 0.001, "linear")),
        (
            "Invalid method 'cubic': expected 'linear' or 'gaussian'",
            lambda: op(boxes, scores, None, 0.3, 0.5, 0.001, "cubic"),
        ),
        ("Invalid method 'Linear'", lambda: op(boxes, scores, None, 0.3, 0.5, 0.001, "Linear")),
        ("method", lambda: op(boxes, scores, None, 0.3, 0.5, 0.001, 1)),  # no integer codes
        ("sigma", lambda: op(boxes, scores, None, 0.3, 0.0, 0.001, "gaussian")),
        ("iou_threshold", lambda: op(boxes, scores, None, float("nan"), 0.5, 0.001, "linear")),
    ]
    for name, fn in cases:
        # Limits on values (sigma in the compute type) raise ValueError since the limits commit.
        with pytest.raises((RuntimeError, ValueError), match=name):
            fn()


# --------------------------------------------------------------------------- fallback


@pytest.fixture
def fallback(monkeypatch):
    """Forces the pure-PyTorch path, as when fastmtl._C is not built."""
    monkeypatch.setattr(op_module, "use_compiled", lambda *tensors: False)


@pytest.mark.parametrize("kind", SETS)
@pytest.mark.parametrize("config", CONFIGS)
def test_fallback_matches_reference(config, kind, fallback, gen, seed):
    boxes, scores = make_set(kind, 50, gen)
    idxs = classes_for(50, 3, gen)
    for dtype in (torch.float64, torch.float16):
        b, s = boxes.to(dtype), scores.to(dtype)
        for classes in (None, idxs):
            got = ops.soft_nms(b, s, idxs=classes, **CONFIGS[config])
            want = soft_nms_ref(b, s, idxs=classes, **CONFIGS[config])
            exact = dtype == torch.float64
            assert_soft_nms(got, want, score_dtype=dtype, exact=exact, msg=f"{dtype} seed={seed}")


def test_fallback_edge_cases(fallback):
    keep, new_scores = ops.soft_nms(torch.empty(0, 4), torch.empty(0))
    assert keep.shape == (0,) and keep.dtype == torch.int64 and new_scores.shape == (0,)
    boxes, scores = _hand_set()
    for kwargs, keep, new_scores in HAND_CASES:
        kwargs = dict(kwargs)
        if "idxs" in kwargs:
            kwargs["idxs"] = torch.tensor(kwargs["idxs"])
        got = ops.soft_nms(boxes, scores, **kwargs)
        assert got[0].tolist() == keep, kwargs
        assert got[1].tolist() == pytest.approx(new_scores, rel=1e-12), kwargs
    same = torch.tensor([[1.0, 1, 2, 2]]).expand(5, 4)
    assert ops.soft_nms(same, torch.ones(5))[0].tolist() == [0]
    with pytest.raises(ValueError, match="method"):
        ops.soft_nms(same, torch.ones(5), method="hard")


@compiled_only
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
def test_fallback_matches_compiled(dtype, gen, seed, monkeypatch):
    boxes, scores = make_set("grid", 80, gen)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    idxs = classes_for(80, 3, gen).int()

    def run():
        return [
            ops.soft_nms(boxes, scores, idxs=classes, **config)
            for config in CONFIGS.values()
            for classes in (None, idxs)
        ]

    compiled = run()
    monkeypatch.setattr(op_module, "use_compiled", lambda *tensors: False)
    for c, r in zip(compiled, run()):
        assert_soft_nms(
            r, (c[0], c[1].double()), score_dtype=dtype, exact=dtype == torch.float64, msg=f"seed={seed}"
        )


# --------------------------------------------------------------------------- CUDA


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
@pytest.mark.parametrize("kind", SETS)
def test_cpu_and_cuda_agree(kind, dtype, gen, seed):
    boxes, scores = make_set(kind, 150, gen)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    idxs = classes_for(150, 5, gen)
    for config in CONFIGS.values():
        for classes in (None, idxs):
            got = ops.soft_nms(
                boxes.cuda(), scores.cuda(), idxs=None if classes is None else classes.cuda(), **config
            )
            want = soft_nms_ref(boxes, scores, idxs=classes, **config)
            assert_soft_nms(
                got,
                want,
                score_dtype=dtype,
                device="cuda",
                exact=dtype == torch.float64,
                msg=f"{config} seed={seed}",
            )


@cuda
@pytest.mark.cuda
def test_cuda_edge_cases(gen, seed):
    e = torch.empty(0, 4, device="cuda")
    keep, new_scores = ops.soft_nms(e, torch.empty(0, device="cuda"))
    assert keep.shape == (0,) and keep.device.type == "cuda" and new_scores.shape == (0,)
    boxes, scores = _hand_set(torch.float64, "cuda")
    for kwargs, keep, new_scores in HAND_CASES:
        kwargs = dict(kwargs)
        if "idxs" in kwargs:
            kwargs["idxs"] = torch.tensor(kwargs["idxs"], device="cuda")
        got = ops.soft_nms(boxes, scores, **kwargs)
        assert got[0].tolist() == keep, kwargs
        assert got[1].tolist() == pytest.approx(new_scores, rel=1e-12), kwargs
    # more boxes than one block handles
    n = 3000
    boxes = grid_random_boxes(n, gen=gen, scale=1000.0, min_size=0.01, max_size=0.1)
    scores = torch.randperm(n, generator=gen).double() / n + 0.5
    got = ops.soft_nms(boxes.cuda(), scores.cuda(), score_threshold=0.3)
    cpu = ops.soft_nms(boxes, scores, score_threshold=0.3)
    assert_soft_nms(got, (cpu[0], cpu[1]), score_dtype=torch.float64, device="cuda", msg=f"seed={seed}")
