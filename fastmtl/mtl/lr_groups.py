"""Per-task-head learning-rate multipliers (the slides' ``LearningRateMultiplier``) as optimizer
parameter groups."""

from __future__ import annotations

from torch import nn


def lr_multiplier_groups(model: nn.Module, lr: float, multipliers: dict) -> list:
    """Parameter groups of ``model``: each parameter whose name starts with a key of
    ``multipliers`` (longest match) at ``lr * multiplier``, the rest at ``lr``; parameters that
    do not require grad are left out. An unused key is an error (a typo would silently do
    nothing)."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    bad = {k: m for k, m in multipliers.items() if not m >= 0}
    if bad:
        raise ValueError(f"multipliers must be >= 0, got {bad}")
    groups: dict = {}
    used = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        keys = [k for k in multipliers if name == k or name.startswith(k + ".")]
        key = max(keys, key=len) if keys else None
        used.add(key)
        groups.setdefault(key, []).append(p)
    unused = set(multipliers) - used
    if unused:
        raise ValueError(f"multipliers name no parameters: {sorted(unused)}")
    return [
        {"params": params, "lr": lr * (1.0 if key is None else multipliers[key]), "name": key or "default"}
        for key, params in groups.items()
    ]
