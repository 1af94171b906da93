"""Siamese networks: one encoder (one set of parameters) for every branch, L2-normalized
embeddings compared by cosine similarity, and a gallery for one-shot identification."""

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Gallery", "SiameseNet", "ngram_encoder", "small_encoder"]


class SiameseNet(nn.Module):
    """Wraps any encoder ``x -> [B, D]``: ``forward`` gives unit-length embeddings, and every
    branch of a pair or triplet is the same module (weights shared by construction).

    ``similarity(x1, x2)`` is ``s(x1, x2) = e1 . e2`` (cosine), 1 for the same input; one-shot
    verification says "same" when it exceeds a threshold ``tau`` (see
    :func:`fastmtl.metrics.verification.verification_report`).
    """

    def __init__(self, encoder: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        e = self.encoder(x)
        return F.normalize(e, dim=1) if self.normalize else e

    def similarity(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Cosine similarity of each pair ``(x1[i], x2[i])``; both branches in one batch."""
        e = self(torch.cat((x1, x2)))
        a, b = e[: len(x1)], e[len(x1) :]
        return F.cosine_similarity(a, b, dim=1)


def small_encoder(in_channels: int = 1, dim: int = 64, widths: Sequence[int] = (32, 64)) -> nn.Sequential:
    """A small convolutional encoder for small images: per width a 3x3 conv, batch norm, ReLU
    and 2x2 max pooling (the last without pooling), global average pooling, a linear map to ``dim``."""
    layers, c = [], in_channels
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        if i + 1 < len(widths):
            layers.append(nn.MaxPool2d(2))
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, dim)]
    return nn.Sequential(*layers)


def ngram_encoder(buckets: int = 1 << 13, dim: int = 256) -> nn.EmbeddingBag:
    """A linear text encoder: the sum of learned vectors of a text's hashed words and character
    trigrams (``fastmtl.data.questions.hashed_ngrams``, 0 padding). Initialized at random, it
    starts as a random projection of the n-gram counts (their cosine roughly kept), and training
    moves it from there: on the questions demo a ReLU MLP on top did worse on unseen intents than
    the counts themselves, this did better."""
    return nn.EmbeddingBag(buckets, dim, mode="sum", padding_idx=0)


class Gallery:
    """One-shot identification: reference embeddings with their identities; a query takes the
    identity of its most similar reference, or ``-1`` ("unknown") below ``threshold``. New
    identities join with :meth:`add`, without retraining the encoder."""

    def __init__(self, dim: int, device: "torch.device | str" = "cpu") -> None:
        self.embeddings = torch.zeros(0, dim, device=device)
        self.identities = torch.zeros(0, dtype=torch.long, device=device)

    def add(self, embeddings: Tensor, identities: Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"embeddings must be [K, {self.embeddings.shape[1]}], got {tuple(embeddings.shape)}"
            )
        if identities.shape != embeddings.shape[:1]:
            raise ValueError(f"identities must be [{embeddings.shape[0]}], got {tuple(identities.shape)}")
        e = F.normalize(embeddings.to(self.embeddings), dim=1)
        self.embeddings = torch.cat((self.embeddings, e))
        self.identities = torch.cat((self.identities, identities.to(self.identities)))

    def identify(self, queries: Tensor, threshold: Optional[float] = None) -> "tuple[Tensor, Tensor]":
        """``(identities [Q], similarities [Q])`` of the nearest references (cosine)."""
        if len(self.identities) == 0:
            raise ValueError("the gallery is empty: add references first")
        sims = F.normalize(queries.to(self.embeddings), dim=1) @ self.embeddings.t()
        best, at = sims.max(1)
        ids = self.identities[at]
        if threshold is not None:
            ids = torch.where(best >= threshold, ids, torch.full_like(ids, -1))
        return ids, best
