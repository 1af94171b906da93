"""COCO box evaluation against pycocotools' COCOeval and faster-coco-eval on fresh random inputs.

The random images are built to hit COCO's rules: score ties (scores on a 0.1 grid), crowd ground
truths, areas on the area-range borders (32^2, 96^2) and given areas unlike w * h, degenerate
boxes (zero width or height), images without ground truth, classes without detections, and more
detections per image than max_dets.
"""

import contextlib
import io
import math

import numpy as np
import pytest
import torch

import fastmtl
from fastmtl.bench import cases_coco
from fastmtl.metrics import COCO_STAT_NAMES, coco_evaluate, coco_evaluate_json, coco_evaluate_packed
from fastmtl.metrics import coco as coco_module

pytest.importorskip("pycocotools")
pytestmark = pytest.mark.skipif(
    not fastmtl.has_compiled_ops(), reason="coco_evaluate needs the compiled extension"
)

TOL = 1e-6
SIDES = (0.0, 1.0, 16.0, 32.0, 48.0, 96.0, 120.0)  # borders of the area ranges, and a degenerate side


def _side(g, n):
    """Sides: half on a grid that hits the area borders (and 0), half uniform."""
    grid = torch.tensor(SIDES)[torch.randint(0, len(SIDES), (n,), generator=g)]
    return torch.where(torch.rand(n, generator=g) < 0.5, grid, 1 + torch.rand(n, generator=g) * 150)


def _gt(g, n, classes, crowd_p):
    boxes = torch.stack(
        [torch.rand(n, generator=g) * 200, torch.rand(n, generator=g) * 200, _side(g, n), _side(g, n)], 1
    )
    area = torch.where(
        torch.rand(n, generator=g) < 0.3, torch.rand(n, generator=g) * 12000, boxes[:, 2] * boxes[:, 3]
    )
    return {
        "boxes": boxes.double(),
        "labels": torch.randint(0, classes, (n,), generator=g),
        "iscrowd": (torch.rand(n, generator=g) < crowd_p).long(),
        "area": area.double(),
    }


def _det(g, gt, n, classes):
    boxes = torch.stack(
        [torch.rand(n, generator=g) * 200, torch.rand(n, generator=g) * 200, _side(g, n), _side(g, n)], 1
    )
    labels = torch.randint(0, classes, (n,), generator=g)
    m = gt["boxes"].shape[0]
    if m:  # most detections near a ground truth, usually of its class; some exact copies
        src = torch.randint(0, m, (n,), generator=g)
        jitter = torch.randn(n, 4, generator=g) * 4 * (torch.rand(n, 1, generator=g) < 0.8)
        near = torch.rand(n, generator=g) < 0.7
        boxes = torch.where(near[:, None], gt["boxes"][src].float() + jitter, boxes)
        labels = torch.where(near & (torch.rand(n, generator=g) < 0.8), gt["labels"][src], labels)
    boxes[:, 2:] = boxes[:, 2:].clamp(min=0)
    scores = (torch.rand(n, generator=g) * 10).floor() / 10  # ties
    return {"boxes": boxes.double(), "scores": scores.double(), "labels": labels}


def random_images(g, images=12, classes=4, max_gts=6, max_dets=20, crowd_p=0.15):
    gts = [
        _gt(g, int(torch.randint(0, max_gts + 1, (1,), generator=g)), classes, crowd_p) for _ in range(images)
    ]
    dets = [_det(g, gt, int(torch.randint(0, max_dets + 1, (1,), generator=g)), classes) for gt in gts]
    return dets, gts


