"""Task-balancing strategies: each one's weights equal a hand computation on fixed loss
sequences; uncertainty weighting learns a larger variance for the noisier task; the stateful ones
(DWA, GradNorm, DTP) continue identically after a weights-only checkpoint; bad input."""

import io
import math

import pytest
import torch
from torch import nn

from fastmtl.mtl import DTP, DWA, FixedWeighting, GradNorm, UncertaintyWeighting, lr_multiplier_groups


def _losses(**values):
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}


def test_fixed_equals_the_weighted_sum():
    w = FixedWeighting({"seg": 1.0, "depth": 0.25})
    losses = _losses(seg=2.0, depth=8.0)
    total = w(losses)
    assert float(total.detach()) == 2.0 + 0.25 * 8.0
    total.backward()
    assert float(losses["depth"].grad) == 0.25 and w.weights.tolist() == [1.0, 0.25]
    with pytest.raises(ValueError, match="tasks"):
        w(_losses(seg=1.0))
    with pytest.raises(ValueError, match="finite"):
        FixedWeighting({"seg": -1.0})
    with pytest.raises(ValueError, match="scalar"):
        w({"seg": torch.ones(2), "depth": torch.tensor(1.0)})


def test_uncertainty_equals_kendalls_formula():
    w = UncertaintyWeighting({"seg": "classification", "depth": "regression"})
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.3, -0.7]))
    losses = _losses(seg=1.5, depth=4.0)
    sigma2 = torch.tensor([0.3, -0.7], dtype=torch.float64).exp()
    expected = 1.5 / sigma2[0] + 0.5 * math.log(sigma2[0]) + 4.0 / (2 * sigma2[1]) + 0.5 * math.log(sigma2[1])
    total = w(losses)
    torch.testing.assert_close(total, expected.to(total.dtype))
    total.backward()
    # d/ds of exp(-s) c L + s / 2 is -exp(-s) c L + 1/2
    torch.testing.assert_close(
        w.log_vars.grad.double(), torch.tensor([-1.5 / sigma2[0] + 0.5, -2.0 / sigma2[1] + 0.5])
    )
    with pytest.raises(ValueError, match="kinds"):
        UncertaintyWeighting({"seg": "ranking"})


def test_uncertainty_learns_the_noisier_task_has_more_variance(gen):
    x = torch.randn(512, 4, generator=gen)
    clean = x @ torch.randn(4, 1, generator=gen) + 0.1 * torch.randn(512, 1, generator=gen)
    noisy = x @ torch.randn(4, 1, generator=gen) + 1.0 * torch.randn(512, 1, generator=gen)
    model = nn.Linear(4, 2)
    weighting = UncertaintyWeighting({"clean": "regression", "noisy": "regression"})
    opt = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.05)
    for _ in range(400):
        out = model(x)
        losses = {"clean": ((out[:, :1] - clean) ** 2).mean(), "noisy": ((out[:, 1:] - noisy) ** 2).mean()}
        opt.zero_grad()
        weighting(losses).backward()
        opt.step()
    var = weighting.log_vars.detach().exp()
    assert var[1] > 20 * var[0]  # the optimum is sigma^2 = the task's mean squared error: ~0.01 and ~1
    assert 0.5 < float(var[1]) < 2.0 and float(var[0]) < 0.05


def test_dwa_equals_the_hand_computation():
    w = DWA(["a", "b"], temperature=2.0)
    epochs = [[(4.0, 2.0), (2.0, 2.0)], [(2.0, 1.0), (2.0, 1.0)], [(1.0, 1.0)]]
    seen = []
    for epoch in epochs:
        for a, b in epoch:
            w(_losses(a=a, b=b))
            seen.append(w.weights.tolist())
        w.epoch_end()
    assert seen[0] == seen[1] == seen[2] == seen[3] == [1.0, 1.0]  # the first two epochs
    # epoch means: (3, 2) then (2, 1): rates (2/3, 1/2)
    r = torch.tensor([2 / 3, 1 / 2], dtype=torch.float64)
    expected = 2 * torch.softmax(r / 2.0, 0)
    torch.testing.assert_close(torch.tensor(seen[4], dtype=torch.float64), expected)
    assert seen[4][0] > seen[4][1]  # a's loss fell more slowly: more weight
    with pytest.raises(RuntimeError, match="no losses"):
        w.epoch_end()  # the third epoch was closed in the loop: nothing since


def test_dtp_equals_the_focal_form():
    w = DTP(["seg", "depth"], gamma=2.0, alpha=0.5)
    w(_losses(seg=1.0, depth=1.0))
    assert w.weights.tolist() == [1.0, 1.0]
    w.update_kpis({"seg": 0.8, "depth": 0.3})
    w.update_kpis({"seg": 0.6, "depth": 0.5})
    k = torch.tensor([0.5 * 0.6 + 0.5 * 0.8, 0.5 * 0.5 + 0.5 * 0.3], dtype=torch.float64)
    total = w(_losses(seg=2.0, depth=3.0))
    expected = -((1 - k) ** 2) * k.log()
    torch.testing.assert_close(w.weights, expected)
    torch.testing.assert_close(total, (expected * torch.tensor([2.0, 3.0], dtype=torch.float64)).sum())
    assert w.weights[1] > w.weights[0]  # the task doing worse gets more weight
    with pytest.raises(ValueError, match="kpis"):
        w.update_kpis({"seg": 0.5})


