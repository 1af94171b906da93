"""YOLO targets and detections: dataset boxes to the loss's layout, and grid predictions back to boxes.

- :func:`encode_yolo_targets`: ``(x1, y1, x2, y2)`` pixel boxes with labels ``1..C`` (the datasets'
  format) -> the padded ``[N, M, 5]`` rows ``(class 0..C-1, cx, cy, w, h)`` in image fractions
  and ``counts [N]`` of :func:`fastmtl.ops.yolo_v1_loss`; :func:`yolo_collate` does it per batch.
- :func:`decode_yolo`: a ``[N, S, S, B * 5 + C]`` prediction -> ``N x (S * S * B)`` pixel boxes
  and their class-specific confidences ``conf * P(class | object)`` (the paper's test-time score).
- :func:`yolo_detections`: decode, then :func:`fastmtl.ops.multiclass_nms` over the whole batch.

Everything is vectorized over images, cells and boxes.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from fastmtl.ops import multiclass_nms

__all__ = ["decode_yolo", "encode_yolo_targets", "yolo_collate", "yolo_detections"]


def encode_yolo_targets(targets: Sequence, image_size: tuple) -> tuple:
    """Dataset targets to the loss's padded layout.

    Args:
        targets: per image, ``{"boxes": [K, 4] (x1, y1, x2, y2) pixels, "labels": [K] in 1..C}``.
        image_size: ``(height, width)`` in pixels.

    Returns:
        ``(rows [N, M, 5] float32 (class, cx, cy, w, h), counts [N] int64)``, ``M`` the largest
        ``K`` (at least 1); padding rows are zeros.
    """
    h, w = image_size
    counts = torch.tensor([len(t["labels"]) for t in targets], dtype=torch.int64)
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).float()
    labels = torch.cat([t["labels"].reshape(-1) for t in targets])
    x1, y1, x2, y2 = boxes.unbind(-1)
    rows = torch.stack(
        ((labels - 1).float(), (x1 + x2) / (2 * w), (y1 + y2) / (2 * h), (x2 - x1) / w, (y2 - y1) / h), dim=-1
    )
    image = torch.repeat_interleave(torch.arange(len(targets)), counts)
    slot = torch.arange(len(labels)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    out = torch.zeros(len(targets), max(int(counts.max()) if len(targets) else 0, 1), 5)
    out[image, slot] = rows
    return out, counts


def yolo_collate(batch: Sequence) -> tuple:
    """``(images [N, 3, H, W], rows [N, M, 5], counts [N])`` of ``(image, target)`` items."""
    images = torch.stack([image for image, _ in batch])
    rows, counts = encode_yolo_targets([target for _, target in batch], tuple(images.shape[-2:]))
    return images, rows, counts


def decode_yolo(pred: Tensor, image_size: tuple, num_boxes: int) -> tuple:
    """Boxes and class-specific scores of every predictor of a grid prediction.

    Args:
        pred: ``[N, S_h, S_w, B * 5 + C]`` activated prediction (``sqrt`` sizes).
        image_size: ``(height, width)`` in pixels.
        num_boxes: ``B``.

    Returns:
        ``(boxes [N, S_h * S_w * B, 4] (x1, y1, x2, y2) pixels clipped to the image, scores
        [N, S_h * S_w * B, C])``, predictors in (row, column, box) order.
    """
    n, gh, gw, _ = pred.shape
    h, w = image_size
    boxes = pred[..., : 5 * num_boxes].unflatten(-1, (num_boxes, 5))
    row = torch.arange(gh, device=pred.device, dtype=pred.dtype).view(gh, 1, 1)
    col = torch.arange(gw, device=pred.device, dtype=pred.dtype).view(1, gw, 1)
    cx = (col + boxes[..., 0]) * (w / gw)
    cy = (row + boxes[..., 1]) * (h / gh)
    bw, bh = boxes[..., 2].square() * w, boxes[..., 3].square() * h
    xyxy = torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), dim=-1)
    limits = torch.tensor([w, h, w, h], device=pred.device, dtype=pred.dtype)
    xyxy = torch.minimum(xyxy.clamp(min=0), limits)
    scores = boxes[..., 4:5] * pred[..., None, 5 * num_boxes :]
    return xyxy.reshape(n, -1, 4), scores.reshape(n, gh * gw * num_boxes, -1)


def yolo_detections(
    pred: Tensor,
    image_size: tuple,
    num_boxes: int,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.01,
    max_detections: int = 100,
) -> list:
    """Decoded, class-aware-NMS'd detections: per image ``{"boxes", "scores", "labels"}`` with
    labels in ``1..C`` (the datasets' numbering), by decreasing score."""
    boxes, scores = decode_yolo(pred, image_size, num_boxes)
    det = multiclass_nms(boxes, scores, iou_threshold, score_threshold, max_detections)
    keep = torch.arange(max_detections, device=pred.device) < det.counts[:, None]
    counts = det.counts.tolist()  # one host copy to split the padded batch
    boxes, scores, labels = (t[keep].split(counts) for t in (det.boxes, det.scores, det.classes + 1))
    return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, labels)]
