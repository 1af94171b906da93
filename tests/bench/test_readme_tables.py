"""README's generated blocks are what tools/readme_tables.py makes from the committed results.

A hand edit of a benchmark table or figure in README.md fails here: change the results file a
block names (or the block's entry in the script) and run ``make readme`` instead.
"""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "readme_tables.py"


def _load():
    spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


rt = _load()


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / rt.README).read_text()


def test_readme_generated_blocks_match_the_committed_results(readme):
    new, _ = rt.render(readme, ROOT)
    stale = rt.stale_blocks(readme, new)
    assert not stale, (
        f"README.md blocks {stale} differ from what tools/readme_tables.py makes of the committed "
        "results: run `make readme` (and commit the results file the block names) instead of editing them"
    )
    assert new == readme


def test_regenerating_is_idempotent(readme):
    once, _ = rt.render(readme, ROOT)
    twice, _ = rt.render(once, ROOT)
    assert twice == once


def test_every_block_is_marked_once_and_reads_a_committed_file(readme):
    for name, block in rt.BLOCKS.items():
        assert readme.count(f"<!-- generated:{name} begin") == 1, name
        assert readme.count(f"<!-- generated:{name} end -->") == 1, name
        if not getattr(block, "optional", False):
            assert (ROOT / block.results).is_file(), f"{name}: {block.results} is not committed"


def test_each_table_names_its_file_machine_and_revision(readme):
    new, _ = rt.render(readme, ROOT)
    bodies = {m["name"]: m["body"] for m in rt.MARKER.finditer(new)}
    for name, block in rt.BLOCKS.items():
        if not isinstance(block, rt.Table):
            continue
        rows, _ = rt.load_rows(ROOT / block.results)
        body = " ".join(bodies[name].split())  # the source line may be wrapped
        assert f"`{block.results}`" in body
        assert rows[0]["device_name"] in body and f"rev {rows[0]['git_rev']}" in body
        assert f"torch {rows[0]['torch']}" in body
        header = "| " + " | ".join([*block.columns, *(f"{p} ms" for p in block.providers)]) + " |"
        assert header in bodies[name]


def test_a_hand_edit_is_caught(readme, tmp_path):
    m = next(m for m in rt.MARKER.finditer(readme) if isinstance(rt.BLOCKS[m["name"]], rt.Table))
    body = m["body"]
    row = next(line for line in body.splitlines() if line.startswith("| ") and "×" in line)
    edited = readme.replace(row, row.replace("×", "x", 1), 1)
    new, _ = rt.render(edited, ROOT)
    assert rt.stale_blocks(edited, new) == [m["name"]]
    path = tmp_path / "README.md"
    path.write_text(edited)
    assert rt.main(["--check", "--readme", str(path)]) == 1
    assert rt.main(["--readme", str(path)]) == 0  # regenerates it
    assert path.read_text() == readme
    assert rt.main(["--check", "--readme", str(path)]) == 0


def test_text_outside_the_markers_is_left_alone(readme):
    edited = readme.replace("## Benchmarks", "## Benchmarks (hand-edited)", 1)
    new, _ = rt.render(edited, ROOT)
    assert "## Benchmarks (hand-edited)" in new and rt.stale_blocks(edited, new) == []


def test_markers_without_a_block_or_blocks_without_markers_are_errors(readme):
    with pytest.raises(ValueError, match="unknown blocks"):
        rt.render(readme + "\n<!-- generated:nope begin -->x<!-- generated:nope end -->\n", ROOT)
    with pytest.raises(ValueError, match="without markers"):
        rt.render("no markers here\n", ROOT)


def test_csv_and_json_results_give_the_same_table():
    block = rt.BLOCKS["bench-cpu-nms"]
    csv_block = rt.Table(**{**vars(block), "results": block.results.replace(".json", ".csv")})
    from_json = rt.render_table("t", block, ROOT)
    from_csv = rt.render_table("t", csv_block, ROOT)
    assert " ".join(from_csv.replace(".csv`", ".json`").split()) == " ".join(from_json.split())


def _demo_readme() -> str:
    return (
        "- `demo detection`: blah; mAP of its own. <!-- generated:demo-detection begin -->Old"
        " figures.<!-- generated:demo-detection end -->\n  It writes `detections.png`.\n"
    )


