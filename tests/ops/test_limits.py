"""Absurd sizes and parameters get a Python exception naming the argument and the limit, through
the public function, the dispatcher op and the fake kernel alike; never a crash, an allocator
message or a silently wrong result. Each case here was found by an adversarial run (issue 10).

Crash-prone calls run in a subprocess, so that a regression fails the test instead of the run.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastmtl.ops as F
from tests.utils import compiled_only

pytestmark = compiled_only

BIG = 2**32 + 2  # past 2^32: narrowed to 2 by a 32-bit cast
X = torch.rand(1, 2, 8, 8)
ROIS = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])


def _in_subprocess(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


HUGE_CALLS = [
    "F.roi_pool(x, r, (2**32 + 2, 1))",
    "F.roi_align(x, r, (1, 2**32 + 1), 1.0, 1)",
    "torch.ops.fastmtl.roi_pool(x, r, 1.0, 2**32 + 2, 1)",
    "torch.ops.fastmtl.roi_align(x, r, 1.0, 1, 2**32 + 1, 1, False)",
    "torch.ops.fastmtl.roi_align(x, r, 1.0, 2, 2, 2**40, False)",
    "torch.ops.fastmtl.roi_align(x, r, 1.0, 2, 2, -(2**32) + 2, False)",  # wrapped to a grid of 2
    "torch.ops.fastmtl.roi_align(x, r, 1.0, 2, 2, -(2**31) - 1, False)",  # wrapped past the cap
]


def test_huge_roi_sizes_raise_in_a_clean_process():
    """Once a segfault (roi_pool) and wrong values (roi_align): sizes narrowed to 32 bits. One
    subprocess for all the calls (importing torch is the slow part)."""
    result = _in_subprocess(
        f"""
        import torch, fastmtl.ops as F
        x = torch.rand(1, 2, 8, 8); r = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
        for call in {HUGE_CALLS!r}:
            try:
                eval(call)
                print("RETURNED:", call)
            except ValueError as e:
                print("ValueError:", str(e).splitlines()[0])
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(HUGE_CALLS), result.stdout
    for call, line in zip(HUGE_CALLS, lines):
        assert line.startswith("ValueError:") and ("output_size" in line or "sampling_ratio" in line), (
            call,
            line,
        )


@pytest.mark.parametrize("size", [(2**31, 1), (1, 2**31), (2**16, 2**16)])
def test_output_size_limit_is_named(size):
    for fn in (F.roi_align, F.roi_pool):
        with pytest.raises(ValueError, match="output_size.*2\\^31"):
            fn(X, ROIS, size)


def test_sampling_ratio_limit():
    for bad in (2**10 + 1, -(2**10) - 1, 2**20, -(2**32) + 2):
        with pytest.raises(ValueError, match="sampling_ratio"):
            F.roi_align(X, ROIS, 2, 1.0, bad)
    F.roi_align(X, ROIS, 2, 1.0, 64)  # large but sane: fine


def test_fake_kernels_reject_what_the_real_ones_reject():
    """torch.compile / torch.export trace with fake tensors: they must not accept a program that
    then fails at run time."""
    with FakeTensorMode() as mode:
        x, r = mode.from_tensor(X), mode.from_tensor(ROIS)
        with pytest.raises(ValueError, match="output_size"):
            torch.ops.fastmtl.roi_align(x, r, 1.0, 1, 2**32 + 1, 1, False)
        with pytest.raises(ValueError, match="sampling_ratio"):
            torch.ops.fastmtl.roi_align(x, r, 1.0, 2, 2, 2**40, False)
        with pytest.raises(ValueError, match="output_size"):
            torch.ops.fastmtl.roi_pool(x, r, 1.0, 2**32 + 2, 1)
        boxes, scores = mode.from_tensor(torch.rand(1, 3, 4)), mode.from_tensor(torch.rand(1, 3))
        with pytest.raises(ValueError, match="max_detections"):
            torch.ops.fastmtl.multiclass_nms(boxes, scores, 0.5, 0.0, 2**62)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_soft_nms_sigma_is_checked_in_the_compute_type(dtype):
    """sigma=1e-50 passed a double check, became 0 in float32 and dropped disjoint boxes (NaN)."""
    boxes = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6]], dtype=dtype)
    scores = torch.tensor([0.9, 0.8])
    for call in (
        lambda: F.soft_nms(boxes, scores, method="gaussian", sigma=1e-50),
        lambda: torch.ops.fastmtl.soft_nms(boxes, scores, None, 0.3, 1e-50, 0.001, "gaussian"),
    ):
        with pytest.raises(ValueError, match="sigma.*float32"):
            call()
    # float64 boxes compute in float64, where 1e-50 is a fine sigma: the disjoint box stays
    keep, _ = F.soft_nms(boxes.double(), scores, method="gaussian", sigma=1e-50)
    assert keep.tolist() == [0, 1]


def test_max_detections_limit_is_named():
    boxes, scores = torch.rand(1, 3, 4), torch.rand(1, 3)
    for call in (
        lambda: F.multiclass_nms(boxes, scores, 0.5, 0.0, 2**62),
        lambda: torch.ops.fastmtl.multiclass_nms(boxes, scores, 0.5, 0.0, 2**62),
    ):
        with pytest.raises(ValueError, match="max_detections.*2\\^31"):
            call()


