"""Siamese one-shot verification and identification, end to end, on real images.

``train_siamese(SiameseConfig(data=...))`` trains :class:`~fastmtl.models.siamese.SiameseNet`
(a small CNN, L2-normalized embeddings) with the fused :func:`fastmtl.ops.triplet_margin_loss`
on P x K batches, then measures verification (every pair of evaluation images scored by cosine
similarity: ROC AUC, equal error rate, true-accept rate at fixed false-accept rates) and
identification (a gallery of one reference per identity, the new ones added without retraining;
top-1 accuracy), for identities seen in training (new images of them) and unseen ones, next to
raw pixels (the cosine of the flattened images) and, with ``pretrained_baselines``, the MAC and
R-MAC descriptors of ImageNet MobileNetV2 features (:mod:`fastmtl.models.descriptors`: no
training at all) as the baselines. A ROC plot is saved.

- ``data="digits"``: scikit-learn's 1,797 real 8x8 handwritten digits, each digit an identity;
  the digits in ``held_out`` (7, 8, 9) are never trained on. New images of trained digits verify
  far better than raw pixels; unseen digits only beat chance, not raw pixels: seven training
  classes are too few to learn a metric that transfers.
- ``data="faces"``: scikit-image's 100 real 25x25 face photos (``lfw_subset``). No offline face
  set has identity labels, so each photo is an identity and its random views (rotation, scale,
  shift, mirror, brightness, contrast, noise) are its samples: this measures an embedding
  invariant to those changes that still tells photos apart, on photos never trained on.

- ``data="questions"``: duplicate questions ("How old are you?" = "What is your age?"), the
  project's own template-written set (:mod:`fastmtl.data.questions`: 10 intents, 50 identities,
  paraphrases and near misses), a hashed word and character-trigram encoder; the intents
  ``time``, ``fix`` and ``meaning`` are never trained on; raw n-gram counts are the baseline.
  ``text_encoder="minilm"`` fine-tunes the pretrained MiniLM sentence encoder instead
  (:mod:`fastmtl.text`; its weights package installed); with ``pretrained_baselines`` the
  pretrained MiniLM without fine-tuning is measured as well.

``accuracy_at_tau``: the accuracy on the unseen identities' pairs at the threshold ``tau``
calibrated on the seen identities' pairs (no peeking).
"""

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from fastmtl.data.augment import random_views
from fastmtl.data.pk_sampler import PKSampler
from fastmtl.data.questions import INTENTS, hashed_ngrams, question_set
from fastmtl.metrics.verification import Verification, roc_curve, verification_report
from fastmtl.models.siamese import Gallery, SiameseNet, ngram_encoder, small_encoder
from fastmtl.ops import triplet_margin_loss
from fastmtl.pipelines._figures import pyplot, save_figure
from fastmtl.pipelines.detection import _threads

__all__ = [
    "DATASETS",
    "DATA_DEFAULTS",
    "SiameseConfig",
    "SiameseResult",
    "load_digits_tensors",
    "load_faces",
    "train_siamese",
]

DATASETS = ("digits", "faces", "questions")
# Per dataset: every digit (seven trained) 16 times; 16 of 70 photos in 4 views each; 16 of 32
# question identities, 3 paraphrases each.
DATA_DEFAULTS = {
    "digits": {"p": 7, "k": 16, "mining": "hard", "dim": 64, "lr": 3e-3},
    "faces": {"p": 16, "k": 4, "mining": "semihard", "dim": 64, "lr": 3e-3},
    "questions": {"p": 16, "k": 3, "mining": "semihard", "dim": 256, "lr": 1e-2},
}
# Fine-tuning the pretrained MiniLM: a BERT-sized learning rate, fewer steps (each costs a
# 6-layer transformer's forward and backward); its embeddings are 384-wide.
MINILM_DEFAULTS = {"lr": 5e-5, "steps": 100, "dim": 384}
TEXT_ENCODERS = ("ngram", "minilm")


