"""The segmentation benchmark cases: registered, every training-step variant gives the same loss
(AMP within tolerance) on unchanged weights, and the confusion matrix equals torchmetrics'."""

import pytest

from fastmtl import bench
from fastmtl.bench import cases_segmentation
from fastmtl.bench.harness import check_agreement


def test_registered():
    assert bench.REGISTRY["segmentation"] == "fastmtl.bench.cases_segmentation"


def test_train_step_variants_agree_and_keep_the_weights():
    case = cases_segmentation.train_step_case(32, "cpu", batch=2)
    first = check_agreement(case)
    again = check_agreement(case)  # learning rate 0: the same loss every call
    assert set(first) == {"float32", "amp", "channels_last", "amp+channels_last"}
    assert float(first["float32"]) == float(again["float32"]) and float(first["float32"]) > 0


def test_confusion_update_equals_torchmetrics():
    pytest.importorskip("torchmetrics")
    outputs = check_agreement(cases_segmentation.confusion_case(16, 2, "cpu"))
    assert int(outputs["fastmtl"].sum()) == 2 * 16 * 16
