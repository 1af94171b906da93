"""PAD-Net with two different encoders: shapes on odd input sizes, intermediate predictions for deep
supervision (an auxiliary task included), gradients reach every parameter, the distillation equals
its hand formula, the representation split, and bad arguments."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.mtl import representation_backward
from fastmtl.mtl.padnet import PADNet


def _small_encoder():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())


def _mobilenet_encoder():
    from torchvision.models import mobilenet_v2

    return mobilenet_v2().features[:7]  # stride 8, 32 channels


def _net(encoder, channels, width=None):
    w = width or channels
    final = {"seg": nn.Conv2d(w, 5, 1), "depth": nn.Conv2d(w, 1, 1)}
    return PADNet(encoder, channels, {"seg": 5, "depth": 1, "normals": 3}, final, width=width)


@pytest.mark.parametrize("encoder, channels, stride", [(_small_encoder, 8, 2), (_mobilenet_encoder, 32, 8)])
def test_shapes_and_gradients_with_two_encoders(encoder, channels, stride, gen):
    net = _net(encoder(), channels, width=6)
    x = torch.randn(2, 3, 33, 27, generator=gen)  # odd sizes
    final, inter = net(x, return_intermediate=True)
    size = (-(-33 // stride), -(-27 // stride))
    assert set(final) == {"seg", "depth"} and set(inter) == {"seg", "depth", "normals"}
    assert final["seg"].shape == (2, 5, *size) and final["depth"].shape == (2, 1, *size)
    assert inter["normals"].shape == (2, 3, *size)
    assert set(net(x)) == {"seg", "depth"}  # the plain call: finals only
    loss = sum(p.square().mean() for p in [*final.values(), *inter.values()])  # deep supervision
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_distillation_by_hand(gen):
    net = _net(_small_encoder(), 8).eval()
    x = torch.randn(2, 3, 15, 17, generator=gen)
    z = net.shared(x)
    feats = {t: block(z) for t, block in net.task_features.items()}

    def conv(m, y):
        return F.conv2d(y, m.weight, m.bias, padding=1)

    for t in ("seg", "depth"):
        gate = torch.sigmoid(conv(net.gates[t], feats[t]))
        expected = feats[t] + sum(gate * conv(net.messages[t][k], feats[k]) for k in feats if k != t)
        torch.testing.assert_close(net.distill(feats)[t], expected)
        torch.testing.assert_close(net(x)[t], net.final_heads[t](expected))
    assert set(net.messages["seg"]) == {"depth", "normals"}


def test_representation_split(gen):
    net = _net(_small_encoder(), 8)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    (final, inter), z, zd = net(x, return_intermediate=True, representation=True)
    assert zd.is_leaf and torch.allclose(z, net.shared(x))
    losses = {t: final[t].square().mean() + inter[t].square().mean() for t in final}
    losses["normals"] = inter["normals"].square().mean()
    representation_backward(losses, z, zd, "mgda")
    assert all(p.grad is not None for p in net.parameters())
    assert {id(p) for p in net.shared_parameters()} == {id(p) for p in net.encoder.parameters()}


def test_bad_arguments():
    heads = {"seg": nn.Identity()}
    with pytest.raises(ValueError, match="intermediate"):
        PADNet(_small_encoder(), 8, {"seg": 5}, heads)
    with pytest.raises(ValueError, match="intermediate"):
        PADNet(_small_encoder(), 8, {"seg": 5, "depth": 0}, heads)
    with pytest.raises(ValueError, match="final_heads"):
        PADNet(_small_encoder(), 8, {"seg": 5, "depth": 1}, {"normals": nn.Identity()})
    with pytest.raises(ValueError, match="final_heads"):
        PADNet(_small_encoder(), 8, {"seg": 5, "depth": 1}, {})
    with pytest.raises(ValueError, match="channels"):
        PADNet(_small_encoder(), 0, {"seg": 5, "depth": 1}, heads)
    with pytest.raises(ValueError, match="width"):
        PADNet(_small_encoder(), 8, {"seg": 5, "depth": 1}, heads, width=-2)
