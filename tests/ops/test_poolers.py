"""MultiScaleRoIAlign: the same levels and values as torchvision's, gradients, bad input."""

from collections import OrderedDict

import pytest
import torch

from fastmtl import ops
from fastmtl.ops._checks import InputError
from fastmtl.ops.poolers import map_levels
from tests.utils import assert_close

tv_ops = pytest.importorskip("torchvision.ops")


def pyramid(gen, n=2, c=4, size=64, levels=(1, 2, 3), dtype=torch.float64):
    """Features at strides 2^l for l in ``levels`` (plus an unused one), for images ``size`` wide."""
    feats = OrderedDict()
    for lvl in levels:
        s = size // 2**lvl
        feats[f"p{lvl}"] = torch.randn(n, c, s, s, generator=gen, dtype=torch.float64).to(dtype)
    feats["unused"] = torch.randn(n, c, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
    return feats


def image_boxes(gen, counts, size=64, dtype=torch.float64):
    out = []
    for k in counts:
        lo = torch.rand(k, 2, generator=gen, dtype=torch.float64) * size * 0.8
        wh = 1 + torch.rand(k, 2, generator=gen, dtype=torch.float64) ** 2 * size
        out.append(torch.cat([lo, lo + wh], dim=1).to(dtype))
    return out


@pytest.mark.parametrize("canonical", [(224, 4), (32, 2)])
@pytest.mark.parametrize("names", [["p1", "p2", "p3"], ["p2"], ["p1", "p3"]])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_torchvision(dtype, names, canonical, gen, seed):
    feats = pyramid(gen, dtype=dtype)
    boxes = image_boxes(gen, (9, 14), dtype=dtype)
    shapes = [(64, 64), (60, 50)]
    s0, k0 = canonical
    mine = ops.MultiScaleRoIAlign(names, (3, 2), 2, canonical_scale=s0, canonical_level=k0)
    theirs = tv_ops.MultiScaleRoIAlign(names, (3, 2), 2, canonical_scale=s0, canonical_level=k0)
    leaves = {k: v.clone().requires_grad_() for k, v in feats.items()}
    out = mine(leaves, boxes, shapes)
    want_leaves = {k: v.clone().requires_grad_() for k, v in feats.items()}
    want = theirs(want_leaves, boxes, shapes)
    assert out.shape == (23, 4, 3, 2) and out.dtype == dtype
    assert_close(out, want, msg=f"seed={seed}", rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    out.backward(grad)
    want.backward(grad)
    for k in names:
        assert_close(leaves[k].grad, want_leaves[k].grad, msg=f"{k} seed={seed}", rtol=1e-5, atol=1e-5)
    assert leaves["unused"].grad is None


def test_levels_follow_the_fpn_rule():
    # sqrt(area) = 224 -> level 4; 112 -> 3; 448 -> 5; 1 -> clamped to k_min
    boxes = [torch.tensor([[0, 0, 224, 224.0], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 1, 1]])]
    assert map_levels(boxes, 2, 5).tolist() == [2, 1, 3, 0]
    assert map_levels(boxes, 3, 4).tolist() == [1, 0, 1, 0]


def test_bad_input(gen):
    feats = pyramid(gen)
    pool = ops.MultiScaleRoIAlign(["p1", "p2"], 2, 2)
    boxes = image_boxes(gen, (3,))
    with pytest.raises(InputError, match="image_shapes"):
        pool(feats, boxes, [])
    with pytest.raises(InputError, match="featmap_names"):
        ops.MultiScaleRoIAlign(["nope"], 2, 2)(feats, boxes, [(64, 64)])
    assert "featmap_names" in repr(pool)
