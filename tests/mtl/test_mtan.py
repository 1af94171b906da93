"""MTAN with two different backbones: shapes on odd input sizes, gradients reach every parameter,
the attention masks equal a hand computation for the first two stages and lie in (0, 1), the dry
forward leaves BatchNorm statistics alone, and bad arguments."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.mtl.mtan import MTAN
from tests.mtl._stages import heads, mobilenet_stages, small_stages


def _small_stages():
    return small_stages(16, stride=2, batchnorm=True)


def _randomize_bn(net, gen):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _mask_by_hand(g, x):
    """sigmoid(BN(conv1x1(ReLU(BN(conv1x1(x)))))) in eval mode, from the raw weights."""
    conv1, bn1, _, conv2, bn2, _ = g

    def bn(m, y):
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    return torch.sigmoid(bn(bn2, F.conv2d(torch.relu(bn(bn1, F.conv2d(x, conv1.weight))), conv2.weight)))


@pytest.mark.parametrize("stages, channels", [(_small_stages, [8, 16]), (mobilenet_stages, [24, 32])])
def test_shapes_and_gradients_with_two_backbones(stages, channels, gen):
    net = MTAN(stages(), heads(channels[-1]))
    assert net.channels == channels
    x = torch.randn(2, 3, 35, 29, generator=gen)  # odd sizes
    out, masks = net(x, return_masks=True)
    assert out["cls"].shape == (2, 3) and out["seg"].shape[:2] == (2, 5)
    for task in net.tasks:
        assert [m.shape[1] for m in masks[task]] == channels
        assert all(((m > 0) & (m < 1)).all() for m in masks[task])
    (out["seg"].square().mean() + out["cls"].square().mean()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_masks_by_hand(gen):
    net = MTAN(_small_stages(), heads(16))
    _randomize_bn(net, gen)
    net.eval()
    x = torch.randn(2, 3, 13, 11, generator=gen)
    out, masks = net(x, return_masks=True)
    s0 = net.stages[0](x)
    s1 = net.stages[1](s0)
    for task in net.tasks:
        att, block = net.attention[task], net.blocks[task]
        m0 = _mask_by_hand(att[0], s0)
        torch.testing.assert_close(masks[task][0], m0)
        prev = F.adaptive_avg_pool2d(block[0](m0 * s0), s1.shape[-2:])  # 13x11 -> 7x6
        m1 = _mask_by_hand(att[1], torch.cat((s1, prev), 1))
        torch.testing.assert_close(masks[task][1], m1)
        torch.testing.assert_close(out[task], net.heads[task](m1 * s1))


def test_dry_forward_keeps_batchnorm_statistics_and_takes_a_sample(gen):
    stages = [nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))]
    before = stages[0][1].running_mean.clone()
    net = MTAN(
        stages, {"a": nn.Identity(), "b": nn.Identity()}, sample=torch.randn(1, 1, 9, 9, generator=gen)
    )
    torch.testing.assert_close(stages[0][1].running_mean, before)
    assert net.training and stages[0].training and net.channels == [4]
    out = net(torch.randn(2, 1, 7, 5, generator=gen))
    assert out["a"].shape == (2, 4, 5, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="heads"):
        MTAN(_small_stages(), {})
    with pytest.raises(ValueError, match="stages"):
        MTAN([], heads(8))
    with pytest.raises(ValueError, match="stages"):
        MTAN([nn.Flatten()], heads(8))  # not a feature map
    with pytest.raises(ValueError, match="sample"):
        MTAN(_small_stages(), heads(16), sample=torch.zeros(3, 8, 8))
