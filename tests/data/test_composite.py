"""Composite scenes of real cut-outs: deterministic, boxes tight on visible pixels, occlusion rule."""

import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fastmtl.data import cutouts
from fastmtl.data.composite import (
    CompositeConfig,
    CompositeDataset,
    _catalog,
    _Scene,
    class_mask,
    composite_class_names,
    make_composite_image,
)
from fastmtl.data.cutouts import SourceUnavailableError, load_cutouts
from fastmtl.data.preview import save_preview
from fastmtl.data.shapes import detection_collate

SMALL = CompositeConfig(image_size=64)
CROWDED = CompositeConfig(
    image_size=96, min_objects=6, max_objects=8, min_scale=0.3, max_scale=0.6, min_visible=0.3
)
HAS_FASHION = (cutouts.FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


def _same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.equal(a[1][key], b[1][key]) for key in a[1])


def test_same_seed_same_images_in_any_order(seed):
    a = CompositeDataset(6, seed=seed, config=SMALL)
    forward = [a[i] for i in range(6)]
    backward = [a[i] for i in reversed(range(6))][::-1]
    cached = CompositeDataset(6, seed=seed, config=SMALL, cache=True)
    assert all(_same(forward[i], backward[i]) and _same(forward[i], cached[i]) for i in range(6))
    other = CompositeDataset(6, seed=seed + 1, config=SMALL)
    assert not all(torch.equal(forward[i][0], other[i][0]) for i in range(6))


def test_start_offsets_the_stream(seed):
    whole = CompositeDataset(5, seed=seed, config=SMALL)
    tail = CompositeDataset(2, seed=seed, start=3, config=SMALL)
    assert _same(whole[3], tail[0]) and _same(whole[4], tail[1]) and _same(whole[-1], whole[4])
    with pytest.raises(IndexError):
        whole[5]


@pytest.mark.parametrize("config", [CompositeConfig(), SMALL, CROWDED], ids=["128", "64", "crowded"])
def test_contract(gen, config):
    s, num_classes = config.image_size, len(composite_class_names(config)) - 1
    for _ in range(8):
        image, target = make_composite_image(gen, config)
        assert image.shape == (3, s, s) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        boxes, labels, instances, visible = (target[k] for k in ("boxes", "labels", "instances", "visible"))
        k = labels.shape[0]
        low = 1 if config is CROWDED else config.min_objects  # a crowded scene may run out of room
        assert low <= k <= config.max_objects
        assert boxes.shape == (k, 4) and boxes.dtype == torch.float32
        assert labels.dtype == torch.int64 and ((labels >= 1) & (labels <= num_classes)).all()
        assert instances.shape == (s, s) and instances.dtype == torch.int64
        assert 0 <= instances.min() and instances.max() <= k
        assert visible.shape == (k,) and visible.dtype == torch.float32
        assert (boxes >= 0).all() and (boxes <= s).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        sides = (boxes[:, 2:] - boxes[:, :2]).amax(1)
        assert (sides <= round(config.max_scale * s)).all()


def test_boxes_tight_around_visible_pixels(gen):
    for _ in range(8):
        _, target = make_composite_image(gen, CROWDED)
        for k, box in enumerate(target["boxes"].int().tolist()):
            own = target["instances"] == k + 1
            rows, cols = own.any(1).nonzero()[:, 0], own.any(0).nonzero()[:, 0]
            assert box == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_occlusion_rule(gen):
    # every object keeps at least min_visible of its pixels; crowded scenes do hide some
    hidden = 0
    for _ in range(8):
        _, target = make_composite_image(gen, CROWDED)
        visible = target["visible"]
        assert (visible >= CROWDED.min_visible).all() and (visible <= 1).all()
        hidden += int((visible < 1).sum())
    assert hidden > 0
    # min_visible=1: nothing may cover another object's pixels
    config = CompositeConfig(image_size=96, min_objects=3, max_objects=3, min_visible=1.0)
    for _ in range(8):
        _, target = make_composite_image(gen, config)
        assert (target["visible"] == 1).all()


def test_occlusion_rule_by_hand():
    scene = _Scene(torch.zeros(3, 16, 16))
    square, ones = torch.ones(4, 4), torch.ones(3, 4, 4)
    assert scene.try_place(1, ones, square, 2, 3, min_visible=0.5)
    assert (scene.image[:, 3:7, 2:6] == 1).all() and scene.image.sum() == 3 * 16
    assert scene.try_place(2, 0.5 * ones, square, 4, 3, min_visible=0.5)  # hides 8 of 16 pixels
    assert not scene.try_place(3, ones, square, 3, 4, min_visible=0.5)  # would leave 6 of 16
    assert scene.labels == [1, 2] and scene.visible == [8, 16] and (scene.image[:, 3:7, 4:8] == 0.5).all()
    assert scene.boxes().tolist() == [[2, 3, 4, 7], [4, 3, 8, 7]]  # the first box shrinks to what shows


