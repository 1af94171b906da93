"""gram_matrix: against the float64 einsum reference in tests/ops/reference_gram.py on fresh random
features, in every dtype and layout, block boundaries of the upper-triangle product, empty inputs,
gradients (gradcheck, an incoming gradient that is not symmetric), the dispatcher (opcheck),
torch.compile, the pure-PyTorch fallback, bad input and CUDA."""

import importlib

import pytest
import torch

from fastmtl import ops
from tests.ops.reference_gram import gram_ref
from tests.utils import (
    DEVICES,
    DISPATCH_DEVICES,
    FLOAT_DTYPES,
    assert_close,
    compiled_only,
    cuda,
)

gram_module = importlib.import_module("fastmtl.ops.gram")

# Relative to the largest magnitude of the reference: the output is rounded to the input dtype
# (half types accumulate in float32).
REL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# [N, C, H, W]; C = 97, 160 and 257 give 2, 3 and 5 block rows of 64 (odd and even pairings).
SHAPES = [(2, 5, 4, 3), (1, 1, 6, 7), (3, 97, 5, 4), (1, 160, 3, 3), (2, 257, 2, 3)]


def features(shape, gen, dtype=torch.float32, device="cpu", layout="contiguous"):
    """Random features ``shape`` in ``layout``: contiguous, channels_last, or a strided view (a
    slice of a wider tensor, with H and W swapped)."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if layout == "channels_last":
        return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        n, c, h, w = shape
        wide = torch.randn(n, c + 3, w, h + 2, generator=gen, dtype=torch.float64)
        wide[:, 1 : c + 1, :, 1 : h + 1] = x.transpose(2, 3)
        view = wide.to(device=device, dtype=dtype)[:, 1 : c + 1, :, 1 : h + 1].transpose(2, 3)
        assert view.shape == shape and not view.is_contiguous()
        return view
    return x.to(device=device, dtype=dtype)


def close(actual, expected, dtype, scale=None, msg=""):
    """Within REL[dtype] of the largest magnitude of ``expected`` (which may be float64)."""
    scale = expected.abs().max().item() if scale is None and expected.numel() else (scale or 1.0)
    assert_close(actual.cpu(), expected, rtol=REL[dtype], atol=REL[dtype] * max(scale, 1e-30), msg=msg)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, dtype, shape, layout, gen, seed):
    x = features(shape, gen, dtype, device, layout)
    for normalize in (False, True):
        g = ops.gram_matrix(x, normalize=normalize)
        assert g.shape == (shape[0], shape[1], shape[1]) and g.dtype == dtype and g.device == x.device
        assert g.is_contiguous()
        close(g, gram_ref(x, normalize), dtype, msg=f"normalize={normalize} seed={seed}")
        assert torch.equal(g, g.transpose(1, 2)), "mirrored exactly"


def test_normalization_and_the_tutorial(gen):
    """normalize divides by C*H*W; for one image that is the tutorial's gram_matrix exactly."""
    x = torch.randn(1, 6, 5, 4, generator=gen, dtype=torch.float64)
    a, b, c, d = x.shape
    f = x.view(a * b, c * d)
    tutorial = torch.mm(f, f.t()).div(a * b * c * d)
    assert_close(ops.gram_matrix(x)[0], tutorial, rtol=1e-13, atol=1e-15)
    assert_close(ops.gram_matrix(x, normalize=False), gram_ref(x), rtol=1e-13, atol=1e-13)
    # batch: the tutorial folds N into the rows; its diagonal blocks are ours / N
    x = torch.randn(3, 4, 2, 5, generator=gen, dtype=torch.float64)
    f = x.reshape(12, 10)
    folded = torch.mm(f, f.t()) / x.numel()
    ours = ops.gram_matrix(x)
    for n in range(3):
        assert_close(folded[4 * n : 4 * n + 4, 4 * n : 4 * n + 4], ours[n] / 3, rtol=1e-13, atol=1e-15)


