"""roi_align: against the independent float64 loops of tests/ops/reference_roi.py on fresh random
inputs, torchvision (forward and backward), gradcheck, the dispatcher (opcheck), torch.compile,
the pure-PyTorch fallback, CUDA (skipped without a GPU) and bad input."""

import importlib

import pytest
import torch

from fastmtl import ops
from fastmtl.ops._checks import BoxesShapeError, InputError
from tests.ops.reference_roi import roi_align_ref, rois_from_list
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

# (rtol, atol) of outputs and input gradients, values of order 1.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tol(dtype) -> dict:
    rtol, atol = TOL[dtype]
    return {"rtol": rtol, "atol": atol}


def make_rois(k, n, h, w, *, gen, scale=1.0, outside=0.3, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """``k`` random rois (b, x1, y1, x2, y2) in image coordinates (feature map / ``scale``), reaching
    ``outside`` of the map beyond each edge, some tiny, some larger than the map."""
    size = torch.tensor([w, h], dtype=torch.float64) / scale
    lo = (torch.rand(k, 2, generator=gen, dtype=torch.float64) * (1 + 2 * outside) - outside) * size
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) ** 2 * size * 1.2
    b = torch.randint(0, n, (k, 1), generator=gen).double()
    return torch.cat([b, lo, lo + wh], dim=1).to(device=device, dtype=dtype)


def make_input(n, c, h, w, *, gen, dtype=torch.float64, device="cpu") -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def tv_align(x, rois, output_size, scale, sampling_ratio, aligned):
    """torchvision's roi_align; half types through float32 (fastmtl's compute type)."""
    if x.dtype in HALF_DTYPES:
        x = x.float()
    return tv_ops.roi_align(x, rois.to(x.dtype), output_size, scale, sampling_ratio, aligned)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, dtype, aligned, sampling_ratio, gen, seed):
    scale = 0.5 if sampling_ratio == 2 else 0.25
    x = make_input(2, 3, 9, 11, gen=gen, dtype=dtype, device=device)
    rois = make_rois(10, 2, 9, 11, gen=gen, scale=scale, dtype=dtype, device=device)
    out = ops.roi_align(x, rois, (3, 4), scale, sampling_ratio, aligned)
    assert out.shape == (10, 3, 3, 4) and out.dtype == dtype and out.device == x.device
    want = roi_align_ref(x.cpu(), rois.cpu(), (3, 4), scale, sampling_ratio, aligned)
    assert_close(out.cpu(), want, msg=f"seed={seed}", **tol(dtype))


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_matches_torchvision_forward_and_backward(dtype, aligned, sampling_ratio, scale, gen, seed):
    x = make_input(3, 5, 14, 17, gen=gen, dtype=dtype)
    rois = make_rois(40, 3, 14, 17, gen=gen, scale=scale, dtype=dtype)
    grad = torch.randn(40, 5, 7, 6, generator=gen, dtype=torch.float64).to(dtype)
    mine = x.clone().requires_grad_()
    out = ops.roi_align(mine, rois, (7, 6), scale, sampling_ratio, aligned)
    out.backward(grad)
    theirs = (x.float() if dtype in HALF_DTYPES else x).clone().requires_grad_()
    want = tv_align(theirs, rois, (7, 6), scale, sampling_ratio, aligned)
    want.backward(grad.to(want.dtype))
    assert out.dtype == dtype and mine.grad.dtype == dtype
    assert_close(out, want.to(dtype), msg=f"forward seed={seed}", **tol(dtype))
    assert_close(mine.grad, theirs.grad.to(dtype), msg=f"backward seed={seed}", **tol(dtype))


