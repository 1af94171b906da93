"""Datasets for the fastmtl pipelines."""

from fastmtl.data.shapes import (
    SHAPE_NAMES,
    ShapesConfig,
    ShapesDataset,
    detection_collate,
    make_shapes_image,
)

__all__ = ["SHAPE_NAMES", "ShapesConfig", "ShapesDataset", "detection_collate", "make_shapes_image"]
