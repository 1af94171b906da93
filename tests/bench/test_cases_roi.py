"""The RoI benchmark cases: registered, providers agree (outputs and gradients), the CLI runs them."""

import torch

from fastmtl import bench
from fastmtl.bench import cases_roi
from fastmtl.bench.harness import check_agreement
from fastmtl.cli import main


def test_roi_ops_are_registered():
    assert bench.REGISTRY["roi_align"] == "fastmtl.bench.cases_roi:align_cases"
    assert bench.REGISTRY["roi_pool"] == "fastmtl.bench.cases_roi:pool_cases"


def test_quick_cases_agree_on_cpu():
    for op in ("roi_align", "roi_pool"):
        cases = bench.load_cases(op, "cpu", quick=True)
        assert {c.pass_ for c in cases} == {"fwd", "fwd+bwd"} and {c.op for c in cases} == {op}
        for case in cases:
            outputs = check_agreement(case)
            assert list(outputs)[0] == "fastmtl" and len(outputs) >= 1, case.size


def test_full_sizes():
    full = cases_roi.sizes("cpu", quick=False)
    assert full == {"features": (2, 256, 64), "rois": (256, 1024)}
    rois = cases_roi.make_rois(100, 2, seed=1)
    assert rois.shape == (100, 5) and set(rois[:, 0].tolist()) <= {0.0, 1.0}
    assert bool(((rois[:, 3:] - rois[:, 1:3]) >= 8).all())
    assert len(cases_roi.align_cases("cpu")) == 8 and len(cases_roi.pool_cases("cpu")) == 4
    assert cases_roi.align_cases("cpu")[0].inputs[0].dtype == torch.float32


def test_cli_quick_run(tmp_path, capsys):
    rc = main(
        ["bench", "--quick", "--ops", "roi_align", "roi_pool", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "roi_align" in printed and "roi_pool" in printed and "x)" in printed
