"""The slides' multi-task experiment (seeds/002: segmentation + depth, fixed weights against learned
uncertainty weights), on the multi-task scenes, with a third, image-level task and every balancing
strategy of :mod:`fastmtl.mtl`.

``train_mtl(MTLConfig(...))`` draws the train and validation scenes
(:class:`~fastmtl.data.scenes.SceneDataset`, coarse classes) and trains, from the same seeded
initialization and on the same batches, one hard-sharing network per row of the table
(:class:`~fastmtl.mtl.HardSharing`: a U-Net body up to its last feature map, shared, on ImageNet
MobileNetV2 by default (trained from scratch, the small encoder learned too little of the presence
task in the CPU budget); a 1x1 convolution for the class mask (cross-entropy), a 1x1 convolution
for the depth map (L1, metres), global max pooling (a class is present where any pixel shows it)
and a linear layer for the multi-label class presence (BCE with logits)):

- one single-task network per task (the reference each multi-task run is measured against);
- fixed weights ``L = sum_t w_t L_t`` (``config.fixed``: the unweighted sum and seg/depth mixes);
- learned weightings and gradient balancing (``config.strategies``): uncertainty weighting, DWA,
  GradNorm, PCGrad, MGDA, FAMO and DTP, all through :class:`~fastmtl.mtl.trainer.MTLTrainer`.

Every run is measured on the validation scenes: mIoU and pixel accuracy (seg), abs rel and RMSE
(depth), label accuracy and macro F1 (presence), and the multi-task gain
``Delta_m = 1/T sum_t (-1)^l_t (M_t - M_single,t) / M_single,t * 100`` (:func:`delta_m`) over one
metric per task (:data:`DELTA_METRICS`: mIoU, abs rel, F1). Each head starts at the constant
prediction (its bias set from the training labels), which is also measured, so that "learned"
means "better than a constant". ``seeds > 1`` repeats every run (new initialization and batches)
and reports means and standard deviations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.amp import autocast
from fastmtl.data.composite import CompositeConfig
from fastmtl.data.scenes import SceneDataset
from fastmtl.metrics.segmentation import ConfusionMatrix
from fastmtl.models.segmentation import UNet
from fastmtl.mtl.architectures import HardSharing
from fastmtl.mtl.trainer import SPACES, MTLTrainer
from fastmtl.mtl.weighting import DTP, DWA, FAMO, FixedWeighting, GradNorm, UncertaintyWeighting
from fastmtl.pipelines._figures import pyplot, save_figure
from fastmtl.pipelines.detection import _threads

__all__ = [
    "DELTA_METRICS",
    "LARGE",
    "MTLConfig",
    "MTLResult",
    "RunResult",
    "STRATEGIES",
    "delta_m",
    "format_table",
    "train_mtl",
]

TASKS = ("seg", "depth", "present")
STRATEGIES = ("uncertainty", "dwa", "gradnorm", "pcgrad", "mgda", "famo", "dtp")
# The one metric per task that Delta_m averages, and whether lower is better for it.
DELTA_METRICS = {"seg": "miou", "depth": "abs_rel", "present": "f1"}
LOWER_IS_BETTER = {
    "miou": False,
    "pixel_accuracy": False,
    "abs_rel": True,
    "rmse": True,
    "accuracy": False,
    "f1": False,
}
_STRATEGY_NAMES = {
    "uncertainty": "uncertainty weighting",
    "dwa": "DWA",
    "gradnorm": "GradNorm",
    "pcgrad": "PCGrad (equal weights)",
    "mgda": "MGDA",
    "famo": "FAMO",
    "dtp": "DTP",
}
_LEARNED = ("uncertainty", "dwa", "gradnorm", "famo", "dtp")  # weights that change: the PNG's

# A bigger setting for a GPU (``MTLConfig(**LARGE)``, ``fastmtl demo mtl --large``).
LARGE = {"image_size": 128, "train_images": 1024, "val_images": 256, "steps": 2000, "batch_size": 32}


@dataclass
class MTLConfig:
    """Everything :func:`train_mtl` needs; the defaults are the CPU demo (a few minutes on 2 cores)."""

    image_size: int = 64
    train_images: int = 256
    val_images: int = 96  # later scenes of the same stream: new layouts, the same object pool
    steps: int = 250
    batch_size: int = 8
    lr: float = 3e-3
    encoder: str = "mobilenet_v2"  # ImageNet MobileNetV2 (fine-tuned at encoder_lr_mult), or "small"
    encoder_lr_mult: float = 0.1
    unet_depth: int = 2  # the small encoder's
    width: int = 16
    # (seg, depth, present) weights of the fixed-weight runs: the unweighted sum, two seg/depth mixes,
    # and uncertainty weighting's starting point (1/sigma^2 for classification, 1/(2 sigma^2) for
    # regression at sigma = 1), which tells its learning apart from its initial mix
    fixed: tuple = ((1 / 3, 1 / 3, 1 / 3), (0.8, 0.1, 0.1), (0.1, 0.8, 0.1), (0.4, 0.2, 0.4))
    strategies: tuple = STRATEGIES
    space: str = "representation"  # where PCGrad / MGDA / GradNorm take per-task gradients
    seeds: int = 1  # each run repeated with seeds seed, seed + 1, ...: new heads, decoder and batches
    amp: bool = False
    seed: int = 0
    device: str = "cpu"
    # 1: two threads ran 17x slower per step (1.95 s vs 0.11 s) while another process held one of
    # this machine's 2 cores; 0 or None: torch's default
    num_threads: int | None = 1
    progress: bool = True
    out_dir: str = "fastmtl-demo-mtl"


@dataclass
class RunResult:
    """One row of the table: a weighting's metrics (mean and standard deviation over the seeds)."""

    name: str
    kind: str  # "single", "fixed" or "strategy"
    tasks: tuple
    weights: dict  # {task: weight share} (fixed; for learned weightings the mean over the last 10% of steps)
    metrics: dict  # {metric: mean over seeds}
    std: dict  # {metric: standard deviation over seeds (0 for one seed)}
    per_seed: list  # [{metric: value}] per seed
    delta_m: float | None  # mean over seeds (None for single-task runs)
    delta_m_std: float | None
    seconds: float  # training and evaluation, mean over seeds
    weight_history: Tensor | None = field(default=None, repr=False)  # [steps, T] of the first seed


