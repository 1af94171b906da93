"""Train and evaluate a U-Net on the multi-task scenes' class masks, end to end.

``train_segmentation(SegmentationConfig(...))`` draws the train and validation scenes
(:class:`~fastmtl.data.scenes.SceneDataset`: real cut-out digits, coins and a horse on real
textures; by default one class per kind, ``classes="fine"`` for the 12 classes of every digit),
trains :class:`~fastmtl.models.segmentation.UNet` with
cross-entropy plus Dice (:class:`~fastmtl.losses.SegmentationLoss`) and a progress bar, measures
per-class IoU, mIoU and pixel accuracy on the validation scenes with a confusion matrix kept on the
device (:class:`~fastmtl.metrics.ConfusionMatrix`) next to a constant prediction (every pixel the
most frequent training class), and saves image / ground truth / prediction side by side.
``amp`` trains in bf16 autocast on the CPU and fp16 with a GradScaler on CUDA; ``channels_last``
uses that memory format for the model and the images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastmtl.amp import autocast
from fastmtl.data.composite import CompositeConfig
from fastmtl.data.scenes import SceneDataset
from fastmtl.losses.segmentation import SegmentationLoss
from fastmtl.metrics.segmentation import ConfusionMatrix
from fastmtl.models.segmentation import UNet
from fastmtl.pipelines._figures import pyplot, save_figure
from fastmtl.pipelines.detection import _threads

__all__ = ["SegmentationConfig", "SegmentationResult", "median_frequency_weights", "train_segmentation"]


@dataclass
class SegmentationConfig:
    """Everything :func:`train_segmentation` needs; the defaults are the CPU demo."""

    image_size: int = 96
    classes: str = "coarse"  # "coarse": digit, coin, horse; "fine": each digit its own class
    train_images: int = 512
    val_images: int = 96  # later scenes of the same stream: new layouts, the same object pool
    steps: int = 800
    batch_size: int = 8
    lr: float = 3e-3
    encoder: str = "small"  # or "mobilenet_v2" (ImageNet weights with `pretrained`)
    upsample: str = "transpose"  # "bilinear" or "unpool"
    depth: int = 3
    width: int = 24
    pretrained: bool = True
    freeze_encoder: bool = False
    encoder_lr_mult: float = 0.1  # the encoder's learning rate relative to lr
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    balance: bool = False  # median-frequency class weights (Eigen & Fergus; hurt here at 300 steps)
    amp: bool = False
    channels_last: bool = False
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = 0  # 0 or None: torch's default
    progress: bool = True
    out_dir: str = "fastmtl-demo-segmentation"


@dataclass
class SegmentationResult:
    """What :func:`train_segmentation` measured and wrote."""

    config: SegmentationConfig
    class_names: tuple
    history: list  # per step: {"loss", "ce", "dice"}
    metrics: dict  # validation: {"miou", "pixel_accuracy", "iou" (per class, None where absent)}
    constant: dict  # the same for the constant prediction
    train_seconds: float
    png: Path | None = None
    model: UNet | None = field(default=None, repr=False)


def _stack(dataset: SceneDataset) -> tuple:
    images, masks = zip(*((im, t["mask"]) for im, t in (dataset[i] for i in range(len(dataset)))))
    return torch.stack(images), torch.stack(masks)


def _autocast(config: SegmentationConfig):
    return autocast(config.device, config.amp)


def _figures(matrix: ConfusionMatrix) -> dict:
    out = matrix.compute()
    iou = [None if v != v else round(float(v), 4) for v in out["iou"].tolist()]
    return {"miou": float(out["miou"]), "pixel_accuracy": float(out["pixel_accuracy"]), "iou": iou}


def median_frequency_weights(masks: torch.Tensor, classes: int) -> torch.Tensor:
    """``median(freq) / freq`` per class over the masks' pixels (1 for absent classes)."""
    freq = torch.bincount(masks.flatten(), minlength=classes).double() / masks.numel()
    seen = freq > 0
    weights = torch.ones(classes, dtype=torch.float64)
    weights[seen] = freq[seen].median() / freq[seen]
    return weights.float()


