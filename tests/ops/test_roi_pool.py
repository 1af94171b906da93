"""roi_pool: against the float64 loops of tests/ops/reference_roi.py (values and argmax),
torchvision (forward and backward), gradcheck, opcheck, torch.compile, the fallback, CUDA and bad
input."""

import importlib

import pytest
import torch

from fastmtl import ops
from fastmtl.ops._checks import BoxesShapeError, InputError
from tests.ops.reference_roi import roi_pool_ref, rois_from_list
from tests.ops.test_roi_align import make_input, make_rois
from tests.utils import (
    DEVICES,
    DISPATCH_DEVICES,
    FLOAT_DTYPES,
    HALF_DTYPES,
    assert_close,
    compiled_only,
    cuda,
)

roi_module = importlib.import_module("fastmtl.ops.roi")
tv_ops = pytest.importorskip("torchvision.ops")


def distinct_input(n, c, h, w, *, gen, dtype=torch.float64, device="cpu"):
    """Values with no ties, exact in every dtype (a permutation of multiples of 1/8 up to 32): the
    max of every bin, so its argmax and the gradient, is unique."""
    count = n * c * h * w
    assert count <= 512
    v = (torch.randperm(count, generator=gen).double() - count / 2) / 8
    return v.reshape(n, c, h, w).to(device=device, dtype=dtype)


def compute_dtype(dtype):
    return torch.float32 if dtype in HALF_DTYPES else dtype


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, dtype, scale, gen, seed):
    x = distinct_input(2, 3, 9, 8, gen=gen, dtype=dtype, device=device)
    rois = make_rois(12, 2, 9, 8, gen=gen, scale=scale, dtype=dtype, device=device)
    out, argmax = torch.ops.fastmtl.roi_pool(x, rois, scale, 3, 4)
    want, want_arg = roi_pool_ref(x.cpu(), rois.cpu(), (3, 4), scale, bin_dtype=compute_dtype(dtype))
    assert out.dtype == dtype and argmax.dtype == torch.int32
    assert_close(out.cpu(), want, msg=f"seed={seed}", rtol=0, atol=0)
    assert torch.equal(argmax.cpu().long(), want_arg), f"seed={seed}"
    assert_close(ops.roi_pool(x, rois, (3, 4), scale), out, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_matches_torchvision_forward_and_backward(dtype, scale, gen, seed):
    x = make_input(3, 5, 14, 17, gen=gen, dtype=dtype)
    rois = make_rois(40, 3, 14, 17, gen=gen, scale=scale, dtype=dtype)
    grad = torch.randn(40, 5, 7, 6, generator=gen, dtype=torch.float64).to(dtype)
    mine = x.clone().requires_grad_()
    out = ops.roi_pool(mine, rois, (7, 6), scale)
    out.backward(grad)
    cd = compute_dtype(dtype)
    theirs = x.to(cd).requires_grad_()
    want = tv_ops.roi_pool(theirs, rois.to(cd), (7, 6), scale)
    want.backward(grad.to(cd))
    assert_close(out, want.to(dtype), msg=f"forward seed={seed}", rtol=0, atol=0)
    t = 1e-2 if dtype in HALF_DTYPES else 1e-6  # the sums of several bins rounded to half
    assert_close(mine.grad, theirs.grad.to(dtype), msg=f"backward seed={seed}", rtol=t, atol=t)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_outside_and_list(device, gen, seed):
    x = distinct_input(2, 2, 6, 7, gen=gen, device=device)
    empty = torch.empty(0, 5, dtype=torch.float64, device=device)
    assert ops.roi_pool(x, empty, (2, 3)).shape == (0, 2, 2, 3)
    xg = x.clone().requires_grad_()
    ops.roi_pool(xg, empty, 2).sum().backward()
    assert xg.grad.abs().max().item() == 0.0
    rois = torch.tensor(
        [[0, 2.0, 2.0, 2.0, 2.0], [1, -50, -50, -40, -40], [1, 5.0, 4.0, 1.0, 1.0], [0, -3, -3, 30, 30]],
        dtype=torch.float64,
        device=device,
    )
    out, arg = torch.ops.fastmtl.roi_pool(x, rois, 1.0, 3, 3)
    want, want_arg = roi_pool_ref(x.cpu(), rois.cpu(), 3)
    assert_close(out.cpu(), want, rtol=0, atol=0)
    assert torch.equal(arg.cpu().long(), want_arg)
    assert (arg[1] == -1).all() and (out[1] == 0).all()  # wholly outside: empty bins
    boxes = [rois[:2, 1:], rois[2:, 1:]]
    assert_close(
        ops.roi_pool(x, boxes, 3), ops.roi_pool(x, rois_from_list(boxes).to(device), 3), rtol=0, atol=0
    )


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_non_contiguous(device, gen):
    x = make_input(2, 6, 10, 12, gen=gen, device=device)
    rois = make_rois(12, 2, 10, 12, gen=gen, device=device)
    want = ops.roi_pool(x, rois, 4)
    for variant in (x.to(memory_format=torch.channels_last), torch.stack([x, x], dim=-1)[..., 0]):
        xg = variant.detach().clone().requires_grad_()
        got = ops.roi_pool(xg, rois, 4)
        assert_close(got, want, rtol=0, atol=0)
        got.sum().backward()
        xr = x.clone().requires_grad_()
        ops.roi_pool(xr, rois, 4).sum().backward()
        assert_close(xg.grad, xr.grad, rtol=0, atol=0)


def test_backward_is_deterministic_on_cpu(gen):
    x = make_input(2, 16, 20, 20, gen=gen, dtype=torch.float32).requires_grad_()
    rois = make_rois(300, 2, 20, 20, gen=gen, dtype=torch.float32)
    grad = torch.randn(300, 16, 5, 5, generator=gen)
    first = torch.autograd.grad(ops.roi_pool(x, rois, 5), x, grad)[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = torch.autograd.grad(ops.roi_pool(x, rois, 5), x, grad)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, serial)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, gen):
    x = distinct_input(2, 2, 5, 6, gen=gen, device=device).requires_grad_()
    rois = make_rois(5, 2, 5, 6, gen=gen, device=device)
    assert torch.autograd.gradcheck(lambda t: ops.roi_pool(t, rois, (2, 3), 1.0), (x,))


