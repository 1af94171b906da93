"""Segmentation metrics: a confusion matrix worked by hand, and torchmetrics' per-class IoU and
accuracy on random batches accumulated over several updates, ignore_index included."""

import pytest
import torch

from fastmtl.metrics.segmentation import ConfusionMatrix


def test_hand_computed():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1, 1], [1, 2, 0]]), torch.tensor([[0, 0, 1], [1, 2, 2]]))
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    out = cm.compute()
    torch.testing.assert_close(out["iou"], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert out["miou"].item() == pytest.approx(0.5) and out["pixel_accuracy"].item() == pytest.approx(4 / 6)
    torch.testing.assert_close(out["class_accuracy"], torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64))


def test_scores_ignore_index_and_absent_classes(gen):
    target = torch.tensor([[[0, 255, 1]]])  # [N, H, W]
    scores = torch.zeros(1, 4, 1, 3)
    scores[0, 0, 0, 0] = scores[0, 3, 0, 1] = scores[0, 1, 0, 2] = 1.0
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(scores, target)
    out = cm.compute()
    assert out["pixel_accuracy"].item() == 1.0 and out["miou"].item() == 1.0
    assert out["iou"][2:].isnan().all()  # in neither targets nor predictions: left out of the mean
    cm.reset()
    assert cm.matrix.sum() == 0


@pytest.mark.parametrize("ignore_index", [None, 0, 5])
def test_equals_torchmetrics_over_several_updates(ignore_index, gen):
    tm = pytest.importorskip("torchmetrics.classification")
    c = 6
    ours = ConfusionMatrix(c, ignore_index=ignore_index)
    kw = {"ignore_index": ignore_index, "average": None}
    jaccard, accuracy = tm.MulticlassJaccardIndex(c, **kw), tm.MulticlassAccuracy(c, **kw)
    for _ in range(3):
        target = torch.randint(0, c, (2, 17, 19), generator=gen)
        noisy = torch.randint(0, c, target.shape, generator=gen)
        preds = torch.where(torch.rand(target.shape, generator=gen) < 0.6, target, noisy)
        ours.update(preds, target)
        jaccard.update(preds, target)
        accuracy.update(preds, target)
    out = ours.compute()
    present = ~out["iou"].isnan()
    torch.testing.assert_close(out["iou"][present].float(), jaccard.compute()[present])
    known = ~out["class_accuracy"].isnan()
    torch.testing.assert_close(out["class_accuracy"][known].float(), accuracy.compute()[known])


def test_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="class indices"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="score preds"):
        cm.update(torch.rand(1, 2, 3), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