def _train(model, images, masks, config: SegmentationConfig) -> list:
    from tqdm.auto import tqdm

    classes = model.head.out_channels
    weights = median_frequency_weights(masks, classes).to(config.device) if config.balance else None
    loss_fn = SegmentationLoss(config.ce_weight, config.dice_weight, class_weights=weights)
    opt = torch.optim.AdamW(model.param_groups(config.lr, config.encoder_lr_mult), weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, [g["lr"] for g in opt.param_groups], total_steps=config.steps, pct_start=0.1
    )
    scaler = torch.amp.GradScaler(enabled=config.amp and torch.device(config.device).type == "cuda")
    g = torch.Generator().manual_seed(config.seed)
    order, history = torch.empty(0, dtype=torch.long), []
    model.train()
    for _ in tqdm(range(config.steps), desc="train segmentation", disable=not config.progress):
        if len(order) < config.batch_size:
            order = torch.cat((order, torch.randperm(len(images), generator=g)))
        idx, order = order[: config.batch_size], order[config.batch_size :]
        x, y = _to(images[idx], config), masks[idx].to(config.device)
        with _autocast(config):
            out = loss_fn(model(x), y)  # the loss is taken in float32 whatever the logits
        opt.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


def _to(images: torch.Tensor, config: SegmentationConfig) -> torch.Tensor:
    x = images.to(config.device)
    return x.contiguous(memory_format=torch.channels_last) if config.channels_last else x


@torch.no_grad()
def _predict(model, images, config: SegmentationConfig) -> torch.Tensor:
    model.eval()
    with _autocast(config):
        return torch.cat([model(_to(b, config)).argmax(1).cpu() for b in images.split(32)])


def _save_panel(images, masks, preds, num_classes: int, out: Path) -> Path:
    plt = pyplot()
    rows = min(4, len(images))
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    for r in range(rows):
        panels = (images[r].permute(1, 2, 0).clamp(0, 1), masks[r], preds[r])
        for c, (panel, title) in enumerate(zip(panels, ("image", "ground truth", "prediction"))):
            ax = axes[r][c]
            if c == 0:
                ax.imshow(panel.numpy())
            else:
                ax.imshow(
                    panel.numpy(),
                    cmap="tab20",
                    vmin=0,
                    vmax=max(num_classes, 20) - 1,
                    interpolation="nearest",
                )
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out / "segmentation.png")


def train_segmentation(
    config: SegmentationConfig | None = None, *, save_plots: bool = True
) -> SegmentationResult:
    """Trains, evaluates and (with ``save_plots``) saves ``segmentation.png`` under
    ``config.out_dir``. Deterministic for a seed on the CPU."""
    config = config or SegmentationConfig()
    if config.steps < 1 or config.batch_size < 1 or config.train_images < 1 or config.val_images < 1:
        raise ValueError("steps, batch_size, train_images and val_images must be >= 1")
    if config.classes not in ("coarse", "fine"):
        raise ValueError(f"classes must be 'coarse' or 'fine', got {config.classes!r}")
    with _threads(config.num_threads):
        torch.manual_seed(config.seed)
        scenes = CompositeConfig(image_size=config.image_size)
        coarse = config.classes == "coarse"
        train = SceneDataset(config.train_images, seed=config.seed, config=scenes, coarse=coarse)
        val = SceneDataset(
            config.val_images, seed=config.seed, start=config.train_images, config=scenes, coarse=coarse
        )
        (images, masks), (val_images, val_masks) = _stack(train), _stack(val)
        classes = train.num_classes + 1
        in_channels = images.shape[1]
        model = UNet(
            in_channels,
            classes,
            config.depth,
            config.width,
            config.upsample,
            config.encoder,
            config.pretrained,
            config.freeze_encoder,
        ).to(config.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        history = _train(model, images, masks, config)
        seconds = time.perf_counter() - start
        preds = _predict(model, val_images, config)
        learned, constant = ConfusionMatrix(classes), ConfusionMatrix(classes)
        learned.update(preds, val_masks)
        most = int(torch.bincount(masks.flatten(), minlength=classes).argmax())
        constant.update(torch.full_like(val_masks, most), val_masks)
        result = SegmentationResult(
            config, train.class_names, history, _figures(learned), _figures(constant), seconds, model=model
        )
        if save_plots:
            result.png = _save_panel(val_images, val_masks, preds, classes, Path(config.out_dir))
        return result
