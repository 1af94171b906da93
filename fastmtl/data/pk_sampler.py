"""P x K batches for metric learning: P identities, K samples of each, so that every anchor has
positives and negatives in its batch (the online triplet mining of
:func:`fastmtl.ops.triplet_margin_loss` needs both)."""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["PKSampler"]


class PKSampler(Sampler):
    """Yields ``batches`` lists of ``p * k`` dataset indices: ``p`` distinct identities drawn at
    random, ``k`` samples of each (without replacement when the identity has ``k`` or more,
    with replacement otherwise). Deterministic for a seed; use as a ``batch_sampler``."""

    def __init__(self, labels, p: int, k: int, batches: int, seed: int = 0) -> None:
        labels = torch.as_tensor(labels)
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        self.classes = labels.unique()
        if not 1 <= p <= len(self.classes):
            raise ValueError(f"p must be in [1, {len(self.classes)}] (the identities), got {p}")
        if k < 1 or batches < 0:
            raise ValueError(f"k must be >= 1 and batches >= 0, got k={k}, batches={batches}")
        self.members = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.p, self.k, self.batches, self.seed = p, k, batches, seed

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list]:
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.batches):
            batch = []
            for c in torch.randperm(len(self.members), generator=g)[: self.p].tolist():
                m = self.members[c]
                if len(m) >= self.k:
                    pick = torch.randperm(len(m), generator=g)[: self.k]
                else:
                    pick = torch.randint(0, len(m), (self.k,), generator=g)
                batch += m[pick].tolist()
            yield batch
