"""The multi-task demo: a tiny configuration runs every row end to end (function and CLI) and writes
the weights PNG and the JSON; Delta_m equals a hand computation; bad configurations raise
ValueError naming the field."""

import functools
import json
import math

import pytest

import fastmtl.pipelines.mtl as mtl
from fastmtl.cli import main
from fastmtl.pipelines.mtl import DELTA_METRICS, LOWER_IS_BETTER, STRATEGIES, MTLConfig, delta_m, train_mtl

TINY = {
    "image_size": 32,
    "train_images": 16,
    "val_images": 8,
    "steps": 3,
    "batch_size": 4,
    "encoder": "small",  # no pretrained weights needed, and fast
    "width": 4,
    "num_threads": 1,
    "progress": False,
}
ROWS = 3 + len(MTLConfig().fixed) + len(STRATEGIES)  # single tasks, fixed weights, strategies


def test_every_row_runs_and_the_png_is_written(tmp_path):
    result = train_mtl(MTLConfig(seeds=2, out_dir=str(tmp_path), **TINY))
    assert len(result.runs) == ROWS and result.png == tmp_path / "mtl-weights.png" and result.png.is_file()
    singles = [r for r in result.runs if r.kind == "single"]
    assert [r.tasks for r in singles] == [("seg",), ("depth",), ("present",)]
    for run in result.runs:
        assert all(math.isfinite(v) for v in run.metrics.values()) and len(run.per_seed) == 2
        assert (run.delta_m is None) == (run.kind == "single")
    for run in result.runs[3:]:  # Delta_m of each seed against that seed's single-task runs
        refs = [
            {DELTA_METRICS[s.tasks[0]]: s.per_seed[i][DELTA_METRICS[s.tasks[0]]] for s in singles}
            for i in range(2)
        ]
        gains = [delta_m(m, ref, LOWER_IS_BETTER) for m, ref in zip(run.per_seed, refs)]
        assert run.delta_m == pytest.approx(sum(gains) / 2)
    table = mtl.format_table(result)
    assert all(r.name in table for r in result.runs) and "Δm" in table and "±" in table


def test_amp_runs():
    config = MTLConfig(amp=True, strategies=("pcgrad", "famo"), fixed=((1, 1, 1),), **{**TINY, "steps": 2})
    result = train_mtl(config, save_plots=False)
    assert len(result.runs) == 6 and result.png is None


def test_cli_writes_the_json_with_every_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mtl, "MTLConfig", functools.partial(MTLConfig, **TINY))
    out, path = tmp_path / "demo", tmp_path / "results" / "demo-mtl.json"
    argv = ["demo", "mtl", "--steps", "2", "--no-progress", "--out", str(out), "--results-json", str(path)]
    assert main(argv) == 0
    doc = json.loads(path.read_text())
    assert doc["demo"] == "mtl" and doc["config"]["steps"] == 2 and not doc["defaults"]
    assert len(doc["runs"]) == ROWS and doc["delta_metrics"] == DELTA_METRICS
    assert {r["kind"] for r in doc["runs"]} == {"single", "fixed", "strategy"}
    assert (out / "mtl-weights.png").is_file()
    printed = capsys.readouterr().out
    assert "uncertainty weighting" in printed and "Δm" in printed
    assert main(["demo", "mtl", "--seeds", "0", "--no-progress", "--out", str(out)]) == 2
    assert "seeds" in capsys.readouterr().err


def test_delta_m_by_hand():
    single = {"miou": 0.40, "abs_rel": 0.25, "f1": 0.60}
    mtl_run = {"miou": 0.50, "abs_rel": 0.20, "f1": 0.57, "rmse": 9.0}  # extra metrics are ignored
    # seg +25 %, depth (lower is better) +20 %, presence -5 %: mean +13.333...
    assert delta_m(mtl_run, single, LOWER_IS_BETTER) == pytest.approx((25 + 20 - 5) / 3)
    assert delta_m(single, single, LOWER_IS_BETTER) == 0
    worse_depth = {**single, "abs_rel": 0.30}
    assert delta_m(worse_depth, single, LOWER_IS_BETTER) == pytest.approx(-20 / 3)
    with pytest.raises(ValueError, match="abs_rel"):
        delta_m(mtl_run, {**single, "abs_rel": 0.0}, LOWER_IS_BETTER)
    with pytest.raises(ValueError, match="metrics"):
        delta_m({"miou": 0.5}, single, LOWER_IS_BETTER)


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("batch_size", 0),
        ("batch_size", 17),
        ("seeds", 0),
        ("image_size", 2),
        ("lr", -1.0),
        ("strategies", ("nope",)),
        ("fixed", ((1.0, 2.0),)),
        ("fixed", ((1.0, -1.0, 0.0),)),
        ("encoder", "vgg"),
        ("space", "pixels"),
        ("encoder_lr_mult", float("nan")),
    ],
)
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        train_mtl(MTLConfig(**{**TINY, field: value}), save_plots=False)