def test_known_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # channels (1, 2) and (3, 4)
    assert ops.gram_matrix(x, normalize=False).tolist() == [[[5.0, 11.0], [11.0, 25.0]]]
    assert ops.gram_matrix(x).tolist() == [[[1.25, 2.75], [2.75, 6.25]]]


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0), (1, 1, 1, 1)])
@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_tiny(shape, device):
    x = torch.rand(shape, dtype=torch.float64, device=device, requires_grad=True)
    g = ops.gram_matrix(x)
    n, c = shape[:2]
    assert g.shape == (n, c, c)
    assert_close(g.detach().cpu(), gram_ref(x.detach(), True), rtol=1e-12, atol=1e-15)
    if shape[2] * shape[3] == 0:
        assert torch.equal(g.detach().cpu(), torch.zeros(n, c, c, dtype=torch.float64))
    (grad,) = torch.autograd.grad(g.sum(), x)
    assert grad.shape == shape
    # dG = ones: dF[k] = 2 / (C H W) * sum_k' F[k']
    want = 2 * x.detach().cpu().sum(1, keepdim=True).expand(shape) / max(shape[1] * shape[2] * shape[3], 1)
    assert_close(grad.cpu(), want, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck(normalize, layout, gen, seed):
    x = features((2, 3, 4, 2), gen, torch.float64, layout=layout).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.gram_matrix(t, normalize=normalize), (x,)), f"seed={seed}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (1, 97, 3, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_matches_reference(device, dtype, shape, layout, gen, seed):
    x = features(shape, gen, dtype, device, layout).requires_grad_()
    n, c = shape[:2]
    w = torch.randn(n, c, c, generator=gen, dtype=torch.float64)  # not symmetric, not 1
    (got,) = torch.autograd.grad(ops.gram_matrix(x, normalize=False), x, w.to(device, dtype))
    assert got.dtype == dtype and got.shape == x.shape
    assert got.stride() == x.stride(), "the gradient keeps the layout of the features"
    r = x.detach().cpu().double().requires_grad_()
    (want,) = torch.autograd.grad((gram_ref(r) * w.to(dtype).double()).sum(), r)
    close(got, want, dtype, msg=f"seed={seed}")


def test_strided_gradient_is_contiguous(gen):
    x = features((2, 3, 4, 5), gen, torch.float64, layout="strided").requires_grad_()
    (got,) = torch.autograd.grad(ops.gram_matrix(x).sum(), x)
    assert got.is_contiguous()
    xc = x.detach().contiguous().requires_grad_()
    (want,) = torch.autograd.grad(ops.gram_matrix(xc).sum(), xc)
    assert_close(got, want, rtol=1e-13, atol=1e-14)