def test_demo_figures_come_from_the_json_the_demo_writes(tmp_path):
    # The JSON as `fastmtl demo detection --results-json` writes it (the demo itself is not run).
    torch = pytest.importorskip("torch")
    from fastmtl.cli import write_detection_results
    from fastmtl.pipelines.detection import DetectionConfig

    blocks = {"demo-detection": rt.BLOCKS["demo-detection"]}
    text = _demo_readme()
    new, notes = rt.render(text, tmp_path, blocks)
    assert new == text and notes and "not there" in notes[0]  # no JSON yet: left as it is

    result = SimpleNamespace(
        map50=0.884, map50_95=0.7012, baseline_map50=0.0013, class_ap50={"rectangle": 0.9},
        train_seconds=118.2, history=[{"total": 2.0}, {"total": 0.5}],
    )  # fmt: skip
    config = DetectionConfig()
    path = tmp_path / blocks["demo-detection"].results
    command = "fastmtl demo detection --results-json docs/results/demo-detection.json"
    write_detection_results(path, config, result, 129.4, command)
    doc = json.loads(path.read_text())
    assert doc["defaults"] is True and doc["config"]["steps"] == config.steps
    assert doc["machine"]["git_rev"] and doc["machine"]["torch"] == torch.__version__

    new, notes = rt.render(text, tmp_path, blocks)
    assert not notes
    flat = " ".join(new.split())
    assert "Default run (500 steps, 128 px, one thread): 2 min 9 s on" in flat
    assert "mAP@0.5 0.884 (mAP@[.5:.95] 0.701) on 64 held-out images against 0.001 for random boxes" in flat
    assert "(`docs/results/demo-detection.json`," in flat and f"rev {doc['machine']['git_rev']}" in flat
    assert new.endswith("<!-- generated:demo-detection end -->\n  It writes `detections.png`.\n")
    assert all(line.startswith("  ") for line in new.splitlines()[1:])  # stays in the list item
    assert rt.render(new, tmp_path, blocks)[0] == new

    write_detection_results(
        path, DetectionConfig(steps=50), result, 20.0, "fastmtl demo detection --steps 50"
    )
    flat = " ".join(rt.render(text, tmp_path, blocks)[0].split())
    assert "Run of `fastmtl demo detection --steps 50` (50 steps, 128 px, one thread): 20 s on" in flat


def _mtl_run(name, kind, delta, std):
    metrics = {"miou": 0.4, "abs_rel": 0.2, "f1": 0.5}
    return {
        "name": name, "kind": kind, "weights": {"seg": 0.5, "depth": 0.25, "present": 0.25},
        "metrics": metrics, "std": dict.fromkeys(metrics, 0.01), "delta_m": delta, "delta_m_std": std,
    }  # fmt: skip


def test_mtl_demo_table_and_verdict(tmp_path):
    doc = {
        "command": "fastmtl demo mtl --seeds 3", "defaults": False,
        "created_utc": "2026-11-26T12:00:00+00:00", "seconds": 600.0,
        "constant": {"miou": 0.2, "abs_rel": 0.4, "f1": 0.3},
        "config": {"steps": 250, "image_size": 64, "batch_size": 8, "encoder": "mobilenet_v2", "seeds": 3},
        "machine": {"device_name": "AMD EPYC", "torch": "2.14.1", "git_rev": "abc1234"},
        "runs": [
            _mtl_run("seg only", "single", None, None),
            _mtl_run("fixed a", "fixed", 2.0, 1.0),
            _mtl_run("fixed b", "fixed", 4.0, 1.0),
            _mtl_run("learned clear", "strategy", 9.0, 1.0),
            _mtl_run("learned close", "strategy", 5.0, 2.0),
            _mtl_run("learned worse", "strategy", -3.0, 1.0),
        ],
    }  # fmt: skip
    path = tmp_path / "docs/results/demo-mtl.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    body = rt.render_mtl_demo("demo-mtl", rt.MTLDemo(results="docs/results/demo-mtl.json"), tmp_path)
    flat = " ".join(body.split())
    assert (
        "| learned clear | 0.50 / 0.25 / 0.25 | 40.0 ± 1.0 | 0.200 ± 0.010 | 50.0 ± 1.0 | +9.0 ± 1.0 |"
        in body
    )
    assert "| seg only | 0.50 / 0.25 / 0.25 | 40.0 ± 1.0 | 0.200 ± 0.010 | 50.0 ± 1.0 | (reference) |" in body
    assert "Best fixed weights: fixed b (Δm +4.0%)." in flat
    assert "above it: learned clear (+9.0), learned close (+5.0); below it: learned worse (-3.0)." in flat
    assert "deviation of both (over 3 seeds): learned clear (+9.0): these beat the best fixed" in flat
    doc["runs"][3]["delta_m_std"] = 5.0
    path.write_text(json.dumps(doc))
    body = rt.render_mtl_demo("demo-mtl", rt.MTLDemo(results="docs/results/demo-mtl.json"), tmp_path)
    assert "here the learned weightings do not clearly beat the best fixed weights." in " ".join(body.split())
