"""CUDA hygiene, on a GPU only: no device-to-host sync on the hot path (sync-debug mode "error"),
capture in a CUDA graph, deterministic backward, one threshold rule on both devices.

Ops whose output size depends on the data (nms, batched_nms, soft_nms) copy one count back; they
are checked to sync exactly once. Everything else must not sync at all.
"""

import warnings

import pytest
import torch

import fastmtl
import fastmtl.ops as F
from fastmtl.losses import yolo_anchor_loss
from fastmtl.ops._yolo_anchor_reference import YOLOV5_ANCHORS, YOLOV5_STRIDES
from tests.utils import compiled_only, yolo_v1_inputs

pytestmark = [
    compiled_only,
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def boxes(n, *lead, device="cuda"):
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(*lead, n, 2, generator=g) * 100
    return torch.cat([xy, xy + 1 + torch.rand(*lead, n, 2, generator=g) * 39], -1).to(device)


def rois(k, images=2, device="cuda"):
    b = boxes(k, device="cpu") * 0.3
    return torch.cat([torch.arange(k)[:, None].double().remainder(images).float(), b], 1).to(device)


def feats(*shape, device="cuda"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)


def _fwd_bwd(fn):
    def run():
        out = fn()
        out = out if isinstance(out, torch.Tensor) else out[0]
        if out.requires_grad:
            out.float().sum().backward()
        return out

    return run


def _hot_path_calls():
    """name -> a closure running the op forward (and backward where differentiable) on CUDA."""
    x = feats(2, 8, 32, 32).requires_grad_()
    r = rois(16)
    p, t = boxes(64).requires_grad_(), boxes(64)
    pyramid = {"a": feats(2, 8, 32, 32), "b": feats(2, 8, 16, 16)}
    target = F.gram_matrix(feats(1, 8, 32, 32), normalize=False)[0]
    yolo_pred, yolo_targets, yolo_counts = (
        t.cuda() for t in yolo_v1_inputs(torch.Generator().manual_seed(0), 2, (7, 7), 2, 4, max_boxes=3)
    )
    yolo_pred.requires_grad_()
    anchor_preds = [feats(2, 3, s, s, 9).requires_grad_() for s in (8, 4, 2)]
    anchors = torch.tensor(YOLOV5_ANCHORS, device="cuda")
    emb = feats(64, 16).requires_grad_()
    emb_labels = torch.arange(64, device="cuda") // 4
    return {
        "box_iou": lambda: F.box_iou(p, t),
        "generalized_box_iou": lambda: F.generalized_box_iou(p, t),
        "complete_box_iou": lambda: F.complete_box_iou(p, t),
        "giou_loss": lambda: F.giou_loss(p, t, reduction="mean"),
        "ciou_loss": lambda: F.ciou_loss(p, t, reduction="sum"),
        "box_area": lambda: F.box_area(p),
        "box_convert": lambda: F.box_convert(p, "xyxy", "cxcywh"),
        "roi_align": lambda: F.roi_align(x, r, 7, 1.0, 2, True),
        "roi_align_deterministic": lambda: F.roi_align(x, r, 7, 1.0, 2, True, True),
        "roi_pool": lambda: F.roi_pool(x, r, 7),
        "roi_align_list": lambda: F.roi_align(x, [r[:8, 1:], r[8:, 1:]], 7),
        "multiscale_roi_align": lambda: F.MultiScaleRoIAlign(["a", "b"], 7, 2)(
            pyramid, [boxes(5), boxes(6)], [(64, 64), (64, 64)]
        ),
        "gram_matrix": lambda: F.gram_matrix(x),
        "style_loss": lambda: F.style_loss(x, target),
        "content_loss": lambda: F.content_loss(x, x.detach() + 1),
        "multiclass_nms": lambda: F.multiclass_nms(boxes(300, 2), feats(2, 300, 5).sigmoid(), 0.5, 0.1, 50),
        "yolo_v1_loss": lambda: F.yolo_v1_loss(yolo_pred, yolo_targets, yolo_counts, 2, 4)["total"],
        "yolo_anchor_loss": lambda: yolo_anchor_loss(
            anchor_preds, yolo_targets, yolo_counts, anchors, YOLOV5_STRIDES
        )["total"],
        "yolo_anchor_loss_ciou": lambda: yolo_anchor_loss(
            anchor_preds, yolo_targets, yolo_counts, anchors, YOLOV5_STRIDES, box_loss="ciou"
        )["total"],
        "yolo_anchor_loss_yolov5": lambda: yolo_anchor_loss(
            anchor_preds, yolo_targets, yolo_counts, anchors, YOLOV5_STRIDES, mode="yolov5"
        )["total"],
        "triplet_margin_loss": lambda: F.triplet_margin_loss(emb, emb_labels, 0.2, "semihard")["loss"],
        "triplet_loss": lambda: F.triplet_loss(emb, emb.flip(0), emb.roll(1, 0), swap=True),
    }


HOT_PATH = [
    "box_iou", "generalized_box_iou", "complete_box_iou", "giou_loss", "ciou_loss", "box_area", "box_convert",
    "roi_align", "roi_align_deterministic", "roi_pool", "roi_align_list", "multiscale_roi_align",
    "gram_matrix", "style_loss", "content_loss", "multiclass_nms", "yolo_v1_loss", "yolo_anchor_loss",
    "yolo_anchor_loss_ciou", "yolo_anchor_loss_yolov5", "triplet_margin_loss", "triplet_loss",
]  # fmt: skip


def test_hot_path_list_is_complete():
    assert sorted(HOT_PATH) == sorted(_hot_path_calls())


@pytest.mark.parametrize("name", HOT_PATH)
def test_no_sync(name):
    call = _fwd_bwd(_hot_path_calls()[name])
    call()  # warm up: lazy initialisation (cuBLAS handles, caches) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["nms", "batched_nms", "soft_nms"])
def test_data_dependent_ops_sync_once(name):
    b, s = boxes(500), torch.rand(500, device="cuda")
    idxs = torch.randint(0, 4, (500,), device="cuda")
    call = {
        "nms": lambda: F.nms(b, s, 0.5),
        "batched_nms": lambda: F.batched_nms(b, s, idxs, 0.5),
        "soft_nms": lambda: F.soft_nms(b, s),
    }[name]
    call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= (1 if name != "soft_nms" else 2), [str(w.message) for w in syncs]


@pytest.mark.parametrize("name", ["giou_loss", "roi_align", "style_loss", "multiclass_nms", "box_iou"])
def test_cuda_graph_capture(name):
    call = _fwd_bwd(_hot_path_calls()[name])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            eager = call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager)


