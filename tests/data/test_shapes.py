"""The synthetic shapes dataset: deterministic, boxes tight and inside the image, labels valid."""

import pytest
import torch

from fastmtl.data.shapes import ShapesConfig, ShapesDataset, detection_collate, make_shapes_image

SMALL = ShapesConfig(image_size=64, min_size=8, max_size=24)


def test_same_seed_same_images(seed):
    a = ShapesDataset(6, seed=seed, config=SMALL)
    b = ShapesDataset(6, seed=seed, config=SMALL, cache=False)
    for i in range(6):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert (
            torch.equal(ia, ib)
            and torch.equal(ta["boxes"], tb["boxes"])
            and torch.equal(ta["labels"], tb["labels"])
        )
    other = ShapesDataset(6, seed=seed + 1, config=SMALL)
    assert not all(torch.equal(a[i][0], other[i][0]) for i in range(6))


def test_start_offsets_the_stream(seed):
    whole = ShapesDataset(5, seed=seed, config=SMALL)
    tail = ShapesDataset(2, seed=seed, start=3, config=SMALL)
    assert torch.equal(whole[3][0], tail[0][0]) and torch.equal(whole[4][0], tail[1][0])
    assert torch.equal(whole[-1][0], whole[4][0])
    with pytest.raises(IndexError):
        whole[5]


@pytest.mark.parametrize("config", [ShapesConfig(), SMALL], ids=["128", "64"])
def test_boxes_inside_tight_and_labels_valid(gen, config):
    s = config.image_size
    for _ in range(10):
        image, boxes, labels = make_shapes_image(gen, config)
        assert image.shape == (3, s, s) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        k = boxes.shape[0]
        assert 1 <= k <= config.max_shapes and boxes.shape == (k, 4) and boxes.dtype == torch.float32
        assert labels.shape == (k,) and labels.dtype == torch.int64
        assert ((labels >= 1) & (labels <= 3)).all()
        assert (boxes >= 0).all() and (boxes <= s).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        sizes = boxes[:, 2:] - boxes[:, :2]
        assert (sizes <= config.max_size).all()


def test_boxes_frame_the_shapes():
    # one rectangle, no overlap possible: the pixels inside its box differ from the background
    config = ShapesConfig(image_size=64, min_shapes=1, max_shapes=1, min_size=10, max_size=20, noise=0.0)
    for i in range(5):
        image, boxes, labels = make_shapes_image(torch.Generator().manual_seed(i), config)
        x1, y1, x2, y2 = boxes[0].int().tolist()
        corner = image[:, 0, 0] if (x1, y1) != (0, 0) else image[:, -1, -1]
        inside = (image[:, y1:y2, x1:x2] - corner[:, None, None]).abs().sum(0) > 1e-6
        # every row and column of the box holds some of the shape, and nothing outside it does
        assert inside.any(1).all() and inside.any(0).all()
        outside = (image - corner[:, None, None]).abs().sum(0) > 1e-6
        outside[y1:y2, x1:x2] = False
        assert not outside.any()


def test_collate():
    ds = ShapesDataset(3, seed=0, config=SMALL)
    images, targets = detection_collate([ds[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3
    assert set(targets[0]) == {"boxes", "labels"}


def test_bad_config():
    with pytest.raises(ValueError, match="min_size"):
        ShapesConfig(image_size=32, max_size=48)
    with pytest.raises(ValueError, match="min_shapes"):
        ShapesConfig(min_shapes=0)
