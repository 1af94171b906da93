"""StyleLoss and ContentLoss modules: the target is captured once, as a buffer, and the
modules give the functional losses."""

import pytest
import torch

from fastmtl import losses, ops
from tests.ops.reference_gram import gram_ref, style_ref
from tests.utils import assert_close


@pytest.mark.parametrize("norm", ["gatys", "mse"])
def test_style_loss_module_captures_the_target_gram(norm, gen, seed):
    style = torch.randn(1, 6, 5, 4, generator=gen, dtype=torch.float64)
    module = losses.StyleLoss(style, normalization=norm)
    assert module.target_gram.shape == (6, 6) and not module.target_gram.requires_grad
    assert "target_gram" in module.state_dict()
    assert_close(module.target_gram, gram_ref(style, normalize=norm == "mse")[0], rtol=1e-12, atol=1e-14)
    style.add_(1.0)  # later changes to the style features do not move the target
    x = torch.randn(3, 6, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    got = module(x)
    assert_close(
        got, style_ref(x.detach(), module.target_gram, norm).mean(), rtol=1e-11, atol=0, msg=f"seed={seed}"
    )
    w = 0.7  # an incoming gradient that is not 1
    (g,) = torch.autograd.grad(got * w, x)
    r = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(style_ref(r, module.target_gram, norm).mean() * w, r)
    assert_close(g, want, rtol=1e-10, atol=1e-13 * want.abs().max().item())
    assert norm in repr(module)


def test_style_loss_module_shapes_and_dtypes(gen):
    # [C, H, W] target features; a batch of targets; half features keep a float32 target
    m = losses.StyleLoss(torch.randn(4, 3, 3, generator=gen))
    assert m.target_gram.shape == (4, 4)
    m = losses.StyleLoss(torch.randn(2, 4, 3, 3, generator=gen), reduction="none")
    assert m.target_gram.shape == (2, 4, 4)
    assert m(torch.randn(2, 4, 3, 3, generator=gen)).shape == (2,)
    half = losses.StyleLoss(torch.randn(1, 4, 3, 3, generator=gen).half())
    assert half.target_gram.dtype == torch.float32
    out = half(torch.randn(2, 4, 3, 3, generator=gen).half())
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert m.double().target_gram.dtype == torch.float64
    with pytest.raises(ValueError, match="normalization"):
        losses.StyleLoss(torch.randn(1, 4, 3, 3), normalization="gram")
    with pytest.raises(ValueError, match="target_features"):
        losses.StyleLoss(torch.randn(4, 3))
    with pytest.raises(ValueError, match="target_gram"):
        m(torch.randn(3, 4, 3, 3))  # 3 samples against 2 targets


@pytest.mark.parametrize("norm", ["gatys", "mse"])
def test_content_loss_module(norm, gen):
    target = torch.randn(2, 3, 4, 4, generator=gen)
    module = losses.ContentLoss(target, normalization=norm, reduction="sum")
    x = torch.randn(2, 3, 4, 4, generator=gen)
    assert_close(module(x), ops.content_loss(x, target, normalization=norm, reduction="sum"), rtol=0, atol=0)
    target.zero_()  # the module holds its own copy
    assert module(x).item() > 0
    with pytest.raises(ValueError, match="target"):
        losses.ContentLoss(torch.ones(3, dtype=torch.int64))
