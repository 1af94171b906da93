"""Verification metrics against scikit-learn's roc_curve and roc_auc_score (ties included), and
against brute force for the EER, the TAR at a FAR and the best-accuracy threshold."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fastmtl.metrics.verification import roc_curve, verification_report


def scored_pairs(gen, n=400, ties=False):
    same = torch.rand(n, generator=gen) < 0.3
    scores = torch.randn(n, generator=gen, dtype=torch.float64) + 1.2 * same
    if ties:
        scores = (scores * 4).round() / 4  # many equal scores
    return scores, same


@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_auc_equal_scikit_learn(ties, gen):
    scores, same = scored_pairs(gen, ties=ties)
    far, tar, thr = roc_curve(scores, same)
    want_far, want_tar, want_thr = sk_roc_curve(same.numpy(), scores.numpy(), drop_intermediate=False)
    np.testing.assert_allclose(far.numpy(), want_far)
    np.testing.assert_allclose(tar.numpy(), want_tar)
    np.testing.assert_allclose(thr.numpy(), want_thr)
    report = verification_report(scores, same)
    assert report.auc == pytest.approx(roc_auc_score(same.numpy(), scores.numpy()), abs=1e-12)


def test_eer_tar_and_best_threshold_by_brute_force(gen):
    scores, same = scored_pairs(gen, n=300)
    report = verification_report(scores, same, fars=(0.05, 0.2))
    thresholds = torch.cat((scores.unique(), torch.tensor([float("inf")], dtype=torch.float64)))
    accept = scores[None, :] >= thresholds[:, None]
    far = (accept & ~same).sum(1).double() / (~same).sum()
    tar = (accept & same).sum(1).double() / same.sum()
    acc = ((accept == same).sum(1).double() / len(same)).max()
    assert report.accuracy == pytest.approx(float(acc))
    assert float(((scores >= report.threshold) == same).double().mean()) == pytest.approx(float(acc))
    for f in (0.05, 0.2):
        assert report.tar_at_far[f] == pytest.approx(float(tar[far <= f].max()))
    gap = ((1 - tar) - far).abs()  # the EER lies between the ROC points around the crossing
    k = int(gap.argmin())
    assert abs(report.eer - float(far[k])) <= 1.0 / min(int(same.sum()), int((~same).sum())) + 1e-12


def test_separable_and_chance_scores():
    same = torch.tensor([True, True, False, False, False])
    report = verification_report(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3], dtype=torch.float64), same)
    assert report.auc == 1.0 and report.eer == 0.0 and report.accuracy == 1.0
    assert 0.3 < report.threshold <= 0.8
    flipped = verification_report(torch.tensor([0.1, 0.2, 0.9, 0.8, 0.7]), same)
    assert flipped.auc == 0.0 and flipped.eer == 1.0


@pytest.mark.parametrize(
    "scores, same, match",
    [
        (torch.rand(4), torch.tensor([True, True, True, True]), "both"),
        (torch.rand(4), torch.tensor([True, False]), "one length"),
        (torch.tensor([1, 2, 3]), torch.tensor([True, False, True]), "floating"),
        (torch.tensor([0.1, float("nan")]), torch.tensor([True, False]), "NaN"),
    ],
)
def test_bad_input_names_the_argument(scores, same, match):
    with pytest.raises(ValueError, match=match):
        verification_report(scores, same)
