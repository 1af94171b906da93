"""IoU losses: iou_loss, giou_loss, diou_loss, ciou_loss (and torchvision's names for them) and
their nn.Module forms IoULoss, GIoULoss, DIoULoss, CIoULoss.

Each loss is ``1 - aligned IoU`` with eps in every denominator, reduced; checked against the
independent float64 reference, torchvision's ``*_box_iou_loss``, gradients with an incoming
gradient that is not 1, the pure-PyTorch fallback and torch.compile.
"""

import importlib

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl import losses, ops
from tests.ops.reference_boxes import KINDS, aligned_ref
from tests.utils import (
    DEVICES,
    FLOAT_DTYPES,
    HALF_DTYPES,
    assert_close,
    boxes_like_pairs,
    distinct_boxes,
    grid_boxes,
    random_boxes,
    tol,
)

box_iou_module = importlib.import_module("fastmtl.ops.box_iou")

LOSSES = {"iou": ops.iou_loss, "giou": ops.giou_loss, "diou": ops.diou_loss, "ciou": ops.ciou_loss}
MODULES = {"iou": losses.IoULoss, "giou": losses.GIoULoss, "diou": losses.DIoULoss, "ciou": losses.CIoULoss}
TV_LOSSES = {
    "giou": "generalized_box_iou_loss",
    "diou": "distance_box_iou_loss",
    "ciou": "complete_box_iou_loss",
}
REDUCTIONS = ("none", "mean", "sum")


def out_dtype(dtype):
    """float32 for float16, bfloat16 and integer boxes (as torchvision's losses), else the input dtype."""
    return torch.float32 if dtype in HALF_DTYPES or not dtype.is_floating_point else dtype


def loss_ref(boxes1, boxes2, kind, reduction, eps=1e-7):
    loss = 1 - aligned_ref(boxes1, boxes2, kind, eps)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum() * 0
    return loss


def pred_target(shape, *, gen, dtype=torch.float32, device="cpu"):
    """Predictions and targets near them (most pairs overlap, as in training)."""
    pred = random_boxes(shape, gen=gen, dtype=torch.float64)
    target = boxes_like_pairs(pred, gen=gen, jitter=0.4)
    return pred.to(device=device, dtype=dtype), target.to(device=device, dtype=dtype)