def test_hand_checked_values():
    # A 4 x 4 ramp: bilinear interpolation of a linear function is exact.
    x = (torch.arange(4.0)[:, None] * 10 + torch.arange(4.0)[None, :]).reshape(1, 1, 4, 4).double()
    rois = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    out = ops.roi_align(x, rois, 1, 1.0, 1, aligned=False)  # one sample at (1, 1)
    assert out.item() == pytest.approx(11.0)
    out = ops.roi_align(x, rois, 2, 1.0, 1, aligned=True)  # samples at (-0.5 + 0.5 + ...)
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0, 10.0, 11.0])
    # wholly outside the map: every sample is dropped, the bin averages to 0
    far = torch.tensor([[0, 10.0, 10.0, 12.0, 12.0]], dtype=torch.float64)
    assert ops.roi_align(x, far, 2, 1.0, 2).abs().max().item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_degenerate(device, gen):
    x = make_input(2, 3, 6, 7, gen=gen, device=device)
    empty = torch.empty(0, 5, dtype=torch.float64, device=device)
    out = ops.roi_align(x, empty, (2, 3))
    assert out.shape == (0, 3, 2, 3)
    xg = x.clone().requires_grad_()
    ops.roi_align(xg, empty, 2).sum().backward()
    assert xg.grad.shape == x.shape and xg.grad.abs().max().item() == 0.0
    assert ops.roi_align(x, [empty[:, :4], empty[:, :4]], 2).shape == (0, 3, 2, 2)
    # zero-size boxes, outside boxes, inverted boxes (aligned: negative size, no samples when adaptive)
    rois = torch.tensor(
        [[0, 2.0, 2.0, 2.0, 2.0], [1, -50, -50, -40, -40], [1, 5.0, 4.0, 1.0, 1.0], [0, -3, -3, 30, 30]],
        dtype=torch.float64,
        device=device,
    )
    for aligned in (False, True):
        for sr in (-1, 2):
            got = ops.roi_align(x, rois, 3, 1.0, sr, aligned)
            assert_close(
                got.cpu(), roi_align_ref(x.cpu(), rois.cpu(), 3, 1.0, sr, aligned), **tol(torch.float64)
            )
    one = x[:, :, :1, :1].contiguous()  # a 1 x 1 map
    got = ops.roi_align(one, rois, 2, 1.0, 2)
    assert_close(got.cpu(), roi_align_ref(one.cpu(), rois.cpu(), 2, 1.0, 2), **tol(torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_boxes(device, gen, seed):
    x = make_input(3, 4, 10, 12, gen=gen, device=device)
    boxes = [make_rois(k, 1, 10, 12, gen=gen, device=device)[:, 1:] for k in (5, 0, 7)]
    got = ops.roi_align(x, boxes, 3, 1.0, 2)
    rois = rois_from_list([b.cpu() for b in boxes])
    assert_close(got.cpu(), roi_align_ref(x.cpu(), rois, 3, 1.0, 2), msg=f"seed={seed}")
    assert_close(got, ops.roi_align(x, tuple(boxes), 3, 1.0, 2))
    assert_close(got.cpu(), tv_ops.roi_align(x.cpu(), [b.cpu() for b in boxes], 3, 1.0, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_non_contiguous(device, gen, seed):
    x = make_input(2, 6, 10, 12, gen=gen, device=device)
    rois = make_rois(12, 2, 10, 12, gen=gen, device=device)
    want = ops.roi_align(x, rois, 4, 1.0, -1, True)
    for variant in (
        x.to(memory_format=torch.channels_last),
        x.transpose(2, 3).contiguous().transpose(2, 3),
        torch.stack([x, x], dim=-1)[..., 1],
    ):
        assert torch.equal(variant, x)
        xg = variant.detach().clone().requires_grad_()
        got = ops.roi_align(xg, rois, 4, 1.0, -1, True)
        assert_close(got, want, msg=f"seed={seed}", rtol=0, atol=0)
        got.backward(torch.ones_like(got))
        xr = x.clone().requires_grad_()
        ops.roi_align(xr, rois, 4, 1.0, -1, True).backward(torch.ones_like(got))
        assert_close(xg.grad, xr.grad, msg=f"seed={seed}")
    strided = torch.stack([rois[:, i] for i in range(5)], dim=1).t().contiguous().t()
    assert not strided.is_contiguous()
    assert_close(ops.roi_align(x, strided, 4, 1.0, -1, True), want, rtol=0, atol=0)


def test_large_coordinates_and_many_samples(gen, seed):
    x = make_input(1, 2, 8, 8, gen=gen)
    rois = torch.tensor(
        [[0, -1e6, -1e6, 1e6, 1e6], [0, 1e5, 1e5, 1e5 + 40, 1e5 + 40], [0, 0, 0, 300, 90]]
    ).double()
    got = ops.roi_align(x, rois, 2, 1.0, 2)
    assert_close(got, tv_ops.roi_align(x, rois, 2, 1.0, 2), msg=f"seed={seed}")
    got = ops.roi_align(x, rois[2:], 2, 1.0, -1)  # 150 x 45 samples per bin
    assert_close(got, tv_ops.roi_align(x, rois[2:], 2, 1.0, -1), msg=f"seed={seed}")


def test_backward_is_deterministic_on_cpu(gen):
    x = make_input(2, 16, 20, 20, gen=gen, dtype=torch.float32).requires_grad_()
    rois = make_rois(300, 2, 20, 20, gen=gen, dtype=torch.float32)
    grad = torch.randn(300, 16, 5, 5, generator=gen)
    first = torch.autograd.grad(ops.roi_align(x, rois, 5, 1.0, -1), x, grad)[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = torch.autograd.grad(ops.roi_align(x, rois, 5, 1.0, -1), x, grad)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, serial)
    assert torch.equal(first, torch.autograd.grad(ops.roi_align(x, rois, 5, 1.0, -1), x, grad)[0])


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, sampling_ratio, aligned, gen):
    x = make_input(2, 2, 5, 6, gen=gen, device=device).requires_grad_()
    rois = make_rois(4, 2, 5, 6, gen=gen, device=device)
    assert torch.autograd.gradcheck(
        lambda t: ops.roi_align(t, rois, (2, 3), 1.0, sampling_ratio, aligned), (x,)
    )


def test_module_form(gen):
    x = make_input(2, 3, 8, 8, gen=gen)
    rois = make_rois(6, 2, 8, 8, gen=gen, scale=0.5)
    mod = ops.RoIAlign((3, 2), 0.5, 2, aligned=True)
    assert_close(mod(x, rois), tv_ops.RoIAlign((3, 2), 0.5, 2, aligned=True)(x, rois))
    assert "sampling_ratio=2" in repr(mod)


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    x = torch.rand(2, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1, 4, 4]])
    cases = [
        ("input", lambda: ops.roi_align(x[0], rois, 2)),
        ("input", lambda: ops.roi_align(x.int(), rois.int(), 2)),
        ("boxes.*dtype", lambda: ops.roi_align(x, rois.double(), 2)),
        ("boxes.*batch", lambda: ops.roi_align(x, torch.tensor([[2, 1.0, 1, 4, 4]]), 2)),
        ("boxes.*batch", lambda: ops.roi_align(x, torch.tensor([[-1, 1.0, 1, 4, 4]]), 2)),
        ("boxes.*NaN", lambda: ops.roi_align(x, torch.tensor([[0, 1.0, float("nan"), 4, 4]]), 2)),
        ("output_size", lambda: ops.roi_align(x, rois, 0)),
        ("output_size", lambda: ops.roi_align(x, rois, (2, -1))),
        ("output_size", lambda: ops.roi_align(x, rois, (2, 2, 2))),
        ("spatial_scale", lambda: ops.roi_align(x, rois, 2, 0.0)),
        ("spatial_scale", lambda: ops.roi_align(x, rois, 2, -0.5)),
        ("spatial_scale", lambda: ops.roi_align(x, rois, 2, float("inf"))),
        ("sampling_ratio", lambda: ops.roi_align(x, rois, 2, 1.0, 1.5)),
    ]
    for name, fn in cases:
        with pytest.raises(InputError, match=name):
            fn()
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(InputError, match="boxes.*device"):
        ops.roi_align(x, rois.to(other), 2)
    with pytest.raises(TypeError, match="input"):
        ops.roi_align(x.numpy(), rois, 2)


def test_bad_boxes_shape_is_an_assertion_error():
    """torchvision's tests expect AssertionError for these; BoxesShapeError is one (and an InputError)."""
    x = torch.rand(1, 1, 8, 8)
    for boxes in (torch.tensor([[0, 0, 3, 3.0]]), [torch.tensor([[0, 0, 3.0]])], torch.rand(5), "boxes", []):
        with pytest.raises(AssertionError, match="boxes") as info:
            ops.roi_align(x, boxes, (2, 2))
        assert isinstance(info.value, BoxesShapeError) and isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- dispatcher


@compiled_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck(device, dtype, gen):
    x = make_input(2, 3, 6, 7, gen=gen, dtype=dtype, device=device)
    rois = make_rois(5, 2, 6, 7, gen=gen, dtype=dtype, device=device)
    grad = dtype == torch.float64
    for sr, aligned in ((-1, False), (2, True)):
        torch.library.opcheck(
            torch.ops.fastmtl.roi_align.default, (x.requires_grad_(grad), rois, 0.5, 2, 3, sr, aligned, False)
        )
        g = torch.randn(5, 3, 2, 3, generator=gen).to(device, dtype)
        torch.library.opcheck(
            torch.ops.fastmtl._roi_align_backward.default,
            (g, rois, 0.5, 2, 3, 2, 3, 6, 7, sr, aligned, False),
        )
    torch.library.opcheck(torch.ops.fastmtl.roi_align.default, (x, rois[:0], 1.0, 2, 2, 2, False, False))


@compiled_only
def test_dispatcher_op_checks_its_arguments():
    x, rois = torch.rand(2, 3, 8, 8), torch.tensor([[0, 1.0, 1, 4, 4]])
    cases = [
        ("input", lambda: torch.ops.fastmtl.roi_align(x[0], rois, 1.0, 2, 2, 2, False)),
        ("rois", lambda: torch.ops.fastmtl.roi_align(x, rois[:, :4], 1.0, 2, 2, 2, False)),
        ("rois.*dtype", lambda: torch.ops.fastmtl.roi_align(x, rois.double(), 1.0, 2, 2, 2, False)),
        ("output_size", lambda: torch.ops.fastmtl.roi_align(x, rois, 1.0, 0, 2, 2, False)),
        ("spatial_scale", lambda: torch.ops.fastmtl.roi_align(x, rois, 0.0, 2, 2, 2, False)),
        ("batch index", lambda: torch.ops.fastmtl.roi_align(x, rois + 3, 1.0, 2, 2, 2, False)),
        ("grad", lambda: torch.ops.fastmtl._roi_align_backward(x, rois, 1.0, 2, 2, 2, 3, 8, 8, 2, False)),
    ]
    for name, fn in cases:
        with pytest.raises(RuntimeError, match=name):
            fn()


@compiled_only
@pytest.mark.compile
def test_compile_fullgraph(gen, seed):
    torch._dynamo.reset()

    def head(x, rois, boxes):
        a = ops.roi_align(x, rois, 3, 0.5, 2, True)
        b = ops.roi_align(x, boxes, (2, 3), 0.5, -1)
        return (a * 2).sum() + b.square().sum()

    fn = torch.compile(head, fullgraph=True)
    x = make_input(2, 4, 9, 9, gen=gen, dtype=torch.float32)
    rois = make_rois(7, 2, 9, 9, gen=gen, scale=0.5, dtype=torch.float32)
    boxes = [rois[:3, 1:], rois[3:, 1:]]
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = fn(xc, rois, boxes), head(xe, rois, boxes)
    assert_close(got, want, msg=f"seed={seed}")
    got.backward()
    want.backward()
    assert_close(xc.grad, xe.grad, msg=f"seed={seed}")


# --------------------------------------------------------------------------- fallback


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_fallback_matches_compiled_and_reference(dtype, gen, seed, monkeypatch):
    x = make_input(2, 3, 9, 10, gen=gen, dtype=dtype)
    rois = make_rois(9, 2, 9, 10, gen=gen, scale=0.5, dtype=dtype)
    grad = torch.randn(9, 3, 3, 2, generator=gen).to(dtype)

    def run():
        out = []
        for sr, aligned in ((-1, False), (2, True), (0, True)):
            xg = x.clone().requires_grad_()
            y = ops.roi_align(xg, rois, (3, 2), 0.5, sr, aligned)
            y.backward(grad)
            out += [y.detach(), xg.grad]
        return out

    compiled = run()
    monkeypatch.setattr(roi_module, "use_compiled", lambda *tensors: False)
    fallback = run()
    for c, f in zip(compiled, fallback):
        assert c.dtype == f.dtype == dtype and c.shape == f.shape
        assert_close(f, c, msg=f"seed={seed}", **tol(dtype))
    want = roi_align_ref(x, rois, (3, 2), 0.5, -1, False)
    assert_close(fallback[0], want, msg=f"seed={seed}", **tol(dtype))


# --------------------------------------------------------------------------- CUDA


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cpu_and_cuda_agree(dtype, gen, seed):
    x = make_input(2, 8, 16, 20, gen=gen, dtype=dtype)
    rois = make_rois(50, 2, 16, 20, gen=gen, scale=0.5, dtype=dtype)
    grad = torch.randn(50, 8, 4, 5, generator=gen).to(dtype)
    for sr, aligned in ((-1, False), (2, True)):
        results = []
        for device, det in (("cpu", False), ("cuda", False), ("cuda", True)):
            xg = x.to(device).requires_grad_()
            y = ops.roi_align(xg, rois.to(device), (4, 5), 0.5, sr, aligned, deterministic=det)
            y.backward(grad.to(device))
            results.append((y.cpu(), xg.grad.cpu()))
        for y, g in results[1:]:
            assert_close(y, results[0][0], msg=f"seed={seed}", **tol(dtype))
            assert_close(g, results[0][1], msg=f"seed={seed}", **tol(dtype))


@cuda
@pytest.mark.cuda
def test_cuda_deterministic_backward_repeats_exactly(gen):
    x = make_input(2, 16, 32, 32, gen=gen, dtype=torch.float32, device="cuda").requires_grad_()
    rois = make_rois(500, 2, 32, 32, gen=gen, dtype=torch.float32, device="cuda")
    grad = torch.randn(500, 16, 7, 7, generator=gen).cuda()
    runs = [
        torch.autograd.grad(ops.roi_align(x, rois, 7, 1.0, 2, deterministic=True), x, grad)[0]
        for _ in range(3)
    ]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    # and torch.use_deterministic_algorithms selects it
    torch.use_deterministic_algorithms(True)
    try:
        again = torch.autograd.grad(ops.roi_align(x, rois, 7, 1.0, 2), x, grad)[0]
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(runs[0], again)


@cuda
@pytest.mark.cuda
def test_cuda_out_of_range_batch_index_gives_zeros(gen):
    x = make_input(2, 3, 8, 8, gen=gen, device="cuda")
    rois = torch.tensor([[5, 1.0, 1, 6, 6], [0, 1.0, 1, 6, 6]], dtype=torch.float64, device="cuda")
    out = ops.roi_align(x, rois, 2, 1.0, 2)
    assert out[0].abs().max().item() == 0.0 and out[1].abs().max().item() > 0
