"""Benchmark cases for the batch triplet loss (forward + backward to the embeddings).

Batches of P identities x K = 4 samples (B = 256, 1024, 4096; D = 128, 512), euclidean
distance, margin 0.2, mean over the triplets with a loss > 0. One row per mining rule, each
with the providers that compute that very loss; fastmtl first:

- ``fastmtl``: :func:`fastmtl.ops.triplet_margin_loss` (fused);
- ``pml``: pytorch-metric-learning 2.9.0's ``TripletMarginLoss`` (``LpDistance`` without
  normalization) with its miner: none for ``all``, ``BatchHardMiner`` for ``hard``,
  ``TripletMarginMiner("semihard")`` for ``semihard_all``; it builds every mined triplet's
  indices, so ``all`` at B = 4096 (50M triplets) is left out;
- ``eager``: the best vectorized plain PyTorch for that rule (batch-hard: masked max and min of
  ``torch.cdist``; FaceNet semi-hard: the negatives sorted per anchor and ``torch.searchsorted``
  for each positive, O(B^2) memory), ``compile``: its ``torch.compile``.
"""

from typing import Optional

import torch

import fastmtl.ops
from fastmtl.bench.harness import Case, fwd_bwd, mark_full_only

__all__ = ["cases", "eager_batch_hard", "eager_semihard", "make_batch", "triplet_case"]

MARGIN = 0.2
K = 4  # samples per identity
PML_MAX_TRIPLETS = 20_000_000  # pytorch-metric-learning's index tensors: about 3 GB at 50M


def make_batch(b: int, dim: int, *, seed: int = 0, device="cpu"):
    """Embeddings [B, D] (requiring grad) of B / K identities, K samples each, and the labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b // K, dim, generator=g)
    x = centres.repeat_interleave(K, 0) + 0.8 * torch.randn(b, dim, generator=g)
    labels = torch.arange(b // K).repeat_interleave(K)
    return x.to(device).requires_grad_(), labels.to(device)


def _mean_nonzero(losses: torch.Tensor) -> torch.Tensor:
    return losses.sum() / (losses > 0).sum().clamp(min=1)


def eager_batch_hard(x: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Batch-hard triplet loss in vectorized PyTorch: per anchor its farthest positive and
    closest negative."""
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=x.device)
    hardest_pos = torch.where(pos, d, torch.full_like(d, float("-inf"))).amax(1)
    hardest_neg = torch.where(same, torch.full_like(d, float("inf")), d).amin(1)
    valid = pos.any(1) & (~same).any(1)
    return _mean_nonzero(torch.relu(hardest_pos - hardest_neg + margin)[valid])


def eager_semihard(x: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """FaceNet's semi-hard triplet loss in vectorized PyTorch: per (anchor, positive) the closest
    negative farther than the positive, within the margin; the negatives sorted per anchor and
    found by binary search (O(B^2) memory, no B^3 tensor)."""
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=x.device)
    negs, _ = torch.where(same, torch.full_like(d, float("inf")), d).sort(dim=1, stable=True)
    at = torch.searchsorted(negs.detach(), d.detach().contiguous(), right=True).clamp(max=len(labels) - 1)
    closest = negs.gather(1, at)  # [a, p]: the closest negative with d(a, n) > d(a, p)
    band = pos & (closest - d > 0) & (closest - d <= margin)
    return _mean_nonzero(torch.relu(d - closest + margin)[band])


def _pml(mining: str):
    """pytorch-metric-learning's loss + miner as a function of (x, labels); None without it."""
    try:
        from pytorch_metric_learning import distances, losses, miners
    except ImportError:
        return None
    dist = distances.LpDistance(normalize_embeddings=False)
    loss = losses.TripletMarginLoss(margin=MARGIN, distance=dist)
    miner = {
        "all": None,
        "hard": miners.BatchHardMiner(distance=dist),
        "semihard_all": miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard", distance=dist),
    }[mining]
    return lambda x, labels: loss(x, labels, miner(x, labels) if miner else None)


def triplet_case(mining: str, b: int, dim: int, device: str, *, use_compile: bool = True) -> Case:
    x, labels = make_batch(b, dim, device=device)

    def fused(x, labels):
        return fastmtl.ops.triplet_margin_loss(x, labels, MARGIN, mining)["loss"]

    providers = {"fastmtl": fwd_bwd(fused)}
    pml = _pml(mining) if mining != "semihard" else None
    if pml is not None and (mining != "all" or b * (K - 1) * (b - K) <= PML_MAX_TRIPLETS):
        providers["pml"] = fwd_bwd(pml)
    eager = {"hard": eager_batch_hard, "semihard": eager_semihard}.get(mining)
    if eager is not None:
        providers["eager"] = fwd_bwd(eager)
        if use_compile:
            providers["compile"] = fwd_bwd(torch.compile(eager, dynamic=False))
    return Case(
        op="triplet_margin_loss",
        size=f"{mining}-B{b}-D{dim}",
        dtype=torch.float32,
        inputs=(x, labels),
        providers=providers,
        pass_="fwd+bwd",
        atol=1e-4,
        rtol=1e-3,
        optional=frozenset({"compile"}),
    )


def cases(device: str = "cpu", quick: bool = False, *, use_compile: Optional[bool] = None) -> list:
    """Every mining rule at B = 256, 1024, 4096 and D = 128, 512 (the default run: B = 1024,
    D = 128, and "all" at B = 4096; quick: B = 64)."""
    use_compile = not quick if use_compile is None else use_compile
    rules = ("all", "hard", "semihard", "semihard_all")
    if quick:
        return [triplet_case(m, 64, 16, device, use_compile=use_compile) for m in rules]
    out = [
        triplet_case(m, b, dim, device, use_compile=use_compile)
        for b in (256, 1024, 4096)
        for dim in (128, 512)
        for m in rules
    ]
    default = {"B1024-D128", "B4096-D128"}
    return mark_full_only(
        out, lambda c: c.size.split("-", 1)[1] in default and (c.size.startswith("all") or "B1024" in c.size)
    )