def test_module_form(gen):
    x = make_input(2, 3, 8, 8, gen=gen)
    rois = make_rois(6, 2, 8, 8, gen=gen, scale=0.5)
    mod = ops.RoIPool((3, 2), 0.5)
    assert_close(mod(x, rois), tv_ops.RoIPool((3, 2), 0.5)(x, rois), rtol=0, atol=0)
    assert "spatial_scale=0.5" in repr(mod)


def test_bad_input():
    x = torch.rand(2, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1, 4, 4]])
    cases = [
        ("input", lambda: ops.roi_pool(x[0], rois, 2)),
        ("boxes.*dtype", lambda: ops.roi_pool(x, rois.half(), 2)),
        ("boxes.*batch", lambda: ops.roi_pool(x, torch.tensor([[7, 1.0, 1, 4, 4]]), 2)),
        ("output_size", lambda: ops.roi_pool(x, rois, (0, 2))),
        ("output_size", lambda: ops.roi_pool(x, rois, 2.5)),
        ("spatial_scale", lambda: ops.roi_pool(x, rois, 2, 0)),
    ]
    for name, fn in cases:
        with pytest.raises(InputError, match=name):
            fn()
    for boxes in (torch.tensor([[0, 0, 3, 3.0]]), [torch.tensor([[0, 0, 3.0]])]):
        with pytest.raises(AssertionError, match="boxes") as info:
            ops.roi_pool(x, boxes, (2, 2))
        assert isinstance(info.value, BoxesShapeError)


@compiled_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck(device, dtype, gen):
    x = distinct_input(2, 3, 6, 7, gen=gen, dtype=dtype, device=device)
    rois = make_rois(5, 2, 6, 7, gen=gen, dtype=dtype, device=device)
    torch.library.opcheck(
        torch.ops.fastmtl.roi_pool.default, (x.requires_grad_(dtype == torch.float64), rois, 0.5, 2, 3)
    )
    _, argmax = torch.ops.fastmtl.roi_pool(x.detach(), rois, 0.5, 2, 3)
    g = torch.randn(5, 3, 2, 3, generator=gen).to(device, dtype)
    torch.library.opcheck(
        torch.ops.fastmtl._roi_pool_backward.default, (g, rois, argmax, 0.5, 2, 3, 2, 3, 6, 7)
    )


