"""Train and evaluate the two-stage detector on the synthetic shapes, end to end.

``train_detector(DetectionConfig(...))`` draws the train and validation splits, trains
:class:`~fastmtl.models.detection.TwoStageDetector` with a progress bar, measures mAP on the
validation split next to a random baseline, and saves a picture of detections and a loss plot.
"""

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from fastmtl.data.shapes import SHAPE_NAMES, ShapesConfig, ShapesDataset, detection_collate
from fastmtl.metrics.detection_map import (
    COCO_IOU_THRESHOLDS,
    class_average_precisions,
    mean_average_precision,
)
from fastmtl.models.detection import DetectorConfig, HeadConfig, TwoStageDetector
from fastmtl.pipelines.detection_plots import save_detection_grid, save_loss_plot

__all__ = [
    "DetectionConfig",
    "DetectionResult",
    "evaluate_detector",
    "random_baseline_map50",
    "random_detections",
    "train_detector",
]


@dataclass
class DetectionConfig:
    """Everything :func:`train_detector` needs; the defaults are the CPU demo."""

    seed: int = 0
    image_size: int = 128
    train_size: int = 512
    val_size: int = 64
    steps: int = 500
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    proposals: str = "rpn"  # "rpn" (Faster R-CNN) or "fixed" (Fast R-CNN, sliding windows)
    widths: tuple = (16, 32, 64)  # backbone channels per stage
    stride: int = 8  # of the backbone's feature map
    head_hidden: int = 128
    rois_per_image: int = 64  # proposals sampled per image for the head's loss
    roi_sampling_ratio: int = 1  # bilinear samples per ROI-align bin side (the backward pass's cost)
    device: str = "cpu"
    # torch CPU threads while running (None: leave as is). One by default: the model is small and
    # its many small ops stall on a busy, shared CPU when torch's threads wait for each other.
    num_threads: Optional[int] = 1
    out_dir: str = "fastmtl-demo-detection"
    plot_images: int = 8
    baseline_boxes: int = 10  # random detections per image of the baseline
    baseline_draws: int = 10  # the baseline is the mean mAP of this many random draws
    progress: bool = True

    def detector_config(self) -> DetectorConfig:
        head = HeadConfig(
            hidden=self.head_hidden,
            samples_per_image=self.rois_per_image,
            sampling_ratio=self.roi_sampling_ratio,
        )
        return DetectorConfig(
            num_classes=ShapesDataset.num_classes,
            proposals=self.proposals,
            widths=self.widths,
            stride=self.stride,
            head=head,
        )

    def shapes_config(self) -> ShapesConfig:
        s = self.image_size
        return ShapesConfig(image_size=s, min_size=max(8, round(14 * s / 128)), max_size=round(48 * s / 128))


@dataclass
class DetectionResult:
    """What :func:`train_detector` measured and wrote."""

    history: list  # per step: {"total": float, <loss name>: float, ...}
    map50: float  # mAP@0.5 on the validation split
    map50_95: float  # mAP@[.5:.95]
    baseline_map50: float  # mean mAP@0.5 of random detections on the same split (chance level)
    class_ap50: dict  # {class name: AP@0.5}
    train_seconds: float
    detections_png: Optional[Path] = None
    loss_png: Optional[Path] = None
    model: Optional[TwoStageDetector] = field(default=None, repr=False)


@contextlib.contextmanager
def _threads(n: Optional[int]):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def random_detections(
    num_images: int,
    image_size: int,
    *,
    num_classes: int,
    per_image: int,
    min_size: float,
    max_size: float,
    generator: torch.Generator,
) -> list:
    """A chance-level detector: ``per_image`` boxes of random size, place, label and score."""
    out = []
    for _ in range(num_images):
        wh = min_size + (max_size - min_size) * torch.rand(per_image, 2, generator=generator)
        xy = (image_size - wh) * torch.rand(per_image, 2, generator=generator)
        out.append(
            {
                "boxes": torch.cat((xy, xy + wh), dim=1),
                "scores": torch.rand(per_image, generator=generator),
                "labels": torch.randint(1, num_classes + 1, (per_image,), generator=generator),
            }
        )
    return out


@torch.no_grad()
def evaluate_detector(model: TwoStageDetector, dataset, *, batch_size: int = 16, device: str = "cpu") -> list:
    """Detections (on the CPU) of every image of ``dataset``, in order."""
    model.eval()
    detections = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    for images, _ in loader:
        for det in model(images.to(device)):
            detections.append({k: v.cpu() for k, v in det.items()})
    return detections


