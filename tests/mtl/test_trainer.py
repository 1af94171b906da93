"""MTLTrainer: each kind of step equals the same computation written out with plain autograd
(loss weighting; PCGrad and MGDA in representation and parameter space; GradNorm), FAMO and DWA
are driven, bf16 autocast runs, a resumed run continues identically, the weights are logged and
plotted, and bad arguments raise."""

import copy

import pytest
import torch

from fastmtl.mtl import (
    DWA,
    FAMO,
    FixedWeighting,
    GradNorm,
    MTLTrainer,
    UncertaintyWeighting,
    mgda_weights,
    pcgrad,
)
from tests.mtl import _toy


def _grads(model) -> list:
    return [p.grad.clone() for p in model.parameters()]


def _reference(model, x, y, w, gradient, space, seed) -> list:
    """The gradients one balanced step should leave, by plain autograd: heads get the weighted
    loss's gradient; the encoder the combination of the weighted per-task gradients."""
    z = model.encoder(x)
    out = model.heads_forward(z)
    losses = [w[i] * _toy.LOSS_FNS[t](out[t], y[t]) for i, t in enumerate(_toy.TASKS)]
    shared = model.shared_parameters()
    if space == "parameters":
        per_task = [torch.autograd.grad(v, shared, retain_graph=True) for v in losses]
        g = torch.stack([torch.cat([t.flatten() for t in grads]) for grads in per_task])
    else:
        g = torch.stack([torch.autograd.grad(v, z, retain_graph=True)[0].flatten() for v in losses])
    gen = torch.Generator().manual_seed(seed)
    combined = {
        "none": lambda: g.sum(0),
        "pcgrad": lambda: pcgrad(g, gen),
        "mgda": lambda: mgda_weights(g) @ g,
    }
    combined = combined[gradient]()
    if space == "parameters":
        enc, i = [], 0
        for p in shared:
            enc.append(combined[i : i + p.numel()].view_as(p))
            i += p.numel()
    else:
        enc = torch.autograd.grad(z, shared, combined.view_as(z), retain_graph=True)
    heads = torch.autograd.grad(sum(losses), list(model.heads.parameters()))
    return list(enc) + list(heads)


@pytest.mark.parametrize("gradient", ["none", "pcgrad", "mgda"])
@pytest.mark.parametrize("space", ["representation", "parameters"])
def test_balanced_step_equals_plain_autograd(gradient, space, seed):
    model = _toy.model(seed)
    x, y = _toy.data(6, seed)
    w = {"seg": 0.7, "reg": 1.6}
    weights = torch.tensor([w[t] for t in _toy.TASKS], dtype=torch.float64)
    expected = _reference(_toy.model(seed), x, y, weights, gradient, space, seed)
    trainer = MTLTrainer(
        model,
        _toy.LOSS_FNS,
        FixedWeighting(w),
        torch.optim.SGD(model.parameters(), lr=0.0),
        gradient=gradient,
        space=space,
        seed=seed,
    )
    if gradient == "none":  # a fixed weighting needs no per-task gradients: force the balanced path
        trainer.needs_grads = True
        trainer.shared = model.shared_parameters()
    trainer.step(x, y)
    for got, want in zip(_grads(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_loss_weighting_step_equals_weighted_sum(seed):
    model, ref = _toy.model(seed), _toy.model(seed)
    x, y = _toy.data(6, seed)
    weighting = UncertaintyWeighting({"seg": "classification", "reg": "regression"}, init=0.3)
    opt = torch.optim.SGD(list(model.parameters()) + list(weighting.parameters()), lr=0.1)
    out = MTLTrainer(model, _toy.LOSS_FNS, weighting, opt).step(x, y)
    s = torch.tensor(0.3, dtype=torch.float64)
    outputs = ref(x)
    seg, reg = (_toy.LOSS_FNS[t](outputs[t], y[t]) for t in _toy.TASKS)
    total = torch.exp(-s) * seg + 0.5 * torch.exp(-s) * reg + s
    torch.testing.assert_close(out["loss"], total.detach().to(out["loss"]))
    total.backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q.detach() - 0.1 * q.grad)
    torch.testing.assert_close(out["weights"], torch.exp(-s) * torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_gradnorm_step_uses_representation_norms(seed):
    model = _toy.model(seed)
    x, y = _toy.data(6, seed)
    weighting, twin = GradNorm(_toy.TASKS, alpha=1.0, lr=0.05), GradNorm(_toy.TASKS, alpha=1.0, lr=0.05)
    trainer = MTLTrainer(model, _toy.LOSS_FNS, weighting, torch.optim.SGD(model.parameters(), lr=0.0))
    ref = _toy.model(seed)
    z = ref.encoder(x)
    out = ref.heads_forward(z)
    losses = {t: _toy.LOSS_FNS[t](out[t], y[t]) for t in _toy.TASKS}
    norms = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].norm() for t in _toy.TASKS])
    twin(losses)
    twin.step(norms, losses)
    trainer.step(x, y)
    torch.testing.assert_close(weighting.w, twin.w)
    assert not torch.equal(weighting.w, torch.ones(2))  # it moved


