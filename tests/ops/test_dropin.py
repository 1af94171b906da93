"""The drop-in promise, op by op: TorchScript, torch.fx, autocast, empty inputs, torchvision's
error wording and API (batched boxes, fmt=), double backward, no host reads of CUDA values.

Each public op is listed once in CASES with a way to build fresh inputs; the tests run over
the table, so a new op joins every check by adding one row.
"""

import warnings
from types import SimpleNamespace

import pytest
import torch
import torchvision.ops as tv
from torch.utils._python_dispatch import TorchDispatchMode

import fastmtl
import fastmtl.ops as F
from fastmtl import _ext
from fastmtl.ops import _checks
from tests.utils import assert_close, compiled_only, tie_free_boxes, tol, yolo_v1_inputs

pytestmark = compiled_only


def boxes(gen, n, dtype=torch.float32, *lead):
    """Boxes [*lead, n, 4] with corners in [0, 100) and sides in [1, 40)."""
    xy = torch.rand(*lead, n, 2, generator=gen) * 100
    wh = 1 + torch.rand(*lead, n, 2, generator=gen) * 39
    return torch.cat([xy, xy + wh], -1).to(dtype)


def rois(gen, k, images=2, dtype=torch.float32):
    b = boxes(gen, k, torch.float64)
    idx = torch.randint(0, images, (k, 1), generator=gen).double()
    return torch.cat([idx, b * 0.3], 1).to(dtype)


def features(gen, n=2, c=3, h=24, w=20, dtype=torch.float32):
    return torch.randn(n, c, h, w, generator=gen).to(dtype)


# name -> (function, inputs(gen) -> args tuple). Every public functional op of fastmtl.ops.
CASES = {
    "box_iou": (F.box_iou, lambda g: (boxes(g, 5), boxes(g, 3))),
    "generalized_box_iou": (F.generalized_box_iou, lambda g: (boxes(g, 5), boxes(g, 3))),
    "distance_box_iou": (F.distance_box_iou, lambda g: (boxes(g, 5), boxes(g, 3))),
    "complete_box_iou": (F.complete_box_iou, lambda g: (boxes(g, 5), boxes(g, 3))),
    "aligned_box_iou": (F.aligned_box_iou, lambda g: (boxes(g, 5), boxes(g, 5))),
    "iou_loss": (F.iou_loss, lambda g: (boxes(g, 5), boxes(g, 5))),
    "giou_loss": (F.giou_loss, lambda g: (boxes(g, 5), boxes(g, 5))),
    "diou_loss": (F.diou_loss, lambda g: (boxes(g, 5), boxes(g, 5))),
    "ciou_loss": (F.ciou_loss, lambda g: (boxes(g, 5), boxes(g, 5))),
    "box_area": (F.box_area, lambda g: (boxes(g, 5),)),
    "box_convert": (F.box_convert, lambda g: (boxes(g, 5), "xyxy", "cxcywh")),
    "nms": (F.nms, lambda g: (boxes(g, 30), torch.rand(30, generator=g), 0.3)),
    "batched_nms": (
        F.batched_nms,
        lambda g: (boxes(g, 30), torch.rand(30, generator=g), torch.randint(0, 3, (30,), generator=g), 0.3),
    ),
    "soft_nms": (F.soft_nms, lambda g: (boxes(g, 30), torch.rand(30, generator=g))),
    "multiclass_nms": (
        F.multiclass_nms,
        lambda g: (boxes(g, 20, torch.float32, 2), torch.rand(2, 20, 3, generator=g), 0.5, 0.1, 7),
    ),
    "roi_align": (F.roi_align, lambda g: (features(g), rois(g, 6), (3, 2), 0.5, 2, True)),
    "roi_pool": (F.roi_pool, lambda g: (features(g), rois(g, 6), (3, 2), 0.5)),
    "gram_matrix": (F.gram_matrix, lambda g: (features(g),)),
    "style_loss": (F.style_loss, lambda g: (features(g), torch.randn(3, 3, generator=g).double().float())),
    "content_loss": (F.content_loss, lambda g: (features(g), features(g))),
    "yolo_v1_loss": (F.yolo_v1_loss, lambda g: (*yolo_v1_inputs(g), 2, 4)),
    "triplet_loss": (F.triplet_loss, lambda g: tuple(torch.randn(6, 4, generator=g) for _ in range(3))),
    "triplet_margin_loss": (
        F.triplet_margin_loss,
        lambda g: (torch.randn(12, 5, generator=g), torch.randint(0, 3, (12,), generator=g), 0.3),
    ),
}