def test_lr_multiplier_groups():
    model = nn.ModuleDict({"trunk": nn.Linear(2, 2), "seg": nn.Linear(2, 3), "depth": nn.Linear(2, 1)})
    model["trunk"].bias.requires_grad_(False)
    groups = {g["name"]: g for g in lr_multiplier_groups(model, 1e-3, {"seg": 10.0, "depth": 0.0})}
    assert groups["seg"]["lr"] == pytest.approx(1e-2) and groups["depth"]["lr"] == 0.0
    assert (
        groups["default"]["lr"] == 1e-3 and len(groups["default"]["params"]) == 1
    )  # the frozen bias left out
    torch.optim.SGD(list(groups.values()), lr=1e-3)
    with pytest.raises(ValueError, match="no parameters"):
        lr_multiplier_groups(model, 1e-3, {"segm": 2.0})


def test_gradnorm_step_equals_the_hand_computation():
    from fastmtl.mtl import GradNorm

    w = GradNorm(["a", "b"], alpha=1.0, lr=0.1)
    w(_losses(a=2.0, b=4.0))  # records L(0)
    norms = torch.tensor([1.0, 3.0])
    w.step(norms, _losses(a=1.0, b=3.0))
    ratio = torch.tensor([0.5, 0.75])
    rate = ratio / ratio.mean()
    g = torch.tensor([1.0, 3.0])  # w = 1
    target = g.mean() * rate
    # Adam's first step is lr times the gradient's sign: the gradient is sign(g - target) * norms
    new = torch.ones(2) - 0.1 * torch.sign(g - target)
    first = 2 * new / new.sum()
    torch.testing.assert_close(w.w.data, first)
    w.step(norms, _losses(a=1.0, b=3.0))  # the second, from Adam's moments
    grads = torch.sign(g - target) * norms, torch.sign(first * norms - (first * norms).mean() * rate) * norms
    m = 0.9 * 0.1 * grads[0] + 0.1 * grads[1]
    v = 0.999 * 0.001 * grads[0] ** 2 + 0.001 * grads[1] ** 2
    second = first - 0.1 / (1 - 0.9**2) * m / ((v / (1 - 0.999**2)).sqrt() + 1e-8)
    torch.testing.assert_close(w.w.data, 2 * second / second.sum())


def test_gradnorm_equalizes_gradient_norms(gen):
    from fastmtl.mtl import GradNorm

    # two tasks whose gradients differ 10x in scale and train at the same relative rate
    weighting = GradNorm(["small", "large"], alpha=0.0, lr=0.01)
    norms = torch.tensor([1.0, 10.0])
    seen = []
    for _ in range(600):
        losses = _losses(small=1.0, large=1.0)
        weighting(losses)
        weighting.step(norms, losses)
        seen.append(weighting.w.data * norms)
    g = torch.stack(seen[-200:]).mean(0)  # the fixed-step L1 descent oscillates around the balance
    assert float((g[0] - g[1]).abs() / g.mean()) < 0.05  # equal weighted norms (they began 10x apart)
    assert float(weighting.w.sum()) == pytest.approx(2.0)


def _drive_dwa(w, i, losses):
    w(losses)
    if i % 3 == 2:
        w.epoch_end()


def _drive_gradnorm(w, i, losses):
    w(losses)
    w.step(torch.tensor([1.0 + i, 2.0]), losses)


def _drive_dtp(w, i, losses):
    w.update_kpis({"a": 0.1 * (i % 7), "b": 0.5 + 0.05 * i})
    w(losses)


@pytest.mark.parametrize(
    "make, drive",
    [
        (lambda: DWA(["a", "b"]), _drive_dwa),
        (lambda: GradNorm(["a", "b"]), _drive_gradnorm),
        (lambda: DTP(["a", "b"]), _drive_dtp),
    ],
    ids=["dwa", "gradnorm", "dtp"],
)
@pytest.mark.parametrize("saved_at", [0, 4])  # before any state, and mid-run (DWA: mid-epoch)
def test_state_round_trips_through_a_weights_only_checkpoint(make, drive, saved_at, gen):
    losses = [_losses(a=float(v[0]), b=float(v[1])) for v in 0.5 + torch.rand(10, 2, generator=gen)]
    weighting = make()
    for i in range(saved_at):
        drive(weighting, i, losses[i])
    buffer = io.BytesIO()
    torch.save(weighting.state_dict(), buffer)
    buffer.seek(0)
    fresh = make()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for i in range(saved_at, len(losses)):
        drive(weighting, i, losses[i])
        drive(fresh, i, losses[i])
        assert torch.equal(fresh.weights, weighting.weights), i
