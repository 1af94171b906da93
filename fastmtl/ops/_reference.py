"""Plain-PyTorch versions of the compiled ops: the fallback when fastmtl._C is missing.

They follow the same formulas as csrc/kernels/box_math.h and are differentiable by autograd.
"""

import math

import torch

__all__ = [
    "aligned_box_iou",
    "compute_dtype",
    "gram_matrix",
    "multiclass_nms",
    "nms",
    "pair_compute_dtype",
    "pairwise_box_iou",
    "roi_align",
    "roi_pool",
    "soft_nms",
    "style_loss",
    "style_scales",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half and bfloat16 (as the kernels accumulate), else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _iou_terms(a: torch.Tensor, b: torch.Tensor, kind: str, eps: float, union_eps: float) -> torch.Tensor:
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / (union + union_eps)
    if kind == "iou":
        return iou
    cw = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    ch = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    if kind == "giou":
        c = cw * ch
        return iou - (c - union) / (c + union_eps)
    dx = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    dy = (ay1 + ay2) / 2 - (by1 + by2) / 2
    diou = iou - (dx * dx + dy * dy) / (cw * cw + ch * ch + eps)
    if kind == "diou":
        return diou
    t = torch.atan((ax2 - ax1) / (ay2 - ay1)) - torch.atan((bx2 - bx1) / (by2 - by1))
    v = (4 / math.pi**2) * t * t
    alpha = (v / (1 - iou + v + eps)).detach()  # a constant in the gradient, as in torchvision
    return diou - alpha * v


def pair_compute_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The compute dtype of two box tensors (mixed dtypes come from autocast)."""
    return torch.promote_types(compute_dtype(a), compute_dtype(b))


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """[..., N, 4] x [..., M, 4] -> [..., N, M] in the compute dtype (leading dimensions
    broadcast); the union has no eps (torchvision.ops)."""
    dt = pair_compute_dtype(boxes1.dtype, boxes2.dtype)
    return _iou_terms(boxes1.to(dt)[..., :, None, :], boxes2.to(dt)[..., None, :, :], kind, eps, 0.0)


def aligned_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """[N, 4] x [N, 4] -> [N] in the compute dtype; eps in every denominator (the IoU losses)."""
    dt = pair_compute_dtype(boxes1.dtype, boxes2.dtype)
    return _iou_terms(boxes1.to(dt), boxes2.to(dt), kind, eps, eps)


def nms(boxes: torch.Tensor, scores: torch.Tensor, idxs, iou_threshold: float) -> torch.Tensor:
    """Greedy (class-aware when idxs is given) NMS in plain PyTorch; kept indices by decreasing score."""
    order = torch.sort(scores, descending=True, stable=True).indices
    if order.numel() == 0:
        return order
    b = boxes.to(compute_dtype(boxes.dtype))[order]
    # Compared in float64, as torchvision's CPU kernel compares with a double threshold.
    iou = _iou_terms(b[:, None, :], b[None, :, :], "iou", 0.0, 0.0).double() > iou_threshold
    if idxs is not None:
        cls = idxs[order]
        iou &= cls[:, None] == cls[None, :]
    removed = torch.zeros(order.numel(), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(order.numel()):  # the greedy pass is sequential by nature
        if not removed[i]:
            keep.append(i)
            removed |= iou[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def multiclass_nms(boxes, scores, iou_threshold, score_threshold, max_detections) -> tuple:
    """Per-image loop of class-aware :func:`nms` over the candidates above the score threshold."""
    b, n = scores.shape[:2]
    classes = scores.shape[2] if scores.dim() == 3 else 1
    flat_scores = scores.reshape(b, n * classes)
    flat_boxes = boxes.reshape(b, -1 if b else 0, 4)
    out_boxes = boxes.new_zeros((b, max_detections, 4))
    out_scores = scores.new_zeros((b, max_detections))
    out_classes = torch.full((b, max_detections), -1, dtype=torch.int64, device=boxes.device)
    out_indices = out_classes.clone()
    counts = torch.zeros(b, dtype=torch.int64, device=boxes.device)
    for i in range(b):
        # Compared in float64: the threshold is a Python float.
        cand = torch.nonzero(flat_scores[i].double() > score_threshold).flatten()
        box_rows = cand if boxes.dim() == 4 else cand // classes
        keep = nms(flat_boxes[i][box_rows], flat_scores[i][cand], cand % classes, iou_threshold)
        keep = cand[keep[:max_detections]]
        k = keep.numel()
        out_boxes[i, :k] = flat_boxes[i][keep if boxes.dim() == 4 else keep // classes]
        out_scores[i, :k] = flat_scores[i][keep]
        out_classes[i, :k] = keep % classes
        out_indices[i, :k] = keep // classes
        counts[i] = k
    return out_boxes, out_scores, out_classes, out_indices, counts


def soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method: str) -> tuple:
    """Soft-NMS in plain PyTorch; method "linear" or "gaussian" (see fastmtl.ops.soft_nms)."""
    dt = compute_dtype(boxes.dtype)
    b = boxes.to(dt)
    score = scores.to(dt).clone()
    active = score >= score_threshold
    cls = idxs if idxs is not None else torch.zeros(len(b), dtype=torch.int64, device=b.device)
    keep, kept = [], []
    while bool(active.any()):  # one selection per round, by nature sequential
        best = torch.where(active, score, -math.inf)
        top = torch.nonzero(best == best.max()).flatten()[0]  # the lowest index among ties
        keep.append(int(top))
        kept.append(score[top].clone())
        active[top] = False
        iou = torch.nan_to_num(_iou_terms(b[top], b, "iou", 0.0, 0.0), nan=0.0)
        if method == "gaussian":
            weight = torch.exp(-(iou * iou) / sigma)
        else:
            weight = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))
        decay = active & (cls == cls[top])
        score = torch.where(decay, score * weight, score)
        active &= score >= score_threshold
    keep_t = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    new_scores = torch.stack(kept) if kept else score.new_empty(0)
    return keep_t, new_scores.to(scores.dtype)


def _align_axis_weights(lo, hi, scale, pooled, size, sampling_ratio, aligned):
    """``A[k, p, i]``: the summed bilinear weight of pixel ``i`` in the samples of bin ``p`` of roi
    ``k`` along one axis (csrc/kernels/roi.h), the number of samples per bin ``grid[k]``, and
    ``taps[k, p, i]``: whether a sample of the bin reads pixel ``i`` at all (a weight 0 included:
    the kernels multiply it, so a NaN there reaches the bin)."""
    offset = 0.5 if aligned else 0.0
    start = lo * scale - offset
    length = hi * scale - offset - start
    if not aligned:  # at least 1, as the kernels' `size > 1 ? size : 1` (NaN -> 1)
        length = torch.where(length > 1, length, torch.ones_like(length))
    bin_size = length / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:
        # As the kernels: no samples for a negative or NaN size, at most 2^20 per bin.
        g = torch.ceil(length / pooled)
        grid = torch.where(g > 0, g.clamp(max=float(_MAX_GRID)), torch.zeros_like(g))
    k = lo.shape[0]
    g_max = int(grid.max().item()) if k else 0
    p = torch.arange(pooled, dtype=lo.dtype, device=lo.device)[None, :, None]
    i = torch.arange(g_max, dtype=lo.dtype, device=lo.device)[None, None, :]
    g = grid[:, None, None]
    pos = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
    valid = (i < g) & (pos >= -1) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    at_end = pos.floor() >= size - 1
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low)
    weights = torch.zeros(k, pooled, size, dtype=lo.dtype, device=lo.device)
    taps = torch.zeros(k, pooled, size, dtype=lo.dtype, device=lo.device)
    zero = torch.zeros_like(pos)
    for idx, w in ((low, 1 - frac), (high, frac)):
        w = torch.where(valid, w, zero)
        idx = torch.where(valid, idx, zero).long().clamp(0, size - 1)
        weights.scatter_add_(2, idx, w)
        taps.scatter_add_(2, idx, valid.to(lo.dtype))
    return weights, grid, taps > 0


_MAX_GRID = 1 << 20  # csrc/kernels/roi.h kMaxGrid


def roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    """RoI align in plain PyTorch, differentiable in ``input``: per image, the separable
    interpolation ``A_y X A_x^T / count``. Rois whose batch index names no image give zeros."""
    n, c, h, w = input.shape
    dt = compute_dtype(input.dtype)
    x, r = input.to(dt), rois.to(dt)
    spatial_scale = float(spatial_scale)  # an int past int64 too, as the kernels' double
    k = r.shape[0]
    out = x.new_zeros((k, c, pooled_height, pooled_width))
    if k == 0 or h == 0 or w == 0:
        return out.to(input.dtype)
    ay, gy, ty = _align_axis_weights(
        r[:, 2], r[:, 4], spatial_scale, pooled_height, h, sampling_ratio, aligned
    )
    ax, gx, tx = _align_axis_weights(
        r[:, 1], r[:, 3], spatial_scale, pooled_width, w, sampling_ratio, aligned
    )
    count = (gy * gx).clamp(min=1)
    batch = r[:, 0].trunc()
    for b in range(n):
        sel = torch.nonzero((r[:, 0] > -1) & (batch == b)).flatten()
        if sel.numel():
            plane = x[b]
            bad = ~torch.isfinite(plane)
            if bad.any():  # NaN / inf reach only the bins that read them (0 * NaN elsewhere)
                plane = torch.where(bad, torch.zeros_like(plane), plane)
            rows = torch.einsum("kph,chw->kcpw", ay[sel], plane)
            val = torch.einsum("kcpw,kqw->kcpq", rows, ax[sel])
            if bad.any():
                val = val + _nonfinite_terms(x[b], bad, ay[sel], ax[sel], ty[sel], tx[sel])
            out = out.index_put((sel,), val / count[sel, None, None, None])
    return out.to(input.dtype)


def _nonfinite_terms(plane, bad, ay, ax, ty, tx):
    """The terms of the non-finite pixels of ``plane`` [C, H, W] in the bins that read them."""
    k, ph, _ = ay.shape
    pw = ax.shape[1]
    badf = bad.to(ay.dtype)
    touched = torch.einsum("kph,chw,kqw->kcpq", ty.to(ay.dtype), badf, tx.to(ay.dtype)) > 0
    terms = torch.zeros(k, plane.shape[0], ph, pw, dtype=ay.dtype, device=ay.device)
    for kk, c, p, q in torch.nonzero(touched).tolist():
        hs, ws = torch.nonzero(ty[kk, p]).flatten(), torch.nonzero(tx[kk, q]).flatten()
        sub = plane[c][hs][:, ws]
        wgt = ay[kk, p, hs][:, None] * ax[kk, q, ws][None, :]
        m = ~torch.isfinite(sub)
        terms[kk, c, p, q] = (wgt[m] * sub[m]).sum()
    return terms


def _round_half_away(v: float) -> int:
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    r = math.floor(abs(v))
    if abs(v) - r >= 0.5:
        r += 1
    return int(math.copysign(r, v))


def _round_cell(v: float) -> int:
    """The kernels' round_cell: C's round(), clamped to +-2^30 (NaN -> -2^30: a roi far off the map)."""
    big = 1 << 30
    if not v > -big:
        return -big
    return big if v >= big else _round_half_away(v)


def roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    """RoI max pooling in plain PyTorch (a loop over rois), differentiable in ``input``: the gradient
    of a bin goes to its max. Bin bounds are computed in the compute dtype, as the kernels do."""
    n, c, h, w = input.shape
    dt = compute_dtype(input.dtype)
    x, r = input.to(dt), rois.to(dt)
    scale = torch.tensor(float(spatial_scale), dtype=dt)

    def bounds(lo, hi, pooled, size):
        start, end = (_round_cell(float(v * scale)) for v in (lo, hi))
        bin_size = torch.tensor(float(max(end - start + 1, 1)), dtype=dt) / pooled
        for p in range(pooled):
            first = int(torch.floor(p * bin_size)) + start
            last = int(torch.ceil((p + 1) * bin_size)) + start
            yield min(max(first, 0), size), min(max(last, 0), size)

    zero = x.new_zeros(c)
    out = []
    for roi in r:
        b = int(roi[0].trunc())
        if not 0 <= b < n:
            out.append(x.new_zeros((c, pooled_height * pooled_width)))
            continue
        rows = list(bounds(roi[2], roi[4], pooled_height, h))
        cols = list(bounds(roi[1], roi[3], pooled_width, w))
        bins = [
            _bin_max(x[b, :, h0:h1, w0:w1]) if h1 > h0 and w1 > w0 else zero
            for h0, h1 in rows
            for w0, w1 in cols
        ]
        out.append(torch.stack(bins, dim=1))
    if not out:
        return input.new_zeros((0, c, pooled_height, pooled_width))
    return torch.stack(out).reshape(len(out), c, pooled_height, pooled_width).to(input.dtype)


_POOL_INIT = -3.4028234663852886e38  # csrc/kernels/roi.h pool_init: -FLT_MAX in every dtype


def _bin_max(cells: torch.Tensor) -> torch.Tensor:
    """The max of a non-empty bin [C, h, w] as the kernels (and torchvision) take it: starting from
    -FLT_MAX, NaN never taken (a bin of NaN or -inf only gives -FLT_MAX)."""
    v = cells.flatten(1)
    v = torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v)
    return v.amax(dim=1).clamp(min=_POOL_INIT)


def gram_matrix(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, C] in the dtype of features, computed in the compute dtype."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w).to(compute_dtype(features.dtype))
    g = torch.bmm(f, f.transpose(1, 2))
    if normalize and c * h * w > 0:
        g = g / (c * h * w)
    return g.to(features.dtype)


def style_scales(normalization: str, c: int, p: int) -> tuple:
    """``(a, s)`` of csrc/kernels/gram.h: ``diff = a * F F^T - target``, ``loss = s * sum diff^2``.

    normalization "gatys": ``a = 1``, ``s = 1 / (2 P C)^2``; "mse": ``a = 1 / (C P)``, ``s = 1 / C^2``.
    """
    c, p = max(c, 1), max(p, 1)
    if normalization == "mse":
        return 1.0 / (c * p), 1.0 / (c * c)
    return 1.0, 1.0 / (2.0 * p * c) ** 2


def style_loss(features: torch.Tensor, target_gram: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-sample style loss [N] in the compute dtype (see fastmtl.ops.style_loss)."""
    n, c, h, w = features.shape
    dt = compute_dtype(features.dtype)
    f = features.reshape(n, c, h * w).to(dt)
    a, s = style_scales(normalization, c, h * w)
    diff = a * torch.bmm(f, f.transpose(1, 2)) - target_gram.to(dt)
    return s * diff.square().sum((1, 2))