@dataclass
class MTLResult:
    """What :func:`train_mtl` measured and wrote."""

    config: MTLConfig
    class_names: tuple
    constant: dict  # the metrics of the constant prediction
    runs: list  # RunResult per row
    seconds: float
    png: Path | None = None


def delta_m(metrics: dict, single: dict, lower_is_better: dict) -> float:
    """``1/T sum_t (-1)^l_t (M_t - M_single,t) / M_single,t * 100`` over the metrics named in
    ``single`` (one per task): positive when the multi-task model is better on average."""
    if not single or set(single) - set(metrics) or set(single) - set(lower_is_better):
        raise ValueError(f"metrics and lower_is_better must cover the single-task metrics {sorted(single)}")
    terms = []
    for name, ref in single.items():
        if ref == 0:
            raise ValueError(f"single-task {name} is 0: the relative change is undefined")
        sign = -1.0 if lower_is_better[name] else 1.0
        terms.append(sign * (metrics[name] - ref) / ref * 100.0)
    return sum(terms) / len(terms)


def _check(config: MTLConfig) -> None:
    positive = (
        "image_size",
        "steps",
        "batch_size",
        "train_images",
        "val_images",
        "seeds",
        "unet_depth",
        "width",
    )
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if config.batch_size > config.train_images:
        raise ValueError(
            f"batch_size must be <= train_images ({config.train_images}), got {config.batch_size}"
        )
    if config.encoder not in ("small", "mobilenet_v2"):
        raise ValueError(f"encoder must be 'small' or 'mobilenet_v2', got {config.encoder!r}")
    smallest = 2**config.unet_depth if config.encoder == "small" else 32  # MobileNetV2: stride 32
    if config.image_size < smallest:
        raise ValueError(f"image_size must be >= {smallest} for this encoder, got {config.image_size}")
    for name in ("lr", "encoder_lr_mult"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    bad = [s for s in config.strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"strategies must be among {STRATEGIES}, got {bad}")
    if config.space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {config.space!r}")
    for w in config.fixed:
        if (
            not isinstance(w, (tuple, list))
            or len(w) != len(TASKS)
            or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in w)
        ):
            raise ValueError(f"fixed must hold (seg, depth, present) weights, finite and >= 0, got {w!r}")
        if sum(w) <= 0:
            raise ValueError(f"fixed weights must not all be 0, got {w!r}")


