"""LibMTL 1.1.5 as the multi-task benchmarks' peer (fastmtl.bench.libmtl_peer): its EW step equals
a plain PyTorch step, and each of its weightings runs a step on the benchmark model (small trunk).

Skipped without LibMTL (``pip install --no-deps LibMTL==1.1.5``). ``pytest.importorskip("LibMTL")``
cannot tell: LibMTL 1.1.5 does not import with current torchvision without the stand-in module
that ``load_libmtl`` provides.
"""

import copy
import sys

import numpy as np
import pytest
import torch

from fastmtl.bench import libmtl_peer
from fastmtl.bench.mtl_model import TASKS, make_batch, make_model

if libmtl_peer.load_libmtl() is None:
    pytest.skip("LibMTL 1.1.5 is not installed", allow_module_level=True)

SMALL = {"blocks": (1, 1, 1, 1), "head_width": 16}


@pytest.fixture(scope="module")
def small():
    """A ResNet-10 trunk with 16-channel heads and a batch of two 32 px images, built once."""
    model = make_model(0, **SMALL)
    images, targets = make_batch(2, 32, seed=1)
    return model, images, targets, _plain_step(copy.deepcopy(model))(images, targets)


def _plain_step(model):
    """The plain PyTorch step: sum of the task losses, backward, SGD at learning rate 0."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def run(images, targets):
        losses = model.losses(model(images), targets)
        opt.zero_grad(set_to_none=True)
        total = torch.stack([losses[t] for t in TASKS]).sum()
        total.backward()
        opt.step()
        return total.detach()

    return run


def test_import_leaves_no_stub():
    import torchvision.models

    assert "torchvision.models.utils" not in sys.modules
    assert not hasattr(torchvision.models, "utils")


def test_ew_step_equals_plain_step(seed):
    model = make_model(seed % 1000, **SMALL)
    images, targets = make_batch(2, 32, seed=seed)
    plain = copy.deepcopy(model)
    step = libmtl_peer.libmtl_model_step(model, "EW")
    for _ in range(2):  # learning rate 0: the second call sees the same weights
        ours = _plain_step(plain)(images, targets)
        theirs = step(images, targets)
        torch.testing.assert_close(theirs, ours, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(step.last_weights, np.ones(len(TASKS)))
    mine = dict(plain.encoder.named_parameters()) | {f"h.{k}": v for k, v in plain.heads.named_parameters()}
    lib = dict(step.model.encoder.named_parameters())
    lib |= {f"h.{k}": v for k, v in step.model.decoders.named_parameters()}
    assert mine.keys() == lib.keys()
    for name, p in mine.items():  # the same gradients, and the weights unchanged at lr=0
        torch.testing.assert_close(lib[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(lib[name], p, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("method", libmtl_peer.METHODS)
def test_each_method_runs_a_step(small, method):
    model, images, targets, expected = small
    step = libmtl_peer.libmtl_model_step(model, method)
    loss = step(images, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert np.asarray(step.last_weights).shape == (len(TASKS),)
    assert np.isfinite(step.last_weights).all()
    for name, p in step.model.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_refusals(small):
    model = small[0]
    with pytest.raises(ValueError, match="rep_grad"):
        libmtl_peer.libmtl_model_step(model, "GradDrop")
    two = {t: model.heads[t] for t in TASKS[:2]}
    with pytest.raises(ValueError, match="3 tasks"):
        libmtl_peer.libmtl_step(model.encoder, two, {t: model.loss_fns[t] for t in two}, "CAGrad")
