"""FAMO: the weights, the returned loss's gradient and the logits' update equal a hand computation
(softmax's Jacobian by autograd, torch.optim.Adam) on fixed loss sequences in float64; the update
moves weight toward the task whose loss fell less; the state round-trips through a weights-only
checkpoint; bad arguments."""

import io

import pytest
import torch

from fastmtl.mtl.weighting import FAMO

TASKS = ["a", "b", "c"]
BOUNDS = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
# (losses at the forward, the same batch's losses after the optimizer step), one pair per step
SEQUENCE = [
    ((2.0, 1.0, 3.0), (1.5, 0.9, 2.0)),
    ((1.6, 0.8, 2.5), (1.5, 0.7, 2.4)),
    ((1.2, 0.75, 1.0), (1.0, 0.74, 0.6)),
    ((1.0, 0.7, 0.9), (0.9, 0.7, 0.85)),
]


def _losses(values):
    return {t: torch.tensor(v, dtype=torch.float64, requires_grad=True) for t, v in zip(TASKS, values)}


def _famo(**kwargs):
    famo = FAMO(TASKS, min_losses={"c": 0.5}, **kwargs).double()
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return famo


def test_famo_equals_the_hand_computation():
    lr, wd = 0.05, 0.01
    famo = _famo(lr=lr, weight_decay=wd)
    xi = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    ref_opt = torch.optim.Adam([xi], lr=lr, weight_decay=wd)  # the paper's code steps xi this way
    for before, after in SEQUENCE:
        losses = _losses(before)
        total = famo(losses)
        gap = torch.tensor(before, dtype=torch.float64) - BOUNDS
        z = torch.softmax(xi.detach(), 0)
        c = 1 / (z / gap).sum()
        torch.testing.assert_close(famo.weights, c * z / gap)
        torch.testing.assert_close(total, c * (z * gap.log()).sum())
        total.backward()  # the direction sum_t c z_t / D_t grad L_t: each loss's gradient is its weight
        torch.testing.assert_close(torch.stack([losses[t].grad for t in TASKS]), c * z / gap)
        famo.update(_losses(after))
        delta = gap.log() - (torch.tensor(after, dtype=torch.float64) - BOUNDS).log()
        ref_opt.zero_grad()
        (xi.grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, delta)  # J^T delta
        ref_opt.step()  # adds the weight decay wd * xi
        torch.testing.assert_close(famo.logits, xi.detach())
    assert float(famo.steps) == len(SEQUENCE)


def test_update_moves_weight_toward_the_task_that_fell_less():
    famo = FAMO(["fast", "slow"]).double()
    famo(_two(1.0, 1.0))
    assert famo.weights.tolist() == [0.5, 0.5]
    famo.update(_two(0.5, 0.9))  # fast halved, slow fell 10 %
    assert famo.logits[1] > famo.logits[0]
    famo(_two(1.0, 1.0))  # equal losses: the weights are z
    assert famo.weights[1] > famo.weights[0] and float(famo.weights.sum()) == pytest.approx(1.0)


def _two(fast, slow):
    return {"fast": torch.tensor(fast, dtype=torch.float64), "slow": torch.tensor(slow, dtype=torch.float64)}


def test_famo_weights_inversely_scale_with_the_loss():
    famo = FAMO(["x", "y"])
    famo({"x": torch.tensor(1.0), "y": torch.tensor(100.0)})  # uniform z: w_t proportional to 1 / L_t
    torch.testing.assert_close(famo.weights, torch.tensor([100.0, 1.0]) / 101.0)


def test_a_loss_at_its_bound_is_floored_and_keeps_its_gradient():
    famo = FAMO(["x", "y"], min_losses={"x": 1.0}).double()
    losses = {
        "x": torch.tensor(1.0, dtype=torch.float64, requires_grad=True),
        "y": torch.tensor(2.0, dtype=torch.float64),
    }
    total = famo(losses)
    total.backward()
    assert bool(torch.isfinite(total)) and float(famo.weights.sum()) == pytest.approx(1.0)
    assert float(famo.weights[0]) == pytest.approx(1.0, abs=1e-7)  # D_x = 1e-8: nearly all the weight
    assert float(losses["x"].grad) == pytest.approx(float(famo.weights[0]))


def _run(famo, steps):
    seen = []
    for before, after in steps:
        famo(_losses(before))
        seen.append(famo.weights.clone())
        famo.update(_losses(after))
    return seen


def test_state_round_trips_through_a_weights_only_checkpoint():
    famo = _famo()
    _run(famo, SEQUENCE[:2])
    buffer = io.BytesIO()
    torch.save(famo.state_dict(), buffer)
    buffer.seek(0)
    fresh = FAMO(TASKS).double()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("logits", "exp_avg", "exp_avg_sq", "steps", "min_losses"):
        assert torch.equal(getattr(fresh, name), getattr(famo, name)), name
    for got, want in zip(_run(fresh, SEQUENCE[2:]), _run(famo, SEQUENCE[2:])):
        assert torch.equal(got, want)
    assert torch.equal(fresh.logits, famo.logits)


def test_state_saved_between_forward_and_update():
    famo = _famo()
    famo(_losses(SEQUENCE[0][0]))
    buffer = io.BytesIO()
    torch.save(famo.state_dict(), buffer)
    buffer.seek(0)
    fresh = FAMO(TASKS).double()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.update(_losses(SEQUENCE[0][1]))  # the pending forward's log-losses came along
    famo.update(_losses(SEQUENCE[0][1]))
    assert torch.equal(fresh.logits, famo.logits)
    with pytest.raises(RuntimeError, match="forward"):
        fresh.update(_losses(SEQUENCE[1][1]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="lr"):
        FAMO(TASKS, lr=0.0)
    with pytest.raises(ValueError, match="lr"):
        FAMO(TASKS, lr=float("nan"))
    with pytest.raises(ValueError, match="weight_decay"):
        FAMO(TASKS, weight_decay=-1e-3)
    with pytest.raises(ValueError, match="min_losses"):
        FAMO(TASKS, min_losses={"d": 0.0})
    with pytest.raises(ValueError, match="min_losses"):
        FAMO(TASKS, min_losses={"a": float("inf")})
    with pytest.raises(ValueError, match="min_losses"):
        FAMO(TASKS, min_losses=0.5)
    with pytest.raises(ValueError, match="tasks"):
        FAMO([])
    famo = FAMO(TASKS)
    with pytest.raises(RuntimeError, match="forward"):
        famo.update(_losses((1.0, 1.0, 1.0)))
    famo(_losses((1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="losses"):
        famo.update(_losses((1.0, 1.0)))
