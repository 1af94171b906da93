"""Localization models and losses of the slides: the loss formula by hand, Y = 0 leaves the box
alone, and a short training on composite scenes (one object each) learns presence and boxes."""

import pytest
import torch

from fastmtl.losses.localization import landmark_loss, localization_loss, multilabel_localization_loss
from fastmtl.models.localization import LandmarkHead, LocalizationHead, Localizer, small_backbone


def test_loss_is_bce_plus_gamma_y_mse():
    presence = torch.tensor([2.0, -1.0])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.9, 0.3, 0.3]])
    target_boxes = torch.tensor([[0.4, 0.5, 0.2, 0.4], [0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([1.0, 0.0])
    out = localization_loss(presence, boxes, y, target_boxes, gamma=3.0)
    bce = (
        -torch.log(torch.sigmoid(torch.tensor(2.0))) - torch.log(1 - torch.sigmoid(torch.tensor(-1.0)))
    ) / 2
    torch.testing.assert_close(out["presence"], bce)
    # only image 0 has the object: (0.1^2 + 0.2^2) / 4 coordinates, averaged over 2 images, x gamma
    torch.testing.assert_close(out["box"], torch.tensor(3.0 * (0.01 + 0.04) / 4 / 2))
    torch.testing.assert_close(out["total"], out["presence"] + out["box"])


def test_no_object_gives_the_box_no_gradient():
    boxes = torch.rand(3, 4, requires_grad=True)
    logits = torch.randn(3, 4, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 0.0])
    out = localization_loss(
        torch.zeros(3),
        boxes,
        y,
        torch.rand(3, 4),
        class_logits=logits,
        target_classes=torch.tensor([0, 2, 1]),
    )
    out["total"].backward()
    assert not boxes.grad[[0, 2]].any() and boxes.grad[1].any()
    assert not logits.grad[[0, 2]].any() and logits.grad[1].any()


def test_multilabel_is_k_binary_tasks_with_a_box_each():
    presence = torch.randn(2, 4)
    boxes = torch.rand(2, 4, 4)
    targets = torch.zeros(2, 4, 5)
    targets[0, 1] = torch.tensor([1, 0.2, 0.3, 0.1, 0.1])  # the slides' label: (Y, x, y, w, h)
    out = multilabel_localization_loss(presence, boxes, targets, gamma=2.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(presence, targets[..., 0])
    box = 2.0 * (boxes[0, 1] - targets[0, 1, 1:]).square().mean() / 8  # one task of 2 x 4
    torch.testing.assert_close(out["presence"], bce)
    torch.testing.assert_close(out["box"], box)


def test_landmark_loss_counts_visible_points_only():
    pts = torch.zeros(1, 3, 2)
    target = torch.tensor([[[0.3, 0.4], [1.0, 1.0], [0.0, 0.0]]])
    visible = torch.tensor([[1, 0, 1]])
    torch.testing.assert_close(landmark_loss(pts, target, visible)["total"], torch.tensor(0.25 / 2))
    torch.testing.assert_close(landmark_loss(pts, target)["total"], torch.tensor(2.25 / 3))


@pytest.mark.parametrize("multi_label", [False, True])
def test_head_shapes(multi_label):
    model = Localizer(small_backbone(width=8), LocalizationHead(32, 3, multi_label=multi_label))
    out = model(torch.rand(2, 3, 64, 48))
    assert out.presence.shape == ((2, 3) if multi_label else (2,))
    assert out.boxes.shape == ((2, 3, 4) if multi_label else (2, 4))
    assert (out.class_logits is None) == multi_label
    assert Localizer(small_backbone(width=8), LandmarkHead(32, 68))(torch.rand(2, 3, 32, 32)).shape == (
        2,
        68,
        2,
    )


def _one_object_scenes(n: int, seed: int):
    """Composite scenes of 0 or 1 object: images, Y, boxes (cx, cy, w, h) fractions, classes."""
    from fastmtl.data import CompositeConfig, CompositeDataset

    size = 64
    config = CompositeConfig(
        image_size=size, min_objects=1, max_objects=1, min_scale=0.3, max_scale=0.6, instances=False
    )
    data = CompositeDataset(n, seed=seed, config=config)
    images, boxes, classes = [], [], []
    for image, target in (data[i] for i in range(n)):
        images.append(image)
        x1, y1, x2, y2 = (target["boxes"][0] / size).tolist()
        boxes.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        classes.append(int(target["labels"][0]) - 1)
    images = torch.stack(images)
    y = (torch.arange(n) % 3 != 0).float()  # a third of the images have the object painted out
    background = images.flip(0)  # another scene's pixels: not a constant the net could key on
    images = torch.where(
        y[:, None, None, None] > 0, images, background * 0 + images.mean((2, 3), keepdim=True)
    )
    return images, y, torch.tensor(boxes), torch.tensor(classes), data.num_classes


def test_short_training_learns_presence_and_boxes():
    torch.manual_seed(0)
    images, y, boxes, classes, num_classes = _one_object_scenes(96, seed=1)
    model = Localizer(small_backbone(width=16), LocalizationHead(64, num_classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_of():
        out = model(images)
        return localization_loss(
            out.presence,
            out.boxes,
            y,
            boxes,
            gamma=10.0,
            class_logits=out.class_logits,
            target_classes=classes,
        )

    first = {k: v.item() for k, v in loss_of().items()}
    for _ in range(60):
        opt.zero_grad()
        loss_of()["total"].backward()
        opt.step()
    last = {k: v.item() for k, v in loss_of().items()}
    assert last["total"] < 0.5 * first["total"], (first, last)
    assert last["box"] < first["box"] and last["presence"] < first["presence"], (first, last)
