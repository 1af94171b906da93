"""Segmentation losses: Dice against a float64 loop over classes and pixels, cross-entropy against
torch's, class weights and the ignore index, gradients, and bad input."""

import pytest
import torch
import torch.nn.functional as F

from fastmtl.losses import SegmentationLoss, dice_loss


def _dice_reference(logits, target, ignore_index, smooth, weight):
    p = logits.double().softmax(1)
    c = logits.shape[1]
    dice = []
    for k in range(c):
        inter = union_p = union_y = 0.0
        for idx in torch.nonzero(target != ignore_index).tolist():
            n, rest = idx[0], idx[1:]
            pk = float(p[(n, k, *rest)])
            yk = float(target[(n, *rest)] == k)
            inter, union_p, union_y = inter + pk * yk, union_p + pk, union_y + yk
        dice.append((2 * inter + smooth) / (union_p + union_y + smooth))
    dice = torch.tensor(dice, dtype=torch.float64)
    if weight is None:
        return 1 - dice.mean()
    return 1 - (weight.double() * dice).sum() / weight.double().sum()


@pytest.mark.parametrize("weighted", [False, True])
def test_dice_equals_the_reference(weighted, gen):
    c = 4
    logits = torch.randn(2, c, 5, 7, generator=gen) * 3
    target = torch.randint(0, c, (2, 5, 7), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    weight = torch.rand(c, generator=gen) + 0.1 if weighted else None
    got = dice_loss(logits, target, ignore_index=255, smooth=0.5, weight=weight)
    torch.testing.assert_close(
        got.double(), _dice_reference(logits, target, 255, 0.5, weight), rtol=1e-5, atol=1e-6
    )


def test_cross_entropy_part_equals_torch_and_total_is_the_weighted_sum(gen):
    c = 3
    logits = torch.randn(3, c, 4, 4, generator=gen, requires_grad=True)
    target = torch.randint(0, c, (3, 4, 4), generator=gen)
    target[0, 0] = -100
    w = torch.tensor([0.2, 1.0, 3.0])
    out = SegmentationLoss(ce_weight=0.7, dice_weight=0.3, class_weights=w)(logits, target)
    torch.testing.assert_close(out["ce"], F.cross_entropy(logits, target, weight=w))
    torch.testing.assert_close(out["dice"], dice_loss(logits, target, weight=w))
    torch.testing.assert_close(out["loss"], 0.7 * out["ce"] + 0.3 * out["dice"])
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()


def test_dice_perfect_and_ignored_pixels(gen):
    target = torch.randint(0, 3, (2, 6, 6), generator=gen)
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert float(dice_loss(perfect, target, smooth=0.0)) < 1e-6
    ignored = target.clone()
    ignored[:, :3] = -100  # whatever the logits say there does not count
    noisy = perfect.clone()
    noisy[:, :, :3] = torch.randn(2, 3, 3, 6, generator=gen) * 50
    torch.testing.assert_close(dice_loss(noisy, ignored), dice_loss(perfect, ignored))


def test_dice_gradcheck(gen):
    logits = torch.randn(1, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (1, 3, 4), generator=gen)
    target[0, 1, 1] = -100
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, target), (logits,))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(target=a["target"][:, :2]), "target must have shape"),
        (lambda a: a.update(target=a["target"].int()), "int64"),
        (lambda a: a.update(logits=a["logits"].long()), "logits must be floating"),
        (lambda a: a["target"].__setitem__((0, 0, 0), 3), r"\[0, 3\)"),
        (lambda a: a["target"].__setitem__((0, 0, 0), -1), "ignore_index"),
        (lambda a: a.update(weight=torch.ones(2)), "class weights"),
        (lambda a: a.update(smooth=-1.0), "smooth"),
    ],
)
def test_bad_input_names_the_argument(change, match, gen):
    a = {
        "logits": torch.randn(2, 3, 4, 4, generator=gen),
        "target": torch.randint(0, 3, (2, 4, 4), generator=gen),
    }
    change(a)
    with pytest.raises(ValueError, match=match):
        dice_loss(**a)


def test_dice_double_backward_and_autocast(gen):
    logits = torch.randn(1, 3, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (1, 2, 3), generator=gen)
    assert torch.autograd.gradgradcheck(lambda x: dice_loss(x, target), (logits,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = dice_loss(logits.detach().bfloat16(), target)
    assert half.dtype == torch.float32  # half logits are taken in float32
    torch.testing.assert_close(half.double(), dice_loss(logits.detach(), target), atol=2e-2, rtol=0)
