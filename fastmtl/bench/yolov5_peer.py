"""yolov5 7.0.14's ComputeLoss, the peer of the anchor-based YOLO loss in the tests (an oracle)
and the benchmarks: imported offline, without side effects that outlive the import, and driven
by a minimal fake model. ``make peers`` installs it.

The lightest install that imports it (torch, torchvision, numpy and setuptools untouched; about
11 s and 260 MB on top of the project's venv):

    pip install --no-deps yolov5==7.0.14 ultralytics==8.4.190
    pip install opencv-python-headless pandas requests pyyaml psutil seaborn

(yolov5's own requirements would pull ultralytics' full set, thop, tensorboard, sahi, ...).
yolov5 imports ``pkg_resources``, gone from setuptools >= 81: when it is missing, a stand-in with
the one function yolov5 calls (``parse_version``) is put in ``sys.modules`` for the import only.
"""

import contextlib
import importlib.util
import os
import sys
import tempfile
import types
import warnings

import matplotlib
import numpy as np
import torch

__all__ = ["YOLOV5_HYP", "fake_model", "load_compute_loss"]

# hyp.scratch-low's loss entries, as ComputeLoss reads them from model.hyp.
YOLOV5_HYP = {
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "label_smoothing": 0.0,
}


def _pkg_resources_stand_in() -> types.ModuleType:
    from packaging.version import parse

    module = types.ModuleType("pkg_resources")
    module.parse_version = parse  # yolov5's check_version is all that uses it
    return module


@contextlib.contextmanager
def _offline_and_restored():
    """No DNS look-up (ultralytics checks whether it is online) and no settings in ~/.config;
    the globals that yolov5 and ultralytics set on import (environment, print options,
    matplotlib's rc, warning filters, torch.save) restored afterwards. matplotlib stays on Agg."""
    env, save = dict(os.environ), torch.save
    with tempfile.TemporaryDirectory() as config, np.printoptions(), matplotlib.rc_context():
        with warnings.catch_warnings():
            try:
                os.environ.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=config, YOLOV5_CONFIG_DIR=config)
                yield
            finally:
                os.environ.clear()
                os.environ.update(env)
                torch.save = save
                torch.set_printoptions(profile="default")


def load_compute_loss():
    """yolov5's ComputeLoss class, or None when yolov5 (or a module it needs) is missing."""
    if importlib.util.find_spec("yolov5") is None:
        return None
    stand_in = importlib.util.find_spec("pkg_resources") is None
    with _offline_and_restored():
        try:
            if stand_in:
                sys.modules["pkg_resources"] = _pkg_resources_stand_in()
            from yolov5.utils import loss
        except ImportError:
            return None
        finally:
            if stand_in:
                sys.modules.pop("pkg_resources", None)
    return loss.ComputeLoss


class _FakeDetect:
    """What ComputeLoss reads from yolov5's Detect: na, nc, nl, stride and the anchors in cells."""

    def __init__(self, anchors_px: torch.Tensor, strides, num_classes: int):
        self.nl, self.na = anchors_px.shape[:2]
        self.nc = num_classes
        self.stride = torch.tensor([float(s) for s in strides], dtype=anchors_px.dtype)
        self.anchors = anchors_px / self.stride.view(-1, 1, 1)


class _FakeModel(torch.nn.Module):
    def __init__(self, anchors_px, strides, num_classes):
        super().__init__()
        self.device_probe = torch.nn.Parameter(torch.zeros(1))  # ComputeLoss takes the device from it
        self.hyp = dict(YOLOV5_HYP)
        self.model = [_FakeDetect(anchors_px, strides, num_classes)]


def fake_model(anchors_px: torch.Tensor, strides, num_classes: int) -> torch.nn.Module:
    return _FakeModel(anchors_px, strides, num_classes)
