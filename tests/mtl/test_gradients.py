"""PCGrad removes conflicting components (a hand example, and a plain loop of the paper's
algorithm); MGDA's weights give the brute-force minimum norm for T = 2 and 3."""

import itertools

import pytest
import torch

from fastmtl.mtl import mgda_weights, pcgrad


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
