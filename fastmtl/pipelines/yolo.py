"""Train and evaluate the YOLOv1-style detector on the composite scenes, end to end.

``train_yolo(YOLOConfig(...))`` draws train and validation splits of
:class:`~fastmtl.data.CompositeDataset` (real cut-out digits, coins and a horse on real photos),
trains :class:`~fastmtl.models.detection.YOLODetector` with the fused
:func:`fastmtl.ops.yolo_v1_loss` and Adam (a progress bar), decodes and NMSes its grid
(:func:`~fastmtl.models.detection.yolo_detections`), measures mAP@0.5 on the validation split
next to a random baseline, and saves a picture of detections and a loss plot.

Transfer learning (``backbone="mobilenet_v2"``): ImageNet MobileNetV2 features, fine-tuned at
``backbone_lr_factor`` times the head's learning rate, or frozen (``freeze_backbone``: a fixed
feature extractor, only the new head learns).
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset

from fastmtl.data import CompositeConfig, CompositeDataset
from fastmtl.metrics.detection_map import class_average_precisions
from fastmtl.models.detection import YOLODetector, YOLODetectorConfig, yolo_collate, yolo_detections
from fastmtl.ops import yolo_v1_loss
from fastmtl.pipelines.detection import _threads, random_baseline_map50
from fastmtl.pipelines.detection_plots import save_detection_grid, save_loss_plot

__all__ = ["YOLOConfig", "YOLOResult", "evaluate_yolo", "train_yolo", "yolo_optimizer"]


@dataclass
class YOLOConfig:
    """Everything :func:`train_yolo` needs; the defaults are the CPU demo."""

    seed: int = 0
    image_size: int = 128
    train_size: int = 2048
    val_size: int = 64
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 20
    backbone: str = "small"  # "small" (from scratch) or "mobilenet_v2" (ImageNet weights)
    freeze_backbone: bool = False
    backbone_lr_factor: float = 0.1  # a pretrained backbone's LR relative to the head's
    widths: tuple = (16, 32, 64, 128)  # small backbone channels per stage
    stride: int = 16  # grid cell side in pixels: a 128 px image has an 8 x 8 grid
    num_boxes: int = 2
    head_hidden: int = 128
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    iou_threshold: float = 0.5  # NMS
    score_threshold: float = 0.01  # detections kept for mAP (low: AP needs the whole ranking)
    device: str = "cpu"
    num_threads: Optional[int] = 1  # torch CPU threads while running (None: leave as is)
    out_dir: str = "fastmtl-demo-yolo"
    plot_images: int = 8
    plot_score_threshold: float = 0.3
    baseline_boxes: int = 10  # random detections per image of the baseline
    baseline_draws: int = 10  # the baseline is the mean mAP of this many random draws
    progress: bool = True
    scenes: CompositeConfig = field(default_factory=lambda: CompositeConfig(instances=False))

    def detector_config(self, num_classes: int) -> YOLODetectorConfig:
        return YOLODetectorConfig(
            num_classes=num_classes,
            num_boxes=self.num_boxes,
            backbone=self.backbone,
            widths=self.widths,
            stride=self.stride,
            head_hidden=self.head_hidden,
            freeze_backbone=self.freeze_backbone,
        )

    def scene_config(self) -> CompositeConfig:
        return CompositeConfig(**{**vars(self.scenes), "image_size": self.image_size})


@dataclass
class YOLOResult:
    """What :func:`train_yolo` measured and wrote."""

    history: list  # per step: {"total": float, "coord": ..., "size", "obj", "noobj", "class"}
    map50: float  # mAP@0.5 on the validation split
    baseline_map50: float  # mean mAP@0.5 of random detections on the same split (chance level)
    class_ap50: dict  # {class name: AP@0.5}
    train_seconds: float
    detections_png: Optional[Path] = None
    loss_png: Optional[Path] = None
    model: Optional[YOLODetector] = field(default=None, repr=False)


class _Kept(Dataset):
    """Keeps each item once drawn: epochs after the first cost no drawing, and a short run draws
    only the images it uses (the scenes are deterministic, so this changes no result)."""

    def __init__(self, dataset: Dataset):
        self.dataset, self.items = dataset, {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]


@torch.no_grad()
def evaluate_yolo(model: YOLODetector, dataset, config: YOLOConfig, *, batch_size: int = 32) -> list:
    """Detections (on the CPU) of every image of ``dataset``, in order."""
    model.eval()
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=yolo_collate)
    for images, _, _ in loader:
        pred = model(images.to(config.device))
        found = yolo_detections(
            pred,
            tuple(images.shape[-2:]),
            model.config.num_boxes,
            iou_threshold=config.iou_threshold,
            score_threshold=config.score_threshold,
        )
        out += [{k: v.cpu() for k, v in d.items()} for d in found]
    return out


def _lr_factor(step: int, config: YOLOConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the learning rate."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def yolo_optimizer(model: YOLODetector, config: YOLOConfig) -> torch.optim.Optimizer:
    """Adam; a pretrained backbone learns ``backbone_lr_factor`` times slower than the new head."""
    pretrained = config.backbone != "small"
    backbone_lr = config.lr * (config.backbone_lr_factor if pretrained else 1.0)
    groups = model.param_groups(config.lr, backbone_lr)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def _train(model: YOLODetector, train_set, config: YOLOConfig) -> list:
    from tqdm.auto import tqdm

    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) >= config.batch_size,
        collate_fn=yolo_collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = yolo_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    mc, history = model.config, []
    model.train()
    with tqdm(total=config.steps, desc=f"train yolo ({config.backbone})", disable=not config.progress) as bar:
        while len(history) < config.steps:
            for images, rows, counts in loader:
                pred = model(images.to(config.device))
                losses = yolo_v1_loss(
                    pred,
                    rows.to(config.device),
                    counts.to(config.device),
                    num_boxes=mc.num_boxes,
                    num_classes=mc.num_classes,
                    lambda_coord=config.lambda_coord,
                    lambda_noobj=config.lambda_noobj,
                    reduction="mean",  # per image: the LR does not depend on the batch size
                )
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                optimizer.step()
                scheduler.step()
                history.append({k: v.item() for k, v in losses.items()})
                bar.update()
                bar.set_postfix(loss=f"{history[-1]['total']:.3f}")
                if len(history) == config.steps:
                    break
    return history


def _save_plots(result: YOLOResult, val_set, detections: list, targets: list, config: YOLOConfig) -> None:
    out = Path(config.out_dir)
    n = min(config.plot_images, len(val_set))
    name = config.backbone + (" frozen" if config.freeze_backbone else "")
    result.detections_png = save_detection_grid(
        [val_set[i][0] for i in range(n)],
        detections[:n],
        targets[:n],
        out / "detections.png",
        class_names=val_set.class_names,
        score_threshold=config.plot_score_threshold,
        title=f"YOLO ({name}): mAP@0.5 {result.map50:.3f} (random {result.baseline_map50:.3f}); "
        f"score >= {config.plot_score_threshold}, ground truth dashed",
    )
    result.loss_png = save_loss_plot(result.history, out / "losses.png", title=f"YOLOv1 loss terms ({name})")


def _baseline(targets: list, config: YOLOConfig, num_classes: int) -> float:
    """Random boxes of the scenes' object sizes, places and classes (chance level)."""
    scenes = config.scene_config()
    return random_baseline_map50(
        targets,
        image_size=config.image_size,
        num_classes=num_classes,
        per_image=config.baseline_boxes,
        min_size=scenes.min_scale * config.image_size,
        max_size=scenes.max_scale * config.image_size,
        draws=config.baseline_draws,
        seed=config.seed + 1,
    )


