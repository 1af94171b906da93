#!/usr/bin/env python3
"""Regenerates README.md's benchmark tables and quoted figures from committed results files.

README.md holds generated blocks between marker comments::

    <!-- generated:NAME begin (tools/readme_tables.py: edit the results, then make readme) -->
    ...
    <!-- generated:NAME end -->

Each NAME is an entry of :data:`BLOCKS` below, which says which committed results file it is
made from (``benchmarks/results/bench-*.json`` or ``.csv``, as ``fastmtl bench`` writes them;
``docs/results/demo-*.json`` for the demos) and how to lay it out. Only the text between the
markers changes; running it again on the same results changes nothing. A table names its file,
machine, torch and git revision in a line above it. A demo block whose file is not committed
yet is left as it is (and reported).

To change a table: commit the new results file (``fastmtl bench --full --ops ...`` writes it to
``benchmarks/results/``), point the block's ``results`` at it, run ``make readme`` (or
``python tools/readme_tables.py``). ``--check`` writes nothing and exits 1 when README.md is not
what the results give; tests/bench/test_readme_tables.py does the same in CI, so a hand edit of
a generated block fails there.

Only the standard library: it runs without torch or a build.
"""

import argparse
import csv
import json
import re
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
README = "README.md"


# ---- the blocks: which results file each is made from ---------------------------------------


def _times(size: str) -> str:
    """``1024x1024`` -> ``1024×1024``."""
    return size.replace("x", "×")


def _count(n: str) -> str:
    """``100000`` -> ``100k``, ``1000`` -> ``1k``, ``500`` -> ``500``."""
    return f"{int(n) // 1000}k" if int(n) >= 1000 and int(n) % 1000 == 0 else n


def iou_row(r: dict) -> tuple:
    """op, pass, size: ``1024×1024`` pairwise, ``100k pairs`` for the losses."""
    size = f"{_count(r['size'])} pairs" if r["op"].endswith("_loss") else _times(r["size"])
    return r["op"], r["pass"], size


def nms_row(r: dict) -> tuple:
    """op, boxes: ``1000-sparse`` -> ``1k sparse``; ``batched_nms`` names its classes."""
    n, layout, *classes = r["size"].split("-")  # 10000-dense-80cls
    op = r["op"] + (f", {classes[0].removesuffix('cls')} classes" if classes else "")
    return op, f"{_count(n)} {layout}"


def batch_nms_row(r: dict) -> tuple:
    """op, size: ``16×5000, 1 class, sparse, top100``; ``1000 dense, Gaussian`` for soft_nms."""
    if r["op"] == "soft_nms":  # 1000-gaussian; cases_multiclass_nms.soft_nms_case's boxes are dense
        n, method = r["size"].split("-")
        return r["op"], f"{n} dense, {'Gaussian' if method == 'gaussian' else method}"
    shape, classes, layout, top = r["size"].split("-")  # 16x5000-1cls-sparse-top100
    c = int(classes.removesuffix("cls"))
    return r["op"], f"{_times(shape)}, {'1 class' if c == 1 else f'{c} classes'}, {layout}, {top}"


def roi_row(r: dict) -> tuple:
    """op, pass, ROIs: ``2x256x64x64-256rois-sr2`` -> ``roi_align, sr 2``, ``256``."""
    m = re.fullmatch(r"[\dx]+-(\d+)rois(?:-sr(-?\d+))?", r["size"])
    return r["op"] + (f", sr {m[2]}" if m[2] else ""), r["pass"], m[1]


def style_row(r: dict) -> tuple:
    """size, batch: ``512px-x8`` -> ``512×512``, ``8``."""
    side, batch = re.fullmatch(r"(\d+)px-x(\d+)", r["size"]).groups()
    return f"{side}×{side}", batch


