"""Datasets for the fastmtl pipelines."""

from fastmtl.data.backgrounds import BACKGROUNDS
from fastmtl.data.composite import (
    CompositeConfig,
    CompositeDataset,
    class_mask,
    composite_class_names,
    make_composite_image,
)
from fastmtl.data.cutouts import SOURCES, SourceUnavailableError, load_cutouts
from fastmtl.data.nyud import NYUDFolder
from fastmtl.data.pk_sampler import PKSampler
from fastmtl.data.preview import save_preview
from fastmtl.data.scenes import SceneDataset
from fastmtl.data.shapes import (
    SHAPE_NAMES,
    ShapesConfig,
    ShapesDataset,
    detection_collate,
    make_shapes_image,
)

__all__ = [
    "BACKGROUNDS",
    "SHAPE_NAMES",
    "SOURCES",
    "CompositeConfig",
    "CompositeDataset",
    "NYUDFolder",
    "PKSampler",
    "SceneDataset",
    "ShapesConfig",
    "ShapesDataset",
    "SourceUnavailableError",
    "class_mask",
    "composite_class_names",
    "detection_collate",
    "load_cutouts",
    "make_composite_image",
    "make_shapes_image",
    "save_preview",
]
