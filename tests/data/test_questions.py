"""The duplicate-question set: identities, paraphrases and near misses as documented; hashing is
deterministic and keeps words and trigrams apart."""

import torch

from fastmtl.data.questions import INTENTS, hashed_ngrams, question_set


def test_identities_and_paraphrases():
    texts, ids, intents, templates = question_set()
    assert len(texts) == 245 and int(ids.max()) + 1 == 50 and len(INTENTS) == 10
    assert texts[ids.tolist().index(0)] == "How old are you?" and "What is your age?" in texts
    for i in ids.unique():  # each identity: one intent, distinct paraphrases
        rows = (ids == i).nonzero().flatten()
        assert len(intents[rows].unique()) == 1 and len({texts[r] for r in rows}) == len(rows)
    paris = [t for t in texts if "Paris" in t]  # one slot under three intents: near misses
    assert len(paris) == 15 and len(ids[[texts.index(t) for t in paris]].unique()) == 3


def test_hashing():
    a = hashed_ngrams(["How old are you?", "how OLD are you"], buckets=1 << 10, max_len=40)
    assert torch.equal(a[0], a[1])  # case and punctuation dropped
    assert a.shape == (2, 40) and int(a.max()) < 1 << 10
    assert bool((a[0, :16] > 0).all()) and not a[0, 16:].any()  # 4 words, 12 trigrams, then padding
    b = hashed_ngrams(["abc"], max_len=3)
    assert b.shape == (1, 3) and bool((b > 0).all())  # truncated to max_len: w:abc, #ab, abc
