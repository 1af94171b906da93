"""Hard sharing and cross-stitch networks with two different encoders: shapes, the stitch's
mixing (identity stitches give independent networks), gradients, and the representation split."""

import pytest
import torch
from torch import nn

from fastmtl.mtl import CrossStitch, HardSharing, representation_backward
from tests.mtl._stages import heads, mobilenet_stages, small_stages


def _small_stages():
    return small_stages()


@pytest.mark.parametrize("stages, channels", [(_small_stages, 8), (mobilenet_stages, 32)])
def test_cross_stitch_with_two_encoders(stages, channels, gen):
    net = CrossStitch(stages, heads(channels))
    x = torch.randn(2, 3, 32, 32, generator=gen)
    out = net(x)
    assert out["cls"].shape == (2, 3) and out["seg"].shape[:2] == (2, 5)
    torch.testing.assert_close(net.stitches[0].data, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    (out["seg"].mean() + out["cls"].mean()).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in net.stitches)


def test_identity_stitches_are_independent_networks(gen):
    net = CrossStitch(_small_stages, heads(8), self_weight=1.0).eval()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    out = net(x)
    for i, task in enumerate(net.tasks):
        alone = x
        for stage in net.columns[i]:
            alone = stage(alone)
        torch.testing.assert_close(out[task], net.heads[task](alone))
    with pytest.raises(ValueError, match="self_weight"):
        CrossStitch(_small_stages, heads(8), self_weight=1.5)


@pytest.mark.parametrize(
    "encoder, channels",
    [(lambda: nn.Sequential(*_small_stages()), 8), (lambda: nn.Sequential(*mobilenet_stages()), 32)],
)
def test_hard_sharing_and_the_representation_split(encoder, channels, gen):
    net = HardSharing(encoder(), heads(channels))
    x = torch.randn(2, 3, 32, 32, generator=gen)
    out = net(x)
    assert set(out) == {"seg", "cls"}
    z = net.shared(x)
    zd = z.detach().requires_grad_()
    outs = net.heads_forward(zd)
    losses = {"seg": outs["seg"].square().mean(), "cls": outs["cls"].square().mean()}
    representation_backward(losses, z, zd, "mgda")
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="heads"):
        HardSharing(encoder(), {})