def reference(dets, gts, classes, library="pycocotools", **params):
    """(stats, precision, recall) of pycocotools or faster-coco-eval, parameters set by name."""
    if library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        faster = pytest.importorskip("faster_coco_eval")
        COCO, COCOeval = faster.COCO, faster.COCOeval_faster
    dataset, results = cases_coco.to_coco_json(dets, gts, classes)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        kw = {} if library == "pycocotools" else {"print_function": lambda *a, **k: None}
        ev = COCOeval(gt, gt.loadRes(results), "bbox", **kw)
        for name, value in params.items():
            setattr(ev.params, name, np.array(value) if name == "iouThrs" else value)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return torch.tensor(ev.stats, dtype=torch.float64), ev.eval["precision"], ev.eval["recall"]


def check_against(dets, gts, classes, library="pycocotools", arrays=True):
    stats, precision, recall = reference(dets, gts, classes, library)
    out = coco_evaluate(dets, gts)
    torch.testing.assert_close(out["stats"], stats, atol=TOL, rtol=0)
    if arrays:  # COCOeval's arrays have a column per dataset category; ours per label present
        cols = out["classes"].tolist()
        torch.testing.assert_close(
            out["precision"], torch.from_numpy(precision)[:, :, cols], atol=1e-12, rtol=0
        )
        torch.testing.assert_close(out["recall"], torch.from_numpy(recall)[:, cols], atol=1e-12, rtol=0)
    return out


@pytest.mark.parametrize(
    "shape", [dict(), dict(images=30, classes=3, max_gts=10, max_dets=40), dict(classes=8)]
)
def test_matches_pycocotools(gen, shape):
    for _ in range(4):
        dets, gts = random_images(gen, **shape)
        if sum(d["boxes"].shape[0] for d in dets) == 0:
            continue  # pycocotools' loadRes needs one result
        check_against(dets, gts, shape.get("classes", 4))


def test_matches_faster_coco_eval(gen):
    for _ in range(4):
        dets, gts = random_images(gen, images=20)
        if sum(d["boxes"].shape[0] for d in dets):
            check_against(dets, gts, 4, library="faster-coco-eval", arrays=False)


def test_real_shaped_inputs_match_both():
    dets, gts = cases_coco.make_images(60, 100, 80, seed=3)  # COCO-like: 80 classes, crowd, mask areas
    out = check_against(dets, gts, 80)
    stats = reference(dets, gts, 80, library="faster-coco-eval")[0]
    torch.testing.assert_close(out["stats"], stats, atol=TOL, rtol=0)
    assert 0 < out["map"] < out["map_50"] < 1


def test_max_dets_truncation_and_custom_params(gen):
    # 150 detections in one image and class: maxDets 100 drops the lowest 50.
    dets, gts = random_images(gen, images=4, classes=2, max_gts=30, max_dets=150)
    dets[0] = cases_coco.make_images(1, 150, 1, seed=1)[0][0]
    dets[0]["boxes"] = dets[0]["boxes"].double()
    check_against(dets, gts, 2)
    params = dict(iouThrs=[0.3, 0.5, 0.75], maxDets=[2, 5, 100])
    stats, precision, recall = reference(dets, gts, 2, **params)
    out = coco_evaluate(dets, gts, iou_thresholds=params["iouThrs"], max_dets=params["maxDets"])
    torch.testing.assert_close(out["stats"], stats, atol=TOL, rtol=0)
    cols = out["classes"].tolist()
    torch.testing.assert_close(out["precision"], torch.from_numpy(precision)[:, :, cols], atol=1e-12, rtol=0)