@dataclass
class SiameseConfig:
    """Everything :func:`train_siamese` needs; the defaults are the CPU demo."""

    data: str = "digits"  # "digits" or "faces"
    seed: int = 0
    held_out: tuple = (7, 8, 9)  # digits never trained on
    val_fraction: float = 0.25  # digits: the trained digits' images kept for evaluation
    train_faces: int = 70  # faces: photos trained on (the rest are unseen identities)
    unseen_intents: tuple = ("time", "fix", "meaning")  # questions: intents never trained on
    text_encoder: str = "ngram"  # questions: "ngram" (trained from scratch) or "minilm" (fine-tuned)
    views: int = 6  # faces: random views per photo in evaluation
    steps: Optional[int] = None  # None: 400 (100 fine-tuning MiniLM)
    p: Optional[int] = None  # identities per batch (None: the dataset's, DATA_DEFAULTS)
    k: Optional[int] = None  # images per identity
    lr: Optional[float] = None
    margin: float = 0.3
    mining: Optional[str] = None
    distance: str = "euclidean"
    dim: Optional[int] = None  # embedding size
    widths: tuple = (32, 64)
    pretrained_baselines: bool = True  # MAC / R-MAC of ImageNet MobileNetV2 (skipped without its weights)
    pretrained_size: int = 128  # images upsampled to this side for MobileNetV2 (an 8 x 8 map at stride 16)
    device: str = "cpu"
    num_threads: Optional[int] = 1
    out_dir: str = "fastmtl-demo-siamese"
    progress: bool = True


@dataclass
class SiameseResult:
    """What :func:`train_siamese` measured and wrote."""

    config: SiameseConfig  # as run (the dataset's defaults filled in)
    history: list  # per step: {"loss", "active_fraction", "pos_mean", "neg_mean"}
    verification: Verification  # unseen identities, learned embeddings
    baseline: Verification  # unseen identities, raw pixels
    seen_verification: Verification  # new images of the trained identities, learned
    seen_baseline: Verification  # the same pairs, raw pixels
    accuracy_at_tau: float  # unseen pairs, at the tau calibrated on the seen pairs
    tau: float
    identification: dict  # top-1 accuracy: {"unseen", "seen", "baseline_unseen", "baseline_seen"}
    train_seconds: float
    # per descriptor ("mac", "rmac"; "minilm" for questions): {"auc", "eer",
    # "identification_unseen"} on the unseen identities with no training; empty when the
    # pretrained weights are not installed or the option is off
    pretrained: dict = field(default_factory=dict)
    roc_png: Optional[Path] = None
    model: Optional[SiameseNet] = field(default=None, repr=False)


