"""The COCO evaluation benchmark cases: registered, CPU only, providers agree on a small case."""

import pytest

import fastmtl
from fastmtl import bench
from fastmtl.bench import cases_coco
from fastmtl.bench.harness import check_agreement


def test_coco_evaluate_is_registered():
    assert bench.REGISTRY["coco_evaluate"] == "fastmtl.bench.cases_coco"
    assert bench.load_cases("coco_evaluate", "cuda") == []  # no CUDA kernel: CPU rows only


def test_default_run_has_the_coco_val_size():
    sizes = {c.size: c.full_only for c in bench.load_cases("coco_evaluate", "cpu")}
    assert sizes == {
        "500img-100det-80cls": False,
        "1000img-100det-80cls": True,
        "5000img-100det-80cls": False,
    }
    big = [c for c in bench.load_cases("coco_evaluate", "cpu") if c.size.startswith("5000")][0]
    assert "pycocotools" not in big.providers  # minutes per call


@pytest.mark.skipif(not fastmtl.has_compiled_ops(), reason="needs the compiled extension")
def test_quick_case_agrees():
    pytest.importorskip("pycocotools")
    pytest.importorskip("faster_coco_eval")
    (case,) = bench.load_cases("coco_evaluate", "cpu", quick=True)
    outputs = check_agreement(case)
    assert list(outputs) == ["fastmtl", "fastmtl-json", "faster-coco-eval", "pycocotools"]
    assert outputs["fastmtl"].shape == (12,) and 0 < outputs["fastmtl"][1] < 1


def test_json_has_coco_fields():
    dets, gts = cases_coco.make_images(3, 5, 4, seed=0)
    dataset, results = cases_coco.to_coco_json(dets, gts, 4)
    assert len(results) == 15 and [img["id"] for img in dataset["images"]] == [1, 2, 3]
    assert all(
        {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} <= set(a) for a in dataset["annotations"]
    )