def test_every_public_function_is_in_the_table():
    functions = {name for name in F.__all__ if name[0].islower()}
    aliases = {"complete_box_iou_loss", "distance_box_iou_loss", "generalized_box_iou_loss"}
    assert functions - aliases == set(CASES)


def _flat(out):
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


# TorchScript ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_scripts_and_matches_eager(name, gen):
    fn, make = CASES[name]
    args = make(gen)
    scripted = torch.jit.script(fn)
    for got, want in zip(_flat(scripted(*args)), _flat(fn(*args))):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "module, make",
    [
        (F.RoIAlign((3, 2), 0.5, 2, True), lambda g: (features(g), rois(g, 6))),
        (F.RoIAlign(3, 0.5, -1), lambda g: (features(g), [boxes(g, 2) * 0.3, boxes(g, 3) * 0.3])),
        (F.RoIPool((3, 2), 0.5), lambda g: (features(g), rois(g, 6))),
        (
            F.MultiScaleRoIAlign(["a", "b"], 3, 2),
            lambda g: (
                {"a": features(g, h=32, w=32), "b": features(g, h=16, w=16)},
                [boxes(g, 3), boxes(g, 2)],
                [(64, 64), (64, 60)],
            ),
        ),
    ],
    ids=["RoIAlign", "RoIAlign-list", "RoIPool", "MultiScaleRoIAlign"],
)
def test_modules_script_and_trace(module, make, gen):
    args = make(gen)
    want = module(*args)
    torch.testing.assert_close(torch.jit.script(module)(*args), want)
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(*args), want)
    assert any(node.op == "call_function" for node in traced.graph.nodes)


def test_script_rejects_bad_input_through_the_schema_checks():
    scripted = torch.jit.script(F.roi_align)
    with pytest.raises(RuntimeError, match="rois"):
        scripted(torch.rand(1, 2, 5, 5), torch.rand(3, 4), 2)


# torch.fx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_is_an_fx_leaf(name, gen):
    fn, make = CASES[name]
    args = make(gen)
    tensor_args = [a for a in args if isinstance(a, torch.Tensor)]

    class Module(torch.nn.Module):
        def forward(self, t0, t1=None, t2=None, t3=None):
            it = iter([t0, t1, t2, t3])
            call = [next(it) if isinstance(a, torch.Tensor) else a for a in args]
            return getattr(fastmtl.ops, name)(*call)

    unused = {f"t{i}": None for i in range(len(tensor_args), 4)}
    traced = torch.fx.symbolic_trace(Module(), concrete_args=unused)
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert fn in targets, targets
    for got, want in zip(_flat(traced(*tensor_args)), _flat(fn(*args))):
        torch.testing.assert_close(got, want)


