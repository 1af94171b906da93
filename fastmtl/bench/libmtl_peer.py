"""LibMTL 1.1.5's weighting strategies, the peer of the multi-task training-step benchmarks:
imported offline without side effects that outlive the import, and driven one training step at a
time the way LibMTL's ``Trainer.train`` drives them.

Install (LibMTL's numpy, torch and torchvision are already there; it does not declare scipy, which
its CAGrad imports when ``LibMTL.weighting`` is imported: setup.py's ``bench`` extra lists both)::

    pip install --no-deps LibMTL==1.1.5 scipy

What it takes to run LibMTL 1.1.5 with current torch, and what :func:`libmtl_step` does about it:

- ``LibMTL.model.resnet`` imports ``torchvision.models.utils``, gone from torchvision: a stand-in
  exposing ``torch.hub.load_state_dict_from_url`` is put in ``sys.modules`` for the import only.
- ``zero_grad_share_params`` calls ``encoder.zero_grad()``, which sets the gradients to None in
  torch >= 2.0; the gradient-surgery methods (GradNorm, PCGrad, MGDA, CAGrad, GradVac, IMTL) then
  fail on ``param.grad.data = ...`` (``_reset_grad``). The model here zeroes them instead
  (``set_to_none=False``).
- ``Trainer.train`` calls ``iterator.next()`` (Python 2) and hard-codes ``cuda:0``: it is not
  used. :class:`LibMTLStep` is its inner loop body: forward, the losses written into a
  ``[task_num]`` tensor, ``optimizer.zero_grad()``, ``model.backward(losses, **weight_args)``,
  ``optimizer.step()``. The model is LibMTL's own composition, ``class MTLmodel(HPS, weighting)``,
  so ``get_share_params`` (the encoder's parameters), ``task_num``, ``device``, ``rep_grad`` and
  ``init_param`` (GradNorm's, UW's and IMTL's loss scales, optimized with the model) are LibMTL's.
- ``rep_grad=True`` backpropagates the encoder once per task (``AbsArchitecture.forward`` stores
  a single-tensor representation per task: its ``same_rep`` test is inverted), and PCGrad, CAGrad
  and GradVac refuse it: the steps here use ``rep_grad=False`` (parameter space, LibMTL's
  default). GradDrop needs ``rep_grad=True`` and is left out.
- GradNorm is EW before epoch 1 and DWA before epoch 2 (they read the previous epochs' mean losses
  from ``train_loss_buffer``): the steps run at ``epoch=2`` by default, with every epoch's mean
  losses taken to be the first batch's, so each method takes its full branch from the first call.
- CAGrad's objective hard-codes three tasks (``x.reshape(1, 3)``): :func:`libmtl_step` refuses
  CAGrad with another number of tasks.
- MGDA's Frank-Wolfe loop never increments its counter (MAX_ITER is not enforced): it stops only
  when the step falls under 1e-5, which it does on the benchmark model.
- ``_grad2vec`` builds each task's gradient on the CPU and copies it to the device (slow on a GPU).
- PCGrad and GradVac shuffle with Python's global ``random``; RLW samples from torch's global RNG.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import sys
import types
import warnings

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_WEIGHT_ARGS", "METHODS", "LibMTLStep", "libmtl_model_step", "libmtl_step", "load_libmtl"]

# The weightings of LibMTL 1.1.5 that run in parameter space (rep_grad=False): all but GradDrop.
METHODS = ("EW", "GradNorm", "PCGrad", "MGDA", "UW", "DWA", "CAGrad", "GLS", "GradVac", "IMTL", "RLW")

# LibMTL.config's defaults for the weightings' keyword arguments (``weight_args``).
DEFAULT_WEIGHT_ARGS = {
    "GradNorm": {"alpha": 1.5},
    "DWA": {"T": 2.0},
    "MGDA": {"mgda_gn": "none"},
    "GradVac": {"beta": 0.5},
    "CAGrad": {"calpha": 0.5, "rescale": 1},
    "RLW": {"dist": "Normal"},
}

_STUB = "torchvision.models.utils"
_loaded: types.SimpleNamespace | None = None


@contextlib.contextmanager
def _stubbed_torchvision_utils():
    """``torchvision.models.utils`` in ``sys.modules`` (and nothing else changed) for the block."""
    import torchvision.models

    stub = types.ModuleType(_STUB)
    stub.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    had_module, had_attr = _STUB in sys.modules, hasattr(torchvision.models, "utils")
    with warnings.catch_warnings():
        try:
            if not had_module:
                sys.modules[_STUB] = stub
            yield
        finally:
            if not had_module:
                sys.modules.pop(_STUB, None)
            if not had_attr and hasattr(torchvision.models, "utils"):
                delattr(torchvision.models, "utils")


def load_libmtl() -> types.SimpleNamespace | None:
    """``namespace(weighting=LibMTL.weighting, architecture=LibMTL.architecture)``, or None when
    LibMTL (or scipy, torchvision) is missing."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if importlib.util.find_spec("LibMTL") is None:
        return None
    with _stubbed_torchvision_utils():
        try:
            from LibMTL import architecture, weighting
        except ImportError:
            return None
    _loaded = types.SimpleNamespace(weighting=weighting, architecture=architecture)
    return _loaded