def _load(config: MTLConfig) -> tuple:
    """``(train, val, class_names)``: ``{"image", "seg", "depth", "present"}`` tensors each."""
    scenes = CompositeConfig(image_size=config.image_size)
    train = SceneDataset(config.train_images, seed=config.seed, config=scenes, coarse=True)
    val = SceneDataset(
        config.val_images, seed=config.seed, start=config.train_images, config=scenes, coarse=True
    )

    def stack(ds: SceneDataset) -> dict:
        items = [ds[i] for i in range(len(ds))]
        out = {"image": torch.stack([im for im, _ in items])}
        for task, key in zip(TASKS, ("mask", "depth", "present")):
            out[task] = torch.stack([t[key] for _, t in items])
        return out

    return stack(train), stack(val), train.class_names


def _priors(train: dict, classes: int) -> dict:
    """Each head's constant prediction from the training labels: class log-frequencies, the mean
    depth, the presence log-odds."""
    freq = torch.bincount(train["seg"].flatten(), minlength=classes).double() / train["seg"].numel()
    rate = train["present"].double().mean(0).clamp(1e-3, 1 - 1e-3)
    return {
        "seg": freq.clamp(min=1e-6).log().float(),
        "depth": train["depth"].double().mean().float().view(1),
        "present": (rate / (1 - rate)).log().float(),
    }


def _model(config: MTLConfig, classes: int, labels: int, priors: dict, seed: int) -> HardSharing:
    """The three-head network, identical for every run of a seed. Each head starts near the
    constant prediction (its bias the prior, its weights scaled down) so that no task starts with
    a huge loss (depth in metres would) that swamps the others before any weighting acts."""
    torch.manual_seed(seed)
    upsample = "transpose" if config.encoder == "small" else "bilinear"
    body = UNet(3, 1, config.unet_depth, config.width, upsample, config.encoder, pretrained=True)
    body.head = nn.Identity()  # the body ends at the decoder's last feature map, shared by the heads
    c = body.out_channels
    heads = {
        "seg": nn.Conv2d(c, classes, 1),
        "depth": nn.Conv2d(c, 1, 1),
        "present": nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c, labels)),
    }
    with torch.no_grad():
        for task, head in heads.items():
            last = head if task != "present" else head[-1]
            last.weight.mul_(0.1)  # small, not zero: the body still gets gradient from step one
            last.bias.copy_(priors[task])
    return HardSharing(body, heads)


def _loss_fns() -> dict:
    return {
        "seg": lambda out, y: F.cross_entropy(out.float(), y),
        "depth": lambda out, y: F.l1_loss(out.float().squeeze(1), y),
        "present": lambda out, y: F.binary_cross_entropy_with_logits(out.float(), y),
    }


@dataclass
class _Spec:
    name: str
    kind: str
    tasks: tuple
    make: object  # () -> Weighting
    gradient: str = "none"
    kpis: bool = False  # DTP: report KPIs at each epoch