def yolo_row(r: dict) -> tuple:
    """op, batch, setting: ``N64-S7-B2-C20`` -> ``64``, ``S 7, B 2, C 20``; ``N16-416px-A3-C80-yolov5``
    -> ``16``, ``416 px, 3 anchors, C 80, yolov5 rules``."""
    v1 = re.fullmatch(r"N(\d+)-S(\d+)-B(\d+)-C(\d+)", r["size"])
    if v1:
        return r["op"], v1[1], f"S {v1[2]}, B {v1[3]}, C {v1[4]}"
    n, px, a, c, v5 = re.fullmatch(r"N(\d+)-(\d+)px-A(\d+)-C(\d+)(-yolov5)?", r["size"]).groups()
    rules = "yolov5 rules" if v5 else "YOLOv3 rules"
    return r["op"], n, f"{px} px, {a} anchors, C {c}, {rules}"


def triplet_row(r: dict) -> tuple:
    """mining, B, D: ``semihard-B1024-D128`` -> ``semihard``, ``1024``, ``128``."""
    return re.fullmatch(r"(\w+)-B(\d+)-D(\d+)", r["size"]).groups()


def segmentation_row(r: dict) -> tuple:
    """op, input: ``96px-x8`` -> ``96 px × 8``."""
    side, batch = re.fullmatch(r"(\d+)px-x(\d+)", r["size"]).groups()
    return r["op"], f"{side} px × {batch}"


def coco_row(r: dict) -> tuple:
    """images, detections per image, classes: ``5000img-100det-80cls`` -> ``5000``, ``100``, ``80``."""
    return re.fullmatch(r"(\d+)img-(\d+)det-(\d+)cls", r["size"]).groups()


@dataclass(frozen=True)
class Table:
    """A Markdown table of ``ops``' rows in ``results``, with a line naming the run above it.

    Rows come in the file's order (``by_op``: grouped by op in the order of ``ops``);
    ``label(row) -> cells`` makes the first ``columns``; then one column per provider:
    fastmtl's median ms, the others' as ``ms (N×)`` with N fastmtl's speedup, empty where the
    provider has no row. ``memory``: each cell also gives the call's peak memory, ``ms, MB``.
    ``baseline``: a table of variants of one fastmtl op (no "fastmtl" provider) names its first
    column's provider; N is then each variant's speedup over it.
    """

    results: str
    ops: tuple
    columns: tuple
    label: Callable
    providers: tuple
    by_op: bool = False
    memory: bool = False
    baseline: str = "fastmtl"


@dataclass(frozen=True)
class StrategyTable:
    """One row per task-balancing strategy of a training-step benchmark (``op``): each column
    group's provider (``columns``: ``(title, baseline provider, its label)``; a row's ``providers`` one per
    group, ``None`` where there is none) as ``ms (N× its baseline), MB``."""

    results: str
    op: str
    columns: tuple
    rows: tuple  # (strategy, (provider or None per column))


@dataclass(frozen=True)
class SpeedupRange:
    """Inline ``lo–hi×``: the range of fastmtl's speedups over ``providers`` on ``ops``' rows."""

    results: str
    ops: tuple
    providers: tuple


@dataclass(frozen=True)
class DetectionDemo:
    """Inline sentence with the figures of a ``fastmtl demo detection --results-json`` file.

    Optional: while the file is not committed, the block keeps the text it has.
    """

    results: str
    optional: bool = field(default=True)


@dataclass(frozen=True)
class SiameseDemo:
    """Inline sentence with the figures of a ``fastmtl demo siamese --results-json`` file."""

    results: str
    optional: bool = field(default=True)


@dataclass(frozen=True)
class SegmentationDemo:
    """Inline sentence with the figures of a ``fastmtl demo segmentation --results-json`` file."""

    results: str
    optional: bool = field(default=True)


@dataclass(frozen=True)
class MTLDemo:
    """The table of a ``fastmtl demo mtl --results-json`` file: per weighting, the final task
    weights, one metric per task and the multi-task gain, with a sentence comparing the learned
    weightings with the best fixed weights."""

    results: str
    optional: bool = field(default=True)


