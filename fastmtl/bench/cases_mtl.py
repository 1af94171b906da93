"""Benchmark cases for multi-task training: one training step per task-balancing strategy.

``mtl_train_step`` (forward, balancing, backward, optimizer step) on the benchmark model of
:mod:`fastmtl.bench.mtl_model` (a ResNet-18 trunk at output stride 8 shared by segmentation,
depth and surface-normal heads; 3x128x128 images, batch 8), with :class:`fastmtl.mtl.MTLTrainer`
for each strategy, fixed weights first (the baseline every ratio is taken against), then LibMTL
1.1.5's step for the same strategies (:mod:`fastmtl.bench.libmtl_peer`; rows only when LibMTL is
installed: ``make peers``). Each provider has its own copy of the model and an SGD optimizer with
learning rate 0, so every call does the whole step's arithmetic on unchanged weights and returns
the same sum of the unweighted task losses (the agreement check).

Our providers are named ``fastmtl <strategy>`` with a ``[params]`` suffix for the parameter-space
forms (the encoder backpropagated once per task, as in the papers); the others take the per-task
gradients at the shared representation. ``--quick`` runs a ResNet-10 trunk at 64 px with a few
strategies.
"""

from __future__ import annotations

import copy

import torch

from fastmtl.bench.harness import Case, mark_full_only
from fastmtl.bench.libmtl_peer import libmtl_model_step, load_libmtl
from fastmtl.bench.mtl_model import TASKS, make_batch, make_model
from fastmtl.mtl import DWA, FAMO, FixedWeighting, GradNorm, MTLTrainer, UncertaintyWeighting

__all__ = ["cases", "train_step_case"]

_KINDS = {"segmentation": "classification", "depth": "regression", "normal": "regression"}
WEIGHTINGS = {
    "fixed": lambda: FixedWeighting(dict.fromkeys(TASKS, 1.0)),
    "uncertainty": lambda: UncertaintyWeighting(_KINDS),
    "dwa": lambda: DWA(TASKS),
    "famo": lambda: FAMO(TASKS),
    "gradnorm": lambda: GradNorm(TASKS),
}
# provider -> (weighting, gradient, space); "fastmtl" (fixed weights) is the baseline
OURS = {
    "fastmtl": ("fixed", "none", "representation"),
    "fastmtl uncertainty": ("uncertainty", "none", "representation"),
    "fastmtl dwa": ("dwa", "none", "representation"),
    "fastmtl famo": ("famo", "none", "representation"),
    "fastmtl gradnorm": ("gradnorm", "none", "representation"),
    "fastmtl pcgrad": ("fixed", "pcgrad", "representation"),
    "fastmtl mgda": ("fixed", "mgda", "representation"),
    "fastmtl gradnorm [params]": ("gradnorm", "none", "parameters"),
    "fastmtl pcgrad [params]": ("fixed", "pcgrad", "parameters"),
    "fastmtl mgda [params]": ("fixed", "mgda", "parameters"),
}
THEIRS = {"EW": "libmtl ew", "UW": "libmtl uw", "DWA": "libmtl dwa", "GradNorm": "libmtl gradnorm"}
THEIRS |= {"PCGrad": "libmtl pcgrad", "MGDA": "libmtl mgda", "CAGrad": "libmtl cagrad"}
QUICK = ("fastmtl", "fastmtl pcgrad", "fastmtl mgda [params]")


def _ours(model, weighting: str, gradient: str, space: str):
    model = copy.deepcopy(model)
    w = WEIGHTINGS[weighting]()
    opt = torch.optim.SGD(list(model.parameters()) + list(w.parameters()), lr=0.0, momentum=0.9)
    trainer = MTLTrainer(model, model.loss_fns, w, opt, gradient=gradient, space=space)

    def run(images, *targets):
        return trainer.step(images, dict(zip(TASKS, targets)))["losses"].sum()

    return run


def _theirs(model, method: str):
    step = libmtl_model_step(model, method)
    return lambda images, *targets: step(images, dict(zip(TASKS, targets)))


def train_step_case(device: str, quick: bool = False) -> Case:
    blocks, side, width = ((1, 1, 1, 1), 64, 32) if quick else ((2, 2, 2, 2), 128, 128)
    model = make_model(0, blocks, width, device)
    images, targets = make_batch(8, side, 0, device)
    names = QUICK if quick else tuple(OURS)
    providers = {name: _ours(model, *OURS[name]) for name in names}
    if not quick and load_libmtl() is not None:
        providers |= {name: _theirs(model, method) for method, name in THEIRS.items()}
    trunk = "resnet10" if quick else "resnet18"
    return Case(
        op="mtl_train_step",
        size=f"{trunk}-os8-{side}px-x8",
        dtype=torch.float32,
        inputs=(images, *(targets[t] for t in TASKS)),
        providers=providers,
        pass_="step",
        atol=1e-4,
        rtol=1e-4,
    )


def cases(device: str = "cpu", quick: bool = False) -> list:
    """The issue's size (every strategy, ours and LibMTL's); quick: a small trunk, three strategies."""
    out = [train_step_case(device, quick)]
    return out if quick else mark_full_only(out, lambda c: True)
