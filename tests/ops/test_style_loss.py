"""style_loss (fused) and content_loss: against the float64 references in
tests/ops/reference_gram.py, both normalizations and every reduction, the PyTorch tutorial's
values, gradients with an incoming gradient that is not 1 (features and target), gradcheck,
opcheck, torch.compile, the fallback, bad input and CUDA."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from fastmtl import ops
from tests.ops.reference_gram import content_ref, gram_ref, style_ref
from tests.utils import (
    DEVICES,
    DISPATCH_DEVICES,
    FLOAT_DTYPES,
    HALF_DTYPES,
    assert_close,
    compiled_only,
    cuda,
)

style_module = importlib.import_module("fastmtl.ops.style")

NORMS = ("gatys", "mse")
REDUCE = {"none": lambda t: t, "sum": torch.sum, "mean": torch.mean}
# relative to the magnitude of the reference; half types compute in float32 from rounded inputs
REL = {torch.float64: 1e-11, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
GRAD_REL = {torch.float64: 1e-11, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# the smallest float16 subnormal: seed-normalized gradients of half features can be that small
GRAD_FLOOR = {torch.float16: 6e-8}


def acc(dtype):
    return torch.float32 if dtype in HALF_DTYPES else dtype


def make(
    shape, gen, dtype=torch.float32, device="cpu", layout="contiguous", target_batch=False, norm="gatys"
):
    """Features and a target Gram matrix of the right normalization (from other random features)."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    style = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = gram_ref(style, normalize=norm == "mse")
    if not target_batch:
        t = t[0]
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, t.to(device=device, dtype=dtype)


def close(actual, expected, rel, floor=0.0, msg=""):
    scale = expected.abs().max().item() if expected.numel() else 1.0
    assert_close(actual.cpu(), expected, rtol=rel, atol=rel * scale + floor, msg=msg)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (2, 97, 3, 4)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(device, norm, dtype, shape, layout, gen, seed):
    for target_batch in (False, True):
        x, t = make(shape, gen, dtype, device, layout, target_batch, norm)
        per_sample = style_ref(x, t, norm)  # on the rounded inputs: only the arithmetic counts
        for reduction, reduce in REDUCE.items():
            got = ops.style_loss(x, t, normalization=norm, reduction=reduction)
            assert got.dtype == acc(dtype) and got.device == x.device
            close(got, reduce(per_sample), REL[dtype], msg=f"{reduction} batch={target_batch} seed={seed}")


def test_seed_formula_by_hand():
    # one channel, one position, value 2: G = 4; J = (4 - T)^2 / (2 * 1 * 1)^2
    x = torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)
    assert ops.style_loss(x, torch.zeros(1, 1, dtype=torch.float64)).item() == 4.0
    assert ops.style_loss(x, torch.ones(1, 1, dtype=torch.float64)).item() == 9 / 4
    assert ops.style_loss(x, torch.zeros(1, 1, dtype=torch.float64), normalization="mse").item() == 16.0
    # two channels (1, 2) and (3, 4) over 2 positions: G = [[5, 11], [11, 25]], against 0:
    # (25 + 121 + 121 + 625) / (2 * 2 * 2)^2
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).reshape(1, 2, 1, 2)
    assert ops.style_loss(x, torch.zeros(2, 2, dtype=torch.float64)).item() == pytest.approx(892 / 64)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_mse_is_the_tutorial_loss(layout, gen, seed):
    """normalization="mse" is the PyTorch tutorial's gram_matrix + F.mse_loss for one image."""

    def tutorial_gram(t):
        a, b, c, d = t.size()
        f = t.reshape(a * b, c * d)
        return torch.mm(f, f.t()).div(a * b * c * d)

    x = torch.randn(1, 8, 6, 5, generator=gen, dtype=torch.float64)
    style = torch.randn(1, 8, 6, 5, generator=gen, dtype=torch.float64)
    target = tutorial_gram(style).detach()
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    x.requires_grad_()
    want = F.mse_loss(tutorial_gram(x), target)
    got = ops.style_loss(x, ops.gram_matrix(style), normalization="mse")
    assert_close(got, want, rtol=1e-12, atol=0, msg=f"seed={seed}")
    assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0], rtol=1e-11, atol=1e-16)


