"""Pairwise (box_iou, generalized/distance/complete_box_iou) and aligned (aligned_box_iou) IoU ops.

Against the independent float64 reference in tests/ops/reference_boxes.py on fresh random
boxes, hand-checked and degenerate cases, gradcheck, torchvision, the dispatcher (opcheck), the
pure-PyTorch fallback, torch.compile and CUDA. The IoU losses are in test_box_iou_loss.py.
"""

import importlib
import math

import pytest
import torch

from fastmtl import ops
from tests.ops.reference_boxes import (
    KINDS,
    aligned_ref,
    ciou_alpha_v_ref,
    pairwise_ref,
    scalar_pair_ref,
)
from tests.utils import (
    DEVICES,
    DISPATCH_DEVICES,
    FLOAT_DTYPES,
    HALF_DTYPES,
    assert_close,
    compiled_only,
    cuda,
    degenerate_boxes,
    distinct_boxes,
    grid_boxes,
    random_boxes,
    tol,
)

# The attribute fastmtl.ops.box_iou is the function; this is the module (where use_compiled is looked up).
box_iou_module = importlib.import_module("fastmtl.ops.box_iou")

PAIRWISE = {
    "iou": ops.box_iou,
    "giou": ops.generalized_box_iou,
    "diou": ops.distance_box_iou,
    "ciou": ops.complete_box_iou,
}
TV_PAIRWISE = {
    "iou": "box_iou",
    "giou": "generalized_box_iou",
    "diou": "distance_box_iou",
    "ciou": "complete_box_iou",
}
SIZES = [(0, 0), (0, 3), (4, 0), (1, 1), (1, 9), (8, 1), (17, 29)]
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def pairwise(kind, boxes1, boxes2, eps=None):
    """The public pairwise op of ``kind``; eps only where the op takes one (diou, ciou)."""
    if eps is None or kind in ("iou", "giou"):
        return PAIRWISE[kind](boxes1, boxes2)
    return PAIRWISE[kind](boxes1, boxes2, eps=eps)


def out_dtype(dtype):
    """The output dtype rule of every op here (as torchvision): float32 for float16, bfloat16 and
    integer boxes, else the input dtype."""
    return torch.float32 if dtype in HALF_DTYPES or not dtype.is_floating_point else dtype


def grad_boxes(gen, dtype, device, *shapes):
    """Boxes for gradient tests: continuous draws, or tie-free grid boxes in half precision
    (where rounding continuous draws can make two coordinates equal, and the gradient there
    is a convention, not a derivative)."""
    if dtype in HALF_DTYPES:
        return distinct_boxes(*shapes, gen=gen, dtype=dtype, device=device)
    return [random_boxes(s, gen=gen, dtype=dtype, device=device) for s in shapes]


