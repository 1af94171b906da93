"""Single-image localization models of the slides (seeds/000, seeds/004): one network, several
heads, the first multi-task models of the course.

- Classification + localization: is there an object, which class, and where (one box).
- Multi-label classification + localization: ``k`` classes as ``k`` binary tasks, each with its
  own box (pedestrian, stop sign, car, traffic light in the slides).
- Landmarks: ``K`` points regressed at once (the 68 facial points).

Boxes are ``(cx, cy, w, h)`` and points ``(x, y)`` as fractions of the image, the outputs of a
sigmoid; the losses are in :mod:`fastmtl.losses.localization`.
"""

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["LandmarkHead", "LocalizationHead", "LocalizationOutput", "Localizer", "small_backbone"]


def small_backbone(in_channels: int = 3, width: int = 32) -> nn.Sequential:
    """Four stride-2 conv blocks and a global average pool: ``[N, in, H, W] -> [N, 4 width]``."""
    layers, c = [], in_channels
    for out in (width, 2 * width, 4 * width, 4 * width):
        layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@dataclass
class LocalizationOutput:
    """``presence`` logits ``[N]`` (one object) or ``[N, k]`` (multi-label); ``boxes`` ``[N, 4]``
    or ``[N, k, 4]`` in (cx, cy, w, h) image fractions; ``class_logits`` ``[N, C]`` (one object
    with ``C > 1`` classes) or None."""

    presence: Tensor
    boxes: Tensor
    class_logits: "Tensor | None" = None


class LocalizationHead(nn.Module):
    """Classification + localization head on a feature vector.

    ``multi_label=False``: one object at most: a presence logit, ``num_classes`` class logits
    (none when there is one class) and a box. ``multi_label=True``: a presence logit and a box
    per class (``k`` binary tasks + localization).
    """

    def __init__(self, in_features: int, num_classes: int, *, multi_label: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.multi_label = num_classes, multi_label
        per_box = num_classes if multi_label else 1
        self.presence = nn.Linear(in_features, per_box)
        self.box = nn.Linear(in_features, 4 * per_box)
        self.classes = nn.Linear(in_features, num_classes) if not multi_label and num_classes > 1 else None

    def forward(self, features: Tensor) -> LocalizationOutput:
        boxes = self.box(features).sigmoid()
        presence = self.presence(features)
        if self.multi_label:
            return LocalizationOutput(presence, boxes.unflatten(1, (self.num_classes, 4)))
        logits = self.classes(features) if self.classes is not None else None
        return LocalizationOutput(presence[:, 0], boxes, logits)


class LandmarkHead(nn.Module):
    """``K`` points ``[N, K, 2]`` as (x, y) image fractions."""

    def __init__(self, in_features: int, num_points: int) -> None:
        super().__init__()
        self.num_points = num_points
        self.points = nn.Linear(in_features, 2 * num_points)

    def forward(self, features: Tensor) -> Tensor:
        return self.points(features).sigmoid().unflatten(1, (self.num_points, 2))


class Localizer(nn.Module):
    """A backbone and one head: ``Localizer(small_backbone(), LocalizationHead(128, 3))``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor):
        return self.head(self.backbone(images))
