"""The benchmark harness and ``fastmtl bench``: agreement is enforced, rows are complete, files written."""

import csv
import json
import math
import sys
import time
import types

import pytest
import torch

import fastmtl
from fastmtl import bench
from fastmtl.bench import cases_box_iou
from fastmtl.bench.harness import (
    FIELDS,
    AgreementError,
    Case,
    Timing,
    check_agreement,
    default_out_dir,
    format_table,
    fwd_bwd,
    peak_bandwidth_gbs,
    run_case,
)
from fastmtl.cli import main

FAST = Timing(budget_s=0.01, warmup_s=0.0, min_repeats=5, max_repeats=20)


def _case(**providers) -> Case:
    boxes = cases_box_iou.make_boxes(64, seed=1), cases_box_iou.make_boxes(48, seed=2)
    return Case(op="box_iou", size="64x48", dtype=torch.float32, inputs=boxes, providers=providers)


def _sleeper(seconds: float):
    def fn(boxes1, boxes2):
        time.sleep(seconds)
        return fastmtl.ops.box_iou(boxes1, boxes2)

    return fn


def test_disagreeing_provider_raises_before_any_timing():
    calls = {"fastmtl": 0, "wrong": 0}

    def counted(name, fn):
        def run(*inputs):
            calls[name] += 1
            return fn(*inputs)

        return run

    case = _case(
        fastmtl=counted("fastmtl", fastmtl.ops.box_iou),
        wrong=counted("wrong", lambda a, b: fastmtl.ops.box_iou(a, b) + 1e-3),
    )
    with pytest.raises(AgreementError, match="wrong disagrees with fastmtl"):
        run_case(case, FAST)
    assert calls == {"fastmtl": 1, "wrong": 1}  # one call each for the check, none timed


def test_disagreeing_gradient_raises():
    # Same forward, gradient off by a factor: fwd+bwd cases must compare gradients too.
    pred = cases_box_iou.make_boxes(32, seed=3, requires_grad=True)
    target = cases_box_iou.make_boxes(32, seed=4)

    def bad_grad_loss(p, t):
        loss = fastmtl.ops.giou_loss(p, t, reduction="sum")
        return loss + 0.5 * (p.sum() - p.sum().detach())  # value unchanged, gradient shifted

    case = Case(
        op="giou_loss", size="32", dtype=torch.float32, inputs=(pred, target), pass_="fwd+bwd",
        providers={"fastmtl": fwd_bwd(lambda p, t: fastmtl.ops.giou_loss(p, t, reduction="sum")),
                   "bad": fwd_bwd(bad_grad_loss)},
    )  # fmt: skip
    with pytest.raises(AgreementError, match="bad disagrees"):
        check_agreement(case)


def test_failing_optional_provider_is_skipped_with_a_note_and_others_propagate():
    def broken(*inputs):
        raise RuntimeError("no compiler")

    case = _case(fastmtl=fastmtl.ops.box_iou, compile=broken)
    case.optional = frozenset({"compile"})
    notes = []
    rows = run_case(case, FAST, notes=notes)
    assert [r["provider"] for r in rows] == ["fastmtl"]
    assert len(notes) == 1 and "compile skipped" in notes[0] and "no compiler" in notes[0]
    case.optional = frozenset()
    with pytest.raises(RuntimeError, match="no compiler"):
        run_case(case, FAST)


def test_rows_carry_every_field_and_sensible_numbers():
    # A provider that sleeps 5 ms more than fastmtl must come out slower, with speedup > 1.
    case = _case(fastmtl=fastmtl.ops.box_iou, slow=_sleeper(0.005))
    rows = run_case(case, FAST)
    assert [r["provider"] for r in rows] == ["fastmtl", "slow"]
    fast, slow = rows
    for r in rows:
        assert tuple(r) == FIELDS
        assert (r["op"], r["pass"], r["dtype"], r["size"]) == ("box_iou", "fwd", "float32", "64x48")
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["repeats"] >= FAST.min_repeats
        assert r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0  # None: nothing allocated
        assert r["device"] == "cpu" and r["device_name"] and r["device_name"] != "unknown"
        assert r["threads"] == torch.get_num_threads()
        assert r["torch"] == torch.__version__ and r["fastmtl"] == fastmtl.__version__
        assert r["git_rev"] and r["extra"] == {}
    assert fast["speedup"] == 1.0
    assert fast["peak_mem_mb"] == pytest.approx(64 * 48 * 4 / 2**20)  # the IoU matrix, from the profiler
    assert slow["median_ms"] >= 5.0
    assert slow["speedup"] == pytest.approx(slow["median_ms"] / fast["median_ms"])
    assert slow["speedup"] > 1.0


