"""PCGrad removes conflicting components (a hand example, and a plain loop of the paper's
algorithm); MGDA's weights give the brute-force minimum norm for T = 2 and 3; the Gram-matrix
form (combination_weights) equals both for random T and N, handles zero, identical and opposite
gradients, and is invariant to scaling the Gram matrix (a GradScaler's scale)."""

import itertools

import pytest
import torch

from fastmtl.mtl import mgda_weights, pcgrad
from fastmtl.mtl.gradients import combination_weights


def test_pcgrad_hand_example():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: dot -1
    # g1 - (-1 / 2) g2 = (0.5, 0.5); g2 - (-1 / 1) g1 = (0, 1)
    torch.testing.assert_close(pcgrad(g), torch.tensor([0.5, 1.5]))
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(pcgrad(agreeing), agreeing.sum(0))
    with_zero = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    torch.testing.assert_close(pcgrad(with_zero), with_zero.sum(0))


def test_pcgrad_equals_the_papers_loop(seed):
    g = torch.randn(4, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = pcgrad(g, torch.Generator().manual_seed(seed))
    order_gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(9, dtype=torch.float64)
    for i in range(4):
        gi = g[i].clone()
        for j in torch.randperm(4, generator=order_gen).tolist():
            if j != i and float(gi @ g[j]) < 0:
                gi -= float(gi @ g[j]) / float(g[j] @ g[j]) * g[j]
        total += gi
    torch.testing.assert_close(got, total)


def _brute_min_norm(g, step):
    t = g.shape[0]
    best = None
    ticks = [i * step for i in range(int(round(1 / step)) + 1)]
    for a in itertools.product(ticks, repeat=t - 1):
        if sum(a) > 1 + 1e-12:
            continue
        w = torch.tensor([*a, 1 - sum(a)], dtype=torch.float64)
        n = float((w @ g).norm())
        best = n if best is None else min(best, n)
    return best


@pytest.mark.parametrize("t, step", [(2, 1e-4), (3, 2e-3)])
def test_mgda_equals_brute_force(t, step, gen):
    g = torch.randn(t, 6, generator=gen, dtype=torch.float64)
    g[1] = -0.5 * g[0] + 0.3 * g[1]  # some conflict
    w = mgda_weights(g)
    assert w.shape == (t,) and bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0)
    got = float((w @ g).norm())
    brute = _brute_min_norm(g, step)
    assert got <= brute + 1e-6 and got >= brute - 0.02 * (brute + 1e-3)


def test_mgda_one_task_and_bad_input():
    assert mgda_weights(torch.randn(1, 3)).tolist() == [1.0]
    with pytest.raises(ValueError, match="grads"):
        mgda_weights(torch.randn(3))
    with pytest.raises(ValueError, match="grads"):
        pcgrad(torch.ones(2, 3, dtype=torch.long))


def test_mgda_many_tasks_frank_wolfe(gen):
    g = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    w = mgda_weights(g)
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0)
    norm = float((w @ g).norm())
    assert norm <= float(g.norm(dim=1).min()) and norm <= float(g.mean(0).norm())


def _toy(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    encoder = torch.nn.Linear(5, 4)
    heads = torch.nn.ModuleList([torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)])
    x = torch.randn(16, 5, generator=gen)
    ys = [torch.randn(16, 1, generator=gen), torch.randn(16, 1, generator=gen)]
    return encoder, heads, x, ys


@pytest.mark.parametrize("method", ["sum", "pcgrad", "mgda"])
def test_representation_backward_equals_the_direct_computation(method, gen):
    from fastmtl.mtl import representation_backward

    encoder, heads, x, ys = _toy(gen)
    z = encoder(x)
    zd = z.detach().requires_grad_()
    losses = {f"t{i}": torch.nn.functional.mse_loss(h(zd), y) for i, (h, y) in enumerate(zip(heads, ys))}
    info = representation_backward(losses, z, zd, method, torch.Generator().manual_seed(0))
    # the same by hand: per-task gradients at z, combined, backpropagated through the encoder
    z2 = encoder(x)
    per = [
        torch.autograd.grad(torch.nn.functional.mse_loss(h(z2), y), z2, retain_graph=True)[0]
        for h, y in zip(heads, ys)
    ]
    g = torch.stack([p.flatten() for p in per])
    torch.testing.assert_close(info["grads"], g)
    if method == "pcgrad":
        combined = pcgrad(g, torch.Generator().manual_seed(0))
    elif method == "mgda":
        combined = mgda_weights(g) @ g
    else:
        combined = g.sum(0)
    (want_w,) = torch.autograd.grad(z2, encoder.weight, combined.view_as(z2))
    torch.testing.assert_close(encoder.weight.grad, want_w)
    (want_head,) = torch.autograd.grad(
        torch.nn.functional.mse_loss(heads[0](z2.detach()), ys[0]), heads[0].weight
    )
    torch.testing.assert_close(heads[0].weight.grad, want_head)  # a head gets its own task's gradient
    with pytest.raises(ValueError, match="zd"):
        representation_backward(losses, z, z, method)


def _papers_pcgrad(g, order_gen):
    """The loop of test_pcgrad_equals_the_papers_loop for any T."""
    t = g.shape[0]
    total = torch.zeros_like(g[0])
    for i in range(t):
        gi = g[i].clone()
        for j in torch.randperm(t, generator=order_gen).tolist():
            if j != i and float(gi @ g[j]) < 0:
                gi -= float(gi @ g[j]) / float(g[j] @ g[j]) * g[j]
        total += gi
    return total


