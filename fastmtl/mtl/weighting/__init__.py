"""Task-balancing strategies behind one interface (:class:`Weighting`), one per file with its
paper in the docstring."""

from fastmtl.mtl.weighting.base import Weighting
from fastmtl.mtl.weighting.dtp import DTP
from fastmtl.mtl.weighting.dwa import DWA
from fastmtl.mtl.weighting.famo import FAMO
from fastmtl.mtl.weighting.fixed import FixedWeighting
from fastmtl.mtl.weighting.gradnorm import GradNorm
from fastmtl.mtl.weighting.uncertainty import UncertaintyWeighting

__all__ = ["DTP", "DWA", "FAMO", "FixedWeighting", "GradNorm", "UncertaintyWeighting", "Weighting"]