def test_counts_and_class_mask():
    config = CompositeConfig(image_size=96, min_objects=3, max_objects=3, max_scale=0.35)
    for i in range(10):
        _, target = make_composite_image(torch.Generator().manual_seed(i), config)
        assert len(target["labels"]) == 3
        classes = class_mask(target)
        for k, label in enumerate(target["labels"].tolist()):
            assert (classes[target["instances"] == k + 1] == label).all()
        assert (classes[target["instances"] == 0] == 0).all()


def test_collate_and_loader():
    ds = CompositeDataset(4, seed=0, config=SMALL)
    images, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=detection_collate)))
    assert images.shape == (4, 3, 64, 64) and len(targets) == 4
    assert set(targets[0]) == {"boxes", "labels", "instances", "visible"}
    assert _same((images[2], targets[2]), ds[2])


def test_instances_optional(seed):
    config = CompositeConfig(image_size=64, instances=False)
    image, target = CompositeDataset(1, seed=seed, config=config)[0]
    full_image, full = CompositeDataset(1, seed=seed, config=SMALL)[0]
    assert set(target) == {"boxes", "labels", "visible"}
    assert torch.equal(image, full_image) and torch.equal(target["boxes"], full["boxes"])


def test_class_names_and_splits():
    names = composite_class_names()
    assert names[0] == "background" and names[1:11] == tuple(f"digit {d}" for d in range(10))
    assert names[11:] == ("coin", "horse") and CompositeDataset(1).num_classes == 12
    train, test = load_cutouts("digits", "train"), load_cutouts("digits", "test")
    assert len(train) + len(test) == 1797  # disjoint halves of scikit-learn's digits
    assert len(load_cutouts("coins", "train")) >= 15 and len(load_cutouts("coins", "test")) >= 3
    image, target = CompositeDataset(1, config=CompositeConfig(split="test"))[0]
    assert image.shape == (3, 128, 128) and len(target["labels"]) >= 1


def test_save_preview(tmp_path):
    from PIL import Image

    path = save_preview(tmp_path / "preview.png", CompositeDataset(5, seed=0, config=SMALL), 5, columns=3)
    with Image.open(path) as png:
        assert png.size == (3 * 128, 2 * 128)


@pytest.fixture
def fresh_sources():
    """Sources loaded afresh in the test (under its monkeypatches) and afterwards."""
    load_cutouts.cache_clear()
    _catalog.cache_clear()
    yield
    load_cutouts.cache_clear()
    _catalog.cache_clear()


def test_missing_sources_raise_clearly(tmp_path, monkeypatch, fresh_sources):
    monkeypatch.setattr(cutouts, "FASHION_DIR", tmp_path)
    monkeypatch.setattr(cutouts, "CV_DIGITS_PNG", tmp_path / "digits.png")
    with pytest.raises(SourceUnavailableError, match="apt-get install dataset-fashion-mnist"):
        CompositeDataset(1, config=CompositeConfig(sources=("digits", "fashion")))
    with pytest.raises(SourceUnavailableError, match="apt-get install opencv-doc"):
        load_cutouts("cv_digits")
    load_cutouts.cache_clear()  # the dataset above loaded the digits
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(SourceUnavailableError, match="pip install scikit-learn"):
        load_cutouts("digits")
    with pytest.raises(ValueError, match="unknown object source"):
        load_cutouts("mnist")


def test_cv_digits_sheet_layout(tmp_path, monkeypatch, fresh_sources):
    from PIL import Image

    # a stand-in sheet: each 20×20 cell holds its own digit as a grey level
    digit = np.repeat(np.arange(50) // 5, 20)[:, None] * np.ones((1, 2000), dtype=np.int64)
    Image.fromarray((digit * 25).astype(np.uint8)).save(tmp_path / "digits.png")
    monkeypatch.setattr(cutouts, "CV_DIGITS_PNG", tmp_path / "digits.png")
    bank = load_cutouts("cv_digits", "train")
    assert len(bank) == 4000 and bank.alpha.shape == (4000, 20, 20)
    levels = bank.alpha.mean((1, 2)) * 255 / 25
    assert torch.allclose(levels, bank.labels.float(), atol=1e-3)


def test_bad_config():
    with pytest.raises(ValueError, match="min_objects"):
        CompositeConfig(min_objects=0)
    with pytest.raises(ValueError, match="min_scale"):
        CompositeConfig(image_size=32, min_scale=0.1)
    with pytest.raises(ValueError, match="unknown"):
        CompositeConfig(sources=("digits", "mnist"))
    with pytest.raises(ValueError, match="unknown"):
        CompositeConfig(backgrounds=("moon",))


@pytest.mark.skipif(not HAS_FASHION, reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
def test_fashion_mnist(gen):
    train, test = load_cutouts("fashion", "train"), load_cutouts("fashion", "test")
    assert len(train) == 60000 and len(test) == 10000 and train.names[9] == "ankle boot"
    assert [len(items) for items in test.by_class()] == [1000] * 10
    shade, alpha = cutouts.cutout(train, 0)
    assert shade.shape == alpha.shape == (28, 28) and set(alpha.unique().tolist()) <= {0.0, 1.0}
    config = CompositeConfig(sources=("fashion",))
    _, target = make_composite_image(gen, config)
    assert ((target["labels"] >= 1) & (target["labels"] <= 10)).all()
