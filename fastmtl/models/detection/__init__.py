"""Detectors and their parts: a two-stage (Fast / Faster R-CNN) detector and a YOLOv1-style one."""

from fastmtl.models.detection.anchors import cell_anchors, grid_anchors
from fastmtl.models.detection.box_coder import BoxCoder, decode_boxes, encode_boxes
from fastmtl.models.detection.detector import DetectorConfig, SmallBackbone, TwoStageDetector
from fastmtl.models.detection.head import (
    HeadConfig,
    ROIHead,
    head_losses,
    head_targets,
    postprocess_detections,
)
from fastmtl.models.detection.matching import match_boxes, sample_fg_bg
from fastmtl.models.detection.mobilenet import MobileNetV2Backbone, mobilenet_v2_weights_path
from fastmtl.models.detection.proposals import FixedProposalConfig, sliding_window_proposals
from fastmtl.models.detection.rpn import (
    RegionProposalNetwork,
    RPNConfig,
    RPNHead,
    rpn_losses,
    select_proposals,
)
from fastmtl.models.detection.yolo import YOLODetector, YOLODetectorConfig, yolo_activations
from fastmtl.models.detection.yolo_coding import (
    decode_yolo,
    encode_yolo_targets,
    yolo_collate,
    yolo_detections,
)

__all__ = [
    "BoxCoder",
    "DetectorConfig",
    "FixedProposalConfig",
    "HeadConfig",
    "MobileNetV2Backbone",
    "ROIHead",
    "RPNConfig",
    "RPNHead",
    "RegionProposalNetwork",
    "SmallBackbone",
    "TwoStageDetector",
    "YOLODetector",
    "YOLODetectorConfig",
    "cell_anchors",
    "decode_boxes",
    "decode_yolo",
    "encode_boxes",
    "encode_yolo_targets",
    "grid_anchors",
    "head_losses",
    "head_targets",
    "match_boxes",
    "mobilenet_v2_weights_path",
    "postprocess_detections",
    "rpn_losses",
    "sample_fg_bg",
    "select_proposals",
    "sliding_window_proposals",
    "yolo_activations",
    "yolo_collate",
    "yolo_detections",
]