def _plan(config: MTLConfig) -> list:
    """The table's rows: single tasks, the fixed weights, then the strategies."""
    specs = [_Spec(f"{t} only", "single", (t,), lambda t=t: FixedWeighting({t: 1.0})) for t in TASKS]
    for w in config.fixed:
        label = "unweighted sum" if len(set(w)) == 1 else "fixed " + "/".join(f"{v:g}" for v in w)
        specs.append(_Spec(label, "fixed", TASKS, lambda w=w: FixedWeighting(dict(zip(TASKS, w)))))
    kinds = {"seg": "classification", "depth": "regression", "present": "classification"}
    makers = {
        "uncertainty": lambda: UncertaintyWeighting(kinds),
        "dwa": lambda: DWA(TASKS),
        "gradnorm": lambda: GradNorm(TASKS),
        "pcgrad": lambda: FixedWeighting(dict.fromkeys(TASKS, 1.0)),
        "mgda": lambda: FixedWeighting(dict.fromkeys(TASKS, 1.0)),
        "famo": lambda: FAMO(TASKS),
        "dtp": lambda: DTP(TASKS),
    }
    for s in config.strategies:
        gradient = s if s in ("pcgrad", "mgda") else "none"
        specs.append(_Spec(_STRATEGY_NAMES[s], "strategy", TASKS, makers[s], gradient, kpis=s == "dtp"))
    return specs


def _autocast(config: MTLConfig):
    return autocast(config.device, config.amp)


@torch.no_grad()
def _predict(model: nn.Module, images: Tensor, config: MTLConfig) -> dict:
    model.eval()
    outs: dict = {}
    for batch in images.split(32):
        with _autocast(config):
            out = model(batch.to(config.device))
        for task, value in out.items():
            outs.setdefault(task, []).append(value.float().cpu())
    model.train()
    return {task: torch.cat(v) for task, v in outs.items()}


def _presence_metrics(logits: Tensor, truth: Tensor) -> dict:
    pred, truth = logits > 0, truth > 0.5
    tp = (pred & truth).sum(0).double()
    wrong = (pred != truth).sum(0).double()
    # F1 = 2TP / (2TP + FP + FN) per class; a class neither present nor predicted counts as 1
    f1 = torch.where(2 * tp + wrong > 0, 2 * tp / (2 * tp + wrong).clamp(min=1), torch.ones_like(tp))
    return {"accuracy": float((pred == truth).double().mean()), "f1": float(f1.mean())}


def _metrics(preds: dict, val: dict, classes: int) -> dict:
    """Validation metrics of the tasks in ``preds``."""
    out = {}
    if "seg" in preds:
        cm = ConfusionMatrix(classes)
        cm.update(preds["seg"].argmax(1) if preds["seg"].is_floating_point() else preds["seg"], val["seg"])
        figs = cm.compute()
        out.update(miou=float(figs["miou"]), pixel_accuracy=float(figs["pixel_accuracy"]))
    if "depth" in preds:
        d, truth = preds["depth"].reshape(val["depth"].shape).double(), val["depth"].double()
        out["abs_rel"] = float(((d - truth).abs() / truth).mean())
        out["rmse"] = float(((d - truth) ** 2).mean().sqrt())
    if "present" in preds:
        out.update(_presence_metrics(preds["present"], val["present"]))
    return out


def _constant(train: dict, val: dict, priors: dict, classes: int) -> dict:
    """The metrics of predicting each head's prior everywhere."""
    n, size = len(val["image"]), val["seg"].shape[-2:]
    preds = {
        "seg": torch.full((n, *size), int(priors["seg"].argmax()), dtype=torch.long),
        "depth": torch.full((n, *size), float(priors["depth"])),
        "present": priors["present"].expand(n, -1),
    }
    return _metrics(preds, val, classes)


def _kpis(model: nn.Module, probe: dict, config: MTLConfig, classes: int) -> dict:
    """DTP's key performance indicators in [0, 1] (higher is better) on a few training images:
    mIoU, the depth accuracy delta < 1.25, presence label accuracy."""
    preds = _predict(model, probe["image"], config)
    m = _metrics(preds, probe, classes)
    d = preds["depth"].reshape(probe["depth"].shape)
    ratio = torch.maximum(d / probe["depth"], probe["depth"] / d.clamp(min=1e-6))
    return {"seg": m["miou"], "depth": float((ratio < 1.25).double().mean()), "present": m["accuracy"]}