def _to(targets: list, device: str) -> list:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def _lr_factor(step: int, config: DetectionConfig) -> float:
    """Linear warm-up, then cosine decay to 5 % of the learning rate."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _train(model: TwoStageDetector, train_set, config: DetectionConfig) -> list:
    from tqdm.auto import tqdm

    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) >= config.batch_size,
        collate_fn=detection_collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    history = []
    model.train()
    with tqdm(total=config.steps, desc=f"train ({config.proposals})", disable=not config.progress) as bar:
        while len(history) < config.steps:
            for images, targets in loader:
                losses = model(images.to(config.device), _to(targets, config.device))
                total: Tensor = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                scheduler.step()
                history.append({"total": total.item(), **{k: v.item() for k, v in losses.items()}})
                bar.update()
                bar.set_postfix(loss=f"{total.item():.3f}")
                if len(history) == config.steps:
                    break
    return history


def random_baseline_map50(
    targets: list,
    *,
    image_size: int,
    num_classes: int,
    per_image: int,
    min_size: float,
    max_size: float,
    draws: int,
    seed: int,
) -> float:
    """Chance level: the mean mAP@0.5 of ``draws`` sets of :func:`random_detections` against
    ``targets`` (a single draw is sometimes lucky, several times the typical value)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(draws):
        baseline = random_detections(
            len(targets),
            image_size,
            num_classes=num_classes,
            per_image=per_image,
            min_size=min_size,
            max_size=max_size,
            generator=generator,
        )
        total += mean_average_precision(baseline, targets)
    return total / draws


def _baseline_map50(targets: list, config: DetectionConfig, shapes) -> float:
    return random_baseline_map50(
        targets,
        image_size=config.image_size,
        num_classes=ShapesDataset.num_classes,
        per_image=config.baseline_boxes,
        min_size=shapes.min_size,
        max_size=shapes.max_size,
        draws=config.baseline_draws,
        seed=config.seed + 1,
    )


def train_detector(config: Optional[DetectionConfig] = None, *, save_plots: bool = True) -> DetectionResult:
    """Trains, evaluates (mAP@0.5 and mAP@[.5:.95] on the validation split, and a random
    baseline's mAP@0.5) and saves ``detections.png`` and ``losses.png`` under ``config.out_dir``."""
    config = config or DetectionConfig()
    if config.baseline_draws < 1:
        raise ValueError(f"baseline_draws must be >= 1, got {config.baseline_draws}")
    with _threads(config.num_threads):
        torch.manual_seed(config.seed)  # weights and the samplers of the RPN and the head
        shapes = config.shapes_config()
        train_set = ShapesDataset(config.train_size, seed=config.seed, config=shapes)
        val_set = ShapesDataset(config.val_size, seed=config.seed, start=config.train_size, config=shapes)
        model = TwoStageDetector(config.detector_config()).to(config.device)
        start = time.perf_counter()
        history = _train(model, train_set, config)
        train_seconds = time.perf_counter() - start

        detections = evaluate_detector(model, val_set, device=config.device)
        targets = [val_set[i][1] for i in range(len(val_set))]
        aps = class_average_precisions(detections, targets)
        result = DetectionResult(
            history=history,
            map50=sum(aps.values()) / len(aps) if aps else float("nan"),
            map50_95=mean_average_precision(detections, targets, iou_thresholds=COCO_IOU_THRESHOLDS),
            baseline_map50=_baseline_map50(targets, config, shapes),
            class_ap50={SHAPE_NAMES[c]: ap for c, ap in aps.items()},
            train_seconds=train_seconds,
            model=model,
        )
        if save_plots:
            out = Path(config.out_dir)
            n = min(config.plot_images, len(val_set))
            result.detections_png = save_detection_grid(
                [val_set[i][0] for i in range(n)],
                detections[:n],
                targets[:n],
                out / "detections.png",
                class_names=SHAPE_NAMES,
                title=f"{config.proposals} proposals: mAP@0.5 {result.map50:.3f} "
                f"(random {result.baseline_map50:.3f}); ground truth dashed",
            )
            result.loss_png = save_loss_plot(
                history, out / "losses.png", title=f"losses ({config.proposals})"
            )
        return result
