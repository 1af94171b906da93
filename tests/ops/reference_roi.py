"""Independent float64 references of RoI align and RoI pool for the tests: plain loops over rois,
bins and samples, written from the definitions (torchvision's semantics), not from the kernels.
Small sizes only."""

import math

import numpy as np
import torch

__all__ = ["roi_align_ref", "roi_pool_ref", "rois_from_list"]


def rois_from_list(boxes: list) -> torch.Tensor:
    """``[K, 5]`` rows (image index, x1, y1, x2, y2) from one ``[L, 4]`` tensor per image."""
    return torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype), b], 1) for i, b in enumerate(boxes)]
    )


def _bilinear(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Value of ``plane [C, H, W]`` at (y, x): 0 outside [-1, H] x [-1, W], else clamped bilinear."""
    h, w = plane.shape[-2:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return plane.new_zeros(plane.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * plane[:, y0, x0]
        + hy * lx * plane[:, y0, x1]
        + ly * hx * plane[:, y1, x0]
        + ly * lx * plane[:, y1, x1]
    )


def _rounder(dtype: torch.dtype):
    """Rounds a Python float to ``dtype`` (float32 or float64). One +, -, *, / done in float64
    and rounded to float32 equals the same operation done in float32."""
    if dtype == torch.float64:
        return float
    return lambda v: float(np.float32(v))


def roi_align_ref(
    x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *, geom_dtype=None
) -> torch.Tensor:
    """RoI align in float64: the average of grid_h x grid_w bilinear samples per bin.

    The sample positions and grid sizes are computed in ``geom_dtype`` (default: the kernels'
    compute type, float32 unless ``x`` is float64), each operation rounded as theirs: a half
    precision roi puts corners on a coarse grid, so samples often fall exactly on the
    ``[-1, H]`` edge, where float32 and float64 positions can land on opposite sides.
    """
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else output_size
    r = _rounder(geom_dtype or (torch.float64 if x.dtype == torch.float64 else torch.float32))
    x = x.detach().double()
    rois = rois.detach().double()
    out = x.new_zeros((rois.shape[0], x.shape[1], ph_n, pw_n))
    offset = 0.5 if aligned else 0.0
    scale = r(spatial_scale)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        plane = x[int(b)]
        sx, sy = r(r(x1 * scale) - offset), r(r(y1 * scale) - offset)
        rw, rh = r(r(r(x2 * scale) - offset) - sx), r(r(r(y2 * scale) - offset) - sy)
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = r(rh / ph_n), r(rw / pw_n)
        gh = sampling_ratio if sampling_ratio > 0 else max(math.ceil(r(rh / ph_n)), 0)
        gw = sampling_ratio if sampling_ratio > 0 else max(math.ceil(r(rw / pw_n)), 0)
        count = max(gh * gw, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = x.new_zeros(x.shape[1])
                for iy in range(gh):
                    y = r(r(sy + r(ph * bh)) + r(r((iy + 0.5) * bh) / gh))
                    for ix in range(gw):
                        acc += _bilinear(plane, y, r(r(sx + r(pw * bw)) + r(r((ix + 0.5) * bw) / gw)))
                out[k, :, ph, pw] = acc / count
    return out


def _c_round(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def roi_pool_ref(x, rois, output_size, spatial_scale=1.0, *, bin_dtype=torch.float64) -> tuple:
    """RoI max pooling in float64: (output, argmax as h * W + w, -1 for an empty bin).

    The bin bounds (scaled corners, bin sizes, floor/ceil of their multiples) are computed in
    ``bin_dtype``: in float32 ``3 * (7 / 3)`` may round above 7, and its ceil is then 8, so a
    reference for float32 kernels must round as they do.
    """
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = x.detach().double()
    n, c, h, w = x.shape
    out = x.new_zeros((rois.shape[0], c, ph_n, pw_n))
    arg = torch.full(out.shape, -1, dtype=torch.int64)

    def t(v):
        return torch.tensor(v, dtype=bin_dtype)

    for k, roi in enumerate(rois.detach().to(bin_dtype)):
        b = int(roi[0])
        sx, sy, ex, ey = (_c_round(float(v * t(spatial_scale))) for v in roi[1:])
        bh, bw = t(float(max(ey - sy + 1, 1))) / ph_n, t(float(max(ex - sx + 1, 1))) / pw_n
        for ph in range(ph_n):
            h0 = min(max(int(torch.floor(ph * bh)) + sy, 0), h)
            h1 = min(max(int(torch.ceil((ph + 1) * bh)) + sy, 0), h)
            for pw in range(pw_n):
                w0 = min(max(int(torch.floor(pw * bw)) + sx, 0), w)
                w1 = min(max(int(torch.ceil((pw + 1) * bw)) + sx, 0), w)
                if h1 <= h0 or w1 <= w0:
                    continue
                region = x[b, :, h0:h1, w0:w1].reshape(c, -1)
                best, idx = region.max(dim=1)
                out[k, :, ph, pw] = best
                arg[k, :, ph, pw] = (idx // (w1 - w0) + h0) * w + idx % (w1 - w0) + w0
    return out, arg