BLOCKS = {
    "bench-cpu-iou": Table(
        results="benchmarks/results/bench-cpu-20261123T105554Z.json",
        ops=("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou")
        + ("giou_loss", "diou_loss", "ciou_loss"),
        columns=("op", "pass", "size"),
        label=iou_row,
        providers=("fastmtl", "torchvision", "eager", "compile"),
    ),
    "bench-cpu-nms": Table(
        results="benchmarks/results/bench-cpu-20261123T112335Z.json",
        ops=("nms", "batched_nms"),
        columns=("op", "boxes"),
        label=nms_row,
        providers=("fastmtl", "torchvision", "eager", "loop"),
    ),
    "bench-cpu-batch-nms": Table(
        results="benchmarks/results/bench-cpu-20261123T135934Z.json",
        ops=("multiclass_nms", "soft_nms"),
        columns=("op", "size"),
        label=batch_nms_row,
        providers=("fastmtl", "torchvision", "loop", "eager"),
    ),
    "bench-cpu-roi": Table(
        results="benchmarks/results/bench-cpu-20261123T135450Z.json",
        ops=("roi_align", "roi_pool"),
        columns=("op", "pass", "ROIs"),
        label=roi_row,
        providers=("fastmtl", "torchvision"),
        by_op=True,
    ),
    "bench-cpu-style": Table(
        results="benchmarks/results/bench-cpu-20261123T135934Z.json",
        ops=("style_loss",),
        columns=("size", "batch"),
        label=style_row,
        providers=("fastmtl", "eager", "compile"),
    ),
    "bench-cpu-gram-speedup": SpeedupRange(
        results="benchmarks/results/bench-cpu-20261123T135934Z.json",
        ops=("gram_matrix",),
        providers=("bmm", "compile"),
    ),
    "bench-cpu-yolo": Table(
        results="benchmarks/results/bench-cpu-20261126T054340Z.json",
        ops=("yolo_v1_loss", "yolo_anchor_loss"),
        columns=("op", "batch", "setting"),
        label=yolo_row,
        providers=("fastmtl", "uncached", "eager", "compile", "yolov5"),
    ),
    "bench-cpu-triplet": Table(
        results="benchmarks/results/bench-cpu-20261126T091741Z.json",
        ops=("triplet_margin_loss",),
        columns=("mining", "B", "D"),
        label=triplet_row,
        providers=("fastmtl", "pml", "eager", "compile"),
        memory=True,
    ),
    "bench-cpu-coco": Table(
        results="benchmarks/results/bench-cpu-20261126T033219Z.json",
        ops=("coco_evaluate",),
        columns=("images", "detections / image", "classes"),
        label=coco_row,
        providers=("fastmtl", "fastmtl-json", "faster-coco-eval", "pycocotools"),
    ),
    "demo-detection": DetectionDemo(results="docs/results/demo-detection.json"),
    "demo-yolo": DetectionDemo(results="docs/results/demo-yolo.json"),
    "bench-cpu-unet": Table(
        results="benchmarks/results/bench-cpu-20261126T085653Z.json",
        ops=("unet_train_step",),
        columns=("op", "input"),
        label=segmentation_row,
        providers=("float32", "amp", "channels_last", "amp+channels_last"),
        baseline="float32",
    ),
    "bench-cpu-confusion": Table(
        results="benchmarks/results/bench-cpu-20261126T085653Z.json",
        ops=("confusion_update",),
        columns=("op", "input"),
        label=segmentation_row,
        providers=("fastmtl", "torchmetrics"),
    ),
    "demo-siamese-digits": SiameseDemo(results="docs/results/demo-siamese-digits.json"),
    "demo-siamese-faces": SiameseDemo(results="docs/results/demo-siamese-faces.json"),
    "demo-siamese-questions": SiameseDemo(results="docs/results/demo-siamese-questions.json"),
    "demo-siamese-questions-minilm": SiameseDemo(results="docs/results/demo-siamese-questions-minilm.json"),
    "demo-segmentation": SegmentationDemo(results="docs/results/demo-segmentation.json"),
    "bench-cpu-mtl": StrategyTable(
        results="benchmarks/results/bench-cpu-20261126T113308Z.json",
        op="mtl_train_step",
        columns=(
            ("fastmtl, representation", "fastmtl", "fixed"),
            ("fastmtl, parameters", "fastmtl", "fixed"),
            ("LibMTL 1.1.5", "libmtl ew", "EW"),
        ),
        rows=(
            ("fixed weights (LibMTL: EW)", ("fastmtl", None, "libmtl ew")),
            ("uncertainty", ("fastmtl uncertainty", None, "libmtl uw")),
            ("DWA", ("fastmtl dwa", None, "libmtl dwa")),
            ("FAMO", ("fastmtl famo", None, None)),
            ("GradNorm", ("fastmtl gradnorm", "fastmtl gradnorm [params]", "libmtl gradnorm")),
            ("PCGrad", ("fastmtl pcgrad", "fastmtl pcgrad [params]", "libmtl pcgrad")),
            ("MGDA", ("fastmtl mgda", "fastmtl mgda [params]", "libmtl mgda")),
            ("CAGrad", (None, None, "libmtl cagrad")),
        ),
    ),
    "demo-mtl": MTLDemo(results="docs/results/demo-mtl.json"),
}