def test_combination_weights_equal_the_direct_methods(gen):
    for _ in range(40):  # random T in 1..6 and N in 1..12 (N < T: a singular Gram matrix)
        t, n = int(torch.randint(1, 7, (1,), generator=gen)), int(torch.randint(1, 13, (1,), generator=gen))
        g = torch.randn(t, n, generator=gen, dtype=torch.float64)
        if t > 1 and bool(torch.rand((), generator=gen) < 0.5):
            g[1] = -0.5 * g[0] + 0.3 * g[1]  # some conflict
        gram = g @ g.T
        s = int(torch.randint(0, 2**31, (1,), generator=gen))
        c = combination_weights(gram, "pcgrad", torch.Generator().manual_seed(s))
        assert c.shape == (t,) and c.dtype == torch.float64
        torch.testing.assert_close(c @ g, pcgrad(g, torch.Generator().manual_seed(s)))
        torch.testing.assert_close(c @ g, _papers_pcgrad(g, torch.Generator().manual_seed(s)))
        torch.testing.assert_close(combination_weights(gram, "mgda"), mgda_weights(g))
        assert combination_weights(gram, "sum").tolist() == [1.0] * t


def test_combination_weights_draw_the_orders_as_the_papers_loop():
    used, expected = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    combination_weights(torch.eye(4), "pcgrad", used)
    for _ in range(4):  # one randperm(T) per task
        torch.randperm(4, generator=expected)
    assert torch.equal(used.get_state(), expected.get_state())
    assert combination_weights(torch.eye(3, dtype=torch.float32), "mgda").dtype == torch.float32


@pytest.mark.parametrize("t", [2, 3, 4, 10])
def test_degenerate_gradients(t, gen):
    g = torch.randn(1, 7, generator=gen, dtype=torch.float64)
    zero, same = torch.zeros(t, 7, dtype=torch.float64), g.repeat(t, 1)
    opposite = g * torch.tensor([(-1.0) ** i for i in range(t)], dtype=torch.float64)[:, None]
    for grads, pcgrad_update, mgda_update in [
        (zero, zero[0], zero[0]),
        (same, t * g[0], g[0]),  # nothing conflicts
        (opposite, zero[0], zero[0]),  # each is projected to 0; MGDA's minimum norm is 0
    ]:
        gram = grads @ grads.T
        c = combination_weights(gram, "pcgrad", torch.Generator().manual_seed(t))
        w = combination_weights(gram, "mgda")
        assert bool(torch.isfinite(c).all()) and bool(torch.isfinite(w).all())
        assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0)
        torch.testing.assert_close(c @ grads, pcgrad_update, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(w @ grads, mgda_update, atol=1e-9, rtol=1e-9)
    assert combination_weights(zero @ zero.T, "pcgrad").tolist() == [1.0] * t
    if t == 2:  # g1 - (-1) g2 and g2 - (-1) g1
        assert combination_weights(opposite @ opposite.T, "pcgrad").tolist() == [2.0, 2.0]
        assert combination_weights(opposite @ opposite.T, "mgda").tolist() == [0.5, 0.5]


@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
@pytest.mark.parametrize("t", [2, 3, 6, 10])
def test_combination_weights_are_scale_invariant(method, t, gen):
    g = torch.randn(t, 8, generator=gen, dtype=torch.float64)
    g[1] = -0.5 * g[0] + 0.3 * g[1]
    gram = g @ g.T
    want = combination_weights(gram, method, torch.Generator().manual_seed(0))
    for s in (2.0**-40, 2.0**16):  # powers of two scale exactly: bit-identical
        assert torch.equal(combination_weights(s * s * gram, method, torch.Generator().manual_seed(0)), want)
    for s in (1e-20, 3.7, 65536.0 * 1.3):  # 1e-20: G ~ 1e-40, under any fixed floor
        got = combination_weights(s * s * gram, method, torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)  # (Frank-Wolfe too: 900 trials ~1e-15)


def test_combination_weights_bad_input():
    for gram in (torch.ones(3), torch.ones(2, 3), torch.ones(2, 2, dtype=torch.long), torch.ones(0, 0)):
        with pytest.raises(ValueError, match="gram"):
            combination_weights(gram, "sum")
    with pytest.raises(ValueError, match="method"):
        combination_weights(torch.eye(2), "cagrad")
    inf = torch.full((3, 3), float("inf"))  # a GradScaler overflow step: values, no error (it skips the step)
    for method in ("sum", "pcgrad", "mgda"):
        assert combination_weights(inf, method).shape == (3,)


def test_representation_backward_returns_the_combination_weights(gen):
    from fastmtl.mtl import representation_backward

    encoder, heads, x, ys = _toy(gen)
    z = encoder(x)
    zd = z.detach().requires_grad_()
    losses = {f"t{i}": torch.nn.functional.mse_loss(h(zd), y) for i, (h, y) in enumerate(zip(heads, ys))}
    info = representation_backward(losses, z, zd, "pcgrad", torch.Generator().manual_seed(0))
    g = info["grads"]
    want = combination_weights(g @ g.T, "pcgrad", torch.Generator().manual_seed(0))
    torch.testing.assert_close(info["weights"], want)
