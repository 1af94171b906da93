"""The segmentation pipeline: a short training on tiny scenes beats a constant prediction; the
AMP and channels_last paths run; the CLI writes its JSON."""

import json

import pytest

from fastmtl.cli import main
from fastmtl.pipelines.segmentation import SegmentationConfig, train_segmentation

TINY = {"image_size": 48, "train_images": 48, "val_images": 16, "depth": 2, "width": 8, "progress": False}


def test_short_training_beats_a_constant_prediction(tmp_path):
    result = train_segmentation(SegmentationConfig(steps=120, lr=1e-2, out_dir=str(tmp_path), **TINY))
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert result.metrics["miou"] > result.constant["miou"]
    assert result.metrics["pixel_accuracy"] >= result.constant["pixel_accuracy"]
    assert len(result.metrics["iou"]) == len(result.class_names) == 4  # digit, coin, horse, background
    assert result.png is not None and result.png.is_file()


@pytest.mark.parametrize("upsample", ["bilinear", "unpool"])
def test_amp_channels_last_and_other_decoders_run(upsample):
    config = SegmentationConfig(steps=3, amp=True, channels_last=True, upsample=upsample, **TINY)
    result = train_segmentation(config, save_plots=False)
    assert len(result.history) == 3 and 0 <= result.metrics["miou"] <= 1


def test_cli_writes_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "segmentation", "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["demo"] == "segmentation" and doc["config"]["steps"] == 2 and not doc["defaults"]
    assert "validation mIoU" in capsys.readouterr().out
    with pytest.raises(ValueError, match="steps"):
        train_segmentation(SegmentationConfig(steps=0))
