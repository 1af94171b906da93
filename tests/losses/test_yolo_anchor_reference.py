"""The anchor-based YOLO loss reference: v3 mode against hand-computed numbers and invariants,
yolov5 mode against yolov5's own ComputeLoss (skipped when yolov5 is not installed), the fused
yolov5-mode kernels too."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from fastmtl.losses import yolo_anchor_loss
from fastmtl.ops._yolo_anchor_reference import YOLOV5_ANCHORS, YOLOV5_STRIDES, yolo_anchor_loss_reference
from tests.utils import assert_close, compiled_only

F64 = torch.float64
TERMS = ("total", "box", "obj", "noobj", "cls")


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def one_scale(preds, targets, counts, **kw):
    """Stride 8, a 2 x 2 grid (a 16-pixel image), anchors 4 x 4 and 8 x 16 pixels."""
    anchors = torch.tensor([[[4.0, 4.0], [8.0, 16.0]]], dtype=F64)
    return yolo_anchor_loss_reference([preds], targets, counts, anchors, (8,), **kw)


def zero_preds(classes=2):
    return torch.zeros(1, 2, 2, 2, 5 + classes, dtype=F64)


# The gt of the hand case: class 0 at (0.375, 0.625), 0.25 x 0.5 of the image: in cells (0.75, 1.25),
# 0.5 x 1 (cell gi=0, gj=1, tx=0.75, ty=0.25); 4 x 8 pixels: shape IoU 0.5 with anchor 0, 0.25 with 1.
GT = torch.tensor([[[0.0, 0.375, 0.625, 0.25, 0.5]]], dtype=F64)


def test_v3_hand_computed_case():
    p = zero_preds()
    p[0, 0, 1, 0] = torch.tensor([0.2, -0.3, 0.1, 0.4, 0.5, 1.0, -2.0], dtype=F64)
    p[0, 1, 0, 1, 4] = -1.0  # one more non-zero objectness logit
    got = one_scale(p, GT, torch.tensor([1]), ignore_threshold=1.0, lambda_box=5.0, lambda_noobj=0.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    box = (sig(0.2) - 0.75) ** 2 + (sig(-0.3) - 0.25) ** 2 + 0.1**2 + (0.4 - math.log(2.0)) ** 2
    obj = softplus(-0.5)  # BCE(x, 1) = log(1 + e^-x)
    noobj = 6 * math.log(2.0) + softplus(-1.0)  # the 7 other predictions, BCE(x, 0) = log(1 + e^x)
    cls = softplus(-1.0) + softplus(-2.0)
    want = {"box": 5 * box, "obj": obj, "noobj": 0.5 * noobj, "cls": cls}
    want["total"] = sum(want.values())
    for k in TERMS:
        assert got[k].item() == pytest.approx(want[k], rel=1e-12), k


def test_v3_ciou_box_term_by_hand():
    p = zero_preds()  # anchor 0 (0.5 x 0.5 cells) at cell (0, 1) decodes to (0.5, 1.5), 0.5 x 0.5
    got = one_scale(p, GT, torch.tensor([1]), box_loss="ciou", ignore_threshold=1.0)["box"].item()
    # gt (0.75, 1.25) 0.5 x 1: intersection 0.25 x 0.5 = 0.125, union 0.5 + 0.25 - 0.125 = 0.625.
    iou = 0.125 / (0.625 + 1e-7)
    rho2 = 0.25**2 + 0.25**2  # centre distance squared; the enclosing box is 0.75 x 1.0
    v = 4 / math.pi**2 * (math.atan(0.5 / 1.0) - math.atan(0.5 / 0.5)) ** 2
    alpha = v / (1 - iou + v + 1e-7)
    assert got == pytest.approx(1 - (iou - rho2 / (0.75**2 + 1.0**2 + 1e-7) - alpha * v), rel=1e-12)


def test_v3_no_targets_leaves_only_the_noobj_term(gen):
    preds = [torch.randn(3, 2, s, s, 7, generator=gen, dtype=F64) for s in (4, 2)]
    targets = torch.full((3, 4, 5), float("nan"), dtype=F64)  # all padding: never read
    anchors = torch.tensor(YOLOV5_ANCHORS[:2], dtype=F64)[:, :2]
    got = yolo_anchor_loss_reference(preds, targets, torch.zeros(3, dtype=torch.long), anchors, (8, 16))
    want = sum(F.softplus(p[..., 4]).sum() for p in preds)
    for k in ("box", "obj", "cls"):
        assert got[k].item() == 0.0
    assert_close(got["noobj"], want, rtol=1e-12, atol=0)
    assert_close(got["total"], want, rtol=1e-12, atol=0)
    empty = torch.zeros(3, 0, 5, dtype=F64)  # B = 0 as well
    got = yolo_anchor_loss_reference(preds, empty, torch.zeros(3, dtype=torch.long), anchors, (8, 16))
    assert_close(got["total"], want, rtol=1e-12, atol=0)


def test_v3_ignore_threshold():
    # Anchor 1 (1 x 2 cells) in the gt's cell decoded exactly onto the gt: IoU 1, ignored at 0.5.
    p = zero_preds()
    p[0, 1, 1, 0, :5] = torch.tensor(
        [math.log(3.0), -math.log(3.0), math.log(0.5), math.log(0.5), 2.0], dtype=F64
    )
    kept = one_scale(p, GT, torch.tensor([1]), ignore_threshold=1.0)
    dropped = one_scale(p, GT, torch.tensor([1]), ignore_threshold=0.5)
    assert (kept["noobj"] - dropped["noobj"]).item() == pytest.approx(softplus(2.0), rel=1e-12)
    for k in ("box", "obj", "cls"):
        assert kept[k].item() == dropped[k].item()
    # Any threshold below its IoU ignores it as well; padding rows (NaN) never match anything.
    padded = torch.cat((GT, torch.full((1, 2, 5), float("nan"), dtype=F64)), 1)
    low = one_scale(p, padded, torch.tensor([1]), ignore_threshold=0.999)
    assert_close(low["total"], dropped["total"], rtol=1e-12, atol=0)


def test_v3_two_gts_in_one_cell_last_wins():
    p = zero_preds()
    p[0, 0, 1, 0] = torch.tensor([0.2, -0.3, 0.1, 0.4, 0.5, 1.0, -2.0], dtype=F64)
    other = torch.tensor([[[1.0, 0.25, 0.75, 0.25, 0.25]]], dtype=F64)  # same cell and anchor 0
    both = one_scale(p, torch.cat((GT, other), 1), torch.tensor([2]), ignore_threshold=1.0)
    last = one_scale(p, other, torch.tensor([1]), ignore_threshold=1.0)
    first = one_scale(p, torch.cat((other, GT), 1), torch.tensor([2]), ignore_threshold=1.0)
    alone = one_scale(p, GT, torch.tensor([1]), ignore_threshold=1.0)
    for k in TERMS:
        assert_close(both[k], last[k], rtol=1e-12, atol=0, msg=k)
        assert_close(first[k], alone[k], rtol=1e-12, atol=0, msg=k)


def assigned_cells(preds, targets, anchors, strides):
    """The (scale, image, anchor, gj, gi) whose objectness logit gets the obj gradient."""
    preds = [p.clone().requires_grad_() for p in preds]
    out = yolo_anchor_loss_reference(preds, targets, torch.tensor([targets.shape[1]]), anchors, strides)
    grads = torch.autograd.grad(out["obj"], preds)
    return [(lvl, *idx) for lvl, g in enumerate(grads) for idx in g[..., 4].nonzero().tolist()]


def test_v3_cell_rule_at_borders_and_best_scale():
    preds = [torch.zeros(1, 1, s, s, 6, dtype=F64) for s in (4, 2)]
    anchors = torch.tensor([[[8.0, 8.0]], [[32.0, 32.0]]], dtype=F64)  # a 32-pixel image
    boxes = [
        [0.0, 0.5, 0.25, 0.25, 0.25],  # cx on an edge: the cell right of it; 8 px: scale 0
        [0.0, 1.0, 0.0, 0.25, 0.25],  # cx = 1: the last column; cy = 0: the first row
        [0.0, 0.75, 0.75, 1.0, 1.0],  # 32 px: scale 1, cell (1, 1)
    ]
    cells = assigned_cells(preds, torch.tensor([boxes], dtype=F64), anchors, (8, 16))
    assert cells == [(0, 0, 0, 0, 3), (0, 0, 0, 1, 2), (1, 0, 0, 1, 1)]


def test_v3_reduction_and_weights(gen):
    preds = [torch.randn(2, 2, 2, 2, 7, generator=gen, dtype=F64)]
    targets = torch.cat((GT, GT), 0)
    total = one_scale(preds[0], targets, torch.tensor([1, 1]))
    mean = one_scale(preds[0], targets, torch.tensor([1, 1]), reduction="mean")
    for k in TERMS:
        assert_close(mean[k], total[k] / 2, rtol=1e-12, atol=0)
    w = one_scale(preds[0], targets, torch.tensor([1, 1]), lambda_obj=0.0, lambda_cls=3.0)
    assert w["obj"].item() == 0.0
    assert_close(w["cls"], 3 * total["cls"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("box_loss", ["mse", "ciou"])
def test_v3_gradcheck(gen, box_loss):
    p = (torch.randn(2, 2, 2, 2, 7, generator=gen, dtype=F64) * 0.5).requires_grad_()
    targets = torch.tensor([[[1.0, 0.3, 0.6, 0.3, 0.45], [0.0, 0.8, 0.2, 0.2, 0.1]]] * 2, dtype=F64)

    def f(x):
        return one_scale(x, targets, torch.tensor([2, 1]), box_loss=box_loss, ignore_threshold=1.0)["total"]

    if box_loss == "mse":
        assert torch.autograd.gradcheck(f, (p,))
    else:  # CIoU's alpha is a constant in the gradient: only the rest is the true derivative
        (g,) = torch.autograd.grad(f(p) * 0.7, p)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def _iou(a, b):
    """IoU of two (cx, cy, w, h) boxes given as Python floats."""
    iw = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    ih = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    inter = max(iw, 0.0) * max(ih, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _v3_owners(preds, gts, anchors, strides):
    """{(scale, anchor, gj, gi): gt} of one image, later gts overwriting earlier ones."""
    image = (preds[0].shape[3] * strides[0], preds[0].shape[2] * strides[0])
    owners = {}
    for gt in gts:
        shape = (0.0, 0.0, gt[3] * image[0], gt[4] * image[1])
        ious = [
            (_iou(shape, (0.0, 0.0, *anc)), lvl, a)
            for lvl, row in enumerate(anchors)
            for a, anc in enumerate(row)
        ]
        _, lvl, a = max(ious, key=lambda t: t[0])  # the first of equal IoUs
        h, w = preds[lvl].shape[2:4]
        gi, gj = min(max(math.floor(gt[1] * w), 0), w - 1), min(max(math.floor(gt[2] * h), 0), h - 1)
        owners[(lvl, a, gj, gi)] = gt
    return owners


def v3_by_loops(preds, targets, counts, anchors, strides, thr):
    """The v3 rules as plain loops over images, predictions and gts (MSE box term, sums)."""
    sums = dict.fromkeys(("box", "obj", "noobj", "cls"), 0.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    for n in range(len(counts)):
        gts = targets[n, : counts[n]].tolist()
        owners = _v3_owners(preds, gts, anchors.tolist(), strides)
        for lvl, p in enumerate(preds):
            _, na, h, w, _ = p.shape
            for a, gj, gi in itertools.product(range(na), range(h), range(w)):
                x = p[n, a, gj, gi].tolist()
                aw, ah = (v / strides[lvl] for v in anchors[lvl, a].tolist())
                gt = owners.get((lvl, a, gj, gi))
                if gt is not None:
                    want = (
                        gt[1] * w - gi,
                        gt[2] * h - gj,
                        math.log(gt[3] * w / aw),
                        math.log(gt[4] * h / ah),
                    )
                    got = (sig(x[0]), sig(x[1]), x[2], x[3])
                    sums["box"] += sum((u - v) ** 2 for u, v in zip(got, want))
                    sums["obj"] += softplus(-x[4])
                    sums["cls"] += sum(softplus(-v if c == gt[0] else v) for c, v in enumerate(x[5:]))
                    continue
                decoded = (gi + sig(x[0]), gj + sig(x[1]), aw * math.exp(x[2]), ah * math.exp(x[3]))
                boxes = [(g[1] * w, g[2] * h, g[3] * w, g[4] * h) for g in gts]
                if not any(_iou(decoded, b) > thr for b in boxes):
                    sums["noobj"] += softplus(x[4])
    return sums


def test_v3_matches_loops_over_boxes(gen, seed):
    counts = torch.tensor([0, 1, 7])
    targets = torch.rand(3, 7, 5, generator=gen, dtype=F64)
    targets[..., 0] = torch.randint(0, 3, (3, 7), generator=gen).to(F64)
    targets[..., 3:] = 0.05 + 0.9 * targets[..., 3:]
    targets[2, 1:3, 1:3] = targets[2, 0, 1:3]  # three centres in one cell
    targets[2, 4] = targets[2, 3]  # the same gt twice
    targets[0] = targets[1, 1:] = float("nan")  # padding
    preds = [torch.randn(3, 2, s, s, 8, generator=gen, dtype=F64) for s in (4, 2)]
    anchors = torch.tensor([[[6.0, 10.0], [12.0, 8.0]], [[20.0, 24.0], [30.0, 14.0]]], dtype=F64)
    got = yolo_anchor_loss_reference(preds, targets, counts, anchors, (8, 16), ignore_threshold=0.3)
    want = v3_by_loops(preds, targets, counts, anchors, (8, 16), 0.3)
    for k, v in want.items():
        assert got[k].item() == pytest.approx(v, rel=1e-10, abs=1e-12), f"{k}, seed={seed}"


def test_bad_arguments_are_named():
    p, counts = zero_preds(), torch.tensor([1])
    with pytest.raises(ValueError, match="mode"):
        one_scale(p, GT, counts, mode="v4")
    with pytest.raises(ValueError, match="box_loss"):
        one_scale(p, GT, counts, mode="yolov5", box_loss="mse")
    with pytest.raises(ValueError, match="counts"):
        one_scale(p, GT, torch.tensor([2]))
    with pytest.raises(ValueError, match="class"):
        one_scale(p, GT + torch.tensor([5.0, 0, 0, 0, 0], dtype=F64), counts)
    with pytest.raises(ValueError, match="w and h"):
        one_scale(p, GT * torch.tensor([1.0, 1, 1, 0, 1], dtype=F64), counts)
    with pytest.raises(ValueError, match="anchors"):
        yolo_anchor_loss_reference([p], GT, counts, torch.ones(1, 3, 2, dtype=F64), (8,))
    with pytest.raises(ValueError, match="lambda_noobj"):
        one_scale(p, GT, counts, mode="yolov5", lambda_noobj=1.0)


def test_default_tables():
    assert torch.tensor(YOLOV5_ANCHORS).shape == (3, 3, 2) and YOLOV5_STRIDES == (8, 16, 32)


# ---------------------------------------------------------------- yolov5 mode against yolov5 itself

IMAGE = 128  # grids 16, 8 and 4 at strides 8, 16 and 32
# Centres on cell edges and half-cells of every grid, exact in binary (0 and 1 included).
BORDERS = (0.0, 1.0, 0.5, 0.25, 0.75, 1 / 16, 3 / 32, 17 / 32, 1 / 8, 5 / 16, 31 / 32, 1 / 32, 7 / 8)
CASES = {
    "many objects, 80 classes": dict(counts=(0, 1, 9, 23), classes=80),
    "one class": dict(counts=(3, 0, 1, 6), classes=1),
    "two classes": dict(counts=(5, 2, 0, 1), classes=2),
    "shared cells": dict(counts=(8, 6), classes=3, shared=True),
    "cell borders": dict(counts=(12, 4), classes=5, borders=True),
    "no objects": dict(counts=(0, 0), classes=80),
}


@pytest.fixture(scope="module")
def compute_loss():
    from tests.losses.yolov5_oracle import import_compute_loss

    return import_compute_loss()


def random_targets(gen, counts, classes, *, shared=False, borders=False):
    """[N, B, 5] targets with NaN padding: sizes log-uniform from 2 pixels to the whole image."""
    n, b = len(counts), max(max(counts), 1)
    t = torch.rand(n, b, 5, generator=gen, dtype=F64)
    t[..., 0] = torch.randint(0, classes, (n, b), generator=gen).to(F64)
    t[..., 3:] = torch.exp(math.log(2 / IMAGE) * torch.rand(n, b, 2, generator=gen, dtype=F64))
    if borders:
        t[..., 1:3] = torch.tensor(BORDERS, dtype=F64)[
            torch.randint(0, len(BORDERS), (n, b, 2), generator=gen)
        ]
    if shared:  # row 1: row 0's centre with another size; row 2: row 0 again; row 3: row 1 again
        t[:, 1, 1:3] = t[:, 0, 1:3]
        t[:, 2], t[:, 3] = t[:, 0], t[:, 1]
    counts = torch.tensor(counts)
    t[torch.arange(b)[None, :] >= counts[:, None]] = float("nan")
    return t, counts


def yolov5_targets(targets, counts):
    """[M, 6] (image, class, x, y, w, h), image-major: yolov5's input."""
    n, b = targets.shape[:2]
    valid = torch.arange(b)[None, :] < counts[:, None]
    img = torch.arange(n)[:, None].expand(n, b)[valid]
    return torch.cat((img[:, None].to(targets.dtype), targets[valid]), 1)