def _one(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float64),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def _truth(boxes, labels, iscrowd=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    if iscrowd is not None:
        out["iscrowd"] = torch.tensor(iscrowd)
    return out


def test_one_detection_one_ground_truth():
    out = check_against([_one([[0, 0, 10, 10]], [0.9], [1])], [_truth([[0, 0, 10, 10]], [1])], 2)
    assert out["map"] == pytest.approx(1.0) and out["map_small"] == pytest.approx(1.0)
    assert out["map_medium"] == -1 and out["mar_large"] == -1


def test_iou_exactly_at_threshold():
    # IoU 0.5 exactly (half the box) matches at 0.5 and nowhere above.
    out = check_against([_one([[0, 0, 5, 10]], [0.9], [0])], [_truth([[0, 0, 10, 10]], [0])], 1)
    assert out["map_50"] == pytest.approx(1.0) and out["map_75"] == 0.0


def test_crowd_ground_truths():
    # Two detections inside one crowd region (IoU over the detection's own area: 1): both ignored;
    # a third matches the real ground truth.
    dets = [_one([[0, 0, 10, 10], [20, 20, 10, 10], [100, 100, 20, 20]], [0.9, 0.8, 0.7], [0, 0, 0])]
    gts = [_truth([[0, 0, 50, 50], [100, 100, 20, 20]], [0, 0], iscrowd=[1, 0])]
    out = check_against(dets, gts, 1)
    assert out["map"] == pytest.approx(1.0)


def test_no_detections_at_all():
    gts = [_truth([[0, 0, 10, 10]], [0]), _truth([], [])]
    out = coco_evaluate([_one([], [], []), _one([], [], [])], gts)
    assert out["map"] == 0.0 and out["mar_100"] == 0.0 and out["map_large"] == -1.0


def test_no_ground_truth_at_all():
    out = coco_evaluate([_one([[0, 0, 10, 10]], [0.5], [3])], [_truth([], [])])
    assert out["stats"].tolist() == [-1.0] * 12 and out["ap_per_class"].tolist() == [-1.0]


def test_no_images():
    out = coco_evaluate([], [])
    assert out["stats"].tolist() == [-1.0] * 12 and out["precision"].shape == (10, 101, 0, 4, 3)


def test_stat_names_and_per_class(gen):
    dets, gts = random_images(gen, classes=5)
    out = coco_evaluate(dets, gts)
    assert [out[n] for n in COCO_STAT_NAMES] == out["stats"].tolist()
    valid = out["ap_per_class"] > -1
    if valid.any():
        assert out["ap_per_class"][valid].mean().item() == pytest.approx(out["map"], abs=TOL)


def test_json_and_packed_routes_agree(gen):
    dets, gts = random_images(gen)
    out = coco_evaluate(dets, gts)
    dataset, results = cases_coco.to_coco_json(dets, gts, 4)
    torch.testing.assert_close(coco_evaluate_json(dataset, results)["stats"], out["stats"], atol=0, rtol=0)
    packed = coco_module._pack(dets, gts)
    torch.testing.assert_close(
        coco_evaluate_packed(**packed, num_images=len(gts))["stats"], out["stats"], atol=0, rtol=0
    )


def test_float32_input_equals_its_float64_value(gen):
    dets, gts = random_images(gen)
    single = [{**d, "boxes": d["boxes"].float(), "scores": d["scores"].float()} for d in dets]
    as_double = [{**d, "boxes": d["boxes"].double(), "scores": d["scores"].double()} for d in single]
    assert torch.equal(coco_evaluate(single, gts)["stats"], coco_evaluate(as_double, gts)["stats"])


def test_opcheck():
    packed = coco_module._pack(*random_images(torch.Generator().manual_seed(0)))
    classes, labels = torch.unique(
        torch.cat([packed["gt_labels"], packed["det_labels"]]), return_inverse=True
    )
    g = packed["gt_labels"].numel()
    args = (
        packed["det_boxes"], packed["det_scores"], labels[g:], packed["det_images"],
        packed["gt_boxes"], labels[:g], packed["gt_images"], packed["gt_iscrowd"], packed["gt_areas"],
        torch.tensor(coco_module.COCO_EVAL_IOU_THRESHOLDS, dtype=torch.float64),
        torch.tensor(coco_module.COCO_RECALL_THRESHOLDS, dtype=torch.float64),
        torch.tensor(list(coco_module.COCO_AREA_RANGES.values()), dtype=torch.float64),
        [1, 10, 100], 12, classes.numel(),
    )  # fmt: skip
    torch.library.opcheck(torch.ops.fastmtl.coco_evaluate.default, args)


# ---- bad inputs: clear exceptions naming the argument, never a crash ------------------------


def _valid():
    return [_one([[0, 0, 10, 10]], [0.9], [0])], [_truth([[0, 0, 10, 10]], [0])]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d, g: d[0].update(boxes=torch.zeros(1, 3)), r"detections\[0\]\['boxes'\]"),
        (lambda d, g: d[0].update(scores=torch.zeros(2)), r"detections\[0\]\['scores'\]"),
        (lambda d, g: d[0].update(labels=torch.zeros(1, 1)), r"detections\[0\]\['labels'\]"),
        (lambda d, g: d[0].pop("scores"), "'scores'"),
        (lambda d, g: g[0].update(iscrowd=torch.zeros(3)), r"ground_truths\[0\]\['iscrowd'\]"),
        (lambda d, g: g[0].update(area=torch.zeros(2, 1)), r"ground_truths\[0\]\['area'\]"),
        (lambda d, g: g.append(g[0]), "one entry per image"),
        (lambda d, g: d[0].update(scores=torch.tensor([math.nan], dtype=torch.float64)), "det_scores.*NaN"),
        (lambda d, g: d[0].update(boxes=torch.tensor([[0, 0, math.nan, 1.0]])), "det_boxes.*NaN"),
        (lambda d, g: g[0].update(boxes=torch.tensor([[0, math.nan, 1, 1.0]])), "gt_boxes.*NaN"),
        (lambda d, g: g[0].update(area=torch.tensor([math.nan])), "gt_areas.*NaN"),
        (lambda d, g: d[0].update(labels=torch.tensor([0.5])), "labels"),
        (lambda d, g: d[0].update(scores=torch.tensor([1j])), "scores"),
        (lambda d, g: d.__setitem__(0, [1, 2]), r"detections\[0\]"),
    ],
)
def test_bad_inputs_name_the_argument(mutate, match):
    dets, gts = _valid()
    mutate(dets, gts)
    with pytest.raises((TypeError, ValueError, RuntimeError), match=match):
        coco_evaluate(dets, gts)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"max_dets": (10, 1)}, "max_dets must be non-decreasing"),
        ({"max_dets": (0,)}, "max_dets must be positive"),
        ({"max_dets": ()}, "max_dets must not be empty"),
        ({"iou_thresholds": ()}, "iou_thresholds"),
        ({"iou_thresholds": (math.nan,)}, "iou_thresholds.*NaN"),
        ({"recall_thresholds": (0.5, 0.1)}, "recall_thresholds has values out of order"),
        ({"area_ranges": {}}, "area_ranges"),
        ({"area_ranges": {"all": (0.0, math.nan)}}, "area_ranges.*NaN"),
    ],
)
def test_bad_options_name_the_argument(options, match):
    with pytest.raises((TypeError, ValueError, RuntimeError), match=match):
        coco_evaluate(*_valid(), **options)