def test_multiscale_roi_align_rejects_empty_image_shapes():
    """Once a ZeroDivisionError."""
    pool = F.MultiScaleRoIAlign(["a"], 2, 2)
    with pytest.raises(ValueError, match="image_shapes"):
        pool({"a": torch.rand(1, 1, 4, 4)}, [torch.rand(1, 4)], [(0, 0)])


def test_tiny_spatial_scale_is_checked_in_float32():
    with pytest.raises(ValueError, match="spatial_scale"):
        torch.ops.fastmtl.roi_align(X, ROIS, 1e-50, 2, 2, 1, False)
    F.roi_align(X.double(), ROIS.double(), 2, 1e-50, 1)  # float64 computes in float64: fine


@pytest.mark.parametrize("shape", [(1, 2, 0, 5), (1, 2, 5, 0), (1, 2, 0, 0)])
def test_roi_pool_of_an_empty_map_is_zero(shape):
    """The sanitizer run found the CPU kernel indexing an empty buffer for a map with no pixels
    (harmless in practice, undefined behaviour all the same)."""
    out = F.roi_pool(torch.rand(shape), ROIS, (3, 2))
    assert out.shape == (1, 2, 3, 2) and not out.any()
    _, argmax = torch.ops.fastmtl.roi_pool(torch.rand(shape), ROIS, 1.0, 3, 2)
    assert (argmax == -1).all()


def test_feature_map_sides_below_2_to_the_30():
    """A float32 sample position on a side of 2^31 - 64 or more rounds to 2^31, past an int (an
    out-of-bounds read on the CPU). Checked on an expanded view: no memory needed."""
    tall = torch.zeros(1, 1, 1, 1).expand(1, 1, 2**31 - 1, 1)
    for call in (
        lambda: F.roi_align(tall, ROIS, 1),
        lambda: torch.ops.fastmtl.roi_pool(tall, ROIS, 1.0, 1, 1),
    ):
        with pytest.raises(ValueError, match="input.*2\\^30"):
            call()


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_near_the_float32_limit_stays_finite(sign, sampling_ratio):
    """Values near 3e38 used to give inf/NaN: the bilinear samples of a bin were summed before the
    division by their count. Each bin is an average, so a finite answer exists; the float64
    reference computes it."""
    from fastmtl.ops import _reference

    x = sign * (3e38 - 1e37 * torch.rand(2, 3, 9, 9))
    rois = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0], [1, 1.5, 0.5, 7.0, 8.5], [0, 2.0, 2.0, 2.5, 2.5]])
    out = F.roi_align(x, rois, (3, 4), 1.0, sampling_ratio, aligned=True)
    want = _reference.roi_align(x.double(), rois.double(), 1.0, 3, 4, sampling_ratio, True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=0)


def test_roi_align_keeps_inf_and_nan_inputs():
    """The rescue from overflow recomputes only non-finite bins; an inf in the input stays inf."""
    x = torch.ones(1, 1, 6, 6)
    x[0, 0, 2, 2] = float("inf")
    out = F.roi_align(x, torch.tensor([[0, 0.0, 0.0, 5.0, 5.0]]), 1, 1.0, 2)
    assert out.isinf().all()


def test_empty_map_with_a_huge_batch():
    """No pixels and a batch of 2^40 (an expanded view: no memory) is a valid, empty input. The CPU
    kernels sized a buffer by the batch and failed with std::bad_alloc; the batch index of each roi
    is still checked."""
    x = torch.zeros(1, 1, 0, 4).expand(2**40, 1, 0, 4)
    bad = torch.tensor([[3, 1.0, 1.0, 2.0, 2.0]])
    ops = torch.ops.fastmtl
    for fn, op in (
        (F.roi_align, lambda x, r: ops.roi_align(x, r, 1.0, 2, 2, 2, False)),
        (F.roi_pool, lambda x, r: ops.roi_pool(x, r, 1.0, 2, 2)[0]),
    ):
        assert not fn(x, ROIS, 2).any() and not op(x, ROIS).any()
        with pytest.raises(RuntimeError, match="batch ind"):
            fn(x[:1], bad, 2)
        with pytest.raises(RuntimeError, match="batch ind"):
            op(x[:1], bad)


def test_outputs_too_large_name_output_size():
    """Past 2^60 elements torch reported "Storage size calculation overflowed"; below it, an
    output that does not fit reported the allocator. Both now name output_size, in the functions,
    the ops and the fake kernels alike (expanded views: no memory)."""
    ops = torch.ops.fastmtl
    calls = (
        lambda x, r: F.roi_align(x, r, 2**15),
        lambda x, r: F.roi_pool(x, r, 2**15),
        lambda x, r: ops.roi_align(x, r, 1.0, 2**15, 2**15, 2, False),
        lambda x, r: ops.roi_pool(x, r, 1.0, 2**15, 2**15),
    )
    for k, match in ((2**20, "output_size.*2\\^60"), (2**10, "output_size.*does not fit")):
        x = torch.zeros(1, 1, 8, 8).expand(1, k, 8, 8)
        for call in calls:
            with pytest.raises(ValueError, match=match):
                call(x, ROIS.expand(k, 5))
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.zeros(1, 2**20, 8, 8))
        r = mode.from_tensor(torch.zeros(2**20, 5))
        for call in (
            lambda: ops.roi_align(x, r, 1.0, 2**15, 2**15, 2, False),
            lambda: ops.roi_pool(x, r, 1.0, 2**15, 2**15),
        ):
            with pytest.raises(ValueError, match="output_size.*2\\^60"):
                call()
