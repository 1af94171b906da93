"""The fused anchor-based YOLO loss (mode "v3" with the "mse" and "ciou" box terms, mode
"yolov5") against the plain-PyTorch reference it was written from: terms and gradients on random
scales, shared cells, cell edges, padding, ignore thresholds, half precision; opcheck,
torch.compile, empty and bad inputs. tests/losses/test_yolo_anchor_reference.py holds the fused
yolov5 mode to yolov5's own ComputeLoss too."""

import pytest
import torch

from fastmtl.losses import yolo_anchor_loss
from fastmtl.ops._yolo_anchor_reference import YOLOV5_ANCHORS, YOLOV5_STRIDES, yolo_anchor_loss_reference
from tests.utils import compiled_only, has_cuda

pytestmark = compiled_only

ANCHORS = torch.tensor(YOLOV5_ANCHORS, dtype=torch.float64)
KEYS = ("total", "box", "obj", "noobj", "cls")
VARIANTS = {"v3-mse": {}, "v3-ciou": {"box_loss": "ciou"}, "yolov5": {"mode": "yolov5"}}


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    """The options of one fused path."""
    return VARIANTS[request.param]


def assert_all_close(outs, tol=1e-12):
    (a, ga), (b, gb) = outs
    for k in KEYS:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def make(gen, n=3, sides=(8, 4, 2), classes=4, max_boxes=6, dtype=torch.float64, counts=None):
    preds = [
        torch.randn(n, 3, s, s, 5 + classes, generator=gen, dtype=torch.float64).to(dtype) for s in sides
    ]
    t = torch.rand(n, max_boxes, 5, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    t[..., 0] = torch.randint(0, classes, (n, max_boxes), generator=gen).double()
    if counts is None:
        counts = torch.arange(n) * max_boxes // max(n - 1, 1)
    return preds, t, torch.as_tensor(counts)


def both(preds, t, counts, **kw):
    """(fused, reference) outputs and the gradients of a weighted total."""
    outs = []
    for fn in (yolo_anchor_loss, yolo_anchor_loss_reference):
        ps = [p.clone().requires_grad_() for p in preds]
        out = fn(ps, t, counts, ANCHORS.to(preds[0].dtype), YOLOV5_STRIDES, **kw)
        (out["total"] + 0.5 * out["obj"] + 3 * out["cls"] - out["box"]).backward()  # term gradients not all 1
        outs.append((out, [p.grad for p in ps]))
    return outs


@pytest.mark.parametrize("thr", [0.5, 0.0, 0.2, 1.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("box_loss", ["mse", "ciou"])
def test_v3_terms_and_gradients_match_the_reference(thr, reduction, box_loss, gen):
    preds, t, counts = make(gen)
    kw = dict(ignore_threshold=thr, reduction=reduction, lambda_noobj=0.7, box_loss=box_loss)
    assert_all_close(both(preds, t, counts, **kw))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reduction": "mean"},
        {"anchor_t": 2.0},
        {"anchor_t": 50.0, "balance": (1.0, 2.0, 3.0)},
        {"lambda_box": 3},
    ],
)
def test_yolov5_terms_and_gradients_match_the_reference(options, gen):
    preds, t, counts = make(gen)
    t[..., 3:] *= 0.5
    assert_all_close(both(preds, t, counts, mode="yolov5", **options))


def test_yolov5_cell_edges_neighbours_and_image_borders(gen):
    """Centres on cell edges (both neighbours on an axis), at the image edges (cx = 0 and 1, the
    clamped cell), one class (no class term), four scales (yolov5's default balance for P3-P6)."""
    preds, t, counts = make(gen, n=2, sides=(16, 8, 4, 2), classes=1, max_boxes=6, counts=[6, 5])
    centres = [[0.5, 0.25], [0.0, 1.0], [1.0, 0.0], [0.125, 0.0625], [1.0, 1.0], [0.3, 0.5]]
    t[0, :, 1:3] = torch.tensor(centres)
    t[..., 3:] *= 0.4
    anchors = torch.cat((ANCHORS, ANCHORS[-1:] * 2))
    outs = []
    for fn in (yolo_anchor_loss, yolo_anchor_loss_reference):
        ps = [p.clone().requires_grad_() for p in preds]
        out = fn(ps, t, counts, anchors, (8, 16, 32, 64), mode="yolov5")
        out["total"].backward()
        outs.append((out, [p.grad for p in ps]))
    assert outs[0][0]["cls"] == 0
    assert_all_close(outs)


def test_shared_cells_last_wins_and_padding_is_never_read(variant, gen):
    preds, t, counts = make(gen, n=2, max_boxes=5, counts=[4, 2])
    t[0, 1] = t[0, 0]  # the same box twice: one anchor and cell
    t[0, 2, 1:] = t[0, 0, 1:] + 1e-3  # the same cell, another class
    t[1, 2:] = float("nan")  # padding
    assert_all_close(both(preds, t, counts, **variant))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lower_precision_accumulates_in_float32(dtype, variant, gen):
    preds, t, counts = make(gen, dtype=dtype)
    out = yolo_anchor_loss([p.requires_grad_() for p in preds], t, counts, ANCHORS, YOLOV5_STRIDES, **variant)
    assert out["total"].dtype == torch.float32
    out["total"].backward()
    assert all(p.grad.dtype == dtype for p in preds)
    want = yolo_anchor_loss_reference(
        [p.detach().double() for p in preds], t, counts, ANCHORS, YOLOV5_STRIDES, **variant
    )
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(out["total"].double(), want["total"], rtol=tol, atol=tol)


def test_no_targets_leaves_the_no_object_term(variant, gen):
    """v3: only noobj; yolov5: only obj (its BCE over every prediction, target 0)."""
    preds, t, _ = make(gen, n=2)
    for targets, counts in ((t, torch.tensor([0, 0])), (t[:, :0], torch.tensor([0, 0]))):
        out = yolo_anchor_loss(preds, targets, counts, ANCHORS, YOLOV5_STRIDES, **variant)
        want = yolo_anchor_loss_reference(preds, targets, counts, ANCHORS, YOLOV5_STRIDES, **variant)
        assert out["box"] == 0 and out["cls"] == 0 and out["total"] > 0
        torch.testing.assert_close(out["total"], want["total"], rtol=1e-12, atol=1e-12)
    empty = [p[:0] for p in preds]
    counts = torch.zeros(0, dtype=torch.long)
    assert yolo_anchor_loss(empty, t[:0], counts, ANCHORS, YOLOV5_STRIDES, **variant)["total"] == 0


def test_opcheck_and_compile(gen):
    preds, t, counts = make(gen, n=2, dtype=torch.float32)
    anchors = ANCHORS.float()
    for grad in (False, True):
        ps = [p.clone().requires_grad_(grad) for p in preds]
        for ciou in (False, True):
            args = (ps, t.float(), counts, anchors, [8.0, 16.0, 32.0], 0.5, grad, ciou)
            torch.library.opcheck(torch.ops.fastmtl.yolo_v3_loss.default, args)
        args = (ps, t.float(), counts, anchors, [8.0, 16.0, 32.0], 4.0, grad)
        torch.library.opcheck(torch.ops.fastmtl.yolov5_loss.default, args)

    for variant in VARIANTS.values():

        def total(*ps, variant=variant):
            return yolo_anchor_loss(list(ps), t, counts, anchors, YOLOV5_STRIDES, **variant)["total"]

        compiled = torch.compile(total, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(*preds), total(*preds))


def test_under_autocast_the_loss_stays_in_float32(variant, gen):
    """No autocast rule is needed: the kernel takes any float dtype and accumulates in float32."""
    preds, t, counts = make(gen, n=2, dtype=torch.float32)
    want = yolo_anchor_loss(preds, t, counts, ANCHORS, YOLOV5_STRIDES, **variant)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = yolo_anchor_loss(preds, t, counts, ANCHORS, YOLOV5_STRIDES, **variant)
    for k in KEYS:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], want[k])