def _op_args():
    f64, i64 = torch.float64, torch.int64
    return dict(
        det_boxes=torch.zeros(2, 4, dtype=f64), det_scores=torch.zeros(2, dtype=f64),
        det_labels=torch.zeros(2, dtype=i64), det_images=torch.zeros(2, dtype=i64),
        gt_boxes=torch.zeros(1, 4, dtype=f64), gt_labels=torch.zeros(1, dtype=i64),
        gt_images=torch.zeros(1, dtype=i64), gt_iscrowd=torch.zeros(1, dtype=torch.bool),
        gt_areas=torch.zeros(1, dtype=f64), iou_thresholds=torch.full((1,), 0.5, dtype=f64),
        recall_thresholds=torch.zeros(1, dtype=f64), area_ranges=torch.tensor([[0.0, 1e10]], dtype=f64),
        max_dets=[100], num_images=1, num_classes=1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("det_boxes", torch.zeros(2, 5, dtype=torch.float64), "det_boxes must have shape"),
        ("det_boxes", torch.zeros(2, 4), "det_boxes must be Double"),
        ("det_scores", torch.zeros(3, dtype=torch.float64), "det_scores must have shape"),
        ("det_labels", torch.zeros(2), "det_labels must be Long"),
        ("det_labels", torch.tensor([0, 1]), "det_labels has a value outside"),
        ("det_images", torch.tensor([0, -1]), "det_images has a value outside"),
        ("gt_labels", torch.tensor([5]), "gt_labels has a value outside"),
        ("gt_images", torch.tensor([1]), "gt_images has a value outside"),
        ("gt_iscrowd", torch.zeros(1), "gt_iscrowd must be Bool"),
        ("gt_areas", torch.zeros(1, 1, dtype=torch.float64), "gt_areas must have shape"),
        ("area_ranges", torch.zeros(1, 3, dtype=torch.float64), "area_ranges must have shape"),
        ("num_images", -1, "num_images must be >= 0"),
        ("num_classes", 2**40, "num_images \\* num_classes|precision array"),
        ("max_dets", [5, 2], "max_dets must be non-decreasing"),
    ],
)
def test_op_checks_name_the_argument(name, value, match):
    args = _op_args()
    args[name] = value
    with pytest.raises((TypeError, ValueError, RuntimeError), match=match):
        torch.ops.fastmtl.coco_evaluate(*args.values())


