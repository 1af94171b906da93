"""The Faster R-CNN box coder: boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes.

For a reference box (anchor or proposal) of centre ``(x_a, y_a)`` and size ``(w_a, h_a)`` and a
target box ``(x, y, w, h)``, with weights ``(w_x, w_y, w_w, w_h)``::

    dx = w_x (x - x_a) / w_a      dy = w_y (y - y_a) / h_a
    dw = w_w log(w / w_a)         dh = w_h log(h / h_a)

Decoding inverts it, with ``dw / w_w`` and ``dh / w_h`` clamped to ``log(1000 / 16)`` so that
``exp`` cannot overflow. Sizes are ``x2 - x1`` (no "+1"), as torchvision.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BBOX_XFORM_CLIP", "DEFAULT_WEIGHTS", "BoxCoder", "decode_boxes", "encode_boxes"]

DEFAULT_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _centre_size(boxes: Tensor) -> tuple:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes: Tensor, reference: Tensor, *, weights: tuple = DEFAULT_WEIGHTS) -> Tensor:
    """Deltas that take ``reference`` to ``boxes``.

    Args:
        boxes: ``[..., 4]`` target boxes ``(x1, y1, x2, y2)``.
        reference: ``[..., 4]`` reference boxes (anchors, proposals), broadcastable with ``boxes``;
            positive widths and heights.
        weights: ``(w_x, w_y, w_w, w_h)``.

    Returns:
        ``[..., 4]`` deltas ``(dx, dy, dw, dh)``.
    """
    wx, wy, ww, wh = weights
    x, y, w, h = _centre_size(boxes)
    xa, ya, wa, ha = _centre_size(reference)
    return torch.stack(
        (wx * (x - xa) / wa, wy * (y - ya) / ha, ww * torch.log(w / wa), wh * torch.log(h / ha)), dim=-1
    )


def decode_boxes(
    deltas: Tensor, reference: Tensor, *, weights: tuple = DEFAULT_WEIGHTS, clip: float = BBOX_XFORM_CLIP
) -> Tensor:
    """Boxes that ``deltas`` make of ``reference``: the inverse of :func:`encode_boxes`.

    Args:
        deltas: ``[..., 4]``, or ``[N, 4 * C]`` (one box per class) with ``reference`` ``[N, 4]``.
        reference: ``[..., 4]`` boxes ``(x1, y1, x2, y2)``, broadcastable with ``deltas``.
        weights: as in :func:`encode_boxes`.
        clip: ``dw / w_w`` and ``dh / w_h`` are clamped to at most this.

    Returns:
        boxes of the shape of ``deltas``.
    """
    shape = deltas.shape
    if reference.dim() == 2 and deltas.dim() == 2 and deltas.shape[1] != 4:
        deltas = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)
        reference = reference[:, None, :]
    wx, wy, ww, wh = weights
    xa, ya, wa, ha = _centre_size(reference.to(deltas.dtype))
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=clip)
    dh = (deltas[..., 3] / wh).clamp(max=clip)
    x, y = dx * wa + xa, dy * ha + ya
    half_w, half_h = 0.5 * torch.exp(dw) * wa, 0.5 * torch.exp(dh) * ha
    return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=-1).reshape(shape)


@dataclass(frozen=True)
class BoxCoder:
    """:func:`encode_boxes` and :func:`decode_boxes` with their weights and clip bound."""

    weights: tuple = DEFAULT_WEIGHTS
    clip: float = BBOX_XFORM_CLIP

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        return encode_boxes(boxes, reference, weights=self.weights)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        return decode_boxes(deltas, reference, weights=self.weights, clip=self.clip)
