"""Thread safety: the same op called from several Python threads at once gives the bits of a serial
call (issue 10). The kernels release the GIL inside the dispatcher, so the threads really overlap;
the inputs are big enough for at::parallel_for to split them, so intra-op threads run as well.
Each op alone, then every op at once (shared caches, registrations, thread pools)."""

import threading

import pytest
import torch

import fastmtl.ops as F
from fastmtl.bench.cases_coco import make_images
from fastmtl.metrics import coco_evaluate
from tests.utils import boxes_like_pairs, random_boxes

THREADS = 6
REPEATS = 3


def _inputs(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    boxes = random_boxes(600, gen=gen)
    rois_boxes = random_boxes(48, gen=gen, scale=60.0)
    batch = torch.randint(0, 2, (48, 1), generator=gen).float()
    return {
        "boxes": boxes,
        "boxes2": random_boxes(400, gen=gen),
        "targets": boxes_like_pairs(boxes, gen=gen),
        "scores": torch.rand(600, generator=gen),
        "idxs": torch.randint(0, 5, (600,), generator=gen),
        "mc_boxes": random_boxes((2, 300), gen=gen),
        "mc_scores": torch.rand(2, 300, 6, generator=gen),
        "x": torch.randn(2, 16, 64, 64, generator=gen),
        "rois": torch.cat((batch, rois_boxes), dim=1),
        "grad_align": torch.randn(48, 16, 7, 7, generator=gen),
        "features": torch.randn(2, 32, 48, 48, generator=gen),
        "target_gram": torch.randn(32, 32, generator=gen),
        "coco": make_images(300, 50, 10, seed=seed),
    }


def _roi_align_fwd_bwd(t):
    x = t["x"].clone().requires_grad_()
    out = F.roi_align(x, t["rois"], (7, 7), 1.0, 2, True)
    (grad,) = torch.autograd.grad(out, x, t["grad_align"])
    return out.detach(), grad


def _style_loss(t):
    feats = t["features"].clone().requires_grad_()
    loss = F.style_loss(feats, t["target_gram"])
    (grad,) = torch.autograd.grad(loss, feats)
    return loss.detach(), grad


CASES = {
    "box_iou": lambda t: (F.box_iou(t["boxes"], t["boxes2"]),),
    "giou_loss": lambda t: (F.giou_loss(t["boxes"], t["targets"]),),
    "nms": lambda t: (F.nms(t["boxes"], t["scores"], 0.5),),
    "batched_nms": lambda t: (F.batched_nms(t["boxes"], t["scores"], t["idxs"], 0.5),),
    "multiclass_nms": lambda t: tuple(F.multiclass_nms(t["mc_boxes"], t["mc_scores"], 0.5, 0.1, 50)),
    "roi_align": _roi_align_fwd_bwd,
    "roi_pool": lambda t: (F.roi_pool(t["x"], t["rois"], (5, 5), 1.0),),
    "gram_matrix": lambda t: (F.gram_matrix(t["features"]),),
    "style_loss": _style_loss,
    "coco_evaluate": lambda t: tuple(coco_evaluate(*t["coco"])[k] for k in ("precision", "recall")),
}


def _run_concurrently(jobs):
    """Runs every ``(name, fn, inputs)`` of ``jobs`` REPEATS times, one thread per job, started
    together; returns ``{index: [results...]}`` and re-raises the first error of a thread."""
    barrier = threading.Barrier(len(jobs))
    results = {i: [] for i in range(len(jobs))}
    errors = []

    def work(i, fn, inputs):
        try:
            barrier.wait()
            for _ in range(REPEATS):
                results[i].append(fn(inputs))
        except BaseException as e:  # reported in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i, fn, t)) for i, (_, fn, t) in enumerate(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def _assert_same_bits(name, got, expected):
    assert len(got) == len(expected), name
    for k, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name} output {k}"
        assert torch.equal(a, b), f"{name} output {k} differs from the serial call"


@pytest.fixture(scope="module")
def inputs():
    return _inputs(1234)


@pytest.mark.parametrize("name", list(CASES))
def test_same_op_from_threads(name, inputs):
    fn = CASES[name]
    expected = fn(inputs)
    results = _run_concurrently([(name, fn, inputs)] * THREADS)
    for per_thread in results.values():
        for got in per_thread:
            _assert_same_bits(name, got, expected)


def test_every_op_at_once(inputs):
    jobs = [(name, fn, inputs) for name, fn in CASES.items()]
    expected = [fn(inputs) for _, fn, _ in jobs]
    results = _run_concurrently(jobs)
    for i, (name, _, _) in enumerate(jobs):
        for got in results[i]:
            _assert_same_bits(name, got, expected[i])
