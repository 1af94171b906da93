"""Encoder stages and heads shared by the architecture tests: a small conv stack and MobileNetV2's
first stages (two different encoders), and a dense plus an image-level head."""

from torch import nn


def small_stages(width: int = 8, stride: int = 1, batchnorm: bool = False) -> list:
    norm = [nn.BatchNorm2d(8)] if batchnorm else []
    return [
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *norm, nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, width, 3, stride=stride, padding=1), nn.ReLU()),
    ]


def mobilenet_stages() -> list:
    from torchvision.models import mobilenet_v2

    features = mobilenet_v2().features
    return [features[:4], features[4:7]]  # strides 4 and 8, 24 and 32 channels


def heads(channels: int) -> dict:
    return {
        "seg": nn.Conv2d(channels, 5, 1),
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)),
    }
