"""box_convert and box_area: round trips, torchvision parity, checks."""

import itertools

import pytest
import torch

from fastmtl import ops
from tests.ops.reference_boxes import area_ref
from tests.utils import DEVICES, FLOAT_DTYPES, HALF_DTYPES, assert_close, grid_boxes, random_boxes, tol

FORMATS = ("xyxy", "xywh", "cxcywh")
FORMAT_PAIRS = list(itertools.product(FORMATS, FORMATS))
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def _xyxy_to(boxes, fmt):
    """Independent conversion of float64 corner boxes, for the reference."""
    x1, y1, x2, y2 = boxes.double().unbind(-1)
    if fmt == "xyxy":
        return torch.stack((x1, y1, x2, y2), -1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), -1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


@pytest.mark.parametrize("shape", [(0,), (1,), (13,), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_box_convert_matches_reference_and_round_trips(dtype, shape, device, gen, seed):
    xyxy = random_boxes(shape, gen=gen, dtype=torch.float64)
    for in_fmt, out_fmt in FORMAT_PAIRS:
        src = _xyxy_to(xyxy, in_fmt).to(device=device, dtype=dtype)
        out = ops.box_convert(src, in_fmt, out_fmt)
        assert out.shape == src.shape and out.dtype == dtype and out.device == src.device
        # reference from the rounded input, through xyxy in float64
        src64 = src.cpu().double()
        if in_fmt == "xywh":
            src64 = torch.cat((src64[..., :2], src64[..., :2] + src64[..., 2:]), -1)
        elif in_fmt == "cxcywh":
            src64 = torch.cat((src64[..., :2] - src64[..., 2:] / 2, src64[..., :2] + src64[..., 2:] / 2), -1)
        t = tol(dtype)
        assert_close(
            out.cpu(), _xyxy_to(src64, out_fmt), rtol=t["rtol"], atol=t["atol"] * 100, msg=f"seed={seed}"
        )
        back = ops.box_convert(out, out_fmt, in_fmt)
        assert_close(back, src, rtol=t["rtol"] * 4, atol=t["atol"] * 400, msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("in_fmt,out_fmt", FORMAT_PAIRS)
def test_box_convert_matches_torchvision(in_fmt, out_fmt, dtype, gen):
    tv = pytest.importorskip("torchvision")
    boxes = grid_boxes(20, gen=gen, dtype=dtype, cells=40).view(4, 5, 4)
    if dtype.is_floating_point:
        boxes = random_boxes((4, 5), gen=gen, dtype=dtype)
    got = ops.box_convert(boxes, in_fmt, out_fmt)
    want = tv.ops.box_convert(boxes, in_fmt, out_fmt)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert_close(got, want, rtol=0, atol=0)


def test_box_convert_same_format_is_a_copy(gen):
    boxes = random_boxes(5, gen=gen)
    out = ops.box_convert(boxes, "xywh", "xywh")
    assert torch.equal(out, boxes)
    out.zero_()
    assert boxes.abs().sum() > 0  # as torchvision: a clone, the input is untouched


def test_box_convert_exact_round_trips(gen):
    # integer corners: every conversion is exact in float64 (halves are exact too)
    xyxy = grid_boxes(50, gen=gen, dtype=torch.float64, cells=1000)
    for fmt in ("xywh", "cxcywh"):
        there = ops.box_convert(xyxy, "xyxy", fmt)
        assert torch.equal(ops.box_convert(there, fmt, "xyxy"), xyxy)
        assert torch.equal(there, _xyxy_to(xyxy, fmt))
    cxcywh = ops.box_convert(xyxy, "xyxy", "cxcywh")
    assert torch.equal(ops.box_convert(ops.box_convert(cxcywh, "cxcywh", "xywh"), "xywh", "cxcywh"), cxcywh)


def test_box_convert_keeps_gradients(gen):
    boxes = random_boxes(6, gen=gen, dtype=torch.float64).requires_grad_()
    for in_fmt, out_fmt in FORMAT_PAIRS:
        assert torch.autograd.gradcheck(lambda b, i=in_fmt, o=out_fmt: ops.box_convert(b, i, o), (boxes,))


def test_box_convert_non_contiguous(gen):
    base = random_boxes(8, gen=gen, dtype=torch.float64)
    view = base.t().contiguous().t()
    assert not view.is_contiguous()
    for in_fmt, out_fmt in FORMAT_PAIRS:
        assert torch.equal(ops.box_convert(view, in_fmt, out_fmt), ops.box_convert(base, in_fmt, out_fmt))


def test_box_convert_bad_input():
    boxes = torch.rand(3, 4)
    with pytest.raises(ValueError, match="in_fmt"):
        ops.box_convert(boxes, "xyzw", "xyxy")
    with pytest.raises(ValueError, match="out_fmt"):
        ops.box_convert(boxes, "xyxy", "XYXY")
    with pytest.raises(ValueError, match="boxes"):
        ops.box_convert(torch.rand(3, 5), "xyxy", "xywh")
    with pytest.raises(ValueError, match="boxes"):
        ops.box_convert(torch.tensor(1.0), "xyxy", "xywh")


def test_box_convert_non_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="boxes"):
        ops.box_convert([[0, 0, 1, 1]], "xyxy", "xywh")


# --------------------------------------------------------------------------- box_area


@pytest.mark.parametrize("shape", [(0,), (1,), (17,), (3, 4)], ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_box_area_matches_reference(dtype, shape, device, gen, seed):
    boxes = random_boxes(shape, gen=gen, dtype=dtype, device=device)
    out = ops.box_area(boxes)
    assert out.shape == shape and out.device == boxes.device
    assert out.dtype == (torch.float32 if dtype in HALF_DTYPES else dtype)
    t = tol(dtype)
    assert_close(out.cpu(), area_ref(boxes.cpu()), rtol=t["rtol"], atol=t["atol"] * 1e4, msg=f"seed={seed}")


def test_box_area_degenerate_and_huge():
    boxes = torch.tensor([[1.0, 1, 1, 5], [2, 2, 2, 2], [0, 0, 1e6, 1e6]], dtype=torch.float64)
    assert ops.box_area(boxes).tolist() == [0.0, 0.0, 1e12]


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
def test_box_area_integer_matches_torchvision(dtype, gen):
    tv = pytest.importorskip("torchvision")
    boxes = grid_boxes(12, gen=gen, dtype=dtype, cells=100)
    got, want = ops.box_area(boxes), tv.ops.box_area(boxes)
    assert got.dtype == want.dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_box_area_matches_torchvision(dtype, gen):
    # float16/bfloat16 areas in float32, as torchvision (a 300 x 300 box overflows float16)
    tv = pytest.importorskip("torchvision")
    boxes = random_boxes((3, 5), gen=gen, dtype=dtype, scale=400.0)
    got, want = ops.box_area(boxes), tv.ops.box_area(boxes.view(-1, 4)).view(3, 5)
    assert got.dtype == want.dtype == (torch.float32 if dtype in HALF_DTYPES else dtype)
    assert got.shape == (3, 5)
    assert torch.isfinite(got).all()
    assert_close(got, want, **tol(torch.float32 if dtype in HALF_DTYPES else dtype))
    big = torch.tensor([[0.0, 0.0, 300.0, 300.0]], dtype=dtype)
    assert ops.box_area(big).item() == 90000.0  # beyond float16's 65504


def test_box_area_bad_input():
    with pytest.raises(ValueError, match="boxes"):
        ops.box_area(torch.rand(3, 5))
    with pytest.raises(ValueError, match="boxes"):
        ops.box_area(torch.ones(3, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="boxes"):
        ops.box_area([[0, 0, 1, 1]])
    with pytest.raises(TypeError, match="boxes"):
        ops.box_area(torch.ones(2, 4, dtype=torch.bool))
    bad = torch.rand(3, 4)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="boxes"):
        ops.box_area(bad)
