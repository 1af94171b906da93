"""Plain-PyTorch YOLOv1 loss: the tests' reference, the fallback without the extension, and the
differentiable backward for double backward. The rules are those of :mod:`fastmtl.ops.yolo_v1`
(and csrc/kernels/yolo_v1.h), written as whole-tensor operations: no loop over images, cells or
objects. Computed in float32 for half inputs, else in the input's dtype (float64 in the tests).
"""

import torch
from torch import Tensor

from fastmtl.ops._reference import compute_dtype

__all__ = ["SQRT_EPS", "yolo_v1_terms"]

SQRT_EPS = 1e-6  # yolo::kSqrtEps: s(w) = sign(w) * sqrt(|w| + eps) for wh="signed_sqrt"


def _cells(v: Tensor, size: int) -> Tensor:
    """floor(v * size) clamped to [0, size - 1]; NaN lands in cell 0."""
    c = torch.floor(v * size)
    return torch.where(c > 0, c, torch.zeros_like(c)).clamp(max=size - 1).long()


def _cell_objects(t: Tensor, counts: Tensor, grid_h: int, grid_w: int) -> tuple:
    """Per cell, the first real target whose centre it holds: (its row [N, cells, 5], has [N, cells])."""
    n, m, _ = t.shape
    cell = _cells(t[..., 2], grid_h) * grid_w + _cells(t[..., 1], grid_w)  # [N, M]
    index = torch.arange(m, device=t.device).expand(n, m)
    real = index < counts.clamp(0, m)[:, None]
    owner = torch.full((n, grid_h * grid_w), m, dtype=torch.long, device=t.device)
    owner = owner.scatter_reduce(1, cell, torch.where(real, index, m), "amin")
    has = owner < m
    padded = torch.cat([t, t.new_zeros(n, 1, 5)], 1)  # row m: a harmless stand-in for "none"
    return padded.gather(1, owner[..., None].expand(-1, -1, 5)), has


def _center_iou(a: tuple, b: tuple) -> Tensor:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = torch.minimum(ax + aw / 2, bx + bw / 2) - torch.maximum(ax - aw / 2, bx - bw / 2)
    ih = torch.minimum(ay + ah / 2, by + bh / 2) - torch.maximum(ay - ah / 2, by - bh / 2)
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = aw * ah + bw * bh - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def _responsible(iou: Tensor, pred_box: tuple, obj: tuple) -> Tensor:
    """Highest IoU (first on ties); when none is > 0, the smallest squared distance (first on
    ties, NaN never chosen; predictor 0 when all are NaN)."""
    iou = torch.where(iou > 0, iou, torch.zeros_like(iou))
    dist = sum((p - o).square() for p, o in zip(pred_box, obj))
    dist = torch.where(torch.isnan(dist), torch.full_like(dist, float("inf")), dist)
    return torch.where(iou.amax(-1) > 0, iou.argmax(-1), dist.argmin(-1)), iou


def _size_root(raw: Tensor, wh: str) -> Tensor:
    return raw if wh == "sqrt" else torch.sign(raw) * torch.sqrt(raw.abs() + SQRT_EPS)


def yolo_v1_terms(
    pred: Tensor,
    targets: Tensor,
    counts: Tensor,
    num_boxes: int,
    num_classes: int,
    lambda_coord: float,
    lambda_noobj: float,
    wh: str,
    conf_target: str,
) -> Tensor:
    """The per-image terms ``[N, 5]`` (coord, size, obj, noobj, class) of
    :func:`fastmtl.ops.yolo_v1_loss`, differentiable with respect to ``pred``."""
    dt = compute_dtype(pred.dtype)
    lambda_coord, lambda_noobj = float(lambda_coord), float(lambda_noobj)  # an int past 2^63 too
    n, grid_h, grid_w, _ = pred.shape
    cells, b = grid_h * grid_w, num_boxes
    p = pred.to(dt).reshape(n, cells, pred.shape[3])  # not -1: a grid of no cells is valid
    if cells == 0:  # no cell, no term (kept in the graph of pred)
        return (p.sum((1, 2)) * 0)[:, None].expand(n, 5).clone()
    obj, has = _cell_objects(targets.detach().to(dt), counts, grid_h, grid_w)
    boxes = p[..., : 5 * b].reshape(n, cells, b, 5)
    col = torch.arange(cells, device=p.device) % grid_w
    row = torch.arange(cells, device=p.device) // grid_w
    x, y, w, h, conf = boxes.unbind(-1)
    size = (lambda v: v.square()) if wh == "sqrt" else (lambda v: v.clamp(min=0))
    pred_box = ((col[:, None] + x) / grid_w, (row[:, None] + y) / grid_h, size(w), size(h))
    ocx, ocy, ow, oh = (obj[..., k, None] for k in range(1, 5))
    with torch.no_grad():
        r, iou = _responsible(_center_iou(pred_box, (ocx, ocy, ow, oh)), pred_box, (ocx, ocy, ow, oh))
    resp = torch.nn.functional.one_hot(r, b).bool() & has[..., None]  # [N, cells, B]
    zero = torch.zeros((), dtype=dt, device=p.device)

    def over_responsible(v: Tensor) -> Tensor:
        return torch.where(resp, v, zero).flatten(1).sum(1)

    dx = x - (ocx * grid_w - col[:, None])
    dy = y - (ocy * grid_h - row[:, None])
    dw = _size_root(w, wh) - ow.sqrt()
    dh = _size_root(h, wh) - oh.sqrt()
    target_conf = iou.gather(-1, r[..., None]) if conf_target == "iou" else torch.ones_like(conf)
    classes = p[..., 5 * b :]
    label = obj[..., 0]
    in_range = (label >= 0) & (label < num_classes)
    onehot = torch.arange(num_classes, device=p.device) == torch.where(in_range, label, -1.0)[..., None]
    class_err = torch.where(has[..., None], classes - onehot.to(dt), zero)
    return torch.stack(
        [
            lambda_coord * over_responsible(dx.square() + dy.square()),
            lambda_coord * over_responsible(dw.square() + dh.square()),
            over_responsible((conf - target_conf).square()),
            lambda_noobj * torch.where(resp, zero, conf.square()).flatten(1).sum(1),
            class_err.square().flatten(1).sum(1),
        ],
        1,
    )
