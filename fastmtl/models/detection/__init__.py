"""A two-stage (Fast / Faster R-CNN) detector and its parts."""

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
from fastmtl.models.detection.proposals import FixedProposalConfig, sliding_window_proposals
from fastmtl.models.detection.rpn import (
    RegionProposalNetwork,
    RPNConfig,
    RPNHead,
    rpn_losses,
    select_proposals,
)

__all__ = [
    "BoxCoder",
    "DetectorConfig",
    "FixedProposalConfig",
    "HeadConfig",
    "ROIHead",
    "RPNConfig",
    "RPNHead",
    "RegionProposalNetwork",
    "SmallBackbone",
    "TwoStageDetector",
    "cell_anchors",
    "decode_boxes",
    "encode_boxes",
    "grid_anchors",
    "head_losses",
    "head_targets",
    "match_boxes",
    "postprocess_detections",
    "rpn_losses",
    "sample_fg_bg",
    "select_proposals",
    "sliding_window_proposals",
]
