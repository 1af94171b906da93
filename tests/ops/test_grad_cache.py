"""The CPU gradient cache of the fused anchor losses (csrc/ops/grad_cache.cpp): a freed gradient's
buffer serves the next backward of its size, with the same values as a fresh one; the limit and
empty_grad_cache free what it holds."""

import pytest
import torch

import fastmtl
from fastmtl.losses import yolo_anchor_loss
from fastmtl.ops._yolo_anchor_reference import YOLOV5_ANCHORS, YOLOV5_STRIDES
from tests.utils import compiled_only

pytestmark = compiled_only

ANCHORS = torch.tensor(YOLOV5_ANCHORS, dtype=torch.float32)


@pytest.fixture
def limit():
    """Sets the cache's limit (MiB) for one test, emptied before and after."""
    previous = torch.ops.fastmtl._set_grad_cache_limit(512)
    if torch.ops.fastmtl._set_grad_cache_limit(512) != 512:
        pytest.skip("the cache is off in this build (AddressSanitizer must see every free)")
    fastmtl.empty_grad_cache()
    yield lambda mb: torch.ops.fastmtl._set_grad_cache_limit(mb)
    torch.ops.fastmtl._set_grad_cache_limit(previous)
    fastmtl.empty_grad_cache()


def gradients(gen, mode):
    """The gradients of one fused loss: the first scale's is 4 x 3 x 40 x 40 x 25 floats (2.3 MiB)."""
    preds = [torch.randn(4, 3, s, s, 25, generator=gen).requires_grad_() for s in (40, 20, 10)]
    targets = torch.rand(4, 5, 5, generator=gen) * 0.6 + 0.2
    targets[..., 0] = torch.randint(0, 20, (4, 5), generator=gen).float()
    counts = torch.tensor([5, 3, 0, 1])
    out = yolo_anchor_loss(preds, targets, counts, ANCHORS, YOLOV5_STRIDES, mode=mode)
    return torch.autograd.grad(out["total"], preds)


@pytest.mark.parametrize("mode", ["v3", "yolov5"])
def test_a_freed_gradient_serves_the_next_backward_with_fresh_values(limit, mode):
    want = [g.clone() for g in gradients(torch.Generator().manual_seed(1), mode)]
    first = gradients(torch.Generator().manual_seed(0), mode)
    big = first[0].data_ptr()
    del first  # back to the cache, holding another input's values
    second = gradients(torch.Generator().manual_seed(1), mode)
    assert second[0].data_ptr() == big
    for g, w in zip(second, want):
        assert torch.equal(g, w)


def test_the_limit_and_empty_grad_cache_free_it(limit):
    gradients(torch.Generator().manual_seed(0), "v3")  # freed at once: into the cache
    freed = fastmtl.empty_grad_cache()
    assert freed >= 4 * 3 * 40 * 40 * 25 * 4
    assert fastmtl.empty_grad_cache() == 0
    limit(0)
    gradients(torch.Generator().manual_seed(0), "v3")
    assert fastmtl.empty_grad_cache() == 0  # nothing kept with the limit at 0
    limit(1)  # 1 MiB: the 2.3 MiB buffer does not fit
    gradients(torch.Generator().manual_seed(0), "v3")
    assert fastmtl.empty_grad_cache() == 0


def test_bad_limit_names_the_argument():
    with pytest.raises(ValueError, match="megabytes"):
        torch.ops.fastmtl._set_grad_cache_limit(-1)