def test_budget_bounds_the_repeats():
    timing = Timing(budget_s=0.05, warmup_s=0.0, min_repeats=2, max_repeats=1000)
    t0 = time.perf_counter()
    (row,) = run_case(_case(fastmtl=_sleeper(0.01)), timing)
    assert 2 <= row["repeats"] <= 7  # ~0.05 s / 0.01 s, plus the call that crosses the deadline
    assert time.perf_counter() - t0 < 1.0


def test_table_shows_each_alternative_with_its_speedup():
    rows = run_case(_case(fastmtl=fastmtl.ops.box_iou, slow=_sleeper(0.002)), FAST)
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["op", "pass", "dtype", "size", "fastmtl", "ms", "slow", "ms"]
    cells = lines[2].split()
    assert cells[:4] == ["box_iou", "fwd", "float32", "64x48"]
    assert cells[-1] == f"({rows[1]['speedup']:.1f}x)"


def test_peak_bandwidth_from_device_name():
    assert peak_bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350.0
    assert peak_bandwidth_gbs("NVIDIA H100 PCIe") == 2000.0
    assert peak_bandwidth_gbs("NVIDIA H200") == 4800.0
    assert peak_bandwidth_gbs("Tesla T4") is None


def test_write_bandwidth_extra():
    out = torch.empty(1000, 1000)  # 4 MB written in 0.002 ms -> 2000 GB/s
    extra = cases_box_iou.write_bandwidth(out, 0.002, {"device_name": "NVIDIA H100 PCIe"})
    assert extra == {"write_gbs": 2000.0, "peak_gbs": 2000.0, "pct_of_peak": 100.0}
    assert cases_box_iou.write_bandwidth(out, 0.002, {"device_name": "AMD EPYC"})["pct_of_peak"] == "unknown"


def test_box_iou_cases_agree_on_cpu():
    # The real providers (fastmtl, torchvision, eager) agree on the quick cases.
    for case in cases_box_iou.cases("cpu", quick=True):
        outputs = check_agreement(case)
        assert "fastmtl" in outputs and len(outputs) >= 2, case.op


def test_default_out_dir_is_in_the_checkout():
    out = default_out_dir()
    assert out.parts[-2:] == ("benchmarks", "results") or out.name == "fastmtl-bench-results"


def test_cli_quick_run_writes_csv_and_json(tmp_path, capsys):
    rc = main(["bench", "--quick", "--ops", "box_iou", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    (csv_path,) = tmp_path.glob("bench-cpu-*.csv")
    (json_path,) = tmp_path.glob("bench-cpu-*.json")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == FIELDS
    doc = json.loads(json_path.read_text())
    assert len(doc["rows"]) == len(rows) > 0
    ops = {r["op"] for r in rows}
    assert set(cases_box_iou.PAIRWISE) | set(cases_box_iou.LOSSES) <= ops
    for r in doc["rows"]:
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0
        if r["provider"] == "fastmtl":
            assert r["speedup"] == 1.0
    printed = capsys.readouterr().out
    assert "box_iou" in printed and "x)" in printed and str(csv_path) in printed


def test_cli_returns_nonzero_when_providers_disagree(tmp_path, monkeypatch):
    def cases(device, quick):
        return [_case(fastmtl=fastmtl.ops.box_iou, wrong=lambda a, b: 1 - fastmtl.ops.box_iou(a, b))]

    module = types.ModuleType("fastmtl_fake_bench_cases")
    module.cases = cases
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(bench.REGISTRY, "fake", module.__name__)
    rc = main(["bench", "--quick", "--ops", "fake", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 1


def test_cli_rejects_cuda_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 2