@pytest.mark.parametrize("name", HOT_PATH)
def test_forward_is_bitwise_repeatable(name):
    """Every forward gives the same bits on every call (README's determinism table)."""
    call = _hot_path_calls()[name]
    with torch.no_grad():
        first = call()
        again = call()
    firsts = first if isinstance(first, tuple) else (first,)
    agains = again if isinstance(again, tuple) else (again,)
    assert all(torch.equal(a, b) for a, b in zip(firsts, agains, strict=True))


def test_atomic_free_backward_is_bitwise_repeatable():
    """The ops the README lists as bit-repeatable backward on CUDA (no atomics)."""
    p, t = boxes(500), boxes(400)
    x = feats(2, 8, 32, 32)
    target = F.gram_matrix(feats(1, 8, 32, 32))[0]
    calls = {
        "complete_box_iou": (p, lambda p: F.complete_box_iou(p, t).square().sum()),
        "ciou_loss": (p, lambda p: F.ciou_loss(p[:400], t, reduction="sum")),
        "style_loss": (x, lambda x: F.style_loss(x, target)),
    }
    for name, (value, fn) in calls.items():
        leaf = value.detach().requires_grad_()
        grads = [torch.autograd.grad(fn(leaf), leaf)[0] for _ in range(2)]
        assert torch.equal(grads[0], grads[1]), name


def test_roi_align_deterministic_backward_is_bitwise_repeatable():
    x = feats(2, 16, 48, 48).requires_grad_()
    r = rois(200)
    grads = []
    for _ in range(3):
        (g,) = torch.autograd.grad(F.roi_align(x, r, 7, 0.5, 2, True, True).square().sum(), x)
        grads.append(g)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    (atomic,) = torch.autograd.grad(F.roi_align(x, r, 7, 0.5, 2, True).square().sum(), x)
    torch.testing.assert_close(grads[0], atomic)


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.6, 0.7])
def test_nms_threshold_rule_is_the_same_on_both_devices(threshold):
    # IoU of these two is exactly 0.6 in float32: the rule decides it.
    pair = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 6.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert F.nms(pair, scores, threshold).tolist() == F.nms(pair.cuda(), scores.cuda(), threshold).tolist()
    b, s = boxes(2000, device="cpu"), torch.rand(2000, generator=torch.Generator().manual_seed(1))
    cls = torch.randint(0, 5, (2000,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(F.nms(b, s, threshold), F.nms(b.cuda(), s.cuda(), threshold).cpu())
    assert torch.equal(
        F.batched_nms(b, s, cls, threshold), F.batched_nms(b.cuda(), s.cuda(), cls.cuda(), threshold).cpu()
    )
    det_cpu = F.multiclass_nms(b[None], s[None, :, None], threshold, 0.0, 300)
    det_gpu = F.multiclass_nms(b[None].cuda(), s[None, :, None].cuda(), threshold, 0.0, 300)
    assert torch.equal(det_cpu.indices, det_gpu.indices.cpu())


def test_every_op_has_a_cuda_kernel():
    assert fastmtl.has_cuda_ops()