def test_gradnorm_at_the_last_shared_layer(seed):
    model = _toy.model(seed)
    x, y = _toy.data(6, seed)
    last = model.encoder[2].weight
    weighting, twin = GradNorm(_toy.TASKS, lr=0.05), GradNorm(_toy.TASKS, lr=0.05)
    trainer = MTLTrainer(
        model, _toy.LOSS_FNS, weighting, torch.optim.SGD(model.parameters(), lr=0.0), gradnorm_params=[last]
    )
    ref = _toy.model(seed)
    out = ref(x)
    losses = {t: _toy.LOSS_FNS[t](out[t], y[t]) for t in _toy.TASKS}
    norms = torch.stack(
        [
            torch.autograd.grad(losses[t], ref.encoder[2].weight, retain_graph=True)[0].norm()
            for t in _toy.TASKS
        ]
    )
    twin(losses)
    twin.step(norms, losses)
    trainer.step(x, y)
    torch.testing.assert_close(weighting.w, twin.w)


def test_famo_updates_its_logits_on_the_same_batch(seed):
    model = _toy.model(seed)
    x, y = _toy.data(6, seed)
    famo = FAMO(_toy.TASKS)
    before = famo.state_dict()
    trainer = MTLTrainer(model, _toy.LOSS_FNS, famo, torch.optim.SGD(model.parameters(), lr=0.05))
    out = trainer.step(x, y)
    assert torch.isfinite(out["weights"]).all() and (out["weights"] > 0).all()
    changed = [
        k
        for k, v in famo.state_dict().items()
        if isinstance(v, torch.Tensor) and not torch.equal(v, before[k])
    ]
    assert changed, "FAMO's state did not change after a step"


def test_bf16_autocast_step_is_close_to_float32(seed):
    x, y = _toy.data(6, seed)
    out = {}
    for amp in (False, True):
        model = _toy.model(seed).float()
        trainer = MTLTrainer(
            model,
            _toy.LOSS_FNS,
            FixedWeighting({"seg": 1.0, "reg": 1.0}),
            torch.optim.SGD(model.parameters(), lr=0),
            gradient="pcgrad",
            amp=amp,
        )
        out[amp] = trainer.step(x.float(), {"seg": y["seg"], "reg": y["reg"].float()})["losses"]
    assert out[True].dtype == torch.float32
    torch.testing.assert_close(out[True], out[False], rtol=3e-2, atol=1e-2)


