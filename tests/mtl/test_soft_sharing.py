"""Soft parameter sharing with two different encoders: shapes and gradients, identity combinations
give independent networks, a learned combination equals running each task with the hand-mixed
weights, the l2 penalty equals its hand computation, and bad arguments."""

import copy

import pytest
import torch
from torch import nn

from fastmtl.mtl.soft_sharing import SoftSharing
from tests.mtl._stages import heads, mobilenet_stages, small_stages


def _small_stages():
    return small_stages(8, stride=2, batchnorm=True)


def _alone(net, i, x):
    for stage in net.columns[i]:
        x = stage(x)
    return net.heads[net.tasks[i]](x)


@pytest.mark.parametrize("tie, per", [("combination", "stage"), ("combination", "tensor"), ("l2", "stage")])
@pytest.mark.parametrize("stages, channels", [(_small_stages, 8), (mobilenet_stages, 32)])
def test_shapes_and_gradients_with_two_encoders(stages, channels, tie, per, gen):
    net = SoftSharing(stages, heads(channels), tie=tie, per=per, self_weight=0.8)
    with torch.no_grad():  # BN biases start at 0 in every task: their mixing weights would get 0
        for p in net.columns.parameters():
            p.add_(torch.randn(p.shape, generator=gen), alpha=0.01)
    x = torch.randn(2, 3, 33, 31, generator=gen)  # odd sizes
    out = net(x)
    assert out["cls"].shape == (2, 3) and out["seg"].shape[:2] == (2, 5)
    (out["seg"].square().mean() + out["cls"].square().mean() + net.penalty()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if tie == "combination":
        count = sum(len(list(s.parameters())) for s in net.columns[0]) if per == "tensor" else 2
        assert len(list(net.combinations.parameters())) == count


def test_identity_combination_is_independent_networks(gen):
    net = SoftSharing(_small_stages, heads(8), per="tensor").eval()
    torch.testing.assert_close(net.combinations[0][0].data, torch.eye(2))
    x = torch.randn(2, 3, 16, 16, generator=gen)
    out = net(x)
    for i, task in enumerate(net.tasks):
        torch.testing.assert_close(out[task], _alone(net, i, x))
    assert net.penalty().item() == 0.0  # combination mode adds nothing


@pytest.mark.parametrize("per", ["stage", "tensor"])
def test_combination_runs_the_hand_mixed_weights(per, gen):
    net = SoftSharing(_small_stages, {t: nn.Flatten() for t in "abc"}, per=per).eval()
    for alphas in net.combinations:
        for a in alphas:
            a.data = torch.rand(3, 3, generator=gen)
    for column in net.columns:  # BN statistics of each task's own, used as they are
        column[0][1].running_mean.normal_(generator=gen)
    x = torch.randn(2, 3, 9, 11, generator=gen)
    out = net(x)
    for i, task in enumerate(net.tasks):
        mixed = nn.Sequential(*copy.deepcopy(net.columns[i]))
        for k, stage in enumerate(mixed):
            params = [dict(c[k].named_parameters()) for c in net.columns]
            for n, (name, p) in enumerate(stage.named_parameters()):
                a = net.combinations[k][n if per == "tensor" else 0]
                p.data = sum(a[i, j] * params[j][name] for j in range(3)).detach()
        torch.testing.assert_close(out[task], mixed(x).flatten(1))


def test_l2_penalty_by_hand(gen):
    net = SoftSharing(_small_stages, {t: nn.Identity() for t in "abc"}, tie="l2", l2_weight=0.3)
    assert not hasattr(net, "combinations")
    expected = 0.0
    for k in range(2):
        for name, _ in net.columns[0][k].named_parameters():
            thetas = [dict(c[k].named_parameters())[name].detach().double() for c in net.columns]
            mean = sum(thetas) / 3
            expected += sum(((t - mean) ** 2).sum() for t in thetas)
    torch.testing.assert_close(net.penalty().double(), 0.3 * expected, rtol=1e-5, atol=1e-6)  # float32 sums
    net.penalty().backward()  # d/d theta_s = 2 l2_weight (theta_s - mean): the deviations sum to 0
    weights = [c[0][0].weight for c in net.columns]
    mean = sum(w.detach() for w in weights) / 3
    for w in weights:
        torch.testing.assert_close(w.grad, 0.6 * (w.detach() - mean))
    x = torch.randn(1, 3, 8, 8, generator=gen)
    out = net(x)  # l2 mode: plain independent networks
    for i, task in enumerate(net.tasks):
        torch.testing.assert_close(out[task], _alone(net, i, x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="tie"):
        SoftSharing(_small_stages, heads(8), tie="mean")
    with pytest.raises(ValueError, match="per"):
        SoftSharing(_small_stages, heads(8), per="layer")
    with pytest.raises(ValueError, match="self_weight"):
        SoftSharing(_small_stages, heads(8), self_weight=1.5)
    with pytest.raises(ValueError, match="l2_weight"):
        SoftSharing(_small_stages, heads(8), tie="l2", l2_weight=-1.0)
    with pytest.raises(ValueError, match="heads"):
        SoftSharing(_small_stages, {})
    with pytest.raises(ValueError, match="make_stages"):
        SoftSharing(list, heads(8))
    widths = iter([8, 4])
    with pytest.raises(ValueError, match="make_stages"):
        SoftSharing(lambda: [nn.Conv2d(3, next(widths), 1)], heads(8))
