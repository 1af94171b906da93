"""RoI align (Mask R-CNN) and RoI pool (Fast R-CNN) with the calls, results and gradients of
torchvision.ops.roi_align / roi_pool, and their nn.Module forms RoIAlign and RoIPool.

Boxes are ``Tensor[K, 5]`` rows ``(batch index, x1, y1, x2, y2)`` or a list of ``Tensor[L, 4]``
(one per image), in image coordinates; ``spatial_scale`` maps them onto the feature map.
float16 and bfloat16 inputs are computed in float32 and returned in their own dtype.

Checks: on the CPU the batch indices are checked against ``input`` (and the coordinates must be
finite). On CUDA they are not, to avoid a device sync: a roi whose batch index names no image
gives zeros (and no gradient).
"""

import math
from typing import Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from fastmtl._ext import has_compiled_ops, use_compiled
from fastmtl.ops import _checks, _reference
from fastmtl.ops._checks import BoxesShapeError, InputError, autocast_on

__all__ = ["RoIAlign", "RoIPool", "roi_align", "roi_pool"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


MAX_INT32 = 2**31 - 1  # the kernels index bins and pixels with 32-bit ints
MAX_SAMPLING_RATIO = 2**10  # roi::kMaxSamplingRatio


def _output_size(output_size) -> tuple:
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise InputError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return int(size[0]), int(size[1])


def check_limits(pooled_height, pooled_width, sampling_ratio, height, width) -> None:
    """The C++ checks' size limits, for the wrappers and the fake kernels alike."""
    if pooled_height > MAX_INT32 or pooled_width > MAX_INT32 or pooled_height * pooled_width > MAX_INT32:
        raise InputError(
            f"output_size ({pooled_height}, {pooled_width}) is too large: at most 2^31 - 1 bins per roi"
        )
    if not -MAX_SAMPLING_RATIO <= sampling_ratio <= MAX_SAMPLING_RATIO:
        raise InputError(
            f"sampling_ratio must be in [-{MAX_SAMPLING_RATIO}, {MAX_SAMPLING_RATIO}] (<= 0: adaptive), "
            f"got {sampling_ratio}"
        )
    if height >= 2**30 or width >= 2**30 or height * width > MAX_INT32:
        raise InputError(
            f"input: a feature map of {height} x {width} is too large: "
            "sides below 2^30, at most 2^31 - 1 pixels"
        )


def check_output_elements(rois: int, channels: int, pooled_height: int, pooled_width: int) -> None:
    """The C++ limit of 2^60 output elements (past it the output's byte size overflows)."""
    if rois * channels * pooled_height * pooled_width > 2**60:
        raise InputError(
            f"output_size = ({pooled_height}, {pooled_width}): the output of {rois} rois x {channels} "
            f"channels x {pooled_height} x {pooled_width} bins is past 2^60 elements"
        )


def check_op_args(input, rois, spatial_scale, pooled_height, pooled_width) -> None:
    """The C++ check_roi_args (csrc/ops/roi/roi.cpp) for the fake kernels: ranks, dtypes and
    sizes, so that a traced program fails where the real call would (a meta ``input`` of rank 3,
    a negative ``pooled_height``), with the same message."""
    if input.dim() != 4:
        raise InputError(f"input must have shape [N, C, H, W], got {list(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise InputError(f"rois must have shape [K, 5], got {list(rois.shape)}")
    if input.dtype not in _KERNEL_FLOATS:
        raise InputError(f"input must be float32, float64, float16 or bfloat16, got {input.dtype}")
    if rois.dtype != input.dtype:
        raise InputError(f"rois must have the dtype of input, got {rois.dtype} and {input.dtype}")
    if rois.device != input.device:
        raise InputError(f"rois must be on the device of input, got {rois.device} and {input.device}")
    if not (pooled_height > 0 and pooled_width > 0):
        raise InputError(f"output_size must be positive, got ({pooled_height}, {pooled_width})")
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise InputError(f"spatial_scale must be finite and > 0, got {spatial_scale}")
    if input.dtype != torch.float64 and not _f32(spatial_scale) > 0:
        raise InputError(
            f"spatial_scale must be > 0 in float32 (the kernels' compute type for {input.dtype}), "
            f"got {spatial_scale}"
        )


_KERNEL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _f32(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).item()


def _list_to_rois(boxes: list[Tensor]) -> Tensor:
    """A list of ``[L, 4]`` (one per image) as ``[K, 5]`` rows ``(image index, x1, y1, x2, y2)``."""
    ids = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(ids, dim=0), torch.cat(boxes, dim=0)], dim=1)


