"""Plain-PyTorch reference of the anchor-based YOLO loss: YOLOv2/v3's rules, and yolov5's.

The test oracle and the fallback of a fused kernel. Every rule is written out in the docstring of
:func:`yolo_anchor_loss_reference`; the code is vectorized over images and boxes (it loops over the
few scales only) and differentiable by autograd in the predictions.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from fastmtl.ops._reference import aligned_box_iou, pairwise_box_iou

__all__ = ["YOLOV5_ANCHORS", "YOLOV5_GAINS", "YOLOV5_STRIDES", "yolo_anchor_loss_reference", "yolov5_balance"]

# yolov5's default anchors (models/yolov5*.yaml), in pixels, for strides 8, 16 and 32.
YOLOV5_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
YOLOV5_STRIDES = (8, 16, 32)

_MODES = ("v3", "yolov5")
_BOX_LOSSES = ("mse", "ciou")
_CIOU_EPS = 1e-7  # yolov5's bbox_iou eps, in the union, the diagonal and alpha
# yolov5's hyp.scratch-low gains and its per-scale objectness balance for three scales.
YOLOV5_GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5}
_YOLOV5_BALANCE = {3: (4.0, 1.0, 0.4)}
_YOLOV5_BALANCE_OTHER = (4.0, 1.0, 0.25, 0.06, 0.02)  # P3-P7, as yolov5 for other counts


def yolo_anchor_loss_reference(
    preds: "list[Tensor]",
    targets: Tensor,
    counts: Tensor,
    anchors: Tensor,
    strides,
    *,
    mode: str = "v3",
    box_loss: "str | None" = None,
    ignore_threshold: float = 0.5,
    lambda_box: "float | None" = None,
    lambda_obj: "float | None" = None,
    lambda_noobj: "float | None" = None,
    lambda_cls: "float | None" = None,
    anchor_t: float = 4.0,
    balance=None,
    reduction: str = "sum",
) -> "dict[str, Tensor]":
    """Anchor-based YOLO loss, as a dict of named terms ``total, box, obj, noobj, cls``.

    Inputs (one convention for both modes):
        preds: one ``Tensor[N, A, H_l, W_l, 5 + C]`` per scale ``l``, raw logits laid out as
            ``(x, y, w, h, obj, class_0 .. class_{C-1})``; floating, one dtype.
        targets: ``Tensor[N, B, 5]``: ``(class, cx, cy, w, h)`` per row, the box normalized to
            ``[0, 1]`` by the image size; the class a float holding an integer in ``[0, C)``.
        counts: ``Tensor[N]`` integers: rows ``>= counts[n]`` of image ``n`` are padding and
            never read (NaN there is fine); an image with count 0 has no object.
        anchors: ``Tensor[L, A, 2]`` anchor ``(w, h)`` in input-image pixels (as yolov5's yaml and
            Darknet's cfg give them); ``anchors[l] / strides[l]`` are the priors in grid cells.
        strides: ``L`` numbers, the pixels per cell of each scale (8, 16, 32).
    Options: ``lambda_*`` weigh the terms (None: the mode's defaults); ``ignore_threshold`` is
    v3's only; ``anchor_t`` and ``balance`` (per-scale objectness weights) are yolov5's only.
    Every term comes back weighted, ``total`` is their sum, all computed in the dtype of ``preds``.
    ``reduction`` ``"sum"`` adds over the batch; ``"mean"`` divides that by ``N`` (0 if empty).

    Why v3 is the default: it is the slides' scheme (each gt to the one anchor shape it fits
    best, one target vector per cell and anchor) and Darknet's, a one-to-one assignment that a
    fused kernel writes as a scatter. yolov5 differs on purpose (several anchors and up to three
    cells per gt, ``2 sigmoid - 0.5`` and ``(2 sigmoid)^2`` decoding, CIoU, an IoU objectness
    target, no ignore rule, means per scale): ask for it with ``mode="yolov5"``.

    Mode ``"v3"`` (default; YOLOv2/v3, Darknet's yolo_layer):
        * Units: a gt's pixel size is ``(w W_0 s_0, h H_0 s_0)`` (the image is the first scale's
          grid times its stride). Each valid gt goes to its single best anchor over all scales by
          the IoU of the two shapes, both centred; ties go to the lowest scale, then anchor.
        * Cell: ``gi = clamp(floor(cx W), 0, W - 1)``, ``gj`` likewise with ``cy H``: a centre on a
          cell edge belongs to the cell right/below it, ``cx = 1`` to the last column.
        * Box target, in the cells of its scale: ``tx = cx W - gi`` (in ``[0, 1]``),
          ``tw = log(w W / anchor_w)`` with ``anchor_w = anchors[l, a, 0] / strides[l]``;
          likewise ``y, h``. gt sides must be > 0 (ValueError otherwise).
        * Two gts on one (image, scale, anchor, cell): the later row of the image wins (Darknet's
          yolo_layer overwrites the box deltas the same way, though it merges the two classes);
          the other gt leaves the box, obj and cls terms (it still counts in the ignore test).
        * box ``"mse"`` (default): ``sum (sigmoid(px) - tx)^2 + (sigmoid(py) - ty)^2 + (pw - tw)^2
          + (ph - th)^2`` over assigned predictions (without Darknet's ``2 - w h`` scale);
          ``"ciou"``: ``sum 1 - CIoU(decoded, gt)``, the decoded box in cells being
          ``(gi + sigmoid(px), gj + sigmoid(py), anchor_w exp(pw), anchor_h exp(ph))``;
          CIoU's alpha is a constant in the gradient (yolov5, torchvision).
        * obj: ``sum BCE(obj, 1)`` over assigned predictions. noobj: ``sum BCE(obj, 0)`` over the
          others, except those whose decoded box has IoU ``> ignore_threshold`` (strictly) with any
          valid gt of its image, at any scale (a constant mask: no gradient flows through it).
        * cls: ``sum_c BCE(class_c, onehot_c)`` over assigned predictions (sigmoid, multi-label;
          also for ``C = 1``). Lambdas default to 1.
    Mode ``"yolov5"``: loss and gradient of yolov5 7.0.14's ``utils.loss.ComputeLoss`` with
    hyp.scratch-low (``box 0.05, obj 1.0, cls 0.5, anchor_t 4, balance [4, 1, 0.4]``, no focal loss
    or label smoothing, ``gr 1``, ``sort_obj_iou False``, ``autobalance False``); ``reduction="sum"``
    gives its first output (``* batch size``), ``"mean"`` the sum of its ``loss_items``.
        * Per scale, gt in cells ``g = (cx W, cy H, w W, h H)``; a gt goes to every anchor with
          ``max(r, 1/r) < anchor_t`` on both sides (``r = g_wh / anchor``), in its cell and in the
          neighbour cells left/up/right/down when its centre is in that half of its cell and more
          than 1 cell from that image edge. Cell ``trunc(g_xy - offset)``, clamped to the grid;
          target ``xy = g_xy - cell`` from the clamped cell (so ``cx = 1`` targets 1 in the last
          column: yolov5 clamps its cell indices in place before it takes the difference).
        * Decoded ``xy = 2 sigmoid - 0.5``, ``wh = (2 sigmoid)^2 anchor``; box term: the mean of
          ``1 - CIoU`` over the scale's candidates (duplicates included), summed over scales.
        * Objectness target: the detached CIoU clamped at 0 on each candidate's cell, 0 elsewhere;
          when candidates share a cell the last in yolov5's order (offset, then anchor, then gt in
          image-major row order) wins, as yolov5's index_put does on the CPU (on CUDA its pick is
          unspecified). The BCE mean over the whole scale times ``balance[l]``. noobj is 0: obj
          covers every prediction. yolov5 adds its terms into float32 buffers: expect ~1e-7.
        * cls: BCE mean over the candidates' ``[k, C]`` one-hot, only when ``C > 1``.
        * yolov5's train.py rescales the gains (``cls *= C / 80``, ``obj *= (img / 640)^2``, both
          ``* 3 / L``): pass those as ``lambda_*`` to reproduce a training run.
    """
    _check(preds, targets, counts, anchors, strides, mode, box_loss, reduction)
    like = {"dtype": preds[0].dtype, "device": preds[0].device}
    targets, anchors, counts = targets.to(**like), anchors.to(**like), counts.to(like["device"])
    if mode == "v3":
        terms = _v3_terms(preds, targets, counts, anchors, strides, box_loss or "mse", ignore_threshold)
        weights = {"box": lambda_box, "obj": lambda_obj, "noobj": lambda_noobj, "cls": lambda_cls}
        weights = {k: 1.0 if v is None else float(v) for k, v in weights.items()}
        scale = 1.0
    else:
        if lambda_noobj is not None:
            raise ValueError("lambda_noobj: yolov5 mode has no no-object term (obj covers it)")
        balance = yolov5_balance(len(preds), {"balance": balance})
        terms = _yolov5_terms(preds, targets, counts, anchors, strides, float(anchor_t), balance)
        weights = {"box": lambda_box, "obj": lambda_obj, "cls": lambda_cls}
        weights = {k: YOLOV5_GAINS[k] if v is None else float(v) for k, v in weights.items()}
        weights["noobj"] = 0.0
        scale = float(preds[0].shape[0])  # yolov5 returns its means times the batch size
    if reduction == "mean":
        scale /= max(preds[0].shape[0], 1)
    out = {k: terms[k] * (weights[k] * scale) for k in ("box", "obj", "noobj", "cls")}
    out["total"] = out["box"] + out["obj"] + out["noobj"] + out["cls"]
    return out


def yolov5_balance(levels: int, options) -> tuple:
    """The per-scale objectness weights: ``options["balance"]``, or yolov5's for ``levels`` scales."""
    balance = options.get("balance")
    if balance is None:
        if levels > len(_YOLOV5_BALANCE_OTHER):
            raise ValueError(f"balance: yolov5 has no default for {levels} scales; pass one weight per scale")
        balance = _YOLOV5_BALANCE.get(levels, _YOLOV5_BALANCE_OTHER)
    try:
        balance = tuple(float(b) for b in balance)
    except (TypeError, ValueError) as e:
        raise ValueError(f"balance must be numbers, one per scale, got {balance!r}") from e
    if len(balance) < levels:
        raise ValueError(f"balance must have one weight per scale ({levels}), got {len(balance)}")
    return balance