def test_torchvision_names_are_aliases():
    assert ops.generalized_box_iou_loss is ops.giou_loss
    assert ops.distance_box_iou_loss is ops.diou_loss
    assert ops.complete_box_iou_loss is ops.ciou_loss


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("shape", [(0,), (1,), (33,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_loss_matches_reference(kind, dtype, reduction, shape, device, gen, seed):
    b1, b2 = pred_target(shape, gen=gen, dtype=dtype, device=device)
    out = LOSSES[kind](b1, b2, reduction=reduction)
    assert out.dtype == out_dtype(dtype) and out.device == b1.device
    assert out.shape == (shape if reduction == "none" else ())
    want = loss_ref(b1.cpu(), b2.cpu(), kind, reduction)
    t = tol(dtype, output_dtype=out.dtype)
    # a sum of n terms, each off by up to atol
    atol = t["atol"] * (max(b1[..., 0].numel(), 1) if reduction == "sum" else 1)
    assert_close(out.cpu(), want, rtol=t["rtol"], atol=atol, msg=f"seed={seed}")


@pytest.mark.parametrize("kind", KINDS)
def test_loss_empty_input(kind):
    e = torch.empty(0, 4, dtype=torch.float64)
    assert LOSSES[kind](e, e).shape == (0,)
    for reduction in ("mean", "sum"):  # as torchvision: the mean of nothing is 0, not NaN
        assert torch.equal(LOSSES[kind](e, e, reduction=reduction), torch.tensor(0.0, dtype=torch.float64))
    x = e.clone().requires_grad_()
    LOSSES[kind](x, e, reduction="mean").backward()
    assert x.grad.shape == (0, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_broadcasts(kind, gen, seed):
    b1 = random_boxes((4, 1), gen=gen, dtype=torch.float64)
    b2 = random_boxes((5,), gen=gen, dtype=torch.float64)
    out = LOSSES[kind](b1, b2)
    assert out.shape == (4, 5)
    assert_close(out, loss_ref(b1, b2, kind, "none"), msg=f"seed={seed}")


@pytest.mark.parametrize("eps", [0.0, 0.3, 10.0])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_eps(kind, eps, gen, seed):
    b1, b2 = pred_target(10, gen=gen, dtype=torch.float64)
    b1, b2 = b1 / 30, b2 / 30  # small boxes, so that eps moves every term
    assert_close(LOSSES[kind](b1, b2, eps=eps), loss_ref(b1, b2, kind, "none", eps), msg=f"seed={seed}")


def test_loss_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    eps = 1e-7
    iou = 1 / (7 + eps)
    assert_close(ops.iou_loss(a, b), torch.tensor([1 - iou, 1 - 4 / (4 + eps)], dtype=torch.float64))
    assert ops.giou_loss(a[:1], b[:1]).item() == pytest.approx(1 - iou + 2 / (9 + eps), rel=1e-14)
    assert ops.diou_loss(a[:1], b[:1]).item() == pytest.approx(1 - iou + 2 / (18 + eps), rel=1e-14)
    assert ops.ciou_loss(a[:1], b[:1]).item() == pytest.approx(1 - iou + 2 / (18 + eps), rel=1e-14)
    assert ops.giou_loss(a, b, reduction="sum").item() == pytest.approx(
        ops.giou_loss(a, b).sum().item(), rel=1e-15
    )


@pytest.mark.parametrize("int_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_loss_integer_boxes(kind, int_dtype, gen):
    b1 = grid_boxes(12, gen=gen, dtype=int_dtype, cells=30)
    b2 = grid_boxes(12, gen=gen, dtype=int_dtype, cells=30)
    out = LOSSES[kind](b1, b2)
    assert out.dtype == torch.float32
    assert torch.equal(out, LOSSES[kind](b1.float(), b2.float()))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_loss_gradient_with_incoming_gradient(kind, dtype, reduction, gen, seed):
    """backward with an incoming gradient that is not 1: random weights, or a scalar 2.5."""
    if dtype in HALF_DTYPES:  # tie-free boxes: rounding continuous draws to half can tie coordinates
        b1, b2 = distinct_boxes((3, 7), (3, 7), gen=gen, dtype=dtype)
    else:
        b1, b2 = pred_target((3, 7), gen=gen, dtype=dtype)
    b1.requires_grad_()
    b2.requires_grad_()
    out = LOSSES[kind](b1, b2, reduction=reduction)
    w = torch.randn(3, 7, generator=gen) if reduction == "none" else torch.tensor(2.5)
    w = w.to(out.dtype)
    got = torch.autograd.grad(out, (b1, b2), w)
    r1 = b1.detach().double().requires_grad_()
    r2 = b2.detach().double().requires_grad_()
    want = torch.autograd.grad((loss_ref(r1, r2, kind, reduction) * w.double()).sum(), (r1, r2))
    t = tol(dtype)
    for g, r in zip(got, want):
        assert g.dtype == dtype
        assert_close(g, r, rtol=t["rtol"], atol=t["atol"] * r.abs().max().item(), msg=f"seed={seed}")


# Not CIoU: its alpha is a constant in the gradient, so plain gradcheck does not apply; its
# kernel gradient is gradchecked in test_box_iou.py (test_aligned_gradcheck) and its loss
# gradient compared with the reference above.
@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_loss_gradcheck(kind, gen, seed):
    """gradcheck through 1 - IoU and the mean."""
    b1, b2 = pred_target(5, gen=gen, dtype=torch.float64)
    b1.requires_grad_()
    b2.requires_grad_()
    fn = lambda x, y: LOSSES[kind](x, y, reduction="mean") * 3.0  # noqa: E731
    assert torch.autograd.gradcheck(fn, (b1, b2)), f"seed={seed}"


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", sorted(TV_LOSSES))
def test_loss_matches_torchvision(kind, dtype, reduction, gen, seed):
    # torchvision computes half boxes in float32 too, and returns float32
    tv = pytest.importorskip("torchvision")
    b1, b2 = pred_target(40, gen=gen, dtype=dtype)
    b1.requires_grad_()
    b2.requires_grad_()
    out = LOSSES[kind](b1, b2, reduction=reduction)
    ref = getattr(tv.ops, TV_LOSSES[kind])(b1, b2, reduction=reduction)
    assert out.dtype == ref.dtype == out_dtype(dtype) and out.shape == ref.shape
    t = tol(dtype, output_dtype=out.dtype)
    atol = t["atol"] * (40 if reduction == "sum" else 1)
    assert_close(out, ref, rtol=t["rtol"], atol=atol, msg=f"seed={seed}")
    w = torch.randn(out.shape, generator=gen).to(out.dtype)
    got = torch.autograd.grad(out, (b1, b2), w)
    want = torch.autograd.grad(ref, (b1, b2), w)
    t = tol(dtype)  # the box gradients are rounded to the box dtype
    for g, r in zip(got, want):
        assert g.dtype == r.dtype == dtype
        assert_close(g, r, rtol=t["rtol"], atol=t["atol"] * r.abs().max().item(), msg=f"seed={seed}")


@pytest.mark.parametrize("eps", [0.0, 0.3, 5.0])
@pytest.mark.parametrize("kind", ["giou", "diou"])
def test_loss_eps_matches_torchvision(kind, eps, gen, seed):
    """eps as torchvision uses it. (Not CIoU: torchvision's complete_box_iou_loss passes its eps to
    alpha only and keeps 1e-7 in the DIoU part; fastmtl puts eps in every denominator.)"""
    tv = pytest.importorskip("torchvision")
    b1, b2 = pred_target(30, gen=gen, dtype=torch.float64)
    b1, b2 = b1 / 30, b2 / 30  # small boxes, so that eps counts
    out = LOSSES[kind](b1, b2, eps=eps)
    ref = getattr(tv.ops, TV_LOSSES[kind])(b1, b2, eps=eps)
    assert_close(out, ref, msg=f"seed={seed}")


@pytest.mark.parametrize("kind", sorted(TV_LOSSES))
def test_loss_matches_torchvision_with_ties_and_degenerate_boxes(kind, gen, seed):
    """Identical, touching, nested and zero-area boxes: values (NaN included) and gradients."""
    tv = pytest.importorskip("torchvision")
    b1 = grid_boxes(60, gen=gen, dtype=torch.float64, cells=4)
    b2 = grid_boxes(60, gen=gen, dtype=torch.float64, cells=4)
    b2[:5] = b1[:5]  # identical
    b1[5:10, 2] = b1[5:10, 0]  # zero width
    b1[10:13, 2:] = b1[10:13, :2]  # points: CIoU's atan(0 / 0) is NaN, in both
    b2[10:13] = b1[10:13]
    b1 = b1.requires_grad_()
    b2 = b2.requires_grad_()
    out = LOSSES[kind](b1, b2)
    ref = getattr(tv.ops, TV_LOSSES[kind])(b1, b2)
    assert_close(out, ref, equal_nan=True, msg=f"seed={seed}")
    w = torch.randn(60, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (b1, b2), w)
    want = torch.autograd.grad(ref, (b1, b2), w)
    for g, r in zip(got, want):
        assert_close(g, r, rtol=1e-9, atol=1e-12, equal_nan=True, msg=f"seed={seed}")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", KINDS)
def test_loss_bad_input(kind):
    fn = LOSSES[kind]
    good = torch.rand(3, 4)
    for reduction in ("avg", "Mean", None, ""):
        with pytest.raises(ValueError, match="reduction"):
            fn(good, good, reduction=reduction)
    for eps in (-1.0, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="eps"):
            fn(good, good, eps=eps)
    with pytest.raises(ValueError, match="boxes1"):
        fn(torch.rand(3, 5), good)
    with pytest.raises(ValueError, match="boxes2"):
        fn(good, torch.rand(3))
    with pytest.raises(ValueError, match="broadcast"):
        fn(good, torch.rand(2, 4))
    with pytest.raises(TypeError, match="boxes1"):
        fn([0, 0, 1, 1], good)
    with pytest.raises(TypeError, match="boxes1.*boxes2"):
        fn(good, good.double())
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="device"):
        fn(good, good.to(other))
    bad = good.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="boxes2"):
        fn(good, bad)


# --------------------------------------------------------------------------- nn.Module


@pytest.mark.parametrize("kind", KINDS)
def test_modules_match_functions(kind, gen, seed):
    b1, b2 = pred_target((4, 6), gen=gen, dtype=torch.float64)
    module = MODULES[kind]()
    assert isinstance(module, nn.Module) and list(module.parameters()) == []
    assert module.reduction == "mean" and module.eps == 1e-7
    assert torch.equal(module(b1, b2), LOSSES[kind](b1, b2, reduction="mean"))
    for reduction in REDUCTIONS:
        for eps in (1e-7, 0.5):
            m = MODULES[kind](reduction=reduction, eps=eps)
            assert torch.equal(m(b1, b2), LOSSES[kind](b1, b2, reduction=reduction, eps=eps))
            assert repr(reduction) in repr(m) and str(eps) in repr(m)
    # gradients flow through the module, with an incoming gradient that is not 1
    x = b1.clone().requires_grad_()
    MODULES[kind](reduction="sum")(x, b2).mul(-1.5).backward()
    r = b1.clone().requires_grad_()
    (loss_ref(r, b2, kind, "sum") * -1.5).backward()
    assert_close(x.grad, r.grad, rtol=1e-9, atol=1e-12 * r.grad.abs().max().item(), msg=f"seed={seed}")


@pytest.mark.parametrize("kind", KINDS)
def test_modules_bad_arguments(kind):
    with pytest.raises(ValueError, match="reduction"):
        MODULES[kind](reduction="avg")
    with pytest.raises(TypeError):
        MODULES[kind]("sum")  # options are keyword-only
    with pytest.raises(ValueError, match="eps"):
        MODULES[kind](eps=-1.0)(torch.rand(2, 4), torch.rand(2, 4))


def test_modules_are_exported():
    assert {"CIoULoss", "DIoULoss", "GIoULoss", "IoULoss"} <= set(fastmtl.losses.__all__)


# --------------------------------------------------------------------------- fallback, compile


@pytest.mark.skipif(not fastmtl.has_compiled_ops(), reason="fastmtl._C not built")
@pytest.mark.parametrize("kind", KINDS)
def test_loss_fallback_matches_compiled(kind, gen, seed, monkeypatch):
    b1, b2 = pred_target(20, gen=gen, dtype=torch.float64)
    w = torch.randn(20, generator=gen, dtype=torch.float64)

    def run():
        x1, x2 = b1.clone().requires_grad_(), b2.clone().requires_grad_()
        out = LOSSES[kind](x1, x2)
        (out * w).sum().backward()
        return out.detach(), x1.grad, x2.grad

    compiled = run()
    monkeypatch.setattr(box_iou_module, "use_compiled", lambda *tensors: False)
    fallback = run()
    for c, f in zip(compiled, fallback):
        assert_close(c, f, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")


@pytest.mark.compile
def test_compile_giou_loss_forward_backward(gen):
    torch._dynamo.reset()
    b1, b2 = pred_target(8, gen=gen)
    b1.requires_grad_()
    b2.requires_grad_()
    fn = torch.compile(ops.giou_loss, fullgraph=True)
    out = fn(b1, b2, reduction="mean")
    eager = ops.giou_loss(b1, b2, reduction="mean")
    assert_close(out, eager, rtol=1e-6, atol=1e-6)
    got = torch.autograd.grad(out * 3.0, (b1, b2))
    want = torch.autograd.grad(eager * 3.0, (b1, b2))
    for g, r in zip(got, want):
        assert_close(g, r, rtol=1e-6, atol=1e-6)
