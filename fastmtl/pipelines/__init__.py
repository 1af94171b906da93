"""End-to-end training pipelines built on the fastmtl ops and models."""

from fastmtl.pipelines.detection import DetectionConfig, DetectionResult, train_detector
from fastmtl.pipelines.style_transfer import StyleTransferConfig, StyleTransferResult, transfer_style

__all__ = [
    "DetectionConfig",
    "DetectionResult",
    "StyleTransferConfig",
    "StyleTransferResult",
    "train_detector",
    "transfer_style",
]
