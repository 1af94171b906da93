"""The Siamese wrapper (one set of weights for every branch), the identification gallery and the
P x K batch sampler."""

import pytest
import torch

from fastmtl.data.pk_sampler import PKSampler
from fastmtl.models.siamese import Gallery, SiameseNet, small_encoder


def test_branches_share_one_set_of_weights(gen):
    net = SiameseNet(small_encoder(1, 16, (8, 16)))
    a, b = torch.randn(5, 1, 8, 8, generator=gen), torch.randn(5, 1, 8, 8, generator=gen)
    net.eval()
    s = net.similarity(a, b)
    assert s.shape == (5,) and bool(((s >= -1 - 1e-6) & (s <= 1 + 1e-6)).all())
    torch.testing.assert_close(s, net.similarity(b, a))
    torch.testing.assert_close(net.similarity(a, a), torch.ones(5), rtol=0, atol=1e-5)
    torch.testing.assert_close(net(a).norm(dim=1), torch.ones(5))
    # one backward reaches the single encoder through both branches
    net.similarity(a, b).sum().backward()
    assert all(p.grad is not None for p in net.encoder.parameters())


def test_gallery_identifies_and_takes_new_identities(gen):
    refs = torch.linalg.qr(torch.randn(8, 3, generator=gen))[0].t()  # orthonormal: -ref is like no reference
    gallery = Gallery(8)
    gallery.add(refs[:2], torch.tensor([10, 11]))
    queries = refs + 0.01 * torch.randn(3, 8, generator=gen)
    ids, sims = gallery.identify(queries)
    assert ids[:2].tolist() == [10, 11] and ids[2] in (10, 11)
    gallery.add(refs[2:], torch.tensor([12]))  # a new identity, no retraining
    ids, _ = gallery.identify(queries)
    assert ids.tolist() == [10, 11, 12]
    ids, _ = gallery.identify(-refs, threshold=0.5)  # nothing similar: unknown
    assert ids.tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="empty"):
        Gallery(8).identify(queries)
    with pytest.raises(ValueError, match="identities"):
        gallery.add(refs, torch.tensor([1]))


def test_pk_batches():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 6 + [3] * 8)
    sampler = PKSampler(labels, p=3, k=4, batches=20, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        ids = labels[batch]
        assert len(batch) == 12 and len(ids.unique()) == 3
        assert all(int((ids == c).sum()) == 4 for c in ids.unique())
        for c in ids.unique():  # without replacement where an identity has k samples or more
            members = [i for i in batch if labels[i] == c]
            if int((labels == c).sum()) >= 4:
                assert len(set(members)) == 4
    assert batches == list(PKSampler(labels, p=3, k=4, batches=20, seed=1))
    assert batches != list(PKSampler(labels, p=3, k=4, batches=20, seed=2))
    with pytest.raises(ValueError, match="p must be"):
        PKSampler(labels, p=5, k=2, batches=1)