def load_digits_tensors() -> "tuple[torch.Tensor, torch.Tensor]":
    """scikit-learn's digits as ``[1797, 1, 8, 8]`` floats in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def load_faces() -> torch.Tensor:
    """scikit-image's 100 face photos (``lfw_subset``, whose other 100 images are not faces) as
    ``[100, 1, 25, 25]`` floats in [0, 1]."""
    from skimage import data

    return torch.tensor(data.lfw_subset()[:100], dtype=torch.float32).unsqueeze(1)


@dataclass
class _Task:
    """Training batches and the evaluation images of one dataset."""

    batch: Callable  # step -> (inputs, labels)
    encoder: Callable  # config -> the encoder module
    raw: Callable  # inputs -> the no-training baseline's vectors (pixels, n-gram counts)
    pretrained: Callable  # config -> {name: inputs -> descriptors} of pretrained models, no training
    seen: tuple  # (images, labels): new images of trained identities
    unseen: tuple  # (images, labels): identities never trained on
    gallery: tuple  # (images, labels, unseen flags): one reference per identity
    queries: tuple  # (images, labels, unseen flags)


def _digits_task(config: SiameseConfig) -> _Task:
    images, labels = load_digits_tensors()
    g = torch.Generator().manual_seed(config.seed)
    unseen = torch.isin(labels, torch.tensor(config.held_out))
    seen_idx = torch.nonzero(~unseen).flatten()
    seen_idx = seen_idx[torch.randperm(len(seen_idx), generator=g)]
    n_val = int(len(seen_idx) * config.val_fraction)
    train_idx, val_idx, unseen_idx = seen_idx[n_val:], seen_idx[:n_val], torch.nonzero(unseen).flatten()
    batches = iter(PKSampler(labels[train_idx], config.p, config.k, config.steps, seed=config.seed))

    def batch(_step):
        b = train_idx[next(batches)]
        return images[b], labels[b]

    test_idx = torch.cat((val_idx, unseen_idx))  # images never trained on
    refs = torch.cat([_one_of(test_idx[labels[test_idx] == c], g) for c in labels.unique()])
    queries = test_idx[~torch.isin(test_idx, refs)]
    return _Task(
        batch,
        _image_encoder,
        _flat,
        _pretrained_embedders,
        (images[val_idx], labels[val_idx]),
        (images[unseen_idx], labels[unseen_idx]),
        (images[refs], labels[refs], unseen[refs]),
        (images[queries], labels[queries], unseen[queries]),
    )


def _faces_task(config: SiameseConfig) -> _Task:
    photos = load_faces()
    g = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(photos), generator=g)
    train, held = order[: config.train_faces], order[config.train_faces :]

    def batch(_step):
        ids = train[torch.randperm(len(train), generator=g)[: config.p]].repeat_interleave(config.k)
        return random_views(photos[ids], g, flip=True), ids

    def views(ids):
        ids = ids.repeat_interleave(config.views)
        return random_views(photos[ids], torch.Generator().manual_seed(config.seed + 1), flip=True), ids

    seen, unseen = views(train), views(held)
    is_unseen = torch.isin(torch.arange(len(photos)), held)
    ids = torch.arange(len(photos))
    query_images = torch.cat((seen[0], unseen[0]))
    query_ids = torch.cat((seen[1], unseen[1]))
    gallery, queries = (photos, ids, is_unseen), (query_images, query_ids, is_unseen[query_ids])
    return _Task(batch, _image_encoder, _flat, _pretrained_embedders, seen, unseen, gallery, queries)


class _Rows(torch.nn.Module):
    """An encoder of row numbers of a fixed table of tokenized texts (the question set), so one
    input serves the trained encoder, the n-gram baseline and the pretrained MiniLM alike."""

    def __init__(self, table: torch.Tensor, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.register_buffer("table", table, persistent=False)
        self.encoder = encoder

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.table[rows.to(self.table.device)])


def _text_encoder(config: SiameseConfig, texts: list) -> torch.nn.Module:
    if config.text_encoder == "minilm":
        from fastmtl.text import load_minilm

        minilm = load_minilm()
        return _Rows(minilm.tokenize(texts), minilm)
    return _Rows(hashed_ngrams(texts), ngram_encoder(dim=config.dim))  # linear: see ngram_encoder


def _minilm_embedders(texts: list) -> Callable:
    """The pretrained MiniLM's embeddings of question rows (empty without its weights)."""

    def embedders(config: SiameseConfig) -> dict:
        from fastmtl.text import load_minilm

        try:
            minilm = load_minilm().to(config.device)
        except ModuleNotFoundError:
            return {}
        return {"minilm": lambda rows: minilm.encode([texts[i] for i in rows.tolist()])}

    return embedders