def test_plain_python_fallback_equals_the_kernel(gen, monkeypatch):
    # The fallback (no extension) is also the property suite's reference: bit for bit the kernel.
    dets, gts = random_images(gen, images=8, max_dets=30)
    want = coco_evaluate(dets, gts, max_dets=(1, 5, 20))
    monkeypatch.setattr(coco_module, "use_compiled", lambda *a: False)
    got = coco_evaluate(dets, gts, max_dets=(1, 5, 20))
    for key in ("precision", "recall", "stats"):
        assert torch.equal(got[key], want[key]), key


def test_category_ids_far_apart_or_negative(gen):
    # Category ids are any integers: a short range uses a lookup table, a wide one torch.unique.
    dets, gts = random_images(gen)
    want = coco_evaluate(dets, gts)
    for scale, shift in ((10**12, 0), (1, -7)):
        moved = [[{**e, "labels": e["labels"] * scale + shift} for e in side] for side in (dets, gts)]
        got = coco_evaluate(*moved)
        assert torch.equal(got["stats"], want["stats"]) and torch.equal(got["precision"], want["precision"])
        assert torch.equal(got["classes"], want["classes"] * scale + shift)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_inputs_are_evaluated_on_the_cpu(gen):
    dets, gts = random_images(gen)
    on_gpu = [[{k: v.cuda() for k, v in e.items()} for e in side] for side in (dets, gts)]
    assert torch.equal(coco_evaluate(*on_gpu)["stats"], coco_evaluate(dets, gts)["stats"])


def test_json_route_matches_pycocotools_with_sparse_ids(gen):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets, gts = random_images(gen, images=10)
    dataset, results = cases_coco.to_coco_json(dets, gts, 4)
    ids = torch.randperm(1000, generator=gen)[:10].add(1).tolist()  # shuffled, sparse image ids
    remap = {i + 1: new for i, new in enumerate(ids)}
    dataset["images"] = [{"id": remap[img["id"]]} for img in reversed(dataset["images"])]
    for row in dataset["annotations"] + results:
        row["image_id"] = remap[row["image_id"]]
        row["category_id"] = row["category_id"] * 7 + 3
    dataset["categories"] = [{"id": k * 7 + 3} for k in range(3)]  # the last class is not evaluated
    if not results:
        return
    out = coco_evaluate_json(dataset, results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    torch.testing.assert_close(out["stats"], torch.tensor(ev.stats, dtype=torch.float64), atol=TOL, rtol=0)