def train_yolo(config: Optional[YOLOConfig] = None, *, save_plots: bool = True) -> YOLOResult:
    """Trains, evaluates (mAP@0.5 on the validation split, and a random baseline's) and saves
    ``detections.png`` and ``losses.png`` under ``config.out_dir``. Deterministic for a seed."""
    config = config or YOLOConfig()
    if config.baseline_draws < 1:
        raise ValueError(f"baseline_draws must be >= 1, got {config.baseline_draws}")
    with _threads(config.num_threads):
        torch.manual_seed(config.seed)
        scenes = config.scene_config()
        train_set = _Kept(CompositeDataset(config.train_size, seed=config.seed, config=scenes))
        val_set = CompositeDataset(config.val_size, seed=config.seed, start=config.train_size, config=scenes)
        model = YOLODetector(config.detector_config(val_set.num_classes)).to(config.device)
        start = time.perf_counter()
        history = _train(model, train_set, config)
        train_seconds = time.perf_counter() - start

        detections = evaluate_yolo(model, val_set, config)
        targets = [val_set[i][1] for i in range(len(val_set))]
        aps = class_average_precisions(detections, targets)
        result = YOLOResult(
            history=history,
            map50=sum(aps.values()) / len(aps) if aps else float("nan"),
            baseline_map50=_baseline(targets, config, val_set.num_classes),
            class_ap50={val_set.class_names[c]: ap for c, ap in aps.items()},
            train_seconds=train_seconds,
            model=model,
        )
        if save_plots:
            _save_plots(result, val_set, detections, targets, config)
        return result