def _questions_task(config: SiameseConfig) -> _Task:
    """Seen identities train on their first three paraphrases and are evaluated on the next two
    (templates 3 and 4); unseen intents are evaluated on every paraphrase; the gallery holds each
    identity's first paraphrase. Inputs are row numbers of the question set."""
    texts, ids, intents, templates = question_set()
    tokens = hashed_ngrams(texts)
    names = list(INTENTS)
    unseen = torch.isin(intents, torch.tensor([names.index(n) for n in config.unseen_intents]))
    train = torch.nonzero(~unseen & ((templates < 3) | (templates > 4))).flatten()
    seen_eval = torch.nonzero(~unseen & (templates >= 3) & (templates <= 4)).flatten()
    unseen_idx = torch.nonzero(unseen).flatten()
    batches = iter(PKSampler(ids[train], config.p, config.k, config.steps, seed=config.seed))

    def batch(_step):
        b = train[next(batches)]
        return b, ids[b]

    refs = torch.nonzero(templates == 0).flatten()
    queries = torch.cat((seen_eval, unseen_idx[templates[unseen_idx] > 0]))
    return _Task(
        batch,
        lambda c: _text_encoder(c, texts),
        lambda rows: _ngram_counts(tokens[rows]),
        _minilm_embedders(texts),
        (seen_eval, ids[seen_eval]),
        (unseen_idx, ids[unseen_idx]),
        (refs, ids[refs], unseen[refs]),
        (queries, ids[queries], unseen[queries]),
    )


def _image_encoder(config: SiameseConfig) -> torch.nn.Module:
    return small_encoder(1, config.dim, config.widths)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).float()


def _ngram_counts(tokens: torch.Tensor, buckets: int = 1 << 13) -> torch.Tensor:
    """Each text's hashed n-gram counts (padding dropped), ``[Q, buckets]``."""
    counts = torch.zeros(len(tokens), buckets).scatter_add_(1, tokens, torch.ones(tokens.shape))
    return counts[:, 1:]


