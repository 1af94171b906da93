"""``fastmtl bench``'s progress display and ETA, and the default subset against ``--full``."""

import io
import json
import sys
import types

import pytest
import torch

import fastmtl
from fastmtl import bench
from fastmtl.bench import cases_box_iou, cases_gram, cases_multiclass_nms, cases_nms, cases_roi
from fastmtl.bench import progress as progress_module
from fastmtl.bench.harness import Case, Timing, mark_full_only
from fastmtl.bench.progress import Progress, estimate_steps, format_duration, load_history
from fastmtl.cli import main

TIMING = Timing(budget_s=1.0, warmup_s=0.2, min_repeats=3, max_repeats=1000)


def _case(size: str = "8x8", **providers) -> Case:
    boxes = cases_box_iou.make_boxes(8, seed=1), cases_box_iou.make_boxes(8, seed=2)
    providers = providers or {"fastmtl": fastmtl.ops.box_iou, "other": fastmtl.ops.box_iou}
    return Case(op="box_iou", size=size, dtype=torch.float32, inputs=boxes, providers=providers)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_format_duration():
    cases = {0: "0:00", 9.6: "0:10", 61: "1:01", 3599: "59:59", 3725: "1:02:05"}
    assert {s: format_duration(s) for s in cases} == cases


def test_estimates_follow_the_timing_rules_and_the_history():
    case = _case()
    steps = estimate_steps(case, TIMING)  # nothing known: budgets only
    assert list(steps) == ["check", "fastmtl", "other"]
    assert steps["fastmtl"] == pytest.approx(TIMING.warmup_s + TIMING.budget_s)
    # A provider at 1 s a call: one call in the check, warm-up of one call, min_repeats calls.
    history = {("box_iou", "fwd", "float32", "8x8", "other"): 1000.0}
    steps = estimate_steps(case, TIMING, history)
    assert steps["other"] == pytest.approx(1.0 + 3 * 1.0)
    assert steps["check"] == pytest.approx(estimate_steps(case, TIMING)["check"] + 1.0)


def test_history_prefers_newer_files_and_the_same_device(tmp_path):
    def write(name, rows):
        (tmp_path / name).write_text(json.dumps({"rows": rows}))

    row = {"op": "nms", "pass": "fwd", "dtype": "float32", "size": "1000-dense", "provider": "fastmtl"}
    write("bench-cpu-20260101T000000Z.json", [{**row, "median_ms": 5.0, "device_name": "A"}])
    write("bench-cpu-20260102T000000Z.json", [{**row, "median_ms": 7.0, "device_name": "A"}])
    write("bench-cpu-20260103T000000Z.json", [{**row, "median_ms": 9.0, "device_name": "B"}])
    write("bench-cuda-20260104T000000Z.json", [{**row, "median_ms": 1.0, "device_name": "A"}])
    (tmp_path / "bench-cpu-20260105T000000Z.json").write_text("{not json")
    key = tuple(row.values())
    assert load_history([tmp_path], "cpu", "A")[key] == 7.0
    assert load_history([tmp_path], "cpu", "C")[key] == 9.0  # another machine's rows fill in
    assert load_history([tmp_path, None], "cuda", "A")[key] == 1.0


def test_plain_lines_with_a_calibrated_eta(monkeypatch):
    monkeypatch.setattr(progress_module, "PRIOR_S", 0.0)  # the ETA follows the run from its first second
    clock, out = Clock(), io.StringIO()
    cases = [_case("8x8"), _case("9x9")]
    progress = Progress("cpu", cases, TIMING, stream=out, bar=False, clock=clock)
    per_case = progress.total / 2
    progress.start(1)
    for step in ("check", "fastmtl", "other"):
        clock.t += 2 * progress.steps[0][step]  # this machine takes twice the estimate
        progress.step(step)
    progress.finish(1, [])
    assert progress.eta() == pytest.approx(2 * per_case)
    progress.start(2)
    clock.t += 2 * per_case
    progress.finish(2, [])
    line = progress.close()
    lines = out.getvalue().splitlines()
    total, twice = format_duration(progress.total), format_duration(2 * per_case)
    assert lines[0] == f"[1/2] 0:00 elapsed, ~{total} left: cpu: box_iou fwd float32 8x8"
    assert lines[1].startswith(f"[2/2] {twice} elapsed, ~{twice} left")
    assert lines[-1] == line == f"cpu: 2 cases in {format_duration(4 * per_case)}"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()  # readable in a CI log


def test_eta_calibration_starts_from_the_estimate():
    clock = Clock()
    cases = [_case(str(i)) for i in range(100)]
    p = Progress("cpu", cases, TIMING, stream=io.StringIO(), bar=False, clock=clock)
    assert p.eta() == pytest.approx(p.total)
    p.start(1)
    clock.t += 0.2 * p.steps[0]["check"]  # a quick first step hardly moves the scale
    assert p.eta() == pytest.approx(p.total, rel=0.05)
    for i in range(1, 51):  # half the run, each case taking twice its estimate
        p.start(i)
        clock.t += 2 * sum(p.steps[i - 1].values()) - (0.2 * p.steps[0]["check"] if i == 1 else 0)
        p.finish(i, [])
    assert p.eta() == pytest.approx(2 * p.total / 2, rel=0.15)


def test_eta_counts_the_step_under_way():
    clock = Clock()
    progress = Progress("cpu", [_case()], TIMING, stream=io.StringIO(), bar=False, clock=clock)
    progress.start(1)
    clock.t += 0.5 * progress.steps[0]["check"]
    assert progress._done_now() == pytest.approx(0.5 * progress.steps[0]["check"])
    clock.t += 100.0  # a step far over its estimate counts as its estimate, no more
    assert progress._done_now() == pytest.approx(progress.steps[0]["check"])