def _libmtl_model(libmtl, method: str, encoder: nn.Module, heads: dict, device: torch.device) -> nn.Module:
    """LibMTL's ``Trainer._prepare_model``: ``class MTLmodel(HPS, weighting)`` around the given
    encoder (HPS builds it from ``encoder_class()``) and heads, with the zero_grad fix."""
    weighting = getattr(libmtl.weighting, method)

    class MTLmodel(libmtl.architecture.HPS, weighting):
        def __init__(self):
            super().__init__(
                task_name=list(heads),
                encoder_class=lambda: encoder,
                decoders=nn.ModuleDict(heads),
                rep_grad=False,
                multi_input=False,
                device=device,
            )
            self.init_param()

        def zero_grad_share_params(self):
            # LibMTL's encoder.zero_grad() sets the gradients to None (torch >= 2.0), and
            # _reset_grad then fails on param.grad.data = ...
            self.encoder.zero_grad(set_to_none=False)

    MTLmodel.__name__ = MTLmodel.__qualname__ = f"LibMTL{method}Model"
    return MTLmodel().to(device)


class LibMTLStep:
    """One LibMTL training step per call: ``step(images, targets) -> loss``.

    Returns the detached sum of the unweighted task losses (the same for every method at the same
    weights, so an agreement check at learning rate 0 compares the forward passes). After a call,
    ``last_losses`` holds the ``[task_num]`` losses and ``last_weights`` what LibMTL's ``backward``
    returned (the numpy task weights). ``model`` is LibMTL's model (``model.encoder``,
    ``model.decoders``), ``optimizer`` its optimizer over all of the model's parameters.
    """

    def __init__(self, model, optimizer, loss_fns: dict, weight_args: dict, epoch: int, train_loss_buffer):
        self.model, self.optimizer = model, optimizer
        self.loss_fns, self.weight_args = loss_fns, weight_args
        self.model.epoch = epoch
        self.model.train_loss_buffer = train_loss_buffer
        self.last_losses: Tensor | None = None
        self.last_weights = None

    def __call__(self, images: Tensor, targets: dict) -> Tensor:
        model = self.model
        model.train()
        preds = model(images)
        losses = torch.zeros(model.task_num, device=model.device)  # as Trainer._compute_loss
        for tn, task in enumerate(model.task_name):
            losses[tn] = self.loss_fns[task](preds[task], targets[task])
        if model.train_loss_buffer is None:  # every past epoch's mean losses := this batch's
            values = losses.detach().cpu().numpy().astype(np.float64)
            model.train_loss_buffer = np.repeat(values[:, None], max(model.epoch, 1), axis=1)
        self.optimizer.zero_grad()
        self.last_weights = model.backward(losses, **self.weight_args)
        self.optimizer.step()
        self.last_losses = losses.detach()
        return self.last_losses.sum()


_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


def libmtl_step(
    encoder: nn.Module,
    heads: dict,
    loss_fns: dict,
    method: str = "EW",
    *,
    weight_args: dict | None = None,
    optim_param: dict | None = None,
    epoch: int = 2,
    train_loss_buffer: np.ndarray | None = None,
    copy_modules: bool = True,
) -> LibMTLStep:
    """LibMTL's training step with weighting ``method`` (one of :data:`METHODS`) around
    ``encoder`` (input -> shared representation) and ``heads`` (``{task: head}``, in task order),
    with ``loss_fns`` (``{task: fn(output, target) -> scalar}``).

    ``weight_args``: the weighting's keyword arguments, on top of :data:`DEFAULT_WEIGHT_ARGS`.
    ``optim_param``: LibMTL's optimizer dictionary; default ``{"optim": "sgd", "lr": 0.0,
    "momentum": 0.9}`` (learning rate 0: every call does the whole step on unchanged weights).
    ``epoch`` and ``train_loss_buffer`` (``[task_num, >= epoch]`` past epochs' mean losses, by
    default the first batch's losses) are what GradNorm and DWA read; ``epoch=0`` gives GradNorm's
    and DWA's equal-weight warm-up. ``copy_modules``: work on deep copies of the encoder and heads.
    Raises ImportError without LibMTL.
    """
    libmtl = load_libmtl()
    if libmtl is None:
        raise ImportError("LibMTL is not installed: pip install --no-deps LibMTL==1.1.5")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (GradDrop needs rep_grad=True), got {method!r}")
    heads = dict(heads)
    if set(heads) != set(loss_fns):
        raise ValueError(f"heads and loss_fns must name the same tasks: {list(heads)}, {list(loss_fns)}")
    if method == "CAGrad" and len(heads) != 3:
        raise ValueError(f"LibMTL 1.1.5's CAGrad handles exactly 3 tasks, got {len(heads)}")
    if copy_modules:
        encoder, heads = copy.deepcopy(encoder), {t: copy.deepcopy(h) for t, h in heads.items()}
    device = next(encoder.parameters()).device
    model = _libmtl_model(libmtl, method, encoder, heads, device)
    optim_param = dict(optim_param or {"optim": "sgd", "lr": 0.0, "momentum": 0.9})
    optimizer = _OPTIMIZERS[optim_param.pop("optim")](model.parameters(), **optim_param)
    args = {**DEFAULT_WEIGHT_ARGS.get(method, {}), **(weight_args or {})}
    if train_loss_buffer is not None:
        train_loss_buffer = np.asarray(train_loss_buffer, dtype=np.float64)
    return LibMTLStep(model, optimizer, dict(loss_fns), args, epoch, train_loss_buffer)


def libmtl_model_step(model: nn.Module, method: str = "EW", **kwargs) -> LibMTLStep:
    """:func:`libmtl_step` on a model with ``encoder``, ``heads`` and ``loss_fns`` (such as
    :class:`fastmtl.bench.mtl_model.MTLBenchModel`), copied."""
    return libmtl_step(model.encoder, model.heads, model.loss_fns, method, **kwargs)