def _optimizer(model: HardSharing, weighting: nn.Module, config: MTLConfig) -> torch.optim.Optimizer:
    """AdamW: the body's groups (a pretrained encoder at ``encoder_lr_mult``), the heads, and the
    weighting's learned parameters (uncertainty's log-variances) without weight decay."""
    groups = model.encoder.param_groups(config.lr, config.encoder_lr_mult)
    groups.append({"params": list(model.heads.parameters()), "lr": config.lr})
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        groups.append({"params": learned, "lr": config.lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, weight_decay=1e-4)


def _train_run(spec: _Spec, data: tuple, config: MTLConfig, seed: int, bar) -> tuple:
    """Trains and evaluates one row for one seed: ``(metrics, weight history [steps, T], seconds)``."""
    train, val, classes, priors = data
    start = time.perf_counter()
    full = _model(config, classes, train["present"].shape[1], priors, seed)
    model = HardSharing(full.encoder, {t: full.heads[t] for t in spec.tasks}).to(config.device)
    weighting = spec.make()
    opt = _optimizer(model, weighting, config)
    max_lr = [g["lr"] for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, total_steps=config.steps, pct_start=0.1)
    trainer = MTLTrainer(
        model, {t: _loss_fns()[t] for t in spec.tasks}, weighting, opt,
        gradient=spec.gradient, space=config.space, amp=config.amp, seed=seed,
    )  # fmt: skip
    targets = {t: train[t] for t in spec.tasks}
    probe = {k: v[:32].cpu() for k, v in train.items()}
    callback = (lambda tr: weighting.update_kpis(_kpis(model, probe, config, classes))) if spec.kpis else None
    chunk = 25  # fit in chunks, so that one bar follows every run
    while trainer.step_count < config.steps:
        steps = min(trainer.step_count + chunk, config.steps)
        done = trainer.step_count
        trainer.fit(
            train["image"], targets, steps, config.batch_size,
            scheduler=sched, progress=False, log_every=0, epoch_callback=callback,
        )  # fmt: skip
        bar.update(trainer.step_count - done)
    metrics = _metrics(_predict(model, val["image"], config), val, classes)
    return metrics, trainer.history()["weights"], time.perf_counter() - start


def _mean_std(values: list) -> tuple:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def _summarize(spec: _Spec, per_seed: list, histories: list, seconds: list, singles: list) -> RunResult:
    """A row from its per-seed metrics; ``singles[s]``: seed s's single-task reference metrics."""
    names = list(per_seed[0])
    stats = {k: _mean_std([m[k] for m in per_seed]) for k in names}
    gains = None
    if spec.kind != "single":
        gains = _mean_std([delta_m(m, ref, LOWER_IS_BETTER) for m, ref in zip(per_seed, singles)])
    hist = histories[0]
    if spec.kind == "single":
        weights = {t: float(t in spec.tasks) for t in TASKS}
    else:
        tail = hist[-max(1, len(hist) // 10) :].mean(0)
        weights = dict(zip(TASKS, (tail / tail.sum()).tolist()))
    return RunResult(
        spec.name, spec.kind, spec.tasks, weights,
        {k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()}, per_seed,
        gains[0] if gains else None, gains[1] if gains else None,
        sum(seconds) / len(seconds), hist if spec.kind == "strategy" else None,
    )  # fmt: skip


def _run_all(config: MTLConfig, specs: list, data: tuple) -> list:
    from tqdm.auto import tqdm

    seeds = [config.seed + i for i in range(config.seeds)]
    raw = [([], [], []) for _ in specs]  # per row: (metrics, histories, seconds), one per seed
    total = config.steps * len(specs) * len(seeds)
    with tqdm(total=total, desc="mtl runs", unit="step", disable=not config.progress) as bar:
        for seed in seeds:
            for spec, stores in zip(specs, raw):
                bar.set_postfix_str(f"seed {seed}: {spec.name}")
                for store, value in zip(stores, _train_run(spec, data, config, seed, bar)):
                    store.append(value)
    singles = [
        {
            DELTA_METRICS[t]: stores[0][i][DELTA_METRICS[t]]
            for s, stores in zip(specs, raw)
            if s.kind == "single"
            for t in s.tasks
        }
        for i in range(len(seeds))
    ]
    return [_summarize(s, *stores, singles) for s, stores in zip(specs, raw)]


def _fmt(value: float | None, std: float | None, scale: float, digits: int, seeds: int) -> str:
    if value is None:
        return "-"
    text = f"{value * scale:.{digits}f}"
    return text + (f"±{std * scale:.{digits}f}" if seeds > 1 and std is not None else "")


_COLUMNS = (  # (header, metric, scale, digits)
    ("mIoU[%]", "miou", 100, 1),
    ("PixAcc[%]", "pixel_accuracy", 100, 1),
    ("AbsRel", "abs_rel", 1, 3),
    ("RMSE[m]", "rmse", 1, 3),
    ("PresAcc[%]", "accuracy", 100, 1),
    ("F1[%]", "f1", 100, 1),
)


def format_table(result: MTLResult) -> str:
    """The table in the shape of seeds/002's: one row per weighting, task weights, per-task metrics,
    Delta_m % and the time per run."""
    seeds = result.config.seeds
    header = ["Loss", "w_seg", "w_depth", "w_pres", *(c[0] for c in _COLUMNS), "Δm[%]", "time[s]"]
    rows = [["constant prediction", "-", "-", "-"]]
    rows[0] += [_fmt(result.constant.get(m), None, s, d, 1) for _, m, s, d in _COLUMNS] + ["-", "-"]
    for run in result.runs:
        row = [run.name, *(f"{run.weights[t]:.3g}" for t in TASKS)]
        row += [_fmt(run.metrics.get(m), run.std.get(m), s, d, seeds) for _, m, s, d in _COLUMNS]
        gain = "(ref)" if run.kind == "single" else _fmt(run.delta_m, run.delta_m_std, 1, 2, seeds)
        rows.append(row + [gain, f"{run.seconds:.1f}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _save_weights(runs: list, path: Path) -> Path | None:
    """One subplot per learned weighting: each task's share of the total weight over the steps."""
    learned = [
        r for r in runs if r.weight_history is not None and r.name in {_STRATEGY_NAMES[s] for s in _LEARNED}
    ]
    if not learned:
        return None
    plt = pyplot()
    cols = min(3, len(learned))
    rows = math.ceil(len(learned) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, run in zip(axes.flat, learned):
        w = run.weight_history
        share = w / w.sum(1, keepdim=True).clamp(min=1e-12)
        for i, t in enumerate(TASKS):
            ax.plot(range(1, len(w) + 1), share[:, i].numpy(), label=t)
        ax.set_title(run.name, fontsize=10)
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of the total weight")
    for ax in list(axes.flat)[len(learned) :]:
        ax.set_axis_off()
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def train_mtl(config: MTLConfig | None = None, *, save_plots: bool = True) -> MTLResult:
    """Trains and evaluates every row and (with ``save_plots``) saves ``mtl-weights.png`` under
    ``config.out_dir``. Deterministic for a seed on the CPU."""
    config = config or MTLConfig()
    _check(config)
    start = time.perf_counter()
    with _threads(config.num_threads):
        train, val, class_names = _load(config)
        classes = len(class_names)
        priors = _priors(train, classes)
        data = ({k: v.to(config.device) for k, v in train.items()}, val, classes, priors)
        runs = _run_all(config, _plan(config), data)
        result = MTLResult(config, class_names, _constant(train, val, priors, classes), runs, 0.0)
        if save_plots:
            result.png = _save_weights(runs, Path(config.out_dir) / "mtl-weights.png")
    result.seconds = time.perf_counter() - start
    return result
