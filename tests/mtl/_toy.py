"""A small float64 hard-sharing model, its losses and data, shared by the trainer tests."""

import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.mtl import HardSharing

TASKS = ("seg", "reg")
LOSS_FNS = {"seg": lambda out, y: F.cross_entropy(out, y), "reg": lambda out, y: F.mse_loss(out, y)}


def model(seed: int = 0) -> HardSharing:
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Tanh()
    )
    heads = {
        "seg": nn.Conv2d(6, 3, 1),
        "reg": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)),
    }
    return HardSharing(encoder, heads).double()


def data(n: int, seed: int = 0) -> tuple:
    """``(images [n, 3, 8, 8], {"seg": [n, 4, 4] classes, "reg": [n, 2]})``, float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    seg = torch.randint(0, 3, (n, 4, 4), generator=g)
    reg = 3 * torch.randn(n, 2, generator=g, dtype=torch.float64)  # a larger loss than seg's
    return x, {"seg": seg, "reg": reg}
