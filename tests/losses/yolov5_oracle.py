"""yolov5's ComputeLoss for the tests (fastmtl/bench/yolov5_peer.py), skipping without it."""

import pytest

from fastmtl.bench.yolov5_peer import YOLOV5_HYP, fake_model, load_compute_loss

__all__ = ["YOLOV5_HYP", "fake_model", "import_compute_loss"]


def import_compute_loss():
    """yolov5's ComputeLoss class, or a pytest skip when yolov5 (or a module it needs) is missing."""
    compute_loss = load_compute_loss()
    if compute_loss is None:
        pytest.skip("yolov5 is not installed")
    return compute_loss