BASELINE = "fastmtl"


# ---- reading results ------------------------------------------------------------------------


def load_rows(path: Path) -> tuple:
    """(rows, created) of a ``fastmtl bench`` results file, ``.json`` or ``.csv``.

    ``created`` is the JSON's ``created_utc``, or the UTC time in a ``bench-*-<time>.csv`` name.
    """
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        return doc["rows"], doc.get("created_utc")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("median_ms", "speedup"):
            r[key] = float(r[key]) if r.get(key) not in (None, "") else None
    m = re.search(r"(\d{8}T\d{6}Z)", path.name)
    created = datetime.strptime(m[1], "%Y%m%dT%H%M%SZ").isoformat() + "+00:00" if m else None
    return rows, created


def _ms(x: float) -> str:
    # As fastmtl.bench.harness._ms (not imported: that would import torch).
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _ratio(x: float) -> str:
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×"


def _one_of(rows: list, key: str) -> str:
    return ", ".join(dict.fromkeys(str(r.get(key)) for r in rows))


def source_line(results: str, rows: list, created: Optional[str], width: int = 100) -> str:
    """``Results: `file` (2026-11-23 10:55 UTC): AMD EPYC (cpu, 2 threads), torch ..., rev ...``."""
    when = f" ({created[:10]} {created[11:16]} UTC)" if created else ""
    text = (
        f"Results: `{results}`{when}: {_one_of(rows, 'device_name')} ({_one_of(rows, 'device')}, "
        f"{_one_of(rows, 'threads')} threads), torch {_one_of(rows, 'torch')}, "
        f"fastmtl {_one_of(rows, 'fastmtl')} at rev {_one_of(rows, 'git_rev')}."
    )
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False))


def _cases(rows: list, ops: tuple, by_op: bool = False) -> list:
    """``[(first row, {provider: row})]`` of ``ops``' cases in the file's order (``by_op``: by op)."""
    by_case = {}
    for r in rows:
        if r["op"] in ops:
            by_case.setdefault((r["op"], r["pass"], r["dtype"], r["size"]), {})[r["provider"]] = r
    cases = [(next(iter(c.values())), c) for c in by_case.values()]
    return sorted(cases, key=lambda x: ops.index(x[0]["op"])) if by_op else cases


def _speedup(r: dict, base: dict) -> float:
    return r["speedup"] if r.get("speedup") is not None else r["median_ms"] / base["median_ms"]