def _trainer(seed, weighting_name, gradient, space="representation"):
    model = _toy.model(seed)
    weighting = {
        "dwa": lambda: DWA(_toy.TASKS, temperature=2.0),
        "uncertainty": lambda: UncertaintyWeighting({"seg": "classification", "reg": "regression"}),
        "gradnorm": lambda: GradNorm(_toy.TASKS, lr=0.05),
        "famo": lambda: FAMO(_toy.TASKS),
    }[weighting_name]()
    params = list(model.parameters()) + list(weighting.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    return MTLTrainer(model, _toy.LOSS_FNS, weighting, opt, gradient=gradient, space=space, seed=seed)


@pytest.mark.parametrize(
    "weighting, gradient, space",
    [
        ("dwa", "pcgrad", "representation"),
        ("uncertainty", "mgda", "parameters"),
        ("gradnorm", "none", "representation"),
        ("famo", "none", "representation"),
    ],
)
def test_resumed_run_continues_identically(weighting, gradient, space, seed, tmp_path):
    x, y = _toy.data(12, seed)
    straight = _trainer(seed, weighting, gradient, space)
    straight.fit(x, y, steps=11, batch_size=4, progress=False)  # 3 steps an epoch: DWA's weights kick in
    path = tmp_path / "ckpt.pt"
    first = _trainer(seed, weighting, gradient, space)
    first.fit(x, y, steps=7, batch_size=4, progress=False, checkpoint=str(path), checkpoint_every=7)
    resumed = _trainer(
        seed + 1, weighting, gradient, space
    )  # another seed: all of it must come from the file
    resumed.load(path)
    resumed.fit(x, y, steps=11, batch_size=4, progress=False)
    for p, q in zip(straight.module.parameters(), resumed.module.parameters()):
        assert torch.equal(p, q)
    for key in ("weights", "losses"):
        assert torch.equal(straight.history()[key], resumed.history()[key])
    assert straight.epoch == resumed.epoch == 3


def test_weights_history_and_plot(seed, tmp_path):
    x, y = _toy.data(8, seed)
    trainer = _trainer(seed, "dwa", "none")
    history = trainer.fit(x, y, steps=9, batch_size=4, progress=False, log_every=3)
    assert history["weights"].shape == (9, 2) and history["losses"].shape == (9, 2)
    torch.testing.assert_close(history["weights"][:4], torch.ones(4, 2))  # DWA: ones for two epochs
    assert not torch.allclose(history["weights"][-1], torch.ones(2))
    png = trainer.plot_weights(tmp_path / "weights.png")
    assert png.stat().st_size > 1000


def test_tensorboard_missing_is_a_warning(seed, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    x, y = _toy.data(4, seed)
    trainer = _trainer(seed, "dwa", "none")
    with pytest.warns(UserWarning, match="tensorboard"):
        trainer.fit(x, y, steps=1, batch_size=4, progress=False, log_dir=str(tmp_path))


def test_bad_arguments():
    model = _toy.model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fixed = FixedWeighting({"seg": 1.0, "reg": 1.0})
    with pytest.raises(ValueError, match="weighting"):
        MTLTrainer(model, _toy.LOSS_FNS, object(), opt)
    with pytest.raises(ValueError, match="loss_fns"):
        MTLTrainer(model, {"seg": _toy.LOSS_FNS["seg"]}, fixed, opt)
    with pytest.raises(ValueError, match="gradient"):
        MTLTrainer(model, _toy.LOSS_FNS, fixed, opt, gradient="cagrad")
    with pytest.raises(ValueError, match="shared_parameters"):
        MTLTrainer(torch.nn.Linear(2, 2), _toy.LOSS_FNS, fixed, opt, gradient="pcgrad", space="parameters")
    x, y = _toy.data(4)
    trainer = MTLTrainer(model, _toy.LOSS_FNS, fixed, opt)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit(x, y, steps=1, batch_size=5, progress=False)
    with pytest.raises(ValueError, match="targets"):
        trainer.fit(x, {"seg": y["seg"]}, steps=1, batch_size=2, progress=False)


def test_float32_gradnorm_step(seed):
    # GradNorm's update changes its weights in place: they must not be what autograd saved
    model = _toy.model(seed).float()
    x, y = _toy.data(6, seed)
    weighting = GradNorm(_toy.TASKS, lr=0.05)
    trainer = MTLTrainer(model, _toy.LOSS_FNS, weighting, torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(2):
        out = trainer.step(x.float(), {"seg": y["seg"], "reg": y["reg"].float()})
    assert torch.isfinite(out["loss"]) and not torch.equal(weighting.w, torch.ones(2))


def test_famo_second_forward_leaves_batchnorm_statistics(seed):
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.Tanh()
    )
    model = _toy.HardSharing(encoder, {"seg": torch.nn.Conv2d(6, 3, 1), "reg": _toy.model().heads["reg"]})
    x, y = _toy.data(6, seed)
    y = {
        "seg": torch.nn.functional.interpolate(y["seg"][:, None].double(), size=8).long()[:, 0],
        "reg": y["reg"],
    }
    model = model.double()
    twin = copy.deepcopy(model)
    famo = FAMO(_toy.TASKS)
    MTLTrainer(model, _toy.LOSS_FNS, famo, torch.optim.SGD(model.parameters(), lr=0.0)).step(x, y)
    twin(x)  # one training-mode forward: the statistics a single step leaves
    for a, b in zip(model.buffers(), twin.buffers()):
        assert torch.equal(a, b)


def test_history_logs_the_shared_gradients_coefficients(seed):
    model = _toy.model(seed)
    x, y = _toy.data(6, seed)
    trainer = MTLTrainer(
        model,
        _toy.LOSS_FNS,
        FixedWeighting({"seg": 1.0, "reg": 1.0}),
        torch.optim.SGD(model.parameters(), lr=0),
        gradient="mgda",
    )
    out = trainer.step(x, y)
    ref = _toy.model(seed)
    z = ref.encoder(x)
    o = ref.heads_forward(z)
    g = torch.stack([torch.autograd.grad(_toy.LOSS_FNS[t](o[t], y[t]), z)[0].flatten() for t in _toy.TASKS])
    torch.testing.assert_close(out["shared_weights"], mgda_weights(g))
    torch.testing.assert_close(out["weights"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(trainer.history()["weights"][0], mgda_weights(g).float())


def test_tensorboard_scalars_when_installed(seed, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = _toy.data(8, seed)
    trainer = _trainer(seed, "dwa", "none")
    history = trainer.fit(x, y, steps=6, batch_size=4, progress=False, log_every=3, log_dir=str(tmp_path))
    runs = {p.parent.name: p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    assert {"weight_seg", "weight_reg", "loss_seg", "loss_reg"} <= set(runs)
    events = EventAccumulator(str(runs["weight_reg"])).Reload().Scalars("weight")
    assert [e.step for e in events] == [3, 6]
    torch.testing.assert_close(torch.tensor([e.value for e in events]), history["weights"][[2, 5], 1])


def test_evaluate_and_metrics_during_fit(seed, tmp_path):
    x, y = _toy.data(10, seed)
    val = _toy.data(7, seed + 1)
    trainer = _trainer(seed, "dwa", "none")
    accuracy = {"seg": lambda out, t: (out.argmax(1) == t).float().mean()}
    trainer.fit(x, y, steps=4, batch_size=5, progress=False, val=val, metric_fns=accuracy, eval_every=2)
    assert [m["step"] for m in trainer.metrics_log] == [2, 4]
    model = trainer.module.eval()
    with torch.no_grad():
        expected = (model(val[0])["seg"].argmax(1) == val[1]["seg"]).double().mean().item()
        losses = {t: _toy.LOSS_FNS[t](model(val[0])[t], val[1][t]).item() for t in _toy.TASKS}
    assert trainer.metrics_log[-1]["seg"] == pytest.approx(expected)
    got = trainer.evaluate(*val, batch_size=3)  # the losses by default, in batches of 3, 3, 1
    assert got == pytest.approx(losses) and trainer.module.training is False  # eval mode kept as found
    trainer.save(tmp_path / "c.pt")
    resumed = _trainer(seed, "dwa", "none")
    resumed.load(tmp_path / "c.pt")
    assert resumed.history()["metrics"] == trainer.metrics_log
    with pytest.raises(ValueError, match="metric_fns"):
        trainer.evaluate(*val, {"depth": accuracy["seg"]})