def gradcheck_boxes(gen, *shapes):
    """float64 boxes in [0, 5] for gradcheck: tie-free grid boxes, every two coordinates at least
    5/256 apart, so no finite-difference step (1e-6) crosses a min/max or clamp kink (continuous
    draws came within 1e-6 about once in 10^4 seeds)."""
    return [b * (5.0 / 256) for b in distinct_boxes(*shapes, gen=gen, dtype=torch.float64)]


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_matches_reference(kind, dtype, device, size, gen, seed):
    n, m = size
    b1 = random_boxes(n, gen=gen, dtype=dtype, device=device)
    b2 = random_boxes(m, gen=gen, dtype=dtype, device=device)
    out = PAIRWISE[kind](b1, b2)
    assert out.shape == (n, m) and out.device == b1.device
    assert out.dtype == out_dtype(dtype)
    want = pairwise_ref(b1.cpu(), b2.cpu(), kind)  # on the rounded boxes: only the arithmetic counts
    assert_close(out.cpu(), want, msg=f"seed={seed}", **tol(dtype, output_dtype=out.dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_grid_boxes_with_ties(kind, dtype, device, gen, seed):
    # Identical, touching and nested boxes and equal coordinates everywhere (all exact in bf16).
    b1 = grid_boxes(23, gen=gen, dtype=dtype, device=device)
    b2 = torch.cat((b1[:5], grid_boxes(11, gen=gen, dtype=dtype, device=device)))
    out = PAIRWISE[kind](b1, b2)
    assert_close(out.cpu(), pairwise_ref(b1.cpu(), b2.cpu(), kind), msg=f"seed={seed}", **tol(torch.float32))
    diag = out[:5, :5].diagonal()
    assert_close(diag.cpu(), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)


ALIGNED_SHAPES = [
    ((0,), (0,)),
    ((1,), (1,)),
    ((37,), (37,)),
    ((2, 3, 5), (2, 3, 5)),
    ((4, 1), (1, 6)),
    ((), (7,)),
    ((3, 0), (1,)),
]


@pytest.mark.parametrize("shapes", ALIGNED_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_aligned_matches_reference(kind, dtype, device, shapes, gen, seed):
    s1, s2 = shapes
    b1 = random_boxes(s1, gen=gen, dtype=dtype, device=device)
    b2 = random_boxes(s2, gen=gen, dtype=dtype, device=device)
    out = ops.aligned_box_iou(b1, b2, kind=kind)
    assert out.shape == torch.broadcast_shapes(s1, s2)
    assert out.dtype == out_dtype(dtype) and out.device == b1.device
    want = aligned_ref(b1.cpu(), b2.cpu(), kind)
    assert_close(out.cpu(), want, msg=f"seed={seed}", **tol(dtype, output_dtype=out.dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_aligned_is_the_diagonal_of_pairwise_with_eps_0(kind, gen, seed):
    b1 = random_boxes(20, gen=gen, dtype=torch.float64)
    b2 = random_boxes(20, gen=gen, dtype=torch.float64)
    assert_close(
        ops.aligned_box_iou(b1, b2, kind=kind, eps=0.0),
        pairwise(kind, b1, b2, eps=0.0).diagonal(),
        rtol=1e-12,
        atol=1e-14,
        msg=f"seed={seed}",
    )


@pytest.mark.parametrize("eps", [0.0, 1e-7, 0.5, 30.0])
@pytest.mark.parametrize("kind", KINDS)
def test_eps_enters_every_denominator(kind, eps, gen, seed):
    # Small boxes, so that an eps of 0.5 or 30 moves every term.
    b1 = random_boxes(12, gen=gen, dtype=torch.float64, scale=3.0)
    b2 = random_boxes(12, gen=gen, dtype=torch.float64, scale=3.0)
    assert_close(
        ops.aligned_box_iou(b1, b2, kind=kind, eps=eps), aligned_ref(b1, b2, kind, eps), msg=f"seed={seed}"
    )
    # pairwise: eps enters only the diagonal term and alpha (the union has none, as in torchvision)
    assert_close(pairwise(kind, b1, b2, eps=eps), pairwise_ref(b1, b2, kind, eps), msg=f"seed={seed}")


# (box a, box b, what it shows)
HAND_CASES = [
    ((0, 0, 2, 2), (0, 0, 2, 2), "identical"),
    ((0, 0, 2, 2), (1, 1, 3, 3), "overlap"),
    ((0, 0, 2, 2), (5, 7, 6, 9), "disjoint"),
    ((0, 0, 2, 2), (2, 0, 4, 2), "touching edge"),
    ((0, 0, 2, 2), (2, 2, 3, 5), "touching corner"),
    ((0, 0, 10, 10), (2, 3, 4, 8), "nested"),
    ((2, 3, 4, 8), (0, 0, 10, 10), "containing"),
    ((0, 0, 4, 1), (0, 0, 1, 4), "cross"),
    ((1, 1, 1, 3), (0, 0, 2, 2), "zero width"),
]


@pytest.mark.parametrize("a,b,case", HAND_CASES, ids=[c[2] for c in HAND_CASES])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_hand_checked_pairs(a, b, case, kind, dtype):
    t1 = torch.tensor([a], dtype=dtype)
    t2 = torch.tensor([b], dtype=dtype)
    t = tol(dtype)
    pair_want = scalar_pair_ref(a, b, kind, eps=1e-7, union_eps=0.0)
    assert PAIRWISE[kind](t1, t2).item() == pytest.approx(pair_want, rel=t["rtol"], abs=t["atol"])
    aligned_want = scalar_pair_ref(a, b, kind, eps=1e-7, union_eps=1e-7)
    got = ops.aligned_box_iou(t1, t2, kind=kind).item()
    assert got == pytest.approx(aligned_want, rel=t["rtol"], abs=t["atol"])


def test_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    assert ops.box_iou(a, b).item() == pytest.approx(1 / 7, rel=1e-15)
    assert ops.generalized_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 9, rel=1e-15)
    assert ops.distance_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / (18 + 1e-7), rel=1e-15)
    # same aspect ratio: v = 0, so CIoU == DIoU
    assert ops.complete_box_iou(a, b).item() == pytest.approx(ops.distance_box_iou(a, b).item(), rel=1e-15)
    far = torch.tensor([[10.0, 10.0, 12.0, 12.0]], dtype=torch.float64)
    assert ops.box_iou(a, far).item() == 0.0
    # enclosing box 12 x 12, union 8: GIoU = -(144 - 8) / 144
    assert ops.generalized_box_iou(a, far).item() == pytest.approx(-136 / 144, rel=1e-15)
    # a 1 x 4 box against a 4 x 1 box at the same centre: v = 4 / pi^2 * (atan(1/4) - atan(4))^2
    p = torch.tensor([[1.5, 0.0, 2.5, 4.0]], dtype=torch.float64)
    q = torch.tensor([[0.0, 1.5, 4.0, 2.5]], dtype=torch.float64)
    v = 4 / math.pi**2 * (math.atan(0.25) - math.atan(4.0)) ** 2
    iou = 1 / 7
    assert ops.complete_box_iou(p, q).item() == pytest.approx(iou - v * v / (1 - iou + v + 1e-7), rel=1e-12)


def test_identical_boxes(gen, seed):
    b = random_boxes(9, gen=gen, dtype=torch.float64)
    for kind in KINDS:
        # pairwise: exactly 1 (union == inter, no eps)
        assert torch.equal(PAIRWISE[kind](b, b).diagonal(), torch.ones(9, dtype=torch.float64)), kind
        # aligned: area / (area + eps), 1 - 4e-9 at worst here. eps=0 would make CIoU's alpha
        # 0 / 0 (as in torchvision); keep the default.
        got = ops.aligned_box_iou(b, b, kind=kind)
        assert_close(got, aligned_ref(b, b, kind), rtol=1e-14, atol=1e-15, msg=f"{kind} seed={seed}")
        assert_close(got, torch.ones(9, dtype=torch.float64), rtol=0, atol=1e-8, msg=f"{kind} seed={seed}")


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes(kind):
    """Zero-area boxes: 0 / 0 is NaN for the pairwise ops (as torchvision); the aligned ops add eps."""
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    line = torch.tensor([[1.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    # a zero-area box against a real one: IoU 0
    iou = ops.box_iou(torch.cat((point, line)), box)
    assert torch.equal(iou, torch.zeros(2, 1, dtype=torch.float64))
    assert torch.isnan(ops.box_iou(point, point)).all()
    if kind in ("iou", "giou"):
        assert ops.aligned_box_iou(point, point, kind=kind).item() == 0.0
        assert ops.aligned_box_iou(line, box, kind=kind).item() == pytest.approx(
            scalar_pair_ref(line[0], box[0], kind, union_eps=1e-7), abs=1e-12
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes_match_reference(kind, dtype, gen, seed):
    """Points, lines and small boxes with ties: the same values and the same NaNs as the reference."""
    b1 = degenerate_boxes(30, gen=gen, dtype=dtype)
    b2 = degenerate_boxes(20, gen=gen, dtype=dtype)
    out = PAIRWISE[kind](b1, b2)
    t = tol(dtype, output_dtype=out.dtype)
    assert_close(out, pairwise_ref(b1, b2, kind), equal_nan=True, msg=f"seed={seed}", **t)
    out = ops.aligned_box_iou(b1[:20], b2, kind=kind)
    t = tol(dtype, output_dtype=out.dtype)
    assert_close(out, aligned_ref(b1[:20], b2, kind), equal_nan=True, msg=f"seed={seed}", **t)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "dtype,scale,offset,rtol,atol",
    # Far from the origin, the centres (x1 + x2) / 2 of small boxes carry an absolute error of
    # an ulp of the offset (1e-10 at 1e6 in float64, 1e-3 at 1e4 in float32), so DIoU and CIoU
    # are good to about ulp / box size (box sizes >= 0.5 and >= 5 here).
    [
        (torch.float64, 1e6, 1e6, 1e-9, 1e-9),
        (torch.float64, 10.0, 1e6, 1e-9, 1e-8),
        (torch.float32, 1e4, 1e4, 1e-4, 1e-4),
        (torch.float32, 100.0, 1e4, 1e-4, 1e-3),
    ],
    ids=[
        "float64-big-boxes",
        "float64-small-boxes-far-out",
        "float32-big-boxes",
        "float32-small-boxes-far-out",
    ],
)
def test_huge_coordinates(kind, dtype, scale, offset, rtol, atol, gen, seed):
    b1 = (random_boxes(15, gen=gen, dtype=torch.float64, scale=scale) + offset).to(dtype)
    b2 = (random_boxes(11, gen=gen, dtype=torch.float64, scale=scale) + offset).to(dtype)
    out = PAIRWISE[kind](b1, b2)
    assert torch.isfinite(out).all()
    assert_close(out, pairwise_ref(b1, b2, kind), rtol=rtol, atol=atol, msg=f"seed={seed}")
    out = ops.aligned_box_iou(b1[:11], b2, kind=kind)
    assert torch.isfinite(out).all()
    assert_close(out, aligned_ref(b1[:11], b2, kind), rtol=rtol, atol=atol, msg=f"seed={seed}")


def _non_contiguous_views(boxes):
    """The same boxes as a transposed view, a strided row slice and a column slice."""
    n = boxes.shape[0]
    transposed = boxes.t().contiguous().t()
    rows = torch.zeros(2 * n, 4, dtype=boxes.dtype, device=boxes.device)
    rows[::2] = boxes
    cols = torch.zeros(n, 7, dtype=boxes.dtype, device=boxes.device)
    cols[:, 2:6] = boxes
    views = {"transposed": transposed, "row-strided": rows[::2], "column-slice": cols[:, 2:6]}
    for v in views.values():
        assert not v.is_contiguous() and torch.equal(v, boxes)
    return views


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(kind, dtype, device, gen):
    b1 = random_boxes(10, gen=gen, dtype=dtype, device=device)
    b2 = random_boxes(6, gen=gen, dtype=dtype, device=device)
    want_pair = PAIRWISE[kind](b1, b2)
    want_aligned = ops.aligned_box_iou(b1[:6], b2, kind=kind)
    views1, views2 = _non_contiguous_views(b1), _non_contiguous_views(b2)
    for name, v1 in views1.items():
        v2 = views2[name]
        assert torch.equal(PAIRWISE[kind](v1, v2), want_pair), name
        assert torch.equal(ops.aligned_box_iou(v1[:6], v2, kind=kind), want_aligned), name


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_gradients(kind, gen):
    b1 = random_boxes(7, gen=gen, dtype=torch.float64)
    b2 = random_boxes(5, gen=gen, dtype=torch.float64)
    w = torch.rand(7, 5, generator=gen, dtype=torch.float64)

    def grads(x1, x2):
        x1 = x1.detach().requires_grad_()
        x2 = x2.detach().requires_grad_()
        (PAIRWISE[kind](x1, x2) * w).sum().backward()
        return x1.grad, x2.grad

    want = grads(b1, b2)
    views1, views2 = _non_contiguous_views(b1), _non_contiguous_views(b2)
    for name in views1:
        got = grads(views1[name], views2[name])
        assert_close(got[0], want[0], rtol=1e-12, atol=1e-14, msg=name)
        assert_close(got[1], want[1], rtol=1e-12, atol=1e-14, msg=name)
    # out.sum() hands backward an expanded (stride 0) gradient
    for op in (PAIRWISE[kind], lambda x, y: ops.aligned_box_iou(x, y[:1], kind=kind)):
        x1, x2 = b1.clone().requires_grad_(), b2.clone().requires_grad_()
        out = op(x1, x2)
        expanded = torch.autograd.grad(out.sum(), (x1, x2))
        dense = torch.autograd.grad(op(x1, x2), (x1, x2), torch.ones_like(out))
        for e, d in zip(expanded, dense):
            assert torch.equal(e, d)


@pytest.mark.parametrize("int_dtype", INT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_integer_boxes(kind, int_dtype, gen):
    b1 = grid_boxes(9, gen=gen, dtype=int_dtype, cells=50)
    b2 = grid_boxes(5, gen=gen, dtype=int_dtype, cells=50)
    out = PAIRWISE[kind](b1, b2)
    assert out.dtype == torch.float32
    assert torch.equal(out, PAIRWISE[kind](b1.float(), b2.float()))
    aligned = ops.aligned_box_iou(b1[:5], b2, kind=kind)
    assert aligned.dtype == torch.float32
    assert torch.equal(aligned, ops.aligned_box_iou(b1[:5].float(), b2.float(), kind=kind))
    tv = pytest.importorskip("torchvision")
    if int_dtype in (torch.int64, torch.int32):  # torchvision's own int path
        assert_close(out, getattr(tv.ops, TV_PAIRWISE[kind])(b1, b2), **tol(torch.float32))


# --------------------------------------------------------------------------- gradients


def _gradcheck_fn(kind, op, b1, b2, *, pairwise: bool, eps: float):
    """``op`` ready for gradcheck.

    CIoU's ``alpha`` is a constant in its gradient (as in torchvision), so the numerical
    derivative, which sees alpha move, differs from the analytical one by ``v * d alpha``.
    Adding ``v0 * alpha(x)`` computed without autograd (``v0``: ``v`` at the checked point)
    adds exactly that to the numerical side and nothing to the analytical side.
    """
    if kind != "ciou":
        return op
    union_eps = 0.0 if pairwise else eps

    def split(x1, x2):
        return (x1[:, None], x2[None]) if pairwise else (x1, x2)

    with torch.no_grad():
        _, v0 = ciou_alpha_v_ref(*split(b1, b2), eps=eps, union_eps=union_eps)
    assert (v0 > 1e-6).any()  # the correction is not vacuous

    def fn(x1, x2):
        with torch.no_grad():
            alpha, _ = ciou_alpha_v_ref(*split(x1, x2), eps=eps, union_eps=union_eps)
        return op(x1, x2) + v0 * alpha

    return fn


# eps enters the pairwise ops only through DIoU's diagonal and CIoU's alpha
PAIRWISE_EPS = [(k, 1e-7) for k in KINDS] + [("diou", 0.7), ("ciou", 0.7)]


@pytest.mark.parametrize("kind,eps", PAIRWISE_EPS)
def test_pairwise_gradcheck(kind, eps, gen, seed):
    b1, b2 = (b.requires_grad_() for b in gradcheck_boxes(gen, (4,), (3,)))
    fn = _gradcheck_fn(kind, lambda x, y: pairwise(kind, x, y, eps=eps), b1, b2, pairwise=True, eps=eps)
    assert torch.autograd.gradcheck(fn, (b1, b2)), f"seed={seed}"


@pytest.mark.parametrize("eps", [1e-7, 0.7])
@pytest.mark.parametrize("kind", KINDS)
def test_aligned_gradcheck(kind, eps, gen, seed):
    b1, b2 = (b.requires_grad_() for b in gradcheck_boxes(gen, (2, 3), (3,)))  # broadcast
    op = lambda x, y: ops.aligned_box_iou(x, y, kind=kind, eps=eps)  # noqa: E731
    fn = _gradcheck_fn(kind, op, b1, b2, pairwise=False, eps=eps)
    assert torch.autograd.gradcheck(fn, (b1, b2)), f"seed={seed}"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_gradient_matches_reference(kind, dtype, device, gen, seed):
    b1, b2 = (b.requires_grad_() for b in grad_boxes(gen, dtype, device, (9,), (13,)))
    out = PAIRWISE[kind](b1, b2)
    w = torch.randn(9, 13, generator=gen).to(device=device, dtype=out.dtype)  # incoming gradient, not 1
    got = torch.autograd.grad(out, (b1, b2), w)
    r1 = b1.detach().cpu().double().requires_grad_()
    r2 = b2.detach().cpu().double().requires_grad_()
    want = torch.autograd.grad((pairwise_ref(r1, r2, kind) * w.cpu().double()).sum(), (r1, r2))
    t = tol(dtype)
    for g, r, b in zip(got, want, (b1, b2)):
        assert g.dtype == dtype and g.shape == b.shape and g.device == b.device
        scale = r.abs().max().item()
        assert_close(g.cpu(), r, rtol=t["rtol"], atol=t["atol"] * scale, msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_aligned_gradient_matches_reference(kind, dtype, device, gen, seed):
    b1, b2 = (b.requires_grad_() for b in grad_boxes(gen, dtype, device, (3, 5), (5,)))  # broadcast
    out = ops.aligned_box_iou(b1, b2, kind=kind)
    w = torch.randn(3, 5, generator=gen).to(device=device, dtype=out.dtype)
    got = torch.autograd.grad(out, (b1, b2), w)
    r1 = b1.detach().cpu().double().requires_grad_()
    r2 = b2.detach().cpu().double().requires_grad_()
    want = torch.autograd.grad((aligned_ref(r1, r2, kind) * w.cpu().double()).sum(), (r1, r2))
    t = tol(dtype)
    for g, r, b in zip(got, want, (b1, b2)):
        assert g.dtype == dtype and g.shape == b.shape and g.device == b.device
        scale = r.abs().max().item()
        # the gradient of the broadcast boxes2 is a sum of 3, rounded in half types
        assert_close(g.cpu(), r, rtol=t["rtol"] * 2, atol=t["atol"] * scale * 2, msg=f"seed={seed}")


@pytest.mark.parametrize("kind", KINDS)
def test_large_pairwise_backward(kind, gen, seed):
    """300 x 500: many row parts, each with its own column accumulators, summed at the end."""
    b1 = random_boxes(300, gen=gen, dtype=torch.float64).requires_grad_()
    b2 = random_boxes(500, gen=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(300, 500, generator=gen, dtype=torch.float64)
    out = PAIRWISE[kind](b1, b2)
    got = torch.autograd.grad(out, (b1, b2), w)
    ref = pairwise_ref(b1, b2, kind)
    assert_close(out, ref, msg=f"seed={seed}")
    want = torch.autograd.grad((ref * w).sum(), (b1, b2))
    for g, r in zip(got, want):
        assert_close(g, r, rtol=1e-9, atol=1e-12 * r.abs().max().item(), msg=f"seed={seed}")
    # the column sums do not depend on the number of threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = torch.autograd.grad(PAIRWISE[kind](b1, b2), (b1, b2), w)
    finally:
        torch.set_num_threads(threads)
    for g, s in zip(got, serial):
        assert torch.equal(g, s)


def test_empty_gradients():
    for kind in KINDS:
        b1 = torch.empty(0, 4, dtype=torch.float64, requires_grad=True)
        b2 = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
        PAIRWISE[kind](b1, b2).sum().backward()
        assert b1.grad.shape == (0, 4) and torch.equal(b2.grad, torch.zeros(3, 4, dtype=torch.float64))
        e = torch.empty(0, 4, dtype=torch.float64, requires_grad=True)
        ops.aligned_box_iou(e, e.detach(), kind=kind).sum().backward()
        assert e.grad.shape == (0, 4)


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_matches_torchvision(kind, dtype, gen, seed):
    # (bfloat16 is left out: torchvision subtracts bf16 coordinates in bf16, ~1e-2 off the exact value)
    tv = pytest.importorskip("torchvision")
    b1 = random_boxes(11, gen=gen, dtype=dtype).requires_grad_()
    b2 = random_boxes(7, gen=gen, dtype=dtype).requires_grad_()
    w = torch.randn(11, 7, generator=gen)
    out = PAIRWISE[kind](b1, b2)
    ref = getattr(tv.ops, TV_PAIRWISE[kind])(b1, b2)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    # torchvision subtracts half coordinates in half precision, fastmtl in float32
    t = tol(dtype, output_dtype=out.dtype) if dtype != torch.float16 else {"rtol": 2e-3, "atol": 2e-3}
    assert_close(out, ref, msg=f"seed={seed}", **t)
    if dtype == torch.float16:
        return
    got = torch.autograd.grad(out, (b1, b2), w.to(out.dtype))
    want = torch.autograd.grad(ref, (b1, b2), w.to(ref.dtype))
    for g, r in zip(got, want):
        assert_close(
            g, r, rtol=t["rtol"], atol=t["atol"] * max(r.abs().max().item(), 1.0), msg=f"seed={seed}"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_matches_torchvision_with_ties(kind, gen, seed):
    """Identical, touching and nested boxes: values, and gradients where torch splits ties."""
    tv = pytest.importorskip("torchvision")
    b1 = grid_boxes(15, gen=gen, dtype=torch.float64).requires_grad_()
    b2 = grid_boxes(8, gen=gen, dtype=torch.float64).requires_grad_()
    out = PAIRWISE[kind](b1, b2)
    ref = getattr(tv.ops, TV_PAIRWISE[kind])(b1, b2)
    assert_close(out, ref, msg=f"seed={seed}")
    w = torch.randn(15, 8, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (b1, b2), w)
    want = torch.autograd.grad(ref, (b1, b2), w)
    for g, r in zip(got, want):
        assert_close(g, r, rtol=1e-9, atol=1e-12, msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes_match_torchvision(kind, dtype, gen, seed):
    """Points and lines: the same values and the same NaNs (0 / 0) as torchvision."""
    tv = pytest.importorskip("torchvision")
    b1 = degenerate_boxes(30, gen=gen, dtype=dtype)
    b2 = degenerate_boxes(20, gen=gen, dtype=dtype)
    out = PAIRWISE[kind](b1, b2)
    ref = getattr(tv.ops, TV_PAIRWISE[kind])(b1, b2)
    assert torch.equal(out.isnan(), ref.isnan())
    assert_close(out, ref, equal_nan=True, msg=f"seed={seed}", **tol(dtype))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_bad_input(kind):
    fn = PAIRWISE[kind]
    good = torch.rand(3, 4)
    with pytest.raises(ValueError, match="boxes1"):
        fn(torch.rand(3, 5), good)
    with pytest.raises(ValueError, match="boxes2"):
        fn(good, torch.rand(3, 3))
    with pytest.raises(ValueError, match="boxes1"):
        fn(torch.rand(4), good)  # pairwise takes [..., N, 4]
    with pytest.raises(ValueError, match="boxes2"):
        fn(good, torch.rand(4))
    with pytest.raises(ValueError, match="boxes1"):
        fn(torch.tensor(1.0), good)
    with pytest.raises(TypeError, match="boxes1"):
        fn([[0, 0, 1, 1]], good)
    with pytest.raises(TypeError, match="boxes2"):
        fn(good, None)
    with pytest.raises(TypeError, match="boxes1.*boxes2"):
        fn(good, good.double())
    # integer boxes of any widths are float32, as torchvision upcasts them
    ints = (good * 10).int()
    torch.testing.assert_close(fn(ints, ints.long()), fn(ints.float(), ints.float()), equal_nan=True)
    with pytest.raises(TypeError, match="boxes1"):
        fn(good.bool(), good.bool())
    with pytest.raises(TypeError, match="boxes1"):
        fn(good.to(torch.complex64), good.to(torch.complex64))
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="boxes1.*boxes2.*device"):
        fn(good, good.to(other))
    for bad in (float("nan"), float("inf"), -float("inf")):
        b = good.clone()
        b[1, 2] = bad
        with pytest.raises(ValueError, match="boxes1"):
            fn(b, good)
        with pytest.raises(ValueError, match="boxes2"):
            fn(good, b)
    if kind in ("diou", "ciou"):
        for eps in (-1.0, float("nan"), float("inf"), "0.1"):
            with pytest.raises(ValueError, match="eps"):
                fn(good, good, eps=eps)


def test_aligned_bad_input():
    good = torch.rand(3, 4)
    with pytest.raises(ValueError, match="kind"):
        ops.aligned_box_iou(good, good, kind="dice")
    with pytest.raises(ValueError, match="kind"):
        ops.aligned_box_iou(good, good, kind="IoU")
    for eps in (-1e-7, float("nan"), float("inf"), None, "1e-7", True):
        with pytest.raises(ValueError, match="eps"):
            ops.aligned_box_iou(good, good, eps=eps)
    with pytest.raises(ValueError, match="boxes1"):
        ops.aligned_box_iou(torch.rand(3, 2), good)
    with pytest.raises(ValueError, match="boxes2"):
        ops.aligned_box_iou(good, torch.rand(3, 4, 1))
    with pytest.raises(ValueError, match="boxes1"):
        ops.aligned_box_iou(torch.tensor(0.0), good)
    with pytest.raises(ValueError, match="broadcast"):
        ops.aligned_box_iou(good, torch.rand(5, 4))
    with pytest.raises(TypeError, match="boxes1"):
        ops.aligned_box_iou((0, 0, 1, 1), good)
    with pytest.raises(TypeError, match="boxes2"):
        ops.aligned_box_iou(good, good.numpy())
    with pytest.raises(TypeError, match="boxes1.*boxes2"):
        ops.aligned_box_iou(good.half(), good)
    with pytest.raises(TypeError, match="boxes1"):
        ops.aligned_box_iou(good.bool(), good.bool())
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="boxes1.*boxes2.*device"):
        ops.aligned_box_iou(good.to(other), good)
    for bad in (float("nan"), float("inf")):
        b = good.clone()
        b[0, 0] = bad
        with pytest.raises(ValueError, match="boxes1"):
            ops.aligned_box_iou(b, good)
        with pytest.raises(ValueError, match="boxes2"):
            ops.aligned_box_iou(good, b)
    # kind is positional too (TorchScript has no keyword-only arguments)
    torch.testing.assert_close(
        ops.aligned_box_iou(good, good, "giou"), ops.aligned_box_iou(good, good, kind="giou")
    )


# --------------------------------------------------------------------------- dispatcher


def _op_samples(gen, dtype, device):
    b1 = random_boxes(5, gen=gen, dtype=dtype, device=device)
    b2 = random_boxes(3, gen=gen, dtype=dtype, device=device)
    b3 = random_boxes(5, gen=gen, dtype=dtype, device=device)
    return b1, b2, b3


@compiled_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck_forward_ops(kind, dtype, device, gen):
    b1, b2, b3 = _op_samples(gen, dtype, device)
    grad = dtype == torch.float64  # the autograd registration, once per kind
    torch.library.opcheck(
        torch.ops.fastmtl.pairwise_box_iou.default,
        (b1.requires_grad_(grad), b2.requires_grad_(grad), kind, 1e-7),
    )
    torch.library.opcheck(
        torch.ops.fastmtl.aligned_box_iou.default,
        (b1.detach().requires_grad_(grad), b3.requires_grad_(grad), kind, 1e-7),
    )


@compiled_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck_backward_ops(kind, dtype, device, gen):
    b1, b2, b3 = _op_samples(gen, dtype, device)
    acc = out_dtype(dtype)  # the dtype of the outputs, so of the incoming gradients
    torch.library.opcheck(
        torch.ops.fastmtl._pairwise_box_iou_backward.default,
        (torch.randn(5, 3, generator=gen).to(device, acc), b1, b2, kind, 1e-7),
    )
    torch.library.opcheck(
        torch.ops.fastmtl._aligned_box_iou_backward.default,
        (torch.randn(5, generator=gen).to(device, acc), b1, b3, kind, 1e-7),
    )


@compiled_only
def test_opcheck_empty_inputs():
    e = torch.empty(0, 4, dtype=torch.float64)
    b = torch.rand(2, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastmtl.pairwise_box_iou.default, (e, b, "giou", 1e-7))
    torch.library.opcheck(torch.ops.fastmtl.pairwise_box_iou.default, (b, e, "diou", 1e-7))
    torch.library.opcheck(torch.ops.fastmtl.aligned_box_iou.default, (e, e.clone(), "ciou", 1e-7))
    torch.library.opcheck(
        torch.ops.fastmtl._pairwise_box_iou_backward.default, (torch.empty(0, 2).double(), e, b, "iou", 1e-7)
    )
    torch.library.opcheck(
        torch.ops.fastmtl._aligned_box_iou_backward.default,
        (torch.empty(0).double(), e, e.clone(), "ciou", 1e-7),
    )


@compiled_only
def test_fake_kernels_give_shapes_and_dtypes():
    for dtype in FLOAT_DTYPES:
        b1 = torch.empty(5, 4, dtype=dtype, device="meta")
        b2 = torch.empty(3, 4, dtype=dtype, device="meta")
        out = torch.ops.fastmtl.pairwise_box_iou(b1, b2, "ciou", 1e-7)
        assert out.shape == (5, 3) and out.dtype == out_dtype(dtype) and out.is_meta
        out = torch.ops.fastmtl.aligned_box_iou(b1, b1, "ciou", 1e-7)
        assert out.shape == (5,) and out.dtype == out_dtype(dtype) and out.is_meta
    # The fake kernels check the kind as the real ones do (torch.compile fails at trace time).
    m = torch.empty(5, 4, device="meta")
    with pytest.raises(RuntimeError, match="Invalid kind 'IoU'"):
        torch.ops.fastmtl.pairwise_box_iou(m, m, "IoU", 1e-7)
    with pytest.raises(RuntimeError, match="Invalid kind"):
        torch.ops.fastmtl._aligned_box_iou_backward(torch.empty(5, device="meta"), m, m, "", 1e-7)


@compiled_only
def test_dispatcher_ops_check_their_arguments():
    b = torch.rand(3, 4)
    message = "Invalid kind 'xiou': expected 'iou', 'giou', 'diou' or 'ciou'"
    for op in (torch.ops.fastmtl.pairwise_box_iou, torch.ops.fastmtl.aligned_box_iou):
        with pytest.raises(RuntimeError, match=message):
            op(b, b, "xiou", 1e-7)
    with pytest.raises(RuntimeError, match="Invalid kind 'GIoU'"):
        torch.ops.fastmtl._pairwise_box_iou_backward(torch.rand(3, 3), b, b, "GIoU", 1e-7)
    with pytest.raises(RuntimeError, match="Invalid kind 'GIoU'"):
        torch.ops.fastmtl._aligned_box_iou_backward(torch.rand(3), b, b, "GIoU", 1e-7)
    with pytest.raises(RuntimeError, match="kind"):  # no integer codes: the schema takes the name
        torch.ops.fastmtl.pairwise_box_iou(b, b, 1, 1e-7)
    with pytest.raises(RuntimeError, match="boxes1"):
        torch.ops.fastmtl.pairwise_box_iou(b.int(), b.int(), "iou", 1e-7)
    with pytest.raises(RuntimeError, match="boxes1"):
        torch.ops.fastmtl.pairwise_box_iou(b[None], b, "iou", 1e-7)
    with pytest.raises(RuntimeError, match="boxes2"):
        torch.ops.fastmtl.aligned_box_iou(b, torch.rand(3, 5), "iou", 1e-7)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.fastmtl.aligned_box_iou(b, b.double(), "iou", 1e-7)
    with pytest.raises(RuntimeError, match="same number"):
        torch.ops.fastmtl.aligned_box_iou(b, torch.rand(2, 4), "iou", 1e-7)
    with pytest.raises(RuntimeError, match="eps"):
        torch.ops.fastmtl.aligned_box_iou(b, b, "iou", -1.0)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.fastmtl._pairwise_box_iou_backward(torch.rand(3, 2), b, b, "iou", 1e-7)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.fastmtl._aligned_box_iou_backward(torch.rand(3).double(), b, b, "iou", 1e-7)


# --------------------------------------------------------------------------- fallback


@pytest.fixture
def fallback(monkeypatch):
    """Forces the pure-PyTorch path, as when fastmtl._C is not built."""
    monkeypatch.setattr(box_iou_module, "use_compiled", lambda *tensors: False)


@compiled_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_fallback_matches_compiled(kind, dtype, gen, seed, monkeypatch):
    b1 = random_boxes(9, gen=gen, dtype=dtype)
    b2 = random_boxes(6, gen=gen, dtype=dtype)
    w = torch.randn(9, 6, generator=gen, dtype=torch.float64)

    def run():
        x1, x2 = b1.clone().requires_grad_(), b2.clone().requires_grad_()
        pair = PAIRWISE[kind](x1, x2)
        aligned = ops.aligned_box_iou(x1[:6], x2, kind=kind)
        ((pair * w.to(pair.dtype)).sum() + (aligned * w[0].to(aligned.dtype)).sum()).backward()
        return pair.detach(), aligned.detach(), x1.grad, x2.grad

    compiled = run()
    monkeypatch.setattr(box_iou_module, "use_compiled", lambda *tensors: False)
    reference = run()
    for c, r, name in zip(compiled, reference, ("pairwise", "aligned", "grad boxes1", "grad boxes2")):
        assert c.dtype == r.dtype and c.shape == r.shape, name
        t = tol(dtype, output_dtype=c.dtype)
        scale = max(r.abs().max().item(), 1.0)
        assert_close(c, r, rtol=t["rtol"] * 2, atol=t["atol"] * 2 * scale, msg=f"{name} seed={seed}")


@pytest.mark.parametrize("kind", KINDS)
def test_fallback_matches_reference(kind, fallback, gen, seed):
    b1 = random_boxes(7, gen=gen, dtype=torch.float64)
    b2 = random_boxes(5, gen=gen, dtype=torch.float64)
    assert_close(PAIRWISE[kind](b1, b2), pairwise_ref(b1, b2, kind), msg=f"seed={seed}")
    assert_close(
        ops.aligned_box_iou(b1[:5], b2, kind=kind), aligned_ref(b1[:5], b2, kind), msg=f"seed={seed}"
    )


def test_fallback_edge_cases(fallback):
    e = torch.empty(0, 4)
    b = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]])
    assert ops.box_iou(e, b).shape == (0, 2)
    assert ops.aligned_box_iou(e, e, kind="ciou").shape == (0,)
    assert ops.box_iou(b.int(), b.int()).dtype == torch.float32
    assert ops.box_iou(b.half(), b.half()).dtype == torch.float32
    assert ops.aligned_box_iou(b.half(), b.half()).dtype == torch.float32
    assert ops.aligned_box_iou(b.int(), b.int()).dtype == torch.float32
    assert ops.box_iou(b, b)[0, 1].item() == pytest.approx(1 / 7)
    with pytest.raises(ValueError, match="boxes1"):
        ops.box_iou(torch.rand(3, 5), b)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.compile
def test_compile_box_iou_forward_backward(gen):
    torch._dynamo.reset()
    b1 = random_boxes(6, gen=gen).requires_grad_()
    b2 = random_boxes(4, gen=gen).requires_grad_()
    fn = torch.compile(ops.box_iou, fullgraph=True)
    out = fn(b1, b2)
    eager = ops.box_iou(b1, b2)
    assert_close(out, eager, rtol=0, atol=0)
    w = torch.randn(6, 4, generator=gen)
    got = torch.autograd.grad(out, (b1, b2), w)
    want = torch.autograd.grad(eager, (b1, b2), w)
    for g, r in zip(got, want):
        assert_close(g, r, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- CUDA


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_and_cuda_agree(kind, dtype, gen, seed):
    # 300 x 257: partial row blocks and partial column blocks in every kernel
    b1 = random_boxes(300, gen=gen, dtype=dtype)
    b2 = random_boxes(257, gen=gen, dtype=dtype)
    w = torch.randn(300, 257, generator=gen)

    def run(device):
        x1 = b1.to(device).requires_grad_()
        x2 = b2.to(device).requires_grad_()
        pair = PAIRWISE[kind](x1, x2)
        aligned = ops.aligned_box_iou(x1[:257], x2, kind=kind)
        loss = (pair * w.to(device, pair.dtype)).sum() + (aligned * w[0].to(device, aligned.dtype)).sum()
        loss.backward()
        return [t.detach().cpu() for t in (pair, aligned, x1.grad, x2.grad)]

    for c, g in zip(run("cpu"), run("cuda")):
        assert c.dtype == g.dtype
        t = tol(dtype, output_dtype=c.dtype)
        scale = max(c.abs().max().item(), 1.0)
        assert_close(g, c, rtol=t["rtol"] * 4, atol=t["atol"] * 4 * scale, msg=f"seed={seed}")


@cuda
@pytest.mark.cuda
def test_cuda_large_and_empty(gen):
    e = torch.empty(0, 4, device="cuda")
    assert ops.box_iou(e, e).shape == (0, 0)
    assert ops.box_iou(e, torch.rand(3, 4, device="cuda")).shape == (0, 3)
    assert ops.aligned_box_iou(e, e, kind="ciou").shape == (0,)
    b1 = random_boxes(5000, gen=gen, device="cuda")
    b2 = random_boxes(3, gen=gen, device="cuda")
    assert_close(ops.box_iou(b1, b2).cpu(), ops.box_iou(b1.cpu(), b2.cpu()), **tol(torch.float32))
    assert_close(ops.box_iou(b2, b1).cpu(), ops.box_iou(b2.cpu(), b1.cpu()), **tol(torch.float32))