def test_seed_target_is_the_unnormalized_gram(gen):
    x = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    assert ops.style_loss(x, ops.gram_matrix(x, normalize=False)).item() == pytest.approx(0, abs=1e-20)
    assert ops.style_loss(x, ops.gram_matrix(x), normalization="mse").item() == pytest.approx(0, abs=1e-28)
    assert ops.style_loss(x, ops.gram_matrix(x)).item() > 0  # the wrong target for "gatys"


@pytest.mark.parametrize("shape", [(0, 3, 2, 2), (2, 0, 2, 2), (2, 3, 0, 5), (1, 1, 1, 1)])
@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_tiny(shape, device, gen):
    n, c = shape[:2]
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    t = torch.randn(c, c, generator=gen, dtype=torch.float64).to(device)
    for norm in NORMS:
        per = ops.style_loss(x, t, normalization=norm, reduction="none")
        assert per.shape == (n,)
        assert_close(per.detach().cpu(), style_ref(x.detach(), t, norm), rtol=1e-12, atol=1e-15)
        loss = ops.style_loss(x, t, normalization=norm)
        assert loss.shape == () and (n > 0 or loss.item() == 0.0)
        (g,) = torch.autograd.grad(loss, x)
        assert g.shape == shape and (x.numel() > 0 or g.numel() == 0)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("target_batch", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck(norm, layout, target_batch, gen, seed):
    x, t = make((2, 3, 3, 2), gen, torch.float64, layout=layout, target_batch=target_batch, norm=norm)
    x.requires_grad_()
    t = (t + 0.1 * torch.randn(t.shape, generator=gen, dtype=torch.float64)).requires_grad_()  # not symmetric
    for reduction in REDUCE:
        fn = lambda a, b, r=reduction: ops.style_loss(a, b, normalization=norm, reduction=r)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, t)), f"{reduction} seed={seed}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_matches_reference(device, norm, dtype, layout, gen, seed):
    """Per-sample losses weighted by an incoming gradient that is not 1; features and target."""
    x, t = make((3, 70, 4, 3), gen, dtype, device, layout, target_batch=False, norm=norm)
    t = t.to(acc(dtype))  # a float32 target for half features is allowed
    x.requires_grad_()
    t.requires_grad_()
    w = torch.randn(3, generator=gen, dtype=torch.float64)
    loss = ops.style_loss(x, t, normalization=norm, reduction="none")
    gx, gt = torch.autograd.grad(loss, (x, t), w.to(device, loss.dtype))
    assert gx.dtype == dtype and gx.stride() == x.stride() and gt.dtype == t.dtype
    rx = x.detach().cpu().double().requires_grad_()
    rt = t.detach().cpu().double().requires_grad_()
    wx, wt = torch.autograd.grad((style_ref(rx, rt, norm) * w).sum(), (rx, rt))
    close(gx, wx, GRAD_REL[dtype], GRAD_FLOOR.get(dtype, 0.0), msg=f"features seed={seed}")
    close(gt, wt, GRAD_REL[acc(dtype)], msg=f"target seed={seed}")


def test_gradient_of_mean_and_sum(gen):
    x, t = make((4, 6, 3, 3), gen, torch.float64)
    x.requires_grad_()
    (g_sum,) = torch.autograd.grad(ops.style_loss(x, t, reduction="sum") * 3.0, x)
    (g_mean,) = torch.autograd.grad(ops.style_loss(x, t, reduction="mean"), x)
    want = g_mean * 12.0
    # entries near zero by cancellation carry the rounding of the whole gradient's scale
    assert_close(g_sum, want, rtol=1e-13, atol=1e-13 * want.abs().max().item())


def test_double_backward_is_refused(gen):
    if not style_module.has_compiled_ops():
        pytest.skip("the fallback is plain autograd")
    x, t = make((1, 3, 2, 2), gen, torch.float64)
    x.requires_grad_()
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(ops.style_loss(x, t), x, create_graph=True)


