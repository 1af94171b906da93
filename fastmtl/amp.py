"""The mixed-precision rule the trainers share: bf16 autocast on the CPU, fp16 on CUDA (where a
GradScaler guards fp16's narrow range; bf16 needs none)."""

import contextlib

import torch


def amp_dtype(device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cpu" else torch.float16


def autocast(device, enabled: bool = True):
    """``torch.autocast`` with :func:`amp_dtype` for ``device``, or a null context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp_dtype(device))