def _check(preds, targets, counts, anchors, strides, mode, box_loss, reduction) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if box_loss is not None and box_loss not in _BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {_BOX_LOSSES}, got {box_loss!r}")
    if mode == "yolov5" and box_loss not in (None, "ciou"):
        raise ValueError(f"box_loss: yolov5 mode uses 'ciou', got {box_loss!r}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if not preds:
        raise ValueError("preds must hold at least one scale")
    n, na, c = preds[0].shape[0], preds[0].shape[1], preds[0].shape[-1]
    for i, p in enumerate(preds):
        if p.dim() != 5 or p.shape[0] != n or p.shape[1] != na or p.shape[-1] != c or c < 5:
            raise ValueError(f"preds[{i}] must be [N, A, H, W, 5 + C] like preds[0], got {tuple(p.shape)}")
        if p.shape[2] < 1 or p.shape[3] < 1:
            raise ValueError(
                f"preds[{i}]: a grid of {p.shape[2]} x {p.shape[3]} cells: each side must be >= 1"
            )
        if not p.is_floating_point() or p.dtype != preds[0].dtype:
            raise ValueError(f"preds[{i}] must be floating, of one dtype, got {p.dtype}")
    if anchors.shape != (len(preds), na, 2):
        raise ValueError(f"anchors must be [L={len(preds)}, A={na}, 2], got {tuple(anchors.shape)}")
    if len(strides) != len(preds):
        raise ValueError(f"strides must have L={len(preds)} entries, got {len(strides)}")
    if targets.dim() != 3 or targets.shape[0] != n or targets.shape[2] != 5:
        raise ValueError(f"targets must be [N={n}, B, 5], got {tuple(targets.shape)}")
    if counts.shape != (n,) or counts.is_floating_point():
        raise ValueError(f"counts must be an integer [N={n}], got {counts.dtype} {tuple(counts.shape)}")
    if bool(((counts < 0) | (counts > targets.shape[1])).any()):
        raise ValueError(f"counts must lie in [0, B={targets.shape[1]}]")
    _check_valid_rows(targets, counts, c - 5, mode)


def _check_valid_rows(targets, counts, num_classes, mode) -> None:
    rows = targets[_valid_mask(counts.to(targets.device), targets.shape[1])]
    cls = rows[:, 0]
    if bool(((cls < 0) | (cls >= num_classes) | (cls != cls.trunc())).any()):
        raise ValueError(f"targets: class must be an integer in [0, C={num_classes})")
    if mode == "v3" and bool((rows[:, 3:5] <= 0).any()):
        raise ValueError("targets: w and h must be > 0 in v3 mode (tw = log(w / anchor))")
    if bool((rows[:, 3:5] < 0).any()):
        raise ValueError("targets: w and h must be >= 0")


def _valid_mask(counts: Tensor, b: int) -> Tensor:
    return torch.arange(b, device=counts.device)[None, :] < counts[:, None]


def _valid_targets(targets: Tensor, counts: Tensor):
    """The valid rows, image-major then row order: image [M], class [M] (long), box [M, 4]."""
    n, b = targets.shape[:2]
    valid = _valid_mask(counts, b)
    img = torch.arange(n, device=targets.device)[:, None].expand(n, b)[valid]
    rows = targets[valid]
    return img, rows[:, 0].long(), rows[:, 1:5]


def _xyxy(box: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), as yolov5's bbox_iou converts."""
    half = box[..., 2:] / 2
    return torch.cat((box[..., :2] - half, box[..., :2] + half), -1)


def _centred(wh: Tensor) -> Tensor:
    return _xyxy(torch.cat((torch.zeros_like(wh), wh), -1))


def _last_wins(cell: Tensor, size: int) -> Tensor:
    """Mask of the entries that are the last to name their cell: a deterministic 'last write'."""
    pos = torch.arange(cell.numel(), device=cell.device)
    last = torch.full((size,), -1, dtype=pos.dtype, device=cell.device)
    last = last.scatter_reduce(0, cell, pos, "amax")
    return last[cell] == pos


def _flat_cell(p: Tensor, b, a, gj, gi) -> Tensor:
    _, na, h, w, _ = p.shape
    return ((b * na + a) * h + gj) * w + gi


def _cells(p: Tensor) -> Tensor:
    """The grid cell (gi, gj) of every prediction, [H, W, 2] in p's dtype."""
    h, w = p.shape[2:4]
    gj, gi = torch.meshgrid(
        torch.arange(h, dtype=p.dtype, device=p.device),
        torch.arange(w, dtype=p.dtype, device=p.device),
        indexing="ij",
    )
    return torch.stack((gi, gj), -1)


def _grid_anchors(anchors: Tensor, strides) -> "list[Tensor]":
    """The priors in cells of each scale: pixels / stride."""
    return [anchors[i] / float(s) for i, s in enumerate(strides)]


def _zero(p: Tensor) -> Tensor:
    return p.new_zeros(())


# ---------------------------------------------------------------- v3


def _best_anchor(box: Tensor, anchors_px: Tensor, image_wh: Tensor):
    """(scale, anchor) of the best anchor shape for each gt; argmax takes the first of ties."""
    na = anchors_px.shape[1]
    iou = pairwise_box_iou(_centred(box[:, 2:] * image_wh), _centred(anchors_px.reshape(-1, 2)), "iou", 0.0)
    best = iou.argmax(1)
    return best // na, best % na


def _v3_terms(preds, targets, counts, anchors, strides, box_loss, thr):
    img, cls, box = _valid_targets(targets, counts)
    h0, w0 = preds[0].shape[2:4]
    image_wh = box.new_tensor([w0 * float(strides[0]), h0 * float(strides[0])])
    best_l, best_a = _best_anchor(box, anchors, image_wh)
    valid = _valid_mask(counts, targets.shape[1])
    grid_anchors = _grid_anchors(anchors, strides)
    terms = {k: _zero(preds[0]) for k in ("box", "obj", "noobj", "cls")}
    for level, p in enumerate(preds):
        sel = best_l == level
        assigned, scale_terms = _v3_scale(
            p, img[sel], cls[sel], box[sel], best_a[sel], grid_anchors[level], box_loss
        )
        ignored = _v3_ignored(p, targets[..., 1:5], valid, grid_anchors[level], thr)
        noobj = F.binary_cross_entropy_with_logits(p[..., 4], torch.zeros_like(p[..., 4]), reduction="none")
        scale_terms["noobj"] = torch.where(assigned | ignored, torch.zeros_like(noobj), noobj).sum()
        terms = {k: terms[k] + scale_terms[k] for k in terms}
    return terms


def _v3_scale(p, img, cls, box, a, anchors, box_loss):
    """Assigned mask [N, A, H, W] and the box, obj, cls sums of one scale."""
    n, na, h, w, _ = p.shape
    size = box.new_tensor([w, h])
    g = box * torch.cat((size, size))
    gij = torch.minimum(g[:, :2].floor().clamp(min=0), size - 1)
    b, gi, gj = img, gij[:, 0].long(), gij[:, 1].long()
    win = _last_wins(_flat_cell(p, b, a, gj, gi), n * na * h * w)
    b, a, gi, gj, cls, g, gij = (t[win] for t in (b, a, gi, gj, cls, g, gij))
    assigned = torch.zeros(p.shape[:4], dtype=torch.bool, device=p.device)
    assigned[b, a, gj, gi] = True
    ps = p[b, a, gj, gi]
    anc = anchors[a]
    if box_loss == "mse":
        want = torch.cat((g[:, :2] - gij, torch.log(g[:, 2:] / anc)), 1)
        got = torch.cat((ps[:, :2].sigmoid(), ps[:, 2:4]), 1)
        box_term = (got - want).square().sum()
    else:
        decoded = torch.cat((gij + ps[:, :2].sigmoid(), anc * ps[:, 2:4].exp()), 1)
        box_term = (1 - aligned_box_iou(_xyxy(decoded), _xyxy(g), "ciou", _CIOU_EPS)).sum()
    bce = F.binary_cross_entropy_with_logits
    obj = bce(ps[:, 4], torch.ones_like(ps[:, 4]), reduction="sum")
    onehot = F.one_hot(cls, p.shape[-1] - 5).to(p.dtype)
    cls_term = bce(ps[:, 5:], onehot, reduction="sum")
    return assigned, {"box": box_term, "obj": obj, "cls": cls_term}


def _v3_ignored(p, boxes, valid, anchors, thr):
    """[N, A, H, W]: the decoded box overlaps a valid gt of its image with IoU > thr."""
    n, na, h, w, _ = p.shape
    if boxes.shape[1] == 0:
        return torch.zeros(p.shape[:4], dtype=torch.bool, device=p.device)
    with torch.no_grad():
        size = p.new_tensor([w, h])
        xy = _cells(p)[None, None] + p[..., :2].sigmoid()
        wh = anchors[None, :, None, None] * p[..., 2:4].exp()
        decoded = _xyxy(torch.cat((xy, wh), -1)).reshape(n, -1, 4)
        gt = _xyxy(boxes * torch.cat((size, size)))
        iou = pairwise_box_iou(decoded, gt, "iou", 0.0)  # [N, A H W, B]
        iou = torch.where(valid[:, None, :], iou, torch.zeros_like(iou))  # padding may be NaN
        return (iou.amax(2) > thr).reshape(n, na, h, w)


# ---------------------------------------------------------------- yolov5

# yolov5's cell offsets (times its bias g = 0.5): own cell, then left, up, right, down.
_OFFSETS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5))