# --------------------------------------------------------------------------- content loss


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_content_loss(norm, dtype, gen, seed):
    x = torch.randn(3, 4, 5, 6, generator=gen).to(dtype).requires_grad_()
    for target in (torch.randn(3, 4, 5, 6, generator=gen), torch.randn(4, 5, 6, generator=gen)):
        target = target.to(dtype)
        per = content_ref(x.detach(), target.expand_as(x), norm)
        for reduction, reduce in REDUCE.items():
            got = ops.content_loss(x, target, normalization=norm, reduction=reduction)
            assert got.dtype == acc(dtype)
            close(got.detach(), reduce(per), 1e-5, msg=f"seed={seed}")
    if norm == "mse":
        t = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
        xd = x.detach().double()
        assert_close(ops.content_loss(xd, t, normalization="mse"), F.mse_loss(xd, t), rtol=1e-13, atol=0)
    # 1/2 ||a_C - a_G||^2: gradient a_G - a_C, times the incoming gradient
    x64 = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    c64 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad(ops.content_loss(x64, c64, reduction="sum") * 2.5, x64)
    assert_close(g, 2.5 * (x64.detach() - c64), rtol=1e-14, atol=1e-15)


def test_content_loss_bad_input():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="target"):
        ops.content_loss(x, torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="features"):
        ops.content_loss(torch.rand(5), torch.rand(5))
    with pytest.raises(ValueError, match="features"):
        ops.content_loss(x.int(), x)
    with pytest.raises(ValueError, match="target"):
        ops.content_loss(x, x.int())
    with pytest.raises(ValueError, match="target"):
        ops.content_loss(x, x.to("meta"))
    with pytest.raises(TypeError, match="target"):
        ops.content_loss(x, None)
    with pytest.raises(ValueError, match="normalization"):
        ops.content_loss(x, x, normalization="l2")
    with pytest.raises(ValueError, match="reduction"):
        ops.content_loss(x, x, reduction="avg")


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    x = torch.rand(2, 3, 4, 4)
    t = torch.rand(3, 3)
    with pytest.raises(ValueError, match="features"):
        ops.style_loss(x[0], t)
    with pytest.raises(ValueError, match="features"):
        ops.style_loss(x.long(), t)
    for bad in (torch.rand(3, 4), torch.rand(3), torch.rand(3, 3, 3), torch.rand(1, 2, 3, 3)):
        with pytest.raises(ValueError, match="target_gram"):
            ops.style_loss(x, bad)
    with pytest.raises(ValueError, match="target_gram"):
        ops.style_loss(x, t.double())
    with pytest.raises(ValueError, match="target_gram"):
        ops.style_loss(x.double(), t)
    with pytest.raises(ValueError, match="target_gram"):
        ops.style_loss(x.half(), t.bfloat16())
    ops.style_loss(x.half(), t)  # a float32 target for half features is fine
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="target_gram.*device"):
        ops.style_loss(x, t.to(other))
    with pytest.raises(TypeError, match="target_gram"):
        ops.style_loss(x, t.tolist())
    with pytest.raises(ValueError, match="normalization"):
        ops.style_loss(x, t, normalization="tutorial")
    with pytest.raises(ValueError, match="reduction"):
        ops.style_loss(x, t, reduction="avg")
    # normalization is positional too (TorchScript has no keyword-only arguments)
    torch.testing.assert_close(ops.style_loss(x, t, "mse"), ops.style_loss(x, t, normalization="mse"))


@compiled_only
def test_dispatcher_ops_check_their_arguments():
    x = torch.rand(2, 3, 4, 4)
    t = torch.rand(3, 3)
    with pytest.raises(RuntimeError, match="target_gram"):
        torch.ops.fastmtl.style_loss(x, torch.rand(2, 2), "gatys")
    with pytest.raises(RuntimeError, match="target_gram"):
        torch.ops.fastmtl.style_loss(x, t.double(), "gatys")
    with pytest.raises(RuntimeError, match="Invalid normalization 'seed': expected 'gatys' or 'mse'"):
        torch.ops.fastmtl.style_loss(x, t, "seed")
    with pytest.raises(RuntimeError, match="normalization"):  # no integer codes
        torch.ops.fastmtl.style_loss(x, t, 1)
    with pytest.raises(RuntimeError, match="Invalid normalization 'MSE'"):
        torch.ops.fastmtl._style_loss_backward(torch.rand(2), torch.rand(2, 3, 3), x, "MSE")
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.fastmtl._style_loss_backward(torch.rand(3), torch.rand(2, 3, 3), x, "gatys")
    with pytest.raises(RuntimeError, match="diff"):
        torch.ops.fastmtl._style_loss_backward(torch.rand(2), torch.rand(2, 3, 4), x, "gatys")


