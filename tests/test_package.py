"""The package as a whole: version, exports, which kernels the build registered, the fallback."""

import warnings
from pathlib import Path

import pytest
import torch

import fastmtl
from fastmtl import _ext, losses, ops
from tests.utils import env_flag

OPS = (
    "fastmtl::pairwise_box_iou",
    "fastmtl::_pairwise_box_iou_backward",
    "fastmtl::aligned_box_iou",
    "fastmtl::_aligned_box_iou_backward",
    "fastmtl::roi_align",
    "fastmtl::_roi_align_backward",
    "fastmtl::roi_pool",
    "fastmtl::_roi_pool_backward",
    "fastmtl::gram_matrix",
    "fastmtl::_gram_matrix_backward",
    "fastmtl::style_loss",
    "fastmtl::_style_loss_backward",
)
ROOT = Path(__file__).resolve().parents[1]


def test_version_is_a_string():
    assert isinstance(fastmtl.__version__, str)
    assert fastmtl.__version__[0].isdigit() and "." in fastmtl.__version__


@pytest.mark.parametrize("module", [fastmtl, ops, losses], ids=lambda m: m.__name__)
def test_all_exports_exist(module):
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


def test_public_ops_have_docstrings():
    for name in ops.__all__:
        assert getattr(ops, name).__doc__, name


def test_availability_flags_are_bools():
    assert isinstance(fastmtl.has_compiled_ops(), bool)
    assert isinstance(fastmtl.has_cuda_ops(), bool)
    assert not fastmtl.has_cuda_ops() or fastmtl.has_compiled_ops()


@pytest.mark.skipif(not fastmtl.has_compiled_ops(), reason="fastmtl._C not built")
@pytest.mark.parametrize("op", OPS)
def test_compiled_op_has_cpu_kernel(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")


@pytest.mark.skipif(
    not env_flag("FASTMTL_EXPECT_COMPILED"), reason="set FASTMTL_EXPECT_COMPILED=1 to require it"
)
def test_build_has_compiled_ops():
    assert fastmtl.has_compiled_ops(), f"fastmtl._C did not load: {_ext._LOAD_ERROR}"


@pytest.mark.skipif(not env_flag("FASTMTL_EXPECT_CUDA"), reason="set FASTMTL_EXPECT_CUDA=1 to require it")
@pytest.mark.parametrize("op", OPS)
def test_build_has_cuda_kernels(op):
    assert fastmtl.has_compiled_ops(), f"fastmtl._C did not load: {_ext._LOAD_ERROR}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), f"{op} has no CUDA kernel"
    assert fastmtl.has_cuda_ops()


def test_use_compiled_by_device():
    if not fastmtl.has_compiled_ops():
        pytest.skip("fastmtl._C not built")
    assert _ext.use_compiled(torch.empty(1, 4))
    assert _ext.use_compiled(torch.empty(1, 4, device="meta"))  # the fake kernels serve meta tensors


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    """As if fastmtl._C failed to load: the ops run on the pure-PyTorch path and warn once."""
    monkeypatch.setattr(_ext, "_LOAD_ERROR", ImportError("simulated"))
    monkeypatch.setattr(_ext, "_warned", set())
    assert not fastmtl.has_compiled_ops() and not fastmtl.has_cuda_ops()
    b = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]], dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="simulated"):
        iou = ops.box_iou(b, b)
    assert iou[0, 1].item() == pytest.approx(1 / 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the first call warns
        loss = ops.giou_loss(b, b.detach().flip(0), reduction="sum")
    loss.backward()
    assert torch.isfinite(b.grad).all()


def test_debug_checks_switch(monkeypatch):
    """Off by default: the Python layer reads no CUDA values; on, the CPU's value checks run on
    every device (here: a meta tensor still carries no values, a CPU one always is checked)."""
    from fastmtl.ops._checks import values_readable

    monkeypatch.setattr(_ext, "_debug_checks", False)
    assert not fastmtl.debug_checks()
    cuda_like = torch.empty(2, 4, device="meta")
    assert values_readable(torch.zeros(2, 4)) and not values_readable(cuda_like)
    fastmtl.set_debug_checks(True)
    assert fastmtl.debug_checks()
    assert not values_readable(cuda_like)  # meta: nothing to read, even in debug mode
    fastmtl.set_debug_checks(False)