def _one_of(members: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return members[torch.randint(0, len(members), (1,), generator=g)]


def _pair_scores(embeddings: torch.Tensor, labels: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """Cosine similarity and sameness of every unordered pair."""
    e = torch.nn.functional.normalize(embeddings, dim=1)
    i, j = torch.triu_indices(len(e), len(e), 1)
    return (e[i] * e[j]).sum(1), labels[i] == labels[j]


def _train(model: SiameseNet, task: _Task, config: SiameseConfig) -> list:
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    history = []
    model.train()
    for step in tqdm(range(config.steps), desc=f"train siamese ({config.data})", disable=not config.progress):
        images, labels = task.batch(step)
        out = triplet_margin_loss(
            model(images.to(config.device)),
            labels.to(config.device),
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


def _identify(embed: Callable, task: _Task) -> dict:
    """Top-1 accuracy of the queries against the gallery, the unseen identities added after the
    seen ones (as new identities would be)."""
    refs, ref_ids, ref_unseen = task.gallery
    gallery = Gallery(embed(refs[:1]).shape[1])
    for part in (~ref_unseen, ref_unseen):
        gallery.add(embed(refs[part]), ref_ids[part])
    images, ids, unseen = task.queries
    right = gallery.identify(embed(images))[0] == ids
    return {"unseen": float(right[unseen].float().mean()), "seen": float(right[~unseen].float().mean())}


def _pretrained_embedders(config: SiameseConfig) -> dict:
    """MAC and R-MAC of ImageNet MobileNetV2 stride-16 features of the images (gray to RGB,
    upsampled); empty without the weights package."""
    from fastmtl.models.descriptors import mac, rmac
    from fastmtl.models.detection.mobilenet import MobileNetV2Backbone

    try:
        backbone = MobileNetV2Backbone(stride=16, pretrained=True).eval().to(config.device)
    except ModuleNotFoundError:
        return {}

    def features(x):
        size = (config.pretrained_size, config.pretrained_size)
        x = torch.nn.functional.interpolate(
            x.expand(-1, 3, -1, -1), size=size, mode="bilinear", align_corners=False
        )
        with torch.no_grad():
            return torch.cat([backbone(b.to(config.device)).cpu() for b in x.split(64)])

    return {"mac": lambda x: mac(features(x)), "rmac": lambda x: rmac(features(x))}


def _pretrained_figures(config: SiameseConfig, task: _Task) -> dict:
    out = {}
    for name, embed in (task.pretrained(config) if config.pretrained_baselines else {}).items():
        report = verification_report(*_pair_scores(embed(task.unseen[0]), task.unseen[1]))
        ident = _identify(embed, task)["unseen"]
        out[name] = {"auc": report.auc, "eer": report.eer, "identification_unseen": ident}
    return out


def _save_roc(curves: dict, title: str, out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (far, tar) in curves.items():
        ax.plot(far, tar, label=name)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlabel("false-accept rate")
    ax.set_ylabel("true-accept rate")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out / "roc.png")


def resolved(config: SiameseConfig) -> SiameseConfig:
    """The config checked, its unset fields filled with the dataset's (and encoder's) defaults."""
    if config.data not in DATASETS:
        raise ValueError(f"data must be one of {DATASETS}, got {config.data!r}")
    if config.text_encoder not in TEXT_ENCODERS:
        raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {config.text_encoder!r}")
    if config.text_encoder != "ngram" and config.data != "questions":
        raise ValueError(f"text_encoder applies to data='questions' only, got data={config.data!r}")
    defaults = {"steps": 400, **DATA_DEFAULTS[config.data]}
    if config.text_encoder == "minilm":
        defaults.update(MINILM_DEFAULTS)
    unset = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    return dataclasses.replace(config, **unset)


def train_siamese(config: Optional[SiameseConfig] = None, *, save_plots: bool = True) -> SiameseResult:
    """Trains, evaluates verification and identification of seen and unseen identities (and the
    raw-pixel baseline), saves ``roc.png`` under ``config.out_dir``. Deterministic for a seed."""
    config = resolved(config or SiameseConfig())
    with _threads(config.num_threads):
        torch.manual_seed(config.seed)
        tasks = {"digits": _digits_task, "faces": _faces_task, "questions": _questions_task}
        task = tasks[config.data](config)
        model = SiameseNet(task.encoder(config)).to(config.device)
        start = time.perf_counter()
        history = _train(model, task, config)
        train_seconds = time.perf_counter() - start
        model.eval()

        def learned(x):
            with torch.no_grad():
                return torch.cat([model(b.to(config.device)).cpu() for b in x.split(512)])

        pixels = task.raw
        pairs = {}
        for name, (images, ids) in (("seen", task.seen), ("unseen", task.unseen)):
            pairs[name] = _pair_scores(learned(images), ids)
            pairs[name + " pixels"] = _pair_scores(pixels(images), ids)
        reports = {name: verification_report(*p) for name, p in pairs.items()}
        tau = reports["seen"].threshold
        scores, same = pairs["unseen"]
        raw = _identify(pixels, task)
        result = SiameseResult(
            config=config,
            history=history,
            verification=reports["unseen"],
            baseline=reports["unseen pixels"],
            seen_verification=reports["seen"],
            seen_baseline=reports["seen pixels"],
            accuracy_at_tau=float(((scores >= tau) == same).float().mean()),
            tau=tau,
            identification={
                **_identify(learned, task),
                "baseline_unseen": raw["unseen"],
                "baseline_seen": raw["seen"],
            },
            train_seconds=train_seconds,
            pretrained=_pretrained_figures(config, task),
            model=model,
        )
        if save_plots:
            labels = {"seen": "seen, learned", "seen pixels": "seen, raw pixels"}
            labels.update({"unseen": "unseen, learned", "unseen pixels": "unseen, raw pixels"})
            curves = {f"{labels[n]} (AUC {reports[n].auc:.3f})": roc_curve(*p)[:2] for n, p in pairs.items()}
            title = f"{config.data}: one-shot verification of images never trained on"
            result.roc_png = _save_roc(curves, title, Path(config.out_dir))
        return result
