"""Hard sharing and cross-stitch networks with two different encoders: shapes, the stitch's
mixing (identity stitches give independent networks), gradients, and the representation split."""

import pytest
import torch
from torch import nn

from fastmtl.mtl import CrossStitch, HardSharing, representation_backward


def _small_stages():
    return [
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
    ]


def _mobilenet_stages():
    from torchvision.models import mobilenet_v2

    features = mobilenet_v2().features
    return [features[:4], features[4:7]]  # strides 4 and 8, 24 and 32 channels


def _heads(channels):
    return {
        "seg": nn.Conv2d(channels, 5, 1),
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)),
    }


@pytest.mark.parametrize("stages, channels", [(_small_stages, 8), (_mobilenet_stages, 32)])
def test_cross_stitch_with_two_encoders(stages, channels, gen):
    net = CrossStitch(stages, _heads(channels))
    x = torch.randn(2, 3, 32, 32, generator=gen)
    out = net(x)
    assert out["cls"].shape == (2, 3) and out["seg"].shape[:2] == (2, 5)
    torch.testing.assert_close(net.stitches[0].data, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    (out["seg"].mean() + out["cls"].mean()).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in net.stitches)


def test_identity_stitches_are_independent_networks(gen):
    net = CrossStitch(_small_stages, _heads(8), self_weight=1.0).eval()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    out = net(x)
    for i, task in enumerate(net.tasks):
        alone = x
        for stage in net.columns[i]:
            alone = stage(alone)
        torch.testing.assert_close(out[task], net.heads[task](alone))
    with pytest.raises(ValueError, match="self_weight"):
        CrossStitch(_small_stages, _heads(8), self_weight=1.5)


@pytest.mark.parametrize(
    "encoder, channels",
    [(lambda: nn.Sequential(*_small_stages()), 8), (lambda: nn.Sequential(*_mobilenet_stages()), 32)],
)
def test_hard_sharing_and_the_representation_split(encoder, channels, gen):
    net = HardSharing(encoder(), _heads(channels))
    x = torch.randn(2, 3, 32, 32, generator=gen)
    out = net(x)
    assert set(out) == {"seg", "cls"}
    z = net.shared(x)
    zd = z.detach().requires_grad_()
    heads = net.heads_forward(zd)
    losses = {"seg": heads["seg"].square().mean(), "cls": heads["cls"].square().mean()}
    representation_backward(losses, z, zd, "mgda")
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="heads"):
        HardSharing(encoder(), {})
