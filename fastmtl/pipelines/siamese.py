"""Siamese one-shot verification and identification of handwritten digits, end to end.

``train_siamese(SiameseConfig(...))`` takes scikit-learn's 1,797 real 8x8 handwritten digits
(``load_digits``: 10 classes written by 43 people), keeps the digits in ``held_out`` (7, 8, 9 by
default) out of training altogether, and trains :class:`~fastmtl.models.siamese.SiameseNet`
(a small CNN, L2-normalized embeddings) with the fused :func:`fastmtl.ops.triplet_margin_loss`
on P x K batches of the other digits. Then, on images it has never seen:

- verification: every pair of held-out images of the training digits, and every pair of the
  unseen digits' images, scored by cosine similarity: ROC AUC, equal error rate, true-accept
  rate at fixed false-accept rates; and the accuracy on the unseen digits' pairs at the threshold
  ``tau`` calibrated on the training digits' held-out pairs (no peeking);
- identification: a gallery of one image per digit, the unseen ones added without retraining;
  every other image is identified by its nearest reference (top-1 accuracy, unseen and seen).

The same figures for raw pixels (cosine of the flattened images) are the no-training baseline.
A ROC plot is saved as PNG. What it shows so far: new images of trained digits verify far better
than raw pixels do; digits never trained on verify above chance but not better than raw pixels
(seven training classes of 8x8 images are too few to learn a metric that transfers).
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from fastmtl.data.pk_sampler import PKSampler
from fastmtl.metrics.verification import Verification, roc_curve, verification_report
from fastmtl.models.siamese import Gallery, SiameseNet, small_encoder
from fastmtl.ops import triplet_margin_loss
from fastmtl.pipelines._figures import pyplot, save_figure
from fastmtl.pipelines.detection import _threads

__all__ = ["SiameseConfig", "SiameseResult", "load_digits_tensors", "train_siamese"]


@dataclass
class SiameseConfig:
    """Everything :func:`train_siamese` needs; the defaults are the CPU demo."""

    seed: int = 0
    held_out: tuple = (7, 8, 9)  # digits never trained on
    val_fraction: float = 0.25  # of the training digits' images: the pairs tau is calibrated on
    steps: int = 400
    p: int = 7  # identities per batch
    k: int = 16  # images per identity
    lr: float = 3e-3
    margin: float = 0.3
    mining: str = "hard"
    distance: str = "euclidean"
    dim: int = 64
    widths: tuple = (32, 64)
    device: str = "cpu"
    num_threads: Optional[int] = 1
    out_dir: str = "fastmtl-demo-siamese"
    progress: bool = True


@dataclass
class SiameseResult:
    """What :func:`train_siamese` measured and wrote."""

    history: list  # per step: {"loss", "active_fraction", "pos_mean", "neg_mean"}
    verification: Verification  # unseen digits, learned embeddings
    baseline: Verification  # unseen digits, raw pixels
    seen_verification: Verification  # held-out images of the training digits, learned
    seen_baseline: Verification  # the same pairs, raw pixels
    accuracy_at_tau: float  # unseen pairs, at the tau calibrated on the training digits' pairs
    tau: float
    identification: dict  # top-1 accuracy: {"unseen", "seen", "baseline_unseen", "baseline_seen"}
    train_seconds: float
    roc_png: Optional[Path] = None
    model: Optional[SiameseNet] = field(default=None, repr=False)


def load_digits_tensors() -> "tuple[torch.Tensor, torch.Tensor]":
    """scikit-learn's digits as ``[1797, 1, 8, 8]`` floats in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def _split(labels: torch.Tensor, config: SiameseConfig):
    """Indices: training digits' train and validation parts, and the unseen digits."""
    g = torch.Generator().manual_seed(config.seed)
    unseen = torch.isin(labels, torch.tensor(config.held_out))
    seen_idx = torch.nonzero(~unseen).flatten()
    seen_idx = seen_idx[torch.randperm(len(seen_idx), generator=g)]
    n_val = int(len(seen_idx) * config.val_fraction)
    return seen_idx[n_val:], seen_idx[:n_val], torch.nonzero(unseen).flatten()


def _pair_scores(embeddings: torch.Tensor, labels: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """Cosine similarity and sameness of every unordered pair."""
    e = torch.nn.functional.normalize(embeddings, dim=1)
    i, j = torch.triu_indices(len(e), len(e), 1)
    return (e[i] * e[j]).sum(1), labels[i] == labels[j]


def _embed(model: SiameseNet, images: torch.Tensor, device: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b.to(device)).cpu() for b in images.split(512)])