@compiled_only
@pytest.mark.compile
def test_compile_fullgraph(gen, seed):
    torch._dynamo.reset()

    def head(x, rois):
        return ops.roi_pool(x, rois, (2, 3), 0.5).square().sum()

    fn = torch.compile(head, fullgraph=True)
    x = distinct_input(2, 4, 8, 8, gen=gen, dtype=torch.float32)
    rois = make_rois(7, 2, 8, 8, gen=gen, scale=0.5, dtype=torch.float32)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = fn(xc, rois), head(xe, rois)
    assert_close(got, want, msg=f"seed={seed}")
    got.backward()
    want.backward()
    assert_close(xc.grad, xe.grad, msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_fallback_matches_compiled(dtype, gen, seed, monkeypatch):
    x = distinct_input(2, 3, 9, 9, gen=gen, dtype=dtype)
    rois = make_rois(9, 2, 9, 9, gen=gen, scale=0.5, dtype=dtype)
    grad = torch.randn(9, 3, 3, 2, generator=gen).to(dtype)

    def run():
        xg = x.clone().requires_grad_()
        y = ops.roi_pool(xg, rois, (3, 2), 0.5)
        y.backward(grad)
        return y.detach(), xg.grad

    compiled = run()
    monkeypatch.setattr(roi_module, "use_compiled", lambda *tensors: False)
    fallback = run()
    for c, f in zip(compiled, fallback):
        assert c.dtype == f.dtype == dtype
    assert_close(fallback[0], compiled[0], msg=f"seed={seed}", rtol=0, atol=0)
    # gradients: the same terms, summed in another order
    t = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
    assert_close(fallback[1], compiled[1], msg=f"seed={seed}", rtol=t, atol=t)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cpu_and_cuda_agree(dtype, gen, seed):
    x = make_input(2, 8, 16, 20, gen=gen, dtype=dtype)
    rois = make_rois(50, 2, 16, 20, gen=gen, scale=0.5, dtype=dtype)
    grad = torch.randn(50, 8, 4, 5, generator=gen).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        xg = x.to(device).requires_grad_()
        y, arg = torch.ops.fastmtl.roi_pool(xg, rois.to(device), 0.5, 4, 5)
        y.backward(grad.to(device))
        results.append((y.cpu(), arg.cpu(), xg.grad.cpu()))
    assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    assert torch.equal(results[1][1], results[0][1])
    assert_close(results[1][2], results[0][2], msg=f"seed={seed}", rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rois_count", [1, 60], ids=["plane-scan", "packed-channels"])
def test_ties_nan_and_channel_tail_match_torchvision(dtype, rois_count, gen, seed):
    """Few rois on a large map take the plane-by-plane scan, many take the channel-packed one;
    37 channels leave a partial block. Ties (few distinct values), NaN, -inf and -FLT_MAX must
    give torchvision's max, argmax (first maximum in row-major order, NaN never taken) and
    gradient bit for bit."""
    size = 40 if rois_count == 1 else 12
    x = torch.randint(-2, 3, (2, 37, size, size), generator=gen).to(dtype)
    special = torch.tensor([float("nan"), float("-inf"), -3.4028234663852886e38], dtype=dtype)
    pick = torch.rand(x.shape, generator=gen)
    for i, v in enumerate(special):
        x[(pick > 0.8 + 0.05 * i) & (pick <= 0.85 + 0.05 * i)] = v
    x[0, :3, :6, :6] = float("nan")  # whole bins of NaN: -FLT_MAX and argmax -1
    rois = make_rois(rois_count, 2, size, size, gen=gen, scale=0.5, dtype=dtype)
    if rois_count == 1:
        rois = torch.tensor([[0, 0.0, 0.0, 11.0, 13.0]], dtype=dtype)
    out, arg = torch.ops.fastmtl.roi_pool(x, rois, 0.5, 5, 4)
    want, want_arg = torch.ops.torchvision.roi_pool(x, rois, 0.5, 5, 4)
    assert torch.equal(arg, want_arg), f"seed={seed}"
    assert_close(out, want, msg=f"seed={seed}", rtol=0, atol=0, equal_nan=True)
    grad = torch.randn(out.shape, generator=gen, dtype=dtype)
    got = torch.ops.fastmtl._roi_pool_backward(grad, rois, arg, 0.5, 5, 4, 2, 37, size, size)
    ref = torch.ops.torchvision._roi_pool_backward(grad, rois, want_arg, 0.5, 5, 4, 2, 37, size, size)
    assert torch.equal(got, ref), f"seed={seed}"