def test_integer_anchors_as_the_reference_takes_them(variant, gen):
    preds, t, counts = make(gen, n=2)
    want = yolo_anchor_loss(preds, t, counts, ANCHORS, YOLOV5_STRIDES, **variant)["total"]
    for anchors in (torch.tensor(YOLOV5_ANCHORS), YOLOV5_ANCHORS):
        got = yolo_anchor_loss(preds, t, counts, anchors, YOLOV5_STRIDES, **variant)
        torch.testing.assert_close(got["total"], want)


def test_double_backward_raises(variant, gen):
    preds, t, counts = make(gen, n=1)
    ps = [p.clone().requires_grad_() for p in preds]
    out = yolo_anchor_loss(ps, t, counts, ANCHORS, YOLOV5_STRIDES, **variant)["total"]
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, ps, create_graph=True)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(counts=a["counts"] + 10), "counts"),
        (lambda a: a["targets"].__setitem__((2, 0, 0), 9.0), "class index"),
        (lambda a: a["targets"].__setitem__((2, 0, 3), -0.1), "size"),
        (lambda a: a["targets"].__setitem__((2, 0, 2), float("nan")), "NaN"),
        (lambda a: a.update(anchors=a["anchors"][:2]), "anchors must have shape"),
        (lambda a: a.update(strides=(8, 16)), "strides"),
        (lambda a: a.update(preds=[a["preds"][0], a["preds"][1][..., :-1], a["preds"][2]]), "preds\\[1\\]"),
        (lambda a: a.update(preds=[p.int() for p in a["preds"]]), "preds\\[0\\] must be float"),
        # a scale without cells: a target assigned to it would vanish (found by the property suite)
        (
            lambda a: a.update(preds=[a["preds"][0], a["preds"][1][:, :, :0], a["preds"][2]]),
            "preds\\[1\\]: a grid",
        ),
    ],
)
def test_bad_input_names_the_argument(change, match, variant, gen):
    preds, t, counts = make(gen)
    a = {"preds": preds, "targets": t, "counts": counts, "anchors": ANCHORS, "strides": YOLOV5_STRIDES}
    a.update(variant)
    change(a)
    with pytest.raises((ValueError, RuntimeError), match=match):
        yolo_anchor_loss(**a)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"mode": "v3", "box_loss": "mse"}, "size"),  # v3 takes log(w / anchor): w = 0 is rejected
        ({"mode": "yolov5", "anchor_t": float("nan")}, "anchor_t"),
        ({"mode": "yolov5", "anchor_t": 0.0}, "anchor_t"),
        ({"mode": "yolov5", "lambda_noobj": 1.0}, "lambda_noobj"),
    ],
)
def test_bad_options_name_the_argument(options, match, gen):
    preds, t, counts = make(gen)
    t[2, 0, 3] = 0.0  # a zero width: fine in yolov5 mode (it fits no anchor)
    with pytest.raises((ValueError, RuntimeError), match=match):
        yolo_anchor_loss(preds, t, counts, ANCHORS, YOLOV5_STRIDES, **options)
    if options.get("mode") == "v3":
        yolo_anchor_loss(preds, t, counts, ANCHORS, YOLOV5_STRIDES, mode="yolov5")


@pytest.mark.cuda
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_matches_cpu(dtype, variant, gen):
    preds, t, counts = make(gen, n=8, sides=(16, 8, 4), classes=20, max_boxes=12, dtype=dtype)
    t[0, :4] = t[0, 4:8]  # shared cells: candidates that share a prediction
    results = []
    for device in ("cpu", "cuda"):
        ps = [p.to(device).requires_grad_() for p in preds]
        args = (t.to(device), counts.to(device), ANCHORS.to(device), YOLOV5_STRIDES)
        out = yolo_anchor_loss(ps, *args, **variant)
        (out["total"] + out["cls"]).backward()
        results.append(([out[k].cpu() for k in KEYS], [p.grad.cpu() for p in ps]))
    tol = 1e-5 if dtype != torch.float16 else 1e-3
    for x, y in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(y, x, rtol=tol, atol=tol)
