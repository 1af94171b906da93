"""Multi-output image classification: several *types* of label per image (e.g. a garment's kind and
its colour, the slides' seeds/002 example), one head each on one shared encoder. Multi-output is
not multi-class: each head is its own (multi-class) classifier, with its own loss. Hard parameter
sharing as in Caruana, "Multitask Learning", Machine Learning 1997, and Ruder, "An Overview of
Multi-Task Learning in Deep Neural Networks", arXiv 2017.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.mtl.architectures import HardSharing

__all__ = ["MultiOutputClassifier"]

POOLS = ("avg", "max")


@torch.no_grad()
def _feature_count(encoder: nn.Module, sample: Tensor) -> int:
    """The encoder's output channel count, from one forward in eval mode (BN statistics untouched)."""
    modes = [m.training for m in encoder.modules()]
    encoder.eval()
    try:
        out = encoder(sample)
    finally:
        for m, mode in zip(encoder.modules(), modes):
            m.training = mode
    if out.dim() not in (2, 4):
        raise ValueError(f"encoder must give [N, C] or [N, C, H, W], got {list(out.shape)}")
    return out.shape[1]


def _head(in_features: int, classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, classes))


class MultiOutputClassifier(HardSharing):
    """``MultiOutputClassifier(encoder, {"kind": 5, "colour": 3}, in_features=None, sample=None,
    pool="avg", dropout=0.0)(images)`` -> ``{label_type: logits [N, num_classes]}``.

    ``encoder(images)`` gives a feature map ``[N, C, H, W]`` (globally ``pool``-ed, once for all
    heads) or a vector ``[N, C]``; each head is dropout + a linear layer. ``C`` is ``in_features``
    or, when that is None, found by a dry forward on ``sample`` (default ``zeros(1, 3, 64, 64)`` on
    the encoder's device).
    ``shared(images)`` -> pooled features ``[N, C]`` and ``heads_forward(z)`` split the two halves;
    ``forward(images, representation=True)`` returns ``(outputs, z, zd)`` with the heads run on
    ``zd``, a detached leaf copy of ``z``, and ``shared_parameters()`` is the encoder's, as
    :class:`fastmtl.mtl.HardSharing` (for :func:`fastmtl.mtl.representation_backward` and
    :class:`fastmtl.mtl.MTLTrainer`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: dict,
        *,
        in_features: int | None = None,
        sample: Tensor | None = None,
        pool: str = "avg",
        dropout: float = 0.0,
    ) -> None:
        if not num_classes or not all(isinstance(k, str) for k in num_classes):
            raise ValueError(f"num_classes must map label types to class counts, got {num_classes!r}")
        bad = {k: v for k, v in num_classes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad:
            raise ValueError(f"num_classes must be ints >= 1, got {bad!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if in_features is None and sample is None:
            ref = next(encoder.parameters(), None)
            sample = torch.zeros(1, 3, 64, 64, device=None if ref is None else ref.device)
        if in_features is None:
            in_features = _feature_count(encoder, sample)
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be an int >= 1, got {in_features!r}")
        super().__init__(encoder, {k: _head(in_features, n, dropout) for k, n in num_classes.items()})
        self.pool, self.in_features = pool, in_features

    def shared(self, images: Tensor) -> Tensor:
        z = self.encoder(images)
        if z.dim() == 4:
            z = (F.adaptive_avg_pool2d if self.pool == "avg" else F.adaptive_max_pool2d)(z, 1).flatten(1)
        if z.dim() != 2 or z.shape[1] != self.in_features:
            raise ValueError(f"encoder gave {list(z.shape)}, expected [N, {self.in_features}(, H, W)]")
        return z
