"""The NMS benchmark cases: providers agree exactly, and integer outputs are compared exactly."""

import pytest
import torch

import fastmtl
from fastmtl import bench
from fastmtl.bench import cases_nms
from fastmtl.bench.harness import AgreementError, Case, check_agreement
from fastmtl.cli import main


def _index_case(**providers) -> Case:
    boxes = cases_nms.make_boxes(8, "dense", seed=1)
    return Case(op="nms", size="8", dtype=torch.float32, inputs=(boxes,), providers=providers)


def test_nms_is_registered():
    assert bench.REGISTRY["nms"] == "fastmtl.bench.cases_nms"


def test_quick_cases_agree_on_cpu():
    cases = bench.load_cases("nms", "cpu", quick=True)
    assert {c.op for c in cases} >= {"nms"}
    for case in cases:
        outputs = check_agreement(case)
        assert list(outputs)[0] == "fastmtl" and len(outputs) >= 2, case.size
        assert outputs["fastmtl"].dtype == torch.int64 and outputs["fastmtl"].numel() > 0


def test_integer_outputs_must_match_exactly():
    # With the float tolerance (rtol=1e-5) an index near 100000 could be off by one unnoticed.
    big = torch.tensor([100_000, 3, 1])
    off_by_one = _index_case(fastmtl=lambda b: big, wrong=lambda b: big + torch.tensor([1, 0, 0]))
    with pytest.raises(AgreementError, match="wrong disagrees"):
        check_agreement(off_by_one)
    narrower = _index_case(fastmtl=lambda b: big, int32=lambda b: big.int())
    with pytest.raises(AgreementError, match="int32 disagrees"):
        check_agreement(narrower)
    fewer = _index_case(fastmtl=lambda b: big, short=lambda b: big[:2])
    with pytest.raises(AgreementError, match="short disagrees"):
        check_agreement(fewer)
    outputs = check_agreement(_index_case(fastmtl=lambda b: big, same=lambda b: big.clone()))
    assert set(outputs) == {"fastmtl", "same"}


def test_eager_and_loop_match_the_fastmtl_ops():
    boxes = cases_nms.make_boxes(300, "dense", seed=5)
    scores = cases_nms.make_scores(300, seed=6)
    assert scores.unique().numel() == 300  # distinct: the visiting order is unique
    assert torch.equal(cases_nms.eager_nms(boxes, scores, 0.5), fastmtl.ops.nms(boxes, scores, 0.5))
    idxs = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(7))
    expected = fastmtl.ops.batched_nms(boxes, scores, idxs, 0.5)
    pytest.importorskip("torchvision")
    assert torch.equal(cases_nms.loop_batched_nms(boxes, scores, idxs, 0.5), expected)


def test_eager_only_up_to_its_size_limit():
    n = cases_nms.EAGER_MAX_N
    assert "eager" in cases_nms.nms_case(n, "sparse", "cpu").providers
    assert "eager" not in cases_nms.nms_case(n + 1, "sparse", "cpu").providers
    full = cases_nms.sizes("cpu", quick=False)
    assert full["nms"] == (1000, 10_000, 30_000) and full["batched"] == (10_000, 30_000)
    assert 100_000 in cases_nms.sizes("cuda", quick=False)["nms"]


def test_cli_quick_nms_run(tmp_path, capsys):
    rc = main(["bench", "--quick", "--ops", "nms", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "nms" in printed and "kept=" in printed and "x)" in printed
