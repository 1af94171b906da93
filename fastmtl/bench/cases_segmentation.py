"""Benchmark cases for segmentation: a U-Net training step and the confusion-matrix update.

``unet_train_step`` (forward + backward + optimizer step): the demo's U-Net (small encoder, depth
3, width 24, transposed convolutions, 13 classes) on a batch of 8 RGB images, cross-entropy plus
Dice. Providers, the float32 step first: ``amp`` (bf16 autocast on the CPU, fp16 on CUDA),
``channels_last``, and both. Each provider has its own copy of the model and an SGD optimizer with
learning rate 0, so every call does the whole step's arithmetic on unchanged weights and returns
the same loss (the agreement check: AMP within 5%).

``confusion_update``: :class:`fastmtl.metrics.ConfusionMatrix` updated with a batch of score maps
against torchmetrics' ``MulticlassConfusionMatrix`` on the same predictions (the counts must be
equal).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from fastmtl.bench.harness import Case, mark_full_only
from fastmtl.losses.segmentation import SegmentationLoss
from fastmtl.metrics.segmentation import ConfusionMatrix
from fastmtl.models.segmentation import UNet

__all__ = ["cases", "confusion_case", "train_step_case"]

CLASSES = 13


def _step(model: UNet, amp: bool, channels_last: bool):
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    loss_fn = SegmentationLoss()
    kind = next(model.parameters()).device.type
    dtype = torch.bfloat16 if kind == "cpu" else torch.float16

    def run(images, masks):
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        ctx = torch.autocast(kind, dtype=dtype) if amp else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model(x), masks)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach().float()

    return run


def train_step_case(side: int, device: str, batch: int = 8) -> Case:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = UNet(3, CLASSES, depth=3, width=24).to(device)
    images = torch.rand(batch, 3, side, side, generator=g).to(device)
    masks = torch.randint(0, CLASSES, (batch, side, side), generator=g).to(device)
    providers = {
        "float32": _step(model, False, False),
        "amp": _step(model, True, False),
        "channels_last": _step(model, False, True),
        "amp+channels_last": _step(model, True, True),
    }
    return Case(
        op="unet_train_step",
        size=f"{side}px-x{batch}",
        dtype=torch.float32,
        inputs=(images, masks),
        providers=providers,
        pass_="step",
        atol=5e-2,
        rtol=5e-2,
    )


def _ours(scores, target):
    cm = ConfusionMatrix(CLASSES, device=scores.device)
    cm.update(scores, target)
    return cm.matrix


def confusion_case(side: int, batch: int, device: str) -> Case:
    from torchmetrics.classification import MulticlassConfusionMatrix

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(batch, CLASSES, side, side, generator=g).to(device)
    target = torch.randint(0, CLASSES, (batch, side, side), generator=g).to(device)
    theirs = MulticlassConfusionMatrix(CLASSES).to(device)

    def torchmetrics_update(s, t):
        theirs.reset()
        theirs.update(s, t)
        return theirs.compute().to(torch.int64)

    return Case(
        op="confusion_update",
        size=f"{side}px-x{batch}",
        dtype=torch.float32,
        inputs=(scores, target),
        providers={"fastmtl": lambda s, t: _ours(s, t).to(torch.int64), "torchmetrics": torchmetrics_update},
    )


def cases(device: str = "cpu", quick: bool = False) -> list:
    """A training step at 96 and 192 px, the metric update at two sizes; quick: the small ones."""
    sides = (96,) if quick else (96, 192)
    out = [train_step_case(side, device) for side in sides]
    try:
        out += [confusion_case(side, 8, device) for side in sides]
    except ModuleNotFoundError:  # torchmetrics is a test/bench extra
        pass
    return out if quick else mark_full_only(out, lambda c: c.size.startswith("96px"))