def test_double_backward_is_refused(gen):
    x = torch.randn(1, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    if not gram_module.has_compiled_ops():
        pytest.skip("the fallback is plain autograd: double backward works there")
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(ops.gram_matrix(x).sum(), x, create_graph=True)


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    good = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="features"):
        ops.gram_matrix(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="features"):
        ops.gram_matrix(torch.rand(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="features"):
        ops.gram_matrix(good.int())
    with pytest.raises(ValueError, match="features"):
        ops.gram_matrix(good.to(torch.complex64))
    with pytest.raises(TypeError, match="features"):
        ops.gram_matrix(good.numpy())
    with pytest.raises(ValueError, match="normalize"):
        ops.gram_matrix(good, normalize="yes")


@compiled_only
def test_dispatcher_ops_check_their_arguments():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.fastmtl.gram_matrix(x[0], True)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.fastmtl.gram_matrix(x.int(), True)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.fastmtl._gram_matrix_backward(torch.rand(2, 3, 4), x, True)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.fastmtl._gram_matrix_backward(torch.rand(2, 3, 3).double(), x, True)


# --------------------------------------------------------------------------- dispatcher


@compiled_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck(device, dtype, layout, gen):
    x = features((2, 5, 3, 4), gen, dtype, device, layout).requires_grad_(dtype == torch.float64)
    torch.library.opcheck(torch.ops.fastmtl.gram_matrix.default, (x, True))
    grad = torch.randn(2, 5, 5, generator=gen).to(device, dtype)
    torch.library.opcheck(torch.ops.fastmtl._gram_matrix_backward.default, (grad, x.detach(), False))


@compiled_only
def test_opcheck_empty():
    for shape in [(0, 3, 2, 2), (2, 3, 0, 2), (2, 0, 2, 2)]:
        x = torch.rand(shape, dtype=torch.float64)
        torch.library.opcheck(torch.ops.fastmtl.gram_matrix.default, (x, True))
        g = torch.rand(shape[0], shape[1], shape[1], dtype=torch.float64)
        torch.library.opcheck(torch.ops.fastmtl._gram_matrix_backward.default, (g, x, True))


@compiled_only
def test_fake_kernel_gives_shape_dtype_and_layout():
    for dtype in FLOAT_DTYPES:
        x = torch.empty(2, 5, 3, 4, dtype=dtype, device="meta")
        out = torch.ops.fastmtl.gram_matrix(x, True)
        assert out.shape == (2, 5, 5) and out.dtype == dtype and out.is_meta
        cl = x.contiguous(memory_format=torch.channels_last)
        grad = torch.ops.fastmtl._gram_matrix_backward(out, cl, True)
        assert grad.shape == x.shape and grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.compile
def test_compile_forward_backward(gen):
    torch._dynamo.reset()
    x = torch.randn(2, 6, 5, 3, generator=gen).requires_grad_()
    fn = torch.compile(ops.gram_matrix, fullgraph=True)
    out = fn(x)
    eager = ops.gram_matrix(x)
    assert_close(out, eager, rtol=0, atol=0)
    w = torch.randn(2, 6, 6, generator=gen)
    assert_close(torch.autograd.grad(out, x, w)[0], torch.autograd.grad(eager, x, w)[0], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- fallback


@compiled_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_fallback_matches_compiled(dtype, gen, seed, monkeypatch):
    x = features((2, 7, 4, 5), gen, dtype, layout="channels_last")
    w = torch.randn(2, 7, 7, generator=gen).to(dtype)

    def run():
        t = x.clone().requires_grad_()
        g = ops.gram_matrix(t)
        return g.detach(), torch.autograd.grad(g, t, w)[0]

    compiled = run()
    monkeypatch.setattr(gram_module, "use_compiled", lambda *tensors: False)
    reference = run()
    for c, r, name in zip(compiled, reference, ("gram", "grad")):
        assert c.dtype == r.dtype and c.shape == r.shape, name
        close(c, r.double(), dtype, msg=f"{name} seed={seed}")


def test_fallback_matches_reference(gen, monkeypatch):
    monkeypatch.setattr(gram_module, "use_compiled", lambda *tensors: False)
    x = torch.randn(3, 4, 2, 5, generator=gen, dtype=torch.float64)
    assert_close(ops.gram_matrix(x), gram_ref(x, True), rtol=1e-13, atol=1e-15)
    assert ops.gram_matrix(torch.empty(0, 3, 2, 2)).shape == (0, 3, 3)


# --------------------------------------------------------------------------- CUDA


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cpu_and_cuda_agree(dtype, layout, gen, seed):
    x = features((2, 200, 9, 7), gen, dtype, layout=layout)
    w = torch.randn(2, 200, 200, generator=gen).to(dtype)
    outs = {}
    for device in ("cpu", "cuda"):
        t = x.to(device).requires_grad_()
        g = ops.gram_matrix(t)
        outs[device] = (g.detach().cpu(), torch.autograd.grad(g, t, w.to(device))[0].cpu())
    # TF32 may be on for CUDA float32 matmuls: compare at the half-type tolerance there.
    rel = torch.float16 if dtype == torch.float32 else dtype
    for c, r in zip(outs["cuda"], outs["cpu"]):
        close(c, r.double(), rel, msg=f"seed={seed}")
