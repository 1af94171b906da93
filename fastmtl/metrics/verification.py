"""One-shot verification metrics of a similarity score (``s(x1, x2) > tau`` means "same"):
the ROC curve, its area, the equal error rate, the true-accept rate at a false-accept rate, and
the threshold of best accuracy. Computed with tensor ops on the scores' device (a sort and
cumulative sums); only the final numbers are read back.

Conventions (scikit-learn's ``roc_curve``, which the tests hold these to): a pair is accepted
when its score is ``>= threshold``; tied scores move together (one ROC point per distinct
score); the curve starts at (0, 0) with the threshold ``inf``.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Verification", "roc_curve", "verification_report"]


def _check(scores: Tensor, same: Tensor) -> "tuple[Tensor, Tensor]":
    if scores.dim() != 1 or same.shape != scores.shape:
        raise ValueError(
            f"scores and same must be 1-D of one length, got {tuple(scores.shape)}, {tuple(same.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    same = same.to(torch.bool)
    if not bool(same.any()) or bool(same.all()):
        raise ValueError("same must hold both same-identity (True) and different-identity (False) pairs")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contains NaN or infinite values")
    return scores.double(), same


def roc_curve(scores: Tensor, same: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """``(far, tar, thresholds)``: false- and true-accept rates when accepting ``scores >=
    thresholds[i]``, thresholds decreasing, from ``(0, 0)`` at ``inf`` to ``(1, 1)``."""
    scores, same = _check(scores, same)
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], same[order]
    tp, fp = torch.cumsum(y, 0), torch.cumsum(~y, 0)
    last = torch.ones_like(y)  # the last of each run of equal scores: one point per threshold
    last[:-1] = s[1:] != s[:-1]
    tp, fp, thr = tp[last], fp[last], s[last]
    zero = tp.new_zeros(1)
    tar = torch.cat((zero, tp)).double() / tp[-1]
    far = torch.cat((zero, fp)).double() / fp[-1]
    return far, tar, torch.cat((thr.new_full((1,), float("inf")), thr))


@dataclass
class Verification:
    """Verification figures of one set of scored pairs."""

    auc: float  # area under the ROC curve (trapezoids), 0.5 for chance
    eer: float  # equal error rate: where the false-accept and false-reject rates meet
    eer_threshold: float
    tar_at_far: dict  # {far: tar}: the best true-accept rate with a false-accept rate <= far
    accuracy: float  # the best accuracy over thresholds ...
    threshold: float  # ... and the threshold tau that gives it (calibrated on these pairs)
    pairs: int
    positives: int


def verification_report(scores: Tensor, same: Tensor, fars=(1e-3, 1e-2, 1e-1)) -> Verification:
    """The AUC, EER, TAR at each FAR in ``fars`` and the best-accuracy threshold of ``scores``."""
    far, tar, thr = roc_curve(scores, same)
    auc = torch.trapezoid(tar, far)
    frr = 1 - tar
    # the EER: linear interpolation between the two ROC points where FRR - FAR changes sign
    diff = frr - far
    k = int(torch.nonzero(diff <= 0)[0])  # diff decreases from 1 to -1
    if k == 0 or diff[k] == 0:
        eer, eer_thr = far[k], thr[k]
    else:
        t = diff[k - 1] / (diff[k - 1] - diff[k])
        eer = far[k - 1] + t * (far[k] - far[k - 1])
        eer_thr = thr[k] if not torch.isfinite(thr[k - 1]) else thr[k - 1] + t * (thr[k] - thr[k - 1])
    n_pos = int(same.to(torch.bool).sum())
    n = same.numel()
    correct = tar * n_pos + (1 - far) * (n - n_pos)  # accepted positives + rejected negatives
    best = int(torch.argmax(correct))
    tar_at = {f: float(tar[far <= f].max()) for f in fars}
    return Verification(
        auc=float(auc),
        eer=float(eer),
        eer_threshold=float(eer_thr),
        tar_at_far=tar_at,
        accuracy=float(correct[best]) / n,
        threshold=float(thr[best]),
        pairs=n,
        positives=n_pos,
    )
