"""End-to-end training pipelines built on the fastmtl ops and models."""

from fastmtl.pipelines.detection import DetectionConfig, DetectionResult, train_detector
from fastmtl.pipelines.style_transfer import StyleTransferConfig, StyleTransferResult, transfer_style
from fastmtl.pipelines.yolo import YOLOConfig, YOLOResult, train_yolo

__all__ = [
    "DetectionConfig",
    "DetectionResult",
    "StyleTransferConfig",
    "StyleTransferResult",
    "YOLOConfig",
    "YOLOResult",
    "train_detector",
    "train_yolo",
    "transfer_style",
]