def random_preds(gen, n, classes):
    shapes = [(n, 3, IMAGE // s, IMAGE // s, 5 + classes) for s in YOLOV5_STRIDES]
    return [(1.5 * torch.randn(shape, generator=gen, dtype=F64)).requires_grad_() for shape in shapes]


@pytest.fixture(
    params=[
        pytest.param(yolo_anchor_loss_reference, id="reference"),
        pytest.param(yolo_anchor_loss, id="fused", marks=compiled_only),
    ]
)
def impl(request):
    """The plain-PyTorch reference and the fused kernels (yolo_anchor_loss takes them for yolov5 mode)."""
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_yolov5_mode_equals_compute_loss(compute_loss, impl, gen, seed, case):
    from tests.losses.yolov5_oracle import fake_model

    spec = dict(CASES[case])
    counts, classes = spec.pop("counts"), spec.pop("classes")
    targets, counts = random_targets(gen, counts, classes, **spec)
    preds = random_preds(gen, len(counts), classes)
    anchors = torch.tensor(YOLOV5_ANCHORS, dtype=F64)
    want, items = compute_loss(fake_model(anchors, YOLOV5_STRIDES, classes))(
        preds, yolov5_targets(targets, counts)
    )
    got = impl(preds, targets, counts, anchors, YOLOV5_STRIDES, mode="yolov5")
    # yolov5 sums its terms into float32 buffers (torch.zeros(1)): float32 rounding at the end.
    tol = dict(rtol=1e-6, atol=1e-9, msg=f"{case}, seed={seed}")
    assert_close(got["total"], want[0], **tol)
    for k, item in zip(("box", "obj", "cls"), items):
        assert_close(got[k], item * len(counts), **tol)
    assert got["noobj"].item() == 0.0
    grads_want = torch.autograd.grad(want[0] * 0.7, preds, retain_graph=True)
    grads_got = torch.autograd.grad(got["total"] * 0.7, preds)
    for g, r in zip(grads_got, grads_want):
        assert_close(g, r, rtol=1e-6, atol=1e-9 * max(r.abs().max().item(), 1.0), msg=tol["msg"])
    mean = impl(preds, targets, counts, anchors, YOLOV5_STRIDES, mode="yolov5", reduction="mean")
    assert_close(mean["total"], items.sum(), **tol)


def test_yolov5_mode_with_train_py_gains(compute_loss, impl, gen, seed):
    """train.py rescales cls by C / 80 and obj by (image / 640)^2: passed as lambdas they agree."""
    from tests.losses.yolov5_oracle import fake_model

    classes = 7
    targets, counts = random_targets(gen, (4, 9), classes)
    preds = random_preds(gen, 2, classes)
    anchors = torch.tensor(YOLOV5_ANCHORS, dtype=F64)
    model = fake_model(anchors, YOLOV5_STRIDES, classes)
    model.hyp.update(cls=0.5 * classes / 80, obj=(IMAGE / 640) ** 2, anchor_t=3.0)
    want, _ = compute_loss(model)(preds, yolov5_targets(targets, counts))
    got = impl(
        preds,
        targets,
        counts,
        anchors,
        YOLOV5_STRIDES,
        mode="yolov5",
        lambda_cls=model.hyp["cls"],
        lambda_obj=model.hyp["obj"],
        anchor_t=3.0,
    )
    assert_close(got["total"], want[0], rtol=1e-6, atol=1e-9, msg=f"seed={seed}")


def test_yolov5_mode_in_float32(compute_loss, impl, gen, seed):
    """float32 predictions and targets: the targets are built in float32 on both sides."""
    from tests.losses.yolov5_oracle import fake_model

    targets, counts = random_targets(gen, (5, 0, 11), 80, borders=True)
    targets = targets.float()
    preds = [p.detach().float().requires_grad_() for p in random_preds(gen, 3, 80)]
    anchors = torch.tensor(YOLOV5_ANCHORS, dtype=torch.float32)
    want, _ = compute_loss(fake_model(anchors, YOLOV5_STRIDES, 80))(preds, yolov5_targets(targets, counts))
    got = impl(preds, targets, counts, anchors, YOLOV5_STRIDES, mode="yolov5")
    assert_close(got["total"], want[0], rtol=1e-5, atol=1e-6, msg=f"seed={seed}")
    for g, r in zip(torch.autograd.grad(got["total"], preds), torch.autograd.grad(want[0], preds)):
        assert_close(g, r, rtol=1e-4, atol=1e-6 * r.abs().max().item(), msg=f"seed={seed}")


def test_module_form_equals_the_function():
    from fastmtl.losses import YOLOAnchorLoss, yolo_anchor_loss
    from fastmtl.ops._yolo_anchor_reference import YOLOV5_ANCHORS, YOLOV5_STRIDES

    g = torch.Generator().manual_seed(0)
    preds = [torch.randn(2, 3, s, s, 5 + 4, generator=g, dtype=torch.float64) for s in (16, 8, 4)]
    targets = torch.rand(2, 3, 5, generator=g, dtype=torch.float64) * 0.5 + 0.25
    targets[..., 0] = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]])
    counts = torch.tensor([3, 1])
    module = YOLOAnchorLoss(ignore_threshold=0.7, lambda_box=2.0)
    want = yolo_anchor_loss(
        preds,
        targets,
        counts,
        torch.tensor(YOLOV5_ANCHORS).double(),
        YOLOV5_STRIDES,
        ignore_threshold=0.7,
        lambda_box=2.0,
    )
    got = module(preds, targets, counts)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
