"""PAD-Net: Xu, Ouyang, Wang and Sebe, "PAD-Net: Multi-Tasks Guided Prediction-and-Distillation
Network for Simultaneous Depth Estimation and Scene Parsing", CVPR 2018. A decoder-focused model:

1. a shared encoder gives ``z`` ``[N, channels, h, w]``;
2. per intermediate task ``t`` a conv3x3-BN-ReLU gives its feature ``F_t`` ``[N, width, h, w]``
   and a 1x1 convolution its intermediate prediction (deep supervision: the user puts a loss on
   it; intermediate tasks may be auxiliary ones, e.g. surface normals or contours, with no final
   head);
3. multi-modal distillation (the paper's module C, attention-guided message passing): for each
   final task ``t``, ``D_t = F_t + sum_{k != t} sigmoid(W_g^t * F_t) * (W_{k->t} * F_k)``, one
   gate per receiving task and one 3x3 convolution per (source, receiver) pair;
4. ``final_heads[t](D_t)``: the final prediction.

Predictions come at the resolution the heads give (the intermediate ones at the encoder's);
resize them (or the targets) for the losses, e.g. ``F.interpolate(pred, size=target.shape[-2:])``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PADNet"]


def _feature_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _check_intermediate(intermediate: dict) -> None:
    if len(intermediate) < 2 or not all(isinstance(k, str) for k in intermediate):
        raise ValueError(
            f"intermediate must map at least two task names to channel counts, got {intermediate!r}"
        )
    bad = {k: v for k, v in intermediate.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise ValueError(f"intermediate channel counts must be ints >= 1, got {bad!r}")


class PADNet(nn.Module):
    """``PADNet(encoder, channels, intermediate, final_heads, width=None)``: ``encoder(x)`` gives
    ``channels`` channels; ``intermediate`` maps every intermediate task to its prediction's channel
    count; ``final_heads`` maps each final task (one of ``intermediate``) to its head on ``width``
    (default ``channels``) channels.

    ``forward(x)`` -> ``{task: final}``; ``forward(x, return_intermediate=True)`` ->
    ``({task: final}, {task: intermediate prediction})`` for deep supervision (without it the
    intermediate heads get no gradient: DistributedDataParallel then needs
    ``find_unused_parameters=True``). ``shared(x)`` and ``heads_forward(z, return_intermediate)``
    split the encoder from the rest, and ``forward(x, representation=True)`` returns
    ``(outputs, z, zd)`` with the rest run on ``zd``, a detached leaf copy of ``z``, as
    :class:`fastmtl.mtl.HardSharing` does (for :func:`fastmtl.mtl.representation_backward` and
    :class:`fastmtl.mtl.MTLTrainer`); ``shared_parameters()`` is the encoder's.
    """

    def __init__(
        self,
        encoder: nn.Module,
        channels: int,
        intermediate: dict,
        final_heads: dict,
        *,
        width: int | None = None,
    ) -> None:
        super().__init__()
        _check_intermediate(intermediate)
        if not final_heads or not set(final_heads) <= set(intermediate):
            raise ValueError(
                f"final_heads must map some of intermediate's tasks to heads, got {list(final_heads)!r}"
            )
        for name, value in (("channels", channels), ("width", channels if width is None else width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        width = channels if width is None else width
        self.encoder = encoder
        self.task_features = nn.ModuleDict({t: _feature_block(channels, width) for t in intermediate})
        self.intermediate_heads = nn.ModuleDict({t: nn.Conv2d(width, n, 1) for t, n in intermediate.items()})
        self.gates = nn.ModuleDict({t: nn.Conv2d(width, width, 3, padding=1) for t in final_heads})
        self.messages = nn.ModuleDict(
            {
                t: nn.ModuleDict({k: nn.Conv2d(width, width, 3, padding=1) for k in intermediate if k != t})
                for t in final_heads
            }
        )
        self.final_heads = nn.ModuleDict(final_heads)

    def distill(self, feats: dict) -> dict:
        """``{t: F_t + sigmoid(gate_t(F_t)) * sum_{k != t} message_{k->t}(F_k)}`` for each final
        task ``t`` (the gate factored out of the paper's sum)."""
        out = {}
        for t, messages in self.messages.items():
            incoming = torch.stack([conv(feats[k]) for k, conv in messages.items()]).sum(0)
            out[t] = feats[t] + torch.sigmoid(self.gates[t](feats[t])) * incoming
        return out

    def shared(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def heads_forward(self, z: Tensor, return_intermediate: bool = False):
        feats = {t: block(z) for t, block in self.task_features.items()}
        distilled = self.distill(feats)
        final = {t: head(distilled[t]) for t, head in self.final_heads.items()}
        if not return_intermediate:
            return final
        return final, {t: head(feats[t]) for t, head in self.intermediate_heads.items()}

    def shared_parameters(self) -> list:
        """The encoder's trainable parameters (parameter-space gradient balancing's)."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def forward(self, x: Tensor, return_intermediate: bool = False, representation: bool = False):
        z = self.shared(x)
        if not representation:
            return self.heads_forward(z, return_intermediate)
        zd = z.detach().requires_grad_()  # the heads run on a leaf copy, as HardSharing's do
        return self.heads_forward(zd, return_intermediate), z, zd