def test_bar_mode_writes_a_bar_and_a_line_per_case():
    pytest.importorskip("tqdm")
    out = io.StringIO()
    progress = Progress("cpu", [_case()], TIMING, stream=out, bar=True)
    progress.start(1)
    rows = [
        {"provider": "fastmtl", "median_ms": 0.5, "speedup": 1.0},
        {"provider": "other", "median_ms": 1.0, "speedup": 2.0},
    ]
    progress.finish(1, rows)
    progress.close()
    text = out.getvalue()
    assert "%|" in text and "cpu [1/1]" in text and "left: box_iou fwd float32 8x8" in text
    assert "box_iou fwd float32 8x8: fastmtl 0.500 ms, other 2.0x" in text


def test_errors_are_printed_in_plain_mode():
    out = io.StringIO()
    progress = Progress("cpu", [_case()], TIMING, stream=out, bar=False)
    progress.start(1)
    progress.finish(1, error="other disagrees with fastmtl")
    assert "error: other disagrees with fastmtl" in out.getvalue()


# ---- the default subset --------------------------------------------------------------------


def test_mark_full_only():
    cases = mark_full_only([_case("1"), _case("2")], lambda c: c.size == "1")
    assert [c.full_only for c in cases] == [False, True]


def _check_subset(full: list, expect: set) -> None:
    default = {(c.op, c.pass_, c.size) for c in full if not c.full_only}
    assert default == expect
    assert len(default) < len(full)


def test_box_iou_default_rows():
    full = cases_box_iou.cases("cpu", use_compile=False)
    _check_subset(
        full,
        {
            ("box_iou", "fwd", "1024x1024"),
            ("box_iou", "fwd", "4096x4096"),
            ("generalized_box_iou", "fwd+bwd", "1024x1024"),
            ("ciou_loss", "fwd+bwd", "100000"),
        },
    )


def test_nms_default_rows():
    full = cases_nms.cases("cpu") + cases_multiclass_nms.cases("cpu")
    _check_subset(
        full,
        {
            ("nms", "fwd", "1000-dense"),
            ("nms", "fwd", "30000-dense"),
            ("batched_nms", "fwd", "30000-dense-80cls"),
            ("multiclass_nms", "fwd", "16x5000-1cls-dense-top100"),
            ("soft_nms", "fwd", "1000-gaussian"),
        },
    )


def test_roi_default_rows():
    full = cases_roi.align_cases("cpu") + cases_roi.pool_cases("cpu")
    _check_subset(
        full,
        {
            ("roi_align", "fwd", "2x256x64x64-256rois-sr2"),
            ("roi_align", "fwd+bwd", "2x256x64x64-1024rois-sr2"),
            ("roi_pool", "fwd", "2x256x64x64-256rois"),
            ("roi_pool", "fwd+bwd", "2x256x64x64-1024rois"),
        },
    )


def test_style_default_rows(monkeypatch):
    # The real full sizes allocate about 1 GB of features: same rule on small ones.
    small = {"style": ((32, 1), (32, 2), (64, 1), (64, 2)), "gram": ((32, 1), (64, 2))}
    monkeypatch.setattr(cases_gram, "sizes", lambda device, quick: small)
    full = cases_gram.cases("cpu", use_compile=False)
    _check_subset(
        full,
        {
            ("style_loss", "fwd+bwd", "32px-x1"),
            ("style_loss", "fwd+bwd", "64px-x1"),
            ("gram_matrix", "fwd", "conv3_1-256x8x8-x1"),
        },
    )


def test_quick_cases_are_never_full_only(monkeypatch):
    monkeypatch.setattr(cases_gram, "sizes", lambda device, quick: {"style": ((32, 1),), "gram": ((32, 1),)})
    for op in bench.REGISTRY:
        assert not any(c.full_only for c in bench.load_cases(op, "cpu", quick=True)), op


@pytest.fixture
def fake_family(monkeypatch):
    def cases(device, quick):
        out = [
            _case("1", fastmtl=fastmtl.ops.box_iou),
            _case("2", fastmtl=fastmtl.ops.box_iou),
            _case("3", fastmtl=fastmtl.ops.box_iou),
        ]
        return mark_full_only(out, lambda c: c.size == "1")

    module = types.ModuleType("fastmtl_fake_subset_cases")
    module.cases = cases
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(bench.REGISTRY, "fake", module.__name__)


@pytest.mark.parametrize("flag, sizes", [([], {"1"}), (["--full"], {"1", "2", "3"})])
def test_cli_default_runs_the_subset_and_full_all(fake_family, tmp_path, capsys, flag, sizes):
    argv = ["bench", "--ops", "fake", "--device", "cpu", "--out", str(tmp_path), "--budget", "0.01", *flag]
    assert main(argv) == 0
    (json_path,) = tmp_path.glob("bench-cpu-*.json")
    doc = json.loads(json_path.read_text())
    assert {r["size"] for r in doc["rows"]} == sizes
    assert doc["meta"]["args"]["full"] == bool(flag) and doc["meta"]["seconds"] > 0
    err = capsys.readouterr().err  # not a terminal here: one plain line per case
    n = len(sizes)
    assert f"[{n}/{n}]" in err and "elapsed, ~" in err and f"cpu: {n} cases in" in err


def test_cli_full_and_quick_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--full", "--quick"])
    assert e.value.code == 2