def _check_box_tensor(boxes: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise BoxesShapeError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {list(boxes.shape)}"
        )


def _check_box_list(boxes) -> None:
    if not isinstance(boxes, (list, tuple)):
        raise BoxesShapeError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            got = list(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise BoxesShapeError(f"boxes[{i}] must be a Tensor[L, 4], got {got}")
    if not boxes:
        raise BoxesShapeError("boxes is an empty list: give one Tensor[L, 4] per image")


def _rois(boxes: Union[Tensor, list[Tensor]]) -> Tensor:
    """boxes as a ``[K, 5]`` tensor, converting a list of ``[L, 4]`` as torchvision does."""
    if isinstance(boxes, Tensor):
        if not torch.jit.is_scripting():
            _check_box_tensor(boxes)
        return boxes
    if not torch.jit.is_scripting():
        _check_box_list(boxes)
        boxes = list(boxes)
    return _list_to_rois(boxes)


def _check(input, boxes, output_size, spatial_scale, sampling_ratio=-1) -> tuple:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise InputError(f"input must have shape [N, C, H, W], got {list(input.shape)}")
    if input.dtype not in _FLOATS:
        raise InputError(f"input must be float32, float64, float16 or bfloat16, got {input.dtype}")
    rois = _rois(boxes)
    # torchvision's kernels require one dtype too; under autocast, the autocast kernels cast.
    if rois.dtype != input.dtype and not autocast_on(input):
        raise InputError(f"boxes must have the dtype of input, got {rois.dtype} and {input.dtype}")
    if rois.device != input.device:
        raise InputError(f"boxes must be on the device of input, got {rois.device} and {input.device}")
    pooled = _output_size(output_size)
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise InputError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    check_limits(pooled[0], pooled[1], sampling_ratio, input.shape[2], input.shape[3])
    check_output_elements(rois.shape[0], input.shape[1], pooled[0], pooled[1])
    is_number = isinstance(spatial_scale, (int, float)) and not isinstance(spatial_scale, bool)
    if not is_number or not (0 < spatial_scale < math.inf):
        raise InputError(f"spatial_scale must be a finite number > 0, got {spatial_scale!r}")
    # Values are read on the CPU only (on CUDA, with debug checks): elsewhere it would wait for the
    # device. On CUDA, a roi whose batch index names no image gives zeros.
    if _checks.values_readable(rois):
        if not bool(torch.isfinite(rois).all()):
            raise InputError("boxes contains NaN or infinite values")
        idx = rois[:, 0]
        if bool((idx <= -1).any()) or bool((idx >= input.shape[0]).any()):
            raise InputError(
                f"boxes: batch indices must be in [0, {input.shape[0]}) (the batch size of input), "
                f"got values in [{idx.min().item()}, {idx.max().item()}]"
            )
    return rois, pooled, float(spatial_scale)


def _compiled(input: Tensor, op: str) -> bool:
    if torch.jit.is_scripting():
        return True  # a scripted call needs the extension (as torchvision's ops do)
    else:
        return use_compiled(input, op)


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: Union[Tensor, list[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    deterministic: bool = False,
) -> Tensor:
    """RoI align with average pooling (Mask R-CNN), as ``torchvision.ops.roi_align``.

    Args:
        input: ``Tensor[N, C, H, W]`` float32/float64/float16/bfloat16 (any memory format).
        boxes: ``Tensor[K, 5]`` of ``(batch index, x1, y1, x2, y2)``, or a list of ``N`` or fewer
            ``Tensor[L, 4]`` (one per image); the dtype and device of ``input`` (under autocast,
            any float dtype: both are then computed in float32 and the result has ``input``'s
            dtype, as torchvision's autocast kernel does).
        output_size: ``int`` or ``(height, width)`` of the output bins.
        spatial_scale: maps box coordinates onto ``input`` (e.g. 1/16 for stride 16).
        sampling_ratio: bilinear samples per bin along each axis; ``<= 0``: adaptive,
            ``ceil(roi size / output size)``.
        aligned: shift the boxes by -0.5 pixel (Detectron2); when False, rois are at least 1x1.
        deterministic: on CUDA, a backward without atomics whose result does not vary from run
            to run (slower); also used when ``torch.use_deterministic_algorithms(True)``. The CPU
            backward is always deterministic.

    Returns:
        ``Tensor[K, C, output_size[0], output_size[1]]`` in the dtype of ``input``,
        differentiable with respect to ``input`` (twice: the gradient of the gradient is
        roi_align of the incoming second-order gradient).
    """
    if not torch.jit.is_scripting():
        return _roi_align_eager(
            input, boxes, output_size, spatial_scale, sampling_ratio, aligned, deterministic
        )
    rois = _rois(boxes)
    return torch.ops.fastmtl.roi_align(
        input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned, deterministic
    )


def _roi_align_eager(
    input, boxes, output_size, spatial_scale, sampling_ratio, aligned, deterministic
) -> Tensor:
    rois, (ph, pw), scale = _check(input, boxes, output_size, spatial_scale, sampling_ratio)
    aligned = bool(aligned)
    deterministic = bool(deterministic) or torch.are_deterministic_algorithms_enabled()
    if not use_compiled(input, "roi_align"):
        return _reference.roi_align(input, rois, scale, ph, pw, sampling_ratio, aligned)
    return torch.ops.fastmtl.roi_align(input, rois, scale, ph, pw, sampling_ratio, aligned, deterministic)


@torch.fx.wrap
def roi_pool(
    input: Tensor,
    boxes: Union[Tensor, list[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI max pooling (Fast R-CNN), as ``torchvision.ops.roi_pool``.

    Box corners are rounded after scaling; each bin takes the max of the cells it covers (0 for a
    bin outside the map). The gradient flows to the arg max of each bin (and the gradient of the
    gradient back from it).

    Args:
        input: ``Tensor[N, C, H, W]`` float32/float64/float16/bfloat16 (any memory format).
        boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, as in :func:`roi_align`.
        output_size: ``int`` or ``(height, width)``.
        spatial_scale: maps box coordinates onto ``input``.

    Returns:
        ``Tensor[K, C, output_size[0], output_size[1]]`` in the dtype of ``input``.
    """
    if not torch.jit.is_scripting():
        return _roi_pool_eager(input, boxes, output_size, spatial_scale)
    rois = _rois(boxes)
    return torch.ops.fastmtl.roi_pool(input, rois, spatial_scale, output_size[0], output_size[1])[0]


def _roi_pool_eager(input, boxes, output_size, spatial_scale) -> Tensor:
    rois, (ph, pw), scale = _check(input, boxes, output_size, spatial_scale)
    if not use_compiled(input, "roi_pool"):
        return _reference.roi_pool(input, rois, scale, ph, pw)
    return torch.ops.fastmtl.roi_pool(input, rois, scale, ph, pw)[0]


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module, as ``torchvision.ops.RoIAlign``."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, list[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """:func:`roi_pool` as a module, as ``torchvision.ops.RoIPool``."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, list[Tensor]]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


def _register() -> None:
    """Fake (meta) kernels for torch.compile and autograd formulas for the compiled ops."""
    lib = "fastmtl::"

    @torch.library.register_fake(lib + "roi_align")
    def _(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, deterministic=False
    ):
        check_op_args(input, rois, spatial_scale, pooled_height, pooled_width)
        check_limits(pooled_height, pooled_width, sampling_ratio, input.shape[2], input.shape[3])
        check_output_elements(rois.shape[0], input.shape[1], pooled_height, pooled_width)
        return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))

    @torch.library.register_fake(lib + "roi_pool")
    def _(input, rois, spatial_scale, pooled_height, pooled_width):
        check_op_args(input, rois, spatial_scale, pooled_height, pooled_width)
        check_limits(pooled_height, pooled_width, -1, input.shape[2], input.shape[3])
        check_output_elements(rois.shape[0], input.shape[1], pooled_height, pooled_width)
        shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
        return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)

    @torch.library.register_fake(lib + "_roi_align_backward")
    def _(grad, rois, spatial_scale, ph, pw, batch_size, channels, height, width, *args):
        return grad.new_empty((batch_size, channels, height, width))

    @torch.library.register_fake(lib + "_roi_pool_backward")
    def _(grad, rois, argmax, spatial_scale, ph, pw, batch_size, channels, height, width):
        return grad.new_empty((batch_size, channels, height, width))

    def align_setup(ctx, inputs, output):
        input, rois, ctx.spatial_scale, ctx.ph, ctx.pw, ctx.sampling_ratio, ctx.aligned = inputs[:7]
        ctx.deterministic = inputs[7] if len(inputs) > 7 else False
        ctx.input_shape = input.shape
        ctx.save_for_backward(rois)

    def align_backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad_input = torch.ops.fastmtl._roi_align_backward(
            grad, rois, ctx.spatial_scale, ctx.ph, ctx.pw, n, c, h, w,
            ctx.sampling_ratio, ctx.aligned, ctx.deterministic,
        )  # fmt: skip
        return grad_input, None, None, None, None, None, None, None

    torch.library.register_autograd(lib + "roi_align", align_backward, setup_context=align_setup)

    def pool_setup(ctx, inputs, output):
        input, rois, ctx.spatial_scale, ctx.ph, ctx.pw = inputs
        ctx.input_shape = input.shape
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(rois, output[1])

    def pool_backward(ctx, grad, grad_argmax):
        rois, argmax = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad_input = torch.ops.fastmtl._roi_pool_backward(
            grad, rois, argmax, ctx.spatial_scale, ctx.ph, ctx.pw, n, c, h, w
        )
        return grad_input, None, None, None, None

    torch.library.register_autograd(lib + "roi_pool", pool_backward, setup_context=pool_setup)

    # Double backward. Both ops are linear in input, so their backwards are linear in grad, and
    # the gradient of a backward with respect to its grad is the forward op itself (roi_align)
    # or a gather at the arg max (roi_pool). Second derivatives in input are zero, exactly.
    def align_backward_setup(ctx, inputs, output):
        _, rois, ctx.spatial_scale, ctx.ph, ctx.pw = inputs[:5]
        ctx.sampling_ratio, ctx.aligned = inputs[9], inputs[10]
        ctx.deterministic = inputs[11] if len(inputs) > 11 else False
        ctx.save_for_backward(rois)

    def align_backward_backward(ctx, grad_grad_input):
        (rois,) = ctx.saved_tensors
        grad_grad = torch.ops.fastmtl.roi_align(
            grad_grad_input, rois, ctx.spatial_scale, ctx.ph, ctx.pw, ctx.sampling_ratio, ctx.aligned,
            ctx.deterministic,
        )  # fmt: skip
        return (grad_grad,) + (None,) * 11

    torch.library.register_autograd(
        lib + "_roi_align_backward", align_backward_backward, setup_context=align_backward_setup
    )

    def pool_backward_setup(ctx, inputs, output):
        _, rois, argmax = inputs[:3]
        ctx.save_for_backward(rois, argmax)

    def pool_backward_backward(ctx, grad_grad_input):
        rois, argmax = ctx.saved_tensors
        return (gather_at_argmax(grad_grad_input, rois, argmax),) + (None,) * 9

    torch.library.register_autograd(
        lib + "_roi_pool_backward", pool_backward_backward, setup_context=pool_backward_setup
    )


def gather_at_argmax(values: Tensor, rois: Tensor, argmax: Tensor) -> Tensor:
    """``out[k, c, i, j] = values[image of roi k, c].flatten()[argmax[k, c, i, j]]``, 0 where the
    bin is empty (argmax -1) or the roi names no image: the adjoint of roi_pool's backward."""
    n, c, h, w = values.shape
    if argmax.numel() == 0 or values.numel() == 0:
        return values.new_zeros(argmax.shape)
    image = rois[:, 0].to(torch.int64)
    valid = (argmax >= 0) & ((image >= 0) & (image < n))[:, None, None, None]
    plane = image.clamp(0, n - 1)[:, None] * c + torch.arange(c, device=values.device)[None, :]
    flat_index = plane[:, :, None, None] * (h * w) + argmax.to(torch.int64).clamp(min=0)
    return torch.where(valid, values.reshape(-1)[flat_index], values.new_zeros(()))


if has_compiled_ops():
    _register()
