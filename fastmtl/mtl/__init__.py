"""Multi-task learning: task-balancing strategies (:mod:`fastmtl.mtl.weighting`) and per-task
learning-rate multipliers (:func:`lr_multiplier_groups`)."""

from fastmtl.mtl.lr_groups import lr_multiplier_groups
from fastmtl.mtl.weighting import DTP, DWA, FixedWeighting, UncertaintyWeighting, Weighting

__all__ = ["DTP", "DWA", "FixedWeighting", "UncertaintyWeighting", "Weighting", "lr_multiplier_groups"]