def _yolov5_candidates(img, cls, box, anchors, h, w, anchor_t):
    """yolov5's build_targets for one scale, in its order (offset, then anchor, then gt)."""
    size = box.new_tensor([w, h])
    gxy, gwh = box[:, :2] * size, box[:, 2:] * size
    r = gwh[None] / anchors[:, None]  # [A, M, 2]
    fits = torch.max(r, 1 / r).amax(2) < anchor_t
    inv = size - gxy
    near = (gxy % 1 < 0.5) & (gxy > 1)  # the left / upper half, not next to the edge
    far = (inv % 1 < 0.5) & (inv > 1)  # the right / lower half
    use = torch.stack((torch.ones_like(near[:, 0]), near[:, 0], near[:, 1], far[:, 0], far[:, 1]))
    o, a, t = (use[:, None, :] & fits[None]).nonzero(as_tuple=True)  # row-major: yolov5's order
    gij = (gxy[t] - box.new_tensor(_OFFSETS)[o]).long()  # trunc, as yolov5's .long()
    gi, gj = gij[:, 0].clamp(0, w - 1), gij[:, 1].clamp(0, h - 1)
    tbox = torch.cat((gxy[t] - torch.stack((gi, gj), 1), gwh[t]), 1)  # from the clamped cell
    return img[t], a, gj, gi, tbox, cls[t]


