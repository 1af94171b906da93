"""End-to-end training pipelines built on the fastmtl ops and models."""

from fastmtl.pipelines.detection import DetectionConfig, DetectionResult, train_detector

__all__ = ["DetectionConfig", "DetectionResult", "train_detector"]