# Autocast ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_roi_ops_under_autocast_take_fp32_boxes_and_return_the_input_dtype(op, dtype, gen):
    x, r = features(gen), rois(gen, 8)
    fn = getattr(F, op)
    with torch.autocast("cpu", dtype=dtype):
        got = fn(x.to(dtype), r, 3, 0.5)
    assert got.dtype == dtype
    # as torchvision's autocast kernel: both computed in float32, the result rounded
    assert_close(got, fn(x.to(dtype).float(), r, 3, 0.5).to(dtype), **tol(dtype))
    if op == "roi_align":  # torchvision registers a CPU autocast kernel for roi_align only
        with torch.autocast("cpu", dtype=dtype):
            theirs = tv.roi_align(x.to(dtype), r, 3, 0.5)
        torch.testing.assert_close(got, theirs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_box_ops_under_autocast_take_mixed_dtypes(dtype, gen):
    pred, target = boxes(gen, 16), boxes(gen, 16)
    with torch.autocast("cpu", dtype=dtype):
        loss = F.giou_loss(pred.to(dtype).requires_grad_(), target, reduction="mean")
        iou = F.box_iou(pred.to(dtype), target)
    assert loss.dtype == iou.dtype == torch.float32
    torch.testing.assert_close(iou, F.box_iou(pred.to(dtype).float(), target))
    torch.testing.assert_close(loss, F.giou_loss(pred.to(dtype).float(), target, reduction="mean"))
    loss.backward()
    with pytest.raises(TypeError, match="same dtype"):  # outside autocast, still an error
        F.box_iou(pred.to(dtype), target)


def test_nms_and_style_ops_under_autocast(gen):
    b, s = boxes(gen, 40), torch.rand(40, generator=gen)
    x = features(gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        keep = F.nms(b.bfloat16(), s, 0.4)
        g = F.gram_matrix(x.bfloat16())
        loss = F.style_loss(x.bfloat16(), F.gram_matrix(x, normalize=False))
    torch.testing.assert_close(keep, F.nms(b.bfloat16().float(), s, 0.4))
    assert g.dtype == torch.bfloat16 and loss.dtype == torch.float32


# Empty input, error wording, torchvision 0.29's API ---------------------------------------


def test_empty_inputs_match_torchvision():
    empty = torch.tensor([])
    long_empty = torch.tensor([], dtype=torch.int64)
    got = F.batched_nms(empty, empty, long_empty, 0.5)
    want = tv.batched_nms(empty, empty, long_empty, 0.5)
    assert got.dtype == want.dtype == torch.int64 and got.shape == want.shape == (0,)
    none = torch.zeros(0, 4)
    assert F.nms(none, torch.zeros(0), 0.5).shape == (0,)
    assert F.box_iou(none, boxes(torch.Generator(), 3)).shape == (0, 3)
    assert F.giou_loss(none, none, reduction="mean").item() == 0.0
    x = torch.rand(1, 2, 5, 5)
    assert F.roi_align(x, torch.zeros(0, 5), 2).shape == tv.roi_align(x, torch.zeros(0, 5), 2).shape
    assert F.roi_pool(x, torch.zeros(0, 5), 2).shape == (0, 2, 2, 2)


@pytest.mark.parametrize("loss", ["giou_loss", "diou_loss", "ciou_loss", "iou_loss"])
def test_bad_reduction_says_invalid(loss, gen):
    b = boxes(gen, 3)
    with pytest.raises(ValueError, match="Invalid"):
        getattr(F, loss)(b, b, reduction="xyz")


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"])
def test_batched_pairwise_boxes_as_torchvision(name, gen):
    a, b = boxes(gen, 5, torch.float64, 2, 3), boxes(gen, 4, torch.float64, 3)  # [2, 3, 5, 4] x [3, 4, 4]
    got = getattr(F, name)(a, b)
    assert got.shape == (2, 3, 5, 4)
    torch.testing.assert_close(got, getattr(tv, name)(a, b))


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_fmt_argument_as_torchvision(fmt, gen):
    a, b = boxes(gen, 6, torch.float64), boxes(gen, 4, torch.float64)
    a, b = tv.box_convert(a, "xyxy", fmt), tv.box_convert(b, "xyxy", fmt)
    torch.testing.assert_close(F.box_iou(a, b, fmt=fmt), tv.box_iou(a, b, fmt=fmt))
    torch.testing.assert_close(F.box_area(a, fmt=fmt), tv.box_area(a, fmt=fmt))
    with pytest.raises(ValueError, match="fmt"):
        F.box_iou(a, b, fmt="xyxyxyxy")


# Double backward --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"])
def test_pairwise_double_backward(name, gen):
    a, b = (t.requires_grad_() for t in tie_free_boxes((4,), (3,), gen=gen, dtype=torch.float64))
    if name != "complete_box_iou":  # CIoU's alpha is a constant in the gradient (as torchvision's),
        assert torch.autograd.gradgradcheck(getattr(F, name), (a, b))  # so only parity below holds
    # the same second derivatives as torchvision's plain-PyTorch formulas
    (g,) = torch.autograd.grad(getattr(F, name)(a, b).square().sum(), a, create_graph=True)
    (g_tv,) = torch.autograd.grad(getattr(tv, name)(a, b).square().sum(), a, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(g.sum(), b), torch.autograd.grad(g_tv.sum(), b))


TV_LOSSES = {
    "giou_loss": tv.generalized_box_iou_loss,
    "diou_loss": tv.distance_box_iou_loss,
    "ciou_loss": tv.complete_box_iou_loss,
}


@pytest.mark.parametrize("loss", ["iou_loss", "giou_loss", "diou_loss", "ciou_loss"])
def test_loss_double_backward(loss, gen):
    a, b = (t.requires_grad_() for t in tie_free_boxes((5,), (5,), gen=gen, dtype=torch.float64))
    if loss != "ciou_loss":  # CIoU: alpha is a constant in the gradient, as in torchvision
        assert torch.autograd.gradgradcheck(lambda x, y: getattr(F, loss)(x, y, reduction="sum"), (a, b))
    if loss in TV_LOSSES:
        mine, theirs = getattr(F, loss), TV_LOSSES[loss]
        (g,) = torch.autograd.grad(mine(a, b, reduction="sum"), a, create_graph=True)
        (g_tv,) = torch.autograd.grad(theirs(a, b, reduction="sum"), a, create_graph=True)
        torch.testing.assert_close(
            torch.autograd.grad(g.square().sum(), b), torch.autograd.grad(g_tv.square().sum(), b)
        )


def test_roi_align_double_backward(gen):
    x = features(gen, c=3, h=12, w=12, dtype=torch.float64).requires_grad_()
    r = rois(gen, 5, dtype=torch.float64)
    # inside the map (x 0.5: corners up to 10 of 12): all five outside gave zero gradients (a seed found it)
    r[:, 1:3] = r[:, 1:3].clamp(max=14.0)
    r[:, 3:5] = r[:, 1:3] + 6.0
    assert torch.autograd.gradgradcheck(lambda t: F.roi_align(t, r, (3, 2), 0.5, 2, True), (x,))
    # a gradient penalty: the second-order term flows through the incoming gradient
    w = torch.randn(5, 3, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad((F.roi_align(x, r, (3, 2), 0.5, 2, True) * w).sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.square().sum(), w)
    (gx_tv,) = torch.autograd.grad((tv.roi_align(x, r, (3, 2), 0.5, 2, True) * w).sum(), x, create_graph=True)
    assert gw.abs().sum() > 0
    torch.testing.assert_close(gx, gx_tv)


def test_roi_pool_double_backward(gen):
    x = torch.randperm(2 * 2 * 9 * 8, generator=gen).double().reshape(2, 2, 9, 8).requires_grad_()  # no ties
    r = rois(gen, 5, dtype=torch.float64)
    # fast mode: a random projection of the Jacobians (the full check takes minutes here)
    assert torch.autograd.gradgradcheck(lambda t: F.roi_pool(t, r, (3, 2), 0.25), (x,), fast_mode=True)


def test_multiscale_double_backward(gen):
    pool = F.MultiScaleRoIAlign(["a", "b"], 2, 2)
    x = {
        "a": features(gen, h=32, w=32, dtype=torch.float64),
        "b": features(gen, h=16, w=16, dtype=torch.float64),
    }
    for v in x.values():
        v.requires_grad_()
    bx = [boxes(gen, 3, torch.float64), boxes(gen, 2, torch.float64) * 0.5]
    w = torch.randn(5, 3, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    (ga,) = torch.autograd.grad((pool(x, bx, [(64, 64)] * 2) * w).sum(), x["a"], create_graph=True)
    (gw,) = torch.autograd.grad(ga.square().sum(), w)
    assert gw.abs().sum() > 0


# Devices without kernels, and host reads ---------------------------------------------------


def test_cuda_tensor_on_a_build_without_cuda_warns_once_per_op(monkeypatch):
    monkeypatch.setattr(_ext, "has_cuda_ops", lambda: False)
    monkeypatch.setattr(_ext, "_warned", set())
    fake_cuda = SimpleNamespace(device=torch.device("cuda"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert not _ext.use_compiled(fake_cuda, "box_iou")
        assert not _ext.use_compiled(fake_cuda, "nms")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "box_iou" in messages[0] and "nms" in messages[1]


def test_has_cuda_ops_looks_at_every_op():
    names = _ext.compiled_op_names()
    assert "fastmtl::nms" in names and "fastmtl::roi_align" in names and len(names) >= 10
    gpu_ops = [n for n in names if n not in _ext.CPU_ONLY_OPS]
    assert "fastmtl::coco_evaluate" in names and "fastmtl::coco_evaluate" not in gpu_ops
    want = all(torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA") for n in gpu_ops)
    assert fastmtl.has_cuda_ops() == want


class _NoHostReads(TorchDispatchMode):
    """Fails on any op that copies a tensor's value to Python (item, bool, nonzero...): each is a
    device sync when the tensor is on CUDA. The kernels' own internals are not seen."""

    READS = {"_local_scalar_dense", "is_nonzero", "nonzero", "equal", "allclose", "_assert_async"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.READS:
            raise AssertionError(f"host read of a tensor value: {func}")
        return func(*args, **(kwargs or {}))


# Ops whose output size is data-dependent read one count back, inside the kernel (not seen here).
@pytest.mark.parametrize("name", sorted(CASES))
def test_python_layer_reads_no_values_when_they_would_be_on_cuda(name, gen, monkeypatch):
    """On CPU the checks may read values (no sync); with values_readable False, as for CUDA
    tensors, the Python layer of every op must not read any value."""
    monkeypatch.setattr(_checks, "values_readable", lambda t: False)
    fn, make = CASES[name]
    args = make(gen)
    if name == "soft_nms":
        pytest.skip(
            "soft_nms checks its scores for NaN on every device (its output size is read back anyway)"
        )
    with _NoHostReads():
        fn(*args)