def _mean(x: Tensor) -> Tensor:
    return x.mean() if x.numel() else x.sum()


def _yolov5_terms(preds, targets, counts, anchors, strides, anchor_t, balance):
    img, cls, box = _valid_targets(targets, counts)
    terms = {k: _zero(preds[0]) for k in ("box", "obj", "noobj", "cls")}
    for level, (p, anc) in enumerate(zip(preds, _grid_anchors(anchors, strides))):
        scale_terms = _yolov5_scale(p, img, cls, box, anc, anchor_t)
        scale_terms["obj"] = scale_terms["obj"] * balance[level]
        terms = {k: terms[k] + scale_terms.get(k, 0.0) for k in terms}
    return terms


def _yolov5_scale(p, img, cls, box, anchors, anchor_t):
    """The box, obj and cls means of one scale, as ComputeLoss.__call__ takes them."""
    n, na, h, w, c = p.shape
    b, a, gj, gi, tbox, tcls = _yolov5_candidates(img, cls, box, anchors, h, w, anchor_t)
    ps = p[b, a, gj, gi]
    pxy = ps[:, :2].sigmoid() * 2 - 0.5
    pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors[a]
    ciou = aligned_box_iou(_xyxy(torch.cat((pxy, pwh), 1)), _xyxy(tbox), "ciou", _CIOU_EPS)
    tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=p.device)
    win = _last_wins(_flat_cell(p, b, a, gj, gi), tobj.numel())
    tobj[b[win], a[win], gj[win], gi[win]] = ciou.detach().clamp(min=0)[win]
    bce = F.binary_cross_entropy_with_logits
    out = {"box": _mean(1 - ciou), "obj": _mean(bce(p[..., 4], tobj, reduction="none"))}
    if c - 5 > 1:  # yolov5 has no class term for a single class
        out["cls"] = _mean(bce(ps[:, 5:], F.one_hot(tcls, c - 5).to(p.dtype), reduction="none"))
    return out