def _mb(row: dict, memory: bool) -> str:
    """``, 12.3 MB``: the row's peak memory, when the table shows it and the row has it."""
    if not memory or row.get("peak_mem_mb") is None:
        return ""
    mb = row["peak_mem_mb"]
    return f", {mb:.3g} MB" if mb < 100 else f", {mb:.0f} MB"


def render_table(name: str, block: Table, root: Path) -> str:
    rows, created = load_rows(root / block.results)
    cases = _cases(rows, block.ops, block.by_op)
    if not cases:
        raise ValueError(f"{name}: no rows of {', '.join(block.ops)} in {block.results}")
    head = [*block.columns, *(f"{p} ms" for p in block.providers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    used = []
    variants = block.baseline != BASELINE
    for first, by_provider in cases:
        base = by_provider.get(block.baseline)
        if base is None:
            raise ValueError(
                f"{name}: {first['op']} {first['size']} has no {block.baseline} row in {block.results}"
            )
        cells = list(block.label(first)) + [_ms(base["median_ms"]) + _mb(base, block.memory)]
        for p in block.providers[1:]:
            r = by_provider.get(p)
            ratio = (
                None if r is None else (base["median_ms"] / r["median_ms"] if variants else _speedup(r, base))
            )
            cell = "" if r is None else f"{_ms(r['median_ms'])} ({_ratio(ratio)})"
            cells.append(cell + (_mb(r, block.memory) if r is not None else ""))
        lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
        used += by_provider.values()
    # Blank lines around the table: a marker line right below it would read as one more row.
    return "\n\n" + source_line(block.results, used, created) + "\n\n" + "\n".join(lines) + "\n\n"


def render_strategy_table(name: str, block: StrategyTable, root: Path) -> str:
    rows, created = load_rows(root / block.results)
    by_provider = {r["provider"]: r for r in rows if r["op"] == block.op}
    missing = [b for _, b, _ in block.columns if b not in by_provider]
    if missing:
        raise ValueError(f"{name}: no {block.op} rows of {missing} in {block.results}")
    head = ["strategy", *(f"{title}: ms (× {label}), peak MB" for title, _, label in block.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    used = []
    for strategy, providers in block.rows:
        cells = [strategy]
        for (_, base, _), provider in zip(block.columns, providers):
            r = by_provider.get(provider) if provider else None
            if r is None:
                cells.append("")
                continue
            ratio = r["median_ms"] / by_provider[base]["median_ms"]
            cells.append(f"{_ms(r['median_ms'])} ({ratio:.2f}×){_mb(r, True)}")
            used.append(r)
        lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
    return "\n\n" + source_line(block.results, used, created) + "\n\n" + "\n".join(lines) + "\n\n"


def render_speedup_range(name: str, block: SpeedupRange, root: Path) -> str:
    rows, _ = load_rows(root / block.results)
    speedups = [
        _speedup(r, by_provider[BASELINE])
        for _, by_provider in _cases(rows, block.ops)
        for p, r in by_provider.items()
        if p in block.providers and BASELINE in by_provider
    ]
    if not speedups:
        raise ValueError(f"{name}: no rows of {', '.join(block.ops)} vs {block.providers} in {block.results}")
    return f"{min(speedups):.1f}–{max(speedups):.1f}×"


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def _provenance(block, doc: dict) -> str:
    """``(`file`, date, torch version, rev abc1234)``: where a demo sentence's figures come from."""
    m = doc["machine"]
    return f"(`{block.results}`, {doc['created_utc'][:10]}, torch {m['torch']}, rev {m['git_rev']})"


def render_detection_demo(name: str, block: DetectionDemo, root: Path) -> str:
    """The sentence of figures, from the JSON ``fastmtl demo detection|yolo --results-json`` writes.

    An optional ``"note"`` added to the file by hand (e.g. ``"while the machine was busy"``)
    follows the machine.
    """
    doc = json.loads((root / block.results).read_text())
    c, m = doc["config"], doc["machine"]
    threads = {0: "torch's default threads", 1: "one thread"}.get(
        c["num_threads"] or 0, f"{c['num_threads']} threads"
    )
    run = "Default run" if doc.get("defaults") else f"Run of `{doc['command']}`"
    cores = f" ({m['cpu_count']} cores)" if m.get("device") == "cpu" and m.get("cpu_count") else ""
    note = f" {doc['note']}" if doc.get("note") else ""
    strict = f" (mAP@[.5:.95] {doc['map50_95']:.3f})" if "map50_95" in doc else ""
    return (
        f"{run} ({c['steps']} steps, {c['image_size']} px, {threads}): {_duration(doc['seconds'])} on "
        f"{m['device_name']}{cores}{note}, "
        f"mAP@0.5 {doc['map50']:.3f}{strict} on {c['val_size']} held-out "
        f"images against {doc['baseline_map50']:.3f} for random boxes "
        f"{_provenance(block, doc)}."
    )


def render_siamese_demo(name: str, block: SiameseDemo, root: Path) -> str:
    """Verification and identification figures, learned against raw pixels, from the JSON."""
    doc = json.loads((root / block.results).read_text())
    c, m, ident = doc["config"], doc["machine"], doc["identification"]
    run = "Default run" if doc.get("defaults") else f"Run of `{doc['command']}`"
    if c.get("text_encoder") == "minilm":
        run += " fine-tuning MiniLM"
    text = c.get("data") == "questions"
    raw, new = ("raw n-grams", "new paraphrases") if text else ("raw pixels", "new images")

    def pair(key, base):
        return f"{doc[key]['auc']:.3f} ({raw} {doc[base]['auc']:.3f})"

    return (
        f"{run} ({c['steps']} steps): {_duration(doc['seconds'])} on {m['device_name']}; ROC AUC on "
        f"identities never trained on {pair('verification', 'baseline')}, EER "
        f"{doc['verification']['eer']:.3f} (raw {doc['baseline']['eer']:.3f}), accuracy "
        f"{doc['accuracy_at_tau']:.3f} at the threshold calibrated on trained identities; on {new} "
        f"of trained identities {pair('seen_verification', 'seen_baseline')}; one-shot identification "
        f"top-1 {ident['unseen']:.3f} unseen (raw {ident['baseline_unseen']:.3f}), {ident['seen']:.3f} "
        f"seen (raw {ident['baseline_seen']:.3f}){_pretrained_sentence(doc)} {_provenance(block, doc)}."
    )


def render_segmentation_demo(name: str, block: SegmentationDemo, root: Path) -> str:
    """Validation mIoU, pixel accuracy and per-class IoU against a constant prediction."""
    doc = json.loads((root / block.results).read_text())
    c, m, met, const = doc["config"], doc["machine"], doc["metrics"], doc["constant"]
    run = "Default run" if doc.get("defaults") else f"Run of `{doc['command']}`"
    per_class = ", ".join(
        f"{n} {'-' if v is None else f'{v:.3f}'}" for n, v in zip(doc["class_names"], met["iou"])
    )
    return (
        f"{run} ({c['steps']} steps, {c['image_size']} px, batch {c['batch_size']}): "
        f"{_duration(doc['seconds'])} on {m['device_name']}; on {c['val_images']} validation scenes mIoU "
        f"{met['miou']:.3f} (a constant prediction: {const['miou']:.3f}), pixel accuracy "
        f"{met['pixel_accuracy']:.3f} ({const['pixel_accuracy']:.3f}); IoU per class: {per_class} "
        f"{_provenance(block, doc)}."
    )


def _pm(mean, std, scale: float, digits: int, seeds: int) -> str:
    if mean is None:
        return ""
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if seeds > 1 else "")


_MTL_COLUMNS = (
    ("mIoU %", "miou", 100, 1),
    ("depth abs rel", "abs_rel", 1, 3),
    ("presence F1 %", "f1", 100, 1),
)


def _mtl_row(run: dict, seeds: int) -> str:
    weights = " / ".join(f"{w:.2f}" for w in run["weights"].values())
    cells = [run["name"], weights]
    for _, key, scale, digits in _MTL_COLUMNS:
        cells.append(_pm(run["metrics"].get(key), run["std"].get(key), scale, digits, seeds))
    if run["delta_m"] is None:
        gain = "(reference)"
    else:  # already in %
        gain = f"{run['delta_m']:+.1f}" + (f" ± {run['delta_m_std']:.1f}" if seeds > 1 else "")
    return "| " + " | ".join(cells + [gain]) + " |"


def _mtl_verdict(runs: list, seeds: int) -> str:
    fixed = [r for r in runs if r["kind"] == "fixed"]
    best = max(fixed, key=lambda r: r["delta_m"])
    learned = sorted((r for r in runs if r["kind"] == "strategy"), key=lambda r: -r["delta_m"])
    above = [r for r in learned if r["delta_m"] > best["delta_m"]]
    clear = [r for r in above if r["delta_m"] - r["delta_m_std"] > best["delta_m"] + best["delta_m_std"]]

    def names(rs):
        return ", ".join(f"{r['name']} ({r['delta_m']:+.1f})" for r in rs) or "none"

    text = (
        f"Best fixed weights: {best['name']} (Δm {best['delta_m']:+.1f}%). Learned weightings above it: "
        f"{names(above)}; below it: {names([r for r in learned if r not in above])}."
    )
    if seeds > 1 and clear:
        text += (
            f" Above it by more than one standard deviation of both (over {seeds} seeds): {names(clear)}: "
            "these beat the best fixed weights here."
        )
    elif seeds > 1:
        text += (
            f" None is above it by more than one standard deviation of both (over {seeds} seeds): here the "
            "learned weightings do not clearly beat the best fixed weights."
        )
    return text


def render_mtl_demo(name: str, block: MTLDemo, root: Path) -> str:
    doc = json.loads((root / block.results).read_text())
    c, m, runs = doc["config"], doc["machine"], doc["runs"]
    seeds = c["seeds"]
    run = "Default run" if doc.get("defaults") else f"Run of `{doc['command']}`"
    head = ["weighting", "weights seg / depth / presence", *(h for h, *_ in _MTL_COLUMNS), "Δm %"]
    const = doc["constant"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(
        "| constant prediction | | "
        + " | ".join(_pm(const[k], 0, s, d, 1) for _, k, s, d in _MTL_COLUMNS)
        + " | |"
    )
    lines += [_mtl_row(r, seeds) for r in runs]
    spread = f", mean ± standard deviation over {seeds} seeds" if seeds > 1 else ", one seed"
    intro = (
        f"{run} ({c['steps']} steps, {c['image_size']} px, batch {c['batch_size']}, {c['encoder']} "
        f"encoder{spread}): {_duration(doc['seconds'])} on {m['device_name']} {_provenance(block, doc)}."
    )
    return (
        "\n\n"
        + textwrap.fill(intro, 100, break_on_hyphens=False)
        + "\n\n"
        + "\n".join(lines)
        + "\n\n"
        + textwrap.fill(_mtl_verdict(runs, seeds), 100, break_on_hyphens=False)
        + "\n\n"
    )


def _pretrained_sentence(doc: dict) -> str:
    """The no-training figures of the run (MAC / R-MAC of MobileNetV2, or the pretrained MiniLM),
    when it had the pretrained baselines."""
    found = doc.get("pretrained", {})
    if "minilm" in found:
        fig = found["minilm"]
        return (
            f"; with no fine-tuning, the pretrained MiniLM's AUC {fig['auc']:.3f}, EER {fig['eer']:.3f}, "
            f"top-1 {fig['identification_unseen']:.3f} on the unseen ones"
        )
    names = {"mac": "MAC", "rmac": "R-MAC"}
    parts = [
        f"{names.get(name, name)} AUC {fig['auc']:.3f}, top-1 {fig['identification_unseen']:.3f}"
        for name, fig in found.items()
    ]
    return (
        f"; with no training, ImageNet MobileNetV2's {' and '.join(parts)} on the unseen ones"
        if parts
        else ""
    )


RENDER = {
    Table: render_table,
    StrategyTable: render_strategy_table,
    SpeedupRange: render_speedup_range,
    DetectionDemo: render_detection_demo,
    SiameseDemo: render_siamese_demo,
    SegmentationDemo: render_segmentation_demo,
    MTLDemo: render_mtl_demo,
}


# ---- README markers ---------------------------------------------------------------------------

MARKER = re.compile(
    r"(?P<begin><!-- generated:(?P<name>[\w.-]+) begin[^>]*-->)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- generated:(?P=name) end -->)",
    re.DOTALL,
)


def _wrap_inline(text: str, line_start: str, width: int = 100) -> str:
    """Wraps an inline block's text to ``width``, continuing on lines indented as its first line.

    ``line_start`` is the README text from the start of the line to the block's first character;
    its indentation (a list item's, within one) is kept.
    """
    indent = " " * len(re.match(r"\s*(?:[-*+]\s+|\d+[.)]\s+)?", line_start)[0])
    first = len(line_start)
    lines = textwrap.wrap(
        text,
        width,
        initial_indent="x" * first,  # stands for the line's text before the block
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    if lines:
        lines[0] = lines[0][first:]
    return "\n".join(lines)


def render(text: str, root: Path = ROOT, blocks: Optional[dict] = None) -> tuple:
    """(new README text, notes): every known block regenerated, the rest of ``text`` unchanged.

    Raises ValueError for a block in ``blocks`` with no markers, or markers of an unknown block.
    """
    blocks = BLOCKS if blocks is None else blocks
    found = [m["name"] for m in MARKER.finditer(text)]
    unknown = sorted(set(found) - set(blocks))
    missing = sorted(set(blocks) - set(found))
    duplicated = sorted({n for n in found if found.count(n) > 1})
    if unknown or missing or duplicated:
        raise ValueError(
            f"README markers: unknown blocks {unknown}, blocks without markers {missing}, "
            f"blocks marked more than once {duplicated}"
        )
    notes = []

    def replace(m: re.Match) -> str:
        name, block = m["name"], blocks[m["name"]]
        if getattr(block, "optional", False) and not (root / block.results).exists():
            notes.append(f"{name}: {block.results} is not there; block left as it is")
            return m[0]
        body = RENDER[type(block)](name, block, root)
        if not isinstance(block, (Table, StrategyTable, MTLDemo)):  # inline, within a paragraph: wrap it
            line_start = text[text.rfind("\n", 0, m.start()) + 1 : m.start("body")]
            body = _wrap_inline(body, line_start)
        return m["begin"] + body + m["end"]

    return MARKER.sub(replace, text), notes


def stale_blocks(text: str, new: str) -> list:
    """Names of the blocks whose text differs between ``text`` and ``new``."""
    old_bodies = {m["name"]: m["body"] for m in MARKER.finditer(text)}
    return [m["name"] for m in MARKER.finditer(new) if old_bodies.get(m["name"]) != m["body"]]


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if README.md is stale")
    parser.add_argument(
        "--readme", default=str(ROOT / README), help="the README to update (default: the checkout's)"
    )
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text()
    try:
        new, notes = render(text, ROOT)
    except (OSError, ValueError, KeyError) as e:
        print(f"readme_tables: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    stale = stale_blocks(text, new)
    if args.check:
        if stale:
            print(
                f"{path}: generated blocks {', '.join(stale)} differ from what the committed results give; "
                "run `make readme` (tools/readme_tables.py) instead of editing them by hand",
                file=sys.stderr,
            )
            return 1
        print(f"{path}: generated blocks up to date")
        return 0
    if new != text:
        path.write_text(new)
    print(f"{path}: {len(stale)} block(s) updated" + (f": {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
