"""Multi-task learning.

- Architectures for any encoder: :class:`HardSharing`, :class:`SoftSharing`, :class:`CrossStitch`,
  :class:`MTAN`, :class:`PADNet`, :class:`MultiOutputClassifier`.
- Task balancing: loss weightings (:mod:`fastmtl.mtl.weighting`: fixed, uncertainty, DWA, DTP,
  GradNorm, FAMO) and gradient-level balancing (:mod:`fastmtl.mtl.gradients`: PCGrad, MGDA, from
  the per-task gradients' Gram matrix), per-task learning-rate multipliers
  (:func:`lr_multiplier_groups`).
- :class:`MTLTrainer`: one training step and loop for all of them, with AMP, DDP and checkpoints.
"""

from fastmtl.mtl.architectures import CrossStitch, HardSharing
from fastmtl.mtl.backward import representation_backward
from fastmtl.mtl.classification import MultiOutputClassifier
from fastmtl.mtl.gradients import combination_weights, mgda_weights, pcgrad
from fastmtl.mtl.lr_groups import lr_multiplier_groups
from fastmtl.mtl.mtan import MTAN
from fastmtl.mtl.padnet import PADNet
from fastmtl.mtl.soft_sharing import SoftSharing
from fastmtl.mtl.trainer import MTLTrainer
from fastmtl.mtl.weighting import DTP, DWA, FAMO, FixedWeighting, GradNorm, UncertaintyWeighting, Weighting

__all__ = [
    "CrossStitch",
    "DTP",
    "DWA",
    "FAMO",
    "FixedWeighting",
    "GradNorm",
    "HardSharing",
    "MTAN",
    "MTLTrainer",
    "MultiOutputClassifier",
    "PADNet",
    "SoftSharing",
    "UncertaintyWeighting",
    "Weighting",
    "combination_weights",
    "lr_multiplier_groups",
    "mgda_weights",
    "pcgrad",
    "representation_backward",
]
