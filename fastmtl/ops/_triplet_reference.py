"""Plain-PyTorch reference of the batch triplet loss with online mining: the test oracle and the
fallback of the fused kernel. It builds the B x B x B triplet mask, so it is for small batches.

Rules (the fused kernel follows them; ``fastmtl.ops.triplet`` documents the public function):

* Distances: ``"euclidean"`` ``|x_i - x_j|`` (its gradient 0 where two embeddings are equal, as
  ``torch.cdist``), ``"squared_euclidean"``, ``"cosine"`` the similarity ``x_i . x_j / (|x_i|
  |x_j|)`` (norms clamped at 1e-12, as ``F.normalize``). Internally every metric is a distance
  ``d`` (smaller is closer): for cosine ``d = -s``.
* Valid triplets ``(a, p, n)``: ``p != a`` with ``labels[p] == labels[a]``, ``labels[n] !=
  labels[a]``. The loss of one is ``max(d(a, p) - d(a, n) + margin, 0)``; for cosine
  ``max(s(a, n) - s(a, p) + margin, 0)`` (the slides' form).
* Mining: ``"all"`` every valid triplet; ``"hard"`` (batch-hard) per anchor the farthest positive
  and the closest negative (first index on ties), anchors lacking either dropped;
  ``"semihard"`` (FaceNet) per ``(a, p)`` the closest negative in the band ``0 < d(a, n) - d(a,
  p) <= margin`` (first index on ties), none when the band is empty; ``"semihard_all"`` every
  valid triplet in that band (pytorch-metric-learning's ``TripletMarginMiner("semihard")``).
* Per anchor: the sum of its triplets' losses, how many are > 0 (active), how many were mined,
  and the sums of their ``d(a, p)`` and ``d(a, n)`` (similarities for cosine).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DISTANCES", "MINING", "REDUCTIONS", "triplet_terms_reference"]

MINING = ("all", "hard", "semihard", "semihard_all")
DISTANCES = ("euclidean", "squared_euclidean", "cosine")
REDUCTIONS = ("mean_nonzero", "mean", "sum", "none")


def distance_matrix(x: Tensor, distance: str) -> Tensor:
    """[B, B] distances, smaller is closer (cosine: minus the similarity), exact differences."""
    if distance == "cosine":
        u = F.normalize(x, dim=1, eps=1e-12)
        return -(u @ u.t())
    squared = (x[:, None, :] - x[None, :, :]).square().sum(-1)
    if distance == "squared_euclidean":
        return squared
    # 0 with a zero gradient at 0 (torch.cdist's convention), and finite second derivatives
    safe = squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt()
    return torch.where(squared > 0, safe, torch.zeros_like(safe))


def _first_arg(values: Tensor, mask: Tensor, largest: bool) -> "tuple[Tensor, Tensor]":
    """Per row: the first index of the max (largest) or min of values where mask, and whether any."""
    fill = float("-inf") if largest else float("inf")
    v = torch.where(mask, values, torch.full_like(values, fill))
    best = v.amax(-1, keepdim=True) if largest else v.amin(-1, keepdim=True)
    hit = mask & (v == best)
    index = torch.where(hit, torch.arange(v.shape[-1], device=v.device), v.shape[-1]).amin(-1)
    return index.clamp(max=v.shape[-1] - 1), mask.any(-1)


def triplet_mask(d: Tensor, labels: Tensor, margin: float, mining: str) -> Tensor:
    """[B, B, B] bool: the mined triplets (a, p, n)."""
    b = d.shape[0]
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(b, dtype=torch.bool, device=d.device)
    neg = ~same
    valid = pos[:, :, None] & neg[:, None, :]
    if mining == "all":
        return valid
    gap = d[:, None, :] - d[:, :, None]  # [a, p, n]: d(a, n) - d(a, p)
    band = valid & (gap > 0) & (gap <= margin)
    if mining == "semihard_all":
        return band
    if mining == "semihard":
        n_star, some = _first_arg(d[:, None, :].expand(b, b, b), band, largest=False)
        pick = torch.zeros_like(valid)
        a, p = some.nonzero(as_tuple=True)
        pick[a, p, n_star[a, p]] = True
        return pick
    p_star, has_p = _first_arg(d, pos, largest=True)
    n_star, has_n = _first_arg(d, neg, largest=False)
    pick = torch.zeros_like(valid)
    a = (has_p & has_n).nonzero(as_tuple=True)[0]
    pick[a, p_star[a], n_star[a]] = True
    return pick


def triplet_terms_reference(embeddings: Tensor, labels: Tensor, margin: float, mining: str, distance: str):
    """Per-anchor ``[B]`` loss sums (differentiable), active counts, mined counts, and the sums of
    the mined triplets' positive and negative distances (similarities for cosine)."""
    d = distance_matrix(embeddings, distance)
    mask = triplet_mask(d.detach(), labels, margin, mining)
    losses = torch.relu(d[:, :, None] - d[:, None, :] + margin) * mask
    sign = -1.0 if distance == "cosine" else 1.0  # report similarities for cosine
    with torch.no_grad():
        pos_sum = sign * (d[:, :, None] * mask).sum((1, 2))
        neg_sum = sign * (d[:, None, :] * mask).sum((1, 2))
        active = ((losses > 0) & mask).sum((1, 2))
        mined = mask.sum((1, 2))
    return losses.sum((1, 2)), active, mined, pos_sum, neg_sum
