"""The multi-task scenes: depth order agrees with the occlusions, every label agrees with the
composite scene it comes from, deterministic by seed."""

import torch

from fastmtl.data import CompositeConfig, CompositeDataset, class_mask
from fastmtl.data.scenes import BACKGROUND_DEPTH, SceneDataset


def test_depth_agrees_with_occlusion_and_labels(seed):
    config = CompositeConfig(image_size=64, min_objects=3, max_objects=6)
    scenes = SceneDataset(6, seed=seed, config=config)
    plain = CompositeDataset(6, seed=seed, config=config)
    for i in range(len(scenes)):
        image, t = scenes[i]
        same_image, same = plain[i]
        assert torch.equal(image, same_image) and torch.equal(t["instances"], same["instances"])
        k = len(t["labels"])
        objects = t["object_depth"]
        assert objects.shape == (k,) and bool((objects[1:] < objects[:-1]).all())  # later = nearer
        for j in range(k):
            own = t["instances"] == j + 1
            assert own.any() and bool((t["depth"][own] == objects[j]).all())
        background = t["depth"][t["instances"] == 0]
        assert bool((background >= BACKGROUND_DEPTH[0]).all()) and bool((background > objects.max()).all())
        # an object drawn over another hides it, and is nearer: the visible one is the nearest
        assert torch.equal(t["mask"], class_mask(t))
        assert torch.equal(t["present"].nonzero().flatten() + 1, t["labels"].unique())


def test_deterministic_and_independent_of_order(seed):
    a, b = SceneDataset(3, seed=seed), SceneDataset(3, seed=seed, cache=True)
    for i in (2, 0, 1):
        ia, ta = a[i]
        ib, tb = b[i]
        assert torch.equal(ia, ib) and all(torch.equal(ta[key], tb[key]) for key in ta)
    assert not torch.equal(a[0][1]["depth"], a[1][1]["depth"])
