"""Multi-task learning: task-balancing strategies (:mod:`fastmtl.mtl.weighting`), gradient-level
balancing (:mod:`fastmtl.mtl.gradients`: PCGrad, MGDA) and per-task learning-rate multipliers
(:func:`lr_multiplier_groups`)."""

from fastmtl.mtl.architectures import CrossStitch, HardSharing
from fastmtl.mtl.backward import representation_backward
from fastmtl.mtl.gradients import mgda_weights, pcgrad
from fastmtl.mtl.lr_groups import lr_multiplier_groups
from fastmtl.mtl.weighting import DTP, DWA, FixedWeighting, GradNorm, UncertaintyWeighting, Weighting

__all__ = [
    "CrossStitch",
    "DTP",
    "DWA",
    "FixedWeighting",
    "GradNorm",
    "HardSharing",
    "UncertaintyWeighting",
    "Weighting",
    "lr_multiplier_groups",
    "mgda_weights",
    "pcgrad",
    "representation_backward",
]