# --------------------------------------------------------------------------- dispatcher


@compiled_only
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("device", DISPATCH_DEVICES)
def test_opcheck(device, dtype, layout, gen):
    grad = dtype == torch.float64
    for target_batch, norm in ((False, "gatys"), (True, "mse")):
        x, t = make((2, 5, 3, 4), gen, dtype, device, layout, target_batch, norm)
        args = (x.requires_grad_(grad), t.requires_grad_(grad), norm)
        torch.library.opcheck(torch.ops.fastmtl.style_loss.default, args)
    a = acc(dtype)
    g = torch.randn(2, generator=gen).to(device, a)
    d = torch.randn(2, 5, 5, generator=gen).to(device, a)
    torch.library.opcheck(torch.ops.fastmtl._style_loss_backward.default, (g, d, x.detach(), "mse"))


@compiled_only
def test_opcheck_empty():
    for shape in [(0, 3, 2, 2), (2, 3, 0, 2), (2, 0, 2, 2)]:
        x = torch.rand(shape, dtype=torch.float64)
        t = torch.rand(shape[1], shape[1], dtype=torch.float64)
        torch.library.opcheck(torch.ops.fastmtl.style_loss.default, (x, t, "gatys"))


@pytest.mark.compile
@pytest.mark.parametrize("norm", NORMS)
def test_compile_forward_backward(norm, gen):
    torch._dynamo.reset()
    x, t = make((2, 6, 5, 3), gen, norm=norm)
    x.requires_grad_()

    def fn(a, b):
        return ops.style_loss(a, b, normalization=norm) + 0.5 * ops.content_loss(a, b.sum() * a.detach())

    compiled = torch.compile(fn, fullgraph=True)
    out, eager = compiled(x, t), fn(x, t)
    # Inductor may sum the content loss in another order: float32 rounding, not exact equality.
    assert_close(out, eager, rtol=1e-5, atol=1e-7)
    assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(eager, x)[0], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- fallback


@compiled_only
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_fallback_matches_compiled(norm, dtype, gen, seed, monkeypatch):
    x, t = make((2, 9, 4, 3), gen, dtype, layout="channels_last", target_batch=True, norm=norm)
    w = torch.randn(2, generator=gen).to(acc(dtype))

    def run():
        a, b = x.clone().requires_grad_(), t.clone().requires_grad_()
        loss = ops.style_loss(a, b, normalization=norm, reduction="none")
        return (loss.detach(), *torch.autograd.grad(loss, (a, b), w))

    compiled = run()
    monkeypatch.setattr(style_module, "use_compiled", lambda *tensors: False)
    reference = run()
    for c, r, name in zip(compiled, reference, ("loss", "grad features", "grad target")):
        assert c.dtype == r.dtype and c.shape == r.shape, name
        close(c, r.double(), GRAD_REL[dtype], GRAD_FLOOR.get(dtype, 0.0), msg=f"{name} seed={seed}")


def test_fallback_matches_reference(gen, monkeypatch):
    monkeypatch.setattr(style_module, "use_compiled", lambda *tensors: False)
    for norm in NORMS:
        x, t = make((3, 4, 2, 5), gen, torch.float64, norm=norm)
        got = ops.style_loss(x, t, normalization=norm, reduction="none")
        assert_close(got, style_ref(x, t, norm), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- CUDA


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_cpu_and_cuda_agree(norm, dtype, layout, gen, seed):
    x, t = make((3, 200, 9, 7), gen, dtype, layout=layout, target_batch=True, norm=norm)
    w = torch.randn(3, generator=gen)
    outs = {}
    for device in ("cpu", "cuda"):
        a = x.to(device).requires_grad_()
        loss = ops.style_loss(a, t.to(device), normalization=norm, reduction="none")
        outs[device] = (loss.detach().cpu(), torch.autograd.grad(loss, a, w.to(device, loss.dtype))[0].cpu())
    # TF32 may be on for CUDA float32 matmuls, and half products round differently.
    rel = 1e-2 if dtype != torch.float64 else 1e-10
    for c, r in zip(outs["cuda"], outs["cpu"]):
        close(c, r.double(), rel, GRAD_FLOOR.get(dtype, 0.0), msg=f"seed={seed}")