def _train(model: SiameseNet, images, labels, config: SiameseConfig) -> list:
    from tqdm.auto import tqdm

    sampler = PKSampler(labels, config.p, config.k, config.steps, seed=config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    history = []
    model.train()
    for batch in tqdm(sampler, total=config.steps, desc="train siamese", disable=not config.progress):
        out = triplet_margin_loss(
            model(images[batch].to(config.device)),
            labels[batch].to(config.device),
            config.margin,
            config.mining,
            config.distance,
        )
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        scheduler.step()
        history.append(
            {k: float(out[k].detach()) for k in ("loss", "active_fraction", "pos_mean", "neg_mean")}
        )
    return history


def _identify(embeddings: torch.Tensor, labels: torch.Tensor, unseen: torch.Tensor, seed: int) -> dict:
    """One reference per digit (the unseen ones added after the seen ones, as new identities
    would be); top-1 accuracy of every other image, unseen and seen digits apart."""
    g = torch.Generator().manual_seed(seed + 1)
    refs = []
    for c in labels.unique():
        members = torch.nonzero(labels == c).flatten()
        refs.append(members[torch.randint(0, len(members), (1,), generator=g)])
    refs = torch.cat(refs)
    gallery = Gallery(embeddings.shape[1])
    seen_refs = refs[~unseen[refs]]
    gallery.add(embeddings[seen_refs], labels[seen_refs])
    gallery.add(embeddings[refs[unseen[refs]]], labels[refs[unseen[refs]]])  # new identities
    queries = torch.ones(len(labels), dtype=torch.bool)
    queries[refs] = False
    ids, _ = gallery.identify(embeddings[queries])
    right = ids == labels[queries]
    u = unseen[queries]
    return {"unseen": float(right[u].float().mean()), "seen": float(right[~u].float().mean())}


def _save_roc(result: SiameseResult, curves: dict, out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, (far, tar) in curves.items():
        ax.plot(far, tar, label=name)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlabel("false-accept rate")
    ax.set_ylabel("true-accept rate")
    ax.set_title("Digits: one-shot verification (new images)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "roc.png")


def train_siamese(config: Optional[SiameseConfig] = None, *, save_plots: bool = True) -> SiameseResult:
    """Trains on the seen digits, evaluates verification and identification on the unseen ones
    (and the raw-pixel baseline), saves ``roc.png`` under ``config.out_dir``. Deterministic for a seed."""
    config = config or SiameseConfig()
    with _threads(config.num_threads):
        torch.manual_seed(config.seed)
        images, labels = load_digits_tensors()
        train_idx, val_idx, unseen_idx = _split(labels, config)
        model = SiameseNet(small_encoder(1, config.dim, config.widths)).to(config.device)
        start = time.perf_counter()
        history = _train(model, images[train_idx], labels[train_idx], config)
        train_seconds = time.perf_counter() - start

        emb = _embed(model, images, config.device)
        pixels = images.flatten(1)
        val_scores, val_same = _pair_scores(emb[val_idx], labels[val_idx])
        val_report = verification_report(val_scores, val_same)
        scores, same = _pair_scores(emb[unseen_idx], labels[unseen_idx])
        base_scores, _ = _pair_scores(pixels[unseen_idx], labels[unseen_idx])
        tau = val_report.threshold
        accuracy = float(((scores >= tau) == same).float().mean())
        test_idx = torch.cat((val_idx, unseen_idx))  # images the model never trained on
        is_unseen = torch.isin(labels[test_idx], torch.tensor(config.held_out))
        learned = _identify(emb[test_idx], labels[test_idx], is_unseen, config.seed)
        raw = _identify(pixels[test_idx], labels[test_idx], is_unseen, config.seed)
        result = SiameseResult(
            history=history,
            verification=verification_report(scores, same),
            baseline=verification_report(base_scores, same),
            seen_verification=val_report,
            seen_baseline=verification_report(_pair_scores(pixels[val_idx], labels[val_idx])[0], val_same),
            accuracy_at_tau=accuracy,
            tau=tau,
            identification={**learned, "baseline_unseen": raw["unseen"], "baseline_seen": raw["seen"]},
            train_seconds=train_seconds,
            model=model,
        )
        if save_plots:
            curves = {
                f"unseen digits, learned (AUC {result.verification.auc:.3f})": (scores, same),
                f"unseen digits, raw pixels (AUC {result.baseline.auc:.3f})": (base_scores, same),
                f"trained digits, learned (AUC {val_report.auc:.3f})": (val_scores, val_same),
            }
            curves = {name: roc_curve(*pairs)[:2] for name, pairs in curves.items()}
            result.roc_png = _save_roc(result, curves, Path(config.out_dir))
        return result
